"""One measured side of the benchmark, in its own process so its CPU time and peak RSS are its own.

    python -m detector_app.bench.worker ours --protocol rtmp --model M --out ours.json
    python -m detector_app.bench.worker baseline --url rtmp://127.0.0.1:P/live/bench --model M --out base.json

Protocol with the parent (line based, nothing else is written to stdout by us):
  - stdout ``BENCH_READY {json}`` once the model is loaded and warmed up and (ours) the listener listens;
  - stdin ``stop`` (or EOF): stop, write ``--out`` (JSON), print ``BENCH_DONE``, exit with ``os._exit``
    so no library thread (Ultralytics' stream reader, torch) can keep the process alive.

ours:     the real app path: ``open_listener`` → ``Pipeline`` (decode thread, latest-frame slot, 10 FPS
          sampler, ``Detector`` with backend auto) with ``frame_counter_probe`` reading the frame number
          drawn in each fixture frame. A 30 Hz "display" thread peeks the slot like a preview window would.
baseline: Ultralytics' own streaming: ``YOLO(pt).predict(source=url, stream=True)`` with its defaults
          (PyTorch, OpenCV's FFmpeg reader), same model, long side and confidence; the frame number is read
          from ``result.orig_img``.
"""

from __future__ import annotations

import argparse
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


# ------------------------------------------------------------------------------------------------ ours
def run_ours(args: argparse.Namespace) -> None:
    from detector_app.logs import setup_logging

    setup_logging(args.log_level)
    from detector_app.detection.detector import Detector, DetectorConfig
    from detector_app.fixtures.scene import frame_counter_probe
    from detector_app.ingest.factory import open_listener
    from detector_app.pipeline import Pipeline
    from detector_app.replay import wait_listening

    frame_size = tuple(int(v) for v in args.frame_size.lower().split("x"))
    cfg = DetectorConfig(model=args.model, conf=args.conf, imgsz=args.imgsz, backend=args.backend, device="cpu")
    det = Detector(cfg, frame_size=frame_size, progress=False)  # type: ignore[arg-type]
    det.warmup(frame_size)  # type: ignore[arg-type]

    endpoint, source = open_listener(args.protocol, port=0, bind_host="127.0.0.1", advertise="127.0.0.1")
    results: list[dict] = []

    def sink(r) -> None:
        results.append({
            "seq": r.seq, "frame_id": r.extra.get("frame_id"), "done_at": r.done_at, "received_at": r.received_at,
            "inference_ms": r.inference_ms, "n_det": len(r.detections), "n_all": r.all_detections,
        })

    pipeline = Pipeline(source, det, fps=args.fps, sinks=[sink], frame_probe=frame_counter_probe,
                        source_label=f"bench {args.protocol}")
    pipeline.start()
    display: list[list] = []
    stop_display = threading.Event()

    def display_loop() -> None:
        """A 30 Hz display: what would it draw now, and how old is that frame?

        Each tick is jittered by up to ±½ period around the 33 ms grid: an exact 30 Hz clock phase-locks to a
        30 fps stream, and the median age then only says where the phase happened to fall (1 ms in one run,
        32 ms in the next). With the jitter the samples cover all phases, as a display's vsync drifting
        against the camera clock does over time.
        """
        rng = random.Random(0)
        period = 1.0 / 30.0
        nxt = time.monotonic()
        last_version = -1
        last_fid: int | None = None
        while not stop_display.is_set():
            got = pipeline.slot.peek()
            now = time.time()
            if got is not None:
                if got.version != last_version:  # read the counter once per new frame
                    last_version, last_fid = got.version, y_plane_counter(got.item.frame)
                display.append([now, got.item.received_at, last_fid])
            nxt += period
            delay = nxt + rng.uniform(-period / 2, period / 2) - time.monotonic()
            if delay > 0:
                stop_display.wait(delay)
            else:
                nxt = time.monotonic()

    display_thread = threading.Thread(target=display_loop, name="bench-display", daemon=True)
    display_thread.start()
    try:
        wait_listening(endpoint.port, udp=args.protocol == "srt")
        imgsz = det.imgsz
        long_side = int(max(imgsz)) if isinstance(imgsz, (tuple, list)) else int(imgsz)
        _say("BENCH_READY", {
            "url": endpoint.local_publish_url, "backend": det.backend, "model": det.description,
            "imgsz": list(imgsz) if isinstance(imgsz, (tuple, list)) else imgsz, "long_side": long_side,
            "pid": os.getpid(), "usage": _usage(),
        })
        _wait_for_stop()
    finally:
        stop_display.set()
        h = pipeline.health()
        pipeline.stop(timeout=5.0)
        display_thread.join(1.0)
    _finish(args.out, {
        "side": "ours", "protocol": args.protocol, "model": det.description, "backend": det.backend,
        "imgsz": list(det.imgsz) if isinstance(det.imgsz, (tuple, list)) else det.imgsz,
        "results": results, "display": display,
        "frames_decoded": h.frames_decoded, "sessions": h.publisher_sessions,
        "slot_overwritten": pipeline.slot.overwritten,
        "error": str(pipeline.fatal_error) if pipeline.fatal_error else None,
    })


# -------------------------------------------------------------------------------------------- baseline
def run_baseline(args: argparse.Namespace) -> None:
    os.environ.setdefault("YOLO_VERBOSE", "False")
    from ultralytics import YOLO

    from detector_app.detection.detector import locate_model
    from detector_app.fixtures.scene import read_barcode

    frame_size = tuple(int(v) for v in args.frame_size.lower().split("x"))
    model = YOLO(locate_model(args.model))
    blank = np.zeros((frame_size[1], frame_size[0], 3), np.uint8)
    for _ in range(2):
        model.predict(blank, imgsz=args.imgsz, conf=args.conf, verbose=False)

    results: list[dict] = []
    state: dict = {"error": None}
    stop = threading.Event()
    main_done = threading.Event()

    def control() -> None:
        _wait_for_stop()
        stop.set()
        main_done.wait(5.0)  # the loop notices at its next result; a blocked reader is abandoned
        _finish(args.out, {
            "side": "baseline", "protocol": "rtmp", "model": f"{Path(args.model).name} (ultralytics pytorch)",
            "backend": "pytorch", "imgsz": args.imgsz, "results": results, "display": [], "frames_decoded": None,
            "error": state["error"],
        })

    threading.Thread(target=control, name="bench-control", daemon=True).start()
    _say("BENCH_READY", {"url": args.url, "backend": "pytorch", "model": Path(args.model).name,
                         "imgsz": args.imgsz, "long_side": args.imgsz, "pid": os.getpid(), "usage": _usage()})
    seq = 0
    try:
        for r in model.predict(source=args.url, stream=True, imgsz=args.imgsz, conf=args.conf, verbose=False):
            done = time.time()
            seq += 1
            sp = r.speed or {}
            results.append({
                "seq": seq, "frame_id": read_barcode(r.orig_img), "done_at": done, "received_at": None,
                "inference_ms": sum(v for v in sp.values() if v is not None),
                "model_ms": sp.get("inference"), "n_det": len(r.boxes) if r.boxes is not None else 0,
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
    ap.add_argument("--protocol", default="rtmp", choices=("rtmp", "srt"))
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--fps", type=float, default=10.0)
    ap.add_argument("--url", default=None, help="baseline: the stream URL to pull")
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
