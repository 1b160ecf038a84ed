#!/usr/bin/env python3
"""Measure ms per ``model(frame)`` call for each available backend at the stream-aspect input size.

Why: the backend choice in detector_app.detection.backends rests on these numbers (field notes); re-measure on
the target machine. Each backend runs with torch threads as Ultralytics leaves them ("off": 1 thread on a 2-core
box) and after ``configure_torch_threads()`` ("on").

    python scripts/bench_backends.py --model models/fixture-animals-yolo11n.pt --frame-size 1280x720 --imgsz 640
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector_app.detection.backends import (
    available_backends,
    configure_torch_threads,
    inference_precision,
    prefer_passive_omp_wait,
    resolve_model,
    stream_imgsz,
)


def test_frame(width: int, height: int) -> np.ndarray:
    """A rendered fixture frame with a cat (BGR), resized to the stream size; noise if fixtures are unavailable."""
    try:
        import cv2

        from detector_app.fixtures.scene import render_frame
        from detector_app.fixtures.video import CATALOGUE

        frame, _ = render_frame(CATALOGUE["cat_720p30"], 120)
        return cv2.resize(frame, (width, height)) if frame.shape[:2] != (height, width) else frame
    except Exception:  # noqa: BLE001 - any failure: fall back to noise
        return np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)


def time_calls(yolo, frame: np.ndarray, imgsz, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        yolo(frame, imgsz=imgsz, verbose=False)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/fixture-animals-yolo11n.pt")
    ap.add_argument("--frame-size", default="1280x720", help="stream WIDTHxHEIGHT")
    ap.add_argument("--imgsz", type=int, default=None, help="network long side (default: the model's training size)")
    ap.add_argument("--backends", default=None, help="comma list (default: every available of pytorch,onnx,openvino)")
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--cache-dir", type=Path, default=Path("models/cache"))
    ap.add_argument("--passive", action="store_true", help="set OMP_WAIT_POLICY=PASSIVE before torch loads")
    args = ap.parse_args()

    if args.passive:
        prefer_passive_omp_wait()

    from loguru import logger
    from ultralytics import YOLO

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    w, h = (int(v) for v in args.frame_size.lower().split("x"))
    frame = test_frame(w, h)
    avail = available_backends()
    wanted = args.backends.split(",") if args.backends else [b for b in ("pytorch", "onnx", "openvino") if avail[b]]

    rows = []
    for backend in wanted:
        r = resolve_model(args.model, backend=backend, imgsz=args.imgsz, frame_size=(w, h), cache_dir=args.cache_dir)
        yolo = YOLO(r.path, task="detect")
        t0 = time.perf_counter()
        yolo(frame, imgsz=r.imgsz, verbose=False)  # first call: Ultralytics setup + runtime compile, pins torch threads
        first_ms = (time.perf_counter() - t0) * 1000
        prec = inference_precision(yolo) or "?"
        net = yolo.predictor.imgsz if yolo.predictor is not None else r.imgsz
        import torch

        # Interleave blocks of "off" and "on" so a neighbour's load spike does not land on one setting only.
        ms: dict[bool, list[float]] = {False: [], True: []}
        threads = {False: torch.get_num_threads(), True: 0}
        for fix in (False, True):
            if fix:
                configure_torch_threads()
            else:
                torch.set_num_threads(threads[False])
            time_calls(yolo, frame, r.imgsz, args.warmup)
        block = 5
        for start in range(0, args.calls, block):
            for fix in (False, True) if (start // block) % 2 == 0 else (True, False):
                if fix:
                    configure_torch_threads()
                    threads[True] = torch.get_num_threads()
                else:
                    torch.set_num_threads(threads[False])  # Ultralytics' choice after the first predict
                ms[fix] += time_calls(yolo, frame, r.imgsz, min(block, args.calls - start))
        if backend == "pytorch":  # dynamic input: Ultralytics letterboxes to the minimal stride-32 rectangle
            net = stream_imgsz((w, h), int(r.imgsz))
        label = f"{net[0]}x{net[1]}"
        for fix in (False, True):
            q = statistics.quantiles(ms[fix], n=20)
            rows.append((backend, label, prec, f"{'on' if fix else 'off'} ({threads[fix]})",
                         statistics.median(ms[fix]), q[18], first_ms))
            print(f"  {backend:9s} thread fix {'on ' if fix else 'off'}: p50 {statistics.median(ms[fix]):6.1f} ms", file=sys.stderr)
        torch.set_num_threads(1)  # let the next backend start from Ultralytics' state again
        del yolo

    omp = os.environ.get("OMP_WAIT_POLICY", "default (active)")
    print(f"\nmodel {args.model}, frame {w}x{h}, OMP_WAIT_POLICY {omp}, {args.calls} calls after {args.warmup} warm-up (ms per call)")
    print(f"{'backend':10s} {'input':>9s} {'precision':>10s} {'torch threads':>14s} {'p50':>7s} {'p95':>7s} {'first call':>11s}")
    for b, net, prec, thr, p50, p95, first in rows:
        print(f"{b:10s} {net:>9s} {prec:>10s} {thr:>14s} {p50:7.1f} {p95:7.1f} {first:11.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
