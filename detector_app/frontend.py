"""Drive a running pipeline from the main thread: the OpenCV window, or headless waiting.

OpenCV windows must live on the main thread, so this is where the main thread spends a run. Both
paths end on the same conditions (source finished, a caller's predicate, Ctrl-C) and never hang.
"""

from __future__ import annotations

import time
from collections.abc import Callable

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
                return run_display_loop(
                    get_frame=get_frame,
                    get_result=lambda: pipeline.latest_result,
                    hud=lambda: hud_lines(pipeline),
                    should_stop=until,
                    fps_hint=lambda: pipeline.health().fps or 30.0,
                    window=PreviewWindow(title),
                )
            except KeyboardInterrupt:
                return "interrupted"
    try:
        while not until():
            time.sleep(0.05)
        return "finished"
    except KeyboardInterrupt:
        return "interrupted"
