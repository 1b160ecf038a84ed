"""What every video source looks like to the decoder, and the ingest endpoint description.

A source hands the decode thread one opened PyAV container per *publisher session*: a file is one
session; a listener accepts one publisher, and after that publisher drops it is opened again for
the next one, without restarting anything.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import av
import av.container

from detector_app.errors import PortInUseError, UserError

Protocol_ = Literal["rtmp", "srt", "whip", "managed"]  # managed: we pull the cloud's playback URL


# Live-stream probing: ~0.45 s to the first frame instead of ~5 s (field notes). Never add
# fflags=nobuffer: it drops the probed keyframe and the first frame then waits a whole GOP.
PROBE_OPTIONS = {"probesize": "32768", "analyzeduration": "0"}


class IngestError(UserError):
    """A user-fixable problem with the ingest (missing tool, bad URL, relay exited)."""


class IngestPortInUseError(IngestError, PortInUseError):
    """The listener's port is taken; a caller with a port range tries the next one."""


@dataclass(frozen=True, slots=True)
class IngestEndpoint:
    """Where the glasses must push, for one stream session.

    ``publish_url`` carries the LAN address (for real glasses); ``local_publish_url`` is the same
    endpoint on loopback, for a virtual-glasses publisher on this machine.
    """

    protocol: Protocol_
    key: str
    port: int
    bind_host: str
    advertise_host: str
    publish_url: str
    local_publish_url: str

    @classmethod
    def build(cls, protocol: Protocol_, key: str, port: int, bind_host: str, advertise: str, tail: str) -> IngestEndpoint:
        """``tail`` is what follows ``host:port`` in the URL (``/live/KEY``, ``?streamid=…``)."""
        return cls(protocol, key, port, bind_host, advertise,
                   publish_url=f"{protocol}://{advertise}:{port}{tail}",
                   local_publish_url=f"{protocol}://127.0.0.1:{port}{tail}")

    def redacted(self) -> str:
        """The publish URL with the key masked, for logs."""
        return self.publish_url.replace(self.key, self.key[:4] + "…")


class FrameSession(Protocol):
    """A publisher session that arrives as decoded frames instead of a container (WebRTC: aiortc
    depacketizes and decodes itself); ``ingest.rtc.TrackSession`` is the one implementation."""

    name: str
    codec: str
    on_access_unit: Callable[[bytes, int], None] | None  # received H.264 access units (Annex-B, 90 kHz RTP time)

    def next_frame(self, stop: threading.Event, stall_s: float) -> tuple[av.VideoFrame, int] | None:
        """(newest frame, bytes received since the last call); None once the session ended;
        ``TimeoutError`` after ``stall_s`` without a frame."""
        ...

    def close(self) -> None:
        ...


class VideoSource(Protocol):
    name: str
    live: bool  # real time: sample on the wall clock, latest frame wins
    reconnects: bool  # open again after the session ends (listeners, live URLs)
    rejected_publishers: int  # publishers turned away for a wrong key (0 for files and URLs)

    def open(self, stop: threading.Event) -> av.container.InputContainer | FrameSession | None:
        """Block until a publisher session starts; None when stopped or when there is nothing to wait for."""
        ...

    @property
    def failure(self) -> str | None:
        """Why the source can no longer receive (its relay exited), None while it can; cheap, polled."""
        ...

    def close(self) -> None:
        """Release sockets/relays; unblocks a pending ``open`` soon."""
        ...
