"""Orchestrate one benchmark: ours, the cost floor, then the Ultralytics baseline, on the same recorded video.

Per side, separate processes, so each number belongs to exactly one of them:

    publisher ×N (python -m detector_app.bench.publisher) ──RTMP/SRT──▶ worker (python -m detector_app.bench.worker)
       each logs the send time of every video frame                   ours: N listeners + N Pipelines, one Detector
                                                                       baseline: nginx-rtmp ◀─pull─ Ultralytics predict

The parent reads the worker's CPU time (``/proc/<pid>/stat`` utime+stime) right before the publishers
start and right after the last one finishes, and its peak RSS (``VmHWM``), then asks it to stop and write
its per-result records. Between ours and the baseline, two short children measure the floor
(``floor.py``): the bare runtime on the exact export ours loaded, and bare decoding of the video. Nothing
measured ever runs next to another measured thing (2 cores); ours goes first because the baseline uses
the same network input long side. The baseline is always one stream (Ultralytics' predict on N streams
would just run N × its single-stream cost on these 2 cores).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from loguru import logger

from detector_app.bench import report
from detector_app.bench.nginx import NginxRtmp
from detector_app.procs import stop_process

PROJECT_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 600.0  # first run may export the model to OpenVINO (seconds) on a busy box
STOP_TIMEOUT_S = 20.0
FLOOR_MAX_S = 20.0  # each floor child's measuring time cap
DECODE_FLOOR_VIDEO_S = 20.0  # seconds of video decoded to price decoding
GRACE_AFTER_PUBLISH_S = 1.0  # let the last frames' results arrive before stopping


class BenchError(RuntimeError):
    """The benchmark could not run (a worker or publisher failed); the message says which and why."""


@dataclass
class BenchConfig:
    video: Path
    model: str
    duration: float = 60.0
    protocol: str = "rtmp"
    backend: str = "auto"
    conf: float = 0.35
    imgsz: int | None = None
    fps: float = 10.0
    out_dir: Path = field(default_factory=lambda: Path("bench-results") / time.strftime("%Y%m%d-%H%M%S"))
    baseline: bool = True
    log_level: str = "INFO"
    streams: int = 1  # ours: concurrent publishers/sessions into one worker process
    precision: str = "auto"  # ours: auto | fp32 | int8 (DetectorConfig.precision)
    raw_calls: int = 100  # floor: bare runtime calls timed (capped at FLOOR_MAX_S)
    inference_url: str | None = None  # ours infers on this Triton server (DetectorConfig.inference_url)
    floor: bool = True


# --------------------------------------------------------------------------------------------- /proc
def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of ``pid`` (all its threads), in seconds."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; fields[0] is field 3 (state)
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # fields 14 and 15 of proc(5)


def machine_busy_seconds() -> float | None:
    """CPU seconds all cores spent busy since boot (``/proc/stat``: everything but idle and iowait)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    ticks = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def proc_vm_hwm_kb(pid: int) -> int | None:
    from detector_app.bench.worker import vm_hwm_kb

    return vm_hwm_kb(pid)


# ------------------------------------------------------------------------------------------- processes
def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("YOLO_VERBOSE", "False")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Worker:
    """A measured side: a child process speaking the BENCH_READY / stop / BENCH_DONE line protocol."""

    def __init__(self, name: str, args: list[str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - open for the worker's lifetime, closed in kill()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "detector_app.bench.worker", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, bufsize=1,
            cwd=PROJECT_ROOT, env=_child_env(), start_new_session=True,
        )
        self._lines: queue.Queue[tuple[str, dict]] = queue.Queue()
        threading.Thread(target=self._read, name=f"bench-{name}-stdout", daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("BENCH_"):
                tag, _, payload = line.partition(" ")
                try:
                    self._lines.put((tag, json.loads(payload or "{}")))
                except json.JSONDecodeError:
                    pass
            else:
                self._log.write(line)

    def wait_for(self, tag: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.name} worker: no {tag} within {timeout:.0f} s (log: {self.log_path})")
            try:
                got, payload = self._lines.get(timeout=min(0.5, left))
            except queue.Empty:
                if self.proc.poll() is not None:
                    raise BenchError(
                        f"{self.name} worker exited with code {self.proc.returncode} before {tag}: {self.tail()}"
                    ) from None
                continue
            if got == tag:
                return payload

    def tail(self, n: int = 3) -> str:
        self._log.flush()
        try:
            lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return " | ".join(lines[-n:]) + f" (log: {self.log_path})"

    def stop(self) -> dict:
        """Ask it to stop and write its records; bounded."""
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write("stop\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass
        done = self.wait_for("BENCH_DONE", STOP_TIMEOUT_S)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        return done

    def kill(self) -> None:
        """Make sure it (and anything it started, e.g. the SRT relay) is gone."""
        stop_process(self.proc, 3.0, group=True)
        self._log.close()


def _publish(video: Path, url: str, duration: float, sends_logs: list[Path], log_path: Path) -> tuple[subprocess.Popen, dict]:
    """Start the publisher and wait until it has loaded (imports, input opened) but not yet connected;
    returns it and what its PUBLISHER_READY line said (the managed relay: the URLs it serves)."""
    logs = [a for p in sends_logs for a in ("--log", str(p))]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "detector_app.bench.publisher", "--video", str(video), "--url", url,
             "--duration", f"{duration:.3f}", *logs, "--wait-go"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, cwd=PROJECT_ROOT,
            env=_child_env(), start_new_session=True,
        )
    assert proc.stdout is not None
    got: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: got.put(proc.stdout.readline()), daemon=True).start()
    try:
        line = got.get(timeout=30.0)
    except queue.Empty:
        line = ""
    tag, _, payload = line.partition(" ")
    if tag.strip() != "PUBLISHER_READY":
        _kill_group(proc)
        raise BenchError(f"publisher did not start (see {log_path})")
    try:
        return proc, json.loads(payload) if payload.strip() else {}
    except json.JSONDecodeError:
        _kill_group(proc)
        raise BenchError(f"publisher said something unreadable: {line.strip()[:200]} (see {log_path})") from None


def _go(proc: subprocess.Popen) -> None:
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    proc.stdin.close()


def _kill_group(proc: subprocess.Popen | None) -> None:
    if proc is not None:
        stop_process(proc, 3.0, group=True)


def _wait_player_connected(pid: int, port: int, timeout: float = 10.0) -> bool:
    """Wait until ``pid`` holds an ESTABLISHED TCP connection to ``port`` (the baseline's reader joined nginx)."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conns = psutil.Process(pid).net_connections(kind="tcp")
        except (psutil.Error, OSError):
            return False
        if any(c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED for c in conns):
            return True
        time.sleep(0.05)
    return False


# ------------------------------------------------------------------------------------------------ a side
def _side_paths(out_dir: Path, name: str, n: int, kind: str, ext: str) -> list[Path]:
    return [out_dir / (f"{kind}-{name}.{ext}" if n == 1 else f"{kind}-{name}-{i}.{ext}") for i in range(n)]


def run_side(name: str, worker_args: list[str], cfg: BenchConfig, publish_urls_of, before_publish=None) -> dict:
    """Start the worker, wait READY, publish to every URL it serves for ``cfg.duration`` (all publishers at
    once), measure, stop; returns raw records (``sends`` is one list of send-log lines per stream).

    A managed stream runs the other way round: the relay (the cloud's side) starts first and serves one
    WHEP URL per stream, the worker pulls them, and "go" starts the relay's video."""
    out_dir = cfg.out_dir
    raw_path = out_dir / f"{name}.json"
    publishers: list[subprocess.Popen] = []
    worker: Worker | None = None
    try:
        if name == "ours" and cfg.protocol == "managed":
            sends_paths = _side_paths(out_dir, name, cfg.streams, "sends", "jsonl")
            logs = [out_dir / f"relay-{name}.log"]
            relay, said = _publish(cfg.video, "managed", cfg.duration, sends_paths, logs[0])
            publishers.append(relay)
            pulls = [a for u in said.get("urls", []) for a in ("--playback-url", u)]
            worker = Worker(name, [*worker_args, *pulls, "--out", str(raw_path)], out_dir / f"worker-{name}.log")
            ready = worker.wait_for("BENCH_READY", READY_TIMEOUT_S)
        else:
            worker = Worker(name, [*worker_args, "--out", str(raw_path)], out_dir / f"worker-{name}.log")
            ready = worker.wait_for("BENCH_READY", READY_TIMEOUT_S)
            if before_publish is not None:
                before_publish(worker, ready)
            urls = publish_urls_of(ready)
            sends_paths = _side_paths(out_dir, name, len(urls), "sends", "jsonl")
            logs = _side_paths(out_dir, name, len(urls), "publisher", "log")
            for url, sp, lp in zip(urls, sends_paths, logs, strict=True):
                publishers.append(_publish(cfg.video, url, cfg.duration, [sp], lp)[0])
        logger.info("{}: worker ready (pid {}, {} imgsz {})", name, worker.proc.pid, ready.get("model"), ready.get("imgsz"))
        cpu0, t0, busy0 = proc_cpu_seconds(worker.proc.pid), time.time(), machine_busy_seconds()
        for pub in publishers:
            _go(pub)
        deadline = time.monotonic() + cfg.duration + 30.0
        rcs = []
        for pub in publishers:
            try:
                rcs.append(pub.wait(max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                raise BenchError(f"{name}: publisher did not finish within {cfg.duration + 30:.0f} s") from None
        cpu1, t1, busy1 = proc_cpu_seconds(worker.proc.pid), time.time(), machine_busy_seconds()
        for rc, lp in zip(rcs, logs, strict=True):
            if rc != 0:
                tail = lp.read_text(errors="replace").strip().splitlines()[-1:]
                raise BenchError(f"{name}: publisher failed (exit {rc}): {' '.join(tail)} (log: {lp})")
        time.sleep(GRACE_AFTER_PUBLISH_S)
        rss_kb = proc_vm_hwm_kb(worker.proc.pid)
        worker.stop()
        raw = json.loads(raw_path.read_text())
        raw["ready"] = ready
        cpu_s = (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else None
        raw["cpu_window"] = {"cpu_s": cpu_s, "wall_s": t1 - t0, "vm_hwm_kb": rss_kb,
                             # everything else on the machine meanwhile (publishers, nginx, other users' jobs)
                             "others_cpu_s": (busy1 - busy0 - (cpu_s or 0.0)) if busy0 is not None and busy1 is not None
                             else None}
        raw["sends"] = [[json.loads(ln) for ln in sp.read_text().splitlines() if ln.strip()] for sp in sends_paths]
        return raw
    finally:
        for pub in publishers:
            _kill_group(pub)
        if worker is not None:
            worker.kill()


# ----------------------------------------------------------------------------------------------- floor
def _run_floor(args: list[str], log_path: Path, timeout: float) -> dict:
    """One ``floor.py`` child; its ``FLOOR {json}`` answer, or ``{"error": …}`` (the floor is a reference, not fatal)."""
    with open(log_path, "w") as log:
        try:
            proc = subprocess.run([sys.executable, "-m", "detector_app.bench.floor", *args], stdout=subprocess.PIPE,
                                  stderr=log, text=True, cwd=PROJECT_ROOT, env=_child_env(), timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return {"error": f"no answer within {timeout:.0f} s (log: {log_path})"}
    for line in proc.stdout.splitlines():
        if line.startswith("FLOOR "):
            return json.loads(line[6:])
    tail = log_path.read_text(errors="replace").strip().splitlines()[-1:]
    return {"error": f"exit {proc.returncode}: {' '.join(tail)} (log: {log_path})"}


def measure_floor(cfg: BenchConfig, ours_raw: dict) -> dict:
    """The bare runtime on the export ours loaded (compiled as ours compiled it, with as many requests in
    parallel as ours ran for its streams), and bare decoding of the video."""
    from detector_app.bench.worker import pick_runtime_config

    ready = ours_raw.get("ready") or {}
    runtime = (ours_raw.get("facts") or {}).get("runtime") or ready.get("runtime") or {}
    export, kind = ready.get("export"), runtime.get("kind")
    out: dict = {}
    if export and kind in ("openvino", "onnx"):
        config, parallel = pick_runtime_config(runtime, cfg.streams)
        out["raw"] = _run_floor(
            ["raw", "--export", str(export), "--backend", kind, "--video", str(cfg.video), "--calls", str(cfg.raw_calls),
             "--parallel", str(parallel), "--max-seconds", str(FLOOR_MAX_S), "--config", json.dumps(config)],
            cfg.out_dir / "floor-raw.log", FLOOR_MAX_S + 60.0,
        )
    else:
        out["raw"] = {"error": f"no raw runtime found in ours ({ready.get('backend')!r}; only OpenVINO/ONNX exports)"}
    out["decode"] = _run_floor(["decode", "--video", str(cfg.video), "--seconds", str(DECODE_FLOOR_VIDEO_S)],
                               cfg.out_dir / "floor-decode.log", FLOOR_MAX_S + 60.0)
    for k, v in out.items():
        if v.get("error"):
            logger.warning("floor ({}): {}", k, v["error"])
    return out


# ------------------------------------------------------------------------------------- inference server
def server_batches(inference_url: str) -> dict:
    """The Triton server's counters for the model of ``inference_url`` (its HTTP statistics endpoint).

    For a ``grpc://`` URL the HTTP port is taken as the gRPC port − 1, as ``detector-app inference-server``
    lays them out (8000 HTTP, 8001 gRPC)."""
    from urllib.parse import urlsplit

    from detector_app.inference.server import read_batch_stats

    u = urlsplit(inference_url)
    port = (u.port or (8001 if u.scheme == "grpc" else 8000)) - (1 if u.scheme == "grpc" else 0)
    try:
        s = read_batch_stats(f"{u.hostname}:{port}", u.path.strip("/").split("/")[0])
    except (OSError, ValueError, KeyError) as exc:
        return {"error": f"server statistics unreadable at {u.hostname}:{port}: {exc}"}
    return {"inferences": s.inferences, "executions": s.executions}


def batch_delta(before: dict | None, after: dict) -> dict:
    """What the server did during our side: inferences, executions (batches) and the mean batch size."""
    if not before or "error" in before or "error" in after:
        return {"error": (after.get("error") or (before or {}).get("error") or "no statistics before the run")}
    inf, ex = after["inferences"] - before["inferences"], after["executions"] - before["executions"]
    return {"inferences": inf, "executions": ex, "mean_batch": round(inf / ex, 3) if ex else None}


# ----------------------------------------------------------------------------------------------- bench
def video_info(video: Path) -> tuple[float, tuple[int, int], float]:
    """(duration s, (width, height), fps) of a recorded video (PyAV probe; nothing listens in this process)."""
    import av

    with av.open(str(video)) as c:
        s = c.streams.video[0]
        dur = float(c.duration / 1e6) if c.duration else float(s.duration * s.time_base) if s.duration else 0.0
        fps = float(s.average_rate) if s.average_rate else 30.0
        return dur, (s.codec_context.width, s.codec_context.height), fps


def run_bench(cfg: BenchConfig) -> dict:
    """Run ours (and the baseline), write ``bench.json``, ``latency.png`` and ``table.md`` to ``cfg.out_dir``."""
    if not cfg.video.exists():
        raise BenchError(f"video not found: {cfg.video}")
    length, (w, h), vfps = video_info(cfg.video)
    if length and cfg.duration > length + 0.05:  # the publisher does not loop the video
        logger.warning("--duration {:.1f} s is longer than the video ({:.1f} s): clamped", cfg.duration, length)
        cfg.duration = length
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    common = ["--model", cfg.model, "--conf", str(cfg.conf), "--frame-size", f"{w}x{h}", "--log-level", cfg.log_level]
    ours_args = ["ours", *common, "--protocol", cfg.protocol, "--backend", cfg.backend, "--fps", str(cfg.fps),
                 "--streams", str(cfg.streams), "--precision", cfg.precision]
    if cfg.imgsz:
        ours_args += ["--imgsz", str(cfg.imgsz)]
    if cfg.inference_url:
        ours_args += ["--inference-url", cfg.inference_url]

    logger.info("bench: {} {:.0f} s of {} ({}x{} @ {:.0f} fps) × {} stream(s), model {}", cfg.protocol.upper(),
                cfg.duration, cfg.video.name, w, h, vfps, cfg.streams, cfg.model)
    batches0 = server_batches(cfg.inference_url) if cfg.inference_url else None
    ours_raw = run_side("ours", ours_args, cfg, lambda ready: ready["urls"])
    if cfg.inference_url:
        ours_raw["server_batches"] = batch_delta(batches0, server_batches(cfg.inference_url))
    floor = measure_floor(cfg, ours_raw) if cfg.floor else {}

    base_raw = None
    if cfg.baseline:
        long_side = cfg.imgsz or int(ours_raw["ready"]["long_side"])
        srv = NginxRtmp().start()
        try:
            url = srv.url("bench")
            base_args = ["baseline", *common, "--imgsz", str(long_side), "--url", url]

            def join_first(worker: Worker, ready: dict) -> None:
                # Ultralytics opens the stream inside predict(): wait until it is connected to nginx, so it
                # sees the stream from its first keyframe like our listener does (no GOP wait).
                if not _wait_player_connected(worker.proc.pid, srv.port):
                    logger.warning("baseline: the Ultralytics reader did not connect to nginx within 10 s")
                time.sleep(0.2)

            base_raw = run_side("baseline", base_args, cfg, lambda ready: [url], before_publish=join_first)
        finally:
            srv.stop()
    return finish(cfg, ours_raw, base_raw, floor, (w, h), vfps)


def _metrics(raw: dict, floor: dict | None = None, fps: float = 10.0) -> tuple[dict, list[report.Sends]]:
    sends = [report.Sends.parse(lines) for lines in raw["sends"]]
    cw = raw["cpu_window"]
    m = report.side_metrics(raw, sends, cw["cpu_s"], cw["wall_s"], cw["vm_hwm_kb"], floor=floor, fps=fps)
    if cw.get("others_cpu_s") is not None and cw["wall_s"]:
        m["others_cpu_cores"] = round(max(0.0, cw["others_cpu_s"]) / cw["wall_s"], 2)
    return m, sends


def finish(cfg: BenchConfig, ours_raw: dict, base_raw: dict | None, floor: dict, size: tuple[int, int], vfps: float) -> dict:
    ours, ours_sends = _metrics(ours_raw, floor if cfg.floor else None, cfg.fps)
    base = base_sends = None
    if base_raw is not None:
        base, base_sends = _metrics(base_raw)
    targets = report.targets_for(cfg.streams)
    verdicts = report.evaluate_targets(ours, base, cfg.streams)
    measured = {"baseline"} if base else set()
    if cfg.floor:
        measured.add("floor")
    rows = report.table_rows(ours, base, verdicts)
    srows = report.stream_rows(ours)
    ratios = {k: report.ratio(ours.get(k), base.get(k)) for k, _, _ in report.ROWS} if base else {}
    ready = ours_raw.get("ready") or {}
    summary = {
        "config": {
            "video": str(cfg.video), "video_size": list(size), "video_fps": vfps, "duration_s": cfg.duration,
            "protocol": cfg.protocol, "baseline_protocol": "rtmp (nginx-rtmp, Ultralytics pulls)" if base else None,
            "model": cfg.model, "backend": cfg.backend, "precision": cfg.precision, "conf": cfg.conf, "fps": cfg.fps,
            "streams": cfg.streams, "baseline_streams": 1 if base else 0, "cpu_count": os.cpu_count(),
            "export": ready.get("export"), "runtime": (ours_raw.get("facts") or {}).get("runtime") or ready.get("runtime"),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        "ours": ours,
        "baseline": base,
        "floor": floor,
        "ratios": {k: (round(v, 3) if v is not None else None) for k, v in ratios.items()},
        "targets": {k: {"target": targets[k].text, "pass": v} for k, v in verdicts.items()},
        "all_pass": report.all_pass(verdicts, targets, measured),
        "table": report.render_text(rows),
        "table_markdown": report.render_markdown(rows),
        "streams_table": report.render_text(srows, report.STREAM_HEADER) if srows else None,
        "streams_table_markdown": report.render_markdown(srows, report.STREAM_HEADER) if srows else None,
    }
    (cfg.out_dir / "bench.json").write_text(json.dumps(summary, indent=2))
    md = summary["table_markdown"] + ("\n\n" + summary["streams_table_markdown"] if srows else "")
    (cfg.out_dir / "table.md").write_text(md + "\n")
    sides: dict[str, tuple[list, float, list]] = {}
    series = report.plot_series(ours_raw, ours_sends)
    for i, (pts, t_ref, ages) in enumerate(series):
        sides["ours" if len(series) == 1 else f"ours #{i}"] = (pts, t_ref, ages)
    if base_raw is not None and base_sends:
        pts, t_ref, _ = report.plot_series(base_raw, base_sends)[0]
        sides["baseline"] = (pts, t_ref, [])
    streams = f" × {cfg.streams} streams" if cfg.streams > 1 else ""
    title = f"{Path(cfg.model).name}: {cfg.protocol.upper()} {size[0]}x{size[1]}@{vfps:.0f}{streams}, {cfg.duration:.0f} s"
    try:
        report.plot(cfg.out_dir / "latency.png", sides, title)
    except Exception as exc:  # noqa: BLE001 - a missing matplotlib must not lose the numbers
        logger.warning("could not draw latency.png: {}", exc)
    summary["out_dir"] = str(cfg.out_dir)
    return summary
