"""JSON Schema (draft 2020-12) of the messages on the WebSocket feed and in the JSONL log.

The schema is data, not just documentation: ``validate`` interprets the small subset of JSON Schema
used here, so the tests check real ``FrameResult.to_json()`` output against the *same* document
that clients read (docs/json-schema.md), and the two cannot silently drift apart.
No ``jsonschema`` dependency: the subset below is all we need.
"""

from __future__ import annotations

from typing import Any

from detector_app.detection.types import SCHEMA_VERSION

_NUMBER = {"type": "number"}

MESSAGE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://detector-app.local/schema/message-v2.json",
    "title": "detector-app feed / JSONL message",
    "description": "One JSON object per WebSocket text message or per JSONL line; dispatch on 'type'.",
    "oneOf": [{"$ref": "#/$defs/detections"}, {"$ref": "#/$defs/hello"}],
    "$defs": {
        "detections": {
            "description": "One inference on one sampled video frame.",
            "type": "object",
            "required": [
                "type", "schema", "seq", "frame_index", "pts", "stream_pts", "frame_size", "received_at",
                "done_at", "latency_ms", "inference_ms", "model", "source", "detections",
            ],
            "additionalProperties": False,
            "properties": {
                "type": {"const": "detections"},
                "schema": {"const": SCHEMA_VERSION},
                "seq": {"type": "integer", "minimum": 0,
                        "description": "Inference counter; gaps mean results were dropped."},
                "frame_index": {"type": "integer", "minimum": 0,
                                "description": "Index of the decoded frame in the stream."},
                "pts": {"type": ["number", "null"],
                        "description": "Media time in seconds since the first frame of this publisher session; "
                                       "the same for a file, RTMP and SRT replay of one recording. Null if unknown."},
                "stream_pts": {"type": ["number", "null"],
                               "description": "Raw presentation time as the transport carried it (MPEG-TS over "
                                              "SRT starts at ~1.4 s, FLV at 0), null if unknown."},
                "frame_size": {"type": "array", "prefixItems": [
                    {"type": "integer", "minimum": 1}, {"type": "integer", "minimum": 1}],
                    "minItems": 2, "maxItems": 2,
                    "description": "[width, height] of the source frame; boxes use these pixels."},
                "received_at": {**_NUMBER, "description": "Unix time the frame was decoded."},
                "done_at": {**_NUMBER, "description": "Unix time inference finished."},
                "latency_ms": {**_NUMBER, "description": "done_at - received_at, in ms."},
                "inference_ms": {"type": "number", "minimum": 0,
                                 "description": "Model time alone, in ms."},
                "model": {"type": "string"},
                "source": {"type": "string"},
                "detections": {"type": "array", "items": {"$ref": "#/$defs/detection"}},
                "extra": {"type": "object", "description": "Optional, free-form diagnostics."},
            },
        },
        "detection": {
            "type": "object",
            "required": ["label", "confidence", "box", "class_id", "track_id"],
            "additionalProperties": False,
            "properties": {
                "label": {"type": "string", "minLength": 1},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                "box": {"type": "array", "items": _NUMBER, "minItems": 4, "maxItems": 4,
                        "description": "[x1, y1, x2, y2] in source-frame pixels."},
                "class_id": {"type": "integer", "minimum": -1,
                             "description": "Model class index, -1 if not from a class list."},
                "track_id": {"type": ["integer", "null"], "minimum": 1,
                             "description": "The stream's tracker id: the same animal keeps it from frame to "
                                            "frame (a miss of up to 1 s keeps it; ids are unique per stream). "
                                            "Null with --no-track, or while a new track is not yet confirmed "
                                            "(its first sampled frame)."},
            },
        },
        "hello": {
            "description": "First message on every feed connection (never in JSONL).",
            "type": "object",
            "required": ["type", "schema", "model", "source"],
            "properties": {
                "type": {"const": "hello"},
                "schema": {"const": SCHEMA_VERSION},
                "model": {"type": "string"},
                "source": {"type": "string"},
            },
        },
    },
}

_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    node: Any = root
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def _check(value: Any, schema: dict[str, Any], path: str, root: dict[str, Any], errs: list[str]) -> None:
    schema = _resolve(schema, root)
    where = path or "$"
    if "const" in schema and value != schema["const"]:
        errs.append(f"{where}: expected {schema['const']!r}, got {value!r}")
        return
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_TYPES[t](value) for t in types):
            errs.append(f"{where}: expected {'/'.join(types)}, got {type(value).__name__}")
            return
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errs.append(f"{where}: {value} < minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errs.append(f"{where}: {value} > maximum {schema['maximum']}")
    if isinstance(value, str) and len(value) < schema.get("minLength", 0):
        errs.append(f"{where}: shorter than {schema['minLength']}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            errs.append(f"{where}: has {len(value)} items")
        prefix = schema.get("prefixItems", [])
        for i, item in enumerate(value):
            sub = prefix[i] if i < len(prefix) else schema.get("items")
            if sub is not None:
                _check(item, sub, f"{where}[{i}]", root, errs)
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                errs.append(f"{where}: missing {key!r}")
        for key, item in value.items():
            if key in props:
                _check(item, props[key], f"{where}.{key}", root, errs)
            elif schema.get("additionalProperties", True) is False:
                errs.append(f"{where}: unexpected field {key!r}")


def validate(msg: Any, schema: dict[str, Any] = MESSAGE_SCHEMA) -> list[str]:
    """Check one decoded message; returns human-readable errors (empty list = valid).

    ``oneOf`` is resolved by the ``type`` discriminator so errors name the right branch.
    """
    if not isinstance(msg, dict):
        return [f"$: expected object, got {type(msg).__name__}"]
    kind = msg.get("type")
    branch = schema.get("$defs", {}).get(kind) if isinstance(kind, str) else None
    if branch is None or {"$ref": f"#/$defs/{kind}"} not in schema.get("oneOf", []):
        return [f"$.type: unknown message type {kind!r}"]
    errs: list[str] = []
    _check(msg, branch, "", schema, errs)
    return errs
