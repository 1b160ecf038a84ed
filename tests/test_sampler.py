"""Sampler (wall clock, injected ``now``) and PtsSampler (stream clock)."""

from __future__ import annotations

import itertools
import random

import pytest

from detector_app.video.sampler import PtsSampler, Sampler


def run_arrival_driven(sampler: Sampler, arrivals: list[float]) -> list[float]:
    """Consumer that looks at each frame as it arrives and takes it only when wait_time(now)==0."""
    taken = []
    for t in arrivals:
        if sampler.wait_time(t) == 0:
            sampler.take(t)
            taken.append(t)
    return taken


def run_infer_loop(sampler: Sampler, arrivals: list[float], infer_s: float = 0.0) -> list[float]:
    """Event simulation of pipeline._infer_loop on a live source.

    Loop: if wait_time(now) > 0 sleep that long; then take the newest frame if it is newer than the
    last one taken (else wait for the next arrival); sampler.take(now); inference takes ``infer_s``.
    Returns the arrival times of the frames that were processed.
    """
    now, last_idx, taken = 0.0, -1, []
    end = arrivals[-1]
    while now <= end:
        wait = sampler.wait_time(now)
        if wait > 0:
            now += wait
            continue
        # newest arrived frame at `now`
        newest = max((i for i, a in enumerate(arrivals) if a <= now), default=-1) if now < end else len(arrivals) - 1
        if newest <= last_idx:
            nxt = last_idx + 1
            if nxt >= len(arrivals):
                break
            now = arrivals[nxt]  # take_newer wakes on the next put
            continue
        last_idx = newest
        sampler.take(now)
        taken.append(arrivals[newest])
        now += infer_s
    return taken


def arrivals_at(fps: float, seconds: float, jitter: float = 0.0, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    n = round(fps * seconds)
    return [max(0.0, k / fps + (rng.uniform(-jitter, jitter) if jitter else 0.0)) for k in range(n)]


def rate(taken: list[float], seconds: float) -> float:
    return len(taken) / seconds


@pytest.mark.parametrize("source_fps", [30.0, 15.0, 25.0, 60.0])
def test_arrival_driven_long_run_rate_is_exactly_10(source_fps):
    seconds = 60.0
    taken = run_arrival_driven(Sampler(10.0), arrivals_at(source_fps, seconds))
    # exactly 10/s over a minute: at most one frame of edge effect
    assert abs(len(taken) - 600) <= 1, len(taken)


def test_15fps_arrivals_are_not_halved_to_7_5():
    # A naive "next = now + period" sampler takes every 2nd frame of a 15 fps stream (7.5/s).
    taken = run_arrival_driven(Sampler(10.0), arrivals_at(15.0, 30.0))
    assert abs(rate(taken, 30.0) - 10.0) < 0.05


def test_30fps_takes_one_frame_in_three():
    arrivals = arrivals_at(30.0, 10.0)
    taken = run_arrival_driven(Sampler(10.0), arrivals)
    gaps = [b - a for a, b in itertools.pairwise(taken)]
    assert all(abs(g - 0.1) < 1 / 30 + 1e-9 for g in gaps)
    assert abs(len(taken) - 100) <= 1


@pytest.mark.parametrize("source_fps", [30.0, 15.0])
@pytest.mark.parametrize("jitter", [0.0, 0.01])
def test_infer_loop_simulation_rate(source_fps, jitter):
    seconds = 30.0
    arrivals = arrivals_at(source_fps, seconds, jitter=jitter, seed=7)
    arrivals.sort()
    taken = run_infer_loop(Sampler(10.0), arrivals, infer_s=0.02)
    assert abs(rate(taken, seconds) - 10.0) < 0.1, len(taken)
    assert len(set(taken)) == len(taken)  # never the same frame twice


def test_infer_loop_with_slow_inference_never_exceeds_capacity():
    # Inference at 150 ms cannot reach 10/s; the sampler must not try to catch up later.
    taken = run_infer_loop(Sampler(10.0), arrivals_at(30.0, 30.0), infer_s=0.15)
    assert 6.0 <= rate(taken, 30.0) <= 1 / 0.15 + 0.05


def test_first_frame_may_be_taken_immediately():
    s = Sampler(10.0)
    assert s.wait_time(123.4) == 0.0
    s.take(123.4)
    assert s.wait_time(123.4) == pytest.approx(0.1)
    assert s.wait_time(123.45) == pytest.approx(0.05)
    assert s.wait_time(123.6) == 0.0


def test_no_burst_after_stall():
    s = Sampler(10.0)
    arrivals = [k / 30 for k in range(30)]  # 1 s of frames
    taken = run_arrival_driven(s, arrivals)
    # publisher stalls for 5 s, then frames flow again at 30 fps
    resume = [6.0 + k / 30 for k in range(60)]
    taken_after = run_arrival_driven(s, resume)
    first_second = [t for t in taken_after if t < 7.0]
    assert len(first_second) <= 11  # ~10, not the 50 "owed" for the stall
    assert taken_after[0] == 6.0
    gaps = [b - a for a, b in itertools.pairwise(taken_after)]
    assert min(gaps) >= 0.1 - 1 / 30 - 1e-9  # never two frames back to back
    assert len(taken) in (10, 11)


def test_stall_restart_directly():
    s = Sampler(10.0)
    s.take(0.0)
    s.take(0.1)
    s.take(5.0)  # late by far more than one period: restart from now
    assert s.wait_time(5.0) == pytest.approx(0.1)
    assert s.wait_time(5.05) == pytest.approx(0.05)


def test_small_lateness_keeps_schedule():
    s = Sampler(10.0)
    s.take(0.0)  # due 0.1
    s.take(0.13)  # 30 ms late: next due stays on the grid at 0.2
    assert s.wait_time(0.13) == pytest.approx(0.07)


def test_reset_allows_immediate_take():
    s = Sampler(5.0)
    s.take(1.0)
    assert s.wait_time(1.0) > 0
    s.reset()
    assert s.wait_time(1.0) == 0.0


@pytest.mark.parametrize("fps", [0, -1, -0.5, 0.0])
def test_nonpositive_fps_rejected(fps):
    with pytest.raises(ValueError):
        Sampler(fps)


def test_period():
    assert Sampler(10.0).period == pytest.approx(0.1)
    assert Sampler(4).period == pytest.approx(0.25)


# -- PtsSampler ----------------------------------------------------------------------------------


def select_all(sampler: PtsSampler, pts: list[float | None]) -> list[bool]:
    return [sampler.select(p) for p in pts]


def test_pts_30fps_picks_one_in_three():
    pts = [k / 30 for k in range(300)]
    picks = select_all(PtsSampler(10.0), pts)
    assert sum(picks) == 100
    assert [i for i, p in enumerate(picks) if p][:5] == [0, 3, 6, 9, 12]


def test_pts_15fps_picks_two_in_three():
    pts = [k / 15 for k in range(150)]
    picks = select_all(PtsSampler(10.0), pts)
    assert sum(picks) == 100  # 10 per second of stream time
    assert picks[:6] == [True, False, True, True, False, True]


def test_pts_10fps_source_keeps_every_frame():
    assert all(select_all(PtsSampler(10.0), [k / 10 for k in range(50)]))


def test_pts_with_nonzero_origin_and_timebase_rounding():
    # RTMP streams often start at an arbitrary pts with ms rounding (1/1000 time base)
    pts = [round(1234.567 + k / 30, 3) for k in range(90)]
    picks = select_all(PtsSampler(10.0), pts)
    assert sum(picks) == 30
    assert picks[0] is True


def test_pts_selection_depends_only_on_the_timestamps():
    """Same frames whatever the machine: a reset sampler repeats itself exactly, a stream starting at
    another pts picks the same frames, and the count is one per 0.1 s slot."""
    pts = [k / 29.97 for k in range(500)]  # 16.65 s of 29.97 fps
    s = PtsSampler(10.0)
    first = select_all(s, pts)
    s.reset()
    assert select_all(s, pts) == first, "reset() must forget the previous session's origin and slot"
    assert select_all(PtsSampler(10.0), [1234.5 + p for p in pts]) == first
    assert sum(first) == 167
    assert [k for k, picked in enumerate(first) if picked][:4] == [0, 3, 6, 9]


def test_none_pts_is_always_selected_and_does_not_disturb_schedule():
    s = PtsSampler(10.0)
    assert s.select(None) is True
    assert s.select(0.0) is True
    assert s.select(None) is True
    assert s.select(1 / 30) is False
    assert s.select(None) is True
    assert s.select(3 / 30) is True


def test_pts_restart_after_reconnect_needs_reset():
    s = PtsSampler(10.0)
    assert sum(select_all(s, [100 + k / 30 for k in range(30)])) == 10
    s.reset()  # the decoder resets on each publisher session
    picks = select_all(s, [k / 30 for k in range(30)])  # new publisher: pts restart at 0
    assert sum(picks) == 10 and picks[0] is True


def test_pts_restart_without_reset_is_suppressed():
    # documents why reset() exists: a pts jump backwards is "already covered" until it catches up
    s = PtsSampler(10.0)
    select_all(s, [5 + k / 30 for k in range(30)])
    assert not any(select_all(s, [k / 30 for k in range(30)]))


def test_duplicate_pts_selected_once():
    s = PtsSampler(10.0)
    assert select_all(s, [0.0, 0.0, 0.1, 0.1]) == [True, False, True, False]
