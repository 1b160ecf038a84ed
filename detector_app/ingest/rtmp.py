"""In-process RTMP ingest: PyAV listens, one publisher at a time, key enforced by us.

Measured choices (field notes): ``probesize=32768`` + ``analyzeduration=0`` bring the first frame
from ~5 s down to ~0.45 s; ``fflags=nobuffer`` must *not* be set (it drops the first keyframe).
The accept wait is bounded with the RTMP ``timeout`` option (listen timeout, seconds) so the loop
can notice a stop; reads are bounded with PyAV's ``timeout=(open, read)`` so a stalled publisher
counts as a drop instead of hanging.
"""

from __future__ import annotations

import errno
import socket
import threading
import time

import av
import av.container
from loguru import logger

from detector_app.ingest import libav_log
from detector_app.ingest.addresses import port_is_free
from detector_app.ingest.base import PROBE_OPTIONS, IngestEndpoint, IngestError, IngestPortInUseError


def rtmp_endpoint(key: str, port: int, bind_host: str, advertise: str, app: str = "live") -> IngestEndpoint:
    return IngestEndpoint.build("rtmp", key, port, bind_host, advertise, f"/{app}/{key}")


class RtmpListener:
    """A ``VideoSource`` that accepts RTMP publishers on ``endpoint.port`` with the right key only."""

    live = True
    reconnects = True

    def __init__(self, endpoint: IngestEndpoint, accept_poll_s: int = 2, read_timeout_s: float = 3.0) -> None:
        if not port_is_free(endpoint.port, endpoint.bind_host):
            raise IngestPortInUseError(
                f"RTMP ingest port {endpoint.port} on {endpoint.bind_host} is already in use "
                "(another detector-app or RTMP server?). Pass --ingest-port with a free port.",
                endpoint.port,
            )
        self.endpoint = endpoint
        self.name = f"rtmp-listener:{endpoint.port}"
        self._url = f"rtmp://{endpoint.bind_host}:{endpoint.port}/live/{endpoint.key}"
        self._accept_poll_s = accept_poll_s
        self._read_timeout_s = read_timeout_s
        self._closed = threading.Event()
        self.rejected_publishers = 0
        libav_log.install()

    def open(self, stop: threading.Event) -> av.container.InputContainer | None:
        while not (stop.is_set() or self._closed.is_set()):
            libav_log.pop_key_mismatch(self.endpoint.key)  # forget anything stale
            try:
                container = av.open(
                    self._url,
                    format="flv",
                    options={"listen": "1", "timeout": str(self._accept_poll_s), **PROBE_OPTIONS},
                    timeout=(self._accept_poll_s + 20.0, self._read_timeout_s),
                )
            except (av.error.FFmpegError, OSError) as exc:
                if stop.is_set() or self._closed.is_set():
                    return None
                if _is_accept_timeout(exc):
                    continue  # nobody connected during this poll window
                code = getattr(exc, "errno", None)
                if code == errno.EADDRINUSE:  # lost the port to another program after our check
                    raise IngestPortInUseError(
                        f"RTMP ingest port {self.endpoint.port} was taken by another program", self.endpoint.port
                    ) from exc
                if code in (errno.EACCES, errno.EADDRNOTAVAIL):
                    raise IngestError(f"cannot listen on {self.endpoint.bind_host}:{self.endpoint.port}: {exc}") from exc
                wrong = libav_log.pop_key_mismatch(self.endpoint.key)
                if wrong is not None:
                    self._reject(wrong)
                else:
                    logger.warning("RTMP publisher on port {} failed during handshake/probe: {}", self.endpoint.port, exc)
                time.sleep(0.05)
                continue
            wrong = libav_log.pop_key_mismatch(self.endpoint.key)
            if wrong is not None:
                container.close()
                self._reject(wrong)
                continue
            if stop.is_set() or self._closed.is_set():
                container.close()
                return None
            if not container.streams.video:
                logger.warning("RTMP publisher on port {} sent no video stream; dropping it", self.endpoint.port)
                container.close()
                continue
            return container
        return None

    def _reject(self, wrong_key: str) -> None:
        self.rejected_publishers += 1
        shown = (wrong_key[:4] + "…") if len(wrong_key) > 4 else wrong_key
        logger.warning(
            "Rejected RTMP publisher on port {}: wrong stream key '{}' (its video is not used)", self.endpoint.port, shown
        )

    @property
    def failure(self) -> None:
        return None  # in-process: a lost port is raised by ``open`` (and ends the decode thread)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        _poke_tcp(self.endpoint.port)


def _poke_tcp(port: int) -> None:
    """Wake a listener blocked in accept(): connect and hang up (its handshake then fails fast)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            pass
    except OSError:
        pass


def _is_accept_timeout(exc: Exception) -> bool:
    """The listen ``timeout`` expired (ETIMEDOUT) or PyAV's open timeout interrupted the wait."""
    return isinstance(exc, (av.error.ExitError, av.error.TimeoutError)) or getattr(exc, "errno", None) == errno.ETIMEDOUT
