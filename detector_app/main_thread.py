"""Drive a running pipeline from the main thread: the OpenCV window, or headless waiting.

OpenCV windows must live on the main thread, so this is where the main thread spends a run. Both
paths end on the same conditions (source finished, a caller's predicate, Ctrl-C) and never hang.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from loguru import logger

from detector_app.pipeline import Pipeline


def hud_lines(pipeline: Pipeline) -> list[str]:
    h = pipeline.health()
    r = pipeline.latest_result
    age = "-" if h.frame_age_ms is None else f"{h.frame_age_ms:.0f} ms"
    lines = [
        f"stream {h.width}x{h.height} {h.fps:.1f} fps {h.bitrate_kbps / 1000:.2f} Mb/s",
        f"detections {pipeline.stats.rate:.1f}/s  infer {r.inference_ms:.0f} ms" if r else "detections -",
        f"frame age {age}  latency {r.latency_ms:.0f} ms" if r else f"frame age {age}",
        f"model {pipeline.detector.description}",
    ]
    if not h.connected:
        lines.append("waiting for publisher…")
    return lines


def run_main_loop(
    pipeline: Pipeline,
    headless: bool,
    until: Callable[[], bool],
    title: str = "detector-app",
) -> str:
    """Block until ``until()`` is true, the window is closed, or Ctrl-C. Returns the reason."""
    if not headless:
        from detector_app.outputs.window import PreviewWindow, display_available, run_display_loop

        if not display_available():
            logger.warning("No display available (no $DISPLAY / GUI backend): running headless")
            headless = True
        else:
            slot = pipeline.slot

            def get_frame():
                got = slot.peek()
                return (0, None) if got is None else (got.version, got.item.frame)

            try:
                reason = run_display_loop(
                    get_frame=get_frame,
                    get_result=lambda: pipeline.latest_result,
                    hud=lambda: hud_lines(pipeline),
                    should_stop=until,
                    fps_hint=lambda: pipeline.health().fps or 30.0,
                    window=PreviewWindow(title),
                )
                return "finished" if reason == "stopped" else reason  # "stopped": our own condition ended it
            except KeyboardInterrupt:
                return "interrupted"
    try:
        while not until():
            time.sleep(0.05)
        return "finished"
    except KeyboardInterrupt:
        return "interrupted"


def follow_streams(
    get_service: Callable[[], Any], headless: bool, should_stop: Callable[[], bool], title: str = "detector-app"
) -> str:
    """Show the newest glasses stream of a ``DetectionService``; follow it when a session's stream is
    replaced (reconnect, resurrection, another user). ``get_service`` may return None while the model loads."""
    while not should_stop():
        service = get_service()
        streams = service.streams() if service is not None else []
        if not streams:
            time.sleep(0.05)
            continue
        stream = streams[-1]

        def until(stream: Any = stream, service: Any = service) -> bool:
            return should_stop() or stream.closed or service.streams()[-1:] != [stream]

        reason = run_main_loop(stream.pipeline, headless, until, title=title)
        if reason in ("interrupted", "user-quit", "window-closed"):
            return reason
    return "finished"


def join_bounded(thread: threading.Thread, timeout: float) -> None:
    """Join, but let a second Ctrl-C through only as a warning: the shutdown is bounded anyway."""
    deadline = time.monotonic() + timeout
    while thread.is_alive() and time.monotonic() < deadline:
        try:
            thread.join(min(0.5, max(0.0, deadline - time.monotonic())))
        except KeyboardInterrupt:
            logger.warning("still stopping (bounded by timeouts)…")


def install_signal_handlers(stop: threading.Event) -> dict[int, Any]:
    """SIGINT/SIGTERM set ``stop`` (no exception in the middle of OpenCV or a join); only possible
    on the main thread — elsewhere Ctrl-C stays a KeyboardInterrupt, which is handled too."""
    previous: dict[int, Any] = {}
    if threading.current_thread() is not threading.main_thread():
        return previous

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            logger.warning("{} again: still stopping (bounded by timeouts)", signal.Signals(signum).name)
        else:
            logger.info("{} received", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    return previous


def restore_signal_handlers(previous: dict[int, Any]) -> None:
    for sig, h in previous.items():
        signal.signal(sig, h)
