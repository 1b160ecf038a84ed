#!/usr/bin/env python3
"""Soak run: the real `serve` miniapp against the simulated cloud whose glasses stream drops every N
seconds and comes back after M (optionally the app WebSocket too), measured from outside.

    .venv/bin/python scripts/soak.py --duration 1800            # the README's 30-minute run
    .venv/bin/python scripts/soak.py --duration 120 --drop-every 20 --warmup 30   # the CI version

Two child processes: ``detector-app serve --headless --out results.jsonl`` and ``detector-app simulate
--soak``. Nothing is asked of either beyond what a user sees:
- resources of the serve process come from ``/proc/<pid>`` (RSS, threads, open FDs, CPU time);
- drops and returns come from the simulator's printed glasses view (``… reconnecting -> app sees
  'initializing'`` is a drop; the next ``… connecting`` is the publisher back, dialling the ingest);
- the recovery of a drop is *publisher back → the first detection result* (a JSONL line, animals or
  not) on a frame of the new stream (decoded after it, ``received_at``, and not the old stream's tail by
  ``extra.session``/``frame_index``): connect, handshake, first keyframe, decode and inference, i.e. the
  pipeline working again. App-socket drops (``--soak-ws``) count from "dropping app
  WebSocket" to the app's acked reconnect.

Every minute one line; at the end a summary, and the exit code says whether the targets held:
RSS growth after warm-up within budget (10 MB per 30 min, scaled, with a floor for noise), threads and
FDs flat, every drop recovered, recovery p95 within 3 s, no error or traceback in the serve log,
serve exits 0. Exit 0: all held; 1: a target missed; 2: the run could not be set up.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from detector_app.ingest.addresses import free_port  # noqa: E402 - the project's one port helper
from detector_app.procs import die_with_parent  # noqa: E402 - children never outlive the soak

PKG = "com.example.detector.soak"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ /proc of the serve process
@dataclass(frozen=True)
class ProcSample:
    t: float  # monotonic
    rss_mb: float
    threads: int
    fds: int
    cpu_s: float  # utime + stime


def read_proc(pid: int) -> ProcSample:
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = int(re.search(r"^VmRSS:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
    threads = int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state is field 3
    cpu_s = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)
    return ProcSample(time.monotonic(), rss_kb / 1024.0, threads, fds, cpu_s)


# ------------------------------------------------------------------ drops, as the simulator shows them
@dataclass
class Outage:
    kind: str  # "stream" | "socket"
    down_at: float  # wall clock (time.time), when the simulator printed the drop
    back_at: float | None = None  # publisher (or app socket) back
    result_at: float | None = None  # received_at of the first detection result of the new stream
    last_frame: tuple[int, int] | None = None  # (publisher session, frame index) of the last result before it

    @property
    def recovery_s(self) -> float | None:
        """Stream: publisher back → first result. Socket: drop → the app acked again (results do not
        depend on the socket, so its drop is over when the app is back)."""
        if self.kind == "socket":
            return None if self.back_at is None else self.back_at - self.down_at
        if self.back_at is None or self.result_at is None:
            return None
        return max(0.0, self.result_at - self.back_at)


DROP = re.compile(r"\[glasses camera\] .*: stream \S+ reconnecting .*-> app sees 'initializing'")
BACK = re.compile(r"\[glasses camera\] .*: stream \S+ connecting ")
ACTIVE = re.compile(r"\[glasses camera\] .*: stream \S+ (reconnected|streaming) .*-> app sees 'active'")
WS_DROP = re.compile(r"\[cloud\] dropping app WebSocket for ")
WS_BACK = re.compile(r"\[cloud\] \S+ connected for \S+ \(reconnect\)")
SIM_SUMMARY = re.compile(r"soak summary: stream drops (\d+), app socket drops (\d+)")


class Observations:
    """What the two processes showed, fed from reader threads; `lock` guards every field."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.outages: list[Outage] = []
        self.first_active_at: float | None = None
        self.results = 0
        self.first_result_at: float | None = None
        self.last_result_at: float | None = None
        self.last_frame: tuple[int, int] | None = None
        self.sim_reported: tuple[int, int] | None = None
        self.sim_lines = 0

    def sim_line(self, line: str, now: float) -> None:
        with self.lock:
            self.sim_lines += 1
            if DROP.search(line):
                self.outages.append(Outage("stream", now, last_frame=self.last_frame))
            elif ACTIVE.search(line):
                self.first_active_at = self.first_active_at or now
            elif BACK.search(line):
                for o in self.outages:
                    if o.kind == "stream" and o.back_at is None:
                        o.back_at = now
            elif WS_DROP.search(line):
                self.outages.append(Outage("socket", now))
            elif WS_BACK.search(line):
                for o in self.outages:
                    if o.kind == "socket" and o.back_at is None:
                        o.back_at = now
            elif m := SIM_SUMMARY.search(line):
                self.sim_reported = (int(m.group(1)), int(m.group(2)))

    def result(self, received_at: float, frame: tuple[int, int] | None = None) -> None:
        """One JSONL result; `frame` is (extra.session, frame_index) when serve writes them.

        A drop is recovered by a result of the *new* stream: decoded after the publisher came back and,
        when frames are identified, not the old stream's tail. (An MPEG-TS demuxer releases the last
        frames of a dropped SRT stream only when the next bytes arrive, i.e. after the reconnect.)"""
        with self.lock:
            self.results += 1
            self.first_result_at = self.first_result_at or received_at
            self.last_result_at = received_at
            for o in self.outages:
                if o.back_at is not None and o.result_at is None and received_at >= o.back_at \
                        and not _continues(o.last_frame, frame):
                    o.result_at = received_at
            if frame is not None:
                self.last_frame = frame

    def open_outages(self) -> list[Outage]:
        with self.lock:
            return [o for o in self.outages if o.recovery_s is None]


def _continues(before: tuple[int, int] | None, frame: tuple[int, int] | None) -> bool:
    """Is `frame` a later frame of the same publisher session as `before` (the old stream's tail)?
    A new session, or a frame counter that restarted (a rebuilt ingest), is a new stream."""
    if before is None or frame is None:
        return False
    return frame[0] == before[0] and frame[1] > before[1]


def pump_simulator(stream, obs: Observations, echo_to: Path) -> None:
    with echo_to.open("w") as out:
        for line in stream:
            obs.sim_line(line, time.time())
            out.write(f"{time.time():.3f} {line}")
            out.flush()


def tail_results(path: Path, obs: Observations, stop: threading.Event) -> None:
    """Follow the serve JSONL (one line per inference) without keeping it in memory."""
    while not path.exists() and not stop.wait(0.1):
        pass
    if stop.is_set():
        return
    with path.open() as f:
        buf = ""
        while True:
            chunk = f.readline()
            if not chunk:
                if stop.wait(0.05):
                    return
                continue
            buf += chunk
            if not buf.endswith("\n"):
                continue
            try:
                msg = json.loads(buf)
            except ValueError:
                msg = {}
            buf = ""
            if msg.get("type") == "detections" and isinstance(msg.get("received_at"), (int, float)):
                session, index = (msg.get("extra") or {}).get("session"), msg.get("frame_index")
                frame = (session, index) if isinstance(session, int) and isinstance(index, int) else None
                obs.result(float(msg["received_at"]), frame)


# ------------------------------------------------------------------ verdict (pure: plain inputs)
@dataclass
class Targets:
    rss_mb_per_30min: float = 10.0
    rss_floor_mb: float = 3.0  # short runs: allocator noise is not a leak
    thread_slack: int = 2
    fd_slack: int = 4
    recovery_p95_s: float = 3.0


@dataclass
class Verdict:
    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def judge(samples: list[ProcSample], warm_from: float, outages: list[Outage], log_errors: list[str],
          serve_rc: int | None, targets: Targets) -> Verdict:
    """Compare the measured run with the targets; every failure is one readable line."""
    v = Verdict()
    steady = [s for s in samples if s.t >= warm_from]
    if len(steady) < 6:
        v.failures.append(f"too few samples after warm-up ({len(steady)}); run longer")
        return v
    third = max(2, len(steady) // 3)
    first, last = steady[:third], steady[-third:]
    minutes = (steady[-1].t - steady[0].t) / 60.0
    budget = max(targets.rss_floor_mb, targets.rss_mb_per_30min * minutes / 30.0)
    thirds = statistics.median(s.rss_mb for s in last) - statistics.median(s.rss_mb for s in first)
    peaks = max(s.rss_mb for s in last) - max(s.rss_mb for s in first)
    ends = steady[-1].rss_mb - steady[0].rss_mb
    # A leak raises both the typical and the highest reading; bounded buffers that fill and empty with the
    # scene (the sightings' packet ring, pinned best frames) swing a few MB between any two single samples,
    # so the end-to-end difference is shown but not judged.
    growth = max(thirds, peaks)
    v.lines.append(f"rss MB            {steady[0].rss_mb:.1f} after warm-up → {steady[-1].rss_mb:.1f} at the end "
                   f"({ends:+.1f}; first/last third: medians {thirds:+.1f}, peaks {peaks:+.1f}); budget {budget:.1f} "
                   f"for {minutes:.0f} min; max {max(s.rss_mb for s in steady):.1f}")
    if growth > budget:
        v.failures.append(f"RSS grew {growth:.1f} MB after warm-up (budget {budget:.1f} MB)")
    for name, get, slack in (("threads", lambda s: s.threads, targets.thread_slack),
                             ("open fds", lambda s: s.fds, targets.fd_slack)):
        a, b = max(get(s) for s in first), max(get(s) for s in last)
        lo, hi = min(get(s) for s in steady), max(get(s) for s in steady)
        v.lines.append(f"{name:<17} {a} after warm-up, {b} at the end (peaks), range {lo}–{hi}")
        if b > a + slack:
            v.failures.append(f"{name} not flat: peak {a} after warm-up, {b} at the end (slack {slack})")
    cpu = (steady[-1].cpu_s - steady[0].cpu_s) / max(1e-9, steady[-1].t - steady[0].t)
    v.lines.append(f"cpu               {100 * cpu:.0f}% of one core on average after warm-up")
    for kind in ("stream", "socket"):
        of_kind = [o for o in outages if o.kind == kind]
        if not of_kind:
            continue
        rec = [o.recovery_s for o in of_kind if o.recovery_s is not None]
        missing = len(of_kind) - len(rec)
        line = f"{kind} drops{'':<{12 - len(kind)}} {len(of_kind)}, recovered {len(rec)}"
        if rec:
            line += (f"; recovery s p50 {percentile(rec, 50):.2f}  p95 {percentile(rec, 95):.2f}  "
                     f"max {max(rec):.2f}")
        v.lines.append(line)
        if missing:
            v.failures.append(f"{missing} of {len(of_kind)} {kind} drops never recovered")
        if kind == "stream" and rec and percentile(rec, 95) > targets.recovery_p95_s:
            v.failures.append(f"stream recovery p95 {percentile(rec, 95):.2f} s > {targets.recovery_p95_s:.1f} s")
    if not [o for o in outages if o.kind == "stream"]:
        v.failures.append("no stream drop happened: run longer than --drop-every")
    v.lines.append(f"serve log         {len(log_errors)} error/traceback lines; exit code {serve_rc}")
    if log_errors:
        v.failures.append(f"serve log has errors, first: {log_errors[0][:160]}")
    if serve_rc is None:
        v.failures.append("serve did not stop within 40 s of SIGTERM (killed)")
    elif serve_rc != 0:
        v.failures.append(f"serve exited with {serve_rc}")
    return v


ERROR_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} (ERROR|CRITICAL)|Traceback \(most recent call last\)")


def log_errors(path: Path) -> list[str]:
    with path.open(errors="replace") as f:
        return [line.rstrip() for line in f if ERROR_LINE.search(line)]


# ------------------------------------------------------------------ the run
def wait_healthy(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited with {proc.returncode} before it listened")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"serve did not answer /health within {timeout:.0f} s")


def stop(proc: subprocess.Popen, sig: int, timeout: float) -> int | None:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        return None  # did not stop in time: counted as a failure


def fmt_clock(seconds: float) -> str:
    return f"{int(seconds // 60):2d}:{int(seconds % 60):02d}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=1800.0, help="seconds of soak after the first result")
    ap.add_argument("--drop-every", type=float, default=60.0, help="seconds of streaming between drops")
    ap.add_argument("--down-for", type=float, default=3.0, help="seconds each drop lasts")
    ap.add_argument("--soak-ws", action="store_true", help="also drop the app WebSocket every --drop-every s")
    ap.add_argument("--warmup", type=float, default=None,
                    help="seconds after the first result before resources count (default: one drop cycle + 10 s)")
    ap.add_argument("--sample-every", type=float, default=5.0)
    ap.add_argument("--print-every", type=float, default=60.0)
    ap.add_argument("--protocol", choices=["rtmp", "srt"], default="rtmp")
    ap.add_argument("--video", type=Path, default=ROOT / "data/fixtures/cat_480p15.mp4")
    ap.add_argument("--model", type=Path, default=ROOT / "models/fixture-animals-yolo11n.pt")
    ap.add_argument("--workdir", type=Path, default=None, help="logs and results (default: a temporary folder)")
    ap.add_argument("--rss-budget-mb", type=float, default=10.0, help="allowed RSS growth per 30 min after warm-up")
    ap.add_argument("--rss-floor-mb", type=float, default=3.0, help="the budget never goes below this (noise)")
    ap.add_argument("--recovery-p95", type=float, default=3.0, help="seconds")
    ap.add_argument("--startup-timeout", type=float, default=600.0, help="seconds for serve to load and listen")
    ap.add_argument("--json", type=Path, default=None, help="also write the measurements as JSON")
    args = ap.parse_args(argv)
    if args.warmup is None:
        args.warmup = args.drop_every + args.down_for + 10.0
    return args


@dataclass
class Children:
    serve: subprocess.Popen
    sim: subprocess.Popen


def start_children(args: argparse.Namespace, work: Path, obs: Observations, stop_tail: threading.Event,
                   started: list[subprocess.Popen]) -> Children:
    """serve (waits for /health), then the simulator in soak mode; readers for its view and the JSONL.
    Each child is appended to `started` as soon as it exists, so the caller can always stop it."""
    results_path, serve_log, sim_log, sim_view = (work / n for n in ("results.jsonl", "serve.log", "sim.log", "sim-view.log"))
    results_path.unlink(missing_ok=True)
    key = "soak-" + secrets.token_hex(8)
    port, sim_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MENTRAOS_API_KEY": key, "PACKAGE_NAME": PKG, "PORT": str(port),
           "WEBHOOK_HOST": "127.0.0.1", "INGEST_HOST": "127.0.0.1", "MENTRAOS_WS_ALLOWLIST": "127.0.0.1,localhost",
           "PYTHONUNBUFFERED": "1", "DATA_DIR": str(work / "data"),  # serve's sightings stay in the workdir
           # its own ingest port (nginx's default 1935 may be another serve's: two soaks, or a soak beside a demo)
           "INGEST_PORT": os.environ.get("INGEST_PORT") or str(free_port(outside_ephemeral=True))}
    cli = [sys.executable, "-m", "detector_app.cli"]
    with serve_log.open("wb") as out:
        serve = subprocess.Popen(cli + ["serve", "--model", str(args.model), "--headless", "--feed-port", "0",
                                        "--protocol", args.protocol, "--out", str(results_path)],
                                 env=env, cwd=work, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 preexec_fn=die_with_parent)
    started.append(serve)
    wait_healthy(port, serve, args.startup_timeout)  # a first run may export/quantise the model
    sim_cmd = cli + ["simulate", "--app-url", f"http://127.0.0.1:{port}", "--video", str(args.video),
                     "--port", str(sim_port), "--package-name", PKG, "--api-key", key, "--generation", "D",
                     "--soak", "--drop-every", str(args.drop_every), "--down-for", str(args.down_for),
                     "--log-level", "WARNING"] + (["--soak-ws"] if args.soak_ws else [])
    with sim_log.open("wb") as err:
        sim = subprocess.Popen(sim_cmd, env=env, cwd=work, stdout=subprocess.PIPE, stderr=err,
                               stdin=subprocess.DEVNULL, text=True, bufsize=1, preexec_fn=die_with_parent)
    started.append(sim)
    threading.Thread(target=pump_simulator, args=(sim.stdout, obs, sim_view), daemon=True).start()
    threading.Thread(target=tail_results, args=(results_path, obs, stop_tail), daemon=True).start()
    return Children(serve, sim)


@dataclass
class Run:
    t0: float  # monotonic time of the first result: the soak clock starts here
    warm_from: float
    judged_until: float  # wall clock: drops after this happen during shutdown (counted, not judged)
    samples: list[ProcSample]


def soak_loop(args: argparse.Namespace, kids: Children, obs: Observations) -> Run:
    """Sample /proc every --sample-every s, print a line a minute and one per recovered drop."""
    deadline = time.monotonic() + 120
    while obs.first_result_at is None:  # session starts, stream comes up
        if time.monotonic() > deadline or kids.serve.poll() is not None or kids.sim.poll() is not None:
            raise RuntimeError("no detection result within 120 s of starting (see the logs in the work folder)")
        time.sleep(0.2)
    t0 = time.monotonic()
    warm_from, end = t0 + args.warmup, t0 + args.duration
    samples: list[ProcSample] = []
    next_print, last_printed = t0 + args.print_every, None
    told: set[int] = set()  # outages whose recovery was printed
    while True:
        now = time.monotonic()
        if kids.serve.poll() is not None:
            raise RuntimeError(f"serve exited with {kids.serve.returncode} during the soak")
        if now >= end and (not obs.open_outages() or now > end + args.down_for + 20):
            return Run(t0, warm_from, time.time(), samples)  # done, and not in the middle of a drop
        samples.append(read_proc(kids.serve.pid))
        s = samples[-1]
        with obs.lock:
            outages = list(enumerate(obs.outages))
            results = obs.results
        for i, o in outages:
            if i not in told and o.recovery_s is not None:
                told.add(i)
                n = sum(1 for _, x in outages[: i + 1] if x.kind == o.kind)
                what = "first result" if o.kind == "stream" else "app acked again"
                down = f"down {o.back_at - o.down_at:.1f} s, " if o.kind == "stream" and o.back_at else ""
                print(f"[soak {fmt_clock(now - t0)}] {o.kind} drop {n}: {down}{what} after {o.recovery_s:.2f} s",
                      flush=True)
        if now >= next_print:
            prev = last_printed or samples[0]
            cpu = (s.cpu_s - prev.cpu_s) / max(1e-9, s.t - prev.t)
            drops = [o for _, o in outages if o.kind == "stream"]
            print(f"[soak {fmt_clock(now - t0)}] rss {s.rss_mb:6.1f} MB  threads {s.threads:3d}  fds {s.fds:4d}  "
                  f"cpu {100 * cpu:4.0f}%  results {results}  stream drops {len(drops)}"
                  f"{'  (warm-up)' if now < warm_from else ''}", flush=True)
            last_printed, next_print = s, next_print + args.print_every
        time.sleep(min(args.sample_every, max(0.05, end - now)) if now < end else 0.2)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for need in (args.video, args.model):
        if not need.exists():
            print(f"soak: missing {need} (run scripts/setup.sh)", file=sys.stderr)
            return 2
    work = args.workdir or Path(tempfile.mkdtemp(prefix="detector-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    obs, stop_tail = Observations(), threading.Event()
    started: list[subprocess.Popen] = []
    serve_rc: int | None = None
    print(f"soak: {args.duration:.0f} s, stream drops every {args.drop_every:g} s for {args.down_for:g} s"
          f"{', app socket drops too' if args.soak_ws else ''}; {args.protocol}; warm-up {args.warmup:.0f} s; "
          f"files in {work}", flush=True)
    try:
        run = soak_loop(args, start_children(args, work, obs, stop_tail, started), obs)
    except RuntimeError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    finally:  # serve first (it stops its stream, as a user stopping the server would), then the cloud
        for i, proc in enumerate(started):
            rc = stop(proc, signal.SIGTERM if i == 0 else signal.SIGINT, 40 if i == 0 else 20)
            serve_rc = rc if i == 0 else serve_rc
        stop_tail.set()
        time.sleep(0.3)  # the reader threads take the simulator's last lines

    with obs.lock:
        outages = list(obs.outages)
    judged = [o for o in outages if o.down_at <= run.judged_until]
    targets = Targets(rss_mb_per_30min=args.rss_budget_mb, rss_floor_mb=args.rss_floor_mb,
                      recovery_p95_s=args.recovery_p95)
    verdict = judge(run.samples, run.warm_from, judged, log_errors(work / "serve.log"), serve_rc, targets)
    said = f" (the simulator counted {obs.sim_reported[0]} stream, {obs.sim_reported[1]} socket drops)" \
        if obs.sim_reported else ""
    each = [f"{o.recovery_s:.2f}" for o in judged if o.kind == "stream" and o.recovery_s is not None]
    print("── soak summary " + "─" * 44)
    print(f"run               {fmt_clock(run.samples[-1].t - run.t0) if run.samples else ' 0:00'} after the first "
          f"result; stream drops every {args.drop_every:g} s for {args.down_for:g} s"
          f"{' + app socket drops' if args.soak_ws else ''}; {args.protocol}; warm-up {args.warmup:.0f} s")
    print(f"results           {obs.results} detection results{said}")
    for line in verdict.lines:
        print(line)
    if each:
        print(f"stream recoveries {' '.join(each)} s (publisher back → first result, each drop)")
    print(f"result            {'PASS' if verdict.ok else 'FAIL'}")
    for f in verdict.failures:
        print(f"  missed: {f}")
    if args.json is not None:
        args.json.write_text(json.dumps({
            "ok": verdict.ok, "failures": verdict.failures, "summary": verdict.lines,
            "samples": [s.__dict__ for s in run.samples], "warm_from": run.warm_from, "t0": run.t0,
            "outages": [{**o.__dict__, "recovery_s": o.recovery_s, "judged": o in judged} for o in outages],
            "results": obs.results, "simulator_counted": obs.sim_reported, "serve_exit": serve_rc,
        }, indent=1))
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())
