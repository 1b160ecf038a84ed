"""Sans-I/O state machine for one glasses session on the MentraOS app WebSocket.

``AppSession`` never touches a socket, a timer or the wall clock: the driver (``client.py``) feeds it
events — connection opened/closed, received messages, timer ticks, detection results, webhook stops —
and executes the returned ``actions`` (send, close, reconnect later, start/stop the pipeline, log).
That keeps every rule of the protocol reference testable without I/O:

* ``tpa_connection_init`` first on every (re)connection; after **every** ack a full
  ``subscription_update``; ``{"type":"ping"}`` every 15 s once acked (§3.5); ack timeout 5 s.
* Reconnect exactly like the SDK (§3.4, §3.7): none after 1000/1001/1008 or a reason containing
  "App stopped"/"User session ended"; otherwise up to 3 attempts after 1, 2, 4 s with the same init,
  then resubscribe and send ``stream_status_check`` to find a stream that survived.
* Stream control (§4): request an unmanaged stream to our ingest once the pipeline is up; statuses
  from direct messages and ``data_stream`` are de-duplicated; a ``stopped``/``timeout`` we did not
  ask for is a failure (the cloud maps glasses errors to ``stopped``) and is retried with bounded
  backoff; the stream is stopped **by streamId** on "stop stream", button, stop_request,
  ``app_stopped`` and shutdown. One gap remains: a shutdown while the cloud socket is down (between
  reconnect attempts) cannot send the stop; our ingest is closed then, so the glasses' publisher
  fails and the glasses give the stream up after their own reconnect attempts (up to 10, §8).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr

from detector_app.detection.types import FrameResult
from detector_app.mentra import messages as m
from detector_app.mentra.actions import (
    Action,
    Close,
    Log,
    PlaybackUrls,
    ScheduleReconnect,
    Send,
    SessionEnded,
    StartPipeline,
)
from detector_app.mentra.commands import Command, match_button, match_transcript
from detector_app.mentra.feedback import ClearDisplay, FeedbackEngine, Output, ShowText, Speak

NORMAL_CLOSE_CODES = frozenset({1000, 1001, 1008})
RECONNECT_FINAL_CODES = ("NOT_RUNNING", "BOOT_TIMEOUT")  # reconnect_rejected codes that end the session (v3 SDK)
NO_RECONNECT_REASONS = ("App stopped", "User session ended")
ACK_TIMEOUT_CLOSE = 4000  # our own close code when the ack does not come (reconnect follows)

_ERROR_HINTS = {
    "PERMISSION_DENIED": "add the CAMERA (and MICROPHONE) permission to the app in the developer console",
    "WIFI_NOT_CONNECTED": "the glasses must be connected to WiFi to stream",
    "INVALID_API_KEY": "check MENTRAOS_API_KEY and PACKAGE_NAME",
    "APP_NOT_STARTED": "the cloud did not start this app for the user (late or forged webhook?)",
}


class StreamPhase(str, enum.Enum):
    """Where our requested glasses stream is, as the cloud reports it (plus ``REQUESTED``: asked, no status yet)."""

    REQUESTED = "requested"
    INITIALIZING = "initializing"
    ACTIVE = "active"
    STOPPING = "stopping"
    STOPPED = "stopped"
    TIMEOUT = "timeout"


_STREAM_LIVE = (StreamPhase.REQUESTED, StreamPhase.INITIALIZING, StreamPhase.ACTIVE)
_STREAM_ENDED = (StreamPhase.STOPPED, StreamPhase.TIMEOUT)


class Phase(enum.Enum):
    IDLE = "idle"  # not connected yet
    AWAIT_ACK = "await_ack"  # init sent
    READY = "ready"  # acked and subscribed
    RECONNECT_WAIT = "reconnect_wait"
    STOPPING = "stopping"  # stream stop sent, waiting for the close
    ENDED = "ended"


@dataclass(frozen=True, slots=True)
class SessionConfig:
    package_name: str
    api_key: SecretStr
    subscriptions: tuple[str, ...] = ("transcription:en-US", "button_press", "rtmp_stream_status")
    ingest_protocol: str = "rtmp"  # "managed": no ingest of ours; the cloud relays and we pull its URLs
    cloud_protocol: str = "v2"  # "v3": header identity, v3 init, `reconnect` after a drop (docs/mentraos-3x.md)
    video: dict[str, Any] | None = None
    auto_start_stream: bool = True
    ping_interval_s: float = 15.0
    ack_timeout_s: float = 5.0
    reconnect_delays: tuple[float, ...] = (1.0, 2.0, 4.0)
    stream_retry_delays: tuple[float, ...] = (2.0, 4.0, 8.0, 8.0, 8.0)  # max tries = len
    stream_start_timeout_s: float = 10.0
    managed_start_timeout_s: float = 30.0  # the 3.x SDK's MANAGED_STREAM_TIMEOUT_MS (the cloud's relay is slow)
    stream_stable_s: float = 20.0  # an active stream this old resets the failure count
    status_check_timeout_s: float = 5.0
    stop_close_grace_s: float = 3.0
    # A dead ingest (relay exited, port lost) is rebuilt after these delays; detections reset the count.
    ingest_rebuild_delays: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0, 8.0)


class _Recent(dict):
    """Insertion-ordered map keeping only the newest ``limit`` keys: a session sees a new streamId per
    request (one per drop in the field), and old ones never come back, so this must not grow."""

    def __init__(self, limit: int = 16) -> None:
        super().__init__()
        self.limit = limit

    def __setitem__(self, key: str, value: object) -> None:
        self.pop(key, None)
        super().__setitem__(key, value)
        while len(self) > self.limit:
            del self[next(iter(self))]

    def add(self, key: str) -> None:
        self[key] = True


@dataclass(slots=True)
class _StreamState:
    publish_url: str | None = None
    want: bool = True
    stream_id: str | None = None
    status: StreamPhase | None = None  # None: no stream (never requested, or lost)
    requested_at: float = -math.inf
    active_since: float | None = None
    announced: _Recent = field(default_factory=_Recent)
    stop_ids: _Recent = field(default_factory=_Recent)  # streams we asked to stop (or superseded)
    stop_without_id: bool = False
    last_status: _Recent = field(default_factory=_Recent)  # de-dupe (streamId, status)
    failures: int = 0
    retry_at: float | None = None
    check_deadline: float | None = None




class AppSession:
    """One glasses session (one ``sessionId``) on one cloud WebSocket URL."""

    def __init__(
        self,
        config: SessionConfig,
        session_id: str,
        ws_url: str,
        *,
        clock: Callable[[], float],
        feedback: FeedbackEngine | None = None,
        user_id: str | None = None,
    ) -> None:
        self.config = config
        self.session_id = session_id
        self.ws_url = ws_url
        self.user_id = user_id
        self._clock = clock
        self.feedback = feedback or FeedbackEngine(clock)
        self.phase = Phase.IDLE
        self._stream = _StreamState(want=config.auto_start_stream)
        self._acks = 0
        self._ack_deadline = math.inf
        self._next_ping = math.inf
        self._close_deadline = math.inf
        self._reconnect_attempts = 0
        self._reconnect_on_close = False
        self._pipeline_requested = False
        self._last_error_code: str | None = None
        self._audio_seq = 0
        self._rebuilds = 0  # ingest rebuilds since detections last flowed
        self._rebuild_at: float | None = None
        self._playback: PlaybackUrls | None = None  # managed stream: the URLs the detection stream pulls

    # ----------------------------------------------------------------- introspection

    @property
    def stream_id(self) -> str | None:
        return self._stream.stream_id

    @property
    def stream_status(self) -> StreamPhase | None:
        return self._stream.status

    @property
    def connected(self) -> bool:
        return self.phase in (Phase.AWAIT_ACK, Phase.READY, Phase.STOPPING)

    @property
    def ended(self) -> bool:
        return self.phase is Phase.ENDED

    @property
    def last_error_code(self) -> str | None:
        return self._last_error_code

    @property
    def v3(self) -> bool:
        return self.config.cloud_protocol == "v3"

    @property
    def managed(self) -> bool:
        return self.config.ingest_protocol == "managed"

    def connect_headers(self) -> dict[str, str]:
        """Upgrade headers for the next WebSocket: v3 names the session by them; v2 sends none (§3.1)."""
        if not self.v3:
            return {}
        return m.v3_headers(self.config.package_name, self.session_id, self.user_id,
                            self.config.api_key.get_secret_value())

    # ----------------------------------------------------------------- connection events

    def connection_opened(self) -> list[Action]:
        """A WebSocket is open: init must be the first frame (same init on every reconnect)."""
        if self.phase is Phase.ENDED:
            return [Close(1000, "session ended")]
        now = self._clock()
        self.phase = Phase.AWAIT_ACK
        self._ack_deadline = now + self.config.ack_timeout_s
        self._next_ping = math.inf
        if self.v3 and self._acks:  # v3 resumes the session it had (§3.8); a refusal falls back to an init
            return [Send(m.reconnect(self.session_id)), Log("DEBUG", f"[{self.session_id}] sent reconnect")]
        return [Send(self._init()), Log("DEBUG", f"[{self.session_id}] sent tpa_connection_init")]

    def _init(self) -> dict[str, Any]:
        key = self.config.api_key.get_secret_value()
        if self.v3:
            return m.connection_init_v3(self.config.package_name, key)
        return m.connection_init(self.config.package_name, self.session_id, key)

    def connection_closed(self, code: int | None, reason: str = "") -> list[Action]:
        """The socket closed (or a connect attempt failed: pass 1006)."""
        if self.phase is Phase.ENDED:
            return []
        code = 1006 if code is None else code
        reason = reason or ""
        sid = self.session_id
        if self.phase is Phase.STOPPING:
            return self._end(f"closed after stop ({code})")
        abnormal_by_us = self._reconnect_on_close
        self._reconnect_on_close = False
        normal = code in NORMAL_CLOSE_CODES or any(r in reason for r in NO_RECONNECT_REASONS)
        if normal and not abnormal_by_us:
            level = "ERROR" if code == 1008 else "INFO"
            err = f", last error {self._last_error_code}" if self._last_error_code else ""
            return [Log(level, f"[{sid}] WebSocket closed {code} {reason!r}{err}; not reconnecting"),
                    *self._end(f"closed {code} {reason}".strip())]
        delays = self.config.reconnect_delays
        if self._reconnect_attempts >= len(delays):
            return [Log("ERROR", f"[{sid}] WebSocket closed {code} {reason!r}; gave up after "
                                 f"{len(delays)} reconnect attempts"),
                    *self._end("reconnect attempts exhausted")]
        delay = delays[self._reconnect_attempts]
        self._reconnect_attempts += 1
        self.phase = Phase.RECONNECT_WAIT
        return [Log("WARNING", f"[{sid}] WebSocket closed {code} {reason!r}; reconnect "
                               f"{self._reconnect_attempts}/{len(delays)} in {delay:g} s"),
                ScheduleReconnect(delay, self._reconnect_attempts)]

    # ----------------------------------------------------------------- messages

    def message_received(self, raw: Any) -> list[Action]:
        """One decoded JSON object from the cloud. Unknown types are ignored."""
        if self.phase is Phase.ENDED:
            return []
        msg = m.parse(raw)
        if msg is None:
            return []
        if isinstance(msg, m.ConnectionAck):
            if msg.reconnect and not self.v3:
                return [Log("WARNING", f"[{self.session_id}] reconnect_ack without our reconnect ignored")]
            return self._on_ack(msg)
        if isinstance(msg, m.ReconnectRejected):
            return self._on_reconnect_rejected(msg)
        if isinstance(msg, m.ReconnectDeferred):
            self._ack_deadline = self._clock() + msg.timeout_s
            return [Log("INFO", f"[{self.session_id}] reconnect deferred ({msg.code}); waiting up to {msg.timeout_s:g} s")]
        if isinstance(msg, m.ManagedStreamStatus):
            return self._on_managed_status(msg)
        if isinstance(msg, m.ConnectionError):
            self._last_error_code = msg.code
            hint = _ERROR_HINTS.get(msg.code)
            if self.v3 and msg.code == "SESSION_NOT_FOUND" and not self._acks:
                hint = ("MENTRAOS_PROTOCOL=v3 needs the newest cloud (it names the session by upgrade headers); "
                        "use v2 with this cloud")
            kind = "connection_error (legacy)" if msg.legacy else "tpa_connection_error"
            return [Log("ERROR", f"[{self.session_id}] MentraOS {kind} {msg.code}: {msg.message}"
                                 + (f" — {hint}" if hint else ""))]
        if isinstance(msg, m.CapabilitiesUpdate):
            self.feedback.has_display = msg.has_display
            return [Log("INFO", f"[{self.session_id}] capabilities: model={msg.model_name} "
                                f"hasDisplay={msg.has_display}")]
        if isinstance(msg, m.StreamStatus):
            return self._on_stream_status(msg)
        if isinstance(msg, m.StreamStatusCheckResponse):
            return self._on_status_check(msg)
        if isinstance(msg, m.Transcription):
            command = match_transcript(msg.text, msg.is_final)
            return self._on_command(command, f"voice {msg.text!r}") if command else []
        if isinstance(msg, m.ButtonPress):
            command = match_button(msg.press_type)
            return self._on_command(command, f"button {msg.press_type}") if command else []
        if isinstance(msg, m.AppStopped):
            acts: list[Action] = [Log("INFO", f"[{self.session_id}] app_stopped from cloud")]
            return acts + self._begin_stop(release=False)
        if isinstance(msg, m.PermissionError_):
            streams = ", ".join(f"{d.get('stream')}→{d.get('requiredPermission')}" for d in msg.details)
            return [Log("WARNING", f"[{self.session_id}] permission_error: {msg.message} {streams}".rstrip())]
        if isinstance(msg, m.AudioPlayResponse):
            if not msg.success:
                return [Log("WARNING", f"[{self.session_id}] audio {msg.request_id} failed: {msg.error}")]
            return []
        # Pong, DeviceStateUpdate: nothing to do.
        return []

    def _on_reconnect_rejected(self, r: m.ReconnectRejected) -> list[Action]:
        """Like the 3.x SDK: NOT_RUNNING / BOOT_TIMEOUT end the session; any other code means the cloud
        lost it, so a fresh init follows on the same socket."""
        self._last_error_code = r.code
        if r.code in RECONNECT_FINAL_CODES:
            return [Log("ERROR", f"[{self.session_id}] reconnect rejected {r.code}: {r.message}; ending"),
                    Close(1000, "Reconnect rejected"), *self._end(f"reconnect rejected {r.code}")]
        self._ack_deadline = self._clock() + self.config.ack_timeout_s
        return [Log("WARNING", f"[{self.session_id}] reconnect rejected {r.code}: {r.message}; sending a new init"),
                Send(self._init())]

    def _on_ack(self, ack: m.ConnectionAck) -> list[Action]:
        now = self._clock()
        first = self._acks == 0
        self._acks += 1
        self.phase = Phase.READY
        self._reconnect_attempts = 0
        self._ack_deadline = math.inf
        self._next_ping = now + self.config.ping_interval_s
        if ack.user_id and not self.user_id:
            self.user_id = ack.user_id
        if ack.capabilities is not None:
            self.feedback.has_display = ack.has_display
        model = (ack.capabilities or {}).get("modelName")
        acts: list[Action] = [
            Log("INFO", f"[{self.session_id}] connected (ack #{self._acks}, model={model}, "
                        f"hasDisplay={ack.has_display})"),
            Send(m.subscription_update(self.config.package_name, self.session_id, list(self.config.subscriptions))),
        ]
        if first:
            if not self._pipeline_requested and not self.managed:  # managed: the pipeline waits for the URLs
                self._pipeline_requested = True
                acts.append(StartPipeline(self.config.ingest_protocol))
        else:
            # Reconnected: a stream may have survived on the glasses (keep-alives ride the phone link).
            acts.append(Send(m.stream_status_check(self.config.package_name, self.session_id)))
            self._stream.check_deadline = now + self.config.status_check_timeout_s
        acts += self._maybe_start_stream()
        return acts

    # ----------------------------------------------------------------- pipeline

    def pipeline_ready(self, publish_url: str) -> list[Action]:
        """The ingest is listening at ``publish_url`` (fresh key): request the stream."""
        if self.phase is Phase.ENDED:
            return []
        self._stream.publish_url = publish_url
        return [Log("INFO", f"[{self.session_id}] ingest ready at {m.url_for_log(publish_url)}"),
                *self._maybe_start_stream()]

    def pipeline_failed(self, error: str) -> list[Action]:
        """Opening the ingest failed: the first time it is a setup problem (reported, not retried);
        while rebuilding a dead ingest it is retried with backoff."""
        if self.phase is Phase.ENDED:
            return []
        if self._rebuilds:
            return [Log("WARNING", f"[{self.session_id}] ingest rebuild failed: {error}"), *self._schedule_rebuild()]
        self._stream.want = False
        return [Log("ERROR", f"[{self.session_id}] could not start the ingest/detection pipeline: {error}"),
                *self._feedback(self.feedback.notice("Animal detection failed"))]

    def pipeline_lost(self, error: str) -> list[Action]:
        """The ingest died under the session (relay exited, port lost): rebuild it — a new listener
        with a new URL — and, once ``pipeline_ready`` reports it, request the stream to it again."""
        if self.phase is Phase.ENDED:
            return []
        st = self._stream
        st.publish_url = None
        st.retry_at = None
        if st.stream_id:
            st.stop_ids.add(st.stream_id)  # it streams into a dead listener: its late statuses are not news
            st.stream_id = None
        if st.status in _STREAM_LIVE:
            st.status = None
            st.active_since = None
        return [Log("WARNING", f"[{self.session_id}] ingest lost: {error}; rebuilding it"), *self._schedule_rebuild()]

    def _start_pipeline(self) -> StartPipeline:
        return StartPipeline(self.config.ingest_protocol, self._playback if self.managed else None)

    def _schedule_rebuild(self) -> list[Action]:
        delays = self.config.ingest_rebuild_delays
        if self._rebuilds >= len(delays):
            self._stream.want = False
            return [Log("ERROR", f"[{self.session_id}] ingest could not be rebuilt after {len(delays)} tries; giving up"),
                    *self._feedback(self.feedback.notice("Animal detection failed"))]
        delay = delays[self._rebuilds]
        self._rebuilds += 1
        if delay <= 0:
            return [self._start_pipeline()]
        self._rebuild_at = self._clock() + delay
        return [Log("INFO", f"[{self.session_id}] ingest rebuild {self._rebuilds}/{len(delays)} in {delay:g} s")]

    def inference_paused(self, why: str) -> list[Action]:
        """Remote inference is down: the stream goes on, the wearer is told once that detection paused."""
        if self.phase is Phase.ENDED:
            return []
        return [Log("WARNING", f"[{self.session_id}] detection paused: {why}"),
                *self._feedback(self.feedback.notice("Animal detection paused"))]

    def inference_resumed(self) -> list[Action]:
        if self.phase is Phase.ENDED:
            return []
        return [Log("INFO", f"[{self.session_id}] detection resumed"),
                *self._feedback(self.feedback.notice("Animal detection back on"))]

    def frame_result(self, result: FrameResult) -> list[Action]:
        if self.phase is Phase.ENDED:
            return []
        self._rebuilds = 0  # detections flow: the ingest works (again)
        return self._feedback(self.feedback.on_result(result))

    # ----------------------------------------------------------------- timers

    def tick(self) -> list[Action]:
        """Call often (≈4×/s): pings, ack/stop/status-check timeouts, stream retries, feedback timers."""
        now = self._clock()
        acts: list[Action] = []
        if self.phase is Phase.ENDED:
            return acts
        if self._rebuild_at is not None and now >= self._rebuild_at:
            self._rebuild_at = None
            acts.append(self._start_pipeline())
        if self.phase is Phase.AWAIT_ACK and now >= self._ack_deadline:
            self._ack_deadline = math.inf
            self._reconnect_on_close = True
            acts += [Log("WARNING", f"[{self.session_id}] no tpa_connection_ack within "
                                    f"{self.config.ack_timeout_s:g} s"),
                     Close(ACK_TIMEOUT_CLOSE, "ack timeout")]
        if self.phase is Phase.STOPPING and now >= self._close_deadline:
            self._close_deadline = math.inf
            acts.append(Close(1000, "App stopped"))
        if self.phase is Phase.READY:
            if now >= self._next_ping:
                self._next_ping = now + self.config.ping_interval_s
                acts.append(Send(m.ping()))
            acts += self._stream_timers(now)
            acts += self._feedback(self.feedback.tick())
        return acts

    def _stream_timers(self, now: float) -> list[Action]:
        st = self._stream
        acts: list[Action] = []
        if st.check_deadline is not None and now >= st.check_deadline:
            # SDK behaviour: no answer within 5 s means no stream (§4.6).
            st.check_deadline = None
            acts.append(Log("INFO", f"[{self.session_id}] no stream_status_check_response; assuming no stream"))
            acts += self._forget_lost_stream()
        limit = self.config.managed_start_timeout_s if self.managed else self.config.stream_start_timeout_s
        waiting = st.status is StreamPhase.REQUESTED or (self.managed and st.status is StreamPhase.INITIALIZING)
        if waiting and now - st.requested_at >= limit:
            st.status = None
            acts += self._stream_failed(now, f"no {'playback URLs' if self.managed else 'stream status'} "
                                             f"{limit:g} s after the request")
        if st.retry_at is not None and now >= st.retry_at:
            st.retry_at = None
            acts += self._maybe_start_stream()
        return acts

    # ----------------------------------------------------------------- stop / shutdown

    def stop(self, reason: str = "stop_request") -> list[Action]:
        """Webhook ``stop_request``: stop the stream now; the cloud then sends app_stopped and closes."""
        return [Log("INFO", f"[{self.session_id}] stop requested ({reason})"), *self._begin_stop(release=False)]

    def shutdown(self) -> list[Action]:
        """Our process is exiting (Ctrl-C/SIGTERM): stop the stream, release ownership, close."""
        acts = self._begin_stop(release=True)
        if self.phase is Phase.STOPPING:
            acts.append(Close(1000, "App shutting down"))
        return acts

    def _begin_stop(self, *, release: bool) -> list[Action]:
        if self.phase is Phase.ENDED:
            return []
        self._stream.want = False
        self._stream.retry_at = None
        if not self.connected:
            return self._end("stopped while disconnected")
        acts = self._stop_stream()
        if release:
            acts.append(Send(m.ownership_release(self.config.package_name, self.session_id, "clean_shutdown")))
        self.phase = Phase.STOPPING
        self._close_deadline = self._clock() + self.config.stop_close_grace_s
        return acts

    def _end(self, reason: str) -> list[Action]:
        """The driver closes the pipeline when it stops, after the last frames are sent."""
        self.phase = Phase.ENDED
        self._stream.want = False
        self._rebuild_at = None
        return [SessionEnded(reason, self._last_error_code)]

    # ----------------------------------------------------------------- stream control

    def _maybe_start_stream(self) -> list[Action]:
        st = self._stream
        if (
            st.want
            and self.phase is Phase.READY
            and (st.publish_url or self.managed)
            and st.status in (None, *_STREAM_ENDED)
            and st.retry_at is None
            and st.check_deadline is None
        ):
            return self._request_stream()
        return []

    def _request_stream(self) -> list[Action]:
        st = self._stream
        if self.managed:
            st.stream_id, st.status, st.requested_at = None, StreamPhase.REQUESTED, self._clock()
            msg = m.managed_stream_request(self.config.package_name, self.session_id, video=self.config.video)
            return [Log("INFO", f"[{self.session_id}] managed_stream_request"), Send(msg)]
        assert st.publish_url is not None
        if st.stream_id:
            # Retire the previous stream: a new unmanaged request pre-empts it (§4.2), and its late
            # statuses must never be mistaken for the new stream's.
            st.stop_ids.add(st.stream_id)
        st.stream_id = None
        st.status = StreamPhase.REQUESTED
        st.requested_at = self._clock()
        msg = m.stream_request(self.config.package_name, self.session_id, st.publish_url, video=self.config.video)
        return [Log("INFO", f"[{self.session_id}] {msg['type']} → {m.url_for_log(st.publish_url)}"), Send(msg)]

    def _stop_stream(self) -> list[Action]:
        st = self._stream
        if st.status not in (*_STREAM_LIVE, StreamPhase.STOPPING):
            return []
        if self.managed:  # one managed stream per user: the stop names none (SDK `managed_stream_stop`)
            if st.stream_id:
                st.stop_ids.add(st.stream_id)
            st.status = StreamPhase.STOPPING
            return [Log("INFO", f"[{self.session_id}] managed_stream_stop streamId={st.stream_id}"),
                    Send(m.managed_stream_stop(self.config.package_name, self.session_id))]
        legacy = st.publish_url is None or m.is_rtmp_url(st.publish_url)
        if st.stream_id:
            st.stop_ids.add(st.stream_id)
        else:
            st.stop_without_id = True  # stops all of this package's streams (§4.3)
        st.status = StreamPhase.STOPPING
        msg = m.stream_stop(self.config.package_name, self.session_id, st.stream_id, legacy=legacy)
        return [Log("INFO", f"[{self.session_id}] {msg['type']} streamId={st.stream_id}"), Send(msg)]

    def _on_stream_status(self, s: m.StreamStatus) -> list[Action]:
        st = self._stream
        sid = self.session_id
        stream_id = s.stream_id or st.stream_id
        if stream_id is None:
            return [Log("DEBUG", f"[{sid}] stream status {s.status} without streamId ignored")]
        if st.last_status.get(stream_id) == s.status:
            return []  # the same change via another path (stream_status / rtmp_stream_status / data_stream)
        st.last_status[stream_id] = s.status
        now = self._clock()
        if stream_id not in st.stop_ids and stream_id != st.stream_id:
            if st.status is StreamPhase.REQUESTED or st.stop_without_id:
                st.stream_id = stream_id  # first status of our request carries the id (§4.2)
                if st.stop_without_id:
                    st.stop_ids.add(stream_id)
            else:
                return [Log("DEBUG", f"[{sid}] status {s.status} for unknown stream {stream_id} ignored")]
        if stream_id in st.stop_ids:
            if s.status in ("stopped", "timeout"):
                if stream_id == st.stream_id:
                    st.status = StreamPhase(s.status)
                    st.active_since = None
                    st.stop_without_id = False
                return [Log("INFO", f"[{sid}] stream {stream_id} {s.status} (as requested)")]
            return []
        acts: list[Action] = []
        if s.status == "initializing":
            st.status = StreamPhase.INITIALIZING
            acts.append(Log("INFO", f"[{sid}] stream {stream_id} initializing"))
        elif s.status == "active":
            st.status = StreamPhase.ACTIVE
            st.active_since = now
            acts.append(Log("INFO", f"[{sid}] stream {stream_id} active"))
            if stream_id not in st.announced:
                st.announced.add(stream_id)
                acts += self._feedback(self.feedback.notice("Animal detection on"))
        elif s.status == "stopping":
            st.status = StreamPhase.STOPPING
        else:  # stopped / timeout we did not ask for: the glasses failed (errors arrive as "stopped", §4.4)
            st.status = StreamPhase(s.status)
            detail = f" ({s.error_details})" if s.error_details else ""
            acts += self._stream_failed(now, f"stream {stream_id} {s.status} without our request{detail}")
            st.active_since = None
        return acts

    def _on_managed_status(self, s: m.ManagedStreamStatus) -> list[Action]:
        """initializing/preparing → active (the pipeline pulls the playback URLs once they come) →
        stopped; an `error` or a `stopped` we did not ask for is a failure, retried like a direct stream."""
        st = self._stream
        sid = self.session_id
        if not self.managed:
            return [Log("DEBUG", f"[{sid}] managed_stream_status {s.status} ignored (not a managed session)")]
        if s.stream_id and s.stream_id in st.stop_ids:
            if s.status in ("stopped", "error") and s.stream_id == st.stream_id:
                st.status = StreamPhase.STOPPED
            return [Log("INFO", f"[{sid}] managed stream {s.stream_id} {s.status} (as requested)")] \
                if s.status in ("stopped", "error") else []
        if s.stream_id:
            st.stream_id = s.stream_id
        now = self._clock()
        if s.status in ("initializing", "preparing"):
            if st.status is StreamPhase.REQUESTED:
                st.status = StreamPhase.INITIALIZING
            return [Log("INFO", f"[{sid}] managed stream {s.stream_id} {s.status}")]
        if s.status == "active":
            acts: list[Action] = []
            if st.status is not StreamPhase.ACTIVE:
                st.status, st.active_since = StreamPhase.ACTIVE, now
            urls = PlaybackUrls(s.webrtc_url, s.hls_url) if (s.webrtc_url or s.hls_url) else None
            if urls is None:
                return [Log("INFO", f"[{sid}] managed stream {s.stream_id} active; waiting for its playback URLs")]
            if urls != self._playback:
                self._playback = urls
                self._pipeline_requested = True
                acts += [Log("INFO", f"[{sid}] managed stream {s.stream_id} active: pulling "
                                     f"{m.url_for_log(s.webrtc_url or s.hls_url or '')}"),
                         self._start_pipeline()]
                if s.stream_id and s.stream_id not in st.announced:
                    st.announced.add(s.stream_id)
                    acts += self._feedback(self.feedback.notice("Animal detection on"))
            return acts
        if s.status == "stopping":
            st.status = StreamPhase.STOPPING
            return []
        st.status = StreamPhase.STOPPED  # stopped / error without our request
        st.active_since = None
        self._playback = None
        return self._stream_failed(now, f"managed stream {s.stream_id} {s.status} without our request"
                                        f"{f' ({s.message})' if s.message else ''}")

    def _stream_failed(self, now: float, why: str) -> list[Action]:
        st = self._stream
        if st.active_since is not None and now - st.active_since >= self.config.stream_stable_s:
            st.failures = 0
        st.failures += 1
        delays = self.config.stream_retry_delays
        if not st.want:
            return [Log("WARNING", f"[{self.session_id}] {why}")]
        if st.failures > len(delays):
            st.want = False
            return [Log("ERROR", f"[{self.session_id}] {why}; giving up after {len(delays)} retries "
                                 "(glasses on WiFi? battery? camera busy?)"),
                    *self._feedback(self.feedback.notice("Stream failed"))]
        delay = delays[st.failures - 1]
        st.retry_at = now + delay
        return [Log("WARNING", f"[{self.session_id}] {why}; retry {st.failures}/{len(delays)} in {delay:g} s")]

    def _on_status_check(self, r: m.StreamStatusCheckResponse) -> list[Action]:
        st = self._stream
        st.check_deadline = None
        ours = r.has_active_stream and r.stream_id is not None and (
            r.stream_id == st.stream_id or (st.publish_url is not None and r.url == st.publish_url)
        ) and ((r.stream_type == "managed") == self.managed or r.stream_type is None)
        if ours:
            assert r.stream_id is not None
            st.stream_id = r.stream_id
            st.status = StreamPhase.INITIALIZING if r.status == "initializing" else StreamPhase.ACTIVE
            st.last_status[r.stream_id] = st.status.value
            if st.status is StreamPhase.ACTIVE and st.active_since is None:
                st.active_since = self._clock()
            acts: list[Action] = [Log("INFO", f"[{self.session_id}] stream {r.stream_id} survived the reconnect")]
            if not st.want:
                acts += self._stop_stream()
            return acts
        acts = []
        if r.has_active_stream:
            acts.append(Log("INFO", f"[{self.session_id}] an active stream {r.stream_id} is not ours; "
                                    "a new request will pre-empt it"))
        return acts + self._forget_lost_stream()

    def _forget_lost_stream(self) -> list[Action]:
        st = self._stream
        if st.status in _STREAM_LIVE:
            st.status = None  # lost while we were disconnected; not counted as a failure
            st.stream_id = None
            st.active_since = None
        return self._maybe_start_stream()

    # ----------------------------------------------------------------- commands & feedback

    def _on_command(self, command: Command, source: str) -> list[Action]:
        st = self._stream
        acts: list[Action] = [Log("INFO", f"[{self.session_id}] command {command.value} ({source})")]
        if command is Command.TOGGLE_STREAM:
            command = Command.STOP_STREAM if st.want else Command.START_STREAM
        if command is Command.STOP_STREAM:
            st.want = False
            st.retry_at = None
            acts += self._stop_stream()
            acts += self._feedback(self.feedback.notice("Stream stopped"))
        elif command is Command.START_STREAM:
            st.want = True
            st.failures = 0
            started = self._maybe_start_stream()
            if started:
                acts += started + self._feedback(self.feedback.notice("Starting stream"))
            elif st.publish_url is None:
                acts.append(Log("INFO", f"[{self.session_id}] stream will start once the ingest is ready"))
        elif command is Command.WHAT_DO_YOU_SEE:
            acts += self._feedback(self.feedback.answer_query())
        return acts

    def _feedback(self, outputs: list[Output]) -> list[Action]:
        """Feedback outputs → display_event / audio_play_request (dropped unless acked)."""
        if self.phase is not Phase.READY:
            return []
        pkg = self.config.package_name
        acts: list[Action] = []
        for out in outputs:
            if isinstance(out, ShowText):
                acts.append(Send(m.display_text_wall(pkg, out.text)))
            elif isinstance(out, ClearDisplay):
                acts.append(Send(m.display_clear(pkg)))
            elif isinstance(out, Speak):
                self._audio_seq += 1
                request_id = f"audio_req_{self._audio_seq}"
                acts.append(Send(m.audio_play_request(pkg, self.session_id, request_id, m.tts_url(self.ws_url, out.text))))
        return acts
