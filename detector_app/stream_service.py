"""The session service: one detection stream per glasses session, sharing one loaded model.

    service = DetectionService(detector, IngestConfig(...))   # one warmed-up model for all streams
    stream = service.open_stream("rtmp")      # own port, own random key, own threads
    stream.publish_url / stream.key / stream.add_listener(cb) / stream.health() / stream.close(timeout)

With ``IngestConfig(mode="nginx")`` every RTMP stream shares one nginx-rtmp server on one port
(``ingest.nginx_ingest``); the miniapp's HTTP server answers its hooks (``attach_hooks``, ``on_hook``).

``stream.failure`` says when a stream's ingest died (relay exited, port lost, nginx exited); the
miniapp then closes it and opens a new one (a new nginx is started when the old one died). Every close is bounded, and a stream that finishes opening after
the service was closed closes itself, so no listener, relay or thread outlives the service.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from loguru import logger

from detector_app.detection.detector import Detector
from detector_app.errors import PortInUseError
from detector_app.ingest.base import IngestEndpoint, VideoSource
from detector_app.ingest.factory import open_listener
from detector_app.ingest.nginx_hooks import HookCall
from detector_app.ingest.nginx_ingest import PULLER_ATTACH_S, NginxIngest
from detector_app.main_thread import LiveView
from detector_app.pipeline import Pipeline, Sink
from detector_app.video.health import StreamHealth

if TYPE_CHECKING:
    from detector_app.ingest.whip import WhipIngest
    from detector_app.sightings.recorder import Sightings

STREAM_CLOSE_S = 5.0  # one stream's close budget: relay stop (≤ 1.5 s) and both threads joined


class ServiceClosedError(RuntimeError):
    """``open_stream`` raced ``close``: the service is shutting down and opens nothing more."""


@dataclass(slots=True)
class IngestConfig:
    """Where the per-session listeners bind and what address the glasses are told."""

    bind_host: str = "0.0.0.0"
    advertise_host: str | None = None  # None = auto-detect the LAN address
    port: int = 0  # embedded: 0 = any free port per session; N = the first free of N, N+1, …
    #                nginx: the one port of every session (0 = one free port)
    fps: float = 10.0
    mode: Literal["embedded", "nginx"] = "embedded"  # RTMP ingest: PyAV listener per session, or one nginx
    track: bool = True  # each stream its own tracker (Pipeline's); False = --no-track


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
    def inference_paused(self) -> str | None:
        """Why remote inference (Triton) is down while the stream goes on, or None; read every tick."""
        return self.pipeline.inference_paused

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
        if self.ingest.track:  # load the tracking library now (~1.5 s), not in the first wearer's stream open
            import trackers  # noqa: F401, PLC0415
        self._streams: list[StreamSession] = []
        self._closed = False
        self._lock = threading.Lock()  # guards _streams and _closed
        self._open_lock = threading.Lock()
        self.sinks: list[Sink] = []  # added to every stream (e.g. the websockets feed)
        self.sightings: Sightings | None = None  # set by serve: every stream records its sightings there
        self._nginx: NginxIngest | None = None  # started by the first nginx-mode RTMP stream
        self._hook_url: str | None = None
        self._whip: WhipIngest | None = None  # WHIP keys served by the miniapp's own HTTP server
        self._whip_port: int | None = None

    # -- WHIP on the miniapp's HTTP server (``mentra.app`` mounts ``ingest.whip.whip_routes``) ------------
    def attach_whip(self, port: int) -> None:
        """The miniapp's HTTP port: WHIP streams are then ``http://HOST:port/whip/<key>`` on it (without
        it, each WHIP stream gets its own small server and port, as in ``replay``)."""
        self._whip_port = port

    def whip_ingest(self) -> WhipIngest | None:
        """What the miniapp's ``/whip`` routes answer from; None until a WHIP stream was opened."""
        return self._whip

    # -- the nginx ingest's hooks (answered by the miniapp's HTTP server) -------------------------
    def attach_hooks(self, hook_url: str) -> None:
        """``http://127.0.0.1:PORT/ingest``: nginx asks there whether a key may publish."""
        self._hook_url = hook_url
        if self._nginx is not None:
            self._nginx.attach_hooks(hook_url)

    def on_hook(self, call: HookCall) -> bool:
        """Only keys of open streams may publish (may wait ≤ 1 s for the stream's puller)."""
        ingest = self._nginx
        return ingest.on_hook(call) if ingest is not None else False

    def start_ingest(self) -> None:
        """Start the shared nginx now (``serve``: a port clash is reported at start, not per session)."""
        if self.ingest.mode == "nginx":
            self._nginx_ingest().start()

    def _nginx_ingest(self) -> NginxIngest:
        with self._lock:  # close() takes it (and closes it) or no ingest is made
            if self._closed:
                raise ServiceClosedError("the detection service is shutting down")
            if self._nginx is None:
                self._nginx = NginxIngest(port=self.ingest.port, bind_host=self.ingest.bind_host,
                                          advertise=self.ingest.advertise_host, hook_url=self._hook_url)
            return self._nginx

    PORT_SPAN = 32  # with a fixed first port, concurrent sessions take the next free ones

    def open_playback_stream(self, webrtc_url: str | None, hls_url: str | None, stream_id: str = "",
                             prefer: str = "webrtc", label: str = "") -> StreamSession:
        """A managed stream: nothing listens, we pull the cloud's playback URL (WHEP by default, HLS
        as the fallback: ``ingest.managed``). Same pipeline, listeners and close as ``open_stream``."""
        from detector_app.ingest.managed import open_playback_source

        with self._open_lock:
            if self._closed:
                raise ServiceClosedError("the detection service is shutting down")
            source = open_playback_source(webrtc_url, hls_url, prefer)  # type: ignore[arg-type]
            url = webrtc_url or hls_url or ""
            endpoint = IngestEndpoint("managed", stream_id or "managed", 0, "", "", publish_url=url, local_publish_url=url)
            stream, closed = self._adopt(endpoint, source, label)
        return self._opened(stream, closed)

    def open_stream(self, protocol: str = "rtmp", *, label: str = "") -> StreamSession:
        """A listener with a fresh key on its own port (one publisher per listener); ``label`` names it
        for people (``serve``: the wearer), before its redacted ingest URL."""
        # Sessions open concurrently (one worker thread each) and our listeners bind lazily (in their
        # decode thread), so choosing a port and registering the stream happen under one lock.
        with self._open_lock:
            if self._closed:
                raise ServiceClosedError("the detection service is shutting down")
            if protocol.lower() == "rtmp" and self.ingest.mode == "nginx":
                return self._open_nginx_stream(label)
            if protocol.lower() == "whip" and self._whip_port is not None:
                return self._open_whip_stream(label)
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
            stream, closed = self._adopt(*opened, label)
        return self._opened(stream, closed)

    def _open_nginx_stream(self, label: str) -> StreamSession:
        """Caller holds ``_open_lock``. The puller is waiting in nginx before the URL is handed out:
        nginx keeps no GOP cache, so a late puller would wait a whole GOP for its first frame."""
        endpoint, source = self._nginx_ingest().open()
        stream, closed = self._adopt(endpoint, source, label)
        if not closed and not source.wait_attached(PULLER_ATTACH_S):
            logger.warning("{}: puller not attached to nginx within {} s", source.name, PULLER_ATTACH_S)
        return self._opened(stream, closed)

    def _open_whip_stream(self, label: str) -> StreamSession:
        """Caller holds ``_open_lock``: a key on the miniapp's ``/whip`` routes, no port of its own."""
        from detector_app.ingest.addresses import advertise_host, new_stream_key
        from detector_app.ingest.whip import WhipIngest, whip_endpoint

        assert self._whip_port is not None
        if self._whip is None:
            self._whip = WhipIngest()
        endpoint = whip_endpoint(new_stream_key(), self._whip_port, self.ingest.bind_host,
                                 advertise_host(self.ingest.advertise_host, True))
        stream, closed = self._adopt(endpoint, self._whip.register(endpoint), label)
        return self._opened(stream, closed)

    def _adopt(self, endpoint: IngestEndpoint, source: VideoSource, label: str = "") -> tuple[StreamSession, bool]:
        name = f"{label} · {endpoint.redacted()}" if label else endpoint.redacted()
        pipeline = Pipeline(
            source, self.detector, fps=self.ingest.fps, sinks=list(self.sinks), source_label=name,
            recorder=self.sightings.recorder() if self.sightings is not None else None, track=self.ingest.track,
        )
        pipeline.start()
        stream = StreamSession(endpoint, pipeline)
        with self._lock:
            closed = self._closed
            if not closed:
                self._streams.append(stream)
        return stream, closed

    def _opened(self, stream: StreamSession, closed: bool) -> StreamSession:
        if closed:  # close() ran while this one was opening: nobody else will close it
            stream.close()
            raise ServiceClosedError("the detection service is shutting down")
        logger.info("ingest ready: glasses publish to {}", stream.endpoint.redacted())
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
            nginx, self._nginx = self._nginx, None
        try:
            self._close_streams(streams, timeout)
        finally:
            if nginx is not None:
                nginx.close()

    @staticmethod
    def _close_streams(streams: list[StreamSession], timeout: float) -> None:
        if not streams:
            return
        deadline = time.monotonic() + timeout
        closers = [threading.Thread(target=s.close, args=(timeout,), name="stream-close", daemon=True) for s in streams]
        for t in closers:
            t.start()
        for t in closers:
            t.join(max(0.0, deadline - time.monotonic()) + 0.5)
