#!/usr/bin/env python3
"""Embedded vs nginx RTMP ingest in one run: time to first frame and publisher→detection latency.

The bench's timed publisher (a child process) logs when each video frame's bytes left; the fixture
frames carry their number as a barcode, so every detection is matched to the exact frame it saw.
Modes alternate (embedded, nginx, embedded, …) so machine noise falls on both alike; one shared
model. Usage: ``.venv/bin/python scripts/ingest_compare.py [--rounds 3] [--duration 8]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def one_run(mode: str, det, nginx, video: Path, duration: float, fps: float) -> dict:
    from detector_app.fixtures.scene import frame_counter_probe
    from detector_app.ingest.addresses import wait_listening
    from detector_app.ingest.factory import open_listener
    from detector_app.pipeline import Pipeline

    if mode == "nginx":
        endpoint, source = nginx.open(for_glasses=False)
    else:
        endpoint, source = open_listener("rtmp", port=0, bind_host="127.0.0.1", advertise="127.0.0.1", for_glasses=False)
    results: list[tuple[int | None, float]] = []
    pipeline = Pipeline(source, det, fps=fps, sinks=[lambda r: results.append((r.extra.get("frame_id"), r.done_at))],
                        frame_probe=frame_counter_probe, source_label=f"compare {mode}")
    pipeline.start()
    if mode == "nginx":
        assert source.wait_attached(2.0), "puller did not attach to nginx"
    else:
        wait_listening(endpoint.port, udp=False)
    with tempfile.NamedTemporaryFile(suffix=".jsonl") as log:
        subprocess.run([sys.executable, "-m", "detector_app.bench.publisher", "--video", str(video), "--url",
                        endpoint.local_publish_url, "--duration", str(duration), "--log", log.name],
                       cwd=ROOT, check=True, timeout=duration + 30, capture_output=True)
        lines = [json.loads(x) for x in Path(log.name).read_text().splitlines()]
    time.sleep(0.5)
    first_frame = pipeline.first_frame_wall
    pipeline.stop(5.0)
    source.close()
    start = next(x["t"] for x in lines if x.get("event") == "connect_start")
    sent = {x["frame"]: x["t"] for x in lines if "frame" in x}
    lat = [(done - sent[fid]) * 1000 for fid, done in results if fid in sent]
    return {"mode": mode, "ttff_s": None if first_frame is None else first_frame - start, "latency_ms": lat}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--fps", type=float, default=10.0)
    ap.add_argument("--video", type=Path, default=ROOT / "data/fixtures/bench_720p30.mp4")
    ap.add_argument("--model", default=str(ROOT / "models/fixture-animals-yolo11n.pt"))
    args = ap.parse_args()
    from detector_app.detection.detector import Detector, DetectorConfig
    from detector_app.ingest.nginx_ingest import NginxIngest
    from detector_app.logs import setup_logging

    setup_logging("WARNING")
    det = Detector(DetectorConfig(model=args.model, backend="auto"), frame_size=(1280, 720), progress=False)
    det.warmup((1280, 720))
    nginx = NginxIngest(port=0, bind_host="127.0.0.1", advertise="127.0.0.1")
    runs: list[dict] = []
    try:
        for _ in range(args.rounds):
            for mode in ("embedded", "nginx"):
                runs.append(one_run(mode, det, nginx, args.video, args.duration, args.fps))
    finally:
        nginx.close()
    print(f"{'ingest':<10}{'runs':>5}{'first frame s (median)':>24}{'latency p50 ms':>16}{'p90 ms':>8}{'n':>6}")
    p50s = {}
    for mode in ("embedded", "nginx"):
        mine = [r for r in runs if r["mode"] == mode]
        lat = sorted(v for r in mine for v in r["latency_ms"])
        ttff = statistics.median(r["ttff_s"] for r in mine if r["ttff_s"] is not None)
        p50s[mode] = statistics.median(lat)
        p90 = lat[int(0.9 * (len(lat) - 1))]
        print(f"{mode:<10}{len(mine):>5}{ttff:>24.2f}{p50s[mode]:>16.1f}{p90:>8.1f}{len(lat):>6}")
    print(f"nginx − embedded latency p50: {p50s['nginx'] - p50s['embedded']:+.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
