"""``detector-app replay``/``detect``: run the pipeline on a recorded video and summarise the run.

Replay goes through the real ingest: a virtual-glasses publisher (a separate ffmpeg process)
pushes the file in real time to the listener's URL, exactly as Mentra Live would, and the run
ends when the video ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from loguru import logger

from detector_app.detection.detector import Detector
from detector_app.glasses.publish import Publisher
from detector_app.ingest.addresses import wait_listening
from detector_app.ingest.base import VideoSource
from detector_app.ingest.factory import open_listener
from detector_app.main_thread import RunEnd, run_main_loop
from detector_app.pipeline import Pipeline, Recorder, Sink
from detector_app.summary import RunSummary, summarize


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
    recorder: Recorder | None = None,
    track: bool = True,
) -> RunSummary:
    """Listen, publish ``video`` from a separate process in real time, detect, summarise."""
    endpoint, source = open_listener(protocol, port=port, bind_host=bind_host, advertise="127.0.0.1", for_glasses=False)
    pipeline = Pipeline(
        source, detector, fps=fps, sinks=sinks, source_label=f"{protocol} replay of {video.name}", frame_probe=frame_probe,
        recorder=recorder, track=track,
    )
    pipeline.start()
    t0 = time.time()
    publisher: Publisher | None = None
    errors: list[str] = []
    done_at: list[float] = []  # when the publisher was seen finished
    fatal_at: list[float] = []  # when the ingest's failure was first seen
    try:
        wait_listening(endpoint.port, udp=protocol == "srt")
        if on_ready is not None:
            on_ready(pipeline, endpoint.local_publish_url)
        publisher = Publisher(video, endpoint.local_publish_url).start()
        logger.info("virtual glasses publishing {} → {}", video.name, endpoint.redacted().replace(endpoint.advertise_host, "127.0.0.1"))
        t_pub = publisher.started_at

        def finished() -> bool:
            if publisher.done.is_set():
                publisher_done_at()
            if pipeline.fatal_error is not None:
                if not fatal_at:
                    fatal_at.append(time.time())
                return True
            if not publisher.done.is_set():
                return False
            # Publisher done: wait until the listener has seen the session end (bounded).
            return not pipeline.health().connected or time.time() - publisher_done_at() > 3.0

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
        if done_at and fatal_at and fatal_at[0] >= done_at[0] and publisher is not None and publisher.ok:
            # The ingest failed after the publisher had finished: the recording was received and detected;
            # what broke afterwards (e.g. the SRT relay exiting once its caller left) is not this run's result.
            logger.warning("ingest failed after the publisher finished (not counted as a run error): {}",
                           pipeline.fatal_error)
        else:
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
    on_start: Callable[[Pipeline], None] | None = None,
    recorder: Recorder | None = None,
    track: bool = True,
) -> RunSummary:
    """Run the pipeline on a file or stream URL until it ends (or Ctrl-C / window closed);
    ``on_start(pipeline)`` once it runs (the web viewer shows it)."""
    pipeline = Pipeline(source, detector, fps=fps, sinks=sinks, live=live, frame_probe=frame_probe, recorder=recorder,
                        track=track)
    pipeline.start()
    if on_start is not None:
        on_start(pipeline)
    t0 = time.time()
    try:
        ended = run_main_loop(pipeline, headless, lambda: pipeline.done.is_set(), title=f"detector-app: {source.name}")
        ended_by = "source ended" if ended is RunEnd.FINISHED else ended.value
    finally:
        pipeline.stop()
    errors = [str(pipeline.fatal_error)] if pipeline.fatal_error else []
    return summarize(pipeline, time.time() - t0, ended_by, errors=errors)
