"""One model on one video, in its own process, so peak RSS and CPU time belong to that model alone.

Run by ``eval`` as ``python -m detector_app.evaluation.worker SPEC.json``. It uses the same
``Detector`` and ``Pipeline`` as ``detect`` (file mode: sampled on the video's timestamps, the same
frames every time) or ``replay`` (``via`` rtmp/srt: the real ingest, in real time), writes every
result to ``out_jsonl`` and its measurements to ``stats_json``. Exit 2 with ``{"error": …}`` for a
user-fixable problem (model not found).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    model: str
    precision: str
    video: str
    via: str  # file | rtmp | srt
    out_jsonl: str
    stats_json: str
    conf: float = 0.01
    fps: float = 10.0
    imgsz: int | None = None
    backend: str = "auto"
    device: str = "cpu"
    classes: str | None = None
    frame_counter: bool = False

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))


def run(spec: WorkerSpec) -> dict:
    from detector_app.commands.replay import detect_source, replay
    from detector_app.detection.detector import Detector, DetectorConfig
    from detector_app.ingest.url import UrlSource
    from detector_app.outputs.jsonl import JsonlWriter
    from detector_app.video.probe import video_size

    video = Path(spec.video)
    size = video_size(video)
    t_load = time.perf_counter()
    det = Detector(DetectorConfig(model=spec.model, conf=spec.conf, imgsz=spec.imgsz, device=spec.device,
                                  classes=spec.classes, backend=spec.backend, precision=spec.precision),
                   frame_size=size, progress=False)
    det.warmup(size or (1280, 720))
    load_s = time.perf_counter() - t_load
    probe = None
    if spec.frame_counter:
        from detector_app.fixtures.scene import frame_counter_probe as probe
    writer = JsonlWriter(spec.out_jsonl, append=False)
    cpu0, t0 = time.process_time(), time.perf_counter()
    try:
        if spec.via == "file":
            summary = detect_source(UrlSource(str(video), live=False), det, fps=spec.fps, sinks=[writer.write],
                                    headless=True, live=False, frame_probe=probe)
        else:
            summary = replay(video, det, protocol=spec.via, fps=spec.fps, sinks=[writer.write], headless=True,
                             frame_probe=probe)
    finally:
        writer.close()
    cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - t0
    return {
        "description": det.description,
        "backend": det.backend,
        "weights": det.resolved.precision,
        "run_path": det.resolved.path,
        "imgsz": det.imgsz,
        "load_s": round(load_s, 3),
        "run_wall_s": round(wall_s, 3),
        "run_cpu_s": round(cpu_s, 3),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "torch_loaded": "torch" in sys.modules,
        "summary": summary.to_json(),
    }


def main(argv: list[str]) -> int:
    from detector_app.detection.tuning import prefer_passive_omp_wait
    from detector_app.errors import UserError
    from detector_app.logs import setup_logging

    prefer_passive_omp_wait()
    setup_logging("WARNING")
    spec = WorkerSpec(**json.loads(Path(argv[0]).read_text()))
    try:
        stats = run(spec)
    except UserError as exc:
        Path(spec.stats_json).write_text(json.dumps({"error": str(exc)}))
        return 2
    Path(spec.stats_json).write_text(json.dumps(stats))
    return 1 if stats["summary"]["errors"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
