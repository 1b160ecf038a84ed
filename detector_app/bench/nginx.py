"""The baseline's nginx-rtmp server: the project's own (``detector_app.ingest.nginx``), without hooks.

Ultralytics can only *pull* a stream (``source="rtmp://…"``), so the baseline needs a server between the
publisher and it, which is how such a setup is usually deployed. Only loopback may publish or play; the
runtime dir is a temp dir, and the server runs in the foreground as our child, stopped on exit.
"""

from __future__ import annotations

from pathlib import Path

from detector_app.ingest.nginx import NginxConf, NginxError, NginxRtmpServer
from detector_app.ingest.nginx import render_conf as _render_conf

__all__ = ["NginxError", "NginxRtmp", "render_conf"]


def render_conf(port: int, workdir: Path, module: Path) -> str:
    return _render_conf(NginxConf(port=port), workdir, module)


class NginxRtmp(NginxRtmpServer):
    """``with NginxRtmp() as srv: srv.url("bench")`` → ``rtmp://127.0.0.1:PORT/live/bench``."""

    def __init__(self, port: int = 0) -> None:
        super().__init__(NginxConf(port=port))
