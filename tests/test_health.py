"""HealthMeter: windowed fps/bitrate, frame age, stream lag, session counters (fake clock)."""

from __future__ import annotations

import types

import pytest

from detector_app.video import health as health_mod
from detector_app.video.health import HealthMeter


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def monotonic(self) -> float:
        return self.t

    def time(self) -> float:
        return 1_700_000_000.0 + self.t


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    c = FakeClock()
    # replace the module's view of `time` only (other threads keep the real clock)
    monkeypatch.setattr(health_mod, "time", types.SimpleNamespace(monotonic=c.monotonic, time=c.time))
    return c


def feed(meter: HealthMeter, clock: FakeClock, fps: float, seconds: float, packet_bytes: int = 0,
         pts0: float = 0.0, lag_per_frame: float = 0.0) -> None:
    """Frames at `fps` for `seconds`; each arrives `lag_per_frame` s later than the previous schedule."""
    start = clock.t
    n = round(fps * seconds)
    for k in range(n):
        clock.t = start + k / fps + k * lag_per_frame
        if packet_bytes:
            meter.packet(packet_bytes)
        meter.frame(pts0 + k / fps, 1280, 720)


def test_empty_meter(clock):
    snap = HealthMeter().snapshot()
    assert snap.fps == 0.0 and snap.bitrate_kbps == 0.0
    assert snap.frame_age_ms is None and snap.stream_lag_ms is None
    assert not snap.connected and snap.publisher_sessions == 0 and snap.frames_decoded == 0


def test_fps_and_bitrate_over_window(clock):
    m = HealthMeter()
    m.session_started("h264", 1280, 720)
    feed(m, clock, fps=30, seconds=5, packet_bytes=5000)  # 30 * 5000 * 8 = 1200 kb/s
    snap = m.snapshot()
    assert snap.fps == pytest.approx(30.0, rel=0.02)
    assert snap.bitrate_kbps == pytest.approx(1200.0, rel=0.03)
    assert snap.frames_decoded == 150
    assert (snap.width, snap.height, snap.codec) == (1280, 720, "h264")


def test_fps_follows_a_rate_change_within_the_window(clock):
    m = HealthMeter()
    m.session_started("h264", 640, 480)
    feed(m, clock, fps=30, seconds=3)
    clock.t += 1 / 15
    feed(m, clock, fps=15, seconds=3)  # more than WINDOW_S later only 15 fps frames remain
    assert m.snapshot().fps == pytest.approx(15.0, rel=0.05)


def test_fps_decays_after_frames_stop(clock):
    m = HealthMeter()
    feed(m, clock, fps=30, seconds=3)
    clock.t += HealthMeter.WINDOW_S + 0.5
    snap = m.snapshot()
    assert snap.fps == 0.0 and snap.bitrate_kbps == 0.0


def test_frame_age(clock):
    m = HealthMeter()
    m.frame(0.0, 640, 480)
    assert m.snapshot().frame_age_ms == pytest.approx(0.0)
    clock.t += 0.25
    assert m.snapshot().frame_age_ms == pytest.approx(250.0)


def test_stream_lag_zero_when_frames_on_time(clock):
    m = HealthMeter()
    m.session_started("h264", 640, 480)
    feed(m, clock, fps=30, seconds=2, pts0=12.5)  # pts origin arbitrary
    assert m.snapshot().stream_lag_ms == pytest.approx(0.0, abs=1e-6)


def test_stream_lag_grows_when_frames_arrive_late(clock):
    m = HealthMeter()
    m.session_started("h264", 640, 480)
    feed(m, clock, fps=30, seconds=1)
    lags = []
    start = clock.t + 1 / 30
    for k in range(30):  # each frame 10 ms later than its pts says: backlog building up
        clock.t = start + k / 30 + (k + 1) * 0.010
        m.frame(1.0 + k / 30, 640, 480)
        lags.append(m.snapshot().stream_lag_ms)
    assert lags == sorted(lags)
    assert lags[-1] == pytest.approx(300.0, abs=1.0)


def test_stream_lag_ignores_none_pts(clock):
    m = HealthMeter()
    m.frame(None, 640, 480)
    assert m.snapshot().stream_lag_ms is None
    m.frame(0.0, 640, 480)
    assert m.snapshot().stream_lag_ms == 0.0


def test_lag_baseline_resets_per_session(clock):
    m = HealthMeter()
    m.session_started("h264", 640, 480)
    m.frame(100.0, 640, 480)
    clock.t += 1.0
    m.session_ended(None)
    m.session_started("h264", 640, 480)  # new publisher: pts restart at 0
    m.frame(0.0, 640, 480)
    clock.t += 0.1
    m.frame(0.1, 640, 480)
    assert m.snapshot().stream_lag_ms == pytest.approx(0.0, abs=1e-6)


def test_session_counters_and_errors(clock):
    m = HealthMeter()
    m.skipped_source = lambda: 7
    m.session_started("h264", 1920, 1080)
    clock.t += 0.45
    m.frame(0.0, 1920, 1080)
    snap = m.snapshot()
    assert snap.connected and snap.publisher_sessions == 1
    assert snap.first_frame_s == pytest.approx(0.45)
    assert snap.frames_skipped == 7
    m.error("bad packet")
    m.session_ended("publisher went away")
    snap = m.snapshot()
    assert not snap.connected and snap.decode_errors == 1 and snap.last_error == "publisher went away"
    m.session_started("hevc", 1280, 720)
    assert m.snapshot().first_frame_s is None  # per session
    clock.t += 0.2
    m.frame(0.0, 1280, 720)
    snap = m.snapshot()
    assert snap.publisher_sessions == 2 and snap.codec == "hevc"
    assert snap.first_frame_s == pytest.approx(0.2)
    assert snap.frames_decoded == 2
    m.session_ended(None)
    assert m.snapshot().last_error == "publisher went away"  # a clean end keeps the last error


def test_first_frame_wall_set_once(clock):
    m = HealthMeter()
    m.frame(0.0, 1, 1)
    first = m.first_frame_wall
    clock.t += 5
    m.frame(0.2, 1, 1)
    assert m.first_frame_wall == first == pytest.approx(1_700_000_000.0 + 1000.0)


def test_to_json_and_summary(clock):
    m = HealthMeter()
    m.session_started("h264", 1280, 720)
    feed(m, clock, fps=30, seconds=3, packet_bytes=4000)
    snap = m.snapshot()
    d = snap.to_json()
    assert d["fps"] == round(snap.fps, 3) and d["codec"] == "h264" and d["frames_decoded"] == 90
    assert "1280x720 h264" in snap.summary() and "decoded 90" in snap.summary()


def test_windows_are_capped_and_bitrate_stays_exact(clock):
    """A packet flood beyond the cap: memory stays bounded and the running byte sum matches what is kept."""
    m = HealthMeter()
    m.session_started("h264", 1280, 720)
    for k in range(10_000):  # 10 000 packets of 100 B in 1 s: more than MAX_EVENTS inside the window
        clock.t = 1000.0 + k / 10_000
        m.packet(100)
    kept = m.MAX_EVENTS
    assert len(m._bytes) == kept
    span = clock.t - m._bytes[0][0]
    assert m.snapshot().bitrate_kbps == pytest.approx(kept * 100 * 8 / 1000 / span, rel=1e-6)
    clock.t += 10  # all of it leaves the window
    assert m.snapshot().bitrate_kbps == 0.0 and m._bytes_sum == 0
