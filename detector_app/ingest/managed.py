"""Managed-stream playback: the miniapp pulls the cloud's playback URL instead of being pushed to.

For glasses that cannot reach our ingest (outdoors, a phone's hotspot) the cloud runs the stream
and hands out playback URLs (``managed_stream_status``: ``webrtcUrl``, ``hlsUrl``, ``dashUrl``).
``open_playback_source`` pulls WebRTC (WHEP) by default, the low-latency one, and falls back to HLS
when WebRTC is absent, refused, or never delivers a frame (ICE blocked). HLS is opened by PyAV
(``ingest.url.UrlSource``) at the live edge (``live_start_index=-1``); it costs seconds of latency
(a segment is at least one GOP: 2 s on Mentra Live), measured in the README.
"""

from __future__ import annotations

import threading
import time
from typing import Literal

import av.container
from loguru import logger

from detector_app.ingest.base import FrameSession, IngestError, VideoSource
from detector_app.ingest.url import UrlSource, redact_url
from detector_app.ingest.whep import WhepError, WhepSource

Prefer = Literal["webrtc", "hls"]
HLS_OPTIONS = {
    "live_start_index": "-1",  # start at the newest segment, not three back (FFmpeg's default)
    "http_persistent": "1",
    "m3u8_hold_counters": "30",  # a playlist that stops changing for ~30 reloads ends the session
}


class PacedContainer:
    """An opened live HLS container whose ``demux`` hands packets out on their timestamps, as a player
    does: PyAV reads a whole segment at once (a 2 s burst), and with latest-frame-wins a burst would
    leave one frame for the detector. A stall (the next segment late) re-anchors the clock."""

    REANCHOR_S = 1.0

    def __init__(self, container: av.container.InputContainer) -> None:
        self._c = container
        self.streams = container.streams

    def demux(self, *streams):
        base: float | None = None
        for packet in self._c.demux(*streams):
            ts = packet.dts if packet.dts is not None else packet.pts
            if ts is not None and packet.time_base is not None:
                t = float(ts * packet.time_base)
                now = time.monotonic()
                if base is None or abs(now - (base + t)) > self.REANCHOR_S:  # a sleep is never longer either
                    base = now - t
                delay = base + t - now
                if delay > 0:
                    time.sleep(delay)
            yield packet

    def close(self) -> None:
        self._c.close()


class ManagedPlaybackSource:
    """A ``VideoSource`` over a managed stream's playback URLs; ``transport`` says which one is in use."""

    live = True
    reconnects = True
    rejected_publishers = 0

    def __init__(self, webrtc_url: str | None, hls_url: str | None, prefer: Prefer = "webrtc") -> None:
        if not webrtc_url and not hls_url:
            raise IngestError("the managed stream has no playback URL (neither webrtcUrl nor hlsUrl)")
        if hls_url and not hls_url.lower().startswith(("http://", "https://")):  # the cloud names it: never a
            raise IngestError(f"managed stream hlsUrl must be http(s)://, got {redact_url(hls_url)}")  # local file
        self._whep = WhepSource(webrtc_url) if webrtc_url else None
        self._hls = UrlSource(hls_url, live=True, options=HLS_OPTIONS, name=f"hls:{redact_url(hls_url)}") if hls_url else None
        self.transport: Prefer = "webrtc" if (prefer == "webrtc" and self._whep) or not self._hls else "hls"
        self.name = f"managed:{(self._whep or self._hls).name}"  # type: ignore[union-attr]
        self._last: FrameSession | None = None
        self._lock = threading.Lock()

    def _fall_back(self, why: str) -> bool:
        if self._hls is None:
            return False
        logger.warning("{}: WebRTC playback failed ({}); falling back to HLS (seconds more latency)", self.name, why)
        self.transport = "hls"
        return True

    def open(self, stop: threading.Event) -> av.container.InputContainer | FrameSession | None:
        if self.transport == "webrtc":
            assert self._whep is not None
            last = self._last
            if last is not None and getattr(last, "delivered", 1) == 0 and self._fall_back("no video arrived"):
                return self._open_hls(stop)
            try:
                session = self._whep.connect(stop)
            except WhepError as exc:
                if stop.is_set():
                    return None
                if not self._fall_back(str(exc)):
                    return self._whep.open(stop)  # WebRTC only: retry with backoff
            else:
                self._last = session
                return session
        assert self._hls is not None
        return self._open_hls(stop)

    def _open_hls(self, stop: threading.Event) -> PacedContainer | None:
        assert self._hls is not None
        container = self._hls.open(stop)
        return PacedContainer(container) if container is not None else None

    @property
    def failure(self) -> None:
        return None

    def close(self) -> None:
        for s in (self._whep, self._hls):
            if s is not None:
                s.close()


def open_playback_source(webrtc_url: str | None, hls_url: str | None, prefer: Prefer = "webrtc") -> VideoSource:
    """The managed stream's video as a ``VideoSource``: WHEP by default, HLS as the fallback."""
    return ManagedPlaybackSource(webrtc_url, hls_url, prefer)
