"""Stopping child processes (publishers, relays, servers) so that nothing is left behind or hangs; naming threads."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading

try:  # loaded once in the parent: dlopen() in a forked child of a threaded process can deadlock
    _LIBC: ctypes.CDLL | None = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:  # not glibc Linux: no thread names, no parent-death signal (children are still stopped explicitly)
    _LIBC = None
_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGTERM this child if its parent dies (``preexec_fn``), so a crashed simulator or a
    killed soak run leaves no orphans."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def name_os_thread(name: str | None = None) -> None:
    """Give the calling thread its Python name in the kernel too (``top -H``, ``/proc/PID/task/*/comm``).

    Python threads all show the process name there, which makes a per-thread CPU reading of a running
    ``serve`` useless; the kernel keeps 15 bytes.
    """
    if _LIBC is None:
        return
    raw = (name or threading.current_thread().name).encode("utf-8", "replace")[:15]
    _LIBC.prctl(_PR_SET_NAME, ctypes.c_char_p(raw), 0, 0, 0)


def stop_process(proc: subprocess.Popen, grace: float = 3.0, group: bool = False, kill_wait: float = 5.0) -> int | None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; reaps within ``grace + kill_wait``. ``group``
    signals the whole process group (children started with ``start_new_session=True``). Returns the
    exit code (None only if even SIGKILL did not end it in time)."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, kill_wait)):
        if proc.poll() is not None and not group:
            break
        try:
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    return proc.poll()
