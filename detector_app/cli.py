"""``detector-app``: the command line. Each command is a thin layer over a module that does the work.

Errors a user can cause (missing file or model, port in use, missing tool) are ``UserError``s: they
end with one clear line and exit code 2 (``main``); a run that worked exits 0.
"""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from loguru import logger

from detector_app import __version__
from detector_app.logs import setup_logging

app = typer.Typer(
    name="detector-app",
    help=(
        "See animals through Mentra Live smart glasses in real time.\n\n"
        "Quick start (offline, no glasses):  detector-app demo --headless\n\n"
        "Replay a recorded video through the real ingest:  detector-app replay VIDEO --model models/fixture-animals-yolo11n.pt\n\n"
        "Real glasses:  MENTRAOS_API_KEY=… PACKAGE_NAME=… detector-app serve  (or scripts/start_demo.sh)"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
models_app = typer.Typer(help="Prepare models: export to fast CPU runtimes ahead of time.", no_args_is_help=True)
app.add_typer(models_app, name="models")
sightings_app = typer.Typer(help="Sightings recorded by serve, replay and detect: list them, export them.",
                            no_args_is_help=True)
app.add_typer(sightings_app, name="sightings")


class Protocol(str, Enum):
    rtmp = "rtmp"
    srt = "srt"
    whip = "whip"


class ServeProtocol(str, Enum):
    """How serve (and bench) gets the glasses' video: pushed to our ingest, or (managed) pulled from the
    cloud's relay."""

    rtmp = "rtmp"
    srt = "srt"
    whip = "whip"
    managed = "managed"


class CloudProtocol(str, Enum):
    v2 = "v2"
    v3 = "v3"


class Backend(str, Enum):
    auto = "auto"
    pytorch = "pytorch"
    onnx = "onnx"
    openvino = "openvino"
    tensorrt = "tensorrt"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    int8 = "int8"


# -- shared options -----------------------------------------------------------------------------
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model", "-m", envvar="DETECTOR_MODEL",
        help="Ultralytics model: a name (yolo11n.pt, downloaded where internet exists), a path, or an export "
        "(.onnx, *_openvino_model/). Default: yolo11n.pt, or the bundled test model when offline.",
    ),
]
ConfOpt = Annotated[float, typer.Option("--conf", min=1e-6, max=1.0, help="Confidence threshold (random-weight architecture models need ~1e-4).")]
ImgszOpt = Annotated[int | None, typer.Option("--imgsz", min=32, help="Network input long side (default: the model's).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:0, …")]
ClassesOpt = Annotated[
    str | None,
    typer.Option("--classes", help="Comma-separated class names to report (default: animals; 'all' = everything)."),
]
BackendOpt = Annotated[Backend, typer.Option("--backend", help="Inference runtime; auto = fastest for the device.")]
PrecisionOpt = Annotated[
    Precision,
    typer.Option("--precision", help="Weights: int8 (OpenVINO, NNCF), fp32, or auto = int8 where it passed the "
                 "accuracy check against fp32 on a held-out fixture, else fp32."),
]
InferenceUrlOpt = Annotated[
    str | None,
    typer.Option("--inference-url", envvar="INFERENCE_URL",
                 help="Run the network on a Triton server: http://HOST:8000/MODEL or grpc://HOST:8001/MODEL "
                 "(detector-app inference-server prints it); pre/post-processing stay here. --model is then unused."),
]
FpsOpt = Annotated[float, typer.Option("--fps", min=0.1, max=60, help="Inferences per second (sampling rate).")]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Write one JSON line per inference to this file.")]
HeadlessOpt = Annotated[bool, typer.Option("--headless", help="No OpenCV window.")]
FeedPortOpt = Annotated[int, typer.Option("--feed-port", help="WebSocket detection feed port (0 = off).", envvar="FEED_PORT")]
LogOpt = Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING…", envvar="LOG_LEVEL")]
WebPortOpt = Annotated[
    int, typer.Option("--web-port", envvar="WEB_PORT", help="Live web viewer port, e.g. 8080 (0 = off): the stream with its "
                      "boxes, health and sightings in a browser."),
]
WebHostOpt = Annotated[
    str, typer.Option("--web-host", envvar="WEB_HOST", help="Viewer address; anything but loopback needs the access token "
                      "(WEB_TOKEN, or a random one printed at start)."),
]
SightingsOpt = Annotated[
    bool | None,
    typer.Option("--sightings/--no-sightings", help="Record sightings (one per tracked animal: row, thumbnail, clip) in "
                 "the sightings database. Default: on for serve, off for replay/detect unless --sightings-db is given."),
]
SightingsDbOpt = Annotated[
    Path | None,
    typer.Option("--sightings-db", envvar="SIGHTINGS_DB", help="The sightings database (SQLite; thumbnails and clips "
                 "in DB-media/ beside it). Default: DATA_DIR/sightings.db."),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", envvar="DATA_DIR", help="Where sightings live (default $XDG_DATA_HOME/detector-app, "
                 "i.e. ~/.local/share/detector-app)."),
]
KeepDaysOpt = Annotated[
    float, typer.Option("--keep-days", envvar="SIGHTINGS_KEEP_DAYS", min=0.0,
                        help="Delete sightings older than this (0 = no age limit)."),
]
KeepMbOpt = Annotated[
    float, typer.Option("--keep-mb", envvar="SIGHTINGS_MAX_MB", min=0.0,
                        help="Delete the oldest sightings while thumbnails + clips exceed this many MB (0 = no size limit)."),
]
CounterOpt = Annotated[
    bool, typer.Option("--frame-counter", help="Read the fixture videos' frame counter into each result (extra.frame_id).")
]
TrackOpt = Annotated[
    bool, typer.Option("--track/--no-track", help="Track animals across frames (ByteTrack): every detection gets a "
                       "track_id, the glasses count and announce unique animals. --no-track: each frame stands alone."),
]


def _probe(enabled: bool):
    if not enabled:
        return None
    from detector_app.fixtures.scene import frame_counter_probe

    return frame_counter_probe


def _fail(message: str, code: int = 2) -> typer.Exit:
    logger.error(message)
    return typer.Exit(code)


def _detector(model, conf, imgsz, device, classes, backend, frame_size=None, precision=Precision.auto, streams=1,
              inference_url=None):
    from detector_app.detection.detector import DEFAULT_MODEL, Detector, DetectorConfig
    from detector_app.errors import UserError

    cfg = DetectorConfig(
        model=model or DEFAULT_MODEL, conf=conf, imgsz=imgsz, device=device, classes=classes,
        backend=backend.value, precision=precision.value, fallback_to_fixture=model is None,
        inference_url=inference_url,
    )
    try:
        det = Detector(cfg, frame_size=frame_size)
        det.warmup(frame_size or (1280, 720), streams=streams)
        return det
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. --device cuda without a GPU: one line, not a traceback
        raise _fail(f"cannot run model {cfg.model} on device {device}: {type(exc).__name__}: {exc}") from None


def _sinks(out: Path | None, feed_port: int, info: dict):
    """JSONL and WebSocket feed sinks; returns (sinks, closers)."""
    sinks, closers = [], []
    if out is not None:
        from detector_app.outputs.jsonl import JsonlWriter

        writer = JsonlWriter(out, append=False)  # a bad path is a JsonlError (UserError)
        sinks.append(writer.write)
        closers.append(writer.close)
    if feed_port:
        from detector_app.outputs.feed import DetectionFeed, FeedError

        # Loopback by default: the feed is unauthenticated. FEED_HOST=0.0.0.0 shares it on the LAN.
        host = os.environ.get("FEED_HOST", "127.0.0.1")
        feed = DetectionFeed(host=host, port=feed_port, info=info)
        try:
            feed.start()
        except FeedError as exc:  # detection is still useful without the feed: keep going
            logger.warning("detection feed disabled: {}", exc)
        else:
            logger.info("detection feed: ws://{}:{} (one JSON message per inference)", host, feed.port)
            sinks.append(feed)
            closers.append(feed.stop)
    return sinks, closers


def _web_viewer(port: int, host: str, views, sightings=None):
    """The live web viewer (None when ``port`` is 0); started before the run, so a taken port ends the
    command here with one line (exit 2)."""
    if not port:
        return None
    from detector_app.web.server import WebConfig, WebViewer

    return WebViewer(WebConfig.from_env(host, port), views, sightings).start()


def _sightings(enabled: bool | None, db: Path | None, data_dir: Path | None, keep_days: float, keep_mb: float,
               default_on: bool):
    """The process's sightings (None when off); a bad path ends the command here with one line (exit 2)."""
    if enabled is False or (enabled is None and not default_on and db is None):
        return None
    from detector_app.sightings.recorder import Sightings, SightingsConfig, default_db

    path = db or (data_dir / "sightings.db" if data_dir else default_db())
    return Sightings(SightingsConfig(db=path, max_age_days=keep_days or None, max_mb=keep_mb or None))


def _run_and_report(run, closers, summary_json: Path | None, check=None) -> None:
    """Run a pipeline, always close the outputs, print the summary; exit 0 only if the run had no errors
    and ``check(summary)`` (``replay --expect``) found no failed expectation (else one line, exit 1)."""
    try:
        summary = run()
    finally:
        for close in closers:
            close()
    print(summary.to_text())
    if summary_json:
        summary_json.write_text(json.dumps(summary.to_json(), indent=2))
    if summary.errors:
        raise typer.Exit(1)
    failed = check(summary) if check is not None else None
    if failed:
        raise _fail(f"expectation failed: {failed}", code=1)
    raise typer.Exit(0)


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        print(__version__)
        raise typer.Exit(0)


# -- replay -------------------------------------------------------------------------------------
@app.command()
def replay(
    video: Annotated[Path, typer.Argument(help="Recorded video (any format ffmpeg reads; H.264 is sent as is).")],
    protocol: Annotated[Protocol, typer.Option("--protocol", "-p", help="How the virtual glasses push it.")] = Protocol.rtmp,
    model: ModelOpt = None,
    fps: FpsOpt = 10.0,
    out: OutOpt = None,
    headless: HeadlessOpt = False,
    conf: ConfOpt = 0.35,
    imgsz: ImgszOpt = None,
    device: DeviceOpt = "cpu",
    classes: ClassesOpt = None,
    backend: BackendOpt = Backend.auto,
    precision: PrecisionOpt = Precision.auto,
    inference_url: InferenceUrlOpt = None,
    ingest_port: Annotated[int, typer.Option("--ingest-port", help="Listener port (0 = any free port).")] = 0,
    feed_port: FeedPortOpt = 8765,
    web_port: WebPortOpt = 0,
    web_host: WebHostOpt = "127.0.0.1",
    summary_json: Annotated[Path | None, typer.Option("--summary-json", help="Also write the summary as JSON.")] = None,
    frame_counter: CounterOpt = False,
    track: TrackOpt = True,
    truth: Annotated[Path | None, typer.Option("--truth", help="Ground truth for --expect (MOT gt.txt, COCO JSON, fixture JSON).")] = None,
    truth_labels: Annotated[str | None, typer.Option("--truth-labels", help="MOT class ids to names: 1=cat,2=dog.")] = None,
    truth_label: Annotated[str | None, typer.Option("--truth-label", help="Every truth box is this class.")] = None,
    expect: Annotated[str | None, typer.Option("--expect", help="Exit 1 unless these hold, e.g. 'recall>=0.9,precision>=0.9' "
                                               "(needs --truth for recall, precision, box_recall, box_precision, iou, ap50, ap50_95; "
                                               "rate, detections without).")] = None,
    expect_labels: Annotated[str | None, typer.Option("--expect-labels", help="Exit 1 unless exactly these labels were detected (cat,dog).")] = None,
    expect_none: Annotated[bool, typer.Option("--expect-none", help="Exit 1 if anything was detected (distractor videos).")] = False,
    sightings: SightingsOpt = None,
    sightings_db: SightingsDbOpt = None,
    data_dir: DataDirOpt = None,
    keep_days: KeepDaysOpt = 30.0,
    keep_mb: KeepMbOpt = 2048.0,
    log_level: LogOpt = "INFO",
) -> None:
    """Push VIDEO into the real ingest exactly as Mentra Live would (a separate ffmpeg process, real
    time, RTMP/FLV or SRT/MPEG-TS), detect animals, and print a summary when the video ends.
    With --expect/--expect-labels/--expect-none it is a test: exit 1 with a one-line reason."""
    setup_logging(log_level)
    if not video.exists():
        raise _fail(f"video not found: {video}")
    from detector_app.commands.replay import replay as run_replay
    from detector_app.evaluation.expect import ReplayCheck
    from detector_app.video.probe import video_size

    check = ReplayCheck.build(video, conf, truth, truth_labels, truth_label, expect, expect_labels, expect_none)
    shown: list = []  # the replay's pipeline, for the web viewer
    recording = _sightings(sightings, sightings_db, data_dir, keep_days, keep_mb, default_on=False)
    viewer = _web_viewer(web_port, web_host, lambda: list(shown), recording.store if recording else None)
    det = _detector(model, conf, imgsz, device, classes, backend, video_size(video), precision, inference_url=inference_url)
    sinks, closers = _sinks(out, feed_port, {"model": det.description, "source": str(video)})
    if viewer is not None:
        closers.append(viewer.stop)
    if recording is not None:
        closers.append(recording.close)
    if check is not None:
        sinks.append(check.collect)
    _run_and_report(
        lambda: run_replay(video, det, protocol=protocol.value, fps=fps, sinks=sinks, headless=headless, track=track,
                           port=ingest_port, frame_probe=_probe(frame_counter),
                           on_ready=lambda pipeline, _url: shown.append(pipeline),
                           recorder=recording.recorder() if recording else None),
        closers, summary_json, check=check,
    )


# -- detect -------------------------------------------------------------------------------------
@app.command()
def detect(
    source: Annotated[str, typer.Argument(help="A video file, or a stream URL (rtmp://, srt://, rtsp://, http://…).")],
    model: ModelOpt = None,
    fps: FpsOpt = 10.0,
    out: OutOpt = None,
    headless: HeadlessOpt = False,
    conf: ConfOpt = 0.35,
    imgsz: ImgszOpt = None,
    device: DeviceOpt = "cpu",
    classes: ClassesOpt = None,
    backend: BackendOpt = Backend.auto,
    precision: PrecisionOpt = Precision.auto,
    inference_url: InferenceUrlOpt = None,
    realtime: Annotated[
        bool | None,
        typer.Option("--realtime/--no-realtime", help="Sample on the wall clock, dropping frames (default for URLs), "
                     "or on the video's own timestamps, every time the same (default for files)."),
    ] = None,
    feed_port: FeedPortOpt = 8765,
    web_port: WebPortOpt = 0,
    web_host: WebHostOpt = "127.0.0.1",
    summary_json: Annotated[Path | None, typer.Option("--summary-json", help="Also write the summary as JSON.")] = None,
    frame_counter: CounterOpt = False,
    track: TrackOpt = True,
    sightings: SightingsOpt = None,
    sightings_db: SightingsDbOpt = None,
    data_dir: DataDirOpt = None,
    keep_days: KeepDaysOpt = 30.0,
    keep_mb: KeepMbOpt = 2048.0,
    log_level: LogOpt = "INFO",
) -> None:
    """Run the same pipeline on a file or stream URL, without an ingest listener."""
    setup_logging(log_level)
    from detector_app.commands.replay import detect_source
    from detector_app.ingest.url import UrlSource

    src = UrlSource(source, live=realtime)
    from detector_app.video.probe import video_size

    size = None if src.is_url else video_size(Path(source))
    shown: list = []  # the pipeline, for the web viewer
    recording = _sightings(sightings, sightings_db, data_dir, keep_days, keep_mb, default_on=False)
    viewer = _web_viewer(web_port, web_host, lambda: list(shown), recording.store if recording else None)
    det = _detector(model, conf, imgsz, device, classes, backend, size, precision, inference_url=inference_url)
    sinks, closers = _sinks(out, feed_port, {"model": det.description, "source": src.name})
    if viewer is not None:
        closers.append(viewer.stop)
    if recording is not None:
        closers.append(recording.close)
    _run_and_report(
        lambda: detect_source(src, det, fps=fps, sinks=sinks, headless=headless, live=realtime, track=track,
                              frame_probe=_probe(frame_counter), on_start=shown.append,
                              recorder=recording.recorder() if recording else None),
        closers, summary_json,
    )


# -- eval (compare models) ---------------------------------------------------------------------
class Via(str, Enum):
    file = "file"
    rtmp = "rtmp"
    srt = "srt"


@app.command("eval")
def eval_(
    videos: Annotated[list[Path], typer.Argument(help="Recorded videos (one --truth each, in the same order).")],
    truth: Annotated[list[Path], typer.Option("--truth", "-t", help="Ground truth per video: MOT gt.txt, COCO JSON or fixture JSON.")],
    model: Annotated[list[str], typer.Option("--model", "-m", help="Model to compare (repeat): a name, .pt, export dir/file; "
                                             "MODEL@int8 for one variant.")],
    precision: Annotated[list[str] | None, typer.Option("--precision", help="Run every model at each of these (repeat): auto, fp32, int8.")] = None,
    via: Annotated[Via, typer.Option("--via", help="file: deterministic, the video's own timestamps; rtmp/srt: the real "
                                     "ingest in real time, as the glasses send.")] = Via.file,
    out_dir: Annotated[Path | None, typer.Option("--out-dir", help="Where eval.json, eval.md, PNGs and per-run detections go (default eval-results/<time>/).")] = None,
    conf: Annotated[float, typer.Option("--conf", min=1e-6, max=1.0, help="Operating threshold for precision/recall/IoU/presence "
                                        "(AP uses every box down to 0.01; random-weight models: 1e-4).")] = 0.35,
    truth_labels: Annotated[str | None, typer.Option("--truth-labels", help="MOT class ids to names: 1=cat,2=dog.")] = None,
    truth_label: Annotated[str | None, typer.Option("--truth-label", help="Every truth box is this class (MOT/COCO).")] = None,
    fps: FpsOpt = 10.0,
    imgsz: ImgszOpt = None,
    device: DeviceOpt = "cpu",
    classes: Annotated[str | None, typer.Option("--classes", help="Classes the models report (default: the truth's labels).")] = None,
    backend: BackendOpt = Backend.auto,
    frame_counter: CounterOpt = False,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write PR-curve and timeline PNGs.")] = True,
    log_level: LogOpt = "WARNING",
) -> None:
    """Compare models on recorded videos against ground truth: per class precision, recall, AP50,
    AP50–95 (pycocotools), median IoU and per-second presence; per model inference time, CPU, peak RSS,
    rate and size. Each model runs in its own process. Writes eval.md, eval.json and PNGs."""
    setup_logging(log_level)
    import time as _time

    from detector_app.evaluation.models import parse_models
    from detector_app.evaluation.runner import EvalConfig, run_eval
    from detector_app.evaluation.truth import parse_label_map

    cfg = EvalConfig(
        videos=list(videos), truths=list(truth), models=parse_models(list(model), precision),
        out_dir=out_dir or Path("eval-results") / _time.strftime("%Y%m%d-%H%M%S"), via=via.value, conf=conf, fps=fps,
        imgsz=imgsz, backend=backend.value, device=device, classes=classes,
        truth_labels=parse_label_map(truth_labels), truth_label=truth_label, frame_counter=frame_counter,
        progress=sys.stderr.isatty(),
    )
    results = run_eval(cfg)
    from detector_app.evaluation import report

    table, path = report.write(cfg, results)
    print(table)
    if plots:
        from detector_app.evaluation.plots import plot_all

        for png in plot_all(cfg, results):
            print(f"plot: {png}")
    print(f"eval.json: {path}")


# -- serve (the MentraOS miniapp) ----------------------------------------------------------------
@app.command()
def serve(
    port: Annotated[int | None, typer.Option("--port", help="Webhook server port (env PORT, default 3000).")] = None,
    protocol: Annotated[ServeProtocol | None, typer.Option("--protocol", "-p", help="Ingest protocol (env INGEST_PROTOCOL, default rtmp); managed: pull the cloud's managed stream (WebRTC, HLS fallback).")] = None,
    cloud_protocol: Annotated[CloudProtocol | None, typer.Option("--cloud-protocol", help="MentraOS wire protocol (env MENTRAOS_PROTOCOL, default v2): v3 = the 3.x SDK's (header identity, reconnect; newest cloud only).")] = None,
    ingest_host: Annotated[str | None, typer.Option("--ingest-host", help="Address the glasses push to (env INGEST_HOST; default: auto-detected LAN address).")] = None,
    ingest_port: Annotated[int | None, typer.Option("--ingest-port", help="Ingest port (env INGEST_PORT; nginx: the one port of every session, default 1935; embedded: the first, default a free port per session).")] = None,
    ingest: Annotated[str | None, typer.Option("--ingest", help="RTMP ingest (env INGEST): nginx (one nginx-rtmp, one port, publish hook) or embedded (a PyAV listener per session); default nginx where installed.")] = None,
    model: ModelOpt = None,
    fps: FpsOpt = 10.0,
    track: Annotated[bool | None, typer.Option("--track/--no-track", help="Track animals (env TRACK, default on): "
                                               "unique counts and one announcement per animal on the glasses.")] = None,
    conf: ConfOpt = 0.35,
    imgsz: ImgszOpt = None,
    device: DeviceOpt = "cpu",
    classes: ClassesOpt = None,
    backend: BackendOpt = Backend.auto,
    precision: PrecisionOpt = Precision.auto,
    inference_url: InferenceUrlOpt = None,
    out: OutOpt = None,
    feed_port: FeedPortOpt = 8765,
    web_port: Annotated[int | None, typer.Option("--web-port", help="Live web viewer port, e.g. 8080 (env WEB_PORT; 0 = off, the default): every wearer's stream, health and sightings.")] = None,
    web_host: Annotated[str | None, typer.Option("--web-host", help="Viewer address (env WEB_HOST, default 127.0.0.1); anything else needs the token (WEB_TOKEN, or printed).")] = None,
    headless: HeadlessOpt = False,
    sightings: Annotated[bool | None, typer.Option("--sightings/--no-sightings", help="Record sightings (env SIGHTINGS, default on).")] = None,
    sightings_db: Annotated[Path | None, typer.Option("--sightings-db", help="The sightings database (env SIGHTINGS_DB; default DATA_DIR/sightings.db).")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Where sightings live (env DATA_DIR; default ~/.local/share/detector-app).")] = None,
    keep_days: Annotated[float | None, typer.Option("--keep-days", min=0.0, help="Delete sightings older than this (env SIGHTINGS_KEEP_DAYS, default 30; 0 = no limit).")] = None,
    keep_mb: Annotated[float | None, typer.Option("--keep-mb", min=0.0, help="Thumbnails + clips above this many MB: the oldest go (env SIGHTINGS_MAX_MB, default 2048; 0 = no limit).")] = None,
    log_level: LogOpt = "INFO",
) -> None:
    """The MentraOS miniapp: answers the cloud's webhook, asks the glasses for an unmanaged stream to
    this machine, detects animals, and tells the wearer (text walls, or speech on Mentra Live).

    Needs MENTRAOS_API_KEY and PACKAGE_NAME (developer console). The API key is never printed."""
    setup_logging(log_level)
    from detector_app.mentra.app import run_serve
    from detector_app.mentra.config import MentraSettings

    overrides = {k: v for k, v in {
        "port": port, "ingest_protocol": protocol.value if protocol else None,
        "ingest_host": ingest_host, "ingest_port": ingest_port, "ingest": ingest, "web_port": web_port,
        "web_host": web_host, "sightings": sightings, "sightings_db": sightings_db, "data_dir": data_dir,
        "sightings_keep_days": keep_days, "sightings_max_mb": keep_mb,
    }.items() if v is not None}
    if cloud_protocol is not None:
        overrides["cloud_protocol"] = cloud_protocol.value
    try:
        settings = MentraSettings(**overrides)
    except Exception as exc:  # noqa: BLE001 - pydantic validation of env/flags
        raise _fail(f"invalid configuration: {exc}") from None
    if not settings.api_key.get_secret_value():
        raise _fail("MENTRAOS_API_KEY is not set (developer console → your app → API key)")
    if track is not None:  # the flag wins over env TRACK
        settings.track = track
    # Load the model and open the outputs first: a bad model or path ends here with a clear message,
    # before the webhook server announces itself (the cloud only calls it when a user starts the app).
    from detector_app.ingest.factory import choose_rtmp_ingest
    from detector_app.stream_service import DetectionService, IngestConfig

    mode, note = choose_rtmp_ingest(settings.ingest)
    if note:
        logger.info(note)
    ingest_port = settings.ingest_port if settings.ingest_port is not None else (1935 if mode == "nginx" else 0)
    det = _detector(model, conf, imgsz, device, classes, backend, precision=precision, streams=2,  # several wearers
                    inference_url=inference_url)
    service = DetectionService(det, IngestConfig(advertise_host=settings.ingest_host, port=ingest_port, fps=fps,
                                                 mode=mode, track=settings.track))  # type: ignore[arg-type]
    sinks, closers = _sinks(out, feed_port, {"model": det.description, "source": "glasses"})
    service.sinks.extend(sinks)
    service.sightings = _sightings(settings.sightings, settings.sightings_db, settings.data_dir,  # env or .env too
                                   settings.sightings_keep_days, settings.sightings_max_mb, default_on=True)
    if service.sightings is not None:
        closers.append(service.sightings.close)  # after service.close(): every stream's recorder has finished
    try:  # the miniapp's loop in a thread; the main thread shows the newest glasses stream (or waits)
        viewer = _web_viewer(settings.web_port, settings.web_host, service.views,  # a taken port: exit 2 here
                             service.sightings.store if service.sightings is not None else None)
        if viewer is not None:
            closers.insert(0, viewer.stop)
        if mode == "nginx" and settings.ingest_protocol == "rtmp":  # start it now: a taken port or a bad
            # nginx ends here with one line (exit 2); SRT, WHIP and managed streams never use it
            from detector_app.mentra.app import ingest_hook_url

            service.attach_hooks(ingest_hook_url(settings.host, settings.port))
            service.start_ingest()
        code = run_serve(settings, service=service, streams=None if headless else service.views)
    finally:
        service.close()
        for close in closers:
            close()
    raise typer.Exit(code)


# -- simulate / demo ----------------------------------------------------------------------------
@app.command()
def simulate(
    app_url: Annotated[str, typer.Option("--app-url", help="The miniapp's base URL (webhook = APP_URL/webhook).")] = "http://127.0.0.1:3000",
    video: Annotated[Path | None, typer.Option("--video", help="What the virtual glasses' camera sees.")] = None,
    generation: Annotated[str, typer.Option("--generation", help="Cloud generation: B (SDK 2.1.x cloud), D (newest, as 2.x SDKs see it) or V3 (newest, as 3.x SDKs see it: header identity, reconnect, managed streams).")] = "D",
    port: Annotated[int, typer.Option("--port", help="Simulator HTTP/WebSocket port.")] = 8002,
    package_name: Annotated[str, typer.Option("--package-name", envvar="PACKAGE_NAME")] = "com.example.detector",
    api_key: Annotated[str, typer.Option("--api-key", envvar="MENTRAOS_API_KEY", show_default=False)] = "sim-api-key",
    device: Annotated[str, typer.Option("--device", help="mentra_live (no display) or even_g1 (display).")] = "mentra_live",
    drop_ws_after: Annotated[float | None, typer.Option("--drop-ws-after", help="Fault: drop the app WebSocket after N s.")] = None,
    deny_camera: Annotated[bool, typer.Option("--deny-camera", help="Fault: reject streams with PERMISSION_DENIED.")] = False,
    no_wifi: Annotated[bool, typer.Option("--no-wifi", help="Fault: reject streams with WIFI_NOT_CONNECTED.")] = False,
    stream_drop_after: Annotated[float | None, typer.Option("--stream-drop-after", help="Fault: glasses stream drops after N s…")] = None,
    stream_restore_after: Annotated[float | None, typer.Option("--stream-restore-after", help="…and comes back after M s.")] = None,
    audio_error: Annotated[str | None, typer.Option("--audio-error", help="Fault: every audio request fails with this error.")] = None,
    soak: Annotated[bool, typer.Option("--soak", help="Soak: the glasses stream drops every --drop-every s and returns after --down-for s, over and over.")] = False,
    drop_every: Annotated[float, typer.Option("--drop-every", min=0.5, help="With --soak: seconds of streaming between drops.")] = 60.0,
    down_for: Annotated[float, typer.Option("--down-for", min=0.0, help="With --soak: seconds the stream stays down.")] = 3.0,
    soak_ws: Annotated[bool, typer.Option("--soak-ws", help="With --soak: also cut the app WebSocket (1006) --drop-every s after each connect.")] = False,
    log_level: LogOpt = "INFO",
) -> None:
    """A local MentraOS cloud + virtual Mentra Live glasses. Prints what the glasses show and say.
    Type `say stop stream`, `say what do you see`, `button`, `drop`, `stop`, `quit` on stdin."""
    setup_logging(log_level)
    from detector_app.mentra.simulator import Faults
    from detector_app.mentra.simulator.runner import run_simulate, soak_faults

    generation = generation.upper()
    if generation not in ("B", "D", "V3"):
        raise _fail("--generation must be B, D or V3")
    if soak and (stream_drop_after is not None or drop_ws_after is not None):
        raise _fail("--soak sets the drops itself: use --drop-every/--down-for/--soak-ws, not --stream-drop-after/--drop-ws-after")
    if soak:
        faults = soak_faults(drop_every, down_for, socket=soak_ws)
    else:
        faults = Faults(drop_ws_after_s=drop_ws_after, stream_drop_after_s=stream_drop_after,
                        stream_restore_after_s=stream_restore_after)
    faults.deny_camera, faults.no_wifi, faults.audio_error = deny_camera, no_wifi, audio_error
    code = run_simulate(
        app_url, package_name, api_key, video, generation,  # type: ignore[arg-type]
        port=port, device=device, faults=faults, interactive=sys.stdin.isatty(),  # type: ignore[arg-type]
    )
    raise typer.Exit(code)


@app.command()
def demo(
    headless: HeadlessOpt = False,
    protocol: Annotated[Protocol, typer.Option("--protocol", "-p")] = Protocol.rtmp,
    video: Annotated[Path | None, typer.Option("--video", help="Video for the virtual glasses (default: a fixture).")] = None,
    model: ModelOpt = None,
    duration: Annotated[float, typer.Option("--duration", help="Stop after N seconds (0 = until Ctrl-C).")] = 0.0,
    device_profile: Annotated[str, typer.Option("--glasses", help="mentra_live (speech) or even_g1 (display).")] = "mentra_live",
    web_port: WebPortOpt = 0,
    web_host: WebHostOpt = "127.0.0.1",
    sightings: SightingsOpt = None,
    sightings_db: SightingsDbOpt = None,
    data_dir: DataDirOpt = None,
    keep_days: KeepDaysOpt = 30.0,
    keep_mb: KeepMbOpt = 2048.0,
    log_level: LogOpt = "INFO",
) -> None:
    """Offline demo, no hardware, no internet: simulator + miniapp + ingest + detection. The window shows
    the video with boxes; the terminal shows the glasses' text walls and speech; --web-port 8080 shows
    the stream, its health and the sightings in a browser."""
    setup_logging(log_level)
    from detector_app.commands.demo import run_demo
    from detector_app.web.server import WebConfig

    recording = _sightings(sightings, sightings_db, data_dir, keep_days, keep_mb, default_on=True)
    try:
        code = run_demo(headless=headless, protocol=protocol.value, video=video, model=model, duration=duration,
                        glasses=device_profile, web=WebConfig.from_env(web_host, web_port) if web_port else None,
                        sightings=recording)
    finally:
        if recording is not None:
            recording.close()
    raise typer.Exit(code)


# -- bench --------------------------------------------------------------------------------------
@app.command()
def bench(
    duration: Annotated[float, typer.Option("--duration", min=2.0, help="Seconds of video to publish per side (≤ the video's length).")] = 60.0,
    protocol: Annotated[ServeProtocol, typer.Option(
        "--protocol", "-p", help="Our ingest; managed: we pull WHEP from a simulated cloud relay (the baseline always "
        "pulls RTMP from nginx).")] = ServeProtocol.rtmp,
    model: Annotated[str | None, typer.Option("--model", "-m", help="A .pt model (both sides). Default: the bundled fixture model.")] = None,
    video: Annotated[Path | None, typer.Option("--video", help="Recorded video with the frame-counter barcode (default: the bench_720p30 fixture).")] = None,
    backend: BackendOpt = Backend.auto,
    conf: Annotated[float, typer.Option("--conf", min=1e-6, max=1.0, help="Confidence threshold, both sides (random-weight models: 1e-4).")] = 0.35,
    imgsz: ImgszOpt = None,
    fps: FpsOpt = 10.0,
    out_dir: Annotated[Path | None, typer.Option("--out-dir", help="Where bench.json and latency.png go (default bench-results/<timestamp>/).")] = None,
    baseline: Annotated[bool, typer.Option("--baseline/--no-baseline", help="Also run Ultralytics' own streaming predict (one stream).")] = True,
    streams: Annotated[int, typer.Option("--streams", min=1, max=16, help="Concurrent publishers into N sessions of one process sharing one detector.")] = 1,
    precision: PrecisionOpt = Precision.auto,
    raw_calls: Annotated[int, typer.Option("--raw-calls", min=10, help="Bare-runtime calls timed for the floor row.")] = 100,
    inference_url: Annotated[
        str | None,
        typer.Option("--inference-url", help="Ours infers on this Triton server (http://HOST:PORT/MODEL or grpc://…); "
                     "the table adds the server's batch sizes."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON summary instead of the table.")] = False,
    log_level: LogOpt = "INFO",
) -> None:
    """Benchmark: replay a recorded 720p30 video in real time through the real ingest (--streams N copies
    at once), time the bare runtime on the same export, then run Ultralytics' own stream predict
    (nginx-rtmp), and print one table with PASS/MISS per target. With a random-weight model from
    scripts/make_arch_model.py use --conf 1e-4. Exit code 0 = all targets met, 3 = a target missed,
    2 = the benchmark could not run."""
    setup_logging(log_level)
    from detector_app.bench import bench_main

    if video is not None and not video.exists():
        raise _fail(f"video not found: {video}")
    raise typer.Exit(bench_main(
        duration=duration, protocol=protocol.value, model=model, video=video, backend=backend.value, conf=conf,
        imgsz=imgsz, fps=fps, out_dir=out_dir, baseline=baseline, log_level=log_level, as_json=as_json,
        streams=streams, precision=precision.value, raw_calls=raw_calls, inference_url=inference_url,
    ))


# -- fixtures / models ---------------------------------------------------------------------------
@app.command()
def fixtures(
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Where to write the videos and ground truth.")] = Path("data/fixtures"),
    names: Annotated[list[str] | None, typer.Argument(help="Fixture names (default: the standard set).")] = None,
    list_: Annotated[bool, typer.Option("--list", help="List the available fixtures.")] = False,
) -> None:
    """Compose the offline test videos (scikit-image photographs) with per-frame ground truth."""
    setup_logging("INFO")
    from detector_app.fixtures.video import CATALOGUE, DEFAULT_SET, ensure_fixtures

    if list_:
        for n, spec in CATALOGUE.items():
            print(f"{n:20s} {spec.width}x{spec.height}@{spec.fps} {spec.duration:.0f}s  bg={spec.background}")
        raise typer.Exit(0)
    wanted = tuple(names) if names else DEFAULT_SET
    unknown = [n for n in wanted if n not in CATALOGUE]
    if unknown:
        raise _fail(f"unknown fixture(s): {', '.join(unknown)} (see --list)")
    try:
        paths = ensure_fixtures(out_dir, wanted)
    except RuntimeError as exc:
        raise _fail(str(exc)) from None
    for n, p in paths.items():
        print(f"{n}: {p}")


@models_app.command("export")
def models_export(
    model: Annotated[str, typer.Argument(help="A .pt model (name or path), or an OpenVINO export to quantise.")],
    backend: Annotated[Backend, typer.Option("--backend", help="openvino or onnx (auto = best available).")] = Backend.auto,
    imgsz: ImgszOpt = None,
    frame_size: Annotated[str, typer.Option("--frame-size", help="Stream size WxH, sets the export's aspect.")] = "1280x720",
    device: DeviceOpt = "cpu",
    int8: Annotated[bool, typer.Option("--int8", help="Also quantise to INT8 with NNCF and print its accuracy.")] = False,
    calib: Annotated[
        list[Path] | None,
        typer.Option("--calib", help="Calibration video (repeatable; default: the bundled fixtures)."),
    ] = None,
    triton_repo: Annotated[
        Path | None,
        typer.Option("--triton-repo", help="Write a Triton model repository here instead (ONNX Runtime backend, "
                     "dynamic batching, class names as metadata): tritonserver --model-repository DIR."),
    ] = None,
) -> None:
    """Export a model once, ahead of time, into the cache the detector uses (models/cache)."""
    setup_logging("INFO")
    if triton_repo is not None:
        _export_triton_repo(model, triton_repo, imgsz, frame_size)
        return
    from detector_app.detection.detector import PROJECT_ROOT, locate_model
    from detector_app.detection.resolve import resolve_model, validate_int8
    from detector_app.errors import UserError

    try:
        w, h = (int(v) for v in frame_size.lower().split("x"))
    except ValueError:
        raise _fail("--frame-size must look like 1280x720") from None
    cache = PROJECT_ROOT / "models" / "cache"
    try:
        ref = locate_model(model)
        fp32 = resolve_model(ref, backend=backend.value, device=device, imgsz=imgsz, frame_size=(w, h),
                             cache_dir=cache, progress=True, precision="fp32" if int8 else "auto")
        print(f"{fp32.backend}: {fp32.path}  (imgsz {fp32.imgsz}; {fp32.note})")
        if not int8:
            return
        q = resolve_model(fp32.path, backend="auto", device=device, cache_dir=cache, progress=True, precision="int8",
                          calib=list(calib) if calib else None)
        print(f"{q.backend} int8: {q.path}")
    except UserError as exc:
        raise _fail(str(exc)) from None
    from detector_app.detection.int8 import Int8Report

    acc = validate_int8(Path(fp32.path), Path(q.path))
    print(Int8Report.from_json(acc).to_text() if "fp32" in acc else f"accuracy check not run: {acc.get('why')}")


def _frame_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise _fail("--frame-size must look like 1280x720") from None
    return w, h


def _names_brief(names: object) -> str:
    if not isinstance(names, dict) or not names:
        return "no class names in the export's metadata"
    shown = ", ".join(map(str, list(names.values())[:4]))
    return f"{len(names)} class names ({shown}{', …' if len(names) > 4 else ''})"


def _export_triton_repo(model: str, repo: Path, imgsz: int | None, frame_size: str) -> None:
    from detector_app.inference.prepare import prepare_model
    from detector_app.inference.repo import write_triton_repo

    prepared = prepare_model(model, imgsz=imgsz, frame_size=_frame_size(frame_size))
    model_dir = write_triton_repo(prepared, repo)
    print(f"triton: {model_dir}  (input {'x'.join(map(str, prepared.input_dims))}, "
          f"{'dynamic batching' if prepared.batched else 'no batch axis'}, {_names_brief(prepared.metadata.get('names'))})")
    print(f"serve:  tritonserver --model-repository {repo.resolve()}   then --inference-url http://HOST:8000/{prepared.name}")


# -- inference-server (Triton) --------------------------------------------------------------------
@app.command("inference-server")
def inference_server(
    model: ModelOpt = None,
    port: Annotated[int, typer.Option("--port", help="HTTP port; gRPC is PORT+1, metrics PORT+2 unless given.")] = 8000,
    grpc_port: Annotated[int | None, typer.Option("--grpc-port", help="gRPC port (default PORT+1).")] = None,
    metrics_port: Annotated[int | None, typer.Option("--metrics-port", help="Metrics port (default PORT+2).")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0: reachable by other machines).")] = "0.0.0.0",
    name: Annotated[str | None, typer.Option("--name", help="Model name in the URL (default: from the file name).")] = None,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, max=64, help="Largest batch the dynamic batcher forms.")] = 8,
    queue_delay_us: Annotated[int, typer.Option("--queue-delay-us", min=0, help="How long a request may wait for others to batch with.")] = 5000,
    instances: Annotated[int, typer.Option("--instances", min=1, max=16, help="Model instances (parallel executions).")] = 1,
    device: Annotated[str, typer.Option("--device", help="cpu, or cuda[:N] (onnxruntime-gpu in .venv-triton).")] = "cpu",
    imgsz: ImgszOpt = None,
    frame_size: Annotated[str, typer.Option("--frame-size", help="Stream size WxH, sets the export's aspect.")] = "1280x720",
    log_level: LogOpt = "INFO",
) -> None:
    """Serve a model with Triton Inference Server on this machine (PyTriton's bundled tritonserver, ONNX
    Runtime, dynamic batching) and print the exact --inference-url to pass to replay/detect/serve.
    Needs the Triton environment from scripts/setup.sh (.venv-triton). Ctrl-C stops it."""
    setup_logging(log_level)
    from detector_app.commands.inference_server import run_inference_server
    from detector_app.detection.detector import DEFAULT_MODEL, FIXTURE_MODEL, PROJECT_ROOT
    from detector_app.inference.server import ServerOptions, ServerPorts

    ref = model or (DEFAULT_MODEL if (PROJECT_ROOT / "models" / DEFAULT_MODEL).exists() else str(FIXTURE_MODEL))
    raise typer.Exit(run_inference_server(
        ref, ServerPorts.from_http(port, grpc_port, metrics_port),
        ServerOptions(host=host, max_batch=max_batch, queue_delay_us=queue_delay_us, instances=instances, device=device),
        imgsz=imgsz, frame_size=_frame_size(frame_size), name=name,
    ))


# -- sightings -------------------------------------------------------------------------------------
StreamOpt = Annotated[str | None, typer.Option(
    "--stream", help="Only streams whose name contains this (serve names each by its wearer: --stream alice@example.com).")]


def _sightings_db(db: Path | None, data_dir: Path | None) -> Path:
    from detector_app.sightings.recorder import default_db

    return db or (data_dir / "sightings.db" if data_dir else default_db())


@sightings_app.command("list")
def sightings_list(
    db: Annotated[Path | None, typer.Option("--db", envvar="SIGHTINGS_DB", help="The sightings database (default: DATA_DIR/sightings.db).")] = None,
    data_dir: DataDirOpt = None,
    since: Annotated[str | None, typer.Option("--since", help="Only sightings last seen after: 30m, 1h, 2d, or a date (2026-12-01[T08:30]).")] = None,
    label: Annotated[str | None, typer.Option("--label", help="Only this animal (cat, dog, …).")] = None,
    stream: StreamOpt = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many, newest first.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line instead of the table.")] = False,
) -> None:
    """Print the sightings, newest first: label, track, first seen, duration, best confidence, clip."""
    setup_logging("WARNING")
    from detector_app.commands import sightings as cmd

    store = cmd.open_store(_sightings_db(db, data_dir))
    try:
        rows = cmd.select(store, since, label, limit, stream)
    finally:
        store.close()
    print(cmd.as_json_lines(rows) if as_json else cmd.table(rows))


class ExportFormat(str, Enum):
    json = "json"
    csv = "csv"


@sightings_app.command("export")
def sightings_export(
    db: Annotated[Path | None, typer.Option("--db", envvar="SIGHTINGS_DB", help="The sightings database (default: DATA_DIR/sightings.db).")] = None,
    data_dir: DataDirOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="Directory to write (default sightings-export-<time>/).")] = None,
    fmt: Annotated[ExportFormat, typer.Option("--format", help="The index file: index.json or index.csv.")] = ExportFormat.json,
    since: Annotated[str | None, typer.Option("--since", help="Only sightings last seen after: 30m, 1h, 2d, or a date.")] = None,
    label: Annotated[str | None, typer.Option("--label", help="Only this animal.")] = None,
    stream: StreamOpt = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many, newest first.")] = 10_000,
) -> None:
    """Copy the sightings' thumbnails and clips into a directory, with an index naming them."""
    setup_logging("WARNING")
    import time as _time

    from detector_app.commands import sightings as cmd

    store = cmd.open_store(_sightings_db(db, data_dir))
    try:
        rows = cmd.select(store, since, label, limit, stream)
        index = cmd.export(store, rows, out or Path(f"sightings-export-{_time.strftime('%Y%m%d-%H%M%S')}"), fmt.value)
    finally:
        store.close()
    print(f"{len(rows)} sighting(s) exported: {index}")


def main() -> None:
    from detector_app.detection.tuning import prefer_passive_omp_wait

    prefer_passive_omp_wait()  # before torch loads: spinning OpenMP threads starve the decode thread on 2 cores
    from detector_app.errors import UserError

    try:
        app()
    except UserError as exc:  # something the user can fix: one line, no traceback
        logger.error(str(exc))
        sys.exit(2)


if __name__ == "__main__":
    main()
