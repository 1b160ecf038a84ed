"""Runtime tuning: how many threads each runtime gets, and in what shape, for latency or for throughput.

Measured on a 2-core AVX2 machine (field notes, yolo11n 384×640 OpenVINO): one request on 2 threads is the
fastest single call (INT8 26 ms, 51 CPU-ms), one request per core on 1 thread each is the cheapest per call
(INT8 43 ms, 43 CPU-ms). So a lone stream gets the *latency* shape and several streams the *throughput*
shape: each inference then runs on its own core, in parallel, never queued behind another stream's.
"""

from __future__ import annotations

import enum
import os
import sys

from loguru import logger


class Lane(enum.Enum):
    """The two shapes a compiled model can take."""

    LATENCY = "latency"  # one request, all cores
    THROUGHPUT = "throughput"  # one request per core, one thread each


def cpu_count() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity, unlike ``os.cpu_count``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def lane_threads(lane: Lane, cores: int | None = None) -> tuple[int, int]:
    """``(parallel requests, threads per request)`` for a lane."""
    n = cores or cpu_count()
    return (1, n) if lane is Lane.LATENCY else (n, 1)


def openvino_config(lane: Lane, precision_hint: str | None = None, cores: int | None = None) -> dict[str, str]:
    """OpenVINO CPU plugin properties for a lane (strings: accepted by every OpenVINO release since 2023)."""
    streams, threads = lane_threads(lane, cores)
    cfg = {
        "PERFORMANCE_HINT": "LATENCY" if lane is Lane.LATENCY else "THROUGHPUT",
        "NUM_STREAMS": str(streams),
        "INFERENCE_NUM_THREADS": str(streams * threads),
        # Pinned workers cannot move when the decode thread or another stream takes their core, and the
        # request then spins waiting for them (measured on 2 shared cores: 63.5 vs 57.1 CPU-ms per call).
        "ENABLE_CPU_PINNING": "NO",
    }
    if precision_hint:
        cfg["INFERENCE_PRECISION_HINT"] = precision_hint
    return cfg


def prefer_passive_omp_wait() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` (unless the user chose one) so idle OpenMP threads sleep instead of spinning.

    Why: with a busy neighbour on a 2-core box, 2 spinning torch threads made PyTorch 384×640 calls ~8× slower
    (645 ms vs 85 ms p50). libgomp reads the variable once when torch loads, so call this before importing
    torch/ultralytics; returns whether it can still take effect.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return "torch" not in sys.modules


def configure_torch_threads(n: int | None = None, backend: str = "pytorch") -> None:
    """Give PyTorch all cores (or ``n``) when PyTorch runs the network (only the Ultralytics path imports torch).

    ``import ultralytics`` sets OMP_NUM_THREADS=1 and its first predict calls ``torch.set_num_threads(cpu_count-1)``,
    i.e. 1 thread on a 2-core box: 125 ms vs 77 ms per 384×640 call (field notes). Call this *after* the first
    predict; calling it again is harmless. For other backends torch only does light pre/post-processing, so it
    keeps 1 thread out of the runtime's way unless ``n`` says otherwise.
    """
    import torch

    want = max(1, n if n is not None else (cpu_count() if backend == "pytorch" else 1))
    if torch.get_num_threads() != want:
        logger.debug("torch threads {} -> {} (backend {})", torch.get_num_threads(), want, backend)
        torch.set_num_threads(want)
