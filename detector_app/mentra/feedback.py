"""Turn detection results into glasses feedback: short text walls, and speech on display-less glasses.

Pure logic with an injected clock (no ``time.time()`` here) so behaviour is deterministic in tests.

Smoothing: an animal label counts as *present* when it was seen in at least ``min_hits`` (2) of the
last ``window`` (5) results, so one missed (or one spurious) frame neither clears nor flashes the
display. Its count and position come from the newest result that contained it. If no result arrived
for ``stale_after_s`` (stream stalled) nothing is present.

Display: a text wall (≤5 lines, ≤40 chars each, one line per animal kind with count and left/centre/
right by box-centre x) is sent only when the text changes and at most once per ``display_interval_s``;
after ``clear_after_s`` without animals a ``clear_view`` removes it.

Speech (when ``hasDisplay`` is not true — Mentra Live has no screen, §5.4): an animal kind that newly
becomes present is announced ("I see a cat on the left"), at most once per ``label_cooldown_s`` per
kind and never closer than ``speech_gap_s`` to the previous utterance, so it never chatters.

Tracked mode (``FeedbackConfig.tracked``: the miniapp sets it from ``--track/--no-track``; None =
decide by the results, tracked from the first ``track_id`` on; False keeps the per-frame policy
above): what is present is the stream's confirmed tracks (``tracking.TrackBook`` on this
engine's clock), so counts are unique animals ("2 cats: left, right") and the text changes only when
the set of tracks or a track's side (with hysteresis) changes — a jittering box changes nothing — and
is cleared when the last track has left (unseen ``LEFT_AFTER_S``; a stalled stream still waits).
Each track is announced once when it appears: "a cat appeared on the left", or "another cat, on the
right" while one is already known. The old per-kind cooldown keeps its meaning: a new track that
follows the departure of a track of its kind by less than ``label_cooldown_s`` is most likely that
animal found again and is not announced (one return per departure; not after "the cat left" was said). ``announce_left`` adds
"the cat left" when the last one of a kind is gone (``LEFT_AFTER_S``). ``speech_gap_s`` still spaces
every utterance, and "what do you see" answers from the tracks.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from detector_app.detection.types import Detection, FrameResult
from detector_app.tracking.book import SIDES, Track, TrackBook, TrackEvent

# ------------------------------------------------------------------------------- outputs


@dataclass(frozen=True, slots=True)
class ShowText:
    text: str


@dataclass(frozen=True, slots=True)
class ClearDisplay:
    pass


@dataclass(frozen=True, slots=True)
class Speak:
    text: str


Output = ShowText | ClearDisplay | Speak


@dataclass(frozen=True, slots=True)
class FeedbackConfig:
    window: int = 5
    min_hits: int = 2
    display_interval_s: float = 1.0
    clear_after_s: float = 3.0
    stale_after_s: float = 2.0
    label_cooldown_s: float = 10.0
    speech_gap_s: float = 3.0
    max_lines: int = 5
    max_chars: int = 40
    labels: frozenset[str] | None = None  # only these labels count (None = every detection)
    tracked: bool | None = None  # None: track-based once a detection carries a track_id; False: per frame
    announce_left: bool = False  # tracked: say "the cat left" when the last of a kind is gone


@dataclass(frozen=True, slots=True)
class Sighting:
    """One animal kind currently present: how many and where (subset of left/centre/right, in that order)."""

    label: str
    count: int
    positions: tuple[str, ...]


# ------------------------------------------------------------------------------- wording

_POSITIONS = SIDES
_IRREGULAR = {"sheep": "sheep", "deer": "deer", "fish": "fish", "mouse": "mice", "goose": "geese",
              "person": "people", "moose": "moose", "bison": "bison"}


def position_of(det: Detection, frame_width: int) -> str:
    """Thirds of the frame by box-centre x."""
    if frame_width <= 0:
        return "centre"
    x = det.box.center[0] / frame_width
    return "left" if x < 1 / 3 else "right" if x > 2 / 3 else "centre"


def plural(label: str, count: int) -> str:
    if count == 1:
        return label
    head, _, last = label.rpartition(" ")
    prefix = f"{head} " if head else ""
    if last in _IRREGULAR:
        return prefix + _IRREGULAR[last]
    if last.endswith(("s", "x", "ch", "sh")):
        return prefix + last + "es"
    if last.endswith("y") and len(last) > 1 and last[-2] not in "aeiou":
        return prefix + last[:-1] + "ies"
    return prefix + last + "s"


def _join(parts: Sequence[str]) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _where(positions: tuple[str, ...]) -> str:
    if positions == ("centre",):
        return "in the centre"
    return "on the " + _join(list(positions))


def _noun_phrase(s: Sighting) -> str:
    if s.count == 1:
        article = "an" if s.label[:1].lower() in "aeiou" else "a"
        return f"{article} {s.label} {_where(s.positions)}"
    return f"{s.count} {plural(s.label, s.count)} {_where(s.positions)}"


def describe(sightings: Sequence[Sighting]) -> str:
    """Spoken sentence, e.g. "I see 2 cats on the left and right and a dog in the centre"."""
    if not sightings:
        return "I don't see any animals right now"
    return "I see " + _join([_noun_phrase(s) for s in sightings])


def _clip(line: str, max_chars: int) -> str:
    return line if len(line) <= max_chars else line[: max_chars - 1] + "…"


def summary_text(sightings: Sequence[Sighting], *, max_lines: int = 5, max_chars: int = 40) -> str:
    """Text wall, one line per kind: "2 cats: left, right"; overflow folds into "+N more"."""
    lines = [f"{s.count} {plural(s.label, s.count)}: {', '.join(s.positions)}" for s in sightings]
    if len(lines) > max_lines:
        hidden = len(lines) - (max_lines - 1)
        lines = lines[: max_lines - 1] + [f"+{hidden} more"]
    return "\n".join(_clip(line, max_chars) for line in lines)


def sightings_in(result: FrameResult, labels: Iterable[str] | None = None) -> dict[str, Sighting]:
    """Per-label count and positions in one result."""
    allowed = None if labels is None else set(labels)
    grouped: dict[str, list[str]] = {}
    for det in result.detections:
        if allowed is not None and det.label not in allowed:
            continue
        grouped.setdefault(det.label, []).append(position_of(det, result.width))
    return {
        label: Sighting(label, len(pos), tuple(p for p in _POSITIONS if p in pos))
        for label, pos in grouped.items()
    }


def sightings_of(tracks: Iterable[Track], labels: Iterable[str] | None = None) -> dict[str, Sighting]:
    """Per-label count of unique tracked animals and their sides."""
    allowed = None if labels is None else set(labels)
    grouped: dict[str, list[str]] = {}
    for t in tracks:
        if allowed is None or t.label in allowed:
            grouped.setdefault(t.label, []).append(t.side)
    return {
        label: Sighting(label, len(sides), tuple(p for p in _POSITIONS if p in sides))
        for label, sides in grouped.items()
    }


def _article(label: str) -> str:
    return "an" if label[:1].lower() in "aeiou" else "a"


def appeared_phrase(label: str, sides: Sequence[str], known: int) -> str:
    """New tracks of one kind: "a cat appeared on the left", "another cat, on the right",
    "2 cats appeared on the left and right", "2 more cats, in the centre" (``known``: already told)."""
    where = _where(tuple(p for p in _POSITIONS if p in sides))
    n = len(sides)
    if known == 0:
        return f"{_article(label)} {label} appeared {where}" if n == 1 else f"{n} {plural(label, n)} appeared {where}"
    return f"another {label}, {where}" if n == 1 else f"{n} more {plural(label, n)}, {where}"


# ------------------------------------------------------------------------------- engine


class FeedbackEngine:
    """Stateful feedback policy for one glasses session. Call ``on_result`` per FrameResult and
    ``tick`` periodically (timers: clearing, delayed updates); both return outputs to deliver."""

    def __init__(
        self,
        clock: Callable[[], float],
        config: FeedbackConfig | None = None,
        *,
        has_display: bool | None = None,
        speak_enabled: bool = True,
    ) -> None:
        self._clock = clock
        self.config = config or FeedbackConfig()
        self.has_display = has_display
        self.speak_enabled = speak_enabled
        self._history: deque[dict[str, Sighting]] = deque(maxlen=self.config.window)
        self._last_result_at = -math.inf
        self._shown: str | None = None
        self._last_display_at = -math.inf
        self._empty_since: float | None = None
        self._prev_labels: set[str] = set()
        self._pending: set[str] = set()
        self._last_announced: dict[str, float] = {}
        self._last_spoke_at = -math.inf
        # tracked mode
        self._tracked = self.config.tracked is True
        self.book = TrackBook()
        self._to_announce: list[int] = []  # appeared tracks waiting for the speech gap
        self._told: set[int] = set()  # live tracks the wearer has heard about (or that are not news)
        self._recently_left: dict[str, deque[float]] = {}  # kind → when its told tracks left (silently)
        self._to_say_left: list[str] = []

    @property
    def speaks(self) -> bool:
        """Speech is used unless the glasses are known to have a display (unknown → speak; Mentra Live)."""
        return self.speak_enabled and self.has_display is not True

    @property
    def tracked(self) -> bool:
        """Whether feedback follows tracks (True) or smooths per-frame boxes (False)."""
        return self._tracked

    def present(self) -> tuple[Sighting, ...]:
        now = self._clock()
        if now - self._last_result_at > self.config.stale_after_s:
            return ()
        if self._tracked:
            found = list(sightings_of(self.book.tracks, self.config.labels).values())
        else:
            hits: dict[str, int] = {}
            newest: dict[str, Sighting] = {}
            for entry in self._history:  # oldest → newest, so newest wins
                for label, sighting in entry.items():
                    hits[label] = hits.get(label, 0) + 1
                    newest[label] = sighting
            found = [newest[label] for label, n in hits.items() if n >= self.config.min_hits]
        return tuple(sorted(found, key=lambda s: (-s.count, s.label)))

    def on_result(self, result: FrameResult) -> list[Output]:
        now = self._clock()
        if self.config.tracked is None and not self._tracked:
            self._tracked = any(d.track_id is not None for d in result.detections)
        self._history.append(sightings_in(result, self.config.labels))
        self._last_result_at = now
        if self._tracked:
            self._on_events(self.book.update(result, now=now), now)
        return self._evaluate()

    def tick(self) -> list[Output]:
        if self._tracked:
            now = self._clock()
            self._on_events(self.book.expire(now), now)
        return self._evaluate()

    def answer_query(self) -> list[Output]:
        """"What do you see": the current summary now, bypassing the rate limits (the user asked)."""
        now = self._clock()
        present = self.present()
        out: list[Output] = []
        if self.has_display is not False:
            text = summary_text(present, max_lines=self.config.max_lines, max_chars=self.config.max_chars)
            text = text or "No animals in view"
            out.append(ShowText(text))
            self._mark_shown(text, now, empty=not present)
        if self.speaks:
            out.append(Speak(describe(present)))
            self._last_spoke_at = now
            for s in present:
                self._last_announced[s.label] = now
            self._pending.clear()
            self._told.update(t.track_id for t in self._live_tracks())  # just described: not news any more
            self._to_announce.clear()
        return out

    def notice(self, text: str) -> list[Output]:
        """A one-off status message ("Stream stopped"): shown, and spoken on display-less glasses."""
        now = self._clock()
        out: list[Output] = []
        if self.has_display is not False:
            out.append(ShowText(_clip(text, self.config.max_chars)))
            self._mark_shown(text, now, empty=not self.present())
        if self.speaks:
            out.append(Speak(text))
            self._last_spoke_at = now
        return out

    # ---------------------------------------------------------------- internals

    def _mark_shown(self, text: str, now: float, *, empty: bool) -> None:
        self._shown = text
        self._last_display_at = now
        if empty:
            self._empty_since = now

    def _live_tracks(self) -> list[Track]:
        labels = self.config.labels
        return [t for t in self.book.tracks if labels is None or t.label in labels]

    def _on_events(self, events: list[TrackEvent], now: float) -> None:
        """Book events → what to say: new tracks queue an announcement (unless a kind's return within
        the cooldown), the last of a kind leaving may queue "the cat left"."""
        labels = self.config.labels
        for ev in events:
            t = ev.track
            if labels is not None and t.label not in labels:
                continue
            if ev.kind == "appeared":
                if self._returning(t, now):
                    self._told.add(t.track_id)
                else:
                    self._to_announce.append(t.track_id)
            elif ev.kind == "left":
                was_told = t.track_id in self._told
                self._told.discard(t.track_id)
                if t.track_id in self._to_announce:
                    self._to_announce.remove(t.track_id)
                if not was_told:
                    continue  # never announced: its return is news
                if self.config.announce_left and not any(o.label == t.label for o in self._live_tracks()):
                    if t.label not in self._to_say_left:
                        self._to_say_left.append(t.label)
                    self._recently_left.pop(t.label, None)  # "the cat left" was said: a return is news
                else:
                    self._recently_left.setdefault(t.label, deque(maxlen=16)).append(now)

    def _returning(self, t: Track, now: float) -> bool:
        """A new track that is most likely an animal the wearer already heard about: one of its kind left
        (unspoken) less than ``label_cooldown_s`` ago, or its kind was announced per frame before ids came."""
        cooldown = self.config.label_cooldown_s
        if t.label in self._to_say_left:  # back before "the cat left" was said: say neither
            self._to_say_left.remove(t.label)
            return True
        left = self._recently_left.get(t.label)
        while left and now - left[0] >= cooldown:
            left.popleft()
        if left:
            left.popleft()  # one return per departure: two cats back after two left are both silent
            return True
        others = [o for o in self._live_tracks() if o.label == t.label and o.track_id != t.track_id]
        return not others and now - self._last_announced.get(t.label, -math.inf) < cooldown

    def _evaluate(self) -> list[Output]:
        now = self._clock()
        cfg = self.config
        present = self.present()
        labels = {s.label for s in present}
        self._pending |= labels - self._prev_labels
        self._prev_labels = labels
        out: list[Output] = []

        if present:
            self._empty_since = None
            text = summary_text(present, max_lines=cfg.max_lines, max_chars=cfg.max_chars)
            if text != self._shown and now - self._last_display_at >= cfg.display_interval_s:
                out.append(ShowText(text))
                self._shown = text
                self._last_display_at = now
        else:
            if self._empty_since is None:
                self._empty_since = now
            # Tracks already waited LEFT_AFTER_S before leaving: clear at once (a stalled stream still waits).
            fresh = now - self._last_result_at <= cfg.stale_after_s
            delay = 0.0 if self._tracked and fresh else cfg.clear_after_s
            if self._shown is not None and now - self._empty_since >= delay:
                out.append(ClearDisplay())
                self._shown = None
                self._last_display_at = now

        if not self.speaks:
            self._pending.clear()
            self._told.update(self._to_announce)
            self._to_announce.clear()
            self._to_say_left.clear()
            return out
        if self._tracked:
            said = self._track_speech(now, stale=not present and bool(self.book.tracks))
            out += [Speak(said)] if said else []
            return out
        # Drop kinds that left again or were announced recently (no re-announcing a flickering cat).
        self._pending = {
            label for label in self._pending
            if label in labels and now - self._last_announced.get(label, -math.inf) >= cfg.label_cooldown_s
        }
        if self._pending and now - self._last_spoke_at >= cfg.speech_gap_s:
            announce = [s for s in present if s.label in self._pending]
            out.append(Speak(describe(announce)))
            self._last_spoke_at = now
            for s in announce:
                self._last_announced[s.label] = now
            self._pending.clear()
        return out

    def _track_speech(self, now: float, *, stale: bool) -> str | None:
        """One utterance for the queued new tracks (and departures), or None (nothing, or too soon)."""
        if stale or not (self._to_announce or self._to_say_left) or now - self._last_spoke_at < self.config.speech_gap_s:
            return None
        live = self._live_tracks()
        queued = set(self._to_announce)
        parts: list[str] = []
        for label in dict.fromkeys(t.label for t in live if t.track_id in queued):  # in order of appearance
            new = [t.side for t in live if t.label == label and t.track_id in queued]
            known = sum(1 for t in live if t.label == label and t.track_id in self._told)
            parts.append(appeared_phrase(label, new, known))
        parts += [f"the {label} left" for label in self._to_say_left]
        self._told |= queued
        self._to_announce.clear()
        self._to_say_left.clear()
        if not parts:
            return None
        self._last_spoke_at = now
        said = _join(parts)
        return said[:1].upper() + said[1:]
