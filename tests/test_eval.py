"""detector-app eval: truth formats, the metrics (checked against known answers and an independent
matcher on the same detections), the errors a user can cause, and a real two-model comparison."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from detector_app.detection.types import Box
from detector_app.evaluation.expect import ExpectError, ReplayCheck, parse_expect
from detector_app.evaluation.metrics import VideoRun, overall, score_model
from detector_app.evaluation.models import parse_models
from detector_app.evaluation.truth import TruthError, VideoInfo, check_matches, load_truth, padded, probe_video
from detector_app.fixtures.formats import MOT_LABELS, coco_path, mot_path

from .conftest import MODEL, ROOT


@pytest.fixture(scope="module")
def cat_horse(fixture_videos):
    video = fixture_videos["cat_horse_720p30"]
    info = probe_video(video)
    return video, info, padded(load_truth(video.with_suffix(".json")), info)


def _scored(truth, crowd=True):
    return [sorted((b.label, tuple(round(v) for v in b.box)) + ((b.crowd,) if crowd else ()) for b in f if b.scored)
            for f in truth.frames]


def test_mot_and_coco_truth_hold_the_fixture_boxes(cat_horse):
    video, info, fixture = cat_horse
    mot = padded(load_truth(mot_path(video), {1: "cat", 2: "horse"}), info)
    coco = padded(load_truth(coco_path(video)), info)
    assert fixture.labels == mot.labels == coco.labels == ["cat", "horse"]
    assert _scored(fixture) == _scored(coco)  # COCO marks the partly visible ones iscrowd
    assert _scored(fixture, crowd=False) == _scored(mot, crowd=False) and not any(b.crowd for f in mot.frames for b in f)
    assert [[b.visible for b in f] for f in fixture.frames if f and all(b.scored for b in f)][:50] == \
        [[b.visible for b in f] for f in mot.frames if f][:50]
    assert {b.track_id for f in mot.frames for b in f} == {1, 2}  # one identity per crossing
    assert MOT_LABELS == "1=cat,2=horse"


@pytest.mark.parametrize("name", ["two_cats_480p15", "cat_returns_480p15", "cat_480p15", "cat_horse_720p30"])
def test_mot_ids_follow_each_crossing_from_frame_to_frame(fixture_videos, name):
    """A crossing id never jumps across the frame between consecutive frames: where one cat has just left
    (its crossing still under way, off the frame) and another enters, the entering one keeps its own id
    (the MOT writer once gave it the leaving cat's id for a frame, which read as a tracker id switch)."""
    video = fixture_videos[name]
    last: dict[int, tuple[int, float]] = {}  # id → (frame, centre x)
    for ln in mot_path(video).read_text().splitlines():
        f, tid, x, _y, w, *_ = (float(v) for v in ln.split(",")[:5])
        cx = x + w / 2
        if int(tid) in last and last[int(tid)][0] == f - 1:
            assert abs(cx - last[int(tid)][1]) < 100, f"{name}: id {int(tid)} jumps at frame {int(f)}"
        last[int(tid)] = (int(f), cx)


def _results(truth, fps, step=3, shrink=1.0, drop_every=0, conf=0.9, extra_fp=False):
    """Synthetic detector output built from the truth: exact, shrunk boxes, missing frames, false boxes."""
    out = []
    for i in range(0, len(truth.frames), step):
        dets = []
        if not (drop_every and (i // step) % drop_every == 0):
            for b in truth.frames[i]:
                if b.scored and not b.crowd:
                    x1, y1, x2, y2 = b.box
                    dets.append({"label": b.label, "confidence": conf, "box": [x1, y1, x1 + (x2 - x1) * shrink, y2]})
        if extra_fp and not truth.frames[i]:
            dets.append({"label": "cat", "confidence": 0.5, "box": [10, 10, 60, 60]})
        out.append({"pts": i / fps, "frame_size": [1280, 720], "detections": dets})
    return out


def test_metrics_known_answers(cat_horse):
    _, info, truth = cat_horse
    perfect = score_model([VideoRun(truth, info.fps, _results(truth, info.fps))], 0.35, ["cat", "horse"])
    for c in perfect:
        assert (c.precision, c.recall, c.ap50, c.ap50_95, c.median_iou) == (1.0, 1.0, 1.0, 1.0, 1.0), c
    # Boxes 62 % as wide: IoU 0.62 → a hit at IoU 0.50, 0.55 and 0.60 only, so AP50–95 = 3/10.
    shrunk = score_model([VideoRun(truth, info.fps, _results(truth, info.fps, shrink=0.62))], 0.35, ["cat"])[0]
    assert shrunk.ap50 == 1.0 and shrunk.ap50_95 == pytest.approx(0.3, abs=0.01)
    assert shrunk.median_iou == pytest.approx(0.62, abs=0.01)
    # Every second result loses its boxes → half the truth boxes found.
    half = score_model([VideoRun(truth, info.fps, _results(truth, info.fps, drop_every=2))], 0.35, ["cat"])[0]
    assert half.recall == pytest.approx(0.5, abs=0.03) and half.precision == 1.0
    # A box on every empty frame: false positives lower precision, and only above the operating threshold.
    noisy = [VideoRun(truth, info.fps, _results(truth, info.fps, extra_fp=True))]
    fp = score_model(noisy, 0.35, ["cat"])[0]
    assert fp.fp > 10 and fp.precision == pytest.approx(fp.tp / (fp.tp + fp.fp))
    assert score_model(noisy, 0.6, ["cat"])[0].fp == 0
    assert overall(noisy, 0.35)["precision"] < 0.9 and overall(noisy, 0.6)["precision"] == 1.0


def test_truth_errors_are_one_line(fixture_videos, tmp_path):
    info = probe_video(fixture_videos["cat_480p15"])
    other = load_truth(fixture_videos["cat_720p30"].with_suffix(".json"))
    with pytest.raises(TruthError, match="1280x720 frames but cat_480p15.mp4 is 854x480"):
        check_matches(other, info)
    bad = tmp_path / "gt.txt"
    bad.write_text("1,1,10,10,20,20,1,1,1\nhello world\n")
    with pytest.raises(TruthError, match=r"gt.txt:2: not a MOT line"):
        load_truth(bad, {1: "cat"})
    bad.write_text("1,1,10,10,20,20,1,7,1\n2,1,10,10,20,20,1,1,1\n")
    with pytest.raises(TruthError, match="class id.* 7 have no name"):
        load_truth(bad)
    assert [len(f) for f in load_truth(bad, {1: "cat"}).frames] == [0, 1]  # a mapping scores its classes only
    (tmp_path / "t.json").write_text("{broken")
    with pytest.raises(TruthError, match="not valid JSON"):
        load_truth(tmp_path / "t.json")
    long = tmp_path / "long.txt"
    long.write_text("900,1,10,10,20,20,1,1,1\n")
    with pytest.raises(TruthError, match="has 900 frames but cat_480p15.mp4 has 240"):
        check_matches(load_truth(long, {1: "cat"}), info)


def test_results_find_their_frame_by_the_videos_own_timestamps(cat_horse):
    _, info, _ = cat_horse
    assert info.frames == len(info.times) == 420 and info.times[:2] == (0.0, pytest.approx(1 / 30))
    ntsc = VideoInfo(Path("x.mp4"), 1, 1, 30000 / 1001, 4, (0.0, 0.0334, 0.0667, 0.2))  # a gap: variable rate
    assert [ntsc.frame_at(t) for t in (0.0, 0.034, 0.066, 0.12, 0.19, 5.0)] == [0, 1, 2, 2, 3, 3]


def test_model_names_are_unambiguous():
    specs = parse_models(["runs/a/best.pt", "runs/b/best.pt", "m.pt@int8", "m.pt"], ["auto"])
    assert [s.name for s in specs] == ["a/best.pt", "b/best.pt", "m.pt@int8", "m.pt@auto"]
    assert [s.name for s in parse_models(["x.pt"], ["fp32", "int8"])] == ["x.pt@fp32", "x.pt@int8"]


def test_expectations_parse_and_judge(cat_horse):
    assert [(e.metric, e.op, e.value) for e in parse_expect("recall>=0.9, iou>0.5")] == [
        ("recall", ">=", 0.9), ("iou", ">", 0.5)]
    with pytest.raises(ExpectError):
        parse_expect("recall=>0.9")
    video, info, truth = cat_horse
    check = ReplayCheck(video, 0.35, (truth, info), parse_expect("recall>=0.9,box_recall>=0.9"), ["cat"], False)
    check.results = _results(truth, info.fps, drop_every=2)

    class S:
        detections_per_s = 10.0

    failed = check(S())
    assert failed is not None and "box_recall 0.5" in failed and "unexpected label(s): horse" in failed


# --- the command, for real (two models, each in its own process) --------------------------------

def _cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "detector_app.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def _coco_oracle(truth, fps, results, conf):
    """An independent matcher (not pycocotools): greedy by score, IoU ≥ 0.5, same label; a miss that lies
    mostly inside a "don't care" box (COCO crowd rule: intersection / detection area ≥ 0.5) is ignored."""
    tp = fp = 0
    for r in results:
        f = round(r["pts"] * fps)
        gts = [b for b in truth.frames[f] if b.scored]
        used: set[int] = set()
        for d in sorted((d for d in r["detections"] if d["confidence"] >= conf), key=lambda d: -d["confidence"]):
            db = Box(*d["box"])
            best, best_iou = None, 0.5
            for gi, g in enumerate(gts):
                if gi in used or g.label != d["label"] or g.crowd:
                    continue
                iou = db.iou(Box(*g.box))
                if iou >= best_iou:
                    best, best_iou = gi, iou
            if best is not None:
                used.add(best)
                tp += 1
                continue
            crowd = any(g.label == d["label"] and g.crowd and db.area
                        and _inter(db, Box(*g.box)) / db.area >= 0.5 for g in gts)
            fp += not crowd
    return tp, fp


def _inter(a: Box, b: Box) -> float:
    return max(0.0, min(a.x2, b.x2) - max(a.x1, b.x1)) * max(0.0, min(a.y2, b.y2) - max(a.y1, b.y1))


@pytest.mark.slow
def test_eval_compares_two_models_and_agrees_with_an_independent_matcher(fixture_videos, tmp_path):
    video = fixture_videos["cat_480p15"]
    out = tmp_path / "ev"
    r = _cli("eval", str(video), "--truth", str(coco_path(video)), "--model", str(MODEL),
             "--model", f"{MODEL}@fp32", "--out-dir", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| model | class |" in r.stdout and "AP50–95" in r.stdout
    data = json.loads((out / "eval.json").read_text())
    assert data["metrics_library"].startswith("pycocotools") and data["unique_objects"]["available"] is False
    assert [m["name"] for m in data["models"]] == ["fixture-animals-yolo11n.pt@auto", "fixture-animals-yolo11n.pt@fp32"]
    info = probe_video(video)
    truth = padded(load_truth(coco_path(video)), info)
    for m in data["models"]:
        cat = m["classes"]["cat"]
        assert cat["recall"] >= 0.9 and cat["precision"] >= 0.9 and cat["ap50"] >= 0.9, cat
        assert cat["seconds_recall"] >= 0.9 and cat["median_iou"] >= 0.8
        assert m["inference_ms_p50"] > 0 and m["peak_rss_mb"] > 50 and m["model_file_mb"] > 1
        assert m["torch_in_process"] is False, "eval's model process imported torch"
        results = [json.loads(line) for line in Path(m["per_video"][0]["detections_file"]).read_text().splitlines()]
        assert _coco_oracle(truth, info.fps, results, data["conf"]) == (cat["tp"], cat["fp"])
    for png in ("pr_cat.png", "timeline.png"):
        assert (out / png).stat().st_size > 5000
    assert "INT8" not in data["models"][1]["description"].upper().replace("FP32", "")


@pytest.mark.slow
def test_eval_refuses_truth_of_another_video_in_one_line(fixture_videos, tmp_path):
    r = _cli("eval", str(fixture_videos["cat_480p15"]), "--truth", str(mot_path(fixture_videos["cat_720p30"])),
             "--truth-labels", "1=cat", "--model", str(MODEL), "--out-dir", str(tmp_path), timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "wrong truth file for this video" in r.stderr
    assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) == 1, r.stderr
