"""What the glasses show, play and hear: display events, audio/TTS, the LED (app → glasses), and
the wearer's speech and button presses (glasses → app)."""

from __future__ import annotations

import asyncio
from typing import Any

from loguru import logger

from .core import SimCore
from .protocol import new_stream_id, now_ms
from .replies import (
    audio_reply,
    audio_stream_ready,
    button_payload,
    data_stream,
    display_text,
    split_audio_frame,
    transcription_payloads,
)
from .state import UserSession

MAX_AUDIO_STREAMS = 16


class GlassesMedia:
    def __init__(self, core: SimCore) -> None:
        self.core = core

    # ------------------------------------------------------------------ app -> glasses
    def display(self, s: UserSession, data: dict[str, Any]) -> None:
        text = display_text(data.get("layout") or {})
        device = self.core.device
        if device.has_display:
            self.core.echo(f"[glasses display] {s.user_id} [{data.get('view', 'main')}]: {text}")
        else:
            self.core.echo(f"[glasses display] {s.user_id}: ({device.model_name} has no display; not visible) {text}")

    async def play_audio(self, s: UserSession, data: dict[str, Any]) -> None:
        reply = audio_reply(data, self.core.config.faults)
        what = f"\"{reply.spoken}\"" if reply.spoken is not None else f"playing {reply.url}"
        if not reply.frame["success"]:
            what += f" -> failed: {reply.frame['error']}"
        self.core.echo(f"[glasses speaker] {s.user_id}: {what}")
        await self.core.send(s, reply.frame)

    def stop_audio(self, s: UserSession) -> None:
        self.core.echo(f"[glasses speaker] {s.user_id}: (audio stopped)")

    # ------------------------------------------------------------------ audio output streams (V3)
    async def audio_stream_start(self, s: UserSession, data: dict[str, Any]) -> None:
        """Open the relay and answer `audio_stream_ready` at once (the SDK gives up after 10 s)."""
        stream_id = str(data.get("streamId") or "")
        if not stream_id:
            self.core.record("sim", "audio_stream_invalid", s.user_id, {})
            return
        if len(s.audio_streams) >= MAX_AUDIO_STREAMS:  # an app that never ends its streams stays bounded
            s.audio_streams.pop(next(iter(s.audio_streams)))
        s.audio_streams[stream_id] = 0
        self.core.echo(f"[glasses speaker] {s.user_id}: audio stream {stream_id} opened ({data.get('contentType', 'audio/mpeg')})")
        relay = f"http://{self.core.config.public_host or self.core.config.host}:{self.core.port}"
        await self.core.send(s, audio_stream_ready(stream_id, relay, s.user_id))

    def audio_bytes(self, s: UserSession, frame: bytes) -> None:
        parsed = split_audio_frame(frame)
        if parsed is None or parsed[0] not in s.audio_streams:
            self.core.record("sim", "binary_frame_unrecognised", s.user_id, {"bytes": len(frame)})
            return
        s.audio_streams[parsed[0]] += parsed[1]

    def audio_stream_end(self, s: UserSession, data: dict[str, Any]) -> None:
        stream_id = str(data.get("streamId") or "")
        received = s.audio_streams.pop(stream_id, None)
        self.core.record("sim", "audio_stream_ended", s.user_id, {"streamId": stream_id, "bytes": received})
        self.core.echo(f"[glasses speaker] {s.user_id}: audio stream {stream_id} ended ({received or 0} bytes)")

    def led(self, s: UserSession, data: dict[str, Any]) -> None:
        self.core.echo(f"[glasses LED] {s.user_id}: {data.get('action')} {data.get('color', '')} "
                       f"on={data.get('ontime')}ms off={data.get('offtime')}ms x{data.get('count')}")

    # ------------------------------------------------------------------ glasses -> app
    async def say(self, s: UserSession, text: str, *, interim: bool, language: str, word_delay_s: float) -> bool:
        core = self.core
        core.echo(f"[glasses mic] {s.user_id} says: \"{text}\"")
        keys = [k for k in s.subscriptions if k.startswith("transcription")]
        if not keys:
            core.record("sim", "transcription_not_subscribed", s.user_id, {"text": text})
            logger.warning("app is not subscribed to transcription; '{}' is not delivered", text)
            return False
        start, utterance = now_ms(), f"u-{new_stream_id()[1:]}"
        payloads = transcription_payloads(text, interim=interim, language=language, start_ms=start,
                                          end_ms=now_ms(), utterance=utterance)
        for data in payloads:
            data["endTime"] = now_ms()
            for key in keys:
                await core.send(s, data_stream(s.session_id, key, data))
            if not data["isFinal"]:
                await asyncio.sleep(word_delay_s)
        return True

    async def press_button(self, s: UserSession, press_type: str, button_id: str) -> bool:
        self.core.echo(f"[glasses button] {s.user_id}: {press_type} press")
        if "button_press" not in s.subscriptions:
            self.core.record("sim", "button_not_subscribed", s.user_id, {"pressType": press_type})
            return False
        await self.core.send(s, data_stream(s.session_id, "button_press", button_payload(press_type, button_id)))
        return True
