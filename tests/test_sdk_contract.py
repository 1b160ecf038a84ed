"""Contract tests: every `@mentra/sdk` line the npm registry serves completes a whole session against the simulator.

The official SDKs are the ground truth for the simulator's generations (B: the 2.1.x-era cloud, D: the
newest cloud as a v2 SDK meets it, V3: that cloud as the 3.x SDKs meet it, docs/mentraos-3x.md): if the
simulator and an SDK disagree, the simulator is wrong. Per line, one pinned npm install under
`tests/sdk_contract/sdk-<version>/` (CI: `.ci/run`), one shared app per API style in `tests/sdk_contract/apps/`:
- 2.1.29, 2.1.31-beta.5: `AppServer` under Node; 3.0.0-hono.8: the same app under Bun (3.x imports
  `hono/bun`; Bun itself comes from npm, `tests/sdk_contract/bun/`);
- 3.0.0-alpha.4: the new `MiniAppServer` API under Bun (header identity, `stream_request` before the ack,
  audio output streams, managed streams).
Flow checked from the simulator's records: webhook -> init/ack -> stream request -> initializing/active
(a real ffmpeg publisher into a separate ffmpeg receiver) -> text wall -> speech -> stream stop -> stopped ->
stop webhook.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from detector_app.ingest.addresses import free_port
from detector_app.mentra.simulator import CloudSimulator, SimEvent
from detector_app.mentra.simulator.managed_media import ManagedMedia, ManagedUrls

HERE = Path(__file__).parent / "sdk_contract"
BUN = HERE / "bun" / "node_modules" / ".bin" / "bun"
PKG = "com.example.sdkcontract"
KEY = "contract-key-0123456789"
USER = "contract-user@example.com"

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None,
                       reason="node/npm not installed: cannot run the official @mentra/sdk"),
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed (virtual glasses publisher)"),
]


@dataclass(frozen=True)
class SdkLine:
    version: str
    runtime: str  # "node" | "bun"
    app: str  # file in tests/sdk_contract/apps

    @property
    def dir(self) -> Path:
        return HERE / f"sdk-{self.version}"


LINES = {
    "2.1.29": SdkLine("2.1.29", "node", "v2.mjs"),
    "2.1.31-beta.5": SdkLine("2.1.31-beta.5", "node", "v2.mjs"),
    "3.0.0-hono.8": SdkLine("3.0.0-hono.8", "bun", "v2.mjs"),
    "3.0.0-alpha.4": SdkLine("3.0.0-alpha.4", "bun", "miniapp.mjs"),
}


def _npm_ci(where: Path) -> None:
    """The pinned install (CI makes it in `.ci/run`); one that cannot be made here skips with npm's reason."""
    if (where / "node_modules").is_dir():
        return
    done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=where, timeout=300, capture_output=True, text=True)
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"cannot install {where.relative_to(HERE)} from the npm registry here (npm ci: {why})")


def _installed(line: SdkLine) -> SdkLine:
    """The line's pinned install (made once, `npm ci`, if CI did not), checked to be the exact version."""
    _npm_ci(line.dir)
    version = json.loads((line.dir / "node_modules/@mentra/sdk/package.json").read_text())["version"]
    assert version == line.version, f"pinned SDK {line.version} expected, found {version}"
    if line.runtime == "bun":
        _npm_ci(HERE / "bun")
        if not BUN.is_file() or subprocess.run([str(BUN), "--version"], capture_output=True).returncode != 0:
            pytest.skip(f"@mentra/sdk {line.version} needs Bun (it imports hono/bun at load time); "
                        f"the npm package `bun` did not install a working binary at {BUN}")
    return line


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


def _wait_http(url: str, timeout: float, proc: subprocess.Popen[Any]) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status < 500:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"the SDK app exited with code {proc.returncode} before listening")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not come up")
        time.sleep(0.2)


def _receiver(transport: str) -> tuple[str, subprocess.Popen[bytes]]:
    """A plain ffmpeg receiver in its own process (never PyAV in this one), restarted if a publisher leaves."""
    port = free_port()
    if transport == "srt":
        url, listen = f"srt://127.0.0.1:{port}", f"srt://127.0.0.1:{port}?mode=listener"
    else:
        url = listen = f"rtmp://127.0.0.1:{port}/live/contract"
    cmd = f"while :; do ffmpeg -v error {'-listen 1 ' if transport == 'rtmp' else ''}-i '{listen}' -f null -; sleep 0.1; done"
    return url, subprocess.Popen(["sh", "-c", cmd], start_new_session=True, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)


def _app_frames(events: list[SimEvent]) -> list[str]:
    frames = [e.type for e in events if e.direction == "app->cloud" and e.type not in ("ping", "subscription_update")]
    return [f for i, f in enumerate(frames) if i == 0 or f != frames[i - 1]]


class RecordingRelay(ManagedMedia):
    """The simulator's real managed-stream media (WHEP, HLS and DASH of the glasses' video), recording
    which streams it was asked to start and stop."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list[str] = []
        self.stopped: list[str] = []

    async def start(self, stream_id: str, video: Path | None) -> ManagedUrls:
        self.started.append(stream_id)
        return await super().start(stream_id, video)

    async def stop(self, stream_id: str) -> None:
        self.stopped.append(stream_id)
        await super().stop(stream_id)


# (line, generation, transport): every line on the generations it is meant for; SRT where the cloud allows it
# (2.x and hono.8 put an srt:// URL in rtmpUrl: B refuses it, D copies it into streamUrl and sends it on).
CASES = [
    ("2.1.29", "B", "rtmp"), ("2.1.29", "D", "rtmp"), ("2.1.29", "D", "srt"),
    ("2.1.31-beta.5", "B", "rtmp"), ("2.1.31-beta.5", "D", "rtmp"),
    ("3.0.0-hono.8", "D", "rtmp"), ("3.0.0-hono.8", "V3", "srt"),
    ("3.0.0-alpha.4", "V3", "rtmp"), ("3.0.0-alpha.4", "V3", "srt"), ("3.0.0-alpha.4", "V3", "managed"),
]


@pytest.mark.parametrize(("version", "generation", "transport"), CASES,
                         ids=[f"{v}-{g}-{t}" for v, g, t in CASES])
def test_official_sdk_full_session(video: Path, tmp_path: Path, version: str, generation: str, transport: str) -> None:
    line = _installed(LINES[version])
    app_port = free_port()
    receiver = None
    if transport == "managed":
        stream_url = "managed"
    else:
        stream_url, receiver = _receiver(transport)
    log_path = tmp_path / "app.log"
    env = {**os.environ, "PORT": str(app_port), "PACKAGE_NAME": PKG, "MENTRAOS_API_KEY": KEY, "STREAM_URL": stream_url,
           "SDK_DIR": str(line.dir), "LOG_LEVEL": "debug"}
    runtime = [str(BUN), "run"] if line.runtime == "bun" else ["node"]
    relay = RecordingRelay()
    with log_path.open("w") as log:
        app = subprocess.Popen([*runtime, str(HERE / "apps" / line.app)], cwd=line.dir, env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{app_port}/health", 30, app)
        events = asyncio.run(_drive(generation, video, app_port, relay, managed=transport == "managed"))
    except BaseException:
        print(log_path.read_text()[-8000:])
        raise
    finally:
        _killpg(app)
        if receiver is not None:
            _killpg(receiver)
        asyncio.run(relay.close())
    app_log = log_path.read_text()
    frames = _app_frames(events)
    print(f"SDK {version} app->cloud frames on generation {generation} ({transport}): {frames}")
    for e in events:
        print(str(e)[:300])
    _check(version, generation, transport, events, frames, app_log, stream_url, relay)


def _check(version: str, generation: str, transport: str, events: list[SimEvent], frames: list[str], app_log: str,
           stream_url: str, relay: RecordingRelay) -> None:
    init = next(e for e in events if e.type == "tpa_connection_init")
    assert init.data["apiKey"] == KEY and init.data["packageName"] == PKG
    webhooks = [(e.type, e.data.get("status")) for e in events if e.direction == "webhook" and e.data["phase"] == "response"]
    assert webhooks == [("session_request", 200), ("stop_request", 200)]
    disp = next(e for e in events if e.type == "display_event")
    assert disp.data["layout"] == {"layoutType": "text_wall", "text": "SDK contract: stream active"}
    assert next(e for e in events if e.type == "audio_play_response").data["success"] is True
    assert not [e for e in events if e.type == "tpa_connection_error"], "the simulator refused something"

    if version.startswith("2.") or version == "3.0.0-hono.8":
        # 2.x and hono.8 speak the v2 protocol: legacy sessionId, rtmp_stream_request/stop.
        assert frames == ["tpa_connection_init", "rtmp_stream_request", "display_event", "audio_play_request",
                          "rtmp_stream_stop"], frames
        assert init.data["sessionId"] == f"{USER}-{PKG}"
        assert "sdkVersion" not in init.data  # hono.8 too: the cloud treats it as a v2 SDK
        req = next(e for e in events if e.type == "rtmp_stream_request")
        assert req.data["rtmpUrl"] == stream_url and req.data["packageName"] == PKG
        stop_type, status_type = "rtmp_stream_stop", "rtmp_stream_status"
    elif transport == "managed":
        assert frames == ["tpa_connection_init", "managed_stream_request", "display_event", "audio_play_request",
                          "audio_stream_start", "audio_play_request", "audio_stream_end", "managed_stream_stop"], frames
        statuses = [e.data["status"] for e in events if e.direction == "cloud->app" and e.type == "managed_stream_status"]
        assert statuses == ["initializing", "active", "stopped"]
        active = next(e for e in events if e.type == "managed_stream_status" and e.data["status"] == "active")
        assert relay.started == relay.stopped == [active.data["streamId"]]
        assert "CONTRACT managed_active" in app_log and active.data["hlsUrl"] in app_log  # the SDK resolved with them
        assert active.data["dashUrl"].endswith(f"/dash/{active.data['streamId']}/manifest.mpd")
        _check_v3_identity(init, events)
        return
    else:
        assert frames == ["tpa_connection_init", "stream_request", "display_event", "audio_play_request",
                          "audio_stream_start", "audio_play_request", "audio_stream_end", "stream_stop"], frames
        _check_v3_identity(init, events)
        req = next(e for e in events if e.type == "stream_request")
        assert req.data["streamUrl"] == stream_url
        stop_type, status_type = "stream_stop", "stream_status"
    statuses = [e for e in events if e.direction == "cloud->app" and e.type == status_type]
    assert [e.data["status"] for e in statuses][:3] == ["initializing", "active", "stopped"]
    if generation != "B":
        active = next(e for e in statuses if e.data["status"] == "active")
        assert active.data["resolvedConfig"]["transport"] == transport
    stop = next(e for e in events if e.type == stop_type)
    assert stop.data["streamId"] == statuses[0].data["streamId"]
    # The SDK answers the session webhook only after the ack (2.x: and onSession) completed.
    ack_i = next(i for i, e in enumerate(events) if e.type == "tpa_connection_ack")
    hook_i = next(i for i, e in enumerate(events) if e.direction == "webhook" and e.data["phase"] == "response")
    assert ack_i < hook_i


def _check_v3_identity(init: SimEvent, events: list[SimEvent]) -> None:
    """alpha.4's MiniAppServer names the session by upgrade headers, not by the init; its first request
    comes before the ack (the simulator answers it after the ack, in arrival order)."""
    assert "sessionId" not in init.data and init.data["sdkVersion"].startswith("3.")
    opened = next(e for e in events if e.direction == "ws" and e.type == "open")
    assert opened.data["path"] == "/ws/miniapp"
    assert next(e for e in events if e.type == "audio_stream_ended").data["bytes"] > 0


async def _drive(generation: str, video: Path, app_port: int, relay: RecordingRelay, *, managed: bool) -> list[SimEvent]:
    async with CloudSimulator(app_url=f"http://127.0.0.1:{app_port}", package_name=PKG, api_key=KEY, video=video,
                              generation=generation, echo=True, managed_media=relay) as sim:
        await sim.start_session(USER, timeout=15)
        stop_types = ("rtmp_stream_stop", "stream_stop", "managed_stream_stop")
        await sim.wait_for(lambda e: e.direction == "app->cloud" and e.type in stop_types, timeout=40)
        await sim.wait_for(lambda e: e.direction == "cloud->app" and e.type in ("rtmp_stream_status", "stream_status",
                                                                                  "managed_stream_status")
                           and e.data["status"] == "stopped", timeout=10)
        await sim.wait_for(lambda e: e.direction == "webhook" and e.type == "session_request"
                           and e.data["phase"] == "response", timeout=15)
        await sim.stop_session(USER)
        await sim.wait_for(lambda e: e.direction == "ws" and e.type == "close", timeout=10)
        return list(sim.events)


def test_alpha4_miniappserver_is_refused_by_generation_d(tmp_path: Path) -> None:
    """Generation D is the newest cloud as a 2.x SDK meets it (identity from the init's sessionId only), so
    alpha.4's MiniAppServer — init without sessionId, identity in headers — is refused at its first frame
    with SESSION_NOT_FOUND and 1008, as issue 8 found; V3 above is the generation that accepts it. The SDK
    counts that 1008 as retryable (unlike 2.x) and tries again."""
    line = _installed(LINES["3.0.0-alpha.4"])
    app_port = free_port()
    env = {**os.environ, "PORT": str(app_port), "PACKAGE_NAME": PKG, "MENTRAOS_API_KEY": KEY,
           "STREAM_URL": "rtmp://127.0.0.1:9/live/none", "SDK_DIR": str(line.dir)}
    log_path = tmp_path / "app.log"
    with log_path.open("w") as log:
        app = subprocess.Popen([str(BUN), "run", str(HERE / "apps" / line.app)], cwd=line.dir, env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)

    async def drive() -> list[SimEvent]:
        async with CloudSimulator(app_url=f"http://127.0.0.1:{app_port}", package_name=PKG, api_key=KEY,
                                  generation="D", echo=False) as sim:
            await sim.start_session(USER, wait=False)
            await sim.wait_for(lambda e: e.type == "tpa_connection_error", timeout=15)
            await sim.wait_for(lambda e: e.direction == "ws" and e.type == "open", timeout=10,
                               start=len(sim.events))  # the retry
            return list(sim.events)

    try:
        _wait_http(f"http://127.0.0.1:{app_port}/health", 30, app)
        events = asyncio.run(drive())
    except BaseException:
        print(log_path.read_text()[-6000:])
        raise
    finally:
        _killpg(app)
    err = next(e for e in events if e.type == "tpa_connection_error")
    assert err.data["code"] == "SESSION_NOT_FOUND"
    assert next(e for e in events if e.direction == "sim" and e.type == "close_sent").data["code"] == 1008
    assert not [e for e in events if e.type == "tpa_connection_ack"]
