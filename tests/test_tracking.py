"""Tracking: ByteTrack ids per stream (``tracking.tracker``) and the track lifecycle (``tracking.book``).

Unit tests drive both with synthetic boxes; the fixture tests run the real fixture detector over the
recorded tracking scenes (offline file path, sampled on pts: the same results every run) and match
track ids against the MOT ground truth (one id per crossing of the scene).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pytest

from detector_app.commands.replay import detect_source
from detector_app.detection.types import Box, Detection, FrameResult
from detector_app.fixtures.formats import mot_path
from detector_app.ingest.url import UrlSource
from detector_app.tracking import (
    CONFIRM_HITS,
    LEFT_AFTER_S,
    Track,
    TrackBook,
    Tracker,
    TrackerConfig,
    side_of,
)
from detector_app.tracking.book import MAX_TRACKS

W, H = 854, 480
FPS = 10.0


def det(x: float, label: str = "cat", conf: float = 0.9, y: float = 150, w: float = 200, h: float = 180,
        tid: int | None = None) -> Detection:
    return Detection(label, conf, Box(x, y, x + w, y + h), {"cat": 15, "horse": 17}.get(label, -1), tid)


def result(i: int, *dets: Detection, session: int = 1, t: float | None = None) -> FrameResult:
    pts = i / FPS if t is None else t
    return FrameResult(i, i, pts, W, H, 1000.0 + pts, 1000.0 + pts, 5.0, tuple(dets), extra={"session": session})


# ------------------------------------------------------------------------------------ tracker


def walk(tracker: Tracker, frames: range, x0: float, dx: float, label: str = "cat", session: int = 1,
         skip: range = range(0)) -> list[int | None]:
    """A box moving ``dx`` px per sample; ``skip``: samples where the detector missed it."""
    ids = []
    for i in frames:
        dets = [] if i in skip else [det(x0 + dx * i, label)]
        out = tracker.update(dets, i / FPS, session=session)
        ids += [d.track_id for d in out]
    return ids


def test_tracker_keeps_the_id_of_a_walking_animal_through_a_one_second_miss():
    tr = Tracker(fps=FPS)
    ids = walk(tr, range(60), 10, 8, skip=range(20, 30))  # 1.0 s of misses, still moving
    assert ids[0] is None  # unconfirmed on its first sample
    assert set(ids[1:]) == {1}
    assert len(ids) == 50


def test_tracker_is_per_label_and_ids_are_unique_per_stream():
    tr = Tracker(fps=FPS)
    seen = []
    for i in range(10):  # a cat and a horse on the very same box
        out = tr.update([det(100 + 5 * i, "cat"), det(100 + 5 * i, "horse")], i / FPS, session=1)
        seen.append({d.label: d.track_id for d in out})
    assert seen[-1]["cat"] is not None and seen[-1]["horse"] is not None
    assert seen[-1]["cat"] != seen[-1]["horse"]
    assert all(s == seen[-1] for s in seen[1:])


def test_tracker_resets_on_a_new_session_without_reusing_ids():
    tr = Tracker(fps=FPS)
    first = walk(tr, range(10), 100, 5, session=1)
    second = walk(tr, range(10), 100, 5, session=2)  # reconnect: pts starts again at 0
    assert set(first[1:]) == {1}
    assert second[0] is None and set(second[1:]) == {2}, "a new session's animal is a new track"


def test_tracker_relinks_an_animal_back_within_left_after_s_but_not_later():
    tr = Tracker(fps=FPS)
    out_right = walk(tr, range(20), 500, 10)  # walks right, then is gone
    back = [tr.update([det(690 - 10 * i)], 2.0 + 1.5 + i / FPS, session=1)[0].track_id for i in range(5)]
    assert set(out_right[1:]) == {1} and set(back[1:]) == {1}, "back after 1.5 s the way it left: same id"
    later = [tr.update([det(690 - 10 * i)], 3.9 + LEFT_AFTER_S + 0.5 + i / FPS, session=1)[0].track_id
             for i in range(5)]
    assert later[0] is None and set(later[1:]) == {2}, "gone longer than LEFT_AFTER_S: a new track"


def test_tracker_does_not_relink_far_away_or_different_sized_boxes():
    tr = Tracker(fps=FPS)
    walk(tr, range(10), 20, 2)  # a cat on the left, then gone
    far = [tr.update([det(620)], 1.5 + i / FPS, session=1)[0].track_id for i in range(4)]
    assert set(far[1:]) == {2}, "a cat appearing on the other side is another cat"
    # where cat 1 was last seen (2.1 s ago: past ByteTrack's buffer, within RELINK_S), but 6× its size
    big = [tr.update([det(20, w=600, h=400, y=40)], 3.0 + i / FPS, session=1)[0].track_id for i in range(4)]
    assert set(big[1:]) == {3}


def test_tracker_memory_is_bounded():
    tr = Tracker(fps=FPS)
    for i in range(600):  # a new spurious box every few samples, all over the frame
        tr.update([det((i * 97) % 650, conf=0.9)] if i % 3 else [], i / FPS, session=1)
    assert tr.live_tracks <= 25 and len(tr._seen) <= 40 and len(tr._by_label) <= 1


def test_any_box_from_the_detector_floor_up_may_start_a_track():
    tr = Tracker(fps=FPS)  # default floor 0.35 (the detector's default conf)
    weak = [tr.update([det(100 + 5 * i, conf=0.3)], i / FPS, session=1)[0].track_id for i in range(10)]
    assert weak == [None] * 10
    distant = [tr.update([det(400 + 5 * i, conf=0.4)], i / FPS, session=1)[0].track_id for i in range(10, 20)]
    assert set(distant[1:]) == {1}, "a cat the model scores 0.4 is still a tracked cat"
    low = Tracker(fps=FPS, config=TrackerConfig.for_floor(0.2))  # detect --conf 0.2
    assert [low.update([det(100, conf=0.3)], i / FPS, session=1)[0].track_id for i in range(3)] == [None, 1, 1]


# ------------------------------------------------------------------------------------ book


def test_book_confirms_after_hits_and_reports_appeared_moved_left():
    book = TrackBook()
    events = []
    for i in range(40):  # left → right across the frame
        events += book.update(result(i, det(20 + 16 * i, tid=7)))
    kinds = [(e.kind, e.track.side) for e in events]
    assert kinds == [("appeared", "left"), ("moved", "centre"), ("moved", "right")]
    appeared = events[0].track
    assert appeared.hits == CONFIRM_HITS and appeared.first_pts == 0.0 and appeared.track_id == 7
    assert book.tracks and book.tracks[0].last_pts == pytest.approx(3.9)
    last = 39  # unseen from here on
    assert book.update(result(last + int(LEFT_AFTER_S * FPS) - 1)) == []
    gone = book.update(result(last + int(LEFT_AFTER_S * FPS) + 1))
    assert [e.kind for e in gone] == ["left"] and book.tracks == ()
    t: Track = gone[0].track
    assert t.first_seen == 1000.0 and t.last_seen == pytest.approx(1003.9)
    assert t.best_confidence == 0.9 and t.best_frame_index == 0


def test_book_best_confidence_keeps_its_frame_and_box():
    book = TrackBook()
    for i, c in enumerate((0.6, 0.7, 0.95, 0.8, 0.5)):
        book.update(result(i, det(100 + i, conf=c, tid=1)))
    [t] = book.tracks
    assert t.best_confidence == 0.95 and t.best_frame_index == 2 and t.best_box.x1 == 102 and t.confidence == 0.5


def test_one_spurious_box_never_becomes_an_animal():
    book = TrackBook()
    events = []
    for i in range(30):
        dets = [det(300, tid=1)] if i in (3, 4) else []  # two samples only (< CONFIRM_HITS)
        events += book.update(result(i, *dets))
    assert events == [] and book.tracks == ()


def test_a_second_box_on_a_tracked_animal_never_gets_an_id():
    tr = Tracker(fps=FPS)
    got = []
    for i in range(30):  # a cat, and from the 4th sample on a box on its head (inside the cat's box)
        dets = [det(100 + 4 * i)] + ([det(110 + 4 * i, conf=0.6, w=120, h=100)] if i >= 3 else [])
        got.append([d.track_id for d in tr.update(dets, i / FPS, session=1)])
    assert all(ids[0] == 1 for ids in got[1:]) and all(ids[1:] == [None] for ids in got[3:]), got


def test_side_hysteresis_a_box_jittering_on_a_boundary_does_not_flip():
    boundary = W / 3
    book = TrackBook()
    events = []
    for i in range(60):
        jitter = (-1) ** i * 0.03 * W  # ±3 % of the width around the left/centre boundary
        events += book.update(result(i, det(boundary + jitter - 100, tid=1)))
    assert [e.kind for e in events] == ["appeared"]
    assert side_of(Box(boundary + 0.06 * W - 100, 0, boundary + 0.06 * W + 100, 10), W, "left") == "centre"
    assert side_of(Box(600, 0, 800, 10), W, "left") == "right"


def test_session_change_ends_every_track_and_memory_is_bounded():
    book = TrackBook()
    for i in range(5):
        book.update(result(i, det(100, tid=1), det(500, tid=2)))
    events = book.update(result(0, det(100, tid=3), session=2))
    assert sorted(e.track.track_id for e in events if e.kind == "left") == [1, 2]
    assert book.tracks == ()
    for i in range(1, 400):  # many short-lived unconfirmed ids at once
        book.update(result(i, *[det(2 * k, tid=1000 + 10 * i + k) for k in range(3)], session=2))
    assert len(book._tracks) <= MAX_TRACKS and len(book._seen_at) <= MAX_TRACKS


def test_expire_runs_on_its_own_clock_and_close_ends_the_rest():
    book = TrackBook()
    for i in range(5):
        book.update(result(i, det(100, tid=1)), now=50.0 + i / FPS)
    assert book.expire(50.4 + LEFT_AFTER_S - 0.01) == []
    assert [e.kind for e in book.expire(50.4 + LEFT_AFTER_S)] == ["left"]
    for i in range(5):
        book.update(result(10 + i, det(100, tid=2)))
    assert [e.track.track_id for e in book.close()] == [2]


# ------------------------------------------------------------------------------------ fixture videos


def _mot(video: Path) -> dict[int, list[tuple[int, Box]]]:
    """frame (0-based) → [(crossing id, box)] from the scene's MOT ground truth."""
    gt: dict[int, list[tuple[int, Box]]] = defaultdict(list)
    for ln in mot_path(video).read_text().splitlines():
        if ln.strip():
            f, i, x, y, w, h, *_ = ln.split(",")
            gt[int(f) - 1].append((int(i), Box(float(x), float(y), float(x) + float(w), float(y) + float(h))))
    return gt


def _run(video: Path, detector, track: bool = True) -> list[FrameResult]:
    from detector_app.fixtures.scene import frame_counter_probe

    got: list[FrameResult] = []
    detect_source(UrlSource(str(video), live=False), detector, fps=FPS, sinks=[got.append], live=False,
                  frame_probe=frame_counter_probe, track=track)
    return got


def _matched(results: list[FrameResult], video: Path) -> Counter[tuple[int, int]]:
    """(truth crossing id, track id) → samples where a tracked box matched that crossing (IoU ≥ 0.3)."""
    gt = _mot(video)
    pairs: Counter[tuple[int, int]] = Counter()
    for r in results:
        for d in r.detections:
            cands = [(b.iou(d.box), gid) for gid, b in gt.get(r.extra["frame_id"], [])]
            iou, gid = max(cands, default=(0.0, -1))
            if d.track_id is not None and iou >= 0.3:
                pairs[(gid, d.track_id)] += 1
    return pairs


def _confirmed(results: list[FrameResult]) -> list[int]:
    book = TrackBook()
    ids = [e.track.track_id for r in results for e in book.update(r) if e.kind == "appeared"]
    return ids


def test_two_cats_crossing_keep_their_ids(fixture_videos, detector):
    video = fixture_videos["two_cats_480p15"]
    results = _run(video, detector)
    pairs = _matched(results, video)
    by_truth: dict[int, set[int]] = defaultdict(set)
    for gid, tid in pairs:
        by_truth[gid].add(tid)
    assert set(by_truth) == {1, 2}
    assert all(len(t) == 1 for t in by_truth.values()), f"id switch at the crossing: {dict(pairs)}"
    assert by_truth[1] != by_truth[2]
    both = [r for r in results if len({d.track_id for d in r.detections if d.track_id}) == 2]
    assert len(both) >= 40, "both cats tracked at once for ≥ 4 s"
    assert len(_confirmed(results)) == 2


def test_cat_behind_cover_and_back_soon_keeps_its_id_back_late_is_new(fixture_videos, detector):
    video = fixture_videos["cat_returns_480p15"]
    results = _run(video, detector)
    pairs = _matched(results, video)
    ids = {gid: {tid for (g, tid) in pairs if g == gid} for gid in (1, 2, 3)}
    assert all(len(v) == 1 for v in ids.values()), f"{dict(pairs)}"
    # crossing 1 hides for 0.6 s mid-frame: one id before and after (checked per sample below)
    before = {d.track_id for r in results if r.pts is not None and 0.5 < r.pts < 1.4 for d in r.detections}
    after = {d.track_id for r in results if r.pts is not None and 2.0 <= r.pts < 3.3 for d in r.detections}
    assert before - {None} == after - {None} == ids[1]
    assert ids[2] == ids[1], "out on the right, back 1.2 s later: the same track"
    assert ids[3] != ids[1], f"gone ~4 s (> LEFT_AFTER_S = {LEFT_AFTER_S} s): a new track"
    assert len(_confirmed(results)) == 2


def test_cat_and_horse_get_their_own_tracks_and_the_person_none(fixture_videos, detector):
    video = fixture_videos["cat_horse_720p30"]
    results = _run(video, detector)
    labels = {tid: {d.label for r in results for d in r.detections if d.track_id == tid}
              for tid in {d.track_id for r in results for d in r.detections if d.track_id is not None}}
    assert sorted(next(iter(v)) for v in labels.values()) == ["cat", "horse"]
    assert all(len(v) == 1 for v in labels.values())
    assert len(_confirmed(results)) == 2
    distractor = _run(fixture_videos["distractor_480p15"], detector)
    assert not any(d.track_id is not None for r in distractor for d in r.detections)
    assert _confirmed(distractor) == []


def test_no_track_leaves_track_id_null(fixture_videos, detector):
    results = _run(fixture_videos["two_cats_480p15"], detector, track=False)
    dets = [d for r in results for d in r.detections]
    assert len(dets) > 50 and all(d.track_id is None for d in dets)
    assert all(r.to_json()["detections"][0]["track_id"] is None for r in results if r.detections)


def test_a_noisy_detector_still_gives_one_track_per_animal_and_one_announcement():
    """One cat walking for 20 s under a bad detector: 30 % misses, ±6 px jitter, scores 0.36–1, a
    double box now and then, spurious boxes elsewhere: one confirmed track, one announcement."""
    import random

    from detector_app.mentra.feedback import FeedbackConfig, FeedbackEngine, Speak

    rng = random.Random(7)
    tr, book = Tracker(fps=FPS), TrackBook()
    now = [0.0]
    engine = FeedbackEngine(lambda: now[0], FeedbackConfig(tracked=True), has_display=False)
    appeared, said = [], []
    for i in range(200):
        dets = []
        x = 20 + 3 * i
        if rng.random() > 0.3:
            dets.append(det(x + rng.gauss(0, 6), conf=min(1.0, max(0.36, 0.75 + rng.gauss(0, 0.15))),
                            y=150 + rng.gauss(0, 6)))
            if rng.random() < 0.05:
                dets.append(det(x + 15, conf=0.4, w=180))
        if rng.random() < 0.03:
            dets.append(det(rng.uniform(0, 700), conf=rng.uniform(0.36, 0.7), w=120, h=120))
        r = result(i, *tr.update(dets, i / FPS, session=1))
        appeared += [e.track.track_id for e in book.update(r) if e.kind == "appeared"]
        now[0] = i / FPS
        said += [o.text for o in engine.on_result(r) + engine.tick() if isinstance(o, Speak)]
    assert len(appeared) == 1, appeared
    assert said == ["A cat appeared on the left"]


def test_a_new_cat_next_to_a_briefly_missed_one_does_not_steal_its_id():
    tr = Tracker(fps=FPS)
    walk(tr, range(20), 100, 4)  # cat 1, last seen at 1.9 s
    ids = []
    for i in range(20, 26):  # cat 1 missed for 0.3 s while another cat appears right next to it
        ids.append([d.track_id for d in tr.update([det(100 + 4 * i + 230)], i / FPS, session=1)])
    ids.append([d.track_id for d in tr.update([det(100 + 4 * 26), det(100 + 4 * 26 + 230)], 2.6, session=1)])
    assert ids[-1] == [1, 2], ids


def test_overlay_tags_a_tracked_box_with_its_id():
    import numpy as np

    from detector_app.outputs.overlay import draw_detections

    plain, tagged = (np.zeros((H, W, 3), np.uint8) for _ in range(2))
    draw_detections(plain, [det(300)])
    draw_detections(tagged, [det(300, tid=12)])
    tag_row = slice(130, 150)  # the filled tag above the box top (y = 150)
    assert (tagged[tag_row] > 0).any(axis=2).sum() > (plain[tag_row] > 0).any(axis=2).sum()  # "cat #12 0.90" is wider


def test_tracking_sightings_viewer_and_webrtc_keep_the_streaming_process_torch_free():
    """What the streaming process loads for tracking (trackers, supervision, scipy), sightings, the web
    viewer and WebRTC (aiortc) must not pull torch or ultralytics in (the lean-inference promise)."""
    import subprocess
    import sys

    code = (
        "import sys, json\n"
        "import detector_app.stream_service, detector_app.sightings.recorder, detector_app.web.server\n"
        "import detector_app.ingest.whip, detector_app.ingest.whep, detector_app.ingest.managed\n"
        "from detector_app.detection.types import Box, Detection\n"
        "from detector_app.tracking import Tracker\n"
        "t = Tracker()\n"
        "ids = [t.update([Detection('cat', 0.8, Box(10 + i, 10, 100 + i, 100), 15)], i * 0.1)[0].track_id"
        " for i in range(5)]\n"
        "print(json.dumps({'ids': ids, 'loaded': [m for m in ('torch', 'ultralytics') if m in sys.modules]}))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-1000:]
    import json

    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["ids"][-1] is not None, "the tracker never confirmed a track: the check ran nothing"
    assert out["loaded"] == [], out


def test_a_non_finite_box_passes_untracked_and_the_rest_is_tracked():
    """ByteTrack raises on NaN/inf coordinates; one broken box from a model must not end the stream's
    inference thread: it passes without a track_id, the other boxes keep theirs."""
    import math

    tr = Tracker()
    for i in range(4):
        out = tr.update([Detection("cat", 0.8, Box(math.nan, 10, 100, 100), 15),
                         Detection("cat", 0.8, Box(0, 0, math.inf, 90), 15),
                         Detection("cat", 0.7, Box(200 + i, 10, 300 + i, 100), 15)], i * 0.1)
    assert [d.track_id for d in out[:2]] == [None, None] and out[2].track_id is not None
