"""Track events → sighting rows, thumbnails and clips.

    sightings = Sightings(SightingsConfig(db=path))      # one per process: the store, retention
    recorder = sightings.recorder()                       # one per stream: Pipeline(..., recorder=recorder)
    ...                                                   # the pipeline feeds it and closes it in stop()
    sightings.close()

Per stream: the decode thread feeds ``recorder.packet_tap`` (a ``PacketRing``); the inference thread calls
``on_frame(result, bgr)``, which runs the stream's own ``tracking.TrackBook`` over the tracked results
(the lifecycle lives there, not here) and only *queues* work: it never touches the disk. One worker
thread per stream does the I/O in order: a row when a track is confirmed (with a first thumbnail), its
``last_seen`` every ``PROGRESS_S`` while in view, the final row and best-frame thumbnail when the track
leaves, and the clip once the ring holds ``post_roll_s`` past the last sighting (or the session ended).
The queue is bounded: on overflow the event is dropped with a log line (detection never waits).

Best frame: the book names the result (``best_seq``) of each track's best confidence; the recorder keeps
references to the last few sampled frames (no copies) and pins the one a track names, so each open
track holds at most one frame. Frames are never drawn on: the thumbnail draws on its own copy.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
from loguru import logger

from detector_app.detection.types import Detection, FrameResult
from detector_app.procs import name_os_thread
from detector_app.sightings.clips import write_clip
from detector_app.sightings.packets import DEFAULT_MAX_BYTES, DEFAULT_MAX_SECONDS, PacketRing
from detector_app.sightings.store import SightingStore, file_label
from detector_app.sightings.thumbs import thumbnail_jpeg
from detector_app.tracking.book import CONFIRM_HITS, LEFT_AFTER_S, Track, TrackBook, TrackEvent

PRE_ROLL_S = 2.0
POST_ROLL_S = 2.0
PROGRESS_S = 5.0  # an open sighting's last_seen is written this often (live views; stale-row detection)
STALE_OPEN_S = 60.0  # an open row not updated this long belongs to a process that died: closed at start
CLIP_WAIT_S = 10.0  # a clip waits at most this long past its post-roll for the packets (a stalled stream)
QUEUE_SIZE = 256
MAX_OPEN_ROWS = 1024  # the writer's track id → row map (entries leave when their sighting closes)
STALL_CLOSE_S = LEFT_AFTER_S + 1.0  # no tracked result for this long (wall clock): the stream stalled or its
#                                     publisher left; open sightings close then, not when frames return
CONFIRM_MARGIN_S = 2.0  # the ring keeps pre-roll + this while nothing is open: a track is confirmed ~0.3 s
#                         after its first frame, and inference may lag the decoder by a second on a busy box
RETENTION_EVERY_S = 600.0
NO_PACKETS = "no clip: this source delivers decoded frames only, no packets to cut"


def default_data_dir() -> Path:
    """``$DATA_DIR``, else ``$XDG_DATA_HOME/detector-app`` (``~/.local/share/detector-app``)."""
    if os.environ.get("DATA_DIR"):
        return Path(os.environ["DATA_DIR"]).expanduser()
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "detector-app"


def default_db() -> Path:
    return default_data_dir() / "sightings.db"


@dataclass(frozen=True, slots=True)
class SightingsConfig:
    """Where sightings go and how long they stay; pre/post-roll and the packet ring's hard bounds."""

    db: Path
    max_age_days: float | None = 30.0
    max_mb: float | None = 2048.0
    pre_roll_s: float = PRE_ROLL_S
    post_roll_s: float = POST_ROLL_S
    ring_seconds: float = DEFAULT_MAX_SECONDS
    ring_bytes: int = DEFAULT_MAX_BYTES


class Sightings:
    """The process's sightings: one store, retention at start and every ``RETENTION_EVERY_S``."""

    def __init__(self, config: SightingsConfig) -> None:
        self.config = config
        self.store = SightingStore(config.db)
        self._retained_at = 0.0
        self._lock = threading.Lock()
        closed = self._close_stale()
        self.maybe_retain()
        logger.info("sightings: {} ({} interrupted sighting(s) of an earlier run closed)", config.db, closed)

    def recorder(self) -> SightingRecorder:
        return SightingRecorder(self)

    def maybe_retain(self) -> None:
        with self._lock:
            if time.monotonic() - self._retained_at < RETENTION_EVERY_S and self._retained_at:
                return
            self._retained_at = time.monotonic()
        n = self.store.apply_retention(self.config.max_age_days, self.config.max_mb)
        if n:
            logger.info("sightings retention: {} old sighting(s) deleted", n)

    def _close_stale(self) -> int:
        return self.store.close_stale(STALE_OPEN_S, "interrupted: the process ended before the track left")

    def close(self) -> None:
        self.store.close()


@dataclass(frozen=True, slots=True)
class _Pinned:
    """The frame a track's thumbnail is drawn on, with the box and confidence it had there."""

    seq: int
    frame: np.ndarray
    detection: Detection


@dataclass(slots=True)
class _Job:
    kind: str  # "open" | "progress" | "close"
    track: Track
    pinned: _Pinned | None = None
    offset: float | None = None  # raw stream time − media time, for the clip's cut
    at: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class _PendingClip:
    row: int
    track: Track
    start_raw: float
    end_raw: float
    offset: float
    deadline: float
    stem: str


class SightingRecorder:
    """One stream's sightings (see module doc); ``packet_tap`` goes to the decoder."""

    def __init__(self, sightings: Sightings) -> None:
        cfg = sightings.config
        self.sightings = sightings
        self.store = sightings.store
        self.pre_roll_s, self.post_roll_s = cfg.pre_roll_s, cfg.post_roll_s
        self.packet_tap = self.ring = PacketRing(cfg.ring_seconds, cfg.ring_bytes,
                                                 idle_keep_s=cfg.pre_roll_s + CONFIRM_MARGIN_S)
        self._book = TrackBook()
        self._recent: deque[tuple[int, np.ndarray]] = deque(maxlen=CONFIRM_HITS + 1)
        self._best: dict[int, _Pinned] = {}  # track id → its best frame still held
        self._progress_at: dict[int, float] = {}
        self._offsets: dict[object, float] = {}  # session → stream_pts − pts
        self._queue: queue.Queue[_Job | None] = queue.Queue(QUEUE_SIZE)
        self._lock = threading.Lock()  # the book and frames: the inference thread, and the writer on a stall
        self._last_frame_at = 0.0
        self.dropped = 0
        self._closed = False
        self._stop_unqueued = threading.Event()  # close() could not queue its stop (queue full)
        # Started by the first frame: a recorder that never sees one (tracking off) leaves no thread.
        self._worker = threading.Thread(target=self._run, name="sightings", daemon=True)

    # -- inference thread -----------------------------------------------------------------------
    def on_frame(self, result: FrameResult, bgr: np.ndarray) -> None:
        if self._worker.ident is None and not self._closed:
            self._worker.start()
        with self._lock:
            self._last_frame_at = time.monotonic()
            self._on_frame(result, bgr)

    def _on_frame(self, result: FrameResult, bgr: np.ndarray) -> None:
        session = result.extra.get("session") if result.extra else None
        if result.pts is not None and result.stream_pts is not None:
            self._offsets[session] = result.stream_pts - result.pts
        self._recent.append((result.seq, bgr))
        events = self._book.update(result)
        for t in self._book.tracks:
            self._pin_best(t, result, bgr)
        now = time.monotonic()
        for ev in events:
            if ev.kind == "appeared":
                self._hold(ev.track)
                self._put(_Job("open", ev.track, self._best.get(ev.track.track_id), self._offsets.get(ev.track.session)))
                self._progress_at[ev.track.track_id] = now
            elif ev.kind == "left":
                self._put(self._left(ev))
        for t in self._book.tracks:
            if now - self._progress_at.get(t.track_id, now) >= PROGRESS_S:
                self._progress_at[t.track_id] = now
                self._put(_Job("progress", t))
        if len(self._offsets) > 8:  # sessions long over
            for k in list(self._offsets)[:-4]:
                del self._offsets[k]

    def _left(self, ev: TrackEvent) -> _Job:
        """The close job of a track that left (lock held)."""
        self._progress_at.pop(ev.track.track_id, None)
        return _Job("close", ev.track, self._best.pop(ev.track.track_id, None), self._offsets.get(ev.track.session))

    def _close_stalled(self) -> None:
        """Writer thread: no tracked result for ``STALL_CLOSE_S``: every open sighting ends at its last frame."""
        with self._lock:
            if not self._last_frame_at or time.monotonic() - self._last_frame_at < STALL_CLOSE_S or not self._book.tracks:
                return
            events = self._book.close()
            for ev in events:
                self._put(self._left(ev))
        logger.info("sightings: no frames for {:.0f} s, {} open sighting(s) closed", STALL_CLOSE_S, len(events))

    def _hold(self, track: Track) -> None:
        """Keep the ring's packets from this sighting's pre-roll on, until its clip is written."""
        offset = self._offsets.get(track.session)
        if offset is not None and track.first_pts is not None and isinstance(track.session, int):
            self.ring.hold(track.track_id, track.session, track.first_pts + offset - self.pre_roll_s)

    def _pin_best(self, track: Track, result: FrameResult, bgr: np.ndarray) -> None:
        """Hold the frame of the track's best detection; if that frame is gone already (its hits before
        confirmation were spread over more frames than are kept), the first frame it is seen in from now."""
        pinned = self._best.get(track.track_id)
        if pinned is not None and pinned.seq == track.best_seq:
            return
        for seq, frame in self._recent:
            if seq == track.best_seq:
                det = Detection(track.label, track.best_confidence, track.best_box, track_id=track.track_id)
                self._best[track.track_id] = _Pinned(seq, frame, det)
                return
        if pinned is None and track.last_pts == result.pts and track.last_seen == result.received_at:
            det = Detection(track.label, track.confidence, track.box, track_id=track.track_id)
            self._best[track.track_id] = _Pinned(result.seq, bgr, det)

    def _put(self, job: _Job | None, wait: float = 0.0) -> bool:
        """Never blocks the inference thread (``wait`` 0); ``close`` may wait for room (detection is over)."""
        try:
            self._queue.put(job, timeout=wait) if wait > 0 else self._queue.put_nowait(job)
            return True
        except queue.Full:
            self.dropped += 1
            logger.warning("sightings: writer queue full, {} event of track {} dropped", job.kind if job else "stop",
                           job.track.track_id if job else "-")
            return False

    # -- lifecycle --------------------------------------------------------------------------------
    def close(self, timeout: float = 5.0) -> None:
        """The stream ended: every open sighting closes (at its last frame), clips are cut from what was
        received, and the worker stops, all within ``timeout``; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._worker.ident is None:
            return  # never saw a frame: nothing to close
        deadline = time.monotonic() + timeout
        with self._lock:
            jobs = [self._left(ev) for ev in self._book.close()]
        for job in jobs:  # outside the lock: the writer may need it while it makes room
            self._put(job, wait=max(0.01, (deadline - time.monotonic()) / 2))
        self.ring.session_ended()
        if not self._put(None, wait=max(0.1, (deadline - time.monotonic()) / 2)):
            self._stop_unqueued.set()  # the writer stops once it has drained the queue, not never
        self._worker.join(max(0.1, deadline - time.monotonic()))
        if self._worker.is_alive():
            logger.warning("sightings: writer did not finish within {:.1f} s", timeout)

    # -- worker thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        name_os_thread("sightings")
        rows: dict[int, int] = {}  # track id → row id
        pending: list[_PendingClip] = []
        stopping = False
        while not (stopping and not pending):
            try:
                job = self._queue.get(timeout=0.2 if pending else 1.0)
            except queue.Empty:
                job = None
                stopping = stopping or self._stop_unqueued.is_set()
            else:
                if job is None:
                    stopping = True
            try:
                if job is not None:
                    clip = self._handle(job, rows)
                    if clip is not None:
                        pending.append(clip)
                now = time.monotonic()
                due = [p for p in pending if stopping or now >= p.deadline
                       or self.ring.reached(p.track.session, p.end_raw)]  # type: ignore[arg-type]
                for p in due:
                    pending.remove(p)
                    self._write_clip(p)
                if not stopping:
                    self._close_stalled()
                self.sightings.maybe_retain()  # a clock check; deletes every RETENTION_EVERY_S (ages pass idle too)
            except Exception as exc:  # noqa: BLE001 - a full disk must not kill the writer for good
                logger.warning("sightings: write failed: {}", exc)

    def _handle(self, job: _Job, rows: dict[int, int]) -> _PendingClip | None:
        t = job.track
        fields = dict(last_seen=t.last_seen, last_pts=t.last_pts, best_confidence=t.best_confidence,
                      best_box=(t.best_box.x1, t.best_box.y1, t.best_box.x2, t.best_box.y2), best_pts=t.best_pts,
                      frame_size=t.frame_size)
        row = rows.get(t.track_id)
        if row is None:  # "open" (or a close whose open was dropped)
            row = self.store.insert(stream=t.source, session=int(t.session or 0), track_id=t.track_id, label=t.label,
                                    first_seen=t.first_seen, first_pts=t.first_pts, **fields)
            rows[t.track_id] = row
            while len(rows) > MAX_OPEN_ROWS:  # closes lost to a full queue: forget the oldest
                del rows[next(iter(rows))]
        elif job.kind != "open":
            self.store.update(row, **fields)
        stem = f"{time.strftime('%Y-%m-%d', time.gmtime(t.first_seen))}/{row:06d}-{file_label(t.label)}"
        if job.pinned is not None and job.kind in ("open", "close"):
            jpeg = thumbnail_jpeg(job.pinned.frame, job.pinned.detection)
            self.store.write_media(f"{stem}.jpg", jpeg)
            self.store.update(row, thumbnail=f"{stem}.jpg", nbytes=len(jpeg))
        if job.kind != "close":
            return None
        rows.pop(t.track_id, None)
        if job.offset is None or t.first_pts is None or t.last_pts is None:
            self.ring.release(t.track_id)
            note = NO_PACKETS if not self.ring.has_packets() else "no clip: the stream carries no timestamps"
            self.store.update(row, status="closed", clip_note=note)
            return None
        self.store.update(row, status="closed")
        return _PendingClip(row, t, t.first_pts + job.offset - self.pre_roll_s, t.last_pts + job.offset + self.post_roll_s,
                            job.offset, job.at + self.post_roll_s + CLIP_WAIT_S, stem)

    def _write_clip(self, p: _PendingClip) -> None:
        try:
            cut = self.ring.cut(p.track.session, p.start_raw, p.end_raw)  # type: ignore[arg-type]
        finally:
            self.ring.release(p.track.track_id)  # the packets are copied out (references): the ring may let go
        if cut is None:
            self.store.update(p.row, clip_note=NO_PACKETS if not self.ring.has_packets()
                              else "no clip: its packets were no longer in the ring")
            return
        try:
            info = write_clip(cut, self.store.media_file(f"{p.stem}.mp4"))
        except (av.error.FFmpegError, OSError, ValueError) as exc:  # disk full, a muxer refusal: the row says so
            logger.warning("sightings: clip of sighting {} not written: {}", p.row, exc)
            self.store.update(p.row, clip_note=f"no clip: writing it failed ({exc})")
            return
        start, end = round(info.start_t - p.offset, 4), round(info.end_t - p.offset, 4)
        notes = []
        want_start, want_end = p.start_raw - p.offset, p.end_raw - p.offset
        first = p.track.first_pts or 0.0
        if start > first:
            notes.append(f"starts {start - first:.1f} s after first seen: the ring keeps at most "
                         f"{self.ring.max_seconds:.0f} s / {self.ring.max_bytes // 2**20} MiB")
        elif start > want_start + 0.05:
            notes.append(f"pre-roll {first - start:.1f} s: nothing earlier was received")
        if end < want_end - 0.25:
            notes.append(f"post-roll {max(0.0, end - (p.track.last_pts or 0)):.1f} s: the stream ended")
        current = self.store.get(p.row)
        nbytes = (current.nbytes if current else 0) + info.nbytes
        self.store.update(p.row, clip=f"{p.stem}.mp4", clip_start_pts=start, clip_end_pts=end,
                          clip_note="; ".join(notes) or None, nbytes=nbytes)
