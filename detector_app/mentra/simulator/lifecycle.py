"""App lifecycle as the cloud's AppManager runs it: start (webhook + connect deadline), stop, and
resurrection after a socket that did not come back within the grace period (§2)."""

from __future__ import annotations

import asyncio

from .core import SimCore
from .protocol import now_iso
from .replies import session_request, stop_request
from .state import UserSession
from .webhook import WebhookClient


class AppLifecycle:
    def __init__(self, core: SimCore, webhook: WebhookClient) -> None:
        self.core = core
        self.webhook = webhook

    @property
    def deadline_s(self) -> float:
        cfg = self.core.config
        return cfg.connect_deadline_s if cfg.connect_deadline_s is not None else self.core.gen.connect_deadline_s

    def start(self, s: UserSession) -> asyncio.Future[bool]:
        """Webhook + connect deadline; the future is True once the app's init is acked."""
        core = self.core
        if s.app_state in ("loading", "running") and s.start_future is not None:
            return s.start_future
        s.start_future = fut = asyncio.get_running_loop().create_future()
        s.app_state = "loading"
        s.ownership_released = False
        s.starts += 1
        s.acks = 0
        core.record("sim", "app_start", s.user_id, {"start": s.starts})
        core.echo(f"[cloud] starting {core.config.package_name} for {s.user_id}")
        body = session_request(s.session_id, s.user_id, core.ws_url, core.miniapp_ws_url, core.gen)
        core.spawn(self._start_webhook(s, body, fut), s)
        core.spawn(self._connect_deadline(s, fut), s)
        return fut

    async def _start_webhook(self, s: UserSession, body: dict, fut: asyncio.Future[bool]) -> None:
        ok = await self.webhook.post(body, s.user_id)
        if not ok and not fut.done():
            s.app_state = "stopped"
            self.core.record("sim", "app_start_failed", s.user_id, {"stage": "WEBHOOK"})
            self.core.echo(f"[cloud] webhook to the app failed; {self.core.config.package_name} not started for {s.user_id}")
            fut.set_result(False)

    async def _connect_deadline(self, s: UserSession, fut: asyncio.Future[bool]) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.deadline_s)
        except asyncio.TimeoutError:
            if not fut.done():
                s.app_state = "stopped"
                self.core.record("sim", "app_start_timeout", s.user_id,
                                 {"stage": "TIMEOUT", "deadline_s": self.deadline_s})
                self.core.echo(f"[cloud] app did not connect within {self.deadline_s:.0f}s; start failed for {s.user_id}")
                fut.set_result(False)

    def acked(self, s: UserSession) -> None:
        if s.start_future is not None and not s.start_future.done():
            s.start_future.set_result(True)

    async def stop(self, s: UserSession, *, restart: bool) -> None:
        """Stop webhook, `app_stopped`, close(1000, 'App stopped') (§2.2)."""
        core = self.core
        s.app_state = "stopping"
        if s.grace_task is not None and s.grace_task is not asyncio.current_task():
            s.grace_task.cancel()
        core.record("sim", "app_stop", s.user_id, {"restart": restart})
        await self.webhook.post(stop_request(s.session_id, s.user_id), s.user_id)
        s.subscriptions = []
        ws = s.ws
        if ws is not None and not ws.closed:
            await core.send(s, {"type": "app_stopped", "timestamp": now_iso()})
            try:
                await asyncio.wait_for(ws.close(code=1000, message=b"App stopped"), 5.0)
            except (asyncio.TimeoutError, ConnectionError):
                pass
        s.ws = None
        s.app_state = "stopped"
        if s.stream is not None:
            # The real cloud does not stop direct streams on app stop (§2.2): surface it, don't fix it.
            core.record("sim", "stream_outlived_app", s.user_id, {"streamId": s.stream.stream_id})
            core.echo(f"[cloud] WARNING: stream {s.stream.stream_id} still running after the app stopped")
        core.echo(f"[cloud] {core.config.package_name} stopped for {s.user_id}")

    def socket_closed(self, s: UserSession, code: int) -> None:
        """The bound app socket closed: released ownership ends the app, anything else starts the grace."""
        core = self.core
        s.ws = None
        s.transport = None
        if s.app_state != "running" or core.closing:
            return  # explicit stop in progress, or never started
        if s.ownership_released:
            s.app_state = "stopped"
            core.record("sim", "app_released", s.user_id, {"code": code})
            return
        core.echo(f"[cloud] app socket for {s.user_id} closed (code {code}); waiting {core.config.grace_s:.0f}s for reconnect")
        s.grace_task = core.spawn(self._grace_then_resurrect(s), s)

    async def _grace_then_resurrect(self, s: UserSession) -> None:
        core = self.core
        core.record("sim", "grace_start", s.user_id, {"grace_s": core.config.grace_s})
        await asyncio.sleep(core.config.grace_s)
        if s.ws is not None and not s.ws.closed:
            return  # re-initialised in time
        if not core.config.resurrect or s.app_state != "running":
            return
        core.record("sim", "resurrect", s.user_id, {})
        core.echo(f"[cloud] app did not reconnect within {core.config.grace_s:.0f}s; resurrecting for {s.user_id}")
        await self.stop(s, restart=True)
        self.start(s)
