"""Rate limiting for inference: take at most ``fps`` frames per second, never queue.

Two clocks are supported. Real-time streams are sampled on the wall clock (the newest frame at or
after each due time). Offline files are sampled on the stream's own pts, so the same video always
yields the same frames whatever the machine's speed (researchers compare models on it).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Sampler:
    fps: float
    _next_due: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.fps <= 0:
            raise ValueError("sampling fps must be > 0")

    @property
    def period(self) -> float:
        return 1.0 / self.fps

    def wait_time(self, now: float) -> float:
        """Seconds until the next frame may be taken (0 if one may be taken now)."""
        if self._next_due is None:
            return 0.0
        return max(0.0, self._next_due - now)

    def take(self, now: float) -> None:
        """Record that a frame was taken at ``now``.

        The schedule advances from the previous due time (so the long-run rate is exactly ``fps``),
        but never accumulates debt: after a stall it restarts from ``now`` instead of bursting.
        """
        if self._next_due is None or now - self._next_due > self.period:
            self._next_due = now + self.period
        else:
            self._next_due += self.period

    def reset(self) -> None:
        self._next_due = None


@dataclass(slots=True)
class PtsSampler:
    """Deterministic selection by presentation time: keep the first frame of each 1/fps slot."""

    fps: float
    _last_slot: int | None = field(default=None, init=False)
    _origin: float | None = field(default=None, init=False)

    def select(self, pts: float | None) -> bool:
        if pts is None:
            return True
        if self._origin is None:
            self._origin = pts
        slot = int((pts - self._origin) * self.fps + 1e-6)
        if self._last_slot is not None and slot <= self._last_slot:
            return False
        self._last_slot = slot
        return True

    def reset(self) -> None:
        self._last_slot = None
        self._origin = None
