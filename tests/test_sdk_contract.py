"""Contract test: the OFFICIAL @mentra/sdk 2.1.29 AppServer completes a whole session against the simulator.

The published SDK is the ground truth for generation B (and must keep working on D), so if the
simulator and the SDK disagree, the simulator is wrong. Flow checked from the simulator's records:
webhook -> init/ack -> subscription -> rtmp_stream_request -> initializing/active (real ffmpeg publisher
into a separate ffmpeg RTMP receiver) -> display_event text wall -> audio -> rtmp_stream_stop -> stopped
-> stop webhook.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from detector_app.ingest.addresses import free_port
from detector_app.mentra.simulator import CloudSimulator, SimEvent, frame

HERE = Path(__file__).parent / "sdk_contract"
PKG = "com.example.sdkcontract"
KEY = "contract-key-0123456789"
USER = "contract-user@example.com"

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None,
                       reason="node/npm not installed: cannot run the official @mentra/sdk"),
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed (virtual glasses publisher)"),
]


@pytest.fixture(scope="module")
def sdk_dir() -> Path:
    if not (HERE / "node_modules" / "@mentra" / "sdk" / "package.json").is_file():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=HERE, check=True, timeout=300,
                       stdout=subprocess.DEVNULL)
    version = json.loads((HERE / "node_modules/@mentra/sdk/package.json").read_text())["version"]
    assert version == "2.1.29", f"pinned SDK expected, found {version}"
    return HERE


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sdkvid") / "out.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=15", "-f", "lavfi",
                    "-i", "sine", "-t", "6", "-c:v", "libx264", "-preset", "ultrafast", "-g", "30", "-c:a", "aac",
                    "-ac", "1", str(out)], check=True, timeout=60)
    return out


def _killpg(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(5)


def _wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not come up")
        time.sleep(0.2)


def _app_frames(events: list[SimEvent]) -> list[str]:
    return [e.type for e in events if e.direction == "app->cloud"]


@pytest.mark.parametrize("generation", ["B", "D"])
def test_official_sdk_full_session(sdk_dir: Path, video: Path, tmp_path: Path, generation: str) -> None:
    rtmp_port, app_port = free_port(), free_port()
    rtmp_url = f"rtmp://127.0.0.1:{rtmp_port}/live/contract"
    # A plain receiver in its own process, restarted if a publisher leaves (never PyAV in this process).
    receiver = subprocess.Popen(
        ["sh", "-c", f"while :; do ffmpeg -v error -listen 1 -i {rtmp_url} -f null -; sleep 0.1; done"],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    node_log = tmp_path / "node.log"
    env = {**os.environ, "PORT": str(app_port), "PACKAGE_NAME": PKG, "MENTRAOS_API_KEY": KEY, "RTMP_URL": rtmp_url,
           "LOG_LEVEL": "debug"}
    with node_log.open("w") as log:
        node = subprocess.Popen(["node", "app.mjs"], cwd=sdk_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{app_port}/health", 30)
        events = asyncio.run(_drive(generation, video, app_port))
    except BaseException:
        print(node_log.read_text()[-6000:])
        raise
    finally:
        _killpg(node)
        _killpg(receiver)

    frames = _app_frames(events)
    print(f"SDK 2.1.29 app->cloud frames on generation {generation}: {frames}")
    for e in events:
        print(str(e)[:300])
    # The SDK's exact app -> cloud sequence (ground truth for generation B).
    # 2.1.29 sends subscription_update twice right after the ack (both empty) and again per handler.
    collapsed = [f for i, f in enumerate(frames) if i == 0 or f != frames[i - 1]]
    assert collapsed == ["tpa_connection_init", "subscription_update", "rtmp_stream_request", "display_event",
                         "audio_play_request", "rtmp_stream_stop"], frames
    init = next(e for e in events if e.type == "tpa_connection_init")
    assert init.data["apiKey"] == KEY and init.data["packageName"] == PKG and init.data["sessionId"] == f"{USER}-{PKG}"
    assert "sdkVersion" not in init.data
    subs = [e.data["subscriptions"] for e in events if e.type == "subscription_update"]
    assert subs[0] == [] and subs[-1] == ["rtmp_stream_status"]
    req = next(e for e in events if e.type == "rtmp_stream_request")
    assert req.data["rtmpUrl"] == rtmp_url and req.data["packageName"] == PKG
    disp = next(e for e in events if e.type == "display_event")
    assert disp.data["layout"] == {"layoutType": "text_wall", "text": "SDK contract: stream active"}
    assert disp.data["view"] == "main" and disp.data["sessionId"] == ""
    stop = next(e for e in events if e.type == "rtmp_stream_stop")
    active = [e for e in events if e.direction == "cloud->app" and e.type == "rtmp_stream_status"]
    assert [e.data["status"] for e in active][:3] == ["initializing", "active", "stopped"]
    assert stop.data["streamId"] == active[0].data["streamId"]
    webhooks = [(e.type, e.data.get("status")) for e in events if e.direction == "webhook" and e.data["phase"] == "response"]
    assert webhooks == [("session_request", 200), ("stop_request", 200)]
    # The SDK answers the session webhook only after the ack (and onSession) completed.
    ack_i = next(i for i, e in enumerate(events) if e.type == "tpa_connection_ack")
    hook_i = next(i for i, e in enumerate(events) if e.direction == "webhook" and e.data["phase"] == "response")
    assert ack_i < hook_i
    # Surprise: on the stop webhook the SDK closes its own socket (onStop -> disconnect) before the cloud's
    # app_stopped + close(1000, "App stopped") can be sent.
    close = next(e for e in events if e.direction == "ws" and e.type == "close")
    assert close.data["code"] in (1000, 1005), close


async def _drive(generation: str, video: Path, app_port: int) -> list[SimEvent]:
    async with CloudSimulator(app_url=f"http://127.0.0.1:{app_port}", package_name=PKG, api_key=KEY, video=video,
                              generation=generation, echo=True) as sim:
        await sim.start_session(USER, timeout=15)
        await sim.wait_for(lambda e: e.direction == "cloud->app" and e.type == "rtmp_stream_status"
                           and e.data["status"] == "active", timeout=30)
        await sim.wait_for(frame("app->cloud", "display_event"), timeout=10)
        await sim.wait_for(frame("app->cloud", "rtmp_stream_stop"), timeout=15)
        await sim.wait_for(lambda e: e.direction == "cloud->app" and e.type == "rtmp_stream_status"
                           and e.data["status"] == "stopped", timeout=10)
        await sim.wait_for(lambda e: e.direction == "webhook" and e.type == "session_request"
                           and e.data["phase"] == "response", timeout=15)
        await sim.stop_session(USER)
        await sim.wait_for(lambda e: e.direction == "ws" and e.type == "close", timeout=10)
        return list(sim.events)
