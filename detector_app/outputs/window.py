"""Live preview window. OpenCV HighGUI (Qt backend here) is only safe on the MAIN thread, so the
pipeline runs in worker threads and the main thread runs ``run_display_loop``.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
from loguru import logger

from detector_app.detection.types import FrameResult
from detector_app.outputs.overlay import draw_detections, draw_hud
from detector_app.video.convert import to_bgr

_QUIT_KEYS = {ord("q"), ord("Q"), 27}
HUD_PERIOD_S = 0.25  # HUD text is refreshed 4×/s, not on every redraw (up to 60/s)


def _x11_reachable(display: str) -> bool:
    """Cheap check before touching Qt: with an unreachable $DISPLAY, Qt aborts the process
    (qFatal) instead of raising, so try/except around namedWindow alone is not enough."""
    host, _, rest = display.partition(":")
    num = rest.split(".")[0]
    if not num.isdigit():
        return False
    if host in ("", "unix") and os.path.exists(f"/tmp/.X11-unix/X{num}"):
        return True
    try:  # TCP display (ssh -X forwards as localhost:10.0), or abstract-socket local display
        with socket.create_connection((host or "127.0.0.1", 6000 + int(num)), timeout=0.3):
            return True
    except OSError:
        return host in ("", "unix") and sys.platform.startswith("linux") and _abstract_x11(num)


def _abstract_x11(num: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(0.3)
        s.connect(f"\0/tmp/.X11-unix/X{num}")
        return True
    except OSError:
        return False
    finally:
        s.close()


def _wayland_capable() -> bool:
    """opencv-python's bundled Qt ships only the xcb (X11) plugin: on pure Wayland it would abort."""
    qt_platforms = os.path.join(os.path.dirname(cv2.__file__), "qt", "plugins", "platforms")
    if os.path.isdir(qt_platforms):
        return any("wayland" in f for f in os.listdir(qt_platforms))
    return True  # system Qt/GTK build: let namedWindow decide


def display_available() -> bool:
    """True if a preview window can be opened here; callers fall back to headless otherwise."""
    if sys.platform.startswith("linux"):
        display, wayland = os.environ.get("DISPLAY"), os.environ.get("WAYLAND_DISPLAY")
        if not display and not wayland:
            return False
        x11_ok = bool(display) and _x11_reachable(display)
        if not x11_ok and not (wayland and _wayland_capable()):
            return False
    # opencv-python's Qt ships no fonts; point it at the system's to avoid a warning per window.
    if not os.path.isdir(os.environ.get("QT_QPA_FONTDIR", "")) and os.path.isdir("/usr/share/fonts"):
        os.environ["QT_QPA_FONTDIR"] = "/usr/share/fonts"
    probe = "detector-app-probe"
    try:
        cv2.namedWindow(probe, cv2.WINDOW_AUTOSIZE)
        cv2.destroyWindow(probe)
        cv2.waitKey(1)
        return True
    except cv2.error as e:  # headless build: "The function is not implemented"
        logger.debug("no OpenCV GUI backend: {}", e)
        return False


class PreviewWindow:
    """One resizable window; ``show`` pumps GUI events and reports whether to keep going."""

    def __init__(self, title: str = "detector-app", max_width: int = 1280) -> None:
        self.title = title
        self.max_width = max_width
        self.stop_reason: str | None = None
        self._created = False

    def show(self, bgr: np.ndarray) -> bool:
        """Display one frame; False once the user pressed q/Q/Esc or closed the window."""
        if self.stop_reason:
            return False
        if not self._created:
            cv2.namedWindow(self.title, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO | cv2.WINDOW_GUI_NORMAL)
            h, w = bgr.shape[:2]
            scale = min(1.0, self.max_width / w)  # WINDOW_NORMAL opens small under Qt: size it to the video
            cv2.resizeWindow(self.title, int(w * scale), int(h * scale))
        cv2.imshow(self.title, bgr)
        key = cv2.waitKey(1) & 0xFF
        if key in _QUIT_KEYS:
            self.stop_reason = "user-quit"
        elif self._created and cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
            self.stop_reason = "window-closed"
        self._created = True
        return self.stop_reason is None

    def close(self) -> None:
        if self._created:
            try:
                cv2.destroyWindow(self.title)
                cv2.waitKey(1)
            except cv2.error:
                pass
            self._created = False


def _to_bgr(frame: Any) -> np.ndarray:
    if isinstance(frame, np.ndarray):
        return frame  # never drawn on: each tick draws on a copy
    return to_bgr(frame)  # av.VideoFrame


def run_display_loop(get_frame: Callable[[], tuple[int, Any]],
                     get_result: Callable[[], FrameResult | None],
                     hud: Callable[[], list[str]],
                     should_stop: Callable[[], bool],
                     fps_hint: Callable[[], float],
                     *, window: PreviewWindow | None = None,
                     max_box_age_s: float = 1.0) -> str:
    """Main-thread loop: redraw at the stream's frame rate until quit/close/stop; returns why.

    ``get_frame`` returns ``(version, av.VideoFrame | ndarray | None)``; a frame is converted to BGR
    only when its version changes. Boxes older than ``max_box_age_s`` are hidden so a stalled
    detector does not leave stale boxes on a live picture. The HUD text is asked for every
    ``HUD_PERIOD_S``, so each redraw costs the same however long the run.
    """
    win = window or PreviewWindow()
    last_version: int | None = None
    base: np.ndarray | None = None
    hud_text: list[str] = []
    hud_at = -HUD_PERIOD_S
    try:
        while not should_stop():
            t0 = time.monotonic()
            if t0 - hud_at >= HUD_PERIOD_S:
                hud_text, hud_at = hud(), t0
            version, frame = get_frame()
            if frame is not None and version != last_version:
                base, last_version = _to_bgr(frame), version
            if base is not None:
                canvas = base.copy()
                result = get_result()
                if result is not None and time.time() - result.done_at <= max_box_age_s:
                    draw_detections(canvas, result.detections)
                draw_hud(canvas, hud_text)
                if not win.show(canvas):
                    return win.stop_reason or "window-closed"
            fps = fps_hint()
            period = 1.0 / min(60.0, max(1.0, fps)) if fps and fps > 0 else 1.0 / 30.0
            time.sleep(max(0.0, period - (time.monotonic() - t0)))
        return "stopped"
    finally:
        win.close()
