"""Which detections count as animals: matched by class *name*, so any model's labels work.

COCO indices differ between models (a custom model's class 0 may be "deer"), so the filter
resolves names against each model's own ``names`` table once, at load time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

COCO_ANIMALS: tuple[str, ...] = (
    "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe",
)

# Names a custom or open-vocabulary model may use for wildlife and pets.
WILDLIFE: tuple[str, ...] = (
    "animal", "mammal", "pet", "wildlife", "deer", "fawn", "moose", "elk", "reindeer", "caribou", "antelope",
    "gazelle", "fox", "wolf", "coyote", "jackal", "rabbit", "hare", "squirrel", "chipmunk", "raccoon",
    "badger", "otter", "beaver", "hedgehog", "porcupine", "skunk", "opossum", "possum", "mouse", "rat",
    "hamster", "guinea pig", "boar", "wild boar", "pig", "hog", "goat", "ibex", "bison", "buffalo", "yak",
    "ox", "bull", "calf", "camel", "llama", "alpaca", "donkey", "mule", "pony", "kangaroo", "wallaby", "koala",
    "panda", "red panda", "lion", "tiger", "leopard", "cheetah", "jaguar", "lynx", "bobcat", "cougar", "puma",
    "monkey", "ape", "gorilla", "chimpanzee", "orangutan", "lemur", "sloth", "bat", "rhino", "rhinoceros",
    "hippo", "hippopotamus", "seal", "sea lion", "walrus", "whale", "dolphin", "polar bear", "brown bear",
    "black bear", "kitten", "puppy", "duck", "goose", "swan", "chicken", "hen", "rooster", "turkey", "owl",
    "eagle", "hawk", "falcon", "vulture", "crow", "raven", "pigeon", "dove", "parrot", "penguin", "flamingo",
    "heron", "stork", "crane", "gull", "seagull", "ostrich", "emu", "peacock", "songbird", "sparrow",
    "robin", "frog", "toad", "turtle", "tortoise", "snake", "lizard", "iguana", "gecko", "crocodile",
    "alligator", "fish", "shark", "butterfly", "bee", "spider", "insect",
)

DEFAULT_ANIMALS: frozenset[str] = frozenset(COCO_ANIMALS + WILDLIFE)

# Objects named after animals: never matched through their last word ("teddy bear" is not a bear).
NOT_ANIMALS: frozenset[str] = frozenset({
    "teddy bear", "hot dog", "corn dog", "baseball bat", "cricket bat", "computer mouse", "stuffed animal",
    "toy animal", "tower crane", "construction crane",
})

# COCO's class "mouse" is the computer mouse (it sits between "laptop" and "remote"). In a model that
# also knows these, the *default* animal vocabulary must not claim it; an explicit --classes mouse does.
_COCO_MOUSE_CONTEXT = frozenset({"laptop", "keyboard", "remote"})


def normalize(name: str) -> str:
    """'Polar_Bear' / 'polar-bear' / ' polar  bear ' → 'polar bear'."""
    return re.sub(r"\s+", " ", re.sub(r"[_\-]+", " ", name)).strip().lower()


def _singular(name: str) -> str:
    if name.endswith("ies") and len(name) > 4:
        return name[:-3] + "y"
    if name.endswith(("ches", "shes", "sses", "xes")):
        return name[:-2]
    if name.endswith("s") and not name.endswith("ss") and len(name) > 3:
        return name[:-1]
    return name


@dataclass(frozen=True, slots=True)
class ClassFilter:
    """Resolved filter for one model: the allowed class ids, or None for "everything"."""

    allowed_ids: frozenset[int] | None
    allowed_names: tuple[str, ...]
    wanted: frozenset[str] | None  # what the user asked for (normalised), None = all
    unmatched: tuple[str, ...] = ()  # requested names the model does not know

    def accepts(self, class_id: int) -> bool:
        return self.allowed_ids is None or class_id in self.allowed_ids

    @property
    def everything(self) -> bool:
        return self.allowed_ids is None


def parse_classes(spec: str | Iterable[str] | None) -> frozenset[str] | None:
    """CLI value → wanted names. None/'' = default animal vocabulary; 'all' = no filtering."""
    if spec is None:
        return DEFAULT_ANIMALS
    items = [spec] if isinstance(spec, str) else list(spec)
    names = [normalize(p) for item in items for p in str(item).split(",") if p.strip()]
    if not names:
        return DEFAULT_ANIMALS
    if any(n in ("all", "*") for n in names):
        return None
    if "animals" in names:
        names = [n for n in names if n != "animals"] + list(DEFAULT_ANIMALS)
    return frozenset(names)


def build_filter(model_names: Mapping[int, str] | list[str], wanted: frozenset[str] | None) -> ClassFilter:
    names = dict(enumerate(model_names)) if isinstance(model_names, list) else dict(model_names)
    if wanted is None:
        return ClassFilter(None, tuple(names.values()), None)
    form_of = {w: n for n in wanted for w in (_singular(n), n)}  # form -> requested name
    normalized = {cid: normalize(str(raw)) for cid, raw in names.items()}
    skip_mouse = DEFAULT_ANIMALS <= wanted and not _COCO_MOUSE_CONTEXT.isdisjoint(normalized.values())
    ids: set[int] = set()
    matched: set[str] = set()
    for cid, n in normalized.items():
        forms = [n, _singular(n)]
        if " " in n and n not in NOT_ANIMALS and _singular(n) not in NOT_ANIMALS:
            forms += [f.rsplit(" ", 1)[1] for f in forms]  # "red fox" / "roe deer": by the last word
        hits = {form_of[f] for f in forms if f in form_of}
        if skip_mouse and n in ("mouse", "mice"):
            hits.clear()
        if hits:
            ids.add(int(cid))
            matched |= hits
    known = {f for n in normalized.values() for f in (n, _singular(n))}
    unmatched = tuple(sorted(n for n in wanted if n not in matched and n not in known and _singular(n) not in known))
    return ClassFilter(frozenset(ids), tuple(names[i] for i in sorted(ids)), wanted, unmatched)
