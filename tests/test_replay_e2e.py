"""Recorded-video replay through the real ingest: a real ffmpeg publisher (separate process) pushes
fixture videos over real RTMP and SRT, and the detections are scored against ground truth."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from detector_app.fixtures.evaluate import score
from detector_app.glasses.publish import Publisher
from detector_app.ingest.addresses import wait_listening
from detector_app.ingest.factory import open_listener
from detector_app.pipeline import Pipeline

from .conftest import MODEL, ROOT, Collect, need, wait_for

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("protocol", ["rtmp", "srt"])
@pytest.mark.parametrize("name", ["cat_480p15", "cat_720p30"])
def test_replay_matches_ground_truth(protocol, name, fixture_videos, truth_for, detector, replay_recording):
    """Through the public test API (``detector_app.testing``), as a user's own CI would."""
    if protocol == "srt":
        need("srt-live-transmit", "apt-get install srt-tools")
    video = fixture_videos[name]
    run = replay_recording(video, via=protocol, detector=detector, frame_counter=True)
    summary = run.summary
    assert not summary.errors, summary.errors
    truth = truth_for(video)
    s = score(truth, [r.to_json() for r in run.results])
    # The same answer from the MOT copy of the truth, matched by pts alone (no frame counter needed)…
    by_pts = run.score(video.with_suffix(".mot.txt"), truth_labels="1=cat")
    assert by_pts["recall"] == s.recall and by_pts["precision"] == s.precision, (by_pts, s)
    # …and box-level from the COCO copy (cats less than half in view are iscrowd there, as in the fixture truth).
    boxes = run.score(video.with_suffix(".coco.json"))
    assert boxes["box_recall"] >= 0.9 and boxes["box_precision"] >= 0.9 and boxes["iou"] >= 0.5, boxes
    print(f"{protocol} {name}: {s.to_text()}; {summary.detections_per_s:.2f} inf/s; "
          f"first frame {summary.first_frame_s} s; latency p50 {summary.latency_ms['p50']} ms")
    assert s.seconds_pos >= 5 and s.seconds_neg >= 2
    assert s.recall >= 0.9, s
    assert s.precision >= 0.9, s
    assert s.median_iou is not None and s.median_iou >= 0.5, s
    # Real time, no backlog: ~10 inferences/s, and every frame is seen within a second of the publisher start.
    assert summary.detections_per_s >= 8.0
    assert summary.first_frame_s is not None and summary.first_frame_s <= 1.5
    assert summary.frames_decoded >= truth["frames"] * 0.95


def test_distractor_only_video_yields_no_animals(fixture_videos, detector, replay_recording):
    run = replay_recording(fixture_videos["distractor_480p15"], via="rtmp", detector=detector)
    assert not run.summary.errors
    assert run.summary.inferences > 80
    assert run.detections == [], f"animal detections on a video without animals: {run.detections[:3]}"


def _listen(protocol: str, detector, sink, fps: float = 10.0):
    if protocol == "srt":
        need("srt-live-transmit", "apt-get install srt-tools")
    endpoint, source = open_listener(protocol, port=0, bind_host="127.0.0.1", advertise="127.0.0.1", for_glasses=False)
    pipe = Pipeline(source, detector, fps=fps, sinks=[sink], source_label="test").start()
    wait_listening(endpoint.port, udp=protocol == "srt")
    return endpoint, source, pipe


@pytest.mark.parametrize("protocol", ["rtmp", "srt"])
def test_publisher_drop_then_reconnect_resumes_detection(protocol, fixture_videos, detector):
    sink = Collect()
    endpoint, source, pipe = _listen(protocol, detector, sink)
    video = fixture_videos["cat_480p15"]  # cat in view from ~2.5 s to ~7.5 s
    try:
        first = Publisher(video, endpoint.local_publish_url).start()
        assert wait_for(lambda: sink.count(lambda r: r["detections"]) >= 5, 15), "no detections from the first publisher"
        first.stop()  # the glasses drop off the network
        assert wait_for(lambda: not pipe.health().connected, 8), "listener did not notice the drop"
        n_before = sink.count()
        second = Publisher(video, endpoint.local_publish_url).start()  # …and reconnect
        assert wait_for(lambda: sink.count(lambda r: r["detections"] and r["extra"]["session"] == 2) >= 5, 20), \
            "detection did not resume after reconnect"
        second.stop()
        assert pipe.health().publisher_sessions == 2
        assert sink.count() > n_before
    finally:
        pipe.stop()


@pytest.mark.parametrize("protocol", ["rtmp", "srt"])
def test_wrong_key_publisher_is_rejected(protocol, fixture_videos, detector):
    sink = Collect()
    endpoint, source, pipe = _listen(protocol, detector, sink)
    video = fixture_videos["cat_480p15"]
    wrong_url = endpoint.local_publish_url.replace(endpoint.key, "WRONGKEY" + endpoint.key[8:])
    try:
        bad = Publisher(video, wrong_url, retries=0).start()
        time.sleep(4.0)
        bad.stop()
        assert pipe.health().frames_decoded == 0, "video from a wrong-key publisher reached the pipeline"
        assert sink.count() == 0
        assert wait_for(lambda: source.rejected_publishers >= 1, 5)
        # The listener keeps working for the right key.
        good = Publisher(video, endpoint.local_publish_url).start()
        assert wait_for(lambda: sink.count() >= 5, 15), "listener stopped accepting after a rejection"
        good.stop()
    finally:
        pipe.stop()


def test_garbage_publisher_then_good_one(fixture_videos, detector):
    """A client that sends junk to the RTMP port is dropped; the next real publisher works."""
    sink = Collect()
    endpoint, source, pipe = _listen("rtmp", detector, sink)
    try:
        with socket.create_connection(("127.0.0.1", endpoint.port), timeout=2) as s:
            s.sendall(b"\x03" + bytes(range(256)) * 8)
            time.sleep(0.5)
        good = Publisher(fixture_videos["cat_480p15"], endpoint.local_publish_url).start()
        assert wait_for(lambda: sink.count() >= 5, 15)
        good.stop()
    finally:
        pipe.stop()


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "detector_app.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def test_cli_replay_exit_code_summary_and_jsonl(fixture_videos, tmp_path):
    out = tmp_path / "det.jsonl"
    summary = tmp_path / "summary.json"
    r = _cli("replay", str(fixture_videos["cat_480p15"]), "--model", str(MODEL), "--headless", "--out", str(out),
             "--summary-json", str(summary), "--frame-counter")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "run summary" in r.stdout and "cat:" in r.stdout and "latency ms" in r.stdout
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) > 100 and all(line["type"] == "detections" for line in lines)
    assert json.loads(summary.read_text())["per_label"]["cat"] > 50


def test_missing_model_gives_clear_error(fixture_videos):
    r = _cli("replay", str(fixture_videos["cat_480p15"]), "--model", "models/does-not-exist.pt", "--headless", timeout=60)
    assert r.returncode == 2
    assert "not found" in r.stderr and "Traceback" not in r.stderr


def test_missing_video_gives_clear_error():
    r = _cli("replay", "no/such/video.mp4", "--headless", timeout=60)
    assert r.returncode == 2 and "video not found" in r.stderr and "Traceback" not in r.stderr


def test_corrupt_video_fails_cleanly(tmp_path):
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 400)
    t0 = time.monotonic()
    r = _cli("replay", str(bad), "--model", str(MODEL), "--headless", "--feed-port", "0", timeout=90)
    assert r.returncode == 1, r.stderr[-2000:]  # the run happened and failed (2 would be a setup error)
    assert "publisher failed" in r.stdout or "no video frames" in r.stdout
    assert "Traceback" not in r.stderr
    assert time.monotonic() - t0 < 60


def test_truncated_video_decodes_what_is_there(fixture_videos, truth_for, tmp_path):
    """A recording cut off mid-file (e.g. the glasses' upload died): process what is there, no hang."""
    video = fixture_videos["cat_480p15"]
    src = video.read_bytes()
    cut = tmp_path / "truncated.mp4"
    cut.write_bytes(src[: len(src) // 2])
    summary = tmp_path / "summary.json"
    r = _cli("detect", str(cut), "--model", str(MODEL), "--headless", "--feed-port", "0",
             "--summary-json", str(summary), timeout=90)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    s = json.loads(summary.read_text())
    frames = truth_for(video)["frames"]
    assert s["errors"] == [] and s["ended_by"] == "source ended"
    assert 0.2 * frames < s["frames_decoded"] < frames, "about the first half, not nothing and not all"
    assert s["inferences"] >= 0.2 * frames * 10 / 15  # 10 inferences per second of a 15 fps video
