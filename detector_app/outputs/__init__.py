"""Output sinks: each is ``sink(result: FrameResult) -> None`` called on the inference thread,
so each must return quickly (JSONL: one buffered line; feed: a thread-safe hand-off)."""

from detector_app.outputs.feed import ClientStats, DetectionFeed, FeedError
from detector_app.outputs.jsonl import JsonlError, JsonlWriter
from detector_app.outputs.schema import MESSAGE_SCHEMA, validate

__all__ = ["MESSAGE_SCHEMA", "ClientStats", "DetectionFeed", "FeedError", "JsonlError", "JsonlWriter", "validate"]
