"""``detector-app bench``: real-time benchmark of the whole pipeline against Ultralytics' own streaming.

A recorded 1280×720 30 fps video (the ``bench_720p30`` fixture, whose frames carry a frame-counter
barcode) is published in real time through the real ingest (RTMP, or SRT with ``--protocol srt``),
``--streams N`` copies at once into N sessions of one worker process sharing one ``Detector``; the bare
runtime on the same export and bare decoding are timed as the floor; the same video is then pulled by
``YOLO(model).predict(source="rtmp://…", stream=True)`` through an nginx-rtmp server (one stream). One
table compares them (plus one row per stream); ``bench.json`` and ``latency.png`` keep the details.

Modules: ``publisher`` (timed publisher process), ``worker`` (one measured side per process), ``floor``
(bare runtime / bare decode children), ``nginx`` (temp RTMP server for the baseline), ``runner``
(orchestration), ``report`` (metrics, targets, tables, plot).
"""

from __future__ import annotations

import time
from pathlib import Path

from detector_app.bench.runner import BenchConfig, BenchError, run_bench

__all__ = ["EXIT_CANNOT_RUN", "EXIT_MISS", "EXIT_OK", "BenchConfig", "BenchError", "bench_main", "default_model",
           "default_video", "run_bench"]

BENCH_FIXTURE = "bench_720p30"
EXIT_OK = 0
EXIT_CANNOT_RUN = 2
EXIT_MISS = 3  # ran, a target was missed; not 1, which a crashing interpreter also returns


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
    streams: int = 1, precision: str = "auto", raw_calls: int = 100, inference_url: str | None = None,
) -> int:
    """Run the benchmark and print ONE table (plus one row per stream), or the JSON summary.

    Returns ``EXIT_OK`` (all targets met), ``EXIT_MISS`` (a target missed) or ``EXIT_CANNOT_RUN``."""
    import json

    from loguru import logger

    try:
        cfg = BenchConfig(
            video=Path(video) if video else default_video(), model=model or default_model(), duration=duration,
            protocol=protocol, backend=backend, conf=conf, imgsz=imgsz, fps=fps,
            out_dir=Path(out_dir) if out_dir else Path("bench-results") / time.strftime("%Y%m%d-%H%M%S"),
            baseline=baseline, log_level=log_level, streams=streams, precision=precision, raw_calls=raw_calls,
            inference_url=inference_url,
        )
        summary = run_bench(cfg)
    except (BenchError, RuntimeError, OSError) as exc:
        logger.error("benchmark failed: {}", exc)
        return EXIT_CANNOT_RUN
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        c = summary["config"]
        ours = summary["ours"]
        n = f"{c['streams']} streams (ours) into one process, baseline 1 stream" if c["streams"] > 1 else "1 stream"
        print(f"\nbench: {c['protocol'].upper()} {c['video_size'][0]}x{c['video_size'][1]}@{c['video_fps']:.0f} fps, "
              f"{c['duration_s']:.0f} s, {n}, model {Path(c['model']).name} (ours: {ours['backend']} "
              f"{ours.get('imgsz')}, export {Path(c['export']).name if c.get('export') else 'n/a'}; baseline: "
              f"Ultralytics PyTorch via nginx-rtmp), conf {c['conf']:g}, {c['cpu_count']} CPU cores\n")
        print(summary["table"])
        if summary.get("streams_table"):
            print("\nper stream (ours)\n" + summary["streams_table"])
        if ours.get("boxes_per_result") == 0:
            print(f"\nnote: no boxes reached post-processing at conf {c['conf']:g}; a random-weight model "
                  "(scripts/make_arch_model.py) needs --conf 1e-4")
        for side in ("ours", "baseline"):
            err = (summary.get(side) or {}).get("error")
            if err:
                print(f"{side} error: {err}")
        print(f"\nresults: {summary['out_dir']}/bench.json, latency plot: {summary['out_dir']}/latency.png")
    return EXIT_OK if summary["all_pass"] else EXIT_MISS
