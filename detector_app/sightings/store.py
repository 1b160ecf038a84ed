"""Sightings in one SQLite file (stdlib ``sqlite3``), with their thumbnails and clips beside it.

    store = SightingStore(Path("sightings.db"))           # creates or migrates; media in sightings-media/
    store.list(limit=50, before_id=None, label=None, since=None) -> list[Sighting]   # newest first
    store.get(id) -> Sighting | None
    store.thumbnail_path(s) / store.clip_path(s) -> Path | None   # None until written (or if deleted)
    store.last_change -> int      # grows with every insert, update and deletion (cheap: poll it for live views)
    store.version -> int          # the schema version (``schema_version`` table; migrations in ``_MIGRATIONS``)
    Sighting.to_json() -> dict    # the viewer's and ``sightings export``'s record

The recorder (``recorder.py``) inserts a row when a sighting opens (``status='open'``) and updates it when
the track leaves and again when its clip is written; media files are written to a temporary name and
renamed (``write_media``), so a reader never sees half a file. ``journal_mode=WAL`` lets readers (the web
viewer, ``sightings list``) read while the recorder writes; ``synchronous=NORMAL`` means a committed row
survives a ``kill -9`` of the process (the WAL is in the OS's page cache), and only a power loss can lose
the last commits — never the file's integrity. One connection, guarded by a lock, serves every thread.
Retention (``apply_retention``) deletes closed sightings by age and by the total size of their files.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from detector_app.errors import UserError

SCHEMA_VERSION = 1


class SightingStoreError(UserError):
    """The database cannot be opened or created (bad path, not writable, not a sightings database)."""


@dataclass(frozen=True, slots=True)
class Sighting:
    """One track from its first to its last frame. Wall times are ``time.time()``; pts are media seconds
    since the publisher session's first frame (``FrameResult.pts``)."""

    id: int
    stream: str  # the stream's label (serve: wearer · redacted publish URL; a file name)
    session: int  # publisher session of that stream
    track_id: int
    label: str
    status: str  # "open" while the track is in view, "closed" after it left
    first_seen: float
    last_seen: float
    first_pts: float | None
    last_pts: float | None
    best_confidence: float
    best_box: tuple[float, float, float, float] | None
    best_pts: float | None
    frame_size: tuple[int, int] | None
    thumbnail: str | None  # relative to the media directory
    clip: str | None
    clip_start_pts: float | None  # media time the clip covers (its first keyframe … its last packet)
    clip_end_pts: float | None
    clip_note: str | None  # why there is no clip, or why it is shorter than asked
    nbytes: int  # thumbnail + clip bytes (retention by size)
    updated_at: float

    @property
    def duration(self) -> float:
        """Seconds in view: media time where known (a file runs faster than real time), else wall time."""
        if self.first_pts is not None and self.last_pts is not None:
            return max(0.0, self.last_pts - self.first_pts)
        return max(0.0, self.last_seen - self.first_seen)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["best_box"] = list(self.best_box) if self.best_box else None
        d["frame_size"] = list(self.frame_size) if self.frame_size else None
        d["duration"] = round(self.duration, 3)
        return d


_COLUMNS = [f for f in Sighting.__dataclass_fields__ if f != "id"]
_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sightings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL, session INTEGER NOT NULL, track_id INTEGER NOT NULL, label TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('open', 'closed')),
    first_seen REAL NOT NULL, last_seen REAL NOT NULL, first_pts REAL, last_pts REAL,
    best_confidence REAL NOT NULL, best_box TEXT, best_pts REAL, frame_size TEXT,
    thumbnail TEXT, clip TEXT, clip_start_pts REAL, clip_end_pts REAL, clip_note TEXT,
    nbytes INTEGER NOT NULL DEFAULT 0, updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sightings_label ON sightings (label, id);
CREATE INDEX IF NOT EXISTS sightings_last_seen ON sightings (last_seen);
INSERT OR IGNORE INTO meta (key, value) VALUES ('change', 0);
"""
# version → statements that bring a database of version-1 to it (none yet: 1 is the first)
_MIGRATIONS: dict[int, str] = {}


def file_label(label: str) -> str:
    """A label as it goes into a media or export file name: a model's class name may hold any character
    ("/" would make a directory, ".." climb out of one); letters, digits, "-" and "_" stay."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in label) or "animal"


def _encode(field: str, value: Any) -> Any:
    if field in ("best_box", "frame_size"):
        return None if value is None else json.dumps([round(float(v), 1) for v in value])
    return value


def _decode(row: sqlite3.Row) -> Sighting:
    d = dict(row)
    box, size = d.pop("best_box"), d.pop("frame_size")
    return Sighting(
        best_box=tuple(json.loads(box)) if box else None,  # type: ignore[arg-type]
        frame_size=tuple(int(v) for v in json.loads(size)) if size else None,  # type: ignore[arg-type]
        **d,
    )


class SightingStore:
    def __init__(self, path: Path, media_dir: Path | None = None, *, create: bool = True) -> None:
        self.path = Path(path)
        self.media_dir = media_dir or self.path.with_name(f"{self.path.stem}-media")
        if not create and not self.path.exists():
            raise SightingStoreError(f"no sightings database at {self.path} (run serve, replay or detect with sightings first)")
        db: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=5.0)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except (sqlite3.Error, OSError) as exc:
            if db is not None:  # not a sightings database, or a newer schema: leave no handle open
                db.close()
            raise SightingStoreError(f"cannot open the sightings database {self.path}: {exc}") from None
        self._lock = threading.Lock()

    # -- schema ---------------------------------------------------------------------------------
    def _migrate(self) -> None:
        db = self._db
        has_tables = db.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0]
        known = db.execute("SELECT count(*) FROM sqlite_master WHERE name='schema_version'").fetchone()[0]
        if has_tables and not known:
            raise sqlite3.DatabaseError("not a sightings database (no schema_version table)")
        version = db.execute("SELECT max(version) FROM schema_version").fetchone()[0] if known else None
        if version is not None and version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"written by a newer detector-app (schema {version} > {SCHEMA_VERSION})")
        if version == SCHEMA_VERSION:
            return  # readers (the viewer, ``sightings list``) never take the write lock
        db.execute("BEGIN IMMEDIATE")  # two processes opening a new file at once: one creates, one waits
        try:
            if version is None:
                for stmt in filter(str.strip, _SCHEMA.split(";")):
                    db.execute(stmt)
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            else:
                for v in range(version + 1, SCHEMA_VERSION + 1):
                    for stmt in filter(str.strip, _MIGRATIONS[v].split(";")):
                        db.execute(stmt)
                    db.execute("UPDATE schema_version SET version = ?", (v,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    @property
    def version(self) -> int:
        """The schema version of the open database."""
        with self._lock:
            return int(self._db.execute("SELECT max(version) FROM schema_version").fetchone()[0])

    # -- reads ----------------------------------------------------------------------------------
    def list(self, limit: int = 50, before_id: int | None = None, label: str | None = None,
             since: float | None = None, stream: str | None = None) -> list[Sighting]:
        """Newest first; ``before_id`` pages back, ``since`` (wall time) keeps sightings last seen after it,
        ``stream`` keeps those whose stream name contains it (``serve`` names a stream by its wearer)."""
        where, args = [], []
        if before_id is not None:
            where.append("id < ?")
            args.append(before_id)
        if label:
            where.append("label = ?")
            args.append(label)
        if since is not None:
            where.append("last_seen >= ?")
            args.append(since)
        if stream:
            where.append("instr(stream, ?) > 0")  # a plain substring: no LIKE wildcards to escape
            args.append(stream)
        sql = "SELECT * FROM sightings" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, (*args, max(0, int(limit)))).fetchall()
        return [_decode(r) for r in rows]

    def get(self, sighting_id: int) -> Sighting | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM sightings WHERE id = ?", (sighting_id,)).fetchone()
        return _decode(row) if row else None

    @property
    def last_change(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT value FROM meta WHERE key = 'change'").fetchone()[0])

    def thumbnail_path(self, s: Sighting) -> Path | None:
        return self._media(s.thumbnail)

    def clip_path(self, s: Sighting) -> Path | None:
        return self._media(s.clip)

    def _media(self, rel: str | None) -> Path | None:
        if not rel:
            return None
        path = self.media_dir / rel
        return path if path.is_file() else None

    def total_bytes(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT coalesce(sum(nbytes), 0) FROM sightings").fetchone()[0])

    # -- writes (the recorder's worker thread) --------------------------------------------------
    def insert(self, **fields: Any) -> int:
        """A new sighting (``status`` defaults to open); returns its id."""
        fields.setdefault("status", "open")
        fields.setdefault("nbytes", 0)
        fields["updated_at"] = time.time()
        for name in ("thumbnail", "clip", "clip_start_pts", "clip_end_pts", "clip_note", "best_box", "best_pts",
                     "frame_size", "first_pts", "last_pts"):
            fields.setdefault(name, None)
        cols = [c for c in _COLUMNS if c in fields]
        unknown = set(fields) - set(_COLUMNS)
        if unknown:
            raise TypeError(f"unknown sighting fields: {sorted(unknown)}")
        sql = f"INSERT INTO sightings ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        with self._lock, self._transaction():
            cur = self._db.execute(sql, [_encode(c, fields[c]) for c in cols])
            return int(cur.lastrowid)

    def update(self, sighting_id: int, **fields: Any) -> None:
        unknown = set(fields) - set(_COLUMNS)
        if unknown:
            raise TypeError(f"unknown sighting fields: {sorted(unknown)}")
        fields["updated_at"] = time.time()
        sets = ", ".join(f"{c} = ?" for c in fields)
        with self._lock, self._transaction():
            self._db.execute(f"UPDATE sightings SET {sets} WHERE id = ?", [*(_encode(c, v) for c, v in fields.items()), sighting_id])

    def write_media(self, rel: str, data: bytes) -> Path:
        """Write ``data`` under the media directory atomically (temporary name, then rename)."""
        path = self.media_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return path

    def media_file(self, rel: str) -> Path:
        """Where a media file of this relative name lives (for writers that write themselves: clips)."""
        return self.media_dir / rel

    def close_stale(self, idle_s: float, note: str) -> int:
        """Close open sightings not updated for ``idle_s`` (their process died: an open row is updated every
        few seconds while its track is in view); returns how many."""
        with self._lock, self._transaction():
            cutoff = time.time() - idle_s
            cur = self._db.execute("UPDATE sightings SET status = 'closed', clip_note = ?, updated_at = ? "
                                   "WHERE status = 'open' AND updated_at < ?", (note, time.time(), cutoff))
            self._db.execute("UPDATE sightings SET clip_note = ? WHERE status = 'closed' AND clip IS NULL "
                             "AND clip_note IS NULL AND updated_at < ?", ("no clip: the process ended while writing it", cutoff))
            return cur.rowcount

    def delete(self, sighting_id: int) -> None:
        with self._lock:
            self._delete_locked([sighting_id])

    # -- retention ------------------------------------------------------------------------------
    def apply_retention(self, max_age_days: float | None = None, max_mb: float | None = None,
                        now: float | None = None) -> int:
        """Delete closed sightings older than ``max_age_days`` (by last seen), then the oldest closed ones
        until thumbnails + clips fit in ``max_mb``; files first, then rows. Returns how many were deleted."""
        now = time.time() if now is None else now
        deleted = 0
        with self._lock:
            if max_age_days is not None:
                ids = [r[0] for r in self._db.execute(
                    "SELECT id FROM sightings WHERE status = 'closed' AND last_seen < ?", (now - max_age_days * 86400.0,))]
                deleted += self._delete_locked(ids)
            if max_mb is not None:
                budget = int(max_mb * 1024 * 1024)
                total = int(self._db.execute("SELECT coalesce(sum(nbytes), 0) FROM sightings").fetchone()[0])
                ids = []
                for sid, nbytes in self._db.execute("SELECT id, nbytes FROM sightings WHERE status = 'closed' ORDER BY id"):
                    if total <= budget:
                        break
                    ids.append(sid)
                    total -= nbytes
                deleted += self._delete_locked(ids)
        self._remove_stale_tmp()
        return deleted

    def _delete_locked(self, ids: list[int]) -> int:
        if not ids:
            return 0
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            marks = ",".join("?" * len(chunk))
            for thumb, clip in self._db.execute(f"SELECT thumbnail, clip FROM sightings WHERE id IN ({marks})", chunk):
                for rel in (thumb, clip):
                    if rel:
                        (self.media_dir / rel).unlink(missing_ok=True)
            with self._transaction():
                self._db.execute(f"DELETE FROM sightings WHERE id IN ({marks})", chunk)
        return len(ids)

    def _remove_stale_tmp(self) -> None:
        """Temporary files of writes a crash interrupted (older than a minute: not one being written now)."""
        if not self.media_dir.is_dir():
            return
        cutoff = time.time() - 60.0
        for tmp in self.media_dir.rglob(".*.tmp"):
            try:
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
            except OSError:
                pass

    def integrity_ok(self) -> bool:
        with self._lock:
            return self._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- internals ------------------------------------------------------------------------------
    def _transaction(self) -> _Txn:
        return _Txn(self._db)


class _Txn:
    """BEGIN IMMEDIATE … COMMIT that also bumps the change counter (lock held by the caller)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.db.execute("UPDATE meta SET value = value + 1 WHERE key = 'change'")
                self.db.execute("COMMIT")
        finally:  # a failed statement or COMMIT (disk full, I/O error) must not leave the transaction open:
            if self.db.in_transaction:  # every later BEGIN would fail ("within a transaction") for good
                self.db.execute("ROLLBACK")
