"""The cost floor beside the pipeline: the bare runtime on our export, and bare decoding of the video.

    python -m detector_app.bench.floor raw --export M.xml --backend openvino --video V [--config '{…}']
    python -m detector_app.bench.floor decode --video V [--seconds 20]

Each runs in its own process (started by the runner after our side finished, before the baseline), so
its CPU time is its own and nothing else of ours is loaded: no pipeline, no ingest, no Ultralytics.
The answer is one ``FLOOR {json}`` line on stdout.

raw:    the exact export our worker loaded (``Detector.resolved.path``), compiled the way our worker
        compiled it (OpenVINO properties / ONNX Runtime session options read from the live objects in the
        worker and passed in ``--config``), fed one letterboxed frame of the benchmark video (grey 114
        padding, RGB, 0…1, NCHW, the export's own input shape) ``--calls`` times, synchronously, from
        ``--parallel`` threads with a request each (1 for one stream; ours' parallel requests for several):
        wall ms per call (p50, p95) and CPU ms per call = process CPU delta ÷ calls (all runtime threads).
decode: PyAV decodes the video's video stream like our decode thread (default decoder options, every
        frame), as fast as it can, for ``--seconds`` of video: CPU seconds per second of video. Unpaced
        (faster to measure); the work per frame is the same as at real time.

Why: "pipeline CPU per detection ÷ (raw CPU per call + decode CPU per detection)" says how much of our
cost is the unavoidable model and decode work, and how much is ours (conversion, letterbox, NMS, threads).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

WARMUP_CALLS = 5


OV_PROPERTIES = ("PERFORMANCE_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS", "INFERENCE_PRECISION_HINT",
                 "ENABLE_CPU_PINNING", "SCHEDULING_CORE_TYPE", "ENABLE_HYPER_THREADING", "EXECUTION_MODE_HINT")


def ov_plain(v):
    """An OpenVINO property value as something ``compile_model`` accepts again (and JSON can carry)."""
    if isinstance(v, (bool, int, float, str)):
        return v
    if hasattr(v, "get_type_name"):  # ov.Type: f32, bf16, …
        return v.get_type_name()
    name = getattr(v, "name", None)  # enums: LATENCY, ANY_CORE, PERFORMANCE
    return name if isinstance(name, str) else str(v)


def ov_properties(compiled) -> dict:
    """The properties of a compiled OpenVINO model that decide its speed (threads, streams, hints, precision)."""
    out = {}
    for key in OV_PROPERTIES:
        try:
            out[key] = ov_plain(compiled.get_property(key))
        except Exception:  # noqa: BLE001 - a property this OpenVINO version does not have
            pass
    return out


def _say(payload: dict) -> None:
    sys.stdout.write("FLOOR " + json.dumps(payload) + "\n")
    sys.stdout.flush()


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def sample_frame(video: Path, at_s: float = 5.0) -> np.ndarray:
    """One BGR frame of ``video`` near ``at_s`` seconds (the first frame if shorter): realistic content."""
    import av

    with av.open(str(video)) as c:
        last = None
        for frame in c.decode(video=0):
            last = frame
            if frame.time is not None and frame.time >= at_s:
                break
        if last is None:
            raise SystemExit(f"no video frame in {video}")
        return last.to_ndarray(format="bgr24")


def letterbox_input(bgr: np.ndarray, shape_hw: tuple[int, int], dtype: np.dtype = np.float32) -> np.ndarray:
    """Ultralytics-style letterbox (keep aspect, centre, pad 114) → RGB NCHW, scaled to 0…1 for float inputs."""
    import cv2

    h, w = shape_hw
    sh, sw = bgr.shape[:2]
    r = min(h / sh, w / sw)
    nh, nw = round(sh * r), round(sw * r)
    resized = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((h, w, 3), 114, np.uint8)
    top, left = (h - nh) // 2, (w - nw) // 2
    canvas[top : top + nh, left : left + nw] = resized
    chw = canvas[:, :, ::-1].transpose(2, 0, 1)[None]
    if np.issubdtype(dtype, np.floating):
        return np.ascontiguousarray(chw, dtype=dtype) / np.asarray(255.0, dtype)
    return np.ascontiguousarray(chw, dtype=dtype)


def _model_file(export: Path, backend: str) -> Path:
    if export.is_dir():
        pattern = "*.xml" if backend == "openvino" else "*.onnx"
        found = sorted(export.glob(pattern))
        if not found:
            raise SystemExit(f"no {pattern} in {export}")
        return found[0]
    return export


def _time_calls(make_call, calls: int, max_s: float, parallel: int = 1) -> dict:
    """Time ``calls`` calls in ``parallel`` threads (each with its own ``make_call()``), after a warm-up each.

    CPU per call = process CPU over the timed span ÷ calls: every runtime thread counts, as in our worker."""
    import threading

    fns = [make_call() for _ in range(parallel)]
    for fn in fns:
        for _ in range(WARMUP_CALLS):
            fn()
    walls: list[float] = []
    lock = threading.Lock()
    per = max(1, calls // parallel)
    t_end = time.monotonic() + max_s

    def run(fn) -> None:
        for _ in range(per):
            if time.monotonic() >= t_end:
                return
            t0 = time.perf_counter()
            fn()
            dt = (time.perf_counter() - t0) * 1000.0
            with lock:
                walls.append(dt)

    cpu0, w0 = time.process_time(), time.perf_counter()
    threads = [threading.Thread(target=run, args=(fn,)) for fn in fns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cpu_ms, span = (time.process_time() - cpu0) * 1000.0, time.perf_counter() - w0
    return {"calls": len(walls), "parallel": parallel, "wall_ms_p50": _pct(walls, 50), "wall_ms_p95": _pct(walls, 95),
            "cpu_ms_per_call": cpu_ms / len(walls) if walls else None,
            "calls_per_s": len(walls) / span if span > 0 else None}


def raw_openvino(model: Path, frame: np.ndarray, config: dict, calls: int, max_s: float, parallel: int = 1) -> dict:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(str(model), "CPU", dict(config))
    port = compiled.input(0)
    shape = tuple(int(d) for d in port.get_partial_shape().to_shape())
    dtype = np.dtype(port.get_element_type().to_dtype())
    x = letterbox_input(frame, (shape[2], shape[3]), dtype)
    def make_call():
        req = compiled.create_infer_request()
        return lambda: req.infer({0: x})

    out = _time_calls(make_call, calls, max_s, parallel)
    return {**out, "input_shape": list(shape), "input_dtype": str(dtype), "compiled_properties": ov_properties(compiled)}


def raw_onnx(model: Path, frame: np.ndarray, config: dict, calls: int, max_s: float, parallel: int = 1) -> dict:
    import onnxruntime as ort

    so = ort.SessionOptions()
    for key in ("intra_op_num_threads", "inter_op_num_threads"):
        if config.get(key) is not None:
            setattr(so, key, int(config[key]))
    if config.get("execution_mode") is not None:
        so.execution_mode = ort.ExecutionMode(int(config["execution_mode"]))
    if config.get("graph_optimization_level") is not None:
        so.graph_optimization_level = ort.GraphOptimizationLevel(int(config["graph_optimization_level"]))
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [int(d) if isinstance(d, int) else -1 for d in inp.shape]
    if shape[2] <= 0 or shape[3] <= 0:
        raise SystemExit(f"{model}: dynamic input shape {inp.shape}; pass a static export")
    dtype = np.float16 if "float16" in inp.type else np.float32
    x = letterbox_input(frame, (shape[2], shape[3]), dtype)
    out = _time_calls(lambda: lambda: sess.run(None, {inp.name: x}), calls, max_s, parallel)
    return {**out, "input_shape": shape, "input_dtype": str(np.dtype(dtype)),
            "session_options": {"intra_op_num_threads": so.intra_op_num_threads,
                                "inter_op_num_threads": so.inter_op_num_threads}}


def decode_cost(video: Path, seconds: float) -> dict:
    """CPU seconds PyAV spends per second of ``video`` decoding its video stream (every frame)."""
    import av

    frames = 0
    last_t = 0.0
    with av.open(str(video)) as c:
        vs = c.streams.video[0]
        fps = float(vs.average_rate) if vs.average_rate else 30.0
        cpu0, t0 = time.process_time(), time.perf_counter()
        for packet in c.demux(vs):
            for frame in packet.decode():
                frames += 1
                if frame.time is not None:
                    last_t = float(frame.time)
            if frames >= seconds * fps:
                break
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    video_s = frames / fps if fps else last_t
    return {"frames": frames, "video_s": video_s, "cpu_s": cpu, "wall_s": wall,
            "cpu_s_per_video_s": cpu / video_s if video_s else None,
            "cpu_ms_per_frame": cpu * 1000.0 / frames if frames else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    raw = sub.add_parser("raw", help="time the bare runtime on an export")
    raw.add_argument("--export", type=Path, required=True)
    raw.add_argument("--backend", choices=("openvino", "onnx"), required=True)
    raw.add_argument("--video", type=Path, required=True)
    raw.add_argument("--config", default="{}", help="JSON: OpenVINO properties / ONNX Runtime session options")
    raw.add_argument("--calls", type=int, default=100)
    raw.add_argument("--parallel", type=int, default=1, help="threads calling at once, one request each (ours' streams)")
    raw.add_argument("--max-seconds", type=float, default=20.0)
    dec = sub.add_parser("decode", help="CPU cost of decoding the video")
    dec.add_argument("--video", type=Path, required=True)
    dec.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.what == "decode":
        out = decode_cost(args.video, args.seconds)
    else:
        frame = sample_frame(args.video)
        model = _model_file(args.export, args.backend)
        config = json.loads(args.config)
        fn = raw_openvino if args.backend == "openvino" else raw_onnx
        out = fn(model, frame, config, args.calls, args.max_seconds, max(1, args.parallel))
        out.update({"export": str(model), "backend": args.backend, "config": config})
        out["torch_imported"] = "torch" in sys.modules
    out["elapsed_s"] = time.perf_counter() - t0
    out["pid"] = os.getpid()
    _say(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
