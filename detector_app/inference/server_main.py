"""The Triton server process: PyTriton's bundled ``tritonserver`` serving one ONNX export via ONNX Runtime.

Runs in its own virtual environment (``.venv-triton``: ``nvidia-pytriton`` needs ``numpy<2``), started by
``detector-app inference-server`` as ``.venv-triton/bin/python server_main.py --onnx … --name …``. So it
imports only the standard library, NumPy, ONNX Runtime and PyTriton — never ``detector_app``.

Two things PyTriton does not do by itself (field notes):
- its Python stub loads the system ``libpython`` unless ``LD_LIBRARY_PATH`` starts with this interpreter's
  ``LIBDIR`` (else ``'_thread.RLock' object has no attribute '_recursion_count'``): re-exec with it set;
- it has no public way to set model-config ``parameters``; class names must be in
  ``parameters.metadata`` (where Ultralytics' client reads them), so they are added to the backend
  parameters PyTriton writes into ``config.pbtxt`` before the model is loaded.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import sysconfig
import threading
import time


def _ensure_libpython() -> None:
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    current = os.environ.get("LD_LIBRARY_PATH", "")
    if libdir and current.split(":")[0] != libdir:
        os.environ["LD_LIBRARY_PATH"] = f"{libdir}:{current}" if current else libdir
        os.execv(sys.executable, [sys.executable, *sys.argv])


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--onnx", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--metadata", default="", help="Python-literal dict: names, imgsz, ... (Ultralytics' export metadata)")
    p.add_argument("--batched", action="store_true", help="the ONNX has a dynamic batch axis")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--queue-delay-us", type=int, default=5000)
    p.add_argument("--instances", type=int, default=1)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (needs onnxruntime-gpu in this venv)")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--workspace", default=None, help="PyTriton's workspace (must not exist yet); default ~/.cache/pytriton")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    return p.parse_args(argv)


def _providers(device: str) -> list:
    import onnxruntime as ort

    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        print(f"ERROR --device {device}: this onnxruntime has no CUDAExecutionProvider "
              "(install onnxruntime-gpu into the Triton venv instead of onnxruntime)", flush=True)
        sys.exit(2)
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]


def _session(path: str, threads: int, device: str = "cpu"):  # noqa: ANN202 - onnxruntime.InferenceSession
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads must not burn a core
    return ort.InferenceSession(path, so, providers=_providers(device))


def main(argv: list[str]) -> int:
    _ensure_libpython()
    a = _args(argv)
    import numpy as np
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import DEFAULT_PROTECTED_ENDPOINTS, Triton, TritonConfig, TritonSecurityConfig

    sessions = [_session(a.onnx, a.threads, a.device) for _ in range(max(1, a.instances))]
    inp, out = sessions[0].get_inputs()[0], sessions[0].get_outputs()[0]
    in_shape = tuple(int(d) for d in inp.shape[1:])
    out_shape = tuple(int(d) if isinstance(d, int) else -1 for d in out.shape[1:])

    def make_infer(sess):  # noqa: ANN001, ANN202 - one callable per model instance
        @batch
        def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
            x = inputs[inp.name].astype(np.float32, copy=False)
            if a.batched:
                y = sess.run(None, {inp.name: x})[0]
            else:  # a static batch-1 export: still served, one item at a time
                y = np.concatenate([sess.run(None, {inp.name: x[i:i + 1]})[0] for i in range(len(x))])
            return {out.name: y}

        return infer

    config = TritonConfig(http_address=a.host, http_port=a.http_port, grpc_port=a.grpc_port,
                          metrics_port=a.metrics_port, exit_timeout_secs=2)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    # Statistics are read-only and tell the batch sizes (bench, sizing); model loading etc. stay token-protected.
    security = TritonSecurityConfig(restricted_endpoints=[e for e in DEFAULT_PROTECTED_ENDPOINTS if e != "statistics"])
    triton = Triton(config=config, security_config=security, workspace=a.workspace)
    try:
        triton.bind(
            model_name=a.name,
            infer_func=[make_infer(s) for s in sessions],
            inputs=[Tensor(name=inp.name, dtype=np.float32, shape=in_shape)],
            outputs=[Tensor(name=out.name, dtype=np.float32, shape=out_shape)],
            config=ModelConfig(max_batch_size=a.max_batch,
                               batcher=DynamicBatcher(max_queue_delay_microseconds=a.queue_delay_us)),
            strict=False,
        )
        if a.metadata:
            for model in triton._model_manager.models:  # no public API (see the module docstring)
                model._get_triton_model_config().backend_parameters["metadata"] = a.metadata
        triton.run()
        print(f"SERVING {a.name}", flush=True)
        while not stop.wait(0.5):
            if not triton.is_alive():
                print("ERROR tritonserver exited", flush=True)
                return 1
    finally:
        t0 = time.monotonic()
        triton.stop()
        print(f"STOPPED in {time.monotonic() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
