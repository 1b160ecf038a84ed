"""What the sans-I/O ``AppSession`` asks its driver to do. Plain dataclasses, executed in order."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from detector_app.mentra.messages import redact


@dataclass(frozen=True, slots=True)
class Send:
    """Send one JSON message on the app WebSocket."""

    message: dict[str, Any]

    def __repr__(self) -> str:  # never show the API key (tpa_connection_init carries it)
        return f"Send({json.dumps(redact(self.message), default=str)})"

    @property
    def type(self) -> str:
        return str(self.message.get("type"))


@dataclass(frozen=True, slots=True)
class Close:
    """Close the WebSocket with this code/reason (the driver then reports ``connection_closed``)."""

    code: int = 1000
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ScheduleReconnect:
    """Open a new WebSocket after ``delay`` seconds and call ``connection_opened`` (or
    ``connection_closed(1006, ...)`` if connecting fails)."""

    delay: float
    attempt: int


@dataclass(frozen=True, slots=True)
class PlaybackUrls:
    """A managed stream's playback URLs from ``managed_stream_status`` (the detection service pulls one)."""

    webrtc_url: str | None
    hls_url: str | None


@dataclass(frozen=True, slots=True)
class StartPipeline:
    """Open an ingest + detection stream (fresh key), closing the session's previous one if any;
    report back with ``pipeline_ready(url)`` or ``pipeline_failed(error)``. The driver closes the
    pipeline itself when the session ends. With ``playback`` (managed streams) the detection stream
    pulls those URLs instead of listening."""

    protocol: str
    playback: PlaybackUrls | None = None


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """The session is over; the driver stops. ``error_code`` is the last cloud error code, if any."""

    reason: str
    error_code: str | None = None


@dataclass(frozen=True, slots=True)
class Log:
    level: str  # loguru level name: DEBUG, INFO, WARNING, ERROR
    text: str


Action = Send | Close | ScheduleReconnect | StartPipeline | SessionEnded | Log
