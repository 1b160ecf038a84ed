"""The open streams as the viewer names them: a stable id per stream, its encoder, its health as JSON.

Streams come and go (``serve``: one per wearer, a new one on every reconnect); ids are handed out
once per stream object and never reused, and a closed stream's encoder is dropped with it, so a
server that runs for days keeps only what is open.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any

from detector_app.main_thread import LiveView
from detector_app.web.frames import MAX_BOX_AGE_S, EncodeBudget, StreamEncoder


class StreamRegistry:
    """``views()`` (the open streams, oldest first) with ids and one shared encoder each."""

    def __init__(self, views: Callable[[], Sequence[LiveView]], executor: Executor, *, max_fps: float,
                 max_total_fps: float | None = None) -> None:
        self._views = views
        self._executor = executor
        self._max_fps = max_fps
        self._budget = EncodeBudget(max_total_fps) if max_total_fps else None
        self._ids = itertools.count(1)
        self._open: dict[int, tuple[LiveView, int, StreamEncoder]] = {}  # id(view) → (view, stream id, encoder)

    def current(self) -> list[tuple[int, LiveView, StreamEncoder]]:
        """(stream id, view, encoder) of every open stream; forgets the ones that closed."""
        views = list(self._views())
        known = {id(v) for v in views}
        for key in [k for k in self._open if k not in known]:
            del self._open[key]
        out = []
        for view in views:
            entry = self._open.get(id(view))
            if entry is None or entry[0] is not view:
                entry = (view, next(self._ids),
                         StreamEncoder(view, self._executor, max_fps=self._max_fps, budget=self._budget))
                self._open[id(view)] = entry
            out.append((entry[1], view, entry[2]))
        return out

    def encoder(self, stream_id: int) -> StreamEncoder | None:
        for sid, _, enc in self.current():
            if sid == stream_id:
                return enc
        return None


def stream_json(stream_id: int, view: LiveView, encoder: StreamEncoder) -> dict[str, Any]:
    """One stream's card: health (fps, bitrate, frame age), detections per second, model, what is seen
    now, and how many JPEGs the viewer made of it."""
    health = view.health()
    result = view.latest_result
    fresh = result is not None and time.time() - result.done_at <= MAX_BOX_AGE_S
    return {
        "id": stream_id,
        "name": view.source_label,
        "model": view.model_description,
        "health": health.to_json(),
        "detections_per_s": round(view.stats.recent_rate, 2),
        "inference_ms": round(result.inference_ms, 1) if result else None,
        "latency_ms": round(result.latency_ms, 1) if result else None,
        "seen": [d.to_json() for d in result.detections] if fresh and result else [],
        "jpegs": encoder.encodes,
    }
