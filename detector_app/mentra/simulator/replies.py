"""The simulated cloud's protocol decisions, as pure functions: inputs are the request and what the
cloud knows, outputs are frames (dicts) or a rejection. No sockets, no tasks, no clock beyond the
timestamps written into frames, so every answer can be tested with plain values.

The asyncio parts (`connection`, `lifecycle`, `streaming`, `media`) call these and only send.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, urlparse

from .protocol import DeviceProfile, GenerationProfile, now_iso, parse_legacy_session_id, required_permission
from .state import Faults, ManagedStreamState, StreamState

WIFI_MESSAGE = "Cannot process request - smart glasses must be connected to WiFi for this operation"
UNSUPPORTED_RESOLUTION = "Resolution not supported by camera"

# [D] VIDEO_CONFIG_LIMITS; the glasses clamp into these (§4.2).
VIDEO_LIMITS = {"width": (320, 1920), "height": (240, 1080), "frameRate": (1, 30), "bitrate": (100_000, 10_000_000)}
# What the glasses send when the app asks for nothing (the §4.4 example).
DEFAULT_VIDEO = {"width": 854, "height": 480, "frameRate": 15, "bitrate": 1_000_000}


@dataclass(frozen=True)
class Rejection:
    """The cloud refuses: `tpa_connection_error {code, message}`, then close 1008 (§3.4)."""

    code: str
    message: str


@dataclass(frozen=True)
class StreamGrant:
    """A stream request the cloud forwards to the glasses."""

    url: str
    transport: str  # "rtmp" | "srt"


def error_frame(code: str, message: str) -> dict[str, Any]:
    return {"type": "tpa_connection_error", "code": code, "message": message, "timestamp": now_iso()}


def data_stream(session_id: str, stream_type: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": "data_stream", "sessionId": session_id, "streamType": stream_type, "data": data,
            "timestamp": now_iso()}


# ------------------------------------------------------------------ connection
def check_init(data: dict[str, Any], package_name: str, api_key: str) -> Rejection | None:
    if data.get("packageName") != package_name or data.get("apiKey") != api_key:
        return Rejection("INVALID_API_KEY", "Invalid API key")
    return None


def check_reconnect_credentials(headers: dict[str, str], package_name: str, api_key: str) -> Rejection | None:
    """A `reconnect` frame carries no key: a 3.x SDK names its app and key in the upgrade headers
    (`x-package-name`, `x-api-key`) of every socket, so the resumed socket is checked by those, as an
    init is by its fields (a client that resumes with a wrong or missing key must not get its session)."""
    if headers.get("x-package-name") != package_name or headers.get("x-api-key") != api_key:
        return Rejection("INVALID_API_KEY", "Invalid API key")
    return None


def init_user(gen: GenerationProfile, headers: dict[str, str], data: dict[str, Any], package_name: str) -> str | None:
    """Whose session an init (or v3 `reconnect`) names: `userId || ws.data.userId ||
    parseUserIdFromLegacySessionId(init.sessionId)` ([D] bun-websocket.ts). Only V3 reads the upgrade
    headers (`x-user-id`, else the legacy id in `x-session-id`); B and D read the init's `sessionId`."""
    if gen.header_identity:
        user = headers.get("x-user-id") or parse_legacy_session_id(headers.get("x-session-id", ""), package_name)
        if user:
            return user
    return parse_legacy_session_id(str(data.get("sessionId") or ""), package_name)


def is_v3_sdk(version: Any) -> bool:
    """`isV3Sdk` ([D] bun-websocket.ts): the major version of `sdkVersion` is 3 or more."""
    try:
        return int(str(version or "").split(".")[0]) >= 3
    except ValueError:
        return False


@dataclass(frozen=True)
class ReconnectRefusal:
    """`reconnect_rejected {code, message}`; `close` says whether the cloud then closes with 1008."""

    code: str
    message: str
    close: bool


def check_reconnect(gen: GenerationProfile, data: dict[str, Any], app_state: str | None) -> ReconnectRefusal | None:
    """The cloud's answer to a v3 `reconnect` frame (§3.8): None means `reconnect_ack`.

    Below SDK v3 (or on a cloud generation without it) it is refused and the socket closed; an unknown
    session gets SESSION_NOT_FOUND; a session whose app is no longer running gets NOT_RUNNING (the SDK
    then stops for good; for any other code it falls back to a fresh `tpa_connection_init`)."""
    if not gen.accepts_reconnect or not is_v3_sdk(data.get("sdkVersion")):
        return ReconnectRefusal("SESSION_NOT_FOUND", "Reconnect is only supported for SDK v3", True)
    if app_state is None:
        return ReconnectRefusal("SESSION_NOT_FOUND", "Session not found", False)
    if app_state not in ("loading", "running"):
        return ReconnectRefusal("NOT_RUNNING", "App is not running for this session", False)
    return None


def reconnect_rejected_frame(refusal: ReconnectRefusal) -> dict[str, Any]:
    return {"type": "reconnect_rejected", "code": refusal.code, "message": refusal.message, "timestamp": now_iso()}


def ack_frames(gen: GenerationProfile, device: DeviceProfile, session_id: str, user_id: str,
               settings: list[dict[str, Any]], no_wifi: bool) -> list[dict[str, Any]]:
    """`tpa_connection_ack` (+ `device_state_update` in [D]) for a bound socket (§3.2)."""
    ack: dict[str, Any] = {"type": "tpa_connection_ack", "sessionId": session_id, "settings": list(settings),
                           gen.ack_settings_key: {"metricSystemEnabled": True, "brightness": 50,
                                                  "autoBrightness": True, "headUpAngle": 20,
                                                  "sensingEnabled": True, "alwaysOnStatusBar": False},
                           "capabilities": device.capabilities, "timestamp": now_iso()}
    if gen.ack_extra_fields:
        ack["subscriptions"] = []
        ack["userId"] = user_id
    frames = [ack]
    if gen.device_state_after_ack:
        frames.append({"type": "device_state_update", "fullSnapshot": True, "timestamp": now_iso(),
                       "state": {"connected": True, "modelName": device.model_name,
                                 "wifiConnected": not no_wifi, "wifiSsid": None if no_wifi else "SimWiFi",
                                 "batteryLevel": 87, "charging": False}})
    return frames


# ------------------------------------------------------------------ permissions
def granted_permissions(declared: frozenset[str], faults: Faults) -> frozenset[str]:
    perms = set(declared)
    if faults.deny_camera:
        perms.discard("CAMERA")
    return frozenset(perms)


def requested_streams(raw: list[Any]) -> list[str]:
    """Stream names of a `subscription_update` (strings or `{stream: …}`); bare `transcription` means en-US."""
    wanted: list[str] = []
    for item in raw:
        name = item.get("stream") if isinstance(item, dict) else item
        if isinstance(name, str):
            wanted.append("transcription:en-US" if name == "transcription" else name)
    return wanted


def filter_by_permission(wanted: list[str], granted: frozenset[str]) -> tuple[list[str], list[str]]:
    """(accepted, dropped): a stream needing a permission the app lacks is dropped silently (§7)."""
    accepted, dropped = [], []
    for name in wanted:
        perm = required_permission(name)
        (accepted if perm is None or perm in granted else dropped).append(name)
    return accepted, dropped


# ------------------------------------------------------------------ display / audio
def display_text(layout: dict[str, Any]) -> str:
    """What a `display_event` layout shows, as one line for the operator."""
    kind = layout.get("layoutType", "?")
    if kind == "text_wall":
        return str(layout.get("text", ""))
    if kind == "double_text_wall":
        return f"{layout.get('topText', '')} | {layout.get('bottomText', '')}"
    if kind == "reference_card":
        return f"{layout.get('title', '')}: {layout.get('text', '')}"
    if kind == "dashboard_card":
        return f"{layout.get('leftText', '')} | {layout.get('rightText', '')}"
    if kind == "clear_view":
        return "(cleared)"
    return f"({kind})"


@dataclass(frozen=True)
class AudioReply:
    frame: dict[str, Any]  # the audio_play_response
    spoken: str | None  # TTS text, when the URL is the cloud's /api/tts
    url: str


def audio_reply(data: dict[str, Any], faults: Faults) -> AudioReply:
    """`audio_play_response {requestId, success, error?, duration?}` for what was asked (§9).

    Fails, like the phone does, for a missing or non-HTTP(S) `audioUrl` (relative `/api/tts` URLs are
    the SDK's own, so they are fine) and when the `audio_error` fault is set. `duration` is known for
    TTS (from the text's length) and left out for other URLs, which the simulator does not fetch."""
    url = str(data.get("audioUrl") or "")
    parsed = urlparse(url)
    spoken = parse_qs(parsed.query).get("text", [None])[0] if parsed.path.endswith("/api/tts") else None
    error: str | None = None
    if not url:
        error = "audioUrl is required"
    elif parsed.scheme not in ("http", "https") and not (parsed.scheme == "" and url.startswith("/")):
        error = f"unsupported audio URL scheme {parsed.scheme or url!r}"
    elif faults.audio_error:
        error = faults.audio_error
    frame: dict[str, Any] = {"type": "audio_play_response", "requestId": data.get("requestId"),
                             "success": error is None, "timestamp": now_iso()}
    if error is not None:
        frame["error"] = error
    elif spoken is not None:
        frame["duration"] = round(max(0.5, 0.07 * len(spoken)), 2)
    return AudioReply(frame, spoken, url)


# ------------------------------------------------------------------ streaming
def check_stream_request(gen: GenerationProfile, device: DeviceProfile, granted: frozenset[str], faults: Faults,
                         data: dict[str, Any]) -> Rejection | StreamGrant:
    """The cloud's checks on `rtmp_stream_request` / `stream_request`, in its order (§4.2)."""
    if "CAMERA" not in granted:
        return Rejection("PERMISSION_DENIED", gen.permission_denied_message)
    url = data.get("streamUrl") or data.get("rtmpUrl") if gen.accepts_stream_request else data.get("rtmpUrl")
    if gen.rtmp_only:
        if not isinstance(url, str) or not url.lower().startswith(("rtmp://", "rtmps://")):
            return Rejection("INTERNAL_ERROR", "Invalid RTMP URL")
    elif not url or not isinstance(url, str):
        return Rejection("INTERNAL_ERROR", "Invalid stream URL: streamUrl is required")
    if faults.no_wifi or not device.capabilities.get("hasWifi"):
        return Rejection("WIFI_NOT_CONNECTED", WIFI_MESSAGE)
    return StreamGrant(url, "srt" if url.lower().startswith("srt://") else "rtmp")


def resolve_stream_config(transport: str, request: dict[str, Any], device: DeviceProfile,
                          faults: Faults) -> dict[str, Any] | str:
    """The glasses' `resolvedConfig` for the requested `video`/`audio`, or the error they report.

    Values are clamped into VIDEO_LIMITS (as the glasses do); the capture size is the smallest
    camera resolution that covers the stream without upscaling, and a stream no camera mode covers
    is refused with "Resolution not supported by camera" (also what the `reject_stream_config`
    fault forces)."""
    asked = request.get("video") if isinstance(request.get("video"), dict) else {}
    video = dict(DEFAULT_VIDEO)
    for key, (lo, hi) in VIDEO_LIMITS.items():
        if key in asked:
            value = asked[key]
            if isinstance(value, bool) or not isinstance(value, int):
                return f"Invalid video config: {key} must be an integer"
            video[key] = min(max(value, lo), hi)
    camera = (device.capabilities.get("camera") or {}).get("video", {}).get("supportedResolutions", [])
    fits = sorted((r["width"] * r["height"], r["width"], r["height"]) for r in camera
                  if r["width"] >= video["width"] and r["height"] >= video["height"])
    if faults.reject_stream_config or not fits:
        return UNSUPPORTED_RESOLUTION
    _, cap_w, cap_h = fits[0]
    resolved: dict[str, Any] = {"transport": transport,
                                "video": {"width": video["width"], "height": video["height"],
                                          "captureWidth": cap_w, "captureHeight": cap_h,
                                          "bitrate": video["bitrate"], "fps": video["frameRate"]}}
    audio = request.get("audio")
    if isinstance(audio, dict):
        keys = ("bitrate", "sampleRate", "echoCancellation", "noiseSuppression")
        resolved["audio"] = {k: audio[k] for k in keys if k in audio}
    return resolved


def status_frames(gen: GenerationProfile, session_id: str, package_name: str, stream: StreamState,
                  subscriptions: list[str]) -> list[dict[str, Any]]:
    """Direct copy(ies) to the owner plus data_stream to subscribers (§4.4); no stats/errorDetails."""
    payload: dict[str, Any] = {"sessionId": session_id, "streamId": stream.stream_id,
                               "status": stream.app_status, "appId": package_name}
    if gen.name != "B" and stream.app_status == "active" and stream.resolved is not None:
        payload["resolvedConfig"] = stream.resolved
    frames = [{"type": t, **payload, "timestamp": now_iso()} for t in gen.status_types]
    frames += [data_stream(session_id, t, {"type": t, **payload, "timestamp": now_iso()})
               for t in gen.status_types if t in subscriptions]
    return frames


def status_check_frame(gen: GenerationProfile, package_name: str, stream: StreamState | None,
                       managed: ManagedStreamState | None = None) -> dict[str, Any]:
    """A managed stream is reported first, as the [D] handler does (`handleStreamStatusCheck`)."""
    msg: dict[str, Any] = {"type": "stream_status_check_response",
                           "hasActiveStream": stream is not None or managed is not None, "timestamp": now_iso()}
    if managed is not None:
        msg["streamInfo"] = {"type": "managed", "streamId": managed.stream_id, "status": managed.status,
                             "createdAt": managed.created_at, **managed.urls, "activeViewers": 1}
    elif stream is not None:
        msg["streamInfo"] = {"type": "unmanaged", "streamId": stream.stream_id, "status": stream.app_status,
                             "createdAt": stream.created_at, gen.status_check_url_key: stream.url,
                             "requestingAppId": package_name}
    return msg


# ------------------------------------------------------------------ managed streams (V3)
MANAGED_WAITING = "Waiting for stream to start..."


def check_managed_request(granted: frozenset[str], faults: Faults, device: DeviceProfile) -> Rejection | None:
    """[D] `handleManagedStreamRequest`: CAMERA first (its own message), then the glasses' WiFi."""
    if "CAMERA" not in granted:
        return Rejection("PERMISSION_DENIED", "Camera permission required for managed streams")
    if faults.no_wifi or not device.capabilities.get("hasWifi"):
        return Rejection("WIFI_NOT_CONNECTED", WIFI_MESSAGE)
    return None


def playback_urls(webrtc_url: str | None, hls_url: str | None, dash_url: str | None, preview_url: str | None,
                  thumbnail_url: str | None) -> dict[str, str]:
    """The `managed_stream_status` URL fields (SDK `ManagedStreamStatus`); absent ones are left out, as
    `JSON.stringify` drops undefined."""
    named = {"webrtcUrl": webrtc_url, "hlsUrl": hls_url, "dashUrl": dash_url, "previewUrl": preview_url,
             "thumbnailUrl": thumbnail_url}
    return {k: v for k, v in named.items() if v}


def managed_status_frame(stream: ManagedStreamState, message: str | None = None) -> dict[str, Any]:
    """Direct `managed_stream_status` to the app; URLs only once active (the cloud polls for them)."""
    frame: dict[str, Any] = {"type": "managed_stream_status", "status": stream.status, "streamId": stream.stream_id,
                             "timestamp": now_iso()}
    if stream.status == "active":
        frame.update(stream.urls)
    if message:
        frame["message"] = message
    return frame


def audio_stream_ready(stream_id: str, relay_base: str, user_id: str) -> dict[str, Any]:
    """[D] `handleAudioStreamStart`: the relay URL the phone will GET (`/api/audio/stream/<user>/<id>`)."""
    return {"type": "audio_stream_ready", "streamId": stream_id,
            "streamUrl": f"{relay_base}/api/audio/stream/{quote(user_id, safe='')}/{stream_id}",
            "timestamp": now_iso()}


AUDIO_STREAM_ID_BYTES = 36  # binary frame = [36 ASCII bytes: the stream's UUID][audio bytes] (SDK SpeakerManager)


def split_audio_frame(frame: bytes) -> tuple[str, int] | None:
    """(stream id, audio byte count) of an app's binary frame, or None when it is not one."""
    if len(frame) <= AUDIO_STREAM_ID_BYTES or frame[:1] == b"{":
        return None
    try:
        return frame[:AUDIO_STREAM_ID_BYTES].decode("ascii"), len(frame) - AUDIO_STREAM_ID_BYTES
    except UnicodeDecodeError:
        return None


# ------------------------------------------------------------------ glasses inputs
def transcription_payloads(text: str, *, interim: bool, language: str, start_ms: int, end_ms: int,
                           utterance: str) -> list[dict[str, Any]]:
    """Interim transcripts with growing text, then one final (§6)."""
    words = text.split()
    partials = [" ".join(words[:i]) for i in range(1, len(words))] if interim else []
    return [{"type": "transcription", "text": part, "isFinal": is_final, "transcribeLanguage": language,
             "startTime": start_ms, "endTime": end_ms, "provider": "soniox", "utteranceId": utterance,
             "speakerId": "1", "metadata": {"provider": "soniox"}}
            for is_final, part in [(False, p) for p in partials] + [(True, text)]]


def button_payload(press_type: str, button_id: str) -> dict[str, Any]:
    return {"type": "button_press", "buttonId": button_id, "pressType": press_type, "timestamp": now_iso()}


def session_request(session_id: str, user_id: str, ws_url: str, miniapp_ws_url: str,
                    gen: GenerationProfile) -> dict[str, Any]:
    """The start webhook body (§2.1); [D] adds the newer URL names."""
    body: dict[str, Any] = {"type": "session_request", "sessionId": session_id, "userId": user_id,
                            "timestamp": now_iso(), "augmentOSWebsocketUrl": ws_url}
    if gen.webhook_all_urls:
        body["mentraOSWebsocketUrl"] = ws_url
        body["websocketUrl"] = miniapp_ws_url
    return body


def stop_request(session_id: str, user_id: str) -> dict[str, Any]:
    return {"type": "stop_request", "sessionId": session_id, "userId": user_id, "reason": "user_disabled",
            "timestamp": now_iso()}
