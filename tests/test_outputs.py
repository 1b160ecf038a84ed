"""Output sinks: JSONL, WebSocket feed (real clients), overlay drawing, display detection, schema."""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosedOK
from websockets.sync.client import connect

from detector_app.detection.types import Box, Detection, FrameResult
from detector_app.outputs import (
    DetectionFeed,
    FeedError,
    JsonlError,
    JsonlWriter,
    validate,
)
from detector_app.outputs import window as window_mod
from detector_app.outputs.overlay import draw_detections, draw_hud, label_color

pytestmark = pytest.mark.timeout(60)


def make_result(seq: int, dets: tuple[Detection, ...] | None = None, **kw) -> FrameResult:
    now = time.time()
    if dets is None:
        dets = (Detection("dog", 0.87, Box(10, 20, 110, 220), 16),
                Detection("cat", 0.5, Box(-5.0, 0.0, 40.5, 30.25), 15))
    return FrameResult(seq=seq, frame_index=seq * 3, pts=seq / 10, width=640, height=480,
                       received_at=now - 0.03, done_at=now, inference_ms=21.5, detections=dets,
                       all_detections=len(dets), model="fixture-animals-yolo11n", source="rtmp", **kw)


# ---- schema ----------------------------------------------------------------------------------

def test_schema_accepts_real_messages_and_rejects_bad_ones() -> None:
    assert validate(make_result(0).to_json()) == []
    assert validate(make_result(1, dets=(), extra={"note": 1}).to_json()) == []
    assert validate(FrameResult(2, 0, None, 1, 1, 0.0, 0.0, 0.0, ()).to_json()) == []
    assert validate({"type": "hello", "schema": 3, "model": "m", "source": "s", "extra": 1}) == []

    bad = make_result(3).to_json()
    bad["detections"][0]["box"] = [1, 2, 3]
    bad["detections"][1]["confidence"] = 1.5
    bad["seq"] = True
    bad["surprise"] = 1
    del bad["model"]
    errs = validate(bad)
    assert any("box" in e for e in errs) and any("confidence" in e for e in errs)
    assert any("$.seq" in e for e in errs) and any("surprise" in e for e in errs)
    assert any("'model'" in e for e in errs)
    assert validate({"type": "nope"}) and validate([1])


def test_docs_example_matches_schema() -> None:
    doc = (Path(__file__).parents[1] / "docs" / "json-schema.md").read_text()
    example = json.loads(doc.split("```json", 1)[1].split("```", 1)[0])
    assert validate(example) == []


# ---- JSONL -----------------------------------------------------------------------------------

def test_jsonl_lines_parse_and_match_schema(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "det.jsonl"
    with JsonlWriter(path) as w:
        for i in range(3):
            w(make_result(i))
        # flushed per line: readable while still open (tail -f)
        assert len(path.read_text().splitlines()) == 3
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [m["seq"] for m in lines] == [0, 1, 2]
    assert all(validate(m) == [] for m in lines)
    assert lines[0]["detections"][0] == {"label": "dog", "confidence": 0.87,
                                         "box": [10, 20, 110, 220], "class_id": 16, "track_id": None}
    assert w.closed and w.lines == 3
    w(make_result(9))  # after close: ignored, no exception into the inference thread
    with JsonlWriter(path) as w2:  # append by default
        w2(make_result(3))
    assert len(path.read_text().splitlines()) == 4


def test_jsonl_unwritable_path_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(JsonlError, match="cannot write detections to .*file.txt"):
        JsonlWriter(blocker / "sub" / "det.jsonl")


# ---- feed ------------------------------------------------------------------------------------

@pytest.fixture
def feed():
    f = DetectionFeed("127.0.0.1", 0, info={"model": "fixture-animals-yolo11n", "source": "rtmp"})
    f.start()
    yield f
    f.stop()


def _wait(cond, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.01)


def test_feed_two_clients_get_hello_and_every_message_in_order(feed: DetectionFeed) -> None:
    url = f"ws://127.0.0.1:{feed.port}/"
    with connect(url) as a, connect(url) as b:
        for c in (a, b):
            hello = json.loads(c.recv(timeout=5))
            assert hello == {"type": "hello", "schema": 3, "model": "fixture-animals-yolo11n",
                             "source": "rtmp"}
            assert validate(hello) == []
        _wait(lambda: feed.clients == 2)
        n = 40
        for i in range(n):
            feed(make_result(i))
            time.sleep(0.002)
        for c in (a, b):
            got = [json.loads(c.recv(timeout=5)) for _ in range(n)]
            assert [m["seq"] for m in got] == list(range(n))
            assert all(validate(m) == [] for m in got)
    assert feed.dropped == 0
    _wait(lambda: feed.clients == 0)


def _stuck_client(port: int) -> socket.socket:
    """A real WebSocket handshake, then never read again (tiny receive buffer)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    s.settimeout(5)
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101")
    return s


def test_feed_stuck_client_never_blocks_the_pipeline(feed: DetectionFeed) -> None:
    stuck = _stuck_client(feed.port)
    stuck_peer = f"127.0.0.1:{stuck.getsockname()[1]}"
    try:
        with connect(f"ws://127.0.0.1:{feed.port}/", max_size=None) as good:
            json.loads(good.recv(timeout=5))  # hello
            _wait(lambda: feed.clients == 2)
            got: list[int] = []
            reader = threading.Thread(target=lambda: got.extend(json.loads(m)["seq"] for m in good),
                                      daemon=True)
            reader.start()

            def stats(stuck_one: bool):
                return next(c for c in feed.client_stats() if (c.peer == stuck_peer) == stuck_one)

            # 1) a burst: __call__ is an O(1) hand-off whatever the clients do
            pad = os.urandom(8000).hex()  # ~16 kB per message
            burst = [make_result(i, extra={"pad": pad}) for i in range(500)]
            t0 = time.perf_counter()
            for r in burst:
                feed(r)
            elapsed = time.perf_counter() - t0
            assert elapsed < 0.5, f"500 broadcasts took {elapsed:.3f}s"
            _wait(lambda: got and got[-1] == 499)
            assert got == sorted(got) and len(set(got)) == len(got)  # gaps allowed, no reordering

            # 2) keep sending until the stuck client's socket is full and its sender blocked: its queue
            #    is full and it sends nothing more for a while (a full queue alone can still be draining
            #    into kernel buffers that autotune to megabytes)
            big = os.urandom(32000).hex()  # ~64 kB
            seq = 500

            def stuck_for_good() -> bool:
                if stats(True).queued < feed.queue_size:
                    return False
                sent = stats(True).sent
                time.sleep(0.3)
                return stats(True).sent == sent

            while not stuck_for_good():
                assert seq < 3000, "stuck client never backed up"
                for _ in range(20):
                    feed(make_result(seq, extra={"pad": big}))
                    seq += 1
                    time.sleep(0.002)
            _wait(lambda: got[-1] == seq - 1)

            # 3) at a realistic pace the good client gets everything; only the stuck one drops
            good_dropped, stuck_dropped = stats(False).dropped, stats(True).dropped
            for i in range(seq, seq + 30):
                feed(make_result(i))
                time.sleep(0.01)
            _wait(lambda: got[-1] == seq + 29)
            assert got[-30:] == list(range(seq, seq + 30))
            assert stats(False).dropped == good_dropped
            # The stuck client keeps dropping (how many depends on kernel socket buffers draining).
            assert stats(True).dropped > stuck_dropped
            assert feed.dropped > 0 and feed.clients == 2
    finally:
        stuck.close()


def test_feed_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(FeedError, match=f"port {port} is in use; pass another --feed-port"):
            DetectionFeed("127.0.0.1", port).start()


def test_feed_stop_is_prompt_with_clients_connected() -> None:
    f = DetectionFeed("127.0.0.1", 0).start()
    stuck = _stuck_client(f.port)
    try:
        with connect(f"ws://127.0.0.1:{f.port}/") as good:
            good.recv(timeout=5)
            _wait(lambda: f.clients == 2)
            blob = os.urandom(8000).hex()
            for i in range(100):
                f(make_result(i, extra={"pad": blob}))
            threads_before = threading.active_count()
            t0 = time.perf_counter()
            f.stop(timeout=3.0)
            assert time.perf_counter() - t0 < 3.5
            assert not f.running and f.clients == 0
            assert threading.active_count() <= threads_before - 1  # the feed thread is gone
            f(make_result(999))  # after stop: a no-op, not an exception
            f.stop()  # idempotent
            # the reading client got a proper close (1001 going away) after what was queued
            with pytest.raises(ConnectionClosedOK):
                for _ in range(200):
                    good.recv(timeout=2)
    finally:
        stuck.close()


# ---- overlay ---------------------------------------------------------------------------------

def test_overlay_draws_inside_boxes_and_hud() -> None:
    for bg in (0, 255, 128):
        img = np.full((480, 640, 3), bg, np.uint8)
        dets = (Detection("dog", 0.87, Box(100, 100, 300, 300)),)
        out = draw_detections(img, dets)
        assert out is img
        assert (img[100:301, 100:301] != bg).any()
        assert (img[350:, 350:] == bg).all()  # far from the box and its label: untouched
        assert (img[60:100, 100:300] != bg).any()  # label tag above the box

        img2 = np.full((480, 640, 3), bg, np.uint8)
        draw_hud(img2, ["stream 29.9 fps  1.9 Mb/s", "detections 10.0/s  infer 24 ms"])
        assert (img2[8:60, 8:200] != bg).any()
        assert (img2[300:, 300:] == bg).all()
    assert label_color("dog") == label_color("dog") and label_color("dog") != label_color("cat")


def test_overlay_survives_boxes_outside_and_tiny_frames() -> None:
    img = np.zeros((120, 160, 3), np.uint8)
    dets = (Detection("bird", 0.3, Box(-50, -40, 60, 50)),
            Detection("horse", 0.99, Box(100, 90, 1e9, 1e9)),
            Detection("sheep", 0.5, Box(500, 500, 600, 600)),   # fully outside: skipped
            Detection("cow", 0.5, Box(30, 30, 30, 30)),         # degenerate: skipped
            Detection("a-very-long-label-name", 0.5, Box(150, 0, 159, 10)))
    draw_detections(img, dets)
    assert img[0:50, 0:60].any() and img[90:, 100:].any()
    draw_hud(img, ["x" * 200, "frame age 35 ms", "", "model fixture (openvino)"])
    draw_hud(np.zeros((4, 4, 3), np.uint8), ["tiny"])
    draw_hud(img, [])


# ---- display ---------------------------------------------------------------------------------

def test_display_unavailable_without_display(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(window_mod.sys, "platform", "linux")
    assert window_mod.display_available() is False
    monkeypatch.setenv("DISPLAY", ":987")  # no such X server: must not reach (and abort in) Qt
    assert window_mod.display_available() is False


def test_display_loop_draws_new_frames_and_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    """run_display_loop with a fake window (no GUI): converts only new versions, honours stop."""
    shown: list[np.ndarray] = []

    class FakeWindow(window_mod.PreviewWindow):
        def show(self, bgr: np.ndarray) -> bool:
            shown.append(bgr)
            if len(shown) >= 6:
                self.stop_reason = "user-quit"
            return self.stop_reason is None

        def close(self) -> None:
            pass

    import av

    conversions: list[int] = []
    real_to_bgr = window_mod.to_bgr

    def counting_to_bgr(f):
        conversions.append(1)
        return real_to_bgr(f)

    monkeypatch.setattr(window_mod, "to_bgr", counting_to_bgr)
    frame = av.VideoFrame.from_ndarray(np.zeros((480, 640, 3), np.uint8), format="bgr24").reformat(format="yuv420p")
    reason = window_mod.run_display_loop(
        get_frame=lambda: (1, frame), get_result=lambda: make_result(0),
        hud=lambda: ["frame age 35 ms"], should_stop=lambda: False, fps_hint=lambda: 200.0,
        window=FakeWindow())
    assert reason == "user-quit" and len(shown) == 6 and len(conversions) == 1
    assert shown[-1][20:220, 10:110].any()  # the dog box was drawn
    reason = window_mod.run_display_loop(
        get_frame=lambda: (0, None), get_result=lambda: None, hud=list,
        should_stop=lambda: True, fps_hint=lambda: 0.0, window=FakeWindow())
    assert reason == "stopped"
