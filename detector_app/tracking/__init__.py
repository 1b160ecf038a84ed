"""Tracking: per-stream ByteTrack ids on detections (``tracker``) and the track lifecycle (``book``)."""

from detector_app.tracking.book import (
    CONFIRM_HITS,
    LEFT_AFTER_S,
    SIDE_HYSTERESIS,
    SIDES,
    Track,
    TrackBook,
    TrackEvent,
    side_of,
)
from detector_app.tracking.tracker import BUFFER_S, Tracker, TrackerConfig

__all__ = [
    "BUFFER_S", "CONFIRM_HITS", "LEFT_AFTER_S", "SIDES", "SIDE_HYSTERESIS",
    "Track", "TrackBook", "TrackEvent", "Tracker", "TrackerConfig", "side_of",
]
