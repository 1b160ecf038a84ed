"""The nginx ingest: one nginx-rtmp server, one port, every session's key; a puller per session.

nginx keeps no GOP cache: a puller that joins after the publish began waits for the next keyframe
(a whole 2 s GOP with Mentra Live), one already waiting gets the first frame at once (field notes).
So each session's puller connects when the session opens, and the ``on_publish`` hook answers only
once that puller is attached (its ``on_play`` came). When the publisher leaves, the puller is dropped
so that it reconnects and waits for the next publish the same way.
"""

from __future__ import annotations

import dataclasses
import errno
import shutil
import tempfile
import threading
import time
from pathlib import Path

import av
import av.container
from loguru import logger

from detector_app.ingest import libav_log
from detector_app.ingest.addresses import advertise_host, new_stream_key
from detector_app.ingest.base import PROBE_OPTIONS, IngestEndpoint, IngestError
from detector_app.ingest.nginx import NginxConf, NginxRtmpServer, runtime_dir_for
from detector_app.ingest.nginx_hooks import HookCall
from detector_app.ingest.rtmp import rtmp_endpoint

PUBLISH_WAITS_FOR_PULLER_S = 1.0  # on_publish holds its answer this long for our puller to attach
PULLER_ATTACH_S = 2.0  # open_stream returns once the puller waits in nginx (or after this)


class NginxPullSource:
    """A ``VideoSource``: pulls ``rtmp://127.0.0.1:PORT/live/KEY`` from our nginx, again after each drop."""

    live = True
    reconnects = True

    def __init__(self, ingest: NginxIngest, endpoint: IngestEndpoint, generation: int,
                 open_timeout_s: float = 30.0, read_timeout_s: float = 3.0) -> None:
        self.endpoint = endpoint
        self.name = f"nginx-rtmp:{endpoint.port}/{endpoint.key[:4]}…"
        self.rejected_publishers = 0  # wrong keys are refused by the hook, before any session exists
        self.attached = threading.Event()  # our puller waits in nginx (its on_play was answered)
        self.publishing = threading.Event()  # a publisher is on this key
        self.publishes = 0
        self._ingest = ingest
        self._generation = generation  # the nginx process this source belongs to
        self._url = ingest.server.url(endpoint.key)
        self._timeouts = (open_timeout_s, read_timeout_s)
        self._closed = threading.Event()
        libav_log.install()

    def open(self, stop: threading.Event) -> av.container.InputContainer | None:
        while not (stop.is_set() or self._closed.is_set()):
            if self.failure:
                raise IngestError(self.failure)
            self.attached.clear()
            try:
                # The open timeout is PyAV's keyword: ``timeout`` in options would make RTMP listen.
                container = av.open(self._url, format="flv", options=dict(PROBE_OPTIONS), timeout=self._timeouts)
            except (av.error.FFmpegError, OSError) as exc:
                if stop.is_set() or self._closed.is_set():
                    return None
                if isinstance(exc, (av.error.ExitError, av.error.TimeoutError)) or getattr(exc, "errno", None) == errno.ETIMEDOUT:
                    continue  # nobody published during the open timeout: wait again
                logger.debug("{}: pull failed: {}", self.name, exc)
                stop.wait(0.1)
                continue
            if stop.is_set() or self._closed.is_set():
                container.close()
                return None
            if not container.streams.video:
                logger.warning("{}: publisher sent no video stream; dropping it", self.name)
                container.close()
                self._ingest.server.drop("publisher", self.endpoint.key)
                continue
            return container
        return None

    def wait_attached(self, timeout: float = PULLER_ATTACH_S) -> bool:
        """Until our puller waits in nginx: its ``on_play`` came or, without hooks, nginx's stat lists it."""
        deadline = time.monotonic() + timeout
        while not self.attached.wait(0.02):
            if not self._ingest.has_hooks and self._ingest.server.players(self.endpoint.key) > 0:
                self.attached.set()
            elif time.monotonic() > deadline or self._closed.is_set():
                return False
        return True

    @property
    def failure(self) -> str | None:
        """nginx exited, or was restarted since this source opened (its URL's session is gone)."""
        if self._closed.is_set():
            return None
        return self._ingest.failure_since(self._generation)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._ingest.release(self.endpoint.key)  # unregister, drop its publisher and our puller


class NginxIngest:
    """One nginx for every session (``open`` → endpoint + source), and the answers to its hooks."""

    def __init__(self, port: int = 1935, bind_host: str = "0.0.0.0", advertise: str | None = None,
                 hook_url: str | None = None, runtime_dir: Path | None = None) -> None:
        self._bind_host = bind_host
        self._advertise = advertise
        # A fixed port gets a stable dir: a restarted serve stops the nginx a killed one left behind.
        self._runtime_dir = runtime_dir or (runtime_dir_for(port) if port else Path(tempfile.mkdtemp(prefix="detector-nginx-")))
        self._own_dir = runtime_dir is None
        self._conf = NginxConf(port=port, bind_host=bind_host, hook_url=hook_url)
        self._server: NginxRtmpServer | None = None
        self._sources: dict[str, NginxPullSource] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.refused = 0  # publishers refused by the hook (unknown or ended keys)

    @property
    def server(self) -> NginxRtmpServer:
        assert self._server is not None, "NginxIngest.open() starts the server"
        return self._server

    @property
    def has_hooks(self) -> bool:
        return bool(self._conf.hook_url)

    def attach_hooks(self, hook_url: str) -> None:
        """Where nginx asks (``http://127.0.0.1:PORT/ingest``); before the first ``open``."""
        with self._lock:
            if self._server is not None and self._server.conf.hook_url != hook_url:
                raise IngestError("the nginx ingest is already running without these hooks")
            self._conf = dataclasses.replace(self._conf, hook_url=hook_url)

    def _ensure_running(self) -> int:
        """Start nginx (first session) or a new one (the last one died); returns its generation."""
        if self._server is None:
            self._server = NginxRtmpServer(self._conf, self._runtime_dir)
        elif self._server.failure:
            logger.warning("{}: starting a new nginx", self._server.failure)
        if not self._server.running:
            self._server.start()
            if not self._conf.hook_url:
                logger.warning("nginx ingest without publish hooks: any stream key from this machine may publish")
            logger.info("nginx RTMP ingest listening on {}:{} (runtime dir {})", self._conf.bind_host,
                        self._server.port, self._runtime_dir)
        return self._server.starts

    def start(self) -> None:
        with self._lock:
            if self._closed:
                raise IngestError("the nginx ingest is shutting down")
            self._ensure_running()

    def open(self, key: str | None = None, for_glasses: bool = True) -> tuple[IngestEndpoint, NginxPullSource]:
        """Register a fresh key and start waiting for its publisher (call ``source`` via a Pipeline)."""
        with self._lock:
            if self._closed:
                raise IngestError("the nginx ingest is shutting down")
            generation = self._ensure_running()
            key = key or new_stream_key()
            endpoint = rtmp_endpoint(key, self.server.port, self._bind_host, advertise_host(self._advertise, for_glasses))
            source = NginxPullSource(self, endpoint, generation)
            self._sources[key] = source
        return endpoint, source

    def failure_since(self, generation: int) -> str | None:
        server = self._server
        if server is None:
            return None
        if server.failure:
            return server.failure
        if server.starts != generation:
            return "nginx RTMP ingest was restarted (the stream must be requested again)"
        return None

    def release(self, key: str) -> None:
        """A session ended: its key is refused from now on and its connections are dropped."""
        with self._lock:
            source = self._sources.pop(key, None)
            server = self._server
        if source is not None and server is not None and server.running:
            server.drop("publisher", key)
            server.drop("subscriber", key)

    # ------------------------------------------------------------------ hooks (IngestHooks)

    def on_hook(self, call: HookCall) -> bool:
        """Allow only active keys; hold a publish until our puller waits (no GOP cache in nginx)."""
        with self._lock:
            source = self._sources.get(call.key)
        if call.kind == "play":
            if source is None:
                logger.warning("nginx ingest: refused a puller for unknown key '{}' from {}", call.shown_key(), call.addr)
                return False
            source.attached.set()
            return True
        if call.kind == "publish":
            if source is None:
                self.refused += 1
                logger.warning("Rejected RTMP publisher from {}: unknown or ended stream key '{}'", call.addr, call.shown_key())
                return False
            if source.publishing.is_set():  # nginx would refuse it too; a 2xx here would end in a
                # publish_done for the intruder, which drops our puller and stalls the real stream a GOP
                self.refused += 1
                logger.warning("{}: refused a second publisher from {} (one is publishing)", source.name, call.addr)
                return False
            if not source.attached.wait(PUBLISH_WAITS_FOR_PULLER_S):
                logger.warning("{}: puller not attached within {} s; the first frame may wait a keyframe",
                               source.name, PUBLISH_WAITS_FOR_PULLER_S)
            source.publishes += 1
            source.publishing.set()
            logger.info("{}: publisher connected from {}", source.name, call.addr)
            return True
        if call.kind == "publish_done" and source is not None:
            source.publishing.clear()
            logger.info("{}: publisher left", source.name)
            self.server.drop("subscriber", call.key)  # our puller reconnects and waits for the next publish
        return True

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._sources.clear()
            server = self._server
        if server is not None:
            server.stop()
        if self._own_dir and server is not None and server.starts:  # never the dir of a serve that runs
            shutil.rmtree(self._runtime_dir, ignore_errors=True)
