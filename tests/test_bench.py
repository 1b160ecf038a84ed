"""The benchmark: metric arithmetic and targets (fast), the floor children and one short end-to-end run (slow).

The end-to-end run is ``--streams 2`` with the baseline: two real publishers into two sessions of one
worker, the floor children on the export ours loaded, and Ultralytics' own predict; about 40 s.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys

import pytest

from detector_app.bench import EXIT_CANNOT_RUN, EXIT_MISS, EXIT_OK, report
from detector_app.bench.nginx import render_conf
from detector_app.bench.worker import find_runtimes, pick_runtime_config
from tests.conftest import MODEL, ROOT, need

EXPECTED_FIELDS = {
    "detections_per_s", "inference_ms_p50", "inference_ms_p95", "latency_ms_p50", "latency_ms_p95",
    "dropped_frames", "process_cpu_cores", "peak_rss_mb", "time_to_first_detection_s",
    "latency_ms_p50_first10s", "latency_ms_p50_last10s", "frames_sent", "results_matched", "threads",
    "heavy_imports", "cpu_ms_per_detection",
}
OURS_ONLY = {"display_age_ms_p50", "display_age_ms_p95", "display_age_ms_p50_first10s", "display_age_ms_p50_last10s",
             "raw_wall_ms_p50", "raw_cpu_ms_per_call", "decode_cpu_ms_per_detection", "pipeline_over_floor",
             "fairness", "detections_per_s_min", "per_stream"}


def _sends(n: int = 300, t0: float = 1000.0, fps: float = 30.0) -> report.Sends:
    lines = [{"event": "connect_start", "t": t0 - 0.2}, {"event": "connected", "t": t0}]
    lines += [{"frame": i, "t": t0 + i / fps} for i in range(n)]
    lines.append({"event": "end", "t": t0 + n / fps, "frames": n})
    return report.Sends.parse(lines)


def _stream(sends: report.Sends, stream: int, every: int = 3, lat: float = 0.04, age_growth: float = 0.0,
            decode_lag: int = 0):
    """Synthetic records of one stream: a result every ``every`` frames, display samples whose age may grow after
    decoding (``age_growth`` s over the run) or before it (the decoder ends ``decode_lag`` frames behind)."""
    n = sends.frames
    results = [{"stream": stream, "frame_id": i, "done_at": sends.times[i] + lat, "inference_ms": 15.0, "n_all": 2}
               for i in range(0, n, every)]
    display = []
    for i in range(n):
        fid = max(0, i - decode_lag * i // n)  # the frame on screen at the time frame i is sent
        display.append([sends.times[i] + 0.01, sends.times[i] + 0.005 - age_growth * i / n, fid, stream])
    return results, display


FLOOR = {"raw": {"wall_ms_p50": 12.0, "cpu_ms_per_call": 20.0, "calls": 100},
         "decode": {"cpu_s_per_video_s": 0.1}}


def test_latency_is_done_time_minus_send_time_of_that_frame():
    sends = _sends()
    results = [
        {"frame_id": 30, "done_at": 1000.0 + 1.0 + 0.050, "inference_ms": 20.0},  # 50 ms after frame 30 left
        {"frame_id": 60, "done_at": 1000.0 + 2.0 + 0.070, "inference_ms": 22.0},
        {"frame_id": 60000, "done_at": 1003.0, "inference_ms": 20.0},  # unreadable counter: not a sent frame
        {"frame_id": 0, "done_at": 1100.0, "inference_ms": 20.0},  # long after the stream ended (black frame)
    ]
    pts, bad = report.latency_points(results, sends)
    assert [round(lat * 1000) for _, lat, _ in pts] == [50, 70]
    assert bad == 2


def test_single_stream_metrics_floor_and_targets():
    sends = _sends(n=600)
    results, display = _stream(sends, 0)
    raw = {"results": results, "display": display, "frames_decoded": [598], "model": "m", "backend": "openvino",
           "facts": {"threads": 9, "torch_imported": False, "ultralytics_imported": False}}
    m = report.side_metrics(raw, [sends], cpu_s=6.0, wall_s=20.0, rss_kb=200 * 1024, floor=FLOOR)
    assert m["detections_per_s"] == pytest.approx(10.0, rel=0.01)
    assert m["latency_ms_p50"] == pytest.approx(40.0, abs=0.5)
    assert m["dropped_frames"] == 2
    assert m["process_cpu_cores"] == pytest.approx(0.3)
    assert m["cpu_ms_per_detection"] == pytest.approx(30.0)  # 6 s of CPU over 200 results
    assert m["time_to_first_detection_s"] == pytest.approx(0.24, abs=0.01)  # connect_start → first result
    assert m["display_age_ms_p50"] == pytest.approx(5.0, abs=0.5)
    assert m["no_backlog"] is True and m["heavy_imports"] == "none" and m["boxes_per_result"] == 2.0
    # floor: 20 ms raw CPU + 0.1 CPU-s per video s at 10 detections/s = 10 ms decode; 30 / 30 = 1.0
    assert m["decode_cpu_ms_per_detection"] == pytest.approx(10.0, rel=0.02)
    assert m["pipeline_over_floor"] == pytest.approx(1.0, abs=0.02)
    assert "per_stream" not in m

    base = dict(m, latency_ms_p50=120.0, cpu_ms_per_detection=60.0, peak_rss_mb=800.0)
    targets = report.targets_for(1)
    verdicts = report.evaluate_targets(m, base)
    assert set(verdicts) == set(targets)
    assert all(verdicts.values()), verdicts
    assert report.all_pass(verdicts, targets, {"baseline", "floor"})
    # each target can fail
    assert report.evaluate_targets(m, dict(base, latency_ms_p50=100.0))["latency_ms_p50"] is False  # 40 > 0.35 × 100
    assert report.evaluate_targets(m, dict(base, cpu_ms_per_detection=45.0))["cpu_ms_per_detection"] is False
    assert report.evaluate_targets(m, dict(base, peak_rss_mb=400.0))["peak_rss_mb"] is False  # 200 > 0.4 × 400
    assert report.evaluate_targets(dict(m, peak_rss_mb=310.0), base)["peak_rss_mb"] is False
    assert report.evaluate_targets(dict(m, pipeline_over_floor=1.4), base)["pipeline_over_floor"] is False
    assert report.evaluate_targets(dict(m, time_to_first_detection_s=1.6), base)["time_to_first_detection_s"] is False
    assert report.evaluate_targets(dict(m, latency_ms_p95=101.0), base)["latency_ms_p95"] is False
    rows = report.table_rows(m, base, verdicts)
    text = report.render_text(rows)
    assert "PASS" in text and "MISS" not in text and "fairness" not in text  # multi-stream rows only with N > 1
    assert report.render_markdown(rows).count("\n") == len(rows) + 1


def test_missing_reference_is_na_not_pass_and_missing_data_is_a_miss():
    sends = _sends(n=600)
    results, display = _stream(sends, 0)
    m = report.side_metrics({"results": results, "display": display}, [sends], 6.0, 20.0, 200 * 1024)
    targets = report.targets_for(1)
    verdicts = report.evaluate_targets(m, None)
    assert verdicts["latency_ms_p50"] is None and verdicts["pipeline_over_floor"] is None
    assert report.all_pass(verdicts, targets, measured=set())  # --no-baseline, no floor: n/a, not a miss
    assert not report.all_pass(verdicts, targets, measured={"baseline", "floor"})  # measured but unknown: a miss
    empty = report.side_metrics({"results": [], "display": []}, [sends], 6.0, 20.0, 200 * 1024)
    assert not report.all_pass(report.evaluate_targets(empty, None), targets, measured=set())


def test_streams_fairness_backlog_and_per_stream_rows():
    s0, s1, s2 = _sends(n=600), _sends(n=600, t0=1000.01), _sends(n=600, t0=1000.02)
    r0, d0 = _stream(s0, 0, every=3)
    r1, d1 = _stream(s1, 1, every=3)
    r2, d2 = _stream(s2, 2, every=5, age_growth=0.5)  # 6/s, and its frame age grows by 500 ms over the run
    r1, d1 = _stream(s1, 1, every=3, decode_lag=60)  # decoder 2 s behind by the end: fresh once decoded, yet old
    raw = {"results": r0 + r1 + r2, "display": d0 + d1 + d2, "frames_decoded": [600, 600, 590]}
    m = report.side_metrics(raw, [s0, s1, s2], cpu_s=10.0, wall_s=20.0, rss_kb=250 * 1024, floor=FLOOR)
    assert m["streams"] == 3 and len(m["per_stream"]) == 3
    assert m["detections_per_s"] == pytest.approx(26.0, rel=0.02)
    assert m["detections_per_s_min"] == pytest.approx(6.0, rel=0.02)
    assert m["fairness"] == pytest.approx(0.6, rel=0.02)
    assert m["backlog_streams"] == [1, 2] and m["no_backlog"] is False
    assert m["per_stream"][1]["display_age_ms_p50_last10s"] == pytest.approx(5.0, abs=0.5)  # decoded-to-now: flat
    assert m["per_stream"][1]["display_age_since_send_ms_p50_last10s"] > 1000  # sent-to-now: 1.5 s behind
    assert m["dropped_frames"] == 10
    # decode per detection: 3 streams × 0.1 CPU-s/s ÷ 26 detections/s
    assert m["decode_cpu_ms_per_detection"] == pytest.approx(300 / 26, rel=0.02)
    v3 = report.evaluate_targets(m, None, streams=3)
    assert v3 == {"detections_per_s_min": False, "latency_ms_p95_worst": True, "fairness": False,
                  "display_age_since_send_ms_p50_last10s": False}
    v5 = report.evaluate_targets(m, None, streams=5)  # more streams than 2 cores serve at 10/s: fairness only
    assert set(v5) == {"fairness", "display_age_since_send_ms_p50_last10s"}
    rows = report.stream_rows(m)
    assert [r[0] for r in rows] == ["#0", "#1", "#2", "all 3"]
    assert rows[2][6] == rows[1][6] == "GROWING" and rows[0][6] == "none"
    table = report.render_text(report.table_rows(m, None, v3))
    assert "fairness" in table and "MISS" in table


def test_helpers():
    conf = render_conf(19350, ROOT, ROOT / "x.so")
    assert "listen 127.0.0.1:19350;" in conf and "live on;" in conf and "daemon off;" in conf


def test_find_runtimes_walks_attributes_lists_and_dicts():
    onnxruntime = pytest.importorskip("onnxruntime")

    class Session(onnxruntime.InferenceSession):  # an instance without a model file: only its type matters
        def __init__(self) -> None:
            pass

    class Inner:
        def __init__(self) -> None:
            self.pool = {"a": [Session()]}
            self.free: queue.Queue = queue.Queue()
            self.free.put(Session())  # a pool of run-slots, as a runner may keep them

    class Outer:
        __slots__ = ("runner", "other")

        def __init__(self) -> None:
            self.runner = Inner()
            self.other = "text"

    assert len(find_runtimes(Outer())) == 2
    assert find_runtimes(Outer(), max_depth=1) == []  # not deep enough to reach the pool


def test_pick_runtime_config_latency_for_one_stream_throughput_for_several():
    lat = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": 2}
    thr = {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": 2, "INFERENCE_NUM_THREADS": 2}
    rt = {"kind": "openvino", "configs": [{"config": thr, "requests": 2}, {"config": lat, "requests": 1}]}
    assert pick_runtime_config(rt, 1) == (lat, 1)
    assert pick_runtime_config(rt, 3) == (thr, 2)  # 3 streams share 2 parallel requests
    only_lat = {"kind": "openvino", "configs": [{"config": lat, "requests": 1}]}
    assert pick_runtime_config(only_lat, 3) == (lat, 1)  # one shape, one request: the streams take turns
    ort = {"kind": "onnx", "configs": [{"config": {"intra_op_num_threads": 1}, "requests": 2},
                                       {"config": {"intra_op_num_threads": 2}, "requests": 1}]}
    assert pick_runtime_config(ort, 1) == ({"intra_op_num_threads": 2}, 1)
    assert pick_runtime_config(ort, 2) == ({"intra_op_num_threads": 1}, min(2, os.cpu_count() or 1))
    assert pick_runtime_config({"kind": None, "configs": []}, 2) == ({}, 1)


@pytest.mark.timeout(60)
def test_floor_decode_child(fixture_videos):
    proc = subprocess.run([sys.executable, "-m", "detector_app.bench.floor", "decode", "--video",
                           str(fixture_videos["cat_720p30"]), "--seconds", "3"],
                          cwd=ROOT, capture_output=True, text=True, timeout=50, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.split("FLOOR ", 1)[1])
    assert out["frames"] == 90 and out["video_s"] == pytest.approx(3.0)
    assert 0.0 < out["cpu_s_per_video_s"] < 2.0  # decoding 720p30 is well below two cores


def test_bench_user_errors_are_one_line_exit_2():
    for args in (["--precision", "int4"], ["--video", "/nonexistent.mp4"], ["--streams", "0"]):
        proc = subprocess.run([sys.executable, "-m", "detector_app.cli", "bench", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == EXIT_CANNOT_RUN, (args, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_bench_two_streams_floor_and_baseline(tmp_path, fixture_videos):
    need("nginx", "apt-get install nginx libnginx-mod-rtmp")
    if not MODEL.exists():
        pytest.fail(f"test model missing: {MODEL}")
    out = tmp_path / "bench"
    cmd = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--duration", "6", "--streams", "2",
           "--video", str(fixture_videos["cat_720p30"]), "--model", str(MODEL), "--out-dir", str(out),
           "--raw-calls", "30", "--log-level", "WARNING"]
    proc = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=140)
    log = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode in (EXIT_OK, EXIT_MISS), log  # anything else (1: a crash, 2: could not run) fails
    summary = json.loads((out / "bench.json").read_text())
    assert proc.returncode == (EXIT_OK if summary["all_pass"] else EXIT_MISS), log
    assert "publisher→detection latency p50" in proc.stdout and "per stream (ours)" in proc.stdout
    ours, base = summary["ours"], summary["baseline"]
    for side in (ours, base):
        missing = EXPECTED_FIELDS - set(side)
        assert not missing, missing
    assert not OURS_ONLY - set(ours)
    assert ours["streams"] == 2 and summary["config"]["baseline_streams"] == 1
    for i, s in enumerate(ours["per_stream"]):  # both sessions really detected, on their own publisher's frames
        assert s["results_matched"] > 10 and s["detections_per_s"] > 1.0, (i, s)
        assert s["frames_sent"] >= 170 and s["dropped_frames"] is not None
    assert base["results_matched"] > 10
    assert summary["floor"]["raw"]["calls"] == 30 and ours["raw_cpu_ms_per_call"] > 0
    assert ours["decode_cpu_ms_per_detection"] > 0 and ours["pipeline_over_floor"] > 0
    assert summary["config"]["export"] and summary["config"]["runtime"]["configs"]
    assert ours["threads"] > 4 and base["heavy_imports"] == "torch, ultralytics"
    assert set(summary["targets"]) == set(report.targets_for(2))
    png = out / "latency.png"
    assert png.exists() and png.stat().st_size > 10_000


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_bench_managed_pulls_each_stream_from_the_relay(tmp_path, fixture_videos):
    """``--protocol managed``: the relay child serves one WHEP stream per session, each pipeline pulls its
    own, and every frame's send time is logged once (its barcode is what the detector saw)."""
    if not MODEL.exists():
        pytest.fail(f"test model missing: {MODEL}")
    out = tmp_path / "bench"
    cmd = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--protocol", "managed", "--duration", "6",
           "--streams", "2", "--no-baseline", "--video", str(fixture_videos["cat_720p30"]), "--model", str(MODEL),
           "--out-dir", str(out), "--raw-calls", "10", "--log-level", "WARNING"]
    proc = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=110)
    log = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode in (EXIT_OK, EXIT_MISS), log
    summary = json.loads((out / "bench.json").read_text())
    assert summary["config"]["protocol"] == "managed" and "MANAGED" in proc.stdout
    assert summary["baseline"] is None and summary["ours"]["error"] is None, summary["ours"]
    for i, s in enumerate(summary["ours"]["per_stream"]):
        assert s["frames_sent"] >= 170 and s["results_matched"] > 10, (i, s)
        assert 0 < s["latency_ms_p50"] < 2000, (i, s)  # a real glasses→detection time, not a clock mix-up
    for i in range(2):  # each stream's frames were sent once: a frame id never appears twice
        frames = [json.loads(ln)["frame"] for ln in (out / f"sends-ours-{i}.jsonl").read_text().splitlines()
                  if '"frame"' in ln]
        assert len(frames) == len(set(frames)) >= 170
    raw = json.loads((out / "ours.json").read_text())
    assert raw["sessions"] == [1, 1] and min(raw["frames_decoded"]) >= 170, raw["sessions"]  # one WHEP pull each


def test_inference_server_batches_are_the_difference_over_our_side():
    from detector_app.bench.runner import batch_delta, server_batches

    assert batch_delta({"inferences": 10, "executions": 10}, {"inferences": 250, "executions": 130}) == {
        "inferences": 240, "executions": 120, "mean_batch": 2.0}
    assert batch_delta({"inferences": 5, "executions": 5}, {"inferences": 5, "executions": 5})["mean_batch"] is None
    from detector_app.ingest.addresses import free_port

    down = server_batches(f"grpc://127.0.0.1:{free_port() + 1}/m")  # nothing listens: an error, not an exception
    assert "error" in down and "unreadable" in down["error"]
    assert "error" in batch_delta(down, {"inferences": 1, "executions": 1})
