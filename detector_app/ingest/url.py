"""A file or a stream URL opened directly (``detector-app detect``), no ingest listener."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from urllib.parse import urlsplit

import av
import av.container
from loguru import logger

from detector_app.ingest import libav_log
from detector_app.ingest.base import PROBE_OPTIONS, IngestError

LIVE_SCHEMES = ("rtmp://", "rtmps://", "srt://", "rtsp://", "rtsps://", "udp://", "tcp://", "http://", "https://")


def redact_url(url: str) -> str:
    """Stream URLs carry keys in the path (rtmp://host/app/KEY) or the query: keep scheme, host, app."""
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    shown = "/".join(segments[:1] + (["…"] if len(segments) > 1 else []))
    return f"{parts.scheme}://{parts.netloc}/{shown}" + ("?…" if parts.query else "")


class UrlSource:
    """Opens ``target`` once (files) or again after drops with backoff (live URLs)."""

    def __init__(self, target: str, live: bool | None = None, read_timeout_s: float = 5.0, open_timeout_s: float = 10.0,
                 options: dict[str, str] | None = None, name: str | None = None):
        """``options`` add to the demuxer's for a URL (e.g. HLS ``live_start_index``)."""
        self.target = target
        self.is_url = target.lower().startswith(LIVE_SCHEMES)
        if not self.is_url and not Path(target).exists():
            raise IngestError(f"video source not found: {target}")
        if not self.is_url and not os.access(target, os.R_OK):
            raise IngestError(f"video source is not readable: {target}")
        self.live = self.is_url if live is None else live
        self.reconnects = self.is_url
        self.rejected_publishers = 0  # nobody publishes to a URL we pull
        self.name = name or (target if not self.is_url else redact_url(target))
        self._options = dict(options or {})
        self._timeouts = (open_timeout_s, read_timeout_s)
        self._closed = threading.Event()
        self._opened_once = False
        libav_log.install()

    def open(self, stop: threading.Event) -> av.container.InputContainer | None:
        delay = 0.5
        while not (stop.is_set() or self._closed.is_set()):
            if self._opened_once and not self.is_url:
                return None
            try:
                options = {**PROBE_OPTIONS, **self._options} if self.is_url else {}
                container = av.open(self.target, options=options, timeout=self._timeouts)
            except (av.error.FFmpegError, OSError) as exc:
                if not self.is_url:
                    raise IngestError(f"cannot open video {self.target}: {exc}") from exc
                logger.warning("cannot open {}: {} (retrying in {:.1f} s)", self.name, exc, delay)
                if stop.wait(delay):
                    return None
                delay = min(delay * 2, 8.0)
                continue
            self._opened_once = True
            if not container.streams.video:
                container.close()
                raise IngestError(f"{self.target} has no video stream")
            return container
        return None

    @property
    def failure(self) -> None:
        return None  # nothing outside the decode thread can fail

    def close(self) -> None:
        self._closed.set()

