"""Ultralytics YOLO behind one small interface: BGR frame in, typed animal detections out.

The model can be a name (``yolo11n.pt``, downloaded by Ultralytics where internet exists), a path,
or any Ultralytics export (ONNX, OpenVINO dir, TensorRT engine, …). ``backends.resolve_model``
picks the fastest runtime for the device and caches exports; this module loads what it returns,
warms it up before the stream starts, and filters by class *name* (``vocab``).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from loguru import logger

from detector_app.detection.types import Box, Detection
from detector_app.detection.vocab import ClassFilter, build_filter, parse_classes
from detector_app.errors import UserError

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
    cache_dir: Path = field(default_factory=lambda: PROJECT_ROOT / "models" / "cache")
    fallback_to_fixture: bool = False  # offline convenience for the default model only


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


class Detector:
    """Thread-safe (one inference at a time) YOLO wrapper; share one per process."""

    def __init__(self, cfg: DetectorConfig, frame_size: tuple[int, int] | None = None, progress: bool = True) -> None:
        self.cfg = cfg
        self._lock = threading.Lock()
        self._threads_fixed = False
        model_ref = locate_model(cfg.model)
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
            "Detector ready: {} [{}] imgsz={} device={} reporting: {}",
            self.model_name, self.backend, self.imgsz, cfg.device,
            "all classes" if self.filter.everything else ", ".join(self.filter.allowed_names) or "nothing",
        )

    def _load(self, model_ref: str, frame_size: tuple[int, int] | None, progress: bool) -> None:
        from detector_app.detection import backends

        try:
            resolved = backends.resolve_model(
                model_ref, backend=self.cfg.backend, device=self.cfg.device, imgsz=self.cfg.imgsz,
                frame_size=frame_size, cache_dir=self.cfg.cache_dir, progress=progress,
            )
        except (backends.ModelNotFoundError, FileNotFoundError) as exc:
            raise ModelError(str(exc)) from exc
        except backends.BackendError as exc:
            raise ModelError(str(exc)) from exc
        from ultralytics import YOLO

        try:
            self.model = YOLO(resolved.path, task="detect")
        except Exception as exc:  # noqa: BLE001 - Ultralytics raises many types for bad files
            raise ModelError(f"cannot load model {resolved.path}: {exc}") from exc
        self.resolved = resolved
        self.backend = resolved.backend
        self.imgsz = resolved.imgsz if resolved.imgsz is not None else (self.cfg.imgsz or _train_imgsz(self.model))
        self.model_name = Path(model_ref).name
        names = self.model.names
        self.names: dict[int, str] = dict(names) if isinstance(names, dict) else dict(enumerate(names))

    def warmup(self, frame_size: tuple[int, int] = (1280, 720), runs: int = 2) -> float:
        """Run the model on a blank frame so the first real frame is not slow (exports: ~3 s once)."""
        w, h = frame_size
        blank = np.zeros((h, w, 3), np.uint8)
        t0 = time.perf_counter()
        for _ in range(runs):
            self.detect(blank)
        dt = time.perf_counter() - t0
        logger.info("Warm-up done in {:.2f} s", dt)
        return dt

    def detect(self, bgr: np.ndarray) -> tuple[list[Detection], int, float]:
        """Return (animal detections, all detections before filtering, inference ms)."""
        with self._lock:
            t0 = time.perf_counter()
            results = self.model.predict(
                bgr, conf=self.cfg.conf, iou=self.cfg.iou, imgsz=self.imgsz, device=self.cfg.device, verbose=False
            )
            ms = (time.perf_counter() - t0) * 1000.0
            if not self._threads_fixed:
                # Ultralytics pins torch to one thread here; undo it after the first predict (field notes).
                from detector_app.detection import backends

                backends.configure_torch_threads(backend=self.backend)
                self._threads_fixed = True
        boxes = results[0].boxes
        if boxes is None or len(boxes) == 0:
            return [], 0, ms
        xyxy = boxes.xyxy.cpu().numpy()
        confs = boxes.conf.cpu().numpy()
        clss = boxes.cls.cpu().numpy().astype(int)
        dets = [
            Detection(self.names.get(int(c), str(c)), float(p), Box(*map(float, b)), int(c))
            for b, p, c in zip(xyxy, confs, clss, strict=True)
            if self.filter.accepts(int(c))
        ]
        dets.sort(key=lambda d: -d.confidence)
        return dets, len(clss), ms

    @property
    def description(self) -> str:
        return f"{self.model_name} ({self.backend})"


def _train_imgsz(model) -> int:
    try:
        v = model.overrides.get("imgsz")
        if isinstance(v, (list, tuple)):
            return int(max(v))
        if v:
            return int(v)
    except Exception:  # noqa: BLE001
        pass
    return 640
