"""Model formats: which runtime a model file needs, whether that runtime imports here, and input sizes.

Nothing here imports Ultralytics or torch: the streaming process asks these questions before it decides
whether it ever needs them. The suffix table mirrors the one Ultralytics' ``AutoBackend`` uses (its
``export_formats()`` table lives behind ``import ultralytics``, which imports torch, so it cannot be read here).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import math
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from detector_app.errors import UserError

DEFAULT_LONG_SIDE = 640
DEFAULT_ASPECT = (1280, 720)  # (width, height): 16:9 until the stream's first frame tells us better
STRIDE = 32

# Backends the project itself runs without Ultralytics (``engines.py``): the lean, torch-free path.
LEAN_BACKENDS = ("openvino", "onnx")


@dataclass(frozen=True, slots=True)
class ExportTarget:
    """How to make and run one export format."""

    ultralytics_format: str  # Ultralytics' ``export(format=...)``
    runtime_module: str  # the Python module that runs it
    distribution: str  # the pip distribution whose version goes into the cache key
    tag: str  # short cache-key tag
    install_hint: str
    export_tools: tuple[str, ...] = ()  # packages the export needs beyond the runtime (Ultralytics would pip-install them)

    def artifact_name(self, stem: str) -> str:
        return {
            "onnx": f"{stem}.onnx",
            "openvino": f"{stem}_openvino_model",
            "engine": f"{stem}.engine",
            "torchscript": f"{stem}.torchscript",
        }[self.ultralytics_format]


EXPORT_TARGETS: dict[str, ExportTarget] = {
    "onnx": ExportTarget("onnx", "onnxruntime", "onnxruntime", "ort",
                         "pip install onnx onnxruntime onnxslim  (or: pip install 'detector-app[fast]')", ("onnx",)),
    "openvino": ExportTarget("openvino", "openvino", "openvino", "ov",
                             "pip install openvino  (or: pip install 'detector-app[fast]')"),
    "tensorrt": ExportTarget("engine", "tensorrt", "tensorrt", "trt", "pip install tensorrt  (needs an NVIDIA GPU and CUDA)",
                             ("onnx",)),
    "torchscript": ExportTarget("torchscript", "torch", "torch", "torch", "pip install torch"),
}
RUNTIME_MODULES: dict[str, str] = {"pytorch": "torch", **{b: t.runtime_module for b, t in EXPORT_TARGETS.items()}}

# Path endings of models that are already exports; the suffix ending last wins, then the longest.
_EXPORT_SUFFIXES: tuple[tuple[str, str], ...] = (
    ("_openvino_model", "openvino"),
    ("_int8_openvino_model", "openvino"),
    (".xml", "openvino"),
    ("_saved_model", "tensorflow"),
    ("_edgetpu.tflite", "edgetpu"),
    ("_web_model", "tfjs"),
    ("_paddle_model", "paddle"),
    ("_ncnn_model", "ncnn"),
    ("_mnn_model", "mnn"),
    ("_rknn_model", "rknn"),
    ("_imx_model", "imx"),
    ("_executorch_model", "executorch"),
    ("_qnn.onnx", "qnn"),
    (".torchscript", "torchscript"),
    (".onnx", "onnx"),
    (".engine", "tensorrt"),
    (".mlpackage", "coreml"),
    (".mlmodel", "coreml"),
    (".pb", "tensorflow"),
    (".tflite", "tflite"),
    (".mnn", "mnn"),
    (".pte", "executorch"),
    (".pt", "pytorch"),
    (".pth", "pytorch"),
)


class BackendError(UserError):
    """A backend cannot be used here (runtime missing, unsupported combination); the message says what to do."""


class ModelNotFoundError(UserError):
    """The model is neither a local file nor something Ultralytics could download."""


def detect_backend(model: str | os.PathLike[str]) -> str | None:
    """Backend of a model from its path (``x.onnx`` -> onnx, ``x_openvino_model/`` -> openvino, ``x.pt`` -> pytorch)."""
    name = Path(model).name.lower().rstrip("/")
    best: tuple[int, int, str] | None = None
    for suffix, backend in _EXPORT_SUFFIXES:
        pos = name.rfind(suffix)
        if pos >= 0:
            cand = (pos + len(suffix), len(suffix), backend)
            best = cand if best is None or cand > best else best
    return best[2] if best else None


@cache
def importable(module: str) -> bool:
    """Whether ``module`` imports (cached per process; a broken install raising anything counts as missing)."""
    try:
        importlib.import_module(module)
        return True
    except Exception:  # noqa: BLE001 - ImportError, or a broken install raising anything at import time
        return False


def installed(dist: str) -> bool:
    """Whether a distribution is installed, without importing it (``torch`` takes seconds and ~600 MB to import)."""
    try:
        importlib.metadata.version(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def available_backends() -> dict[str, bool]:
    """Which runtimes are usable here. PyTorch is only checked for installation: importing it is what we avoid."""
    return {name: installed("torch") if mod == "torch" else importable(mod) for name, mod in RUNTIME_MODULES.items()}


def dist_version(dist: str) -> str:
    """Package version without importing it; trimmed to the release part (OpenVINO's has '-' in it)."""
    try:
        v = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "none"
    return v.split("-")[0].split("+")[0]


def require_runtime(backend: str) -> None:
    """Raise a ``BackendError`` naming the pip command when ``backend``'s runtime is missing."""
    if backend not in RUNTIME_MODULES:
        raise BackendError(f"unknown backend {backend!r}; choose one of: auto, {', '.join(RUNTIME_MODULES)}")
    if not available_backends().get(backend, False):
        hint = EXPORT_TARGETS[backend].install_hint if backend in EXPORT_TARGETS else "pip install torch"
        raise BackendError(
            f"backend {backend!r} was requested but its runtime ({RUNTIME_MODULES[backend]}) does not import here: {hint}"
        )


def can_export_to(backend: str) -> bool:
    """The runtime and the export tools for ``backend`` are all here (Ultralytics itself is checked when exporting)."""
    target = EXPORT_TARGETS.get(backend)
    return target is not None and available_backends().get(backend, False) and all(map(importable, target.export_tools))


def stream_imgsz(frame_size: tuple[int, int] | None, long_side: int) -> tuple[int, int]:
    """Network input ``(h, w)`` at the stream's aspect, both multiples of 32.

    ``frame_size`` is ``(width, height)`` of the decoded stream (None: assume 16:9). The short side is rounded
    *up* so letterboxing pads rather than crops: 1280×720 @ 640 -> (384, 640); 854×480 @ 320 -> (192, 320).
    A 16:9 export costs ~55% of a square one (field notes).
    """
    if long_side <= 0:
        raise ValueError(f"long_side must be positive, got {long_side}")
    w, h = frame_size if frame_size is not None else DEFAULT_ASPECT
    if w <= 0 or h <= 0:
        raise ValueError(f"frame_size must be positive (width, height), got {frame_size}")
    long_px = max(STRIDE, math.ceil(long_side / STRIDE) * STRIDE)
    short_px = max(STRIDE, math.ceil(long_px * min(w, h) / max(w, h) / STRIDE) * STRIDE)
    short_px = min(short_px, long_px)
    return (short_px, long_px) if w >= h else (long_px, short_px)
