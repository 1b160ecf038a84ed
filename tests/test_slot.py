"""LatestSlot: latest-frame-wins hand-off, version semantics, blocking (offline) mode, shutdown."""

from __future__ import annotations

import threading

import pytest

from detector_app.video.slot import LatestSlot, Versioned

pytestmark = pytest.mark.timeout(30)

UPPER = 5.0  # generous upper bound for thread hand-offs; never a sleep that must elapse


def _start(target, *args) -> threading.Thread:
    t = threading.Thread(target=target, args=args, daemon=True)
    t.start()
    return t


def _produce_and_drain(slot: LatestSlot[int], n: int) -> list[int]:
    """A producer thread puts 0..n-1 then closes; the primary consumer takes until closed. Versions
    only ever grow; returns what was taken."""
    def producer() -> None:
        for i in range(n):
            slot.put(i)
        slot.close()

    t = _start(producer)
    seen, last = [], 0
    while True:
        got = slot.take_newer(last, timeout=UPPER)
        if got is None:
            break
        assert got.version > last
        seen.append(got.item)
        last = got.version
    t.join(UPPER)
    assert not t.is_alive()
    return seen


def test_latest_wins_and_overwritten_counts_misses():
    slot: LatestSlot[int] = LatestSlot()
    for i in range(100):
        assert slot.put(i) is True
    got = slot.take_newer(0, timeout=0)
    assert got == Versioned(100, 99)
    assert slot.overwritten == 99  # the first 99 were replaced before the consumer took any


def test_overwritten_not_counted_for_items_that_were_taken():
    slot: LatestSlot[str] = LatestSlot()
    last = 0
    for i in range(10):
        slot.put(f"f{i}")
        got = slot.take_newer(last, timeout=0)
        assert got is not None and got.item == f"f{i}"
        last = got.version
    assert slot.overwritten == 0
    slot.put("a")
    slot.put("b")  # "a" missed
    slot.put("c")  # "b" missed
    assert slot.take_newer(last, timeout=0).item == "c"
    assert slot.overwritten == 2


def test_empty_slot_take_times_out_with_none():
    slot: LatestSlot[int] = LatestSlot()
    assert slot.take_newer(0, timeout=0.01) is None
    assert slot.take_newer(0, timeout=0) is None
    assert slot.peek() is None
    assert slot.version == 0


def test_take_newer_returns_none_when_nothing_newer():
    slot: LatestSlot[int] = LatestSlot()
    slot.put(1)
    got = slot.take_newer(0, timeout=0)
    assert got.version == 1
    assert slot.take_newer(got.version, timeout=0) is None
    assert slot.take_newer(got.version, timeout=0.01) is None
    # an older version still sees the current item
    assert slot.take_newer(0, timeout=0) == Versioned(1, 1)


def test_version_increments_per_put_and_peek_reports_it():
    slot: LatestSlot[str] = LatestSlot()
    slot.put("x")
    slot.put("y")
    assert slot.version == 2
    assert slot.peek() == Versioned(2, "y")
    assert slot.take_newer(1, timeout=0) == Versioned(2, "y")


def test_non_primary_consumer_does_not_affect_overwritten():
    slot: LatestSlot[int] = LatestSlot()
    slot.put(1)
    # the display peeks: that is not the sampler taking the frame
    assert slot.take_newer(0, timeout=0, primary=False).item == 1
    assert slot.peek().item == 1
    slot.put(2)
    assert slot.overwritten == 1  # frame 1 was never taken by the primary consumer
    assert slot.take_newer(0, timeout=0, primary=True).item == 2
    slot.put(3)
    assert slot.overwritten == 1  # frame 2 was taken: no miss


def test_waiting_consumer_woken_by_put():
    slot: LatestSlot[int] = LatestSlot()
    results: list = []
    waiting = threading.Event()

    def consumer():
        waiting.set()
        results.append(slot.take_newer(0, timeout=UPPER))

    t = _start(consumer)
    assert waiting.wait(UPPER)
    slot.put(42)
    t.join(UPPER)
    assert not t.is_alive()
    assert results == [Versioned(1, 42)]


def test_close_wakes_waiting_consumer():
    slot: LatestSlot[int] = LatestSlot()
    results: list = []
    done = threading.Event()

    def consumer():
        results.append(slot.take_newer(0, timeout=None))  # would wait forever without close
        done.set()

    _start(consumer)
    slot.close()
    assert done.wait(UPPER)
    assert results == [None]
    assert slot.closed


def test_put_after_close_is_refused_but_last_item_still_readable():
    slot: LatestSlot[int] = LatestSlot()
    slot.put(7)
    slot.close()
    assert slot.put(8) is False
    assert slot.version == 1
    # the consumer can drain the final frame after the producer closed the slot
    assert slot.take_newer(0, timeout=0) == Versioned(1, 7)
    assert slot.take_newer(1, timeout=None) is None  # closed: no wait


def test_blocking_producer_waits_until_consumed():
    slot: LatestSlot[int] = LatestSlot(blocking=True)
    assert slot.put(1) is True  # nothing pending: returns at once
    second_started = threading.Event()
    second_done = threading.Event()

    def producer():
        second_started.set()
        slot.put(2)
        second_done.set()

    t = _start(producer)
    assert second_started.wait(UPPER)
    # the producer must be parked until frame 1 is taken
    assert not second_done.wait(0.2)
    assert slot.version == 1
    got = slot.take_newer(0, timeout=0)
    assert got.item == 1
    assert second_done.wait(UPPER)
    t.join(UPPER)
    assert slot.take_newer(got.version, timeout=0).item == 2
    assert slot.overwritten == 0


def test_blocking_mode_delivers_every_item_in_order():
    slot: LatestSlot[int] = LatestSlot(blocking=True)
    n = 200
    seen = _produce_and_drain(slot, n)
    assert seen == list(range(n))
    assert slot.overwritten == 0


def test_blocking_non_primary_peek_does_not_release_producer():
    slot: LatestSlot[int] = LatestSlot(blocking=True)
    slot.put(1)
    done = threading.Event()
    _start(lambda: (slot.put(2), done.set()))
    assert slot.take_newer(0, timeout=0, primary=False).item == 1
    assert not done.wait(0.2)  # a display peek is not consumption
    slot.take_newer(0, timeout=0)
    assert done.wait(UPPER)


def test_close_unblocks_blocked_producer():
    slot: LatestSlot[int] = LatestSlot(blocking=True)
    slot.put(1)
    result: list = []
    started = threading.Event()
    done = threading.Event()

    def producer():
        started.set()
        result.append(slot.put(2))
        done.set()

    _start(producer)
    assert started.wait(UPPER)
    slot.close()
    assert done.wait(UPPER)
    assert result == [False]
    assert slot.version == 1


def test_stop_event_unblocks_blocked_producer():
    slot: LatestSlot[int] = LatestSlot(blocking=True)
    slot.put(1)
    stop = threading.Event()
    result: list = []
    started = threading.Event()
    done = threading.Event()

    def producer():
        started.set()
        result.append(slot.put(2, stop=stop))
        done.set()

    _start(producer)
    assert started.wait(UPPER)
    stop.set()
    assert done.wait(UPPER)  # polled every 0.1 s inside put
    assert result == [False]
    assert slot.version == 1 and not slot.closed


def test_stop_event_ignored_when_not_blocking():
    slot: LatestSlot[int] = LatestSlot()
    stop = threading.Event()
    stop.set()
    slot.put(1, stop=stop)
    assert slot.put(2, stop=stop) is True  # non-blocking mode never waits, so stop is moot
    assert slot.version == 2


def test_threaded_fast_producer_slow_consumer_never_queues():
    slot: LatestSlot[int] = LatestSlot()
    n = 1000
    seen = _produce_and_drain(slot, n)
    assert seen == sorted(seen) and seen[-1] == n - 1  # the newest always arrives, in order
    assert slot.overwritten == n - len(seen)  # every item either taken or counted as a miss
