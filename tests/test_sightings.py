"""Sightings: real fixture videos through the real pipeline (the ``detect`` path on files, the RTMP ingest
through ``replay`` in a child process that is then SIGKILLed), the SQLite store and its retention, the
packet ring, and ``sightings list|export``."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from detector_app.detection.types import Box, Detection, FrameResult
from detector_app.fixtures.formats import mot_path
from detector_app.sightings.packets import PacketRing
from detector_app.sightings.recorder import NO_PACKETS, Sightings, SightingsConfig
from detector_app.sightings.store import Sighting, SightingStore

from .conftest import MODEL, ROOT, need, serve_env, wait_healthy

FPS = 15.0
IN_VIEW = 0.3  # truth: an animal counts as in view from a third of it in the frame
TOLERANCE_S = 0.5


def truth_intervals(video: Path, fps: float = FPS) -> list[tuple[float, float]]:
    """(first, last) media time of each ground-truth animal in view (MOT ids), by first appearance."""
    spans: dict[int, list[float]] = {}
    for line in mot_path(video).read_text().splitlines():
        frame, tid, *_rest, vis = line.split(",")
        if float(vis) >= IN_VIEW:
            t = (int(frame) - 1) / fps
            spans.setdefault(int(tid), []).append(t)
    return sorted((min(ts), max(ts)) for ts in spans.values())


def expected_sightings(video: Path) -> list[tuple[float, float]]:
    """What a person counts: in cat_returns_480p15 the cat that comes back 1.2 s after leaving on the same
    side is the same animal (one track, re-linked by the tracker); back after ~4 s it is a new sighting."""
    spans = truth_intervals(video)
    if video.stem == "cat_returns_480p15":
        (a, _), (_, b), third = spans
        return [(a, b), third]
    return spans


def source_packets(video: Path) -> tuple[list[bytes], bytes]:
    with av.open(str(video)) as c:
        vs = c.streams.video[0]
        return [bytes(p) for p in c.demux(vs) if p.size], bytes(vs.codec_context.extradata or b"")


def check_clip(store: SightingStore, s: Sighting, video: Path, stream_end: float, truncated: bool = False) -> None:
    """H.264, the received packets byte for byte (no re-encoding), starts at 0 on a keyframe, covers
    [first − 2 s, last + 2 s] where the stream has it, and decodes."""
    path = store.clip_path(s)
    assert path is not None and path.suffix == ".mp4", s
    src, src_extradata = source_packets(video)
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        assert vs.codec_context.name == "h264"
        assert bytes(vs.codec_context.extradata) == src_extradata, "codec parameters changed: re-encoded?"
        packets = [p for p in c.demux(vs) if p.size]
        assert packets[0].is_keyframe and packets[0].pts == 0 and packets[0].dts == 0
        data = [bytes(p) for p in packets]
        start = src.index(data[0])
        assert data == src[start:start + len(data)], "clip packets differ from the received ones"
        c.seek(0)
        frames = sum(1 for _ in c.decode(vs))
    assert frames == len(data)
    if truncated:
        return
    assert s.clip_start_pts is not None and s.clip_end_pts is not None
    assert s.clip_start_pts <= max(0.0, s.first_pts - 2.0) + 1e-3, s
    assert s.clip_end_pts >= min(s.last_pts + 2.0, stream_end) - 1.5 / FPS, s
    assert abs((s.clip_end_pts - s.clip_start_pts) - (len(data) - 1) / FPS) < 1.5 / FPS


def frame_at(video: Path, pts: float) -> np.ndarray:
    with av.open(str(video)) as c:
        for f in c.decode(video=0):
            if f.time is not None and f.time >= pts - 0.5 / FPS:
                return f.to_ndarray(format="bgr24")
    raise AssertionError(f"no frame at {pts} s")


def check_thumbnail(store: SightingStore, s: Sighting, frame: np.ndarray) -> None:
    """A JPEG of the best frame, scaled, with the sighting's box drawn: it differs from ``frame`` (the
    undrawn best frame) along the box's outline, and (JPEG noise aside) nowhere else."""
    path = store.thumbnail_path(s)
    assert path is not None and path.read_bytes()[:2] == b"\xff\xd8"
    img = cv2.imread(str(path))
    assert img is not None and max(img.shape[:2]) <= 640
    h, w = img.shape[:2]
    ref = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
    diff = np.abs(img.astype(int) - ref.astype(int)).max(axis=2)
    scale = w / s.frame_size[0]
    x1, y1, x2, y2 = (round(v * scale) for v in s.best_box)
    outline = np.zeros((h, w), np.uint8)
    cv2.rectangle(outline, (x1, y1), (x2, y2), 1, 3)
    near = cv2.dilate(outline, np.ones((25, 25), np.uint8))
    near[max(0, y1 - 40):y1 + 5, max(0, x1 - 5):x2] = 1  # the label tag above the box
    on_line = diff[outline.astype(bool)].mean()
    elsewhere = diff[~near.astype(bool)].mean()
    assert on_line > 40 and elsewhere < 10, f"box outline diff {on_line:.0f}, elsewhere {elsewhere:.0f}: no box drawn there"


def assert_matches_truth(sightings: list[Sighting], video: Path) -> None:
    truth = expected_sightings(video)
    got = sorted(sightings, key=lambda s: s.first_pts)
    assert len(got) == len(truth), f"{len(got)} sightings for {len(truth)} animals: {[(s.first_pts, s.last_pts) for s in got]}"
    for s, (first, last) in zip(got, truth, strict=True):
        assert s.label == "cat" and s.status == "closed"
        assert abs(s.first_pts - first) <= TOLERANCE_S and abs(s.last_pts - last) <= TOLERANCE_S, (
            f"sighting {s.first_pts:.2f}–{s.last_pts:.2f} s vs truth {first:.2f}–{last:.2f} s")
        assert s.best_confidence >= 0.5


# -- the detect path on files (deterministic, fast) -----------------------------------------------
@pytest.fixture(scope="module")
def offline(fixture_videos, detector, tmp_path_factory):
    """detect on two_cats_480p15 (two at once, crossing) and cat_returns_480p15 (one cat, hidden, back twice)."""
    from detector_app.commands.replay import detect_source
    from detector_app.ingest.url import UrlSource

    out = {}
    for name in ("two_cats_480p15", "cat_returns_480p15"):
        db = tmp_path_factory.mktemp(name) / "sightings.db"
        sightings = Sightings(SightingsConfig(db=db))
        summary = detect_source(UrlSource(str(fixture_videos[name])), detector, live=False, recorder=sightings.recorder())
        assert not summary.errors
        out[name] = (sightings.store, fixture_videos[name])
    yield out
    for store, _ in out.values():
        store.close()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["two_cats_480p15", "cat_returns_480p15"])
def test_file_sightings_match_the_animals(offline, name):
    store, video = offline[name]
    rows = store.list()
    assert_matches_truth(rows, video)
    assert len({s.track_id for s in rows}) == len(rows)
    with av.open(str(video)) as c:
        end = float(c.streams.video[0].duration * c.streams.video[0].time_base) - 1 / FPS
    for s in rows:
        check_thumbnail(store, s, frame_at(video, s.best_pts))
        check_clip(store, s, video, stream_end=end)
        assert s.nbytes == store.thumbnail_path(s).stat().st_size + store.clip_path(s).stat().st_size
    assert store.integrity_ok()
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.slow
def test_a_sighting_longer_than_the_ring_keeps_its_end_and_says_so(fixture_videos, detector, tmp_path):
    from detector_app.commands.replay import detect_source
    from detector_app.ingest.url import UrlSource

    video = fixture_videos["two_cats_480p15"]
    sightings = Sightings(SightingsConfig(db=tmp_path / "s.db", ring_seconds=3.0))
    detect_source(UrlSource(str(video)), detector, live=False, recorder=sightings.recorder())
    for s in sightings.store.list():
        assert s.clip_start_pts > s.first_pts and s.clip_end_pts - s.clip_start_pts <= 3.0 + 2.0 + 1e-3
        assert s.clip_note.startswith("starts ") and "the ring keeps at most 3 s" in s.clip_note, s.clip_note
        check_clip(sightings.store, s, video, stream_end=10.0, truncated=True)
    sightings.close()


@pytest.mark.slow
def test_store_api_pages_filters_and_counts_changes(offline):
    store, _ = offline["cat_returns_480p15"]
    rows = store.list()
    assert [s.id for s in rows] == sorted((s.id for s in rows), reverse=True)  # newest first
    assert store.list(limit=1, before_id=rows[0].id)[0].id == rows[1].id
    assert store.list(label="dog") == [] and len(store.list(label="cat")) == len(rows)
    assert store.list(since=time.time() + 60) == []
    assert store.get(rows[0].id) == rows[0] and store.get(10**9) is None
    assert json.loads(json.dumps(rows[0].to_json()))["label"] == "cat"
    before = store.last_change
    store.update(rows[0].id, clip_note=rows[0].clip_note)
    assert store.last_change == before + 1


# -- the live RTMP ingest, and kill -9 in the middle of a session ----------------------------------
def db_state(db: Path) -> list[tuple[str, str | None]]:
    """(status, clip) of every row, read-only (as a second process reads it), or [] before it exists."""
    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute("SELECT status, clip FROM sightings ORDER BY id").fetchall()
    except sqlite3.OperationalError:
        return []


def mid_session(state: list[tuple[str, str | None]]) -> bool:
    """One sighting closed with its clip, the next one open: the moment to kill."""
    return any(st == "closed" and clip for st, clip in state) and any(st == "open" for st, _ in state)


def check_after_kill(db: Path, video: Path, stream: str) -> None:
    store = SightingStore(db, create=False)
    try:
        assert store.integrity_ok()
        rows = store.list()
        assert [s.status for s in rows] == ["open", "closed"], rows
        first = rows[1]
        (t_first, t_last), _second = expected_sightings(video)
        assert abs(first.first_pts - t_first) <= TOLERANCE_S and abs(first.last_pts - t_last) <= TOLERANCE_S, first
        assert first.stream.startswith(stream), first.stream
        check_thumbnail(store, first, frame_at(video, first.best_pts))
        check_clip(store, first, video, stream_end=13.0)
    finally:
        store.close()


@pytest.mark.slow
def test_serve_kill_9_mid_session_keeps_every_closed_sighting(fixture_videos, tmp_path):
    """The real ``serve`` (real model, nginx-rtmp ingest) with a simulated Mentra Live session: once the cat's
    first sighting is closed with its clip and its second is open, serve is SIGKILLed; the database opens
    cleanly and the closed sighting is all there."""
    import asyncio

    import aiohttp

    from detector_app.ingest.addresses import free_port
    from detector_app.mentra.simulator import CloudSimulator

    video = fixture_videos["cat_returns_480p15"]
    db = tmp_path / "sightings.db"
    key, pkg = "sightings-test-key", "com.example.detector"

    async def main() -> None:
        port = free_port()
        log = tmp_path / "serve.log"
        with log.open("wb") as out:  # a file, not a pipe: a full pipe would block the child
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "detector_app.cli", "serve", "--model", str(MODEL), "--headless", "--feed-port", "0",
                "--sightings-db", str(db), env=serve_env(port, key, pkg), cwd=str(tmp_path), stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            async with aiohttp.ClientSession() as http:
                await wait_healthy(http, port, 30, alive=lambda: proc.returncode is None, what="serve")
            async with CloudSimulator(app_url=f"http://127.0.0.1:{port}", package_name=pkg, api_key=key, video=video,
                                      generation="D", device="mentra_live", port=0, printer=lambda _: None) as sim:
                await sim.start_session("bob@example.com")
                deadline = time.monotonic() + 60
                while not mid_session(db_state(db)):
                    assert proc.returncode is None, log.read_text()[-2000:]
                    assert time.monotonic() < deadline, f"no closed + open sighting within 60 s: {db_state(db)}"
                    await asyncio.sleep(0.1)
                proc.kill()
                await asyncio.wait_for(proc.wait(), 10)
        finally:
            if proc.returncode is None:
                proc.kill()
                await asyncio.wait_for(proc.wait(), 5)

    asyncio.run(main())
    check_after_kill(db, video, "bob@example.com · rtmp://")  # named after its wearer, then the ingest URL


@pytest.mark.slow
def test_replay_kill_9_mid_session_keeps_every_closed_sighting(fixture_videos, tmp_path):
    """``replay`` (real RTMP ingest, ffmpeg publisher in real time) records into a database; once the cat's
    first sighting is closed with its clip and its second (after ~4 s away) is open, the process is SIGKILLed:
    the database opens cleanly and the closed sighting is all there, with its clip cut from the received packets."""
    video = fixture_videos["cat_returns_480p15"]
    db = tmp_path / "sightings.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "detector_app.cli", "replay", str(video), "--model", str(MODEL), "--headless",
         "--feed-port", "0", "--sightings-db", str(db), "--log-level", "WARNING"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not mid_session(db_state(db)):
            assert proc.poll() is None, f"replay ended before the kill: {proc.stderr.read().decode()[-1500:]}"
            assert time.monotonic() < deadline, f"no closed + open sighting within 60 s: {db_state(db)}"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    check_after_kill(db, video, "rtmp replay")


@pytest.mark.slow
def test_srt_replay_clips_are_h264_mp4_from_mpeg_ts(fixture_videos, detector, tmp_path):
    """Over SRT the packets are MPEG-TS's Annex-B access units: the clip still opens as H.264 MP4 from 0,
    decodes every frame, and holds the sighting; the stream ends before the track leaves, so it closes then."""
    from detector_app.commands.replay import replay

    need("srt-live-transmit", "apt-get install srt-tools")
    video = tmp_path / "cat_8s.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(fixture_videos["cat_returns_480p15"]), "-t", "8", "-c", "copy",
                    str(video)], check=True, timeout=60)
    sightings = Sightings(SightingsConfig(db=tmp_path / "s.db"))
    summary = replay(video, detector, protocol="srt", recorder=sightings.recorder())
    assert not summary.errors, summary.errors
    (s,) = sightings.store.list()
    (first, last), _ = expected_sightings(fixture_videos["cat_returns_480p15"])
    assert s.status == "closed" and abs(s.first_pts - first) <= TOLERANCE_S and abs(s.last_pts - last) <= TOLERANCE_S, s
    with av.open(str(sightings.store.clip_path(s))) as c:
        vs = c.streams.video[0]
        assert vs.codec_context.name == "h264" and vs.start_time == 0
        n = sum(1 for p in c.demux(vs) if p.size)
        c.seek(0)
        assert sum(1 for _ in c.decode(vs)) == n >= (s.last_pts - s.first_pts) * FPS
    assert s.clip_start_pts <= max(0.0, s.first_pts - 2.0) + 1e-3 and s.clip_end_pts >= 7.8
    check_thumbnail(sightings.store, s, frame_at(video, s.best_pts))
    sightings.close()


# -- without packets (decoded-frame sources) --------------------------------------------------------
def _result(seq: int, pts: float, dets: tuple[Detection, ...]) -> FrameResult:
    return FrameResult(seq=seq, frame_index=seq, pts=pts, stream_pts=pts, width=640, height=360, received_at=1000 + pts,
                       done_at=1000 + pts, inference_ms=1.0, detections=dets, source="webrtc", extra={"session": 1})


def test_a_source_without_packets_keeps_the_thumbnail_and_says_why_there_is_no_clip(tmp_path):
    sightings = Sightings(SightingsConfig(db=tmp_path / "s.db"))
    rec = sightings.recorder()
    frame = np.full((360, 640, 3), 90, np.uint8)
    for i in range(20):
        conf = 0.6 + 0.01 * i
        rec.on_frame(_result(i + 1, i * 0.1, (Detection("dog", conf, Box(100 + i, 80, 300 + i, 250), 1, track_id=7),)), frame)
    for i in range(20, 60):  # gone: the book lets it leave after 3 s unseen
        rec.on_frame(_result(i + 1, i * 0.1, ()), frame)
    rec.close(5.0)
    (s,) = sightings.store.list()
    assert (s.label, s.track_id, s.status, s.clip, s.clip_note) == ("dog", 7, "closed", None, NO_PACKETS)
    assert s.best_confidence == pytest.approx(0.79) and s.best_pts == pytest.approx(1.9)
    assert s.first_pts == 0.0 and s.last_pts == pytest.approx(1.9)
    check_thumbnail(sightings.store, s, frame)
    sightings.close()


def test_a_clip_that_cannot_be_written_is_noted_on_its_row(fixture_videos, tmp_path):
    """Writing the clip fails (here its path is taken by a directory; on a box: disk full): the row says
    why there is no clip, rather than nothing (or, after a restart, 'the process ended while writing it')."""
    from detector_app.sightings.recorder import _PendingClip

    sightings = Sightings(SightingsConfig(db=tmp_path / "s.db"))
    rec = sightings.recorder()
    with av.open(str(fixture_videos["cat_480p15"])) as c:
        vs = c.streams.video[0]
        rec.ring.session_started(1, vs)
        for i, packet in enumerate(c.demux(vs)):
            if i >= 90:
                break
            rec.ring.packet(packet)
    for k in range(3):  # a confirmed track, as the recorder's book makes it
        rec._book.update(_result(k + 1, k * 0.1, (Detection("cat", 0.8, Box(10, 10, 90, 90), 15, track_id=4),)))
    (track,) = rec._book.tracks
    row = sightings.store.insert(stream="t", session=1, track_id=4, label="cat", first_seen=1.0, last_seen=2.0,
                                 best_confidence=0.8, status="closed")
    rec.store.media_file("d/clip.mp4").mkdir(parents=True)  # the clip's name is taken
    rec._write_clip(_PendingClip(row, track, 0.0, 3.0, 0.0, time.monotonic(), "d/clip"))
    s = sightings.store.get(row)
    assert s.clip is None and s.clip_note and s.clip_note.startswith("no clip: writing it failed"), s.clip_note
    sightings.close()


def test_a_label_with_path_characters_stays_one_file_in_the_media_directory(tmp_path):
    """A custom model's class name is not a path: "../../x y" names a file inside the media directory."""
    sightings = Sightings(SightingsConfig(db=tmp_path / "db" / "s.db"))
    rec = sightings.recorder()
    frame = np.full((360, 640, 3), 90, np.uint8)
    for i in range(40):  # seen for 1 s, then gone for 3 s: confirmed, then left
        dets = (Detection("../../x y", 0.7, Box(100, 80, 300, 250), 1, track_id=2),) if i < 10 else ()
        rec.on_frame(_result(i + 1, i * 0.1, dets), frame)
    rec.close(5.0)
    (s,) = sightings.store.list()
    thumb = sightings.store.thumbnail_path(s)
    assert thumb is not None and thumb.parent.parent == sightings.store.media_dir, thumb
    assert thumb.name.endswith("-______x_y.jpg") and not (tmp_path / "x y.jpg").exists()
    sightings.close()


def test_a_track_confirmed_over_many_frames_still_gets_a_thumbnail(tmp_path):
    """Its best box (the first) is older than the frames kept: the thumbnail shows the frame it is seen in next."""
    sightings = Sightings(SightingsConfig(db=tmp_path / "s.db"))
    rec = sightings.recorder()
    frames = [np.full((360, 640, 3), 20 * k, np.uint8) for k in range(12)]
    hits = {0: 0.95, 4: 0.6, 8: 0.6, 9: 0.6}  # confirmed at the third hit (frame 8); frame 0 is long gone
    for i in range(12):
        dets = (Detection("cat", hits[i], Box(100, 80, 300, 250), 15, track_id=3),) if i in hits else ()
        rec.on_frame(_result(i + 1, i * 0.1, dets), frames[i])
    rec.close(5.0)
    (s,) = sightings.store.list()
    assert s.best_confidence == pytest.approx(0.95) and s.best_pts == 0.0
    check_thumbnail(sightings.store, s, frames[8])  # drawn on frame 8, with that frame's box
    sightings.close()


def test_a_stalled_stream_closes_its_open_sightings(tmp_path, monkeypatch):
    """No tracked result for a while (publisher gone, detection paused): the sighting ends at its last frame
    then, not whenever frames return."""
    from detector_app.sightings import recorder as recorder_mod

    monkeypatch.setattr(recorder_mod, "STALL_CLOSE_S", 0.5)
    sightings = Sightings(SightingsConfig(db=tmp_path / "s.db"))
    rec = sightings.recorder()
    frame = np.full((360, 640, 3), 90, np.uint8)
    for i in range(10):
        rec.on_frame(_result(i + 1, i * 0.1, (Detection("cat", 0.8, Box(100, 80, 300, 250), 15, track_id=5),)), frame)
    deadline = time.monotonic() + 5
    while not [s for s in sightings.store.list() if s.status == "closed"]:
        assert time.monotonic() < deadline, sightings.store.list()
        time.sleep(0.05)
    (s,) = sightings.store.list()
    assert s.last_pts == pytest.approx(0.9) and s.thumbnail
    rec.close(5.0)
    assert len(sightings.store.list()) == 1
    sightings.close()


def test_a_full_writer_queue_drops_events_and_never_blocks_detection(tmp_path, monkeypatch):
    """The disk is stuck (the store's lock is held): the inference thread's calls return at once, the
    bounded queue fills, and what does not fit is dropped (counted, logged), not queued without bound."""
    from detector_app.sightings import recorder as recorder_mod

    monkeypatch.setattr(recorder_mod, "QUEUE_SIZE", 4)
    sightings = Sightings(SightingsConfig(db=tmp_path / "s.db"))
    rec = sightings.recorder()
    frame = np.zeros((360, 640, 3), np.uint8)
    with sightings.store._lock:
        t0 = time.monotonic()
        for j in range(12):  # four rows of ten cats, each row confirmed after three frames: 40 sightings open
            row = j // 3
            dets = tuple(Detection("cat", 0.9, Box(60 * k, 10 + 85 * row, 60 * k + 50, 70 + 85 * row), 15,
                                   track_id=100 * row + k) for k in range(10))
            rec.on_frame(_result(j + 1, j * 0.1, dets), frame)
        took = time.monotonic() - t0
    assert took < 1.0, f"on_frame blocked for {took:.2f} s"
    assert rec.dropped >= 30, rec.dropped
    rec.close(5.0)
    rows = sightings.store.list(limit=100)
    # At close there is time to wait for room: every close got in, and a close whose open was dropped inserts it.
    assert len(rows) == 40 and all(r.status == "closed" for r in rows) and sightings.store.integrity_ok()
    sightings.close()


def test_a_writer_whose_stop_did_not_fit_in_the_queue_still_stops(tmp_path, monkeypatch):
    """close() while the disk is stuck and the queue full: its stop does not fit; once the disk is back the
    writer drains the queue and ends, instead of running (and holding the ring) for the rest of the process."""
    from detector_app.sightings import recorder as recorder_mod

    monkeypatch.setattr(recorder_mod, "QUEUE_SIZE", 4)
    sightings = Sightings(SightingsConfig(db=tmp_path / "s.db"))
    rec = sightings.recorder()
    frame = np.zeros((360, 640, 3), np.uint8)
    with sightings.store._lock:
        for j in range(6):
            dets = tuple(Detection("cat", 0.9, Box(60 * k, 10, 60 * k + 50, 70), 15, track_id=k + 1) for k in range(8))
            rec.on_frame(_result(j + 1, j * 0.1, dets), frame)
        rec.close(0.3)  # the writer is stuck in a write: close gives up waiting
        assert rec._worker.is_alive()
    rec._worker.join(15.0)
    assert not rec._worker.is_alive(), "the writer never stopped"
    sightings.close()


# -- the packet ring ----------------------------------------------------------------------------------
@pytest.mark.parametrize("budget", [{"max_seconds": 4.0}, {"max_bytes": 600_000}])
def test_packet_ring_is_bounded_and_starts_at_a_keyframe(fixture_videos, budget):
    ring = PacketRing(**{"max_seconds": 1000.0, "max_bytes": 10**9, **budget})
    with av.open(str(fixture_videos["cat_480p15"])) as c:
        vs = c.streams.video[0]
        ring.session_started(1, vs)
        for p in c.demux(vs):
            ring.packet(p)
            assert ring.seconds <= budget.get("max_seconds", 1000.0)
            assert ring.nbytes <= budget.get("max_bytes", 10**9)
        ring.session_ended()
    assert ring.evicted > 100
    cut = ring.cut(1, 0.0, 100.0)
    assert cut is not None and cut.packets[0].keyframe and cut.end_t >= 15.9
    assert ring.cut(2, 0.0, 100.0) is None and ring.reached(1, 1e9)


def test_a_clip_with_b_frames_starts_at_0_and_decodes_every_frame(fixture_videos, tmp_path):
    """Recordings from other encoders reorder frames (dts < pts): the clip still starts at 0, whole."""
    from detector_app.sightings.clips import write_clip

    src = tmp_path / "bframes.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(fixture_videos["cat_480p15"]), "-t", "6", "-an", "-c:v", "libx264",
                    "-preset", "ultrafast", "-bf", "3", "-g", "30", str(src)], check=True, timeout=60)
    ring = PacketRing()
    with av.open(str(src)) as c:
        vs = c.streams.video[0]
        ring.session_started(1, vs)
        for p in c.demux(vs):
            ring.packet(p)
    cut = ring.cut(1, 2.5, 5.0)
    assert any(p.dts < p.pts for p in cut.packets), "the source has no B-frames"
    info = write_clip(cut, tmp_path / "clip.mp4")
    with av.open(str(info.path)) as c:
        vs = c.streams.video[0]
        assert vs.start_time == 0 and min(p.pts for p in c.demux(vs) if p.size) == 0
        c.seek(0)
        assert sum(1 for _ in c.decode(vs)) == info.packets == len(cut.packets)


def test_packet_ring_keeps_only_what_a_clip_can_need(fixture_videos):
    """Idle, it keeps the pre-roll window (plus less than a GOP); a hold keeps an open sighting's start."""
    ring = PacketRing(idle_keep_s=4.0)
    with av.open(str(fixture_videos["cat_480p15"])) as c:
        vs = c.streams.video[0]
        ring.session_started(1, vs)
        for i, p in enumerate(c.demux(vs)):
            if i == 45:  # 3 s in: a sighting from 1 s on is open
                ring.hold("track", 1, 1.0)
            ring.packet(p)
            if i < 45:
                assert ring.seconds <= 4.0 + 2.0  # + one GOP (2 s at this fixture's keyframe interval)
    assert ring.cut(1, 1.0, 100.0).start_t == 0.0  # held: the keyframe before 1 s is still there
    ring.release("track")
    assert 4.0 <= ring.seconds <= 6.0 and ring.cut(1, 1.0, 100.0).start_t >= 16.0 - 6.0


# -- retention ------------------------------------------------------------------------------------------
def _row(store: SightingStore, last_seen: float, size: int, status: str = "closed") -> int:
    sid = store.insert(stream="t", session=1, track_id=1, label="cat", first_seen=last_seen - 5, last_seen=last_seen,
                       best_confidence=0.9, status=status)
    store.write_media(f"d/{sid}.jpg", b"j" * size)
    store.write_media(f"d/{sid}.mp4", b"m" * size)
    store.update(sid, thumbnail=f"d/{sid}.jpg", clip=f"d/{sid}.mp4", nbytes=2 * size)
    return sid


def test_retention_by_age_deletes_rows_and_files(tmp_path):
    store = SightingStore(tmp_path / "s.db")
    now = time.time()
    old, recent = _row(store, now - 10 * 86400, 1000), _row(store, now - 3600, 1000)
    old_open = _row(store, now - 10 * 86400, 1000, status="open")  # still in view: never deleted
    old_files = [store.thumbnail_path(store.get(old)), store.clip_path(store.get(old))]
    assert store.apply_retention(max_age_days=7) == 1
    assert store.get(old) is None and store.get(recent) and store.get(old_open)
    assert not any(p.exists() for p in old_files)
    assert store.clip_path(store.get(recent)) is not None


def test_retention_by_size_deletes_the_oldest_until_it_fits(tmp_path):
    store = SightingStore(tmp_path / "s.db")
    ids = [_row(store, time.time() - 100 + i, 300_000) for i in range(5)]  # 0.6 MB each, 3 MB in all
    assert store.total_bytes() == 3_000_000
    assert store.apply_retention(max_mb=1.5) == 3
    assert [s.id for s in store.list()] == [ids[4], ids[3]]
    assert store.total_bytes() <= 1.5 * 1024 * 1024
    assert sorted(p.name for p in (tmp_path / "s-media" / "d").iterdir()) == sorted(
        f"{i}.{ext}" for i in ids[3:] for ext in ("jpg", "mp4"))


def test_a_failed_commit_leaves_no_transaction_open(tmp_path):
    """A COMMIT that fails (here a deferred constraint; on a box: disk full, an I/O error) rolls back, so
    the writer's next write still works instead of failing 'within a transaction' for the rest of the run."""
    import sqlite3

    store = SightingStore(tmp_path / "s.db")
    store._db.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    store._db.execute("CREATE TABLE child (p INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)")
    with pytest.raises(sqlite3.IntegrityError), store._lock, store._transaction():
        store._db.execute("INSERT INTO child (p) VALUES (42)")  # no parent 42: refused only at COMMIT
    assert not store._db.in_transaction
    assert store.get(_row(store, time.time(), 10)) is not None


def test_a_file_that_is_not_a_sightings_database_is_one_clear_error(tmp_path):
    from detector_app.sightings.store import SightingStoreError

    bad = tmp_path / "x.db"
    bad.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(SightingStoreError, match="cannot open the sightings database"):
        SightingStore(bad)
    with pytest.raises(SightingStoreError, match="no sightings database"):
        SightingStore(tmp_path / "missing.db", create=False)


# -- the command line ----------------------------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "detector_app.cli", "sightings", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)


@pytest.mark.slow
def test_cli_list_and_export(offline, tmp_path):
    store, _ = offline["two_cats_480p15"]
    db = str(store.path)
    listed = _cli("list", "--db", db, "--json", "--since", "1h", "--label", "cat")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [r["id"] for r in rows] == [s.id for s in store.list()] and all(r["label"] == "cat" for r in rows)
    table = _cli("list", "--db", db, "--label", "dog")
    assert table.returncode == 0 and table.stdout.strip() == "no sightings"
    out = tmp_path / "export"
    exported = _cli("export", "--db", db, "--out", str(out), "--format", "csv")
    assert exported.returncode == 0, exported.stderr
    index = (out / "index.csv").read_text().splitlines()
    assert len(index) == 1 + len(rows) and index[0].startswith("id,label,track_id")
    for s in store.list():
        assert (out / f"{s.id:06d}-cat.mp4").read_bytes() == store.clip_path(s).read_bytes()
        assert (out / f"{s.id:06d}-cat.jpg").stat().st_size == store.thumbnail_path(s).stat().st_size


def test_sightings_of_one_wearer(tmp_path):
    """serve names each stream after its wearer: ``--stream`` keeps one wearer's sightings (a plain substring:
    ``%`` and ``_`` are not wildcards), in the store and on the command line."""
    db = tmp_path / "s.db"
    store = SightingStore(db)
    now = time.time()
    for i, who in enumerate(("alice@example.com", "bob@example.com", "alice@example.com")):
        store.insert(stream=f"{who} · rtmp://127.0.0.1:1935/live/Ab1…", session=1, track_id=i + 1, label="cat",
                     first_seen=now - 10 + i, last_seen=now - 5 + i, best_confidence=0.9, status="closed")
    try:
        assert [s.track_id for s in store.list(stream="alice@example.com")] == [3, 1]
        assert [s.track_id for s in store.list(stream="bob@")] == [2] and len(store.list()) == 3
        assert store.list(stream="%") == [] and store.list(stream="_") == []
    finally:
        store.close()
    listed = _cli("list", "--db", str(db), "--json", "--stream", "bob@example.com")
    assert listed.returncode == 0, listed.stderr
    assert [json.loads(line)["track_id"] for line in listed.stdout.splitlines()] == [2]
    out = tmp_path / "alice"
    assert _cli("export", "--db", str(db), "--out", str(out), "--stream", "alice@").returncode == 0
    assert [r["track_id"] for r in json.loads((out / "index.json").read_text())["sightings"]] == [3, 1]


def test_cli_errors_are_one_line(tmp_path):
    missing = _cli("list", "--db", str(tmp_path / "none.db"))
    assert missing.returncode == 2 and "no sightings database at" in missing.stderr
    assert len([ln for ln in missing.stderr.splitlines() if ln.strip()]) == 1, missing.stderr
    SightingStore(tmp_path / "s.db").close()
    blocked = tmp_path / "file"
    blocked.write_text("x")
    unwritable = _cli("export", "--db", str(tmp_path / "s.db"), "--out", str(blocked / "sub"))
    assert unwritable.returncode == 2 and "cannot write to" in unwritable.stderr
    assert len([ln for ln in unwritable.stderr.splitlines() if ln.strip()]) == 1, unwritable.stderr
    since = _cli("list", "--db", str(tmp_path / "s.db"), "--since", "yesterday")
    assert since.returncode == 2 and "--since 'yesterday': use a duration like 30m" in since.stderr
    assert len([ln for ln in since.stderr.splitlines() if ln.strip()]) == 1, since.stderr


def test_export_skips_files_retention_removed_and_a_copy_error_is_one_error(tmp_path):
    from detector_app.commands import sightings as cmd

    store = SightingStore(tmp_path / "s.db")
    first, second = _row(store, time.time() - 60, 100), _row(store, time.time(), 100)
    rows = store.list()
    store.clip_path(store.get(first)).unlink()  # a running serve's retention, between list and copy
    cmd.export(store, rows, tmp_path / "out")
    index = json.loads((tmp_path / "out" / "index.json").read_text())["sightings"]
    assert {r["id"]: r["clip"] for r in index} == {second: f"{second:06d}-cat.mp4", first: None}
    # The copy cannot be written (a directory where the file goes, copy2 goes into it: a directory there too)
    (tmp_path / "out2" / f"{second:06d}-cat.jpg" / f"{second}.jpg").mkdir(parents=True)
    with pytest.raises(cmd.ExportError, match="cannot copy"):
        cmd.export(store, rows, tmp_path / "out2")
    store.close()


def test_since_parses_durations_and_dates():
    from detector_app.commands.sightings import parse_since

    assert parse_since("90s", now=1000.0) == 910.0 and parse_since("2h", now=10_000.0) == 2800.0
    assert parse_since("1d", now=86_400.0) == 0.0
    assert parse_since("2026-12-01") == time.mktime((2026, 12, 1, 0, 0, 0, 0, 0, -1))


def test_an_interrupted_sighting_is_closed_by_the_next_start(tmp_path):
    store = SightingStore(tmp_path / "s.db")
    now = time.time()
    stale = store.insert(stream="t", session=1, track_id=1, label="cat", first_seen=now - 130, last_seen=now - 120,
                         best_confidence=0.9)
    store._db.execute("UPDATE sightings SET updated_at = ? WHERE id = ?", (time.time() - 120, stale))
    fresh = store.insert(stream="t", session=1, track_id=2, label="cat", first_seen=now - 5, last_seen=now,
                         best_confidence=0.9)
    clipless = store.insert(stream="t", session=1, track_id=3, label="cat", first_seen=now - 130, last_seen=now - 120,
                            best_confidence=0.9, status="closed")
    store._db.execute("UPDATE sightings SET updated_at = ? WHERE id = ?", (time.time() - 120, clipless))
    store.close()
    sightings = Sightings(SightingsConfig(db=tmp_path / "s.db"))
    assert sightings.store.get(stale).status == "closed" and "interrupted" in sightings.store.get(stale).clip_note
    assert sightings.store.get(fresh).status == "open"  # another process's sighting, still being updated
    assert sightings.store.get(clipless).clip_note == "no clip: the process ended while writing it"
    sightings.close()
