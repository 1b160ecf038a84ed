"""The nginx-rtmp ingest: one real nginx, one port, every session's key; real ffmpeg publishers, loopback.

Pure parts (config, hook parsing, mode choice) run everywhere; the rest needs Debian's ``nginx`` +
``libnginx-mod-rtmp`` (scripts/setup.sh installs them) and is skipped with the reason where missing.
The hooks are answered by the miniapp's own HTTP server (``MiniApp``), as in ``serve``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from detector_app.glasses.publish import Publisher
from detector_app.ingest.addresses import free_port
from detector_app.ingest.base import IngestError
from detector_app.ingest.factory import choose_rtmp_ingest
from detector_app.ingest.nginx import NginxConf, count_players, missing_reason, render_conf
from detector_app.ingest.nginx_hooks import parse_hook
from detector_app.ingest.srt import cmdline_private
from detector_app.mentra.app import MiniApp
from detector_app.mentra.config import MentraSettings

from .conftest import until

needs_nginx = pytest.mark.skipif(missing_reason() is not None, reason=f"nginx-rtmp not installed: {missing_reason()}")


# ------------------------------------------------------------------------------------ pure

def test_conf_has_hooks_timeouts_and_loopback_only_players(tmp_path: Path) -> None:
    conf = render_conf(NginxConf(port=19350, bind_host="0.0.0.0", hook_url="http://127.0.0.1:3000/ingest"),
                       tmp_path, tmp_path / "m.so")
    for line in ("listen 0.0.0.0:19350;", "on_publish http://127.0.0.1:3000/ingest/on_publish;",
                 "on_publish_done http://127.0.0.1:3000/ingest/on_publish_done;", "timeout 10s;",
                 "drop_idle_publisher 5s;", "allow play 127.0.0.1;", "deny play all;", f"pid {tmp_path}/nginx.pid;",
                 f"listen unix:{tmp_path}/control.sock;", "daemon off;"):
        assert line in conf, line
    bare = render_conf(NginxConf(port=1), tmp_path, tmp_path / "m.so")
    assert "on_publish" not in bare and "allow publish 127.0.0.1;" in bare and "deny publish all;" in bare


def test_parse_hook_and_mode_choice() -> None:
    call = parse_hook("publish", {"name": "abcdefgh", "app": "live", "addr": "10.0.0.5", "call": "publish"})
    assert call is not None and call.key == "abcdefgh" and call.shown_key() == "abcd…"
    assert parse_hook("publish", {"app": "live"}) is None and parse_hook("record", {"name": "x"}) is None
    assert choose_rtmp_ingest(None, None) == ("nginx", None)
    mode, note = choose_rtmp_ingest(None, "nginx not found")
    assert mode == "embedded" and note and "nginx not found" in note
    assert choose_rtmp_ingest("embedded", None) == ("embedded", None)
    with pytest.raises(IngestError, match="nginx not found"):
        choose_rtmp_ingest("nginx", "nginx not found")
    with pytest.raises(IngestError, match="unknown --ingest"):
        choose_rtmp_ingest("mediamtx", None)


def test_stat_players_and_proc_hidepid() -> None:
    stat = (b"<rtmp><server><application><name>live</name><live>"
            b"<stream><name>k1</name><client><id>1</id><publishing/></client><client><id>2</id></client></stream>"
            b"<stream><name>k2</name></stream></live></application></server></rtmp>")
    assert count_players(stat, "live", "k1") == 1 and count_players(stat, "live", "k2") == 0
    assert count_players(stat, "other", "k1") == 0 and count_players(b"<not xml", "live", "k1") == 0
    assert not cmdline_private("proc /proc proc rw,relatime 0 0\n")
    assert cmdline_private("proc /proc proc rw,nosuid,relatime,hidepid=2 0 0\n")
    assert cmdline_private("proc /proc proc rw,hidepid=invisible 0 0\n")


def test_hooks_are_answered_to_this_machine_only() -> None:
    from types import SimpleNamespace

    from detector_app.mentra.webhook import _same_machine

    def request(peer: str, local: str = "192.168.1.20") -> Any:
        return SimpleNamespace(remote=peer, transport=SimpleNamespace(get_extra_info=lambda _name: (local, 3000)))

    assert _same_machine(request("127.0.0.1")) and _same_machine(request("::1"))
    assert _same_machine(request("192.168.1.20"))  # nginx calling our LAN address from this machine
    assert not _same_machine(request("192.168.1.33")) and not _same_machine(request("not-an-ip"))


# ------------------------------------------------------------------------------------ real nginx

@asynccontextmanager
async def nginx_app(detector: Any) -> AsyncIterator[tuple[MiniApp, Any]]:
    """The miniapp's real HTTP server answering the hooks of a real DetectionService in nginx mode."""
    from detector_app.stream_service import DetectionService, IngestConfig

    service = DetectionService(detector, IngestConfig(bind_host="127.0.0.1", advertise_host="127.0.0.1", mode="nginx"))
    settings = MentraSettings(_env_file=None, api_key="k", port=free_port(), host="127.0.0.1")
    app = MiniApp(settings, service)
    await app.start()
    await app.get_service()  # attaches the hooks, as the first session does
    try:
        yield app, service
    finally:
        await asyncio.wait_for(app.stop(timeout=3), 10)
        await asyncio.wait_for(asyncio.to_thread(service.close), 15)


async def open_stream(service: Any) -> Any:
    return await asyncio.to_thread(service.open_stream, "rtmp")


def publish(video: Path, url: str) -> Publisher:
    return Publisher(video, url, loop=True, retries=0).start()


async def first_frame_after(stream: Any, t0: float, timeout: float) -> float:
    await until(lambda: stream.pipeline.first_frame_wall is not None, timeout, "the first frame")
    return stream.pipeline.first_frame_wall - t0


@pytest.fixture(scope="module")
def cat_video(fixture_videos: dict[str, Path]) -> Path:
    return fixture_videos["cat_480p15"]


@needs_nginx
@pytest.mark.timeout(60)
def test_two_publishers_one_port_both_detected_and_wrong_key_refused(detector, cat_video) -> None:
    async def main() -> None:
        async with nginx_app(detector) as (_app, service):
            a, b = await open_stream(service), await open_stream(service)
            assert a.endpoint.port == b.endpoint.port and a.key != b.key
            pubs = [publish(cat_video, s.endpoint.local_publish_url) for s in (a, b)]
            wrong = publish(cat_video, a.endpoint.local_publish_url.replace(a.key, a.key[:-1] + "X"))
            try:
                for s in (a, b):
                    await until(lambda s=s: s.view.stats.per_label["cat"] >= 3, 25, "cat detections on each stream")
                assert await asyncio.to_thread(wrong.wait, 10), "the wrong-key publisher must be dropped"
                assert wrong.returncode != 0 and wrong.frames_sent < 5
                assert service._nginx.refused >= 1  # noqa: SLF001 - the hook said 403
                assert a.health().publisher_sessions == 1 and b.health().publisher_sessions == 1
            finally:
                for p in (*pubs, wrong):
                    p.stop()

    asyncio.run(main())


@needs_nginx
@pytest.mark.timeout(60)
def test_silent_client_does_not_delay_publisher_and_reconnect_works(detector, cat_video) -> None:
    async def main() -> None:
        async with nginx_app(detector) as (_app, service):
            stream = await open_stream(service)
            with socket.create_connection(("127.0.0.1", stream.endpoint.port)):  # connects, says nothing
                t0 = time.time()
                pub = publish(cat_video, stream.endpoint.local_publish_url)
                try:
                    took = await first_frame_after(stream, t0, 2.0)
                    print(f"nginx ingest: first frame {took:.2f} s after the publisher started (silent client open)")
                    assert took <= 2.0
                    twin = publish(cat_video, stream.endpoint.local_publish_url)  # same key, while one publishes
                    assert await asyncio.to_thread(twin.wait, 10) and twin.returncode != 0
                    frames = stream.health().frames_decoded
                    await until(lambda: stream.health().frames_decoded > frames + 15, 3, "the first publisher going on")
                    assert stream.health().publisher_sessions == 1
                finally:
                    pub.stop()
            await until(lambda: not stream.pipeline.source.publishing.is_set(), 5, "on_publish_done")
            before = stream.view.stats.inferences
            pub = publish(cat_video, stream.endpoint.local_publish_url)  # the glasses come back, same key
            try:
                await until(lambda: stream.health().publisher_sessions == 2, 5, "the second publisher session")
                await until(lambda: stream.view.stats.inferences >= before + 5, 10, "detections after reconnect")
            finally:
                pub.stop()
            stream.close(3)
            late = publish(cat_video, stream.endpoint.local_publish_url)  # the session ended: key refused
            assert await asyncio.to_thread(late.wait, 10) and late.returncode != 0

    asyncio.run(main())


@needs_nginx
@pytest.mark.timeout(90)
def test_nginx_killed_mid_session_is_replaced_and_stream_requested_again(detector, cat_video) -> None:
    """Through the simulator: nginx dies, the session reports it, a new nginx starts on the same port,
    the stream is requested again (new key) and detection resumes."""
    from .test_e2e_glasses import USER, harness, requested_url, stream_active, stream_request

    servers: list[Any] = []

    async def main() -> None:
        async with harness(detector, cat_video, device="mentra_live", ingest_mode="nginx") as h:
            await h.sim.start_session(USER)
            await stream_active(h.sim, 20)
            first = h.stream()
            await until(lambda: first.view.stats.inferences >= 5, 20, "detections on the first nginx")
            server = h.service._nginx.server  # noqa: SLF001
            servers.append(server)
            old_pid, n = server.proc.pid, len(h.sim.events)
            killed = time.monotonic()
            os.kill(old_pid, signal.SIGKILL)
            req = await h.sim.wait_for(stream_request, 20, start=n)
            [second] = await until(lambda: [s for s in h.service.streams() if s is not first], 5, "the new stream")
            assert requested_url(req) == second.publish_url != first.publish_url
            assert server.proc.pid != old_pid and second.endpoint.port == first.endpoint.port
            await until(lambda: second.view.stats.inferences >= 5, 30, "detections on the new nginx")
            print(f"nginx killed → detections again in {time.monotonic() - killed:.1f} s")
            async with aiohttp.ClientSession() as http:  # the hooks answer valid forms only
                async with http.post(f"http://127.0.0.1:{h.port}/ingest/on_publish", data={"app": "live"}) as r:
                    assert r.status == 400

    asyncio.run(main())
    [server] = servers
    assert server.proc.poll() is not None and not server.workdir.exists(), "nginx and its runtime dir outlived serve"


@needs_nginx
@pytest.mark.timeout(60)
def test_nginx_left_by_a_killed_serve_is_stopped_by_the_next_one_a_live_ones_is_not() -> None:
    from detector_app.ingest.nginx_ingest import NginxIngest

    port = free_port(outside_ephemeral=True)
    code = ("import sys,time; from detector_app.ingest.nginx_ingest import NginxIngest; "
            f"i=NginxIngest(port={port}, bind_host='127.0.0.1'); i.start(); print(i.server.proc.pid, flush=True); "
            "time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        orphan = int(child.stdout.readline())  # type: ignore[union-attr]
        probe = subprocess.run([sys.executable, "-c", code.replace("time.sleep(60)", "")], capture_output=True,
                               text=True, timeout=30)
        assert probe.returncode != 0 and "already in use" in probe.stderr  # its owner lives: not touched
        assert Path(f"/proc/{orphan}").exists()
        child.kill()  # serve SIGKILLed: its nginx lives on, holding the port
        child.wait(5)
        assert Path(f"/proc/{orphan}").exists()
        ingest = NginxIngest(port=port, bind_host="127.0.0.1")
        try:
            ingest.start()
            assert ingest.server.proc.pid != orphan and not Path(f"/proc/{orphan}").exists()
        finally:
            ingest.close()
    finally:
        child.kill()
        child.wait(5)
