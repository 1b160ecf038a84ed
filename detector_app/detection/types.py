"""Typed detection results: the data that leaves the detector and reaches every output.

Boxes are always in *source-frame* pixels (the decoded stream's size), never in the network's
input size, so overlays, ground-truth comparisons and the JSON feed agree on one coordinate system.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 3  # 2: pts counts from the session's first frame on every transport; stream_pts added
#                    3: every detection carries track_id (null when untracked or not yet confirmed)


@dataclass(frozen=True, slots=True)
class Box:
    """Axis-aligned box, x1/y1 inclusive top-left, x2/y2 bottom-right, in source pixels."""

    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def width(self) -> float:
        return max(0.0, self.x2 - self.x1)

    @property
    def height(self) -> float:
        return max(0.0, self.y2 - self.y1)

    @property
    def area(self) -> float:
        return self.width * self.height

    @property
    def center(self) -> tuple[float, float]:
        return ((self.x1 + self.x2) / 2.0, (self.y1 + self.y2) / 2.0)

    def iou(self, other: Box) -> float:
        ix1, iy1 = max(self.x1, other.x1), max(self.y1, other.y1)
        ix2, iy2 = min(self.x2, other.x2), min(self.y2, other.y2)
        inter = max(0.0, ix2 - ix1) * max(0.0, iy2 - iy1)
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0

    def as_list(self) -> list[float]:
        return [round(self.x1, 1), round(self.y1, 1), round(self.x2, 1), round(self.y2, 1)]


@dataclass(frozen=True, slots=True)
class Detection:
    label: str
    confidence: float
    box: Box
    class_id: int = -1
    track_id: int | None = None  # the stream's tracker: same animal, same id (None: untracked/unconfirmed)

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "confidence": round(self.confidence, 4),
            "box": self.box.as_list(),
            "class_id": self.class_id,
            "track_id": self.track_id,
        }


@dataclass(frozen=True, slots=True)
class FrameResult:
    """One inference: what was seen in one sampled frame, and how late we saw it.

    ``pts`` is media time: seconds since the first frame of the publisher session, the same for a
    file and for an RTMP or SRT replay of it; ``stream_pts`` is the raw timestamp the transport carried;
    ``received_at`` is the wall clock (``time.time()``) when the decoder produced the frame and
    ``done_at`` when inference finished, so ``latency_ms`` covers queueing + conversion + inference.
    """

    seq: int
    frame_index: int
    pts: float | None
    width: int
    height: int
    received_at: float
    done_at: float
    inference_ms: float
    detections: tuple[Detection, ...]
    all_detections: int = 0
    model: str = ""
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    stream_pts: float | None = None

    @property
    def latency_ms(self) -> float:
        return (self.done_at - self.received_at) * 1000.0

    def labels(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for d in self.detections:
            counts[d.label] = counts.get(d.label, 0) + 1
        return counts

    def to_json(self) -> dict[str, Any]:
        """The wire/JSONL schema (documented in README, validated in tests)."""
        return {
            "type": "detections",
            "schema": SCHEMA_VERSION,
            "seq": self.seq,
            "frame_index": self.frame_index,
            "pts": None if self.pts is None else round(self.pts, 4),
            "stream_pts": None if self.stream_pts is None else round(self.stream_pts, 4),
            "frame_size": [self.width, self.height],
            "received_at": round(self.received_at, 4),
            "done_at": round(self.done_at, 4),
            "latency_ms": round(self.latency_ms, 2),
            "inference_ms": round(self.inference_ms, 2),
            "model": self.model,
            "source": self.source,
            "detections": [d.to_json() for d in self.detections],
            **({"extra": self.extra} if self.extra else {}),
        }
