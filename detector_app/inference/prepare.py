"""What a Triton server serves for a ``--model``: the cached ONNX export, with a batch axis where it is safe.

Both ``inference-server`` and ``models export --triton-repo`` start here, so a repository and a local
server serve the same graph with the same metadata. The export comes from the existing cache
(``resolve_model(..., backend="onnx", precision="fp32")``: made once in a child process); the batched copy
is kept in ``models/cache/triton/``. The metadata is the export's own (names, imgsz, stride, end2end…),
as a Python-literal dict, which is what Ultralytics' Triton client reads from ``parameters.metadata``.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger

from detector_app.inference.batching import BatchingError, batch_dynamic_onnx

DEFAULT_FRAME_SIZE = (1280, 720)  # Mentra Live streams 16:9


@dataclass(frozen=True, slots=True)
class PreparedModel:
    """One ONNX file ready to serve, and what a config needs to describe it."""

    name: str  # the Triton model name (the last part of --inference-url)
    onnx: Path
    batched: bool  # dynamic batch axis: Triton may batch requests of several streams
    input_name: str
    input_dims: tuple[int, ...]  # without the batch axis, e.g. (3, 384, 640)
    output_name: str
    output_dims: tuple[int, ...]
    metadata: dict[str, Any]

    @property
    def metadata_literal(self) -> str:
        return repr(self.metadata)


def model_name_for(model: str) -> str:
    """A Triton model name from a file name: letters, digits, dots, underscores and dashes only."""
    stem = Path(model.rstrip("/")).name
    for suffix in (".pt", ".onnx", "_openvino_model"):
        stem = stem.removesuffix(suffix)
    return re.sub(r"[^A-Za-z0-9._-]", "-", stem) or "model"


def _literal(v: str) -> Any:
    try:
        return ast.literal_eval(v)
    except (ValueError, SyntaxError):
        return v


def _dims(value_info: Any) -> tuple[int, ...]:
    return tuple(int(d.dim_value) if d.dim_value else -1 for d in value_info.type.tensor_type.shape.dim)


def prepare_model(model: str, *, imgsz: int | None = None, frame_size: tuple[int, int] | None = None,
                  cache_dir: Path | None = None, name: str | None = None, progress: bool = True) -> PreparedModel:
    """Export (or reuse) the fp32 ONNX of ``model`` and give it a verified batch axis where possible."""
    import onnx

    from detector_app.detection.detector import PROJECT_ROOT, locate_model
    from detector_app.detection.resolve import resolve_model

    cache = cache_dir or PROJECT_ROOT / "models" / "cache"
    resolved = resolve_model(locate_model(model), backend="onnx", precision="fp32",
                             frame_size=frame_size or DEFAULT_FRAME_SIZE, imgsz=imgsz, cache_dir=cache,
                             progress=progress)
    src = Path(resolved.path)
    graph = onnx.load(str(src), load_external_data=False)
    meta = {p.key: _literal(p.value) for p in graph.metadata_props}
    meta = {k: v for k, v in meta.items() if k in ("names", "imgsz", "stride", "task", "end2end", "batch",
                                                  "channels", "description", "version")}
    inp, out = graph.graph.input[0], graph.graph.output[0]
    batched_file = cache / "triton" / f"{src.parent.name}-{src.stem}-batch.onnx"
    try:
        served, batched = batch_dynamic_onnx(src, batched_file), True
    except BatchingError as exc:
        logger.warning("{}; served without dynamic batching (one request per execution)", exc)
        served, batched = src, False
    return PreparedModel(
        name=name or model_name_for(model), onnx=served, batched=batched, input_name=inp.name,
        input_dims=_dims(inp)[1:], output_name=out.name, output_dims=_dims(out)[1:], metadata=meta,
    )
