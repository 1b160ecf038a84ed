"""One clock over every transport, and replay tests as a user's CI writes them (``detector_app.testing``,
its ``replay_recording`` fixture, ``replay --expect``): real ffmpeg publishers into the real ingest."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from detector_app.fixtures.formats import coco_path, mot_path

from .conftest import MODEL, ROOT, need

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clip(fixture_videos, tmp_path_factory):
    """The first 4 s of cat_480p15 (the cat walks in at ~2 s), cut without re-encoding."""
    out = tmp_path_factory.mktemp("clip") / "cat_4s.mp4"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", str(fixture_videos["cat_480p15"]),
                    "-t", "4", "-c", "copy", str(out)], check=True, timeout=60)
    return out


def test_pts_is_the_same_clock_over_rtmp_srt_and_file(clip, detector, replay_recording):
    need("srt-live-transmit", "apt-get install srt-tools")
    runs = {via: replay_recording(clip, via=via, detector=detector, frame_counter=True) for via in ("file", "rtmp", "srt")}
    fps = 15.0
    by_frame = {via: run.pts_by_frame_id() for via, run in runs.items()}
    for via, pts in by_frame.items():
        assert len(pts) >= 25, f"{via}: only {len(pts)} results"
        off = [abs(p - f / fps) for f, p in pts.items()]
        assert max(off) <= 1 / fps + 1e-3, f"{via}: pts is not media time since the first frame (off by {max(off):.3f} s)"
    common = set(by_frame["rtmp"]) & set(by_frame["srt"]) & set(by_frame["file"])
    assert len(common) >= 10
    for f in common:
        ps = [by_frame[v][f] for v in ("file", "rtmp", "srt")]
        assert max(ps) - min(ps) <= 1 / fps + 1e-3, f"frame {f}: pts file/rtmp/srt = {ps}"
    # The raw transport clock is kept apart: MPEG-TS over SRT starts at the muxer's offset, FLV at 0.
    raw_srt = [r.stream_pts - r.pts for r in runs["srt"].results if r.stream_pts is not None]
    raw_rtmp = [r.stream_pts - r.pts for r in runs["rtmp"].results if r.stream_pts is not None]
    assert min(raw_srt) > 0.5 and max(raw_rtmp) < 0.1


def test_cli_replay_expectations(clip, fixture_videos):
    ok = subprocess.run(
        [sys.executable, "-m", "detector_app.cli", "replay", str(fixture_videos["cat_480p15"]), "--model", str(MODEL),
         "--headless", "--feed-port", "0", "--truth", str(mot_path(fixture_videos["cat_480p15"])), "--truth-labels",
         "1=cat", "--expect", "recall>=0.9,precision>=0.9,iou>=0.5", "--expect-labels", "cat", "--log-level", "WARNING"],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr[-2000:]
    bad = subprocess.run(
        [sys.executable, "-m", "detector_app.cli", "replay", str(clip), "--model", str(MODEL), "--headless",
         "--feed-port", "0", "--expect-none", "--log-level", "WARNING"],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert bad.returncode == 1, bad.stderr[-2000:]
    lines = [ln for ln in bad.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "expectation failed: expected no detections, got cat" in lines[0], bad.stderr


def test_eval_via_srt_scores_the_replay_by_pts(clip, fixture_videos, tmp_path):
    """eval --via srt: the real ingest in real time; results find their truth frames by pts alone (with
    SRT's raw MPEG-TS clock they would land ~21 frames late and miss the walking cat's boxes)."""
    need("srt-live-transmit", "apt-get install srt-tools")
    gt = tmp_path / "gt.json"  # the clip's truth: the first 4 s (60 frames) of the fixture's COCO truth
    coco = json.loads(coco_path(fixture_videos["cat_480p15"]).read_text())
    coco["images"] = [i for i in coco["images"] if i["frame_index"] < 60]
    keep = {i["id"] for i in coco["images"]}
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in keep]
    gt.write_text(json.dumps(coco))
    r = subprocess.run(
        [sys.executable, "-m", "detector_app.cli", "eval", str(clip), "--truth", str(gt), "--truth-label", "cat",
         "--model", str(MODEL), "--via", "srt", "--out-dir", str(tmp_path / "ev"), "--no-plots"],
        capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    cat = json.loads((tmp_path / "ev" / "eval.json").read_text())["models"][0]["classes"]["cat"]
    assert cat["truth_boxes"] >= 8 and cat["recall"] >= 0.9 and cat["precision"] >= 0.9, cat
    assert cat["median_iou"] >= 0.7, cat
