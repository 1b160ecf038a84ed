"""Cloud-side wire details of the MentraOS protocol, per cloud generation.

Independent of the miniapp's own protocol module on purpose: the simulator is a second
reading of /work/shared/docs/mentraos-protocol.md, so a misreading on either side shows up
as a failing test instead of agreeing with itself.
"""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

Generation = Literal["B", "D", "V3"]
DeviceName = Literal["mentra_live", "even_g1", "even_g1_camera"]


def now_iso() -> str:
    """ISO-8601 with milliseconds and Z, which is what JS `Date` serialises to (§3.6)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_ms() -> int:
    return int(datetime.now(timezone.utc).timestamp() * 1000)


_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def base36(n: int) -> str:
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = _B36[r] + out
        if n == 0:
            return out


def new_stream_id() -> str:
    """Short `"s" + base36` id, like UnmanagedStreamingExtension ([B]/[D] §4.2)."""
    return "s" + base36(secrets.randbits(50))


def legacy_session_id(user_id: str, package_name: str) -> str:
    """`<userEmail>-<packageName>` (§2.1); the cloud recovers the user from it at init."""
    return f"{user_id}-{package_name}"


def parse_legacy_session_id(session_id: str, package_name: str) -> str | None:
    """Recover the user id; emails may contain hyphens, so strip the known package suffix ([D])."""
    suffix = "-" + package_name
    if session_id.endswith(suffix) and len(session_id) > len(suffix):
        return session_id[: -len(suffix)]
    return None


@dataclass(frozen=True)
class GenerationProfile:
    """What differs between the published-SDK era cloud [B], the newest dev cloud [D] as a v2 SDK sees it,
    and that same cloud as a 3.x SDK sees it (V3: docs/mentraos-3x.md)."""

    name: Generation
    connect_deadline_s: float  # APP_SESSION_TIMEOUT_MS
    webhook_all_urls: bool  # D also sends mentraOSWebsocketUrl + websocketUrl (/ws/miniapp)
    ack_settings_key: str  # "augmentosSettings" (B) / "mentraosSettings" (D)
    ack_extra_fields: bool  # D: subscriptions + userId in the ack
    device_state_after_ack: bool
    status_types: tuple[str, ...]  # direct status copies sent to the owner app
    accepts_stream_request: bool  # stream_request / stream_stop / streamUrl
    rtmp_only: bool  # B: cloud rejects non rtmp(s):// with "Invalid RTMP URL"
    answers_ping: bool
    status_check_url_key: str  # "rtmpUrl" (B) / "streamUrl" (D)
    serves_miniapp_path: bool
    close_on_premature_message: bool  # B closes 1008 on a non-init first frame, D does not
    permission_denied_message: str
    empty_sub_grace_s: float  # B: empty subscription_update within 8 s of a reconnect is ignored
    header_identity: bool = False  # V3: the user comes from x-user-id / x-session-id upgrade headers
    accepts_reconnect: bool = False  # V3: `reconnect` frame -> reconnect_ack (else rejected, §3.8)
    managed_streams: bool = False  # V3: managed_stream_request / managed_stream_stop
    audio_streams: bool = False  # V3: audio_stream_start / _end with binary frames -> audio_stream_ready


GENERATIONS: dict[str, GenerationProfile] = {
    "B": GenerationProfile(
        name="B",
        connect_deadline_s=5.0,
        webhook_all_urls=False,
        ack_settings_key="augmentosSettings",
        ack_extra_fields=False,
        device_state_after_ack=False,
        status_types=("rtmp_stream_status",),
        accepts_stream_request=False,
        rtmp_only=True,
        answers_ping=False,
        status_check_url_key="rtmpUrl",
        serves_miniapp_path=False,
        close_on_premature_message=True,
        permission_denied_message=(
            "Camera permission required to start video streams. "
            "Please add the CAMERA permission in the developer console."
        ),
        empty_sub_grace_s=8.0,
    ),
    "D": GenerationProfile(
        name="D",
        connect_deadline_s=6.0,
        webhook_all_urls=True,
        ack_settings_key="mentraosSettings",
        ack_extra_fields=True,
        device_state_after_ack=True,
        status_types=("stream_status", "rtmp_stream_status"),
        accepts_stream_request=True,
        rtmp_only=False,
        answers_ping=True,
        status_check_url_key="streamUrl",
        serves_miniapp_path=True,
        close_on_premature_message=False,
        permission_denied_message="Camera permission required to start video streams",
        empty_sub_grace_s=0.0,
    ),
}
# V3: the newest cloud [D] as the 3.x SDKs meet it. Everything D does, plus what bun-websocket.ts and
# app-message-handler.ts do for v3 clients (docs/mentraos-3x.md has the evidence).
GENERATIONS["V3"] = dataclasses.replace(GENERATIONS["D"], name="V3", header_identity=True, accepts_reconnect=True,
                                        managed_streams=True, audio_streams=True)


def generation_profile(gen: str) -> GenerationProfile:
    try:
        return GENERATIONS[gen.upper()]
    except KeyError:
        raise ValueError(f"unknown cloud generation {gen!r}; use 'B', 'D' or 'V3'") from None


# Glasses raw status -> what the cloud reports to the app ([B]/[D] §4.4).
_RAW_TO_APP = {
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


def map_glasses_status(raw: str) -> str:
    """error / reconnect_failed / anything unknown become `stopped` (B/D behaviour)."""
    return _RAW_TO_APP.get(raw, "stopped")


@dataclass(frozen=True)
class DeviceProfile:
    """Capability profile sent in the ack ([C] config/capabilities/*.ts, abbreviated)."""

    model_name: str
    capabilities: dict[str, Any] = field(default_factory=dict)

    @property
    def has_display(self) -> bool:
        return bool(self.capabilities.get("hasDisplay"))


MENTRA_LIVE = DeviceProfile(
    model_name="Mentra Live",
    capabilities={
        "modelName": "Mentra Live",
        "hasCamera": True,
        "camera": {
            "resolution": {"width": 1920, "height": 1080},
            "hasHDR": False,
            "hasFocus": True,
            "video": {
                "canRecord": True,
                "canStream": True,
                "supportedStreamTypes": ["rtmp"],
                "supportedResolutions": [
                    {"width": 1920, "height": 1080},
                    {"width": 1280, "height": 720},
                    {"width": 640, "height": 480},
                ],
            },
        },
        "hasDisplay": False,
        "display": None,
        "hasMicrophone": True,
        "microphone": {"count": 1, "hasVAD": True},
        "hasSpeaker": True,
        "speaker": {"count": 1, "isPrivate": False},
        "hasIMU": True,
        "hasButton": True,
        "button": {"count": 1, "buttons": [{"type": "press", "events": ["press", "long_press"]}]},
        "hasLight": True,
        "light": {"count": 2, "lights": [{"id": "privacy", "purpose": "privacy"}, {"id": "user", "purpose": "user", "isFullColor": True}]},
        "power": {"hasExternalBattery": False},
        "hasWifi": True,
    },
)

EVEN_G1 = DeviceProfile(
    model_name="Even Realities G1",
    capabilities={
        "modelName": "Even Realities G1",
        "hasCamera": False,
        "camera": None,
        "hasDisplay": True,
        "display": {
            "count": 2,
            "isColor": False,
            "color": "green",
            "canDisplayBitmap": True,
            "resolution": {"width": 640, "height": 200},
            "fieldOfView": {"horizontal": 25},
            "maxTextLines": 5,
            "adjustBrightness": True,
        },
        "hasMicrophone": True,
        "microphone": {"count": 1, "hasVAD": False},
        "hasSpeaker": False,
        "speaker": None,
        "hasIMU": True,
        "hasButton": False,
        "button": None,
        "hasLight": False,
        "light": None,
        "power": {"hasExternalBattery": True},
        "hasWifi": False,
    },
)

# Not a real product: a G1 display with Mentra Live's camera and WiFi. Real G1s have no camera (the cloud
# refuses their stream requests), so this is how the offline demo and tests show text walls driven by a
# real video stream.
EVEN_G1_CAMERA = DeviceProfile(
    model_name="Even Realities G1 (+ simulated camera)",
    capabilities={
        **EVEN_G1.capabilities,
        "modelName": "Even Realities G1 (+ simulated camera)",
        "hasCamera": True,
        "camera": MENTRA_LIVE.capabilities["camera"],
        "hasWifi": True,
    },
)

DEVICES: dict[str, DeviceProfile] = {"mentra_live": MENTRA_LIVE, "even_g1": EVEN_G1, "even_g1_camera": EVEN_G1_CAMERA}


def device_profile(name: str) -> DeviceProfile:
    try:
        return DEVICES[name]
    except KeyError:
        raise ValueError(f"unknown device {name!r}; use one of {sorted(DEVICES)}") from None


# Subscription -> permission needed ([B] simple-permission-checker.ts, §7).
def required_permission(stream: str) -> str | None:
    base = stream.split("?", 1)[0]
    if base.startswith(("transcription", "translation")) or base in ("audio_chunk", "VAD"):
        return "MICROPHONE"
    if base in ("photo_response", "photo_taken", "rtmp_stream_status", "managed_stream_status", "stream_status"):
        return "CAMERA"
    if base == "location_update":
        return "LOCATION"
    if base == "calendar_event":
        return "CALENDAR"
    if base.startswith("phone_notification"):
        return "READ_NOTIFICATIONS"
    return None


ALL_PERMISSIONS = frozenset({"MICROPHONE", "CAMERA", "LOCATION", "CALENDAR", "READ_NOTIFICATIONS", "POST_NOTIFICATIONS"})
