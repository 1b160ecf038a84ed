"""Voice and button commands: turn final transcripts / button presses into app commands.

Only final transcripts count: interim results repeat the growing text (§6), so acting on them would
fire the same command several times per utterance.
"""

from __future__ import annotations

import enum
import re


class Command(enum.Enum):
    STOP_STREAM = "stop_stream"
    START_STREAM = "start_stream"
    TOGGLE_STREAM = "toggle_stream"
    WHAT_DO_YOU_SEE = "what_do_you_see"


# Phrases after normalisation; a few natural variants of each command.
PHRASES: dict[Command, tuple[str, ...]] = {
    Command.STOP_STREAM: ("stop stream", "stop the stream", "stop streaming", "end stream", "end the stream"),
    Command.START_STREAM: ("start stream", "start the stream", "start streaming", "begin stream"),
    Command.WHAT_DO_YOU_SEE: ("what do you see", "what can you see", "what are you seeing"),
}

_PUNCT = re.compile(r"[^\w\s']|_")
_SPACES = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Lowercase, drop punctuation (keeps apostrophes inside words), collapse whitespace."""
    text = _PUNCT.sub(" ", text.lower()).replace("'", "")
    return _SPACES.sub(" ", text).strip()


def match_transcript(text: str, is_final: bool = True) -> Command | None:
    """Command spoken in ``text`` (whole-word phrase match), earliest in the utterance wins."""
    if not is_final:
        return None
    padded = f" {normalize(text)} "
    best: tuple[int, Command] | None = None
    for command, phrases in PHRASES.items():
        for phrase in phrases:
            pos = padded.find(f" {phrase} ")
            if pos >= 0 and (best is None or pos < best[0]):
                best = (pos, command)
    return None if best is None else best[1]


def match_button(press_type: str) -> Command | None:
    """Mentra Live's single button: short press toggles the stream, long press asks what it sees."""
    if press_type == "short":
        return Command.TOGGLE_STREAM
    if press_type == "long":
        return Command.WHAT_DO_YOU_SEE
    return None
