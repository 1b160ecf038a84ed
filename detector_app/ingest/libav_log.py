"""Route FFmpeg's log lines (forwarded by PyAV to ``logging``) into loguru, and watch for key mismatches.

FFmpeg's RTMP listener accepts *any* stream name and only logs
``Unexpected stream WRONGKEY, expecting rightkey`` (field notes). That line is our only signal that
a publisher used the wrong key, so it is captured here and looked up by the expected key, which is
unique per listener.
"""

from __future__ import annotations

import logging
import re
import threading
import time

import av.logging
from loguru import logger

_UNEXPECTED = re.compile(r"Unexpected stream (\S*), expecting (\S+)")
_MISMATCH_TTL_S = 60.0  # a listener pops its mismatch within a poll (≤ 2 s); closed listeners never do


class _Router(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self._lock = threading.Lock()
        self._mismatch: dict[str, tuple[str, float]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        m = _UNEXPECTED.search(msg)
        if m:
            now = time.monotonic()
            with self._lock:
                self._mismatch = {k: v for k, v in self._mismatch.items() if now - v[1] < _MISMATCH_TTL_S}
                self._mismatch[m.group(2)] = (m.group(1), now)
            return
        # Our own code reports what matters (with context); FFmpeg's lines are detail for --log-level DEBUG.
        logger.debug("[{}] {}", record.name, msg.strip())

    def pop_mismatch(self, expected_key: str) -> str | None:
        with self._lock:
            got = self._mismatch.pop(expected_key, None)
        return None if got is None else got[0]


_router: _Router | None = None
_install_lock = threading.Lock()


def install() -> _Router:
    """Idempotently make libav warnings reach Python (needed for the key check)."""
    global _router
    with _install_lock:
        if _router is None:
            _router = _Router()
            lg = logging.getLogger("libav")
            lg.addHandler(_router)
            lg.setLevel(logging.DEBUG)
            lg.propagate = False
            av.logging.set_level(av.logging.WARNING)
        return _router


def pop_key_mismatch(expected_key: str) -> str | None:
    """The wrong stream name a publisher used against ``expected_key`` since the last call, if any."""
    return install().pop_mismatch(expected_key)
