"""The one publisher module (glasses/publish.py): commands, the codec probe, the process lifecycle in
both faces, and the SRT relay helper, with real ffmpeg / srt-live-transmit processes on loopback."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from detector_app.glasses.publish import (
    AsyncPublisher,
    GlassesError,
    PublisherProcess,
    build_publish_command,
    spawn_srt_relay,
    srt_caller_uri,
    video_codec_of,
)
from detector_app.ingest.addresses import free_port, listening
from detector_app.ingest.srt import SRT_LATENCY_MS
from detector_app.procs import stop_process

from .conftest import need


def test_command_per_protocol_and_codec(tmp_path: Path) -> None:
    v = tmp_path / "v.mp4"
    rtmp = build_publish_command("rtmp://h/live/k", v, video_codec="h264")
    assert rtmp[-3:] == ["-f", "flv", "rtmp://h/live/k"] and ["-c:v", "copy"] == rtmp[rtmp.index("-c:v"):][:2]
    assert "-stream_loop" in rtmp
    srt = build_publish_command("srt://h:1?streamid=k", v, loop=False, video_codec="hevc")
    assert srt[-3:-1] == ["-f", "mpegts"] and "libx264" in srt and "-stream_loop" not in srt
    assert "testsrc2=size=854x480:rate=15" in build_publish_command("rtmp://h/l/k", None)
    whip = build_publish_command("https://h/whip/k", v, loop=False)  # WHIP: our aiortc client as the child
    assert whip[1:] == ["-m", "detector_app.glasses.whip_client", "https://h/whip/k", str(v)]
    for bad, video, msg in (("https://h/whip/k", None, "WHIP virtual glasses need a video file"),
                            ("udp://h:1", v, "Unknown stream URL protocol")):
        with pytest.raises(GlassesError, match=msg):
            build_publish_command(bad, video)


def test_codec_probe_reads_the_file_and_follows_its_changes(tmp_path: Path) -> None:
    need("ffprobe", "apt-get install ffmpeg")
    v = tmp_path / "v.mkv"

    def make(codec: str) -> None:
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=5", "-t", "1",
                        "-c:v", codec, str(v)], check=True, timeout=30)

    make("libx264")
    assert video_codec_of(v) == "h264"
    time.sleep(0.01)  # a new mtime: the cache must not answer for the old file
    make("mpeg4")
    assert video_codec_of(v) == "mpeg4"
    assert video_codec_of(tmp_path / "missing.mp4") is None


def test_srt_caller_uri_uses_the_ingest_latency() -> None:
    uri = srt_caller_uri(f"srt://10.0.0.5:9000?streamid=KEY1234567&passphrase=KEY1234567&pbkeylen=16"
                         f"&latency={SRT_LATENCY_MS * 1000}")
    assert uri == (f"srt://10.0.0.5:9000?mode=caller&latency={SRT_LATENCY_MS}&passphrase=KEY1234567&pbkeylen=16"
                   "&streamid=KEY1234567")


def test_srt_relay_carries_a_pipe_to_an_srt_listener(tmp_path: Path) -> None:
    need("srt-live-transmit", "apt-get install srt-tools")
    port, key = free_port(udp=True), "relaytest123"
    received = tmp_path / "received.ts"
    with received.open("wb") as out:
        listener = subprocess.Popen(
            ["srt-live-transmit", "-a:no", "-q", f"srt://127.0.0.1:{port}?mode=listener&passphrase={key}", "file://con"],
            stdout=out, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not listening(port, udp=True) and time.monotonic() < deadline:
            time.sleep(0.05)
        relay = spawn_srt_relay(f"srt://127.0.0.1:{port}?streamid={key}&passphrase={key}&pbkeylen=16")
        packet = b"\x47\x1f\xff\x10" + b"\xff" * 184  # MPEG-TS null packets
        assert relay.stdin is not None
        deadline = time.monotonic() + 10
        while received.stat().st_size < 188 * 50 and time.monotonic() < deadline:
            relay.stdin.write(packet * 7)
            time.sleep(0.02)
        relay.stdin.close()
        stop_process(relay, 3.0)
        assert received.stat().st_size >= 188 * 50, "the relay did not deliver the piped stream"
    finally:
        listener.kill()
        listener.wait(5)


def test_process_that_cannot_connect_exits_with_its_error() -> None:
    need("ffmpeg", "apt-get install ffmpeg")
    cmd = build_publish_command(f"rtmp://127.0.0.1:{free_port()}/live/k", None)  # nobody listens
    proc = PublisherProcess(cmd, "t").start()
    assert proc.wait(15), "ffmpeg did not give up"
    assert proc.returncode != 0 and not proc.running.is_set() and proc.running_at is None
    assert proc.last_error(), "the stderr tail names why"
    proc.stop()


def test_async_publisher_runs_then_stops_within_its_grace(tmp_path: Path) -> None:
    need("ffmpeg", "apt-get install ffmpeg")
    port = free_port()
    receiver = subprocess.Popen(["ffmpeg", "-v", "error", "-listen", "1", "-i", f"rtmp://127.0.0.1:{port}/live/k",
                                 "-f", "null", "-"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    deadline = time.monotonic() + 10
    while not listening(port) and time.monotonic() < deadline:  # /proc/net/tcp: no probe connection
        time.sleep(0.05)

    async def body() -> None:
        pub = AsyncPublisher(build_publish_command(f"rtmp://127.0.0.1:{port}/live/k", None), "t")
        await pub.start()
        assert await pub.wait_running_or_exit(15), f"never ran: {list(pub.stderr_tail)}"
        t = time.monotonic()
        await pub.stop(grace=2.0)
        assert pub.exited.is_set() or await asyncio.wait_for(pub.exited.wait(), 1)
        assert pub.returncode is not None and time.monotonic() - t < 3.0

    try:
        asyncio.run(body())
    finally:
        receiver.kill()
        receiver.wait(5)


def test_sync_publisher_video_must_exist(tmp_path: Path) -> None:
    from detector_app.glasses.publish import Publisher

    with pytest.raises(GlassesError, match="video not found"):
        Publisher(tmp_path / "nope.mp4", "rtmp://127.0.0.1:1/live/k")
    assert shutil.which("ffmpeg")  # the rest of the suite relies on it
