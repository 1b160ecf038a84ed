"""What the main thread does during a run: the OpenCV window (or headless waiting), signals, and the
one runner for "an asyncio loop in a thread, the window on the main thread" (``serve``, ``demo``).

OpenCV windows must live on the main thread, so the miniapp's event loop runs beside it in one
daemon thread (``LoopThread``). Every path ends on the same conditions (source finished, a caller's
predicate, the window closed, Ctrl-C/SIGTERM) and every join is bounded.
"""

from __future__ import annotations

import asyncio
import enum
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from types import FrameType
from typing import Any, Protocol

from loguru import logger

from detector_app.detection.types import FrameResult
from detector_app.errors import UserError
from detector_app.stats import RunStats
from detector_app.video.health import StreamHealth


class RunEnd(str, enum.Enum):
    """Why the main thread's wait ended (the window's own reasons keep their names)."""

    FINISHED = "finished"  # the caller's condition: source ended, --duration, a stream replaced
    INTERRUPTED = "interrupted"  # Ctrl-C as KeyboardInterrupt (off the main thread)
    USER_QUIT = "user-quit"  # q / Esc in the window
    WINDOW_CLOSED = "window-closed"
    SIGNAL = "signal"  # SIGINT/SIGTERM caught by our handler
    LOOP_ENDED = "background loop ended"


_ENDED_BY_USER = frozenset({RunEnd.INTERRUPTED, RunEnd.USER_QUIT, RunEnd.WINDOW_CLOSED})


class LiveView(Protocol):
    """What the window shows of a running stream: a ``Pipeline`` or a ``StreamSession``."""

    @property
    def latest_result(self) -> FrameResult | None: ...

    @property
    def stats(self) -> RunStats: ...

    @property
    def model_description(self) -> str: ...

    @property
    def source_label(self) -> str:
        """What the stream is, for people (the ingest URL with its key redacted, a file name)."""

    def latest_frame(self) -> tuple[int, Any]:
        """(version, newest av.VideoFrame or None); the version changes with every new frame."""

    def health(self) -> StreamHealth: ...


def hud_lines(view: LiveView) -> list[str]:
    """The HUD text: O(1) per call (windowed rate, newest result, health snapshot)."""
    h = view.health()
    r = view.latest_result
    age = "-" if h.frame_age_ms is None else f"{h.frame_age_ms:.0f} ms"
    lines = [
        f"stream {h.width}x{h.height} {h.fps:.1f} fps {h.bitrate_kbps / 1000:.2f} Mb/s",
        f"detections {view.stats.recent_rate:.1f}/s  infer {r.inference_ms:.0f} ms" if r else "detections -",
        f"frame age {age}  latency {r.latency_ms:.0f} ms" if r else f"frame age {age}",
        f"model {view.model_description}",
    ]
    if not h.connected:
        lines.append("waiting for publisher…")
    return lines


def run_main_loop(view: LiveView, headless: bool, until: Callable[[], bool], title: str = "detector-app") -> RunEnd:
    """Block until ``until()`` is true, the window is closed, or Ctrl-C. Returns the reason."""
    if not headless:
        from detector_app.outputs.window import PreviewWindow, display_available, run_display_loop

        if not display_available():
            logger.warning("No display available (no $DISPLAY / GUI backend): running headless")
            headless = True
        else:
            try:
                reason = run_display_loop(
                    get_frame=view.latest_frame,
                    get_result=lambda: view.latest_result,
                    hud=lambda: hud_lines(view),
                    should_stop=until,
                    fps_hint=lambda: view.health().fps or 30.0,
                    window=PreviewWindow(title),
                )
                return RunEnd.FINISHED if reason == "stopped" else RunEnd(reason)  # "stopped": `until` ended it
            except KeyboardInterrupt:
                return RunEnd.INTERRUPTED
    return wait_until(until)


def wait_until(until: Callable[[], bool]) -> RunEnd:
    """Headless: poll ``until`` (20×/s); FINISHED, or INTERRUPTED on Ctrl-C."""
    try:
        while not until():
            time.sleep(0.05)
        return RunEnd.FINISHED
    except KeyboardInterrupt:
        return RunEnd.INTERRUPTED


def follow_streams(streams: Callable[[], Sequence[LiveView]], headless: bool, should_stop: Callable[[], bool],
                   title: str = "detector-app") -> RunEnd:
    """Show the newest of ``streams()`` (open streams, oldest first); follow it when a session's stream
    is replaced (reconnect, rebuilt ingest, another user)."""
    while not should_stop():
        current = list(streams())
        if not current:
            time.sleep(0.05)
            continue
        view = current[-1]

        def until(view: LiveView = view) -> bool:
            return should_stop() or list(streams())[-1:] != [view]

        reason = run_main_loop(view, headless, until, title=title)
        if reason in _ENDED_BY_USER:
            return reason
    return RunEnd.FINISHED


class LoopThread:
    """``main(stop)`` on its own asyncio loop in a daemon thread; ``request_stop`` sets ``stop`` from
    any thread. ``code`` is what ``main`` returned (1 if it crashed)."""

    def __init__(self, main: Callable[[asyncio.Event], Awaitable[int]], name: str = "miniapp-loop") -> None:
        self._main = main
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.code: int | None = None
        self.finished = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> LoopThread:
        self.thread.start()
        return self

    def request_stop(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # the loop closed meanwhile
                pass

    def _run(self) -> None:
        try:
            self.code = asyncio.run(self._amain())
        except UserError as exc:  # e.g. the webhook port is taken: one line, exit 2
            logger.error(str(exc))
            self.code = 2
        except Exception as exc:  # noqa: BLE001 - reported; the caller exits 1
            logger.opt(exception=exc).error("{}: event loop crashed", self.thread.name)
            self.code = 1
        finally:
            self.finished.set()

    async def _amain(self) -> int:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        return await self._main(self._stop)


def run_with_window(
    main: Callable[[asyncio.Event], Awaitable[int]],
    streams: Callable[[], Sequence[LiveView]] | None,
    *,
    title: str,
    until: Callable[[], bool] = lambda: False,
    shutdown_s: float = 20.0,
) -> tuple[int, RunEnd]:
    """Run ``main(stop)`` on a ``LoopThread`` while the main thread shows the newest of ``streams()``
    (None: headless, just wait). Ends on SIGINT/SIGTERM, the window closed, ``until()``, or ``main``
    returning; then ``stop`` is set and the loop thread gets ``shutdown_s`` to finish.
    Returns (exit code, why it ended)."""
    stop = threading.Event()
    previous = install_signal_handlers(stop)
    side = LoopThread(main).start()

    def should_stop() -> bool:
        return stop.is_set() or side.finished.is_set() or until()

    reason = RunEnd.FINISHED
    try:
        if streams is None:
            reason = wait_until(should_stop)
        else:
            reason = follow_streams(streams, False, should_stop, title=title)
        if reason not in _ENDED_BY_USER:
            reason = RunEnd.SIGNAL if stop.is_set() else RunEnd.LOOP_ENDED if side.finished.is_set() else RunEnd.FINISHED
    except KeyboardInterrupt:
        reason = RunEnd.INTERRUPTED
    finally:
        side.request_stop()
        join_bounded(side.thread, shutdown_s)
        restore_signal_handlers(previous)
    if side.thread.is_alive():
        logger.error("{} did not stop within {:.0f} s", side.thread.name, shutdown_s)
        return 1, reason
    return (1 if side.code is None else side.code), reason


def join_bounded(thread: threading.Thread, timeout: float) -> None:
    """Join, but let a second Ctrl-C through only as a warning: the shutdown is bounded anyway."""
    deadline = time.monotonic() + timeout
    while thread.is_alive() and time.monotonic() < deadline:
        try:
            thread.join(min(0.5, max(0.0, deadline - time.monotonic())))
        except KeyboardInterrupt:
            logger.warning("still stopping (bounded by timeouts)…")


def install_signal_handlers(stop: threading.Event) -> dict[int, Any]:
    """SIGINT/SIGTERM set ``stop`` (no exception in the middle of OpenCV or a join); only possible
    on the main thread — elsewhere Ctrl-C stays a KeyboardInterrupt, which is handled too."""
    previous: dict[int, Any] = {}
    if threading.current_thread() is not threading.main_thread():
        return previous

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            logger.warning("{} again: still stopping (bounded by timeouts)", signal.Signals(signum).name)
        else:
            logger.info("{} received", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    return previous


def restore_signal_handlers(previous: dict[int, Any]) -> None:
    for sig, h in previous.items():
        signal.signal(sig, h)
