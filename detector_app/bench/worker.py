"""One measured side of the benchmark, in its own process so its CPU time and peak RSS are its own.

    python -m detector_app.bench.worker ours --protocol rtmp --model M --streams 3 --out ours.json
    python -m detector_app.bench.worker baseline --url rtmp://127.0.0.1:P/live/bench --model M --out base.json

Protocol with the parent (line based, nothing else is written to stdout by us):
  - stdout ``BENCH_READY {json}`` once the model is loaded and warmed up and (ours) the listeners listen
    (ours also says which export it loaded and how its runtime was compiled, for the raw-cost child);
  - stdin ``stop`` (or EOF): stop, write ``--out`` (JSON), print ``BENCH_DONE``, exit with ``os._exit``
    so no library thread (Ultralytics' stream reader, torch) can keep the process alive.

ours:     the real app path, ``--streams N`` times in one process: N × (``open_listener`` → ``Pipeline``:
          decode thread, latest-frame slot, 10 FPS sampler) sharing ONE ``Detector`` (as ``serve`` shares it
          between wearers), with ``frame_counter_probe`` reading the frame number drawn in each fixture
          frame. A 30 Hz "display" thread peeks every slot like a preview window would. ``--protocol
          managed``: each stream pulls the relay's WHEP URL (``--playback-url``) instead of listening.
baseline: Ultralytics' own streaming: ``YOLO(pt).predict(source=url, stream=True)`` with its defaults
          (PyTorch, OpenCV's FFmpeg reader), same model, long side, confidence and NMS IoU as ours (so both
          sides post-process the same boxes); the frame number is read
          from ``result.orig_img``. Always one stream.

Both record ``process_facts()`` (threads, whether torch/ultralytics are imported, libtorch mapped) when
told to stop, while everything is still running.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np

_stdout_lock = threading.Lock()


def _say(tag: str, payload: dict | None = None) -> None:
    with _stdout_lock:
        sys.__stdout__.write(f"{tag} {json.dumps(payload or {})}\n")
        sys.__stdout__.flush()


def vm_hwm_kb(pid: int | str = "self") -> int | None:
    """Peak resident set size (VmHWM) in kB from /proc, None where there is no /proc."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _usage() -> dict:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"utime": ru.ru_utime, "stime": ru.ru_stime, "maxrss_kb": ru.ru_maxrss, "vm_hwm_kb": vm_hwm_kb()}


def _wait_for_stop() -> None:
    """Block until the parent writes ``stop`` or closes our stdin."""
    for line in sys.stdin:
        if line.strip() == "stop":
            return


def _finish(out: Path, payload: dict) -> None:
    payload["usage"] = _usage()
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, out)
    _say("BENCH_DONE", {"out": str(out)})
    sys.stderr.flush()
    os._exit(0)


def y_plane_counter(frame) -> int | None:
    """The fixture frame counter read from an ``av.VideoFrame``'s luma plane (no BGR conversion: ~50 µs)."""
    from detector_app.fixtures.scene import read_barcode

    try:
        plane = frame.planes[0]
        y = np.frombuffer(plane, dtype=np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]
        return read_barcode(y)
    except Exception:  # noqa: BLE001 - odd pixel formats: just no id for this sample
        return None


# ------------------------------------------------------------------------------------------- introspection
def find_runtimes(root: object, max_depth: int = 9, max_nodes: int = 20000) -> list[object]:
    """The OpenVINO ``CompiledModel`` / ``InferRequest`` and ONNX Runtime ``InferenceSession`` objects reachable
    from ``root``.

    Walks attributes, slots, lists, deques (``queue.Queue``) and dicts breadth-first; imports nothing (a runtime
    that is not in ``sys.modules`` cannot be in use). Why: the raw-cost child must compile the export exactly as
    our detector did, whatever the detector's internals are (Ultralytics' AutoBackend, or a lean runner).
    """
    kinds = tuple(
        cls for mod, name in (("openvino", "CompiledModel"), ("openvino", "InferRequest"),
                              ("onnxruntime", "InferenceSession"))
        if (cls := getattr(sys.modules.get(mod), name, None)) is not None
    )
    if not kinds:
        return []
    found: list[object] = []
    seen: set[int] = set()
    level = [root]
    for _ in range(max_depth + 1):
        nxt: list[object] = []
        for obj in level:
            if id(obj) in seen or len(seen) > max_nodes:
                continue
            seen.add(id(obj))
            if isinstance(obj, kinds):
                found.append(obj)
                continue
            if isinstance(obj, (str, bytes, int, float, bool, np.ndarray)) or obj is None:
                continue
            if isinstance(obj, dict):
                nxt.extend(obj.values())
            elif isinstance(obj, (list, tuple, set, frozenset, collections.deque)):
                nxt.extend(obj)
            else:
                d = getattr(obj, "__dict__", None)
                if isinstance(d, dict):
                    nxt.extend(v for k, v in d.items() if k not in ("_modules", "_parameters", "_buffers"))
                for cls in type(obj).__mro__:
                    for slot in getattr(cls, "__slots__", ()) or ():
                        nxt.append(getattr(obj, slot, None))
        level = nxt
    return found


def runtime_config(det) -> dict:
    """How our detector compiled its export: every distinct OpenVINO property set (latency and throughput shapes
    when both exist) or ONNX Runtime session options. ``configs[i]["requests"]``: parallel requests of that shape."""
    found = find_runtimes(det)
    if not found:
        return {"kind": None, "configs": []}
    if type(found[0]).__module__.startswith("openvino"):
        from detector_app.bench.floor import ov_properties

        configs: dict[str, dict] = {}
        for obj in found:
            compiled = obj.get_compiled_model() if hasattr(obj, "get_compiled_model") else obj
            props = ov_properties(compiled)
            key = json.dumps(props, sort_keys=True)
            entry = configs.setdefault(key, {"config": props, "requests": 0})
            entry["requests"] += 1 if hasattr(obj, "get_compiled_model") else 0
        return {"kind": "openvino", "configs": list(configs.values())}
    sessions = {id(o): o for o in found}.values()
    out = []
    for sess in sessions:
        so = sess.get_session_options()
        out.append({"config": {
            "intra_op_num_threads": so.intra_op_num_threads, "inter_op_num_threads": so.inter_op_num_threads,
            "execution_mode": int(so.execution_mode), "graph_optimization_level": int(so.graph_optimization_level)},
            "requests": sum(1 for o in found if o is sess)})
    return {"kind": "onnx", "configs": out}


def pick_runtime_config(runtime: dict, streams: int) -> tuple[dict, int]:
    """The compiled shape our streams used and how many run in parallel: one stream → the fewest-streams
    (latency) shape, one request; several → the most-streams (throughput) shape, min(streams, its streams);
    ONNX Runtime: single-threaded sessions one per core."""
    configs = runtime.get("configs") or []
    if not configs:
        return {}, 1
    if runtime.get("kind") == "openvino":
        def width(c: dict) -> int:
            return int(c["config"].get("NUM_STREAMS", 1) or 1)
    else:
        def width(c: dict) -> int:
            return -int(c["config"].get("intra_op_num_threads", 0) or 0)  # fewer threads each = throughput shape
    ranked = sorted(configs, key=width)
    if streams <= 1:
        return ranked[0]["config"], 1
    best = ranked[-1]
    if runtime.get("kind") == "openvino":
        parallel = max(1, width(best))
    else:  # one ONNX session may run concurrently; single-threaded sessions are meant to run one per core
        threads = int(best["config"].get("intra_op_num_threads", 0) or 0)
        parallel = (os.cpu_count() or 1) if 0 < threads <= 1 else 1
    return best["config"], min(streams, parallel)


def process_facts() -> dict:
    """What an outside observer would read from /proc and sys.modules: threads, heavy imports, mapped libraries."""
    threads = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Threads:"):
                threads = int(line.split()[1])
    except OSError:
        pass
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        maps = ""
    return {
        "threads": threads, "python_threads": threading.active_count(),
        "torch_imported": "torch" in sys.modules, "ultralytics_imported": "ultralytics" in sys.modules,
        "libtorch_mapped": "libtorch" in maps if maps else None,
    }


# ------------------------------------------------------------------------------------------------ ours
def make_detector_config(args: argparse.Namespace):
    """Our ``DetectorConfig`` as the app builds it for these options."""
    from detector_app.detection.detector import DetectorConfig

    return DetectorConfig(model=args.model, conf=args.conf, imgsz=args.imgsz, backend=args.backend, device="cpu",
                          precision=args.precision, inference_url=args.inference_url)


def run_ours(args: argparse.Namespace) -> None:
    from detector_app.logs import setup_logging

    setup_logging(args.log_level)
    from detector_app.detection.detector import Detector
    from detector_app.fixtures.scene import frame_counter_probe
    from detector_app.ingest.addresses import wait_listening
    from detector_app.ingest.factory import open_listener
    from detector_app.ingest.managed import open_playback_source
    from detector_app.pipeline import Pipeline

    frame_size = tuple(int(v) for v in args.frame_size.lower().split("x"))
    det = Detector(make_detector_config(args), frame_size=frame_size, progress=False)  # type: ignore[arg-type]
    det.warmup(frame_size, streams=args.streams)  # type: ignore[arg-type]  # several streams: both shapes now

    results: list[dict] = []  # list.append is atomic: every pipeline's inference thread appends here
    endpoints, pipelines = [], []
    if args.protocol == "managed" and len(args.playback_url or []) != args.streams:
        raise SystemExit(f"--protocol managed needs one --playback-url per stream ({args.streams})")
    for i in range(args.streams):
        if args.protocol == "managed":  # we pull the relay's WHEP URL (no HLS fallback: WebRTC is measured)
            endpoint, source = None, open_playback_source(args.playback_url[i], None)
        else:
            endpoint, source = open_listener(args.protocol, port=0, bind_host="127.0.0.1", advertise="127.0.0.1",
                                             for_glasses=False)

        def sink(r, i: int = i) -> None:
            results.append({
                "stream": i, "seq": r.seq, "frame_id": r.extra.get("frame_id"), "done_at": r.done_at,
                "received_at": r.received_at, "inference_ms": r.inference_ms, "n_det": len(r.detections),
                "n_all": r.all_detections,
            })

        if endpoint is not None:
            endpoints.append(endpoint)
        pipelines.append(Pipeline(source, det, fps=args.fps, sinks=[sink], frame_probe=frame_counter_probe,
                                  source_label=f"bench {args.protocol} #{i}"))
    for p in pipelines:
        p.start()
    display: list[list] = []
    stop_display = threading.Event()

    def display_loop() -> None:
        """A 30 Hz display per stream: what would it draw now, and how old is that frame?

        Each tick is jittered by up to ±½ period around the 33 ms grid: an exact 30 Hz clock phase-locks to a
        30 fps stream, and the median age then only says where the phase happened to fall (1 ms in one run,
        32 ms in the next). With the jitter the samples cover all phases, as a display's vsync drifting
        against the camera clock does over time.
        """
        rng = random.Random(0)
        period = 1.0 / 30.0
        nxt = time.monotonic()
        last_version = [-1] * len(pipelines)
        last_fid: list[int | None] = [None] * len(pipelines)
        while not stop_display.is_set():
            for i, p in enumerate(pipelines):
                got = p.slot.peek()
                now = time.time()
                if got is not None:
                    if got.version != last_version[i]:  # read the counter once per new frame
                        last_version[i], last_fid[i] = got.version, y_plane_counter(got.item.frame)
                    display.append([now, got.item.received_at, last_fid[i], i])
            nxt += period
            delay = nxt + rng.uniform(-period / 2, period / 2) - time.monotonic()
            if delay > 0:
                stop_display.wait(delay)
            else:
                nxt = time.monotonic()

    display_thread = threading.Thread(target=display_loop, name="bench-display", daemon=True)
    display_thread.start()
    facts: dict = {}
    try:
        for ep in endpoints:
            wait_listening(ep.port, udp=args.protocol == "srt")
        imgsz = det.imgsz
        long_side = int(max(imgsz)) if isinstance(imgsz, (tuple, list)) else int(imgsz)
        resolved = getattr(det, "resolved", None)
        _say("BENCH_READY", {
            "urls": [ep.local_publish_url for ep in endpoints] or list(args.playback_url or []), "backend": det.backend, "model": det.description,
            "imgsz": list(imgsz) if isinstance(imgsz, (tuple, list)) else imgsz, "long_side": long_side,
            "export": getattr(resolved, "path", None), "runtime": runtime_config(det),
            "precision": getattr(det.cfg, "precision", None), "pid": os.getpid(), "usage": _usage(),
            "facts": process_facts(),
        })
        _wait_for_stop()
        facts = process_facts()  # while every stream's threads are still running
        facts["runtime"] = runtime_config(det)  # several streams may have compiled a throughput shape by now
    finally:
        stop_display.set()
        healths = [p.health() for p in pipelines]
        for p in pipelines:
            p.stop(timeout=5.0)
        display_thread.join(1.0)
    errors = [f"stream {i}: {p.fatal_error}" for i, p in enumerate(pipelines) if p.fatal_error]
    _finish(args.out, {
        "side": "ours", "protocol": args.protocol, "model": det.description, "backend": det.backend,
        "imgsz": list(det.imgsz) if isinstance(det.imgsz, (tuple, list)) else det.imgsz, "streams": args.streams,
        "results": results, "display": display,
        "frames_decoded": [h.frames_decoded for h in healths], "sessions": [h.publisher_sessions for h in healths],
        "slot_overwritten": [p.slot.overwritten for p in pipelines], "facts": facts,
        "error": "; ".join(errors) or None,
    })


# -------------------------------------------------------------------------------------------- baseline
def run_baseline(args: argparse.Namespace) -> None:
    os.environ.setdefault("YOLO_VERBOSE", "False")
    from ultralytics import YOLO

    from detector_app.detection.detector import DetectorConfig, locate_model
    from detector_app.fixtures.scene import read_barcode

    iou = DetectorConfig().iou  # ours' NMS IoU (Ultralytics' own default is 0.7)
    frame_size = tuple(int(v) for v in args.frame_size.lower().split("x"))
    model = YOLO(locate_model(args.model))
    blank = np.zeros((frame_size[1], frame_size[0], 3), np.uint8)
    for _ in range(2):
        model.predict(blank, imgsz=args.imgsz, conf=args.conf, iou=iou, verbose=False)

    results: list[dict] = []
    state: dict = {"error": None}
    stop = threading.Event()
    main_done = threading.Event()

    facts: dict = {}

    def control() -> None:
        _wait_for_stop()
        facts.update(process_facts())
        stop.set()
        main_done.wait(5.0)  # the loop notices at its next result; a blocked reader is abandoned
        _finish(args.out, {
            "side": "baseline", "protocol": "rtmp", "model": f"{Path(args.model).name} (ultralytics pytorch)",
            "backend": "pytorch", "imgsz": args.imgsz, "results": results, "display": [], "frames_decoded": None,
            "facts": facts, "error": state["error"],
        })

    threading.Thread(target=control, name="bench-control", daemon=True).start()
    _say("BENCH_READY", {"url": args.url, "backend": "pytorch", "model": Path(args.model).name,
                         "imgsz": args.imgsz, "long_side": args.imgsz, "pid": os.getpid(), "usage": _usage()})
    seq = 0
    try:
        for r in model.predict(source=args.url, stream=True, imgsz=args.imgsz, conf=args.conf, iou=iou, verbose=False):
            done = time.time()
            seq += 1
            sp = r.speed or {}
            results.append({
                "seq": seq, "frame_id": read_barcode(r.orig_img), "done_at": done, "received_at": None,
                "inference_ms": sum(v for v in sp.values() if v is not None),
                "model_ms": sp.get("inference"), "n_det": len(r.boxes) if r.boxes is not None else 0,
                "n_all": len(r.boxes) if r.boxes is not None else 0,
            })
            if stop.is_set():
                break
    except Exception as exc:  # noqa: BLE001 - report it in the results, the parent decides
        state["error"] = f"{type(exc).__name__}: {exc}"
        print(f"baseline failed: {state['error']}", file=sys.stderr)
    finally:
        main_done.set()
    threading.Event().wait()  # the control thread exits the process


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("side", choices=("ours", "baseline"))
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--conf", type=float, default=0.35)
    ap.add_argument("--imgsz", type=int, default=None, help="network input long side (baseline: required)")
    ap.add_argument("--frame-size", default="1280x720")
    ap.add_argument("--protocol", default="rtmp", choices=("rtmp", "srt", "whip", "managed"))
    ap.add_argument("--playback-url", action="append", help="ours, managed: a stream's WHEP URL to pull (once per stream)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--fps", type=float, default=10.0)
    ap.add_argument("--streams", type=int, default=1, help="ours: concurrent sessions sharing one Detector")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "int8"))
    ap.add_argument("--url", default=None, help="baseline: the stream URL to pull")
    ap.add_argument("--inference-url", default=None, help="ours: infer on this Triton server")
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    if args.side == "ours":
        run_ours(args)
    else:
        if not args.url or not args.imgsz:
            ap.error("baseline needs --url and --imgsz")
        run_baseline(args)


if __name__ == "__main__":
    main()
