"""Inference backend selection and the export cache.

Why this exists: on the glasses' CPU-only host, yolo11n through PyTorch costs ~77–125 ms per 720p frame,
while an OpenVINO export at the stream's aspect (384×640 for 16:9) costs ~24 ms (field notes). Exports
take seconds, so they are cached on disk under a key that changes whenever the model bytes, the network
input size, Ultralytics or the runtime change, and an unchanged model is reused in milliseconds.

The cache-hit path deliberately avoids importing Ultralytics/torch: it hashes the model file and reads
small JSON sidecars. Ultralytics is imported only to export, to download a named model, or to read a
checkpoint's training image size the first time.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import importlib.metadata
import io
import json
import logging
import math
import os
import shutil
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from loguru import logger

from detector_app.errors import UserError

DEFAULT_LONG_SIDE = 640
DEFAULT_ASPECT = (1280, 720)  # (width, height): 16:9 until the stream's first frame tells us better
STRIDE = 32

# backend name -> (Ultralytics export format, Python module that runs it, distribution for its version,
#                  short tag for the cache key, pip hint when missing)
_EXPORTABLE: dict[str, tuple[str, str, str, str, str]] = {
    "onnx": ("onnx", "onnxruntime", "onnxruntime", "ort", "pip install onnx onnxruntime onnxslim  (or: pip install 'detector-app[fast]')"),
    "openvino": ("openvino", "openvino", "openvino", "ov", "pip install openvino  (or: pip install 'detector-app[fast]')"),
    "tensorrt": ("engine", "tensorrt", "tensorrt", "trt", "pip install tensorrt  (needs an NVIDIA GPU and CUDA)"),
    "torchscript": ("torchscript", "torch", "torch", "torch", "pip install torch"),
}
_RUNTIME_MODULES: dict[str, str] = {"pytorch": "torch", **{b: v[1] for b, v in _EXPORTABLE.items()}}
# Extra packages an export needs beyond the runtime (Ultralytics would otherwise try to pip-install them,
# which hangs or fails offline).
_EXPORT_TOOLS: dict[str, tuple[str, ...]] = {"onnx": ("onnx",), "openvino": (), "tensorrt": ("onnx",), "torchscript": ()}

# Path endings of models that are already exports, checked longest/last first like Ultralytics does.
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


class ModelNotFoundError(FileNotFoundError):
    """The model is neither a local file nor something Ultralytics could download."""


@dataclass(frozen=True)
class ResolvedModel:
    """What the detector should load: ``YOLO(path, task="detect")`` and predict at ``imgsz``."""

    path: str
    backend: str
    imgsz: tuple[int, int] | int | None
    exported: bool
    note: str


# --------------------------------------------------------------------------------------------- sizes


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


# ------------------------------------------------------------------------------------------ runtimes


@cache
def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except Exception:  # noqa: BLE001 - ImportError, or a broken install raising anything at import time
        return False


def available_backends() -> dict[str, bool]:
    """Which runtimes import in this environment (cached per process; a failed import counts as missing)."""
    return {name: _importable(mod) for name, mod in _RUNTIME_MODULES.items()}


def _dist_version(dist: str) -> str:
    """Package version without importing it; trimmed to the release part (OpenVINO's has '/' in it)."""
    try:
        v = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "none"
    return v.split("-")[0].split("+")[0]


def _require_runtime(backend: str) -> None:
    if backend not in _RUNTIME_MODULES:
        raise BackendError(f"unknown backend {backend!r}; choose one of: auto, {', '.join(_RUNTIME_MODULES)}")
    if not available_backends().get(backend, False):
        hint = _EXPORTABLE[backend][4] if backend in _EXPORTABLE else "pip install torch"
        raise BackendError(
            f"backend {backend!r} was requested but its runtime ({_RUNTIME_MODULES[backend]}) does not import here: {hint}"
        )


def prefer_passive_omp_wait() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` (unless the user chose one) so idle OpenMP threads sleep instead of spinning.

    Why: with a busy neighbour on a 2-core box (training job), 2 spinning torch threads made PyTorch 384×640 calls
    ~8× slower (645 ms vs 85 ms p50) and even slowed OpenVINO (torch does its pre/post-processing). libgomp reads
    the variable once when torch loads, so call this before importing torch/ultralytics; returns whether it can
    still take effect.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return "torch" not in sys.modules


def configure_torch_threads(n: int | None = None, backend: str = "pytorch") -> None:
    """Give PyTorch all cores (or ``n``) when PyTorch runs the network.

    ``import ultralytics`` sets OMP_NUM_THREADS=1 and its first predict calls ``torch.set_num_threads(cpu_count-1)``,
    i.e. 1 thread on a 2-core box: 125 ms vs 77 ms per 384×640 call on an idle box (field notes). Call this
    *after* the first predict (which is when Ultralytics pins it); calling it again is harmless. For other
    backends torch only does light pre/post-processing, so it keeps 1 thread out of the runtime's way unless
    ``n`` says otherwise. See ``prefer_passive_omp_wait`` for shared machines.
    """
    import torch

    default = (os.cpu_count() or 1) if backend == "pytorch" else 1
    want = max(1, n if n is not None else default)
    if torch.get_num_threads() != want:
        logger.debug("torch threads {} -> {} (backend {})", torch.get_num_threads(), want, backend)
        torch.set_num_threads(want)
    if want > 1 and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        logger.debug("OMP_WAIT_POLICY is not PASSIVE: {} spinning torch threads can starve a busy CPU", want)


def inference_precision(yolo: Any) -> str | None:
    """The precision the runtime actually chose (e.g. OpenVINO picks bf16 on AMX/AVX512-BF16 CPUs), if knowable.

    Pass an ``ultralytics.YOLO`` after its first predict; returns None when the backend does not say.
    """
    am = getattr(getattr(yolo, "predictor", None), "model", None)
    if am is None:
        return None
    compiled = getattr(getattr(am, "backend", am), "ov_compiled_model", None)
    if compiled is not None:
        with contextlib.suppress(Exception):
            hint = compiled.get_property("INFERENCE_PRECISION_HINT")
            return hint.to_string() if hasattr(hint, "to_string") else str(hint)  # ov.Type -> "bf16" / "f32"
    fp16 = getattr(am, "fp16", None)
    if isinstance(fp16, bool):  # PyTorch, ONNX Runtime, TorchScript, TensorRT run the weights' own precision
        return "f16" if fp16 else "f32"
    return None


# ------------------------------------------------------------------------------------ model handling


def detect_backend(model: str | os.PathLike[str]) -> str | None:
    """Backend of a model from its path (``x.onnx`` -> onnx, ``x_openvino_model/`` -> openvino, ``x.pt`` -> pytorch)."""
    name = Path(model).name.lower().rstrip("/")
    best: tuple[int, int, str] | None = None
    for suffix, backend in _EXPORT_SUFFIXES:
        pos = name.rfind(suffix)
        if pos >= 0:
            cand = (pos + len(suffix), len(suffix), backend)  # the suffix ending last wins, then the longest
            best = cand if best is None or cand > best else best
    return best[2] if best else None


def _local_model(model: str) -> Path:
    """A local path for ``model``; for bare Ultralytics names (``yolo11n.pt``) try their download."""
    p = Path(model).expanduser()
    if p.exists():
        return p
    hint = "Pass a path, e.g. --model models/fixture-animals-yolo11n.pt"
    if p.name != model or p.suffix != ".pt":
        raise ModelNotFoundError(f"model {model!r} not found. {hint}")
    logger.info("model {!r} is not a local file; trying Ultralytics' download", model)
    try:
        from ultralytics.utils.downloads import attempt_download_asset

        with _quiet_ultralytics():
            got = Path(attempt_download_asset(model))
        if got.exists():
            return got
    except Exception as e:  # noqa: BLE001 - ConnectionError offline, anything else from the downloader
        logger.debug("download of {!r} failed: {}", model, e)
    raise ModelNotFoundError(
        f"model {model!r} is not a local file and could not be downloaded (no internet?). {hint}"
    )


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (~10 ms for a 5 MB yolo11n)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _train_imgsz(pt: Path, sha: str, cache_dir: Path) -> int | None:
    """The checkpoint's training image size (long side), remembered in ``cache_dir/.meta`` to skip torch.load later."""
    meta = cache_dir / ".meta" / f"{sha[:16]}.json"
    with contextlib.suppress(OSError, ValueError):
        return json.loads(meta.read_text())["train_imgsz"]
    size: int | None = None
    try:
        from ultralytics.nn.tasks import torch_safe_load

        with _quiet_ultralytics():
            ckpt, _ = torch_safe_load(str(pt))
        raw = (ckpt.get("train_args") or {}).get("imgsz")
        if raw is None:
            model_args = getattr(ckpt.get("model"), "args", None) or {}
            raw = model_args.get("imgsz") if isinstance(model_args, dict) else None
        if isinstance(raw, (list, tuple)):
            raw = max(int(x) for x in raw)
        size = int(raw) if raw else None
    except Exception as e:  # noqa: BLE001 - unreadable checkpoint: fall back to the default; the export will say what's wrong
        logger.warning("could not read the training image size from {}: {}", pt, e)
        return None
    with contextlib.suppress(OSError):
        meta.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(meta, json.dumps({"train_imgsz": size, "model": str(pt)}))
    return size


def cache_key(model_path: Path, backend: str, imgsz: tuple[int, int], sha: str | None = None) -> str:
    """``<stem>-<sha256[:12]>-<backend>-<h>x<w>-ul<ultralytics>-<runtime><version>``: any change re-exports."""
    if backend not in _EXPORTABLE:
        raise BackendError(f"backend {backend!r} is not an export target; choose one of {', '.join(_EXPORTABLE)}")
    sha = sha or file_sha256(model_path)
    _, _, dist, tag, _ = _EXPORTABLE[backend]
    h, w = imgsz
    return f"{model_path.stem}-{sha[:12]}-{backend}-{h}x{w}-ul{_dist_version('ultralytics')}-{tag}{_dist_version(dist)}"


def _artifact_name(stem: str, backend: str) -> str:
    return {
        "onnx": f"{stem}.onnx",
        "openvino": f"{stem}_openvino_model",
        "tensorrt": f"{stem}.engine",
        "torchscript": f"{stem}.torchscript",
    }[backend]


# ------------------------------------------------------------------------------------------ exporting


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive flock so two processes (or threads) never export the same key at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        t0 = time.monotonic()
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another process exporting the same model ({})", path.name)
            fcntl.flock(f, fcntl.LOCK_EX)
            logger.info("lock acquired after {:.1f}s", time.monotonic() - t0)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _quiet_ultralytics() -> Iterator[io.StringIO]:
    """Silence Ultralytics' chatty INFO logs, stray prints and torch tracing FutureWarnings; keep warnings/errors."""
    ul_logger = logging.getLogger("ultralytics")
    old = ul_logger.level
    buf = io.StringIO()
    ul_logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            with contextlib.suppress(ImportError):
                from torch.jit import TracerWarning

                warnings.simplefilter("ignore", TracerWarning)
            yield buf
    finally:
        ul_logger.setLevel(old)


@contextlib.contextmanager
def _progress(desc: str, enabled: bool) -> Iterator[None]:
    """A spinner with elapsed seconds while a blocking export runs (exports take 2–10 s, with no callbacks)."""
    t0 = time.monotonic()
    logger.info("{} ...", desc)
    stop = threading.Event()
    thread: threading.Thread | None = None
    bar = None
    if enabled and sys.stderr.isatty():  # on a pipe/log file the start/done log lines are enough
        from tqdm import tqdm

        bar = tqdm(total=None, desc=desc, bar_format="{desc}: {elapsed} {postfix}", leave=False)

        def spin() -> None:
            while not stop.wait(0.25):
                bar.refresh()

        thread = threading.Thread(target=spin, name="export-progress", daemon=True)
        thread.start()
    ok = False
    try:
        yield
        ok = True
    finally:
        stop.set()
        if thread is not None:
            thread.join()
        if bar is not None:
            bar.close()
        logger.info("{} {} in {:.1f}s", desc, "done" if ok else "FAILED", time.monotonic() - t0)


def _run_export(pt: Path, backend: str, imgsz: tuple[int, int], device: str) -> Path:
    """Ultralytics export of ``pt`` (which sits in a private temp dir); returns the artifact written next to it."""
    from ultralytics import YOLO

    fmt = _EXPORTABLE[backend][0]
    kwargs: dict[str, Any] = {"format": fmt, "imgsz": list(imgsz), "device": device, "dynamic": False, "batch": 1}
    if backend == "tensorrt":
        kwargs["half"] = True
    with _quiet_ultralytics() as out:
        try:
            result = YOLO(str(pt), task="detect").export(**kwargs)
        except BaseException:
            captured = out.getvalue().strip()
            if captured:
                logger.error("Ultralytics export output:\n{}", captured[-4000:])
            raise
    produced = Path(result) if result else pt.parent / _artifact_name(pt.stem, backend)
    if not produced.is_absolute():
        produced = pt.parent / produced.name
    if not produced.exists():
        raise BackendError(f"Ultralytics reported success but {produced} does not exist")
    return produced


def _cleanup_stale_tmp(cache_dir: Path, key: str) -> None:
    """Remove leftovers of crashed exports of ``key`` (safe: we hold its lock, so nobody else is writing them)."""
    for d in cache_dir.glob(f".tmp-{key}-*"):
        logger.warning("removing an unfinished export left by a crashed run: {}", d)
        shutil.rmtree(d, ignore_errors=True)


def _ensure_export(
    pt: Path, backend: str, imgsz: tuple[int, int], cache_dir: Path, progress: bool, device: str = "cpu",
    sha: str | None = None,
) -> tuple[Path, bool]:
    """Cached export of ``pt``: ``(artifact path, exported_now)``. Atomic (temp dir + rename) and locked."""
    _require_runtime(backend)
    for tool in _EXPORT_TOOLS[backend]:
        if not _importable(tool):
            raise BackendError(f"exporting to {backend} needs the {tool!r} package: {_EXPORTABLE[backend][4]}")
    sha = sha or file_sha256(pt)
    key = cache_key(pt, backend, imgsz, sha)
    final = cache_dir / key
    artifact = final / _artifact_name(pt.stem, backend)
    if artifact.exists():
        return artifact, False
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _file_lock(cache_dir / f".{key}.lock"):
        if artifact.exists():  # another process finished it while we waited
            return artifact, False
        _cleanup_stale_tmp(cache_dir, key)
        if final.exists():  # a directory without the artifact: not ours to trust
            logger.warning("cache entry {} is incomplete; re-exporting", final)
            shutil.rmtree(final)
        tmp = cache_dir / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        tmp.mkdir()
        try:
            src = tmp / f"{pt.stem}.pt"
            shutil.copyfile(pt, src)
            if file_sha256(src) != sha:
                raise BackendError(f"{pt} changed while it was being exported; try again")
            t0 = time.monotonic()
            h, w = imgsz
            with _progress(f"Exporting {pt.name} to {backend} at {h}x{w}", progress):
                produced = _run_export(src, backend, imgsz, device)
            if produced.name != artifact.name:
                produced.rename(tmp / artifact.name)
            src.unlink(missing_ok=True)
            meta = {
                "model": str(pt.resolve()), "sha256": sha, "backend": backend, "imgsz": [h, w],
                "ultralytics": _dist_version("ultralytics"), "runtime": _dist_version(_EXPORTABLE[backend][2]),
                "export_s": round(time.monotonic() - t0, 2), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            (tmp / "export.json").write_text(json.dumps(meta, indent=2))
            os.rename(tmp, final)  # atomic: readers see either nothing or the complete entry
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    logger.info("cached {} export at {}", backend, artifact)
    return artifact, True


def export_model(
    model: str, backend: str, imgsz: tuple[int, int], cache_dir: Path, progress: bool = True, device: str = "cpu"
) -> Path:
    """Export (or reuse the cached export of) a ``.pt`` model at a fixed ``(h, w)``; returns the loadable path."""
    pt = _local_model(model)
    kind = detect_backend(pt)
    if kind != "pytorch" or pt.is_dir():
        raise BackendError(f"{model!r} is a {kind or 'unknown'} model; only PyTorch .pt checkpoints can be exported")
    h, w = imgsz
    if h % STRIDE or w % STRIDE:
        raise ValueError(f"imgsz {imgsz} must be multiples of {STRIDE}")
    return _ensure_export(pt, backend, (h, w), Path(cache_dir), progress, device)[0]


# --------------------------------------------------------------------------------------------- resolve


def _auto_backend(device: str) -> str:
    if device.startswith("cuda") or device.isdigit():
        return "pytorch"  # GPU: PyTorch is already fast; TensorRT only when asked for explicitly
    avail = available_backends()
    for cand in ("openvino", "onnx"):
        if avail.get(cand) and all(_importable(t) for t in _EXPORT_TOOLS[cand]):
            return cand
    return "pytorch"


def resolve_model(
    model: str,
    backend: str = "auto",
    device: str = "cpu",
    imgsz: int | None = None,
    frame_size: tuple[int, int] | None = None,
    cache_dir: Path = Path("models/cache"),
    progress: bool = True,
) -> ResolvedModel:
    """Decide what actually runs, exporting and caching when a faster CPU runtime is available.

    ``auto``: a ``.pt`` on CPU becomes OpenVINO, else ONNX Runtime, else PyTorch; on CUDA it stays PyTorch.
    An explicit backend is forced (exported if needed) or fails with the pip command to fix it. A model that is
    already an export is used as is. ``frame_size`` is the stream's ``(width, height)``; exports are static at
    that aspect (16:9 while unknown) with long side ``imgsz`` or the model's training size.
    """
    backend = backend.lower()
    cache_dir = Path(cache_dir)
    pt = _local_model(model)
    kind = detect_backend(pt)
    if kind is None:
        raise BackendError(f"cannot tell the format of model {model!r} from its name (expected .pt, .onnx, *_openvino_model/, ...)")

    if kind != "pytorch":  # already an export: use as is
        if backend not in ("auto", kind):
            raise BackendError(
                f"model {model!r} is already a {kind} export, but backend {backend!r} was requested; "
                f"pass the .pt checkpoint to export it to {backend}, or use --backend auto"
            )
        if kind in _RUNTIME_MODULES:
            _require_runtime(kind)
        return ResolvedModel(str(pt), kind, None, False, f"{kind} export used as is ({pt})")

    if backend != "auto" and backend not in _RUNTIME_MODULES:
        raise BackendError(f"unknown backend {backend!r}; choose one of: auto, {', '.join(_RUNTIME_MODULES)}")
    chosen = _auto_backend(device) if backend == "auto" else backend
    if chosen == "tensorrt" and not device.startswith("cuda") and not device.isdigit():
        raise BackendError("backend 'tensorrt' needs a CUDA device (e.g. --device cuda:0)")
    _require_runtime(chosen)

    sha = file_sha256(pt)
    long_side = imgsz or _train_imgsz(pt, sha, cache_dir) or DEFAULT_LONG_SIDE
    why = "auto" if backend == "auto" else "requested"
    if chosen == "pytorch":
        reason = "CUDA device" if device.startswith("cuda") else "no OpenVINO/ONNX Runtime installed" if backend == "auto" else "requested"
        return ResolvedModel(str(pt), "pytorch", int(long_side), False, f"{why}: PyTorch ({reason}), imgsz {long_side}")

    size = stream_imgsz(frame_size, int(long_side))
    art, exported = _ensure_export(pt, chosen, size, cache_dir, progress, device, sha)
    aspect = f"{frame_size[0]}x{frame_size[1]}" if frame_size else "16:9 (frame size not known yet)"
    state = "exported now" if exported else "export cached"
    note = f"{why}: {chosen} {state} at {size[0]}x{size[1]} for a {aspect} stream: {art}"
    logger.info(note)
    return ResolvedModel(str(art), chosen, size, exported, note)
