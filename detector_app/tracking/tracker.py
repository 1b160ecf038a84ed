"""Per-stream multi-object tracking: Roboflow ``trackers``' ByteTrack on the sampled detections.

Why this library: it is the maintained home of supervision's ByteTrack (supervision ≥ 0.27 no
longer ships it), it is numpy/scipy only (Ultralytics' trackers import torch, which the streaming
process must not load), and it accepts a timestamp per update, so the lost-track buffer is measured
in *media seconds*, not in frames: a stream sampled below its nominal rate (slow inference) keeps
the same ≤ 1 s miss guarantee.

One ByteTrack per label: a cat box can never take a horse's id. Ids come from one counter per
:class:`Tracker` (one per stream), so they stay unique for the stream's whole life, also across
publisher sessions (a reconnect resets the trackers, never the counter). A detection gets
``track_id`` once its track has matched in ``min_frames`` consecutive sampled frames; before that
``track_id`` stays ``None``. A new track whose box lies mostly inside (``DUPLICATE_OVERLAP``) a tracked animal's box in the same frame is a second box on
that animal (a head box, an NMS leftover) and is dropped before it gets an id; one on top of a
tracked animal that went unmatched (ByteTrack gave the animal's track to the second box) takes over
that animal's id.

Re-linking: ByteTrack re-finds a lost animal only where its motion model predicts it. One that
walks out of the frame and comes back the way it left, or that stops behind cover, would come back
as a new track. So a newly confirmed track takes over the id of a track of its label that was lost
between ``RELINK_AFTER_S`` and ``RELINK_S`` ago, about its size and near where it was last seen.
``RELINK_S`` equals the track book's ``LEFT_AFTER_S``: an animal back within it is the same track
(and sighting), one gone longer is a new one.

No threads: ``update`` runs on the inference thread, right after the detector. The library (with
supervision and scipy: ~70 MB and ~1.5 s to import) is loaded by the first ``Tracker``, so a
``--no-track`` process never pays for it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from detector_app.detection.types import Detection
from detector_app.tracking.book import LEFT_AFTER_S

if TYPE_CHECKING:
    from trackers import ByteTrackTracker

DEFAULT_FPS = 10.0  # the pipeline's default sampling rate
BUFFER_S = 2.0  # a lost track is kept this long in media time: a ≤ 1 s miss keeps its id, 2× margin
RELINK_S = LEFT_AFTER_S  # a new track may take over an id lost less than this ago…
RELINK_AFTER_S = 0.5  # …but more than this (an id missed for a sample or two still belongs to its animal)…
RELINK_SIZE = 3.0  # …if neither box is more than this many times the other's area…
RELINK_REACH = 1.5  # …and its centre is within this many box sizes of where the old one was last seen
DUPLICATE_OVERLAP = 0.7  # a new track this much inside a tracked one of its label is a second box on it


@dataclass(frozen=True, slots=True)
class TrackerConfig:
    """ByteTrack settings for our detectors' confidence range.

    ``activation`` and ``high_conf`` are both the detector's floor (its ``conf``, default 0.35): the
    library starts tracks only from first-stage ("high") boxes, and every box we report must be able
    to become a tracked animal (real yolo11n often scores a distant cat 0.35–0.5). Spurious boxes
    that start a track are kept off the glasses by the track book's confirmation, not here. The
    library's low-score second stage would only see boxes under our floor, which the detector drops.
    ``min_iou``: low, because at 10 FPS a walking animal moves a good part of its width between
    samples and the Kalman prediction is not exact.
    """

    fps: float = DEFAULT_FPS
    buffer_s: float = BUFFER_S
    activation: float = 0.35
    high_conf: float = 0.35
    min_iou: float = 0.1
    min_frames: int = 2
    relink_s: float = RELINK_S

    @classmethod
    def for_floor(cls, conf: float | None, fps: float = DEFAULT_FPS) -> TrackerConfig:
        """Settings for a detector that drops boxes under ``conf`` (None: the default floor)."""
        return cls(fps=fps) if conf is None else cls(fps=fps, activation=conf, high_conf=conf)


class Tracker:
    """Assigns ``track_id`` to each frame's detections; one per stream (not thread-safe, one caller)."""

    def __init__(self, fps: float = DEFAULT_FPS, config: TrackerConfig | None = None) -> None:
        self.config = replace(config or TrackerConfig(), fps=fps)
        if self.config.fps <= 0:
            raise ValueError("tracker fps must be positive")
        import supervision
        import trackers

        self._sv, self._trackers = supervision, trackers
        self._by_label: dict[str, ByteTrackTracker] = {}
        self._ids: dict[tuple[str, int], int] = {}  # (label, ByteTrack's local id) → our id
        self._seen: dict[int, tuple[str, np.ndarray, float]] = {}  # our id → label, last box, when
        self._next_id = 1
        self._session: object = None
        self._last_ts: float | None = None

    @property
    def live_tracks(self) -> int:
        """Tracks currently kept (matched or within the lost buffer), all labels."""
        return len(self._ids)

    def reset(self) -> None:
        """Forget every track (new publisher session); ids keep counting up."""
        self._by_label.clear()
        self._ids.clear()
        self._seen.clear()
        self._last_ts = None

    def update(self, detections: Sequence[Detection], timestamp: float, session: object = None) -> tuple[Detection, ...]:
        """Return ``detections`` (same order) with ``track_id`` set where a confirmed track matched.

        ``timestamp``: media seconds of the frame (pts; wall time if the stream has none).
        ``session``: the publisher session; a change resets the tracker, as does time going back.
        """
        if session != self._session or (self._last_ts is not None and timestamp < self._last_ts - 0.5):
            self.reset()
            self._session = session
        if self._last_ts is not None and timestamp <= self._last_ts:
            timestamp = self._last_ts + 1e-3  # equal/odd pts: keep time strictly increasing
        self._last_ts = timestamp
        by_label: dict[str, list[int]] = {}
        for i, d in enumerate(detections):
            b = d.box
            if math.isfinite(b.x1 + b.y1 + b.x2 + b.y2):  # the library raises on NaN/inf (a broken model
                by_label.setdefault(d.label, []).append(i)  # output): such a box passes untracked
        out = list(detections)
        for tid in [tid for tid, (_, _, at) in self._seen.items() if timestamp - at >= self.config.relink_s]:
            del self._seen[tid]  # bounded: only ids that may still be re-linked are remembered
        for label in set(by_label) | set(self._by_label):
            idx = by_label.get(label, [])
            for i, tid in zip(idx, self._track_label(label, [detections[i] for i in idx], timestamp), strict=True):
                if tid is not None:
                    out[i] = replace(detections[i], track_id=tid)
        return tuple(out)

    # ---------------------------------------------------------------- internals

    def _bytetrack(self, label: str) -> ByteTrackTracker:
        trk = self._by_label.get(label)
        if trk is None:
            cfg = self.config
            trk = self._trackers.ByteTrackTracker(
                lost_track_buffer=max(1, round(cfg.buffer_s * 30)),  # the library counts 30 fps frames
                frame_rate=cfg.fps,
                track_activation_threshold=cfg.activation,
                minimum_consecutive_frames=cfg.min_frames,
                minimum_iou_threshold=cfg.min_iou,
                high_conf_det_threshold=cfg.high_conf,
            )
            self._by_label[label] = trk
        return trk

    def _track_label(self, label: str, dets: list[Detection], timestamp: float) -> list[int | None]:
        trk = self._bytetrack(label)
        n = len(dets)
        sv_dets = self._sv.Detections(
            xyxy=np.array([[d.box.x1, d.box.y1, d.box.x2, d.box.y2] for d in dets], np.float32).reshape(n, 4),
            confidence=np.array([d.confidence for d in dets], np.float32),
            class_id=np.array([d.class_id for d in dets], int),
            data={"index": np.arange(n)},
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # timestamps are already made increasing above
            tracked = trk.update(sv_dets, timestamp=timestamp)
        ids: list[int | None] = [None] * n
        matched = [(int(k), int(local)) for k, local in zip(tracked.data["index"], tracked.tracker_id, strict=True)
                   if local >= 0] if len(tracked) else []
        known = [sv_dets.xyxy[k] for k, local in matched if (label, local) in self._ids]
        for k, local in sorted(matched, key=lambda m: (label, m[1]) not in self._ids):  # known ids first
            box = sv_dets.xyxy[k]
            if (label, local) not in self._ids and any(_overlap(box, b) >= DUPLICATE_OVERLAP for b in known):
                trk.tracks = [t for t in trk.tracks if t.tracker_id != local]  # a second box on a tracked animal
                continue
            ids[k] = self._global_id(trk, label, local, box, timestamp)
        alive = {(label, t.tracker_id) for t in trk.tracks if t.tracker_id >= 0}
        for key in [k for k in self._ids if k[0] == label and k not in alive]:
            del self._ids[key]  # bounded: only tracks ByteTrack still keeps have a mapping
        if not trk.tracks:
            del self._by_label[label]
        return ids

    def _global_id(self, trk: ByteTrackTracker, label: str, local: int, box: np.ndarray, ts: float) -> int:
        key = (label, local)
        tid = self._ids.get(key)
        if tid is None:
            tid = self._take_over(trk, label, box)
            if tid is None:
                tid = self._relink(trk, label, box, ts)
            if tid is None:
                tid, self._next_id = self._next_id, self._next_id + 1
            self._ids[key] = tid
        self._seen[tid] = (label, box.copy(), ts)
        return tid

    def _take_over(self, trk: ByteTrackTracker, label: str, box: np.ndarray) -> int | None:
        """A new track on top of a tracked animal unmatched this frame is that animal (ByteTrack gave its
        box to a second box nearby, and started a track for the animal): the new track takes its id."""
        for t in trk.tracks:
            tid = self._ids.get((label, t.tracker_id))
            if tid is not None and t.time_since_update > 0 and _overlap(box, t.get_state_bbox()) >= DUPLICATE_OVERLAP:
                del self._ids[(label, t.tracker_id)]
                trk.tracks = [o for o in trk.tracks if o is not t]
                return tid
        return None

    def _relink(self, trk: ByteTrackTracker, label: str, box: np.ndarray, ts: float) -> int | None:
        """The id of a lost track of ``label`` this new one continues (see module doc), or None."""
        area = _area(box)
        best: tuple[float, int] | None = None
        for tid, (lab, old, at) in self._seen.items():
            if lab != label or not RELINK_AFTER_S <= ts - at < self.config.relink_s:
                continue  # another kind, just seen (its own animal may be back any moment), or lost too long ago
            a = _area(old)
            if not area or not a or max(a, area) / min(a, area) > RELINK_SIZE:
                continue
            size = max(old[2] - old[0], old[3] - old[1], box[2] - box[0], box[3] - box[1])
            dist = float(np.hypot(*((box[:2] + box[2:]) / 2 - (old[:2] + old[2:]) / 2))) / max(1.0, size)
            if dist <= RELINK_REACH and (best is None or dist < best[0]):
                best = (dist, tid)
        if best is None:
            return None
        tid = best[1]
        for key in [k for k, v in self._ids.items() if v == tid]:  # the lost track is superseded
            del self._ids[key]
            if key[0] == label:
                trk.tracks = [t for t in trk.tracks if t.tracker_id != key[1]]
        return tid


def _area(b: np.ndarray) -> float:
    return float(max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1]))


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over the smaller box: 1.0 when one box lies inside the other."""
    inter = _area(np.array([max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])]))
    small = min(_area(a), _area(b))
    return inter / small if small > 0 else 0.0
