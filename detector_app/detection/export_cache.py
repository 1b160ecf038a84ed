"""The export cache: each model exported (and quantised) once, in a child process, reused in milliseconds.

Keys change whenever the model bytes, the network input size, Ultralytics, the runtime or (INT8) the
calibration change. Entries are written into a temp directory and renamed into place (readers see all or
nothing) under an ``flock``, so concurrent processes export a key once. The heavy work runs in
``export_worker`` (a child process), so the streaming process never imports Ultralytics or torch; a cache
hit costs a SHA-256 of the model (~10 ms) and a few small JSON reads.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger

from detector_app.detection.formats import (
    EXPORT_TARGETS,
    BackendError,
    ModelNotFoundError,
    detect_backend,
    dist_version,
    importable,
    installed,
    require_runtime,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
EXPORT_TIMEOUT_S = 900.0  # a first INT8 calibration on a busy 2-core box takes minutes


class ExportError(BackendError):
    """The export child failed; the message carries its one-line reason."""


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What a ``.pt`` says about itself (read once by the child, then cached by hash)."""

    train_imgsz: int | None
    end2end: bool
    trained: bool = True  # False: random weights (e.g. scripts/make_arch_model.py), nothing to lose to INT8


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (~10 ms for a 5 MB yolo11n)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive flock so two processes (or threads) never build the same entry at once."""
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
def progress(desc: str, enabled: bool) -> Iterator[None]:
    """A spinner with elapsed seconds while a blocking child runs (exports take 2–60 s, with no callbacks)."""
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


# ------------------------------------------------------------------------------------------- the child


def run_child(op: str, timeout: float = EXPORT_TIMEOUT_S, **request: Any) -> dict[str, Any]:
    """Run one ``export_worker`` operation in a fresh interpreter; its ``RESULT`` or an ``ExportError``."""
    if not installed("ultralytics") and op != "quantize":  # not imported here: it imports torch
        raise BackendError(f"{op} needs Ultralytics (pip install ultralytics); the streaming process itself does not")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "detector_app.detection.export_worker", json.dumps({"op": op, **request})],
            capture_output=True, text=True, timeout=timeout, env=env, cwd=PROJECT_ROOT,
        )
    except subprocess.TimeoutExpired:
        raise ExportError(f"{op} did not finish within {timeout:.0f} s") from None
    lines = proc.stdout.strip().splitlines()
    last = lines[-1] if lines else ""
    if proc.returncode == 0 and last.startswith("RESULT "):
        return json.loads(last[len("RESULT "):])
    tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
    if tail:
        logger.debug("{} child output:\n{}", op, tail)
    reason = last[len("ERROR "):] if last.startswith("ERROR ") else f"exit code {proc.returncode}: {tail[-300:]}"
    raise ExportError(f"{op} failed: {reason}")


# ---------------------------------------------------------------------------------------------- models


def local_model(model: str) -> Path:
    """A local path for ``model``; bare Ultralytics names (``yolo11n.pt``) are downloaded by the child."""
    p = Path(model).expanduser()
    if p.exists():
        return p
    hint = "Pass a path, e.g. --model models/fixture-animals-yolo11n.pt"
    if p.name != model or p.suffix != ".pt":
        raise ModelNotFoundError(f"model {model!r} not found. {hint}")
    logger.info("model {!r} is not a local file; trying Ultralytics' download", model)
    try:
        return Path(run_child("download", timeout=300.0, name=model)["path"])
    except BackendError as exc:
        logger.debug("download of {!r} failed: {}", model, exc)
    raise ModelNotFoundError(f"model {model!r} is not a local file and could not be downloaded (no internet?). {hint}")


def model_facts(pt: Path, sha: str, cache_dir: Path) -> ModelFacts:
    """Training size and NMS-free head of a checkpoint, remembered in ``cache_dir/.meta`` (no torch next time)."""
    meta = cache_dir / ".meta" / f"{sha[:16]}.json"
    with contextlib.suppress(OSError, ValueError, KeyError):
        d = json.loads(meta.read_text())
        return ModelFacts(d["train_imgsz"], bool(d["end2end"]), bool(d["trained"]))
    try:
        got = run_child("inspect", timeout=120.0, pt=str(pt))
    except BackendError as exc:  # unreadable checkpoint: defaults; the export will say what is wrong
        logger.warning("could not read {}: {}", pt, exc)
        return ModelFacts(None, False)
    facts = ModelFacts(got.get("train_imgsz"), bool(got.get("end2end")), bool(got.get("trained", True)))
    with contextlib.suppress(OSError):
        meta.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(meta, json.dumps({"train_imgsz": facts.train_imgsz, "end2end": facts.end2end,
                                            "trained": facts.trained, "model": str(pt)}))
    return facts


def cache_key(model_path: Path, backend: str, imgsz: tuple[int, int], sha: str | None = None) -> str:
    """``<stem>-<sha256[:12]>-<backend>-<h>x<w>-ul<ultralytics>-<runtime><version>``: any change re-exports."""
    if backend not in EXPORT_TARGETS:
        raise BackendError(f"backend {backend!r} is not an export target; choose one of {', '.join(EXPORT_TARGETS)}")
    sha = sha or file_sha256(model_path)
    t = EXPORT_TARGETS[backend]
    h, w = imgsz
    return f"{model_path.stem}-{sha[:12]}-{backend}-{h}x{w}-ul{dist_version('ultralytics')}-{t.tag}{dist_version(t.distribution)}"


def _cleanup_stale_tmp(cache_dir: Path, key: str) -> None:
    """Remove leftovers of crashed builds of ``key`` (safe: we hold its lock, so nobody else is writing them)."""
    for d in cache_dir.glob(f".tmp-{key}-*"):
        logger.warning("removing an unfinished export left by a crashed run: {}", d)
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def _building(cache_dir: Path, key: str) -> Iterator[Path]:
    """A private temp dir that becomes ``cache_dir/key`` atomically when the block succeeds."""
    final = cache_dir / key
    _cleanup_stale_tmp(cache_dir, key)
    if final.exists():  # a directory without the artifact: not ours to trust
        logger.warning("cache entry {} is incomplete; rebuilding", final)
        shutil.rmtree(final)
    tmp = cache_dir / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    tmp.mkdir(parents=True)
    try:
        yield tmp
        os.rename(tmp, final)  # atomic: readers see either nothing or the complete entry
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def ensure_export(
    pt: Path, backend: str, imgsz: tuple[int, int], cache_dir: Path, progress_bar: bool, device: str = "cpu",
    sha: str | None = None, end2end: bool = False,
) -> tuple[Path, bool]:
    """Cached export of ``pt``: ``(artifact path, exported_now)``."""
    require_runtime(backend)
    target = EXPORT_TARGETS[backend]
    for tool in target.export_tools:
        if not importable(tool):
            raise BackendError(f"exporting to {backend} needs the {tool!r} package: {target.install_hint}")
    sha = sha or file_sha256(pt)
    key = cache_key(pt, backend, imgsz, sha) + ("-e2e" if end2end else "")
    artifact = cache_dir / key / target.artifact_name(pt.stem)
    if artifact.exists():
        return artifact, False
    cache_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(cache_dir / f".{key}.lock"):
        if artifact.exists():  # another process finished it while we waited
            return artifact, False
        with _building(cache_dir, key) as tmp:
            src = tmp / f"{pt.stem}.pt"
            shutil.copyfile(pt, src)
            if file_sha256(src) != sha:
                raise BackendError(f"{pt} changed while it was being exported; try again")
            t0 = time.monotonic()
            h, w = imgsz
            with progress(f"Exporting {pt.name} to {backend} at {h}x{w}", progress_bar):
                produced = Path(run_child("export", pt=str(src), format=target.ultralytics_format, imgsz=[h, w],
                                          device=device, end2end=end2end)["path"])
            if not produced.exists():
                raise BackendError(f"Ultralytics reported success but {produced} does not exist")
            if produced.name != artifact.name:
                produced.rename(tmp / artifact.name)
            src.unlink(missing_ok=True)
            meta = {
                "model": str(pt.resolve()), "sha256": sha, "backend": backend, "imgsz": [h, w], "end2end": end2end,
                "ultralytics": dist_version("ultralytics"), "runtime": dist_version(target.distribution),
                "export_s": round(time.monotonic() - t0, 2), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            (tmp / "export.json").write_text(json.dumps(meta, indent=2))
    logger.info("cached {} export at {}", backend, artifact)
    return artifact, True


def calib_fingerprint(videos: list[Path], frames: int) -> str:
    """Names, sizes and mtimes of the calibration videos + frame count + NNCF version: a new set re-quantises."""
    h = hashlib.sha256(f"{frames}|nncf{dist_version('nncf')}".encode())
    for v in sorted(videos):
        st = v.stat()
        h.update(f"|{v.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:10]


def ensure_int8(
    fp32_artifact: Path, stem: str, calib: list[Path], cache_dir: Path, progress_bar: bool, frames: int = 160,
) -> tuple[Path, bool]:
    """Cached NNCF INT8 version of an OpenVINO fp32 export, calibrated on frames of ``calib``."""
    if detect_backend(fp32_artifact) != "openvino":
        raise BackendError("INT8 quantisation is done for OpenVINO exports (--backend openvino)")
    if not installed("nncf"):  # not imported here: NNCF imports torch when it is installed
        raise BackendError("INT8 needs NNCF: pip install nncf  (or: pip install 'detector-app[fast]')")
    missing = [str(v) for v in calib if not v.is_file()]
    if missing or not calib:
        raise BackendError(f"calibration video(s) not found: {', '.join(missing) or '(none given)'}")
    key = f"{fp32_artifact.parent.name}-int8-c{calib_fingerprint(calib, frames)}"
    artifact = cache_dir / key / f"{stem}_int8_openvino_model"
    if artifact.exists():
        return artifact, False
    with file_lock(cache_dir / f".{key}.lock"):
        if artifact.exists():
            return artifact, False
        with _building(cache_dir, key) as tmp:
            with progress(f"Quantising {stem} to INT8 (NNCF, {frames} calibration frames)", progress_bar):
                got = run_child("quantize", fp32=str(fp32_artifact), out_dir=str(tmp / artifact.name),
                                calib=[str(v) for v in calib], frames=frames)
            (tmp / "int8.json").write_text(json.dumps({**got, "calib": [str(v) for v in calib]}, indent=2))
    logger.info("cached INT8 export at {}", artifact)
    return artifact, True


__all__ = [
    "ExportError", "ModelFacts", "atomic_write_text", "cache_key",
    "ensure_export", "ensure_int8", "file_lock", "file_sha256", "local_model", "model_facts", "progress", "run_child",
]
