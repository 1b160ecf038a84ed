"""Stopping child processes (publishers, relays, servers) so that nothing is left behind or hangs."""

from __future__ import annotations

import os
import signal
import subprocess


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
