"""WHIP ingest end to end: a real aiortc publisher child POSTs its offer to our real WHIP endpoint on
loopback, the received H.264 track goes through the same decode → sample → detect path, and the
detections are scored against the fixture's ground truth like the RTMP and SRT replays."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import aiohttp
import pytest

from detector_app.fixtures.evaluate import score
from detector_app.glasses.publish import Publisher
from detector_app.ingest.factory import open_listener
from detector_app.pipeline import Pipeline

from .conftest import Collect, wait_for


@pytest.mark.slow
def test_whip_replay_matches_ground_truth(fixture_videos, truth_for, detector, replay_recording):
    """``replay --protocol whip`` through the public test API, scored exactly as the RTMP/SRT replays."""
    video = fixture_videos["cat_480p15"]
    run = replay_recording(video, via="whip", detector=detector, frame_counter=True)
    summary = run.summary
    assert not summary.errors, summary.errors
    truth = truth_for(video)
    s = score(truth, [r.to_json() for r in run.results])
    boxes = run.score(video.with_suffix(".coco.json"))
    print(f"whip cat_480p15: {s.to_text()}; {summary.detections_per_s:.2f} inf/s; first frame "
          f"{summary.first_frame_s} s; latency p50 {summary.latency_ms['p50']} ms; boxes {boxes}")
    assert s.seconds_pos >= 5 and s.seconds_neg >= 2
    assert s.recall >= 0.9 and s.precision >= 0.9, s
    assert s.median_iou is not None and s.median_iou >= 0.5, s
    assert boxes["box_recall"] >= 0.9 and boxes["box_precision"] >= 0.9, boxes
    assert summary.detections_per_s >= 8.0
    # Counted from the publisher's spawn: a Python child importing cv2 + aiortc (1.3 s quiet, 2.3 s+ on a loaded
    # box) before its offer; the ingest's own part (offer accepted → first frame) is bounded in the next test.
    assert summary.first_frame_s is not None and summary.first_frame_s <= 6.0
    assert summary.frames_decoded >= truth["frames"] * 0.95


async def _http(method: str, url: str, body: str = "", content_type: str = "application/sdp") -> int:
    async with aiohttp.ClientSession() as s:
        async with s.request(method, url, data=body, headers={"Content-Type": content_type}) as r:
            await r.read()
            return r.status


@pytest.mark.slow
def test_whip_wrong_key_is_refused_before_any_media(fixture_videos, detector):
    endpoint, source = open_listener("whip", port=0, bind_host="127.0.0.1", advertise="127.0.0.1", for_glasses=False)
    got = Collect()
    pipeline = Pipeline(source, detector, sinks=[got]).start()
    try:
        base = endpoint.local_publish_url.rsplit("/", 1)[0]
        wrong = f"{base}/{'x' * len(endpoint.key)}"
        # A real aiortc publisher with a wrong key: 404, it exits with the reason, nothing is decoded.
        pub = Publisher(fixture_videos["cat_480p15"], wrong, retries=0).start()
        assert pub.wait(20)
        assert pub.returncode == 1 and "HTTP 404" in pub.stderr_tail[-1], list(pub.stderr_tail)
        assert source.ingest.rejected == 1
        # Wrong key with any body (not even SDP) is 404 too: the key is checked first.
        assert asyncio.run(_http("POST", wrong, "not sdp", "text/plain")) == 404
        assert asyncio.run(_http("DELETE", wrong + "/abc")) == 404
        # The right key: a non-SDP body is 415, an SDP without video 400, trickle PATCH 405, unknown resource 404.
        right = endpoint.local_publish_url
        assert asyncio.run(_http("POST", right, "x", "text/plain")) == 415
        assert asyncio.run(_http("POST", right, "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n")) == 400
        assert asyncio.run(_http("PATCH", right + "/abc", "a=candidate")) == 405
        assert asyncio.run(_http("DELETE", right + "/abc")) == 404
        time.sleep(0.5)
        health = pipeline.health()
        assert health.frames_decoded == 0 and health.publisher_sessions == 0 and got.count() == 0
    finally:
        pipeline.stop()


@pytest.mark.slow
def test_whip_publisher_replaced_dropped_and_back(fixture_videos, detector):
    """A second POST for a live key replaces the first publisher; a publisher killed without DELETE
    ends its session within a few seconds; the next POST is a new session with detections again."""
    video = fixture_videos["cat_480p15"]
    endpoint, source = open_listener("whip", port=0, bind_host="127.0.0.1", advertise="127.0.0.1", for_glasses=False)
    got = Collect()
    pipeline = Pipeline(source, detector, sinks=[got]).start()
    publishers: list[Publisher] = []

    def start() -> Publisher:
        publishers.append(Publisher(video, endpoint.local_publish_url, loop=True).start())
        return publishers[-1]

    def cats(session: int) -> int:
        return got.count(lambda r: r["extra"]["session"] == session and any(d["label"] == "cat" for d in r["detections"]))

    try:
        first = start()
        assert wait_for(lambda: cats(1) >= 5, 15), pipeline.health()
        second = start()  # same key while the first is live: it replaces it
        assert wait_for(lambda: cats(2) >= 5, 15), pipeline.health()
        assert pipeline.health().publisher_sessions == 2
        assert wait_for(first.done.is_set, 10), "the replaced publisher's connection was not closed"
        # The glasses vanish: SIGKILL, so no DELETE is sent.
        os.killpg(second._current.pid, signal.SIGKILL)
        t_kill = time.monotonic()
        assert wait_for(lambda: not pipeline.health().connected, 8)
        ended_after = time.monotonic() - t_kill
        print(f"whip: session ended {ended_after:.2f} s after the publisher was killed")
        assert ended_after <= 5.0
        start()  # back: a new POST is a new session
        assert wait_for(lambda: cats(3) >= 5, 15), pipeline.health()
        assert pipeline.health().publisher_sessions == 3
        first = pipeline.health().first_frame_s  # offer accepted → first decoded frame (ICE, DTLS, a keyframe)
        print(f"whip: first frame {first:.2f} s after the offer was accepted")
        assert first is not None and first <= 3.0  # measured 0.11 s; margin for a loaded 2-core CI box
        assert pipeline.fatal_error is None
    finally:
        for p in publishers:
            p.stop()
        pipeline.stop()
    assert not pipeline.health().connected


def test_whip_publisher_is_a_separate_process(fixture_videos):
    """The virtual glasses' WHIP command is our aiortc client run by this interpreter (no ffmpeg WHIP muxer)."""
    from detector_app.glasses.publish import build_publish_command

    cmd = build_publish_command("http://127.0.0.1:9/whip/k", fixture_videos["cat_480p15"], loop=False)
    assert cmd[:3] == [sys.executable, "-m", "detector_app.glasses.whip_client"]


@pytest.mark.slow
def test_whip_through_the_miniapp_and_simulated_glasses(detector, fixture_videos):
    """``INGEST_PROTOCOL=whip`` end to end: the miniapp serves ``/whip/<key>`` on its own HTTP port, asks
    the (generation D) simulator for a stream to ``http://127.0.0.1:PORT/whip/<key>``, the virtual
    glasses publish WHIP, and the detections reach the wearer as a text wall naming the cat."""
    from .test_e2e_glasses import USER, harness, requested_url, stream_request

    async def main() -> None:
        async with harness(detector, fixture_videos["cat_480p15"], protocol="whip") as h:
            await h.sim.start_session(USER)
            req = await h.sim.wait_for(stream_request, 15)
            url = requested_url(req)
            assert url.startswith(f"http://127.0.0.1:{h.port}/whip/"), url
            await h.sim.wait_for(lambda e: e.direction == "app->cloud" and e.type == "display_event"
                                 and "cat" in str(e.get("layout", {}).get("text", "")).lower(), 25)
            stream = h.stream()
            assert stream.health().codec == "h264" and stream.pipeline.stats.per_label["cat"] > 0
            async with aiohttp.ClientSession() as s:  # a wrong key on the miniapp's port: 404
                async with s.post(url[:-4] + "zzzz", data="v=0", headers={"Content-Type": "application/sdp"}) as r:
                    assert r.status == 404

    asyncio.run(main())


_OFFER_HEAD = ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
               "c=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\na=rtcp-mux\r\na=ice-ufrag:abcd\r\n"
               "a=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:sha-256 00:11\r\n")


@pytest.mark.parametrize("key, content_type, body, status", [
    ("wrong-key-0123456789", "application/sdp", "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n", 404),  # key first
    ("KEY", "text/plain", "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n", 415),
    ("KEY", "application/sdp; charset=utf-8", "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n", 400),
    ("KEY", "application/sdp", "v=0\r\nm=video x y z\r\n", 400),  # aiortc: AssertionError
    ("KEY", "application/sdp", _OFFER_HEAD + "a=rtpmap:96 AV1/90000\r\n", 400),  # no codec we take: OperationError
    ("KEY", "application/sdp", _OFFER_HEAD + "a=rtpmap:96 H264/90000\r\na=setup:bogus\r\n", 400),  # KeyError
])
def test_whip_ingest_decisions_need_no_http(key, content_type, body, status):
    """The endpoint's decisions are plain calls (``WhipIngest``), no socket: refusals never reach aiortc."""
    from detector_app.ingest.whip import WhipIngest, whip_endpoint

    ingest = WhipIngest()
    endpoint = whip_endpoint("K" * 20, 9, "127.0.0.1", "127.0.0.1")
    source = ingest.register(endpoint)
    reply = asyncio.run(ingest.offer(endpoint.key if key == "KEY" else key, content_type, body))
    assert reply.status == status and "Location" not in reply.headers
    assert asyncio.run(ingest.delete(endpoint.key, "no-such-resource")).status == 404
    assert source.sessions == 0 and ingest.rejected == (1 if status == 404 else 0)
    source.close()
    assert asyncio.run(ingest.offer(endpoint.key, "application/sdp", body)).status == 404  # closed: key gone


@pytest.mark.slow
def test_whip_sightings_get_clips_of_the_received_packets(fixture_videos, detector, tmp_path):
    """The received H.264 access units feed the sightings' packet ring (``AccessUnitFeed``), so a sighting
    over WHIP gets a clip: H.264 as received (no re-encode), starting on a keyframe, and it decodes."""
    import av

    from detector_app.sightings.recorder import Sightings, SightingsConfig

    video = fixture_videos["cat_returns_480p15"]
    sightings = Sightings(SightingsConfig(db=tmp_path / "s.db"))
    endpoint, source = open_listener("whip", port=0, bind_host="127.0.0.1", advertise="127.0.0.1", for_glasses=False)
    pipeline = Pipeline(source, detector, recorder=sightings.recorder()).start()
    pub = Publisher(video, endpoint.local_publish_url).start()
    try:
        assert pub.wait(40) and pub.ok, list(pub.stderr_tail)
        assert wait_for(lambda: not pipeline.health().connected, 5)
    finally:
        pub.stop()
        pipeline.stop()
    rows = sightings.store.list()
    assert rows and all(s.label == "cat" for s in rows), rows
    for s in rows:
        path = sightings.store.clip_path(s)
        assert path is not None, (s.clip_note, s)
        with av.open(str(path)) as c:
            vs = c.streams.video[0]
            assert vs.codec_context.name == "h264" and (vs.codec_context.width, vs.codec_context.height) == (854, 480)
            packets = [p for p in c.demux(vs) if p.size]
            assert packets[0].is_keyframe
            c.seek(0)
            frames = sum(1 for _ in c.decode(vs))
        assert frames == len(packets) >= 30, (frames, len(packets))
        print(f"whip sighting {s.first_pts:.2f}–{s.last_pts:.2f} s: clip {frames} frames, "
              f"{s.clip_start_pts:.2f}–{s.clip_end_pts:.2f} s")
    sightings.close()


def test_file_track_stop_during_a_read_does_not_crash(fixture_videos):
    """``FileVideoTrack.stop`` (event loop) while ``_read`` demuxes in a worker thread: PyAV demuxes
    without the GIL, so an unguarded close freed the demuxer under the read (a segfault about one run in
    four of this loop before the lock). In a child process, so a crash fails this test, not the run."""
    import subprocess
    import sys

    code = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from detector_app.glasses.whip_client import FileVideoTrack\n"
        "async def main():\n"
        "    for _ in range(150):\n"
        "        t = FileVideoTrack(Path(sys.argv[1]), loop=True)\n"
        "        read = asyncio.ensure_future(asyncio.to_thread(t._read))\n"
        "        await asyncio.sleep(0)\n"
        "        t.stop()\n"
        "        await read\n"
        "    print('OK')\n"
        "asyncio.run(main())\n"
    )
    run = subprocess.run([sys.executable, "-c", code, str(fixture_videos["cat_480p15"])],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "OK" in run.stdout, (run.returncode, run.stderr[-500:])


def test_whip_offer_answered_after_its_stream_closed_leaves_no_peer_connection():
    """The stream closes (wearer gone) while an offer is being answered: the answer's peer connection is
    closed and the publisher hears 404, instead of a session nobody will ever read or close."""
    from aiortc import RTCPeerConnection

    from detector_app.ingest.whip import WhipIngest, whip_endpoint

    made = []

    class ClosingIngest(WhipIngest):
        async def _answer(self, source, sdp):
            session, answer = await super()._answer(source, sdp)
            made.append(session)
            source.close()  # what the stream's end does from another thread, at the worst moment
            return session, answer

    ingest = ClosingIngest()
    endpoint = whip_endpoint("K" * 20, 9, "127.0.0.1", "127.0.0.1")
    ingest.register(endpoint)

    async def offer_sdp() -> str:
        pc = RTCPeerConnection()
        pc.addTransceiver("video", direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        await pc.close()
        return sdp

    sdp = ingest.rtc.run(offer_sdp(), 10.0)
    reply = asyncio.run(ingest.offer(endpoint.key, "application/sdp", sdp))
    assert reply.status == 404 and "Location" not in reply.headers
    assert len(made) == 1 and made[0].pc.connectionState == "closed" and made[0].ended


def test_a_failing_access_unit_tap_never_stops_the_video():
    """The clip ring's tap runs inside aiortc's receive path: if it raises, the frame still reaches the
    decoder queue and the tap is switched off for the session (one warning), not aiortc's receiver."""
    import queue
    from types import SimpleNamespace

    from detector_app.ingest.rtc import _Tap

    calls = []

    def broken(data: bytes, ts: int) -> None:
        calls.append(ts)
        raise ValueError("bad access unit")

    inner: queue.Queue = queue.Queue()
    tap = _Tap(inner, lambda n: None, broken)
    for ts in (0, 3000):
        tap.put((None, SimpleNamespace(data=b"\x00\x00\x01\x65xx", timestamp=ts)))
    assert inner.qsize() == 2 and calls == [0] and tap.on_access_unit is None


def test_a_starved_decoder_never_queues_more_than_its_bound():
    """aiortc's decoder queue is unbounded: with nobody decoding (a CPU-starved box), the tap holds it at
    ``max_backlog`` units, drops the backlog, asks for a keyframe, and resumes exactly at the next IDR;
    the clip ring still gets every unit, and the receiver's stop sentinel is never dropped."""
    import queue
    import threading
    from types import SimpleNamespace

    from detector_app.ingest.rtc import _Tap

    h264 = SimpleNamespace(name="H264")
    idr, p = b"\x00\x00\x00\x01\x67sps\x00\x00\x01\x65idr", b"\x00\x00\x00\x01\x41p"
    inner: queue.Queue = queue.Queue()
    want_keyframe = threading.Event()
    clips: list[int] = []
    tap = _Tap(inner, lambda n: None, lambda data, ts: clips.append(ts), max_backlog=10, want_keyframe=want_keyframe)

    def put(i: int, data: bytes) -> None:
        tap.put((h264, SimpleNamespace(data=data, timestamp=i)))

    put(0, idr)
    for i in range(1, 200):  # 199 more, no keyframe among them, nobody decoding
        put(i, p)
        assert inner.qsize() <= 10
    assert tap.skipping and want_keyframe.is_set() and tap.dropped == 200 - inner.qsize()
    assert inner.qsize() == 0  # dropped at 10 waiting; nothing after it could decode without them
    put(200, p)
    assert inner.qsize() == 0
    put(201, idr)
    put(202, p)
    assert not tap.skipping and [inner.get_nowait()[1].timestamp for _ in range(2)] == [201, 202]
    assert clips == list(range(203)), "the clip ring saw every received unit"

    for i in range(9):  # a stop while the backlog is dropped: the sentinel survives the drain
        put(300 + i, p)
    tap.put(None)
    for i in range(3):
        put(400 + i, p)
    left = [inner.get_nowait() for _ in range(inner.qsize())]
    assert left.count(None) == 1


def test_ice_hosts_are_chosen_per_peer_connection():
    """Peer connections gathering at the same time on the one WebRTC loop each offer their own host
    addresses (a WHIP ingest on one address, a WHEP pull towards another), and outside a block aioice's
    own choice is back. Loopback addresses only: nothing is bound or sent elsewhere."""
    import aioice.ice
    from aiortc import RTCPeerConnection

    from detector_app.ingest.rtc import RtcLoop, _original_host_addresses, ice_hosts

    async def gather(hosts: list[str]) -> set[str]:
        pc = RTCPeerConnection()
        pc.addTransceiver("video", direction="recvonly")
        try:
            with ice_hosts(hosts):
                await pc.setLocalDescription(await pc.createOffer())
            return {ln.split()[4] for ln in pc.localDescription.sdp.splitlines() if ln.startswith("a=candidate")}
        finally:
            await pc.close()

    async def together() -> list[set[str]]:
        return list(await asyncio.gather(gather(["127.0.0.1"]), gather(["127.0.0.2"]), gather(["127.0.0.1"])))

    assert RtcLoop.get().run(together(), 20.0) == [{"127.0.0.1"}, {"127.0.0.2"}, {"127.0.0.1"}]
    assert aioice.ice.get_host_addresses(True, False) == _original_host_addresses(True, False)


def test_whip_port_in_use_is_one_clear_error_and_the_port_can_be_reused():
    import socket

    from detector_app.errors import PortInUseError, UserError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=f"port {port}"):
            open_listener("whip", port=port, bind_host="127.0.0.1", advertise="127.0.0.1", for_glasses=False)
    endpoint, source = open_listener("whip", port=port, bind_host="127.0.0.1", advertise="127.0.0.1",
                                     for_glasses=False)  # the failed try left nothing bound
    try:
        assert endpoint.port == port
    finally:
        source.close()
    with pytest.raises(UserError, match="cannot listen on 192.0.2.1") as err:  # not ours (TEST-NET-1)
        open_listener("whip", port=port, bind_host="192.0.2.1", advertise="192.0.2.1", for_glasses=False)
    assert not isinstance(err.value, PortInUseError), "a range of ports would be tried for nothing"
