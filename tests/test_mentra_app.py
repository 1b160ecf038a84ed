"""MiniApp end to end over a real WebSocket and real HTTP, against a minimal in-test cloud and a fake
detection service (the team's simulator + real video tests live elsewhere)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed

from detector_app.detection.types import Box, Detection, FrameResult
from detector_app.ingest.addresses import free_port
from detector_app.ingest.base import IngestError
from detector_app.mentra.app import MiniApp
from detector_app.mentra.config import MentraSettings
from detector_app.mentra.contracts import DetectionServiceLike, StreamSessionLike
from detector_app.mentra.feedback import FeedbackConfig

from .conftest import until, wait_healthy

pytestmark = pytest.mark.timeout(30)

PKG = "com.example.detector"
KEY = "test-api-key-do-not-leak-42"
SID = "alice@example.com-com.example.detector"
FAST = {"reconnect_delays": (0.1, 0.2, 0.4), "stop_close_grace_s": 0.5}





# ------------------------------------------------------------------------------------ fakes

class FakeStream:
    def __init__(self, n: int, close_delay_s: float = 0.0) -> None:
        self.close_delay_s = close_delay_s
        self.key = f"key{n}"
        self.publish_url = f"rtmp://192.168.1.20:{19350 + n}/live/{self.key}"
        self.listeners: list[Callable[[FrameResult], None]] = []
        self.closed = threading.Event()
        self.failure: str | None = None

    def add_listener(self, callback: Callable[[FrameResult], None]) -> None:
        self.listeners.append(callback)

    def health(self) -> dict[str, Any]:
        return {"fps": 10.0}

    def close(self, timeout: float = 5.0) -> None:
        time.sleep(min(timeout, self.close_delay_s))  # e.g. a decoder waiting out its read timeout
        self.closed.set()

    def emit_from_thread(self, results: list[FrameResult]) -> None:
        """Like the inference thread: callbacks run off the event loop."""
        def work() -> None:
            for r in results:
                for cb in self.listeners:
                    cb(r)
                time.sleep(0.01)
        t = threading.Thread(target=work)
        t.start()
        t.join()


class FakeService:
    """``fail_after``: opens that many streams, then raises (a port lost for good); ``open_delay_s``:
    each open takes that long (a slow relay start)."""

    def __init__(self, fail_after: int | None = None, open_delay_s: float = 0.0, close_delay_s: float = 0.0) -> None:
        self.close_delay_s = close_delay_s
        self.streams: list[FakeStream] = []
        self.labels: list[str] = []  # who each stream was opened for (the wearer)
        self.closed = False
        self.attempts = 0
        self.fail_after = fail_after
        self.open_delay_s = open_delay_s

    def open_stream(self, protocol: str, *, label: str = "") -> FakeStream:
        assert protocol == "rtmp"
        self.labels.append(label)
        self.attempts += 1
        time.sleep(self.open_delay_s)
        if self.fail_after is not None and len(self.streams) >= self.fail_after:
            raise IngestError("no free ingest port")
        stream = FakeStream(len(self.streams), self.close_delay_s)
        self.streams.append(stream)
        return stream

    def close(self) -> None:
        self.closed = True


def test_fakes_satisfy_protocols():
    assert isinstance(FakeService(), DetectionServiceLike)
    assert isinstance(FakeStream(0), StreamSessionLike)


class FakeCloud:
    """Just enough of the cloud: ack, stream statuses ([D]-style duplicates), stop, status check."""

    def __init__(self) -> None:
        self.conns: list[ServerConnection] = []
        self.messages: list[tuple[int, dict[str, Any]]] = []
        self.closes: list[tuple[int, int | None]] = []
        self.stream_n = 0
        self.active: tuple[str, str] | None = None
        self.port = 0
        self._server = None

    async def __aenter__(self) -> FakeCloud:
        self._server = await ws_serve(self._handler, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/app-ws"

    def of_type(self, mtype: str, conn: int | None = None) -> list[dict[str, Any]]:
        return [m for i, m in self.messages if m.get("type") == mtype and (conn is None or i == conn)]

    def types(self, conn: int | None = None) -> list[str]:
        return [m["type"] for i, m in self.messages if conn is None or i == conn]

    @staticmethod
    async def _send(ws: ServerConnection, msg: dict[str, Any]) -> None:
        try:  # the app may already be closing; keep reading what it sent before the close
            await ws.send(json.dumps(msg))
        except ConnectionClosed:
            pass

    async def _status(self, ws: ServerConnection, stream_id: str, status: str) -> None:
        payload = {"sessionId": SID, "streamId": stream_id, "status": status, "appId": PKG}
        await self._send(ws, {"type": "stream_status", **payload})
        await self._send(ws, {"type": "rtmp_stream_status", **payload})
        await self._send(ws, {"type": "data_stream", "streamType": "rtmp_stream_status",
                              "data": {"type": "rtmp_stream_status", **payload}})

    async def _handler(self, ws: ServerConnection) -> None:
        idx = len(self.conns)
        self.conns.append(ws)
        try:
            async for raw in ws:
                msg = json.loads(raw)
                self.messages.append((idx, msg))
                t = msg.get("type")
                if t == "tpa_connection_init":
                    await self._send(ws, ({
                        "type": "tpa_connection_ack", "sessionId": msg["sessionId"], "settings": [],
                        "mentraosSettings": {}, "userId": "alice@example.com",
                        "capabilities": {"modelName": "Mentra Live", "hasDisplay": False}}))
                    await self._send(ws, {"type": "device_state_update", "state": {}, "fullSnapshot": True})
                elif t == "rtmp_stream_request":
                    self.stream_n += 1
                    sid = f"s{self.stream_n}"
                    self.active = (sid, msg["rtmpUrl"])
                    await self._status(ws, sid, "initializing")
                    await self._status(ws, sid, "active")
                elif t == "rtmp_stream_stop":
                    sid = msg.get("streamId") or (self.active[0] if self.active else "none")
                    self.active = None
                    await self._status(ws, sid, "stopped")
                elif t == "stream_status_check":
                    info = None
                    if self.active:
                        info = {"type": "unmanaged", "streamId": self.active[0], "status": "active",
                                "rtmpUrl": self.active[1], "requestingAppId": PKG}
                    await self._send(ws, {"type": "stream_status_check_response",
                                          "hasActiveStream": bool(info), "streamInfo": info})
                elif t == "ping":
                    await self._send(ws, {"type": "pong", "timestamp": int(time.time() * 1000)})
        except ConnectionClosed:
            pass
        finally:
            self.closes.append((idx, ws.close_code))

    async def send(self, msg: dict[str, Any], conn: int = -1) -> None:
        await self.conns[conn].send(json.dumps(msg))


def settings(port: int, **kw: Any) -> MentraSettings:
    return MentraSettings(_env_file=None, package_name=PKG, api_key=KEY, port=port, host="127.0.0.1",
                          ws_allowlist=["127.0.0.1"], **kw)


def webhook_body(ws_url: str, session_id: str = SID) -> dict[str, Any]:
    return {"type": "session_request", "sessionId": session_id, "userId": "alice@example.com",
            "mentraOSWebsocketUrl": ws_url, "timestamp": "2026-04-02T10:11:12.345Z"}


def cat_results(n: int = 4) -> list[FrameResult]:
    det = Detection("cat", 0.9, Box(1000, 300, 1200, 500), 15)
    return [FrameResult(i, i, None, 1280, 720, 0.0, 0.0, 5.0, (det,)) for i in range(n)]


async def scenario(body: Callable[..., Any], service: FakeService | None = None, options: dict[str, Any] | None = None,
                   **app_kw: Any) -> None:
    """Run ``body(cloud, app, http, service)`` with everything started and torn down."""
    service = service or FakeService()
    port = free_port()
    async with FakeCloud() as cloud:
        app = MiniApp(settings(port), service, session_options={**FAST, **(options or {})}, tick_interval=0.05, **app_kw)
        await app.start()
        try:
            async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as http:
                await body(cloud, app, http, service)
        finally:
            await app.stop(timeout=3)


async def start_session(cloud: FakeCloud, http: aiohttp.ClientSession) -> None:
    t0 = time.monotonic()
    async with http.post("/webhook", json=webhook_body(cloud.url)) as r:
        assert r.status == 200 and await r.json() == {"status": "success"}
    assert time.monotonic() - t0 < 1.0, "webhook must be answered quickly"
    await until(lambda: cloud.of_type("tpa_connection_init"), 4.0, "init within 4 s of the webhook")
    await until(lambda: cloud.of_type("rtmp_stream_request"), 5.0, "stream request")


# ------------------------------------------------------------------------------------ tests

def test_full_session_feedback_and_voice_stop():
    async def body(cloud, app, http, service):
        await start_session(cloud, http)
        init = cloud.of_type("tpa_connection_init")[0]
        assert init["apiKey"] == KEY and init["sessionId"] == SID and "sdkVersion" not in init
        assert cloud.types(0)[:2] == ["tpa_connection_init", "subscription_update"]
        subs = cloud.of_type("subscription_update")[0]["subscriptions"]
        assert {"transcription:en-US", "button_press", "rtmp_stream_status"} <= set(subs)
        [stream] = service.streams
        assert service.labels == ["alice@example.com"], "the stream is named after its wearer (window, web viewer)"
        req = cloud.of_type("rtmp_stream_request")[0]
        assert req["rtmpUrl"] == stream.publish_url and req["packageName"] == PKG

        # duplicate webhook delivery: idempotent, no second connection
        async with http.post("/webhook", json=webhook_body(cloud.url)) as r:
            assert r.status == 200
        async with http.get("/health") as r:
            assert (await r.json())["activeSessions"] == 1
        await asyncio.sleep(0.2)
        assert len(cloud.conns) == 1 and len(service.streams) == 1

        # detections from the inference thread → speech (Mentra Live: no display) + text wall
        await asyncio.sleep(0.3)  # past the (test-shortened) gap after the "detection on" notice
        await asyncio.to_thread(stream.emit_from_thread, cat_results())
        audio = await until(lambda: cloud.of_type("audio_play_request"), 3.0, "audio announcement")
        said = [parse_qs(urlsplit(a["audioUrl"]).query)["text"][0] for a in audio]
        assert said == ["Animal detection on", "I see a cat on the right"]
        assert all(urlsplit(a["audioUrl"]).path == "/api/tts" for a in audio)
        assert any(m["layout"].get("text") == "1 cat: right" for m in cloud.of_type("display_event"))

        # voice: interim ignored, final "stop stream" → stop by streamId
        await cloud.send({"type": "data_stream", "streamType": "transcription:en-US",
                          "data": {"type": "transcription", "text": "stop", "isFinal": False}})
        await cloud.send({"type": "data_stream", "streamType": "transcription:en-US",
                          "data": {"type": "transcription", "text": "Stop stream.", "isFinal": True}})
        stops = await until(lambda: cloud.of_type("rtmp_stream_stop"), 3.0, "stream stop")
        assert stops[0]["streamId"] == "s1"
        await asyncio.sleep(0.3)
        assert len(cloud.of_type("rtmp_stream_request")) == 1  # requested stop is not a failure

    asyncio.run(scenario(body, feedback_config=FeedbackConfig(speech_gap_s=0.2)))


def spoken(cloud: FakeCloud) -> list[str]:
    return [parse_qs(urlsplit(a["audioUrl"]).query)["text"][0] for a in cloud.of_type("audio_play_request")]


def test_dead_ingest_is_rebuilt_and_the_stream_requested_again():
    async def body(cloud, app, http, service):
        await start_session(cloud, http)
        [first] = service.streams
        first.failure = "SRT relay (srt-live-transmit) exited with code 1"
        requests = await until(lambda: cloud.of_type("rtmp_stream_request")[1:], 3.0, "a second stream request")
        await until(lambda: first.closed.is_set(), 3.0, "the dead stream closed")
        second = service.streams[1]
        assert requests[0]["rtmpUrl"] == second.publish_url != first.publish_url
        await asyncio.sleep(0.3)
        assert len(cloud.of_type("rtmp_stream_request")) == 2 and len(service.streams) == 2, "one rebuild per death"
        await asyncio.to_thread(second.emit_from_thread, cat_results())
        await until(lambda: [t for t in spoken(cloud) if "cat" in t], 3.0, "detections from the new ingest reach the wearer")
        assert not [t for t in spoken(cloud) if "failed" in t]

    asyncio.run(scenario(body, feedback_config=FeedbackConfig(speech_gap_s=0.0)))


def test_rebuilt_ingest_that_dies_while_the_dead_one_still_closes_is_rebuilt_again():
    async def body(cloud, app, http, service):
        await start_session(cloud, http)
        service.streams[0].failure = "SRT relay (srt-live-transmit) exited with code 1"
        await until(lambda: len(service.streams) == 2, 3.0, "the first rebuild")
        service.streams[1].failure = "SRT relay (srt-live-transmit) exited with code 1"  # stream 0 still closing
        requests = await until(lambda: cloud.of_type("rtmp_stream_request")[2:], 3.0, "a third stream request")
        assert requests[0]["rtmpUrl"] == service.streams[2].publish_url
        assert not service.streams[0].closed.is_set(), "the test needs the first close still running"
        await until(lambda: service.streams[0].closed.is_set() and service.streams[1].closed.is_set(), 5.0,
                    "both dead streams closed")

    asyncio.run(scenario(body, FakeService(close_delay_s=1.5)))


def test_ingest_that_cannot_be_rebuilt_gives_up_with_one_notice():
    async def body(cloud, app, http, service):
        await start_session(cloud, http)
        service.streams[0].failure = "SRT relay (srt-live-transmit) exited with code 1"
        await until(lambda: [t for t in spoken(cloud) if "failed" in t], 3.0, "failure notice to the wearer")
        await asyncio.sleep(0.3)
        assert service.attempts == 1 + 3, "the first open, then one try per rebuild delay"
        assert len([t for t in spoken(cloud) if "failed" in t]) == 1
        assert len(cloud.of_type("rtmp_stream_request")) == 1
        assert service.streams[0].closed.is_set()

    asyncio.run(scenario(body, FakeService(fail_after=1), {"ingest_rebuild_delays": (0.0, 0.05, 0.05)},
                         feedback_config=FeedbackConfig(speech_gap_s=0.0)))


def test_stream_that_opens_after_shutdown_is_closed_not_leaked():
    """``open_stream`` slower than the shutdown: the stream it returns late is closed by its opener."""
    async def body(cloud, app, http, service):
        async with http.post("/webhook", json=webhook_body(cloud.url)) as r:
            assert r.status == 200
        await until(lambda: service.attempts, 3.0, "open_stream called")
        t0 = time.monotonic()
        await app.stop(timeout=1.0)
        assert time.monotonic() - t0 < 1.0 + 1.5, "shutdown overran its budget"
        assert service.streams == [], "the stream was still opening when the session ended"
        await until(lambda: service.streams and service.streams[0].closed.is_set(), 3.0, "late stream closed")

    asyncio.run(scenario(body, FakeService(open_delay_s=1.5)))


def test_disallowed_host_refused_without_connecting():
    async def body(cloud, app, http, service):
        # "localhost" resolves to the fake cloud, but only 127.0.0.1 is allowlisted
        async with http.post("/webhook", json=webhook_body(f"ws://localhost:{cloud.port}/app-ws")) as r:
            assert r.status == 403
            assert (await r.json())["status"] == "error"
        async with http.post("/webhook", json=webhook_body("wss://attacker.example.com/app-ws")) as r:
            assert r.status == 403
        await asyncio.sleep(0.5)
        assert cloud.conns == [] and cloud.messages == [] and service.streams == []

    asyncio.run(scenario(body))


def test_bad_webhook_json_is_400():
    async def body(cloud, app, http, service):
        async with http.post("/webhook", data=b"{oops", headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400 and (await r.json())["status"] == "error"
        async with http.post("/webhook", json={"type": "session_request"}) as r:
            assert r.status == 400
        assert cloud.conns == []

    asyncio.run(scenario(body))


def test_1008_after_error_does_not_reconnect():
    async def body(cloud, app, http, service):
        await start_session(cloud, http)
        await cloud.send({"type": "tpa_connection_error", "code": "PERMISSION_DENIED",
                          "message": "Camera permission required to start video streams"})
        await cloud.conns[0].close(1008, "Camera permission required to start video streams")
        await until(lambda: service.streams[0].closed.is_set(), 3.0, "pipeline closed")
        await asyncio.sleep(0.6)  # longer than all FAST reconnect delays
        assert len(cloud.conns) == 1
        assert app.active_sessions() == 0

    asyncio.run(scenario(body))


def test_abnormal_close_reconnects_resubscribes_and_checks_stream():
    async def body(cloud, app, http, service):
        await start_session(cloud, http)
        await until(lambda: cloud.active, 2.0, "active stream")
        await cloud.conns[0].close(1011, "Internal server error")
        await until(lambda: len(cloud.conns) == 2, 3.0, "reconnect")
        await until(lambda: "stream_status_check" in cloud.types(1), 3.0, "stream_status_check")
        assert cloud.types(1)[:3] == ["tpa_connection_init", "subscription_update", "stream_status_check"]
        init0, init1 = cloud.of_type("tpa_connection_init")
        assert {k: v for k, v in init0.items() if k != "timestamp"} == \
            {k: v for k, v in init1.items() if k != "timestamp"}
        await asyncio.sleep(0.3)
        # the stream survived (check response names it): not requested again, same ingest
        assert len(cloud.of_type("rtmp_stream_request")) == 1 and len(service.streams) == 1
        # and it can still be stopped by its id on the new connection
        await cloud.send({"type": "data_stream", "streamType": "transcription:en-US",
                          "data": {"type": "transcription", "text": "stop stream", "isFinal": True}})
        stops = await until(lambda: cloud.of_type("rtmp_stream_stop"), 3.0, "stop after reconnect")
        assert stops[0]["streamId"] == "s1"

    asyncio.run(scenario(body))


def test_stop_request_stops_stream_then_session_ends():
    async def body(cloud, app, http, service):
        await start_session(cloud, http)
        await until(lambda: cloud.active, 2.0, "active stream")
        async with http.post("/webhook", json={"type": "stop_request", "sessionId": SID,
                                               "reason": "user_disabled"}) as r:
            assert r.status == 200
        stops = await until(lambda: cloud.of_type("rtmp_stream_stop"), 3.0, "stream stop")
        assert stops[0]["streamId"] == "s1"
        await cloud.send({"type": "app_stopped"})
        await cloud.conns[0].close(1000, "App stopped")
        await until(lambda: service.streams[0].closed.is_set(), 3.0, "pipeline closed")
        await until(lambda: app.active_sessions() == 0, 2.0, "session gone")
        await asyncio.sleep(0.5)
        assert len(cloud.conns) == 1
        # resurrection: a new session_request for the same session starts again
        async with http.post("/webhook", json=webhook_body(cloud.url)) as r:
            assert r.status == 200
        await until(lambda: len(cloud.of_type("rtmp_stream_request")) == 2, 5.0, "new stream")
        assert len(service.streams) == 2 and service.streams[1].key != service.streams[0].key

    asyncio.run(scenario(body))


def test_shutdown_stops_every_stream_before_closing():
    async def body(cloud, app, http, service):
        await start_session(cloud, http)
        async with http.post("/webhook", json=webhook_body(cloud.url, "bob@example.com-" + PKG)) as r:
            assert r.status == 200
        await until(lambda: len(cloud.of_type("rtmp_stream_request")) == 2, 5.0, "two streams")
        assert len(service.streams) == 2 and service.streams[0].key != service.streams[1].key
        await app.stop(timeout=3)
        for conn in (0, 1):
            kinds = cloud.types(conn)
            assert "rtmp_stream_stop" in kinds
            assert kinds.index("rtmp_stream_stop") < kinds.index("ownership_release")
        assert sorted(m["streamId"] for m in cloud.of_type("rtmp_stream_stop")) == ["s1", "s2"]
        await until(lambda: len(cloud.closes) == 2, 2.0, "both sockets closed")
        assert all(s.closed.is_set() for s in service.streams)
        assert service.closed is False  # injected service belongs to the caller

    asyncio.run(scenario(body))


def test_api_key_never_logged(capfd):
    from loguru import logger
    records: list[str] = []
    sink = logger.add(records.append, level="DEBUG", format="{message}")
    try:
        async def body(cloud, app, http, service):
            await start_session(cloud, http)
            await cloud.conns[0].close(1011, "")
            await until(lambda: len(cloud.conns) == 2, 3.0, "reconnect")
        asyncio.run(scenario(body))
    finally:
        logger.remove(sink)
    assert records and not any(KEY in r for r in records)
    out, err = capfd.readouterr()
    assert KEY not in out and KEY not in err


# ------------------------------------------------------------------------------------ real SIGTERM

CHILD = textwrap.dedent("""
    import sys, threading
    from detector_app.mentra.app import run_serve
    from detector_app.mentra.config import MentraSettings

    class Stream:
        key = "k1"
        publish_url = "rtmp://192.168.1.20:19350/live/k1"
        def add_listener(self, cb): pass
        failure = None
        def health(self): return {}
        def close(self, timeout=5.0): print("STREAM-CLOSED", flush=True)

    class Service:
        def open_stream(self, protocol, label=""): return Stream()
        def close(self): print("SERVICE-CLOSED", flush=True)

    port = int(sys.argv[1])
    s = MentraSettings(_env_file=None, package_name="com.example.detector", api_key="test-api-key-do-not-leak-42",
                       port=port, host="127.0.0.1", ws_allowlist=["127.0.0.1"])
    sys.exit(run_serve(s, service_factory=Service))
""")


def test_sigterm_stops_stream_before_exit():
    async def main() -> None:
        port = free_port()
        async with FakeCloud() as cloud:
            env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", CHILD, str(port), env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            try:
                async with aiohttp.ClientSession() as http:
                    await wait_healthy(http, port, 15, what="child server")
                    async with http.post(f"http://127.0.0.1:{port}/webhook", json=webhook_body(cloud.url)) as r:
                        assert r.status == 200
                await until(lambda: cloud.active, 5.0, "active stream")
                proc.send_signal(signal.SIGTERM)
                out, _ = await asyncio.wait_for(proc.communicate(), 10)
            finally:
                if proc.returncode is None:
                    proc.kill()
            text = out.decode()
            assert proc.returncode == 0, text
            assert [m["streamId"] for m in cloud.of_type("rtmp_stream_stop")] == ["s1"]
            assert "STREAM-CLOSED" in text and "SERVICE-CLOSED" in text
            assert "test-api-key-do-not-leak-42" not in text
            assert "webhook: http://" in text

    asyncio.run(main())


# ------------------------------------------------------------------- against the simulator, per generation

@pytest.fixture(scope="module")
def sim_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import subprocess

    out = tmp_path_factory.mktemp("simvid") / "clip.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=15", "-t", "4",
                    "-c:v", "libx264", "-preset", "ultrafast", "-g", "15", str(out)], check=True, timeout=60)
    return out


class ReceiverService(FakeService):
    """FakeService whose streams' publish URL is a real receiver; ``open_playback_stream`` records the
    managed stream's playback URLs it was asked to pull."""

    def __init__(self, url: str = "rtmp://127.0.0.1:9/live/none") -> None:
        super().__init__()
        self.url = url
        self.playback: list[tuple[str | None, str | None]] = []

    def open_stream(self, protocol: str, *, label: str = "") -> FakeStream:
        stream = super().open_stream(protocol, label=label)
        stream.publish_url = self.url
        return stream

    def open_playback_stream(self, *, webrtc_url: str | None, hls_url: str | None, label: str = "") -> FakeStream:
        self.playback.append((webrtc_url, hls_url))
        self.labels.append(label)
        stream = FakeStream(len(self.streams))
        stream.publish_url = webrtc_url or hls_url or ""
        self.streams.append(stream)
        return stream


class NowhereRelay:
    """The simulator's managed-stream media server reduced to its protocol part: URLs that point at
    nothing (the media path has its own tests); records what it was asked."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.stopped: list[str] = []

    async def start(self, stream_id: str, video: Path | None) -> Any:
        from types import SimpleNamespace

        self.started.append(stream_id)
        return SimpleNamespace(webrtc_url=f"http://127.0.0.1:9/whep/{stream_id}",
                               hls_url=f"http://127.0.0.1:9/hls/{stream_id}.m3u8", dash_url=None)

    async def stop(self, stream_id: str) -> None:
        self.stopped.append(stream_id)

    async def close(self) -> None:
        pass


async def sim_scenario(body: Callable[..., Any], service: ReceiverService, video: Path, generation: str,
                       **settings_kw: Any) -> None:
    from detector_app.mentra.simulator import CloudSimulator

    port = free_port()
    app = MiniApp(settings(port, **settings_kw), service, session_options=FAST, tick_interval=0.05)
    relay = NowhereRelay()
    sim = CloudSimulator(app_url=f"http://127.0.0.1:{port}", package_name=PKG, api_key=KEY, video=video,
                         generation=generation, echo=False, grace_s=3.0, managed_media=relay)
    await app.start()
    try:
        await sim.start()
        await body(sim, app, relay)
    finally:
        try:
            await asyncio.wait_for(app.stop(timeout=3), 10)
        finally:
            await asyncio.wait_for(sim.close(), 10)


def _status(status: str, types: tuple[str, ...] = ("rtmp_stream_status",)) -> Callable[[Any], bool]:
    return lambda e: e.direction == "cloud->app" and e.type in types and e.data.get("status") == status


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("generation", "cloud_protocol"), [("B", "v2"), ("D", "v2"), ("V3", "v3")])
def test_miniapp_against_each_simulator_generation(generation, cloud_protocol, sim_video, rtmp_receiver):
    """Our client on each generation: v2 init with the legacy sessionId on B/D; on V3 the 3.x handshake
    (identity in the upgrade headers, /ws/miniapp, no sessionId in the init) and after an abrupt drop the
    v3 ``reconnect`` (answered by ``reconnect_ack``) instead of a new init; the stream survives the drop and
    "stop stream" stops it by its id."""
    from detector_app.mentra.simulator import frame

    user = "alice@example.com"

    async def body(sim, app, relay):
        await sim.start_session(user)
        active = await sim.wait_for(_status("active"), 15)
        init = sim.received("tpa_connection_init")[0]
        opened = next(e for e in sim.events if e.direction == "ws" and e.type == "open")
        if cloud_protocol == "v3":
            assert "sessionId" not in init.data and init.data["sdkVersion"].startswith("3.")
            assert opened.data["path"] == "/ws/miniapp"
            assert opened.data["identity"] == {"x-user-id": user, "x-session-id": f"{user}-{PKG}",
                                               "x-package-name": PKG, "x-api-key": "<set>"}
        else:
            assert init.data["sessionId"] == f"{user}-{PKG}" and "sdkVersion" not in init.data
            assert opened.data["path"] == "/app-ws" and opened.data["identity"] == {}
        n = len(sim.events)
        await sim.drop_app_socket(user)  # abrupt TCP abort: the app sees 1006
        if cloud_protocol == "v3":
            await sim.wait_for(frame("app->cloud", "reconnect"), 5, start=n)
            await sim.wait_for(frame("cloud->app", "reconnect_ack"), 5, start=n)
            assert not sim.received("tpa_connection_init")[1:], "v3 resumes with reconnect, not a new init"
        else:
            await sim.wait_for(frame("app->cloud", "tpa_connection_init"), 5, start=n)
        subs = await sim.wait_for(frame("app->cloud", "subscription_update"), 5, start=n)
        assert "transcription:en-US" in subs.data["subscriptions"]
        await sim.wait_for(frame("app->cloud", "stream_status_check"), 5, start=n)
        await asyncio.sleep(0.3)
        assert not [e for e in sim.events[n:] if e.direction == "app->cloud" and "stream_request" in e.type]
        assert [e.type for e in sim.events if e.direction == "sim" and e.type == "resurrect"] == []
        m = len(sim.events)
        await sim.say("stop stream")
        stop = await sim.wait_for(lambda e: e.direction == "app->cloud" and e.type in ("rtmp_stream_stop", "stream_stop"),
                                  5, start=m)
        assert stop.data["streamId"] == active.data["streamId"]
        await sim.wait_for(_status("stopped"), 5, start=m)

    asyncio.run(sim_scenario(body, ReceiverService(rtmp_receiver), sim_video, generation, cloud_protocol=cloud_protocol))


@pytest.mark.timeout(60)
def test_managed_stream_protocol_against_v3_simulator(sim_video):
    """INGEST_PROTOCOL=managed: no ingest of ours; after the ack the session sends managed_stream_request,
    waits for `active`, hands the playback URLs (WebRTC first, HLS) to the detection service to pull, and
    on the stop webhook sends managed_stream_stop."""
    from detector_app.mentra.simulator import frame

    user = "bob@example.com"
    service = ReceiverService()

    async def body(sim, app, relay):
        await sim.start_session(user)
        req = await sim.wait_for(frame("app->cloud", "managed_stream_request"), 5)
        assert req.data["packageName"] == PKG and req.data["enableWebRTC"] is True
        active = await sim.wait_for(_status("active", ("managed_stream_status",)), 10)
        await until(lambda: service.playback, 5, "the detection service asked to pull the playback URLs")
        assert service.playback == [(active.data["webrtcUrl"], active.data["hlsUrl"])]
        assert not sim.received("rtmp_stream_request") and not sim.received("stream_request")
        await sim.stop_session(user)
        await sim.wait_for(frame("app->cloud", "managed_stream_stop"), 5)
        assert relay.started == relay.stopped == [active.data["streamId"]]

    asyncio.run(sim_scenario(body, service, sim_video, "V3", cloud_protocol="v3", ingest_protocol="managed"))


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_managed_session_end_to_end_with_the_real_relay(detector, fixture_videos):
    """The whole managed path with real parts: our v3 miniapp asks simulator V3 for a managed stream, the
    simulator's ManagedMedia serves the cat video over WHEP, the real DetectionService pulls it and the
    real model sees the cat, which Mentra Live hears; the stop webhook sends managed_stream_stop."""
    from detector_app.mentra.simulator import CloudSimulator, frame
    from detector_app.stream_service import DetectionService, IngestConfig

    user = "carol@example.com"

    async def main() -> None:
        service = DetectionService(detector, IngestConfig(bind_host="127.0.0.1", advertise_host="127.0.0.1",
                                                          mode="embedded"))  # type: ignore[arg-type]
        port = free_port()
        app = MiniApp(settings(port, ingest_protocol="managed", cloud_protocol="v3"), service, session_options=FAST,
                      tick_interval=0.1)
        sim = CloudSimulator(app_url=f"http://127.0.0.1:{port}", package_name=PKG, api_key=KEY,
                             video=fixture_videos["cat_480p15"], generation="V3", device="mentra_live", echo=False)
        await app.start()
        try:
            await sim.start()
            await sim.start_session(user)
            active = await sim.wait_for(_status("active", ("managed_stream_status",)), 20)
            said = await sim.wait_for(lambda e: e.direction == "app->cloud" and e.type == "audio_play_request"
                                      and "cat" in str(e.data.get("audioUrl")), 40)
            assert str(said.data["audioUrl"]).startswith(f"https://127.0.0.1:{sim.port}/api/tts?")
            stream = service.streams()[-1]
            assert stream.publish_url == active.data["webrtcUrl"] and stream.pipeline.stats.per_label["cat"] > 0
            await sim.stop_session(user)
            await sim.wait_for(frame("app->cloud", "managed_stream_stop"), 5)
            assert sim.managed_state(user) is None
        finally:
            try:
                await asyncio.wait_for(app.stop(timeout=3), 10)
            finally:
                await asyncio.wait_for(sim.close(), 10)
                await asyncio.wait_for(asyncio.to_thread(service.close), 15)

    asyncio.run(main())


def test_a_user_caused_open_failure_is_logged_in_one_line_without_a_traceback():
    """Every ingest port taken (an ``IngestError``, a ``UserError``): the operator reads one line with the
    reason, not a traceback that looks like a crash."""
    from loguru import logger

    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="WARNING", filter="detector_app.mentra.client")

    async def body(cloud, app, http, service):
        await start_session(cloud, http)
        service.streams[0].failure = "SRT relay (srt-live-transmit) exited with code 1"
        await until(lambda: any("no free ingest port" in ln for ln in lines), 3.0, "the failed open logged")

    try:
        asyncio.run(scenario(body, FakeService(fail_after=1), {"ingest_rebuild_delays": (0.0, 0.05, 0.05)},
                             feedback_config=FeedbackConfig(speech_gap_s=0.0)))
    finally:
        logger.remove(sink)
    failed = [ln for ln in lines if "open_stream('rtmp') failed" in ln]
    assert failed and all("no free ingest port" in ln and "Traceback" not in ln for ln in failed), failed
