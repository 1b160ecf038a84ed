"""``detector-app demo``: the whole system offline in one process — no glasses, no cloud, no internet.

    main thread : loads the model, then shows the live video with boxes (OpenCV must run here)
    loop thread : one asyncio loop (``main_thread.run_with_window``, as ``serve``) running the miniapp's
                  webhook server + session runners and the MentraOS cloud simulator, whose virtual
                  glasses publish a video with an ffmpeg *subprocess* (never PyAV in-process:
                  publishing and decoding in one interpreter deadlocks on the GIL)

The simulator prints what the glasses show and say on stdout, so the terminal is the wearer's view.
Shutdown (Ctrl-C, SIGTERM, ``--duration``, window closed) goes the same way as a real ``serve``: the
miniapp sends the stream stop by ``streamId``, then the simulator and the pipeline are closed; every
step is bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from detector_app.detection.detector import FIXTURE_MODEL, PROJECT_ROOT
from detector_app.errors import UserError
from detector_app.ingest.addresses import free_port
from detector_app.main_thread import RunEnd, run_with_window
from detector_app.video.probe import video_size
from detector_app.web.server import WebConfig, WebViewer

if TYPE_CHECKING:
    from detector_app.sightings.recorder import Sightings

DEMO_PACKAGE = "com.example.detector.demo"
DEMO_API_KEY = "demo-api-key-not-secret"  # the simulator checks it; it never leaves this machine
DEMO_USER = "demo@example.com"
DEFAULT_FIXTURE = "cat_480p15"
FIXTURE_DIR = PROJECT_ROOT / "data" / "fixtures"
SIM_CLOSE_S = 5.0
SHUTDOWN_TIMEOUT_S = 20.0  # the miniapp's stop budget, the simulator's close, and margin


class DemoError(UserError):
    """Something the user can fix (missing tool, model, video, flag); one line, exit 2."""


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

async def _miniapp_and_simulator(settings: Any, service: Any, sim_config: Any, interactive: bool,
                                 stop: asyncio.Event) -> int:
    """The miniapp and the simulated cloud on one loop until ``stop`` (or `quit` in the simulator
    console); then the miniapp stops the stream, and the simulator closes. Returns the exit code."""
    from detector_app.mentra.app import MiniApp
    from detector_app.mentra.simulator.runner import simulate

    app = MiniApp(settings, service)
    await app.start()  # PortInUseError is a UserError: one line, exit 2
    sim_stop = asyncio.Event()
    sim_task: asyncio.Task[int] | None = None
    code = 0
    try:
        logger.info("demo: miniapp webhook on http://127.0.0.1:{}/webhook", app.port)
        sim_task = asyncio.create_task(simulate(sim_config, (DEMO_USER,), interactive=interactive, stop_event=sim_stop))
        stop_wait = asyncio.create_task(stop.wait())
        await asyncio.wait({stop_wait, sim_task}, return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        if sim_task.done() and sim_task.exception() is not None:  # `quit` ends it cleanly; an error is 1
            logger.error("demo: simulator failed: {!r}", sim_task.exception())
            code = 1
    finally:
        logger.info("demo: stopping — the miniapp sends the stream stop, then the simulator closes")
        await app.stop()
        sim_stop.set()
        if sim_task is not None:
            try:
                await asyncio.wait_for(sim_task, SIM_CLOSE_S)
            except (asyncio.TimeoutError, Exception) as exc:  # noqa: BLE001 - shutdown is best effort
                logger.warning("demo: simulator shutdown: {!r}", exc)
    return code


# ------------------------------------------------------------------------------------ entry

def run_demo(headless: bool, protocol: str, video: Path | None, model: str | None, duration: float,
             glasses: str, web: WebConfig | None = None, sightings: Sightings | None = None) -> int:
    """Run the offline demo until Ctrl-C / SIGTERM / ``duration`` s after start-up; returns the exit code
    (0 clean, 1 the demo broke); something to fix first raises a ``UserError`` (exit 2). ``web``: also
    serve the live web viewer; ``sightings``: record every tracked animal there (the caller closes it)."""
    if glasses not in ("mentra_live", "even_g1", "even_g1_camera"):
        raise DemoError("--glasses must be mentra_live or even_g1")
    if glasses == "even_g1":
        # Real G1s have no camera: pair the G1 display with a simulated camera so there is a stream.
        logger.info("demo: real Even G1 glasses have no camera; simulating a G1 display with a camera")
        glasses = "even_g1_camera"
    if protocol not in ("rtmp", "srt", "whip"):
        raise DemoError("--protocol must be rtmp, srt or whip")
    _check_tools(protocol)
    video_path = _resolve_video(video)
    model_ref = _resolve_model(model)

    from detector_app.detection.detector import Detector, DetectorConfig
    from detector_app.mentra.config import MentraSettings
    from detector_app.mentra.simulator import SimulatorConfig
    from detector_app.stream_service import DetectionService, IngestConfig

    size = video_size(video_path)
    logger.info("demo: loading model {} …", model_ref)
    detector = Detector(DetectorConfig(model=model_ref, backend="auto"), frame_size=size)  # ModelError: exit 2
    detector.warmup(size or (1280, 720))

    # Everything on loopback: the glasses' ingest URL, the webhook, the simulated cloud.
    service = DetectionService(detector, IngestConfig(bind_host="127.0.0.1", advertise_host="127.0.0.1", port=0))
    service.sightings = sightings
    settings = MentraSettings(
        _env_file=None, package_name=DEMO_PACKAGE, api_key=DEMO_API_KEY, port=free_port(), host="127.0.0.1",
        ws_allowlist=["127.0.0.1", "localhost"], ingest_protocol=protocol,
    )
    sim_config = SimulatorConfig(
        app_url=f"http://127.0.0.1:{settings.port}", package_name=DEMO_PACKAGE, api_key=DEMO_API_KEY,
        video=video_path, generation="D", device=glasses, port=0, loop_video=True,  # type: ignore[arg-type]
    )
    interactive = sys.stdin is not None and sys.stdin.isatty()
    print(f"[demo] virtual {glasses} glasses stream {video_path.name} over {protocol.upper()} to the miniapp; "
          f"{'headless' if headless else 'window shows the detections'}; Ctrl-C stops"
          f"{f' (or after {duration:g} s)' if duration else ''}.", flush=True)
    deadline = time.monotonic() + duration if duration > 0 else None
    viewer: WebViewer | None = None
    try:
        if web is not None:  # a taken port: WebViewerError, exit 2
            viewer = WebViewer(web, service.views, sightings.store if sightings is not None else None).start()
        code, reason = run_with_window(
            lambda stop: _miniapp_and_simulator(settings, service, sim_config, interactive, stop),
            None if headless else service.views, title="detector-app demo",
            until=lambda: deadline is not None and time.monotonic() >= deadline, shutdown_s=SHUTDOWN_TIMEOUT_S,
        )
    finally:
        if viewer is not None:
            viewer.stop()
        service.close()
    why = f"--duration {duration:g} s reached" if reason is RunEnd.FINISHED and deadline is not None else reason.value
    logger.info("demo: stopped ({})", why)
    if code == 0:
        print("[demo] stopped cleanly.", flush=True)
    return code


__all__ = ["DEMO_API_KEY", "DEMO_PACKAGE", "run_demo"]
