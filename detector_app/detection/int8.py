"""INT8 post-training quantisation with NNCF, and the measurement that says whether it cost accuracy.

On a 2-core AVX2 machine INT8 runs yolo11n 384×640 in 26 ms on 2 threads against 47–54 ms for fp32
(field notes), so it is worth having, but only with numbers next to it: ``compare`` runs the fp32 and the
INT8 export over a held-out fixture video (not used for calibration) and scores both against its ground
truth the way the replay tests do (per-second recall/precision, median box IoU), plus how well the INT8
boxes agree with fp32's frame by frame.

Calibration frames are letterboxed exactly as at inference (``yolo_io.letterbox``). As Ultralytics does for
its own INT8 OpenVINO export, the detection head (its Sigmoid and box decoding) stays in floating point.
"""

from __future__ import annotations

import shutil
import statistics
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from detector_app.detection.yolo_io import letterbox

CALIB_FIXTURES = ("cat_480p15", "cat_horse_720p30", "distractor_480p15")
HELDOUT_FIXTURE = "cat_720p30"  # never used for calibration
TOLERANCE = 0.02  # recall/precision within this of fp32
MIN_MEDIAN_IOU = 0.9


def sample_frames(videos: list[Path], count: int) -> Iterator[np.ndarray]:
    """About ``count`` BGR frames spread evenly over all ``videos``."""
    import av

    totals = []
    for v in videos:
        with av.open(str(v)) as c:
            totals.append(c.streams.video[0].frames or 0)
    all_frames = sum(totals) or count
    for v, n in zip(videos, totals, strict=True):
        want = max(1, round(count * (n or all_frames / len(videos)) / all_frames))
        step = max(1, (n or want) // want)
        with av.open(str(v)) as c:
            for i, frame in enumerate(c.decode(video=0)):
                if i % step == 0:
                    yield frame.to_ndarray(format="bgr24")


def _head_scope(model: Any) -> list[str]:
    """Names of the detection head's ops (kept in float), found like Ultralytics does: the last Sigmoid's module."""
    ops = model.get_ordered_ops()
    sigmoids = [op.get_friendly_name() for op in ops if op.get_type_name() == "Sigmoid"]
    if not sigmoids:
        return []
    head = sigmoids[-1].split("/", 1)[0]
    return [op.get_friendly_name() for op in ops
            if op.get_type_name() == "Sigmoid" or op.get_friendly_name().startswith((f"{head}/", f"{head}.dfl"))]


def quantize_openvino(fp32: Path, out_dir: Path, calib: list[Path], frames: int = 300) -> dict[str, Any]:
    """Write an INT8 copy of the OpenVINO export ``fp32`` (dir or .xml) into ``out_dir``; runs in the export child."""
    import nncf
    import openvino as ov

    src_dir = fp32 if fp32.is_dir() else fp32.parent
    xml = next(iter(sorted(src_dir.glob("*.xml"))))
    meta = yaml.safe_load((src_dir / "metadata.yaml").read_text()) if (src_dir / "metadata.yaml").exists() else {}
    model = ov.Core().read_model(xml)
    shape = model.inputs[0].get_shape()
    input_hw = (int(shape[2]), int(shape[3]))
    data = [letterbox(f, input_hw)[0] for f in sample_frames(calib, frames)]
    ignored = _head_scope(model)
    quantized = nncf.quantize(
        model, nncf.Dataset(data), preset=nncf.QuantizationPreset.MIXED, subset_size=len(data),
        ignored_scope=nncf.IgnoredScope(names=ignored) if ignored else None,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, out_dir / xml.name)
    meta = dict(meta or {})
    meta["args"] = {**(meta.get("args") or {}), "int8": True, "quantize": 8}
    meta["description"] = f"{meta.get('description', '')} (NNCF INT8, {len(data)} calibration frames)".strip()
    (out_dir / "metadata.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    for extra in src_dir.iterdir():  # anything else Ultralytics wrote next to the model (e.g. a license)
        if extra.suffix not in (".xml", ".bin") and extra.name != "metadata.yaml" and extra.is_file():
            shutil.copy2(extra, out_dir / extra.name)
    return {"calibration_frames": len(data), "ignored_ops": len(ignored), "input_hw": list(input_hw)}


# ------------------------------------------------------------------------------------------ accuracy


@dataclass(frozen=True, slots=True)
class Accuracy:
    """Per-second scores against the fixture's ground truth (see ``fixtures.evaluate``)."""

    recall: float
    precision: float
    median_iou: float | None
    results: int


@dataclass(frozen=True, slots=True)
class Int8Report:
    video: str
    fp32: Accuracy
    int8: Accuracy
    agreement_recall: float  # fp32 boxes matched by an INT8 box of the same label (IoU ≥ 0.5)
    agreement_precision: float  # INT8 boxes matched by an fp32 box
    agreement_median_iou: float | None
    boxes_fp32: int
    boxes_int8: int

    @property
    def passed(self) -> bool | None:
        """True/False from the check; None when fp32 found nothing to compare (e.g. random weights)."""
        if self.boxes_fp32 == 0:
            return None
        ok = (abs(self.int8.recall - self.fp32.recall) <= TOLERANCE
              and abs(self.int8.precision - self.fp32.precision) <= TOLERANCE)
        iou = self.int8.median_iou
        return ok and (iou is None or iou >= MIN_MEDIAN_IOU) and self.agreement_recall >= 0.9

    def to_text(self) -> str:
        def iou(v: float | None) -> str:
            return "-" if v is None else f"{v:.3f}"

        lines = [
            f"INT8 vs fp32 on held-out {self.video}:",
            f"  fp32: recall {self.fp32.recall:.3f}  precision {self.fp32.precision:.3f}  median IoU {iou(self.fp32.median_iou)}",
            f"  int8: recall {self.int8.recall:.3f}  precision {self.int8.precision:.3f}  median IoU {iou(self.int8.median_iou)}",
            f"  box agreement int8↔fp32: recall {self.agreement_recall:.3f}  precision {self.agreement_precision:.3f}"
            f"  median IoU {iou(self.agreement_median_iou)}  ({self.boxes_int8} vs {self.boxes_fp32} boxes)",
            f"  verdict: {({True: 'PASS', False: 'FAIL', None: 'INCONCLUSIVE'})[self.passed]} (recall/precision within {TOLERANCE} of fp32, "
            f"median IoU ≥ {MIN_MEDIAN_IOU})",
        ]
        if self.boxes_fp32 == 0:
            lines.append("  note: fp32 found no animals here (random weights, or a model that does not know these animals),"
                         " so this says nothing about accuracy; --precision auto stays fp32 for this model")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Int8Report:
        fields = {k: v for k, v in d.items() if k != "passed"}
        return cls(**{**fields, "fp32": Accuracy(**d["fp32"]), "int8": Accuracy(**d["int8"])})


def _run(path: Path, frames: list[tuple[int, np.ndarray]], conf: float, iou: float) -> list[dict[str, Any]]:
    from detector_app.detection.engines import open_engine
    from detector_app.detection.vocab import build_filter, parse_classes
    from detector_app.detection.yolo_io import decode

    eng = open_engine(path)
    keep = build_filter(eng.info.names, parse_classes(None))
    out = []
    for fid, bgr in frames:
        blob, lb = letterbox(bgr, eng.info.input_hw)
        raw = decode(eng.infer(blob), lb, conf, iou, eng.info.end2end)
        dets = [{"label": eng.info.names.get(int(c), str(c)), "box": [float(v) for v in b], "confidence": float(p)}
                for b, p, c in zip(raw.xyxy, raw.confidence, raw.class_id, strict=True) if keep.accepts(int(c))]
        out.append({"extra": {"frame_id": fid}, "detections": dets})
    eng.close()
    return out


def _agreement(ref: list[dict[str, Any]], got: list[dict[str, Any]]) -> tuple[float, float, float | None, int, int]:
    from detector_app.detection.types import Box

    matched_ref = matched_got = n_ref = n_got = 0
    ious: list[float] = []
    for a, b in zip(ref, got, strict=True):
        ra, gb = a["detections"], b["detections"]
        n_ref += len(ra)
        n_got += len(gb)
        used: set[int] = set()
        for d in ra:
            best, best_j = 0.0, -1
            for j, e in enumerate(gb):
                if j in used or e["label"] != d["label"]:
                    continue
                v = Box(*d["box"]).iou(Box(*e["box"]))
                if v > best:
                    best, best_j = v, j
            if best >= 0.5:
                used.add(best_j)
                matched_ref += 1
                ious.append(best)
        matched_got += len(used)
    rec = matched_ref / n_ref if n_ref else 1.0
    prec = matched_got / n_got if n_got else 1.0
    return rec, prec, (statistics.median(ious) if ious else None), n_ref, n_got


def compare(fp32: Path, int8: Path, video: Path, truth: Path, conf: float = 0.35, iou: float = 0.5,
            fps: float = 10.0) -> Int8Report:
    """Score both exports on ``video`` sampled at ``fps`` (as the pipeline samples a stream)."""
    import av

    from detector_app.fixtures.evaluate import load_truth, score

    t = load_truth(truth)
    step = max(1, round(float(t["fps"]) / fps))
    with av.open(str(video)) as c:
        frames = [(i, f.to_ndarray(format="bgr24")) for i, f in enumerate(c.decode(video=0)) if i % step == 0]
    a, b = _run(fp32, frames, conf, iou), _run(int8, frames, conf, iou)

    def acc(results: list[dict[str, Any]]) -> Accuracy:
        s = score(t, results)
        return Accuracy(round(s.recall, 4), round(s.precision, 4), None if s.median_iou is None else round(s.median_iou, 4),
                        s.results_used)

    rec, prec, med, n_ref, n_got = _agreement(a, b)
    return Int8Report(video.name, acc(a), acc(b), round(rec, 4), round(prec, 4),
                      None if med is None else round(med, 4), n_ref, n_got)
