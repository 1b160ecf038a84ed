#!/usr/bin/env python3
"""Train the project's own *test* detector on offline composites (no downloads, CPU only).

The model is a YOLO11n trained from scratch on images from detector_app.fixtures.scene (cat and
horse sprites made from scikit-image photographs, the astronaut as a labelled ``person``
distractor, coffee/rocket unlabelled). It knows only this fixture imagery: it exists so the tests
and the offline demo exercise a real Ultralytics model of real size. For real animals use COCO
weights (``--model yolo11n.pt`` where internet exists); see README "Real weights".

    python scripts/train_fixture_model.py --images 480 --hours 0.6 --out models/fixture-animals-yolo11n.pt

Takes ~35–45 min on 2 CPU cores. Mosaic is off: on this data it slowed convergence ~3× (field notes).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import cv2
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector_app.fixtures.scene import CLASS_NAMES, random_sample  # noqa: E402

TRAIN_SEED_BASE = 1_000_000  # far from the video seeds, so test footage is never trained on


def build_dataset(root: Path, n_train: int, n_val: int, width: int, height: int) -> Path:
    for split, n, base in (("train", n_train, TRAIN_SEED_BASE), ("val", n_val, TRAIN_SEED_BASE + 500_000)):
        img_dir = root / "images" / split
        lbl_dir = root / "labels" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        lbl_dir.mkdir(parents=True, exist_ok=True)
        for i in tqdm(range(n), desc=f"composing {split}", unit="img"):
            s = random_sample(base + i, width, height)
            # JPEG at varied quality imitates stream compression artefacts.
            q = 55 + (i * 7) % 40
            cv2.imwrite(str(img_dir / f"{i:05d}.jpg"), s.image, [cv2.IMWRITE_JPEG_QUALITY, q])
            lines = []
            for o in s.objects:
                x1, y1, x2, y2 = o.box
                cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
                bw, bh = (x2 - x1) / width, (y2 - y1) / height
                lines.append(f"{CLASS_NAMES.index(o.label)} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}")
            (lbl_dir / f"{i:05d}.txt").write_text("\n".join(lines))
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(CLASS_NAMES))
    data = root / "data.yaml"
    data.write_text(f"path: {root.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    return data


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=480, help="training composites")
    ap.add_argument("--val-images", type=int, default=80)
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--epochs", type=int, default=60, help="upper bound; --hours usually ends training first")
    ap.add_argument("--hours", type=float, default=0.6, help="training time budget (Ultralytics 'time')")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workdir", type=Path, default=Path("runs/fixture-train"))
    ap.add_argument("--out", type=Path, default=Path("models/fixture-animals-yolo11n.pt"))
    args = ap.parse_args()

    from ultralytics import YOLO

    t0 = time.time()
    data = build_dataset(args.workdir / "dataset", args.images, args.val_images, 640, 360)
    model = YOLO("yolo11n.yaml")  # architecture only: no weights are downloaded
    model.train(
        data=str(data), imgsz=args.imgsz, epochs=args.epochs, time=args.hours, batch=args.batch,
        workers=2, device="cpu", mosaic=0.0, close_mosaic=0, cache=True, amp=False, plots=False,
        project=str(args.workdir.resolve()), name="run", exist_ok=True, pretrained=False, patience=100,
        verbose=True,
    )
    best = args.workdir.resolve() / "run" / "weights" / "best.pt"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(best, args.out)
    metrics = YOLO(str(args.out)).val(data=str(data), imgsz=args.imgsz, device="cpu", plots=False, verbose=False)
    print(
        f"saved {args.out} ({args.out.stat().st_size / 1e6:.1f} MB) in {(time.time() - t0) / 60:.1f} min; "
        f"val mAP50={metrics.box.map50:.3f} P={metrics.box.mp:.3f} R={metrics.box.mr:.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
