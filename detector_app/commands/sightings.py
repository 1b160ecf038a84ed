"""``detector-app sightings list|export``: read the sightings database from the command line.

``list`` prints a table (or JSON lines) newest first; ``export`` copies the thumbnails and clips of the
chosen sightings into a directory with an ``index.json`` or ``index.csv`` that names them.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import time
from datetime import datetime
from pathlib import Path

from detector_app.errors import UserError
from detector_app.sightings.store import Sighting, SightingStore, file_label

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
EXPORT_FIELDS = ("id", "label", "track_id", "stream", "session", "status", "first_seen", "last_seen", "duration",
                 "first_pts", "last_pts", "best_confidence", "best_box", "thumbnail", "clip", "clip_start_pts",
                 "clip_end_pts", "clip_note")


class SinceError(UserError):
    pass


class ExportError(UserError):
    pass


def parse_since(text: str, now: float | None = None) -> float:
    """``90s``, ``30m``, ``1h``, ``2d``, ``1w`` (that long ago), or a date/time (``2026-12-01``,
    ``2026-12-01T08:30``, local time) → wall time."""
    now = time.time() if now is None else now
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text.lower())
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise SinceError(f"--since {text!r}: use a duration like 30m, 1h, 2d or a date like 2026-12-01[T08:30]") from None


def open_store(db: Path) -> SightingStore:
    """An existing database only: listing a path that has none is a mistake, not an empty list."""
    return SightingStore(db, create=False)


def select(store: SightingStore, since: str | None, label: str | None, limit: int,
           stream: str | None = None) -> list[Sighting]:
    return store.list(limit=limit, label=label, since=parse_since(since) if since else None, stream=stream)


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def table(sightings: list[Sighting]) -> str:
    """A plain-text table, one sighting per line, newest first."""
    if not sightings:
        return "no sightings"
    rows = [("id", "label", "track", "first seen", "duration", "best", "clip", "stream")]
    for s in sightings:
        clip = "open" if s.status == "open" else ("yes" if s.clip else "no")
        rows.append((str(s.id), s.label, str(s.track_id), _when(s.first_seen), f"{s.duration:.1f} s",
                     f"{s.best_confidence:.2f}", clip, s.stream))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1] for r in rows)


def as_json_lines(sightings: list[Sighting]) -> str:
    return "\n".join(json.dumps(s.to_json()) for s in sightings)


def export(store: SightingStore, sightings: list[Sighting], out: Path, fmt: str = "json") -> Path:
    """Copy each sighting's thumbnail and clip to ``out`` and write the index; returns the index path."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ExportError(f"cannot write to {out}: {exc.strerror or exc}") from None
    records = []
    for s in sightings:
        rec = s.to_json()
        for kind, src in (("thumbnail", store.thumbnail_path(s)), ("clip", store.clip_path(s))):
            if src is None:
                rec[kind] = None
                continue
            dest = out / f"{s.id:06d}-{file_label(s.label)}{src.suffix}"
            try:
                shutil.copy2(src, dest)
            except FileNotFoundError:  # a running serve's retention deleted it since the list was read
                rec[kind] = None
                continue
            except OSError as exc:  # disk full, permissions: one line, not a traceback
                raise ExportError(f"cannot copy {src.name} to {out}: {exc.strerror or exc}") from None
            rec[kind] = dest.name
        records.append(rec)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=EXPORT_FIELDS, extrasaction="ignore")
        w.writeheader()
        for rec in records:
            w.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in rec.items()})
        index, text = out / "index.csv", buf.getvalue()
    else:
        index = out / "index.json"
        text = json.dumps({"exported_at": time.time(), "database": str(store.path), "sightings": records}, indent=1)
    try:
        index.write_text(text)
    except OSError as exc:
        raise ExportError(f"cannot write {index}: {exc.strerror or exc}") from None
    return index
