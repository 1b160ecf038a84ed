"""``detector-app inference-server``: start a local Triton (PyTriton's bundled ``tritonserver``) for a model.

The server runs in its own process group from the Triton virtual environment (``.venv-triton``, made by
``scripts/setup.sh``; ``nvidia-pytriton`` needs ``numpy<2``, which Ultralytics' environment cannot have).
It is ready when Triton's ``/v2/health/ready`` and the model's ``/v2/models/NAME/ready`` both answer 200
(the server turns ready about a second before its model has loaded); then the exact ``--inference-url``
values are known. Stopping sends SIGTERM to the group (clean stop 5–7 s measured) and SIGKILL after the
budget, so no ``tritonserver`` is ever left holding the ports.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from detector_app.errors import PortInUseError, UserError
from detector_app.inference.prepare import PreparedModel
from detector_app.ingest.addresses import port_is_free

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SERVER_MAIN = Path(__file__).with_name("server_main.py")
READY_TIMEOUT_S = 90.0  # ≈ 3.5 s measured on an idle box; a busy 2-core box takes several times that
STOP_TIMEOUT_S = 10.0


class TritonVenvMissing(UserError):
    """The Triton virtual environment is not there (scripts/setup.sh makes it)."""


def triton_python() -> Path:
    """The Triton venv's interpreter (env ``DETECTOR_TRITON_VENV`` overrides ``.venv-triton``)."""
    venv = Path(os.environ.get("DETECTOR_TRITON_VENV", PROJECT_ROOT / ".venv-triton"))
    py = venv / "bin" / "python"
    if not py.exists():
        raise TritonVenvMissing(f"no Triton environment at {venv}: run scripts/setup.sh "
                                f"(it makes {venv.name} with nvidia-pytriton and onnxruntime)")
    return py


@dataclass(frozen=True, slots=True)
class ServerPorts:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002

    @classmethod
    def from_http(cls, http: int, grpc: int | None = None, metrics: int | None = None) -> ServerPorts:
        return cls(http, grpc if grpc is not None else http + 1, metrics if metrics is not None else http + 2)


@dataclass(frozen=True, slots=True)
class ServerOptions:
    host: str = "0.0.0.0"
    max_batch: int = 8
    queue_delay_us: int = 5000
    instances: int = 1
    threads: int = 0  # ONNX Runtime intra-op threads per instance; 0 = its default (all cores)
    device: str = "cpu"  # cuda[:N]: ONNX Runtime's CUDA provider (onnxruntime-gpu in the Triton venv)


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


class InferenceServer:
    """One Triton process serving one prepared model; ``start()`` returns when the model answers."""

    def __init__(self, model: PreparedModel, ports: ServerPorts = ServerPorts(), opts: ServerOptions = ServerOptions(),
                 log_path: Path | None = None) -> None:
        self.model = model
        self.ports = ports
        self.opts = opts
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="detector-triton-"))
        self.log_path = log_path or self.runtime_dir / "tritonserver.log"
        self.workspace = self.runtime_dir / "workspace"  # ours, so a killed server leaves nothing in ~/.cache
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_in_s: float | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.http}/{self.model.name}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.ports.grpc}/{self.model.name}"

    def command(self) -> list[str]:
        m, o, p = self.model, self.opts, self.ports
        cmd = [str(triton_python()), str(SERVER_MAIN), "--onnx", str(m.onnx), "--name", m.name,
               "--metadata", m.metadata_literal, "--max-batch", str(o.max_batch),
               "--queue-delay-us", str(o.queue_delay_us), "--instances", str(o.instances), "--threads", str(o.threads),
               "--device", o.device, "--host", o.host, "--workspace", str(self.workspace), "--http-port", str(p.http), "--grpc-port", str(p.grpc), "--metrics-port", str(p.metrics)]
        return cmd + (["--batched"] if m.batched else [])

    def start(self, timeout: float = READY_TIMEOUT_S) -> InferenceServer:
        cmd = self.command()  # raises TritonVenvMissing first
        for port in (self.ports.http, self.ports.grpc, self.ports.metrics):
            if not port_is_free(port, self.opts.host):
                raise PortInUseError(f"port {port} is in use (another Triton?): pass --port")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)  # its own group: tritonserver dies with it
        base = f"http://127.0.0.1:{self.ports.http}/v2"
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise UserError(f"Triton exited during start-up (code {self.proc.returncode}): {self._log_tail()}")
            if _ok(f"{base}/health/ready") and _ok(f"{base}/models/{self.model.name}/ready"):
                self.started_in_s = time.monotonic() - t0
                return self
            time.sleep(0.2)
        self.stop()
        raise UserError(f"Triton was not ready within {timeout:.0f} s: {self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines()
                     if ln.startswith(("E", "ERROR")) or "Error" in ln]
        except OSError:
            return f"see {self.log_path}"
        return (" | ".join(lines[-3:]) or "no error line") + f" (log: {self.log_path})"

    def batch_stats(self) -> BatchStats:
        """Requests and executions so far (Triton's ``/v2/models/NAME/stats``): their ratio is the mean batch."""
        return read_batch_stats(f"127.0.0.1:{self.ports.http}", self.model.name)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self, timeout: float | None = None) -> int | None:
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """Kill the whole group at once (tests: the server dies mid-run)."""
        if self.proc is not None and self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        shutil.rmtree(self.workspace, ignore_errors=True)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM (PyTriton stops Triton and its stubs), SIGKILL to the group after ``timeout``; idempotent."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(proc.pid, signal.SIGKILL)  # stubs or tritonserver left behind, if any
        if proc.poll() is None:
            proc.wait(5)
        shutil.rmtree(self.workspace, ignore_errors=True)  # ≈ 20 MB: PyTriton copies tritonserver into it

    def __enter__(self) -> InferenceServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


@dataclass(frozen=True, slots=True)
class BatchStats:
    inferences: int
    executions: int

    def since(self, before: BatchStats) -> BatchStats:
        return BatchStats(self.inferences - before.inferences, self.executions - before.executions)

    @property
    def mean_batch(self) -> float:
        return self.inferences / self.executions if self.executions else 0.0


def read_batch_stats(http_address: str, model: str) -> BatchStats:
    """Any Triton's counters for ``model`` (HTTP address ``host:port``)."""
    import json

    with urllib.request.urlopen(f"http://{http_address}/v2/models/{model}/stats", timeout=2.0) as r:
        rows = json.load(r)["model_stats"]
    return BatchStats(sum(int(x["inference_count"]) for x in rows), sum(int(x["execution_count"]) for x in rows))


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
