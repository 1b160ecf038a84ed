"""The simulator's managed-stream media: WHEP and live HLS of the virtual glasses' video.

    media = ManagedMedia()                       # its own small HTTP server on 127.0.0.1, started lazily
    urls = await media.start(stream_id, video)   # ManagedUrls(webrtc_url, hls_url, dash_url)
    await media.stop(stream_id); await media.close()

* WHEP (``POST /whep/<id>`` → 201 answer, ``DELETE /whep/<id>/<res>``): each viewer gets an aiortc
  peer connection sending the video in real time, looped (``glasses.whip_client.FileVideoTrack``:
  the file's H.264 as it is, the way the real relay forwards the glasses' encoder output).
* HLS (``GET /hls/<id>/index.m3u8``): an ``ffmpeg -re -stream_loop -1 … -c copy -f hls`` child writes
  1 s-target segments into a temp dir (segments are cut on keyframes, so they are one GOP long: 2 s
  for Mentra Live and our fixtures), 4 in the playlist, old ones deleted.
* DASH (``GET /dash/<id>/manifest.mpd``): the same ffmpeg child also writes a live DASH manifest of the
  same packets (fMP4 segments, 4 in the window). Nobody here pulls it (our miniapp falls back to HLS),
  but the real cloud always hands out a ``dashUrl`` and a 3.x SDK's ``startStream()`` waits for it.

Every peer connection and the HTTP server live on the process's one WebRTC loop (``ingest.rtc``);
the public methods may be awaited from any loop (the simulator's). ``stop`` ends the ffmpeg child
and the stream's peer connections and removes its temp dir; nothing outlives ``close``.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from loguru import logger

from detector_app.glasses.publish import find_ffmpeg
from detector_app.ingest.addresses import free_port
from detector_app.ingest.rtc import RtcLoop, ice_hosts, ice_hosts_for
from detector_app.procs import die_with_parent, stop_process

if TYPE_CHECKING:
    from aiortc import MediaStreamTrack

HLS_TIME_S = 1
HLS_LIST_SIZE = 4
PLAYLIST_WAIT_S = 8.0


@dataclass(frozen=True, slots=True)
class ManagedUrls:
    webrtc_url: str
    hls_url: str
    dash_url: str | None = None


@dataclass(slots=True)
class _Stream:
    stream_id: str
    video: Path
    dir: Path
    ffmpeg: subprocess.Popen[bytes]
    viewers: dict[str, object] = field(default_factory=dict)  # resource → RTCPeerConnection
    tracks: dict[str, object] = field(default_factory=dict)  # resource → its FileVideoTrack
    started_at: float = field(default_factory=time.time)  # ≈ the HLS packager's media time 0


def _looped(_stream_id: str, video: Path) -> MediaStreamTrack:
    """The default viewer track: the stream's video, looped in real time."""
    from detector_app.glasses.whip_client import FileVideoTrack

    return FileVideoTrack(video, loop=True)


class ManagedMedia:
    """Serves every managed stream of one simulator (``ManagedMediaServer`` in ``simulator.managed``)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, public_host: str | None = None,
                 make_track: Callable[[str, Path], MediaStreamTrack] | None = None) -> None:
        """``host`` is where it listens; ``public_host`` goes into the URLs (default: ``host``, or
        127.0.0.1 for a wildcard bind). ``make_track(stream_id, video)`` builds each WHEP viewer's track
        (default: the video looped in real time; the bench logs every frame's send time instead)."""
        self.make_track = make_track or _looped
        self.host = host
        self.public_host = public_host or ("127.0.0.1" if host in ("", "0.0.0.0", "::") else host)
        self.port = port
        self.rtc = RtcLoop.get()
        self._streams: dict[str, _Stream] = {}
        self._runner: web.AppRunner | None = None
        self._tmp: Path | None = None
        self._test_pattern: Path | None = None

    # -- public (any loop) ---------------------------------------------------------------------------
    async def start(self, stream_id: str, video: Path | None) -> ManagedUrls:
        return await self.rtc.call(self._start(stream_id, video))

    async def stop(self, stream_id: str) -> None:
        await self.rtc.call(self._stop(stream_id))

    async def close(self) -> None:
        await self.rtc.call(self._close())

    def origin(self, stream_id: str, transport: str) -> float | None:
        """Wall time at which the video's media time 0 went out (newest WHEP viewer, or the HLS
        packager's start), so a latency measurement can compare a frame's counter with its arrival."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return None
        if transport == "hls":
            return stream.started_at
        origins = [t.origin_wall for t in stream.tracks.values() if getattr(t, "origin_wall", None)]
        return origins[-1] if origins else None

    def base_url(self) -> str:
        return f"http://{self.public_host}:{self.port}"

    # -- on the WebRTC loop --------------------------------------------------------------------------
    async def _serve(self) -> None:
        if self._runner is not None:
            return
        app = web.Application()
        app.add_routes([
            web.post("/whep/{sid}", self._whep_offer),
            web.delete("/whep/{sid}/{res}", self._whep_delete),
            web.get("/hls/{sid}/{name}", self._hls_file),
            web.get("/dash/{sid}/{name}", self._dash_file),
        ])
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        if self.port == 0:
            self.port = free_port(self.host)
        await web.TCPSite(self._runner, self.host, self.port).start()
        self._tmp = Path(tempfile.mkdtemp(prefix="sim-managed-"))

    async def _start(self, stream_id: str, video: Path | None) -> ManagedUrls:
        await self._serve()
        assert self._tmp is not None
        if stream_id in self._streams:
            await self._stop(stream_id)
        source = Path(video) if video is not None else await self._pattern()
        out = self._tmp / stream_id
        out.mkdir()
        cmd = [find_ffmpeg(), "-hide_banner", "-nostdin", "-loglevel", "error", "-re", "-stream_loop", "-1",
               "-i", str(source), "-map", "0:v:0", "-c:v", "copy", "-an", "-f", "hls",
               "-hls_time", str(HLS_TIME_S), "-hls_list_size", str(HLS_LIST_SIZE),
               "-hls_flags", "delete_segments+independent_segments+omit_endlist",
               "-hls_segment_filename", str(out / "seg%05d.ts"), str(out / "index.m3u8"),
               "-map", "0:v:0", "-c:v", "copy", "-an", "-f", "dash", "-seg_duration", str(HLS_TIME_S),
               "-window_size", str(HLS_LIST_SIZE), "-extra_window_size", "2", "-remove_at_exit", "1",
               "-init_seg_name", "init.m4s", "-media_seg_name", "chunk-$Number%05d$.m4s",
               str(out / "manifest.mpd")]
        log = out / "ffmpeg.log"  # a file, not a pipe nobody reads (a full pipe would stall ffmpeg)
        with open(log, "wb") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                    start_new_session=True, preexec_fn=die_with_parent)
        stream = self._streams[stream_id] = _Stream(stream_id, source, out, proc)
        deadline = time.monotonic() + PLAYLIST_WAIT_S
        while not ((out / "index.m3u8").exists() and (out / "manifest.mpd").exists()):  # a player can start now
            if proc.poll() is not None or time.monotonic() > deadline:
                why = log.read_text(errors="replace").strip()[-300:] or f"no playlist within {PLAYLIST_WAIT_S:.0f} s"
                await self._stop(stream_id)
                raise RuntimeError(f"HLS packager did not start: {why}")
            await asyncio.sleep(0.1)
        logger.info("managed stream {}: WHEP, HLS and DASH of {} on {}", stream_id, stream.video.name, self.base_url())
        return ManagedUrls(webrtc_url=f"{self.base_url()}/whep/{stream_id}",
                           hls_url=f"{self.base_url()}/hls/{stream_id}/index.m3u8",
                           dash_url=f"{self.base_url()}/dash/{stream_id}/manifest.mpd")

    async def _pattern(self) -> Path:
        """No video configured: a short H.264 test pattern, made once (looped like any file)."""
        assert self._tmp is not None
        if self._test_pattern is None:
            path = self._tmp / "pattern.mp4"
            cmd = [find_ffmpeg(), "-hide_banner", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                   "testsrc2=size=854x480:rate=15:duration=4", "-c:v", "libx264", "-preset", "ultrafast",
                   "-g", "30", "-pix_fmt", "yuv420p", str(path)]
            await asyncio.to_thread(subprocess.run, cmd, check=True, timeout=30, stdin=subprocess.DEVNULL)
            self._test_pattern = path
        return self._test_pattern

    async def _stop(self, stream_id: str) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        pcs = list(stream.viewers.values())
        stream.viewers.clear()
        for track in stream.tracks.values():
            track.stop()  # type: ignore[attr-defined]
        stream.tracks.clear()
        await asyncio.gather(*(pc.close() for pc in pcs), return_exceptions=True)  # type: ignore[attr-defined]
        await asyncio.to_thread(stop_process, stream.ffmpeg, 1.0, True, 1.0)
        shutil.rmtree(stream.dir, ignore_errors=True)

    async def _close(self) -> None:
        for sid in list(self._streams):
            await self._stop(sid)
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
            self._test_pattern = None

    # -- HTTP handlers (on the WebRTC loop) ------------------------------------------------------------
    async def _whep_offer(self, request: web.Request) -> web.Response:
        from aiortc import RTCPeerConnection, RTCSessionDescription

        from detector_app.ingest.rtc import prefer_h264

        stream = self._streams.get(request.match_info["sid"])
        if stream is None:
            return web.Response(status=404, text="unknown stream\n")
        if request.content_type != "application/sdp":
            return web.Response(status=415, text="offer must be application/sdp\n")
        pc = RTCPeerConnection()
        track = self.make_track(stream.stream_id, stream.video)
        resource = secrets.token_urlsafe(9)
        try:
            # Our transceiver first, H.264 only: the offer's video m-line binds to it, so the answer
            # carries the file's packets as they are (no transcoding in the relay).
            prefer_h264(pc.addTransceiver(track, direction="sendonly"))
            await pc.setRemoteDescription(RTCSessionDescription(sdp=await request.text(), type="offer"))
            if not any(t.kind == "video" and t.mid is not None for t in pc.getTransceivers()):
                raise ValueError("the offer has no video")
            with ice_hosts(ice_hosts_for(self.host)):  # ICE where the HTTP side listens
                await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # noqa: BLE001 - a bad offer is the viewer's 400
            track.stop()
            await pc.close()
            return web.Response(status=400, text=f"cannot answer this offer: {exc}\n")
        stream.viewers[resource] = pc
        stream.tracks[resource] = track

        @pc.on("connectionstatechange")
        async def _state() -> None:
            if pc.connectionState in ("failed", "closed"):
                stream.viewers.pop(resource, None)
                stream.tracks.pop(resource, None)
                track.stop()
                await pc.close()

        return web.Response(status=201, text=pc.localDescription.sdp,
                            headers={"Content-Type": "application/sdp",
                                     "Location": f"/whep/{stream.stream_id}/{resource}"})

    async def _whep_delete(self, request: web.Request) -> web.Response:
        stream = self._streams.get(request.match_info["sid"])
        pc = stream.viewers.pop(request.match_info["res"], None) if stream is not None else None
        track = stream.tracks.pop(request.match_info["res"], None) if stream is not None else None
        if track is not None:
            track.stop()  # type: ignore[attr-defined]  # its file closes now, not when collected
        if pc is None:
            return web.Response(status=404)
        await pc.close()  # type: ignore[attr-defined]
        return web.Response(status=200)

    async def _hls_file(self, request: web.Request) -> web.StreamResponse:
        return self._packaged_file(request, "index.m3u8", ".ts")

    async def _dash_file(self, request: web.Request) -> web.StreamResponse:
        return self._packaged_file(request, "manifest.mpd", ".m4s")

    def _packaged_file(self, request: web.Request, manifest: str, segment_suffix: str) -> web.StreamResponse:
        """One of ffmpeg's outputs by name: only its manifest and segments, never another path."""
        stream = self._streams.get(request.match_info["sid"])
        name = request.match_info["name"]
        if stream is None or "/" in name or not (name == manifest or name.endswith(segment_suffix)):
            return web.Response(status=404)
        path = stream.dir / name
        if not path.is_file():
            return web.Response(status=404)
        return web.FileResponse(path, headers={"Cache-Control": "no-cache"})
