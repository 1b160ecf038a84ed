"""Virtual Mentra Live glasses: publish a recorded video to the URL the app asked for.

The publisher is always a separate `ffmpeg` process (never PyAV in this process): publishing and
listening with PyAV in one interpreter deadlocks on the GIL (field notes), and a child process is
also what lets tests kill a "network drop" precisely.
"""

from __future__ import annotations

import asyncio
import collections
import os
import shutil
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from loguru import logger

from detector_app.glasses.publish import GlassesError, _die_with_parent, build_publish_command, output_format_for  # noqa: F401

StatusCallback = Callable[[str, "str | None"], Awaitable[None]]
DropMode = Literal["reconnect", "error"]

_codec_cache: dict[Path, str | None] = {}


async def probe_video_codec(video: Path, ffprobe: str = "ffprobe", timeout: float = 10.0) -> str | None:
    """Codec name of the first video stream (cached), to decide between stream copy and re-encode."""
    video = video.resolve()
    if video in _codec_cache:
        return _codec_cache[video]
    codec: str | None = None
    if shutil.which(ffprobe):
        proc = await asyncio.create_subprocess_exec(
            ffprobe, "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=codec_name",
            "-of", "csv=p=0", str(video),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, stdin=asyncio.subprocess.DEVNULL,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
            codec = out.decode().strip().splitlines()[0] if out.strip() else None
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
    _codec_cache[video] = codec
    return codec


class FfmpegPublisher:
    """One ffmpeg publisher process; `running` is set once it muxes frames (connected to the ingest)."""

    def __init__(self, cmd: list[str], name: str = "glasses") -> None:
        self.cmd = cmd
        self.name = name
        self.proc: asyncio.subprocess.Process | None = None
        self.running = asyncio.Event()
        self.exited = asyncio.Event()
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=20)
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc else None

    async def start(self) -> None:
        logger.debug("[{}] spawn: {}", self.name, " ".join(self.cmd))
        self.proc = await asyncio.create_subprocess_exec(
            *self.cmd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # Ctrl-C in the terminal must not kill it behind our back
            preexec_fn=_die_with_parent,
        )
        self._tasks = [asyncio.create_task(self._read_progress()), asyncio.create_task(self._read_stderr()),
                       asyncio.create_task(self._wait())]

    async def _read_progress(self) -> None:
        assert self.proc and self.proc.stdout
        async for raw in self.proc.stdout:
            key, _, value = raw.decode(errors="replace").strip().partition("=")
            if self.running.is_set():
                continue
            if (key == "frame" and value.isdigit() and int(value) > 0) or (
                key == "out_time_us" and value.lstrip("-").isdigit() and int(value) > 0
            ):
                self.running.set()

    async def _read_stderr(self) -> None:
        assert self.proc and self.proc.stderr
        async for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            if line:
                self.stderr_tail.append(line)
                logger.debug("[{} ffmpeg] {}", self.name, line)

    async def _wait(self) -> None:
        assert self.proc
        await self.proc.wait()
        self.exited.set()

    async def wait_running_or_exit(self, timeout: float) -> bool:
        """True once running; False if it exited first or `timeout` passed."""
        waiters = {asyncio.ensure_future(self.running.wait()), asyncio.ensure_future(self.exited.wait())}
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        return self.running.is_set() and not self.exited.is_set()

    async def wait_exit(self, timeout: float | None) -> bool:
        try:
            await asyncio.wait_for(self.exited.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def stop(self, grace: float = 2.0) -> None:
        """SIGTERM the process group, SIGKILL after `grace`; always reaps, so no zombies or orphans."""
        proc = self.proc
        if proc is not None and proc.returncode is None:
            for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    await asyncio.wait_for(proc.wait(), wait)
                    break
                except asyncio.TimeoutError:
                    continue
        for t in self._tasks:
            if not t.done():
                t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@dataclass
class GlassesStreamConfig:
    """Glasses-side behaviour of one stream, including the drop/restore fault switch."""

    loop: bool = True
    connect_timeout_s: float = 10.0
    max_reconnects: int = 3  # real glasses try 10 times; fewer keeps tests short
    reconnect_delay_s: float = 1.0
    drop_after_s: float | None = None  # fault: kill the publisher this long after it is running
    restore_after_s: float | None = None  # fault: restart it this long after the drop
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
        self._pub: FfmpegPublisher | None = None
        self._drop_now = asyncio.Event()
        self.publisher_starts = 0

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
            codec = await probe_video_codec(self.video) if self.video is not None else None
            cmd = build_publish_command(self.url, self.video, loop=cfg.loop, video_codec=codec, ffmpeg=self.ffmpeg)
        except GlassesError as exc:
            await self._emit("error", str(exc))
            return
        attempts = 0
        was_active = False
        drop_pending = cfg.drop_after_s is not None
        while not self._stop.is_set():
            pub = FfmpegPublisher(cmd, self.name)
            self._pub = pub
            self.publisher_starts += 1
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
                    drop_pending = False
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

    async def _wait_exit_or_drop(self, pub: FfmpegPublisher, timeout: float | None) -> bool:
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
