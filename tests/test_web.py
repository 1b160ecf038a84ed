"""The web viewer against a real stream: an ffmpeg publisher pushing a fixture video over RTMP into the
real ingest, the fixture model detecting, the viewer's aiohttp server on 127.0.0.1 and real HTTP and
WebSocket clients. The token middleware is also tested on its own, without sockets."""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import cv2
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from loguru import logger
from websockets.asyncio.client import connect as ws_connect

from detector_app.glasses.publish import Publisher
from detector_app.ingest.addresses import free_port, wait_listening
from detector_app.ingest.factory import open_listener
from detector_app.pipeline import Pipeline
from detector_app.web.auth import COOKIE, Access, cookie_value, decide, token_middleware
from detector_app.web.server import WebConfig, WebViewer, WebViewerError

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "s3cret-viewer-token"


class Rate:
    """Sink: when each result was made, to compare detection rates with and without viewers."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.lock = threading.Lock()

    def __call__(self, result) -> None:
        with self.lock:
            self.times.append(time.monotonic())

    def between(self, t0: float, t1: float) -> float:
        with self.lock:
            return sum(1 for t in self.times if t0 <= t < t1) / (t1 - t0)


@pytest.fixture(scope="module")
def live(fixture_videos, detector):
    """A real live stream: the cat fixture published in a loop (ffmpeg, real time) into an RTMP listener."""
    rate = Rate()
    endpoint, source = open_listener("rtmp", port=0, bind_host="127.0.0.1", advertise="127.0.0.1", for_glasses=False)
    pipe = Pipeline(source, detector, fps=10.0, sinks=[rate], source_label="rtmp test stream").start()
    wait_listening(endpoint.port, udp=False)
    publisher = Publisher(fixture_videos["cat_480p15"], endpoint.local_publish_url, loop=True).start()
    deadline = time.monotonic() + 15
    while pipe.latest_result is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pipe.latest_result is not None, "the live stream gave no detection result"
    yield pipe, rate
    publisher.stop()
    pipe.stop()


def _viewer(views, **kw) -> WebViewer:
    return WebViewer(WebConfig(host="127.0.0.1", port=0, token=kw.pop("token", None)), views, **kw).start()


async def _frame(ws: aiohttp.ClientWebSocketResponse) -> tuple[dict, bytes]:
    meta = await ws.receive(timeout=5)
    assert meta.type == aiohttp.WSMsgType.TEXT, meta
    jpeg = await ws.receive(timeout=5)
    assert jpeg.type == aiohttp.WSMsgType.BINARY, jpeg
    return json.loads(meta.data), jpeg.data


class LogCatcher:
    """The viewer's loguru records at WARNING and above, and aiohttp's and asyncio's (stdlib) errors."""

    def __init__(self, caplog) -> None:
        self.caplog = caplog
        self.records: list[str] = []

    def __enter__(self) -> LogCatcher:
        self._id = logger.add(lambda m: self.records.append(str(m)), level="WARNING",
                              filter=lambda r: r["name"].startswith("detector_app.web"))
        self.caplog.set_level("ERROR")
        return self

    def __exit__(self, *exc) -> None:
        logger.remove(self._id)

    def problems(self) -> list[str]:
        return self.records + [f"{r.name}: {r.getMessage()} {r.exc_text or ''}" for r in self.caplog.records
                               if r.name.split(".")[0] in ("aiohttp", "asyncio")]


# ------------------------------------------------------------------------------------ access token

def test_token_decision():
    assert decide(None) is Access.ALLOW  # loopback: open
    assert decide(TOKEN) is Access.DENY
    assert decide(TOKEN, authorization=f"Bearer {TOKEN}") is Access.ALLOW
    assert decide(TOKEN, authorization=f"bearer {TOKEN}") is Access.ALLOW
    assert decide(TOKEN, authorization=f"Basic {TOKEN}") is Access.DENY
    assert decide(TOKEN, authorization="Bearer " + TOKEN[:-1]) is Access.DENY
    assert decide(TOKEN, cookie=cookie_value(TOKEN)) is Access.ALLOW
    assert decide(TOKEN, cookie=TOKEN) is Access.DENY  # the cookie holds the derived value, never the token
    assert decide(TOKEN, cookie="nope") is Access.DENY
    assert decide(TOKEN, query_token=TOKEN) is Access.ALLOW_SET_COOKIE
    assert decide(TOKEN, query_token=TOKEN + "x") is Access.DENY
    assert decide(TOKEN, authorization="Bearer ключ", cookie="\udcff") is Access.DENY  # odd bytes: no exception


def test_token_middleware_without_sockets():
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="the page")

    async def run() -> None:
        check = token_middleware(TOKEN)
        denied = await check(make_mocked_request("GET", "/api/state"), handler)
        assert denied.status == 401 and b"the page" not in denied.body
        assert denied.headers["WWW-Authenticate"].startswith("Bearer")
        ok = await check(make_mocked_request("GET", "/", headers={"Authorization": f"Bearer {TOKEN}"}), handler)
        assert ok.status == 200 and ok.text == "the page"
        once = await check(make_mocked_request("GET", f"/?a=1&token={TOKEN}"), handler)
        assert once.status == 303 and once.headers["Location"] == "/?a=1"  # the token leaves the address bar
        cookie = once.cookies[COOKIE]
        assert cookie.value == cookie_value(TOKEN) != TOKEN and cookie["httponly"] and cookie["samesite"] == "Strict"
        with_cookie = await check(make_mocked_request("GET", "/", headers={"Cookie": f"{COOKIE}={cookie.value}"}),
                                  handler)
        assert with_cookie.status == 200
        open_mw = token_middleware(None)
        assert (await open_mw(make_mocked_request("GET", "/"), handler)).status == 200

    asyncio.run(run())


def test_non_loopback_bind_needs_a_token(monkeypatch):
    """Built, never started: no traffic to the LAN address."""
    monkeypatch.delenv("WEB_TOKEN", raising=False)
    lan = WebViewer(WebConfig(host="0.0.0.0", port=8080), lambda: [])
    assert lan.token and len(lan.token) >= 24
    assert WebViewer(WebConfig(host="0.0.0.0", port=8080), lambda: []).token != lan.token  # random per start
    monkeypatch.setenv("WEB_TOKEN", TOKEN)
    assert WebViewer(WebConfig.from_env("192.168.1.20", 8080), lambda: []).token == TOKEN
    assert WebViewer(WebConfig.from_env("127.0.0.1", 8080), lambda: []).token is None
    lan.port = 8080
    assert lan.url.endswith(f":8080/?token={lan.token}")


def test_every_route_needs_the_token_when_required(live, tmp_path, fixture_videos):
    pipe, _ = live
    store = _store_with_sightings(tmp_path, 1, fixture_videos["cat_480p15"])
    viewer = _viewer(lambda: [pipe], sightings=store, require_token=True, token=TOKEN)
    base = f"http://127.0.0.1:{viewer.port}"
    routes = ["/", "/static/viewer.js", "/static/viewer.css", "/api/state", "/api/streams/1/frame.jpg",
              "/api/sightings", "/api/sightings/1", "/api/sightings/1/thumbnail.jpg", "/api/sightings/1/clip.mp4",
              "/nothing-here"]

    async def run() -> None:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:  # as browsers: IP cookies
            for path in routes:
                for headers in ({}, {"Authorization": "Bearer wrong"}, {"Cookie": f"{COOKIE}=wrong"}):
                    async with http.get(base + path, headers=headers, allow_redirects=False) as r:
                        body = await r.read()
                        assert r.status == 401, (path, headers, r.status)
                        assert b"cat" not in body and b"stream" not in body and len(body) < 100, body
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await http.ws_connect(base + "/api/streams/1/ws")
            assert err.value.status == 401
            bearer = {"Authorization": f"Bearer {TOKEN}"}
            for path in routes[:-1]:
                async with http.get(base + path, headers=bearer) as r:
                    assert r.status == 200, (path, r.status)
            async with http.get(f"{base}/?token={TOKEN}", allow_redirects=False) as r:  # once, from the printed URL
                assert r.status == 303 and r.headers["Location"] == "/"
                assert "HttpOnly" in r.headers["Set-Cookie"]
            async with http.get(f"{base}/api/state") as r:  # the cookie jar now has it
                assert r.status == 200 and (await r.json())["streams"][0]["name"] == "rtmp test stream"
            ws = await http.ws_connect(base + "/api/streams/1/ws")
            await ws.send_str("next")
            meta, jpeg = await _frame(ws)
            assert meta["bytes"] == len(jpeg) > 1000
            await ws.close()

    try:
        asyncio.run(run())
    finally:
        viewer.stop()


# ------------------------------------------------------------------------------------ live frames

def test_state_and_snapshot_of_a_live_stream(live):
    pipe, _ = live
    viewer = _viewer(lambda: [pipe])

    def healthy(h: dict) -> bool:
        return h["connected"] and 10 <= h["fps"] <= 20 and h["bitrate_kbps"] > 100 and h["frame_age_ms"] < 500

    def steady(s: dict) -> bool:  # the 5 s detection rate still holds the start-up (CI saw 4.62/s once)
        return healthy(s["health"]) and s["detections_per_s"] > 5

    async def run() -> None:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 10.0  # a loaded box can stall the publisher for a moment
            while True:
                async with http.get(f"http://127.0.0.1:{viewer.port}/api/state") as r:
                    state = await r.json()
                if steady(state["streams"][0]) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            assert state["sightings"] is False and len(state["streams"]) == 1
            s = state["streams"][0]
            assert s["id"] == 1 and s["name"] == "rtmp test stream" and "fixture-animals" in s["model"]
            assert healthy(s["health"]), s["health"]
            assert s["health"]["width"] == 854 and s["detections_per_s"] > 5, s
            assert s["jpegs"] == 0, "a JPEG was made while nobody watched"
            async with http.get(f"http://127.0.0.1:{viewer.port}/api/streams/1/frame.jpg") as r:
                assert r.status == 200 and r.content_type == "image/jpeg"
                img = cv2.imdecode(np.frombuffer(await r.read(), np.uint8), cv2.IMREAD_COLOR)
            assert img.shape == (480, 854, 3)
            async with http.get(f"http://127.0.0.1:{viewer.port}/api/streams/9/frame.jpg") as r:
                assert r.status == 404
            async with http.get(f"http://127.0.0.1:{viewer.port}/") as r:
                page = await r.text()
            assert r.status == 200 and "viewer.js" in page

    try:
        asyncio.run(run())
    finally:
        viewer.stop()


def test_slow_viewer_gets_fewer_frames_never_older_ones(live, caplog):
    """A fast viewer, a slow one (2 frames/s) and a stuck one (asks, never reads) watch together: the fast
    one gets ≤ 10 fps, the slow one fewer but just as fresh, the stuck one holds nothing queued, the
    JPEGs are shared (encodes ≈ the fast viewer's frames, not the sum) and detection keeps its rate."""
    pipe, rate = live
    viewer = _viewer(lambda: [pipe])
    url = f"http://127.0.0.1:{viewer.port}/api/streams/1/ws"
    watch_s = 4.0

    async def consume(ws, pause: float) -> list[tuple[int, float, int]]:
        got = []
        end = time.monotonic() + watch_s
        while time.monotonic() < end:
            await ws.send_str("next")
            meta, jpeg = await _frame(ws)
            got.append((meta["seq"], time.time() - meta["captured_at"], len(jpeg)))
            await asyncio.sleep(pause)
        return got

    async def state() -> dict:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{viewer.port}/api/state") as r:
                return (await r.json())["streams"][0]

    async def run():
        t_quiet = time.monotonic()
        await asyncio.sleep(watch_s)  # detection rate with nobody watching
        t_watch = time.monotonic()
        async with aiohttp.ClientSession() as http:
            stuck = await http.ws_connect(url)
            for _ in range(50):
                await stuck.send_str("next")
            fast, slow = await http.ws_connect(url), await http.ws_connect(url)
            jpegs_before = (await state())["jpegs"]
            got_fast, got_slow = await asyncio.gather(consume(fast, 0.0), consume(slow, 0.5))
            jpegs = (await state())["jpegs"] - jpegs_before
            t_end = time.monotonic()
            stuck_frames = 0
            try:
                while True:
                    msg = await stuck.receive(timeout=0.3)
                    stuck_frames += msg.type == aiohttp.WSMsgType.BINARY
            except asyncio.TimeoutError:
                pass
            for ws in (stuck, fast, slow):
                await ws.close()
        return got_fast, got_slow, jpegs, stuck_frames, rate.between(t_quiet, t_watch), rate.between(t_watch, t_end)

    with LogCatcher(caplog) as logs:
        try:
            got_fast, got_slow, jpegs, stuck_frames, rate_quiet, rate_watched = asyncio.run(run())
        finally:
            viewer.stop()
    assert logs.problems() == []
    ages_fast, ages_slow = [a for _, a, _ in got_fast], [a for _, a, _ in got_slow]
    print(f"\nfast viewer {len(got_fast)} frames, age median {statistics.median(ages_fast) * 1000:.0f} ms "
          f"max {max(ages_fast) * 1000:.0f} ms; slow viewer {len(got_slow)} frames, age median "
          f"{statistics.median(ages_slow) * 1000:.0f} ms max {max(ages_slow) * 1000:.0f} ms; {jpegs} JPEGs; "
          f"stuck viewer {stuck_frames} frames; detections {rate_quiet:.1f}/s unwatched, {rate_watched:.1f}/s watched")
    assert 12 <= len(got_fast) <= watch_s * 10 + 3, "the fast viewer is not capped at 10 fps (or starved)"
    assert [s for s, _, _ in got_fast] == sorted({s for s, _, _ in got_fast}), "frames repeated or out of order"
    assert 4 <= len(got_slow) <= watch_s / 0.5 + 2
    # measured 40/85 ms (fast) and 75/110 ms (slow) on a loaded box; the margins are for CI's 2 shared cores
    assert statistics.median(ages_fast) < 0.3 and max(ages_fast) < 1.0
    assert statistics.median(ages_slow) < 0.3 and max(ages_slow) < 1.0, "the slow viewer got old frames"
    assert jpegs <= len(got_fast) + 3, f"{jpegs} JPEGs for {len(got_fast)} + {len(got_slow)} frames: not shared"
    assert stuck_frames <= 2, "frames queued up for a viewer that does not read"
    assert rate_watched >= 0.6 * rate_quiet, "watching slowed detection down"  # measured 9.8 vs 10.0/s


def test_encode_budget_spaces_encodes_across_streams():
    from detector_app.web.frames import EncodeBudget

    async def run() -> list[float]:
        budget, times = EncodeBudget(20.0), []

        async def stream() -> None:  # three watched streams asking as fast as they can
            for _ in range(7):
                await budget.turn()
                times.append(time.monotonic())

        await asyncio.gather(stream(), stream(), stream())
        return times

    times = asyncio.run(run())
    assert len(times) == 21 and 0.99 <= times[-1] - times[0] <= 1.5  # 20 slots 50 ms apart, never earlier


def test_total_budget_caps_a_watched_stream(live):
    pipe, _ = live
    viewer = WebViewer(WebConfig(port=0, max_fps=10.0, max_total_fps=4.0), lambda: [pipe]).start()

    async def run() -> int:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(f"http://127.0.0.1:{viewer.port}/api/streams/1/ws")
            n, end = 0, time.monotonic() + 2.0
            while time.monotonic() < end:
                await ws.send_str("next")
                await _frame(ws)
                n += 1
            await ws.close()
            return n

    try:
        n = asyncio.run(run())
    finally:
        viewer.stop()
    assert 5 <= n <= 2.0 * 4 + 2, f"{n} frames in 2 s with a budget of 4 JPEGs/s"


def test_viewer_leaving_mid_frame_logs_nothing(live, caplog):
    """Browsers close tabs mid-stream: sockets reset in the middle of a frame or a file are not errors."""
    pipe, _ = live
    viewer = _viewer(lambda: [pipe])

    async def run() -> None:
        for _ in range(3):
            ws = await ws_connect(f"ws://127.0.0.1:{viewer.port}/api/streams/1/ws")
            await ws.send("next")
            await asyncio.wait_for(ws.recv(), 5)  # the frame's meta line; its JPEG is on the way
            ws.transport.abort()  # a reset, not a close handshake
        for _ in range(3):  # the same for a snapshot download
            reader, writer = await asyncio.open_connection("127.0.0.1", viewer.port)
            writer.write(b"GET /api/streams/1/frame.jpg HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            await reader.read(100)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            writer.transport.abort()
        await asyncio.sleep(0.5)

    with LogCatcher(caplog) as logs:
        try:
            asyncio.run(run())
            async def still_serves() -> int:
                async with aiohttp.ClientSession() as http:
                    async with http.get(f"http://127.0.0.1:{viewer.port}/api/state") as r:
                        return r.status
            assert asyncio.run(still_serves()) == 200
        finally:
            viewer.stop()
    assert logs.problems() == []


def test_port_in_use_raises_a_user_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(WebViewerError, match=f"port {port} is in use"):
            WebViewer(WebConfig(port=port), lambda: []).start()
    assert not any(t.name == "web-viewer" and t.is_alive() for t in threading.enumerate())


@pytest.mark.parametrize("command", ["detect", "serve"])
def test_port_in_use_is_one_line_and_exit_2(command, fixture_videos, tmp_path):
    from tests.conftest import MODEL, serve_env

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        if command == "detect":
            args, env = ["detect", str(fixture_videos["cat_480p15"]), "--feed-port", "0"], None
        else:
            args, env = ["serve", "--feed-port", "0"], serve_env(free_port(), "k", "com.example.webtest")
            env["DATA_DIR"] = str(tmp_path)
        proc = subprocess.run([sys.executable, "-m", "detector_app", *args, "--model", str(MODEL), "--headless",
                               "--web-port", str(port)],
                              capture_output=True, text=True, timeout=90, cwd=ROOT, env=env)
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if "ERROR" in ln]
    assert len(errors) == 1 and f"port {port} is in use" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_streams_keep_their_ids_and_closed_ones_are_forgotten(live, detector):
    """serve: one stream per wearer, coming and going; ids are never reused."""
    from concurrent.futures import ThreadPoolExecutor

    from detector_app.web.streams import StreamRegistry

    pipe, _ = live
    _, source = open_listener("rtmp", port=0, bind_host="127.0.0.1", advertise="127.0.0.1", for_glasses=False)
    other = Pipeline(source, detector, source_label="second wearer")  # a real pipeline, not started
    views = [pipe, other]
    with ThreadPoolExecutor(1) as pool:
        reg = StreamRegistry(lambda: list(views), pool, max_fps=10)
        first = [(sid, v) for sid, v, _ in reg.current()]
        assert first == [(1, pipe), (2, other)]
        enc = reg.encoder(2)
        assert enc is not None and enc.view is other and reg.encoder(2) is enc  # one shared encoder
        views.remove(other)
        assert [sid for sid, _, _ in reg.current()] == [1] and reg.encoder(2) is None
        views.append(other)  # the same stream back: a new id, a new encoder
        assert [sid for sid, _, _ in reg.current()] == [1, 3] and reg.encoder(3) is not enc
    source.close()


# ------------------------------------------------------------------------------------ sightings

def _store_with_sightings(tmp_path: Path, n: int, clip: Path):
    """A real store with ``n`` closed sightings, each with a real JPEG thumbnail and MP4 ``clip``."""
    from detector_app.sightings.store import SightingStore

    store = SightingStore(tmp_path / "sightings.db")
    jpeg = cv2.imencode(".jpg", np.full((90, 120, 3), 127, np.uint8))[1].tobytes()
    t = time.time() - 100
    for i in range(n):
        label = "cat" if i % 2 == 0 else "horse"
        sid = store.insert(stream="rtmp test stream", session=1, track_id=i + 1, label=label, first_seen=t + i,
                           last_seen=t + i + 3, best_confidence=0.9, status="closed")
        store.write_media(f"d/{sid:06d}.jpg", jpeg)
        store.write_media(f"d/{sid:06d}.mp4", clip.read_bytes())
        store.update(sid, thumbnail=f"d/{sid:06d}.jpg", clip=f"d/{sid:06d}.mp4")
    return store


def test_sightings_api_files_and_ranges(tmp_path, caplog, fixture_videos):
    store = _store_with_sightings(tmp_path, 3, fixture_videos["cat_480p15"])
    viewer = _viewer(lambda: [], sightings=store)
    base = f"http://127.0.0.1:{viewer.port}"
    clip_size = fixture_videos["cat_480p15"].stat().st_size

    async def run() -> None:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/api/state") as r:
                version = (await r.json())["sightings_version"]
            async with http.get(f"{base}/api/sightings") as r:
                listed = (await r.json())["sightings"]
            assert [s["id"] for s in listed] == [3, 2, 1]  # newest first
            assert listed[0]["thumbnail_url"] == "api/sightings/3/thumbnail.jpg" and "thumbnail" not in listed[0]
            async with http.get(f"{base}/api/sightings?label=horse") as r:
                assert [s["id"] for s in (await r.json())["sightings"]] == [2]
            async with http.get(f"{base}/api/sightings?before=3&limit=1") as r:
                assert [s["id"] for s in (await r.json())["sightings"]] == [2]
            async with http.get(f"{base}/api/sightings?limit=x") as r:
                assert r.status == 400
            async with http.get(f"{base}/api/sightings?before={10**30}") as r:  # past SQLite's INTEGER
                assert r.status == 200 and [s["id"] for s in (await r.json())["sightings"]] == [3, 2, 1]
            for huge in (f"/api/sightings/{10**30}", f"/api/sightings/{10**30}/clip.mp4"):
                async with http.get(base + huge) as r:
                    assert r.status == 404, huge
            async with http.get(f"{base}/{listed[0]['thumbnail_url']}") as r:
                assert r.status == 200 and r.content_type == "image/jpeg"
            async with http.get(f"{base}/{listed[0]['clip_url']}", headers={"Range": "bytes=100-1099"}) as r:
                assert r.status == 206 and len(await r.read()) == 1000  # <video> seeks with ranges
                assert r.headers["Content-Range"] == f"bytes 100-1099/{clip_size}"
            for bad in ("/api/sightings/99/clip.mp4", "/api/sightings/abc/clip.mp4",
                        "/api/sightings/1/../../../sightings.db", "/api/sightings/%2e%2e%2fsightings.db/clip.mp4",
                        "/static/../app.py", "/static/%2e%2e/server.py"):
                async with http.get(base + bad) as r:
                    assert r.status == 404, bad
            store.insert(stream="rtmp test stream", session=1, track_id=9, label="cat", first_seen=time.time(),
                         last_seen=time.time(), best_confidence=0.5)
            async with http.get(f"{base}/api/state") as r:
                assert (await r.json())["sightings_version"] != version  # the page reloads the list on this
            async with http.get(f"{base}/api/sightings") as r:
                newest = (await r.json())["sightings"][0]
            assert newest["id"] == 4 and newest["status"] == "open"
            assert newest["thumbnail_url"] is None and newest["clip_url"] is None
            async with http.get(f"{base}/api/sightings/4/clip.mp4") as r:
                assert r.status == 404
            # a viewer leaving in the middle of a clip download
            reader, writer = await asyncio.open_connection("127.0.0.1", viewer.port)
            writer.write(b"GET /api/sightings/1/clip.mp4 HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            await reader.read(1000)
            writer.transport.abort()
            await asyncio.sleep(0.3)

    with LogCatcher(caplog) as logs:
        try:
            asyncio.run(run())
        finally:
            viewer.stop()
            store.close()
    assert logs.problems() == []


def test_shutdown_with_viewers_connected_is_bounded(live):
    pipe, _ = live
    viewer = _viewer(lambda: [pipe])

    async def connect():
        http = aiohttp.ClientSession()
        ws = await http.ws_connect(f"http://127.0.0.1:{viewer.port}/api/streams/1/ws")
        await ws.send_str("next")
        await _frame(ws)
        return http, ws

    loop = asyncio.new_event_loop()
    try:
        http, ws = loop.run_until_complete(connect())
        t0 = time.monotonic()
        viewer.stop()
        assert time.monotonic() - t0 < 3.0
        assert not any(t.name == "web-viewer" and t.is_alive() for t in threading.enumerate())
        msg = loop.run_until_complete(ws.receive(timeout=3))
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        loop.run_until_complete(http.close())
    finally:
        loop.close()

