"""What every part of the simulated cloud shares: config, profiles, the event log, the users'
sessions, its tasks, and the one place a frame is written to an app socket (the thin I/O shell
around the pure decisions in `replies`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web
from loguru import logger

from .events import Direction, EventLog, SimEvent
from .glasses import VirtualGlassesStream
from .protocol import DeviceProfile, GenerationProfile, device_profile, generation_profile
from .replies import Rejection, error_frame, granted_permissions
from .state import SimulatorConfig, UserSession


class SimCore:
    def __init__(self, config: SimulatorConfig, printer: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.gen: GenerationProfile = generation_profile(config.generation)
        self.device: DeviceProfile = device_profile(config.device)
        self.log = EventLog()
        self.sessions: dict[str, UserSession] = {}
        self.port: int = config.port
        self.tasks: set[asyncio.Task[Any]] = set()
        self.sockets: set[web.WebSocketResponse] = set()
        self.glasses: set[VirtualGlassesStream] = set()  # publishers not yet stopped; all stopped on close
        self.retired_drops = 0  # stream drops of glasses streams already stopped and forgotten
        self.closing = False
        self._printer = printer or (lambda line: print(line, flush=True))

    # ------------------------------------------------------------------ addresses
    @property
    def ws_url(self) -> str:
        return f"ws://{self.config.public_host or self.config.host}:{self.port}/app-ws"

    @property
    def miniapp_ws_url(self) -> str:
        return f"ws://{self.config.public_host or self.config.host}:{self.port}/ws/miniapp"

    def permissions(self) -> frozenset[str]:
        return granted_permissions(self.config.permissions, self.config.faults)

    # ------------------------------------------------------------------ recording / operator output
    def record(self, direction: Direction, type_: str, user: str | None, data: dict[str, Any] | None = None) -> SimEvent:
        ev = self.log.add(SimEvent(direction, type_, user, dict(data or {})))
        logger.debug("sim {}", ev)
        return ev

    def echo(self, line: str) -> None:
        if self.config.echo:
            self._printer(line)

    def spawn(self, coro: Coroutine[Any, Any, Any], session: UserSession | None = None) -> asyncio.Task[Any]:
        """A task owned by the session (cancelled with it) or by the simulator; failures are logged."""
        task = asyncio.create_task(coro)
        bucket = session.tasks if session is not None else self.tasks
        bucket.add(task)
        task.add_done_callback(bucket.discard)
        task.add_done_callback(_log_task_error)
        return task

    async def retire(self, glasses: VirtualGlassesStream) -> None:
        """Stop a glasses stream and forget it (keeping its drop count), so long runs stay bounded."""
        await glasses.stop()
        if glasses in self.glasses:
            self.glasses.discard(glasses)
            self.retired_drops += glasses.drops

    # ------------------------------------------------------------------ the socket shell
    async def send(self, s: UserSession | None, msg: dict[str, Any], ws: web.WebSocketResponse | None = None) -> bool:
        ws = ws or (s.ws if s else None)
        user = s.user_id if s else None
        if ws is None or ws.closed:
            self.record("sim", "send_skipped_socket_closed", user, {"type": msg.get("type")})
            return False
        try:
            await ws.send_str(json.dumps(msg))
        except (ConnectionError, RuntimeError) as exc:
            self.record("sim", "send_failed", user, {"type": msg.get("type"), "error": str(exc)})
            return False
        self.record("cloud->app", msg["type"], user, msg)
        return True

    async def send_all(self, s: UserSession, frames: list[dict[str, Any]]) -> None:
        for msg in frames:
            await self.send(s, msg)

    async def reject(self, ws: web.WebSocketResponse, s: UserSession | None, rejection: Rejection,
                     close: bool = True) -> None:
        """`tpa_connection_error` then close(1008, message), as every sendError path does (§3.4)."""
        await self.send(s, error_frame(rejection.code, rejection.message), ws=ws)
        self.echo(f"[cloud] error to app: {rejection.code}: {rejection.message}")
        if close:
            self.record("sim", "close_sent", s.user_id if s else None, {"code": 1008, "reason": rejection.message})
            await ws.close(code=1008, message=rejection.message.encode()[:123])


def _log_task_error(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.opt(exception=task.exception()).error("simulator task failed")
