"""MentraOS cloud simulator with virtual glasses (independent of the miniapp's own client code).

Python API::

    async with CloudSimulator(app_url="http://127.0.0.1:7010", package_name="com.x", api_key="k",
                              video=Path("clip.mp4"), generation="D") as sim:
        await sim.start_session("alice@example.com")
        await sim.wait_for(frame("app->cloud", "rtmp_stream_request"), timeout=10)
        await sim.say("stop stream")

CLI entry: `run_simulate(...)` (blocking, until Ctrl-C) or `simulate(...)` (async).
"""

from .cloud import CloudSimulator
from .events import EventLog, SimEvent, frame
from .glasses import GlassesStreamConfig, VirtualGlassesStream
from .protocol import GENERATIONS, map_glasses_status
from .runner import run_simulate, simulate
from .state import Faults, SimulatorConfig, SimulatorError, StreamState, UserSession

__all__ = [
    "CloudSimulator", "Faults", "SimulatorConfig", "SimulatorError", "StreamState", "UserSession",
    "EventLog", "SimEvent", "frame", "GlassesStreamConfig", "VirtualGlassesStream",
    "GENERATIONS", "map_glasses_status", "run_simulate", "simulate",
]
