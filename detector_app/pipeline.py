"""The detection pipeline: two threads and one slot.

    source ──▶ [decode thread] ──▶ LatestSlot ──▶ [inference thread: sampler → YOLO → filter] ──▶ sinks
                                       └──▶ display (main thread peeks the newest frame)

Live sources are sampled on the wall clock and the slot never queues, so inference being slow can
only lower the detection rate, never grow the frame age. Files (``live=False``) are sampled on
their pts and the slot blocks, so the same file always gives the same results.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

import av
import numpy as np
from loguru import logger

from detector_app.detection.detector import Detector
from detector_app.detection.triton import InferenceUnavailable
from detector_app.detection.types import FrameResult
from detector_app.ingest.base import VideoSource
from detector_app.procs import name_os_thread
from detector_app.stats import RunStats
from detector_app.tracking.tracker import Tracker, TrackerConfig
from detector_app.video.convert import to_bgr
from detector_app.video.decoder import DecodedFrame, DecodeThread, PacketTap
from detector_app.video.health import HealthMeter, StreamHealth
from detector_app.video.sampler import PtsSampler, Sampler
from detector_app.video.slot import LatestSlot

Sink = Callable[[FrameResult], None]


class Recorder(Protocol):
    """Records a stream beside detection (``sightings.recorder.SightingRecorder``): the decode thread feeds
    ``packet_tap``, the inference thread ``on_frame`` (tracked result + its BGR frame, never to be drawn on),
    and ``close`` runs once both threads stopped."""

    packet_tap: PacketTap | None

    def on_frame(self, result: FrameResult, bgr: np.ndarray) -> None: ...

    def close(self, timeout: float) -> None: ...
FRESH_FRAME_WAIT_S = 0.07  # about one frame interval of a 15 fps stream (Mentra Live's default)
RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0)  # remote inference down: retry after these, then every 4 s


class Pipeline:
    def __init__(
        self,
        source: VideoSource,
        detector: Detector,
        fps: float = 10.0,
        sinks: list[Sink] | None = None,
        live: bool | None = None,
        source_label: str = "",
        frame_probe: Callable[[np.ndarray], dict] | None = None,
        track: bool = True,
        recorder: Recorder | None = None,
    ) -> None:
        self.source = source
        # One tracker per pipeline = per stream; it resets itself on a new publisher session.
        floor = getattr(getattr(detector, "cfg", None), "conf", None)  # boxes under it never reach us
        self.tracker: Tracker | None = Tracker(fps, TrackerConfig.for_floor(floor)) if track else None
        self.recorder = recorder if track else None  # sightings are tracks: nothing to record untracked
        self.frame_probe = frame_probe  # e.g. read the fixture's frame counter into result.extra
        self.detector = detector
        self.fps = fps
        self.live = source.live if live is None else live
        self.sinks: list[Sink] = list(sinks or [])
        self.source_label = source_label or source.name
        self.stop_event = threading.Event()
        self.slot: LatestSlot[DecodedFrame] = LatestSlot(blocking=not self.live)
        self.health_meter = HealthMeter()
        self.health_meter.skipped_source = self._skipped
        self.stats = RunStats()
        self.latest_result: FrameResult | None = None
        self.error: BaseException | None = None
        self._sampled = 0
        self._seq = 0
        self._decoder = DecodeThread(
            source, self.slot, self.health_meter, self.stop_event, None if self.live else PtsSampler(fps),
            packet_tap=self.recorder.packet_tap if self.recorder is not None else None,
        )
        self._worker = threading.Thread(target=self._infer_loop, name="inference", daemon=True)
        self._sinks_lock = threading.Lock()
        self.done = threading.Event()
        self.inference_paused: str | None = None  # why remote inference is down (Triton unreachable), else None
        self._inference_failures = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> Pipeline:
        self._decoder.start()
        self._worker.start()
        return self

    def add_sink(self, sink: Sink) -> None:
        with self._sinks_lock:
            self.sinks.append(sink)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop both threads and release the source, all within ``timeout``; safe to call twice."""
        deadline = time.monotonic() + timeout
        self.stop_event.set()
        self.slot.close()
        self.source.close()  # bounded by the source (a relay is killed within 1.5 s)
        for t in (self._worker, self._decoder):
            if t.is_alive() and t is not threading.current_thread():
                t.join(max(0.05, deadline - time.monotonic()))
                if t.is_alive():
                    logger.warning("thread {} did not stop within {:.1f} s", t.name, timeout)
        if self.recorder is not None:  # open sightings close at their last frame; clips from what was received
            self.recorder.close(max(0.5, deadline - time.monotonic()))

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the source is exhausted (files) and the last frame is processed."""
        return self.done.wait(timeout)

    @property
    def decoder_finished(self) -> bool:
        return self._decoder.finished.is_set()

    @property
    def fatal_error(self) -> BaseException | None:
        return self._decoder.fatal or self.error

    @property
    def failure(self) -> str | None:
        """Why this pipeline can no longer detect anything (source dead, a thread crashed), or None."""
        err = self.fatal_error
        return str(err) if err is not None else self.source.failure

    @property
    def first_frame_wall(self) -> float | None:
        return self.health_meter.first_frame_wall

    def health(self) -> StreamHealth:
        return self.health_meter.snapshot()

    def latest_frame(self) -> tuple[int, av.VideoFrame | None]:
        """(version, newest decoded frame) for a display; the version changes with every new frame."""
        got = self.slot.peek()
        return (0, None) if got is None else (got.version, got.item.frame)

    @property
    def rejected_publishers(self) -> int:
        return self.source.rejected_publishers

    @property
    def model_description(self) -> str:
        return self.detector.description

    def _skipped(self) -> int:
        return max(0, self.health_meter.decoded - self._sampled)

    # -- inference thread --------------------------------------------------------------------
    def _infer_loop(self) -> None:
        name_os_thread("inference")
        sampler = Sampler(self.fps)
        last_version = 0
        rested = False
        try:
            while not self.stop_event.is_set():
                got = None
                if self.live:
                    wait = sampler.wait_time(time.monotonic())
                    if wait > 0:
                        self.stop_event.wait(wait)
                        rested = True
                        continue
                    if rested:
                        # On schedule: take the first frame that arrives from now on rather than one that has
                        # waited up to a frame interval in the slot (the 10 Hz ticks then lock to arrivals).
                        # Behind schedule (inference slower than the rate), never wait: take the newest.
                        got = self.slot.take_newer(max(last_version, self.slot.version), timeout=FRESH_FRAME_WAIT_S)
                    rested = False
                if got is None:
                    got = self.slot.take_newer(last_version, timeout=0.25)
                if got is None:
                    if self.slot.closed and self.slot.version <= last_version:
                        break
                    continue
                last_version = got.version
                if self.live:
                    sampler.take(time.monotonic())
                try:
                    self._process(got.item)
                except InferenceUnavailable as exc:  # the stream goes on; detection pauses and retries
                    self._inference_down(exc)
        except BaseException as exc:  # report, never die silently
            self.error = exc
            logger.exception("inference thread failed: {}", exc)
        finally:
            self.done.set()

    def _inference_down(self, exc: InferenceUnavailable) -> None:
        """Remote inference failed: say so once, wait (bounded backoff), and let the next frame try again."""
        if self.inference_paused is None:
            logger.warning("detection paused, inference unavailable: {} (retrying)", exc)
        self.inference_paused = str(exc)
        delay = RETRY_DELAYS_S[min(self._inference_failures, len(RETRY_DELAYS_S) - 1)]
        self._inference_failures += 1
        self.stop_event.wait(delay)

    def _process(self, item: DecodedFrame) -> None:
        self._sampled += 1
        bgr = to_bgr(item.frame)
        detections, n_all, inf_ms = self.detector.detect(bgr)
        if self.tracker is not None:
            ts = item.pts if item.pts is not None else item.received_at
            detections = self.tracker.update(detections, ts, session=item.session)
        self._seq += 1
        result = FrameResult(
            seq=self._seq,
            frame_index=item.index,
            pts=item.pts,
            stream_pts=item.stream_pts,
            width=item.frame.width,
            height=item.frame.height,
            received_at=item.received_at,
            done_at=time.time(),
            inference_ms=inf_ms,
            detections=tuple(detections),
            all_detections=n_all,
            model=self.detector.description,
            source=self.source_label,
            extra={"session": item.session, **(self.frame_probe(bgr) if self.frame_probe else {})},
        )
        if self.inference_paused is not None:
            logger.info("detection resumed after {} failed inference(s)", self._inference_failures)
            self.inference_paused, self._inference_failures = None, 0
        self.latest_result = result
        self.stats.add(result)
        with self._sinks_lock:
            sinks = list(self.sinks)
        for sink in sinks:
            try:
                sink(result)
            except Exception as exc:  # noqa: BLE001 - one broken output must not stop detection
                logger.warning("output {} failed: {}", getattr(sink, "__name__", sink), exc)
        if self.recorder is not None:
            try:
                self.recorder.on_frame(result, bgr)
            except Exception as exc:  # noqa: BLE001 - recording must not stop detection either
                logger.warning("sightings recorder failed: {}", exc)
