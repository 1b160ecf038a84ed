"""WHIP ingest: the glasses POST an SDP offer, we answer and receive their H.264 track with aiortc.

    POST   /whip/<key>             application/sdp offer → 201, answer SDP, Location: /whip/<key>/<resource>
    DELETE /whip/<key>/<resource>  ends that publisher session → 200
    PATCH  (trickle ICE)           405: the glasses gather every candidate before POSTing (no trickle)

The key in the path is the per-session secret (Mentra's WHIP client sends no Authorization header):
an unknown key is 404 before any SDP is parsed or any peer connection made. A second POST for a
key whose publisher is live **replaces** it (the old session ends, the new one is a new session):
a glasses client that lost its network POSTs again before its old ICE session could time out, and
only the holder of the key can do that. A publisher that vanishes without DELETE ends its session
after ``FRAME_STALL_S`` without video (or at once when ICE/DTLS reports failure).

``WhipIngest`` is the HTTP-free logic (tested without sockets); ``whip_routes`` mounts it on any
aiohttp app (the miniapp's server); ``WhipServer`` is a standalone server on its own port (replay,
bench, tests: one port per session like the embedded RTMP listener).
"""

from __future__ import annotations

import asyncio
import errno
import secrets
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from loguru import logger

from detector_app.ingest.addresses import new_stream_key
from detector_app.ingest.base import IngestEndpoint
from detector_app.ingest.rtc import RtcLoop, TrackSession, ice_hosts, ice_hosts_for, video_codec_of_sdp

WHIP_PATH = "/whip"
OFFER_TIMEOUT_S = 10.0
MAX_SDP_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class WhipReply:
    """An HTTP answer, decided without HTTP (``whip_routes`` turns it into a response)."""

    status: int
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)


def whip_endpoint(key: str, port: int, bind_host: str, advertise: str, scheme: str = "http") -> IngestEndpoint:
    tail = f"{WHIP_PATH}/{key}"
    return IngestEndpoint("whip", key, port, bind_host, advertise,
                          publish_url=f"{scheme}://{advertise}:{port}{tail}",
                          local_publish_url=f"http://127.0.0.1:{port}{tail}")


class WhipSource:
    """A ``VideoSource`` for one key: ``open`` waits for the next publisher session (a POST)."""

    live = True
    reconnects = True

    def __init__(self, ingest: WhipIngest, endpoint: IngestEndpoint, on_close: Callable[[], None] | None = None) -> None:
        self.ingest = ingest
        self.endpoint = endpoint
        self.name = f"whip:{endpoint.port}/{endpoint.key[:4]}…"
        self.rejected_publishers = 0  # a wrong key never reaches a source; counted by the ingest
        self.sessions = 0
        self._cond = threading.Condition()
        self._waiting: TrackSession | None = None  # offered, not yet taken by the decode thread
        self._live: TrackSession | None = None
        self._resource: str | None = None
        self._closed = False
        self._on_close = on_close

    # -- called by the ingest (on the WebRTC loop) ----------------------------------------------
    def _offer_session(self, session: TrackSession, resource: str) -> list[TrackSession] | None:
        """The new publisher's session; returns the ones it replaces (the caller closes them), or None
        if this source closed while the offer was being answered (the caller closes ``session``)."""
        with self._cond:
            if self._closed:
                return None
            old = list({id(s): s for s in (self._waiting, self._live) if s is not None}.values())
            self._waiting, self._live, self._resource = session, session, resource
            self.sessions += 1
            self._cond.notify_all()
        return old

    def _delete(self, resource: str) -> TrackSession | None:
        with self._cond:
            if resource != self._resource or self._live is None:
                return None
            session, self._live, self._resource = self._live, None, None
            if self._waiting is session:
                self._waiting = None
        return session

    # -- VideoSource -------------------------------------------------------------------------------
    def open(self, stop: threading.Event) -> TrackSession | None:
        with self._cond:
            while self._waiting is None:
                if stop.is_set() or self._closed:
                    return None
                self._cond.wait(0.25)
            session, self._waiting = self._waiting, None
            return session

    @property
    def failure(self) -> None:
        return None  # the HTTP side is the miniapp's server (or ours, checked at start)

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            sessions = [s for s in (self._waiting, self._live) if s is not None]
            self._waiting = self._live = None
            self._cond.notify_all()
        self.ingest.unregister(self.endpoint.key)
        for s in sessions:
            s.close()
        if self._on_close is not None:
            self._on_close()


class WhipIngest:
    """Every WHIP key of the process → its source; answers offers and deletes, no HTTP inside."""

    def __init__(self, rtc: RtcLoop | None = None) -> None:
        self.rtc = rtc or RtcLoop.get()
        self._sources: dict[str, WhipSource] = {}
        self._lock = threading.Lock()
        self.rejected = 0  # POSTs/DELETEs for unknown keys

    def register(self, endpoint: IngestEndpoint, on_close: Callable[[], None] | None = None) -> WhipSource:
        source = WhipSource(self, endpoint, on_close)
        with self._lock:
            self._sources[endpoint.key] = source
        return source

    def unregister(self, key: str) -> None:
        with self._lock:
            self._sources.pop(key, None)

    def _source(self, key: str) -> WhipSource | None:
        with self._lock:
            return self._sources.get(key)

    def _refuse(self, key: str, what: str) -> WhipReply:
        self.rejected += 1
        shown = (key[:4] + "…") if len(key) > 4 else key
        logger.warning("Rejected WHIP {} for unknown stream key '{}'", what, shown)
        return WhipReply(404, "unknown stream\n")

    async def offer(self, key: str, content_type: str, sdp: str) -> WhipReply:
        """POST /whip/<key>: checks first (no SDP is touched for a wrong key), then the answer."""
        source = self._source(key)
        if source is None:
            return self._refuse(key, "offer")
        if content_type.split(";")[0].strip().lower() != "application/sdp":
            return WhipReply(415, "offer must be application/sdp\n")
        if not sdp.startswith("v=0") or "m=video" not in sdp:
            return WhipReply(400, "the offer has no video\n")
        try:
            session, answer = await self.rtc.call(asyncio.wait_for(self._answer(source, sdp), OFFER_TIMEOUT_S))
        except Exception as exc:  # noqa: BLE001 - aiortc refuses a bad offer with ValueError, OperationError,
            #                        KeyError (a=setup:bogus), AssertionError (a bad m= or candidate line): all 400
            why = "no answer in time" if isinstance(exc, asyncio.TimeoutError) else str(exc) or type(exc).__name__
            logger.warning("{}: bad WHIP offer: {}", source.name, why)
            return WhipReply(400, f"cannot answer this offer: {why}\n")
        resource = secrets.token_urlsafe(12)
        replaced = source._offer_session(session, resource)
        if replaced is None:  # the stream ended during the answer: its peer connection must not outlive it
            await session.aclose()
            return self._refuse(key, "offer")
        for old in replaced:
            logger.info("{}: a new publisher replaces the live one", source.name)
            await old.aclose()
        logger.info("{}: WHIP publisher accepted ({})", source.name, session.codec)
        return WhipReply(201, answer, {"Content-Type": "application/sdp",
                                       "Location": f"{WHIP_PATH}/{key}/{resource}"})

    async def _answer(self, source: WhipSource, sdp: str) -> tuple[TrackSession, str]:
        """On the WebRTC loop: a peer connection that receives the offer's video (audio inactive)."""
        from aiortc import RTCPeerConnection, RTCSessionDescription

        pc = RTCPeerConnection()
        session = TrackSession(source.name, self.rtc, pc)

        @pc.on("track")
        def on_track(track) -> None:
            if track.kind == "video":
                receiver = next((t.receiver for t in pc.getTransceivers() if t.receiver.track is track), None)
                session.attach(track, receiver)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            for t in pc.getTransceivers():
                if t.kind != "video":
                    t.direction = "inactive"  # we never use the glasses' audio: do not decode it
            with ice_hosts(ice_hosts_for(source.endpoint.bind_host)):  # where this stream's ingest listens
                await pc.setLocalDescription(await pc.createAnswer())
        except BaseException:
            await pc.close()
            raise
        session.codec = video_codec_of_sdp(pc.localDescription.sdp)
        return session, pc.localDescription.sdp

    async def delete(self, key: str, resource: str) -> WhipReply:
        source = self._source(key)
        if source is None:
            return self._refuse(key, "DELETE")
        session = source._delete(resource)
        if session is None:
            return WhipReply(404, "unknown resource\n")
        await session.aclose()
        logger.info("{}: WHIP publisher ended the session (DELETE)", source.name)
        return WhipReply(200)


def whip_routes(resolve: Callable[[], Awaitable[WhipIngest | None]]) -> list[web.RouteDef]:
    """aiohttp routes for ``/whip``; ``resolve`` gives the ingest (None → 404: WHIP is not in use)."""

    def respond(reply: WhipReply) -> web.Response:
        return web.Response(status=reply.status, text=reply.body, headers=reply.headers)

    async def post(request: web.Request) -> web.Response:
        ingest = await resolve()
        if ingest is None:
            return web.Response(status=404, text="WHIP ingest is not enabled\n")
        key = request.match_info["key"]
        if ingest._source(key) is None:  # before reading the body
            return respond(ingest._refuse(key, "offer"))
        if (request.content_length or 0) > MAX_SDP_BYTES:
            return web.Response(status=413, text="offer too large\n")
        return respond(await ingest.offer(key, request.headers.get("Content-Type", ""), await request.text()))

    async def delete(request: web.Request) -> web.Response:
        ingest = await resolve()
        if ingest is None:
            return web.Response(status=404)
        return respond(await ingest.delete(request.match_info["key"], request.match_info["resource"]))

    async def no_trickle(request: web.Request) -> web.Response:
        return web.Response(status=405, headers={"Allow": "DELETE"})

    return [
        web.post(WHIP_PATH + "/{key}", post),
        web.delete(WHIP_PATH + "/{key}/{resource}", delete),
        web.patch(WHIP_PATH + "/{key}/{resource}", no_trickle),
    ]


class WhipServer:
    """A standalone WHIP server on ``bind_host:port`` (its aiohttp runs on the WebRTC loop)."""

    def __init__(self, ingest: WhipIngest, bind_host: str, port: int) -> None:
        self.ingest = ingest
        self.bind_host, self.port = bind_host, port
        self._runner: web.AppRunner | None = None

    async def _start(self) -> None:
        app = web.Application(client_max_size=MAX_SDP_BYTES)

        async def resolve() -> WhipIngest:
            return self.ingest

        app.add_routes(whip_routes(resolve))
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.bind_host, self.port).start()
        except BaseException:  # a taken port: nothing of this server may stay behind on the loop
            await runner.cleanup()
            raise
        self._runner = runner

    def start(self) -> WhipServer:
        from detector_app.ingest.base import IngestError, IngestPortInUseError

        try:
            self.ingest.rtc.run(self._start(), 5.0)
        except TimeoutError as exc:  # an OSError too: not a taken port (the WebRTC loop is stuck)
            raise IngestError(f"WHIP ingest on {self.bind_host}:{self.port} did not start: {exc}") from exc
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:  # only this one: a caller with a port range tries the next
                raise IngestPortInUseError(f"WHIP ingest port {self.port} on {self.bind_host} is not free: {exc}",
                                           self.port) from exc
            raise IngestError(f"cannot listen on {self.bind_host}:{self.port}: {exc.strerror or exc}") from exc
        return self

    def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            try:
                self.ingest.rtc.run(runner.cleanup(), 3.0)
            except Exception as exc:  # noqa: BLE001 - bounded close
                logger.debug("WHIP server close: {}", exc)


def open_whip_listener(port: int, bind_host: str, advertise: str, key: str | None = None) -> tuple[IngestEndpoint, WhipSource]:
    """A WHIP endpoint on its own port (the ``open_listener`` shape): one server, one key."""
    endpoint = whip_endpoint(key or new_stream_key(), port, bind_host, advertise)
    ingest = WhipIngest()
    server = WhipServer(ingest, bind_host, port).start()
    return endpoint, ingest.register(endpoint, on_close=server.close)


__all__ = ["WhipIngest", "WhipReply", "WhipServer", "WhipSource", "open_whip_listener",
           "whip_endpoint", "whip_routes"]
