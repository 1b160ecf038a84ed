"""``inference-server``: prepare the model, start Triton, print the ``--inference-url``, stop it on Ctrl-C/SIGTERM."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from loguru import logger

from detector_app.inference.prepare import prepare_model
from detector_app.inference.server import InferenceServer, ServerOptions, ServerPorts, triton_python


def run_inference_server(model: str, ports: ServerPorts, opts: ServerOptions, *, imgsz: int | None = None,
                         frame_size: tuple[int, int] | None = None, name: str | None = None,
                         log_path: Path | None = None) -> int:
    """Serve until interrupted; exit code 0 after a clean stop, 1 when Triton died by itself."""
    triton_python()  # a missing Triton venv is said before any export work
    prepared = prepare_model(model, imgsz=imgsz, frame_size=frame_size, name=name)
    server = InferenceServer(prepared, ports, opts, log_path)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
        dims = "x".join(map(str, prepared.input_dims))
        batching = (f"dynamic batching up to {opts.max_batch} ({opts.queue_delay_us} µs queue delay)"
                    if prepared.batched else "no batch axis: one request per execution")
        logger.info("Triton ready in {:.1f} s: {} (ONNX Runtime, input {}, {}); log {}", server.started_in_s,
                    prepared.name, dims, batching, server.log_path)
        print(f"--inference-url {server.http_url}", flush=True)
        print(f"--inference-url {server.grpc_url}", flush=True)
        while not stop.wait(0.5):
            if not server.alive():
                logger.error("Triton exited by itself (code {}); log {}", server.proc.returncode if server.proc else None,
                             server.log_path)
                return 1
        logger.info("stopping Triton …")
        return 0
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
