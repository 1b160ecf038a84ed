"""Shared inference through a real Triton server (PyTriton's tritonserver from .venv-triton), on loopback.

One server for the module (start-up ≈ 4 s), serving the fixture model's ONNX export with dynamic batching.
Skipped, with the reason, where the Triton environment is missing (scripts/setup.sh makes it).
"""

from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from detector_app.detection.detector import FIXTURE_MODEL, Detector, DetectorConfig
from detector_app.detection.triton import InferenceUnavailable, InferenceUrl, TritonEngine, TritonError
from detector_app.errors import UserError
from detector_app.inference.server import InferenceServer, ServerPorts, TritonVenvMissing, triton_python

from .conftest import in_threads

REPO = Path(__file__).resolve().parents[1]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def prepared():
    from detector_app.inference.prepare import prepare_model

    return prepare_model(str(FIXTURE_MODEL), progress=False)


@pytest.fixture(scope="module")
def server(prepared):
    try:
        triton_python()
    except TritonVenvMissing as exc:
        pytest.skip(f"Triton environment missing: {exc}")
    srv = InferenceServer(prepared, ServerPorts(*_free_ports(3)))
    srv.start()
    yield srv
    srv.stop()


def _iou(a, b) -> float:
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _xyxy(b) -> tuple[float, float, float, float]:
    return (b.x1, b.y1, b.x2, b.y2)


def _frames(video: Path, n: int) -> list[np.ndarray]:
    import av

    out = []
    with av.open(str(video)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i % 10 == 0:
                out.append(f.to_ndarray(format="bgr24"))
            if len(out) >= n:
                break
    return out


# ------------------------------------------------------------------------------ no server needed

def test_inference_url_parsing():
    u = InferenceUrl.parse("http://10.0.0.5:8000/yolo11n")
    assert (u.scheme, u.host, u.port, u.model, u.version) == ("http", "10.0.0.5", 8000, "yolo11n", "")
    assert InferenceUrl.parse("grpc://h/m/2").address == "h:8001" and InferenceUrl.parse("grpc://h/m/2").version == "2"
    for bad in ("ftp://h:1/m", "http://h:1", "http://h:port/m", "h:8000/m", "http://h:1/a/b/c"):
        with pytest.raises(TritonError):
            InferenceUrl.parse(bad)


def test_unreachable_server_is_one_line_user_error():
    (port,) = _free_ports(1)
    t0 = time.monotonic()
    with pytest.raises(UserError, match="cannot reach Triton"):
        Detector(DetectorConfig(inference_url=f"http://127.0.0.1:{port}/fixture"))
    assert time.monotonic() - t0 < 5
    p = subprocess.run([sys.executable, "-m", "detector_app", "detect", "data/fixtures/cat_480p15.mp4", "--headless",
                        "--feed-port", "0", "--inference-url", f"grpc://127.0.0.1:{port}/x"],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert p.returncode == 2 and "cannot reach Triton" in p.stderr and "Traceback" not in p.stderr


def test_inference_server_without_triton_venv_is_one_line(tmp_path):
    p = subprocess.run([sys.executable, "-m", "detector_app", "inference-server", "--port", str(_free_ports(1)[0])],
                       capture_output=True, text=True, timeout=60, cwd=REPO,
                       env={**os.environ, "DETECTOR_TRITON_VENV": str(tmp_path / "none")})
    assert p.returncode == 2 and "no Triton environment" in p.stderr and "scripts/setup.sh" in p.stderr
    assert "Traceback" not in p.stderr


def test_triton_repo_config(tmp_path, prepared):
    """models export --triton-repo: a config Triton's own parser reads, batching, names, a batchable model."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    p = subprocess.run([sys.executable, "-m", "detector_app", "models", "export", str(FIXTURE_MODEL),
                        "--triton-repo", str(tmp_path / "repo")], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert p.returncode == 0, p.stderr[-2000:]
    model_dir = tmp_path / "repo" / prepared.name
    cfg = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert cfg.name == prepared.name and cfg.backend == "onnxruntime" and cfg.max_batch_size == 8
    assert cfg.HasField("dynamic_batching") and cfg.dynamic_batching.max_queue_delay_microseconds == 5000
    assert list(cfg.input[0].dims) == [3, 192, 320] and cfg.input[0].data_type == model_config_pb2.TYPE_FP32
    meta = ast.literal_eval(cfg.parameters["metadata"].string_value)
    assert meta["names"] == {0: "cat", 1: "horse", 2: "person"} and list(meta["imgsz"]) == [192, 320]
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"images": np.zeros((3, 3, 192, 320), np.float32)})[0].shape == (3, 7, 1260)


def test_paused_notice_once_and_resumed():
    """The session layer: one 'paused' notice per outage however many ticks it lasts, one when it is back."""
    from detector_app.mentra.actions import Send
    from detector_app.mentra.client import SessionRunner
    from tests.test_mentra_protocol import Clock, ready_session

    session = ready_session(Clock())
    sent: list[str] = []
    stream = SimpleNamespace(inference_paused=None)
    runner = SimpleNamespace(_stream=stream, _inference_paused=False, session=session,
                             _dispatch=lambda acts: sent.extend(json.dumps(a.message) for a in acts if isinstance(a, Send)))
    for paused in (None, "Triton down", "Triton down", "Triton down", None, None):
        stream.inference_paused = paused
        SessionRunner._check_inference(runner)
    paused = [t for t in sent if "detection paused" in t.replace("+", " ")]
    back = [t for t in sent if "detection back on" in t.replace("+", " ")]
    assert paused and back and len(sent) == len(paused) + len(back), sent
    assert len(paused) == len(back) <= 2  # one notice each: speech on Mentra Live (+ a wall where there is a display)


# ------------------------------------------------------------------------------ with a real server

@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_same_detections_as_local(server, scheme, fixture_videos):
    """Remote inference gives the local lean path's boxes (same ONNX graph; batch axis added and verified)."""
    frames = _frames(fixture_videos["cat_horse_720p30"], 42)
    local = Detector(DetectorConfig(model=str(FIXTURE_MODEL), backend="onnx", precision="fp32"), frame_size=(1280, 720),
                     progress=False)
    remote = Detector(DetectorConfig(inference_url=server.http_url if scheme == "http" else server.grpc_url))
    assert remote.names == local.names and remote.imgsz == local.imgsz
    matched = 0
    for f in frames:
        a, _, _ = local.detect(f)
        b, _, _ = remote.detect(f)
        assert [d.label for d in a] == [d.label for d in b]
        for x, y in zip(a, b, strict=True):
            assert _iou(_xyxy(x.box), _xyxy(y.box)) >= 0.99
            assert abs(x.confidence - y.confidence) < 0.01
            matched += 1
    assert matched >= 10, matched


@pytest.mark.slow
def test_ultralytics_client_reads_names_and_detects(server, fixture_videos):
    """The metadata is where Ultralytics' own Triton client looks: YOLO(url) knows the names and finds the cat."""
    from ultralytics import YOLO

    model = YOLO(server.http_url, task="detect")
    frame = _frames(fixture_videos["cat_720p30"], 16)[-1]  # frame 150: the cat is in view
    r = model.predict(frame, imgsz=(192, 320), verbose=False)[0]
    assert model.names == {0: "cat", 1: "horse", 2: "person"}
    assert [r.names[int(c)] for c in r.boxes.cls] == ["cat"] and float(r.boxes.conf[0]) > 0.5


@pytest.mark.slow
def test_detect_cli_with_inference_url_is_torch_free(server, tmp_path, fixture_videos):
    out = tmp_path / "r.jsonl"
    code = ("import sys, json\nfrom detector_app.cli import main\n"
            "try:\n    main()\nexcept SystemExit as e:\n    rc = e.code\n"
            "print('RUN ' + json.dumps({'rc': rc, 'torch': 'torch' in sys.modules}))\n")
    p = subprocess.run([sys.executable, "-c", code, "detect", str(fixture_videos["cat_480p15"]), "--headless",
                        "--feed-port", "0", "--out", str(out), "--inference-url", server.http_url],
                       capture_output=True, text=True, timeout=90, cwd=REPO)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RUN ")), None)
    assert line, p.stdout[-1500:] + p.stderr[-1500:]
    got = json.loads(line[4:])
    assert got["rc"] in (0, None) and not got["torch"], got
    results = [json.loads(ln) for ln in out.read_text().splitlines() if ln.strip()]
    assert len(results) >= 100 and sum(bool(r["detections"]) for r in results) >= 40
    assert {d["label"] for r in results for d in r["detections"]} == {"cat"}


def test_unknown_model_name_is_one_line_user_error(server):
    with pytest.raises(TritonError, match="no ready model 'nope'"):
        TritonEngine(server.http_url.rsplit("/", 1)[0] + "/nope")
    with pytest.raises(TritonError, match="no ready model 'nope'"):
        TritonEngine(server.grpc_url.rsplit("/", 1)[0] + "/nope")


def test_engine_call_on_dead_server_raises_typed_error(server):
    eng = TritonEngine(server.http_url)
    blob = np.zeros((1, 3, 192, 320), np.float32)
    assert eng.infer(blob).shape == (1, 7, 1260)
    eng.url = InferenceUrl.parse(f"http://127.0.0.1:{_free_ports(1)[0]}/{server.model.name}")  # now points nowhere
    eng._drop_client()
    with pytest.raises(InferenceUnavailable):
        eng.infer(blob)
    eng.close()


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_concurrent_clients_are_batched(server, scheme):
    """Several streams (threads, one connection each) at once: Triton's dynamic batcher shares executions."""
    eng = TritonEngine(server.http_url if scheme == "http" else server.grpc_url)
    blob = np.random.default_rng(0).random((1, 3, 192, 320), dtype=np.float32)
    before = server.batch_stats()

    def client() -> None:
        for _ in range(15):
            eng.infer(blob)

    in_threads(client, 4)
    deadline = time.monotonic() + 3.0  # the server may count the last requests just after they answered
    while (got := server.batch_stats().since(before)).inferences < 60 and time.monotonic() < deadline:
        time.sleep(0.1)
    eng.close()
    assert got.inferences == 60 and got.executions < 60, got


@pytest.mark.slow
def test_triton_killed_mid_session_wearer_told_once_and_detection_resumes(server, prepared, fixture_videos):
    """Through the simulated cloud and Mentra Live glasses: Triton dies under a live session. The stream goes on
    (same stream, frames still decoded), the wearer hears "detection paused" once, and detection comes back
    by itself when a server is up again on the same address. Last in the module: it kills the module's server.
    """
    import asyncio

    from tests.test_e2e_glasses import USER, harness, spoken_text, stream_active, stream_request

    det = Detector(DetectorConfig(inference_url=server.grpc_url))

    def said(words: str):
        return lambda e: e.direction == "app->cloud" and e.type == "audio_play_request" and words in spoken_text(e)

    async def main() -> None:
        restarted: list[InferenceServer] = []
        async with harness(det, fixture_videos["cat_480p15"], device="mentra_live") as h:
            try:
                await h.sim.start_session(USER)
                await stream_active(h.sim)
                await h.sim.wait_for(said("cat"), 20)
                pipe = h.stream().pipeline
                n = len(h.sim.events)
                await asyncio.to_thread(server.kill)
                await h.sim.wait_for(said("detection paused"), 10, start=n)
                decoded = pipe.health().frames_decoded
                await asyncio.sleep(2.0)
                assert pipe.health().frames_decoded > decoded + 10, "the stream stopped with the inference server"
                assert pipe.inference_paused and pipe.failure is None
                restarted.append(await asyncio.to_thread(lambda: InferenceServer(prepared, server.ports).start()))
                await h.sim.wait_for(said("detection back on"), 20, start=n)
                inferences = pipe.stats.inferences
                await asyncio.sleep(1.0)
                assert pipe.inference_paused is None and h.stream().pipeline is pipe
                assert pipe.stats.inferences >= inferences + 5, "detection did not resume at the stream's rate"
                events = h.sim.events[n:]
                assert sum(said("detection paused")(e) for e in events) == 1, "the pause must be told once"
                assert not any(stream_request(e) for e in events), "the stream was requested again"
            finally:
                for srv in restarted:
                    await asyncio.to_thread(srv.stop)

    asyncio.run(main())
