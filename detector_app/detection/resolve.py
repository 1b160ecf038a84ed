"""Decide what actually runs for a ``--model``: which runtime, which export, which precision.

``auto`` turns a ``.pt`` on CPU into an OpenVINO export (else ONNX, else PyTorch through Ultralytics) at the
stream's aspect. Precision ``auto`` uses INT8 where it was measured not to cost accuracy: the first time, the
fp32 export is quantised with NNCF on the bundled fixture videos and both are scored on a held-out fixture
(``int8.compare``); INT8 is used only if it passed (recall/precision within 0.02 of fp32, median IoU ≥ 0.9),
or where there is no accuracy to lose (an untrained checkpoint: architecture-true benchmark models), otherwise
fp32; the numbers are logged either way and kept next to the export (``int8.json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from detector_app.detection import export_cache as ec
from detector_app.detection.formats import (
    DEFAULT_LONG_SIDE,
    LEAN_BACKENDS,
    RUNTIME_MODULES,
    BackendError,
    available_backends,
    can_export_to,
    detect_backend,
    require_runtime,
    stream_imgsz,
)

PRECISIONS = ("auto", "fp32", "int8")
FIXTURES_DIR = ec.PROJECT_ROOT / "data" / "fixtures"


@dataclass(frozen=True)
class ResolvedModel:
    """What the detector should load, and why."""

    path: str
    backend: str
    imgsz: tuple[int, int] | int | None
    exported: bool
    note: str
    precision: str = "fp32"  # fp32 | int8 (what the weights are; the runtime may compute fp32 as bf16)
    end2end: bool = False

    @property
    def lean(self) -> bool:
        """Run by ``engines`` without torch (OpenVINO or ONNX export)."""
        return self.backend in LEAN_BACKENDS


def _is_gpu(device: str) -> bool:
    return device.startswith("cuda") or device.isdigit()


def auto_backend(device: str) -> str:
    if _is_gpu(device):
        return "pytorch"  # GPU: PyTorch is already fast; TensorRT only when asked for explicitly
    for cand in ("openvino", "onnx"):
        if can_export_to(cand):
            return cand
    return "pytorch"


def default_calibration() -> list[Path]:
    from detector_app.detection.int8 import CALIB_FIXTURES

    return [FIXTURES_DIR / f"{n}.mp4" for n in CALIB_FIXTURES]


def _heldout() -> tuple[Path, Path]:
    from detector_app.detection.int8 import HELDOUT_FIXTURE

    return FIXTURES_DIR / f"{HELDOUT_FIXTURE}.mp4", FIXTURES_DIR / f"{HELDOUT_FIXTURE}.json"


def validate_int8(fp32: Path, int8: Path, conf: float = 0.35) -> dict:
    """Score INT8 against fp32 on the held-out fixture once; the report is cached next to the INT8 export."""
    report_file = int8.parent / "int8.json"
    cached = json.loads(report_file.read_text()) if report_file.exists() else {}
    if "accuracy" in cached:
        return cached["accuracy"]
    video, truth = _heldout()
    if not (video.exists() and truth.exists()):
        return {"passed": None, "why": f"held-out fixture {video.name} missing (scripts/setup.sh makes it)"}
    from detector_app.detection.int8 import compare

    report = compare(fp32, int8, video, truth, conf=conf)
    logger.info("{}", report.to_text())
    acc = report.to_json()
    ec.atomic_write_text(report_file, json.dumps({**cached, "accuracy": acc}, indent=2))
    return acc


def _int8_for(fp32: Path, stem: str, cache_dir: Path, progress: bool, calib: list[Path] | None,
              required: bool, trained: bool = True) -> tuple[Path | None, str]:
    """The INT8 export for ``fp32`` (made if needed) and a note; ``None`` when auto should stay fp32."""
    videos = calib or default_calibration()
    if not all(v.is_file() for v in videos):
        if required:
            raise BackendError(f"INT8 calibration needs videos: pass --calib VIDEO (missing: "
                               f"{', '.join(str(v) for v in videos if not v.is_file())})")
        return None, "fp32 (no calibration videos for INT8: run scripts/setup.sh or detector-app fixtures)"
    try:
        art, _ = ec.ensure_int8(fp32, stem, videos, cache_dir, progress)
    except BackendError as exc:
        if required:
            raise
        return None, f"fp32 (INT8 not available: {exc})"
    acc = validate_int8(fp32, art)
    if required:
        verdict = {True: "passed", False: "FAILED", None: "inconclusive"}[acc.get("passed")]
        return art, f"int8 (requested; held-out accuracy check against fp32: {verdict})"
    if acc.get("passed"):
        return art, "int8 (auto: passed the held-out accuracy check against fp32)"
    if acc.get("passed") is False:
        logger.warning("INT8 failed the accuracy check against fp32 ({}); using fp32", acc)
        return None, "fp32 (auto: INT8 failed the held-out accuracy check)"
    if "fp32" in acc and not trained:
        return art, "int8 (auto: an untrained checkpoint, random weights have no accuracy to lose; it runs as fast as the real weights)"
    if "fp32" in acc:
        logger.info("INT8 export exists but could not be validated (fp32 finds no animals on the held-out fixture); "
                    "auto uses fp32 — pass --precision int8 to use it anyway")
    return None, f"fp32 (auto: INT8 not validated: {acc.get('why')})"


def resolve_model(
    model: str,
    backend: str = "auto",
    device: str = "cpu",
    imgsz: int | None = None,
    frame_size: tuple[int, int] | None = None,
    cache_dir: Path = ec.PROJECT_ROOT / "models" / "cache",
    progress: bool = True,
    precision: str = "auto",
    calib: list[Path] | None = None,
) -> ResolvedModel:
    """Decide what runs, exporting (in a child process) and caching when a faster CPU runtime is available.

    An explicit backend is forced (exported if needed) or fails with the pip command to fix it. A model that is
    already an export is used as is. ``frame_size`` is the stream's ``(width, height)``; exports are static at
    that aspect (16:9 while unknown) with long side ``imgsz`` or the model's training size.
    """
    backend, precision = backend.lower(), precision.lower()
    if precision not in PRECISIONS:
        raise BackendError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    cache_dir = Path(cache_dir)
    pt = ec.local_model(model)
    kind = detect_backend(pt)
    if kind is None:
        raise BackendError(f"cannot tell the format of model {model!r} from its name (expected .pt, .onnx, *_openvino_model/, ...)")

    if kind != "pytorch":  # already an export: used as is (an fp32 OpenVINO export may still be quantised)
        if backend not in ("auto", kind):
            raise BackendError(
                f"model {model!r} is already a {kind} export, but backend {backend!r} was requested; "
                f"pass the .pt checkpoint to export it to {backend}, or use --backend auto"
            )
        if kind in RUNTIME_MODULES:
            require_runtime(kind)
        is_int8 = "_int8_" in pt.name or "-int8-" in str(pt.parent.name)
        if precision == "int8" and not is_int8:
            if kind != "openvino":
                raise BackendError("--precision int8 is made for OpenVINO exports; pass the .pt or an OpenVINO export")
            stem = pt.name.removesuffix("_openvino_model") if pt.is_dir() else pt.stem
            art, note = _int8_for(pt, stem, cache_dir, progress, calib, required=True)
            assert art is not None
            return ResolvedModel(str(art), kind, None, False, f"{kind} export quantised: {note}", "int8")
        if precision == "fp32" and is_int8:
            raise BackendError(f"{pt} is an INT8 export; pass the fp32 export or the .pt for --precision fp32")
        return ResolvedModel(str(pt), kind, None, False, f"{kind} export used as is ({pt})", "int8" if is_int8 else "fp32")

    if backend != "auto" and backend not in RUNTIME_MODULES:
        raise BackendError(f"unknown backend {backend!r}; choose one of: auto, {', '.join(RUNTIME_MODULES)}")
    chosen = auto_backend(device) if backend == "auto" else backend
    if chosen == "tensorrt" and not _is_gpu(device):
        raise BackendError("backend 'tensorrt' needs a CUDA device (e.g. --device cuda:0)")
    require_runtime(chosen)
    if precision == "int8" and chosen != "openvino":
        raise BackendError(f"--precision int8 needs the OpenVINO backend (chosen: {chosen}); pip install openvino nncf")

    sha = ec.file_sha256(pt)
    facts = ec.model_facts(pt, sha, cache_dir)
    long_side = imgsz or facts.train_imgsz or DEFAULT_LONG_SIDE
    why = "auto" if backend == "auto" else "requested"
    if chosen == "pytorch":
        reason = ("CUDA device" if _is_gpu(device) else "no OpenVINO/ONNX Runtime installed" if backend == "auto"
                  else "requested")
        return ResolvedModel(str(pt), "pytorch", int(long_side), False, f"{why}: PyTorch ({reason}), imgsz {long_side}",
                             "fp32", facts.end2end)

    size = stream_imgsz(frame_size, int(long_side))
    art, exported = ec.ensure_export(pt, chosen, size, cache_dir, progress, device, sha, facts.end2end)
    prec_note = "fp32"
    used = art
    if chosen == "openvino" and precision in ("auto", "int8") and not _is_gpu(device):
        q, prec_note = _int8_for(art, pt.stem, cache_dir, progress, calib, required=precision == "int8",
                                 trained=facts.trained)
        used = q or art
    aspect = f"{frame_size[0]}x{frame_size[1]}" if frame_size else "16:9 (frame size not known yet)"
    state = "exported now" if exported else "export cached"
    note = f"{why}: {chosen} {state} at {size[0]}x{size[1]} for a {aspect} stream, {prec_note}: {used}"
    logger.info(note)
    return ResolvedModel(str(used), chosen, size, exported, note, "int8" if used != art else "fp32", facts.end2end)


__all__ = ["PRECISIONS", "ResolvedModel", "auto_backend", "available_backends", "resolve_model", "validate_int8"]
