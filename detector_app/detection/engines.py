"""Lean inference engines: an OpenVINO or ONNX export run by its own runtime, with no torch in the process.

An engine is shared by every stream of the process and is safe to call from all their threads at once.
It keeps two shapes of the compiled network (``tuning.Lane``): while one thread calls it, the *latency*
shape (one request on all cores); as soon as two or more threads called within ``ACTIVE_WINDOW_S``, the
*throughput* shape (one request per core, one thread each), so different streams' inferences run in
parallel instead of queueing behind one lock. Requests are handed out first come, first served
(``queue.Queue`` wakes waiters in order), which gives every stream a fair share under overload.
"""

from __future__ import annotations

import ast
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import yaml
from loguru import logger

from detector_app.detection.formats import BackendError, detect_backend
from detector_app.detection.tuning import Lane, cpu_count, lane_threads, openvino_config

ACTIVE_WINDOW_S = 2.0  # a stream at 10 FPS calls every 0.1 s; one that stopped calling for 2 s is gone


@dataclass(frozen=True, slots=True)
class ExportInfo:
    """What an export says about itself (Ultralytics writes it as metadata next to / inside the model)."""

    model_file: Path  # the file the runtime reads (.xml or .onnx)
    names: dict[int, str]
    input_hw: tuple[int, int]
    end2end: bool
    int8: bool


class Engine(Protocol):
    """A compiled network: ``(1, 3, H, W)`` float32 blob in, raw output array out; thread-safe."""

    info: ExportInfo
    backend: str

    def infer(self, blob: np.ndarray, count: bool = True) -> np.ndarray: ...

    @property
    def precision(self) -> str: ...

    def close(self) -> None: ...


# ------------------------------------------------------------------------------------------- metadata


def _literal(v: Any) -> Any:
    """ONNX metadata values are strings of Python literals (``"{0: 'person', ...}"``)."""
    if isinstance(v, str):
        try:
            return ast.literal_eval(v)
        except (ValueError, SyntaxError):
            return v
    return v


def _names(raw: Any) -> dict[int, str]:
    raw = _literal(raw)
    if isinstance(raw, dict):
        return {int(k): str(v) for k, v in raw.items()}
    if isinstance(raw, (list, tuple)):
        return dict(enumerate(map(str, raw)))
    return {}


def _model_file(path: Path) -> Path:
    if path.is_dir():
        xmls = sorted(path.glob("*.xml"))
        if not xmls:
            raise BackendError(f"{path} has no OpenVINO .xml model inside")
        return xmls[0]
    return path


def read_export_info(path: Path, meta: dict[str, Any] | None = None, input_shape: list[int] | None = None) -> ExportInfo:
    """Names, input size and output layout: the graph's static input shape first (the truth for a static
    export), else Ultralytics' export metadata (``meta``)."""
    meta = meta or {}
    names = _names(meta.get("names"))
    imgsz = _literal(meta.get("imgsz"))
    if input_shape and len(input_shape) == 4 and all(isinstance(d, int) and d > 0 for d in input_shape[2:]):
        hw = (int(input_shape[2]), int(input_shape[3]))
    elif isinstance(imgsz, (list, tuple)) and len(imgsz) == 2:
        hw = (int(imgsz[0]), int(imgsz[1]))
    else:
        raise BackendError(f"cannot tell the input size of {path}: export it with a fixed imgsz (dynamic=False)")
    end2end = str(_literal(meta.get("end2end", False))).lower() == "true"
    args = _literal(meta.get("args")) or {}
    int8 = bool(isinstance(args, dict) and (args.get("int8") or args.get("quantize") in (8, "8", "int8")))
    return ExportInfo(path, names, hw, end2end, int8 or "_int8_" in str(path))


# -------------------------------------------------------------------------------------------- pooling


class _Pool:
    """Run-slots of one compiled shape: whoever asks first gets the next free one."""

    def __init__(self, slots: list[Any]) -> None:
        self.size = len(slots)
        self._free: queue.Queue[Any] = queue.Queue()
        for s in slots:
            self._free.put(s)

    @contextmanager
    def slot(self) -> Iterator[Any]:
        s = self._free.get()
        try:
            yield s
        finally:
            self._free.put(s)


class _Callers:
    """How many live threads called within the last ``ACTIVE_WINDOW_S`` (bounded by the threads alive).

    A thread that ended (a stream closed, or replaced after its ingest died) stops counting at once.
    """

    def __init__(self) -> None:
        self._last: dict[int, tuple[threading.Thread, float]] = {}
        self._lock = threading.Lock()

    def _prune(self, now: float) -> None:
        for tid in [t for t, (th, at) in self._last.items() if now - at > ACTIVE_WINDOW_S or not th.is_alive()]:
            del self._last[tid]

    def active(self) -> int:
        with self._lock:
            self._prune(time.monotonic())
            return len(self._last)

    def touch(self) -> int:
        now = time.monotonic()
        with self._lock:
            self._last[threading.get_ident()] = (threading.current_thread(), now)
            self._prune(now)
            return len(self._last)


class _LaneEngine:
    """Shared lane logic: pick the shape per call, compile the throughput shape on first need."""

    backend = ""

    def __init__(self, info: ExportInfo, cores: int | None) -> None:
        self.info = info
        self.cores = cores or cpu_count()
        self._pools: dict[Lane, _Pool] = {}
        self._callers = _Callers()
        self._compile_lock = threading.Lock()
        self._pools[Lane.LATENCY] = self._build(Lane.LATENCY)
        self.calls = {Lane.LATENCY: 0, Lane.THROUGHPUT: 0}

    def _build(self, lane: Lane) -> _Pool:
        raise NotImplementedError

    def _pool_for_call(self, count: bool) -> tuple[Lane, _Pool]:
        if self.cores < 2 or (self._callers.touch() if count else self._callers.active()) < 2:
            return Lane.LATENCY, self._pools[Lane.LATENCY]
        pool = self._pools.get(Lane.THROUGHPUT)
        if pool is None:
            if not self._compile_lock.acquire(blocking=False):  # another thread is compiling it (~0.5 s)
                return Lane.LATENCY, self._pools[Lane.LATENCY]
            try:
                pool = self._pools.get(Lane.THROUGHPUT)
                if pool is None:
                    t0 = time.perf_counter()
                    pool = self._pools[Lane.THROUGHPUT] = self._build(Lane.THROUGHPUT)
                    logger.info("{}: several streams, compiled the throughput shape ({} parallel requests) in {:.2f} s",
                                self.backend, pool.size, time.perf_counter() - t0)
            finally:
                self._compile_lock.release()
        return Lane.THROUGHPUT, pool

    def warm(self, blob: np.ndarray, lanes: tuple[Lane, ...] = (Lane.LATENCY,)) -> None:
        """Compile and run each requested shape once (the first call of a shape is slow)."""
        for lane in lanes:
            if lane not in self._pools:
                self._pools[lane] = self._build(lane)
            with self._pools[lane].slot() as s:
                self._run(s, blob)

    def infer(self, blob: np.ndarray, count: bool = True) -> np.ndarray:
        """Run one blob; ``count=False`` (warm-up) does not make the calling thread count as a stream."""
        lane, pool = self._pool_for_call(count)
        self.calls[lane] += 1
        with pool.slot() as s:
            return self._run(s, blob)

    def _run(self, slot: Any, blob: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        self._pools.clear()


class OpenVinoEngine(_LaneEngine):
    backend = "openvino"

    def __init__(self, path: Path, cores: int | None = None, compiled_cache: Path | None = None) -> None:
        import openvino as ov

        self._core = ov.Core()
        if compiled_cache is not None:  # OpenVINO's own blob cache: a repeat compile takes ~0.1 s instead of ~1 s
            self._core.set_property({"CACHE_DIR": str(compiled_cache)})
        xml = _model_file(path)
        meta_file = xml.parent / "metadata.yaml"
        meta = yaml.safe_load(meta_file.read_text()) if meta_file.exists() else {}
        self._model = self._core.read_model(xml)
        shape = self._model.inputs[0].get_partial_shape()
        dims = [d.get_length() if d.is_static else -1 for d in shape]
        super().__init__(read_export_info(xml, meta, dims), cores)

    def _build(self, lane: Lane) -> _Pool:
        compiled = self._core.compile_model(self._model, "CPU", openvino_config(lane, cores=self.cores))
        streams, _ = lane_threads(lane, self.cores)
        self._compiled = compiled
        return _Pool([compiled.create_infer_request() for _ in range(streams)])

    def _run(self, request: Any, blob: np.ndarray) -> np.ndarray:
        request.infer({0: blob}, share_inputs=True)  # no input copy; releases the GIL while the network runs
        return request.get_output_tensor(0).data.copy()  # the request reuses its buffer on the next call

    @property
    def precision(self) -> str:
        hint = str(self._compiled.get_property("INFERENCE_PRECISION_HINT"))
        return f"int8+{hint}" if self.info.int8 else hint


class OnnxEngine(_LaneEngine):
    backend = "onnx"

    def __init__(self, path: Path, cores: int | None = None) -> None:
        import onnxruntime as ort

        self._ort = ort
        self._path = path
        probe = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        meta = dict(probe.get_modelmeta().custom_metadata_map)
        inp = probe.get_inputs()[0]
        self._input_name = inp.name
        dims = [d if isinstance(d, int) else -1 for d in inp.shape]
        del probe
        super().__init__(read_export_info(path, meta, dims), cores)

    def _build(self, lane: Lane) -> _Pool:
        streams, threads = lane_threads(lane, self.cores)
        so = self._ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = self._ort.ExecutionMode.ORT_SEQUENTIAL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads must not burn a core
        sess = self._ort.InferenceSession(str(self._path), so, providers=["CPUExecutionProvider"])
        return _Pool([sess] * streams)  # one session may run concurrently; slots bound how many at once

    def _run(self, sess: Any, blob: np.ndarray) -> np.ndarray:
        return sess.run(None, {self._input_name: blob})[0]

    @property
    def precision(self) -> str:
        return "int8" if self.info.int8 else "f32"


def open_engine(path: str | Path, cores: int | None = None, compiled_cache: Path | None = None) -> OpenVinoEngine | OnnxEngine:
    """The lean engine for an OpenVINO directory/.xml or an .onnx file."""
    p = Path(path)
    kind = detect_backend(p)
    if kind == "openvino":
        return OpenVinoEngine(p, cores, compiled_cache)
    if kind == "onnx":
        return OnnxEngine(p, cores)
    raise BackendError(f"{p} is not an OpenVINO or ONNX export")
