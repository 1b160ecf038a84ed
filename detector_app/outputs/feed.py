"""WebSocket detection feed: broadcast every FrameResult as JSON to any number of clients.

The server owns one asyncio loop in one daemon thread. The inference thread only hands the result
over with ``loop.call_soon_threadsafe`` (microseconds); serialisation and sending happen on the loop.
Every client has a small bounded queue drained by its own sender task; when a client falls behind,
its oldest messages are dropped (and counted), so a slow or stuck client can never slow the
pipeline or the other clients. Consumers see gaps in ``seq`` instead of growing latency.
"""

from __future__ import annotations

import asyncio
import errno
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from loguru import logger
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from detector_app.detection.types import SCHEMA_VERSION, FrameResult
from detector_app.errors import UserError


class FeedError(UserError):
    """The feed could not start (typically: port already in use)."""


@dataclass(eq=False)
class _Client:
    ws: ServerConnection
    queue: asyncio.Queue[str]
    dropped: int = 0
    sent: int = 0
    peer: str = field(default="?")


@dataclass(frozen=True)
class ClientStats:
    """Per-client counters, for health output and tests."""

    peer: str
    sent: int
    dropped: int
    queued: int


class DetectionFeed:
    """``sink(result)`` that broadcasts to WebSocket clients at ``ws://host:port/``.

    ``info`` (e.g. ``{"model": ..., "source": ...}``) goes into the hello message sent on connect.
    ``port=0`` lets the OS choose (tests); read the bound port from ``.port`` after ``start()``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 8765, info: dict[str, Any] | None = None,
                 *, queue_size: int = 16, close_timeout: float = 1.0) -> None:
        self.host = host
        self._requested_port = port
        self.info: dict[str, Any] = dict(info or {})
        self.queue_size = max(1, queue_size)
        self.close_timeout = close_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Server | None = None
        self._clients: set[_Client] = set()
        self._dropped = 0
        self._broadcasts = 0

    # ---- observability -------------------------------------------------------------------
    @property
    def clients(self) -> int:
        return len(self._clients)

    @property
    def dropped(self) -> int:
        """Messages discarded because a client's queue was full (summed over clients)."""
        return self._dropped

    def client_stats(self) -> list[ClientStats]:
        return [ClientStats(c.peer, c.sent, c.dropped, c.queue.qsize()) for c in list(self._clients)]

    @property
    def broadcasts(self) -> int:
        return self._broadcasts

    @property
    def port(self) -> int:
        if self._server is not None:
            for sock in self._server.sockets:
                return int(sock.getsockname()[1])
        return self._requested_port

    @property
    def running(self) -> bool:
        return self._server is not None and self._loop is not None and self._loop.is_running()

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self, timeout: float = 5.0) -> DetectionFeed:
        """Bind and start serving; raises FeedError if the port cannot be bound."""
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=self._run_loop, args=(loop,), name="detection-feed", daemon=True)
        self._loop, self._thread = loop, thread
        thread.start()
        try:
            self._server = asyncio.run_coroutine_threadsafe(self._open(), loop).result(timeout)
        except Exception as e:
            self._shutdown_loop(timeout=1.0)
            port = self._requested_port
            if isinstance(e, OSError) and e.errno == errno.EADDRINUSE:
                raise FeedError(f"port {port} is in use; pass another --feed-port, or --feed-port 0 to turn the feed off") from e
            raise FeedError(f"cannot start detection feed on {self.host}:{port}: {e}") from e
        logger.info("detection feed on ws://{}:{}/", self.host, self.port)
        return self

    def stop(self, timeout: float = 3.0) -> None:
        """Close all clients and the server, join the thread; bounded by ``timeout``, never hangs."""
        loop, server = self._loop, self._server
        if loop is None:
            return
        if server is not None and loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(self._close(server, timeout * 0.6), loop)
            try:
                fut.result(timeout * 0.8)
            except Exception as e:  # noqa: BLE001 - timeout or close error: still stop the loop
                logger.warning("detection feed: unclean close: {!r}", e)
        self._shutdown_loop(timeout=max(0.2, timeout * 0.2))
        logger.info("detection feed stopped ({} broadcasts, {} dropped)", self._broadcasts, self._dropped)

    def __enter__(self) -> DetectionFeed:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- the sink ------------------------------------------------------------------------
    def __call__(self, result: FrameResult) -> None:
        """Called on the inference thread: O(1) hand-off, never blocks on clients."""
        loop = self._loop
        if loop is None or not self._clients:
            return
        try:
            loop.call_soon_threadsafe(self._broadcast, result)
        except RuntimeError:  # loop closed between the check and the call (stop() racing)
            pass

    # ---- loop-thread internals -----------------------------------------------------------
    def _run_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in tasks:
                t.cancel()
            if tasks:
                loop.run_until_complete(asyncio.wait(tasks, timeout=0.5))
            loop.close()

    def _shutdown_loop(self, timeout: float) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(loop.stop)
            except RuntimeError:
                pass
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("detection feed thread did not exit within {:.1f}s (daemon, abandoned)", timeout)
        self._server = None
        self._thread = None
        self._loop = None
        self._clients.clear()

    async def _open(self) -> Server:
        return await serve(self._handle, self.host, self._requested_port,
                           close_timeout=self.close_timeout, max_size=2**16)

    async def _close(self, server: Server, timeout: float) -> None:
        connections = list(server.connections)
        server.close(close_connections=True)
        try:
            await asyncio.wait_for(server.wait_closed(), timeout)
        except asyncio.TimeoutError:
            logger.warning("detection feed: clients did not close in {:.1f}s, aborting", timeout)
        # Make sure every socket is really closed before the loop stops: a transport left open in
        # a stopped loop would leave clients waiting for EOF until their own close timeout.
        for conn in connections:
            conn.transport.abort()
        await asyncio.sleep(0)

    def _hello(self) -> str:
        info = {"model": "", "source": "", **self.info}
        return json.dumps({"type": "hello", "schema": SCHEMA_VERSION, **info}, default=str)

    def _broadcast(self, result: FrameResult) -> None:
        if not self._clients:
            return
        try:
            msg = json.dumps(result.to_json(), separators=(",", ":"), default=str)
        except Exception as e:  # noqa: BLE001 - a bad result must not kill the loop
            logger.error("detection feed: cannot serialise result seq={}: {!r}", result.seq, e)
            return
        self._broadcasts += 1
        for c in self._clients:
            if c.queue.full():
                c.queue.get_nowait()
                c.dropped += 1
                self._dropped += 1
            c.queue.put_nowait(msg)

    async def _handle(self, ws: ServerConnection) -> None:
        client = _Client(ws, asyncio.Queue(self.queue_size), peer=_peer(ws))
        self._clients.add(client)
        logger.info("feed client {} connected ({} total)", client.peer, len(self._clients))
        sender = asyncio.create_task(self._send_loop(client))
        try:
            async for _ in ws:  # clients have nothing to say; this just waits for the close
                pass
        except ConnectionClosed:
            pass
        finally:
            sender.cancel()
            self._clients.discard(client)
            logger.info("feed client {} gone: {} sent, {} dropped", client.peer, client.sent, client.dropped)

    async def _send_loop(self, client: _Client) -> None:
        try:
            await client.ws.send(self._hello())
            while True:
                msg = await client.queue.get()
                await client.ws.send(msg)
                client.sent += 1
        except ConnectionClosed:
            pass


def _peer(ws: ServerConnection) -> str:
    try:
        host, port = ws.remote_address[:2]
        return f"{host}:{port}"
    except (TypeError, ValueError, IndexError):
        return "?"
