"""Replay tests for your own CI: push a recording through the real ingest and assert on typed results.

    from detector_app.testing import replay

    def test_cat_is_seen():
        run = replay("recordings/cat.mp4", model="models/my.pt", via="rtmp")   # or "srt", "file"
        assert run.labels() == {"cat"}
        score = run.score("recordings/cat.gt.txt", truth_labels="1=cat")     # MOT, COCO or fixture truth
        assert score["recall"] >= 0.9 and score["precision"] >= 0.9

``via="rtmp"``/``"srt"`` runs the same path as ``detector-app replay``: a separate ffmpeg process
publishes the file in real time to a listener on 127.0.0.1 (a free port), exactly as the glasses do;
``"file"`` decodes the file directly, deterministically. The pytest plugin (installed with the package,
``detector_app.testing.plugin``) gives the ``replay_recording`` fixture, which keeps one loaded model
per test session. ``Replay.score`` returns the numbers ``replay --expect`` checks
(``detector_app.evaluation.expect`` lists them).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from detector_app.detection.types import Detection, FrameResult

if TYPE_CHECKING:  # the pipeline (PyAV, OpenCV) loads on the first replay, not when pytest loads the plugin
    from detector_app.summary import RunSummary

__all__ = ["Replay", "replay", "load_detector"]

_DETECTORS: dict[tuple, object] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class Replay:
    """What one replay produced: every result (in order) and the run summary."""

    video: Path
    via: str
    results: tuple[FrameResult, ...]
    summary: RunSummary
    conf: float

    @property
    def detections(self) -> list[Detection]:
        return [d for r in self.results for d in r.detections]

    def labels(self) -> set[str]:
        return {d.label for d in self.detections}

    def frames_with(self, label: str | None = None) -> int:
        """Results with at least one detection (of ``label``)."""
        return sum(1 for r in self.results if any(label is None or d.label == label for d in r.detections))

    def pts_by_frame_id(self) -> dict[int, float]:
        """Fixture recordings (``frame_counter=True``): drawn frame number → media time of that frame."""
        return {r.extra["frame_id"]: r.pts for r in self.results if "frame_id" in r.extra and r.pts is not None}

    def score(self, truth: str | Path, truth_labels: str | None = None, truth_label: str | None = None
              ) -> dict[str, float | None]:
        """Scores against ground truth: recall, precision (per second), box_recall, box_precision, iou, ap50, ap50_95."""
        from detector_app.evaluation.metrics import VideoRun, overall
        from detector_app.evaluation.truth import check_matches, load_truth, padded, parse_label_map, probe_video

        info = probe_video(self.video)
        t = load_truth(Path(truth), parse_label_map(truth_labels), truth_label, frames=info.frames)
        check_matches(t, info)
        run = VideoRun.build(padded(t, info), info, [r.to_json() for r in self.results])
        return overall([run], self.conf)


def load_detector(model: str | Path | None = None, conf: float = 0.35, classes: str | None = None,
                  precision: str = "auto", frame_size: tuple[int, int] | None = None):
    """A warmed-up ``Detector``, kept per process and settings (loading costs seconds)."""
    from detector_app.detection.detector import DEFAULT_MODEL, Detector, DetectorConfig

    key = (str(model or DEFAULT_MODEL), conf, classes, precision, frame_size)
    with _LOCK:
        det = _DETECTORS.get(key)
        if det is None:
            det = Detector(DetectorConfig(model=str(model or DEFAULT_MODEL), conf=conf, classes=classes,
                                          precision=precision, fallback_to_fixture=model is None),
                           frame_size=frame_size, progress=False)
            det.warmup(frame_size or (1280, 720))
            _DETECTORS[key] = det
    return det


def replay(video: str | Path, model: str | Path | None = None, via: str = "rtmp", *, fps: float = 10.0,
           conf: float = 0.35, classes: str | None = None, precision: str = "auto", detector=None,
           frame_counter: bool = False) -> Replay:
    """Replay ``video`` through the real ingest (``via`` rtmp, srt or whip) or decode it (``file``); return results."""
    from detector_app.commands.replay import detect_source
    from detector_app.commands.replay import replay as run_replay
    from detector_app.errors import UserError
    from detector_app.ingest.url import UrlSource
    from detector_app.video.probe import video_size

    video = Path(video)
    if not video.exists():
        raise UserError(f"video not found: {video}")
    if via not in ("rtmp", "srt", "whip", "file"):
        raise UserError(f"via must be rtmp, srt, whip or file, got {via!r}")
    det = detector or load_detector(model, conf, classes, precision, video_size(video))
    probe = None
    if frame_counter:
        from detector_app.fixtures.scene import frame_counter_probe as probe
    got: list[FrameResult] = []
    lock = threading.Lock()

    def sink(r: FrameResult) -> None:
        with lock:
            got.append(r)

    if via == "file":
        summary = detect_source(UrlSource(str(video), live=False), det, fps=fps, sinks=[sink], live=False,
                                frame_probe=probe)
    else:
        summary = run_replay(video, det, protocol=via, fps=fps, sinks=[sink], frame_probe=probe)
    with lock:
        results = tuple(got)
    return Replay(video, via, results, summary, det.cfg.conf)
