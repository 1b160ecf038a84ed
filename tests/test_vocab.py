"""Animal filtering by class *name*: COCO, custom models, CLI overrides."""

from __future__ import annotations

import pytest

from detector_app.detection.vocab import (
    COCO_ANIMALS,
    DEFAULT_ANIMALS,
    build_filter,
    normalize,
    parse_classes,
)

# The 80 COCO names in Ultralytics order (yolo11n.pt's `names`).
COCO_NAMES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
]
COCO = dict(enumerate(COCO_NAMES))
COCO_ANIMAL_IDS = frozenset(range(14, 24))


def test_coco_names_table_is_right():
    assert len(COCO_NAMES) == 80 and COCO[14] == "bird" and COCO[23] == "giraffe" and COCO[64] == "mouse"


def test_default_vocabulary_has_all_coco_animals_and_wildlife():
    assert set(COCO_ANIMALS) == {"bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe"}
    assert set(COCO_ANIMALS) <= DEFAULT_ANIMALS
    for wild in ("deer", "fox", "wolf", "boar", "wild boar", "rabbit", "squirrel", "raccoon", "moose", "owl", "duck"):
        assert wild in DEFAULT_ANIMALS
    assert "person" not in DEFAULT_ANIMALS and "car" not in DEFAULT_ANIMALS


def test_default_vocab_entries_are_normalized():
    assert all(normalize(n) == n for n in DEFAULT_ANIMALS)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("Polar_Bear", "polar bear"), ("polar-bear", "polar bear"), ("  polar   bear ", "polar bear"),
     ("Red-Fox", "red fox"), ("wild__boar", "wild boar"), ("DEER", "deer")],
)
def test_normalize(raw, expected):
    assert normalize(raw) == expected


def test_coco_default_filter_is_exactly_ids_14_to_23():
    f = build_filter(COCO, parse_classes(None))
    assert f.allowed_ids == COCO_ANIMAL_IDS
    assert f.allowed_names == tuple(COCO_NAMES[14:24])
    assert not f.everything
    for cid in range(80):
        assert f.accepts(cid) == (cid in COCO_ANIMAL_IDS), COCO[cid]


def test_coco_lookalikes_are_not_animals():
    # regression: COCO 64 "mouse" is a computer mouse; 77 teddy bear, 52 hot dog, 34 baseball bat
    f = build_filter(COCO, parse_classes(None))
    for cid in (64, 77, 52, 34):
        assert not f.accepts(cid), COCO[cid]
    # asking for "dog"/"bear"/"bat" explicitly must not pick up the lookalikes either
    f = build_filter(COCO, parse_classes("dog,bear,bat"))
    assert f.allowed_ids == {16, 21}


def test_explicit_mouse_on_coco_is_honoured():
    f = build_filter(COCO, parse_classes("mouse"))
    assert f.allowed_ids == {64}


def test_mouse_counts_as_animal_in_a_model_without_computer_classes():
    f = build_filter({0: "mouse", 1: "rat", 2: "person"}, parse_classes(None))
    assert f.allowed_ids == {0, 1}


def test_names_as_list():
    f = build_filter(COCO_NAMES, parse_classes(None))
    assert f.allowed_ids == COCO_ANIMAL_IDS


def test_custom_model_different_ids_and_spellings():
    names = {0: "Deer", 1: "wild_boar", 2: "Red-Fox", 3: "person", 4: "Roe_Deer", 5: "vehicle", 6: "cats", 7: "Teddy-Bear"}
    f = build_filter(names, parse_classes(None))
    assert f.allowed_ids == {0, 1, 2, 4, 6}
    assert f.allowed_names == ("Deer", "wild_boar", "Red-Fox", "Roe_Deer", "cats")


def test_plural_class_names_match_singular_vocabulary():
    f = build_filter({0: "cats", 1: "foxes", 2: "Ponies", 3: "horses", 4: "boxes"}, parse_classes(None))
    assert f.allowed_ids == {0, 1, 2, 3}


def test_plural_requests_match_singular_classes():
    f = build_filter(COCO, parse_classes("cats,dogs"))
    assert f.allowed_ids == {15, 16}
    assert f.unmatched == ()


@pytest.mark.parametrize("spec", ["all", "ALL", "*", "cat,all", ["all"]])
def test_classes_all_means_everything(spec):
    wanted = parse_classes(spec)
    assert wanted is None
    f = build_filter(COCO, wanted)
    assert f.everything and f.allowed_ids is None
    assert all(f.accepts(c) for c in range(80))
    assert f.allowed_names == tuple(COCO_NAMES)
    assert f.unmatched == ()


@pytest.mark.parametrize("spec", [None, "", " , ", []])
def test_empty_spec_means_default_animals(spec):
    assert parse_classes(spec) == DEFAULT_ANIMALS


def test_override_cat_dog():
    wanted = parse_classes("cat, Dog")
    assert wanted == {"cat", "dog"}
    f = build_filter(COCO, wanted)
    assert f.allowed_ids == {15, 16}
    assert f.allowed_names == ("cat", "dog")
    assert not f.accepts(17)  # horse no longer reported


def test_override_may_include_non_animals():
    f = build_filter(COCO, parse_classes(["person", "car"]))
    assert f.allowed_ids == {0, 2}


def test_animals_keyword_expands_to_default_plus_extras():
    wanted = parse_classes("animals,person")
    assert DEFAULT_ANIMALS < wanted and "person" in wanted and "animals" not in wanted
    f = build_filter(COCO, wanted)
    assert f.allowed_ids == COCO_ANIMAL_IDS | {0}


def test_unmatched_names_reported():
    f = build_filter(COCO, parse_classes("cat,unicorn,Red_Panda"))
    assert f.allowed_ids == {15}
    assert f.unmatched == ("red panda", "unicorn")


def test_request_matched_through_multiword_class_is_not_unmatched():
    f = build_filter({0: "red fox", 1: "car"}, parse_classes("fox,wolf"))
    assert f.allowed_ids == {0}
    assert f.unmatched == ("wolf",)


def test_model_without_animal_classes_gives_empty_allowed_set():
    names = {0: "person", 1: "car", 2: "traffic light"}
    f = build_filter(names, parse_classes(None))
    assert f.allowed_ids == frozenset()
    assert f.allowed_names == ()
    assert not f.everything
    assert not any(f.accepts(c) for c in range(3))
    assert not f.accepts(-1)
