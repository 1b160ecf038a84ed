"""The comparison as people read it (a Markdown table that is also the terminal output) and as
programs read it (``eval.json``, one object per model)."""

from __future__ import annotations

import json
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from detector_app.evaluation.runner import RUN_CONF_FOR_AP, EvalConfig, ModelResult

NO_TRACKING = "not available: detector-app reports per-frame detections and has no tracker, so no identities"


def metrics_library() -> str:
    try:
        return f"pycocotools {version('pycocotools')} (COCOeval, bbox)"
    except PackageNotFoundError:
        return "pycocotools (COCOeval, bbox)"


def _f(v: Any, nd: int = 3) -> str:
    if v is None:
        return "–"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def markdown(cfg: EvalConfig, results: list[ModelResult]) -> str:
    videos = ", ".join(v.name for v in cfg.videos)
    lines = [
        f"**Accuracy** ({videos}; via {cfg.via}; {cfg.fps:g} inferences/s of video; P/R/IoU/presence at conf ≥ "
        f"{cfg.conf:g}, IoU 0.5; AP by {metrics_library()})",
        "",
        "| model | class | truth boxes | precision | recall | AP50 | AP50–95 | median IoU | presence recall | presence precision |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in results:
        for c in m.classes:
            lines.append(
                f"| {m.spec.name} | {c.label} | {c.truth_boxes} | {_f(c.precision)} | {_f(c.recall)} | {_f(c.ap50)} | "
                f"{_f(c.ap50_95)} | {_f(c.median_iou)} | {_f(c.seconds_recall)} | {_f(c.seconds_precision)} |")
    lines += [
        "",
        "**Cost** (each model in its own process; CPU = whole process during the run, decoding included)",
        "",
        "| model | runs as | inference ms p50 / p95 | CPU ms / inference | peak RSS MB | inferences/s | model MB | run file MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m in results:
        p = m.perf
        lines.append(
            f"| {m.spec.name} | {m.stats[0]['description']} | {_f(p['inference_ms_p50'], 1)} / {_f(p['inference_ms_p95'], 1)} | "
            f"{_f(p['cpu_ms_per_inference'], 1)} | {_f(p['peak_rss_mb'], 0)} | {_f(p['detections_per_s'], 1)} | "
            f"{_f(p['model_file_mb'], 1)} | {_f(p['run_file_mb'], 1)} |")
    lines += ["", f"Unique objects: {NO_TRACKING}."]
    return "\n".join(lines)


def eval_json(cfg: EvalConfig, results: list[ModelResult]) -> dict[str, Any]:
    return {
        "kind": "detector-app eval",
        "version": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "via": cfg.via,
        "conf": cfg.conf,
        "detections_conf": min(cfg.conf, RUN_CONF_FOR_AP),  # what runs/*.jsonl hold: AP needs the low-score boxes
        "fps": cfg.fps,
        "iou_match": 0.5,
        "metrics_library": metrics_library(),
        "videos": [{"video": str(v), "truth": str(t)} for v, t in zip(cfg.videos, cfg.truths, strict=True)],
        "unique_objects": {"available": False, "why": NO_TRACKING},
        "models": [m.to_json() for m in results],
    }


def write(cfg: EvalConfig, results: list[ModelResult]) -> tuple[str, Path]:
    table = markdown(cfg, results)
    (cfg.out_dir / "eval.md").write_text(table + "\n")
    path = cfg.out_dir / "eval.json"
    path.write_text(json.dumps(eval_json(cfg, results), indent=2))
    return table, path
