"""Ground truth in the formats people already have, read into one shape and checked against the video.

Three formats: MOT Challenge ``gt.txt`` (``frame,id,x,y,w,h,conf,class,visibility``, frame 1-based),
COCO-style JSON (one image per frame, found by ``frame_index`` (0-based) or by the number in
``file_name`` (1-based unless some file is numbered 0); ``iscrowd`` boxes are don't-care regions;
frames without an image are not scored) and
the project's fixture truth (``data/fixtures/*.json``). Everything a user can get wrong (unreadable
file, unknown class ids, a truth file for another video) is a one-line ``TruthError``.
"""

from __future__ import annotations

import bisect
import csv
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import av
from loguru import logger

from detector_app.detection.vocab import normalize
from detector_app.errors import UserError


class TruthError(UserError):
    """The truth file cannot be read or does not belong to the video."""


@dataclass(frozen=True, slots=True)
class TruthBox:
    label: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in source pixels
    track_id: int | None = None
    visible: float = 1.0  # fraction in view (MOT visibility, fixture truth): per-second presence uses it
    scored: bool = True  # False: a distractor the fixture records (not an animal) — never expected
    crowd: bool = False  # "don't care" in box metrics (COCO iscrowd; fixture objects less than half in view)


@dataclass(frozen=True, slots=True)
class Truth:
    """Per-frame boxes (index = 0-based frame number) for one video."""

    path: Path
    format: str  # fixture | mot | coco
    frames: tuple[tuple[TruthBox, ...], ...]
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    annotated: frozenset[int] | None = None  # frames the file covers (COCO: its images); None = every frame

    def covers(self, frame: int) -> bool:
        return 0 <= frame < len(self.frames) and (self.annotated is None or frame in self.annotated)

    @property
    def labels(self) -> list[str]:
        return sorted({b.label for f in self.frames for b in f if b.scored})

    def as_fixture(self, fps: float, only: str | None = None) -> dict[str, Any]:
        """The fixture-truth dict that ``fixtures.evaluate.score`` (per-second presence) reads.

        ``only``: score presence of that label alone. Frames a sparse COCO file does not cover take the
        objects of the nearest covered frame (presence per second needs every frame).
        """
        covered = sorted(self.annotated) if self.annotated is not None else None

        def objects(i: int) -> tuple[TruthBox, ...]:
            if covered is None or i in self.annotated:  # type: ignore[operator]
                return self.frames[i]
            j = min(covered, key=lambda c: abs(c - i))
            return self.frames[j]

        return {
            "fps": fps,
            "frames": len(self.frames),
            "per_frame": [
                {"frame": i, "objects": [
                    {"label": b.label, "box": list(b.box), "visible": b.visible,
                     "animal": b.scored and (only is None or b.label == only)} for b in objects(i)]}
                for i in range(len(self.frames))
            ],
        }


@dataclass(frozen=True, slots=True)
class VideoInfo:
    path: Path
    width: int
    height: int
    fps: float
    frames: int
    times: tuple[float, ...] = ()  # presentation time of each frame, from the first (s): VFR-proof lookup

    def frame_at(self, pts: float) -> int:
        """The frame shown at media time ``pts`` (nearest timestamp; ``pts × fps`` without a table)."""
        if not self.times:
            return int(round(pts * self.fps))
        i = bisect.bisect_left(self.times, pts)
        if i == len(self.times) or (i > 0 and pts - self.times[i - 1] <= self.times[i] - pts):
            i -= 1
        return i

    @property
    def duration(self) -> float:
        return self.frames / self.fps if self.fps else 0.0


def probe_video(path: Path) -> VideoInfo:
    """Size, frame rate and exact frame count (counted by demuxing: container headers can lie)."""
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise TruthError(f"{path}: no video stream")
            s = c.streams.video[0]
            fps = float(s.average_rate or s.guessed_rate or 0) or 30.0
            pts = sorted(float(p.pts * p.time_base) for p in c.demux(s) if p.size and p.pts is not None)
            times = tuple(t - pts[0] for t in pts) if pts else ()
            return VideoInfo(Path(path), s.codec_context.width, s.codec_context.height, fps, len(times), times)
    except (av.error.FFmpegError, OSError) as exc:
        raise TruthError(f"cannot read video {path}: {exc}") from None


def parse_label_map(spec: str | None) -> dict[int, str]:
    """``"1=cat,2=dog"`` → {1: "cat", 2: "dog"}."""
    out: dict[int, str] = {}
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        key, sep, name = part.partition("=")
        if not sep or not key.strip().lstrip("-").isdigit() or not name.strip():
            raise TruthError(f"--truth-labels: expected ID=NAME pairs like 1=cat,2=dog, got {part.strip()!r}")
        out[int(key)] = name.strip()
    return out


def load_truth(path: Path, labels: dict[int, str] | None = None, label: str | None = None,
               frames: int | None = None) -> Truth:
    """Read any supported format (chosen by content, not name)."""
    path = Path(path)
    if not path.exists():
        raise TruthError(f"truth file not found: {path}")
    truth = _load(path, labels or {}, label, frames)
    # 'Cat' / 'polar_bear' in a truth file name the classes a model calls 'cat' / 'polar bear'.
    norm = tuple(tuple(replace(b, label=normalize(b.label)) for b in f) for f in truth.frames)
    return replace(truth, frames=norm)


def _load(path: Path, labels: dict[int, str], label: str | None, frames: int | None) -> Truth:
    text = path.read_text(errors="replace")
    if text.lstrip().startswith(("{", "[")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TruthError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        if isinstance(data, dict) and "per_frame" in data:
            return _fixture(path, data)
        if isinstance(data, dict) and "images" in data and "annotations" in data:
            return _coco(path, data, label)
        raise TruthError(f"{path}: JSON but neither COCO (images/annotations) nor fixture truth (per_frame)")
    return _mot(path, text, labels, label, frames)


def _fixture(path: Path, data: dict[str, Any]) -> Truth:
    try:
        per = sorted(data["per_frame"], key=lambda f: f["frame"])
        frames = tuple(
            tuple(TruthBox(o["label"], tuple(map(float, o["box"])), None, float(o.get("visible", 1.0)),
                           bool(o.get("animal", True)), float(o.get("visible", 1.0)) < HALF_IN_VIEW)
                  for o in f["objects"])
            for f in per
        )
        return Truth(path, "fixture", frames, int(data["width"]), int(data["height"]), float(data["fps"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise TruthError(f"{path}: fixture truth is missing or has a bad field ({exc})") from None


def _mot(path: Path, text: str, labels: dict[int, str], label: str | None, frames: int | None) -> Truth:
    rows: dict[int, list[TruthBox]] = {}
    unknown: set[int] = set()
    for n, row in enumerate(csv.reader(text.splitlines()), 1):
        if not row or not "".join(row).strip():
            continue
        try:
            vals = [float(v) for v in row]
            frame, tid, x, y, w, h = int(vals[0]), int(vals[1]), *vals[2:6]
        except (ValueError, IndexError):
            raise TruthError(f"{path}:{n}: not a MOT line (frame,id,x,y,w,h,conf,class,visibility): {','.join(row)[:60]!r}") from None
        if frame < 1:
            raise TruthError(f"{path}:{n}: MOT frames are 1-based, got frame {frame}")
        conf = vals[6] if len(vals) > 6 else 1.0
        if conf == 0:
            continue  # MOT: conf 0 = ignore this box
        cls = int(vals[7]) if len(vals) > 7 and vals[7] >= 0 else None
        vis = float(vals[8]) if len(vals) > 8 and 0 <= vals[8] <= 1 else 1.0
        if label is not None:
            name = label
        elif cls is not None and cls in labels:
            name = labels[cls]
        elif cls is None and len(labels) == 1:
            name = next(iter(labels.values()))
        else:
            unknown.add(cls if cls is not None else -1)
            continue
        rows.setdefault(frame - 1, []).append(TruthBox(name, (x, y, x + w, y + h), tid, vis))
    if unknown and labels:  # a mapping names the classes to score; the others (MOT17's cars, occluders) are not
        logger.warning("{}: boxes of MOT class id(s) {} ignored (not in --truth-labels)", path.name,
                       ", ".join(map(str, sorted(unknown))))
    elif unknown:
        raise TruthError(
            f"{path}: MOT class id(s) {', '.join(map(str, sorted(unknown)))} have no name: "
            f"pass --truth-labels ID=NAME,… or --truth-label NAME"
        )
    n_frames = max(frames or 0, max(rows, default=-1) + 1)  # empty gt.txt: a video without objects
    return Truth(path, "mot", tuple(tuple(rows.get(i, ())) for i in range(n_frames)))


CROWD_VISIBLE = 0.3  # COCO iscrowd = "don't care": in per-second presence, like a partly visible fixture object
HALF_IN_VIEW = 0.5  # fixture truth: an animal less than half in view is "don't care" (as fixtures.evaluate)
_NUMBER = re.compile(r"(\d+)(?!.*\d)")


def _coco(path: Path, data: dict[str, Any], label: str | None) -> Truth:
    try:
        cats = {int(c["id"]): str(c["name"]) for c in data.get("categories", [])}
        index: dict[int, int] = {}
        sizes: set[tuple[int, int]] = set()
        for img in data["images"]:
            if "frame_index" in img or "frame_id" in img:
                fi = int(img.get("frame_index", img.get("frame_id")))
            else:
                m = _NUMBER.search(Path(str(img.get("file_name", ""))).stem)
                if not m:
                    raise TruthError(f"{path}: image {img.get('id')} has neither frame_index nor a number in file_name")
                fi = int(m.group(1))
            index[int(img["id"])] = fi
            if "width" in img and "height" in img:
                sizes.add((int(img["width"]), int(img["height"])))
        if not index:
            raise TruthError(f"{path}: COCO JSON without images")
        # file_name numbers are 1-based, as ffmpeg writes extracted frames (frame_%06d.jpg), unless a 0 appears.
        by_name = not all("frame_index" in img or "frame_id" in img for img in data["images"])
        base = 1 if by_name and min(index.values()) >= 1 else 0
        per: dict[int, list[TruthBox]] = {}
        for a in data["annotations"]:
            x, y, w, h = map(float, a["bbox"])
            name = label or cats.get(int(a["category_id"]))
            if name is None:
                raise TruthError(f"{path}: annotation {a.get('id')} has category {a['category_id']} not in categories")
            per.setdefault(index[int(a["image_id"])] - base, []).append(
                TruthBox(name, (x, y, x + w, y + h), a.get("track_id") or a.get("instance_id"),
                         CROWD_VISIBLE if a.get("iscrowd") else 1.0, crowd=bool(a.get("iscrowd"))))
        n = max(index.values()) - base + 1
        w, h = sizes.pop() if len(sizes) == 1 else (None, None)
        return Truth(path, "coco", tuple(tuple(per.get(i, ())) for i in range(n)), w, h,
                     annotated=frozenset(fi - base for fi in index.values()))
    except TruthError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise TruthError(f"{path}: COCO JSON is missing or has a bad field ({type(exc).__name__}: {exc})") from None


def check_matches(truth: Truth, video: VideoInfo) -> None:
    """A truth file for another video is the most common mistake: refuse it with the numbers."""
    if truth.width is not None and (truth.width, truth.height) != (video.width, video.height):
        raise TruthError(
            f"{truth.path} is for {truth.width}x{truth.height} frames but {video.path.name} is "
            f"{video.width}x{video.height}: wrong truth file for this video?")
    if len(truth.frames) > video.frames or (truth.format == "fixture" and len(truth.frames) != video.frames):
        raise TruthError(
            f"{truth.path} has {len(truth.frames)} frames but {video.path.name} has {video.frames}: "
            f"wrong truth file for this video?")
    bad = [(i, b) for i, f in enumerate(truth.frames) for b in f
           if b.box[0] >= video.width or b.box[1] >= video.height or b.box[2] <= 0 or b.box[3] <= 0]
    if bad and len(bad) > 0.05 * sum(len(f) for f in truth.frames):
        i, b = bad[0]
        raise TruthError(
            f"{truth.path}: {len(bad)} boxes lie outside the {video.width}x{video.height} frame "
            f"(first: frame {i}, {[round(v) for v in b.box]}): wrong truth file for this video?")


def padded(truth: Truth, video: VideoInfo) -> Truth:
    """Frames after the last annotated one have no objects (MOT/COCO files only list frames with boxes)."""
    extra = video.frames - len(truth.frames)
    if extra <= 0:
        return truth
    return Truth(truth.path, truth.format, truth.frames + ((),) * extra, truth.width, truth.height, truth.fps,
                 truth.annotated)
