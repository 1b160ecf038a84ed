"""The app WebSocket: the receive loop, `tpa_connection_init` binding a socket to a session, the
dispatch of app → cloud frames to the part that answers them, and the socket-drop faults."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
from aiohttp import web
from loguru import logger

from .core import SimCore
from .lifecycle import AppLifecycle
from .media import GlassesMedia
from .protocol import now_ms
from .replies import (
    Rejection,
    ack_frames,
    check_init,
    check_reconnect,
    check_reconnect_credentials,
    filter_by_permission,
    init_user,
    is_v3_sdk,
    reconnect_rejected_frame,
    requested_streams,
)
from .state import UserSession
from .streaming import Streaming


class AppConnections:
    def __init__(self, core: SimCore, lifecycle: AppLifecycle, streaming: Streaming, media: GlassesMedia) -> None:
        self.core = core
        self.lifecycle = lifecycle
        self.streaming = streaming
        self.media = media

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        """aiohttp handler for /app-ws (and /ws/miniapp in [D])."""
        core = self.core
        transport = request.transport
        ws = web.WebSocketResponse(heartbeat=10.0, max_msg_size=16 * 1024 * 1024, timeout=3.0)
        await ws.prepare(request)
        core.sockets.add(ws)
        headers = {k.lower(): v for k, v in request.headers.items() if k.lower().startswith("x-")}
        core.record("ws", "open", None, {"path": request.path, "identity": {  # never the key itself
            k: ("<set>" if k == "x-api-key" else v) for k, v in headers.items()}})
        bound: UserSession | None = None
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY and bound is not None and core.gen.audio_streams:
                    self.media.audio_bytes(bound, msg.data)
                    continue
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                    mtype = str(data["type"])
                except (ValueError, KeyError, TypeError):
                    core.record("app->cloud", "<malformed>", bound.user_id if bound else None, {"raw": msg.data[:500]})
                    logger.warning("malformed frame from app: {!r}", msg.data[:200])
                    continue
                core.record("app->cloud", mtype, bound.user_id if bound else None, data)
                if bound is None or bound.ws is not ws:
                    if mtype == "tpa_connection_init":
                        bound = await self.init(ws, transport, data, headers)
                    elif mtype == "reconnect" and core.gen.accepts_reconnect:
                        bound = await self.reconnect(ws, transport, data, headers)
                    else:
                        await core.reject(ws, None, Rejection("SESSION_NOT_FOUND", "Session not found"),
                                          close=core.gen.close_on_premature_message)
                    continue
                await self.dispatch(bound, ws, mtype, data)
        finally:
            core.sockets.discard(ws)
            code = int(ws.close_code) if ws.close_code is not None else 1006
            code = code or 1005  # close frame without a status code (e.g. Node ws `close()`)
            core.record("ws", "close", bound.user_id if bound else None, {"code": code, "path": request.path})
            if bound is not None and bound.ws is ws:
                self.lifecycle.socket_closed(bound, code)
        return ws

    async def init(self, ws: web.WebSocketResponse, transport: asyncio.BaseTransport | None,
                   data: dict[str, Any], headers: dict[str, str] | None = None) -> UserSession | None:
        core = self.core
        rejection = check_init(data, core.config.package_name, core.config.api_key)
        if rejection is not None:
            await core.reject(ws, None, rejection)
            return None
        user = init_user(core.gen, headers or {}, data, core.config.package_name)
        s = core.sessions.get(user) if user else None
        if s is None:
            await core.reject(ws, None, Rejection("SESSION_NOT_FOUND", "Session not found"))
            return None
        if s.app_state not in ("loading", "running"):
            await core.reject(ws, s, Rejection("APP_NOT_STARTED", "App not started for this session"))
            return None
        return await self._bind(s, ws, transport, "tpa_connection_ack", v3_client=is_v3_sdk(data.get("sdkVersion")))

    async def reconnect(self, ws: web.WebSocketResponse, transport: asyncio.BaseTransport | None,
                        data: dict[str, Any], headers: dict[str, str]) -> UserSession | None:
        """A 3.x SDK resumes after a drop with `reconnect` instead of an init (§3.8): `reconnect_ack`
        (the ack's fields) when the app is still running here, else `reconnect_rejected`."""
        core = self.core
        if core.gen.accepts_reconnect and is_v3_sdk(data.get("sdkVersion")) and (
                rejection := check_reconnect_credentials(headers, core.config.package_name, core.config.api_key)):
            await core.reject(ws, None, rejection)
            return None
        user = init_user(core.gen, headers, data, core.config.package_name)
        s = core.sessions.get(user) if user else None
        refusal = check_reconnect(core.gen, data, s.app_state if s is not None else None)
        if refusal is not None:
            await core.send(s, reconnect_rejected_frame(refusal), ws=ws)
            core.echo(f"[cloud] reconnect refused: {refusal.code}: {refusal.message}")
            if refusal.close:
                await ws.close(code=1008, message=b"Reconnect unsupported")
            return None
        assert s is not None
        return await self._bind(s, ws, transport, "reconnect_ack", v3_client=True)

    async def _bind(self, s: UserSession, ws: web.WebSocketResponse, transport: asyncio.BaseTransport | None,
                    ack_type: str, *, v3_client: bool) -> UserSession:
        """The socket now speaks for the session: the old one goes, the grace ends, the ack is sent."""
        core = self.core
        old = s.ws
        if old is not None and old is not ws and not old.closed:
            s.ws = None  # its close must not start a grace period
            core.spawn(old.close(code=1000, message=b"Replaced by new connection"), s)
        if s.grace_task is not None:
            s.grace_task.cancel()
            s.grace_task = None
        reconnect = s.app_state == "running" and s.acks > 0
        s.ws, s.transport, s.app_state = ws, transport, "running"
        s.acks += 1
        if reconnect:
            s.last_reconnect_at = time.monotonic()
            core.record("sim", "app_reconnected", s.user_id, {})
        frames = ack_frames(core.gen, core.device, s.session_id, s.user_id, core.config.settings,
                            core.config.faults.no_wifi)
        frames[0]["type"] = ack_type
        await core.send_all(s, frames)
        self.lifecycle.acked(s)
        if core.gen.accepts_reconnect and v3_client and reconnect:  # [D] deliverActiveStreamState: v3 SDKs only
            await self.streaming.deliver_state(s)
        core.echo(f"[cloud] {core.config.package_name} connected for {s.user_id}"
                  f"{' (reconnect)' if reconnect else ''}; glasses: {core.device.model_name}")
        f = core.config.faults
        if f.drop_ws_after_s is not None and (f.repeat or not s.drop_fault_fired):
            s.drop_fault_fired = True
            core.spawn(self._drop_later(s, ws, f.drop_ws_after_s, f.drop_ws_code), s)
        return s

    async def dispatch(self, s: UserSession, ws: web.WebSocketResponse, mtype: str, data: dict[str, Any]) -> None:
        gen, core = self.core.gen, self.core
        if mtype == "tpa_connection_init":
            await self.init(ws, s.transport, data)
        elif mtype == "subscription_update":
            self._subscriptions(s, data)
        elif mtype == "display_event":
            self.media.display(s, data)
        elif mtype == "audio_play_request":
            await self.media.play_audio(s, data)
        elif mtype == "audio_stop_request":
            self.media.stop_audio(s)
        elif mtype == "rgb_led_control":
            self.media.led(s, data)
        elif mtype == "rtmp_stream_request" or (mtype == "stream_request" and gen.accepts_stream_request):
            await self.streaming.request(s, ws, mtype, data)
        elif mtype == "rtmp_stream_stop" or (mtype == "stream_stop" and gen.accepts_stream_request):
            await self.streaming.stop(s, data)
        elif mtype == "stream_status_check":
            await self.streaming.status_check(s)
        elif mtype == "managed_stream_request" and gen.managed_streams:
            core.spawn(self.streaming.managed.request(s, ws, data), s)  # the relay takes a while: keep reading
        elif mtype == "managed_stream_stop" and gen.managed_streams:
            await self.streaming.managed.stop(s)
        elif mtype == "audio_stream_start" and gen.audio_streams:
            await self.media.audio_stream_start(s, data)
        elif mtype == "audio_stream_end" and gen.audio_streams:
            self.media.audio_stream_end(s, data)
        elif mtype == "reconnect" and gen.accepts_reconnect:
            await self.reconnect(ws, s.transport, data, {})
        elif mtype == "ping" and gen.answers_ping:
            await core.send(s, {"type": "pong", "timestamp": now_ms()})
        elif mtype == "ownership_release":
            s.ownership_released = True
            core.record("sim", "ownership_release", s.user_id, {"reason": data.get("reason")})
        elif mtype == "request_wifi_setup":
            core.echo(f"[phone] {s.user_id}: WiFi setup prompt: {data.get('reason')}")
        else:
            core.record("sim", "unhandled_message", s.user_id, {"type": mtype})
            logger.info("Unhandled App message type: {}", mtype)

    def _subscriptions(self, s: UserSession, data: dict[str, Any]) -> None:
        core = self.core
        wanted = requested_streams(data.get("subscriptions") or [])
        if (not wanted and s.last_reconnect_at is not None and core.gen.empty_sub_grace_s
                and time.monotonic() - s.last_reconnect_at < core.gen.empty_sub_grace_s):
            core.record("sim", "empty_subscription_ignored", s.user_id, {})
            return
        accepted, dropped = filter_by_permission(wanted, core.permissions())
        if dropped:
            core.record("sim", "subscription_filtered", s.user_id, {"dropped": dropped})
            logger.warning("subscriptions dropped for missing permission: {}", dropped)
        s.subscriptions = accepted
        core.record("sim", "subscriptions", s.user_id, {"subscriptions": accepted})

    # ------------------------------------------------------------------ socket-drop faults
    async def drop(self, s: UserSession, code: int | None) -> None:
        """Abrupt TCP abort (code None: the app sees 1006) or a close frame with `code`."""
        ws, transport = s.ws, s.transport
        if ws is None:
            return
        self.core.record("sim", "drop_app_socket", s.user_id, {"code": code})
        self.core.echo(f"[cloud] dropping app WebSocket for {s.user_id} ({'abrupt' if code is None else code})")
        if code is None:
            if transport is not None:
                transport.abort()
        else:
            await ws.close(code=code, message=b"simulated drop")

    async def _drop_later(self, s: UserSession, ws: web.WebSocketResponse, after: float, code: int | None) -> None:
        await asyncio.sleep(after)
        if s.ws is ws and not ws.closed:
            await self.drop(s, code)
