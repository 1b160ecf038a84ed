"""Model resolution and the export cache: which runtime and precision, exported once, reused fast.

These tests replace the export child (``export_cache.run_child``) with a fake that writes artifacts and counts
calls; the real exports, the lean engines and INT8 are exercised in ``test_lean_inference.py``.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from detector_app.detection import export_cache as ec
from detector_app.detection import formats
from detector_app.detection import resolve as rs
from detector_app.detection.export_cache import ExportError, cache_key
from detector_app.detection.formats import BackendError, ModelNotFoundError, detect_backend, stream_imgsz
from detector_app.detection.resolve import resolve_model

# ------------------------------------------------------------------------------------------ sizes


@pytest.mark.parametrize(
    ("frame", "long_side", "expected"),
    [
        ((1280, 720), 640, (384, 640)),
        ((854, 480), 320, (192, 320)),
        ((854, 480), 640, (384, 640)),
        ((1280, 720), 320, (192, 320)),
        ((640, 640), 640, (640, 640)),
        ((720, 1280), 640, (640, 384)),  # portrait stream
        (None, 640, (384, 640)),  # unknown yet: 16:9
        ((1280, 720), 600, (352, 608)),  # long side rounded up to the stride too
        ((4000, 100), 640, (32, 640)),  # never below one stride
    ],
)
def test_stream_imgsz(frame, long_side, expected):
    h, w = stream_imgsz(frame, long_side)
    assert (h, w) == expected
    assert h % 32 == 0 and w % 32 == 0


def test_stream_imgsz_rejects_nonsense():
    with pytest.raises(ValueError):
        stream_imgsz((1280, 720), 0)
    with pytest.raises(ValueError):
        stream_imgsz((0, 720), 640)


# --------------------------------------------------------------------------------- path detection


@pytest.mark.parametrize(
    ("path", "backend"),
    [
        ("models/a.pt", "pytorch"),
        ("a.onnx", "onnx"),
        ("cache/x/a_openvino_model", "openvino"),
        ("cache/x/a_openvino_model/", "openvino"),
        ("a_openvino_model/a.xml", "openvino"),
        ("a.engine", "tensorrt"),
        ("a.torchscript", "torchscript"),
        ("a.mlpackage", "coreml"),
        ("a_saved_model", "tensorflow"),
        ("a.tflite", "tflite"),
        ("a_ncnn_model", "ncnn"),
        ("best.pt.onnx", "onnx"),  # the suffix ending last wins
        ("a_qnn.onnx", "qnn"),  # then the longest
        ("weights.bin", None),
    ],
)
def test_detect_backend(path, backend):
    assert detect_backend(path) == backend


# ------------------------------------------------------------------------------------- cache keys


def _fake_pt(path: Path, payload: bytes = b"not really a checkpoint") -> Path:
    path.write_bytes(payload)
    return path


def test_cache_key_changes_with_bytes_size_and_versions(tmp_path, monkeypatch):
    pt = _fake_pt(tmp_path / "m.pt")
    k1 = cache_key(pt, "openvino", (384, 640))
    assert k1 == cache_key(pt, "openvino", (384, 640))  # deterministic
    assert k1.startswith("m-") and "-openvino-384x640-ul" in k1 and "/" not in k1
    assert cache_key(pt, "openvino", (192, 320)) != k1
    assert cache_key(pt, "onnx", (384, 640)) != k1
    _fake_pt(pt, b"not really a checkpoint!")  # one byte more
    k2 = cache_key(pt, "openvino", (384, 640))
    assert k2 != k1
    real = formats.dist_version
    monkeypatch.setattr(ec, "dist_version", lambda d: "99.0" if d == "ultralytics" else real(d))
    assert cache_key(pt, "openvino", (384, 640)) != k2
    monkeypatch.setattr(ec, "dist_version", lambda d: "99.0" if d == "openvino" else real(d))
    assert cache_key(pt, "openvino", (384, 640)) != k2


# ------------------------------------------------------------------------- fake-child behaviour


class FakeChild:
    """Stands in for the export child: writes artifacts where Ultralytics would, counts calls per operation."""

    def __init__(self, delay: float = 0.0, fail: bool = False, facts: dict | None = None) -> None:
        self.calls: dict[str, int] = {}
        self.delay = delay
        self.fail = fail
        self.facts = facts or {"train_imgsz": 320, "end2end": False}
        self.requests: list[dict] = []
        self.lock = threading.Lock()

    def __call__(self, op: str, timeout: float = 0.0, **req) -> dict:
        with self.lock:
            self.calls[op] = self.calls.get(op, 0) + 1
            self.requests.append({"op": op, **req})
        if op == "inspect":
            return dict(self.facts)
        if op == "download":
            raise ExportError("download failed: ConnectionError: offline")
        if op == "quantize":
            out = Path(req["out_dir"])
            out.mkdir(parents=True)
            (out / "m.xml").write_text("<net/>")
            return {"calibration_frames": 3}
        time.sleep(self.delay)
        pt = Path(req["pt"])
        name = formats.EXPORT_TARGETS[{"engine": "tensorrt"}.get(req["format"], req["format"])].artifact_name(pt.stem)
        out = pt.parent / name
        if req["format"] == "openvino":
            out.mkdir()
            (out / f"{pt.stem}.xml").write_text("<net/>")
        else:
            out.write_bytes(b"fake " + req["format"].encode())
        if self.fail:
            raise ExportError("export failed: RuntimeError: simulated crash mid-export")
        return {"path": str(out)}

    def count(self, op: str = "export") -> int:
        return self.calls.get(op, 0)


@pytest.fixture
def child(monkeypatch):
    fc = FakeChild()
    monkeypatch.setattr(ec, "run_child", fc)
    return fc


def _avail(monkeypatch, **over: bool) -> None:
    base = {"pytorch": True, "onnx": True, "openvino": True, "tensorrt": False, "torchscript": True}
    base.update(over)
    monkeypatch.setattr(formats, "available_backends", lambda: dict(base))


def _fp32(**kw):
    return resolve_model(progress=False, precision="fp32", **kw)


def test_auto_prefers_openvino_then_onnx_then_pytorch(tmp_path, monkeypatch, child):
    pt = _fake_pt(tmp_path / "m.pt")
    cache = tmp_path / "cache"
    _avail(monkeypatch)
    r = _fp32(model=str(pt), frame_size=(854, 480), cache_dir=cache)
    assert (r.backend, r.imgsz, r.exported, r.lean) == ("openvino", (192, 320), True, True)  # 320: the checkpoint's size
    assert r.path.endswith("m_openvino_model") and Path(r.path).is_dir()
    assert "auto" in r.note
    _avail(monkeypatch, openvino=False)
    r = _fp32(model=str(pt), imgsz=320, frame_size=(854, 480), cache_dir=cache)
    assert (r.backend, r.exported, r.lean) == ("onnx", True, True) and r.path.endswith("m.onnx")
    _avail(monkeypatch, openvino=False, onnx=False)
    r = _fp32(model=str(pt), imgsz=320, cache_dir=cache)
    assert (r.backend, r.path, r.imgsz, r.exported, r.lean) == ("pytorch", str(pt), 320, False, False)
    assert child.count() == 2
    assert child.count("inspect") == 1  # the checkpoint's facts are read once, then cached by hash


def test_end2end_checkpoints_keep_their_nms_free_head(tmp_path, monkeypatch):
    _avail(monkeypatch)
    fc = FakeChild(facts={"train_imgsz": 640, "end2end": True})
    monkeypatch.setattr(ec, "run_child", fc)
    r = _fp32(model=str(_fake_pt(tmp_path / "y26.pt")), cache_dir=tmp_path / "c")
    assert r.end2end and r.imgsz == (384, 640) and "-e2e" in r.path
    assert [q["end2end"] for q in fc.requests if q["op"] == "export"] == [True]


def test_cuda_keeps_pytorch_and_tensorrt_only_when_asked(tmp_path, monkeypatch, child):
    pt = _fake_pt(tmp_path / "m.pt")
    _avail(monkeypatch)
    r = _fp32(model=str(pt), device="cuda:0", imgsz=640, cache_dir=tmp_path / "c")
    assert r.backend == "pytorch" and not r.exported
    with pytest.raises(BackendError, match="pip install tensorrt"):
        _fp32(model=str(pt), backend="tensorrt", device="cuda:0", imgsz=640, cache_dir=tmp_path / "c")
    _avail(monkeypatch, tensorrt=True)
    monkeypatch.setattr(ec, "importable", lambda m: True)
    r = _fp32(model=str(pt), backend="tensorrt", device="cuda:0", imgsz=640, cache_dir=tmp_path / "c")
    assert r.backend == "tensorrt" and r.path.endswith("m.engine") and r.imgsz == (384, 640) and not r.lean
    assert child.count() == 1


@pytest.mark.parametrize(("backend", "pip"), [("openvino", "pip install openvino"), ("onnx", "pip install onnx onnxruntime")])
def test_explicit_backend_missing_runtime_says_what_to_install(tmp_path, monkeypatch, child, backend, pip):
    pt = _fake_pt(tmp_path / "m.pt")
    _avail(monkeypatch, **{backend: False})
    with pytest.raises(BackendError, match=pip):
        _fp32(model=str(pt), backend=backend, imgsz=320, cache_dir=tmp_path / "c")
    assert child.count() == 0


def test_unknown_backend_and_precision(tmp_path):
    pt = _fake_pt(tmp_path / "m.pt")
    with pytest.raises(BackendError, match="unknown backend"):
        _fp32(model=str(pt), backend="tflite-magic", imgsz=320, cache_dir=tmp_path / "c")
    with pytest.raises(BackendError, match="unknown precision"):
        resolve_model(str(pt), precision="int4", cache_dir=tmp_path / "c")


def test_int8_needs_openvino(tmp_path, monkeypatch, child):
    _avail(monkeypatch, openvino=False)
    with pytest.raises(BackendError, match="needs the OpenVINO backend"):
        resolve_model(str(_fake_pt(tmp_path / "m.pt")), precision="int8", cache_dir=tmp_path / "c", progress=False)
    onnx = _fake_pt(tmp_path / "m.onnx")
    with pytest.raises(BackendError, match="made for OpenVINO exports"):
        resolve_model(str(onnx), precision="int8", cache_dir=tmp_path / "c")


@pytest.mark.parametrize(("passed", "trained", "want"), [
    (True, True, "int8"), (False, True, "fp32"), (None, True, "fp32"),
    (None, False, "int8"),  # random weights: nothing to compare and nothing to lose
    (False, False, "fp32"),
])
def test_auto_precision_uses_int8_only_where_it_passed_the_check(tmp_path, monkeypatch, passed, trained, want):
    """auto: INT8 when the held-out comparison passed (or the checkpoint was never trained); else fp32."""
    _avail(monkeypatch)
    child = FakeChild(facts={"train_imgsz": 320, "end2end": False, "trained": trained})
    monkeypatch.setattr(ec, "run_child", child)
    videos = [_fake_pt(tmp_path / f"v{i}.mp4", b"video") for i in range(2)]
    monkeypatch.setattr(rs, "default_calibration", lambda: videos)
    monkeypatch.setattr(rs, "validate_int8", lambda fp32, q, conf=0.35: {"passed": passed, "fp32": {}})
    r = resolve_model(str(_fake_pt(tmp_path / "m.pt")), cache_dir=tmp_path / "c", progress=False)
    assert r.precision == want and ("_int8_openvino_model" in r.path) == (want == "int8")
    assert child.count("quantize") == 1
    # Explicit int8 uses the same cached INT8 export whatever the check said (the user asked for it).
    q = resolve_model(str(tmp_path / "m.pt"), precision="int8", cache_dir=tmp_path / "c", progress=False)
    assert q.precision == "int8" and child.count("quantize") == 1


def test_auto_precision_without_calibration_videos_stays_fp32(tmp_path, monkeypatch, child):
    _avail(monkeypatch)
    monkeypatch.setattr(rs, "default_calibration", lambda: [tmp_path / "missing.mp4"])
    r = resolve_model(str(_fake_pt(tmp_path / "m.pt")), cache_dir=tmp_path / "c", progress=False)
    assert r.precision == "fp32" and "no calibration videos" in r.note and child.count("quantize") == 0
    with pytest.raises(BackendError, match="--calib"):
        resolve_model(str(tmp_path / "m.pt"), precision="int8", cache_dir=tmp_path / "c", progress=False)


def test_existing_export_used_as_is(tmp_path, monkeypatch, child):
    _avail(monkeypatch)
    onnx = _fake_pt(tmp_path / "m.onnx")
    ov = tmp_path / "m_openvino_model"
    ov.mkdir()
    r = resolve_model(str(onnx), cache_dir=tmp_path / "c")
    assert (r.backend, r.path, r.imgsz, r.exported, r.precision) == ("onnx", str(onnx), None, False, "fp32")
    r = resolve_model(str(ov), backend="openvino", cache_dir=tmp_path / "c")
    assert (r.backend, r.path) == ("openvino", str(ov))
    with pytest.raises(BackendError, match="already a onnx export"):
        resolve_model(str(onnx), backend="openvino", cache_dir=tmp_path / "c")
    q = tmp_path / "m_int8_openvino_model"
    q.mkdir()
    assert resolve_model(str(q), cache_dir=tmp_path / "c").precision == "int8"
    with pytest.raises(BackendError, match="is an INT8 export"):
        resolve_model(str(q), precision="fp32", cache_dir=tmp_path / "c")
    assert child.count() == 0


def test_model_not_local_and_no_internet(tmp_path, monkeypatch, child):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError, match=r"model 'yolo11n.pt' is not a local file and could not be downloaded \(no internet\?\)\. Pass a path, e.g. --model models/fixture-animals-yolo11n.pt"):
        resolve_model("yolo11n.pt", cache_dir=tmp_path / "c")
    assert child.count("download") == 1
    with pytest.raises(ModelNotFoundError, match="not found"):
        resolve_model("models/missing.pt", cache_dir=tmp_path / "c")


def test_crash_mid_export_leaves_no_cache_entry(tmp_path, monkeypatch):
    _avail(monkeypatch)
    pt = _fake_pt(tmp_path / "m.pt")
    cache = tmp_path / "c"
    monkeypatch.setattr(ec, "run_child", FakeChild(fail=True))
    with pytest.raises(ExportError, match="simulated crash"):
        _fp32(model=str(pt), backend="openvino", imgsz=320, cache_dir=cache)
    assert [p.name for p in cache.iterdir() if not p.name.startswith(".")] == []
    assert not list(cache.glob(".tmp-*"))
    # A leftover from a *killed* process (no cleanup ran) is never reused and gets removed.
    key = cache_key(pt, "openvino", (192, 320))
    stale = cache / f".tmp-{key}-12345-abcdef"
    (stale / "m_openvino_model").mkdir(parents=True)
    ok = FakeChild()
    monkeypatch.setattr(ec, "run_child", ok)
    r = _fp32(model=str(pt), backend="openvino", imgsz=320, cache_dir=cache)
    assert r.exported and ok.count() == 1 and not stale.exists()
    meta = json.loads((cache / key / "export.json").read_text())
    assert meta["imgsz"] == [192, 320] and meta["backend"] == "openvino"


def test_concurrent_resolves_export_once(tmp_path, monkeypatch):
    _avail(monkeypatch)
    pt = _fake_pt(tmp_path / "m.pt")
    fc = FakeChild(delay=0.5)
    monkeypatch.setattr(ec, "run_child", fc)
    results: list = []

    def go() -> None:
        results.append(_fp32(model=str(pt), backend="onnx", imgsz=320, cache_dir=tmp_path / "c"))

    threads = [threading.Thread(target=go) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fc.count() == 1
    assert sorted(r.exported for r in results) == [False, False, True]
    assert len({r.path for r in results}) == 1


def test_model_change_reexports(tmp_path, monkeypatch, child):
    _avail(monkeypatch)
    pt = _fake_pt(tmp_path / "m.pt")
    a = _fp32(model=str(pt), backend="onnx", imgsz=320, cache_dir=tmp_path / "c")
    _fake_pt(pt, b"retrained weights")
    b = _fp32(model=str(pt), backend="onnx", imgsz=320, cache_dir=tmp_path / "c")
    c = _fp32(model=str(pt), backend="onnx", imgsz=640, cache_dir=tmp_path / "c")
    assert a.path != b.path != c.path and a.exported and b.exported and c.exported
    assert child.count() == 3


def test_export_child_reports_one_line_errors(tmp_path):
    """The real child: a broken checkpoint gives one line naming the failure, not a traceback."""
    bad = _fake_pt(tmp_path / "broken.pt", b"this is not a torch checkpoint")
    with pytest.raises(ExportError) as err:
        ec.run_child("inspect", timeout=120.0, pt=str(bad))
    msg = str(err.value)
    assert msg.startswith("inspect failed: ") and "\n" not in msg and "Traceback" not in msg
