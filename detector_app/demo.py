"""``detector-app demo``: the whole system offline in one process — no glasses, no cloud, no internet.

    main thread        : loads the model, then shows the live video with boxes (OpenCV must run here)
    "demo-async" thread: one asyncio loop running the miniapp's webhook server + session runners and the
                         MentraOS cloud simulator, whose virtual glasses publish a video with an ffmpeg
                         *subprocess* (never PyAV in-process: publishing and decoding in one interpreter
                         deadlocks on the GIL)

The simulator prints what the glasses show and say on stdout, so the terminal is the wearer's view.
Shutdown (Ctrl-C, SIGTERM, ``--duration``, window closed) goes the same way as a real ``serve``: the
miniapp sends the stream stop by ``streamId``, then the simulator and the pipeline are closed; every
step is bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

from loguru import logger

from detector_app.detection.detector import FIXTURE_MODEL, PROJECT_ROOT
from detector_app.ingest.addresses import free_port
from detector_app.main_thread import follow_streams, install_signal_handlers, join_bounded, restore_signal_handlers
from detector_app.video.probe import video_size

DEMO_PACKAGE = "com.example.detector.demo"
DEMO_API_KEY = "demo-api-key-not-secret"  # the simulator checks it; it never leaves this machine
DEMO_USER = "demo@example.com"
DEFAULT_FIXTURE = "cat_480p15"
FIXTURE_DIR = PROJECT_ROOT / "data" / "fixtures"
SHUTDOWN_TIMEOUT_S = 20.0


class DemoError(RuntimeError):
    """Something the user can fix (missing tool, model, video); reported in one line, exit 2."""


# ------------------------------------------------------------------------------------ preparation

def _check_tools(protocol: str) -> None:
    if shutil.which("ffmpeg") is None:
        raise DemoError("ffmpeg is not installed (the virtual glasses publish with it): apt-get install ffmpeg")
    if protocol == "srt" and shutil.which("srt-live-transmit") is None:
        raise DemoError("--protocol srt needs srt-live-transmit (apt-get install srt-tools); or use --protocol rtmp")


def _resolve_video(video: Path | None) -> Path:
    """The user's video, or the cat fixture (composed into data/fixtures on first use, ~5 s)."""
    if video is not None:
        if not video.is_file():
            raise DemoError(f"video not found: {video}")
        return video
    from detector_app.fixtures.video import ensure_fixtures

    target = FIXTURE_DIR / f"{DEFAULT_FIXTURE}.mp4"
    if not target.exists():
        logger.info("first run: composing the fixture video {} (a few seconds)…", target)
    try:
        return ensure_fixtures(FIXTURE_DIR, (DEFAULT_FIXTURE,), progress=True)[DEFAULT_FIXTURE]
    except RuntimeError as exc:
        raise DemoError(f"cannot create the fixture video: {exc}") from None


def _resolve_model(model: str | None) -> str:
    if model:
        return model
    if not FIXTURE_MODEL.exists():
        raise DemoError(
            f"the bundled test model {FIXTURE_MODEL} is missing: make it with scripts/train_fixture_model.py, "
            "or pass --model yolo11n.pt (downloads where internet exists)"
        )
    logger.warning(
        "Using the bundled TEST model {}: it only knows the fixture imagery (cat, horse, person). "
        "For real animals pass --model yolo11n.pt.", FIXTURE_MODEL.name,
    )
    return str(FIXTURE_MODEL)


# ------------------------------------------------------------------------------------ async side

class _AsyncSide:
    """The miniapp + simulator on one event loop in a background thread."""

    def __init__(self, settings: Any, service: Any, sim_config: Any, interactive: bool) -> None:
        self.settings = settings
        self.service = service
        self.sim_config = sim_config
        self.interactive = interactive
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ready = threading.Event()  # the app and simulator are up and the session was started
        self.finished = threading.Event()
        self.error: str | None = None
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, name="demo-async", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def request_stop(self) -> None:
        loop, stop = self.loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # loop already closed
                pass

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as exc:  # noqa: BLE001 - reported to the main thread, which exits 1
            logger.opt(exception=exc).error("demo: background loop crashed")
            self.error = self.error or f"{type(exc).__name__}: {exc}"
        finally:
            self.ready.set()
            self.finished.set()

    async def _main(self) -> None:
        from detector_app.mentra.app import MiniApp, PortInUseError
        from detector_app.mentra.simulator.runner import simulate

        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = MiniApp(self.settings, self.service)
        try:
            await app.start()
        except PortInUseError as exc:
            self.error = str(exc)
            return
        sim_stop = asyncio.Event()
        sim_task: asyncio.Task[int] | None = None
        try:
            logger.info("demo: miniapp webhook on http://127.0.0.1:{}/webhook", app.port)
            sim_task = asyncio.create_task(simulate(self.sim_config, (DEMO_USER,), interactive=self.interactive,
                                                    stop_event=sim_stop))
            self.ready.set()
            stop_wait = asyncio.create_task(self._stop.wait())
            await asyncio.wait({stop_wait, sim_task}, return_when=asyncio.FIRST_COMPLETED)
            stop_wait.cancel()
            if sim_task.done():  # `quit` typed in the simulator console, or it failed
                self.error = None if sim_task.exception() is None else repr(sim_task.exception())
        finally:
            logger.info("demo: stopping — the miniapp sends the stream stop, then the simulator closes")
            try:
                await asyncio.wait_for(app.stop(timeout=5.0), 10.0)
            except asyncio.TimeoutError:
                logger.warning("demo: miniapp did not stop within 10 s")
            sim_stop.set()
            if sim_task is not None:
                try:
                    await asyncio.wait_for(sim_task, 10.0)
                except (asyncio.TimeoutError, Exception) as exc:  # noqa: BLE001 - shutdown is best effort
                    logger.warning("demo: simulator shutdown: {!r}", exc)


# ------------------------------------------------------------------------------------ entry

def run_demo(headless: bool, protocol: str, video: Path | None, model: str | None, duration: float,
             glasses: str) -> int:
    """Run the offline demo until Ctrl-C / SIGTERM / ``duration`` s after start-up; returns the exit code
    (0 clean, 1 the demo broke, 2 something to fix first)."""
    if glasses not in ("mentra_live", "even_g1", "even_g1_camera"):
        logger.error("--glasses must be mentra_live or even_g1")
        return 2
    if glasses == "even_g1":
        # Real G1s have no camera: pair the G1 display with a simulated camera so there is a stream.
        logger.info("demo: real Even G1 glasses have no camera; simulating a G1 display with a camera")
        glasses = "even_g1_camera"
    if protocol not in ("rtmp", "srt"):
        logger.error("--protocol must be rtmp or srt")
        return 2
    try:
        _check_tools(protocol)
        video_path = _resolve_video(video)
        model_ref = _resolve_model(model)
    except DemoError as exc:
        logger.error(str(exc))
        return 2

    from detector_app.detection.detector import Detector, DetectorConfig, ModelError
    from detector_app.mentra.config import MentraSettings
    from detector_app.mentra.simulator import SimulatorConfig
    from detector_app.stream_service import DetectionService, IngestConfig

    size = video_size(video_path)
    logger.info("demo: loading model {} …", model_ref)
    try:
        detector = Detector(DetectorConfig(model=model_ref, backend="auto"), frame_size=size)
        detector.warmup(size or (1280, 720))
    except ModelError as exc:
        logger.error(str(exc))
        return 2

    # Everything on loopback: the glasses' ingest URL, the webhook, the simulated cloud.
    service = DetectionService(detector, IngestConfig(bind_host="127.0.0.1", advertise_host="127.0.0.1", port=0))
    settings = MentraSettings(
        _env_file=None, package_name=DEMO_PACKAGE, api_key=DEMO_API_KEY, port=free_port(), host="127.0.0.1",
        ws_allowlist=["127.0.0.1", "localhost"], ingest_protocol=protocol,
    )
    sim_config = SimulatorConfig(
        app_url=f"http://127.0.0.1:{settings.port}", package_name=DEMO_PACKAGE, api_key=DEMO_API_KEY,
        video=video_path, generation="D", device=glasses, port=0, loop_video=True,  # type: ignore[arg-type]
    )
    side = _AsyncSide(settings, service, sim_config, interactive=sys.stdin is not None and sys.stdin.isatty())

    stop = threading.Event()
    previous = install_signal_handlers(stop)
    print(f"[demo] virtual {glasses} glasses stream {video_path.name} over {protocol.upper()} to the miniapp; "
          f"{'headless' if headless else 'window shows the detections'}; Ctrl-C stops"
          f"{f' (or after {duration:g} s)' if duration else ''}.", flush=True)
    reason = "?"
    try:
        side.start()
        side.ready.wait(30.0)
        deadline = time.monotonic() + duration if duration > 0 else None

        def should_stop() -> bool:
            return stop.is_set() or side.finished.is_set() or (deadline is not None and time.monotonic() >= deadline)

        reason = follow_streams(lambda: service, headless, should_stop, title="detector-app demo")
        if stop.is_set():
            reason = "signal"
        elif side.finished.is_set():
            reason = "background loop ended"
        elif deadline is not None and time.monotonic() >= deadline:
            reason = f"--duration {duration:g} s reached"
    except KeyboardInterrupt:
        reason = "interrupted"
    finally:
        logger.info("demo: shutting down ({})", reason)
        side.request_stop()
        join_bounded(side.thread, SHUTDOWN_TIMEOUT_S)
        try:
            service.close()
        finally:
            restore_signal_handlers(previous)
    if side.error:
        logger.error("demo failed: {}", side.error)
        return 1
    if side.thread.is_alive():
        logger.error("demo: background loop did not stop within {:.0f} s", SHUTDOWN_TIMEOUT_S)
        return 1
    print("[demo] stopped cleanly.", flush=True)
    return 0


__all__ = ["DEMO_API_KEY", "DEMO_PACKAGE", "run_demo"]
