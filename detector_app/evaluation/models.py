"""What each ``--model`` of ``eval`` is: a reference as the researcher has it (a name, a ``.pt``, an
export directory or file), a precision, and a name that tells it apart from the others in the table."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from detector_app.errors import UserError

PRECISIONS = ("auto", "fp32", "int8")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    ref: str  # what was given (``a.pt``, ``runs/x_openvino_model/``, ``yolo11n.pt``)
    precision: str  # auto | fp32 | int8
    name: str  # unique within one comparison

    @property
    def slug(self) -> str:
        """File-name-safe form of ``name`` (per-run detection files)."""
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in self.name)


def _split(ref: str) -> tuple[str, str | None]:
    """``model.pt@int8`` → (model.pt, int8): one variant per ``--model`` without a second flag."""
    base, sep, tail = ref.rpartition("@")
    if sep and tail in PRECISIONS:
        return base, tail
    return ref, None


def parse_models(refs: list[str], precisions: list[str] | None) -> list[ModelSpec]:
    """Every model at every ``--precision`` (``@int8`` on a model overrides), uniquely named."""
    precs = list(precisions or ["auto"])
    for p in precs:
        if p not in PRECISIONS:
            raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {p!r}")
    pairs: list[tuple[str, str]] = []
    for ref in refs:
        base, own = _split(ref)
        for p in [own] if own else precs:
            if (base, p) not in pairs:
                pairs.append((base, p))
    if not pairs:
        raise UserError("eval needs at least one --model")
    names = _unique_names([b for b, _ in pairs])
    several_precisions = {b: len({p for bb, p in pairs if bb == b}) > 1 for b, _ in pairs}
    specs = []
    for (base, p), name in zip(pairs, names, strict=True):
        if p != "auto" or several_precisions[base]:
            name = f"{name}@{p}"
        specs.append(ModelSpec(base, p, name))
    return specs


def _unique_names(refs: list[str]) -> list[str]:
    """The shortest path tail that differs: ``a/best.pt`` and ``b/best.pt`` become ``a/best.pt``, ``b/best.pt``."""
    parts = [Path(r.rstrip("/")).parts or (r,) for r in refs]
    depth = 1
    while True:
        names = ["/".join(p[-depth:]) for p in parts]
        clash = {n for n in names if sum(1 for m in names if m == n) > 1
                 and len({r for r, m in zip(refs, names, strict=True) if m == n}) > 1}
        if not clash or depth >= max(len(p) for p in parts):
            return names
        depth += 1


def model_bytes(path: str | Path | None) -> int | None:
    """Size on disk of a model file or export directory (None if it is not a local file)."""
    if path is None:
        return None
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return None
