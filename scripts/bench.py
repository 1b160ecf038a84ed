#!/usr/bin/env python3
"""Thin wrapper: ``python scripts/bench.py [--duration 60] [--protocol srt] …`` = ``detector-app bench …``.

Replays the bench_720p30 fixture in real time through our RTMP/SRT ingest and through Ultralytics' own
``predict(source="rtmp://…", stream=True)`` (nginx-rtmp), prints one table, writes bench.json + latency.png.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector_app.cli import app

if __name__ == "__main__":
    app(["bench", *sys.argv[1:]], prog_name="scripts/bench.py")
