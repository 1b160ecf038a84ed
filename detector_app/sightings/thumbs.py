"""A sighting's thumbnail: its best frame, scaled down, with the box drawn (``outputs.overlay``), as JPEG."""

from __future__ import annotations

import cv2
import numpy as np

from detector_app.detection.types import Box, Detection
from detector_app.outputs.overlay import draw_detections

MAX_SIDE = 640  # px: enough to recognise the animal in a list, ~30–60 KB
JPEG_QUALITY = 85


def thumbnail_jpeg(bgr: np.ndarray, detection: Detection, max_side: int = MAX_SIDE) -> bytes:
    """JPEG bytes of ``bgr`` (not modified) scaled to at most ``max_side`` with ``detection``'s box drawn."""
    h, w = bgr.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    img = cv2.resize(bgr, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA) if scale < 1 else bgr.copy()
    b = detection.box
    scaled = Detection(detection.label, detection.confidence, Box(b.x1 * scale, b.y1 * scale, b.x2 * scale, b.y2 * scale),
                       detection.class_id)
    draw_detections(img, [scaled])
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()
