"""Latest-frame-wins hand-off between the decode thread and its consumers.

A slot holds exactly one item and a version number. The producer overwrites it; consumers ask for
"anything newer than version v". Nothing ever queues, so a slow consumer can only miss frames,
never make the frame age grow (field notes: a queue grew the age to 8 s in 12 s).

For deterministic offline runs (``blocking=True``) the producer instead waits until the previous
item was taken, so every frame offered is processed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Versioned(Generic[T]):
    version: int
    item: T


class LatestSlot(Generic[T]):
    def __init__(self, blocking: bool = False) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._version = 0
        self._taken_version = 0
        self._closed = False
        self.blocking = blocking
        self.overwritten = 0  # items replaced before the primary consumer took them

    def put(self, item: T, stop: threading.Event | None = None) -> bool:
        """Publish ``item``. In blocking mode wait until the last one was taken (or stop/close)."""
        with self._cond:
            if self.blocking:
                while self._taken_version < self._version and not self._closed:
                    if stop is not None and stop.is_set():
                        return False
                    self._cond.wait(0.1)
            if self._closed:
                return False
            if self._taken_version < self._version:
                self.overwritten += 1
            self._item = item
            self._version += 1
            self._cond.notify_all()
            return True

    def take_newer(self, version: int, timeout: float | None = None, primary: bool = True) -> Versioned[T] | None:
        """Return the current item if its version is > ``version``; wait up to ``timeout``.

        ``primary`` marks the consumer whose misses count as overwritten frames (the sampler);
        the display peeks with ``primary=False``.
        """
        with self._cond:
            if self._version <= version and not self._closed:
                self._cond.wait_for(lambda: self._version > version or self._closed, timeout)
            if self._version <= version or self._item is None:
                return None
            if primary:
                self._taken_version = self._version
                self._cond.notify_all()
            return Versioned(self._version, self._item)

    def peek(self) -> Versioned[T] | None:
        with self._cond:
            return None if self._item is None else Versioned(self._version, self._item)

    @property
    def version(self) -> int:
        with self._cond:
            return self._version

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed
