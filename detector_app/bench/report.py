"""Turn the raw benchmark records into metrics, the PASS/MISS table, and the latency-over-time plot.

Everything here is pure (records in, numbers out) so it can be tested without running a stream.

Latency is exact, not estimated: the publisher logged the wall-clock time each video frame left it;
the frame counter drawn into the fixture frames tells which frame each result was computed on;
``latency = result done time − send time of that frame`` (same machine, same clock).
"""

from __future__ import annotations

import math
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


def side_metrics(raw: dict, sends: Sends, cpu_s: float | None, wall_s: float | None, rss_kb: int | None) -> dict:
    """All metrics of one side (ours or baseline) from its worker output and the publisher's log."""
    results = raw.get("results", [])
    pts, unmatched = latency_points(results, sends)
    lats_ms = [lat * 1000 for _, lat, _ in pts]
    done = sorted(t for t, _, _ in pts)
    rate = (len(done) - 1) / (done[-1] - done[0]) if len(done) >= 2 and done[-1] > done[0] else 0.0
    inf = [r["inference_ms"] for _, _, r in pts if r.get("inference_ms") is not None]
    t_ref = sends.connected or sends.connect_start
    m: dict = {
        "model": raw.get("model"),
        "backend": raw.get("backend"),
        "imgsz": raw.get("imgsz"),
        "results": len(results),
        "results_matched": len(pts),
        "results_unmatched": unmatched,
        "detections_per_s": _r(rate, 2),
        "inference_ms_p50": _r(percentile(inf, 50)),
        "inference_ms_p95": _r(percentile(inf, 95)),
        "latency_ms_p50": _r(percentile(lats_ms, 50)),
        "latency_ms_p95": _r(percentile(lats_ms, 95)),
        "latency_ms_max": _r(max(lats_ms) if lats_ms else None),
        "frames_sent": sends.frames,
        "frames_decoded": raw.get("frames_decoded"),
        "dropped_frames": (sends.frames - raw["frames_decoded"]) if raw.get("frames_decoded") is not None else None,
        "process_cpu_cores": _r(cpu_s / wall_s, 3) if cpu_s is not None and wall_s else None,
        "cpu_seconds": _r(cpu_s, 2),
        "cpu_ms_per_detection": _r(cpu_s * 1000 / len(pts)) if cpu_s is not None and pts else None,
        "cpu_window_s": _r(wall_s, 2),
        "peak_rss_mb": _r(rss_kb / 1024.0) if rss_kb else None,
        "time_to_first_detection_s": _r(done[0] - sends.connect_start, 3) if done else None,
        "error": raw.get("error"),
    }
    # latency drift: first vs last 10 s of the stream (a backlog shows as growth)
    if pts and sends.last_send is not None:
        first = [lat * 1000 for t, lat, _ in pts if t - t_ref <= AGE_WINDOW_S]
        last = [lat * 1000 for t, lat, _ in pts if t >= sends.last_send - AGE_WINDOW_S]
        m["latency_ms_p50_first10s"] = _r(percentile(first, 50))
        m["latency_ms_p50_last10s"] = _r(percentile(last, 50))
    # display frame age (ours): 30 Hz samples of the newest decoded frame
    disp = raw.get("display") or []
    if disp and sends.last_send is not None:
        end = sends.last_send
        rows = [(t, rec, fid) for t, rec, fid in disp if t_ref <= t <= end]
        ages = [(t, (t - rec) * 1000) for t, rec, _ in rows]
        since_send = [(t - sends.times[fid]) * 1000 for t, _, fid in rows if fid in sends.times and t >= sends.times[fid]]
        a = [v for _, v in ages]
        first = [v for t, v in ages if t - t_ref <= AGE_WINDOW_S]
        last = [v for t, v in ages if t >= end - AGE_WINDOW_S]
        m.update({
            "display_samples": len(a),
            "display_age_ms_p50": _r(percentile(a, 50)),
            "display_age_ms_p95": _r(percentile(a, 95)),
            "display_age_ms_p50_first10s": _r(percentile(first, 50)),
            "display_age_ms_p50_last10s": _r(percentile(last, 50)),
            "display_age_since_send_ms_p50": _r(percentile(since_send, 50)),
            "display_age_since_send_ms_p95": _r(percentile(since_send, 95)),
        })
    return m


# --------------------------------------------------------------------------------------------- targets
@dataclass(frozen=True, slots=True)
class Target:
    key: str
    text: str
    check: object  # callable(ours, baseline) -> bool | None


def _le(key: str, limit: float):
    return lambda o, b: None if o.get(key) is None else o[key] <= limit


def _ge(key: str, limit: float):
    return lambda o, b: None if o.get(key) is None else o[key] >= limit


def _age_no_backlog(o: dict, b: dict) -> bool | None:
    first, last = o.get("display_age_ms_p50_first10s"), o.get("display_age_ms_p50_last10s")
    if first is None or last is None:
        return None
    k, c = AGE_TOLERANCE
    return last <= first * k + c


def _half_baseline(o: dict, b: dict) -> bool | None:
    if not b or o.get("latency_ms_p50") is None or b.get("latency_ms_p50") is None:
        return None
    return o["latency_ms_p50"] <= 0.5 * b["latency_ms_p50"]


TARGETS: dict[str, Target] = {
    "detections_per_s": Target("detections_per_s", "≥ 9.5", _ge("detections_per_s", 9.5)),
    "latency_ms_p50": Target("latency_ms_p50", "≤ 100 ms, ≤ ½ baseline",
                             lambda o, b: _and(_le("latency_ms_p50", 100)(o, b), _half_baseline(o, b))),
    "latency_ms_p95": Target("latency_ms_p95", "≤ 150 ms", _le("latency_ms_p95", 150)),
    "display_age_ms_p50_last10s": Target("display_age_ms_p50_last10s", "≤ first 10 s", _age_no_backlog),
    "process_cpu_cores": Target("process_cpu_cores", "≤ 1.0", _le("process_cpu_cores", 1.0)),
    "peak_rss_mb": Target("peak_rss_mb", "≤ 1024 MB", _le("peak_rss_mb", 1024.0)),
    "time_to_first_detection_s": Target("time_to_first_detection_s", "≤ 2 s", _le("time_to_first_detection_s", 2.0)),
}


def _and(*vals: bool | None) -> bool | None:
    known = [v for v in vals if v is not None]
    return None if not known else all(known)


def evaluate_targets(ours: dict, baseline: dict | None) -> dict[str, bool | None]:
    return {k: t.check(ours, baseline or {}) for k, t in TARGETS.items()}  # type: ignore[operator]


# ------------------------------------------------------------------------------------------------ table
ROWS: list[tuple[str, str, str]] = [  # (key, label, number format)
    ("detections_per_s", "detections/s (sustained)", ".2f"),
    ("inference_ms_p50", "inference ms p50", ".1f"),
    ("inference_ms_p95", "inference ms p95", ".1f"),
    ("latency_ms_p50", "publisher→detection latency p50 (ms)", ".1f"),
    ("latency_ms_p95", "publisher→detection latency p95 (ms)", ".1f"),
    ("display_age_ms_p50", "display frame age p50 (ms)", ".1f"),
    ("display_age_ms_p95", "display frame age p95 (ms)", ".1f"),
    ("display_age_ms_p50_first10s", "display frame age p50, first 10 s (ms)", ".1f"),
    ("display_age_ms_p50_last10s", "display frame age p50, last 10 s (ms)", ".1f"),
    ("latency_ms_p50_first10s", "latency p50, first 10 s (ms)", ".1f"),
    ("latency_ms_p50_last10s", "latency p50, last 10 s (ms)", ".1f"),
    ("display_age_since_send_ms_p50", "display frame age since sent p50 (ms)", ".1f"),
    ("dropped_frames", "dropped frames (sent, never decoded)", "d"),
    ("process_cpu_cores", "process CPU (cores)", ".2f"),
    ("cpu_ms_per_detection", "CPU ms per detection", ".1f"),
    ("peak_rss_mb", "peak RSS (MB, VmHWM)", ".0f"),
    ("time_to_first_detection_s", "time to first detection (s)", ".2f"),
]


def _fmt(v, spec: str = "") -> str:
    if v is None:
        return "n/a"
    if spec == "d":
        return str(int(v))
    return format(v, spec) if spec and isinstance(v, (int, float)) else str(v)


def ratio(o, b) -> float | None:
    if o is None or b is None or not isinstance(o, (int, float)) or not isinstance(b, (int, float)) or b == 0:
        return None
    return o / b


def table_rows(ours: dict, baseline: dict | None, verdicts: dict[str, bool | None]) -> list[list[str]]:
    rows = []
    for key, label, spec in ROWS:
        o = ours.get(key)
        b = baseline.get(key) if baseline else None
        r = ratio(o, b)
        t = TARGETS.get(key)
        v = verdicts.get(key)
        rows.append([label, _fmt(o, spec), _fmt(b, spec), f"{r:.2f}×" if r is not None else "", t.text if t else "",
                     "" if t is None else ("PASS" if v else "MISS" if v is False else "n/a")])
    return rows


HEADER = ["metric", "ours", "baseline", "ours/baseline", "target", ""]


def render_text(rows: list[list[str]]) -> str:
    widths = [max(len(HEADER[i]), *(len(r[i]) for r in rows)) for i in range(len(HEADER))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(cells))

    out = [line(HEADER), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    return "\n".join(out)


def render_markdown(rows: list[list[str]]) -> str:
    head = ["metric", "ours", "baseline", "ours/baseline", "target", "result"]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * 3 + ["---", "---"]) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------- plot
def plot(path, sides: dict[str, tuple[list[tuple[float, float, dict]], float, list]], title: str) -> None:
    """Latency over time (top) and ours' display frame age (bottom); ``sides``: name → (points, t_ref, display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    colors = {"ours": "tab:blue", "baseline": "tab:red"}
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
                     label=f"{name} display frame age p50 per s")
            ax2.plot([x + 0.5 for x in xs], [percentile(bins[x], 95) for x in xs], ":", color=c, lw=1.0,
                     label=f"{name} p95 per s")
    ax2.set_ylim(bottom=0)
    ax2.set_ylabel("frame age (ms)")
    ax2.set_xlabel("seconds since the publisher connected")
    ax2.grid(True, alpha=0.3)
    if ax2.lines:
        ax2.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
