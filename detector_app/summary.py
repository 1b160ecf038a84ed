"""The end-of-run summary of one pipeline (``replay``/``detect``): counts, rates and percentiles
from its bounded ``RunStats``, printed as a table or written as JSON."""

from __future__ import annotations

from dataclasses import dataclass, field

from detector_app.pipeline import Pipeline


@dataclass(slots=True)
class RunSummary:
    source: str
    model: str
    frames_decoded: int
    inferences: int
    detections_per_s: float
    frames_with_animals: int
    per_label: dict[str, int]
    latency_ms: dict[str, float | None]
    inference_ms: dict[str, float | None]
    first_frame_s: float | None = None  # publisher start → first decoded frame (replay)
    first_detection_s: float | None = None
    publisher_sessions: int = 0
    rejected_publishers: int = 0
    wall_s: float = 0.0
    ended_by: str = ""
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in self.__slots__}  # type: ignore[attr-defined]

    def to_text(self) -> str:
        def ms(d: dict[str, float | None]) -> str:
            return "  ".join(f"{k} {v:.1f}" if v is not None else f"{k} -" for k, v in d.items())

        labels = ", ".join(f"{k}: {v}" for k, v in sorted(self.per_label.items(), key=lambda kv: -kv[1])) or "none"
        lines = [
            "── run summary " + "─" * 45,
            f"source              {self.source}",
            f"model               {self.model}",
            f"frames decoded      {self.frames_decoded}",
            f"inferences          {self.inferences}  ({self.detections_per_s:.2f}/s)",
            f"frames with animals {self.frames_with_animals}",
            f"detections by label {labels}",
            f"latency ms          {ms(self.latency_ms)}",
            f"inference ms        {ms(self.inference_ms)}",
        ]
        if self.first_frame_s is not None:
            lines.append(f"first frame         {self.first_frame_s:.2f} s after the publisher started")
        if self.first_detection_s is not None:
            lines.append(f"first detection     {self.first_detection_s:.2f} s after the publisher started")
        if self.publisher_sessions:
            lines.append(f"publisher sessions  {self.publisher_sessions} (rejected: {self.rejected_publishers})")
        lines.append(f"wall time           {self.wall_s:.1f} s  ({self.ended_by})")
        for e in self.errors:
            lines.append(f"error               {e}")
        return "\n".join(lines)


def summarize(pipeline: Pipeline, wall_s: float, ended_by: str, t_publish: float | None = None,
              rejected: int = 0, errors: list[str] | None = None) -> RunSummary:
    st = pipeline.stats
    h = pipeline.health()
    first_frame = None
    first_det = None
    if t_publish is not None:
        first_frame = (pipeline.first_frame_wall - t_publish) if pipeline.first_frame_wall else None
        first_det = (st.first_result_at - t_publish) if st.first_result_at else None
    return RunSummary(
        source=pipeline.source_label,
        model=pipeline.detector.description,
        frames_decoded=h.frames_decoded,
        inferences=st.inferences,
        detections_per_s=round(st.rate, 3),
        frames_with_animals=st.frames_with_animals,
        per_label=dict(st.per_label),
        latency_ms={f"p{q}": _r(st.latency.percentile(q)) for q in (50, 90, 95, 99)},
        inference_ms={f"p{q}": _r(st.inference.percentile(q)) for q in (50, 95)},
        first_frame_s=_r(first_frame, 3),
        first_detection_s=_r(first_det, 3),
        publisher_sessions=h.publisher_sessions,
        rejected_publishers=rejected,
        wall_s=round(wall_s, 2),
        ended_by=ended_by,
        errors=list(errors or []),
    )


def _r(v: float | None, nd: int = 2) -> float | None:
    return None if v is None else round(v, nd)
