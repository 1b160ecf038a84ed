"""What the miniapp needs from the detection pipeline (``detector_app.stream_service``), as Protocols.

Structural typing keeps ``mentra`` independent of the model/ingest code: the real
``DetectionService``/``StreamSession`` satisfy these, and tests pass small fakes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from detector_app.detection.types import FrameResult


@runtime_checkable
class StreamSessionLike(Protocol):
    """One ingest listener + detection loop for one glasses stream (fresh random key)."""

    @property
    def publish_url(self) -> str: ...  # where the glasses push (LAN address)

    @property
    def key(self) -> str: ...

    def add_listener(self, callback: Callable[[FrameResult], None]) -> None:
        """``callback`` runs on the inference thread, not the asyncio loop."""

    def health(self) -> Any: ...

    @property
    def failure(self) -> str | None:
        """Why the ingest/pipeline died (relay exited, port lost), None while it works; read every tick."""

    def close(self, timeout: float = ...) -> None:
        """Idempotent; returns within ``timeout`` seconds."""


@runtime_checkable
class DetectionServiceLike(Protocol):
    """The loaded model; opens one stream per glasses session."""

    def open_stream(self, protocol: str, *, label: str = "") -> StreamSessionLike:
        """``label`` names the stream for people (the wearer), in the window title and the web viewer."""

    def close(self) -> None: ...


@runtime_checkable
class PlaybackServiceLike(Protocol):
    """A detection service that can also pull a managed stream's playback URLs (WebRTC/WHEP first,
    HLS as the fallback) instead of listening for a publisher."""

    def open_playback_stream(self, *, webrtc_url: str | None, hls_url: str | None,
                             label: str = "") -> StreamSessionLike: ...
