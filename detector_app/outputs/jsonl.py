"""JSONL sink: one ``FrameResult.to_json()`` object per line, flushed per line so ``tail -f`` works."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import TracebackType

from loguru import logger

from detector_app.detection.types import FrameResult
from detector_app.errors import UserError


class JsonlError(UserError):
    """The JSONL file cannot be created or opened for writing (``errno`` says why)."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class JsonlWriter:
    """Append (or truncate with ``append=False``) detection results to ``path``.

    The file is opened in ``__init__`` so a bad path fails at startup, not on the first detection.
    Write errors later (disk full, ...) are logged once and counted, never raised into the inference
    thread: losing the log must not stop detection.
    """

    def __init__(self, path: str | Path, *, append: bool = True) -> None:
        self.path = Path(path).expanduser()
        self.lines = 0
        self.errors = 0
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # buffering=1: line-buffered text I/O, every '\n' reaches the OS immediately.
            self._fh = open(self.path, "a" if append else "w", buffering=1, encoding="utf-8")  # noqa: SIM115
        except OSError as e:
            raise JsonlError(f"cannot write detections to {self.path}: {e.strerror or e}", e.errno) from e
        logger.info("writing detections to {}", self.path)

    def write(self, result: FrameResult) -> None:
        line = json.dumps(result.to_json(), separators=(",", ":"), allow_nan=False) + "\n"
        with self._lock:
            if self._fh.closed:
                return
            try:
                self._fh.write(line)
                self.lines += 1
            except (OSError, ValueError) as e:
                self.errors += 1
                if self.errors == 1:
                    logger.error("JSONL write to {} failed (further errors counted only): {}", self.path, e)

    __call__ = write

    def close(self) -> None:
        with self._lock:
            if not self._fh.closed:
                self._fh.close()

    @property
    def closed(self) -> bool:
        return self._fh.closed

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
