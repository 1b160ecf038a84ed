"""YUV → BGR for the frames we actually use.

For the common 4:2:0 case the planes are copied out of the ``av.VideoFrame`` and converted by
OpenCV instead of libswscale: the OpenCV window deadlocked when PyAV's swscale conversion ran on
the main thread next to Qt (measured: opencv-python 5.0 + av 18.1), and OpenCV's conversion is
also the cheaper one for this format.
"""

from __future__ import annotations

import av
import cv2
import numpy as np

_I420 = ("yuv420p", "yuvj420p")


def to_bgr(frame: av.VideoFrame) -> np.ndarray:
    if frame.format.name in _I420 and frame.width % 2 == 0 and frame.height % 2 == 0:
        i420 = frame.to_ndarray()  # (h * 3 / 2, w) planar copy, no swscale
        return cv2.cvtColor(i420, cv2.COLOR_YUV2BGR_I420)
    return frame.to_ndarray(format="bgr24")
