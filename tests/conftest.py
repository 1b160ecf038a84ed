"""Shared test fixtures: the recorded fixture videos and one loaded fixture detector per session.

Videos are composed once into ``data/fixtures`` (cached between runs, ~4 s each to make). The
detector is the project's own test model (``models/fixture-animals-yolo11n.pt``), loaded and
warmed up once, because loading costs seconds.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

# The replay_recording fixture (detector_app.testing); also registered by the package's pytest11 entry
# point under this same name, so a checkout whose venv predates that entry point still has it.
pytest_plugins = ("detector_app.testing.plugin",)

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_DIR = Path(os.environ.get("DETECTOR_FIXTURE_DIR", ROOT / "data" / "fixtures"))
MODEL = Path(os.environ.get("DETECTOR_TEST_MODEL", ROOT / "models" / "fixture-animals-yolo11n.pt"))


def pytest_configure(config: pytest.Config) -> None:
    from detector_app.detection.tuning import prefer_passive_omp_wait
    from detector_app.logs import setup_logging

    prefer_passive_omp_wait()  # as the CLI does, before torch loads

    setup_logging(os.environ.get("TEST_LOG_LEVEL", "WARNING"))


@pytest.fixture(scope="session", autouse=True)
def _private_data_home(tmp_path_factory: pytest.TempPathFactory):
    """Sightings default to ``$XDG_DATA_HOME/detector-app``: point it at a temporary directory for the whole
    session (children inherit it), so no test (demo, detect, the browser test) writes the user's own data."""
    old = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("xdg-data"))
    yield
    if old is None:
        os.environ.pop("XDG_DATA_HOME", None)
    else:
        os.environ["XDG_DATA_HOME"] = old


@pytest.fixture
def rtmp_receiver():
    """A plain ffmpeg RTMP receiver in its own process, restarted after each publisher (accepts publisher
    after publisher); yields its URL. For tests that need the virtual glasses to really go active
    without running our ingest."""
    import signal
    import subprocess

    from detector_app.ingest.addresses import free_port

    url = f"rtmp://127.0.0.1:{free_port()}/live/k"
    proc = subprocess.Popen(["sh", "-c", f"while :; do ffmpeg -v error -listen 1 -i {url} -f null -; sleep 0.1; done"],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def serve_env(port: int, api_key: str, package: str) -> dict[str, str]:
    """Environment for a real ``detector-app serve`` child on loopback: its webhook port, its own ingest port
    (nginx-rtmp where installed, so several serves can run side by side), loopback-only WebSocket hosts,
    and its sightings (on by default in serve) in a temporary DATA_DIR, not the user's data directory."""
    import tempfile

    from detector_app.ingest.addresses import free_port

    return {**os.environ, "PYTHONPATH": str(ROOT), "MENTRAOS_API_KEY": api_key, "PACKAGE_NAME": package,
            "PORT": str(port), "WEBHOOK_HOST": "127.0.0.1", "INGEST_HOST": "127.0.0.1",
            "MENTRAOS_WS_ALLOWLIST": "127.0.0.1,localhost", "INGEST_PORT": str(free_port(outside_ephemeral=True)),
            "DATA_DIR": tempfile.mkdtemp(prefix="detector-app-data-")}


def in_threads(target: Callable[[], None], n: int, timeout: float = 60.0) -> None:
    """Run ``target`` in ``n`` threads at once (concurrent streams or clients) and wait for all of them;
    the first exception raised in any of them is raised here (a thread's error must fail the test)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    if errors:
        raise errors[0]


class Collect:
    """Sink: every result's JSON, readable while the pipeline runs."""

    def __init__(self) -> None:
        self.results: list[dict] = []
        self.lock = threading.Lock()

    def __call__(self, r) -> None:
        with self.lock:
            self.results.append(r.to_json())

    def count(self, pred=lambda r: True) -> int:
        with self.lock:
            return sum(1 for r in self.results if pred(r))


def wait_for(pred, timeout: float) -> bool:
    """Poll ``pred`` (from a plain thread) until true or ``timeout``; the last answer."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return bool(pred())


def need(tool: str, hint: str) -> None:
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is required for this test: {hint}")


@pytest.fixture(scope="session")
def fixture_videos() -> dict[str, Path]:
    need("ffmpeg", "apt-get install ffmpeg")
    from detector_app.fixtures.video import ensure_fixtures

    return ensure_fixtures(FIXTURE_DIR, progress=False)


@pytest.fixture(scope="session")
def truth_for():
    from detector_app.fixtures.evaluate import load_truth

    def get(video: Path) -> dict:
        return load_truth(video.with_suffix(".json"))

    return get


@pytest.fixture(scope="session")
def detector():
    from detector_app.detection.detector import Detector, DetectorConfig

    if not MODEL.exists():
        pytest.fail(f"test model missing: {MODEL} (scripts/train_fixture_model.py makes it)")
    det = Detector(DetectorConfig(model=str(MODEL), backend="auto"), frame_size=(854, 480), progress=False)
    det.warmup((854, 480))
    return det


async def until(pred, timeout: float = 5.0, what: str = "condition"):
    """Poll ``pred`` on the event loop until it returns something truthy (returned) or time runs out."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


async def wait_healthy(http, port: int, timeout: float, alive=lambda: True, what: str = "server") -> None:
    """Wait until the miniapp on ``port`` answers GET /health; ``alive()`` false fails at once."""
    import asyncio
    import time

    import aiohttp

    deadline = time.monotonic() + timeout
    while True:
        try:
            async with http.get(f"http://127.0.0.1:{port}/health") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        assert alive(), f"{what} exited before it listened"
        assert time.monotonic() < deadline, f"{what} did not listen within {timeout:g} s"
        await asyncio.sleep(0.1)
