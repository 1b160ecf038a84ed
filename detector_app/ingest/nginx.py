"""Our own nginx-rtmp server (Debian ``nginx`` + ``libnginx-mod-rtmp``): config, start, stop, health.

The project never touches the system's nginx: the config is generated into a runtime dir and nginx
runs in the foreground as our child (``-p DIR -c DIR/nginx.conf``, pid and error log in DIR). One
server takes every publisher on one port and times out silent or idle connections; with hooks it
asks our HTTP server whether a key may publish (or play), and an HTTP control socket (a unix socket
in DIR, owner-only) lets us drop a stream's publisher or puller at once. Used by the ingest
(``nginx_ingest``) and by the bench baseline.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

from detector_app.ingest.addresses import free_port, port_is_free
from detector_app.ingest.base import IngestError, IngestPortInUseError
from detector_app.procs import stop_process

RTMP_MODULE_PATHS = (
    Path("/usr/lib/nginx/modules/ngx_rtmp_module.so"),
    Path("/usr/lib64/nginx/modules/ngx_rtmp_module.so"),
    Path("/usr/share/nginx/modules/ngx_rtmp_module.so"),
)
INSTALL_HINT = "install it (Debian/Ubuntu: sudo apt-get install nginx libnginx-mod-rtmp, or run scripts/setup.sh)"


class NginxError(IngestError):
    """nginx or its RTMP module is missing, or it would not start (one line for the user)."""


def find_nginx() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


def find_rtmp_module() -> Path | None:
    return next((p for p in RTMP_MODULE_PATHS if p.exists()), None)


def missing_reason() -> str | None:
    """Why the nginx ingest cannot run here (None when it can): decides ``--ingest`` defaults."""
    if find_nginx() is None:
        return f"nginx not found: {INSTALL_HINT}"
    if find_rtmp_module() is None:
        return f"nginx RTMP module not found: {INSTALL_HINT}"
    return None


@dataclass(frozen=True, slots=True)
class NginxConf:
    """What the generated config says. ``hook_url`` (e.g. ``http://127.0.0.1:3000/ingest``) turns on
    ``on_publish``/``on_publish_done``/``on_play``; without it only loopback may publish."""

    port: int
    bind_host: str = "127.0.0.1"
    hook_url: str | None = None
    app: str = "live"
    timeout_s: int = 10  # a socket silent this long (handshake included) is closed
    idle_publisher_s: int = 5  # a publisher that sends nothing this long is dropped (frees its key)
    max_connections: int = 1024

    @property
    def local_host(self) -> str:
        """Where a client on this machine reaches the server (and the one address that may play)."""
        return "127.0.0.1" if self.bind_host in ("0.0.0.0", "::", "") else self.bind_host


def render_conf(conf: NginxConf, workdir: Path, module: Path) -> str:
    """The whole nginx.conf, pure (tested without nginx)."""
    if conf.hook_url:
        hooks = (f"            on_publish {conf.hook_url}/on_publish;\n"
                 f"            on_publish_done {conf.hook_url}/on_publish_done;\n"
                 f"            on_play {conf.hook_url}/on_play;\n"
                 "            notify_method post;\n")
        access = f"            allow play {conf.local_host};\n            deny play all;\n"
    else:
        hooks = ""
        access = (f"            allow publish {conf.local_host};\n            deny publish all;\n"
                  f"            allow play {conf.local_host};\n            deny play all;\n")
    return f"""load_module {module};
daemon off;
master_process off;
worker_processes 1;
error_log {workdir}/error.log warn;
pid {workdir}/nginx.pid;
events {{ worker_connections {conf.max_connections}; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/tmp;
    server {{
        listen unix:{workdir}/control.sock;
        location /control {{ rtmp_control all; }}
        location /stat {{ rtmp_stat all; }}
    }}
}}
rtmp {{
    server {{
        listen {f"[{conf.bind_host}]" if ":" in conf.bind_host else conf.bind_host}:{conf.port};
        chunk_size 4096;
        timeout {conf.timeout_s}s;
        ping 10s;
        ping_timeout 5s;
        max_message 2M;
        application {conf.app} {{
            live on;
            record off;
            idle_streams on;
            drop_idle_publisher {conf.idle_publisher_s}s;
{access}{hooks}        }}
    }}
}}
"""


class NginxRtmpServer:
    """``with NginxRtmpServer(NginxConf(port)) as srv: srv.url(key)`` → ``rtmp://127.0.0.1:PORT/live/KEY``.

    ``failure`` says when nginx exited on its own (polled by the streams, cheap); ``start`` after a
    failure starts a fresh process on the same port and runtime dir.
    """

    def __init__(self, conf: NginxConf | None = None, runtime_dir: Path | None = None) -> None:
        reason = missing_reason()
        if reason:
            raise NginxError(reason)
        self.exe = find_nginx()
        self.module = find_rtmp_module()
        conf = conf or NginxConf(port=0)
        if conf.port == 0:
            conf = dataclasses.replace(conf, port=free_port(conf.bind_host))
        self.conf = conf
        self._own_dir = runtime_dir is None
        self.workdir = Path(runtime_dir or tempfile.mkdtemp(prefix="detector-nginx-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self._stopped = False
        self._lock = threading.Lock()
        self.starts = 0

    @property
    def port(self) -> int:
        return self.conf.port

    def url(self, key: str = "bench") -> str:
        """Where a puller on this machine reads ``key`` (and where a local publisher pushes it)."""
        return f"rtmp://{self.conf.local_host}:{self.conf.port}/{self.conf.app}/{key}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def failure(self) -> str | None:
        proc = self.proc
        if proc is None or self._stopped:
            return None
        code = proc.poll()
        return None if code is None else f"nginx RTMP ingest (pid {proc.pid}) exited with code {code}"

    def start(self, timeout: float = 10.0) -> NginxRtmpServer:
        """Start (or restart after a crash); returns once the RTMP port accepts connections."""
        with self._lock:
            if self.running:
                return self
            self._stopped = False
            reap_stale(self.workdir)
            if not port_is_free(self.conf.port, self.conf.bind_host):
                raise IngestPortInUseError(
                    f"RTMP ingest port {self.conf.port} on {self.conf.bind_host} is already in use (another "
                    "detector-app or RTMP server?). Pass --ingest-port with a free port.", self.conf.port)
            (self.workdir / "tmp").mkdir(parents=True, exist_ok=True, mode=0o700)
            self.workdir.chmod(0o700)  # the control socket drops streams: owner only
            (self.workdir / "control.sock").unlink(missing_ok=True)
            (self.workdir / "owner.pid").write_text(f"{os.getpid()}\n")
            conf = self.workdir / "nginx.conf"
            conf.write_text(render_conf(self.conf, self.workdir, self.module))  # type: ignore[arg-type]
            self.proc = subprocess.Popen(
                [self.exe, "-e", str(self.workdir / "error.log"), "-p", str(self.workdir), "-c", str(conf)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            self.starts += 1
            self._wait_listening(timeout)
            return self

    def _wait_listening(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise NginxError(f"nginx exited at start (code {self.proc.returncode}): {self._error_tail()}")
            try:
                with socket.create_connection((self.conf.local_host, self.conf.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        stop_process(self.proc)
        raise NginxError(f"nginx did not listen on port {self.conf.port} within {timeout:.0f} s: {self._error_tail()}")

    def _error_tail(self) -> str:
        log = self.workdir / "error.log"
        text = log.read_text(errors="replace").strip() if log.exists() else ""
        return text.splitlines()[-1][-300:] if text else "no error output"

    def _control(self, path: str) -> bytes | None:
        """One HTTP/1.0 GET on the owner-only control socket; None if nginx is gone (bounded: 1 s)."""
        request = f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode()
        chunks: list[bytes] = []
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(1.0)
                s.connect(str(self.workdir / "control.sock"))
                s.sendall(request)
                while chunk := s.recv(65536):
                    chunks.append(chunk)
                    if sum(map(len, chunks)) > 4 << 20:
                        break
        except OSError:
            return None
        return b"".join(chunks)

    def drop(self, what: str, key: str) -> bool:
        """Disconnect the ``publisher`` or ``subscriber`` (puller) of ``key`` now; False if nginx is gone."""
        reply = self._control(f"/control/drop/{what}?" + urllib.parse.urlencode({"app": self.conf.app, "name": key}))
        return reply is not None and reply.split(b" ", 2)[1:2] == [b"200"]

    def players(self, key: str) -> int:
        """Pullers waiting on or playing ``key`` (nginx's /stat), for callers without an ``on_play`` hook."""
        reply = self._control("/stat")
        if reply is None or b"\r\n\r\n" not in reply:
            return 0
        return count_players(reply.split(b"\r\n\r\n", 1)[1], self.conf.app, key)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            if self.proc is not None:
                stop_process(self.proc)
            if self._own_dir:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> NginxRtmpServer:  # noqa: PYI034 - 3.10 has no typing.Self
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def runtime_dir_for(port: int) -> Path:
    """A stable runtime dir per user and port, so the nginx a killed ``serve`` left behind is found
    (``reap_stale``) and the port freed; a fresh temp dir when that path is not safely ours."""
    path = Path(tempfile.gettempdir()) / f"detector-nginx-{os.getuid()}-{port}"
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        st = path.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():  # a symlink or somebody else's
            return Path(tempfile.mkdtemp(prefix="detector-nginx-"))
    return path


def reap_stale(workdir: Path, grace: float = 2.0) -> bool:
    """Stop an nginx still running from ``workdir`` (its ``serve`` was killed); True if there was one.
    Only a process whose command line names this dir's config is touched."""
    try:
        owner = int((workdir / "owner.pid").read_text().strip())
        if owner != os.getpid() and Path(f"/proc/{owner}").exists():
            return False  # its serve is alive: the port is in use, not stale
    except (OSError, ValueError):
        pass
    try:
        pid = int((workdir / "nginx.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return False
    if str(workdir / "nginx.conf").encode() not in cmdline:
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except OSError:
            return True
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not Path(f"/proc/{pid}").exists():
                return True
            time.sleep(0.05)
    return True


def count_players(stat_xml: bytes, app: str, key: str) -> int:
    """Clients of stream ``key`` in ``app`` that are not its publisher, from nginx-rtmp's stat XML."""
    try:
        root = ElementTree.fromstring(stat_xml)
    except ElementTree.ParseError:
        return 0
    for application in root.iter("application"):
        if application.findtext("name") != app:
            continue
        for stream in application.iter("stream"):
            if stream.findtext("name") == key:
                return sum(1 for c in stream.iter("client") if c.find("publishing") is None)
    return 0

