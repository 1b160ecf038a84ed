"""asyncio driver for one ``AppSession``: the WebSocket, timers, reconnects and the detection pipeline.

All protocol decisions live in ``session.py``; this module only performs the returned actions.
Outgoing frames go through one writer task so their order (e.g. stream stop before close) is kept;
each frame is tagged with the connection it was meant for and dropped if that socket is gone.
Protocol-level pings from the cloud are answered by ``websockets`` itself.

The detection stream is watched on every tick: a dead ingest is reported to the session, which asks
for a new one (``StartPipeline``: the dead one is closed, a new listener opened). A stream that
finishes opening after the session stopped is closed by the thread that opened it, so a slow
``open_stream`` during shutdown cannot leak one.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable

from loguru import logger
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from detector_app.detection.types import FrameResult
from detector_app.errors import UserError
from detector_app.mentra.actions import (
    Action,
    Close,
    Log,
    ScheduleReconnect,
    Send,
    SessionEnded,
    StartPipeline,
)
from detector_app.mentra.contracts import DetectionServiceLike, PlaybackServiceLike, StreamSessionLike
from detector_app.mentra.session import AppSession

MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # the [D] cloud's payload limit (§3.1)
STREAM_CLOSE_S = 4.0  # part of the shutdown budget kept for closing the detection stream


class SessionRunner:
    """Runs one glasses session until it ends; ``stop()``/``shutdown()`` end it cleanly."""

    def __init__(
        self,
        session: AppSession,
        get_service: Callable[[], Awaitable[DetectionServiceLike]],
        *,
        tick_interval: float = 0.25,
        open_timeout: float = 5.0,
        close_timeout: float = 2.0,
        health_interval: float = 30.0,
        stream_close_s: float = STREAM_CLOSE_S,
    ) -> None:
        self.session = session
        self._get_service = get_service
        self._tick_interval = tick_interval
        self._open_timeout = open_timeout
        self._close_timeout = close_timeout
        self._health_every = max(1, int(health_interval / tick_interval))
        self._queue: asyncio.Queue[tuple[int, Action]] = asyncio.Queue()
        self._ws: ClientConnection | None = None
        self._generation = 0
        self._ended = asyncio.Event()
        self._reconnect_delay: float | None = None
        self._pipeline_task: asyncio.Task[None] | None = None
        self._stream: StreamSessionLike | None = None  # guarded by _stream_lock (opened in a worker thread)
        self._stream_lock = threading.Lock()
        self._streams_closed = False  # the session stopped: a stream that opens now closes itself
        self._lost: StreamSessionLike | None = None  # the dead stream already reported to the session
        self._inference_paused = False  # remote inference (Triton) down: reported to the session once
        self._stream_close_s = stream_close_s
        self._closing_pipeline = False
        self._retiring: set[asyncio.Task[None]] = set()  # closes of replaced (dead) streams
        self._start_again: StartPipeline | None = None  # one that came while another was opening
        self._task: asyncio.Task[SessionEnded | None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.end: SessionEnded | None = None
        self.stopping = False

    @property
    def session_id(self) -> str:
        return self.session.session_id

    @property
    def wearer(self) -> str:
        """Who this stream is from, for the operator's window and web viewer (the user id, as the
        cloud names the wearer; the session id until the cloud has said)."""
        return self.session.user_id or self.session.session_id

    @property
    def task(self) -> asyncio.Task[SessionEnded | None] | None:
        return self._task

    def start(self) -> asyncio.Task[SessionEnded | None]:
        self._task = asyncio.create_task(self.run(), name=f"mentra-session:{self.session_id}")
        return self._task

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> SessionEnded | None:
        self._loop = asyncio.get_running_loop()
        writer = asyncio.create_task(self._writer())
        ticker = asyncio.create_task(self._ticker())
        try:
            while not self._ended.is_set():
                await self._connect_once()
                if self._ended.is_set():
                    break
                delay, self._reconnect_delay = self._reconnect_delay, None
                if delay is None:
                    logger.warning(f"[{self.session_id}] connection ended with no next step; stopping")
                    break
                try:
                    await asyncio.wait_for(self._ended.wait(), timeout=delay)
                except asyncio.TimeoutError:
                    pass
        finally:
            ticker.cancel()
            writer.cancel()
            await self._close_pipeline()
            logger.info(f"[{self.session_id}] session finished: {self.end.reason if self.end else 'cancelled'}")
        return self.end

    def stop(self, reason: str = "stop_request") -> None:
        """Webhook ``stop_request``: stop the stream; the cloud closes the socket afterwards."""
        self.stopping = True
        self._dispatch(self.session.stop(reason))

    async def shutdown(self, timeout: float = 8.0) -> None:
        """Process exit: stream stop + ownership_release + close, then the stream is closed; all of it
        within ``timeout`` (the last ``stream_close_s`` of it are kept for closing the stream)."""
        self.stopping = True
        task = self._task
        if task is None or task.done():
            return
        self._dispatch(self.session.shutdown())
        polite = max(0.5, timeout - self._stream_close_s)
        done, _ = await asyncio.wait({task}, timeout=polite)
        if not done and not self._closing_pipeline:
            logger.warning(f"[{self.session_id}] did not end within {polite:g} s; cancelling")
            task.cancel()
        done, _ = await asyncio.wait({task}, timeout=self._stream_close_s + 1.0)
        if not done:
            logger.warning(f"[{self.session_id}] stream close overran its {self._stream_close_s:g} s budget")

    # ------------------------------------------------------------------ connection

    async def _connect_once(self) -> None:
        url = self.session.ws_url
        code: int | None = 1006
        reason = ""
        try:
            async with connect(
                url,
                open_timeout=self._open_timeout,
                close_timeout=self._close_timeout,
                max_size=MAX_MESSAGE_BYTES,
                additional_headers=self.session.connect_headers() or None,  # v3: the session's identity
            ) as ws:
                self._generation += 1
                self._ws = ws
                self._dispatch(self.session.connection_opened())
                try:
                    async for raw in ws:
                        if isinstance(raw, bytes):
                            continue  # audio_chunk PCM; we never subscribe to it
                        try:
                            msg = json.loads(raw)
                        except ValueError:
                            logger.warning(f"[{self.session_id}] ignoring non-JSON frame ({len(raw)} chars)")
                            continue
                        self._dispatch(self.session.message_received(msg))
                except ConnectionClosed:
                    pass
                code, reason = ws.close_code, ws.close_reason or ""
        except (OSError, InvalidHandshake, InvalidURI, asyncio.TimeoutError, TimeoutError) as exc:
            code, reason = 1006, f"connect failed: {type(exc).__name__}: {exc}"
        finally:
            self._ws = None
        self._dispatch(self.session.connection_closed(code, reason))

    async def _writer(self) -> None:
        while True:
            generation, action = await self._queue.get()
            ws = self._ws
            if ws is None or generation != self._generation:
                logger.debug(f"[{self.session_id}] dropped {action!r}: its connection is gone")
                continue
            try:
                if isinstance(action, Send):
                    await ws.send(json.dumps(action.message))
                elif isinstance(action, Close):
                    await ws.close(action.code, action.reason)
            except ConnectionClosed:
                logger.debug(f"[{self.session_id}] socket closed before {action!r}")
            except Exception:  # noqa: BLE001 - keep the writer alive whatever happens
                logger.exception(f"[{self.session_id}] failed to perform {action!r}")

    async def _ticker(self) -> None:
        n = 0
        while True:
            await asyncio.sleep(self._tick_interval)
            self._dispatch(self.session.tick())
            self._check_ingest_alive()
            self._check_inference()
            n += 1
            if self._stream is not None and n % self._health_every == 0:
                self._log_health()

    def _check_ingest_alive(self) -> None:
        """Watchdog: a listener that died (relay exited, port lost) is reported once; the session
        then asks for a new one (``StartPipeline``), which replaces it."""
        stream = self._stream
        if stream is None or stream is self._lost:
            return
        failure = stream.failure
        if failure:
            self._lost = stream
            self._dispatch(self.session.pipeline_lost(failure))

    def _check_inference(self) -> None:
        """Remote inference down (Triton unreachable) or back: told to the session once per change; the
        stream keeps running meanwhile and the pipeline retries by itself."""
        why = getattr(self._stream, "inference_paused", None) if self._stream is not None else None
        if bool(why) == self._inference_paused:
            return
        self._inference_paused = bool(why)
        self._dispatch(self.session.inference_paused(why) if why else self.session.inference_resumed())

    def _log_health(self) -> None:
        try:
            logger.info(f"[{self.session_id}] ingest health: {self._stream.health()}")  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001
            logger.debug(f"[{self.session_id}] health() failed: {exc}")

    # ------------------------------------------------------------------ actions

    def _dispatch(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, (Send, Close)):
                self._queue.put_nowait((self._generation, action))
            elif isinstance(action, Log):
                logger.log(action.level, action.text)
            elif isinstance(action, ScheduleReconnect):
                self._reconnect_delay = action.delay
            elif isinstance(action, StartPipeline):
                if self._pipeline_task is None or self._pipeline_task.done():
                    self._pipeline_task = asyncio.create_task(self._start_pipeline(action))
                else:  # the stream being opened died at once: open another when this open is done
                    self._start_again = action
            elif isinstance(action, SessionEnded):
                self.end = action
                self._ended.set()

    async def _start_pipeline(self, start: StartPipeline) -> None:
        """Open and adopt a new stream, then retire the (dead) one it replaces in the background. New
        first: a dead stream's close waits for its decoder's read timeout, which would delay recovery."""
        with self._stream_lock:
            old = self._stream
        try:
            service = await self._get_service()
            stream = await asyncio.to_thread(self._open_and_adopt, service, start)
        except Exception as exc:  # noqa: BLE001
            # A user-caused failure (every ingest port taken, a bad playback URL) is one line; a bug keeps its traceback.
            logger.opt(exception=None if isinstance(exc, UserError) else exc).warning(
                f"[{self.session_id}] open_stream({start.protocol!r}) failed" + (f": {exc}" if isinstance(exc, UserError) else ""))
            self._dispatch(self.session.pipeline_failed(f"{type(exc).__name__}: {exc}"))
        else:
            if stream is not None and not self._ended.is_set():
                self._dispatch(self.session.pipeline_ready(stream.publish_url))
        finally:
            if old is not None:
                with self._stream_lock:
                    if self._stream is old:
                        self._stream = None
                task = asyncio.create_task(self._close_stream(old))
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
            again, self._start_again = self._start_again, None
            if again is not None and not self._ended.is_set():
                self._pipeline_task = asyncio.create_task(self._start_pipeline(again))

    def _open_and_adopt(self, service: DetectionServiceLike, start: StartPipeline) -> StreamSessionLike | None:
        """Worker thread: open a stream (a listener, or for a managed stream a puller of its playback
        URLs) and hand it to this runner — or, if the session stopped meanwhile (its close did not wait
        for us), close it here: nobody else holds it."""
        if start.playback is not None:
            if not isinstance(service, PlaybackServiceLike):
                raise RuntimeError("this detection service cannot pull a managed stream (no open_playback_stream)")
            stream = service.open_playback_stream(webrtc_url=start.playback.webrtc_url,
                                                  hls_url=start.playback.hls_url, label=self.wearer)
        else:
            stream = service.open_stream(start.protocol, label=self.wearer)
        stream.add_listener(self._on_result_threadsafe)
        with self._stream_lock:
            if not self._streams_closed:
                self._stream = stream
                return stream
        logger.info(f"[{self.session_id}] stream opened after the session stopped; closing it")
        stream.close(self._stream_close_s)
        return None

    async def _close_stream(self, stream: StreamSessionLike) -> None:
        try:
            await asyncio.wait_for(asyncio.to_thread(stream.close, self._stream_close_s), self._stream_close_s + 1.0)
        except Exception as exc:  # noqa: BLE001 - a close that fails or overruns must not stop the session's end
            logger.warning(f"[{self.session_id}] stream.close() failed: {exc!r}")

    def _on_result_threadsafe(self, result: FrameResult) -> None:
        loop = self._loop
        if loop is None or loop.is_closed() or self._ended.is_set():
            return
        try:
            loop.call_soon_threadsafe(self._on_result, result)
        except RuntimeError:
            pass  # loop shutting down

    def _on_result(self, result: FrameResult) -> None:
        if not self._ended.is_set():
            self._dispatch(self.session.frame_result(result))

    async def _close_pipeline(self) -> None:
        """Session over: no stream may be adopted any more; close the one we hold (bounded)."""
        self._closing_pipeline = True
        with self._stream_lock:
            self._streams_closed = True
            stream, self._stream = self._stream, None
        task = self._pipeline_task
        if task is not None and not task.done():
            task.cancel()  # an open in progress finishes in its thread and closes what it opened
            await asyncio.gather(task, return_exceptions=True)
        closes = [*self._retiring, *([asyncio.create_task(self._close_stream(stream))] if stream is not None else [])]
        await asyncio.gather(*closes, return_exceptions=True)  # each bounded by the close budget

