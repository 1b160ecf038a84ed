"""What the glasses show, play and hear: display events, audio/TTS, the LED (app → glasses), and
the wearer's speech and button presses (glasses → app)."""

from __future__ import annotations

import asyncio
from typing import Any

from loguru import logger

from .core import SimCore
from .protocol import new_stream_id, now_ms
from .replies import audio_reply, button_payload, data_stream, display_text, transcription_payloads
from .state import UserSession


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
