"""Settings for ``detector-app serve``, read from the environment (SDK example names) and CLI flags.

The names follow the official TypeScript SDK examples (``PACKAGE_NAME``, ``MENTRAOS_API_KEY``, ``PORT``)
so a ``.env`` written for an SDK app works here too. The API key is a ``SecretStr``: its repr and str
are masked, so logging the settings object can never leak it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_WS_ALLOWLIST: tuple[str, ...] = (
    "*.mentra.glass",
    "*.mentraglass.com",
    "prod.augmentos.cloud",
    "*.augmentos.cloud",
)


class MentraSettings(BaseSettings):
    """Everything the miniapp needs; build with ``MentraSettings(**overrides)`` (flags win over env)."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    package_name: str = Field(
        "com.example.detector", validation_alias=AliasChoices("package_name", "PACKAGE_NAME")
    )
    api_key: SecretStr = Field(
        SecretStr(""),
        validation_alias=AliasChoices("api_key", "MENTRAOS_API_KEY", "AUGMENTOS_API_KEY"),
    )
    port: int = Field(3000, ge=1, le=65535, validation_alias=AliasChoices("port", "PORT"))
    host: str = Field("0.0.0.0", validation_alias=AliasChoices("host", "WEBHOOK_HOST"))
    public_url: str | None = Field(
        None, validation_alias=AliasChoices("public_url", "PUBLIC_URL"),
        description="Public base URL registered in the developer console (only printed).",
    )

    ingest_protocol: Literal["rtmp", "srt", "whip", "managed"] = Field(
        "rtmp", validation_alias=AliasChoices("ingest_protocol", "INGEST_PROTOCOL"),
        description="managed: no ingest of ours; the cloud relays the glasses' video and we pull its playback URL.",
    )
    cloud_protocol: Literal["v2", "v3"] = Field(
        "v2", validation_alias=AliasChoices("cloud_protocol", "MENTRAOS_PROTOCOL"),
        description="v2: the 2.x SDK's wire protocol (every cloud); v3: the 3.x SDK's (header identity, "
                    "reconnect; the newest cloud only). docs/mentraos-3x.md",
    )
    ingest_host: str | None = Field(
        None, validation_alias=AliasChoices("ingest_host", "INGEST_HOST"),
        description="Address the glasses can reach (LAN IP); None = detect.",
    )
    ingest_port: int | None = Field(
        None, validation_alias=AliasChoices("ingest_port", "INGEST_PORT")
    )
    ingest: str | None = Field(  # checked by ingest.factory.choose_rtmp_ingest (one-line error)
        None, validation_alias=AliasChoices("ingest", "INGEST"),
        description="RTMP ingest: one nginx-rtmp for every session, or a PyAV listener per session; None = nginx where installed.",
    )

    ws_allowlist: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_WS_ALLOWLIST),
        validation_alias=AliasChoices("ws_allowlist", "MENTRAOS_WS_ALLOWLIST"),
    )
    allow_insecure_ws: bool = Field(
        False,
        validation_alias=AliasChoices("allow_insecure_ws", "MENTRAOS_ALLOW_INSECURE_WS"),
        description="Allow ws:// (cleartext, the API key would travel unencrypted) to non-loopback hosts.",
    )

    transcription_language: str = Field(
        "en-US", validation_alias=AliasChoices("transcription_language", "TRANSCRIPTION_LANGUAGE")
    )
    # 1280x720 is in Mentra Live's supportedResolutions on every firmware; 15 fps is plenty for ≤10 FPS inference.
    stream_width: int = Field(1280, ge=320, le=1920)
    stream_height: int = Field(720, ge=240, le=1080)
    stream_fps: int = Field(15, ge=1, le=30)
    stream_bitrate: int = Field(1_500_000, ge=100_000, le=10_000_000)
    speak: bool = Field(True, description="Speak announcements (TTS) when the glasses have no display.")
    track: bool = Field(True, description="Track animals (ByteTrack) on every stream: unique counts, one announcement "
                        "per animal; False (--no-track) = per-frame boxes and feedback.")
    announce_left: bool = Field(False, description="Tracked: also say 'the cat left' when the last of a kind is gone.")
    web_port: int = Field(0, ge=0, le=65535, validation_alias=AliasChoices("web_port", "WEB_PORT"),
                          description="Live web viewer port (0 = off).")
    web_host: str = Field("127.0.0.1", validation_alias=AliasChoices("web_host", "WEB_HOST"),
                          description="Viewer address; anything but loopback needs the token (WEB_TOKEN or printed).")
    # Sightings (detector_app.sightings): on by default for serve; the database under DATA_DIR unless SIGHTINGS_DB.
    sightings: bool = Field(True, validation_alias=AliasChoices("sightings", "SIGHTINGS"),
                            description="Record every tracked animal: a row, a best-frame thumbnail, a clip.")
    sightings_db: Path | None = Field(None, validation_alias=AliasChoices("sightings_db", "SIGHTINGS_DB"))
    data_dir: Path | None = Field(None, validation_alias=AliasChoices("data_dir", "DATA_DIR"),
                                  description="Default ~/.local/share/detector-app ($XDG_DATA_HOME).")
    sightings_keep_days: float = Field(30.0, ge=0, validation_alias=AliasChoices("sightings_keep_days", "SIGHTINGS_KEEP_DAYS"),
                                       description="Delete sightings older than this (0 = no age limit).")
    sightings_max_mb: float = Field(2048.0, ge=0, validation_alias=AliasChoices("sightings_max_mb", "SIGHTINGS_MAX_MB"),
                                    description="Thumbnails + clips above this many MB: the oldest go (0 = no limit).")

    @field_validator("ws_allowlist", mode="before")
    @classmethod
    def _split_allowlist(cls, value: object) -> object:
        if isinstance(value, str):
            return [p.strip().lower() for p in value.split(",") if p.strip()]
        return value

    def video_config(self) -> dict[str, int]:
        return {
            "width": self.stream_width,
            "height": self.stream_height,
            "bitrate": self.stream_bitrate,
            "frameRate": self.stream_fps,
        }
