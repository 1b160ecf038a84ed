"""Webhook parsing and the aiohttp server: 4xx JSON errors, health, allowlist refusal, port clash."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from detector_app.mentra.app import MiniApp, PortInUseError, serve
from detector_app.mentra.config import MentraSettings
from detector_app.mentra.webhook import (
    SessionRequest,
    StopRequest,
    WebhookError,
    create_web_app,
    parse_webhook,
)

pytestmark = pytest.mark.timeout(30)

SID = "alice@example.com-com.example.detector"


# ---------------------------------------------------------------------------------- parsing

def test_parse_session_request_prefers_mentraos_url():
    body = {"type": "session_request", "sessionId": SID, "userId": "alice@example.com",
            "augmentOSWebsocketUrl": "wss://old.mentra.glass/app-ws",
            "mentraOSWebsocketUrl": "wss://api.mentra.glass/app-ws",
            "websocketUrl": "wss://api.mentra.glass/ws/miniapp"}
    req = parse_webhook(body)
    assert req == SessionRequest(SID, "alice@example.com", "wss://api.mentra.glass/app-ws",
                                 miniapp_ws_url="wss://api.mentra.glass/ws/miniapp")
    assert req.url_for("v2") == "wss://api.mentra.glass/app-ws"  # 2.x clients never take the v3 path
    assert req.url_for("v3") == "wss://api.mentra.glass/ws/miniapp"


def test_parse_session_request_legacy_url():
    body = {"type": "session_request", "sessionId": SID, "augmentOSWebsocketUrl": "wss://prod.augmentos.cloud/app-ws"}
    assert parse_webhook(body).ws_url == "wss://prod.augmentos.cloud/app-ws"


def test_parse_stop_request():
    body = {"type": "stop_request", "sessionId": SID, "userId": "a", "reason": "user_disabled"}
    assert parse_webhook(body) == StopRequest(SID, "a", "user_disabled")


@pytest.mark.parametrize("body,fragment", [
    (None, "JSON object"), ([1], "JSON object"), ({"type": "session_request"}, "sessionId"),
    ({"type": "session_request", "sessionId": SID}, "WebsocketUrl"),
    ({"type": "session_request", "sessionId": SID, "websocketUrl": "wss://api.mentra.glass/ws/miniapp"}, "WebsocketUrl"),
    ({"type": "stop_request"}, "sessionId"), ({"type": "tool_call"}, "Unknown webhook request type"),
    ({"sessionId": SID}, "Unknown"),
])
def test_parse_errors(body, fragment):
    with pytest.raises(WebhookError) as info:
        parse_webhook(body)
    assert info.value.status == 400 and fragment in info.value.message


# ---------------------------------------------------------------------------------- HTTP server

class RecordingHandler:
    package_name = "com.example.detector"

    def __init__(self) -> None:
        self.sessions: list[SessionRequest] = []
        self.stops: list[StopRequest] = []

    async def on_session_request(self, request: SessionRequest) -> None:
        if "evil" in request.ws_url:
            raise WebhookError(403, "WebSocket URL not allowed")
        if request.session_id == "boom":
            raise RuntimeError("handler bug")
        self.sessions.append(request)

    async def on_stop_request(self, request: StopRequest) -> None:
        self.stops.append(request)

    def active_sessions(self) -> int:
        return len(self.sessions) - len(self.stops)


async def _with_client(fn):
    handler = RecordingHandler()
    async with TestClient(TestServer(create_web_app(handler))) as client:
        await fn(client, handler)


def run(coro_fn):
    asyncio.run(_with_client(coro_fn))


def test_http_happy_path_and_health():
    async def check(client, handler):
        r = await client.post("/webhook", json={"type": "session_request", "sessionId": SID,
                                                "mentraOSWebsocketUrl": "wss://api.mentra.glass/app-ws"})
        assert r.status == 200 and await r.json() == {"status": "success"}
        r = await client.get("/health")
        assert await r.json() == {"status": "healthy", "app": "com.example.detector", "activeSessions": 1}
        r = await client.post("/webhook", json={"type": "stop_request", "sessionId": SID, "reason": "user_disabled"})
        assert r.status == 200 and handler.stops[0].reason == "user_disabled"
    run(check)


@pytest.mark.parametrize("payload,status", [
    (b"{not json", 400), (b"", 400), (b"[]", 400), (b'{"type":"session_request"}', 400),
    (b'{"type":"whatever","sessionId":"x"}', 400), (b"\xff\xfe", 400),
    (b'{"type":"session_request","sessionId":"x","mentraOSWebsocketUrl":"wss://evil.com/app-ws"}', 403),
    (b'{"type":"session_request","sessionId":"boom","mentraOSWebsocketUrl":"wss://a.mentra.glass/app-ws"}', 500),
])
def test_http_errors_are_json(payload, status):
    async def check(client, handler):
        r = await client.post("/webhook", data=payload, headers={"Content-Type": "application/json"})
        assert r.status == status
        body = await r.json()
        assert body["status"] == "error" and isinstance(body["message"], str) and body["message"]
        # the server survives
        assert (await client.get("/health")).status == 200
    run(check)


def test_wrong_method_is_4xx():
    async def check(client, handler):
        assert 400 <= (await client.get("/webhook")).status < 500
    run(check)


# ---------------------------------------------------------------------------------- port clash

class NoService:
    def open_stream(self, protocol, label=""):
        raise AssertionError("not used")

    def close(self):
        pass


def test_port_in_use_is_a_clear_error_and_exit_code():
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        settings = MentraSettings(_env_file=None, api_key="k", port=port, host="127.0.0.1")

        async def go():
            app = MiniApp(settings, NoService())
            with pytest.raises(PortInUseError, match=f"Port {port} is already in use"):
                await app.start()
            return await serve(MiniApp(settings, NoService()), asyncio.Event())

        assert asyncio.run(go()) == 2


def test_health_on_real_server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = MentraSettings(_env_file=None, api_key="k", port=port, host="127.0.0.1", package_name="com.x")

    async def go():
        app = MiniApp(settings, NoService())
        await app.start()
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/health") as r:
                    return await r.json()
        finally:
            await app.stop()

    assert asyncio.run(go()) == {"status": "healthy", "app": "com.x", "activeSessions": 0}
