"""A bounded ring of the *received* video packets of one stream, so a sighting's clip can be cut from
what the glasses sent, without re-encoding.

The decode thread feeds it (``PacketRing`` is the decoder's ``PacketTap``): one cheap append per packet
(the payload is copied out of the demuxer's buffer, ~250 KB/s at 2 Mbit/s). The ring is bounded by
duration *and* bytes, and evicts whole GOPs, so it always starts at a keyframe and a clip cut from it
always decodes. Each publisher session is its own segment with its own codec parameters (a new
publisher may send another size); older segments stay until the budget evicts them, so a sighting
that closes after its session ended still gets its clip.

Times are the transport's raw clock (``packet.pts * time_base`` = ``FrameResult.stream_pts``).
"""

from __future__ import annotations

import io
import threading
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction

import av
import av.container
import av.stream
from loguru import logger

DEFAULT_MAX_SECONDS = 90.0  # a sighting longer than ~85 s keeps the last 90 s in its clip (noted in its row)
DEFAULT_MAX_BYTES = 32 * 1024 * 1024  # ~170 s at Mentra Live's 1.5 Mbit/s: the duration bound usually wins
MAX_HOLDS = 256  # open sightings of one stream (the tracker keeps far fewer)
RESTART_S = 1.0  # the raw clock jumping back by more: a new publisher behind the same socket (SessionClock)


@dataclass(frozen=True, slots=True)
class StoredPacket:
    data: bytes
    pts: int | None
    dts: int | None
    keyframe: bool
    t: float  # raw seconds (pts, or dts when pts is unknown, times the time base)


@dataclass(frozen=True, slots=True)
class StreamFormat:
    """Codec parameters of one publisher session, held by a stream of a never-written container
    (PyAV copies codec parameters only from a ``Stream``; the input container closes with the session)."""

    template: av.stream.Stream
    time_base: Fraction
    codec: str
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class PacketRange:
    """What a clip is cut from: consecutive packets starting at a keyframe, and their codec parameters."""

    format: StreamFormat
    packets: tuple[StoredPacket, ...]

    @property
    def start_t(self) -> float:
        return self.packets[0].t

    @property
    def end_t(self) -> float:
        return self.packets[-1].t

    @property
    def nbytes(self) -> int:
        return sum(len(p.data) for p in self.packets)


@dataclass(slots=True)
class _Gop:
    packets: list[StoredPacket]
    nbytes: int


@dataclass(slots=True)
class _Segment:
    """One publisher session (or generation of one): whole GOPs, each starting at a keyframe."""

    session: int
    format: StreamFormat | None  # None: the codec cannot go into MP4 (nothing is kept)
    gops: deque[_Gop] = field(default_factory=deque)
    ended: bool = False

    @property
    def first_t(self) -> float:
        return self.gops[0].packets[0].t

    @property
    def last_t(self) -> float:
        return self.gops[-1].packets[-1].t

    @property
    def span(self) -> float:
        return self.last_t - self.first_t if self.gops else 0.0


def stream_format(stream: av.stream.Stream) -> StreamFormat | None:
    """Copy a demuxed video stream's codec parameters for later muxing into MP4, or None if MP4 cannot hold it."""
    holder = av.open(io.BytesIO(), "w", format="mp4")
    try:
        template = holder.add_stream_from_template(stream)
    except (ValueError, av.error.FFmpegError) as exc:  # e.g. a codec the MP4 muxer does not take
        logger.warning("sightings: no clips for this session: {}", exc)
        return None
    ctx = stream.codec_context
    return StreamFormat(template, Fraction(stream.time_base), ctx.name, ctx.width, ctx.height)


class PacketRing:
    """Received packets of one stream, newest last, bounded by ``max_seconds`` and ``max_bytes``.

    With ``idle_keep_s`` it holds only what a clip can still need: the last ``idle_keep_s`` (the pre-roll of
    a sighting not yet confirmed), plus, per ``hold(key, session, t)``, everything from raw time ``t`` of that
    session until ``release(key)`` (an open sighting's pre-roll start, until its clip is written). So an idle
    stream keeps a few seconds, not the whole budget, and memory follows what is in view.
    """

    def __init__(self, max_seconds: float = DEFAULT_MAX_SECONDS, max_bytes: int = DEFAULT_MAX_BYTES,
                 idle_keep_s: float | None = None) -> None:
        self.max_seconds = max_seconds
        self.max_bytes = max_bytes
        self.idle_keep_s = idle_keep_s
        self._holds: dict[object, tuple[int, float]] = {}
        self._segments: deque[_Segment] = deque()
        self._lock = threading.Lock()
        self._time_base: float | None = None  # float, not Fraction: Fraction arithmetic costs ~8 µs a packet
        self._session = 0
        self._bytes = 0
        self.evicted = 0  # packets dropped by the budget (a statistic)

    # -- the decoder's PacketTap (decode thread) ----------------------------------------------
    def session_started(self, session: int, stream: av.stream.Stream) -> None:
        fmt = stream_format(stream)
        with self._lock:
            self._end_current()
            self._session = session
            self._time_base = float(stream.time_base) if stream.time_base else None
            self._segments.append(_Segment(session, fmt))

    def packet(self, packet: av.Packet) -> None:
        ts = packet.pts if packet.pts is not None else packet.dts
        tb = self._time_base
        if ts is None or tb is None or not packet.size:
            return
        stored = StoredPacket(bytes(packet), packet.pts, packet.dts, packet.is_keyframe, ts * tb)
        with self._lock:
            seg = self._segments[-1] if self._segments else None
            if seg is None or seg.ended or seg.format is None:
                return
            if seg.gops and stored.t < seg.last_t - RESTART_S:  # a new publisher on the same socket
                seg.ended = True
                seg = _Segment(self._session, seg.format)
                self._segments.append(seg)
            if stored.keyframe:
                seg.gops.append(_Gop([stored], len(stored.data)))
            elif seg.gops:
                seg.gops[-1].packets.append(stored)
                seg.gops[-1].nbytes += len(stored.data)
            else:
                return  # joined mid-GOP: nothing decodes before the first keyframe
            self._bytes += len(stored.data)
            self._evict()

    def session_ended(self) -> None:
        with self._lock:
            self._end_current()

    # -- the clip writer's side ---------------------------------------------------------------
    def reached(self, session: int, t: float) -> bool:
        """True once the ring holds packets of ``session`` up to raw time ``t``, or that session is over."""
        with self._lock:
            if session != self._session:
                return True
            seg = self._segments[-1] if self._segments else None
            return seg is None or seg.ended or seg.format is None or (bool(seg.gops) and seg.last_t >= t)

    def cut(self, session: int, start_t: float, end_t: float) -> PacketRange | None:
        """Packets of ``session`` from the last keyframe at or before ``start_t`` (or the oldest kept) to the
        last packet at or before ``end_t``; None when the ring holds nothing of that time."""
        with self._lock:
            for seg in reversed(self._segments):
                if seg.session != session or seg.format is None or not seg.gops:
                    continue
                if seg.first_t > end_t or seg.last_t < start_t:
                    continue  # another publisher generation of the same session
                first = 0
                for i, gop in enumerate(seg.gops):
                    if gop.packets[0].t > start_t:
                        break
                    first = i
                packets = []
                for p in (p for gop in list(seg.gops)[first:] for p in gop.packets):
                    if p.t > end_t:
                        break  # decode order: with B-frames a later packet can show earlier, but needs this one
                    packets.append(p)
                return PacketRange(seg.format, tuple(packets)) if packets else None
        return None

    def hold(self, key: object, session: int, t: float) -> None:
        """Keep ``session``'s packets from raw time ``t`` (within the budget) until ``release(key)``."""
        with self._lock:
            self._holds[key] = (session, t)
            while len(self._holds) > MAX_HOLDS:  # a release lost with a dropped event: the oldest go
                del self._holds[next(iter(self._holds))]

    def release(self, key: object) -> None:
        with self._lock:
            self._holds.pop(key, None)
            self._trim()

    def has_packets(self) -> bool:
        with self._lock:
            return any(s.gops for s in self._segments)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes

    @property
    def seconds(self) -> float:
        with self._lock:
            return sum(s.span for s in self._segments)

    # -- internals (lock held) ----------------------------------------------------------------
    def _span(self) -> float:
        """Seconds held: the newest segment's span plus the older ones' (which change only on eviction)."""
        if len(self._segments) == 1:
            return self._segments[0].span
        return sum(s.span for s in self._segments)

    def _end_current(self) -> None:
        if self._segments:
            self._segments[-1].ended = True

    def _evict(self) -> None:
        """Drop whole GOPs from the oldest end until both budgets hold (the newest GOP always stays)."""
        while self._bytes > self.max_bytes or self._span() > self.max_seconds:
            seg = self._segments[0]
            if len(self._segments) == 1 and len(seg.gops) <= 1:
                return
            if seg.gops:
                gop = seg.gops.popleft()
                self._bytes -= gop.nbytes
                self.evicted += len(gop.packets)
            if not seg.gops and len(self._segments) > 1:
                self._segments.popleft()
        self._trim()

    def _trim(self) -> None:
        """Without a need (``idle_keep_s`` set): drop ended sessions nobody holds, and the newest session's
        GOPs that end before both its idle window and its holds."""
        if self.idle_keep_s is None:
            return
        held = {s for s, _ in self._holds.values()}
        while len(self._segments) > 1 and self._segments[0].session not in held:
            self._bytes -= sum(g.nbytes for g in self._segments[0].gops)
            self.evicted += sum(len(g.packets) for g in self._segments.popleft().gops)
        seg = self._segments[-1] if self._segments else None
        if seg is None or len(seg.gops) < 2:
            return
        keep = min([seg.last_t - self.idle_keep_s] + [t for s, t in self._holds.values() if s == seg.session])
        while len(seg.gops) > 1 and seg.gops[1].packets[0].t <= keep:
            gop = seg.gops.popleft()
            self._bytes -= gop.nbytes
            self.evicted += len(gop.packets)
