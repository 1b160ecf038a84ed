"""``detector-app eval``: every model over every recording, each run in its own child process, then
one comparison (table, ``eval.json``, plots)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from detector_app.errors import UserError
from detector_app.evaluation.metrics import ClassScore, VideoRun, score_model
from detector_app.evaluation.models import ModelSpec, model_bytes
from detector_app.evaluation.truth import Truth, VideoInfo, check_matches, load_truth, padded, probe_video
from detector_app.evaluation.worker import WorkerSpec

RUN_CONF_FOR_AP = 0.01  # runs report everything above this, so AP sees the whole PR curve


@dataclass(slots=True)
class EvalConfig:
    videos: list[Path]
    truths: list[Path]
    models: list[ModelSpec]
    out_dir: Path
    via: str = "file"
    conf: float = 0.35  # operating threshold: precision, recall, IoU, presence
    fps: float = 10.0
    imgsz: int | None = None
    backend: str = "auto"
    device: str = "cpu"
    classes: str | None = None  # default: the truth's labels
    truth_labels: dict[int, str] = field(default_factory=dict)
    truth_label: str | None = None
    frame_counter: bool = False
    progress: bool = True


@dataclass(slots=True)
class ModelResult:
    spec: ModelSpec
    stats: list[dict[str, Any]]  # one per video, from the worker
    runs: list[VideoRun]
    classes: list[ClassScore]
    perf: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.spec.name, "model": self.spec.ref, "precision": self.spec.precision,
            "description": self.stats[0]["description"], "backend": self.stats[0]["backend"],
            "weights": self.stats[0]["weights"], "imgsz": self.stats[0]["imgsz"],
            **self.perf,
            "classes": {c.label: c.to_json() for c in self.classes},
            "per_video": [
                {"video": str(r.truth.path), "inferences": s["summary"]["inferences"], "run_wall_s": s["run_wall_s"],
                 "detections_file": s["detections_file"]} for r, s in zip(self.runs, self.stats, strict=True)
            ],
        }


def load_pairs(cfg: EvalConfig) -> list[tuple[VideoInfo, Truth]]:
    """Videos with their truth, checked to belong together before any model runs."""
    if len(cfg.truths) != len(cfg.videos):
        raise UserError(f"eval needs one --truth per video: got {len(cfg.videos)} video(s), {len(cfg.truths)} --truth")
    pairs = []
    for v, t in zip(cfg.videos, cfg.truths, strict=True):
        if not v.exists():
            raise UserError(f"video not found: {v}")
        info = probe_video(v)
        truth = load_truth(t, cfg.truth_labels, cfg.truth_label, frames=info.frames)
        check_matches(truth, info)
        pairs.append((info, padded(truth, info)))
    return pairs


def _run_one(cfg: EvalConfig, spec: ModelSpec, info: VideoInfo, classes: str, bar: tqdm) -> dict[str, Any]:
    runs = cfg.out_dir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    stem = f"{spec.slug}__{info.path.stem}"
    ws = WorkerSpec(
        model=spec.ref, precision=spec.precision, video=str(info.path), via=cfg.via,
        out_jsonl=str(runs / f"{stem}.jsonl"), stats_json=str(runs / f"{stem}.stats.json"),
        conf=min(cfg.conf, RUN_CONF_FOR_AP), fps=cfg.fps, imgsz=cfg.imgsz, backend=cfg.backend, device=cfg.device,
        classes=classes, frame_counter=cfg.frame_counter,
    )
    spec_path = runs / f"{stem}.spec.json"
    ws.write(spec_path)
    out = Path(ws.out_jsonl)
    log = open(runs / f"{stem}.log", "w")  # noqa: SIM115 - the child's stderr, kept for "why did it fail"
    proc = subprocess.Popen([sys.executable, "-m", "detector_app.evaluation.worker", str(spec_path)],
                            stdout=log, stderr=subprocess.STDOUT)
    done = 0
    try:
        while proc.poll() is None:
            time.sleep(0.2)
            done = _advance(bar, out, done)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        log.close()
    _advance(bar, out, done)
    stats_path = Path(ws.stats_json)
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    if "error" in stats:
        raise UserError(f"model {spec.name}: {stats['error']}")
    if proc.returncode not in (0, 1) or "summary" not in stats:
        tail = (runs / f"{stem}.log").read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"model {spec.name} on {info.path.name} failed (exit {proc.returncode}): {tail[0][:200]}")
    if stats["summary"]["errors"]:
        raise UserError(f"model {spec.name} on {info.path.name}: {stats['summary']['errors'][0]}")
    stats["detections_file"] = str(out)
    return stats


def _advance(bar: tqdm, out: Path, done: int) -> int:
    try:
        with open(out, "rb") as fh:
            n = sum(1 for _ in fh)
    except OSError:
        return done
    bar.update(n - done)
    return n


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def _perf(spec: ModelSpec, stats: list[dict[str, Any]], runs: list[VideoRun]) -> dict[str, Any]:
    inf_ms = [r["inference_ms"] for run in runs for r in run.results]
    n = sum(s["summary"]["inferences"] for s in stats)
    wall = sum(s["run_wall_s"] for s in stats)
    cpu = sum(s["run_cpu_s"] for s in stats)
    from detector_app.detection.detector import locate_model

    try:
        given = model_bytes(locate_model(spec.ref))
    except UserError:
        given = None
    return {
        "inferences": n,
        "inference_ms_p50": _round(_pct(inf_ms, 50)),
        "inference_ms_p95": _round(_pct(inf_ms, 95)),
        "cpu_ms_per_inference": _round(cpu * 1000 / n if n else None),
        "peak_rss_mb": round(max(s["peak_rss_bytes"] for s in stats) / 2**20, 1),
        "detections_per_s": _round(n / wall if wall else None),
        "model_file_mb": _round(given / 1e6 if given is not None else None, 2),
        "run_file_mb": _round((model_bytes(stats[0]["run_path"]) or 0) / 1e6, 2),
        "load_s": _round(max(s["load_s"] for s in stats)),
        "torch_in_process": any(s["torch_loaded"] for s in stats),
    }


def _round(v: float | None, nd: int = 2) -> float | None:
    return None if v is None else round(v, nd)


def run_eval(cfg: EvalConfig) -> list[ModelResult]:
    pairs = load_pairs(cfg)
    truth_labels = sorted({lbl for _, t in pairs for lbl in t.labels})
    if not truth_labels and cfg.classes is None:
        raise UserError("the truth files contain no labelled boxes: nothing to compare (pass --classes for a distractor-only set)")
    classes = cfg.classes or ",".join(truth_labels)
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    expected = sum(int(info.duration * cfg.fps) for info, _ in pairs)
    results: list[ModelResult] = []
    for spec in cfg.models:
        stats, runs = [], []
        with tqdm(total=expected, desc=spec.name[:28], unit="inf", disable=not cfg.progress, leave=True) as bar:
            for info, truth in pairs:
                s = _run_one(cfg, spec, info, classes, bar)
                stats.append(s)
                lines = Path(s["detections_file"]).read_text().splitlines()
                runs.append(VideoRun.build(truth, info, [json.loads(line) for line in lines if line.strip()]))
        results.append(ModelResult(spec, stats, runs, [], _perf(spec, stats, runs)))
    seen = {d["label"] for m in results for r in m.runs for res in r.results for d in res["detections"]}
    labels = truth_labels + sorted(seen - set(truth_labels))
    for m in results:
        m.classes = score_model(m.runs, cfg.conf, labels)
    return results
