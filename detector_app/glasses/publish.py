"""Virtual glasses publishing: push a recorded video to an ingest URL exactly as Mentra Live would.

RTMP: FLV with H.264 + AAC mono; SRT: MPEG-TS with H.264 + AAC mono, the glasses being the caller.
The publisher is always a separate ``ffmpeg`` process (Debian's, which has libx264 and libsrt):
publishing and listening with PyAV in one interpreter deadlocks on the GIL (field notes).
"""

from __future__ import annotations

import collections
import ctypes
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from loguru import logger

from detector_app.procs import stop_process

try:  # loaded once in the parent: dlopen() in a forked child of a threaded process can deadlock
    _LIBC = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:  # not glibc Linux: no parent-death signal, the publishers are still stopped explicitly
    _LIBC = None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGTERM the publisher if we die, so a crashed simulator leaves no orphans."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG



def output_format_for(url: str) -> str:
    """FLV for RTMP(S), MPEG-TS for SRT (glasses are the SRT caller); WHIP is not simulated."""
    lower = url.lower()
    if lower.startswith(("rtmp://", "rtmps://")):
        return "flv"
    if lower.startswith("srt://"):
        return "mpegts"
    if lower.startswith(("http://", "https://")):
        raise GlassesError("WHIP publishing is not simulated by the virtual glasses")
    raise GlassesError("Unknown stream URL protocol")


class GlassesError(Exception):
    """A glasses-side rejection; the real glasses report it as raw status `error`."""


def build_publish_command(
    url: str, video: Path | None, *, loop: bool = True, video_codec: str | None = "h264", ffmpeg: str = "ffmpeg"
) -> list[str]:
    """Stream copy for H.264 sources (like the glasses' hardware encoder), else libx264 zerolatency
    with a keyframe every 2 s; audio always AAC mono, as Mentra Live sends."""
    fmt = output_format_for(url)
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



def video_codec_of(video: Path) -> str | None:
    """Codec of the first video stream (PyAV probe; safe here, nothing is published in this process)."""
    import av

    try:
        with av.open(str(video)) as c:
            return c.streams.video[0].codec_context.name if c.streams.video else None
    except (av.error.FFmpegError, OSError):
        return None


class Publisher:
    """One virtual-glasses publish of ``video`` to ``url`` (blocking API, for replay and tests).

    Like a real encoder it retries a refused connection (a listener between two accepts refuses
    for an instant), but only until the first frame went out: after that an exit is a real drop.
    """

    def __init__(self, video: Path, url: str, loop: bool = False, retries: int = 8, ffmpeg: str | None = None):
        self.video = Path(video)
        if not self.video.exists():
            raise GlassesError(f"video not found: {video}")
        exe = ffmpeg or shutil.which("ffmpeg")
        if not exe:
            raise GlassesError("ffmpeg not found: install it (Debian/Ubuntu: sudo apt-get install ffmpeg)")
        self.cmd = build_publish_command(url, self.video, loop=loop, video_codec=video_codec_of(self.video), ffmpeg=exe)
        self.url = url
        self.retries = retries
        self.started_at: float | None = None  # wall time the first attempt was spawned
        self.running_at: float | None = None  # wall time ffmpeg reported its first frame sent
        self.frames_sent = 0
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=20)
        self._proc: subprocess.Popen[str] | None = None
        self._stop = threading.Event()
        self._spawn_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="virtual-glasses", daemon=True)
        self.returncode: int | None = None
        self.done = threading.Event()

    def start(self) -> Publisher:
        self.started_at = time.time()
        self._thread.start()
        return self

    def _spawn(self) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True, preexec_fn=_die_with_parent,
        )

    def _run(self) -> None:
        try:
            for attempt in range(self.retries + 1):
                with self._spawn_lock:  # stop() either sees this process or prevents it
                    if self._stop.is_set():
                        break
                    self._proc = proc = self._spawn()
                err_thread = threading.Thread(target=self._pump_stderr, args=(proc,), daemon=True)
                err_thread.start()
                assert proc.stdout is not None
                for line in proc.stdout:  # -progress pipe:1 key=value lines
                    key, _, value = line.strip().partition("=")
                    if key == "frame" and value.isdigit():
                        self.frames_sent = int(value)
                        if self.frames_sent > 0 and self.running_at is None:
                            self.running_at = time.time()
                proc.wait()
                err_thread.join(1.0)
                self.returncode = proc.returncode
                if proc.returncode == 0 or self.running_at is not None or self._stop.is_set():
                    break
                logger.debug("virtual glasses: connect attempt {} failed ({}), retrying", attempt + 1, self.stderr_tail[-1] if self.stderr_tail else proc.returncode)
                self._stop.wait(0.3)
        finally:
            self.done.set()

    def _pump_stderr(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            line = line.rstrip()
            if line:
                self.stderr_tail.append(line)
                logger.debug("[virtual glasses ffmpeg] {}", line)

    def wait(self, timeout: float | None = None) -> bool:
        return self.done.wait(timeout)

    @property
    def ok(self) -> bool:
        return self.done.is_set() and self.returncode == 0

    def stop(self, grace: float = 2.0) -> None:
        """SIGTERM the process group, SIGKILL after ``grace``; always reaps."""
        with self._spawn_lock:
            self._stop.set()
            proc = self._proc
        if proc is not None and proc.poll() is None:
            stop_process(proc, grace, group=True)
        if self._thread.is_alive():
            self._thread.join(5.0)
