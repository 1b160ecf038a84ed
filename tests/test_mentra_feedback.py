"""Feedback policy: smoothing, text walls, clearing, rate limits and speech debouncing (fake clock)."""

from __future__ import annotations

from detector_app.detection.types import Box, Detection, FrameResult
from detector_app.mentra.feedback import (
    ClearDisplay,
    FeedbackConfig,
    FeedbackEngine,
    ShowText,
    Sighting,
    Speak,
    describe,
    plural,
    summary_text,
)

W, H = 1280, 720


class Clock:
    def __init__(self) -> None:
        self.t = 50.0

    def __call__(self) -> float:
        return self.t


def det(label: str, where: str) -> Detection:
    x = {"left": 200, "centre": 640, "right": 1100}[where]
    return Detection(label, 0.8, Box(x - 60, 300, x + 60, 420))


_seq = iter(range(10**6))


def frame(*dets: Detection) -> FrameResult:
    n = next(_seq)
    return FrameResult(n, n, None, W, H, 0.0, 0.0, 4.0, tuple(dets))


def feed(engine: FeedbackEngine, clock: Clock, result: FrameResult, dt: float = 0.1) -> list:
    clock.t += dt
    return engine.on_result(result)


def texts(outs) -> list[str]:
    return [o.text for o in outs if isinstance(o, ShowText)]


def spoken(outs) -> list[str]:
    return [o.text for o in outs if isinstance(o, Speak)]


def make(has_display: bool | None = False, **cfg) -> tuple[FeedbackEngine, Clock]:
    clock = Clock()
    return FeedbackEngine(clock, FeedbackConfig(**cfg), has_display=has_display), clock


def test_needs_two_sightings_then_shows_and_speaks():
    e, c = make()
    assert feed(e, c, frame(det("cat", "left"))) == []
    out = feed(e, c, frame(det("cat", "left")))
    assert texts(out) == ["1 cat: left"]
    assert spoken(out) == ["I see a cat on the left"]


def test_single_spurious_detection_ignored():
    e, c = make()
    out = []
    for d in ([det("dog", "right")], [], [], [], []):
        out += feed(e, c, frame(*d))
    assert out == []


def test_one_missed_frame_does_not_flicker():
    e, c = make()
    out = []
    for d in ([det("cat", "left")], [det("cat", "left")], [], [det("cat", "left")], [], [det("cat", "left")]):
        out += feed(e, c, frame(*d), dt=0.5)
    assert texts(out) == ["1 cat: left"]
    assert not any(isinstance(o, ClearDisplay) for o in out)
    assert len(spoken(out)) == 1


def test_positions_and_counts():
    e, c = make()
    f = frame(det("cat", "left"), det("cat", "right"), det("dog", "centre"))
    feed(e, c, f)
    out = feed(e, c, f)
    assert texts(out) == ["2 cats: left, right\n1 dog: centre"]
    assert spoken(out) == ["I see 2 cats on the left and right and a dog in the centre"]


def test_display_rate_limited_to_once_per_second_and_flushed_by_tick():
    e, c = make(has_display=True)
    feed(e, c, frame(det("cat", "left")))
    assert texts(feed(e, c, frame(det("cat", "left")))) == ["1 cat: left"]
    two = frame(det("cat", "left"), det("cat", "right"))
    feed(e, c, two, dt=0.2)
    assert texts(feed(e, c, two, dt=0.2)) == []  # changed, but only 0.4 s after the last update
    c.t += 0.7
    assert texts(e.tick()) == ["2 cats: left, right"]
    c.t += 0.1
    assert e.tick() == []  # unchanged → nothing resent


def test_unchanged_summary_not_resent():
    e, c = make(has_display=True)
    out = []
    for _ in range(30):
        out += feed(e, c, frame(det("bird", "centre")), dt=0.3)
    assert texts(out) == ["1 bird: centre"]


def test_clear_after_no_animals_and_when_stream_stalls():
    e, c = make(has_display=True, clear_after_s=3.0)
    feed(e, c, frame(det("cat", "left")))
    feed(e, c, frame(det("cat", "left")))
    out = []
    for _ in range(5):  # animal gone, results keep coming
        out += feed(e, c, frame(), dt=0.5)
    assert not any(isinstance(o, ClearDisplay) for o in out)
    # absent since the 4th empty result (smoothing: the cat was still in 2 of the last 5 before)
    c.t += 2.4
    assert e.tick() == []
    c.t += 0.2
    assert any(isinstance(o, ClearDisplay) for o in e.tick())
    assert e.tick() == []  # cleared once

    e2, c2 = make(has_display=True)
    feed(e2, c2, frame(det("cat", "left")))
    feed(e2, c2, frame(det("cat", "left")))
    c2.t += 2.5  # no results at all (stream stalled) → stale → nothing present
    assert e2.tick() == []
    c2.t += 3.1
    assert any(isinstance(o, ClearDisplay) for o in e2.tick())


def test_text_wall_limits():
    sightings = [Sighting(f"animal{i}-with-a-really-long-name-indeed", 1, ("left",)) for i in range(8)]
    text = summary_text(sightings)
    lines = text.split("\n")
    assert len(lines) == 5 and lines[-1] == "+4 more"
    assert all(len(line) <= 40 for line in lines)


def test_speech_per_label_cooldown_and_global_gap():
    e, c = make(label_cooldown_s=10.0, speech_gap_s=3.0)
    cat, dog = det("cat", "left"), det("dog", "right")
    said = []
    said += spoken(feed(e, c, frame(cat)) + feed(e, c, frame(cat)))
    assert said == ["I see a cat on the left"]
    # dog appears 1 s later: waits for the 3 s gap
    for _ in range(3):
        said += spoken(feed(e, c, frame(cat, dog), dt=0.3))
    assert said == ["I see a cat on the left"]
    for _ in range(10):
        said += spoken(feed(e, c, frame(cat, dog), dt=0.3))
    assert said == ["I see a cat on the left", "I see a dog on the right"]
    # cat leaves and comes back within the cooldown: silent
    for _ in range(5):
        said += spoken(feed(e, c, frame(dog), dt=0.3))
    for _ in range(3):
        said += spoken(feed(e, c, frame(cat, dog), dt=0.3))
    assert len(said) == 2
    # after the cooldown it is announced again
    for _ in range(6):
        said += spoken(feed(e, c, frame(dog), dt=1.0))
    for _ in range(3):
        said += spoken(feed(e, c, frame(cat, dog), dt=0.3))
    assert said[-1] == "I see a cat on the left" and len(said) == 3


def test_never_chatters_with_a_flickering_detector():
    e, c = make()
    said = []
    for i in range(600):  # 60 s at 10 results/s, animals flicker in and out
        dets = [det("cat", "left")] if i % 7 < 3 else []
        if i % 11 < 4:
            dets.append(det("dog", "right"))
        said += spoken(feed(e, c, frame(*dets)))
    # each kind at most once per 10 s: ≤ 2 kinds × 6 windows
    assert 2 <= len(said) <= 12


def test_no_speech_with_display():
    e, c = make(has_display=True)
    out = feed(e, c, frame(det("cat", "left"))) + feed(e, c, frame(det("cat", "left")))
    assert spoken(out) == [] and texts(out) == ["1 cat: left"]


def test_unknown_display_speaks_and_shows():
    e, c = make(has_display=None)
    out = feed(e, c, frame(det("cat", "left"))) + feed(e, c, frame(det("cat", "left")))
    assert spoken(out) and texts(out)


def test_speak_disabled():
    clock = Clock()
    e = FeedbackEngine(clock, has_display=False, speak_enabled=False)
    out = feed(e, clock, frame(det("cat", "left"))) + feed(e, clock, frame(det("cat", "left")))
    assert spoken(out) == []


def test_answer_query():
    e, c = make(has_display=False)
    assert spoken(e.answer_query()) == ["I don't see any animals right now"]
    feed(e, c, frame(det("horse", "centre")))
    feed(e, c, frame(det("horse", "centre"), det("horse", "centre")))
    c.t += 0.5
    assert spoken(e.answer_query()) == ["I see 2 horses in the centre"]
    e2, c2 = make(has_display=True)
    assert texts(e2.answer_query()) == ["No animals in view"] and spoken(e2.answer_query()) == []


def test_label_filter():
    e, c = make(labels=frozenset({"cat"}))
    out = feed(e, c, frame(det("person", "left"))) + feed(e, c, frame(det("person", "left")))
    assert out == []


def test_wording():
    assert plural("mouse", 2) == "mice" and plural("sheep", 3) == "sheep" and plural("fox", 2) == "foxes"
    assert plural("teddy bear", 2) == "teddy bears" and plural("butterfly", 2) == "butterflies"
    assert describe([Sighting("elephant", 1, ("right",))]) == "I see an elephant on the right"
    three = [Sighting("cat", 1, ("left",)), Sighting("dog", 1, ("centre",)), Sighting("cow", 1, ("right",))]
    assert describe(three) == "I see a cat on the left, a dog in the centre and a cow on the right"


# ------------------------------------------------------------------------------- tracked mode


def tdet(tid: int, x: float, label: str = "cat") -> Detection:
    """A tracked box centred at ``x``."""
    return Detection(label, 0.8, Box(x - 60, 300, x + 60, 420), -1, tid)


def run(e: FeedbackEngine, c: Clock, frames: list[tuple[Detection, ...]], dt: float = 0.1) -> list:
    out: list = []
    for dets in frames:
        out += feed(e, c, frame(*dets), dt=dt)
        out += e.tick()
    return out


def test_tracked_one_jittering_cat_never_changes_the_text():
    e, c = make(has_display=None)
    # a cat near the left/centre boundary (x = W/3 ± 3 %), with a missed sample now and then
    frames = [(tdet(1, W / 3 + (-1) ** i * 0.03 * W),) if i % 7 else () for i in range(300)]
    out = run(e, c, frames)
    assert e.tracked
    assert len(texts(out)) == 1 and texts(out)[0] in ("1 cat: left", "1 cat: centre")
    assert spoken(out) == [f"A cat appeared {'on the left' if 'left' in texts(out)[0] else 'in the centre'}"]
    assert not any(isinstance(o, ClearDisplay) for o in out)


def test_tracked_counts_unique_animals_and_announces_each_new_one_once():
    e, c = make(has_display=None, speech_gap_s=3.0)
    one = [(tdet(1, 200),)] * 40
    two = [(tdet(1, 200), tdet(2, 1100))] * 80
    out = run(e, c, one + two)
    assert texts(out) == ["1 cat: left", "2 cats: left, right"]
    assert spoken(out) == ["A cat appeared on the left", "Another cat, on the right"]


def test_tracked_two_at_once_and_a_second_kind():
    e, c = make(has_display=False)
    out = run(e, c, [(tdet(1, 200), tdet(2, 1100), tdet(3, 640, "horse"))] * 10)
    assert spoken(out) == ["2 cats appeared on the left and right and a horse appeared in the centre"]
    assert spoken(e.answer_query()) == ["I see 2 cats on the left and right and a horse in the centre"]


def test_tracked_speech_waits_for_the_gap_and_a_new_cat_is_never_lost():
    e, c = make(has_display=False, speech_gap_s=3.0)
    out = run(e, c, [(tdet(1, 200),)] * 5 + [(tdet(1, 200), tdet(2, 1100))] * 40)
    assert spoken(out) == ["A cat appeared on the left", "Another cat, on the right"]


def test_tracked_return_within_cooldown_is_silent_later_it_is_news():
    e, c = make(has_display=False, label_cooldown_s=10.0)
    cat = [(tdet(1, 200),)] * 10
    gone = [()] * 40  # 4 s: the track leaves (LEFT_AFTER_S = 3 s)
    out = run(e, c, cat + gone + [(tdet(2, 200),)] * 10)  # back 1 s after it left: probably the same cat
    assert spoken(out) == ["A cat appeared on the left"]
    out = run(e, c, gone + [()] * 80 + [(tdet(3, 1100),)] * 10)  # 12 s unseen, 9 s after it left: still silent
    assert spoken(out) == []
    out = run(e, c, gone + [()] * 110 + [(tdet(4, 1100),)] * 10)  # 15 s unseen, 12 s after it left: news
    assert spoken(out) == ["A cat appeared on the right"]


def test_tracked_announce_left_and_return():
    e, c = make(has_display=False, announce_left=True, speech_gap_s=1.0)
    out = run(e, c, [(tdet(1, 200),)] * 10 + [()] * 40 + [(tdet(2, 1100),)] * 10)
    assert spoken(out) == ["A cat appeared on the left", "The cat left", "A cat appeared on the right"]


def test_tracked_answer_query_and_display_clear_after_the_track_leaves():
    e, c = make(has_display=True, clear_after_s=3.0)
    out = run(e, c, [(tdet(1, 200), tdet(2, 1100))] * 10)
    assert texts(out) == ["2 cats: left, right"] and spoken(out) == []
    assert texts(e.answer_query()) == ["2 cats: left, right"]
    out = run(e, c, [(tdet(2, 1100),)] * 40)  # cat 1 unseen for 4 s: it left, the text follows
    assert texts(out) == ["1 cat: right"]
    out = run(e, c, [()] * 29)
    assert not any(isinstance(o, ClearDisplay) for o in out)
    out = run(e, c, [()] * 2)  # LEFT_AFTER_S after cat 2's last sample: it left, nothing in view
    assert sum(isinstance(o, ClearDisplay) for o in out) == 1


def test_tracked_never_chatters_where_per_frame_mode_did():
    """One cat that the detector keeps losing for up to 1 s, for 60 s: tracked = one announcement."""
    frames = [(tdet(1, 640 + 200 * ((i // 50) % 2)),) if i % 13 > 3 else () for i in range(600)]
    e, c = make(has_display=False)
    assert spoken(run(e, c, frames)) == ["A cat appeared in the centre"]
    untracked = [tuple(Detection(d.label, d.confidence, d.box) for d in f) for f in frames]
    e2, c2 = make(has_display=False)
    assert len(spoken(run(e2, c2, untracked))) >= 2 and not e2.tracked  # the old per-frame policy


def test_tracked_label_filter_and_forced_untracked():
    e, c = make(has_display=False, labels=frozenset({"cat"}))
    assert spoken(run(e, c, [(tdet(1, 200, "person"),)] * 10)) == []
    e2, c2 = make(has_display=False, tracked=False)
    out = run(e2, c2, [(tdet(1, 200), tdet(2, 1100))] * 5)
    assert spoken(out) == ["I see 2 cats on the left and right"] and not e2.tracked


def test_tracked_two_cats_back_after_both_left_are_silent_a_third_is_news():
    e, c = make(has_display=False, speech_gap_s=1.0)
    out = run(e, c, [(tdet(1, 200), tdet(2, 1100))] * 10 + [()] * 40)  # both gone 4 s: both left
    assert spoken(out) == ["2 cats appeared on the left and right"]
    out = run(e, c, [(tdet(3, 200), tdet(4, 1100))] * 10)  # the looping video brings both back
    assert spoken(out) == []
    out = run(e, c, [(tdet(3, 200), tdet(4, 1100), tdet(5, 640))] * 10)
    assert spoken(out) == ["Another cat, in the centre"]
