"""MentraOS app ⇄ cloud wire messages: builders for what we send, parsers for what we receive.

Pure functions on plain dicts (JSON objects), no I/O, so every message of the protocol reference
(/work/shared/docs/mentraos-protocol.md) is unit-testable and both cloud generations are handled in one
place: [A]/[B] (``augmentosSettings``, ``rtmp_stream_status``, ``rtmpUrl``, ``connection_error``) and
[D] (``mentraosSettings``, duplicate ``stream_status``, ``streamUrl``, ``pong``). Unknown message types
parse to ``None`` and are ignored by callers, never raised as errors.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode, urlsplit

# ---------------------------------------------------------------------------------------------
# helpers

STREAM_STATUSES = ("initializing", "active", "stopping", "stopped", "timeout")

# Glasses' raw status → what the cloud reports (§4.4). Applied defensively in case a cloud
# ever forwards raw values; anything unknown (error, reconnect_failed, ...) means stopped.
_STATUS_MAP = {
    "initializing": "initializing",
    "connecting": "initializing",
    "reconnecting": "initializing",
    "active": "active",
    "streaming": "active",
    "reconnected": "active",
    "stopping": "stopping",
    "stopped": "stopped",
    "disconnected": "stopped",
    "timeout": "timeout",
}

STATUS_TYPES = ("rtmp_stream_status", "stream_status")


def now_iso() -> str:
    """ISO-8601 UTC timestamp like JS ``new Date().toISOString()``."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def normalize_status(raw: Any) -> str:
    return _STATUS_MAP.get(str(raw).lower(), "stopped")


_URL_FIELDS = ("rtmpUrl", "streamUrl")


def url_for_log(url: str) -> str:
    """Scheme and host only: an ingest URL's path/query carries the stream key."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/…"


def redact(message: dict[str, Any]) -> dict[str, Any]:
    """Copy of ``message`` safe to log: the API key and stream keys (in ingest URLs) are masked."""
    if "apiKey" not in message and not any(isinstance(message.get(f), str) for f in _URL_FIELDS):
        return message
    out = dict(message)
    if "apiKey" in out:
        out["apiKey"] = "**********"
    for f in _URL_FIELDS:
        if isinstance(out.get(f), str):
            out[f] = url_for_log(out[f])
    return out


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


# ---------------------------------------------------------------------------------------------
# app → cloud builders


def connection_init(package_name: str, session_id: str, api_key: str) -> dict[str, Any]:
    """First frame on every (re)connection. No ``sdkVersion``: ≥3 would switch the cloud to v3 (§3.2)."""
    return {
        "type": "tpa_connection_init",
        "packageName": package_name,
        "sessionId": session_id,
        "apiKey": api_key,
        "timestamp": now_iso(),
    }


# What our client calls itself in the v3 handshake: the cloud only reads the major version (`isV3Sdk`, §3.2).
V3_SDK_VERSION = "3.0.0"
MAX_RECONNECT_DEFER_S = 120.0  # a `reconnect_deferred` extends the wait for the ack by at most this


def connection_init_v3(package_name: str, api_key: str) -> dict[str, Any]:
    """The 3.x SDK's init (docs/mentraos-3x.md): no ``sessionId`` — the upgrade headers name the session —
    and ``sdkVersion`` ≥ 3, which gives us the v3 semantics (``reconnect``, stream state pushed on connect)."""
    return {
        "type": "tpa_connection_init",
        "packageName": package_name,
        "apiKey": api_key,
        "sdkVersion": V3_SDK_VERSION,
        "timestamp": now_iso(),
    }


def v3_headers(package_name: str, session_id: str, user_id: str | None, api_key: str) -> dict[str, str]:
    """WebSocket upgrade headers of a 3.x SDK session (``_SessionManager``): the cloud resolves the user
    from ``x-user-id`` (else the legacy id in ``x-session-id``)."""
    headers = {"x-session-id": session_id, "x-package-name": package_name, "x-api-key": api_key}
    if user_id:
        headers["x-user-id"] = user_id
    return headers


def reconnect(session_id: str) -> dict[str, Any]:
    """v3 resume after a drop (instead of a new init): the cloud answers ``reconnect_ack`` (§3.8)."""
    return {"type": "reconnect", "sessionId": session_id, "sdkVersion": V3_SDK_VERSION, "timestamp": now_iso()}


def managed_stream_request(package_name: str, session_id: str, *, video: dict[str, Any] | None = None) -> dict[str, Any]:
    """A managed stream (§4.8): the cloud relays the glasses' video and answers with playback URLs
    (WebRTC/WHEP ``webrtcUrl`` by default, ``hlsUrl``/``dashUrl``)."""
    msg: dict[str, Any] = {"type": "managed_stream_request", "packageName": package_name, "sessionId": session_id,
                           "enableWebRTC": True, "timestamp": now_iso()}
    if video:
        msg["video"] = dict(video)
    return msg


def managed_stream_stop(package_name: str, session_id: str) -> dict[str, Any]:
    return {"type": "managed_stream_stop", "packageName": package_name, "sessionId": session_id,
            "timestamp": now_iso()}


def subscription_update(package_name: str, session_id: str, subscriptions: list[str]) -> dict[str, Any]:
    return {
        "type": "subscription_update",
        "packageName": package_name,
        "sessionId": session_id,
        "subscriptions": list(subscriptions),
        "timestamp": now_iso(),
    }


def ping() -> dict[str, Any]:
    """App-level keep-alive ([D] answers ``pong``; older clouds log and ignore it, §3.5)."""
    return {"type": "ping"}


def stream_request(
    package_name: str,
    session_id: str,
    url: str,
    *,
    video: dict[str, Any] | None = None,
    audio: dict[str, Any] | None = None,
    stream: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Unmanaged stream start. ``rtmp://``/``rtmps://`` → legacy ``rtmp_stream_request`` + ``rtmpUrl``
    (accepted by every cloud); anything else (``srt://``, WHIP) → ``stream_request`` + ``streamUrl`` ([D] only)."""
    legacy = is_rtmp_url(url)
    msg: dict[str, Any] = {
        "type": "rtmp_stream_request" if legacy else "stream_request",
        "packageName": package_name,
        "sessionId": session_id,
        ("rtmpUrl" if legacy else "streamUrl"): url,
        "timestamp": now_iso(),
    }
    if video:
        msg["video"] = dict(video)
    if audio:
        msg["audio"] = dict(audio)
    if stream:
        msg["stream"] = dict(stream)
    return msg


def is_rtmp_url(url: str) -> bool:
    return url.lower().startswith(("rtmp://", "rtmps://"))


def stream_stop(
    package_name: str, session_id: str, stream_id: str | None, *, legacy: bool = True
) -> dict[str, Any]:
    """Stop by ``streamId`` (without one the cloud stops all of this package's streams, §4.3).
    ``legacy`` → ``rtmp_stream_stop`` (every cloud); else ``stream_stop`` ([D])."""
    msg: dict[str, Any] = {
        "type": "rtmp_stream_stop" if legacy else "stream_stop",
        "packageName": package_name,
        "sessionId": session_id,
        "timestamp": now_iso(),
    }
    if stream_id:
        msg["streamId"] = stream_id
    return msg


def stream_status_check(package_name: str, session_id: str) -> dict[str, Any]:
    return {"type": "stream_status_check", "packageName": package_name, "sessionId": session_id}


def display_text_wall(
    package_name: str, text: str, *, view: str = "main", duration_ms: int | None = None
) -> dict[str, Any]:
    """``session.layouts.showTextWall`` on the wire (§5.1); the SDK sends ``sessionId: ""``."""
    msg: dict[str, Any] = {
        "type": "display_event",
        "packageName": package_name,
        "sessionId": "",
        "view": view,
        "layout": {"layoutType": "text_wall", "text": text},
        "timestamp": now_iso(),
    }
    if duration_ms is not None:
        msg["durationMs"] = int(duration_ms)
    return msg


def display_clear(package_name: str, *, view: str = "main") -> dict[str, Any]:
    """``clear_view`` layout (§5.1) removes our text from the view."""
    return {
        "type": "display_event",
        "packageName": package_name,
        "sessionId": "",
        "view": view,
        "layout": {"layoutType": "clear_view"},
        "timestamp": now_iso(),
    }


def tts_url(ws_url: str, text: str) -> str:
    """The cloud's TTS endpoint, built exactly like the SDK's ``session.audio.speak()`` (§9):
    drop the ``ws(s)://`` scheme and a trailing ``/app-ws`` (or the v3 ``/ws/miniapp``), prefix ``https://``,
    add ``/api/tts?text=…``. (The 3.x SDK sends the bare path; an absolute URL works on every cloud.)"""
    base = re.sub(r"^wss?://", "", ws_url)
    base = re.sub(r"/(app-ws|ws/miniapp)$", "", base)
    return f"https://{base}/api/tts?{urlencode({'text': text})}"


def audio_play_request(
    package_name: str,
    session_id: str,
    request_id: str,
    audio_url: str,
    *,
    volume: float = 1.0,
    stop_other_audio: bool = True,
    track_id: int | None = 2,
) -> dict[str, Any]:
    """Play a URL on the glasses; track 2 is the TTS track the SDK's ``speak()`` uses."""
    msg: dict[str, Any] = {
        "type": "audio_play_request",
        "packageName": package_name,
        "sessionId": session_id,
        "requestId": request_id,
        "audioUrl": audio_url,
        "volume": volume,
        "stopOtherAudio": stop_other_audio,
        "timestamp": now_iso(),
    }
    if track_id is not None:
        msg["trackId"] = track_id
    return msg


def ownership_release(package_name: str, session_id: str, reason: str = "clean_shutdown") -> dict[str, Any]:
    """Tells a [D] cloud not to resurrect us (clean shutdown); older clouds ignore it."""
    return {"type": "ownership_release", "packageName": package_name, "sessionId": session_id, "reason": reason}


# ---------------------------------------------------------------------------------------------
# cloud → app parsed events


@dataclass(frozen=True, slots=True)
class ConnectionAck:
    session_id: str | None
    settings: list[Any]
    mentraos_settings: dict[str, Any]
    capabilities: dict[str, Any] | None
    user_id: str | None = None
    reconnect: bool = False  # ``reconnect_ack`` (v3): same fields, answers our ``reconnect``

    @property
    def has_display(self) -> bool | None:
        return capabilities_has_display(self.capabilities)


@dataclass(frozen=True, slots=True)
class ReconnectRejected:
    """v3: the cloud will not resume; NOT_RUNNING/BOOT_TIMEOUT end the session, other codes mean a fresh init."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class ReconnectDeferred:
    """v3: the cloud is still restoring the session; the ack comes within ``timeout_s``."""

    code: str
    timeout_s: float


@dataclass(frozen=True, slots=True)
class ManagedStreamStatus:
    status: str  # initializing | preparing | active | stopping | stopped | error
    stream_id: str | None
    webrtc_url: str | None = None
    hls_url: str | None = None
    dash_url: str | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True)
class ConnectionError:
    code: str
    message: str
    legacy: bool = False  # ``connection_error`` (old SDK name) instead of ``tpa_connection_error``


@dataclass(frozen=True, slots=True)
class CapabilitiesUpdate:
    capabilities: dict[str, Any] | None
    model_name: str | None

    @property
    def has_display(self) -> bool | None:
        return capabilities_has_display(self.capabilities)


@dataclass(frozen=True, slots=True)
class DeviceStateUpdate:
    state: dict[str, Any]
    full_snapshot: bool


@dataclass(frozen=True, slots=True)
class Pong:
    timestamp: Any


@dataclass(frozen=True, slots=True)
class Transcription:
    text: str
    is_final: bool
    stream_type: str
    language: str | None = None
    utterance_id: str | None = None


@dataclass(frozen=True, slots=True)
class ButtonPress:
    button_id: str | None
    press_type: str


@dataclass(frozen=True, slots=True)
class StreamStatus:
    stream_id: str | None
    status: str  # normalised: initializing | active | stopping | stopped | timeout
    raw_status: str
    app_id: str | None = None
    error_details: str | None = None
    via: str = "rtmp_stream_status"  # message type, or "data_stream:<type>"


@dataclass(frozen=True, slots=True)
class StreamStatusCheckResponse:
    has_active_stream: bool
    stream_id: str | None = None
    status: str | None = None
    url: str | None = None  # streamInfo.streamUrl ([D]) or streamInfo.rtmpUrl ([B])
    stream_type: str | None = None
    requesting_app_id: str | None = None


@dataclass(frozen=True, slots=True)
class AudioPlayResponse:
    request_id: str | None
    success: bool
    error: str | None = None
    duration: float | None = None


@dataclass(frozen=True, slots=True)
class AppStopped:
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class PermissionError_:
    message: str
    details: list[dict[str, Any]] = field(default_factory=list)


Incoming = (
    ConnectionAck
    | ConnectionError
    | CapabilitiesUpdate
    | DeviceStateUpdate
    | Pong
    | Transcription
    | ButtonPress
    | StreamStatus
    | StreamStatusCheckResponse
    | AudioPlayResponse
    | AppStopped
    | PermissionError_
    | ReconnectRejected
    | ReconnectDeferred
    | ManagedStreamStatus
)


def _parse_managed_status(data: dict[str, Any]) -> ManagedStreamStatus:
    return ManagedStreamStatus(
        status=str(data.get("status", "")),
        stream_id=_str(data.get("streamId")),
        webrtc_url=_str(data.get("webrtcUrl")),
        hls_url=_str(data.get("hlsUrl")),
        dash_url=_str(data.get("dashUrl")),
        message=_str(data.get("message")),
    )


def capabilities_has_display(capabilities: dict[str, Any] | None) -> bool | None:
    """``hasDisplay`` when known; None while capabilities are null/missing (glasses not known yet)."""
    if not isinstance(capabilities, dict):
        return None
    value = capabilities.get("hasDisplay")
    return value if isinstance(value, bool) else None


def _parse_stream_status(data: dict[str, Any], via: str) -> StreamStatus:
    raw = str(data.get("status", ""))
    return StreamStatus(
        stream_id=_str(data.get("streamId")),
        status=normalize_status(raw),
        raw_status=raw,
        app_id=_str(data.get("appId")),
        error_details=_str(data.get("errorDetails")),
        via=via,
    )


def _parse_data_stream(msg: dict[str, Any]) -> Incoming | None:
    stream_type = str(msg.get("streamType") or "")
    data = msg.get("data")
    if not isinstance(data, dict):
        return None
    # The key is the subscription key ("transcription:en-US"), never bare "transcription" (§6): prefix match.
    if stream_type.startswith("transcription") or data.get("type") == "transcription":
        text = data.get("text")
        if not isinstance(text, str):
            return None
        return Transcription(
            text=text,
            is_final=bool(data.get("isFinal", False)),
            stream_type=stream_type,
            language=_str(data.get("transcribeLanguage")),
            utterance_id=_str(data.get("utteranceId")),
        )
    if stream_type == "button_press" or data.get("type") == "button_press":
        return ButtonPress(
            button_id=None if data.get("buttonId") is None else str(data.get("buttonId")),
            press_type=str(data.get("pressType", "short")),
        )
    if stream_type in STATUS_TYPES or data.get("type") in STATUS_TYPES:
        return _parse_stream_status(data, via=f"data_stream:{stream_type or data.get('type')}")
    if stream_type == "managed_stream_status" or data.get("type") == "managed_stream_status":
        return _parse_managed_status(data)
    return None


def parse(msg: Any) -> Incoming | None:
    """Parse one JSON object from the cloud; None for unknown or unusable messages (ignored, §3.5)."""
    if not isinstance(msg, dict):
        return None
    mtype = msg.get("type")
    if mtype in ("tpa_connection_ack", "reconnect_ack"):
        settings_obj = msg.get("mentraosSettings")
        if not isinstance(settings_obj, dict):
            settings_obj = msg.get("augmentosSettings")
        caps = msg.get("capabilities")
        settings_list = msg.get("settings")
        return ConnectionAck(
            session_id=_str(msg.get("sessionId")),
            settings=settings_list if isinstance(settings_list, list) else [],
            mentraos_settings=settings_obj if isinstance(settings_obj, dict) else {},
            capabilities=caps if isinstance(caps, dict) else None,
            user_id=_str(msg.get("userId")),
            reconnect=mtype == "reconnect_ack",
        )
    if mtype == "reconnect_rejected":
        return ReconnectRejected(code=str(msg.get("code") or "UNKNOWN"), message=str(msg.get("message") or ""))
    if mtype == "reconnect_deferred":
        timeout_ms = msg.get("timeoutMs")
        ok = isinstance(timeout_ms, (int, float)) and not isinstance(timeout_ms, bool) and math.isfinite(timeout_ms)
        # The wait is bounded whatever the cloud says (NaN or 1e12 ms would wait for an ack forever).
        timeout_s = min(max(timeout_ms / 1000, 1.0), MAX_RECONNECT_DEFER_S) if ok else 30.0  # type: ignore[operator]
        return ReconnectDeferred(code=str(msg.get("code") or "UNKNOWN"), timeout_s=timeout_s)
    if mtype == "managed_stream_status":
        return _parse_managed_status(msg)
    if mtype in ("tpa_connection_error", "connection_error"):
        return ConnectionError(
            code=str(msg.get("code") or "UNKNOWN"),
            message=str(msg.get("message") or ""),
            legacy=mtype == "connection_error",
        )
    if mtype == "capabilities_update":
        caps = msg.get("capabilities")
        model = msg.get("modelName")
        if model is None and isinstance(caps, dict):
            model = caps.get("modelName")
        return CapabilitiesUpdate(capabilities=caps if isinstance(caps, dict) else None, model_name=_str(model))
    if mtype == "device_state_update":
        state = msg.get("state")
        return DeviceStateUpdate(state=state if isinstance(state, dict) else {}, full_snapshot=bool(msg.get("fullSnapshot")))
    if mtype == "pong":
        return Pong(timestamp=msg.get("timestamp"))
    if mtype == "data_stream":
        return _parse_data_stream(msg)
    if mtype in STATUS_TYPES:
        return _parse_stream_status(msg, via=str(mtype))
    if mtype == "stream_status_check_response":
        info = msg.get("streamInfo")
        info = info if isinstance(info, dict) else {}
        return StreamStatusCheckResponse(
            has_active_stream=bool(msg.get("hasActiveStream")),
            stream_id=_str(info.get("streamId")),
            status=None if info.get("status") is None else normalize_status(info.get("status")),
            url=_str(info.get("streamUrl")) or _str(info.get("rtmpUrl")),
            stream_type=_str(info.get("type")),
            requesting_app_id=_str(info.get("requestingAppId")),
        )
    if mtype == "audio_play_response":
        duration = msg.get("duration")
        return AudioPlayResponse(
            request_id=_str(msg.get("requestId")),
            success=bool(msg.get("success")),
            error=_str(msg.get("error")),
            duration=float(duration) if isinstance(duration, (int, float)) else None,
        )
    if mtype == "app_stopped":
        return AppStopped(reason=_str(msg.get("reason")))
    if mtype == "permission_error":
        details = msg.get("details")
        return PermissionError_(
            message=str(msg.get("message") or ""),
            details=[d for d in details if isinstance(d, dict)] if isinstance(details, list) else [],
        )
    return None
