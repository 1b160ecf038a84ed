#!/usr/bin/env python3
"""Build architecture-true ``yolo11n`` / ``yolo26n`` checkpoints offline, for real-size benchmarks.

    .venv/bin/python scripts/make_arch_model.py            # models/arch/yolo11n.pt and yolo26n.pt
    .venv/bin/python scripts/make_arch_model.py yolo11n --check

Why: the real ``yolo11n.pt`` needs internet; a model built from Ultralytics' own YAML with COCO's 80 class
names has exactly the same layers, input size (640) and compute, so every speed and memory figure is the
real one. Its weights are random: scores stay below ~2e-4, so a benchmark must use a very low confidence
(``--conf 1e-4``, see docs/performance.md) for boxes to reach NMS and post-processing. Never use these
for detection. ``models/arch/`` is git-ignored; making both takes seconds.

``--check`` also loads each saved file with ``YOLO(path)`` and exports it to OpenVINO (into a temp dir),
so a broken checkpoint fails here rather than inside a benchmark.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "models" / "arch"
ARCHS = ("yolo11n", "yolo26n")


def coco_names() -> dict[int, str]:
    """COCO's 80 names from the YAML that ships inside Ultralytics (offline)."""
    import ultralytics
    import yaml

    path = Path(ultralytics.__file__).parent / "cfg" / "datasets" / "coco.yaml"
    names = yaml.safe_load(path.read_text())["names"]
    names = dict(names) if isinstance(names, dict) else dict(enumerate(names))
    if len(names) != 80:
        raise SystemExit(f"{path}: expected 80 COCO names, found {len(names)}")
    return {int(k): str(v) for k, v in names.items()}


def make(arch: str, out_dir: Path = OUT_DIR, seed: int = 0) -> Path:
    """Build ``arch`` from its YAML (random weights, seeded), set COCO names, save as ``out_dir/<arch>.pt``."""
    import torch
    from ultralytics import YOLO

    torch.manual_seed(seed)
    yolo = YOLO(f"{arch}.yaml")  # bundled YAML: no download
    net = yolo.model
    net.names = coco_names()
    net.yaml["nc"] = len(net.names)
    net.args = {"imgsz": 640, "task": "detect"}
    if net.yaml.get("end2end") and not getattr(net, "end2end", False):
        # A head built from YAML does not select its one-to-one branch; released YOLO26 weights do (NMS-free).
        net.end2end = True
    ckpt = {
        "model": net,  # fp32 (Ultralytics' releases are fp16; it loads both as fp32 for CPU inference)
        "train_args": {"imgsz": 640, "task": "detect"},
        "epoch": -1,
        "date": None,
        "version": __import__("ultralytics").__version__,
        "docs": f"architecture-true {arch}, RANDOM weights (scripts/make_arch_model.py): speed benchmarks only",
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{arch}.pt"
    tmp = path.with_suffix(".pt.tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)
    return path


def check(path: Path) -> str:
    """Load with ``YOLO(path)``, predict once, export to OpenVINO in a temp dir; returns a one-line summary."""
    import numpy as np
    from ultralytics import YOLO

    yolo = YOLO(str(path))
    if len(yolo.names) != 80 or yolo.names[15] != "cat":
        raise SystemExit(f"{path}: wrong class names after loading ({len(yolo.names)} names)")
    frame = np.full((720, 1280, 3), 114, np.uint8)
    r = yolo.predict(frame, imgsz=640, conf=1e-6, verbose=False)[0]
    top = float(r.boxes.conf.max()) if r.boxes is not None and len(r.boxes) else 0.0
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / path.name
        src.write_bytes(path.read_bytes())  # export writes next to the model: keep models/arch clean
        out = YOLO(str(src)).export(format="openvino", imgsz=(384, 640), verbose=False)
        xml = list(Path(out).glob("*.xml"))
        if not xml:
            raise SystemExit(f"{path}: OpenVINO export produced no .xml in {out}")
    params = sum(p.numel() for p in yolo.model.parameters())
    return f"{path.name}: {params / 1e6:.2f} M parameters, 80 COCO names, top score {top:.2e}, OpenVINO export OK"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("archs", nargs="*", metavar="ARCH", help=f"which to build: {', '.join(ARCHS)} (default: both)")
    ap.add_argument("--out-dir", type=Path, default=OUT_DIR)
    ap.add_argument("--check", action="store_true", help="also load each with YOLO() and export it to OpenVINO")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.archs) - set(ARCHS))
    if unknown:
        ap.error(f"unknown architecture(s): {', '.join(unknown)} (choose from {', '.join(ARCHS)})")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    for arch in args.archs or ARCHS:
        path = make(arch, args.out_dir)
        print(f"wrote {path}")
        if args.check:
            print(check(path))
    print("benchmark with e.g.: detector-app bench --model models/arch/yolo11n.pt --conf 1e-4 --duration 60")
    return 0


if __name__ == "__main__":
    sys.exit(main())
