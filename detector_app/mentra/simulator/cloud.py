"""Local stand-in for the MentraOS cloud (generation B or D) driving virtual glasses.

Built from the protocol reference only (never from the miniapp's code) so it cross-checks the
app. Every frame, webhook and glasses status is recorded in `events` for tests, and what the
glasses would show or say is printed for an operator watching a terminal.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlparse

import aiohttp
from aiohttp import web
from loguru import logger

from .events import EventLog, Predicate, SimEvent
from .glasses import DropMode, GlassesStreamConfig, VirtualGlassesStream
from .protocol import (
    ALL_PERMISSIONS,
    DeviceName,
    Generation,
    GenerationProfile,
    device_profile,
    generation_profile,
    legacy_session_id,
    map_glasses_status,
    new_stream_id,
    now_iso,
    now_ms,
    parse_legacy_session_id,
    required_permission,
)

AppState = Literal["stopped", "loading", "running", "stopping"]
WIFI_MESSAGE = "Cannot process request - smart glasses must be connected to WiFi for this operation"


class SimulatorError(RuntimeError):
    """A simulated app start failed (webhook failed or the connect deadline passed)."""


@dataclass
class Faults:
    """Fault switches; each mirrors a failure the real cloud/glasses can produce."""

    drop_ws_after_s: float | None = None  # abort the app socket this long after the first ack (once per user)
    drop_ws_code: int | None = None  # None: abrupt TCP abort (app sees 1006); else a close frame with this code
    deny_camera: bool = False  # app lacks CAMERA permission -> PERMISSION_DENIED + 1008 on stream requests
    no_wifi: bool = False  # glasses not on WiFi -> WIFI_NOT_CONNECTED + 1008 on stream requests
    stream_drop_after_s: float | None = None  # glasses publisher killed this long after it runs (once)
    stream_restore_after_s: float | None = None  # ... and restarted this long after the drop
    stream_drop_mode: DropMode = "reconnect"  # "reconnect": initializing -> active; "error": stopped


@dataclass
class SimulatorConfig:
    """Everything `CloudSimulator` needs; CLI flags map 1:1 onto these fields."""

    app_url: str
    package_name: str
    api_key: str
    video: Path | None = None  # None: synthetic test pattern (libx264, costs CPU)
    generation: Generation = "D"
    device: DeviceName = "mentra_live"
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    public_host: str | None = None  # host written into the webhook's WebSocket URLs
    grace_s: float = 5.0  # reconnect grace before resurrection
    resurrect: bool = True
    connect_deadline_s: float | None = None  # None: 5 s (B) / 6 s (D)
    webhook_timeout_s: float = 10.0
    webhook_attempts: int = 2
    webhook_backoff_s: float = 1.0
    loop_video: bool = True
    publisher_max_reconnects: int = 3
    publisher_reconnect_delay_s: float = 1.0
    permissions: frozenset[str] = ALL_PERMISSIONS
    settings: list[dict[str, Any]] = field(default_factory=list)
    faults: Faults = field(default_factory=Faults)
    echo: bool = True  # print glasses display / speaker lines for an operator
    ffmpeg: str = "ffmpeg"


@dataclass
class StreamState:
    stream_id: str
    url: str
    request_type: str
    app_status: str = "initializing"
    created_at: str = field(default_factory=now_iso)
    transport: str = "rtmp"
    glasses: VirtualGlassesStream | None = None


@dataclass
class UserSession:
    """One user's glasses + the app running for them (one package per simulator)."""

    user_id: str
    session_id: str
    app_state: AppState = "stopped"
    ws: web.WebSocketResponse | None = None
    transport: asyncio.BaseTransport | None = None
    subscriptions: list[str] = field(default_factory=list)
    stream: StreamState | None = None
    start_future: asyncio.Future[bool] | None = None
    acks: int = 0
    last_reconnect_at: float | None = None
    ownership_released: bool = False
    drop_fault_fired: bool = False
    starts: int = 0
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    grace_task: asyncio.Task[None] | None = None


class CloudSimulator:
    """`async with CloudSimulator(app_url=..., package_name=..., api_key=..., video=...) as sim:`."""

    def __init__(self, config: SimulatorConfig | None = None, *, printer: Callable[[str], None] | None = None,
                 **kwargs: Any) -> None:
        if config is None:
            config = SimulatorConfig(**kwargs)
        elif kwargs:
            config = dataclasses.replace(config, **kwargs)
        self.config = config
        self.gen: GenerationProfile = generation_profile(config.generation)
        self.device = device_profile(config.device)
        self.log = EventLog()
        self.sessions: dict[str, UserSession] = {}
        self.port: int = config.port
        self._printer = printer or (lambda line: print(line, flush=True))
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sockets: set[web.WebSocketResponse] = set()
        self._glasses: set[VirtualGlassesStream] = set()  # every publisher ever started, stopped on close
        self._closing = False

    # ------------------------------------------------------------------ lifecycle
    @property
    def events(self) -> list[SimEvent]:
        return self.log.events

    @property
    def ws_url(self) -> str:
        return f"ws://{self.config.public_host or self.config.host}:{self.port}/app-ws"

    @property
    def miniapp_ws_url(self) -> str:
        return f"ws://{self.config.public_host or self.config.host}:{self.port}/ws/miniapp"

    async def __aenter__(self) -> CloudSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/app-ws", self._ws_handler)
        if self.gen.serves_miniapp_path:
            app.router.add_get("/ws/miniapp", self._ws_handler)
        app.router.add_get("/api/public/permissions/{pkg}", self._permissions_handler)
        app.router.add_route("*", "/{tail:.*}", self._other_http)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]
        self._http = aiohttp.ClientSession()
        logger.info("MentraOS cloud simulator (generation {}) on {} for {} -> {}/webhook",
                    self.gen.name, self.ws_url, self.config.package_name, self.config.app_url.rstrip("/"))

    async def close(self) -> None:
        """Kill every publisher, close sockets, stop the server; safe to call twice."""
        if self._closing:
            return
        self._closing = True
        # Stop publishers first and let them finish: a cancelled stop could leave ffmpeg running.
        await asyncio.gather(*(g.stop() for g in list(self._glasses)), return_exceptions=True)
        for s in self.sessions.values():
            s.stream = None
            if s.grace_task:
                s.grace_task.cancel()
            for t in list(s.tasks):
                t.cancel()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, *(t for s in self.sessions.values() for t in s.tasks), return_exceptions=True)
        for ws in list(self._sockets):
            try:
                await asyncio.wait_for(ws.close(code=1001, message=b"Cloud shutting down"), 2.0)
            except Exception:  # noqa: BLE001 - best effort on shutdown
                pass
        if self._http is not None:
            await self._http.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def _spawn(self, coro: Any, session: UserSession | None = None) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        bucket = session.tasks if session is not None else self._tasks
        bucket.add(task)
        task.add_done_callback(bucket.discard)
        task.add_done_callback(_log_task_error)
        return task

    # ------------------------------------------------------------------ recording / operator output
    def _record(self, direction: Any, type_: str, user: str | None, data: dict[str, Any] | None = None) -> SimEvent:
        ev = self.log.add(SimEvent(direction, type_, user, dict(data or {})))
        logger.debug("sim {}", ev)
        return ev

    def _echo(self, line: str) -> None:
        if self.config.echo:
            self._printer(line)

    async def wait_for(self, predicate: Predicate, timeout: float = 10.0, start: int = 0) -> SimEvent:
        return await self.log.wait_for(predicate, timeout, start)

    def received(self, type_: str, user: str | None = None) -> list[SimEvent]:
        """Frames of `type_` the app sent to the cloud."""
        return [e for e in self.events if e.direction == "app->cloud" and e.type == type_ and (user is None or e.user == user)]

    def sent(self, type_: str, user: str | None = None) -> list[SimEvent]:
        """Frames of `type_` the cloud sent to the app."""
        return [e for e in self.events if e.direction == "cloud->app" and e.type == type_ and (user is None or e.user == user)]

    # ------------------------------------------------------------------ public test/operator API
    def _session(self, user: str | None) -> UserSession:
        if user is None:
            if len(self.sessions) != 1:
                raise ValueError("pass user= when the simulator has zero or several users")
            return next(iter(self.sessions.values()))
        try:
            return self.sessions[user]
        except KeyError:
            raise ValueError(f"unknown user {user!r}") from None

    async def start_session(self, user: str = "tester@example.com", *, wait: bool = True,
                            timeout: float | None = None) -> str:
        """User starts the app: webhook + connect deadline. With `wait`, returns once the app is acked."""
        session = self.sessions.get(user)
        if session is None:
            session = self.sessions[user] = UserSession(user, legacy_session_id(user, self.config.package_name))
        fut = self._start_app(session)
        if wait:
            deadline = timeout if timeout is not None else self.deadline_s + self.config.webhook_timeout_s
            ok = await asyncio.wait_for(asyncio.shield(fut), deadline)
            if not ok:
                raise SimulatorError(f"app did not start for {user} (see sim events)")
        return session.session_id

    async def stop_session(self, user: str | None = None) -> None:
        """User stops the app: stop webhook, app_stopped, close(1000, 'App stopped') (§2.2)."""
        await self._stop_app(self._session(user), restart=False)

    async def say(self, text: str, user: str | None = None, *, interim: bool = True, language: str = "en-US",
                  word_delay_s: float = 0.05) -> bool:
        """Speak into the glasses mic: interim transcripts with growing text, then one final (§6)."""
        s = self._session(user)
        self._echo(f"[glasses mic] {s.user_id} says: \"{text}\"")
        keys = [k for k in s.subscriptions if k.startswith("transcription")]
        if not keys:
            self._record("sim", "transcription_not_subscribed", s.user_id, {"text": text})
            logger.warning("app is not subscribed to transcription; '{}' is not delivered", text)
            return False
        words = text.split()
        start = now_ms()
        utterance = f"u-{new_stream_id()[1:]}"
        partials = [" ".join(words[:i]) for i in range(1, len(words))] if interim else []
        for is_final, part in [(False, p) for p in partials] + [(True, text)]:
            data = {"type": "transcription", "text": part, "isFinal": is_final, "transcribeLanguage": language,
                    "startTime": start, "endTime": now_ms(), "provider": "soniox", "utteranceId": utterance,
                    "speakerId": "1", "metadata": {"provider": "soniox"}}
            for key in keys:
                await self._send(s, {"type": "data_stream", "sessionId": s.session_id, "streamType": key,
                                     "data": data, "timestamp": now_iso()})
            if not is_final:
                await asyncio.sleep(word_delay_s)
        return True

    async def press_button(self, user: str | None = None, *, press_type: str = "short",
                           button_id: str = "camera") -> bool:
        """Press the glasses button; relayed as data_stream `button_press` to subscribers."""
        s = self._session(user)
        self._echo(f"[glasses button] {s.user_id}: {press_type} press")
        if "button_press" not in s.subscriptions:
            self._record("sim", "button_not_subscribed", s.user_id, {"pressType": press_type})
            return False
        data = {"type": "button_press", "buttonId": button_id, "pressType": press_type, "timestamp": now_iso()}
        await self._send(s, {"type": "data_stream", "sessionId": s.session_id, "streamType": "button_press",
                             "data": data, "timestamp": now_iso()})
        return True

    async def drop_app_socket(self, user: str | None = None, code: int | None = None) -> None:
        """Fault on demand: abrupt TCP abort (code None: the app sees 1006) or a close frame with `code`."""
        s = self._session(user)
        ws, transport = s.ws, s.transport
        if ws is None:
            return
        self._record("sim", "drop_app_socket", s.user_id, {"code": code})
        self._echo(f"[cloud] dropping app WebSocket for {s.user_id} ({'abrupt' if code is None else code})")
        if code is None:
            if transport is not None:
                transport.abort()
        else:
            await ws.close(code=code, message=b"simulated drop")

    def drop_stream(self, user: str | None = None) -> None:
        """Fault on demand: the glasses lose the stream (reconnect behaviour per `stream_drop_mode`)."""
        s = self._session(user)
        if s.stream is not None and s.stream.glasses is not None:
            s.stream.glasses.drop()

    @property
    def deadline_s(self) -> float:
        return self.config.connect_deadline_s if self.config.connect_deadline_s is not None else self.gen.connect_deadline_s

    def stream_state(self, user: str | None = None) -> StreamState | None:
        return self._session(user).stream

    # ------------------------------------------------------------------ app lifecycle (AppManager)
    def _start_app(self, s: UserSession) -> asyncio.Future[bool]:
        if s.app_state in ("loading", "running") and s.start_future is not None:
            return s.start_future
        loop = asyncio.get_running_loop()
        s.start_future = loop.create_future()
        s.app_state = "loading"
        s.ownership_released = False
        s.starts += 1
        s.acks = 0
        self._record("sim", "app_start", s.user_id, {"start": s.starts})
        self._echo(f"[cloud] starting {self.config.package_name} for {s.user_id}")
        body: dict[str, Any] = {"type": "session_request", "sessionId": s.session_id, "userId": s.user_id,
                                "timestamp": now_iso(), "augmentOSWebsocketUrl": self.ws_url}
        if self.gen.webhook_all_urls:
            body["mentraOSWebsocketUrl"] = self.ws_url
            body["websocketUrl"] = self.miniapp_ws_url
        fut = s.start_future
        self._spawn(self._start_webhook(s, body, fut), s)
        self._spawn(self._connect_deadline(s, fut), s)
        return fut

    async def _start_webhook(self, s: UserSession, body: dict[str, Any], fut: asyncio.Future[bool]) -> None:
        ok = await self._post_webhook(body, s.user_id)
        if not ok and not fut.done():
            s.app_state = "stopped"
            self._record("sim", "app_start_failed", s.user_id, {"stage": "WEBHOOK"})
            self._echo(f"[cloud] webhook to the app failed; {self.config.package_name} not started for {s.user_id}")
            fut.set_result(False)

    async def _connect_deadline(self, s: UserSession, fut: asyncio.Future[bool]) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.deadline_s)
        except asyncio.TimeoutError:
            if not fut.done():
                s.app_state = "stopped"
                self._record("sim", "app_start_timeout", s.user_id, {"stage": "TIMEOUT", "deadline_s": self.deadline_s})
                self._echo(f"[cloud] app did not connect within {self.deadline_s:.0f}s; start failed for {s.user_id}")
                fut.set_result(False)

    async def _stop_app(self, s: UserSession, *, restart: bool) -> None:
        s.app_state = "stopping"
        if s.grace_task is not None and s.grace_task is not asyncio.current_task():
            s.grace_task.cancel()
        self._record("sim", "app_stop", s.user_id, {"restart": restart})
        await self._post_webhook({"type": "stop_request", "sessionId": s.session_id, "userId": s.user_id,
                                  "reason": "user_disabled", "timestamp": now_iso()}, s.user_id)
        s.subscriptions = []
        ws = s.ws
        if ws is not None and not ws.closed:
            await self._send(s, {"type": "app_stopped", "timestamp": now_iso()})
            try:
                await asyncio.wait_for(ws.close(code=1000, message=b"App stopped"), 5.0)
            except (asyncio.TimeoutError, ConnectionError):
                pass
        s.ws = None
        s.app_state = "stopped"
        if s.stream is not None:
            # The real cloud does not stop direct streams on app stop (§2.2): surface it, don't fix it.
            self._record("sim", "stream_outlived_app", s.user_id, {"streamId": s.stream.stream_id})
            self._echo(f"[cloud] WARNING: stream {s.stream.stream_id} still running after the app stopped")
        self._echo(f"[cloud] {self.config.package_name} stopped for {s.user_id}")

    async def _grace_then_resurrect(self, s: UserSession) -> None:
        self._record("sim", "grace_start", s.user_id, {"grace_s": self.config.grace_s})
        await asyncio.sleep(self.config.grace_s)
        if s.ws is not None and not s.ws.closed:
            return  # re-initialised in time
        if not self.config.resurrect or s.app_state != "running":
            return
        self._record("sim", "resurrect", s.user_id, {})
        self._echo(f"[cloud] app did not reconnect within {self.config.grace_s:.0f}s; resurrecting for {s.user_id}")
        await self._stop_app(s, restart=True)
        self._start_app(s)

    async def _post_webhook(self, body: dict[str, Any], user: str) -> bool:
        """axios-like POST: `webhook_attempts` tries, each with `webhook_timeout_s`, 1 s backoff (§2.1)."""
        assert self._http is not None
        url = self.config.app_url.rstrip("/") + "/webhook"
        kind = body["type"]
        for attempt in range(1, self.config.webhook_attempts + 1):
            self._record("webhook", kind, user, {"phase": "sent", "attempt": attempt, "body": body, "url": url})
            try:
                timeout = aiohttp.ClientTimeout(total=self.config.webhook_timeout_s)
                async with self._http.post(url, json=body, timeout=timeout) as resp:
                    text = await resp.text()
                    self._record("webhook", kind, user, {"phase": "response", "attempt": attempt,
                                                         "status": resp.status, "response": text})
                    if 200 <= resp.status < 300:
                        return True
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                self._record("webhook", kind, user, {"phase": "failed", "attempt": attempt,
                                                     "error": f"{type(exc).__name__}: {exc}"})
                logger.warning("webhook {} to {} failed (attempt {}): {!r}", kind, url, attempt, exc)
            if attempt < self.config.webhook_attempts:
                await asyncio.sleep(self.config.webhook_backoff_s)
        return False

    # ------------------------------------------------------------------ WebSocket
    async def _send(self, s: UserSession | None, msg: dict[str, Any], ws: web.WebSocketResponse | None = None) -> bool:
        ws = ws or (s.ws if s else None)
        user = s.user_id if s else None
        if ws is None or ws.closed:
            self._record("sim", "send_skipped_socket_closed", user, {"type": msg.get("type")})
            return False
        try:
            await ws.send_str(json.dumps(msg))
        except (ConnectionError, RuntimeError) as exc:
            self._record("sim", "send_failed", user, {"type": msg.get("type"), "error": str(exc)})
            return False
        self._record("cloud->app", msg["type"], user, msg)
        return True

    async def _error_close(self, ws: web.WebSocketResponse, s: UserSession | None, code: str, message: str,
                           close: bool = True) -> None:
        """`tpa_connection_error` then close(1008, message), as every sendError path does (§3.4)."""
        await self._send(s, {"type": "tpa_connection_error", "code": code, "message": message,
                             "timestamp": now_iso()}, ws=ws)
        self._echo(f"[cloud] error to app: {code}: {message}")
        if close:
            self._record("sim", "close_sent", s.user_id if s else None, {"code": 1008, "reason": message})
            await ws.close(code=1008, message=message.encode()[:123])

    async def _ws_handler(self, request: web.Request) -> web.WebSocketResponse:
        transport = request.transport
        ws = web.WebSocketResponse(heartbeat=10.0, max_msg_size=16 * 1024 * 1024, timeout=3.0)
        await ws.prepare(request)
        self._sockets.add(ws)
        self._record("ws", "open", None, {"path": request.path})
        bound: UserSession | None = None
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                    mtype = str(data["type"])
                except (ValueError, KeyError, TypeError):
                    self._record("app->cloud", "<malformed>", bound.user_id if bound else None, {"raw": msg.data[:500]})
                    logger.warning("malformed frame from app: {!r}", msg.data[:200])
                    continue
                self._record("app->cloud", mtype, bound.user_id if bound else None, data)
                if bound is None or bound.ws is not ws:
                    if mtype == "tpa_connection_init":
                        bound = await self._handle_init(ws, transport, data)
                    else:
                        await self._error_close(ws, None, "SESSION_NOT_FOUND", "Session not found",
                                                close=self.gen.close_on_premature_message)
                    continue
                await self._dispatch(bound, ws, mtype, data)
        finally:
            self._sockets.discard(ws)
            code = int(ws.close_code) if ws.close_code is not None else 1006
            code = code or 1005  # close frame without a status code (e.g. Node ws `close()`)
            self._record("ws", "close", bound.user_id if bound else None, {"code": code, "path": request.path})
            if bound is not None and bound.ws is ws:
                self._on_app_socket_closed(bound, code)
        return ws

    def _on_app_socket_closed(self, s: UserSession, code: int) -> None:
        s.ws = None
        s.transport = None
        if s.app_state != "running" or self._closing:
            return  # explicit stop in progress, or never started
        if s.ownership_released:
            s.app_state = "stopped"
            self._record("sim", "app_released", s.user_id, {"code": code})
            return
        self._echo(f"[cloud] app socket for {s.user_id} closed (code {code}); waiting {self.config.grace_s:.0f}s for reconnect")
        s.grace_task = self._spawn(self._grace_then_resurrect(s), s)

    async def _handle_init(self, ws: web.WebSocketResponse, transport: asyncio.BaseTransport | None,
                           data: dict[str, Any]) -> UserSession | None:
        pkg, key, sid = data.get("packageName"), data.get("apiKey"), str(data.get("sessionId") or "")
        if pkg != self.config.package_name or key != self.config.api_key:
            await self._error_close(ws, None, "INVALID_API_KEY", "Invalid API key")
            return None
        user = parse_legacy_session_id(sid, self.config.package_name)
        s = self.sessions.get(user) if user else None
        if s is None:
            await self._error_close(ws, None, "SESSION_NOT_FOUND", "Session not found")
            return None
        if s.app_state not in ("loading", "running"):
            await self._error_close(ws, s, "APP_NOT_STARTED", "App not started for this session")
            return None
        old = s.ws
        if old is not None and old is not ws and not old.closed:
            s.ws = None  # its close must not start a grace period
            self._spawn(old.close(code=1000, message=b"Replaced by new connection"), s)
        if s.grace_task is not None:
            s.grace_task.cancel()
            s.grace_task = None
        reconnect = s.app_state == "running" and s.acks > 0
        s.ws, s.transport, s.app_state = ws, transport, "running"
        s.acks += 1
        if reconnect:
            s.last_reconnect_at = time.monotonic()
            self._record("sim", "app_reconnected", s.user_id, {})
        ack: dict[str, Any] = {"type": "tpa_connection_ack", "sessionId": s.session_id,
                               "settings": list(self.config.settings),
                               self.gen.ack_settings_key: {"metricSystemEnabled": True, "brightness": 50,
                                                           "autoBrightness": True, "headUpAngle": 20,
                                                           "sensingEnabled": True, "alwaysOnStatusBar": False},
                               "capabilities": self.device.capabilities, "timestamp": now_iso()}
        if self.gen.ack_extra_fields:
            ack["subscriptions"] = []
            ack["userId"] = s.user_id
        await self._send(s, ack)
        if self.gen.device_state_after_ack:
            await self._send(s, {"type": "device_state_update", "fullSnapshot": True, "timestamp": now_iso(),
                                 "state": {"connected": True, "modelName": self.device.model_name,
                                           "wifiConnected": not self.config.faults.no_wifi,
                                           "wifiSsid": None if self.config.faults.no_wifi else "SimWiFi",
                                           "batteryLevel": 87, "charging": False}})
        if s.start_future is not None and not s.start_future.done():
            s.start_future.set_result(True)
        self._echo(f"[cloud] {self.config.package_name} connected for {s.user_id}"
                   f"{' (reconnect)' if reconnect else ''}; glasses: {self.device.model_name}")
        f = self.config.faults
        if f.drop_ws_after_s is not None and not s.drop_fault_fired:
            s.drop_fault_fired = True
            self._spawn(self._drop_later(s, ws, f.drop_ws_after_s, f.drop_ws_code), s)
        return s

    async def _drop_later(self, s: UserSession, ws: web.WebSocketResponse, after: float, code: int | None) -> None:
        await asyncio.sleep(after)
        if s.ws is ws and not ws.closed:
            await self.drop_app_socket(s.user_id, code)

    # ------------------------------------------------------------------ app -> cloud messages
    async def _dispatch(self, s: UserSession, ws: web.WebSocketResponse, mtype: str, data: dict[str, Any]) -> None:
        gen = self.gen
        if mtype == "tpa_connection_init":
            await self._handle_init(ws, s.transport, data)
        elif mtype == "subscription_update":
            self._handle_subscriptions(s, data)
        elif mtype == "display_event":
            self._handle_display(s, data)
        elif mtype == "audio_play_request":
            await self._handle_audio(s, data)
        elif mtype == "audio_stop_request":
            self._echo(f"[glasses speaker] {s.user_id}: (audio stopped)")
        elif mtype == "rgb_led_control":
            self._echo(f"[glasses LED] {s.user_id}: {data.get('action')} {data.get('color', '')} "
                       f"on={data.get('ontime')}ms off={data.get('offtime')}ms x{data.get('count')}")
        elif mtype == "rtmp_stream_request" or (mtype == "stream_request" and gen.accepts_stream_request):
            await self._handle_stream_request(s, ws, mtype, data)
        elif mtype == "rtmp_stream_stop" or (mtype == "stream_stop" and gen.accepts_stream_request):
            await self._handle_stream_stop(s, data)
        elif mtype == "stream_status_check":
            await self._handle_status_check(s)
        elif mtype == "ping" and gen.answers_ping:
            await self._send(s, {"type": "pong", "timestamp": now_ms()})
        elif mtype == "ownership_release":
            s.ownership_released = True
            self._record("sim", "ownership_release", s.user_id, {"reason": data.get("reason")})
        elif mtype == "request_wifi_setup":
            self._echo(f"[phone] {s.user_id}: WiFi setup prompt: {data.get('reason')}")
        else:
            self._record("sim", "unhandled_message", s.user_id, {"type": mtype})
            logger.info("Unhandled App message type: {}", mtype)

    def _handle_subscriptions(self, s: UserSession, data: dict[str, Any]) -> None:
        raw = data.get("subscriptions") or []
        wanted: list[str] = []
        for item in raw:
            name = item.get("stream") if isinstance(item, dict) else item
            if not isinstance(name, str):
                continue
            wanted.append("transcription:en-US" if name == "transcription" else name)
        if (not wanted and s.last_reconnect_at is not None and self.gen.empty_sub_grace_s
                and time.monotonic() - s.last_reconnect_at < self.gen.empty_sub_grace_s):
            self._record("sim", "empty_subscription_ignored", s.user_id, {})
            return
        accepted, dropped = [], []
        for name in wanted:
            perm = required_permission(name)
            perms = self._permissions()
            (accepted if perm is None or perm in perms else dropped).append(name)
        if dropped:
            self._record("sim", "subscription_filtered", s.user_id, {"dropped": dropped})
            logger.warning("subscriptions dropped for missing permission: {}", dropped)
        s.subscriptions = accepted
        self._record("sim", "subscriptions", s.user_id, {"subscriptions": accepted})

    def _permissions(self) -> frozenset[str]:
        perms = set(self.config.permissions)
        if self.config.faults.deny_camera:
            perms.discard("CAMERA")
        return frozenset(perms)

    def _handle_display(self, s: UserSession, data: dict[str, Any]) -> None:
        layout = data.get("layout") or {}
        kind = layout.get("layoutType", "?")
        if kind == "text_wall":
            text = str(layout.get("text", ""))
        elif kind == "double_text_wall":
            text = f"{layout.get('topText', '')} | {layout.get('bottomText', '')}"
        elif kind == "reference_card":
            text = f"{layout.get('title', '')}: {layout.get('text', '')}"
        elif kind == "dashboard_card":
            text = f"{layout.get('leftText', '')} | {layout.get('rightText', '')}"
        elif kind == "clear_view":
            text = "(cleared)"
        else:
            text = f"({kind})"
        view = data.get("view", "main")
        if self.device.has_display:
            self._echo(f"[glasses display] {s.user_id} [{view}]: {text}")
        else:
            self._echo(f"[glasses display] {s.user_id}: ({self.device.model_name} has no display; not visible) {text}")

    async def _handle_audio(self, s: UserSession, data: dict[str, Any]) -> None:
        url = str(data.get("audioUrl", ""))
        parsed = urlparse(url)
        text = parse_qs(parsed.query).get("text", [None])[0] if parsed.path.endswith("/api/tts") else None
        self._echo(f"[glasses speaker] {s.user_id}: \"{text}\"" if text is not None else
                   f"[glasses speaker] {s.user_id}: playing {url}")
        duration = round(max(0.5, 0.07 * len(text)), 2) if text else 1.0
        await self._send(s, {"type": "audio_play_response", "requestId": data.get("requestId"), "success": True,
                             "duration": duration, "timestamp": now_iso()})

    # ------------------------------------------------------------------ streaming (UnmanagedStreamingExtension)
    async def _handle_stream_request(self, s: UserSession, ws: web.WebSocketResponse, mtype: str,
                                     data: dict[str, Any]) -> None:
        if "CAMERA" not in self._permissions():
            await self._error_close(ws, s, "PERMISSION_DENIED", self.gen.permission_denied_message)
            return
        url = data.get("streamUrl") or data.get("rtmpUrl") if self.gen.accepts_stream_request else data.get("rtmpUrl")
        if self.gen.rtmp_only:
            if not isinstance(url, str) or not url.lower().startswith(("rtmp://", "rtmps://")):
                await self._error_close(ws, s, "INTERNAL_ERROR", "Invalid RTMP URL")
                return
        elif not url:
            await self._error_close(ws, s, "INTERNAL_ERROR", "Invalid stream URL: streamUrl is required")
            return
        if self.config.faults.no_wifi or not self.device.capabilities.get("hasWifi"):
            await self._error_close(ws, s, "WIFI_NOT_CONNECTED", WIFI_MESSAGE)
            return
        assert isinstance(url, str)
        if s.stream is not None:  # unmanaged requests pre-empt the user's existing stream (§4.2)
            await self._end_stream(s, s.stream)
        stream = StreamState(new_stream_id(), url, mtype,
                             transport="srt" if url.lower().startswith("srt://") else "rtmp")
        s.stream = stream
        self._echo(f"[glasses camera] {s.user_id}: stream {stream.stream_id} requested -> {url}")
        await self._send_status(s, stream)

        async def on_status(raw: str, details: str | None) -> None:
            await self._on_glasses_status(s, stream, raw, details)

        video = self.config.video
        cfg = GlassesStreamConfig(
            loop=self.config.loop_video,
            max_reconnects=self.config.publisher_max_reconnects,
            reconnect_delay_s=self.config.publisher_reconnect_delay_s,
            drop_after_s=self.config.faults.stream_drop_after_s,
            restore_after_s=self.config.faults.stream_restore_after_s,
            drop_mode=self.config.faults.stream_drop_mode,
        )
        if not self.device.capabilities.get("hasCamera"):
            await self._on_glasses_status(s, stream, "error", "camera not available")
            return
        stream.glasses = VirtualGlassesStream(url, video, on_status, cfg, name=f"glasses:{s.user_id}",
                                              ffmpeg=self.config.ffmpeg)
        self._glasses.add(stream.glasses)
        stream.glasses.start()

    async def _on_glasses_status(self, s: UserSession, stream: StreamState, raw: str, details: str | None) -> None:
        self._record("glasses", raw, s.user_id, {"streamId": stream.stream_id, "details": details})
        if s.stream is not stream:
            return  # stream already stopped/replaced: the cloud no longer tracks it
        mapped = map_glasses_status(raw)
        if mapped == stream.app_status:
            return
        stream.app_status = mapped
        if mapped in ("stopped", "timeout"):
            s.stream = None
        self._echo(f"[glasses camera] {s.user_id}: stream {stream.stream_id} {raw}"
                   f"{' (' + details + ')' if details else ''} -> app sees '{mapped}'")
        await self._send_status(s, stream)

    async def _send_status(self, s: UserSession, stream: StreamState) -> None:
        """Direct copy(ies) to the owner plus data_stream to subscribers (§4.4); no stats/errorDetails."""
        payload: dict[str, Any] = {"sessionId": s.session_id, "streamId": stream.stream_id,
                                   "status": stream.app_status, "appId": self.config.package_name}
        if self.gen.name == "D" and stream.app_status == "active":
            payload["resolvedConfig"] = {"transport": stream.transport,
                                         "video": {"width": 854, "height": 480, "captureWidth": 1280,
                                                   "captureHeight": 720, "bitrate": 1000000, "fps": 15}}
        for t in self.gen.status_types:
            await self._send(s, {"type": t, **payload, "timestamp": now_iso()})
        for t in self.gen.status_types:
            if t in s.subscriptions:
                await self._send(s, {"type": "data_stream", "sessionId": s.session_id, "streamType": t,
                                     "data": {"type": t, **payload, "timestamp": now_iso()}, "timestamp": now_iso()})

    async def _end_stream(self, s: UserSession, stream: StreamState) -> None:
        """Report `stopped` at once, then stop the glasses (§4.3)."""
        if s.stream is stream:
            s.stream = None
        if stream.app_status != "stopped":
            stream.app_status = "stopped"
            await self._send_status(s, stream)
        self._echo(f"[glasses camera] {s.user_id}: stream {stream.stream_id} stopped")
        if stream.glasses is not None:
            self._spawn(stream.glasses.stop(), s)

    async def _handle_stream_stop(self, s: UserSession, data: dict[str, Any]) -> None:
        sid = data.get("streamId")
        stream = s.stream
        if stream is None or (sid and sid != stream.stream_id):
            self._record("sim", "stream_stop_no_match", s.user_id, {"streamId": sid})
            logger.info("stream stop for {!r}: no such active stream", sid)
            return
        await self._end_stream(s, stream)

    async def _handle_status_check(self, s: UserSession) -> None:
        stream = s.stream
        msg: dict[str, Any] = {"type": "stream_status_check_response", "hasActiveStream": stream is not None,
                               "timestamp": now_iso()}
        if stream is not None:
            msg["streamInfo"] = {"type": "unmanaged", "streamId": stream.stream_id, "status": stream.app_status,
                                 "createdAt": stream.created_at, self.gen.status_check_url_key: stream.url,
                                 "requestingAppId": self.config.package_name}
        await self._send(s, msg)

    # ------------------------------------------------------------------ misc HTTP
    async def _permissions_handler(self, request: web.Request) -> web.Response:
        self._record("sim", "http_request", None, {"method": request.method, "path": request.path})
        return web.json_response({"permissions": [{"type": p} for p in sorted(self._permissions())]})

    async def _other_http(self, request: web.Request) -> web.Response:
        self._record("sim", "http_request", None, {"method": request.method, "path": request.path})
        return web.json_response({"error": "not simulated"}, status=404)


def _log_task_error(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.opt(exception=task.exception()).error("simulator task failed")
