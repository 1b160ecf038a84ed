"""The benchmark's timed publisher: remux a recorded video to RTMP or SRT (or send it over WHIP, or serve
it as a managed stream's WHEP relay) in real time and log send times.

Run it as its own process (``python -m detector_app.bench.publisher``): publishing and listening with
PyAV in one interpreter deadlocks on the GIL (field notes), and the pipeline's CPU must not include it.

It stream-copies video and audio (what Mentra Live's hardware encoder sends: H.264 + AAC), paces every
packet by its dts on the wall clock (sleep until ``t0 + dts``), and writes one JSON line per *video*
packet with the wall-clock time ``mux()`` returned (the bytes are in the socket). The frame index is the
order of the video packets, which equals the frame counter drawn into the fixture frames because the
fixtures are encoded without B-frames (``-tune zerolatency``).

Audio is paced ``AUDIO_LEAD_S`` (100 ms) ahead of its dts. Reason: FFmpeg's muxer interleaves by dts and
holds a video packet until every other stream has a packet queued; with audio paced exactly, each video
frame would wait up to one AAC frame (23 ms) inside ``mux()``'s queue after we logged it as sent. With
the audio queued a little early, a video packet is written (and its time logged) in the same ``mux()``
call, so the logged time is when its bytes really left.

RTMP: PyAV writes FLV straight to ``rtmp://…`` (the first ``mux()`` connects and does the handshake).
SRT: PyAV wheels from 16.0 on have no libsrt, so PyAV writes MPEG-TS into the stdin pipe of a child
``srt-live-transmit`` (the SRT caller, like the glasses), which forwards it unchanged to the SRT URL in
1316-byte payloads. That hop adds one pipe write/read in the relay (well under 1 ms), which is included
in the measured latency.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import av

from detector_app.procs import stop_process

AUDIO_LEAD_S = 0.1  # audio goes out this much ahead of its dts, see publish()


class _SrtRelay:
    """The one SRT relay child (``glasses.publish.spawn_srt_relay``): PyAV writes MPEG-TS into its stdin."""

    def __init__(self, url: str) -> None:
        from detector_app.glasses.publish import GlassesError, spawn_srt_relay

        try:
            self.proc = spawn_srt_relay(url)
        except GlassesError as exc:
            raise SystemExit(str(exc)) from None

    @property
    def sink(self):
        return self.proc.stdin

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()  # EOF: the relay sends what it has and exits
        try:
            self.proc.wait(3)
        except subprocess.TimeoutExpired:
            stop_process(self.proc)


def publish_whip(video: Path, url: str, duration: float, log_path: Path, wait_go: bool = False) -> int:
    """WHIP: the virtual glasses' own aiortc client (``glasses.whip_client``), video only, the file's
    H.264 as it is; a frame's send time is when it is handed to aiortc's RTP packetizer."""
    import asyncio

    from detector_app.glasses.whip_client import publish as whip_publish

    if wait_go:
        print("PUBLISHER_READY", flush=True)
        sys.stdin.readline()
    with open(log_path, "w") as log:
        log.write(json.dumps({"event": "connect_start", "t": time.time()}) + "\n")

        def on_sent(i: int, t: float) -> None:
            if i == 0:
                log.write(json.dumps({"event": "connected", "t": t}) + "\n")
            log.write(json.dumps({"frame": i, "t": t}) + "\n")

        sent = asyncio.run(whip_publish(url, video, duration=duration, on_sent=on_sent))
        log.write(json.dumps({"event": "end", "t": time.time(), "frames": sent}) + "\n")
    return sent


def relay_managed(video: Path, duration: float, log_paths: list[Path], wait_go: bool = False) -> int:
    """Managed streams: here the glasses' side is the cloud's relay, and the worker pulls from it. This
    process plays the simulator's relay (``ManagedMedia``: WHEP, plus its HLS/DASH packager), one managed
    stream per log, and prints the WHEP URLs with PUBLISHER_READY. The worker's viewers connect before
    "go"; every track holds its first frame until then, so the video starts at "go" as a push does. A
    frame's send time is when it is handed to aiortc, as for WHIP. Returns the frames sent."""
    import asyncio
    import threading

    from detector_app.glasses.whip_client import FileVideoTrack
    from detector_app.mentra.simulator.managed_media import ManagedMedia

    logs = [open(p, "w") for p in log_paths]  # noqa: SIM115 - closed below
    gate = asyncio.Event()  # waited on by the tracks, on the WebRTC loop
    tracks: dict[int, FileVideoTrack] = {}
    lock = threading.Lock()

    def make_track(stream_id: str, path: Path) -> FileVideoTrack:
        i = int(stream_id.removeprefix("bench"))
        log = logs[i]
        with lock:
            if i in tracks:  # a viewer that reconnects gets the video again, but its frames are not logged:
                log.write(json.dumps({"event": "viewer_again", "t": time.time()}) + "\n")  # frame k is sent once
                return FileVideoTrack(path, duration=duration, gate=gate)

            def on_sent(k: int, t: float) -> None:
                if k == 0:
                    log.write(json.dumps({"event": "connected", "t": t}) + "\n")
                log.write(json.dumps({"frame": k, "t": t}) + "\n")

            tracks[i] = FileVideoTrack(path, duration=duration, on_sent=on_sent, gate=gate)
            return tracks[i]

    media = ManagedMedia(make_track=make_track)
    try:
        urls = [asyncio.run(media.start(f"bench{i}", video)).webrtc_url for i in range(len(logs))]
        print("PUBLISHER_READY " + json.dumps({"urls": urls}), flush=True)
        if wait_go:
            sys.stdin.readline()
        t_go = time.time()
        for log in logs:
            log.write(json.dumps({"event": "connect_start", "t": t_go}) + "\n")
        media.rtc.loop.call_soon_threadsafe(gate.set)
        deadline = time.monotonic() + duration + 5.0  # a viewer that never came: its log has no frames
        while time.monotonic() < deadline:
            with lock:
                if len(tracks) == len(logs) and all(t.readyState == "ended" for t in tracks.values()):
                    break
            time.sleep(0.05)
        t_end = time.time()
        for i, log in enumerate(logs):
            sent = tracks[i].sent if i in tracks else 0
            log.write(json.dumps({"event": "end", "t": t_end, "frames": sent}) + "\n")
        return sum(t.sent for t in tracks.values())
    finally:
        asyncio.run(media.close())
        for log in logs:
            log.close()


def publish(video: Path, url: str, duration: float, log_path: Path, wait_go: bool = False) -> int:
    """Publish ``duration`` seconds of ``video`` to ``url`` in real time; returns the number of video frames sent."""
    if url.lower().startswith(("http://", "https://")):
        return publish_whip(video, url, duration, log_path, wait_go)
    srt = url.lower().startswith("srt://")
    relay: _SrtRelay | None = None
    inp = av.open(str(video))
    out = None
    sent = 0
    try:
        vin = inp.streams.video[0]
        streams = [vin] + ([inp.streams.audio[0]] if inp.streams.audio else [])
        if wait_go:  # everything is loaded: let the parent start its measurement window now
            print("PUBLISHER_READY", flush=True)
            sys.stdin.readline()
        with open(log_path, "w") as log:
            t_connect = time.time()  # "the glasses start streaming": time to first detection counts from here
            log.write(json.dumps({"event": "connect_start", "t": t_connect}) + "\n")
            if srt:
                relay = _SrtRelay(url)
            target, fmt = (relay.sink, "mpegts") if relay else (url, "flv")
            out = av.open(target, "w", format=fmt, options={"flush_packets": "1"})
            omap = {s.index: out.add_stream_from_template(s) for s in streams}
            t0: float | None = None
            first_dts: float | None = None
            for pkt in inp.demux(streams):
                if pkt.dts is None or pkt.size == 0:
                    continue
                dts = float(pkt.dts * pkt.time_base)
                if first_dts is None:
                    first_dts = dts
                rel = dts - first_dts
                if rel >= duration:
                    if pkt.stream.index == vin.index:
                        break
                    continue
                is_video = pkt.stream.index == vin.index
                if t0 is not None:
                    delay = t0 + rel - (0.0 if is_video else AUDIO_LEAD_S) - time.time()
                    if delay > 0:
                        time.sleep(delay)
                pkt.stream = omap[pkt.stream.index]
                out.mux(pkt)
                now = time.time()
                if t0 is None:  # the first mux connected (RTMP handshake): pace from here
                    t0 = now - rel
                    log.write(json.dumps({"event": "connected", "t": now}) + "\n")
                if is_video:
                    log.write(json.dumps({"frame": sent, "t": now}) + "\n")
                    sent += 1
            log.write(json.dumps({"event": "end", "t": time.time(), "frames": sent}) + "\n")
    finally:
        if out is not None:
            with contextlib.suppress(Exception):  # the receiver may already be gone
                out.close()
        inp.close()
        if relay is not None:
            relay.close()
    return sent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", type=Path, required=True)
    ap.add_argument("--url", required=True, help="rtmp://, srt://, http(s):// (WHIP), or 'managed' (serve WHEP)")
    ap.add_argument("--duration", type=float, required=True)
    ap.add_argument("--log", type=Path, action="append", required=True,
                    help="JSONL of send times, one line per video frame (managed: once per stream)")
    ap.add_argument("--wait-go", action="store_true", help="print PUBLISHER_READY, then wait for a line on stdin")
    args = ap.parse_args(argv)
    if args.url != "managed" and len(args.log) != 1:
        ap.error("one --log per publisher (several only with --url managed)")
    try:
        if args.url == "managed":
            n = relay_managed(args.video, args.duration, args.log, wait_go=args.wait_go)
        else:
            n = publish(args.video, args.url, args.duration, args.log[0], wait_go=args.wait_go)
    except (av.error.FFmpegError, OSError, RuntimeError) as exc:  # RuntimeError: WhipRefused
        print(f"publisher failed: {exc}", file=sys.stderr)
        return 1
    print(f"published {n} video frames", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
