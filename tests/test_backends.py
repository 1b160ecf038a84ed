"""Backend selection and export cache (issue 4, item 1).

Fast tests fake the Ultralytics export; one session-scoped fixture does the real OpenVINO + ONNX exports once,
and the accuracy test compares them with PyTorch on rendered frames (needs the trained fixture model).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from detector_app.detection import backends as bk
from detector_app.detection.backends import (
    BackendError,
    ModelNotFoundError,
    cache_key,
    detect_backend,
    resolve_model,
    stream_imgsz,
)

REPO = Path(__file__).resolve().parents[1]
FIXTURE_MODELS = (REPO / "models" / "fixture-animals-yolo11n.pt", Path("/tmp/train/fixture-animals-yolo11n.pt"))
if os.environ.get("DETECTOR_TEST_MODEL"):  # e.g. a training run's last.pt
    FIXTURE_MODELS = (Path(os.environ["DETECTOR_TEST_MODEL"]),)
FIXTURE_MODEL = next((p for p in FIXTURE_MODELS if p.is_file()), None)


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
    real = bk._dist_version
    monkeypatch.setattr(bk, "_dist_version", lambda d: "99.0" if d == "ultralytics" else real(d))
    assert cache_key(pt, "openvino", (384, 640)) != k2
    monkeypatch.setattr(bk, "_dist_version", lambda d: "99.0" if d == "openvino" else real(d))
    assert cache_key(pt, "openvino", (384, 640)) != k2


# ------------------------------------------------------------------------- fake-export behaviour


class FakeExport:
    """Stands in for the Ultralytics export: writes the artifact next to the temp .pt, counts calls."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.calls = 0
        self.delay = delay
        self.fail = fail
        self.lock = threading.Lock()

    def __call__(self, pt: Path, backend: str, imgsz, device: str) -> Path:
        with self.lock:
            self.calls += 1
        time.sleep(self.delay)
        out = pt.parent / bk._artifact_name(pt.stem, backend)
        if backend == "openvino":
            out.mkdir()
            (out / f"{pt.stem}.xml").write_text("<net/>")
            if self.fail:
                raise RuntimeError("simulated crash mid-export")
        else:
            out.write_bytes(b"fake " + backend.encode())
            if self.fail:
                raise RuntimeError("simulated crash mid-export")
        return out


@pytest.fixture
def fake_export(monkeypatch):
    fe = FakeExport()
    monkeypatch.setattr(bk, "_run_export", fe)
    return fe


def _avail(monkeypatch, **over: bool) -> None:
    base = {"pytorch": True, "onnx": True, "openvino": True, "tensorrt": False, "torchscript": True}
    base.update(over)
    monkeypatch.setattr(bk, "available_backends", lambda: dict(base))


def test_auto_prefers_openvino_then_onnx_then_pytorch(tmp_path, monkeypatch, fake_export):
    pt = _fake_pt(tmp_path / "m.pt")
    cache = tmp_path / "cache"
    _avail(monkeypatch)
    r = resolve_model(str(pt), imgsz=320, frame_size=(854, 480), cache_dir=cache, progress=False)
    assert (r.backend, r.imgsz, r.exported) == ("openvino", (192, 320), True)
    assert r.path.endswith("m_openvino_model") and Path(r.path).is_dir()
    assert "auto" in r.note
    _avail(monkeypatch, openvino=False)
    r = resolve_model(str(pt), imgsz=320, frame_size=(854, 480), cache_dir=cache, progress=False)
    assert (r.backend, r.exported) == ("onnx", True) and r.path.endswith("m.onnx")
    _avail(monkeypatch, openvino=False, onnx=False)
    r = resolve_model(str(pt), imgsz=320, cache_dir=cache, progress=False)
    assert (r.backend, r.path, r.imgsz, r.exported) == ("pytorch", str(pt), 320, False)
    assert fake_export.calls == 2


def test_cuda_keeps_pytorch_and_tensorrt_only_when_asked(tmp_path, monkeypatch, fake_export):
    pt = _fake_pt(tmp_path / "m.pt")
    _avail(monkeypatch)
    r = resolve_model(str(pt), device="cuda:0", imgsz=640, cache_dir=tmp_path / "c", progress=False)
    assert r.backend == "pytorch" and not r.exported
    with pytest.raises(BackendError, match="pip install tensorrt"):
        resolve_model(str(pt), backend="tensorrt", device="cuda:0", imgsz=640, cache_dir=tmp_path / "c")
    _avail(monkeypatch, tensorrt=True)
    monkeypatch.setattr(bk, "_importable", lambda m: True)
    r = resolve_model(str(pt), backend="tensorrt", device="cuda:0", imgsz=640, cache_dir=tmp_path / "c", progress=False)
    assert r.backend == "tensorrt" and r.path.endswith("m.engine") and r.imgsz == (384, 640)
    assert fake_export.calls == 1


@pytest.mark.parametrize(("backend", "pip"), [("openvino", "pip install openvino"), ("onnx", "pip install onnx onnxruntime")])
def test_explicit_backend_missing_runtime_says_what_to_install(tmp_path, monkeypatch, fake_export, backend, pip):
    pt = _fake_pt(tmp_path / "m.pt")
    _avail(monkeypatch, **{backend: False})
    with pytest.raises(BackendError, match=pip):
        resolve_model(str(pt), backend=backend, imgsz=320, cache_dir=tmp_path / "c")
    assert fake_export.calls == 0


def test_unknown_backend(tmp_path):
    pt = _fake_pt(tmp_path / "m.pt")
    with pytest.raises(BackendError, match="unknown backend"):
        resolve_model(str(pt), backend="tflite-magic", imgsz=320, cache_dir=tmp_path / "c")


def test_existing_export_used_as_is(tmp_path, monkeypatch, fake_export):
    _avail(monkeypatch)
    onnx = _fake_pt(tmp_path / "m.onnx")
    ov = tmp_path / "m_openvino_model"
    ov.mkdir()
    r = resolve_model(str(onnx), cache_dir=tmp_path / "c")
    assert (r.backend, r.path, r.imgsz, r.exported) == ("onnx", str(onnx), None, False)
    r = resolve_model(str(ov), backend="openvino", cache_dir=tmp_path / "c")
    assert (r.backend, r.path) == ("openvino", str(ov))
    with pytest.raises(BackendError, match="already a onnx export"):
        resolve_model(str(onnx), backend="openvino", cache_dir=tmp_path / "c")
    assert fake_export.calls == 0


def test_model_not_local_and_no_internet(tmp_path, monkeypatch):
    import ultralytics.utils.downloads as dl

    def offline(*a, **k):
        raise ConnectionError("Download failure ... Environment may be offline.")

    monkeypatch.setattr(dl, "attempt_download_asset", offline)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError, match=r"model 'yolo11n.pt' is not a local file and could not be downloaded \(no internet\?\)\. Pass a path, e.g. --model models/fixture-animals-yolo11n.pt"):
        resolve_model("yolo11n.pt", cache_dir=tmp_path / "c")
    with pytest.raises(ModelNotFoundError, match="not found"):
        resolve_model("models/missing.pt", cache_dir=tmp_path / "c")


def test_crash_mid_export_leaves_no_cache_entry(tmp_path, monkeypatch):
    _avail(monkeypatch)
    pt = _fake_pt(tmp_path / "m.pt")
    cache = tmp_path / "c"
    monkeypatch.setattr(bk, "_run_export", FakeExport(fail=True))
    with pytest.raises(RuntimeError, match="simulated crash"):
        resolve_model(str(pt), backend="openvino", imgsz=320, cache_dir=cache, progress=False)
    assert [p.name for p in cache.iterdir() if not p.name.startswith(".")] == []
    assert not list(cache.glob(".tmp-*"))
    # A leftover from a *killed* process (no cleanup ran) is never reused and gets removed.
    key = cache_key(pt, "openvino", (192, 320))
    stale = cache / f".tmp-{key}-12345-abcdef"
    (stale / "m_openvino_model").mkdir(parents=True)
    ok = FakeExport()
    monkeypatch.setattr(bk, "_run_export", ok)
    r = resolve_model(str(pt), backend="openvino", imgsz=320, cache_dir=cache, progress=False)
    assert r.exported and ok.calls == 1 and not stale.exists()
    assert (cache / key / "export.json").is_file()


def test_concurrent_resolves_export_once(tmp_path, monkeypatch):
    _avail(monkeypatch)
    pt = _fake_pt(tmp_path / "m.pt")
    fe = FakeExport(delay=0.5)
    monkeypatch.setattr(bk, "_run_export", fe)
    results: list = []

    def go() -> None:
        results.append(resolve_model(str(pt), backend="onnx", imgsz=320, cache_dir=tmp_path / "c", progress=False))

    threads = [threading.Thread(target=go) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fe.calls == 1
    assert sorted(r.exported for r in results) == [False, False, True]
    assert len({r.path for r in results}) == 1


def test_model_change_reexports(tmp_path, monkeypatch, fake_export):
    _avail(monkeypatch)
    pt = _fake_pt(tmp_path / "m.pt")
    a = resolve_model(str(pt), backend="onnx", imgsz=320, cache_dir=tmp_path / "c", progress=False)
    _fake_pt(pt, b"retrained weights")
    b = resolve_model(str(pt), backend="onnx", imgsz=320, cache_dir=tmp_path / "c", progress=False)
    c = resolve_model(str(pt), backend="onnx", imgsz=640, cache_dir=tmp_path / "c", progress=False)
    assert a.path != b.path != c.path and a.exported and b.exported and c.exported
    assert fake_export.calls == 3


def test_configure_torch_threads_idempotent():
    import torch

    before = torch.get_num_threads()
    try:
        bk.configure_torch_threads(1)
        assert torch.get_num_threads() == 1
        bk.configure_torch_threads()
        bk.configure_torch_threads()
        assert torch.get_num_threads() == os.cpu_count()
        bk.configure_torch_threads(backend="openvino")  # torch only pre/post-processes: stay out of the way
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------------ real exports


@pytest.fixture(scope="session")
def real_model(tmp_path_factory) -> Path:
    """The trained fixture model if present, else a random-weights yolo11n (shape-correct, detects nothing)."""
    if FIXTURE_MODEL is not None:
        return FIXTURE_MODEL
    from ultralytics import YOLO

    p = tmp_path_factory.mktemp("model") / "rand-yolo11n.pt"
    YOLO("yolo11n.yaml").save(str(p))
    return p


@pytest.fixture(scope="session")
def real_exports(real_model, tmp_path_factory) -> dict[str, bk.ResolvedModel]:
    """OpenVINO and ONNX exports for a 1280x720 stream at the model's training size, done once per session."""
    cache = tmp_path_factory.mktemp("cache")
    avail = bk.available_backends()
    out: dict[str, bk.ResolvedModel] = {}
    for backend in ("openvino", "onnx"):
        if avail[backend]:
            out[backend] = resolve_model(str(real_model), backend=backend, frame_size=(1280, 720), cache_dir=cache, progress=False)
    out["pytorch"] = resolve_model(str(real_model), backend="pytorch", cache_dir=cache)
    out["_cache"] = cache  # type: ignore[assignment]
    return out


def test_real_export_then_cache_hit_is_fast(real_model, real_exports):
    cache = real_exports["_cache"]
    for backend in ("openvino", "onnx"):
        if backend not in real_exports:
            continue
        first = real_exports[backend]
        assert first.exported and first.backend == backend
        assert first.imgsz == stream_imgsz((1280, 720), real_exports["pytorch"].imgsz)
        t0 = time.perf_counter()
        again = resolve_model(str(real_model), backend=backend, frame_size=(1280, 720), cache_dir=cache, progress=False)
        dt = time.perf_counter() - t0
        assert not again.exported and again.path == first.path
        assert dt < 0.5, f"cache hit took {dt:.3f}s"
        assert detect_backend(again.path) == backend
    # auto picks the (already cached) fastest runtime
    auto = resolve_model(str(real_model), frame_size=(1280, 720), cache_dir=cache, progress=False)
    assert auto.backend == ("openvino" if "openvino" in real_exports else "onnx" if "onnx" in real_exports else "pytorch")
    assert not auto.exported


CAT_FRAMES = (75, 120, 165, 330)  # cat_720p30: first crossing 1.5–7.5 s, second 9–13.5 s


def _dets(yolo, frame, imgsz) -> list[tuple[str, float, list[float]]]:
    r = yolo.predict(frame, imgsz=imgsz, conf=0.25, verbose=False)[0]
    return [(r.names[int(c)], float(s), b.tolist()) for c, s, b in zip(r.boxes.cls, r.boxes.conf, r.boxes.xyxy, strict=True)]


def _iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@pytest.mark.skipif(FIXTURE_MODEL is None, reason="trained fixture model not present yet (models/fixture-animals-yolo11n.pt); random weights detect nothing")
@pytest.mark.parametrize("backend", ["openvino", "onnx"])
def test_export_matches_pytorch_detections(real_model, real_exports, backend):
    if backend not in real_exports:
        pytest.skip(f"{backend} runtime not installed")
    from ultralytics import YOLO

    from detector_app.fixtures.scene import render_frame
    from detector_app.fixtures.video import CATALOGUE

    spec = CATALOGUE["cat_720p30"]
    ref = YOLO(str(real_model), task="detect")
    exp = YOLO(real_exports[backend].path, task="detect")
    pt_imgsz, ex_imgsz = real_exports["pytorch"].imgsz, real_exports[backend].imgsz
    cats = 0
    for i in CAT_FRAMES:
        frame, truth = render_frame(spec, i)
        assert any(o.label == "cat" for o in truth), f"frame {i} has no cat in ground truth"
        a, b = _dets(ref, frame, pt_imgsz), _dets(exp, frame, ex_imgsz)
        cats += sum(1 for lbl, s, _ in a if lbl == "cat" and s >= 0.5)
        # Every confident detection on either side has a same-label partner with IoU >= 0.9 on the other.
        for src, dst in ((a, b), (b, a)):
            for lbl, score, box in src:
                if score < 0.4:  # near the 0.25 threshold a score can flip sides between runtimes
                    continue
                best = max((_iou(box, db) for dl, _, db in dst if dl == lbl), default=0.0)
                assert best >= 0.9, f"frame {i}: {lbl} {score:.2f} {box} has no match in {dst} (best IoU {best:.2f})"
    assert cats >= 2, "the fixture model should find the cat in most of these frames"


def test_inference_precision_reads_the_runtime():
    from types import SimpleNamespace as NS

    class Hint:
        def to_string(self) -> str:
            return "bf16"

    compiled = NS(get_property=lambda name: Hint())
    ov = NS(predictor=NS(model=NS(backend=NS(ov_compiled_model=compiled), fp16=False)))
    assert bk.inference_precision(ov) == "bf16"
    assert bk.inference_precision(NS(predictor=NS(model=NS(backend=NS(), fp16=False)))) == "f32"
    assert bk.inference_precision(NS(predictor=None)) is None
