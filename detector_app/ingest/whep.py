"""WHEP playback client: pull a managed stream's WebRTC playback URL with aiortc.

    POST <url>  application/sdp recvonly offer (ICE gathered first, no trickle) → 201 answer + Location
    DELETE <Location>  when the session ends (best effort, bounded)

The received track becomes a ``TrackSession`` (``ingest.rtc``), so the decode thread treats it like a
WHIP publisher: same slot, clock and health. ``WhepSource`` is a ``VideoSource`` that connects again
after a session ends (with backoff); ``connect`` is one attempt, for ``managed``'s fallback decision.
"""

from __future__ import annotations

import asyncio
import threading
from urllib.parse import urljoin

import aiohttp
from loguru import logger

from detector_app.ingest.base import IngestError
from detector_app.ingest.rtc import RtcLoop, TrackSession, ice_hosts, ice_hosts_towards, prefer_h264, video_codec_of_sdp
from detector_app.ingest.url import redact_url

CONNECT_TIMEOUT_S = 8.0
DELETE_TIMEOUT_S = 2.0


class WhepError(IngestError):
    """One WHEP attempt failed (refused, unreachable, bad answer)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class WhepSource:
    """A ``VideoSource`` pulling one WHEP URL; every successful offer is one session."""

    live = True
    reconnects = True
    rejected_publishers = 0  # we pull: nobody publishes to us

    def __init__(self, url: str, connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        if not url.lower().startswith(("http://", "https://")):
            raise IngestError(f"WHEP URL must be http(s)://, got {redact_url(url)}")
        self.url = url
        self.name = f"whep:{redact_url(url)}"
        self.rtc = RtcLoop.get()
        self._connect_timeout_s = connect_timeout_s
        self._closed = threading.Event()
        self._current: TrackSession | None = None
        self._lock = threading.Lock()

    def connect(self, stop: threading.Event) -> TrackSession:
        """One offer/answer (bounded by the connect timeout); ``WhepError`` when it fails."""
        if stop.is_set() or self._closed.is_set():
            raise WhepError("stopped")
        try:
            session = self.rtc.run(self._offer(), self._connect_timeout_s + 1.0)
        except TimeoutError as exc:
            raise WhepError(f"{self.name}: no answer within {self._connect_timeout_s:.0f} s") from exc
        with self._lock:
            if self._closed.is_set():
                session.close()
                raise WhepError("closed")
            self._current = session
        return session

    async def _offer(self) -> TrackSession:
        from aiortc import RTCPeerConnection, RTCSessionDescription

        pc = RTCPeerConnection()
        location: list[str] = []
        session = TrackSession(self.name, self.rtc, pc, on_closed=lambda s: self._delete(location))

        @pc.on("track")
        def on_track(track) -> None:
            if track.kind == "video":
                receiver = next((t.receiver for t in pc.getTransceivers() if t.receiver.track is track), None)
                session.attach(track, receiver)

        prefer_h264(pc.addTransceiver("video", direction="recvonly"))  # the glasses' codec: no transcoding
        try:
            with ice_hosts(ice_hosts_towards(self.url)):  # a loopback relay: loopback candidates only
                await pc.setLocalDescription(await pc.createOffer())
            timeout = aiohttp.ClientTimeout(total=self._connect_timeout_s)
            async with aiohttp.ClientSession(timeout=timeout) as http, http.post(
                self.url, data=pc.localDescription.sdp, headers={"Content-Type": "application/sdp"}
            ) as r:
                text = await r.text()
                if r.status != 201:
                    raise WhepError(f"{self.name} refused the offer: HTTP {r.status} {text.strip()[:100]}", r.status)
                if "Location" in r.headers:
                    location.append(urljoin(self.url, r.headers["Location"]))
            await pc.setRemoteDescription(RTCSessionDescription(sdp=text, type="answer"))
        except WhepError:
            await pc.close()
            raise
        except Exception as exc:  # noqa: BLE001 - unreachable (ClientError, OSError, timeout) or an answer aiortc
            #                        refuses (ValueError, OperationError, KeyError, AssertionError): one attempt failed
            await pc.close()
            raise WhepError(f"{self.name}: {str(exc) or type(exc).__name__}") from exc
        except BaseException:
            await pc.close()
            raise
        session.codec = video_codec_of_sdp(text)
        return session

    def _delete(self, location: list[str]) -> None:
        """The session ended: tell the server (fire and forget on the loop, bounded)."""
        if not location:
            return

        async def delete() -> None:
            try:
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DELETE_TIMEOUT_S)) as http:
                    async with http.delete(location[0]):
                        pass
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
                pass  # the server is gone: nothing to free

        self.rtc.submit(delete())

    # -- VideoSource -------------------------------------------------------------------------------
    def open(self, stop: threading.Event) -> TrackSession | None:
        delay = 0.5
        while not (stop.is_set() or self._closed.is_set()):
            try:
                return self.connect(stop)
            except WhepError as exc:
                if stop.is_set() or self._closed.is_set():
                    return None
                logger.warning("{} (retrying in {:.1f} s)", exc, delay)
                if stop.wait(delay) or self._closed.wait(0):
                    return None
                delay = min(delay * 2, 8.0)
        return None

    @property
    def failure(self) -> None:
        return None

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            current, self._current = self._current, None
        if current is not None:
            current.close()
