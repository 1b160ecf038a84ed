"""A throw-away nginx RTMP server (Debian ``nginx`` + ``libnginx-mod-rtmp``) for the baseline to pull from.

Ultralytics can only *pull* a stream (``source="rtmp://…"``), so the baseline needs a server between the
publisher and it, which is how such a setup is usually deployed. Everything lives in a temp dir; the
server runs in the foreground as our child and is killed on exit.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from detector_app.procs import stop_process

RTMP_MODULE_PATHS = (
    Path("/usr/lib/nginx/modules/ngx_rtmp_module.so"),
    Path("/usr/lib64/nginx/modules/ngx_rtmp_module.so"),
    Path("/usr/share/nginx/modules/ngx_rtmp_module.so"),
)


class NginxError(RuntimeError):
    """nginx or its RTMP module is missing, or it would not start."""


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _module() -> Path:
    for p in RTMP_MODULE_PATHS:
        if p.exists():
            return p
    raise NginxError("nginx RTMP module not found: install it (Debian/Ubuntu: sudo apt-get install nginx libnginx-mod-rtmp)")


def render_conf(port: int, workdir: Path, module: Path) -> str:
    return f"""load_module {module};
daemon off;
master_process off;
worker_processes 1;
error_log {workdir}/error.log warn;
pid {workdir}/nginx.pid;
events {{ worker_connections 64; }}
rtmp {{
    server {{
        listen 127.0.0.1:{port};
        chunk_size 4096;
        application live {{
            live on;
            record off;
        }}
    }}
}}
"""


class NginxRtmp:
    """``with NginxRtmp() as srv: srv.url("bench")`` → ``rtmp://127.0.0.1:PORT/live/bench``."""

    def __init__(self, port: int = 0) -> None:
        self.exe = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
        if self.exe is None:
            raise NginxError("nginx not found: install it (Debian/Ubuntu: sudo apt-get install nginx libnginx-mod-rtmp)")
        self.module = _module()
        self.port = port or _free_tcp_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
        self.proc: subprocess.Popen | None = None

    def url(self, key: str = "bench") -> str:
        return f"rtmp://127.0.0.1:{self.port}/live/{key}"

    def start(self, timeout: float = 10.0) -> NginxRtmp:
        conf = self.workdir / "nginx.conf"
        conf.write_text(render_conf(self.port, self.workdir, self.module))
        self.proc = subprocess.Popen(
            [self.exe, "-e", str(self.workdir / "error.log"), "-p", str(self.workdir), "-c", str(conf)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = (self.proc.stderr.read() if self.proc.stderr else "").strip()
                log = (self.workdir / "error.log")
                detail = err or (log.read_text().strip() if log.exists() else "")
                raise NginxError(f"nginx exited at start (code {self.proc.returncode}): {detail[-500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise NginxError(f"nginx did not listen on port {self.port} within {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> NginxRtmp:  # noqa: PYI034 - 3.10 has no typing.Self
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
