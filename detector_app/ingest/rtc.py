"""WebRTC plumbing shared by WHIP ingest, WHEP playback and the simulator's managed media.

* ``RtcLoop``: the one asyncio loop thread (``webrtc``) of the process. Every ``RTCPeerConnection``
  lives on it (aiortc objects are bound to the loop that made them), whoever asked for it: the
  miniapp's aiohttp handlers, a decode thread, the simulator.
* ``TrackSession``: one publisher session arriving as an aiortc video track. aiortc depacketizes and
  decodes H.264 itself and hands ``av.VideoFrame``s to ``track.recv()``; a pump on the loop takes each
  frame at once (aiortc's own queue behind ``recv()`` is unbounded, so it must never wait) and puts it
  into a one-frame handoff the decode thread reads: latest frame wins, nothing queues. aiortc's queue
  in front of its decoder is bounded by ``_Tap`` (past 1 s of backlog: drop, skip to a keyframe).
* ``ice_hosts``: which local addresses ICE offers, per peer connection (aioice skips loopback; tests
  and replay need exactly loopback, ``serve`` its bind address or every interface).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import fractions
import io
import queue
import re
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import aioice.ice
import av
from loguru import logger

from detector_app.procs import name_os_thread

T = TypeVar("T")
_original_host_addresses = aioice.ice.get_host_addresses
_ALL = None  # every interface: aioice's own choice (never loopback)
_ice_hosts: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar("ice_hosts", default=_ALL)


def _host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    chosen = _ice_hosts.get()
    return list(chosen) if chosen else _original_host_addresses(use_ipv4, use_ipv6)


# aioice has no per-connection setting and looks this function up at gathering time: ours answers
# from a context variable, which the task gathering (and the tasks aiortc starts for it) carries.
aioice.ice.get_host_addresses = _host_addresses


@contextlib.contextmanager
def ice_hosts(hosts: Sequence[str] | None):
    """ICE host candidates on ``hosts`` only (e.g. ``["127.0.0.1"]``; None = every interface) for the
    peer connections whose ``setLocalDescription`` runs inside this block, in this task. Two peer
    connections on the one WebRTC loop (a WHIP ingest on one address, a WHEP pull from a remote
    relay) each get their own."""
    token = _ice_hosts.set(tuple(hosts) if hosts else _ALL)
    try:
        yield
    finally:
        _ice_hosts.reset(token)


def ice_hosts_for(bind_host: str) -> list[str] | None:
    """ICE follows the ingest's bind address: a specific address → only it, a wildcard → all."""
    if bind_host in ("", "0.0.0.0", "::"):
        return None
    return ["127.0.0.1" if bind_host == "localhost" else bind_host]


def ice_hosts_towards(url: str) -> list[str] | None:
    """A peer on loopback gets loopback candidates only; a remote one our real interfaces."""
    from urllib.parse import urlsplit

    return ["127.0.0.1"] if urlsplit(url).hostname in ("127.0.0.1", "localhost") else None


def prefer_h264(transceiver: Any) -> None:
    """Only H.264 on this transceiver: what the glasses' encoder makes, so packets pass unchanged."""
    from aiortc import RTCRtpSender

    caps = RTCRtpSender.getCapabilities("video").codecs
    transceiver.setCodecPreferences([c for c in caps if c.mimeType.lower() in ("video/h264", "video/rtx")])


def video_codec_of_sdp(sdp: str) -> str:
    """The first video codec an SDP answer settled on (``h264``, ``vp8``…), for the health line."""
    m = re.search(r"^m=video \S+ \S+ (\d+)", sdp, re.M)
    if m:
        rtpmap = re.search(rf"^a=rtpmap:{m.group(1)} ([A-Za-z0-9]+)/", sdp, re.M)
        if rtpmap:
            return rtpmap.group(1).lower()
    return "unknown"


class RtcLoop:
    """The process's one WebRTC loop thread, started on first use; ``run``/``call`` hop onto it."""

    _instance: RtcLoop | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._main, args=(ready,), name="webrtc", daemon=True)
        self.thread.start()
        ready.wait(5.0)

    @classmethod
    def get(cls) -> RtcLoop:
        with cls._lock:
            if cls._instance is None:
                cls._instance = RtcLoop()
            return cls._instance

    def _main(self, ready: threading.Event) -> None:
        name_os_thread("webrtc")
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(ready.set)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """From a plain thread: run ``coro`` on the loop, wait at most ``timeout`` (then cancel it)."""
        fut = self.submit(coro)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise TimeoutError(f"WebRTC operation did not finish within {timeout:.1f} s") from None

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """From another asyncio loop (the miniapp's, the simulator's): await ``coro`` run on ours."""
        if asyncio.get_running_loop() is self.loop:
            return await coro
        return await asyncio.wrap_future(self.submit(coro))


MAX_DECODE_BACKLOG = 30  # access units waiting for aiortc's decoder: 1 s of 30 fps video


class _Tap:
    """Stands in for aiortc's receiver → decoder queue: counts the bytes of every received access unit
    (bitrate), optionally hands the Annex-B access unit to ``on_access_unit``, and bounds the queue.

    aiortc's decoder queue is unbounded: on a CPU-starved box (inference holding both cores) decoding
    falls behind and every frame would be decoded late, later and later. Past ``max_backlog`` waiting
    units the tap drops them all and skips to the next keyframe (the only frame that decodes without
    them), and flags a decode error so aiortc sends the publisher a PLI (keyframe request). Latest wins
    here too, as in our frame handoff; the clip ring still gets every unit (the received bytes).

    aiortc 1.16 keeps that queue in a private attribute (``RTCRtpReceiver.__decoder_queue``); if it is
    missing (another aiortc), the tap is skipped and bitrate reads 0: nothing else changes."""

    def __init__(self, inner: Any, on_bytes: Callable[[int], None],
                 on_access_unit: Callable[[bytes, int], None] | None, *,
                 max_backlog: int = MAX_DECODE_BACKLOG, want_keyframe: threading.Event | None = None) -> None:
        self._inner = inner
        self._on_bytes = on_bytes
        self.on_access_unit = on_access_unit
        self.max_backlog = max_backlog
        self._want_keyframe = want_keyframe  # aiortc's decode-error flag: set → PLI on the next packet
        self.skipping = False
        self.dropped = 0  # access units never decoded (backlog dropped, or skipped to a keyframe)

    def put(self, item: Any, *args: Any, **kwargs: Any) -> None:
        if item is None:  # the receiver stopping: always delivered
            self._inner.put(item, *args, **kwargs)
            return
        codec, encoded = item
        data = getattr(encoded, "data", b"")
        self._on_bytes(len(data))
        if self.on_access_unit is not None:
            try:
                self.on_access_unit(data, getattr(encoded, "timestamp", 0))  # 90 kHz RTP clock
            except Exception as exc:  # noqa: BLE001 - inside aiortc's receive path: the clip ring's
                #                        failure must never stop the video itself
                self.on_access_unit = None
                logger.warning("WebRTC access-unit tap failed, no clips for this session: {!r}", exc)
        if not self.skipping and self._inner.qsize() >= self.max_backlog:
            self.dropped += self._drain()
            self.skipping = True
            if self._want_keyframe is not None:
                self._want_keyframe.set()
            logger.warning("WebRTC decoding fell {} frames behind (CPU starved): dropped them, waiting for "
                           "a keyframe ({} dropped this session)", self.max_backlog, self.dropped)
        if self.skipping:
            if not _is_keyframe(getattr(codec, "name", "h264"), data):
                self.dropped += 1
                return
            self.skipping = False
        self._inner.put(item, *args, **kwargs)

    def _drain(self) -> int:
        """Take every waiting unit off the queue (the decoder thread may take one meanwhile); a stop
        sentinel found there goes back."""
        n, stop = 0, False
        while True:
            try:
                got = self._inner.get_nowait()
            except queue.Empty:
                break
            if got is None:
                stop = True
            else:
                n += 1
        if stop:
            self._inner.put(None)
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _is_keyframe(codec: str, data: bytes) -> bool:
    """Whether a received frame decodes on its own: an H.264 IDR inside, a VP8 key frame (RFC 6386:
    bit 0 of the first byte clear); any other codec is taken as decodable."""
    name = codec.lower()
    if name == "h264":
        return 5 in _nal_types(data)
    if name == "vp8":
        return bool(data) and not data[0] & 0x01
    return True


def tap_receiver(receiver: Any, on_bytes: Callable[[int], None],
                 on_access_unit: Callable[[bytes, int], None] | None = None) -> bool:
    attr = "_RTCRtpReceiver__decoder_queue"
    inner = getattr(receiver, attr, None)
    if inner is None or not hasattr(inner, "put"):
        logger.debug("aiortc receiver has no decoder queue to tap: WebRTC bitrate reads 0")
        return False
    error = getattr(receiver, "_RTCRtpReceiver__decoder_error", None)
    setattr(receiver, attr, _Tap(inner, on_bytes, on_access_unit,
                                 want_keyframe=error if isinstance(error, threading.Event) else None))
    return True


def _nal_types(data: bytes) -> set[int]:
    """NAL unit types in an Annex-B access unit (start codes 00 00 01 / 00 00 00 01)."""
    types, i = set(), data.find(b"\x00\x00\x01")
    while i != -1 and i + 3 < len(data):
        types.add(data[i + 3] & 0x1F)
        i = data.find(b"\x00\x00\x01", i + 3)
    return types


class AccessUnitFeed:
    """Received H.264 access units → ``av.Packet``s for a packet tap (the sightings' clip ring), as a
    demuxer would give them: pts = dts = the RTP timestamp in 1/90000 s (the decoded frames' own
    ``frame.time`` base, so clip cuts line up with frames), keyframe = an IDR inside. The stream the
    tap copies its codec parameters from is PyAV's raw-H.264 demuxer run over the first keyframe (its
    SPS/PPS). Runs on the WebRTC loop thread, so every step is cheap; nothing before the first
    keyframe is passed on (it cannot be decoded)."""

    TIME_BASE = fractions.Fraction(1, 90000)

    def __init__(self, tap: Any, session: int) -> None:
        self.tap = tap
        self.session = session
        self.started = False
        self._probe: Any = None  # the in-memory demuxer whose stream the tap copied

    def __call__(self, data: bytes, timestamp: int) -> None:
        key = _is_keyframe("h264", data)
        if not self.started:
            if not key or not self._start(data):
                return
        packet = av.Packet(data)
        packet.pts = packet.dts = timestamp
        packet.time_base = self.TIME_BASE
        packet.is_keyframe = key
        self.tap.packet(packet)

    def _start(self, keyframe: bytes) -> bool:
        try:
            probe = av.open(io.BytesIO(keyframe), format="h264")
            stream = probe.streams.video[0]
            stream.time_base = self.TIME_BASE
        except (av.error.FFmpegError, IndexError, ValueError) as exc:
            logger.debug("WebRTC access units: no stream parameters from the keyframe: {}", exc)
            return False
        self.tap.session_started(self.session, stream)
        probe.close()
        self.started = True
        return True


class TrackSession:
    """One publisher session on a WebRTC video track, read by the decode thread with ``next_frame``.

    Ends when the track ends, the peer connection fails or closes, or ``end()`` is called (DELETE,
    a replacing publisher, the source closing); ``close()`` also closes the peer connection."""

    def __init__(self, name: str, rtc: RtcLoop, pc: Any, codec: str = "h264",
                 on_closed: Callable[[TrackSession], None] | None = None) -> None:
        self.name = name
        self.codec = codec
        self.rtc = rtc
        self.pc = pc
        self.started_at = time.monotonic()
        self.overwritten = 0  # frames replaced in the handoff before the decode thread took them
        self.delivered = 0  # frames the decode thread took (0 at the end: media never flowed)
        self._cond = threading.Condition()
        self._frame: av.VideoFrame | None = None
        self._bytes = 0
        self._ended: str | None = None  # why, once ended
        self._closed = False
        self._pump: asyncio.Task[None] | None = None
        self._on_closed = on_closed
        self.on_access_unit: Callable[[bytes, int], None] | None = None  # H.264 tap for a packet recorder

        @pc.on("connectionstatechange")
        def _state() -> None:
            if pc.connectionState in ("failed", "closed"):
                self.end(f"peer connection {pc.connectionState}")

    # -- on the loop ---------------------------------------------------------------------------
    def attach(self, track: Any, receiver: Any | None) -> None:
        """The offer's video track arrived (aiortc's ``track`` event, on the loop): start pumping it."""
        if receiver is not None:
            tap_receiver(receiver, self._add_bytes, self._access_unit)
        self._pump = asyncio.ensure_future(self._run_pump(track))

    def _access_unit(self, data: bytes, timestamp: int) -> None:
        cb = self.on_access_unit
        if cb is not None:
            cb(data, timestamp)

    def _add_bytes(self, n: int) -> None:
        with self._cond:
            self._bytes += n

    async def _run_pump(self, track: Any) -> None:
        try:
            while True:
                frame = await track.recv()
                with self._cond:
                    if self._ended:
                        return
                    if self._frame is not None:
                        self.overwritten += 1
                    self._frame = frame
                    self._cond.notify_all()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - MediaStreamError: the track ended
            self.end("publisher track ended")

    # -- any thread ----------------------------------------------------------------------------
    def end(self, why: str) -> None:
        with self._cond:
            if self._ended is None:
                self._ended = why
            self._cond.notify_all()

    @property
    def ended(self) -> str | None:
        with self._cond:
            return self._ended

    def next_frame(self, stop: threading.Event, stall_s: float) -> tuple[av.VideoFrame, int] | None:
        """(newest frame, bytes received since the last call), None when the session ended or ``stop``
        is set; ``TimeoutError`` after ``stall_s`` without a frame (a publisher gone without a word)."""
        deadline = time.monotonic() + stall_s
        with self._cond:
            while self._frame is None:
                if self._ended is not None or stop.is_set():
                    return None
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no video for {stall_s:.0f} s")
                self._cond.wait(min(left, 0.25))
            frame, self._frame = self._frame, None
            nbytes, self._bytes = self._bytes, 0
            self.delivered += 1
            return frame, nbytes

    def _mark_closed(self) -> bool:
        self.end("closed")
        with self._cond:
            if self._closed:
                return False
            self._closed = True
            self._frame = None
            return True

    async def _shut(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
        await self.pc.close()

    def close(self, timeout: float = 2.0) -> None:
        """End the session and close its peer connection (bounded; from a plain thread, or scheduled
        when called on the WebRTC loop); idempotent."""
        if not self._mark_closed():
            return
        try:
            if threading.current_thread() is self.rtc.thread:
                asyncio.ensure_future(self._shut())
            else:
                self.rtc.run(self._shut(), timeout)
        except Exception as exc:  # noqa: BLE001 - closing a dead connection may fail; it is gone either way
            logger.debug("{}: peer connection close: {}", self.name, exc)
        if self._on_closed is not None:
            self._on_closed(self)

    async def aclose(self) -> None:
        """``close`` for asyncio callers (the miniapp's HTTP handlers): never blocks their loop."""
        if not self._mark_closed():
            return
        try:
            await self.rtc.call(self._shut())
        except Exception as exc:  # noqa: BLE001 - as in close()
            logger.debug("{}: peer connection close: {}", self.name, exc)
        if self._on_closed is not None:
            self._on_closed(self)
