"""YOLO behind one small interface: BGR frame in, typed animal detections out.

The model can be a name (``yolo11n.pt``, downloaded where internet exists), a path, or any Ultralytics
export. ``resolve.resolve_model`` picks the runtime and precision and caches exports (made in a child
process). OpenVINO and ONNX exports then run on the *lean* path (``engines`` + ``yolo_io``): no torch or
Ultralytics in this process (~200 MB instead of ~900 MB), and several streams infer in parallel. Everything
else (``.pt`` on PyTorch, CUDA, TensorRT, other exports) runs through ``ultralytics.YOLO``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from loguru import logger

from detector_app.detection.types import Box, Detection
from detector_app.detection.vocab import ClassFilter, build_filter, parse_classes
from detector_app.detection.yolo_io import RawDetections, decode, letterbox
from detector_app.errors import UserError

if TYPE_CHECKING:
    from detector_app.detection.engines import Engine
    from detector_app.detection.resolve import ResolvedModel

PROJECT_ROOT = Path(__file__).resolve().parents[2]
FIXTURE_MODEL = PROJECT_ROOT / "models" / "fixture-animals-yolo11n.pt"
DEFAULT_MODEL = "yolo11n.pt"


class ModelError(UserError):
    """The model cannot be found, downloaded or loaded (user-fixable)."""


@dataclass(slots=True)
class DetectorConfig:
    model: str = DEFAULT_MODEL
    conf: float = 0.35
    iou: float = 0.5
    imgsz: int | None = None  # long side of the network input; None = the model's training size
    device: str = "cpu"
    classes: str | None = None  # None = animal vocabulary; "all" = everything; "cat,dog" = these
    backend: str = "auto"  # auto | pytorch | onnx | openvino | tensorrt
    precision: str = "auto"  # auto | fp32 | int8 (auto: INT8 where it passed the accuracy check)
    calib: list[Path] | None = None  # INT8 calibration videos (default: the bundled fixtures)
    cache_dir: Path = field(default_factory=lambda: PROJECT_ROOT / "models" / "cache")
    fallback_to_fixture: bool = False  # offline convenience for the default model only
    inference_url: str | None = None  # http(s)/grpc://HOST:PORT/MODEL: the network runs on Triton (detection/triton.py)


def locate_model(name: str) -> str:
    """Prefer a local copy (cwd, then the project's models/) before letting Ultralytics download."""
    p = Path(name).expanduser()
    if p.exists():
        return str(p)
    local = PROJECT_ROOT / "models" / name
    if local.exists():
        return str(local)
    if p.parent != Path(".") or p.suffix.lower() not in (".pt", ".yaml", ".yml", ""):
        raise ModelError(f"model file not found: {name}")
    return name  # a bare name: Ultralytics will try to download it


class _UltralyticsRunner:
    """``ultralytics.YOLO`` for what the lean path does not run; one inference at a time (torch threads)."""

    def __init__(self, path: str, cfg: DetectorConfig, imgsz: tuple[int, int] | int | None) -> None:
        from ultralytics import YOLO

        try:
            self.model = YOLO(path, task="detect")
        except Exception as exc:  # noqa: BLE001 - Ultralytics raises many types for bad files
            raise ModelError(f"cannot load model {path}: {exc}") from exc
        self.cfg = cfg
        self.imgsz = imgsz if imgsz is not None else (cfg.imgsz or self._train_imgsz())
        names = self.model.names
        self.names: dict[int, str] = dict(names) if isinstance(names, dict) else dict(enumerate(names))
        self._lock = threading.Lock()
        self._threads_fixed = False

    def _train_imgsz(self) -> int:
        v = (getattr(self.model, "overrides", None) or {}).get("imgsz")
        if isinstance(v, (list, tuple)):
            return int(max(v))
        return int(v) if v else 640

    def __call__(self, bgr: np.ndarray, count: bool = True) -> RawDetections:
        with self._lock:
            r = self.model.predict(bgr, conf=self.cfg.conf, iou=self.cfg.iou, imgsz=self.imgsz, device=self.cfg.device,
                                   verbose=False)[0]
            if not self._threads_fixed:  # Ultralytics pins torch to one thread in its first predict (field notes)
                from detector_app.detection.tuning import configure_torch_threads

                configure_torch_threads(backend=self.cfg.backend if self.cfg.backend != "auto" else "pytorch")
                self._threads_fixed = True
        b = r.boxes
        if b is None or len(b) == 0:
            return RawDetections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
        return RawDetections(b.xyxy.cpu().numpy(), b.conf.cpu().numpy(), b.cls.cpu().numpy().astype(np.int64))

    @property
    def precision(self) -> str:
        am = getattr(getattr(self.model, "predictor", None), "model", None)
        fp16 = getattr(am, "fp16", None)
        return "f16" if fp16 else "f32"


class _LeanRunner:
    """An OpenVINO/ONNX export through ``engines``: thread-safe, parallel across streams, no torch."""

    def __init__(self, path: str, cfg: DetectorConfig, engine: Engine | None = None) -> None:
        from detector_app.detection.engines import open_engine

        try:
            self.engine = engine or open_engine(path, compiled_cache=cfg.cache_dir / ".openvino-compiled")
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - a corrupt export raises the runtime's own errors
            raise ModelError(f"cannot load model {path}: {exc}") from exc
        self.cfg = cfg
        self.imgsz = self.engine.info.input_hw
        self.names = dict(self.engine.info.names) or {i: f"class{i}" for i in range(80)}

    def __call__(self, bgr: np.ndarray, count: bool = True) -> RawDetections:
        blob, lb = letterbox(bgr, self.imgsz)
        return decode(self.engine.infer(blob, count), lb, self.cfg.conf, self.cfg.iou, self.engine.info.end2end or None)

    @property
    def precision(self) -> str:
        return self.engine.precision


class Detector:
    """Thread-safe YOLO wrapper; share one per process (the lean path runs streams in parallel)."""

    def __init__(self, cfg: DetectorConfig, frame_size: tuple[int, int] | None = None, progress: bool = True) -> None:
        self.cfg = cfg
        model_ref = cfg.inference_url or locate_model(cfg.model)
        try:
            self._load(model_ref, frame_size, progress)
        except ModelError as exc:
            if cfg.fallback_to_fixture and cfg.model == DEFAULT_MODEL and FIXTURE_MODEL.exists():
                logger.warning(
                    "{} — falling back to the bundled TEST model {} (it only knows the fixture imagery: "
                    "cat, horse, person). For real animals put yolo11n.pt in models/ or run where internet exists.",
                    exc, FIXTURE_MODEL.name,
                )
                self._load(str(FIXTURE_MODEL), frame_size, progress)
            else:
                raise
        wanted = parse_classes(cfg.classes)
        self.filter: ClassFilter = build_filter(self.names, wanted)
        if wanted is not None and not self.filter.allowed_ids:
            logger.warning(
                "Model {} knows none of the requested classes ({}); nothing will be reported. "
                "Its classes are: {}. Use --classes.",
                self.model_name, ", ".join(sorted(wanted))[:120], ", ".join(list(self.names.values())[:30]),
            )
        elif cfg.classes is not None and self.filter.unmatched:
            logger.warning("Model {} has no class named: {}", self.model_name, ", ".join(self.filter.unmatched))
        logger.info(
            "Detector ready: {} [{}{}] imgsz={} device={} reporting: {}",
            self.model_name, self.backend, ", lean" if self.lean else "", self.imgsz, cfg.device,
            "all classes" if self.filter.everything else ", ".join(self.filter.allowed_names) or "nothing",
        )

    def _load(self, model_ref: str, frame_size: tuple[int, int] | None, progress: bool) -> None:
        from detector_app.detection.resolve import ResolvedModel, resolve_model

        if self.cfg.inference_url:  # Triton runs the network; letterbox and NMS stay here (_LeanRunner)
            from detector_app.detection.triton import TritonEngine

            engine = TritonEngine(self.cfg.inference_url)
            resolved = ResolvedModel(self.cfg.inference_url, "triton", engine.info.input_hw, False,
                                     f"remote: Triton at {engine.url}", "int8" if engine.info.int8 else "fp32")
            self._set_runner(model_ref, resolved, _LeanRunner(resolved.path, self.cfg, engine))
            return
        try:
            resolved = resolve_model(
                model_ref, backend=self.cfg.backend, device=self.cfg.device, imgsz=self.cfg.imgsz,
                frame_size=frame_size, cache_dir=self.cfg.cache_dir, progress=progress, precision=self.cfg.precision,
                calib=self.cfg.calib,
            )
        except FileNotFoundError as exc:
            raise ModelError(str(exc)) from exc
        except UserError as exc:
            raise ModelError(str(exc)) from exc
        runner = _LeanRunner(resolved.path, self.cfg) if resolved.lean else _UltralyticsRunner(
            resolved.path, self.cfg, resolved.imgsz)
        self._set_runner(model_ref, resolved, runner)

    def _set_runner(self, model_ref: str, resolved: ResolvedModel, runner: _LeanRunner | _UltralyticsRunner) -> None:
        self._runner: _LeanRunner | _UltralyticsRunner = runner
        self.resolved = resolved
        self.backend = resolved.backend
        self.lean = resolved.lean
        self.imgsz = runner.imgsz
        self.names: dict[int, str] = runner.names
        self.model_name = Path(model_ref).name

    def warmup(self, frame_size: tuple[int, int] = (1280, 720), runs: int = 2, streams: int = 1) -> float:
        """Run the model on a blank frame so the first real frame is not slow (exports: compile once).

        ``streams > 1`` (``serve``: several wearers) also compiles the lean engine's throughput shape now, so the
        second wearer's first inferences do not wait for it.
        """
        w, h = frame_size
        blank = np.zeros((h, w, 3), np.uint8)
        t0 = time.perf_counter()
        for _ in range(runs):
            self._runner(blank, count=False)  # the warming thread is not a stream
        if streams > 1 and isinstance(self._runner, _LeanRunner):
            from detector_app.detection.tuning import Lane

            blob, _ = letterbox(blank, self._runner.imgsz)
            self._runner.engine.warm(blob, (Lane.THROUGHPUT,))
        dt = time.perf_counter() - t0
        logger.info("Warm-up done in {:.2f} s", dt)
        return dt

    def detect(self, bgr: np.ndarray) -> tuple[list[Detection], int, float]:
        """Return (animal detections, all detections before filtering, ms for pre-process + inference + NMS)."""
        t0 = time.perf_counter()
        raw = self._runner(bgr)
        ms = (time.perf_counter() - t0) * 1000.0
        dets = [
            Detection(self.names.get(int(c), str(c)), float(p), Box(*map(float, b)), int(c))
            for b, p, c in zip(raw.xyxy, raw.confidence, raw.class_id, strict=True)
            if self.filter.accepts(int(c))
        ]
        dets.sort(key=lambda d: -d.confidence)
        return dets, len(raw), ms

    @property
    def precision(self) -> str:
        """What the weights are (fp32/int8) and what the runtime computes in (f32, bf16)."""
        return f"{self.resolved.precision}/{self._runner.precision}"

    @property
    def description(self) -> str:
        return f"{self.model_name} ({self.backend}{' int8' if self.resolved.precision == 'int8' else ''})"
