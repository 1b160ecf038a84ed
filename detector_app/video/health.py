"""Stream-health measurements taken at our ingest.

The MentraOS cloud never forwards stream stats to apps (protocol reference §4.4), so what the
decoder sees — frame rate, bitrate, how old frames are, drops — is our only health signal.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import asdict, dataclass


@dataclass(frozen=True, slots=True)
class StreamHealth:
    connected: bool
    publisher_sessions: int
    frames_decoded: int
    frames_skipped: int  # decoded but never handed to the detector (latest-frame-wins by design)
    decode_errors: int
    fps: float
    bitrate_kbps: float
    frame_age_ms: float | None  # age of the newest decoded frame right now
    stream_lag_ms: float | None  # how far decoding trails the stream's own clock (grows on backlog)
    width: int
    height: int
    codec: str
    first_frame_s: float | None  # session open → first decoded frame, last session
    last_error: str | None

    def to_json(self) -> dict:
        d = asdict(self)
        for k in ("fps", "bitrate_kbps", "frame_age_ms", "stream_lag_ms", "first_frame_s"):
            if d[k] is not None:
                d[k] = round(d[k], 3)
        return d

    def summary(self) -> str:
        age = "-" if self.frame_age_ms is None else f"{self.frame_age_ms:.0f} ms"
        return (
            f"{self.width}x{self.height} {self.codec} {self.fps:.1f} fps {self.bitrate_kbps / 1000:.2f} Mb/s "
            f"age {age} decoded {self.frames_decoded} skipped {self.frames_skipped}"
        )


class HealthMeter:
    """Thread-safe counters updated by the decode thread, read by anyone."""

    WINDOW_S = 2.0
    MAX_EVENTS = 4096  # a hard cap on top of the time window (≈ 2 s of 120 fps with 16 packets a frame)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frames: deque[float] = deque(maxlen=self.MAX_EVENTS)
        self._bytes: deque[tuple[float, int]] = deque(maxlen=self.MAX_EVENTS)
        self._bytes_sum = 0  # running sum of the window's packet sizes: snapshots are O(1)
        self.connected = False
        self.sessions = 0
        self.decoded = 0
        self.errors = 0
        self.skipped_source = lambda: 0
        self.width = 0
        self.height = 0
        self.codec = ""
        self.last_frame_at: float | None = None
        self.first_frame_s: float | None = None
        self.first_frame_wall: float | None = None  # time.time() of the very first frame
        self.last_error: str | None = None
        self._opened_at = 0.0
        self._lag_base: float | None = None
        self._lag_ms: float | None = None

    def session_started(self, codec: str, width: int, height: int) -> None:
        with self._lock:
            self.connected = True
            self.sessions += 1
            self.codec, self.width, self.height = codec, width, height
            self._opened_at = time.monotonic()
            self.first_frame_s = None
            self._lag_base = None

    def session_ended(self, error: str | None) -> None:
        with self._lock:
            self.connected = False
            if error:
                self.last_error = error

    def packet(self, size: int) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._bytes) == self._bytes.maxlen:
                self._bytes_sum -= self._bytes[0][1]  # append drops the oldest
            self._bytes.append((now, size))
            self._bytes_sum += size
            self._trim(now)

    def frame(self, pts: float | None, width: int, height: int) -> None:
        now = time.monotonic()
        with self._lock:
            self.decoded += 1
            self.width, self.height = width, height
            if self.first_frame_s is None:
                self.first_frame_s = now - self._opened_at
            if self.first_frame_wall is None:
                self.first_frame_wall = time.time()
            self.last_frame_at = now
            self._frames.append(now)
            if pts is not None:
                offset = now - pts
                # The smallest offset seen is "on time"; anything above it is lag behind the stream clock.
                if self._lag_base is None or offset < self._lag_base:
                    self._lag_base = offset
                self._lag_ms = (offset - self._lag_base) * 1000.0
            self._trim(now)

    def error(self, message: str) -> None:
        with self._lock:
            self.errors += 1
            self.last_error = message

    def _trim(self, now: float) -> None:
        while self._frames and now - self._frames[0] > self.WINDOW_S:
            self._frames.popleft()
        while self._bytes and now - self._bytes[0][0] > self.WINDOW_S:
            self._bytes_sum -= self._bytes.popleft()[1]

    def snapshot(self) -> StreamHealth:
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            span = min(self.WINDOW_S, now - self._frames[0]) if self._frames else 0.0
            fps = (len(self._frames) - 1) / span if len(self._frames) > 1 and span > 0 else 0.0
            nbytes = self._bytes_sum
            bspan = min(self.WINDOW_S, now - self._bytes[0][0]) if self._bytes else 0.0
            kbps = nbytes * 8 / 1000 / bspan if bspan > 0.2 else 0.0
            age = None if self.last_frame_at is None else (now - self.last_frame_at) * 1000.0
            return StreamHealth(
                connected=self.connected,
                publisher_sessions=self.sessions,
                frames_decoded=self.decoded,
                frames_skipped=int(self.skipped_source()),
                decode_errors=self.errors,
                fps=fps,
                bitrate_kbps=kbps,
                frame_age_ms=age,
                stream_lag_ms=self._lag_ms,
                width=self.width,
                height=self.height,
                codec=self.codec,
                first_frame_s=self.first_frame_s,
                last_error=self.last_error,
            )
