"""The decode thread: source sessions → decoded frames → latest-frame slot.

Frames stay as ``av.VideoFrame`` (YUV) in the slot; only frames somebody uses are converted to
BGR (≈1.6 ms each at 720p), by the consumer. A publisher that drops, stalls or sends garbage ends
the session with a log line; live sources are then opened again for the next publisher.
"""

from __future__ import annotations

import errno
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import av
import av.container
import av.stream
from loguru import logger

from detector_app.ingest.base import FrameSession, IngestError, VideoSource
from detector_app.procs import name_os_thread
from detector_app.video.health import HealthMeter
from detector_app.video.sampler import PtsSampler
from detector_app.video.slot import LatestSlot

MAX_CONSECUTIVE_DECODE_ERRORS = 150  # ~5 s of 30 fps garbage ends the session
FRAME_STALL_S = 3.0  # a decoded-frame session (WebRTC) without a frame this long has lost its publisher
FIRST_FRAME_S = 8.0  # …and before its first frame: ICE + DTLS over a slow hotspot take longer than a gap


class SessionClock:
    """One clock for every transport: media time in seconds since the publisher session's first frame.

    FLV (RTMP) starts at 0, MPEG-TS (SRT) at the muxer's offset (~1.4 s), an MP4 wherever its edit
    list says; outputs that compare runs must not see that difference. A jump back by more than
    ``RESTART_S`` is a new publisher behind the same socket (the SRT relay survives reconnects and the
    new stream's timestamps start again): it counts from its own first frame.
    """

    RESTART_S = 1.0

    def __init__(self) -> None:
        self._origin: float | None = None
        self._last: float | None = None

    def reset(self) -> None:
        self._origin = self._last = None

    def __call__(self, raw: float | None) -> float | None:
        if raw is None:
            return None
        if self._origin is None or (self._last is not None and raw < self._last - self.RESTART_S):
            self._origin = raw
        self._last = raw
        return raw - self._origin


class PacketTap(Protocol):
    """Sees every demuxed video packet of a session (the sightings' packet ring). It runs on the decode
    thread, so it must be cheap; for WebRTC sessions the received access units reach it from the WebRTC
    loop thread instead (``ingest.rtc.AccessUnitFeed``)."""

    def session_started(self, session: int, stream: av.stream.Stream) -> None: ...

    def packet(self, packet: av.Packet) -> None: ...

    def session_ended(self) -> None: ...


@dataclass(frozen=True, slots=True)
class DecodedFrame:
    frame: av.VideoFrame
    index: int  # decoded-frame counter across all sessions
    pts: float | None  # seconds since the first frame of its publisher session (same on every transport)
    received_at: float  # time.time() when decoding finished
    session: int
    stream_pts: float | None = None  # the raw timestamp as the transport delivered it (MPEG-TS starts ~1.4 s)


class DecodeThread(threading.Thread):
    def __init__(
        self,
        source: VideoSource,
        slot: LatestSlot[DecodedFrame],
        health: HealthMeter,
        stop: threading.Event,
        pts_sampler: PtsSampler | None = None,
        packet_tap: PacketTap | None = None,
    ) -> None:
        super().__init__(name=f"decode:{source.name}", daemon=True)
        self.source = source
        self.slot = slot
        self.health = health
        self.stop_event = stop
        self.pts_sampler = pts_sampler  # offline mode: only frames on the sampling grid are offered
        self.packet_tap = packet_tap
        self.finished = threading.Event()
        self.fatal: BaseException | None = None
        self._index = 0
        self._clock = SessionClock()

    def run(self) -> None:
        name_os_thread("decode")
        try:
            while not self.stop_event.is_set():
                try:
                    container = self.source.open(self.stop_event)
                except IngestError as exc:
                    self.fatal = exc
                    logger.error("{}", exc)
                    break
                except (av.error.FFmpegError, OSError) as exc:
                    self.fatal = exc
                    logger.error("Cannot open {}: {}", self.source.name, exc)
                    break
                if container is None:
                    break
                if hasattr(container, "next_frame"):  # a FrameSession (WebRTC), not a container
                    self._run_frame_session(container)
                else:
                    self._run_session(container)
                if not self.source.reconnects:
                    break
                if not self.stop_event.is_set():
                    logger.info("{}: waiting for the next publisher", self.source.name)
        except BaseException as exc:  # never die silently: the pipeline reports it
            self.fatal = exc
            logger.exception("decode thread crashed: {}", exc)
        finally:
            self.finished.set()
            self.slot.close()

    def _begin_session(self, codec: str, what: str, width: int = 0, height: int = 0) -> int:
        """A publisher session starts (either kind): health, log line, and media time from zero again."""
        self.health.session_started(codec, width, height)
        session = self.health.sessions
        logger.info("{}: publisher session {} started: {} {}", self.source.name, session, codec, what)
        if self.pts_sampler is not None:
            self.pts_sampler.reset()
        self._clock.reset()
        return session

    def _run_session(self, container: av.container.InputContainer) -> None:
        vstream = container.streams.video[0]
        ctx = vstream.codec_context
        session = self._begin_session(ctx.name, f"{ctx.width}x{ctx.height}", ctx.width, ctx.height)
        error: str | None = None
        bad_in_a_row = 0
        tap = self.packet_tap
        if tap is not None:
            tap.session_started(session, vstream)
        try:
            for packet in container.demux(vstream):
                if self.stop_event.is_set():
                    break
                if packet.size:
                    self.health.packet(packet.size)
                    if tap is not None:
                        tap.packet(packet)
                try:
                    frames = packet.decode()
                    bad_in_a_row = 0
                except av.error.InvalidDataError as exc:
                    # Joining mid-GOP or a corrupt packet: skip until the decoder resyncs on a keyframe.
                    self.health.error(f"decode: {exc}")
                    bad_in_a_row += 1
                    if bad_in_a_row >= MAX_CONSECUTIVE_DECODE_ERRORS:
                        raise
                    continue
                for frame in frames:
                    self._emit(frame, session)
        except EOFError:
            error = None
        except av.error.ExitError as exc:
            error = f"stream stalled (no data for the read timeout): {exc}"
        except (av.error.FFmpegError, OSError) as exc:
            # A publisher leaving is an I/O error, not EOF (field notes); anything else is a broken stream.
            error = "publisher disconnected" if exc.errno == errno.EIO else f"stream broken: {exc}"
        finally:
            try:
                container.close()
            except Exception:  # noqa: BLE001 - closing a broken container may itself fail
                pass
            if tap is not None:
                tap.session_ended()
            self.health.session_ended(error)
        if error and not self.stop_event.is_set():
            (logger.info if self.source.reconnects else logger.warning)("{}: session {} ended: {}", self.source.name, session, error)
        else:
            logger.info("{}: session {} ended", self.source.name, session)

    def _run_frame_session(self, frames: FrameSession) -> None:
        """A session that arrives decoded (WebRTC): same slot, clock, health and session semantics;
        no frames for ``FRAME_STALL_S`` (a publisher gone without a word; ``FIRST_FRAME_S`` before the
        first frame) ends it like a read timeout."""
        session = self._begin_session(frames.codec, "(WebRTC)")
        error: str | None = None
        feed = None
        first_index = self._index
        if self.packet_tap is not None and hasattr(frames, "on_access_unit"):
            from detector_app.ingest.rtc import AccessUnitFeed  # lazy: only WebRTC sessions get here

            feed = frames.on_access_unit = AccessUnitFeed(self.packet_tap, session)  # called on the WebRTC thread
        try:
            while not self.stop_event.is_set():
                got = frames.next_frame(self.stop_event, FRAME_STALL_S if self._index > first_index else FIRST_FRAME_S)
                if got is None:
                    break
                frame, nbytes = got
                if nbytes:
                    self.health.packet(nbytes)
                self._emit(frame, session)
        except TimeoutError as exc:
            error = f"stream stalled ({exc})"
        finally:
            if feed is not None:
                frames.on_access_unit = None
            frames.close()
            if feed is not None and feed.started:
                self.packet_tap.session_ended()
            self.health.session_ended(error)
        logger.info("{}: session {} ended{}", self.source.name, session, f": {error}" if error else "")

    def _emit(self, frame: av.VideoFrame, session: int) -> None:
        raw = float(frame.time) if frame.time is not None else None
        self.health.frame(raw, frame.width, frame.height)
        self._index += 1
        pts = self._clock(raw)
        if self.pts_sampler is not None and not self.pts_sampler.select(pts):
            return
        self.slot.put(DecodedFrame(frame, self._index, pts, time.time(), session, raw), self.stop_event)

