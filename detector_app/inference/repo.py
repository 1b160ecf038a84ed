"""A model repository for the official Triton Inference Server (ONNX Runtime backend).

``models export MODEL --triton-repo DIR`` writes ``DIR/NAME/config.pbtxt`` and ``DIR/NAME/1/model.onnx``:
fixed input shape, dynamic batching (when the export could be given a verified batch axis) and the class
names as ``parameters.metadata`` — a Python-literal dict, where both our ``--inference-url`` client and
Ultralytics' (``YOLO("http://host:8000/NAME", task="detect")``) read them. Serve it with
``tritonserver --model-repository DIR`` (the NGC container or any build with the onnxruntime backend).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from detector_app.inference.prepare import PreparedModel

DEFAULT_MAX_BATCH = 8
DEFAULT_QUEUE_DELAY_US = 5000  # measured: 4 CPU clients formed batches of 1.9 at 5 ms (field notes)


def _dims(dims: tuple[int, ...]) -> str:
    return ", ".join(str(d) for d in dims)


def config_pbtxt(m: PreparedModel, max_batch: int = DEFAULT_MAX_BATCH, queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
                 instances: int = 1) -> str:
    """The text-format ``ModelConfig`` for ``m`` (batch axis implicit when batching, explicit 1 otherwise)."""
    in_dims = m.input_dims if m.batched else (1, *m.input_dims)
    out_dims = m.output_dims if m.batched else (1, *m.output_dims)
    lines = [
        f'name: "{m.name}"',
        'backend: "onnxruntime"',
        f"max_batch_size: {max_batch if m.batched else 0}",
        f'input [ {{ name: "{m.input_name}" data_type: TYPE_FP32 dims: [ {_dims(in_dims)} ] }} ]',
        f'output [ {{ name: "{m.output_name}" data_type: TYPE_FP32 dims: [ {_dims(out_dims)} ] }} ]',
        f"instance_group [ {{ count: {instances} kind: KIND_CPU }} ]",
    ]
    if m.batched:
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {queue_delay_us} }}")
    # json.dumps escapes quotes and backslashes the way protobuf's text format reads them
    lines.append(f'parameters {{ key: "metadata" value {{ string_value: {json.dumps(m.metadata_literal)} }} }}')
    return "\n".join(lines) + "\n"


def write_triton_repo(m: PreparedModel, repo: Path, max_batch: int = DEFAULT_MAX_BATCH,
                      queue_delay_us: int = DEFAULT_QUEUE_DELAY_US, instances: int = 1) -> Path:
    """Write (or replace) ``repo/NAME``; returns that model directory."""
    model_dir = repo / m.name
    version = model_dir / "1"
    version.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(m.onnx, version / "model.onnx")
    (model_dir / "config.pbtxt").write_text(config_pbtxt(m, max_batch, queue_delay_us, instances))
    return model_dir
