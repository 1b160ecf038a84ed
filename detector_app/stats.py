"""Small statistics for run summaries, the HUD and the benchmark, all bounded by construction.

A ``serve`` process runs for hours, so nothing here keeps a value per inference: rates are O(1)
running sums or a time window, and percentiles come from a fixed-size reservoir (exact while a run
has fewer samples than its capacity, a uniform sample of the whole run after that).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from detector_app.detection.types import FrameResult


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100); None for no data."""
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


class Reservoir:
    """At most ``capacity`` values: every value until full, then a uniform sample (algorithm R).

    Seeded, so the same run gives the same percentiles."""

    def __init__(self, capacity: int = 4096, seed: int = 0) -> None:
        self.capacity = capacity
        self.seen = 0
        self._values: list[float] = []
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def add(self, value: float) -> None:
        with self._lock:
            self.seen += 1
            if len(self._values) < self.capacity:
                self._values.append(value)
                return
            j = self._rng.randrange(self.seen)
            if j < self.capacity:
                self._values[j] = value

    def values(self) -> list[float]:
        with self._lock:
            return list(self._values)

    def percentile(self, q: float) -> float | None:
        return percentile(self.values(), q)


@dataclass(slots=True)
class FlowRate:
    """Events per second while they flow: gaps longer than ``stall_s`` (publisher away, stalls) are
    left out. Two running sums, so O(1) per event and per read, however long the run."""

    stall_s: float = 1.0
    last: float | None = None
    flowing: int = 0
    span: float = 0.0

    def add(self, t: float) -> None:
        if self.last is not None and 0 <= t - self.last <= self.stall_s:
            self.flowing += 1
            self.span += t - self.last
        self.last = t

    @property
    def rate(self) -> float:
        return self.flowing / self.span if self.span > 0 else 0.0


class RollingRate:
    """Events per second over the last ``window_s`` seconds (what the HUD shows now).

    Bounded twice: old times are dropped on every add and read, and the deque has a ``maxlen``."""

    def __init__(self, window_s: float = 5.0, maxlen: int = 1024, clock=time.monotonic) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque(maxlen=maxlen)
        self._clock = clock
        self._lock = threading.Lock()

    def add(self, t: float | None = None) -> None:
        now = self._clock() if t is None else t
        with self._lock:
            self._times.append(now)
            self._trim(now)

    def rate(self, now: float | None = None) -> float:
        now = self._clock() if now is None else now
        with self._lock:
            self._trim(now)
            if len(self._times) < 2:
                return 0.0
            span = now - self._times[0]
            return (len(self._times) - 1) / span if span > 0 else 0.0

    def __len__(self) -> int:
        return len(self._times)

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()


@dataclass(slots=True)
class RunStats:
    """Aggregates of one pipeline's results (updated by the inference thread, read by anyone).

    Bounded: counters, two O(1) rates and two fixed-size reservoirs, whatever the run's length."""

    started_at: float = field(default_factory=time.time)
    first_result_at: float | None = None
    last_result_at: float | None = None
    inferences: int = 0
    frames_with_animals: int = 0
    per_label: Counter = field(default_factory=Counter)  # bounded by the model's label set
    latency: Reservoir = field(default_factory=Reservoir)
    inference: Reservoir = field(default_factory=lambda: Reservoir(seed=1))
    flow: FlowRate = field(default_factory=FlowRate)
    recent: RollingRate = field(default_factory=RollingRate)

    def add(self, r: FrameResult) -> None:
        if self.first_result_at is None:
            self.first_result_at = r.done_at
        self.last_result_at = r.done_at
        self.inferences += 1
        if r.detections:
            self.frames_with_animals += 1
        for d in r.detections:
            self.per_label[d.label] += 1
        self.latency.add(r.latency_ms)
        self.inference.add(r.inference_ms)
        self.flow.add(r.done_at)
        self.recent.add()

    @property
    def rate(self) -> float:
        """Inferences per second over the run while frames flow (gaps > 1 s are not counted)."""
        return self.flow.rate

    @property
    def recent_rate(self) -> float:
        """Inferences per second over the last few seconds (0 while nothing arrives)."""
        return self.recent.rate()

    @property
    def latencies_ms(self) -> list[float]:
        return self.latency.values()

    @property
    def inference_ms(self) -> list[float]:
        return self.inference.values()
