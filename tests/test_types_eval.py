"""Box/FrameResult types, schema validation, ground-truth scoring, and run statistics."""

from __future__ import annotations

import json

import pytest

from detector_app.detection.types import Box, Detection, FrameResult
from detector_app.fixtures.evaluate import score
from detector_app.outputs.schema import validate
from detector_app.stats import RunStats, percentile

# -- Box.iou -------------------------------------------------------------------------------------------


def test_iou_identical():
    b = Box(10, 20, 110, 220)
    assert b.iou(b) == 1.0


def test_iou_disjoint_and_touching():
    a = Box(0, 0, 10, 10)
    assert a.iou(Box(20, 20, 30, 30)) == 0.0
    assert a.iou(Box(10, 0, 20, 10)) == 0.0  # shared edge only


def test_iou_half_overlap_is_one_third():
    assert Box(0, 0, 10, 10).iou(Box(5, 0, 15, 10)) == pytest.approx(50 / 150)


def test_iou_contained_and_symmetric():
    big, small = Box(0, 0, 10, 10), Box(2, 2, 7, 7)
    assert big.iou(small) == pytest.approx(25 / 100)
    assert small.iou(big) == big.iou(small)


def test_iou_degenerate_boxes():
    zero = Box(5, 5, 5, 5)
    assert zero.area == 0 and zero.iou(zero) == 0.0
    assert zero.iou(Box(0, 0, 10, 10)) == 0.0
    inverted = Box(10, 10, 0, 0)
    assert inverted.width == 0 and inverted.area == 0
    assert inverted.iou(Box(0, 0, 10, 10)) == 0.0


def test_box_geometry_and_list():
    b = Box(-5.0, 0.0, 40.54, 30.25)
    assert b.center == pytest.approx((17.77, 15.125))
    assert b.as_list() == [-5.0, 0.0, 40.5, 30.2]


# -- FrameResult.to_json --------------------------------------------------------------------------------


def make_result(**kw) -> FrameResult:
    base = {
        "seq": 3, "frame_index": 9, "pts": 0.3, "width": 1280, "height": 720, "received_at": 1_700_000_000.0,
        "done_at": 1_700_000_000.045, "inference_ms": 21.5,
        "detections": (Detection("cat", 0.91234, Box(1, 2, 300, 400), 15), Detection("deer", 0.5, Box(0, 0, 5, 5))),
        "model": "yolo11n", "source": "rtmp",
    }
    base.update(kw)
    return FrameResult(**base)


def test_to_json_validates_against_schema():
    msg = make_result().to_json()
    assert validate(msg) == []
    assert validate(json.loads(json.dumps(msg))) == []  # as a client decodes it
    assert msg["latency_ms"] == pytest.approx(45.0, abs=0.01)
    assert msg["frame_size"] == [1280, 720]
    assert msg["detections"][0] == {"label": "cat", "confidence": 0.9123, "box": [1, 2, 300, 400], "class_id": 15,
                                  "track_id": None}
    assert "extra" not in msg


@pytest.mark.parametrize(
    "kw",
    [{"pts": None}, {"detections": ()}, {"extra": {"session": 2, "frame_id": 17}}, {"seq": 0, "frame_index": 0}],
)
def test_to_json_variants_validate(kw):
    msg = make_result(**kw).to_json()
    assert validate(msg) == [], msg
    if "extra" in kw:
        assert msg["extra"] == kw["extra"]


def test_schema_catches_a_broken_message():
    msg = make_result().to_json()
    msg["detections"][0]["confidence"] = 1.5
    del msg["seq"]
    errs = validate(msg)
    assert any("confidence" in e for e in errs) and any("seq" in e for e in errs)


def test_labels_counts():
    r = make_result(detections=(Detection("cat", 0.9, Box(0, 0, 1, 1)),) * 2 + (Detection("dog", 0.8, Box(0, 0, 1, 1)),))
    assert r.labels() == {"cat": 2, "dog": 1}


# -- evaluate.score --------------------------------------------------------------------------------------

FPS = 10
CAT_BOX = [100.0, 100.0, 200.0, 200.0]


def make_truth(ambiguous_second: int | None = None) -> dict:
    """5 s at 10 fps; a cat fully visible in seconds 1-3; optionally one second where it is half out."""
    frames = []
    for f in range(5 * FPS):
        sec = f // FPS
        objects = [{"label": "person", "box": [0.0, 0.0, 50.0, 50.0], "visible": 1.0, "animal": False}]
        if 1 <= sec <= 3:
            objects.append({"label": "cat", "box": CAT_BOX, "visible": 1.0, "animal": True})
        elif sec == ambiguous_second:
            objects.append({"label": "cat", "box": CAT_BOX, "visible": 0.3, "animal": True})
        frames.append({"frame": f, "t": f / FPS, "objects": objects})
    return {"fps": FPS, "per_frame": frames}


def result_for(frame: int, dets: list[dict] | None = None, pts: float | None = "auto", frame_id: int | None = None) -> dict:
    r = make_result(pts=None, detections=()).to_json()
    r["pts"] = frame / FPS if pts == "auto" else pts
    r["detections"] = dets or []
    if frame_id is not None:
        r["extra"] = {"frame_id": frame_id}
    return r


def cat(box=CAT_BOX, label="cat") -> dict:
    return {"label": label, "confidence": 0.9, "box": list(box), "class_id": 15}


def perfect_results(truth: dict) -> list[dict]:
    out = []
    for fr in truth["per_frame"]:
        animals = [o for o in fr["objects"] if o["animal"] and o["visible"] >= 0.5]
        out.append(result_for(fr["frame"], [cat(o["box"], o["label"]) for o in animals]))
    return out


def test_perfect_results():
    truth = make_truth()
    s = score(truth, perfect_results(truth))
    assert (s.seconds_pos, s.seconds_neg, s.seconds_ambiguous) == (3, 2, 0)
    assert (s.tp, s.fp, s.fn, s.tn) == (3, 0, 0, 2)
    assert s.recall == 1.0 and s.precision == 1.0
    assert s.median_iou == 1.0 and s.matched_boxes == 30
    assert s.results_used == 50 and s.false_labels == {}
    assert "recall 1.000 precision 1.000" in s.to_text()


def test_missing_detections_lower_recall():
    truth = make_truth()
    results = perfect_results(truth)
    for r in results[20:30]:  # second 2: the cat is there but never detected
        r["detections"] = []
    s = score(truth, results)
    assert (s.tp, s.fn) == (2, 1)
    assert s.recall == pytest.approx(2 / 3)
    assert s.precision == 1.0


def test_detections_on_negative_seconds_lower_precision():
    truth = make_truth()
    results = perfect_results(truth)
    for r in results[40:50]:  # second 4: nothing there, a "dog" is reported
        r["detections"] = [cat(label="dog")]
    s = score(truth, results)
    assert (s.tp, s.fp, s.tn) == (3, 1, 1)
    assert s.precision == pytest.approx(3 / 4)
    assert s.recall == 1.0
    assert s.false_labels == {"dog": 10}


def test_a_few_false_frames_in_a_second_do_not_flip_it():
    truth = make_truth()
    results = perfect_results(truth)
    results[40]["detections"] = [cat()]  # one frame of ten
    s = score(truth, results)
    assert s.fp == 0 and s.precision == 1.0
    assert s.false_labels == {"cat": 1}


def test_ambiguous_seconds_are_skipped():
    truth = make_truth(ambiguous_second=4)
    results = perfect_results(truth)
    for r in results[40:50]:
        r["detections"] = [cat()]  # reporting the half-visible cat is neither right nor wrong
    s = score(truth, results)
    assert (s.seconds_pos, s.seconds_neg, s.seconds_ambiguous) == (3, 1, 1)
    assert (s.tp, s.fp, s.fn, s.tn) == (3, 0, 0, 1)
    assert s.false_labels == {}  # matches a partly visible cat


def test_poor_box_lowers_median_iou():
    truth = make_truth()
    results = perfect_results(truth)
    for r in results:
        for d in r["detections"]:
            d["box"] = [150.0, 100.0, 250.0, 200.0]  # shifted by half a width: IoU 1/3
    s = score(truth, results)
    assert s.median_iou == pytest.approx(1 / 3)
    assert s.recall == 1.0


def test_frame_id_preferred_over_pts():
    truth = make_truth()
    # pts says second 4 (negative) but the drawn frame counter says frame 15 (second 1, positive)
    results = [result_for(40 + k, [cat()], frame_id=15 + k) for k in range(5)]
    s = score(truth, results)
    assert (s.tp, s.fp) == (1, 0)
    assert s.false_labels == {}
    assert s.median_iou == 1.0


def test_invalid_frame_id_falls_back_to_pts():
    truth = make_truth()
    results = [result_for(10 + k, [cat()], frame_id=999) for k in range(5)]
    s = score(truth, results)
    assert s.results_used == 5 and s.tp == 1


def test_seconds_with_too_few_results_are_not_scored():
    truth = make_truth()
    results = [result_for(10, [cat()]), result_for(11, [cat()]), result_for(45, [cat()])]
    s = score(truth, results)
    assert s.seconds_pos == s.seconds_neg == 0 and s.tp == s.fp == 0
    assert s.recall == 1.0 and s.precision == 1.0  # nothing scored
    assert s.results_used == 3


def test_results_without_position_are_ignored():
    truth = make_truth()
    results = [result_for(0, [cat()], pts=None), result_for(0, [cat()], pts=99.0)]
    s = score(truth, results)
    assert s.results_used == 0 and s.median_iou is None


# -- RunStats / percentile ------------------------------------------------------------------------------


def _stats(done_times: list[float]) -> RunStats:
    st = RunStats()
    for i, t in enumerate(done_times):
        st.add(make_result(seq=i, done_at=t, received_at=t - 0.05, detections=()))
    return st


def test_rate_ignores_gaps_over_one_second():
    times = [k / 10 for k in range(50)] + [60 + k / 10 for k in range(50)]  # 1 min away in between
    st = _stats(times)
    assert st.rate == pytest.approx(10.0)
    assert st.inferences == 100


def test_rate_edge_cases():
    assert _stats([]).rate == 0.0
    assert _stats([5.0]).rate == 0.0
    assert _stats([0.0, 5.0, 10.0]).rate == 0.0  # only stalls
    assert _stats([0.0, 0.5]).rate == pytest.approx(2.0)
    assert _stats([0.0, 1.0]).rate == pytest.approx(1.0)  # exactly 1 s still counts as flowing


def test_stats_counts_labels_and_latency():
    st = RunStats()
    st.add(make_result(seq=1, done_at=10.0, received_at=9.9))
    st.add(make_result(seq=2, done_at=10.1, received_at=10.05, detections=()))
    assert st.inferences == 2 and st.frames_with_animals == 1
    assert st.per_label == {"cat": 1, "deer": 1}
    assert st.latencies_ms == pytest.approx([100.0, 50.0])
    assert st.first_result_at == 10.0 and st.last_result_at == 10.1


def test_percentile():
    assert percentile([], 50) is None
    assert percentile([7.0], 95) == 7.0
    v = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert percentile(v, 50) == 3.0
    assert percentile(v, 0) == 1.0 and percentile(v, 100) == 5.0
    assert percentile([0.0, 10.0], 25) == pytest.approx(2.5)
    assert percentile(list(range(101)), 95) == pytest.approx(95.0)
    assert v == [5.0, 1.0, 4.0, 2.0, 3.0]  # input not mutated
