"""Virtual glasses publishing: push a recorded video to an ingest URL exactly as Mentra Live would.

RTMP: FLV with H.264 + AAC mono; SRT: MPEG-TS with H.264 + AAC mono, the glasses being the caller;
WHIP (``http(s)://`` URLs): an aiortc client child (``glasses.whip_client``), H.264 video.
The publisher is always a separate ``ffmpeg`` process (Debian's, which has libx264 and libsrt):
publishing and listening with PyAV in one interpreter deadlocks on the GIL (field notes), and a
child process is also what lets tests and the simulator kill a "network drop" precisely.

This is the one publisher of the project: command building, the codec probe and the process
lifecycle (``PublisherProcess``, stopped with ``procs.stop_process``), with a blocking face for
replay and tests (``Publisher``) and an asyncio face for the simulated glasses (``AsyncPublisher``).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from loguru import logger

from detector_app.errors import UserError
from detector_app.procs import die_with_parent, stop_process


class GlassesError(UserError):
    """A glasses-side rejection; the real glasses report it as raw status `error`."""


def output_format_for(url: str) -> str:
    """FLV for RTMP(S), MPEG-TS for SRT (glasses are the SRT caller), ``whip`` for http(s) URLs."""
    lower = url.lower()
    if lower.startswith(("rtmp://", "rtmps://")):
        return "flv"
    if lower.startswith("srt://"):
        return "mpegts"
    if lower.startswith(("http://", "https://")):
        return "whip"
    raise GlassesError("Unknown stream URL protocol")


def build_whip_command(url: str, video: Path | None, *, loop: bool = True) -> list[str]:
    """WHIP: our aiortc client (``glasses.whip_client``) as the child, speaking ffmpeg's ``-progress``
    lines, so the same ``PublisherProcess`` runs it (FFmpeg 5.1 has no WHIP muxer)."""
    if video is None:
        raise GlassesError("WHIP virtual glasses need a video file (--video)")
    return [sys.executable, "-m", "detector_app.glasses.whip_client", url, str(video)] + (["--loop"] if loop else [])


def build_publish_command(
    url: str, video: Path | None, *, loop: bool = True, video_codec: str | None = "h264", ffmpeg: str = "ffmpeg"
) -> list[str]:
    """Stream copy for H.264 sources (like the glasses' hardware encoder), else libx264 zerolatency
    with a keyframe every 2 s; audio always AAC mono, as Mentra Live sends. ``video=None`` publishes
    a synthetic test pattern (costs CPU: it is encoded live)."""
    fmt = output_format_for(url)
    if fmt == "whip":
        return build_whip_command(url, video, loop=loop)
    cmd = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "warning", "-progress", "pipe:1", "-stats_period", "0.5"]
    if video is None:
        cmd += ["-re", "-f", "lavfi", "-i", "testsrc2=size=854x480:rate=15", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"]
        reencode = True
        cmd += ["-map", "0:v:0", "-map", "1:a:0"]
    else:
        if loop:
            cmd += ["-stream_loop", "-1"]
        cmd += ["-re", "-i", str(video), "-map", "0:v:0", "-map", "0:a:0?"]
        reencode = video_codec != "h264"
    if reencode:
        cmd += ["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-pix_fmt", "yuv420p",
                "-force_key_frames", "expr:gte(t,n_forced*2)", "-b:v", "1M"]
    else:
        cmd += ["-c:v", "copy"]
    cmd += ["-c:a", "aac", "-ac", "1", "-b:a", "64k", "-ar", "44100", "-f", fmt, url]
    return cmd


def video_codec_of(video: Path, ffprobe: str = "ffprobe", timeout: float = 10.0) -> str | None:
    """Codec of the first video stream, to choose stream copy or re-encode; None when unknown
    (no ffprobe, unreadable file), which makes the publisher re-encode: slower, never wrong.

    ffprobe rather than PyAV so that the simulator, which may share a process with a PyAV listener,
    never opens media in-process. Cached per file version (path, size, mtime)."""
    path = Path(video).resolve()
    try:
        st = path.stat()
    except OSError:
        return None
    return _probe_codec(str(path), st.st_size, st.st_mtime_ns, ffprobe, timeout)


@functools.lru_cache(maxsize=64)
def _probe_codec(path: str, _size: int, _mtime_ns: int, ffprobe: str, timeout: float) -> str | None:
    exe = shutil.which(ffprobe)
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=codec_name", "-of", "csv=p=0", path],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False,
        ).stdout
    except subprocess.TimeoutExpired:
        return None
    lines = out.strip().splitlines()
    return lines[0].strip() if lines else None


def find_ffmpeg(ffmpeg: str | None = None) -> str:
    exe = shutil.which(ffmpeg or "ffmpeg")
    if not exe:
        raise GlassesError("ffmpeg not found: install it (Debian/Ubuntu: sudo apt-get install ffmpeg)")
    return exe


# ---------------------------------------------------------------------------------- SRT via a relay
def srt_caller_uri(url: str) -> str:
    """``srt://host:port?streamid=K&passphrase=K&…`` (ffmpeg style, latency in µs) → the caller URI
    ``srt-live-transmit`` takes (latency in ms, the ingest's own ``SRT_LATENCY_MS``)."""
    from detector_app.ingest.srt import SRT_LATENCY_MS  # lazy: the ingest module loads PyAV

    parts = urlsplit(url)
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    params = {"mode": "caller", "latency": str(SRT_LATENCY_MS)}
    params.update({k: q[k] for k in ("passphrase", "pbkeylen", "streamid") if k in q})
    return f"srt://{parts.hostname}:{parts.port}?" + "&".join(f"{k}={v}" for k, v in params.items())


def spawn_srt_relay(url: str) -> subprocess.Popen[bytes]:
    """``srt-live-transmit file://con <caller URI>`` as a child whose stdin takes MPEG-TS, for a
    publisher without libsrt (PyAV wheels). A pipe, not loopback UDP: a keyframe burst overflowing
    a UDP buffer silently cuts frames, a pipe has flow control. Close stdin to end it."""
    exe = shutil.which("srt-live-transmit")
    if exe is None:
        raise GlassesError("publishing SRT needs srt-live-transmit (Debian: apt-get install srt-tools)")
    proc = subprocess.Popen(
        [exe, "-a:no", "-q", "-c:1316", "file://con", srt_caller_uri(url)],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, bufsize=0,
    )
    if proc.poll() is not None:
        raise GlassesError(f"srt-live-transmit exited at start (code {proc.returncode})")
    return proc


# ---------------------------------------------------------------------------------- one process
class PublisherProcess:
    """One ffmpeg publisher child: spawn, watch ``-progress`` for the first frame sent, keep the last
    stderr lines, stop (SIGTERM the process group, SIGKILL after a grace; always reaped).

    Two daemon threads read its pipes; ``on_running``/``on_exit`` are called from them (the asyncio
    face hands them to its loop), so nobody polls."""

    def __init__(self, cmd: list[str], name: str = "glasses",
                 on_running: Callable[[], None] | None = None, on_exit: Callable[[], None] | None = None) -> None:
        self.cmd = cmd
        self.name = name
        self.running = threading.Event()  # ffmpeg reported a frame (or output time) > 0: connected
        self.exited = threading.Event()
        self.running_at: float | None = None  # wall time of the first frame sent
        self.frames_sent = 0
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=20)
        self._on_running = on_running
        self._on_exit = on_exit
        self._proc: subprocess.Popen[str] | None = None
        self._threads: list[threading.Thread] = []

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc is not None else None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> PublisherProcess:
        logger.debug("[{}] spawn: {}", self.name, " ".join(self.cmd))
        self._proc = proc = subprocess.Popen(
            self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True,  # Ctrl-C in the terminal must not kill it behind our back
            preexec_fn=die_with_parent,
        )
        err = threading.Thread(target=self._read_stderr, args=(proc,), name=f"{self.name}-stderr", daemon=True)
        out = threading.Thread(target=self._read_progress, args=(proc, err), name=f"{self.name}-progress", daemon=True)
        self._threads = [err, out]
        for t in self._threads:
            t.start()
        return self

    def _read_progress(self, proc: subprocess.Popen[str], stderr_reader: threading.Thread) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:  # -progress pipe:1 key=value lines
            key, _, value = line.strip().partition("=")
            if key == "frame" and value.isdigit():
                self.frames_sent = int(value)
            if self.running.is_set():
                continue
            if (key == "frame" and value.isdigit() and int(value) > 0) or (
                key == "out_time_us" and value.lstrip("-").isdigit() and int(value) > 0
            ):
                self.running_at = time.time()
                self.running.set()
                if self._on_running is not None:
                    self._on_running()
        proc.wait()
        stderr_reader.join(2.0)  # the error that ended it is in stderr_tail before anyone hears of the exit
        self.exited.set()
        if self._on_exit is not None:
            self._on_exit()

    def _read_stderr(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.rstrip()
            if line:
                self.stderr_tail.append(line)
                logger.debug("[{} ffmpeg] {}", self.name, line)

    def wait(self, timeout: float | None = None) -> bool:
        """True once the process has exited (and its pipes are drained)."""
        return self.exited.wait(timeout)

    def stop(self, grace: float = 2.0) -> int | None:
        """SIGTERM the process group, SIGKILL after ``grace``; reaps and joins the reader threads."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            stop_process(proc, grace, group=True)
        for t in self._threads:
            t.join(5.0)
        return self.returncode

    def last_error(self) -> str:
        return " | ".join(self.stderr_tail)


# ---------------------------------------------------------------------------------- blocking face
class Publisher:
    """One virtual-glasses publish of ``video`` to ``url`` (blocking API, for replay and tests).

    Like a real encoder it retries a refused connection (a listener between two accepts refuses
    for an instant), but only until the first frame went out: after that an exit is a real drop.
    """

    def __init__(self, video: Path, url: str, loop: bool = False, retries: int = 8, ffmpeg: str | None = None):
        self.video = Path(video)
        if not self.video.exists():
            raise GlassesError(f"video not found: {video}")
        self.cmd = build_publish_command(url, self.video, loop=loop, video_codec=video_codec_of(self.video),
                                         ffmpeg=find_ffmpeg(ffmpeg))
        self.url = url
        self.retries = retries
        self.started_at: float | None = None  # wall time the first attempt was spawned
        self.returncode: int | None = None
        self.done = threading.Event()
        self._current: PublisherProcess | None = None
        self._last: PublisherProcess | None = None
        self._stop = threading.Event()
        self._spawn_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="virtual-glasses", daemon=True)

    @property
    def running_at(self) -> float | None:
        """Wall time ffmpeg reported its first frame sent (on the attempt that connected)."""
        return self._last.running_at if self._last is not None else None

    @property
    def frames_sent(self) -> int:
        return self._last.frames_sent if self._last is not None else 0

    @property
    def stderr_tail(self) -> collections.deque[str]:
        return self._last.stderr_tail if self._last is not None else collections.deque()

    def start(self) -> Publisher:
        self.started_at = time.time()
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            for attempt in range(self.retries + 1):
                with self._spawn_lock:  # stop() either sees this process or prevents it
                    if self._stop.is_set():
                        break
                    self._current = self._last = proc = PublisherProcess(self.cmd, "virtual glasses").start()
                proc.wait()
                proc.stop()  # joins the pipe readers
                self.returncode = proc.returncode
                if proc.returncode == 0 or proc.running_at is not None or self._stop.is_set():
                    break
                logger.debug("virtual glasses: connect attempt {} failed ({}), retrying", attempt + 1,
                             proc.stderr_tail[-1] if proc.stderr_tail else proc.returncode)
                self._stop.wait(0.3)
        finally:
            self.done.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self.done.wait(timeout)

    @property
    def ok(self) -> bool:
        return self.done.is_set() and self.returncode == 0

    def stop(self, grace: float = 2.0) -> None:
        """SIGTERM the process group, SIGKILL after ``grace``; always reaps."""
        with self._spawn_lock:
            self._stop.set()
            proc = self._current
        if proc is not None:
            proc.stop(grace)
        if self._thread.is_alive():
            self._thread.join(5.0)


# ---------------------------------------------------------------------------------- asyncio face
class AsyncPublisher:
    """One publisher process for asyncio code (the simulated glasses): ``running``/``exited`` are
    asyncio events set from the pipe readers through the loop; ``stop`` runs ``stop_process`` in a
    worker thread, so a cancelled caller cannot leave ffmpeg running (the stop finishes anyway)."""

    def __init__(self, cmd: list[str], name: str = "glasses") -> None:
        self.cmd = cmd
        self.name = name
        self.running = asyncio.Event()
        self.exited = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._proc = PublisherProcess(cmd, name, on_running=self._later(self.running.set),
                                      on_exit=self._later(self.exited.set))

    def _later(self, fn: Callable[[], None]) -> Callable[[], None]:
        def call() -> None:
            try:
                self._loop.call_soon_threadsafe(fn)
            except RuntimeError:  # loop already closed: nobody waits any more
                pass
        return call

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    @property
    def stderr_tail(self) -> collections.deque[str]:
        return self._proc.stderr_tail

    async def start(self) -> None:
        self._proc.start()

    async def wait_running_or_exit(self, timeout: float) -> bool:
        """True once running; False if it exited first or ``timeout`` passed."""
        waiters = {asyncio.ensure_future(self.running.wait()), asyncio.ensure_future(self.exited.wait())}
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        return self.running.is_set() and not self.exited.is_set()

    async def stop(self, grace: float = 2.0) -> None:
        """SIGTERM the process group, SIGKILL after ``grace``; always reaps, so no zombies or orphans."""
        await asyncio.shield(asyncio.to_thread(self._proc.stop, grace))
