"""nginx-rtmp's HTTP hooks (``on_publish``, ``on_publish_done``, ``on_play``), parsed: pure, no I/O.

nginx POSTs a form (``call=publish&app=live&name=KEY&addr=…``); a 2xx answer lets the client go on,
anything else makes nginx drop it before a byte of media is relayed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

HookKind = Literal["publish", "publish_done", "play", "play_done"]
HOOK_KINDS: tuple[HookKind, ...] = ("publish", "publish_done", "play", "play_done")


@dataclass(frozen=True, slots=True)
class HookCall:
    kind: HookKind
    app: str
    key: str  # the stream name: our per-session key
    addr: str  # the client's address as nginx saw it

    def shown_key(self) -> str:
        return self.key[:4] + "…" if len(self.key) > 4 else self.key


def parse_hook(kind: str, form: Mapping[str, str]) -> HookCall | None:
    """None for anything nginx would not send (unknown hook, no name): answered with 400."""
    if kind not in HOOK_KINDS:
        return None
    name = form.get("name", "")
    if not name or len(name) > 256:
        return None
    return HookCall(kind, form.get("app", ""), name, form.get("addr", ""))  # type: ignore[arg-type]


class IngestHooks(Protocol):
    """Who answers the hooks (the nginx ingest): True = allow (2xx), False = refuse (403)."""

    def on_hook(self, call: HookCall) -> bool: ...
