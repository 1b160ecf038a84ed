"""Bounded statistics: what a long ``serve`` keeps per inference must not grow with the run."""

from __future__ import annotations

import pytest

from detector_app.stats import FlowRate, Reservoir, RollingRate, RunStats, percentile

from .test_types_eval import make_result


def test_reservoir_is_exact_until_full_then_stays_at_capacity():
    r = Reservoir(capacity=100)
    for v in range(100):
        r.add(float(v))
    assert r.values() == [float(v) for v in range(100)]
    for v in range(100, 100_000):
        r.add(float(v))
    assert len(r.values()) == 100 and r.seen == 100_000
    # A uniform sample of 0..99999: the median is near 50000 (the first 100 values alone would give 49.5).
    assert 30_000 < r.percentile(50) < 70_000


def test_reservoir_is_deterministic_for_the_same_input():
    a, b = Reservoir(capacity=50, seed=3), Reservoir(capacity=50, seed=3)
    for v in range(5000):
        a.add(float(v))
        b.add(float(v))
    assert a.values() == b.values()
    c = Reservoir(capacity=50, seed=4)
    for v in range(5000):
        c.add(float(v))
    assert c.values() != a.values(), "the seed must matter (else the sample is not random)"


def test_flow_rate_matches_the_whole_history_definition():
    times = [k / 10 for k in range(50)] + [60 + k / 7 for k in range(70)]
    f = FlowRate(stall_s=1.0)
    for t in times:
        f.add(t)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False) if b - a <= 1.0]
    assert f.rate == pytest.approx(len(gaps) / sum(gaps))


def test_rolling_rate_forgets_old_events_and_is_bounded():
    now = [0.0]
    r = RollingRate(window_s=2.0, maxlen=64, clock=lambda: now[0])
    for k in range(40):  # 20/s for 2 s
        now[0] = k / 20
        r.add()
    assert r.rate() == pytest.approx(20.0, rel=0.1)
    now[0] = 10.0
    assert r.rate() == 0.0 and len(r) == 0  # nothing in the last 2 s
    for k in range(10_000):  # a burst far beyond maxlen
        now[0] = 20.0 + k * 1e-5
        r.add()
    assert len(r) == 64


def test_run_stats_memory_does_not_grow_with_inferences():
    st = RunStats()
    for i in range(20_000):
        t = 1000.0 + i / 10
        st.add(make_result(seq=i, done_at=t, received_at=t - 0.05, detections=()))
    assert st.inferences == 20_000
    assert len(st.latencies_ms) == st.latency.capacity < 20_000
    assert len(st.inference_ms) == st.inference.capacity
    assert len(st.recent) <= 1024
    assert st.rate == pytest.approx(10.0)
    assert percentile(st.latencies_ms, 50) == pytest.approx(50.0)
