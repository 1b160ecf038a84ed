"""The viewer's routes (aiohttp): the page, the streams' health and frames, the sightings.

    GET /                                   the page (static/index.html; plain HTML + JS, no build step)
    GET /static/…                           viewer.js, viewer.css
    GET /api/state                          every open stream's health + the sightings' version
    GET /api/streams/{id}/ws                WebSocket: the client sends "next", gets one frame (JSON, JPEG)
    GET /api/streams/{id}/frame.jpg         the newest frame once (scripts, curl)
    GET /api/sightings?limit=&before=&label=   newest first
    GET /api/sightings/{id}[/thumbnail.jpg|/clip.mp4]   files by sighting id only (HTTP Range for clips)

Frames are pulled: the browser asks for the next one after it has shown the last, so at most one
frame per viewer is ever in flight and a slow browser gets fewer frames, never older ones.
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from loguru import logger

from detector_app.main_thread import LiveView
from detector_app.sightings.store import Sighting, SightingStore
from detector_app.web.auth import token_middleware
from detector_app.web.frames import StreamEncoder
from detector_app.web.streams import StreamRegistry, stream_json

STATIC = Path(__file__).with_name("static")
FRAME_WAIT_S = 5.0  # frame.jpg: how long to wait for a stream's first frame
MAX_LIST = 200
MAX_ROW_ID = 2**63 - 1  # SQLite's INTEGER: a larger id from a URL is no sighting, not a 500
NO_STORE = {"Cache-Control": "no-store"}


REGISTRY = web.AppKey("registry", StreamRegistry)
SOCKETS = web.AppKey("sockets", weakref.WeakSet)


def create_app(views: Callable[[], Sequence[LiveView]], executor: Executor, *, sightings: SightingStore | None = None,
               token: str | None = None, max_fps: float = 10.0, max_total_fps: float | None = None) -> web.Application:
    """The viewer for ``views()`` (open streams, oldest first); ``token`` None = no token needed;
    JPEGs at most ``max_fps`` per stream and ``max_total_fps`` for all streams together."""
    app = web.Application(middlewares=[token_middleware(token)])
    app[REGISTRY] = StreamRegistry(views, executor, max_fps=max_fps, max_total_fps=max_total_fps)
    app[SOCKETS] = weakref.WeakSet()
    routes = _Routes(app[REGISTRY], sightings, app[SOCKETS])
    app.router.add_get("/", routes.index)
    app.router.add_static("/static/", STATIC, follow_symlinks=False, append_version=False)
    app.router.add_get("/api/state", routes.state)
    app.router.add_get(r"/api/streams/{sid:\d+}/ws", routes.frames_ws)
    app.router.add_get(r"/api/streams/{sid:\d+}/frame.jpg", routes.frame_jpg)
    app.router.add_get("/api/sightings", routes.sightings_list)
    app.router.add_get(r"/api/sightings/{id:\d+}", routes.sighting)
    app.router.add_get(r"/api/sightings/{id:\d+}/thumbnail.jpg", routes.thumbnail)
    app.router.add_get(r"/api/sightings/{id:\d+}/clip.mp4", routes.clip)
    app.on_shutdown.append(_close_sockets)
    return app


async def _close_sockets(app: web.Application) -> None:
    for ws in list(app[SOCKETS]):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"viewer stopping")


class _Routes:
    def __init__(self, registry: StreamRegistry, sightings: SightingStore | None, sockets: weakref.WeakSet) -> None:
        self.registry = registry
        self.sightings = sightings
        self.sockets = sockets

    # -- page and state -----------------------------------------------------------------------
    async def index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers=NO_STORE)

    async def state(self, request: web.Request) -> web.Response:
        streams = [stream_json(sid, view, enc) for sid, view, enc in self.registry.current()]
        store = self.sightings
        version = await asyncio.to_thread(lambda: store.last_change) if store is not None else None
        return web.json_response({"time": round(time.time(), 3), "streams": streams,
                                  "sightings": self.sightings is not None, "sightings_version": version},
                                 headers=NO_STORE)

    # -- frames -------------------------------------------------------------------------------
    def _encoder(self, request: web.Request) -> StreamEncoder:
        enc = self.registry.encoder(int(request.match_info["sid"]))
        if enc is None:
            raise web.HTTPNotFound(text="no such stream (it may have ended)")
        return enc

    async def frame_jpg(self, request: web.Request) -> web.Response:
        enc = self._encoder(request)
        try:
            frame = await asyncio.wait_for(enc.next_after(0), FRAME_WAIT_S)
        except asyncio.TimeoutError:
            raise web.HTTPServiceUnavailable(text="the stream has no frame yet") from None
        return web.Response(body=frame.jpeg, content_type="image/jpeg",
                            headers={**NO_STORE, "X-Captured-At": f"{frame.captured_at:.4f}"})

    async def frames_ws(self, request: web.Request) -> web.WebSocketResponse:
        enc = self._encoder(request)
        # No permessage-deflate: JPEGs do not shrink, and aiohttp's compressed sends run in a task whose
        # error, when the browser resets mid-frame, is logged as "Task exception was never retrieved"
        # (seen here with aiohttp 3.14; also home-assistant/core#166875).
        ws = web.WebSocketResponse(heartbeat=15.0, max_msg_size=1024, compress=False)
        await ws.prepare(request)
        self.sockets.add(ws)
        wanted = asyncio.Event()
        sender = asyncio.create_task(_send_frames(ws, enc, wanted))
        try:
            async for msg in ws:  # the browser's "next": it has shown the last frame
                if msg.type == WSMsgType.TEXT and msg.data == "next":
                    wanted.set()
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        return ws

    # -- sightings ----------------------------------------------------------------------------
    def _store(self) -> SightingStore:
        if self.sightings is None:
            raise web.HTTPNotFound(text="sightings are not recorded in this run")
        return self.sightings

    async def sightings_list(self, request: web.Request) -> web.Response:
        store = self._store()
        try:
            limit = min(MAX_LIST, max(1, int(request.query.get("limit", 50))))
            before = min(int(request.query["before"]), MAX_ROW_ID) if "before" in request.query else None
            since = float(request.query["since"]) if "since" in request.query else None
        except ValueError:
            raise web.HTTPBadRequest(text="limit and before are integers, since is a time in seconds") from None
        label = request.query.get("label") or None

        def read() -> tuple[int, list[dict[str, Any]]]:  # SQLite and file checks: off the loop
            rows = store.list(limit=limit, before_id=before, label=label, since=since)
            return store.last_change, [_sighting_json(store, s) for s in rows]

        version, rows = await asyncio.to_thread(read)
        return web.json_response({"version": version, "sightings": rows}, headers=NO_STORE)

    async def _get(self, request: web.Request) -> Sighting:
        row_id = int(request.match_info["id"])
        if row_id > MAX_ROW_ID:  # SQLite cannot even compare it (OverflowError): no such sighting
            raise web.HTTPNotFound(text="no such sighting")
        sighting = await asyncio.to_thread(self._store().get, row_id)
        if sighting is None:
            raise web.HTTPNotFound(text="no such sighting")
        return sighting

    async def sighting(self, request: web.Request) -> web.Response:
        return web.json_response(_sighting_json(self._store(), await self._get(request)), headers=NO_STORE)

    async def thumbnail(self, request: web.Request) -> web.StreamResponse:
        return _file(self._store().thumbnail_path(await self._get(request)), "thumbnail")

    async def clip(self, request: web.Request) -> web.StreamResponse:
        return _file(self._store().clip_path(await self._get(request)), "clip")


def _sighting_json(store: SightingStore, s: Sighting) -> dict[str, Any]:
    """The store's record, with URLs of its files in place of their names in the media directory."""
    data = dict(s.to_json())
    base = f"api/sightings/{data['id']}"
    data.pop("thumbnail", None)
    data.pop("clip", None)
    data["thumbnail_url"] = f"{base}/thumbnail.jpg" if store.thumbnail_path(s) is not None else None
    data["clip_url"] = f"{base}/clip.mp4" if store.clip_path(s) is not None else None
    return data


def _file(path: Path | None, what: str) -> web.StreamResponse:
    """A sighting's file by the store's own path (ids in, never a path from the request)."""
    if path is None or not path.is_file():
        raise web.HTTPNotFound(text=f"this sighting has no {what} (yet)")
    return web.FileResponse(path, headers={"Cache-Control": "private, max-age=3600"})


async def _send_frames(ws: web.WebSocketResponse, enc: StreamEncoder, wanted: asyncio.Event) -> None:
    """One frame per "next": the newest there is, so nothing queues behind a slow browser."""
    seq = 0
    try:
        while not ws.closed:
            await wanted.wait()
            wanted.clear()
            frame = await enc.next_after(seq)
            await ws.send_str(json.dumps(frame.meta()))
            await ws.send_bytes(frame.jpeg)
            seq = frame.seq
    except ConnectionError:  # the browser left mid-frame: normal, nothing to report
        pass
    except Exception as exc:  # noqa: BLE001 - e.g. an encode failed: this viewer stops, detection goes on
        logger.warning("web viewer: frame stream ended: {!r}", exc)
        await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"frame stream failed")
