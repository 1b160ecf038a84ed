"""Virtual Mentra Live glasses: the glasses-side state machine of one unmanaged stream.

The publisher itself is ``detector_app.glasses.publish`` (one ffmpeg child per connection, the
project's only publisher); this module decides what the glasses do around it: connect, report raw
statuses, reconnect with backoff, and the drop faults (once, or repeatedly for soak runs).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from loguru import logger

from detector_app.glasses.publish import AsyncPublisher, GlassesError, build_publish_command, video_codec_of

StatusCallback = Callable[[str, "str | None"], Awaitable[None]]
DropMode = Literal["reconnect", "error"]


@dataclass
class GlassesStreamConfig:
    """Glasses-side behaviour of one stream, including the drop/restore fault switch."""

    loop: bool = True
    connect_timeout_s: float = 10.0
    max_reconnects: int = 3  # real glasses try 10 times; fewer keeps tests short
    reconnect_delay_s: float = 1.0
    drop_after_s: float | None = None  # fault: kill the publisher this long after it is running
    restore_after_s: float | None = None  # fault: restart it this long after the drop
    repeat_drops: bool = False  # soak: drop again `drop_after_s` after every (re)connect
    drop_mode: DropMode = "reconnect"  # "reconnect": raw reconnecting/reconnected; "error": raw error, stream ends


class VirtualGlassesStream:
    """Glasses-side state machine of one unmanaged stream; reports RAW glasses statuses.

    The cloud maps them for the app (§4.4), so the mapping is exercised instead of bypassed.
    """

    def __init__(self, url: str, video: Path | None, on_status: StatusCallback, config: GlassesStreamConfig,
                 name: str = "glasses", ffmpeg: str = "ffmpeg") -> None:
        self.url = url
        self.video = video
        self.on_status = on_status
        self.config = config
        self.name = name
        self.ffmpeg = ffmpeg
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._pub: AsyncPublisher | None = None
        self._drop_now = asyncio.Event()
        self.publisher_starts = 0
        self.drops = 0  # simulated network drops so far (timed or on demand)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"{self.name}-stream")

    def drop(self) -> None:
        """Operator/test trigger for a stream drop, same as the timed fault."""
        self._drop_now.set()

    async def stop(self) -> None:
        self._stop.set()
        if self._pub is not None:
            await self._pub.stop()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 5.0)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
            except Exception:  # noqa: BLE001 - already logged by _run
                pass

    async def _sleep_or_stop(self, seconds: float) -> bool:
        """True if stop was requested while sleeping."""
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
            return True
        except asyncio.TimeoutError:
            return False

    async def _emit(self, raw: str, details: str | None = None) -> None:
        if not self._stop.is_set():
            await self.on_status(raw, details)

    async def _run(self) -> None:
        try:
            await self._run_inner()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - glasses report errors as a status, never crash the cloud
            logger.exception("[{}] stream failed", self.name)
            await self._emit("error", str(exc))
        finally:
            if self._pub is not None:
                await self._pub.stop()

    async def _run_inner(self) -> None:
        cfg = self.config
        try:
            codec = await asyncio.to_thread(video_codec_of, self.video) if self.video is not None else None
            cmd = build_publish_command(self.url, self.video, loop=cfg.loop, video_codec=codec, ffmpeg=self.ffmpeg)
        except GlassesError as exc:
            await self._emit("error", str(exc))
            return
        attempts = 0
        was_active = False
        drop_pending = cfg.drop_after_s is not None
        while not self._stop.is_set():
            pub = AsyncPublisher(cmd, self.name)
            self._pub = pub
            self.publisher_starts += 1
            await self._emit("connecting")  # the glasses are (back) on the network and dial the ingest
            await pub.start()
            if await pub.wait_running_or_exit(cfg.connect_timeout_s):
                logger.info("[{}] publishing to {}", self.name, self.url)
                await self._emit("reconnected" if (was_active or attempts) else "streaming")
                was_active, attempts = True, 0
                timeout = cfg.drop_after_s if drop_pending else None
                exited = await self._wait_exit_or_drop(pub, timeout)
                if self._stop.is_set():
                    return
                if not exited:  # fault: simulated network drop
                    drop_pending = cfg.repeat_drops and cfg.drop_after_s is not None
                    self.drops += 1
                    logger.warning("[{}] simulated stream drop (mode={})", self.name, cfg.drop_mode)
                    await pub.stop()
                    if cfg.drop_mode == "error":
                        await self._emit("error", "simulated stream drop")
                        return
                    await self._emit("reconnecting")
                    if await self._sleep_or_stop(cfg.restore_after_s or 0.0):
                        return
                    continue
                if pub.returncode == 0:
                    logger.info("[{}] video ended", self.name)
                    await self._emit("stopped")
                    return
                logger.warning("[{}] publisher died rc={}: {}", self.name, pub.returncode, " | ".join(pub.stderr_tail))
            else:
                logger.warning("[{}] publisher could not connect to {}: {}", self.name, self.url, " | ".join(pub.stderr_tail))
                await pub.stop()
            if self._stop.is_set():
                return
            attempts += 1
            if attempts > cfg.max_reconnects:
                await self._emit("reconnect_failed", " | ".join(pub.stderr_tail) or None)
                return
            await self._emit("reconnecting")
            if await self._sleep_or_stop(cfg.reconnect_delay_s * 2 ** (attempts - 1)):
                return

    async def _wait_exit_or_drop(self, pub: AsyncPublisher, timeout: float | None) -> bool:
        """True when the publisher exited (or stop was asked); False when a drop fault fired."""
        waiters = {asyncio.ensure_future(pub.exited.wait()), asyncio.ensure_future(self._stop.wait()),
                   asyncio.ensure_future(self._drop_now.wait())}
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        if self._drop_now.is_set() and not pub.exited.is_set():
            self._drop_now.clear()
            return False
        return pub.exited.is_set() or self._stop.is_set()
