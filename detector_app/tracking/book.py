"""Track lifecycle: which tracked animals are *in view now*, and the events when that changes.

Pure logic, no I/O, no clock of its own: the caller passes each tracked ``FrameResult`` (and, for
timers, ``expire(now)``), so the same book serves the glasses feedback (its session clock) and the
sightings recorder (media time), and tests drive it with synthetic results.

API (one book per stream)::

    book = TrackBook()
    events = book.update(result)            # FrameResult whose detections carry track_id
    events += book.expire(now)              # timers between results (a stalled stream)
    events += book.close()                  # stream ended: every confirmed track leaves
    book.tracks                             # confirmed live tracks (Track snapshots), oldest first

Each :class:`TrackEvent` is ``appeared`` (a track became confirmed: seen in ``CONFIRM_HITS``
sampled frames, so one spurious box never becomes an animal), ``moved`` (its side — left/centre/
right by box centre — changed, with ``SIDE_HYSTERESIS`` so a box jittering on a boundary does
not flip), or ``left`` (not seen for ``LEFT_AFTER_S``). ``event.track`` is a frozen snapshot with
label, first/last seen (wall time and media pts), best confidence and the frame/box it came from.

Time base: ``now`` defaults to the result's media time (pts; wall time if unknown), so a file
replayed faster than real time ages tracks by its own clock. ``LEFT_AFTER_S`` is longer than the
tracker's 2 s lost buffer: an animal the tracker can still re-identify never "leaves" meanwhile;
one gone longer comes back as a new track (a new sighting, a new announcement).

A new publisher session (``result.extra["session"]`` changes) ends every track: the tracker has
been reset, so the ids that follow are new animals. Memory is bounded: ended tracks are dropped,
and at most ``MAX_TRACKS`` are kept (the stalest unconfirmed ones go first).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from detector_app.detection.types import Box, Detection, FrameResult

CONFIRM_HITS = 3  # sampled frames with one track_id before it counts (0.3 s at 10 FPS)
LEFT_AFTER_S = 3.0  # unseen this long → "left" (> the tracker's 2 s buffer)
SIDE_HYSTERESIS = 0.05  # a side changes only this far (fraction of frame width) past a third's boundary
MAX_TRACKS = 64
SIDES = ("left", "centre", "right")

EventKind = Literal["appeared", "moved", "left"]


@dataclass(frozen=True, slots=True)
class Track:
    """Snapshot of one tracked animal (wall times from ``received_at``, media times from ``pts``)."""

    track_id: int
    label: str
    side: str
    box: Box  # newest
    confidence: float  # newest
    first_seen: float
    last_seen: float
    first_pts: float | None
    last_pts: float | None
    hits: int
    best_confidence: float
    best_box: Box
    best_seq: int
    best_frame_index: int
    best_pts: float | None
    frame_size: tuple[int, int]
    source: str = ""
    session: object = None
    confirmed: bool = False


@dataclass(frozen=True, slots=True)
class TrackEvent:
    kind: EventKind
    track: Track
    previous_side: str | None = None  # for "moved"


def side_of(box: Box, frame_width: int, current: str | None = None) -> str:
    """Left/centre/right third by box-centre x; with ``current``, only a clear crossing changes it."""
    if frame_width <= 0:
        return "centre"
    x = box.center[0] / frame_width
    plain = "left" if x < 1 / 3 else "right" if x > 2 / 3 else "centre"
    if current is None or plain == current:
        return plain
    h = SIDE_HYSTERESIS
    lo, hi = {"left": (-1.0, 1 / 3 + h), "centre": (1 / 3 - h, 2 / 3 + h), "right": (2 / 3 - h, 2.0)}[current]
    return current if lo <= x <= hi else plain


class TrackBook:
    """Confirmed live tracks of one stream and their appeared/moved/left events (see module doc)."""

    def __init__(self, *, confirm_hits: int = CONFIRM_HITS, left_after_s: float = LEFT_AFTER_S) -> None:
        self.confirm_hits = confirm_hits
        self.left_after_s = left_after_s
        self._tracks: dict[int, Track] = {}
        self._seen_at: dict[int, float] = {}  # track id → book time of its last detection
        self._session: object = None
        self._now: float | None = None

    @property
    def tracks(self) -> tuple[Track, ...]:
        """Confirmed tracks that have not left, oldest first."""
        return tuple(t for t in self._tracks.values() if t.confirmed)

    def update(self, result: FrameResult, now: float | None = None) -> list[TrackEvent]:
        if now is None:
            now = result.pts if result.pts is not None else result.received_at
        events: list[TrackEvent] = []
        session = result.extra.get("session") if result.extra else None
        if session != self._session:
            events += self.close()
            self._session = session
        elif self._now is not None and now < self._now - 1.0:
            events += self.close()  # time went back without a session change: the clock restarted
        self._now = now
        for det in result.detections:
            if det.track_id is None:
                continue
            events += self._observe(det, result, now)
        events += self.expire(now)
        return events

    def expire(self, now: float) -> list[TrackEvent]:
        """Tracks unseen for ``left_after_s`` end (confirmed ones with a ``left`` event)."""
        events = []
        for tid in [tid for tid, at in self._seen_at.items() if now - at >= self.left_after_s]:
            events += self._end(tid)
        return events

    def close(self) -> list[TrackEvent]:
        """End every track (stream or session over); confirmed ones emit ``left``."""
        events = []
        for tid in list(self._tracks):
            events += self._end(tid)
        self._now = None
        return events

    # ---------------------------------------------------------------- internals

    def _observe(self, det: Detection, result: FrameResult, now: float) -> list[TrackEvent]:
        tid = det.track_id
        assert tid is not None
        old = self._tracks.get(tid)
        size = (result.width, result.height)
        events: list[TrackEvent] = []
        if old is None:
            if len(self._tracks) >= MAX_TRACKS:
                events += self._evict()
            track = Track(
                tid, det.label, side_of(det.box, result.width), det.box, det.confidence,
                result.received_at, result.received_at, result.pts, result.pts, 1,
                det.confidence, det.box, result.seq, result.frame_index, result.pts, size,
                result.source, self._session,
            )
        else:
            best = det.confidence > old.best_confidence
            track = replace(
                old, box=det.box, confidence=det.confidence, last_seen=result.received_at, last_pts=result.pts,
                hits=old.hits + 1, side=side_of(det.box, result.width, old.side), frame_size=size,
                **({"best_confidence": det.confidence, "best_box": det.box, "best_seq": result.seq,
                    "best_frame_index": result.frame_index, "best_pts": result.pts} if best else {}),
            )
        self._seen_at[tid] = now
        if not track.confirmed and track.hits >= self.confirm_hits:
            track = replace(track, confirmed=True)
            events.append(TrackEvent("appeared", track))
        elif track.confirmed and old is not None and track.side != old.side:
            events.append(TrackEvent("moved", track, previous_side=old.side))
        self._tracks[tid] = track
        return events

    def _end(self, tid: int) -> list[TrackEvent]:
        track = self._tracks.pop(tid, None)
        self._seen_at.pop(tid, None)
        return [TrackEvent("left", track)] if track is not None and track.confirmed else []

    def _evict(self) -> list[TrackEvent]:
        pool = [tid for tid, t in self._tracks.items() if not t.confirmed] or list(self._tracks)
        return self._end(min(pool, key=lambda tid: self._seen_at.get(tid, float("-inf"))))
