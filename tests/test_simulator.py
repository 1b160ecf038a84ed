"""Fast checks of the MentraOS cloud simulator against a minimal scripted client (websockets)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import websockets
from aiohttp import web
from websockets.asyncio.client import ClientConnection, connect

from detector_app.ingest.addresses import free_port
from detector_app.mentra.simulator import CloudSimulator, Faults, SimulatorError, frame
from detector_app.mentra.simulator.protocol import EVEN_G1_CAMERA, MENTRA_LIVE
from detector_app.mentra.simulator.replies import UNSUPPORTED_RESOLUTION, audio_reply, resolve_stream_config

PKG = "com.example.detector"
KEY = "test-key-123"
USER = "alice-smith@example.com"  # hyphen on purpose: the session id parser must cope

pytestmark = pytest.mark.timeout(60)


class FakeApp:
    """Webhook receiver that answers 200 at once and keeps the bodies; the test plays the app's WebSocket side."""

    def __init__(self) -> None:
        self.webhooks: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> FakeApp:
        app = web.Application()

        async def webhook(request: web.Request) -> web.Response:
            self.webhooks.append(await request.json())
            self.arrived.set()
            return web.json_response({"status": "success"})

        app.router.add_post("/webhook", webhook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def wait_webhook(self, type_: str, index: int = 0, timeout: float = 5.0) -> dict[str, Any]:
        async def _find() -> dict[str, Any]:
            while True:
                hits = [w for w in self.webhooks if w["type"] == type_]
                if len(hits) > index:
                    return hits[index]
                self.arrived.clear()
                await self.arrived.wait()

        return await asyncio.wait_for(_find(), timeout)


async def recv_json(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def recv_until(ws: ClientConnection, pred: Callable[[dict[str, Any]], bool], timeout: float = 8.0) -> dict[str, Any]:
    async def _loop() -> dict[str, Any]:
        while True:
            msg = await recv_json(ws, timeout)
            if pred(msg):
                return msg

    return await asyncio.wait_for(_loop(), timeout)


async def expect_close(ws: ClientConnection, timeout: float = 5.0) -> tuple[int | None, str | None]:
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except websockets.ConnectionClosed as exc:
        return (exc.rcvd.code if exc.rcvd else None), (exc.rcvd.reason if exc.rcvd else None)


def init_msg(session_id: str, key: str = KEY) -> str:
    return json.dumps({"type": "tpa_connection_init", "packageName": PKG, "sessionId": session_id, "apiKey": key,
                       "timestamp": "2026-04-02T10:11:12.500Z"})


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro_fn())


async def started(app: FakeApp, sim: CloudSimulator) -> tuple[dict[str, Any], ClientConnection, dict[str, Any]]:
    """Start a session, connect and init like an app would; returns (webhook, socket, ack)."""
    task = asyncio.create_task(sim.start_session(USER))
    hook = await app.wait_webhook("session_request")
    url = hook.get("mentraOSWebsocketUrl") or hook["augmentOSWebsocketUrl"]
    ws = await connect(url)
    await ws.send(init_msg(hook["sessionId"]))
    ack = await recv_json(ws)
    await asyncio.wait_for(task, 5)
    return hook, ws, ack


def sim_for(app: FakeApp, generation: str = "D", **kw: Any) -> CloudSimulator:
    return CloudSimulator(app_url=app.url, package_name=PKG, api_key=KEY, generation=generation, echo=False, **kw)


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    """A 4 s H.264 test clip (the virtual glasses stream-copy it)."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed")
    video = tmp_path / "clip.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=15", "-t", "4",
                    "-c:v", "libx264", "-preset", "ultrafast", "-g", "15", "-pix_fmt", "yuv420p", str(video)],
                   check=True, timeout=30)
    return video


def test_wrong_key_gets_invalid_api_key_and_1008() -> None:
    async def body() -> None:
        async with FakeApp() as app, sim_for(app, "B") as sim:
            asyncio.create_task(sim.start_session(USER, wait=False))
            hook = await app.wait_webhook("session_request")
            async with connect(hook["augmentOSWebsocketUrl"]) as ws:
                await ws.send(init_msg(hook["sessionId"], key="wrong"))
                err = await recv_json(ws)
                assert err["type"] == "tpa_connection_error" and err["code"] == "INVALID_API_KEY"
                assert await expect_close(ws) == (1008, "Invalid API key")
    run(body)


@pytest.mark.parametrize("generation,closes", [("B", True), ("D", False)])
def test_message_before_init_is_session_not_found(generation: str, closes: bool) -> None:
    async def body() -> None:
        async with FakeApp() as app, sim_for(app, generation) as sim:
            async with connect(sim.ws_url) as ws:
                await ws.send(json.dumps({"type": "subscription_update", "packageName": PKG, "subscriptions": []}))
                err = await recv_json(ws)
                assert (err["type"], err["code"]) == ("tpa_connection_error", "SESSION_NOT_FOUND")
                if closes:
                    assert (await expect_close(ws))[0] == 1008
                else:  # D keeps the socket open: the next frame is answered (still unbound: the same error)
                    await ws.send(json.dumps({"type": "ping"}))
                    again = await recv_json(ws)
                    assert (again["type"], again["code"]) == ("tpa_connection_error", "SESSION_NOT_FOUND")
    run(body)


def test_init_for_app_not_started() -> None:
    async def body() -> None:
        async with FakeApp() as app, sim_for(app, "D", connect_deadline_s=0.3) as sim:
            with pytest.raises(SimulatorError):
                await sim.start_session(USER, timeout=3)
            assert sim.log.find(frame("sim", "app_start_timeout")) is not None
            async with connect(sim.ws_url) as ws:
                await ws.send(init_msg(f"{USER}-{PKG}"))
                err = await recv_json(ws)
                assert err["code"] == "APP_NOT_STARTED"
                assert (await expect_close(ws))[0] == 1008
    run(body)


def test_generation_b_webhook_and_ack_spelling() -> None:
    async def body() -> None:
        async with FakeApp() as app, sim_for(app, "B") as sim:
            hook, ws, ack = await started(app, sim)
            assert set(hook) == {"type", "sessionId", "userId", "timestamp", "augmentOSWebsocketUrl"}
            assert hook["sessionId"] == f"{USER}-{PKG}" and hook["augmentOSWebsocketUrl"].endswith("/app-ws")
            assert ack["type"] == "tpa_connection_ack" and "augmentosSettings" in ack and "mentraosSettings" not in ack
            assert ack["capabilities"]["hasDisplay"] is False and ack["capabilities"]["hasCamera"] is True
            await ws.send(json.dumps({"type": "ping"}))  # B: logged as unhandled, no pong
            await ws.send(json.dumps({"type": "stream_status_check", "packageName": PKG}))
            msg = await recv_json(ws)
            assert msg == {**msg, "type": "stream_status_check_response", "hasActiveStream": False}
            await ws.close()
    run(body)


def test_generation_d_webhook_ack_device_state_and_pong() -> None:
    async def body() -> None:
        async with FakeApp() as app, sim_for(app, "D", device="even_g1") as sim:
            hook, ws, ack = await started(app, sim)
            assert hook["websocketUrl"].endswith("/ws/miniapp")
            assert hook["mentraOSWebsocketUrl"] == hook["augmentOSWebsocketUrl"]
            assert "mentraosSettings" in ack and "augmentosSettings" not in ack
            assert ack["userId"] == USER and ack["subscriptions"] == []
            assert ack["capabilities"]["hasDisplay"] is True
            state = await recv_json(ws)
            assert state["type"] == "device_state_update" and state["fullSnapshot"] is True
            await ws.send(json.dumps({"type": "ping"}))
            pong = await recv_json(ws)
            assert pong["type"] == "pong" and isinstance(pong["timestamp"], int)
            await ws.send(json.dumps({"type": "display_event", "packageName": PKG, "sessionId": "", "view": "main",
                                      "layout": {"layoutType": "text_wall", "text": "cat 92%"}}))
            await sim.wait_for(frame("app->cloud", "display_event"), 3)
            await ws.close()
    run(body)


def test_b_rejects_srt_url_with_invalid_rtmp_url() -> None:
    async def body() -> None:
        async with FakeApp() as app, sim_for(app, "B") as sim:
            _, ws, _ = await started(app, sim)
            await ws.send(json.dumps({"type": "rtmp_stream_request", "packageName": PKG,
                                      "rtmpUrl": "srt://127.0.0.1:9000?streamid=x"}))
            err = await recv_json(ws)
            assert (err["code"], err["message"]) == ("INTERNAL_ERROR", "Invalid RTMP URL")
            assert (await expect_close(ws))[0] == 1008
    run(body)


@pytest.mark.parametrize("fault,code", [("deny_camera", "PERMISSION_DENIED"), ("no_wifi", "WIFI_NOT_CONNECTED")])
def test_stream_request_fault_switches(fault: str, code: str) -> None:
    async def body() -> None:
        async with FakeApp() as app, sim_for(app, "D", faults=Faults(**{fault: True})) as sim:
            _, ws, _ = await started(app, sim)
            await ws.send(json.dumps({"type": "stream_request", "packageName": PKG,
                                      "streamUrl": "rtmp://127.0.0.1:1/live/k"}))
            err = await recv_until(ws, lambda m: m["type"] == "tpa_connection_error")
            assert err["code"] == code
            assert (await expect_close(ws))[0] == 1008
    run(body)


def test_d_duplicate_statuses_and_stop() -> None:
    """D sends stream_status + rtmp_stream_status (+ data_stream to subscribers); stop -> stopped at once."""
    async def body() -> None:
        async with FakeApp() as app, sim_for(app, "D") as sim:
            _, ws, _ = await started(app, sim)
            await ws.send(json.dumps({"type": "subscription_update", "packageName": PKG,
                                      "subscriptions": ["rtmp_stream_status"]}))
            await sim.wait_for(frame("sim", "subscriptions"), 3)
            # Nobody listens on port 1: the glasses keep "connecting" (still initializing for the app).
            await ws.send(json.dumps({"type": "rtmp_stream_request", "packageName": PKG,
                                      "rtmpUrl": "rtmp://127.0.0.1:1/live/k"}))
            first = [await recv_until(ws, lambda m: m["type"] != "device_state_update") for _ in range(3)]
            assert [m["type"] for m in first] == ["stream_status", "rtmp_stream_status", "data_stream"]
            sid = first[0]["streamId"]
            assert sid.startswith("s") and all(m.get("streamId", m.get("data", {}).get("streamId")) == sid for m in first)
            assert first[0]["status"] == first[1]["status"] == "initializing"
            assert "stats" not in first[0] and "errorDetails" not in first[0]
            await ws.send(json.dumps({"type": "stream_stop", "packageName": PKG, "streamId": sid}))
            stopped = await recv_until(ws, lambda m: m["type"] == "stream_status")
            assert stopped["status"] == "stopped"
            await ws.close()
    run(body)


def test_abnormal_close_triggers_resurrection_webhooks() -> None:
    async def body() -> None:
        async with FakeApp() as app, sim_for(app, "B", grace_s=0.3) as sim:
            _, ws, _ = await started(app, sim)
            await sim.drop_app_socket(USER)  # abrupt: the client sees 1006
            code, _ = await expect_close(ws)
            assert code is None  # no close frame
            await app.wait_webhook("stop_request")
            second = await app.wait_webhook("session_request", index=1)
            assert second["sessionId"] == f"{USER}-{PKG}"
            kinds = [e.type for e in sim.events if e.direction == "sim"]
            assert kinds.index("grace_start") < kinds.index("resurrect")
    run(body)


def test_stop_session_order() -> None:
    async def body() -> None:
        async with FakeApp() as app, sim_for(app, "D") as sim:
            _, ws, _ = await started(app, sim)
            await recv_json(ws)  # device_state_update
            await sim.stop_session(USER)
            assert (await recv_json(ws))["type"] == "app_stopped"
            assert await expect_close(ws) == (1000, "App stopped")
            assert app.webhooks[-1]["type"] == "stop_request" and app.webhooks[-1]["reason"] == "user_disabled"
    run(body)


def test_say_and_button_reach_subscribers() -> None:
    async def body() -> None:
        async with FakeApp() as app, sim_for(app, "B") as sim:
            _, ws, _ = await started(app, sim)
            await ws.send(json.dumps({"type": "subscription_update", "packageName": PKG,
                                      "subscriptions": ["transcription", "button_press"]}))
            await sim.wait_for(frame("sim", "subscriptions"), 3)
            assert await sim.say("stop stream")
            interim = await recv_json(ws)
            final = await recv_until(ws, lambda m: m["data"].get("isFinal") is True)
            assert interim["streamType"] == final["streamType"] == "transcription:en-US"
            assert interim["data"]["isFinal"] is False and final["data"]["text"] == "stop stream"
            assert await sim.press_button(USER, press_type="long")
            btn = await recv_json(ws)
            assert btn["streamType"] == "button_press" and btn["data"]["pressType"] == "long"
            await ws.send(json.dumps({"type": "audio_play_request", "packageName": PKG, "requestId": "r1",
                                      "audioUrl": "https://h/api/tts?text=I%20see%20a%20cat"}))
            resp = await recv_json(ws)
            assert resp["type"] == "audio_play_response" and resp["requestId"] == "r1" and resp["success"]
            await ws.close()
    run(body)


def test_stream_active_then_glasses_drop_and_reconnect(clip: Path, rtmp_receiver: str) -> None:
    """Real publisher into a looping ffmpeg RTMP receiver: initializing -> active -> (drop) initializing -> active."""
    video = clip

    async def body() -> None:
        faults = Faults(stream_drop_after_s=1.0, stream_restore_after_s=0.5)
        async with FakeApp() as app, sim_for(app, "B", video=video, faults=faults,
                                             publisher_reconnect_delay_s=0.5) as sim:
            _, ws, _ = await started(app, sim)
            await ws.send(json.dumps({"type": "rtmp_stream_request", "packageName": PKG,
                                      "rtmpUrl": rtmp_receiver}))
            statuses: list[str] = []
            while statuses[-2:] != ["initializing", "active"] or statuses.count("active") < 2:
                msg = await recv_until(ws, lambda m: m["type"] == "rtmp_stream_status", timeout=15)
                statuses.append(msg["status"])
            assert statuses == ["initializing", "active", "initializing", "active"]
            await ws.send(json.dumps({"type": "rtmp_stream_stop", "packageName": PKG}))
            assert (await recv_until(ws, lambda m: m["type"] == "rtmp_stream_status"))["status"] == "stopped"
            await ws.close()

    run(body)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_d_accepts_srt_stream_request(tmp_path: Path) -> None:
    """D: stream_request + srt:// reaches active through a real SRT listener (glasses are the caller)."""
    port = free_port()
    receiver = subprocess.Popen(
        ["ffmpeg", "-v", "error", "-i", f"srt://127.0.0.1:{port}?mode=listener", "-f", "null", "-"],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def body() -> None:
        async with FakeApp() as app, sim_for(app, "D", publisher_reconnect_delay_s=0.3) as sim:
            _, ws, _ = await started(app, sim)
            await ws.send(json.dumps({"type": "stream_request", "packageName": PKG,
                                      "streamUrl": f"srt://127.0.0.1:{port}?streamid=abc",
                                      "video": {"width": 640, "height": 480, "bitrate": 800000, "frameRate": 10}}))
            active = await recv_until(ws, lambda m: m["type"] == "stream_status" and m["status"] == "active", 20)
            assert active["resolvedConfig"]["transport"] == "srt"
            assert active["resolvedConfig"]["video"] == {"width": 640, "height": 480, "captureWidth": 640,
                                                         "captureHeight": 480, "bitrate": 800000, "fps": 10}
            await ws.send(json.dumps({"type": "stream_status_check", "packageName": PKG}))
            check = await recv_until(ws, lambda m: m["type"] == "stream_status_check_response")
            assert check["hasActiveStream"] and check["streamInfo"]["streamUrl"].startswith("srt://")
            await ws.close()

    try:
        run(body)
    finally:
        os.killpg(receiver.pid, signal.SIGKILL)
        receiver.wait(5)


def test_run_simulate_starts_and_exits_on_sigint(tmp_path: Path) -> None:
    """CLI entry: prints the banner, posts the webhook (app absent here), exits 0 on Ctrl-C."""
    import sys
    import time

    code = ("from detector_app.mentra.simulator import run_simulate; import sys; "
            f"sys.exit(run_simulate('http://127.0.0.1:{free_port()}', '{PKG}', '{KEY}', generation='B', "
            f"port={free_port()}, interactive=False))")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 20
        banner = ""
        assert proc.stdout is not None
        while "simulator generation B" not in banner and time.monotonic() < deadline:
            banner += proc.stdout.readline()
        assert "simulator generation B" in banner
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


# ------------------------------------------------------------------ fidelity: replies follow the request

def test_audio_reply_follows_the_request_and_the_fault() -> None:
    ok = audio_reply({"requestId": "r1", "audioUrl": "https://h/api/tts?text=I%20see%20a%20cat"}, Faults())
    assert ok.frame["success"] is True and ok.frame["requestId"] == "r1" and ok.spoken == "I see a cat"
    assert ok.frame["duration"] == round(0.07 * len("I see a cat"), 2) and "error" not in ok.frame
    relative = audio_reply({"requestId": "r2", "audioUrl": "/api/tts?text=hi"}, Faults())  # SDK 3.x form
    assert relative.frame["success"] is True and relative.spoken == "hi"
    clip = audio_reply({"requestId": "r3", "audioUrl": "https://h/chime.mp3"}, Faults())
    assert clip.frame["success"] is True and "duration" not in clip.frame  # not fetched: length unknown
    missing = audio_reply({"requestId": "r4"}, Faults())
    assert missing.frame["success"] is False and missing.frame["error"] == "audioUrl is required"
    assert audio_reply({"requestId": "r5", "audioUrl": "file:///etc/passwd"}, Faults()).frame["success"] is False
    busy = audio_reply({"requestId": "r6", "audioUrl": "https://h/api/tts?text=x"}, Faults(audio_error="speaker busy"))
    assert (busy.frame["success"], busy.frame["error"], busy.frame["requestId"]) == (False, "speaker busy", "r6")
    assert "duration" not in busy.frame


@pytest.mark.parametrize("video,expected", [
    (None, (854, 480, 1280, 720, 1_000_000, 15)),  # nothing asked: the glasses' default
    ({"width": 1280, "height": 720, "bitrate": 2_000_000, "frameRate": 30}, (1280, 720, 1280, 720, 2_000_000, 30)),
    ({"width": 640, "height": 480, "frameRate": 10}, (640, 480, 640, 480, 1_000_000, 10)),
    ({"width": 1000, "height": 600}, (1000, 600, 1280, 720, 1_000_000, 15)),  # smallest mode without upscaling
    ({"width": 4000, "height": 100, "bitrate": 1, "frameRate": 60}, (1920, 240, 1920, 1080, 100_000, 30)),  # clamped
])
def test_resolved_config_follows_the_requested_video(video: dict | None, expected: tuple) -> None:
    request = {"video": video} if video is not None else {}
    resolved = resolve_stream_config("rtmp", request, MENTRA_LIVE, Faults())
    assert isinstance(resolved, dict) and resolved["transport"] == "rtmp"
    v = resolved["video"]
    assert (v["width"], v["height"], v["captureWidth"], v["captureHeight"], v["bitrate"], v["fps"]) == expected
    assert "audio" not in resolved


def test_resolved_config_audio_errors_and_fault() -> None:
    asked = {"video": {"width": 640, "height": 480}, "audio": {"bitrate": 32000, "sampleRate": 16000, "bogus": 1}}
    resolved = resolve_stream_config("srt", asked, EVEN_G1_CAMERA, Faults())
    assert isinstance(resolved, dict) and resolved["audio"] == {"bitrate": 32000, "sampleRate": 16000}
    assert resolve_stream_config("rtmp", {"video": {"width": 640.5}}, MENTRA_LIVE, Faults()).startswith("Invalid video")
    assert resolve_stream_config("rtmp", {}, MENTRA_LIVE, Faults(reject_stream_config=True)) == UNSUPPORTED_RESOLUTION


def test_audio_fault_reaches_the_app_over_the_socket() -> None:
    async def body() -> None:
        async with FakeApp() as app, sim_for(app, "B", faults=Faults(audio_error="speaker busy")) as sim:
            _, ws, _ = await started(app, sim)
            await ws.send(json.dumps({"type": "audio_play_request", "packageName": PKG, "requestId": "r9",
                                      "audioUrl": "https://h/api/tts?text=hello"}))
            resp = await recv_json(ws)
            assert resp == {**resp, "type": "audio_play_response", "requestId": "r9", "success": False,
                            "error": "speaker busy"}
            await ws.close()
    run(body)


def test_glasses_refusing_the_video_config_end_the_stream() -> None:
    """reject_stream_config: initializing, then the glasses' error maps to `stopped`; no publisher runs."""
    async def body() -> None:
        async with FakeApp() as app, sim_for(app, "D", faults=Faults(reject_stream_config=True)) as sim:
            _, ws, _ = await started(app, sim)
            await ws.send(json.dumps({"type": "stream_request", "packageName": PKG,
                                      "streamUrl": "rtmp://127.0.0.1:1/live/k", "video": {"width": 1280, "height": 720}}))
            statuses = [(await recv_until(ws, lambda m: m["type"] == "stream_status"))["status"] for _ in range(2)]
            assert statuses == ["initializing", "stopped"]
            err = sim.log.find(frame("glasses", "error"))
            assert err is not None and err.get("details") == UNSUPPORTED_RESOLUTION
            assert sim.stream_state(USER) is None and sim.log.find(frame("glasses", "streaming")) is None
            await ws.close()
    run(body)


def test_soak_faults_repeat_stream_and_socket_drops(clip: Path, rtmp_receiver: str) -> None:
    """Faults.repeat: the stream drops after every reconnect and the app socket after every ack."""
    video = clip

    async def body() -> None:
        faults = Faults(stream_drop_after_s=0.8, stream_restore_after_s=0.3, drop_ws_after_s=1.0, drop_ws_code=1011,
                        repeat=True)
        async with FakeApp() as app, sim_for(app, "B", video=video, faults=faults, publisher_reconnect_delay_s=0.3) as sim:
            _, ws, _ = await started(app, sim)
            await ws.send(json.dumps({"type": "rtmp_stream_request", "packageName": PKG,
                                      "rtmpUrl": rtmp_receiver}))
            start = 0
            for _ in range(3):  # three drops, each followed by a reconnected publisher
                ev = await sim.wait_for(frame("glasses", "reconnected"), 20, start)
                start = sim.log.position(ev) + 1
            assert len(sim.log.find_all(frame("glasses", "reconnecting"))) >= 3
            glasses = sim.sessions[USER].stream.glasses
            assert glasses is not None and glasses.drops >= 3 and glasses.publisher_starts >= 4
            assert (await expect_close(ws))[0] == 1011  # the first socket drop (a close frame: 1011)
            async with connect(sim.ws_url) as ws2:  # the app comes back...
                await ws2.send(init_msg(f"{USER}-{PKG}"))
                assert (await recv_json(ws2))["type"] == "tpa_connection_ack"
                assert (await expect_close(ws2, 5))[0] == 1011  # ...and is dropped again: the fault repeats
            assert len(sim.log.find_all(frame("sim", "drop_app_socket"))) == 2

    run(body)

def test_event_log_is_bounded_and_keeps_absolute_positions() -> None:
    from detector_app.mentra.simulator import EventLog, SimEvent

    log = EventLog(max_events=10)
    for i in range(25):
        log.add(SimEvent("sim", "tick", None, {"i": i}))
    assert len(log.events) <= 10 and log.mark() == 25
    assert log.find(lambda e: True, start=0).get("i") == log.events[0].get("i")  # older ones are gone
    hit = log.find(lambda e: e.get("i") >= 20, start=22)
    assert hit is not None and hit.get("i") == 22 and log.position(hit) == 22


# ------------------------------------------------------------------ generation V3 (docs/mentraos-3x.md)

def v3_init() -> str:
    """What 3.0.0-alpha.4's MiniAppServer sends: no sessionId, sdkVersion >= 3."""
    return json.dumps({"type": "tpa_connection_init", "packageName": PKG, "apiKey": KEY, "sdkVersion": "3.0.0-hono.8"})


def v3_headers(hook: dict[str, Any]) -> dict[str, str]:
    return {"x-user-id": hook["userId"], "x-session-id": hook["sessionId"], "x-package-name": PKG, "x-api-key": KEY}


def test_v3_pure_decisions() -> None:
    from detector_app.mentra.simulator.protocol import GENERATIONS
    from detector_app.mentra.simulator.replies import check_reconnect, init_user, is_v3_sdk, split_audio_frame

    sid = f"{USER}-{PKG}"
    v3, d = GENERATIONS["V3"], GENERATIONS["D"]
    assert init_user(v3, {"x-user-id": USER}, {}, PKG) == USER
    assert init_user(v3, {"x-session-id": sid}, {}, PKG) == USER  # the legacy id in the header
    assert init_user(v3, {}, {"sessionId": sid}, PKG) == USER  # legacy init still works on V3
    assert init_user(d, {"x-user-id": USER}, {}, PKG) is None  # D (as 2.x SDKs see it) reads the init only
    assert is_v3_sdk("3.0.0-alpha.4") and not is_v3_sdk("2.1.29") and not is_v3_sdk(None) and not is_v3_sdk("x")
    running = {"sessionId": sid, "sdkVersion": "3.0.0"}
    assert check_reconnect(v3, running, "running") is None
    assert check_reconnect(v3, running, "stopped").code == "NOT_RUNNING"
    assert check_reconnect(v3, running, None).code == "SESSION_NOT_FOUND"
    refused = check_reconnect(v3, {"sessionId": sid, "sdkVersion": "2.1.29"}, "running")
    assert (refused.code, refused.close) == ("SESSION_NOT_FOUND", True)
    assert check_reconnect(d, running, "running").close  # no reconnect on D
    uuid = "0123456789abcdef0123456789abcdef0123"
    assert split_audio_frame(uuid.encode() + b"\xff" * 10) == (uuid, 10)
    assert split_audio_frame(b'{"type":"ping"}') is None and split_audio_frame(uuid.encode()) is None


def test_v3_header_identity_early_request_audio_stream_and_reconnect(clip: Path, rtmp_receiver: str) -> None:
    """A v3 client: init without sessionId (identity in the upgrade headers), its stream_request sent before
    the ack is answered after it, audio_stream_start → audio_stream_ready and binary frames are counted;
    after a drop, `reconnect` → reconnect_ack and the live stream's state is pushed without asking."""
    async def body() -> None:
        async with FakeApp() as app, sim_for(app, "V3", video=clip) as sim:
            task = asyncio.create_task(sim.start_session(USER))
            hook = await app.wait_webhook("session_request")
            assert hook["websocketUrl"].endswith("/ws/miniapp")
            ws = await connect(hook["websocketUrl"], additional_headers=v3_headers(hook))
            await ws.send(v3_init())
            await ws.send(json.dumps({"type": "stream_request", "packageName": PKG,
                                      "streamUrl": rtmp_receiver}))
            ack = await recv_json(ws)
            assert ack["type"] == "tpa_connection_ack" and ack["sessionId"] == hook["sessionId"]
            await asyncio.wait_for(task, 5)
            active = await recv_until(ws, lambda m: m["type"] == "stream_status" and m["status"] == "active", 15)
            uuid = "5f0c1a2b-0000-4000-8000-00000000abcd"
            await ws.send(json.dumps({"type": "audio_stream_start", "packageName": PKG, "sessionId": "", "streamId": uuid}))
            ready = await recv_until(ws, lambda m: m["type"] == "audio_stream_ready")
            assert ready["streamId"] == uuid and ready["streamUrl"].endswith(f"/api/audio/stream/{USER.replace('@', '%40')}/{uuid}")
            await ws.send(uuid.encode() + b"\xff" * 500)
            await ws.send(json.dumps({"type": "audio_stream_end", "packageName": PKG, "sessionId": "", "streamId": uuid}))
            ended = await sim.wait_for(frame("sim", "audio_stream_ended"), 5)
            assert ended.data["bytes"] == 500

            await sim.drop_app_socket(USER)  # abrupt: the app sees 1006
            ws2 = await connect(hook["websocketUrl"], additional_headers=v3_headers(hook))
            await ws2.send(json.dumps({"type": "reconnect", "sessionId": hook["sessionId"], "sdkVersion": "3.0.0"}))
            rack = await recv_json(ws2)
            assert rack["type"] == "reconnect_ack" and rack["capabilities"]["modelName"] == "Mentra Live"
            pushed = await recv_until(ws2, lambda m: m["type"] == "stream_status")
            assert (pushed["streamId"], pushed["status"]) == (active["streamId"], "active")
            assert not sim.sent("tpa_connection_error")
            await ws2.close()
    run(body)


def test_v3_reconnect_refusals() -> None:
    """`reconnect` from a v2 SDK is refused and closed (1008); one with a wrong or missing key in its upgrade
    headers gets INVALID_API_KEY and 1008; after the app stopped it is NOT_RUNNING; D knows no reconnect (unbound frame: SESSION_NOT_FOUND, as before)."""
    async def body() -> None:
        async with FakeApp() as app, sim_for(app, "V3") as sim:
            hook, ws, _ = await started(app, sim)
            async with connect(sim.miniapp_ws_url, additional_headers=v3_headers(hook)) as old_sdk:
                await old_sdk.send(json.dumps({"type": "reconnect", "sessionId": hook["sessionId"], "sdkVersion": "2.1.29"}))
                rej = await recv_json(old_sdk)
                assert (rej["type"], rej["code"]) == ("reconnect_rejected", "SESSION_NOT_FOUND")
                assert (await expect_close(old_sdk))[0] == 1008
            wrong_key = {**v3_headers(hook), "x-api-key": "not-the-key"}  # the frame has no key: the headers do
            for headers in (wrong_key, {k: v for k, v in v3_headers(hook).items() if k != "x-api-key"}):
                async with connect(sim.miniapp_ws_url, additional_headers=headers) as thief:
                    await thief.send(json.dumps({"type": "reconnect", "sessionId": hook["sessionId"],
                                                 "sdkVersion": "3.0.0"}))
                    err = await recv_json(thief)
                    assert (err["type"], err["code"]) == ("tpa_connection_error", "INVALID_API_KEY"), err
                    assert (await expect_close(thief))[0] == 1008
            assert not ws.close_code, "a refused reconnect must not take the running session's socket"
            await sim.stop_session(USER)
            async with connect(sim.miniapp_ws_url, additional_headers=v3_headers(hook)) as late:
                await late.send(json.dumps({"type": "reconnect", "sessionId": hook["sessionId"], "sdkVersion": "3.0.0"}))
                rej = await recv_json(late)
                assert (rej["type"], rej["code"]) == ("reconnect_rejected", "NOT_RUNNING")
            await ws.close()
        async with FakeApp() as app, sim_for(app, "D") as sim:
            async with connect(sim.ws_url) as ws:
                await ws.send(json.dumps({"type": "reconnect", "sessionId": f"{USER}-{PKG}", "sdkVersion": "3.0.0"}))
                assert (await recv_json(ws))["code"] == "SESSION_NOT_FOUND"
    run(body)


class _Relay:
    def __init__(self, fail: bool = False) -> None:
        self.fail, self.started, self.stopped = fail, [], []

    async def start(self, stream_id: str, video: Path | None) -> Any:
        from types import SimpleNamespace

        if self.fail:
            raise RuntimeError("relay could not start")
        self.started.append(stream_id)
        return SimpleNamespace(webrtc_url=f"http://127.0.0.1:9/whep/{stream_id}", hls_url="http://127.0.0.1:9/x.m3u8",
                               dash_url=None)

    async def stop(self, stream_id: str) -> None:
        self.stopped.append(stream_id)

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("fail", [False, True])
def test_v3_managed_stream_sequence(fail: bool) -> None:
    """managed_stream_request → initializing ("Waiting for stream to start...") → active with webrtcUrl/hlsUrl
    (no dashUrl when the relay has none) → managed_stream_stop → stopped; a relay that fails → `error`."""
    async def body() -> None:
        relay = _Relay(fail)
        async with FakeApp() as app, sim_for(app, "V3", managed_media=relay) as sim:
            hook, ws, _ = await started(app, sim)
            await ws.send(json.dumps({"type": "managed_stream_request", "packageName": PKG, "enableWebRTC": True}))
            init = await recv_until(ws, lambda m: m["type"] == "managed_stream_status")
            assert init["status"] == "initializing" and init["message"] == "Waiting for stream to start..."
            assert "hlsUrl" not in init and "webrtcUrl" not in init
            nxt = await recv_until(ws, lambda m: m["type"] == "managed_stream_status")
            if fail:
                assert nxt["status"] == "error" and "relay could not start" in nxt["message"]
                assert sim.managed_state(USER) is None
                return
            assert nxt["status"] == "active" and nxt["streamId"] == init["streamId"]
            assert nxt["webrtcUrl"].endswith(init["streamId"]) and nxt["hlsUrl"] and "dashUrl" not in nxt
            await ws.send(json.dumps({"type": "stream_status_check", "packageName": PKG}))
            check = await recv_until(ws, lambda m: m["type"] == "stream_status_check_response")
            assert check["streamInfo"]["type"] == "managed" and check["streamInfo"]["webrtcUrl"] == nxt["webrtcUrl"]
            await ws.send(json.dumps({"type": "managed_stream_stop", "packageName": PKG}))
            stopped = await recv_until(ws, lambda m: m["type"] == "managed_stream_status")
            assert stopped["status"] == "stopped" and relay.started == relay.stopped == [init["streamId"]]
            await ws.close()
    run(body)
