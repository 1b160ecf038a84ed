"""Each stream's newest frame as a JPEG with its boxes, made only while someone watches.

Viewers never get a queue of frames: a viewer asks for "the next frame newer than the one I have"
and gets the newest there is. One ``StreamEncoder`` per stream serves every viewer of it, so
``n`` browsers cost one encode, not ``n``; it encodes at most ``max_fps`` times a second (and all
streams together within one ``EncodeBudget``) and only when asked, in a worker thread (colour conversion, drawing and JPEG encoding release the GIL in OpenCV),
so the event loop stays free and detection is never waited on. A slow browser asks less often and
therefore gets fewer frames; what it gets is at most one encode period old.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from detector_app.detection.types import FrameResult
from detector_app.main_thread import LiveView
from detector_app.outputs.overlay import draw_detections
from detector_app.video.convert import to_bgr

MAX_BOX_AGE_S = 1.0  # as the window: a stalled detector leaves no stale boxes on a live picture
JPEG_QUALITY = 75
MAX_WIDTH = 1280  # wider frames are scaled down for the browser (720p, Mentra Live's default, is not)


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """One JPEG of a stream and when its picture was taken (wall clock)."""

    seq: int  # 1, 2, … per stream: a viewer asks for one newer than the seq it has
    jpeg: bytes
    frame_version: int  # the stream's frame version (``LiveView.latest_frame``)
    result_seq: int | None  # the detection drawn on it (None: no boxes)
    width: int
    height: int
    captured_at: float  # time.time() when the frame was decoded
    encoded_at: float
    boxes: int

    def meta(self) -> dict[str, Any]:
        """What the browser gets before the JPEG bytes (a text message)."""
        return {"type": "frame", "seq": self.seq, "width": self.width, "height": self.height,
                "captured_at": round(self.captured_at, 4), "encoded_at": round(self.encoded_at, 4),
                "boxes": self.boxes, "result_seq": self.result_seq, "bytes": len(self.jpeg)}


def render_jpeg(frame: Any, result: FrameResult | None, *, quality: int = JPEG_QUALITY,
                max_width: int = MAX_WIDTH) -> tuple[bytes, int, int]:
    """av.VideoFrame (or BGR array) + its boxes → JPEG bytes, width, height. Pure; runs in a worker."""
    bgr = to_bgr(frame) if not isinstance(frame, np.ndarray) else frame.copy()
    if result is not None:
        draw_detections(bgr, result.detections)
    h, w = bgr.shape[:2]
    if w > max_width:
        bgr = cv2.resize(bgr, (max_width, round(h * max_width / w)), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes(), bgr.shape[1], bgr.shape[0]


class EncodeBudget:
    """JPEG encodes per second for the whole viewer, all streams together: with many watched streams
    each gets a share, so the viewer's CPU stays bounded however many wearers and browsers there are.
    Used on one event loop (no lock)."""

    def __init__(self, per_second: float) -> None:
        self.interval = 1.0 / max(0.1, per_second)
        self._next = 0.0

    async def turn(self) -> None:
        """Wait for this encode's slot (slots are ``interval`` apart, first come first served)."""
        now = time.monotonic()
        start = max(now, self._next)
        self._next = start + self.interval
        if start > now:
            await asyncio.sleep(start - now)


class StreamEncoder:
    """The JPEG of one stream's newest frame, shared by its viewers; used on one event loop."""

    def __init__(self, view: LiveView, executor: Executor, *, max_fps: float = 10.0,
                 budget: EncodeBudget | None = None) -> None:
        self.view = view
        self.period = 1.0 / max(0.1, max_fps)
        self._executor = executor
        self._budget = budget
        self._latest: EncodedFrame | None = None
        self._inflight: asyncio.Future[EncodedFrame | None] | None = None
        self._started_at = -1e9  # monotonic start of the last encode (the rate cap)
        self.encodes = 0  # for tests and health: how many JPEGs were made

    def _current(self) -> tuple[int, Any, FrameResult | None]:
        version, frame = self.view.latest_frame()
        result = self.view.latest_result
        if result is not None and time.time() - result.done_at > MAX_BOX_AGE_S:
            result = None
        return version, frame, result

    def _stale(self, enc: EncodedFrame | None) -> bool:
        """Is there something newer to show than ``enc`` (a new frame, or new or expired boxes)?"""
        version, frame, result = self._current()
        if frame is None:
            return False
        return enc is None or version != enc.frame_version or (result.seq if result else None) != enc.result_seq

    async def next_after(self, seq: int) -> EncodedFrame:
        """The newest JPEG with ``.seq > seq``: the shared one while it is current or younger than one
        period, else a new encode (one at a time, at most ``max_fps``). Waits while the stream has no
        frame or nothing changed; cancel to give up."""
        while True:
            enc = self._latest
            if enc is not None and enc.seq > seq and (
                    time.monotonic() - self._started_at < self.period or not self._stale(enc)):
                return enc
            if self._inflight is None:
                wait = self._started_at + self.period - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
                if not self._stale(enc):
                    await asyncio.sleep(self.period)  # no frame yet, or nothing new: look again soon
                    continue
                self._inflight = asyncio.ensure_future(self._encode())
                self._inflight.add_done_callback(_seen)  # every viewer may have left before it failed
            inflight = self._inflight
            await asyncio.shield(inflight)  # a viewer that leaves does not cancel the others' encode

    async def _encode(self) -> EncodedFrame | None:
        self._started_at = time.monotonic()
        try:
            if self._budget is not None:
                await self._budget.turn()
            asked_at, age_ms = time.time(), self.view.health().frame_age_ms  # before the frame is read
            version, frame, result = self._current()
            if frame is None:
                return None
            loop = asyncio.get_running_loop()
            jpeg, w, h = await loop.run_in_executor(self._executor, render_jpeg, frame, result)
            now = time.time()
            seq = (self._latest.seq if self._latest else 0) + 1
            self._latest = EncodedFrame(
                seq=seq, jpeg=jpeg, frame_version=version, result_seq=result.seq if result else None,
                width=w, height=h, captured_at=asked_at - (age_ms or 0.0) / 1000.0,
                encoded_at=now, boxes=len(result.detections) if result else 0,
            )
            self.encodes += 1
            return self._latest
        finally:
            self._inflight = None


def _seen(done: asyncio.Future[Any]) -> None:
    """Mark an encode's failure as seen: the viewers waiting for it report it; none waiting is fine."""
    if not done.cancelled():
        done.exception()
