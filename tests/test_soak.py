"""The soak: its verdict on plain measurements (each target can fail), and a short real run of
``scripts/soak.py`` (real `serve`, real simulator with repeated stream drops, measured from /proc)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from .conftest import MODEL, ROOT, need

_spec = importlib.util.spec_from_file_location("soak_script", ROOT / "scripts" / "soak.py")
soak = importlib.util.module_from_spec(_spec)
assert _spec.loader is not None
sys.modules["soak_script"] = soak  # dataclasses look their module up there
_spec.loader.exec_module(soak)


def samples(n: int = 30, rss=lambda i: 250.0, threads=lambda i: 12, fds=lambda i: 14, every_s: float = 5.0):
    return [soak.ProcSample(t=i * every_s, rss_mb=rss(i), threads=threads(i), fds=fds(i), cpu_s=i * 1.0)
            for i in range(n)]


def drops(recoveries: list[float | None]) -> list:
    out = []
    for i, r in enumerate(recoveries):
        o = soak.Outage("stream", down_at=100.0 * i, back_at=100.0 * i + 3.0)
        o.result_at = None if r is None else o.back_at + r
        out.append(o)
    return out


def judge(**kw):
    args = {"samples": samples(), "warm_from": 0.0, "outages": drops([0.7, 0.8, 0.9]), "log_errors": [],
            "serve_rc": 0, "targets": soak.Targets()}
    args.update(kw)
    return soak.judge(**args)


def test_a_flat_recovered_run_passes() -> None:
    v = judge(samples=samples(rss=lambda i: 250.0 + (0.3 if i % 2 else 0.0), threads=lambda i: 12 + i % 2))
    assert v.ok, v.failures
    assert any(line.startswith("stream drops") and "recovered 3" in line for line in v.lines)


@pytest.mark.parametrize("kw,missed", [
    ({"samples": samples(rss=lambda i: 250.0 + i * 0.5)}, "RSS grew"),  # 15 MB in 2.5 min: a leak
    ({"samples": samples(threads=lambda i: 12 + i // 5)}, "threads not flat"),
    ({"samples": samples(fds=lambda i: 14 + i)}, "open fds not flat"),
    ({"outages": drops([0.7, None, 0.9])}, "1 of 3 stream drops never recovered"),
    ({"outages": drops([0.5] * 18 + [4.0, 5.0])}, "stream recovery p95"),
    ({"outages": []}, "no stream drop happened"),
    ({"log_errors": ["12:00:00.000 ERROR   x boom"]}, "serve log has errors"),
    ({"serve_rc": None}, "serve did not stop"),
    ({"serve_rc": 1}, "serve exited with 1"),
    ({"samples": samples(n=4)}, "too few samples"),
])
def test_each_missed_target_fails_the_run(kw: dict, missed: str) -> None:
    v = judge(**kw)
    assert not v.ok and any(missed in f for f in v.failures), v.failures


def test_rss_budget_scales_with_the_run_but_not_below_the_floor() -> None:
    long_run = samples(n=361, rss=lambda i: 250.0 + i * 0.025)  # 30 min, +9 MB: within 10 MB / 30 min
    assert judge(samples=long_run).ok
    leaky = samples(n=361, rss=lambda i: 250.0 + i * 0.05)  # 30 min, +18 MB
    assert not judge(samples=leaky).ok
    short = samples(n=24, rss=lambda i: 250.0 + i * 0.1)  # 2 min, +2 MB: under the 3 MB noise floor
    assert judge(samples=short).ok
    # a bounded buffer filling and emptying (5 MB swing) that happens to start low and end high is no leak…
    swing = samples(n=24, rss=lambda i: 250.0 + 5.0 * ((i + 1) % 6) / 5)
    assert judge(samples=swing).ok
    # …but the same swing on top of a slow climb is
    assert not judge(samples=samples(n=24, rss=lambda i: 250.0 + 5.0 * ((i + 1) % 6) / 5 + i * 0.25)).ok


def test_observations_pair_drops_with_returns_and_results() -> None:
    obs = soak.Observations()
    obs.sim_line("[glasses camera] u@x: stream s1 connecting (app still sees 'initializing')\n", 1.0)
    obs.sim_line("[glasses camera] u@x: stream s1 streaming -> app sees 'active'\n", 1.5)
    obs.result(1.6)
    obs.sim_line("[glasses camera] u@x: stream s1 reconnecting -> app sees 'initializing'\n", 10.0)
    obs.result(9.9)  # decoded before the drop: not a recovery
    assert obs.open_outages()
    obs.sim_line("[glasses camera] u@x: stream s1 connecting (app still sees 'initializing')\n", 13.0)
    obs.result(12.9)
    assert obs.outages[0].recovery_s is None
    obs.result(13.8)
    assert [o.recovery_s for o in obs.outages] == [pytest.approx(0.8)] and not obs.open_outages()
    # SRT's MPEG-TS tail: the old stream's last frames are decoded only once new bytes arrive
    obs.result(14.9, (1, 300))
    obs.sim_line("[glasses camera] u@x: stream s1 reconnecting -> app sees 'initializing'\n", 15.0)
    obs.sim_line("[glasses camera] u@x: stream s1 connecting (app still sees 'initializing')\n", 18.0)
    obs.result(18.05, (1, 301))  # the old session's tail, after the reconnect: not a recovery
    assert obs.outages[1].recovery_s is None
    obs.result(18.5, (2, 302))
    assert obs.outages[1].recovery_s == pytest.approx(0.5)
    obs.sim_line("[cloud] dropping app WebSocket for u@x (abrupt)\n", 20.0)
    obs.sim_line("[cloud] com.x connected for u@x (reconnect); glasses: Mentra Live\n", 21.2)
    assert obs.outages[2].kind == "socket" and obs.outages[2].recovery_s == pytest.approx(1.2)
    obs.sim_line("[cloud] soak summary: stream drops 2, app socket drops 1\n", 30.0)
    assert obs.sim_reported == (2, 1) and obs.results == 7


def test_a_rebuilt_ingest_restarting_its_counters_is_a_new_stream() -> None:
    assert soak._continues((3, 500), (3, 501)) and not soak._continues((3, 500), (4, 501))
    assert not soak._continues((1, 500), (1, 2))  # new pipeline: session and frame counter restarted
    assert not soak._continues(None, (1, 1)) and not soak._continues((1, 1), None)


@pytest.mark.slow
@pytest.mark.soak
@pytest.mark.timeout(150, func_only=True)  # a cold model cache is made in the fixture, not counted
def test_short_soak_with_stream_and_socket_drops(fixture_videos, detector, tmp_path) -> None:
    """~2 minutes: serve + simulator, the stream dropping every 20 s for 3 s and the app socket too;
    every drop recovers, resources stay flat, serve's log is clean and it exits 0. (`detector` makes
    sure the model's export cache exists, so serve starts in seconds and the time goes to the soak.)"""
    need("ffmpeg", "apt-get install ffmpeg")
    report = tmp_path / "soak.json"
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "soak.py"), "--duration", "105", "--drop-every", "20",
         "--down-for", "3", "--soak-ws", "--warmup", "25", "--print-every", "30", "--video",
         str(fixture_videos["cat_480p15"]), "--model", str(MODEL), "--workdir", str(tmp_path / "run"),
         "--json", str(report)],
        capture_output=True, text=True, timeout=140, cwd=ROOT,
        # Sightings off here: their bounded caches (packet ring, SQLite pages, clip muxing) fill for ~5 minutes
        # (+2–3 MB, then flat in the 30-minute run in the README), which a 2-minute run cannot tell from a leak.
        env={**os.environ, "SIGHTINGS": "0"},
    )
    print(r.stdout[-3000:], r.stderr[-2000:])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    data = json.loads(report.read_text())
    stream = [o for o in data["outages"] if o["kind"] == "stream"]
    judged = [o for o in stream if o["judged"]]
    assert len(judged) >= 3 and all(o["recovery_s"] is not None for o in judged)
    assert data["simulator_counted"][0] == len(stream)  # the simulator's own count agrees with what we saw
    assert data["results"] > 500 and data["serve_exit"] == 0
    assert "result            PASS" in r.stdout and "[soak  0:30]" in r.stdout
