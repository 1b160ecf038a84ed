"""The simulated cloud's HTTP server: the app WebSocket paths, the permissions API, and a recorded
404 for everything else (so a test sees what the app asked for that the simulator lacks)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from .core import SimCore


class CloudHttpServer:
    def __init__(self, core: SimCore, ws_handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> None:
        self.core = core
        self._ws_handler = ws_handler
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        """Listen on the configured host/port; returns the bound port (for port 0)."""
        core = self.core
        app = web.Application()
        app.router.add_get("/app-ws", self._ws_handler)
        if core.gen.serves_miniapp_path:
            app.router.add_get("/ws/miniapp", self._ws_handler)
        app.router.add_get("/api/public/permissions/{pkg}", self._permissions)
        app.router.add_route("*", "/{tail:.*}", self._other)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, core.config.host, core.config.port)
        await site.start()
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            return int(server.sockets[0].getsockname()[1])
        return core.config.port

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _permissions(self, request: web.Request) -> web.Response:
        self.core.record("sim", "http_request", None, {"method": request.method, "path": request.path})
        return web.json_response({"permissions": [{"type": p} for p in sorted(self.core.permissions())]})

    async def _other(self, request: web.Request) -> web.Response:
        self.core.record("sim", "http_request", None, {"method": request.method, "path": request.path})
        return web.json_response({"error": "not simulated"}, status=404)
