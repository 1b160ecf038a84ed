"""The lean, torch-free path on real exports: same boxes as Ultralytics, no torch, parallel streams, INT8.

Exports go to the project's cache (``models/cache``), shared with the end-to-end tests, so each is made once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from detector_app.detection.engines import open_engine
from detector_app.detection.resolve import resolve_model, validate_int8
from detector_app.detection.tuning import Lane
from detector_app.detection.yolo_io import decode, letterbox

from .conftest import in_threads

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "fixture-animals-yolo11n.pt"
CACHE = REPO / "models" / "cache"
CONF, IOU = 0.25, 0.5


def _frames(video: Path, every: int, limit: int) -> list[np.ndarray]:
    import av

    out = []
    with av.open(str(video)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i % every == 0:
                out.append(f.to_ndarray(format="bgr24"))
            if len(out) >= limit:
                break
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 1.0


def _assert_same_as_ultralytics(export: str, frames: list[np.ndarray], conf: float) -> int:
    """Lean detections equal ``YOLO(export).predict``'s: same count and labels, IoU ≥ 0.99, conf within 0.01."""
    from ultralytics import YOLO

    eng = open_engine(export)
    ref = YOLO(export, task="detect")
    boxes = 0
    for k, frame in enumerate(frames):
        blob, lb = letterbox(frame, eng.info.input_hw)
        ours = decode(eng.infer(blob), lb, conf, IOU, eng.info.end2end or None)
        r = ref.predict(frame, conf=conf, iou=IOU, imgsz=list(eng.info.input_hw), verbose=False)[0]
        theirs_xyxy, theirs_conf = r.boxes.xyxy.numpy(), r.boxes.conf.numpy()
        theirs_cls = r.boxes.cls.numpy().astype(int)
        assert len(ours) == len(theirs_conf), f"frame {k}: {len(ours)} boxes vs Ultralytics' {len(theirs_conf)}"
        assert sorted(ours.class_id.tolist()) == sorted(theirs_cls.tolist()), f"frame {k}: labels differ"
        for box, c, cls in zip(ours.xyxy, ours.confidence, ours.class_id, strict=True):
            cands = [(i, _iou(box, tb)) for i, tb in enumerate(theirs_xyxy) if theirs_cls[i] == cls]
            i, best = max(cands, key=lambda t: t[1])
            assert best >= 0.99, f"frame {k}: box {box} best IoU {best:.3f} against Ultralytics"
            assert abs(float(c) - float(theirs_conf[i])) <= 0.01
        boxes += len(ours)
    return boxes


@pytest.fixture(scope="module")
def exports(fixture_videos) -> dict[str, str]:
    """OpenVINO fp32 + INT8 and ONNX exports of the test model at a 1280×720 stream's aspect."""
    out = {}
    for backend in ("openvino", "onnx"):
        r = resolve_model(str(MODEL), backend=backend, frame_size=(1280, 720), cache_dir=CACHE, progress=False,
                          precision="fp32")
        out[backend] = r.path
    q = resolve_model(str(MODEL), backend="openvino", frame_size=(1280, 720), cache_dir=CACHE, progress=False,
                      precision="int8")
    out["openvino-int8"] = q.path
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["openvino", "onnx", "openvino-int8"])
def test_lean_matches_ultralytics_on_the_same_export(exports, fixture_videos, kind):
    frames = _frames(fixture_videos["cat_720p30"], 15, 14) + _frames(fixture_videos["cat_horse_720p30"], 20, 10)
    boxes = _assert_same_as_ultralytics(exports[kind], frames, CONF)
    assert boxes >= 10, "the test model should find the fixture animals in these frames"


@pytest.mark.slow
def test_lean_decodes_yolo26_end_to_end_output(tmp_path, fixture_videos):
    """An architecture-true YOLO26n (random weights) exports its NMS-free head; lean reads its (1, 300, 6) output."""
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_arch_model.py"), "yolo26n", "--out-dir",
                    str(tmp_path)], check=True, capture_output=True, timeout=300)
    r = resolve_model(str(tmp_path / "yolo26n.pt"), backend="openvino", frame_size=(1280, 720), cache_dir=tmp_path / "c",
                      progress=False, precision="fp32")
    assert r.end2end and r.imgsz == (384, 640)
    eng = open_engine(r.path)
    blob, _ = letterbox(np.zeros((720, 1280, 3), np.uint8), eng.info.input_hw)
    assert eng.info.end2end and eng.infer(blob).shape[-1] == 6 and len(eng.info.names) == 80
    # Random scores stay below ~2e-4: a tiny threshold makes boxes to compare.
    assert _assert_same_as_ultralytics(r.path, _frames(fixture_videos["cat_720p30"], 30, 4), 1e-5) > 0


@pytest.mark.slow
def test_a_lean_run_never_imports_torch(tmp_path, fixture_videos, exports):
    """``detect`` on a .pt resolves to the cached export and runs without torch or Ultralytics in the process."""
    out = tmp_path / "r.jsonl"
    code = (
        "import sys, json\n"
        "from detector_app.cli import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    rc = e.code\n"
        "status = dict(l.split(':', 1) for l in open('/proc/self/status'))\n"
        "print('LEAN ' + json.dumps({'rc': rc, 'torch': 'torch' in sys.modules, 'ultralytics': 'ultralytics' in sys.modules,"
        " 'hwm_kb': int(status['VmHWM'].split()[0])}))\n"
    )
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-c", code, "detect", str(fixture_videos["cat_480p15"]), "--model", str(MODEL), "--headless",
         "--feed-port", "0", "--out", str(out), "--backend", "openvino"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    wall = time.monotonic() - t0
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("LEAN ")), None)
    assert line, p.stdout[-2000:] + p.stderr[-2000:]
    got = json.loads(line[5:])
    assert got["rc"] in (0, None) and not got["torch"] and not got["ultralytics"], got
    results = [json.loads(ln) for ln in out.read_text().splitlines() if ln.strip()]
    assert len(results) >= 20 and any(r["detections"] for r in results)
    assert got["hwm_kb"] < 450_000, f"peak RSS {got['hwm_kb'] / 1024:.0f} MB for a lean run"
    assert wall < 60


@pytest.mark.slow
def test_a_cold_cache_exports_in_a_child_and_stays_torch_free(tmp_path):
    """First use of a .pt: checkpoint facts and the export come from the child; this process never imports torch."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from detector_app.detection.detector import Detector, DetectorConfig\n"
        f"d = Detector(DetectorConfig(model={str(MODEL)!r}, cache_dir=Path({str(tmp_path)!r}), precision='fp32'),"
        " frame_size=(854, 480), progress=False)\n"
        "d.warmup((854, 480))\n"
        "print('COLD', d.backend, d.resolved.exported, 'torch' in sys.modules, 'ultralytics' in sys.modules)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("COLD ")), "")
    assert line == "COLD openvino True False False", p.stdout[-1500:] + p.stderr[-1500:]


def test_streams_infer_in_parallel_not_behind_one_lock(exports):
    """Two threads calling one engine get the throughput shape and are inside the runtime at the same time."""
    eng = open_engine(exports["openvino"], cores=2)
    blob, _ = letterbox(np.zeros((720, 1280, 3), np.uint8), eng.info.input_hw)
    inside, overlap = [0], [0]
    lock = threading.Lock()
    run = eng._run

    def traced(slot, b):
        with lock:
            inside[0] += 1
            overlap[0] = max(overlap[0], inside[0])
        try:
            time.sleep(0.01)  # widen the window a little; the runtime call itself releases the GIL
            return run(slot, b)
        finally:
            with lock:
                inside[0] -= 1

    eng._run = traced  # type: ignore[method-assign]

    def stream() -> None:
        for _ in range(15):
            eng.infer(blob)

    in_threads(stream, 2)
    assert eng.calls[Lane.THROUGHPUT] > 0 and overlap[0] == 2, (eng.calls, overlap)
    latency_before = eng.calls[Lane.LATENCY]
    eng.infer(blob)  # the two stream threads ended: a lone caller is back on all cores at once
    assert eng.calls[Lane.LATENCY] == latency_before + 1
    solo = open_engine(exports["openvino"], cores=2)
    for _ in range(3):
        solo.infer(blob)
    assert solo.calls == {Lane.LATENCY: 3, Lane.THROUGHPUT: 0}  # one stream: all cores on one request


@pytest.mark.slow
def test_int8_is_within_tolerance_of_fp32_on_a_held_out_fixture(exports):
    acc = validate_int8(Path(exports["openvino"]), Path(exports["openvino-int8"]))
    assert acc["boxes_fp32"] > 20 and acc["passed"] is True, acc
    assert abs(acc["int8"]["recall"] - acc["fp32"]["recall"]) <= 0.02
    assert abs(acc["int8"]["precision"] - acc["fp32"]["precision"]) <= 0.02
    assert acc["int8"]["median_iou"] >= 0.9
