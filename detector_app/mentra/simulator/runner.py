"""Operator entry point for `detector-app simulate`: run the simulated cloud until Ctrl-C.

Reads simple commands from stdin (when it is a terminal or pipe) so a person can drive the
virtual glasses: `say <text>`, `button [long]`, `stop`, `start`, `drop`, `drop-stream`, `status`, `quit`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from loguru import logger

from .cloud import CloudSimulator
from .events import frame
from .protocol import DeviceName, Generation
from .state import Faults, SimulatorConfig, SimulatorError

HELP = ("commands: say <text> | button [long] | stop | start | drop | drop-stream | status | help | quit"
        "  (add @user as first word to pick a user)")


async def simulate(config: SimulatorConfig, users: Sequence[str] = ("tester@example.com",), *,
                   interactive: bool = True, start_delay_s: float = 0.0,
                   stop_event: asyncio.Event | None = None) -> int:
    """Async body of `run_simulate`; returns when `stop_event` is set, on SIGINT/SIGTERM, or `quit`."""
    stop = stop_event or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with CloudSimulator(config) as sim:
        print(f"[cloud] simulator generation {sim.gen.name}, app-ws {sim.ws_url}, glasses {sim.device.model_name}", flush=True)
        if start_delay_s:
            await asyncio.sleep(start_delay_s)
        for user in users:
            try:
                await sim.start_session(user)
            except (SimulatorError, asyncio.TimeoutError) as exc:
                print(f"[cloud] start for {user} failed: {exc}", flush=True)
        reader: asyncio.Task[None] | None = None
        if interactive and sys.stdin is not None and not sys.stdin.closed:
            print(f"[cloud] {HELP}", flush=True)
            reader = asyncio.create_task(_console(sim, list(users), stop))
        try:
            await stop.wait()
        finally:
            if reader is not None:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
            if config.faults.repeat:
                print(f"[cloud] soak summary: stream drops {sim.stream_drops()}, "
                      f"app socket drops {len(sim.log.find_all(frame('sim', 'drop_app_socket')))}", flush=True)
            print("[cloud] shutting down", flush=True)
    return 0


async def _console(sim: CloudSimulator, users: list[str], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str] = asyncio.Queue()

    def _pump() -> None:  # daemon thread: an executor thread would block asyncio.run's shutdown
        try:
            for raw in sys.stdin:
                loop.call_soon_threadsafe(lines.put_nowait, raw)
            loop.call_soon_threadsafe(lines.put_nowait, "")
        except (RuntimeError, ValueError, OSError):  # loop closed / stdin closed during shutdown
            pass

    threading.Thread(target=_pump, name="sim-stdin", daemon=True).start()
    while not stop.is_set():
        line = await lines.get()
        if line == "":  # EOF: keep running headless until Ctrl-C
            return
        words = line.strip().split()
        if not words:
            continue
        user = users[0] if users else None
        if words[0].startswith("@"):
            user, words = words[0][1:], words[1:]
            if not words:
                continue
        cmd, rest = words[0].lower(), " ".join(words[1:])
        try:
            if cmd == "say" and rest:
                await sim.say(rest, user)
            elif cmd == "button":
                await sim.press_button(user, press_type="long" if rest == "long" else "short")
            elif cmd == "stop":
                await sim.stop_session(user)
            elif cmd == "start":
                await sim.start_session(user or "tester@example.com")
            elif cmd == "drop":
                await sim.drop_app_socket(user)
            elif cmd == "drop-stream":
                sim.drop_stream(user)
            elif cmd == "status":
                for s in sim.sessions.values():
                    st = s.stream
                    print(f"[cloud] {s.user_id}: app={s.app_state} subs={s.subscriptions} "
                          f"stream={(st.stream_id, st.app_status, st.url) if st else None}", flush=True)
            elif cmd in ("quit", "exit"):
                stop.set()
            else:
                print(f"[cloud] {HELP}", flush=True)
        except Exception as exc:  # noqa: BLE001 - operator typo must not kill the simulator
            logger.warning("command {!r} failed: {}", line.strip(), exc)


def run_simulate(
    app_url: str,
    package_name: str,
    api_key: str,
    video: Path | None = None,
    generation: Generation = "D",
    *,
    host: str = "127.0.0.1",
    port: int = 8002,
    users: Sequence[str] = ("tester@example.com",),
    device: DeviceName = "mentra_live",
    grace_s: float = 5.0,
    loop_video: bool = True,
    faults: Faults | None = None,
    interactive: bool = True,
    start_delay_s: float = 0.0,
) -> int:
    """Blocking CLI entry for `detector-app simulate`; returns the process exit code."""
    config = SimulatorConfig(
        app_url=app_url, package_name=package_name, api_key=api_key, video=video, generation=generation,
        device=device, host=host, port=port, grace_s=grace_s, loop_video=loop_video, faults=faults or Faults(),
    )
    if video is not None and not Path(video).is_file():
        print(f"video not found: {video}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(simulate(config, users, interactive=interactive, start_delay_s=start_delay_s))
    except KeyboardInterrupt:
        return 130


def soak_faults(every_s: float, down_s: float, *, socket: bool = False) -> Faults:
    """The repeated real-world fault of a soak run: the glasses stream drops `every_s` seconds after
    each (re)connect and comes back `down_s` later; with `socket`, the app WebSocket is also cut
    (abruptly, the app sees 1006) `every_s` seconds after each ack."""
    if every_s <= 0 or down_s < 0:
        raise ValueError("soak needs --drop-every > 0 and --down-for >= 0")
    return Faults(stream_drop_after_s=every_s, stream_restore_after_s=down_s,
                  drop_ws_after_s=every_s if socket else None, repeat=True)
