"""Many machines, on one machine: two `serve` nodes behind an nginx HTTP load balancer, one inference server.

The shape of docs/deployment.md, with real processes: the simulated cloud sends every webhook to the load
balancer (round robin), each node opens its sessions' WebSockets and ingests its own streams, and both send
inference to one Triton server (`detector-app inference-server`). Then one node is stopped: its sessions end
cleanly (stream stopped, socket closed), the other node's keep detecting.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from detector_app.ingest.addresses import free_port
from detector_app.mentra.simulator import CloudSimulator, SimEvent

from .conftest import MODEL, ROOT, serve_env, wait_healthy

PKG = "com.example.detector.fleet"
KEY = "fleet-test-key-5b1e"
USERS = [f"wearer{i}@example.com" for i in range(4)]
TRITON_VENV = ROOT / ".venv-triton"
LB_CONF = """worker_processes 1;
daemon off;
pid {dir}/lb.pid;
error_log {dir}/lb-error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    upstream miniapp {{
        server 127.0.0.1:{a};
        server 127.0.0.1:{b};
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://miniapp;
            proxy_next_upstream error timeout http_502;
            proxy_connect_timeout 2s;
        }}
    }}
}}
"""


def _need(condition: bool, why: str) -> None:
    if not condition:
        pytest.skip(why)


def _text_wall_with_cat(user: str):
    def pred(e: SimEvent) -> bool:
        return (e.direction == "app->cloud" and e.type == "display_event" and e.user == user
                and "cat" in str(e.get("layout", {}).get("text", "")).lower())
    return pred


async def _start(cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None):
    out = log.open("wb")  # a file, not a pipe: a full pipe would block the child
    try:
        return await asyncio.create_subprocess_exec(*cmd, env=env, cwd=str(cwd or ROOT), stdout=out,
                                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    finally:
        out.close()


async def _stop(proc, timeout: float = 15.0) -> int | None:
    if proc is None or proc.returncode is not None:
        return None if proc is None else proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return await asyncio.wait_for(proc.wait(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        return await asyncio.wait_for(proc.wait(), 5)


async def _inference_url(log: Path, timeout: float = 90.0, proc_box: list | None = None) -> str:
    """Start `detector-app inference-server` and return the URL it prints once Triton is ready."""
    port = free_port(outside_ephemeral=True)
    proc = await _start([sys.executable, "-m", "detector_app.cli", "inference-server", "--model", str(MODEL),
                         "--port", str(port)], log)
    if proc_box is not None:
        proc_box.append(proc)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        m = re.search(r"--inference-url\s+(\S+)", log.read_text(errors="replace"))
        if m:
            return m.group(1)
        if proc.returncode is not None:
            break
        await asyncio.sleep(0.3)
    raise AssertionError(f"inference server did not become ready: {log.read_text(errors='replace')[-2000:]}")


@pytest.mark.slow
def test_two_nodes_behind_a_load_balancer_share_one_inference_server(tmp_path, fixture_videos):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    _need(Path(nginx).exists(), "nginx is not installed (scripts/setup.sh installs it)")
    _need((TRITON_VENV / "bin" / "python").exists(), f"{TRITON_VENV} missing (scripts/setup.sh makes it)")
    video = fixture_videos["cat_480p15"]

    async def main() -> None:
        procs: list = []
        nodes: dict[str, tuple] = {}
        lb = None
        try:
            url = await _inference_url(tmp_path / "triton.log", proc_box=procs)
            assert url.startswith(("http://127.0.0.1:", "grpc://127.0.0.1:")), url
            for name in ("a", "b"):
                port = free_port(outside_ephemeral=True)
                env = serve_env(port, KEY, PKG)  # each node its own nginx-rtmp port
                node_dir = tmp_path / f"node-{name}"
                node_dir.mkdir()
                proc = await _start([sys.executable, "-m", "detector_app.cli", "serve", "--model", str(MODEL),
                                     "--headless", "--feed-port", "0", "--inference-url", url,
                                     "--out", str(node_dir / "results.jsonl")],
                                    node_dir / "serve.log", env=env, cwd=node_dir)
                procs.append(proc)
                nodes[name] = (proc, port, node_dir / "serve.log")
            async with aiohttp.ClientSession() as http:
                for proc, port, _ in nodes.values():
                    await wait_healthy(http, port, 60, alive=lambda p=proc: p.returncode is None, what="serve node")
            lb_port = free_port(outside_ephemeral=True)
            (tmp_path / "lb.conf").write_text(LB_CONF.format(dir=tmp_path, a=nodes["a"][1], b=nodes["b"][1],
                                                             port=lb_port))
            lb = await _start([nginx, "-p", str(tmp_path), "-c", str(tmp_path / "lb.conf"), "-e",
                               str(tmp_path / "lb-error.log")], tmp_path / "lb.out")

            async with CloudSimulator(app_url=f"http://127.0.0.1:{lb_port}", package_name=PKG, api_key=KEY,
                                      video=video, generation="D", device="even_g1_camera", port=0,
                                      printer=lambda _: None) as sim:
                for user in USERS:  # round robin: wearers 0 and 2 on one node, 1 and 3 on the other
                    await sim.start_session(user, timeout=60)
                for user in USERS:
                    await sim.wait_for(_text_wall_with_cat(user), 90)

                # Which node holds which wearer: the ingest port in the URL each stream was requested to.
                owner: dict[str, str] = {}
                for name, (_, _, log) in nodes.items():
                    text = log.read_text(errors="replace")
                    for user in USERS:
                        if user in text:
                            owner.setdefault(user, name)
                assert sorted(owner.values()) == ["a", "a", "b", "b"], owner

                # Stop node a: its wearers' streams are stopped and sockets closed; b's keep detecting.
                n = len(sim.events)
                rc = await _stop(nodes["a"][0], 25)
                assert rc == 0, nodes["a"][2].read_text(errors="replace")[-3000:]
                on_a = [u for u, o in owner.items() if o == "a"]
                on_b = [u for u, o in owner.items() if o == "b"]
                stops = {e.user for e in sim.events[n:] if e.direction == "app->cloud"
                         and e.type in ("rtmp_stream_stop", "stream_stop")}
                assert set(on_a) <= stops, (on_a, stops)
                results_b = nodes["b"][2].parent / "results.jsonl"
                before = len(results_b.read_text().splitlines())
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 20
                while len(results_b.read_text().splitlines()) < before + 10 * len(on_b) and loop.time() < deadline:
                    await asyncio.sleep(0.5)
                assert len(results_b.read_text().splitlines()) >= before + 10 * len(on_b), "node b stopped detecting"
                assert all(sim.stream_state(u) is not None for u in on_b)
                for name in nodes:  # every result of both nodes was inferred by the shared server
                    models = {json.loads(ln)["model"] for ln in (tmp_path / f"node-{name}" / "results.jsonl")
                              .read_text().splitlines() if ln.strip()}
                    assert models and all("(triton" in m for m in models), (name, models)
                b_log = nodes["b"][2].read_text(errors="replace")
                assert "Traceback" not in b_log, b_log[-3000:]
        finally:
            if lb is not None:
                await _stop(lb, 10)
            for proc in reversed(procs):
                await _stop(proc, 20)

    asyncio.run(main())
