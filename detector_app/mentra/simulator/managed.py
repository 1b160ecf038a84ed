"""Managed streams as the V3 cloud runs them (`ManagedStreamingExtension`, docs/mentraos-3x.md): the app
asks for a stream without a URL, the cloud relays the glasses' video and answers `managed_stream_status`
initializing → active (with the playback URLs) → stopped.

The media side (what serves the WHEP / HLS URLs from the virtual glasses' video) is a `ManagedMediaServer`
(`managed_media.ManagedMedia` by default); this module only speaks the protocol around it.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from loguru import logger

from .core import SimCore
from .replies import MANAGED_WAITING, Rejection, check_managed_request, managed_status_frame, playback_urls
from .state import ManagedStreamState, UserSession


class PlaybackUrls(Protocol):
    """What `ManagedMediaServer.start` returns (`managed_media.ManagedUrls`)."""

    webrtc_url: str
    hls_url: str
    dash_url: str | None


class ManagedMediaServer(Protocol):
    """Serves one managed stream's playback URLs from `video` until `stop`."""

    async def start(self, stream_id: str, video: Path | None) -> PlaybackUrls: ...

    async def stop(self, stream_id: str) -> None: ...

    async def close(self) -> None: ...


def default_media_server(core: SimCore) -> ManagedMediaServer:
    """The project's media server for managed streams (WHEP + HLS from the glasses' video)."""
    from .managed_media import ManagedMedia  # noqa: PLC0415 - optional part: only managed streams need it

    return ManagedMedia(host=core.config.host)  # type: ignore[return-value]


class ManagedStreams:
    def __init__(self, core: SimCore, media: ManagedMediaServer | None = None) -> None:
        self.core = core
        self._media = media

    def media(self) -> ManagedMediaServer:
        if self._media is None:
            self._media = default_media_server(self.core)
        return self._media

    async def request(self, s: UserSession, ws: web.WebSocketResponse, data: dict[str, Any]) -> None:
        """Checks, `initializing`, the relay up, then `active` with URLs (or `error` when it fails)."""
        core = self.core
        rejection = check_managed_request(core.permissions(), core.config.faults, core.device)
        if rejection is not None:
            await core.reject(ws, s, rejection)
            return
        if s.managed is not None:  # the cloud joins the app to its existing stream: report it again
            await core.send(s, managed_status_frame(s.managed))
            return
        if s.stream is not None:  # [D] StreamRegistry: managed never pre-empts a direct stream (§4.7)
            await core.reject(ws, s, Rejection("INTERNAL_ERROR", "Cannot start managed stream - unmanaged stream already active"))
            return
        stream = s.managed = ManagedStreamState(secrets.token_hex(8))
        core.echo(f"[cloud] {s.user_id}: managed stream {stream.stream_id} requested")
        await core.send(s, managed_status_frame(stream, MANAGED_WAITING))
        try:
            urls = await self.media().start(stream.stream_id, core.config.video)
        except Exception as exc:  # noqa: BLE001 - any relay failure is the app's `error` status
            logger.warning("managed stream {} failed to start: {}", stream.stream_id, exc)
            if s.managed is stream:
                s.managed = None
                stream.status = "error"
                await core.send(s, managed_status_frame(stream, f"Failed to start managed stream: {exc}"))
            return
        if s.managed is not stream:  # stopped while the relay came up
            await self.media().stop(stream.stream_id)
            return
        stream.status = "active"
        stream.urls = playback_urls(urls.webrtc_url, urls.hls_url, urls.dash_url, None, None)
        if not urls.dash_url:  # the real cloud always has one (Cloudflare); the 3.x SDK waits for both
            logger.warning("managed stream {} has no dashUrl: a 3.x SDK's startStream() resolves only with "
                           "hlsUrl and dashUrl (CameraManager), so it times out after 30 s", stream.stream_id)
        core.echo(f"[cloud] {s.user_id}: managed stream {stream.stream_id} active: {stream.urls}")
        await core.send(s, managed_status_frame(stream))

    async def stop(self, s: UserSession) -> None:
        """`stopped` at once (no `stopping`: [D] `stopManagedStream`), then the relay goes."""
        stream = s.managed
        if stream is None:
            self.core.record("sim", "managed_stop_no_stream", s.user_id, {})
            return
        s.managed = None
        stream.status = "stopped"
        await self.core.send(s, managed_status_frame(stream))
        self.core.echo(f"[cloud] {s.user_id}: managed stream {stream.stream_id} stopped")
        if self._media is not None:
            await self._media.stop(stream.stream_id)

    async def close(self) -> None:
        if self._media is not None:
            await self._media.close()

