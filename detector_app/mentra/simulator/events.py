"""Typed record of everything the simulated cloud saw and did, for assertions in tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

Direction = Literal[
    "app->cloud",  # WebSocket frame received from the app
    "cloud->app",  # WebSocket frame sent to the app
    "webhook",  # HTTP POST to the app's /webhook (data carries body + outcome)
    "ws",  # WebSocket lifecycle: open / close
    "glasses",  # virtual glasses: publisher start / run / drop / exit
    "sim",  # simulator-level: start timeout, resurrection, grace, ...
]


@dataclass(frozen=True)
class SimEvent:
    """One observation. `type` is the wire `type` for frames, or a lifecycle name otherwise."""

    direction: Direction
    type: str
    user: str | None
    data: dict[str, Any] = field(default_factory=dict)
    t: float = field(default_factory=time.monotonic)

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def __str__(self) -> str:
        return f"{self.direction:10s} {self.type:30s} {self.user or '-'} {self.data}"


Predicate = Callable[[SimEvent], bool]


class EventLog:
    """Event list with an awaitable `wait_for`, so tests never poll with sleeps.

    Bounded for long (soak) runs: past `max_events` the oldest half is forgotten. `start` arguments
    are absolute positions (`mark()`), so a wait that began before a trim still means the same events.
    """

    def __init__(self, max_events: int = 50_000) -> None:
        self.events: list[SimEvent] = []
        self.forgotten = 0  # events trimmed from the front so far
        self.max_events = max_events
        self._cond: asyncio.Condition | None = None

    def mark(self) -> int:
        """Absolute position of the next event, for `find`/`wait_for(start=...)`."""
        return self.forgotten + len(self.events)

    def _condition(self) -> asyncio.Condition:
        if self._cond is None:
            self._cond = asyncio.Condition()
        return self._cond

    def add(self, event: SimEvent) -> SimEvent:
        self.events.append(event)
        if len(self.events) > self.max_events:
            half = len(self.events) // 2
            del self.events[:half]
            self.forgotten += half
        cond = self._condition()

        async def _notify() -> None:
            async with cond:
                cond.notify_all()

        try:
            asyncio.get_running_loop().create_task(_notify())
        except RuntimeError:  # no loop (sync use): nobody can be waiting
            pass
        return event

    def find(self, predicate: Predicate, start: int = 0) -> SimEvent | None:
        for ev in self.events[max(0, start - self.forgotten):]:
            if predicate(ev):
                return ev
        return None

    def find_all(self, predicate: Predicate, start: int = 0) -> list[SimEvent]:
        return [ev for ev in self.events[max(0, start - self.forgotten):] if predicate(ev)]

    def position(self, event: SimEvent) -> int:
        """Absolute position of a retained event (for `start=` of the next wait)."""
        return self.forgotten + self.events.index(event)

    async def wait_for(self, predicate: Predicate, timeout: float = 10.0, start: int = 0) -> SimEvent:
        """First event (from index `start`) matching `predicate`; TimeoutError names the last events."""
        cond = self._condition()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with cond:
            while True:
                hit = self.find(predicate, start)
                if hit is not None:
                    return hit
                remaining = deadline - loop.time()
                if remaining <= 0:
                    tail = "\n".join(str(e) for e in self.events[-15:])
                    raise TimeoutError(f"no matching simulator event within {timeout:.1f}s; last events:\n{tail}")
                try:
                    await asyncio.wait_for(cond.wait(), remaining)
                except asyncio.TimeoutError:
                    pass


def frame(direction: Direction, type_: str, user: str | None = None) -> Predicate:
    """Predicate helper: `sim.wait_for(frame("app->cloud", "rtmp_stream_request"))`."""
    return lambda e: e.direction == direction and e.type == type_ and (user is None or e.user == user)
