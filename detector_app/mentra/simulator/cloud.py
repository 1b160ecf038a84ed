"""Local stand-in for the MentraOS cloud (generation B or D) driving virtual glasses.

Built from the protocol reference only (never from the miniapp's code) so it cross-checks the
app. Every frame, webhook and glasses status is recorded in `events` for tests, and what the
glasses would show or say is printed for an operator watching a terminal.

This module is the public face (start/close and the test/operator API); the parts live in
`server` (HTTP), `webhook` (client), `connection` (app WebSocket), `lifecycle` (start, stop,
resurrection), `streaming`, `media` (display/audio/mic/button) and `replies` (pure decisions).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

from loguru import logger

from .connection import AppConnections
from .core import SimCore
from .events import EventLog, Predicate, SimEvent
from .lifecycle import AppLifecycle
from .managed import ManagedMediaServer
from .media import GlassesMedia
from .protocol import DeviceProfile, GenerationProfile, legacy_session_id
from .server import CloudHttpServer
from .state import Faults, ManagedStreamState, SimulatorConfig, SimulatorError, StreamState, UserSession
from .streaming import Streaming
from .webhook import WebhookClient

__all__ = ["CloudSimulator", "Faults", "SimulatorConfig", "SimulatorError", "StreamState", "UserSession"]


class CloudSimulator:
    """`async with CloudSimulator(app_url=..., package_name=..., api_key=..., video=...) as sim:`."""

    def __init__(self, config: SimulatorConfig | None = None, *, printer: Callable[[str], None] | None = None,
                 managed_media: ManagedMediaServer | None = None, **kwargs: Any) -> None:
        if config is None:
            config = SimulatorConfig(**kwargs)
        elif kwargs:
            config = dataclasses.replace(config, **kwargs)
        self._core = core = SimCore(config, printer)
        self._webhook = WebhookClient(core)
        self._lifecycle = AppLifecycle(core, self._webhook)
        self._streaming = Streaming(core, managed_media)
        self._media = GlassesMedia(core)
        self._connections = AppConnections(core, self._lifecycle, self._streaming, self._media)
        self._server = CloudHttpServer(core, self._connections.handle)
        # What tests and operators read (the same objects the parts use; replace nothing in them).
        self.config: SimulatorConfig = core.config
        self.gen: GenerationProfile = core.gen
        self.device: DeviceProfile = core.device
        self.log: EventLog = core.log
        self.sessions: dict[str, UserSession] = core.sessions

    # ------------------------------------------------------------------ addresses and recorded events
    @property
    def port(self) -> int:
        return self._core.port

    @property
    def events(self) -> list[SimEvent]:
        return self._core.log.events

    @property
    def ws_url(self) -> str:
        return self._core.ws_url

    @property
    def miniapp_ws_url(self) -> str:
        return self._core.miniapp_ws_url

    @property
    def deadline_s(self) -> float:
        return self._lifecycle.deadline_s

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> CloudSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        core = self._core
        core.port = await self._server.start()
        await self._webhook.open()
        logger.info("MentraOS cloud simulator (generation {}) on {} for {} -> {}/webhook",
                    core.gen.name, core.ws_url, core.config.package_name, core.config.app_url.rstrip("/"))

    async def close(self) -> None:
        """Kill every publisher, close sockets, stop the server; safe to call twice."""
        core = self._core
        if core.closing:
            return
        core.closing = True
        # Stop publishers first and let them finish: a cancelled stop could leave ffmpeg running.
        await asyncio.gather(*(g.stop() for g in list(core.glasses)), return_exceptions=True)
        for s in core.sessions.values():
            s.stream = None
            if s.grace_task:
                s.grace_task.cancel()
            for t in list(s.tasks):
                t.cancel()
        for t in list(core.tasks):
            t.cancel()
        await asyncio.gather(*core.tasks, *(t for s in core.sessions.values() for t in s.tasks), return_exceptions=True)
        for ws in list(core.sockets):
            try:
                await asyncio.wait_for(ws.close(code=1001, message=b"Cloud shutting down"), 2.0)
            except Exception:  # noqa: BLE001 - best effort on shutdown
                pass
        await self._streaming.managed.close()
        await self._webhook.close()
        await self._server.close()

    # ------------------------------------------------------------------ recorded events
    async def wait_for(self, predicate: Predicate, timeout: float = 10.0, start: int = 0) -> SimEvent:
        return await self._core.log.wait_for(predicate, timeout, start)

    def received(self, type_: str, user: str | None = None) -> list[SimEvent]:
        """Frames of `type_` the app sent to the cloud."""
        return [e for e in self.events if e.direction == "app->cloud" and e.type == type_ and (user is None or e.user == user)]

    def sent(self, type_: str, user: str | None = None) -> list[SimEvent]:
        """Frames of `type_` the cloud sent to the app."""
        return [e for e in self.events if e.direction == "cloud->app" and e.type == type_ and (user is None or e.user == user)]

    # ------------------------------------------------------------------ test/operator API
    def _session(self, user: str | None) -> UserSession:
        sessions = self._core.sessions
        if user is None:
            if len(sessions) != 1:
                raise ValueError("pass user= when the simulator has zero or several users")
            return next(iter(sessions.values()))
        try:
            return sessions[user]
        except KeyError:
            raise ValueError(f"unknown user {user!r}") from None

    async def start_session(self, user: str = "tester@example.com", *, wait: bool = True,
                            timeout: float | None = None) -> str:
        """User starts the app: webhook + connect deadline. With `wait`, returns once the app is acked."""
        sessions = self._core.sessions
        session = sessions.get(user)
        if session is None:
            session = sessions[user] = UserSession(user, legacy_session_id(user, self.config.package_name))
        fut = self._lifecycle.start(session)
        if wait:
            deadline = timeout if timeout is not None else self.deadline_s + self.config.webhook_timeout_s
            ok = await asyncio.wait_for(asyncio.shield(fut), deadline)
            if not ok:
                raise SimulatorError(f"app did not start for {user} (see sim events)")
        return session.session_id

    async def stop_session(self, user: str | None = None) -> None:
        """User stops the app: stop webhook, app_stopped, close(1000, 'App stopped') (§2.2)."""
        await self._lifecycle.stop(self._session(user), restart=False)

    async def say(self, text: str, user: str | None = None, *, interim: bool = True, language: str = "en-US",
                  word_delay_s: float = 0.05) -> bool:
        """Speak into the glasses mic: interim transcripts with growing text, then one final (§6)."""
        return await self._media.say(self._session(user), text, interim=interim, language=language,
                                     word_delay_s=word_delay_s)

    async def press_button(self, user: str | None = None, *, press_type: str = "short",
                           button_id: str = "camera") -> bool:
        """Press the glasses button; relayed as data_stream `button_press` to subscribers."""
        return await self._media.press_button(self._session(user), press_type, button_id)

    async def drop_app_socket(self, user: str | None = None, code: int | None = None) -> None:
        """Fault on demand: abrupt TCP abort (code None: the app sees 1006) or a close frame with `code`."""
        await self._connections.drop(self._session(user), code)

    def drop_stream(self, user: str | None = None) -> None:
        """Fault on demand: the glasses lose the stream (reconnect behaviour per `stream_drop_mode`)."""
        s = self._session(user)
        if s.stream is not None and s.stream.glasses is not None:
            s.stream.glasses.drop()

    def stream_drops(self) -> int:
        """Simulated glasses-stream drops so far, over every stream of every user."""
        return self._core.retired_drops + sum(g.drops for g in self._core.glasses)

    def stream_state(self, user: str | None = None) -> StreamState | None:
        return self._session(user).stream

    def managed_state(self, user: str | None = None) -> ManagedStreamState | None:
        return self._session(user).managed
