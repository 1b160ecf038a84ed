"""Turn the raw benchmark records into metrics, the PASS/MISS table, and the latency-over-time plot.

Everything here is pure (records in, numbers out) so it can be tested without running a stream.

Latency is exact, not estimated: the publisher logged the wall-clock time each video frame left it;
the frame counter drawn into the fixture frames tells which frame each result was computed on;
``latency = result done time − send time of that frame`` (same machine, same clock).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from detector_app.stats import percentile

AGE_WINDOW_S = 10.0  # "first 10 s vs last 10 s" frame-age check
AGE_TOLERANCE = (1.25, 5.0)  # last ≤ first × 1.25 + 5 ms counts as "no worse" (noise on a shared box)
MAX_SANE_LATENCY_S = 30.0


def _r(v: float | None, nd: int = 1) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(v, nd)


@dataclass(slots=True)
class Sends:
    """The publisher's log: when it started connecting, and when each video frame was sent."""

    connect_start: float
    connected: float | None
    end: float | None
    times: dict[int, float]

    @classmethod
    def parse(cls, lines: list[dict]) -> Sends:
        times: dict[int, float] = {}
        ev: dict[str, float] = {}
        for d in lines:
            if "frame" in d:
                times[int(d["frame"])] = float(d["t"])
            elif "event" in d:
                ev[d["event"]] = float(d["t"])
        if "connect_start" not in ev:
            raise ValueError("publisher log has no connect_start event (did the publisher start?)")
        return cls(ev["connect_start"], ev.get("connected"), ev.get("end"), times)

    @property
    def frames(self) -> int:
        return len(self.times)

    @property
    def first_send(self) -> float | None:
        return min(self.times.values()) if self.times else None

    @property
    def last_send(self) -> float | None:
        return max(self.times.values()) if self.times else None


def latency_points(results: list[dict], sends: Sends, grace_s: float = 2.0) -> tuple[list[tuple[float, float, dict]], int]:
    """``[(done_at, latency_s, result)]`` for results that map to a sent frame; and how many did not (unreadable counter,
    or results after the stream ended: Ultralytics keeps yielding black frames when a stream drops)."""
    pts: list[tuple[float, float, dict]] = []
    bad = 0
    last = sends.last_send
    for r in results:
        fid, done = r.get("frame_id"), r.get("done_at")
        sent = sends.times.get(fid) if fid is not None else None
        if done is None or sent is None or (last is not None and done > last + grace_s):
            bad += 1
            continue
        lat = done - sent
        if not (0.0 <= lat <= MAX_SANE_LATENCY_S):
            bad += 1
            continue
        pts.append((done, lat, r))
    return pts, bad


@dataclass(slots=True)
class _Series:
    """One stream's raw numbers, kept as lists so several streams can be merged before taking percentiles."""

    pts: list[tuple[float, float, dict]]
    unmatched: int
    t_ref: float
    last_send: float | None
    ages: list[tuple[float, float]]  # (sample time, display frame age ms: now − decoded at)
    since_send: list[tuple[float, float]]  # (sample time, ms: now − when the publisher sent that frame)

    @property
    def lats_ms(self) -> list[float]:
        return [lat * 1000 for _, lat, _ in self.pts]

    @property
    def rate(self) -> float:
        done = sorted(t for t, _, _ in self.pts)
        return (len(done) - 1) / (done[-1] - done[0]) if len(done) >= 2 and done[-1] > done[0] else 0.0

    def first_last(self) -> tuple[list[float], list[float]]:
        """Latencies (ms) of the first and of the last ``AGE_WINDOW_S`` of the stream."""
        if self.last_send is None:
            return [], []
        first = [lat * 1000 for t, lat, _ in self.pts if t - self.t_ref <= AGE_WINDOW_S]
        last = [lat * 1000 for t, lat, _ in self.pts if t >= self.last_send - AGE_WINDOW_S]
        return first, last

    def age_first_last(self, since_send: bool = False) -> tuple[list[float], list[float]]:
        """Display frame ages (ms) of the first and last ``AGE_WINDOW_S``; ``since_send``: counted from the send
        time, so frames queued before decoding (socket, demuxer: a decoder that cannot keep up) count too."""
        if self.last_send is None:
            return [], []
        rows = self.since_send if since_send else self.ages
        first = [v for t, v in rows if t - self.t_ref <= AGE_WINDOW_S]
        last = [v for t, v in rows if t >= self.last_send - AGE_WINDOW_S]
        return first, last


def _series(results: list[dict], display: list[list], sends: Sends) -> _Series:
    pts, unmatched = latency_points(results, sends)
    t_ref = sends.connected or sends.connect_start
    ages: list[tuple[float, float]] = []
    since: list[tuple[float, float]] = []
    end = sends.last_send
    if end is not None:
        for row in display:
            t, rec, fid = row[0], row[1], row[2]
            if t_ref <= t <= end:
                ages.append((t, (t - rec) * 1000))
                if fid in sends.times and t >= sends.times[fid]:
                    since.append((t, (t - sends.times[fid]) * 1000))
    return _Series(pts, unmatched, t_ref, end, ages, since)


def no_backlog(first: float | None, last: float | None, first_sent: float | None = None,
               last_sent: float | None = None) -> bool | None:
    """Frame age of the last 10 s no worse than the first 10 s (tolerance for a shared, noisy box), both as
    decoded-to-now and, where the frame counter was read, sent-to-now (a decoder falling behind the stream only
    shows in the latter: its frames are fresh once decoded but old when they are)."""
    if first is None or last is None:
        return None
    k, c = AGE_TOLERANCE
    ok = last <= first * k + c
    if first_sent is not None and last_sent is not None:
        ok = ok and last_sent <= first_sent * k + c
    return ok


def _age_metrics(ages: list[float], first: list[float], last: list[float], since: list[float],
                 since_first: list[float], since_last: list[float]) -> dict:
    """Display frame age (decoded → shown) and age since the publisher sent the frame, overall and first/last 10 s."""
    return {
        "display_samples": len(ages),
        "display_age_ms_p50": _r(percentile(ages, 50)),
        "display_age_ms_p95": _r(percentile(ages, 95)),
        "display_age_ms_p50_first10s": _r(percentile(first, 50)),
        "display_age_ms_p50_last10s": _r(percentile(last, 50)),
        "display_age_since_send_ms_p50": _r(percentile(since, 50)),
        "display_age_since_send_ms_p95": _r(percentile(since, 95)),
        "display_age_since_send_ms_p50_first10s": _r(percentile(since_first, 50)),
        "display_age_since_send_ms_p50_last10s": _r(percentile(since_last, 50)),
    }


def _series_metrics(s: _Series, sends: Sends, frames_decoded: int | None) -> dict:
    lats = s.lats_ms
    first, last = s.first_last()
    afirst, alast = s.age_first_last()
    sfirst, slast = s.age_first_last(since_send=True)
    since = [v for _, v in s.since_send]
    done = [t for t, _, _ in s.pts]
    a = [v for _, v in s.ages]
    n_all = [r["n_all"] for _, _, r in s.pts if r.get("n_all") is not None]
    m = {
        "results_matched": len(s.pts),
        "results_unmatched": s.unmatched,
        "detections_per_s": _r(s.rate, 2),
        "latency_ms_p50": _r(percentile(lats, 50)),
        "latency_ms_p95": _r(percentile(lats, 95)),
        "latency_ms_max": _r(max(lats) if lats else None),
        "latency_ms_p50_first10s": _r(percentile(first, 50)),
        "latency_ms_p50_last10s": _r(percentile(last, 50)),
        "frames_sent": sends.frames,
        "frames_decoded": frames_decoded,
        "dropped_frames": (sends.frames - frames_decoded) if frames_decoded is not None else None,
        "time_to_first_detection_s": _r(min(done) - sends.connect_start, 3) if done else None,
        "boxes_per_result": _r(sum(n_all) / len(n_all), 1) if n_all else None,
    }
    if s.ages:
        m.update(_age_metrics(a, afirst, alast, since, sfirst, slast))
        m["no_backlog"] = no_backlog(m["display_age_ms_p50_first10s"], m["display_age_ms_p50_last10s"],
                                     m["display_age_since_send_ms_p50_first10s"], m["display_age_since_send_ms_p50_last10s"])
    return m


def _by_stream(rows: list, n: int, get) -> list[list]:
    out: list[list] = [[] for _ in range(n)]
    for row in rows:
        i = get(row)
        if 0 <= i < n:
            out[i].append(row)
    return out


def side_metrics(
    raw: dict, sends: Sends | list[Sends], cpu_s: float | None, wall_s: float | None, rss_kb: int | None,
    floor: dict | None = None, fps: float = 10.0,
) -> dict:
    """All metrics of one side from its worker output and the publishers' logs (one ``Sends`` per stream).

    The side's numbers merge every stream (percentiles over all results, rates summed); ``per_stream`` keeps
    each stream's own. ``floor`` (ours): the bare-runtime and bare-decode measurements of ``floor.py``.
    """
    sends_list = sends if isinstance(sends, list) else [sends]
    n = len(sends_list)
    results = _by_stream(raw.get("results", []), n, lambda r: int(r.get("stream", 0)))
    display = _by_stream(raw.get("display") or [], n, lambda d: int(d[3]) if len(d) > 3 else 0)
    decoded = raw.get("frames_decoded")
    decoded_list = decoded if isinstance(decoded, list) else [decoded] * n if n == 1 else [None] * n
    series = [_series(results[i], display[i], sends_list[i]) for i in range(n)]
    per = [_series_metrics(series[i], sends_list[i], decoded_list[i]) for i in range(n)]

    pts = [p for s in series for p in s.pts]
    lats = [lat * 1000 for _, lat, _ in pts]
    inf = [r["inference_ms"] for _, _, r in pts if r.get("inference_ms") is not None]
    rates = [s.rate for s in series]
    first = [v for s in series for v in s.first_last()[0]]
    last = [v for s in series for v in s.first_last()[1]]
    n_all = [r["n_all"] for _, _, r in pts if r.get("n_all") is not None]
    facts = raw.get("facts") or {}
    heavy = [m for m in ("torch", "ultralytics") if facts.get(f"{m}_imported")]

    def _sum(key: str):
        vals = [m.get(key) for m in per]
        return None if any(v is None for v in vals) else sum(vals)

    m: dict = {
        "model": raw.get("model"),
        "backend": raw.get("backend"),
        "imgsz": raw.get("imgsz"),
        "streams": n,
        "results": len(raw.get("results", [])),
        "results_matched": len(pts),
        "results_unmatched": sum(s.unmatched for s in series),
        "detections_per_s": _r(sum(rates), 2),
        "detections_per_s_min": _r(min(rates), 2),
        "detections_per_s_max": _r(max(rates), 2),
        "fairness": _r(min(rates) / max(rates), 3) if max(rates) > 0 else None,
        "inference_ms_p50": _r(percentile(inf, 50)),
        "inference_ms_p95": _r(percentile(inf, 95)),
        "latency_ms_p50": _r(percentile(lats, 50)),
        "latency_ms_p95": _r(percentile(lats, 95)),
        "latency_ms_max": _r(max(lats) if lats else None),
        "latency_ms_p95_worst": max((v for v in (p["latency_ms_p95"] for p in per) if v is not None), default=None),
        "latency_ms_p50_first10s": _r(percentile(first, 50)),
        "latency_ms_p50_last10s": _r(percentile(last, 50)),
        "frames_sent": sum(sd.frames for sd in sends_list),
        "frames_decoded": _sum("frames_decoded"),
        "dropped_frames": _sum("dropped_frames"),
        "boxes_per_result": _r(sum(n_all) / len(n_all), 1) if n_all else None,
        "process_cpu_cores": _r(cpu_s / wall_s, 3) if cpu_s is not None and wall_s else None,
        "cpu_seconds": _r(cpu_s, 2),
        "cpu_ms_per_detection": _r(cpu_s * 1000 / len(pts)) if cpu_s is not None and pts else None,
        "cpu_window_s": _r(wall_s, 2),
        "peak_rss_mb": _r(rss_kb / 1024.0) if rss_kb else None,
        "time_to_first_detection_s": (None if any(p["time_to_first_detection_s"] is None for p in per)
                                      else max(p["time_to_first_detection_s"] for p in per)),
        "threads": facts.get("threads"),
        "heavy_imports": (", ".join(heavy) or "none") if facts else None,
        "libtorch_mapped": facts.get("libtorch_mapped"),
        "error": raw.get("error"),
    }
    sb = raw.get("server_batches")
    if sb is not None:  # ours on a Triton server: what its dynamic batcher made of our streams
        m["server_inferences"] = sb.get("inferences")
        m["server_mean_batch"] = sb.get("mean_batch")
        m["server_error"] = sb.get("error")
    ages = [v for s in series for _, v in s.ages]
    if ages:
        afirst = [v for s in series for v in s.age_first_last()[0]]
        alast = [v for s in series for v in s.age_first_last()[1]]
        since = [v for s in series for _, v in s.since_send]
        sfirst = [v for s in series for v in s.age_first_last(since_send=True)[0]]
        slast = [v for s in series for v in s.age_first_last(since_send=True)[1]]
        m.update(_age_metrics(ages, afirst, alast, since, sfirst, slast))
        verdicts = [p.get("no_backlog") for p in per]
        m["backlog_streams"] = [i for i, v in enumerate(verdicts) if v is False]
        m["no_backlog"] = None if any(v is None for v in verdicts) else not m["backlog_streams"]
    if floor is not None:
        m.update(floor_metrics(floor, m, fps))
    if n > 1:
        m["per_stream"] = per
    return m


def floor_metrics(floor: dict, side: dict, fps: float) -> dict:
    """How close the pipeline's CPU per detection is to the bare runtime call plus decoding.

    Decode CPU per detection = decode CPU-seconds per video second × streams ÷ detections per second, i.e. the
    decode cost of one frame-at-``fps`` when every stream runs at ``fps`` (decoding every frame is the
    pipeline's job whatever the detection rate).
    """
    raw = floor.get("raw") or {}
    dec = floor.get("decode") or {}
    out: dict = {
        "raw_wall_ms_p50": _r(raw.get("wall_ms_p50")),
        "raw_wall_ms_p95": _r(raw.get("wall_ms_p95")),
        "raw_cpu_ms_per_call": _r(raw.get("cpu_ms_per_call")),
        "raw_calls": raw.get("calls"),
        "raw_parallel": raw.get("parallel"),
        "raw_config": raw.get("config"),
        "decode_cpu_s_per_video_s": _r(dec.get("cpu_s_per_video_s"), 4),
    }
    rate, streams = side.get("detections_per_s"), side.get("streams") or 1
    per_s = dec.get("cpu_s_per_video_s")
    dec_ms = None
    if per_s is not None:
        dec_ms = per_s * 1000.0 * streams / rate if rate else per_s * 1000.0 / fps
    out["decode_cpu_ms_per_detection"] = _r(dec_ms)
    raw_cpu = raw.get("cpu_ms_per_call")
    fl = raw_cpu + dec_ms if raw_cpu is not None and dec_ms is not None else None
    out["floor_cpu_ms_per_detection"] = _r(fl)
    cpu = side.get("cpu_ms_per_detection")
    out["pipeline_over_floor"] = _r(cpu / fl, 2) if cpu is not None and fl else None
    return out


# --------------------------------------------------------------------------------------------- targets
@dataclass(frozen=True, slots=True)
class Target:
    key: str
    text: str
    check: Callable[[dict, dict], bool | None]
    needs: str | None = None  # "baseline" / "floor": n/a (not a miss) when that part was not measured


def _le(key: str, limit: float) -> Callable[[dict, dict], bool | None]:
    return lambda o, b: None if o.get(key) is None else o[key] <= limit


def _ge(key: str, limit: float) -> Callable[[dict, dict], bool | None]:
    return lambda o, b: None if o.get(key) is None else o[key] >= limit


def _x_baseline(key: str, k: float) -> Callable[[dict, dict], bool | None]:
    """ours ≤ k × baseline."""
    return lambda o, b: None if o.get(key) is None or not b or b.get(key) is None else o[key] <= k * b[key]


def _and(*vals: bool | None) -> bool | None:
    known = [v for v in vals if v is not None]
    return None if not known else all(known)


def targets_for(streams: int) -> dict[str, Target]:
    """Issue 7's targets. One stream: latency, CPU, memory and start-up against the baseline and the floor.
    Several: the per-stream ones (every stream ≥ 9.5/s and p95 ≤ 150 ms while the machine can serve them,
    i.e. up to 3 streams on 2 cores), fair shares and no backlog on any stream."""
    backlog = Target("display_age_since_send_ms_p50_last10s", "≤ first 10 s (no backlog, every stream)",
                     lambda o, b: o.get("no_backlog"))
    if streams <= 1:
        ts = [
            Target("detections_per_s_min", "≥ 9.5", _ge("detections_per_s_min", 9.5)),
            Target("latency_ms_p50", "≤ 0.35× baseline", _x_baseline("latency_ms_p50", 0.35), "baseline"),
            Target("latency_ms_p95", "≤ 100 ms", _le("latency_ms_p95", 100.0)),
            backlog,
            Target("cpu_ms_per_detection", "≤ 0.6× baseline", _x_baseline("cpu_ms_per_detection", 0.6), "baseline"),
            Target("pipeline_over_floor", "≤ 1.3", _le("pipeline_over_floor", 1.3), "floor"),
            Target("peak_rss_mb", "≤ 300 MB and ≤ 0.4× baseline",
                   lambda o, b: _and(_le("peak_rss_mb", 300.0)(o, b), _x_baseline("peak_rss_mb", 0.4)(o, b))),
            Target("time_to_first_detection_s", "≤ 1.5 s", _le("time_to_first_detection_s", 1.5)),
        ]
    else:
        ts = []
        if streams <= 3:
            ts += [
                Target("detections_per_s_min", "≥ 9.5 (every stream)", _ge("detections_per_s_min", 9.5)),
                Target("latency_ms_p95_worst", "≤ 150 ms (every stream)", _le("latency_ms_p95_worst", 150.0)),
            ]
        ts += [Target("fairness", "≥ 0.8", _ge("fairness", 0.8)), backlog]
    return {t.key: t for t in ts}


def evaluate_targets(ours: dict, baseline: dict | None, streams: int | None = None) -> dict[str, bool | None]:
    ts = targets_for(streams or ours.get("streams") or 1)
    return {k: t.check(ours, baseline or {}) for k, t in ts.items()}


def all_pass(verdicts: dict[str, bool | None], targets: dict[str, Target], measured: set[str]) -> bool:
    """Every target met; n/a only counts as met where its reference (baseline, floor) was not measured."""
    for k, v in verdicts.items():
        if v is False:
            return False
        if v is None and (targets[k].needs is None or targets[k].needs in measured):
            return False
    return True


# ------------------------------------------------------------------------------------------------ table
ROWS: list[tuple[str, str, str]] = [  # (key, label, number format)
    ("detections_per_s", "detections/s (sustained, all streams)", ".2f"),
    ("detections_per_s_min", "detections/s, slowest stream", ".2f"),
    ("fairness", "fairness: slowest ÷ fastest stream", ".2f"),
    ("inference_ms_p50", "inference ms p50", ".1f"),
    ("inference_ms_p95", "inference ms p95", ".1f"),
    ("latency_ms_p50", "publisher→detection latency p50 (ms)", ".1f"),
    ("latency_ms_p95", "publisher→detection latency p95 (ms)", ".1f"),
    ("latency_ms_p95_worst", "latency p95, worst stream (ms)", ".1f"),
    ("display_age_ms_p50", "display frame age p50 (ms)", ".1f"),
    ("display_age_ms_p95", "display frame age p95 (ms)", ".1f"),
    ("display_age_ms_p50_first10s", "display frame age p50, first 10 s (ms)", ".1f"),
    ("display_age_ms_p50_last10s", "display frame age p50, last 10 s (ms)", ".1f"),
    ("latency_ms_p50_first10s", "latency p50, first 10 s (ms)", ".1f"),
    ("latency_ms_p50_last10s", "latency p50, last 10 s (ms)", ".1f"),
    ("display_age_since_send_ms_p50", "display frame age since sent p50 (ms)", ".1f"),
    ("display_age_since_send_ms_p50_first10s", "frame age since sent p50, first 10 s (ms)", ".1f"),
    ("display_age_since_send_ms_p50_last10s", "frame age since sent p50, last 10 s (ms)", ".1f"),
    ("dropped_frames", "dropped frames (sent, never decoded)", "d"),
    ("boxes_per_result", "boxes per result, before the animal filter", ".1f"),
    ("process_cpu_cores", "process CPU (cores)", ".2f"),
    ("others_cpu_cores", "rest of the machine meanwhile (cores; noise)", ".2f"),
    ("cpu_ms_per_detection", "CPU ms per detection", ".1f"),
    ("raw_wall_ms_p50", "raw runtime, same export: ms per call p50", ".1f"),
    ("raw_cpu_ms_per_call", "raw runtime: CPU ms per call", ".1f"),
    ("decode_cpu_ms_per_detection", "decode: CPU ms per detection", ".1f"),
    ("pipeline_over_floor", "pipeline CPU/detection ÷ (raw + decode)", ".2f"),
    ("peak_rss_mb", "peak RSS (MB, VmHWM)", ".0f"),
    ("time_to_first_detection_s", "time to first detection (s, worst stream)", ".2f"),
    ("threads", "worker threads (/proc Threads)", "d"),
    ("heavy_imports", "torch / ultralytics imported", ""),
    ("server_inferences", "inference server: inferences (our side)", "d"),
    ("server_mean_batch", "inference server: mean batch size", ".2f"),
]
MULTI_ONLY = {"detections_per_s_min", "fairness", "latency_ms_p95_worst"}


def _fmt(v, spec: str = "") -> str:
    if v is None:
        return "n/a"
    if spec == "d":
        return str(int(v))
    return format(v, spec) if spec and isinstance(v, (int, float)) else str(v)


def ratio(o, b) -> float | None:
    if o is None or b is None or not isinstance(o, (int, float)) or not isinstance(b, (int, float)) or b == 0:
        return None
    if isinstance(o, bool) or isinstance(b, bool):
        return None
    return o / b


def table_rows(ours: dict, baseline: dict | None, verdicts: dict[str, bool | None]) -> list[list[str]]:
    streams = ours.get("streams") or 1
    targets = targets_for(streams)
    rows = []
    for key, label, spec in ROWS:
        if key in MULTI_ONLY and streams == 1 and key not in targets:
            continue
        if key.startswith("server_") and key not in ours:  # only runs on an inference server have these
            continue
        o = ours.get(key)
        b = baseline.get(key) if baseline and key not in MULTI_ONLY else None  # the baseline is one stream
        r = ratio(o, b) if key not in ("threads",) else None
        t = targets.get(key)
        v = verdicts.get(key)
        rows.append([label, _fmt(o, spec), _fmt(b, spec), f"{r:.2f}×" if r is not None else "", t.text if t else "",
                     "" if t is None else ("PASS" if v else "MISS" if v is False else "n/a")])
    return rows


HEADER = ["metric", "ours", "baseline", "ours/baseline", "target", ""]
STREAM_HEADER = ["stream", "det/s", "latency p50", "p95", "frame age since sent p50 first 10 s", "last 10 s",
                 "backlog", "dropped", "first detection s"]


def _stream_row(name: str, m: dict) -> list[str]:
    nb = m.get("no_backlog")
    return [name, _fmt(m.get("detections_per_s"), ".2f"), _fmt(m.get("latency_ms_p50"), ".1f"),
            _fmt(m.get("latency_ms_p95"), ".1f"), _fmt(m.get("display_age_since_send_ms_p50_first10s"), ".1f"),
            _fmt(m.get("display_age_since_send_ms_p50_last10s"), ".1f"),
            "none" if nb else "GROWING" if nb is False else "n/a",
            _fmt(m.get("dropped_frames"), "d"), _fmt(m.get("time_to_first_detection_s"), ".2f")]


def stream_rows(ours: dict) -> list[list[str]]:
    """One row per stream (and the totals) for a ``--streams N`` run."""
    rows = [_stream_row(f"#{i}", p) for i, p in enumerate(ours.get("per_stream") or [])]
    if rows:
        rows.append(_stream_row(f"all {len(rows)}", ours))
    return rows


def render_text(rows: list[list[str]], header: list[str] = HEADER) -> str:
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(cells))

    out = [line(header), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    return "\n".join(out)


def render_markdown(rows: list[list[str]], header: list[str] | None = None) -> str:
    head = header or ["metric", "ours", "baseline", "ours/baseline", "target", "result"]
    aligns = ["---"] + ["---:"] * (len(head) - 1) if header else ["---"] + ["---:"] * 3 + ["---", "---"]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(aligns) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------- plot
def plot_series(raw: dict, sends: list[Sends]) -> list[tuple[list[tuple[float, float, dict]], float, list]]:
    """Per stream: (latency points, time origin, display frame ages since sent) for ``plot``."""
    n = len(sends)
    results = _by_stream(raw.get("results", []), n, lambda r: int(r.get("stream", 0)))
    display = _by_stream(raw.get("display") or [], n, lambda d: int(d[3]) if len(d) > 3 else 0)
    out = []
    for i in range(n):
        s = _series(results[i], display[i], sends[i])
        out.append((s.pts, s.t_ref, s.since_send or s.ages))
    return out


def plot(path, sides: dict[str, tuple[list[tuple[float, float, dict]], float, list]], title: str) -> None:
    """Latency over time (top) and ours' display frame age since the publisher sent it (bottom: a backlog anywhere,
    socket or decoder included, shows as a rising line); ``sides``: name → (points, t_ref, display ages)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    colors = {"ours": "tab:blue", "baseline": "tab:red"}
    palette = ["tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:cyan", "tab:olive", "tab:pink", "tab:brown"]
    for i, name in enumerate(n for n in sides if n not in colors):
        colors[name] = palette[i % len(palette)]
    for name, (pts, t_ref, _) in sides.items():
        if pts:
            xs = [t - t_ref for t, _, _ in pts]
            ys = [lat * 1000 for _, lat, _ in pts]
            med = percentile(ys, 50)
            ax.plot(xs, ys, ".", ms=3, alpha=0.6, color=colors.get(name), label=f"{name} (p50 {med:.0f} ms)")
    for y, ls in ((100, "--"), (150, ":")):
        ax.axhline(y, color="gray", ls=ls, lw=1)
    ax.set_ylabel("publisher → detection latency (ms)")
    ax.set_yscale("log")
    ax.legend(loc="upper right")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title)
    for name, (_, t_ref, disp) in sides.items():
        if disp:  # per-second p50 and p95 of the 30 Hz samples: drift (a backlog) shows as a rising line
            bins: dict[int, list[float]] = {}
            for t, age in disp:
                bins.setdefault(int(t - t_ref), []).append(age)
            xs = sorted(bins)
            c = colors.get(name)
            ax2.plot([x + 0.5 for x in xs], [percentile(bins[x], 50) for x in xs], "-", color=c, lw=1.2,
                     label=f"{name} frame age since sent, p50 per s")
            if len(sides) <= 2:  # one stream of ours: its p95 too; with several only the p50s stay readable
                ax2.plot([x + 0.5 for x in xs], [percentile(bins[x], 95) for x in xs], ":", color=c, lw=1.0,
                         label=f"{name} p95 per s")
    ax2.set_ylim(bottom=0)
    ax2.set_ylabel("display frame age\nsince sent (ms)")
    ax2.set_xlabel("seconds since the publisher connected")
    ax2.grid(True, alpha=0.3)
    if ax2.lines:
        ax2.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
