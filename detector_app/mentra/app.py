"""``MiniApp``: the webhook server plus one ``SessionRunner`` per glasses session, and ``run_serve``.

The detection service (model) is injected or built once in the background while the webhook server
is already listening, so a port clash is reported at once and a session's ``tpa_connection_init`` is
never delayed by model loading (the cloud allows 5–6 s from start to init, §2.1).

Shutdown has one budget (``STOP_BUDGET_S``): every session's stream stop, socket close and stream
close run in parallel inside it, then the server and the service are closed.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web
from loguru import logger

from detector_app.errors import PortInUseError
from detector_app.ingest.addresses import detect_lan_address
from detector_app.ingest.nginx_hooks import HookCall
from detector_app.main_thread import LiveView, run_with_window
from detector_app.mentra.allowlist import check_ws_url
from detector_app.mentra.client import SessionRunner
from detector_app.mentra.config import MentraSettings
from detector_app.mentra.contracts import DetectionServiceLike
from detector_app.mentra.feedback import FeedbackConfig, FeedbackEngine
from detector_app.mentra.session import AppSession, SessionConfig
from detector_app.mentra.webhook import SessionRequest, StopRequest, WebhookError, create_web_app

# Cloud errors after which a resurrected session should not immediately re-request the stream
# (it would fail the same way and loop: error → 1008 → resurrection → request → error …).
_STREAM_BLOCKING_ERRORS = {"PERMISSION_DENIED": 600.0, "WIFI_NOT_CONNECTED": 60.0}
STOP_BUDGET_S = 8.0  # stream stops, socket closes and stream closes of all sessions, in parallel


def ingest_hook_url(bind: str, port: int) -> str:
    """Where nginx on this machine reaches our server's ingest hooks."""
    host = "127.0.0.1" if bind in ("0.0.0.0", "::", "", "localhost") else bind
    return f"http://{host}:{port}/ingest"


def _lan() -> str:
    return detect_lan_address() or "127.0.0.1"


class MiniApp:
    """Serves ``/webhook`` and ``/health`` and runs every glasses session (one stream each)."""

    def __init__(
        self,
        settings: MentraSettings,
        service: DetectionServiceLike | None = None,
        *,
        service_factory: Callable[[], DetectionServiceLike] | None = None,
        clock: Callable[[], float] = time.monotonic,
        session_options: dict[str, Any] | None = None,
        feedback_config: FeedbackConfig | None = None,
        tick_interval: float = 0.25,
    ) -> None:
        if service is None and service_factory is None:
            raise ValueError("MiniApp needs a DetectionService or a factory for one")
        self.settings = settings
        self.package_name = settings.package_name
        self._service = service
        self._service_factory = service_factory
        self._owns_service = service is None
        self._service_task: asyncio.Task[DetectionServiceLike] | None = None
        self._clock = clock
        self._session_options = session_options or {}
        self._feedback_config = feedback_config
        self._tick_interval = tick_interval
        self._runners: dict[str, SessionRunner] = {}
        self._all_tasks: set[asyncio.Task[Any]] = set()
        self._blocked: dict[str, tuple[str, float]] = {}  # sessionId → (error code, until)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self._closing = False
        self._hooks_attached = False

    # ------------------------------------------------------------------ server lifecycle

    async def start(self) -> None:
        """Bind the webhook port (``PortInUseError`` if taken) and start loading the service."""
        web_app = create_web_app(self)
        if self.settings.ingest_protocol == "whip":  # the glasses POST their offers to our own port
            from detector_app.ingest.whip import whip_routes

            web_app.add_routes(whip_routes(self._whip_ingest))
        self._runner = web.AppRunner(web_app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(
                    f"Port {self.settings.port} is already in use (another detector-app or SDK app?). "
                    "Pick another with --port or PORT=…", self.settings.port
                ) from exc
            raise PortInUseError(f"Cannot listen on {self.settings.host}:{self.settings.port}: {exc}",
                                 self.settings.port) from exc
        bound = self._runner.addresses
        self.port = int(bound[0][1]) if bound else self.settings.port
        if self._service is None:
            self._service_task = asyncio.create_task(asyncio.to_thread(self._build_service))
            self._service_task.add_done_callback(self._service_loaded)

    def _build_service(self) -> DetectionServiceLike:
        """Worker thread: build the service; if the app stopped meanwhile, close it here (nobody else will)."""
        assert self._service_factory is not None
        service = self._service_factory()
        if self._closing:
            service.close()
        return service

    def _service_loaded(self, task: asyncio.Task[DetectionServiceLike]) -> None:
        if task.cancelled():
            return
        if task.exception() is not None:
            logger.error(f"detection service failed to load: {task.exception()!r}")
        else:
            logger.info("detection service ready")

    async def get_service(self) -> DetectionServiceLike:
        if self._service is None:
            assert self._service_task is not None, "MiniApp.start() was not called"
            self._service = await asyncio.shield(self._service_task)
        if not self._hooks_attached and self.port is not None:
            # The nginx ingest asks our own server whether a key may publish: tell it where, before
            # the first stream opens (a service without an nginx ingest has no attach_hooks).
            attach = getattr(self._service, "attach_hooks", None)
            if attach is not None:
                attach(ingest_hook_url(self.settings.host, self.port))
            attach_whip = getattr(self._service, "attach_whip", None)
            if attach_whip is not None and self.settings.ingest_protocol == "whip":
                attach_whip(self.port)  # WHIP streams: http://HOST:<this port>/whip/<key>
            self._hooks_attached = True
        return self._service

    async def _whip_ingest(self):
        """The service's WHIP keys, for the ``/whip`` routes (None while no WHIP stream exists: 404)."""
        service = self._service
        get = getattr(service, "whip_ingest", None)
        return get() if get is not None else None

    async def on_ingest_hook(self, call: HookCall) -> bool:
        """nginx asks (``on_publish``/``on_play``/``…_done``); only keys of open streams get 2xx."""
        service = self._service
        answer = getattr(service, "on_hook", None)
        if answer is None:
            return False
        return bool(await asyncio.to_thread(answer, call))  # may wait ≤ 1 s for the stream's puller

    @property
    def webhook_urls(self) -> list[str]:
        port = self.port or self.settings.port
        urls = [f"http://{_lan()}:{port}/webhook"]
        if self.settings.public_url:
            urls.insert(0, self.settings.public_url.rstrip("/") + "/webhook")
        return urls

    async def stop(self, timeout: float = STOP_BUDGET_S) -> None:
        """Stop every stream (by streamId), close every session and its stream, stop the server,
        release the model we built; all sessions in parallel within ``timeout``."""
        self._closing = True
        runners = list(self._runners.values())
        if runners:
            logger.info(f"shutting down {len(runners)} session(s): stopping their streams")
            await asyncio.gather(*(r.shutdown(timeout) for r in runners), return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        task = self._service_task
        if self._owns_service and task is not None and task.done() and not task.cancelled() \
                and task.exception() is None:
            await asyncio.to_thread(task.result().close)
        # A factory still loading closes what it builds (_build_service): nothing to wait for here.

    # ------------------------------------------------------------------ WebhookHandler

    def active_sessions(self) -> int:
        return sum(1 for r in self._runners.values() if not r.session.ended)

    async def on_session_request(self, request: SessionRequest) -> None:
        refusal = check_ws_url(request.url_for(self.settings.cloud_protocol), self.settings.ws_allowlist,
                               allow_insecure=self.settings.allow_insecure_ws)
        if refusal:
            logger.warning(f"refused session_request {request.session_id}: {refusal}")
            raise WebhookError(403, "WebSocket URL not allowed")
        if self._closing:
            raise WebhookError(503, "Shutting down")
        existing = self._runners.get(request.session_id)
        if existing is not None and not existing.stopping and not existing.session.ended:
            logger.info(f"duplicate session_request {request.session_id} ignored (already running)")
            return
        runner = self._new_runner(request)
        self._runners[request.session_id] = runner
        task = runner.start()
        self._all_tasks.add(task)
        task.add_done_callback(lambda t, r=runner: self._runner_done(r, t))
        logger.info(f"session_request {request.session_id} (user {request.user_id}) → {request.ws_url}")

    async def on_stop_request(self, request: StopRequest) -> None:
        runner = self._runners.get(request.session_id)
        if runner is None or runner.session.ended:
            logger.info(f"stop_request for unknown/finished session {request.session_id} (ok)")
            return
        runner.stop(request.reason or "stop_request")

    # ------------------------------------------------------------------ sessions

    def _new_runner(self, request: SessionRequest) -> SessionRunner:
        s = self.settings
        options: dict[str, Any] = {
            "subscriptions": (f"transcription:{s.transcription_language}", "button_press", "rtmp_stream_status"),
            "ingest_protocol": s.ingest_protocol,
            "cloud_protocol": s.cloud_protocol,
            "video": s.video_config(),
            **self._session_options,
        }
        blocked = self._blocked.get(request.session_id)
        if blocked and blocked[1] > self._clock():
            logger.warning(f"[{request.session_id}] last session failed with {blocked[0]}: not auto-starting "
                           "the stream (say 'start stream' or press the button)")
            options["auto_start_stream"] = False
        config = SessionConfig(package_name=s.package_name, api_key=s.api_key, **options)
        feedback = FeedbackEngine(
            self._clock, self._feedback_config or FeedbackConfig(tracked=s.track, announce_left=s.announce_left),
            speak_enabled=s.speak)
        session = AppSession(config, request.session_id, request.url_for(s.cloud_protocol), clock=self._clock,
                             feedback=feedback, user_id=request.user_id)
        return SessionRunner(session, self.get_service, tick_interval=self._tick_interval)

    def _runner_done(self, runner: SessionRunner, task: asyncio.Task[Any]) -> None:
        self._all_tasks.discard(task)
        if self._runners.get(runner.session_id) is runner:
            del self._runners[runner.session_id]
        now = self._clock()
        self._blocked = {sid: b for sid, b in self._blocked.items() if b[1] > now}  # bounded: expired go
        end = runner.end
        if end is not None and end.error_code in _STREAM_BLOCKING_ERRORS:
            self._blocked[runner.session_id] = (end.error_code, self._clock() + _STREAM_BLOCKING_ERRORS[end.error_code])
        if not task.cancelled() and task.exception() is not None:
            logger.opt(exception=task.exception()).error(f"[{runner.session_id}] session task crashed")


async def serve(app: MiniApp, stop_event: asyncio.Event) -> int:
    """Run ``app`` until ``stop_event`` is set; returns a process exit code."""
    try:
        await app.start()
    except PortInUseError as exc:
        logger.error(str(exc))
        return 2
    for url in app.webhook_urls:
        logger.info(f"webhook: {url}")
    logger.info(f"health:  http://{_lan()}:{app.port}/health  (package {app.package_name})")
    try:
        await stop_event.wait()
    finally:
        logger.info("stopping: sending stream stop for every active session")
        await app.stop()
    return 0


def run_serve(
    settings: MentraSettings,
    *,
    service: DetectionServiceLike | None = None,
    service_factory: Callable[[], DetectionServiceLike] | None = None,
    streams: Callable[[], Sequence[LiveView]] | None = None,
) -> int:
    """Entry point of ``detector-app serve``: blocks until SIGINT/SIGTERM (or the window is closed),
    returns the exit code (0 clean, 2 port in use). Pass the detection service, or a factory that
    builds it in a worker thread while the webhook server already listens. ``streams`` (the service's
    open streams) shows the newest in a window on the main thread; None runs headless."""
    if service is None and service_factory is None:
        raise ValueError("run_serve needs a detection service or a factory (the CLI builds it from its flags)")

    async def main(stop: asyncio.Event) -> int:
        return await serve(MiniApp(settings, service, service_factory=service_factory), stop)

    code, reason = run_with_window(main, streams, title="detector-app: glasses", shutdown_s=STOP_BUDGET_S + 5.0)
    logger.info(f"serve stopped ({reason.value})")
    return code


__all__ = ["MiniApp", "PortInUseError", "run_serve", "serve"]
