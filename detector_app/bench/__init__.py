"""``detector-app bench``: real-time benchmark of the whole pipeline against Ultralytics' own streaming.

A recorded 1280×720 30 fps video (the ``bench_720p30`` fixture, whose frames carry a frame-counter
barcode) is published in real time through the real ingest (RTMP, or SRT with ``--protocol srt``);
the same video is then pulled by ``YOLO(model).predict(source="rtmp://…", stream=True)`` through an
nginx-rtmp server. One table compares them; ``bench.json`` and ``latency.png`` keep the details.

Modules: ``publisher`` (timed publisher process), ``worker`` (one measured side per process),
``nginx`` (temp RTMP server for the baseline), ``runner`` (orchestration), ``report`` (metrics, table, plot).
"""

from __future__ import annotations

import time
from pathlib import Path

from detector_app.bench.runner import BenchConfig, BenchError, run_bench

__all__ = ["BenchConfig", "BenchError", "bench_main", "default_model", "default_video", "run_bench"]

BENCH_FIXTURE = "bench_720p30"


def default_video(fixtures_dir: Path | None = None) -> Path:
    """The benchmark fixture video, rendered on first use (~1 min; needs scikit-image and ffmpeg)."""
    from detector_app.detection.detector import PROJECT_ROOT
    from detector_app.fixtures.video import ensure_fixtures

    out = fixtures_dir or PROJECT_ROOT / "data" / "fixtures"
    return ensure_fixtures(out, (BENCH_FIXTURE,), progress=True)[BENCH_FIXTURE]


def default_model() -> str:
    from detector_app.detection.detector import FIXTURE_MODEL

    return str(FIXTURE_MODEL)


def bench_main(
    *, duration: float = 60.0, protocol: str = "rtmp", model: str | None = None, video: Path | None = None,
    backend: str = "auto", conf: float = 0.35, imgsz: int | None = None, fps: float = 10.0,
    out_dir: Path | None = None, baseline: bool = True, log_level: str = "INFO", as_json: bool = False,
) -> int:
    """Run the benchmark and print ONE table (or the JSON summary); 0 = all targets met, 1 = a target missed,
    2 = the benchmark could not run."""
    import json

    from loguru import logger

    try:
        cfg = BenchConfig(
            video=Path(video) if video else default_video(), model=model or default_model(), duration=duration,
            protocol=protocol, backend=backend, conf=conf, imgsz=imgsz, fps=fps,
            out_dir=Path(out_dir) if out_dir else Path("bench-results") / time.strftime("%Y%m%d-%H%M%S"),
            baseline=baseline, log_level=log_level,
        )
        summary = run_bench(cfg)
    except (BenchError, RuntimeError, OSError) as exc:
        logger.error("benchmark failed: {}", exc)
        return 2
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        c = summary["config"]
        print(f"\nbench: {c['protocol'].upper()} {c['video_size'][0]}x{c['video_size'][1]}@{c['video_fps']:.0f} fps, "
              f"{c['duration_s']:.0f} s, model {Path(c['model']).name} (ours: {summary['ours']['backend']}, "
              f"baseline: Ultralytics PyTorch via nginx-rtmp), {c['cpu_count']} CPU cores\n")
        print(summary["table"])
        for side in ("ours", "baseline"):
            err = (summary.get(side) or {}).get("error")
            if err:
                print(f"{side} error: {err}")
        print(f"\nresults: {summary['out_dir']}/bench.json, latency plot: {summary['out_dir']}/latency.png")
    return 0 if summary["all_pass"] else 1
