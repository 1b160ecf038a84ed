"""Unmanaged streams as the cloud's UnmanagedStreamingExtension runs them (§4): request checks,
the virtual glasses that publish, their raw statuses mapped for the app, stop and status check."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from loguru import logger

from .core import SimCore
from .glasses import GlassesStreamConfig, VirtualGlassesStream
from .managed import ManagedMediaServer, ManagedStreams
from .protocol import map_glasses_status, new_stream_id
from .replies import (
    Rejection,
    check_stream_request,
    managed_status_frame,
    resolve_stream_config,
    status_check_frame,
    status_frames,
)
from .state import StreamState, UserSession


class Streaming:
    def __init__(self, core: SimCore, managed_media: ManagedMediaServer | None = None) -> None:
        self.core = core
        self.managed = ManagedStreams(core, managed_media)

    async def request(self, s: UserSession, ws: web.WebSocketResponse, mtype: str, data: dict[str, Any]) -> None:
        core = self.core
        grant = check_stream_request(core.gen, core.device, core.permissions(), core.config.faults, data)
        if isinstance(grant, Rejection):
            await core.reject(ws, s, grant)
            return
        if s.managed is not None:  # ... and a managed one (§4.2)
            await self.managed.stop(s)
        if s.stream is not None:  # unmanaged requests pre-empt the user's existing stream (§4.2)
            await self.end(s, s.stream)
        stream = StreamState(new_stream_id(), grant.url, mtype, transport=grant.transport)
        s.stream = stream
        core.echo(f"[glasses camera] {s.user_id}: stream {stream.stream_id} requested -> {grant.url}")
        await self._send_status(s, stream)
        if not core.device.capabilities.get("hasCamera"):
            await self.on_glasses_status(s, stream, "error", "camera not available")
            return
        resolved = resolve_stream_config(grant.transport, data, core.device, core.config.faults)
        if isinstance(resolved, str):  # the glasses refuse the requested video
            await self.on_glasses_status(s, stream, "error", resolved)
            return
        stream.resolved = resolved

        async def on_status(raw: str, details: str | None) -> None:
            await self.on_glasses_status(s, stream, raw, details)

        cfg, f = core.config, core.config.faults
        glasses_cfg = GlassesStreamConfig(
            loop=cfg.loop_video, max_reconnects=cfg.publisher_max_reconnects,
            reconnect_delay_s=cfg.publisher_reconnect_delay_s, drop_after_s=f.stream_drop_after_s,
            restore_after_s=f.stream_restore_after_s, drop_mode=f.stream_drop_mode, repeat_drops=f.repeat,
        )
        stream.glasses = VirtualGlassesStream(grant.url, cfg.video, on_status, glasses_cfg,
                                              name=f"glasses:{s.user_id}", ffmpeg=cfg.ffmpeg)
        core.glasses.add(stream.glasses)
        stream.glasses.start()

    async def on_glasses_status(self, s: UserSession, stream: StreamState, raw: str, details: str | None) -> None:
        core = self.core
        core.record("glasses", raw, s.user_id, {"streamId": stream.stream_id, "details": details})
        if s.stream is not stream:
            return  # stream already stopped/replaced: the cloud no longer tracks it
        mapped = map_glasses_status(raw)
        if mapped == stream.app_status:  # nothing new for the app; the operator still sees the glasses
            core.echo(f"[glasses camera] {s.user_id}: stream {stream.stream_id} {raw}"
                      f"{' (' + details + ')' if details else ''} (app still sees '{mapped}')")
            return
        stream.app_status = mapped
        if mapped in ("stopped", "timeout"):
            s.stream = None
            if stream.glasses is not None:
                core.spawn(core.retire(stream.glasses), s)
        core.echo(f"[glasses camera] {s.user_id}: stream {stream.stream_id} {raw}"
                  f"{' (' + details + ')' if details else ''} -> app sees '{mapped}'")
        await self._send_status(s, stream)

    async def _send_status(self, s: UserSession, stream: StreamState) -> None:
        core = self.core
        await core.send_all(s, status_frames(core.gen, s.session_id, core.config.package_name, stream, s.subscriptions))

    async def end(self, s: UserSession, stream: StreamState) -> None:
        """Report `stopped` at once, then stop the glasses (§4.3)."""
        if s.stream is stream:
            s.stream = None
        if stream.app_status != "stopped":
            stream.app_status = "stopped"
            await self._send_status(s, stream)
        self.core.echo(f"[glasses camera] {s.user_id}: stream {stream.stream_id} stopped")
        if stream.glasses is not None:
            self.core.spawn(self.core.retire(stream.glasses), s)

    async def stop(self, s: UserSession, data: dict[str, Any]) -> None:
        sid = data.get("streamId")
        stream = s.stream
        if stream is None or (sid and sid != stream.stream_id):
            self.core.record("sim", "stream_stop_no_match", s.user_id, {"streamId": sid})
            logger.info("stream stop for {!r}: no such active stream", sid)
            return
        await self.end(s, stream)

    async def status_check(self, s: UserSession) -> None:
        await self.core.send(s, status_check_frame(self.core.gen, self.core.config.package_name, s.stream, s.managed))

    async def deliver_state(self, s: UserSession) -> None:
        """After a v3 reconnect the cloud pushes the streams that survived the drop ([D]
        `AppManager.deliverActiveStreamState`), so the SDK need not ask."""
        if s.stream is not None:
            await self._send_status(s, s.stream)
        if s.managed is not None:
            await self.core.send(s, managed_status_frame(s.managed))
