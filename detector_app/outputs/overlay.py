"""Pure drawing on BGR uint8 frames (in place; the array is also returned for chaining).

Boxes are in source-frame pixels, i.e. the pixels of the frame being drawn, so no rescaling here.
Sizes scale with the frame so labels stay legible from 480p to 4K.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence

import cv2
import numpy as np

from detector_app.detection.types import Detection

Color = tuple[int, int, int]
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def label_color(label: str) -> Color:
    """Stable colour per label (crc32, not ``hash()``, which is salted per process)."""
    hue = zlib.crc32(label.encode("utf-8")) % 180
    b, g, r = cv2.cvtColor(np.uint8([[[hue, 220, 255]]]), cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def _text_color(bg: Color) -> Color:
    b, g, r = bg
    return (0, 0, 0) if 0.114 * b + 0.587 * g + 0.299 * r > 140 else (255, 255, 255)


def _scale(frame: np.ndarray) -> float:
    return max(frame.shape[0], frame.shape[1]) / 1000.0


def draw_detections(bgr: np.ndarray, detections: Iterable[Detection],
                    colors: Mapping[str, Color] | None = None, *,
                    thickness: int | None = None, font_scale: float | None = None) -> np.ndarray:
    """Boxes plus "cat #3 0.87" tags (``#id`` when tracked); a dark outline and a filled tag keep them readable."""
    h, w = bgr.shape[:2]
    s = _scale(bgr)
    th = thickness or max(1, round(2 * s))
    fs = font_scale or max(0.4, 0.6 * s)
    fth = max(1, round(th / 2 + 0.5))
    for det in detections:
        b = det.box
        if b.x2 <= 0 or b.y2 <= 0 or b.x1 >= w or b.y1 >= h or b.x2 <= b.x1 or b.y2 <= b.y1:
            continue  # entirely outside or degenerate
        # Clamp to a margin just outside the frame: cv2 clips, but huge coords overflow int32.
        x1, y1 = int(max(b.x1, -th)), int(max(b.y1, -th))
        x2, y2 = int(min(b.x2, w + th)), int(min(b.y2, h + th))
        color = (colors or {}).get(det.label) or label_color(det.label)
        cv2.rectangle(bgr, (x1, y1), (x2, y2), (0, 0, 0), th + 2, cv2.LINE_AA)
        cv2.rectangle(bgr, (x1, y1), (x2, y2), color, th, cv2.LINE_AA)

        tag = det.label if det.track_id is None else f"{det.label} #{det.track_id}"
        text = f"{tag} {det.confidence:.2f}"
        (tw, th_), base = cv2.getTextSize(text, _FONT, fs, fth)
        pad = max(2, th)
        tag_h = th_ + base + 2 * pad
        tx = min(max(x1, 0), max(0, w - tw - 2 * pad))
        ty = y1 - tag_h if y1 - tag_h >= 0 else max(0, y1)  # above the box, else inside its top
        ty = min(ty, max(0, h - tag_h))
        cv2.rectangle(bgr, (tx, ty), (tx + tw + 2 * pad, ty + tag_h), color, cv2.FILLED)
        cv2.putText(bgr, text, (tx + pad, ty + pad + th_), _FONT, fs, _text_color(color), fth, cv2.LINE_AA)
    return bgr


def draw_hud(bgr: np.ndarray, lines: Sequence[str], *, origin: tuple[int, int] = (8, 8),
             alpha: float = 0.6, font_scale: float | None = None) -> np.ndarray:
    """Status lines on a darkened panel at the top-left (white on <=40% brightness is always legible)."""
    lines = [ln for ln in lines if ln]
    if not lines:
        return bgr
    h, w = bgr.shape[:2]
    s = _scale(bgr)
    fs = font_scale or max(0.4, 0.55 * s)
    fth = max(1, round(1.2 * s))
    sizes = [cv2.getTextSize(ln, _FONT, fs, fth) for ln in lines]
    line_h = max(sz[0][1] + sz[1] for sz in sizes) + max(4, round(6 * s))
    pad = max(4, round(8 * s))
    ox, oy = origin
    x1, y1 = max(0, ox), max(0, oy)
    x2 = min(w, ox + max(sz[0][0] for sz in sizes) + 2 * pad)
    y2 = min(h, oy + line_h * len(lines) + pad)
    if x2 > x1 and y2 > y1:
        roi = bgr[y1:y2, x1:x2]
        bgr[y1:y2, x1:x2] = cv2.convertScaleAbs(roi, alpha=1.0 - alpha)
    for i, ln in enumerate(lines):
        baseline_y = oy + pad + i * line_h + sizes[i][0][1]
        cv2.putText(bgr, ln, (ox + pad, baseline_y), _FONT, fs, (255, 255, 255), fth, cv2.LINE_AA)
    return bgr
