"""Scores of one model over recorded videos: pycocotools' COCOeval over the inferred frames, plus the
project's per-second presence score (``fixtures.evaluate.score``).

Only frames the model actually analysed (10 per second by default) are images in the COCO evaluation;
frames between them are not scored. A COCO ``iscrowd`` box, and a fixture animal less than half in
view, is a *crowd* region: detecting it is neither a hit nor a false positive. MOT boxes all count
(visibility only feeds the per-second presence score), as MOT and COCO scorers count them.
AP is run on every detection the model reported (the run uses a low threshold); precision, recall and
the median IoU are taken at the operating threshold ``conf`` from COCOeval's own IoU-0.5 matching.
"""

from __future__ import annotations

import contextlib
import io
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from detector_app.detection.types import Box
from detector_app.evaluation.truth import Truth, VideoInfo
from detector_app.fixtures.evaluate import VISIBLE_POS, score

IOU_MATCH = 0.5


@dataclass(slots=True)
class ClassScore:
    label: str
    truth_boxes: int  # scored truth boxes in analysed frames
    detections: int  # at the operating threshold
    tp: int
    fp: int
    fn: int
    precision: float | None
    recall: float | None
    ap50: float | None
    ap50_95: float | None
    median_iou: float | None
    seconds_recall: float | None  # per-second presence (None: no positive/negative seconds)
    seconds_precision: float | None
    pr_recall: list[float] = field(default_factory=list)  # COCO's 101 recall points, IoU 0.5
    pr_precision: list[float] = field(default_factory=list)
    match_ious: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()
                if not k.startswith(("pr_", "match_"))}


@dataclass(frozen=True, slots=True)
class VideoRun:
    """One model's results on one video, with the truth they are scored against."""

    truth: Truth
    fps: float
    results: list[dict[str, Any]]

    @classmethod
    def build(cls, truth: Truth, video: VideoInfo, results: list[dict[str, Any]]) -> VideoRun:
        """Each result gets the frame its ``pts`` shows (``extra.frame_id``, unless the drawn counter set it),
        looked up in the video's own timestamps, so variable frame rates and 29.97 fps map exactly."""
        out = []
        for r in results:
            extra = dict(r.get("extra") or {})
            if not isinstance(extra.get("frame_id"), int) and r.get("pts") is not None:
                extra["frame_id"] = video.frame_at(float(r["pts"]))
            out.append({**r, "extra": extra})
        return cls(truth, video.fps, out)


def frame_of(result: dict[str, Any], fps: float) -> int | None:
    """The 0-based frame a result analysed: the drawn counter if read, else media time × fps."""
    fid = (result.get("extra") or {}).get("frame_id")
    if isinstance(fid, int):
        return fid
    pts = result.get("pts")
    return None if pts is None else int(round(float(pts) * fps))


def _coco_inputs(runs: list[VideoRun], labels: list[str]) -> tuple[dict, list[dict], dict[int, tuple]]:
    cat_id = {name: i + 1 for i, name in enumerate(labels)}
    images, anns, dets = [], [], []
    gt_boxes: dict[int, tuple] = {}
    for run in runs:
        seen: set[int] = set()
        for r in run.results:
            f = frame_of(r, run.fps)
            if f is None or f in seen or not run.truth.covers(f):
                continue
            seen.add(f)
            img = len(images) + 1
            w, h = r.get("frame_size") or (run.truth.width or 1, run.truth.height or 1)
            images.append({"id": img, "width": w, "height": h})
            for b in run.truth.frames[f]:
                if not b.scored or b.label not in cat_id:
                    continue
                x1, y1, x2, y2 = b.box
                aid = len(anns) + 1
                anns.append({"id": aid, "image_id": img, "category_id": cat_id[b.label],
                             "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                             "iscrowd": int(b.crowd)})
                gt_boxes[aid] = b.box
            for d in r.get("detections", []):
                if d["label"] not in cat_id:
                    continue
                x1, y1, x2, y2 = d["box"]
                dets.append({"image_id": img, "category_id": cat_id[d["label"]], "score": float(d["confidence"]),
                             "bbox": [x1, y1, x2 - x1, y2 - y1]})
    gt = {"images": images, "annotations": anns, "categories": [{"id": i, "name": n} for n, i in cat_id.items()]}
    return gt, dets, gt_boxes


def score_model(runs: list[VideoRun], conf: float, labels: list[str]) -> list[ClassScore]:
    """Per-class scores over all ``runs`` (one model, one or more videos); ``labels`` = classes to report."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_json, dets, gt_boxes = _coco_inputs(runs, labels)
    out: list[ClassScore] = []
    evals: dict[int, list[dict]] = {}
    prec = None
    if gt_json["images"]:
        with contextlib.redirect_stdout(io.StringIO()):  # COCOeval narrates every step
            coco = COCO()
            coco.dataset = gt_json
            coco.createIndex()
            coco_dt = coco.loadRes(dets) if dets else None
            if coco_dt is not None:
                ev = COCOeval(coco, coco_dt, "bbox")
                ev.evaluate()
                ev.accumulate()
                prec = ev.eval["precision"]  # [T, R, K, A, M]
                for e in ev.evalImgs:
                    if e is not None and e["aRng"] == ev.params.areaRng[0]:
                        evals.setdefault(e["category_id"], []).append(e)
    for k, label in enumerate(labels):
        cid = k + 1
        n_gt = sum(1 for a in gt_json["annotations"] if a["category_id"] == cid and not a["iscrowd"])
        tp = fp = 0
        ious: list[float] = []
        for e in evals.get(cid, []):
            for j, score_ in enumerate(e["dtScores"]):
                if score_ < conf or e["dtIgnore"][0][j]:
                    continue
                m = int(e["dtMatches"][0][j])
                if m:
                    tp += 1
                    dx = coco_dt.anns[e["dtIds"][j]]["bbox"]  # type: ignore[union-attr]
                    ious.append(Box(dx[0], dx[1], dx[0] + dx[2], dx[1] + dx[3]).iou(Box(*gt_boxes[m])))
                else:
                    fp += 1
        ap50 = ap = None
        pr: np.ndarray | None = None
        if prec is not None and n_gt:
            p = prec[:, :, k, 0, -1]
            if (p > -1).any():
                ap = float(p[p > -1].mean())
                pr = p[0]
                ap50 = float(pr[pr > -1].mean()) if (pr > -1).any() else None
        sec = _presence(runs, label, conf)
        out.append(ClassScore(
            label, n_gt, tp + fp, tp, fp, max(0, n_gt - tp),
            tp / (tp + fp) if tp + fp else None, tp / n_gt if n_gt else None, ap50, ap,
            statistics.median(ious) if ious else None, *sec,
            pr_recall=[round(float(r), 3) for r in np.linspace(0, 1, 101)] if pr is not None else [],
            pr_precision=[round(max(0.0, float(v)), 4) for v in pr] if pr is not None else [],
            match_ious=ious,
        ))
    return out


def overall(runs: list[VideoRun], conf: float, labels: list[str] | None = None) -> dict[str, float | None]:
    """One number per metric over all classes: what ``replay --expect`` and ``detector_app.testing`` check.

    ``recall``/``precision`` are per-second presence of any scored animal (``fixtures.evaluate.score``);
    the box metrics pool every class; ``ap50``/``ap50_95`` are the mean over classes with truth boxes.
    """
    labels = labels or sorted({b.label for r in runs for f in r.truth.frames for b in f if b.scored})
    per = score_model(runs, conf, labels) if labels else []
    tp, fp, gt = sum(c.tp for c in per), sum(c.fp for c in per), sum(c.truth_boxes for c in per)
    ious = [v for c in per for v in c.match_ious]
    aps = [c.ap50 for c in per if c.ap50 is not None]
    aps_all = [c.ap50_95 for c in per if c.ap50_95 is not None]
    ptp = pfp = pfn = ptn = 0
    for run in runs:
        kept = [{**r, "detections": [d for d in r.get("detections", []) if d["confidence"] >= conf]}
                for r in run.results]
        sc = score(run.truth.as_fixture(run.fps), kept, min_results_per_second=max(1, int(_rate(run.results) * 0.3)))
        ptp, pfp, pfn, ptn = ptp + sc.tp, pfp + sc.fp, pfn + sc.fn, ptn + sc.tn
    return {
        "recall": ptp / (ptp + pfn) if ptp + pfn else None,
        # No second predicted positive but some scored: nothing claimed wrongly (as fixtures.evaluate.Score).
        "precision": ptp / (ptp + pfp) if ptp + pfp else (1.0 if ptn + pfn else None),
        "box_recall": tp / gt if gt else None,
        "box_precision": tp / (tp + fp) if tp + fp else None,
        "iou": statistics.median(ious) if ious else None,
        "ap50": sum(aps) / len(aps) if aps else None,
        "ap50_95": sum(aps_all) / len(aps_all) if aps_all else None,
    }


def _presence(runs: list[VideoRun], label: str, conf: float) -> tuple[float | None, float | None]:
    """Per-second presence of ``label``, summed over the videos (``fixtures.evaluate.score``)."""
    tp = fp = fn = 0
    for run in runs:
        truth = run.truth.as_fixture(run.fps, only=label)
        kept = [{**r, "detections": [d for d in r.get("detections", []) if d["label"] == label
                                     and d["confidence"] >= conf]} for r in run.results]
        s = score(truth, kept, min_results_per_second=max(1, int(_rate(run.results) * 0.3)))
        tp, fp, fn = tp + s.tp, fp + s.fp, fn + s.fn
    return (tp / (tp + fn) if tp + fn else None, tp / (tp + fp) if tp + fp else None)


def _rate(results: list[dict[str, Any]]) -> float:
    """Inferences per second of media time (10 for the default sampling)."""
    pts = [r["pts"] for r in results if r.get("pts") is not None]
    if len(pts) < 2 or max(pts) <= min(pts):
        return 10.0
    return (len(pts) - 1) / (max(pts) - min(pts))


def per_second_timeline(run: VideoRun, conf: float, label: str | None = None) -> tuple[list[int], list[int]]:
    """(truth, predicted) per second: 1 = present, 0 = absent, -1 = ambiguous/unscored (for the plot)."""
    fps = run.fps
    n_sec = int(np.ceil(len(run.truth.frames) / fps))
    truth_sec, pred_sec = [-1] * n_sec, [-1] * n_sec
    pos = [0] * n_sec
    anyv = [0] * n_sec
    tot = [0] * n_sec
    for i, f in enumerate(run.truth.frames):
        s = int(i // fps)
        tot[s] += 1
        objs = [b for b in f if b.scored and (label is None or b.label == label)]
        pos[s] += any(b.visible >= VISIBLE_POS for b in objs)
        anyv[s] += any(b.visible >= 0.15 for b in objs)
    for s in range(n_sec):
        truth_sec[s] = 1 if pos[s] * 2 >= tot[s] and tot[s] else (0 if anyv[s] == 0 else -1)
    hits: dict[int, list[bool]] = {}
    for r in run.results:
        f = frame_of(r, fps)
        if f is None or not 0 <= f < len(run.truth.frames):
            continue
        hits.setdefault(int(f // fps), []).append(
            any((label is None or d["label"] == label) and d["confidence"] >= conf for d in r.get("detections", [])))
    for s, h in hits.items():
        if s < n_sec:
            pred_sec[s] = int(sum(h) * 2 >= len(h))
    return truth_sec, pred_sec
