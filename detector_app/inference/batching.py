"""Give a static batch-1 YOLO ONNX export a dynamic batch axis, so Triton's dynamic batcher can use it.

Our exports are static (``dynamic=False, batch=1``, the lean path wants fixed shapes), and the tracer bakes
the batch size into every ``Reshape`` target (``[1, 64, -1]``). Triton batches along axis 0 and needs it to
be variable, so the input/output batch dims become a symbol and each ``Reshape`` target's leading ``1``
becomes ``0`` ("copy the input's dim", ONNX's default ``allowzero=0``): in YOLO every tensor keeps the batch
first. The result is checked, not trusted: a batch of two must equal two single runs (ONNX Runtime),
otherwise ``BatchingError`` says so and callers serve the model without batching. Torch-free (``onnx``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from detector_app.errors import UserError

BATCH_DIM = "batch"
CHECK_TOL = 1e-3


class BatchingError(UserError):
    """The export cannot be given a batch axis safely (its graph depends on batch size 1)."""


def _rewrite(model) -> int:  # noqa: ANN001 - onnx.ModelProto
    from onnx import numpy_helper

    g = model.graph
    for vi in (*g.input, *g.output):
        dim0 = vi.type.tensor_type.shape.dim[0]
        dim0.ClearField("dim_value")
        dim0.dim_param = BATCH_DIM
    del g.value_info[:]  # shapes inferred for batch 1 would contradict the new axis
    inits = {t.name: t for t in g.initializer}
    consts = {n.output[0]: n for n in g.node if n.op_type == "Constant"}
    changed = 0
    for node in g.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        name = node.input[1]
        if name in inits:
            arr = numpy_helper.to_array(inits[name]).copy()
            if arr.ndim == 1 and arr.size >= 2 and arr[0] == 1:
                arr[0] = 0
                inits[name].CopyFrom(numpy_helper.from_array(arr, name))
                changed += 1
        elif name in consts:
            attr = next(a for a in consts[name].attribute if a.name == "value")
            arr = numpy_helper.to_array(attr.t).copy()
            if arr.ndim == 1 and arr.size >= 2 and arr[0] == 1:
                arr[0] = 0
                attr.t.CopyFrom(numpy_helper.from_array(arr, attr.t.name))
                changed += 1
    return changed


def _check(path: Path, input_hw: tuple[int, int]) -> float:
    """Largest difference between a batch of two and two single runs."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, *input_hw), dtype=np.float32)
    both = sess.run(None, {name: x})[0]
    singles = np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(2)])
    if both.shape != singles.shape:
        return float("inf")
    return float(np.abs(both - singles).max())


def batch_dynamic_onnx(src: Path, dst: Path) -> Path:
    """Write ``src`` with a dynamic batch axis to ``dst`` (kept if already there), verified; returns ``dst``."""
    import onnx

    if dst.exists():
        return dst
    model = onnx.load(str(src))
    inp = model.graph.input[0].type.tensor_type.shape.dim
    hw = (int(inp[2].dim_value), int(inp[3].dim_value))
    _rewrite(model)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    onnx.save(model, str(tmp))
    try:
        diff = _check(tmp, hw)
    except Exception as exc:  # noqa: BLE001 - the runtime rejects the rewritten graph: not batchable
        tmp.unlink(missing_ok=True)
        raise BatchingError(f"{src.name} cannot run batched ({' '.join(str(exc).split())[:200]})") from None
    if diff > CHECK_TOL:
        tmp.unlink(missing_ok=True)
        raise BatchingError(f"{src.name} gives different answers batched (max diff {diff:.2g})")
    tmp.replace(dst)
    return dst
