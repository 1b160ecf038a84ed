"""``detector-app replay``/``detect``: run the pipeline on a recorded video and summarise the run.

Replay goes through the real ingest: a virtual-glasses publisher (a separate ffmpeg process)
pushes the file in real time to the listener's URL, exactly as Mentra Live would, and the run
ends when the video ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from loguru import logger

from detector_app.detection.detector import Detector
from detector_app.glasses.publish import Publisher
from detector_app.ingest.addresses import listening
from detector_app.ingest.base import VideoSource
from detector_app.ingest.factory import open_listener
from detector_app.main_thread import RunEnd, run_main_loop
from detector_app.pipeline import Pipeline, Sink
from detector_app.stats import percentile


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
        latency_ms={f"p{q}": _r(percentile(st.latencies_ms, q)) for q in (50, 90, 95, 99)},
        inference_ms={f"p{q}": _r(percentile(st.inference_ms, q)) for q in (50, 95)},
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


def wait_listening(port: int, udp: bool, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = listening(port, udp=udp)
        if state is None:  # cannot tell (non-Linux): give the listener a moment
            time.sleep(0.3)
            return
        if state:
            return
        time.sleep(0.02)


def replay(
    video: Path,
    detector: Detector,
    protocol: str = "rtmp",
    fps: float = 10.0,
    sinks: list[Sink] | None = None,
    headless: bool = True,
    port: int = 0,
    bind_host: str = "127.0.0.1",
    on_ready: Callable[[Pipeline, str], None] | None = None,
    frame_probe: Callable | None = None,
) -> RunSummary:
    """Listen, publish ``video`` from a separate process in real time, detect, summarise."""
    endpoint, source = open_listener(protocol, port=port, bind_host=bind_host, advertise="127.0.0.1", for_glasses=False)
    pipeline = Pipeline(
        source, detector, fps=fps, sinks=sinks, source_label=f"{protocol} replay of {video.name}", frame_probe=frame_probe
    )
    pipeline.start()
    t0 = time.time()
    publisher: Publisher | None = None
    errors: list[str] = []
    try:
        wait_listening(endpoint.port, udp=protocol == "srt")
        if on_ready is not None:
            on_ready(pipeline, endpoint.local_publish_url)
        publisher = Publisher(video, endpoint.local_publish_url).start()
        logger.info("virtual glasses publishing {} → {}", video.name, endpoint.redacted().replace(endpoint.advertise_host, "127.0.0.1"))
        t_pub = publisher.started_at

        def finished() -> bool:
            if pipeline.fatal_error is not None:
                return True
            if not publisher.done.is_set():
                return False
            # Publisher done: wait until the listener has seen the session end (bounded).
            return not pipeline.health().connected or time.time() - publisher_done_at() > 3.0

        done_at: list[float] = []

        def publisher_done_at() -> float:
            if not done_at:
                done_at.append(time.time())
            return done_at[0]

        ended = run_main_loop(pipeline, headless, finished, title=f"detector-app replay: {video.name}")
        if publisher.done.is_set() and not publisher.ok:
            tail = publisher.stderr_tail[-1] if publisher.stderr_tail else f"exit code {publisher.returncode}"
            errors.append(f"publisher failed: {tail}")
        ended_by = "video ended" if ended is RunEnd.FINISHED else ended.value
    finally:
        if publisher is not None:
            publisher.stop()
        pipeline.stop()
    if pipeline.fatal_error is not None:
        errors.append(str(pipeline.fatal_error))
    if pipeline.health().frames_decoded == 0:
        errors.append("no video frames were received from the publisher")
    return summarize(
        pipeline, time.time() - t0, ended_by, t_publish=t_pub if publisher else None,
        rejected=source.rejected_publishers, errors=errors,
    )


def detect_source(
    source: VideoSource, detector: Detector, fps: float = 10.0, sinks: list[Sink] | None = None,
    headless: bool = True, live: bool | None = None, frame_probe: Callable | None = None,
) -> RunSummary:
    """Run the pipeline on a file or stream URL until it ends (or Ctrl-C / window closed)."""
    pipeline = Pipeline(source, detector, fps=fps, sinks=sinks, live=live, frame_probe=frame_probe)
    pipeline.start()
    t0 = time.time()
    try:
        ended = run_main_loop(pipeline, headless, lambda: pipeline.done.is_set(), title=f"detector-app: {source.name}")
        ended_by = "source ended" if ended is RunEnd.FINISHED else ended.value
    finally:
        pipeline.stop()
    errors = [str(pipeline.fatal_error)] if pipeline.fatal_error else []
    return summarize(pipeline, time.time() - t0, ended_by, errors=errors)
