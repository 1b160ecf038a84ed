"""HTTP side: the cloud's ``POST /webhook`` (session_request / stop_request), ``GET /health``, and the
nginx ingest's hooks (``POST /ingest/on_publish`` …, answered only to this machine).

Parsing is pure (``parse_webhook``) and the decisions (allowlist, de-duplication, starting sessions)
belong to a ``WebhookHandler`` (``MiniApp``), so this module is only the aiohttp plumbing. Every bad
request gets a 4xx JSON ``{"status":"error","message":…}`` — the server never crashes on input.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from loguru import logger

from detector_app.ingest.nginx_hooks import HookCall, parse_hook


class WebhookError(Exception):
    """A request we refuse; ``status`` is the HTTP status to reply with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class SessionRequest:
    session_id: str
    user_id: str | None
    ws_url: str
    timestamp: str | None = None
    miniapp_ws_url: str | None = None  # ``websocketUrl``: the v3 path ``/ws/miniapp`` ([D] only)

    def url_for(self, cloud_protocol: str) -> str:
        """The URL a client of this protocol connects to: the 3.x SDK prefers ``websocketUrl``
        (``_SessionManager``), the 2.x SDK never reads it (v2 clients must stay on ``/app-ws``)."""
        return (self.miniapp_ws_url or self.ws_url) if cloud_protocol == "v3" else self.ws_url


@dataclass(frozen=True, slots=True)
class StopRequest:
    session_id: str
    user_id: str | None
    reason: str | None = None


def _required_str(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise WebhookError(400, f"Missing or invalid field: {key}")
    return value


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def parse_webhook(body: Any) -> SessionRequest | StopRequest:
    """Validate a webhook body. The URL is ``mentraOSWebsocketUrl`` or else ``augmentOSWebsocketUrl``
    (what the 2.x SDK uses, §2.1); ``websocketUrl`` (the v3 path) is kept for v3 clients (``url_for``)."""
    if not isinstance(body, dict):
        raise WebhookError(400, "Body must be a JSON object")
    kind = body.get("type")
    if kind == "session_request":
        session_id = _required_str(body, "sessionId")
        ws_url = _opt_str(body.get("mentraOSWebsocketUrl")) or _opt_str(body.get("augmentOSWebsocketUrl"))
        if ws_url is None:
            raise WebhookError(400, "Missing field: mentraOSWebsocketUrl or augmentOSWebsocketUrl")
        return SessionRequest(session_id, _opt_str(body.get("userId")), ws_url, _opt_str(body.get("timestamp")),
                              _opt_str(body.get("websocketUrl")))
    if kind == "stop_request":
        return StopRequest(_required_str(body, "sessionId"), _opt_str(body.get("userId")), _opt_str(body.get("reason")))
    raise WebhookError(400, "Unknown webhook request type")


class WebhookHandler(Protocol):
    package_name: str

    async def on_session_request(self, request: SessionRequest) -> None:
        """Start (or de-duplicate) the session; raise ``WebhookError`` to refuse."""

    async def on_stop_request(self, request: StopRequest) -> None: ...

    def active_sessions(self) -> int: ...


class IngestHookHandler(Protocol):
    async def on_ingest_hook(self, call: HookCall) -> bool:
        """True lets nginx go on (2xx); False refuses the client (403)."""


def _same_machine(request: web.Request) -> bool:
    """nginx runs here: a hook from any other address is somebody poking at our ingest."""
    peer = request.remote or ""
    sock = request.transport.get_extra_info("sockname") if request.transport else None
    local = sock[0] if sock else None
    try:
        return ipaddress.ip_address(peer).is_loopback or peer == local
    except ValueError:
        return False


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"status": "error", "message": message}, status=status)


def create_web_app(handler: WebhookHandler) -> web.Application:
    """aiohttp application with ``POST /webhook`` and ``GET /health``."""

    async def webhook(request: web.Request) -> web.Response:
        try:
            raw = await request.read()
            body = json.loads(raw) if raw else None
        except (ValueError, UnicodeDecodeError):
            return _error(400, "Malformed JSON")
        try:
            parsed = parse_webhook(body)
            if isinstance(parsed, SessionRequest):
                await handler.on_session_request(parsed)
            else:
                await handler.on_stop_request(parsed)
        except WebhookError as exc:
            return _error(exc.status, exc.message)
        except Exception:  # noqa: BLE001 - never let one request take the server down
            logger.exception("webhook handler failed")
            return _error(500, "Internal error")
        return web.json_response({"status": "success"})

    async def ingest_hook(request: web.Request) -> web.Response:
        hooks = getattr(handler, "on_ingest_hook", None)
        if hooks is None:
            return web.Response(status=404)
        if not _same_machine(request):
            return web.Response(status=403)
        try:
            form = await request.post()
        except ValueError:
            return web.Response(status=400)
        call = parse_hook(request.match_info["kind"], {k: str(v) for k, v in form.items()})
        if call is None:
            return web.Response(status=400)
        try:
            allowed = await hooks(call)
        except Exception:  # noqa: BLE001 - refuse, never crash the server
            logger.exception("ingest hook {} failed", call.kind)
            allowed = False
        return web.Response(status=200 if allowed else 403)

    async def health(_: web.Request) -> web.Response:
        return web.json_response(
            {"status": "healthy", "app": handler.package_name, "activeSessions": handler.active_sessions()}
        )

    app = web.Application(client_max_size=256 * 1024)
    app.router.add_post("/webhook", webhook)
    app.router.add_get("/health", health)
    app.router.add_post("/ingest/on_{kind}", ingest_hook)
    return app
