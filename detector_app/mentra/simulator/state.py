"""What the simulated cloud knows: its configuration, fault switches, and each user's session.

Plain dataclasses, so every other part of the simulator (and the tests) reads one definition.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aiohttp import web

from .glasses import DropMode, VirtualGlassesStream
from .protocol import ALL_PERMISSIONS, DeviceName, Generation, now_iso

AppState = Literal["stopped", "loading", "running", "stopping"]


class SimulatorError(RuntimeError):
    """A simulated app start failed (webhook failed or the connect deadline passed)."""


@dataclass
class Faults:
    """Fault switches; each mirrors a failure the real cloud/glasses can produce."""

    drop_ws_after_s: float | None = None  # abort the app socket this long after the first ack (once, or see repeat)
    drop_ws_code: int | None = None  # None: abrupt TCP abort (app sees 1006); else a close frame with this code
    deny_camera: bool = False  # app lacks CAMERA permission -> PERMISSION_DENIED + 1008 on stream requests
    no_wifi: bool = False  # glasses not on WiFi -> WIFI_NOT_CONNECTED + 1008 on stream requests
    stream_drop_after_s: float | None = None  # glasses publisher killed this long after it runs (once, or see repeat)
    stream_restore_after_s: float | None = None  # ... and restarted this long after the drop
    stream_drop_mode: DropMode = "reconnect"  # "reconnect": initializing -> active; "error": stopped
    repeat: bool = False  # soak: the stream and app-socket drops above recur after every (re)connect
    audio_error: str | None = None  # every audio_play_request fails with this error (speaker busy/broken)
    reject_stream_config: bool = False  # glasses refuse the requested video: "Resolution not supported by camera"


@dataclass
class SimulatorConfig:
    """Everything `CloudSimulator` needs; CLI flags map 1:1 onto these fields."""

    app_url: str
    package_name: str
    api_key: str
    video: Path | None = None  # None: synthetic test pattern (libx264, costs CPU)
    generation: Generation = "D"
    device: DeviceName = "mentra_live"
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    public_host: str | None = None  # host written into the webhook's WebSocket URLs
    grace_s: float = 5.0  # reconnect grace before resurrection
    resurrect: bool = True
    connect_deadline_s: float | None = None  # None: 5 s (B) / 6 s (D)
    webhook_timeout_s: float = 10.0
    webhook_attempts: int = 2
    webhook_backoff_s: float = 1.0
    loop_video: bool = True
    publisher_max_reconnects: int = 3
    publisher_reconnect_delay_s: float = 1.0
    permissions: frozenset[str] = ALL_PERMISSIONS
    settings: list[dict[str, Any]] = field(default_factory=list)
    faults: Faults = field(default_factory=Faults)
    echo: bool = True  # print glasses display / speaker lines for an operator
    ffmpeg: str = "ffmpeg"


@dataclass
class StreamState:
    stream_id: str
    url: str
    request_type: str
    app_status: str = "initializing"
    created_at: str = field(default_factory=now_iso)
    transport: str = "rtmp"
    glasses: VirtualGlassesStream | None = None
    resolved: dict[str, Any] | None = None  # resolvedConfig the glasses report once active ([D])


@dataclass
class ManagedStreamState:
    """A managed stream (V3): the cloud relays the glasses' video and hands the app playback URLs."""

    stream_id: str
    status: str = "initializing"
    created_at: str = field(default_factory=now_iso)
    urls: dict[str, str] = field(default_factory=dict)  # webrtcUrl / hlsUrl / dashUrl / previewUrl / thumbnailUrl


@dataclass
class UserSession:
    """One user's glasses + the app running for them (one package per simulator)."""

    user_id: str
    session_id: str
    app_state: AppState = "stopped"
    ws: web.WebSocketResponse | None = None
    transport: asyncio.BaseTransport | None = None
    subscriptions: list[str] = field(default_factory=list)
    stream: StreamState | None = None
    managed: ManagedStreamState | None = None
    audio_streams: dict[str, int] = field(default_factory=dict)  # open audio output stream id -> bytes received
    start_future: asyncio.Future[bool] | None = None
    acks: int = 0
    last_reconnect_at: float | None = None
    ownership_released: bool = False
    drop_fault_fired: bool = False
    starts: int = 0
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    grace_task: asyncio.Task[None] | None = None
