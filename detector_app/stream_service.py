"""The session service: one detection stream per glasses session, sharing one loaded model.

    service = DetectionService(detector, IngestConfig(...))   # one warmed-up model for all streams
    stream = service.open_stream("rtmp")      # own port, own random key, own threads
    stream.publish_url / stream.key / stream.add_listener(cb) / stream.health() / stream.close(timeout)

``stream.failure`` says when a stream's ingest died (relay exited, port lost); the miniapp then
closes it and opens a new one. Every close is bounded, and a stream that finishes opening after
the service was closed closes itself, so no listener, relay or thread outlives the service.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from loguru import logger

from detector_app.detection.detector import Detector
from detector_app.errors import PortInUseError
from detector_app.ingest.base import IngestEndpoint
from detector_app.ingest.factory import open_listener
from detector_app.main_thread import LiveView
from detector_app.pipeline import Pipeline, Sink
from detector_app.video.health import StreamHealth

STREAM_CLOSE_S = 5.0  # one stream's close budget: relay stop (≤ 1.5 s) and both threads joined


class ServiceClosedError(RuntimeError):
    """``open_stream`` raced ``close``: the service is shutting down and opens nothing more."""


@dataclass(slots=True)
class IngestConfig:
    """Where the per-session listeners bind and what address the glasses are told."""

    bind_host: str = "0.0.0.0"
    advertise_host: str | None = None  # None = auto-detect the LAN address
    port: int = 0  # 0 = any free port per session; N = the first free of N, N+1, … (one publisher per listener)
    fps: float = 10.0


class StreamSession:
    """One listener + pipeline: what the miniapp uses (``StreamSessionLike``); ``view`` is what the
    window shows (``LiveView``)."""

    def __init__(self, endpoint: IngestEndpoint, pipeline: Pipeline) -> None:
        self.endpoint = endpoint
        self.pipeline = pipeline
        self._closed = False
        self._lock = threading.Lock()

    @property
    def publish_url(self) -> str:
        return self.endpoint.publish_url

    @property
    def key(self) -> str:
        return self.endpoint.key

    def add_listener(self, callback: Sink) -> None:
        self.pipeline.add_sink(callback)

    def health(self) -> StreamHealth:
        return self.pipeline.health()

    @property
    def failure(self) -> str | None:
        """Why this stream's ingest or pipeline died (relay exited, port lost), or None while it works."""
        return self.pipeline.failure

    @property
    def rejected_publishers(self) -> int:
        return self.pipeline.rejected_publishers

    @property
    def view(self) -> LiveView:
        """Newest frame, result, stats and health, for the main-thread window."""
        return self.pipeline

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, timeout: float = STREAM_CLOSE_S) -> None:
        """Stop the pipeline and release the listener within ``timeout``; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.pipeline.stop(timeout)
        logger.info("stream session on port {} closed", self.endpoint.port)


class DetectionService:
    def __init__(self, detector: Detector, ingest: IngestConfig | None = None) -> None:
        """``detector`` is loaded and warmed up by the caller (before any stream starts)."""
        self.ingest = ingest or IngestConfig()
        self.detector = detector
        self._streams: list[StreamSession] = []
        self._closed = False
        self._lock = threading.Lock()  # guards _streams and _closed
        self._open_lock = threading.Lock()
        self.sinks: list[Sink] = []  # added to every stream (e.g. the websockets feed)

    PORT_SPAN = 32  # with a fixed first port, concurrent sessions take the next free ones

    def open_stream(self, protocol: str = "rtmp") -> StreamSession:
        """A listener with a fresh key on its own port (one publisher per listener)."""
        # Sessions open concurrently (one worker thread each) and our listeners bind lazily (in their
        # decode thread), so choosing a port and registering the stream happen under one lock.
        with self._open_lock:
            if self._closed:
                raise ServiceClosedError("the detection service is shutting down")
            taken = {s.endpoint.port for s in self.streams()}
            ports = [0] if self.ingest.port == 0 else [
                p for p in range(self.ingest.port, self.ingest.port + self.PORT_SPAN) if p not in taken
            ]
            opened = None
            for port in ports:
                try:
                    opened = open_listener(
                        protocol, port=port, bind_host=self.ingest.bind_host, advertise=self.ingest.advertise_host
                    )
                    break
                except PortInUseError:
                    continue
            if opened is None:
                raise PortInUseError(
                    f"no free ingest port in {self.ingest.port}–{self.ingest.port + self.PORT_SPAN - 1}; "
                    "set another INGEST_PORT (or 0 for any free port)"
                )
            endpoint, source = opened
            pipeline = Pipeline(
                source, self.detector, fps=self.ingest.fps, sinks=list(self.sinks), source_label=endpoint.redacted()
            )
            pipeline.start()
            stream = StreamSession(endpoint, pipeline)
            with self._lock:
                closed = self._closed
                if not closed:
                    self._streams.append(stream)
        if closed:  # close() ran while this one was opening: nobody else will close it
            stream.close()
            raise ServiceClosedError("the detection service is shutting down")
        logger.info("ingest ready: glasses publish to {}", endpoint.redacted())
        return stream

    def streams(self) -> list[StreamSession]:
        """Open streams, oldest first (closed ones are dropped so a long-running server does not keep
        every finished session's pipeline alive)."""
        with self._lock:
            self._streams = [s for s in self._streams if not s.closed]
            return list(self._streams)

    def views(self) -> list[LiveView]:
        """What the window can show: the open streams' views, oldest first."""
        return [s.view for s in self.streams()]

    def close(self, timeout: float = STREAM_CLOSE_S) -> None:
        """Close every stream (in parallel, within ``timeout``) and open no more."""
        with self._lock:
            self._closed = True
            streams = [s for s in self._streams if not s.closed]
            self._streams = []
        if not streams:
            return
        deadline = time.monotonic() + timeout
        closers = [threading.Thread(target=s.close, args=(timeout,), name="stream-close", daemon=True) for s in streams]
        for t in closers:
            t.start()
        for t in closers:
            t.join(max(0.0, deadline - time.monotonic()) + 0.5)
