"""The child process that does what needs Ultralytics (and so torch): download, inspect, export, quantise.

    python -m detector_app.detection.export_worker '{"op": "export", ...}'

The streaming process never imports torch (it costs ~600 MB of RSS and seconds of start-up); it runs this
once per model and caches what it made (``export_cache``). Protocol: one JSON request in ``argv[1]``; the last
stdout line is ``RESULT {json}``; on failure ``ERROR <one line>`` and exit code 1. Everything Ultralytics
prints goes to stderr, which the parent shows when something fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any


def _download(req: dict[str, Any]) -> dict[str, Any]:
    from ultralytics.utils.downloads import attempt_download_asset

    got = Path(attempt_download_asset(req["name"]))
    if not got.exists():
        raise FileNotFoundError(f"{req['name']} could not be downloaded")
    return {"path": str(got.resolve())}


def _inspect(req: dict[str, Any]) -> dict[str, Any]:
    """Training image size, whether the head has an NMS-free (one-to-one) branch, whether it was ever trained."""
    from ultralytics.nn.tasks import torch_safe_load

    ckpt, _ = torch_safe_load(req["pt"])
    raw = (ckpt.get("train_args") or {}).get("imgsz")
    model = ckpt.get("ema") or ckpt.get("model")
    if raw is None:
        model_args = getattr(model, "args", None) or {}
        raw = model_args.get("imgsz") if isinstance(model_args, dict) else None
    if isinstance(raw, (list, tuple)):
        raw = max(int(x) for x in raw)
    head = getattr(model, "model", [None])[-1] if model is not None else None
    return {
        "train_imgsz": int(raw) if raw else None,
        "end2end": bool(getattr(head, "end2end", False)),
        "task": getattr(model, "task", None),
        # Ultralytics' trainer saves its metrics in every checkpoint it writes (released weights keep them);
        # a model built from YAML and saved (architecture-true benchmark models) has none.
        "trained": bool(ckpt.get("train_metrics") or ckpt.get("train_results")),
    }


def _export(req: dict[str, Any]) -> dict[str, Any]:
    from ultralytics import YOLO

    kwargs: dict[str, Any] = {"format": req["format"], "imgsz": list(req["imgsz"]), "device": req.get("device", "cpu"),
                              "dynamic": False, "batch": 1}
    if req.get("end2end"):
        kwargs["nms"] = False  # keep the NMS-free head (YOLO26): Ultralytics' default exports the one-to-many head
    if req["format"] == "engine":
        kwargs["half"] = True
    produced = YOLO(req["pt"], task="detect").export(**kwargs)
    return {"path": str(Path(produced).resolve())}


def _quantize(req: dict[str, Any]) -> dict[str, Any]:
    from detector_app.detection.int8 import quantize_openvino

    return quantize_openvino(Path(req["fp32"]), Path(req["out_dir"]), [Path(v) for v in req["calib"]],
                             frames=int(req.get("frames", 160)))


OPS = {"download": _download, "inspect": _inspect, "export": _export, "quantize": _quantize}


def main(argv: list[str]) -> int:
    os.environ.setdefault("YOLO_VERBOSE", "False")
    os.environ.setdefault("YOLO_OFFLINE", "True")  # no update checks or telemetry from a child we started
    req = json.loads(argv[1])
    out = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = OPS[req["op"]](req)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line for the parent
        msg = " ".join(f"{type(exc).__name__}: {exc}".split())
        out.write(f"ERROR {msg[:800]}\n")
        out.flush()
        return 1
    out.write(f"RESULT {json.dumps(result)}\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
