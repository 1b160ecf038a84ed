"""WHIP publishing as Mentra Live's Android WebRTC does it: an aiortc client in its own process.

    python -m detector_app.glasses.whip_client URL VIDEO [--loop] [--duration S] [--log SENT.jsonl]

POSTs the SDP offer (``application/sdp``) after ICE gathering completed (aiortc gathers inside
``setLocalDescription``; no trickle), expects 201 + answer + ``Location``, sends the video and DELETEs
the resource at the end or on SIGTERM. No Authorization header: the key is in the URL.

H.264 files are sent as they are (like the glasses' hardware encoder: no re-encode, the file's own
keyframes), converted to Annex-B for RTP; other codecs are decoded and aiortc encodes them. Packets
are paced on their timestamps in real time. Video only: our detector never uses the audio.

Progress goes to stdout as ffmpeg's ``-progress`` lines (``frame=N``), so ``glasses.publish``'s
``PublisherProcess`` watches this child exactly like an ffmpeg one. FFmpeg 5.1 (Debian 12) has no
WHIP muxer (that arrived in FFmpeg 8), hence aiortc.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO
from urllib.parse import urljoin

import aiohttp
import av
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from detector_app.ingest.rtc import ice_hosts, ice_hosts_towards, prefer_h264

OFFER_TIMEOUT_S = 10.0
DELETE_TIMEOUT_S = 2.0


class WhipRefused(RuntimeError):
    """The endpoint answered the offer with something other than 201."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"WHIP endpoint refused the offer: HTTP {status} {text.strip()[:120]}")
        self.status = status


class FileVideoTrack(MediaStreamTrack):
    """A video file as a live WebRTC track, paced in real time; H.264 passes through as packets.

    ``on_sent(index, wall_time)`` is called as each frame is handed to aiortc (the bench's send log).
    ``gate``, when given, holds the first frame until it is set (the bench's managed relay connects its
    viewers first and starts the video at "go"). The file is read in a worker thread, one packet at a
    time: nothing is read ahead."""

    kind = "video"

    def __init__(self, video: Path, loop: bool = False, duration: float | None = None,
                 on_sent: Callable[[int, float], None] | None = None, gate: asyncio.Event | None = None) -> None:
        super().__init__()
        self._gate = gate
        self._container = av.open(str(video))
        self._stream = self._container.streams.video[0]
        self._copy = self._stream.codec_context.name == "h264"
        self._bsf = av.bitstream.BitStreamFilterContext("h264_mp4toannexb", self._stream) if self._copy else None
        self._loop = loop
        self._duration = duration
        self._on_sent = on_sent
        self._pending: list = []
        self._first: float | None = None  # first timestamp of the file (s)
        self._span = 0.0  # length of one pass, for looping
        self._offset = 0.0  # added per completed pass
        self._t0: float | None = None
        self.origin_wall: float | None = None  # wall time of media time 0 (latency measurements)
        self.sent = 0
        self._demux = self._container.demux(self._stream)
        # ``_read`` runs in a worker thread and ``stop`` on the loop: PyAV demuxes without the GIL, so a
        # close during a read would free the demuxer under it. The lock makes the close wait for that read.
        self._io = threading.Lock()
        self._closed = False

    def _read(self) -> tuple[object, float] | None:
        """Next (packet or frame, media time since the start, loops included); None at the end."""
        with self._io:
            return None if self._closed else self._read_locked()

    def _read_locked(self) -> tuple[object, float] | None:
        while not self._pending:
            try:
                packet = next(self._demux)
            except StopIteration:
                if not self._loop:
                    return None
                self._offset += self._span + 1.0 / float(self._stream.average_rate or 30)
                self._container.seek(0)
                self._demux = self._container.demux(self._stream)
                continue
            if packet.pts is None and packet.dts is None:  # the demuxer's flush packet
                continue
            items = self._bsf.filter(packet) if self._bsf is not None else packet.decode()
            self._pending.extend(items)
        item = self._pending.pop(0)
        ts = item.pts if item.pts is not None else item.dts
        t = float(ts * item.time_base) if ts is not None else 0.0
        if self._first is None:
            self._first = t
        rel = t - self._first
        self._span = max(self._span, rel)
        return item, rel + self._offset

    async def recv(self):
        if self.readyState != "live":
            raise MediaStreamError
        if self._gate is not None and self._t0 is None:
            await self._gate.wait()
        got = await asyncio.to_thread(self._read)
        if got is None or (self._duration is not None and got[1] >= self._duration):
            self.stop()
            raise MediaStreamError
        item, rel = got
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now - rel
            self.origin_wall = time.time() - rel
        delay = self._t0 + rel - now
        if delay > 0:
            await asyncio.sleep(delay)
        tb = fractions.Fraction(1, 90000)
        item.pts = int(rel * 90000)
        item.time_base = tb
        if not self._copy:
            item.dts = None
        if self._on_sent is not None:
            self._on_sent(self.sent, time.time())
        self.sent += 1
        return item

    def stop(self) -> None:
        super().stop()
        with self._io:  # a read in flight finishes first (one packet of a local file)
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(Exception):
                self._container.close()


async def publish(url: str, video: Path, *, loop: bool = False, duration: float | None = None,
                  on_sent: Callable[[int, float], None] | None = None,
                  stop: asyncio.Event | None = None) -> int:
    """One WHIP session: offer → 201 answer → send until the video ends (or ``stop``) → DELETE.
    Returns the frames sent; ``WhipRefused`` for a non-201 answer."""
    stop = stop or asyncio.Event()
    pc = RTCPeerConnection()
    track = FileVideoTrack(video, loop=loop, duration=duration, on_sent=on_sent)
    ended = asyncio.Event()
    track.on("ended", ended.set)

    @pc.on("connectionstatechange")
    def _state() -> None:
        if pc.connectionState in ("failed", "closed"):
            ended.set()

    prefer_h264(pc.addTransceiver(track, direction="sendonly"))
    location: str | None = None
    timeout = aiohttp.ClientTimeout(total=OFFER_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        try:
            with ice_hosts(ice_hosts_towards(url)):
                await pc.setLocalDescription(await pc.createOffer())  # gathers every candidate first
            async with http.post(url, data=pc.localDescription.sdp, headers={"Content-Type": "application/sdp"}) as r:
                text = await r.text()
                if r.status != 201:
                    raise WhipRefused(r.status, text)
                location = urljoin(url, r.headers["Location"]) if "Location" in r.headers else None
            await pc.setRemoteDescription(RTCSessionDescription(sdp=text, type="answer"))
            waits = [asyncio.ensure_future(ended.wait()), asyncio.ensure_future(stop.wait())]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
        finally:
            if location is not None:
                with contextlib.suppress(Exception):
                    async with http.delete(location, timeout=aiohttp.ClientTimeout(total=DELETE_TIMEOUT_S)):
                        pass
            track.stop()
            await pc.close()
    return track.sent


def _progress(out: IO[str], sent: Callable[[], int], done: asyncio.Event) -> asyncio.Task[None]:
    """ffmpeg ``-progress`` lines on stdout every 0.5 s (and once at the end)."""
    async def run() -> None:
        while True:
            out.write(f"frame={sent()}\nprogress={'end' if done.is_set() else 'continue'}\n")
            out.flush()
            if done.is_set():
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(done.wait(), 0.5)
    return asyncio.ensure_future(run())


async def _main(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    counter = [0]
    log = open(args.log, "w") if args.log else None  # noqa: SIM115 - closed below

    def on_sent(i: int, t: float) -> None:
        counter[0] = i + 1
        if log is not None:
            if i == 0:
                log.write(json.dumps({"event": "connected", "t": t}) + "\n")
            log.write(json.dumps({"frame": i, "t": t}) + "\n")

    done = asyncio.Event()
    progress = _progress(sys.stdout, lambda: counter[0], done)
    try:
        if log is not None:
            log.write(json.dumps({"event": "connect_start", "t": time.time()}) + "\n")
        sent = await publish(args.url, args.video, loop=args.loop, duration=args.duration, on_sent=on_sent, stop=stop)
        if log is not None:
            log.write(json.dumps({"event": "end", "t": time.time(), "frames": sent}) + "\n")
        print(f"published {sent} video frames over WHIP", file=sys.stderr)
        return 0
    except Exception as exc:  # noqa: BLE001 - refused, unreachable, or an answer aiortc cannot take: one line
        print(f"WHIP publish failed: {str(exc) or type(exc).__name__}", file=sys.stderr)
        return 1
    finally:
        done.set()
        await progress
        if log is not None:
            log.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url")
    ap.add_argument("video", type=Path)
    ap.add_argument("--loop", action="store_true")
    ap.add_argument("--duration", type=float, default=None)
    ap.add_argument("--log", type=Path, default=None, help="JSONL of send times, one line per video frame")
    args = ap.parse_args(argv)
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
