"""``WebViewer``: the viewer's aiohttp server on its own asyncio loop in one daemon thread.

Its own loop and port, in every command (``serve``, ``demo``, ``detect``, ``replay``): the viewer never
shares a loop with the miniapp's webhook and session handling, and it can stay on loopback while the
webhook faces the cloud. The detection threads only ever have their newest frame peeked at.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiohttp import web
from loguru import logger

from detector_app.errors import UserError
from detector_app.ingest.addresses import detect_lan_address, is_loopback
from detector_app.main_thread import LiveView, LoopThread, join_bounded
from detector_app.sightings.store import SightingStore
from detector_app.web.app import create_app
from detector_app.web.auth import QUERY

START_TIMEOUT_S = 5.0
SHUTDOWN_S = 1.0  # open requests (a clip being downloaded) get this long once the viewer stops


class WebViewerError(UserError):
    """The viewer could not start (typically: its port is taken)."""


@dataclass(frozen=True, slots=True)
class WebConfig:
    host: str = "127.0.0.1"  # loopback: open; any other address needs the token
    port: int = 8080  # 0 = any free port (tests)
    token: str | None = None  # WEB_TOKEN; None off loopback = a random one, printed at start
    max_fps: float = 10.0  # JPEG encodes per stream per second, at most (only while someone watches)
    max_total_fps: float = 30.0  # … and for all streams together (~12 ms each: about a third of a core)

    @classmethod
    def from_env(cls, host: str, port: int, **kw: object) -> WebConfig:
        return cls(host=host, port=port, token=os.environ.get("WEB_TOKEN") or None, **kw)  # type: ignore[arg-type]


class WebViewer:
    """``start()`` binds (``WebViewerError`` if it cannot) and serves until ``stop()``."""

    def __init__(self, config: WebConfig, views: Callable[[], Sequence[LiveView]],
                 sightings: SightingStore | None = None, *, require_token: bool | None = None) -> None:
        """``require_token`` forces the token mode either way (tests bind 127.0.0.1 but need the token)."""
        self.config = config
        need = not is_loopback(config.host) if require_token is None else require_token
        self.token = (config.token or secrets.token_urlsafe(24)) if need else None
        self._views = views
        self._sightings = sightings
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="web-jpeg")
        self._ready: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread: LoopThread | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        """The address to open (on a wildcard bind: this machine's LAN address), with the token if needed."""
        host = self.config.host
        if host in ("0.0.0.0", "::", ""):
            host = detect_lan_address() or "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/" + (f"?{QUERY}={self.token}" if self.token else "")

    def start(self, timeout: float = START_TIMEOUT_S) -> WebViewer:
        self._thread = LoopThread(self._main, name="web-viewer").start()
        try:
            self.port = self._ready.result(timeout)
        except concurrent.futures.TimeoutError:
            self.stop()
            raise WebViewerError(f"the web viewer did not start within {timeout:g} s") from None
        except BaseException:
            self.stop()
            raise
        if self.token:
            logger.warning("web viewer on {} needs its access token: open {}", self.config.host, self.url)
        else:
            logger.info("web viewer: {}", self.url)
        return self

    def stop(self, timeout: float = 3.0) -> None:
        """Close viewers and the server, join the thread; bounded by ``timeout``."""
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.request_stop()
            join_bounded(thread.thread, timeout)
            if thread.thread.is_alive():
                logger.warning("web viewer thread did not stop within {:.1f} s (daemon, abandoned)", timeout)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> WebViewer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _main(self, stop: asyncio.Event) -> int:
        try:
            return await self._serve(stop)
        except BaseException as exc:  # start() must hear of it, not wait for its timeout
            if not self._ready.done():
                self._ready.set_exception(exc)
            raise

    async def _serve(self, stop: asyncio.Event) -> int:
        app = create_app(self._views, self._executor, sightings=self._sightings, token=self.token,
                         max_fps=self.config.max_fps, max_total_fps=self.config.max_total_fps)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_S)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.config.host, self.config.port)
            try:
                await site.start()
            except OSError as exc:
                self._ready.set_exception(_bind_error(self.config, exc))
                return 2
            self._ready.set_result(int(runner.addresses[0][1]))
            await stop.wait()
            return 0
        finally:
            await runner.cleanup()


def _bind_error(config: WebConfig, exc: OSError) -> WebViewerError:
    if exc.errno == errno.EADDRINUSE:
        return WebViewerError(f"web viewer: port {config.port} is in use; pass another --web-port "
                              "(or 0 to turn the viewer off)")
    return WebViewerError(f"web viewer: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}")
