"""SRT ingest: the glasses are the SRT *caller*, we listen.

PyAV wheels from 16.0 on do not bundle libsrt (and 15.x segfaults as an RTMP listener), so SRT is
received by Debian's ``srt-live-transmit`` (package ``srt-tools``) and relayed as MPEG-TS over
loopback UDP into PyAV. The relay survives publisher reconnects (field notes), and the per-session
key is enforced by SRT itself: it is the stream's AES passphrase, so a caller with a wrong or
missing key fails the handshake and never sends a byte of video.

The passphrase is on the relay's command line, which every local user can read (``ps``,
``/proc/PID/cmdline``): srt-live-transmit (1.5.1, Debian 12) takes socket options only in its URI
arguments, with no config file, environment variable or stdin form, and never hides its argv. The
key is random per session and dies with it; the exposure is to *local* accounts only (a reader could
call in as the publisher while the glasses are not connected). Where that matters, mount ``/proc``
with ``hidepid=2`` (then other users see no process of ours) or use the nginx RTMP ingest, whose
keys are on no command line. ``cmdline_private()`` tells which case a machine is in (logged once).
"""

from __future__ import annotations

import collections
import errno
import shutil
import subprocess
import threading
import time

import av
import av.container
from loguru import logger

from detector_app.ingest import libav_log
from detector_app.ingest.addresses import free_port, port_is_free
from detector_app.ingest.base import PROBE_OPTIONS, IngestEndpoint, IngestError, IngestPortInUseError
from detector_app.procs import stop_process

SRT_LATENCY_MS = 20  # receiver latency; 120 ms default doubles frame age (field notes)


def srt_endpoint(key: str, port: int, bind_host: str, advertise: str) -> IngestEndpoint:
    # ffmpeg/StreamPack take latency in microseconds in the URL; srt-live-transmit in ms.
    query = f"streamid={key}&passphrase={key}&pbkeylen=16&latency={SRT_LATENCY_MS * 1000}"
    return IngestEndpoint.build("srt", key, port, bind_host, advertise, f"?{query}")


_EXPOSURE_LOGGED = False


def cmdline_private(mounts: str | None = None) -> bool:
    """Whether other local users cannot read our processes' command lines (``/proc`` with hidepid)."""
    if mounts is None:
        try:
            with open("/proc/self/mounts") as f:
                mounts = f.read()
        except OSError:
            return False
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[1] == "/proc" and fields[2] == "proc":
            opts = fields[3].split(",")
            return any(o in ("hidepid=2", "hidepid=invisible", "hidepid=1", "hidepid=noaccess") for o in opts)
    return False


def _log_exposure_once() -> None:
    global _EXPOSURE_LOGGED
    if _EXPOSURE_LOGGED:
        return
    _EXPOSURE_LOGGED = True
    if not cmdline_private():
        logger.info("SRT ingest: each session's passphrase is on srt-live-transmit's command line, readable by "
                    "other local users (mount /proc with hidepid=2 to hide it, or use the RTMP nginx ingest)")


def require_relay() -> str:
    exe = shutil.which("srt-live-transmit")
    if exe is None:
        raise IngestError(
            "SRT ingest needs 'srt-live-transmit' (the installed PyAV has no SRT support). Install it with: "
            "sudo apt-get install srt-tools   — or use --protocol rtmp."
        )
    return exe


class SrtRelayListener:
    """A ``VideoSource`` that listens for SRT callers through an ``srt-live-transmit`` relay."""

    live = True
    reconnects = True

    def __init__(self, endpoint: IngestEndpoint, read_timeout_s: float = 3.0, open_poll_s: float = 2.0) -> None:
        exe = require_relay()
        if len(endpoint.key) < 10:
            raise IngestError("SRT passphrase (stream key) must be at least 10 characters")
        if not port_is_free(endpoint.port, endpoint.bind_host, udp=True):
            raise IngestPortInUseError(
                f"SRT ingest UDP port {endpoint.port} is already in use. Pass --ingest-port with a free port.",
                endpoint.port,
            )
        self.endpoint = endpoint
        self.name = f"srt-listener:{endpoint.port}"
        self._udp_port = free_port("127.0.0.1", udp=True, outside_ephemeral=True)  # bound later by PyAV
        self._read_timeout_s = read_timeout_s
        self._open_poll_s = open_poll_s
        self._closed = threading.Event()
        self.connections = 0
        self.rejected_publishers = 0
        self._log_tail: collections.deque[str] = collections.deque(maxlen=5)  # why it exited, if it does
        src = (
            f"srt://{endpoint.bind_host}:{endpoint.port}?mode=listener&passphrase={endpoint.key}"
            f"&pbkeylen=16&latency={SRT_LATENCY_MS}"
        )
        dst = f"udp://127.0.0.1:{self._udp_port}"
        libav_log.install()
        _log_exposure_once()
        self._proc = subprocess.Popen(
            [exe, "-a:yes", src, dst],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self._log_thread = threading.Thread(target=self._pump_log, name=f"srt-relay-log:{endpoint.port}", daemon=True)
        self._log_thread.start()
        self._wait_bound()

    def _wait_bound(self, timeout: float = 3.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise IngestError(f"srt-live-transmit exited at start (code {self._proc.returncode}); port {self.endpoint.port} busy?")
            if not port_is_free(self.endpoint.port, self.endpoint.bind_host, udp=True):
                return
            time.sleep(0.02)
        logger.warning("SRT relay did not bind port {} within {} s", self.endpoint.port, timeout)

    def _pump_log(self) -> None:
        """Relay log → our log. The relay echoes its URL (with the passphrase): always redact."""
        assert self._proc.stdout is not None
        key = self.endpoint.key
        for raw in self._proc.stdout:
            line = raw.strip().replace(key, key[:4] + "…")
            if not line:
                continue
            self._log_tail.append(line)
            low = line.lower()
            if "accepted srt source connection" in low:
                self.connections += 1
                logger.info("SRT publisher connected on port {}", self.endpoint.port)
            elif "rsp(reject)" in low:
                self.rejected_publishers += 1
                reason = line.split("rsp(REJECT):", 1)[-1].strip()
                logger.warning("Rejected SRT caller on port {}: {} (wrong or missing stream key)", self.endpoint.port, reason)
            elif "srt source disconnected" in low:
                logger.info("SRT publisher on port {} disconnected", self.endpoint.port)
            else:
                logger.debug("[srt-live-transmit:{}] {}", self.endpoint.port, line)

    def open(self, stop: threading.Event) -> av.container.InputContainer | None:
        # reuse=1: the previous session's socket may linger for a moment after close.
        url = f"udp://127.0.0.1:{self._udp_port}?reuse=1&overrun_nonfatal=1&fifo_size=100000&buffer_size=4194304"
        while not (stop.is_set() or self._closed.is_set()):
            if self.failure:
                raise IngestError(self.failure)
            try:
                container = av.open(
                    url, format="mpegts", options=dict(PROBE_OPTIONS), timeout=(self._open_poll_s, self._read_timeout_s)
                )
            except (av.error.FFmpegError, OSError) as exc:
                if isinstance(exc, (av.error.ExitError, av.error.TimeoutError)) or exc.errno == errno.ETIMEDOUT:
                    continue  # no publisher yet (PyAV's open timeout)
                logger.warning("SRT relay stream could not be opened: {}", exc)
                time.sleep(0.1)
                continue
            if not container.streams.video:
                container.close()
                continue
            return container
        return None

    @property
    def failure(self) -> str | None:
        """The relay exited on its own: seen at once, not after the decoder's read timeout."""
        code = self._proc.poll()
        if code is None or self._closed.is_set():
            return None
        last = f": {self._log_tail[-1]}" if self._log_tail else ""
        return f"SRT relay (srt-live-transmit) exited with code {code}{last}"

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        stop_process(self._proc, grace=1.0, kill_wait=1.0)  # bounded: part of the stream's close budget
        self._log_thread.join(0.5)  # its stdout closes with the process

    @property
    def relay_pid(self) -> int:
        """The ``srt-live-transmit`` process (tests kill it to simulate a dead ingest)."""
        return self._proc.pid
