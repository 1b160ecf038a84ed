"""``replay --expect``: the assertions a user's CI makes on one replay, each failure one readable line.

``--expect "recall>=0.9,precision>=0.9"`` compares measured values with thresholds. Metrics:
``recall``/``precision`` (per-second presence, what a wearer notices), ``box_recall``/``box_precision``
(boxes at IoU 0.5), ``iou`` (median box IoU), ``ap50``, ``ap50_95`` (all over the truth's classes),
``rate`` (inferences/s), ``detections`` (results with a box). ``--expect-labels cat,dog``: each
listed label was detected and no other; ``--expect-none``: nothing was detected at all.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import Any

from detector_app.errors import UserError

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}
_TERM = re.compile(r"^\s*([a-z_0-9]+)\s*(>=|<=|==|>|<)\s*([0-9.eE+-]+)\s*$")
TRUTH_METRICS = ("recall", "precision", "box_recall", "box_precision", "iou", "ap50", "ap50_95")
METRICS = (*TRUTH_METRICS, "rate", "detections")


class ExpectError(UserError):
    """An ``--expect`` that cannot be read (a user fix, exit 2; a failed expectation is exit 1)."""


@dataclass(frozen=True, slots=True)
class Expectation:
    metric: str
    op: str
    value: float

    def check(self, measured: dict[str, float | None]) -> str | None:
        got = measured.get(self.metric)
        if got is None:
            return f"{self.metric} could not be measured (no truth boxes or seconds to score it on)"
        if _OPS[self.op](got, self.value):
            return None
        return f"{self.metric} {got:.3f} is not {self.op} {self.value:g}"


def parse_expect(spec: str | None) -> list[Expectation]:
    out = []
    for term in (spec or "").split(","):
        if not term.strip():
            continue
        m = _TERM.match(term)
        if not m:
            raise ExpectError(f"--expect: cannot read {term.strip()!r} (write e.g. recall>=0.9,precision>=0.9)")
        metric, op, value = m.groups()
        if metric not in METRICS:
            raise ExpectError(f"--expect: unknown metric {metric!r} (one of {', '.join(METRICS)})")
        try:
            out.append(Expectation(metric, op, float(value)))
        except ValueError:
            raise ExpectError(f"--expect: {value!r} is not a number") from None
    return out


def label_failures(results: list[dict[str, Any]], expect_labels: list[str] | None, expect_none: bool) -> list[str]:
    seen: dict[str, int] = {}
    for r in results:
        for d in r.get("detections", []):
            seen[d["label"]] = seen.get(d["label"], 0) + 1
    fails = []
    if expect_none and seen:
        fails.append("expected no detections, got " + ", ".join(f"{k} ×{v}" for k, v in sorted(seen.items())))
    if expect_labels:
        missing = [lbl for lbl in expect_labels if lbl not in seen]
        other = {k: v for k, v in seen.items() if k not in expect_labels}
        if missing:
            fails.append(f"expected label(s) never detected: {', '.join(missing)}")
        if other:
            fails.append("unexpected label(s): " + ", ".join(f"{k} ×{v}" for k, v in sorted(other.items())))
    return fails


def first_failure(expectations: list[Expectation], measured: dict[str, float | None]) -> list[str]:
    return [f for e in expectations if (f := e.check(measured)) is not None]


class ReplayCheck:
    """Collects a replay's results (a pipeline sink) and judges them once it ended (``__call__``)."""

    def __init__(self, video, conf: float, truth, expectations: list[Expectation], labels: list[str] | None,
                 none: bool) -> None:
        self.video, self.conf, self.truth = video, conf, truth
        self.expectations, self.labels, self.none = expectations, labels, none
        self.results: list[dict[str, Any]] = []

    @classmethod
    def build(cls, video, conf: float, truth_path, truth_labels: str | None, truth_label: str | None,
              expect: str | None, expect_labels: str | None, expect_none: bool) -> ReplayCheck | None:
        """Read and check every option before the replay starts (a typo must not cost a whole replay)."""
        from detector_app.evaluation.truth import check_matches, load_truth, padded, parse_label_map, probe_video

        expectations = parse_expect(expect)
        labels = [s.strip() for s in (expect_labels or "").split(",") if s.strip()] or None
        if not (expectations or labels or expect_none):
            return None
        truth = None
        if truth_path is not None:
            info = probe_video(video)
            loaded = load_truth(truth_path, parse_label_map(truth_labels), truth_label, info.frames)
            check_matches(loaded, info)
            truth = (padded(loaded, info), info)
        needs = [e.metric for e in expectations if e.metric in TRUTH_METRICS]
        if needs and truth is None:
            raise ExpectError(f"--expect {needs[0]} needs --truth (ground truth for the video)")
        return cls(video, conf, truth, expectations, labels, expect_none)

    def collect(self, result) -> None:
        self.results.append(result.to_json())

    def __call__(self, summary) -> str | None:
        """The first failed expectation as one line, None when all hold."""
        measured: dict[str, float | None] = {
            "rate": summary.detections_per_s,
            "detections": float(sum(1 for r in self.results if r["detections"])),
        }
        if self.truth is not None:
            from detector_app.evaluation.metrics import VideoRun, overall

            truth, info = self.truth
            measured.update(overall([VideoRun.build(truth, info, self.results)], self.conf))
        fails = label_failures(self.results, self.labels, self.none) + first_failure(self.expectations, measured)
        return "; ".join(fails) if fails else None
