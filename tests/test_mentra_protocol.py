"""Sans-I/O tests of the MentraOS wire protocol: messages, commands, allowlist, settings, AppSession."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest
from pydantic import SecretStr

from detector_app.detection.types import Box, Detection, FrameResult
from detector_app.mentra import messages as m
from detector_app.mentra.actions import (
    Close,
    Log,
    ScheduleReconnect,
    Send,
    SessionEnded,
    StartPipeline,
)
from detector_app.mentra.allowlist import check_ws_url, host_matches
from detector_app.mentra.commands import Command, match_button, match_transcript, normalize
from detector_app.mentra.config import MentraSettings
from detector_app.mentra.session import AppSession, Phase, SessionConfig

API_KEY = "sk-very-secret-key-123"
PKG = "com.example.detector"
SID = "alice@example.com-com.example.detector"
WS = "wss://api.mentra.glass/app-ws"
RTMP = "rtmp://192.168.1.20:1935/live/k3y"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def sent(actions) -> list[dict]:
    return [a.message for a in actions if isinstance(a, Send)]


def types(actions) -> list[str]:
    return [a.message["type"] for a in actions if isinstance(a, Send)]


def logs(actions, level: str | None = None) -> list[str]:
    return [a.text for a in actions if isinstance(a, Log) and (level is None or a.level == level)]


ACK_D = {"type": "tpa_connection_ack", "sessionId": SID, "settings": [{"key": "q", "value": 1}],
         "mentraosSettings": {"brightness": 50}, "subscriptions": [], "userId": "alice@example.com",
         "capabilities": {"modelName": "Mentra Live", "hasCamera": True, "hasDisplay": False}}
ACK_B = {"type": "tpa_connection_ack", "sessionId": SID, "settings": [],
         "augmentosSettings": {"brightness": 40}, "capabilities": None}


def status(stream_id: str, st: str, kind: str = "rtmp_stream_status") -> dict:
    return {"type": kind, "sessionId": SID, "streamId": stream_id, "status": st, "appId": PKG}


def data_status(stream_id: str, st: str) -> dict:
    return {"type": "data_stream", "streamType": "rtmp_stream_status",
            "data": {"type": "rtmp_stream_status", "streamId": stream_id, "status": st}}


def transcript(text: str, final: bool = True) -> dict:
    return {"type": "data_stream", "streamType": "transcription:en-US",
            "data": {"type": "transcription", "text": text, "isFinal": final, "startTime": 0, "endTime": 1}}


def make_session(clock: Clock, **overrides) -> AppSession:
    cfg = SessionConfig(package_name=PKG, api_key=SecretStr(API_KEY), **overrides)
    return AppSession(cfg, SID, WS, clock=clock)


def ready_session(clock: Clock, url: str = RTMP, ack: dict = ACK_D, **overrides) -> AppSession:
    s = make_session(clock, **overrides)
    s.connection_opened()
    s.message_received(ack)
    s.pipeline_ready(url)
    return s


def streaming_session(clock: Clock, stream_id: str = "s1") -> AppSession:
    s = ready_session(clock)
    s.message_received(status(stream_id, "initializing"))
    s.message_received(status(stream_id, "active"))
    assert s.stream_status == "active" and s.stream_id == stream_id
    return s


# ----------------------------------------------------------------------------------- messages

class TestBuilders:
    def test_init_has_no_sdk_version_and_key_redacted(self):
        msg = m.connection_init(PKG, SID, API_KEY)
        assert msg["type"] == "tpa_connection_init" and msg["apiKey"] == API_KEY
        assert msg["sessionId"] == SID and msg["packageName"] == PKG
        assert "sdkVersion" not in msg
        assert msg["timestamp"].endswith("Z")
        assert API_KEY not in json.dumps(m.redact(msg))
        assert API_KEY not in repr(Send(msg)) and API_KEY not in str([Send(msg)])

    def test_subscription_and_ping(self):
        msg = m.subscription_update(PKG, SID, ["transcription:en-US", "button_press"])
        assert msg["type"] == "subscription_update" and msg["subscriptions"] == ["transcription:en-US", "button_press"]
        assert m.ping() == {"type": "ping"}

    def test_rtmp_request_uses_legacy_form(self):
        msg = m.stream_request(PKG, SID, RTMP, video={"width": 1280})
        assert msg["type"] == "rtmp_stream_request" and msg["rtmpUrl"] == RTMP and "streamUrl" not in msg
        assert msg["video"] == {"width": 1280}
        assert m.stream_request(PKG, SID, "rtmps://h/live/k")["type"] == "rtmp_stream_request"

    def test_srt_request_uses_new_form(self):
        msg = m.stream_request(PKG, SID, "srt://10.0.0.2:4201?streamid=abc")
        assert msg["type"] == "stream_request" and msg["streamUrl"].startswith("srt://") and "rtmpUrl" not in msg

    def test_stop_with_and_without_stream_id(self):
        assert m.stream_stop(PKG, SID, "s9")["type"] == "rtmp_stream_stop"
        assert m.stream_stop(PKG, SID, "s9")["streamId"] == "s9"
        assert "streamId" not in m.stream_stop(PKG, SID, None)
        assert m.stream_stop(PKG, SID, "s9", legacy=False)["type"] == "stream_stop"

    def test_status_check_display_audio_release(self):
        assert m.stream_status_check(PKG, SID) == {"type": "stream_status_check", "packageName": PKG, "sessionId": SID}
        d = m.display_text_wall(PKG, "1 cat: left", duration_ms=5000)
        assert d["type"] == "display_event" and d["layout"] == {"layoutType": "text_wall", "text": "1 cat: left"}
        assert d["view"] == "main" and d["sessionId"] == "" and d["durationMs"] == 5000
        assert m.display_clear(PKG)["layout"] == {"layoutType": "clear_view"}
        a = m.audio_play_request(PKG, SID, "audio_req_1", "https://x/api/tts?text=hi")
        assert a["type"] == "audio_play_request" and a["requestId"] == "audio_req_1" and a["audioUrl"].endswith("hi")
        assert a["sessionId"] == SID and a["trackId"] == 2 and a["stopOtherAudio"] is True
        r = m.ownership_release(PKG, SID)
        assert r == {"type": "ownership_release", "packageName": PKG, "sessionId": SID, "reason": "clean_shutdown"}

    def test_tts_url_from_ws_host(self):
        url = m.tts_url("wss://api.mentra.glass/app-ws", "I see a cat on the left")
        parts = urlsplit(url)
        assert (parts.scheme, parts.netloc, parts.path) == ("https", "api.mentra.glass", "/api/tts")
        assert parse_qs(parts.query)["text"] == ["I see a cat on the left"]
        # same rule as the SDK's convertToHttps: scheme → https, only a trailing /app-ws is dropped
        assert m.tts_url("ws://127.0.0.1:8123/app-ws", "hi") == "https://127.0.0.1:8123/api/tts?text=hi"
        assert m.tts_url("wss://h/x/app-ws", "a&b") == "https://h/x/api/tts?text=a%26b"
        assert m.tts_url("wss://api.mentra.glass/ws/miniapp", "hi") == "https://api.mentra.glass/api/tts?text=hi"  # v3


class TestParsers:
    def test_ack_both_settings_spellings(self):
        d = m.parse(ACK_D)
        assert isinstance(d, m.ConnectionAck) and d.mentraos_settings == {"brightness": 50}
        assert d.has_display is False and d.user_id == "alice@example.com"
        b = m.parse(ACK_B)
        assert isinstance(b, m.ConnectionAck) and b.mentraos_settings == {"brightness": 40}
        assert b.capabilities is None and b.has_display is None
        missing = m.parse({"type": "tpa_connection_ack"})
        assert isinstance(missing, m.ConnectionAck) and missing.capabilities is None and missing.settings == []

    def test_errors_current_and_legacy(self):
        e = m.parse({"type": "tpa_connection_error", "code": "PERMISSION_DENIED", "message": "Camera permission"})
        assert e == m.ConnectionError("PERMISSION_DENIED", "Camera permission", legacy=False)
        legacy = m.parse({"type": "connection_error", "message": "Invalid API key"})
        assert isinstance(legacy, m.ConnectionError) and legacy.legacy and legacy.code == "UNKNOWN"

    def test_capabilities_and_device_state(self):
        c = m.parse({"type": "capabilities_update", "capabilities": {"hasDisplay": True}, "modelName": "Even G1"})
        assert isinstance(c, m.CapabilitiesUpdate) and c.has_display is True and c.model_name == "Even G1"
        n = m.parse({"type": "capabilities_update", "capabilities": None})
        assert isinstance(n, m.CapabilitiesUpdate) and n.has_display is None
        s = m.parse({"type": "device_state_update", "state": {"wifiConnected": True}, "fullSnapshot": True})
        assert s == m.DeviceStateUpdate({"wifiConnected": True}, True)

    def test_pong_and_unknown(self):
        assert m.parse({"type": "pong", "timestamp": 1712052672000}) == m.Pong(1712052672000)
        assert m.parse({"type": "reconnect_ack"}).reconnect is True  # v3 only; a v2 session ignores it
        assert m.parse({"type": "something_new", "x": 1}) is None
        assert m.parse([1, 2]) is None and m.parse({"no": "type"}) is None

    def test_transcription_prefix_match(self):
        for key in ("transcription:en-US", "transcription:auto", "transcription:en-US?hints=a,b"):
            t = m.parse({**transcript("Stop stream."), "streamType": key})
            assert isinstance(t, m.Transcription) and t.is_final and t.text == "Stop stream." and t.stream_type == key
        assert m.parse({"type": "data_stream", "streamType": "transcription:en-US", "data": {"isFinal": True}}) is None

    def test_button_press(self):
        b = m.parse({"type": "data_stream", "streamType": "button_press",
                     "data": {"type": "button_press", "buttonId": "main", "pressType": "short"}})
        assert b == m.ButtonPress("main", "short")

    def test_stream_status_all_paths(self):
        direct = m.parse(status("s1", "active"))
        d_new = m.parse(status("s1", "active", kind="stream_status"))
        via_data = m.parse(data_status("s1", "active"))
        for s in (direct, d_new, via_data):
            assert isinstance(s, m.StreamStatus) and (s.stream_id, s.status) == ("s1", "active")
        assert via_data.via.startswith("data_stream")
        d_data = m.parse({"type": "data_stream", "streamType": "stream_status",
                          "data": {"type": "stream_status", "streamId": "s2", "status": "stopped"}})
        assert isinstance(d_data, m.StreamStatus) and d_data.status == "stopped"

    @pytest.mark.parametrize("raw,expected", [
        ("initializing", "initializing"), ("connecting", "initializing"), ("reconnecting", "initializing"),
        ("active", "active"), ("streaming", "active"), ("reconnected", "active"), ("stopping", "stopping"),
        ("stopped", "stopped"), ("disconnected", "stopped"), ("timeout", "timeout"),
        ("error", "stopped"), ("reconnect_failed", "stopped"), ("weird", "stopped"),
    ])
    def test_status_normalisation(self, raw, expected):
        assert m.normalize_status(raw) == expected

    def test_status_check_response_both_url_fields(self):
        b = m.parse({"type": "stream_status_check_response", "hasActiveStream": True,
                     "streamInfo": {"type": "unmanaged", "streamId": "s1", "status": "active", "rtmpUrl": RTMP}})
        d = m.parse({"type": "stream_status_check_response", "hasActiveStream": True,
                     "streamInfo": {"type": "unmanaged", "streamId": "s1", "status": "active", "streamUrl": RTMP}})
        assert b == d and b.url == RTMP and b.stream_id == "s1"
        none = m.parse({"type": "stream_status_check_response", "hasActiveStream": False})
        assert isinstance(none, m.StreamStatusCheckResponse) and not none.has_active_stream and none.url is None

    def test_audio_app_stopped_permission(self):
        a = m.parse({"type": "audio_play_response", "requestId": "r1", "success": False, "error": "x", "duration": 1})
        assert a == m.AudioPlayResponse("r1", False, "x", 1.0)
        assert m.parse({"type": "app_stopped"}) == m.AppStopped(None)
        p = m.parse({"type": "permission_error", "message": "no mic",
                     "details": [{"stream": "transcription:en-US", "requiredPermission": "MICROPHONE"}]})
        assert isinstance(p, m.PermissionError_) and p.details[0]["requiredPermission"] == "MICROPHONE"


# ----------------------------------------------------------------------------------- commands

class TestCommands:
    def test_normalize(self):
        assert normalize("  Stop, the STREAM!! ") == "stop the stream"
        assert normalize("What's that?") == "whats that"

    @pytest.mark.parametrize("text,cmd", [
        ("Stop stream.", Command.STOP_STREAM), ("please stop the stream now", Command.STOP_STREAM),
        ("Start streaming!", Command.START_STREAM), ("Hey, what do you see?", Command.WHAT_DO_YOU_SEE),
        ("What can you see", Command.WHAT_DO_YOU_SEE), ("the bus stop streams", None), ("hello", None),
        ("stop stream then start stream", Command.STOP_STREAM),
    ])
    def test_match(self, text, cmd):
        assert match_transcript(text, True) is cmd

    def test_interim_ignored(self):
        assert match_transcript("stop stream", False) is None

    def test_button(self):
        assert match_button("short") is Command.TOGGLE_STREAM
        assert match_button("long") is Command.WHAT_DO_YOU_SEE
        assert match_button("double") is None


# ----------------------------------------------------------------------------------- allowlist / settings

class TestAllowlist:
    DEFAULT = MentraSettings(_env_file=None).ws_allowlist

    @pytest.mark.parametrize("url", ["wss://api.mentra.glass/app-ws", "wss://mentra.glass/app-ws",
                                     "wss://dev.api.mentraglass.com/app-ws", "wss://prod.augmentos.cloud/app-ws",
                                     "wss://staging.augmentos.cloud/tpa-ws"])
    def test_default_allows_cloud(self, url):
        assert check_ws_url(url, self.DEFAULT) is None

    @pytest.mark.parametrize("url", ["wss://evil.example.com/app-ws", "wss://mentra.glass.evil.com/app-ws",
                                     "wss://evilmentra.glass/app-ws", "https://api.mentra.glass/app-ws",
                                     "ws://127.0.0.1:9000/app-ws", "not a url", "wss:///nohost"])
    def test_default_refuses_others(self, url):
        assert check_ws_url(url, self.DEFAULT) is not None

    def test_loopback_ws_when_listed_and_cleartext_rule(self):
        allow = ["127.0.0.1", "localhost", "sim.lan"]
        assert check_ws_url("ws://127.0.0.1:9000/app-ws", allow) is None
        assert check_ws_url("ws://localhost:9000/app-ws", allow) is None
        assert check_ws_url("ws://sim.lan/app-ws", allow) is not None
        assert check_ws_url("ws://sim.lan/app-ws", allow, allow_insecure=True) is None

    def test_host_matches(self):
        assert host_matches("API.Mentra.Glass", "*.mentra.glass")
        assert not host_matches("xmentra.glass", "*.mentra.glass")


class TestSettings:
    def test_env_names_and_secret(self, monkeypatch):
        monkeypatch.setenv("PACKAGE_NAME", "com.test.app")
        monkeypatch.setenv("MENTRAOS_API_KEY", API_KEY)
        monkeypatch.setenv("PORT", "3111")
        monkeypatch.setenv("MENTRAOS_WS_ALLOWLIST", "127.0.0.1, localhost,*.mentra.glass")
        s = MentraSettings(_env_file=None)
        assert (s.package_name, s.port) == ("com.test.app", 3111)
        assert s.ws_allowlist == ["127.0.0.1", "localhost", "*.mentra.glass"]
        assert s.api_key.get_secret_value() == API_KEY
        assert API_KEY not in repr(s) and API_KEY not in str(s) and API_KEY not in str(s.model_dump())

    def test_defaults_and_flags_override(self, monkeypatch):
        monkeypatch.delenv("PORT", raising=False)
        s = MentraSettings(_env_file=None)
        assert s.port == 3000 and s.ingest_protocol == "rtmp" and "*.mentra.glass" in s.ws_allowlist
        assert MentraSettings(_env_file=None, port=4000, ingest_protocol="srt").ingest_protocol == "srt"


# ----------------------------------------------------------------------------------- AppSession

class TestHandshake:
    def test_init_is_first_and_redacted_in_logs(self):
        clock = Clock()
        s = make_session(clock)
        acts = s.connection_opened()
        assert isinstance(acts[0], Send) and acts[0].type == "tpa_connection_init"
        assert acts[0].message["apiKey"] == API_KEY and "sdkVersion" not in acts[0].message
        assert all(API_KEY not in repr(a) for a in acts)
        assert s.phase is Phase.AWAIT_ACK

    @pytest.mark.parametrize("ack", [ACK_D, ACK_B], ids=["D-mentraosSettings", "B-augmentosSettings"])
    def test_ack_subscribes_and_starts_pipeline(self, ack):
        clock = Clock()
        s = make_session(clock)
        s.connection_opened()
        acts = s.message_received(ack)
        assert types(acts) == ["subscription_update"]
        subs = sent(acts)[0]["subscriptions"]
        assert "transcription:en-US" in subs and "button_press" in subs and "rtmp_stream_status" in subs
        assert StartPipeline("rtmp") in acts
        assert s.phase is Phase.READY

    def test_capabilities_drive_display_mode(self):
        clock = Clock()
        s = make_session(clock)
        s.connection_opened()
        s.message_received(ACK_D)
        assert s.feedback.has_display is False
        s.message_received({"type": "capabilities_update", "capabilities": {"hasDisplay": True}})
        assert s.feedback.has_display is True
        s.message_received({"type": "capabilities_update", "capabilities": None})
        assert s.feedback.has_display is None

    def test_ping_every_15s_only_after_ack(self):
        clock = Clock()
        s = make_session(clock)
        s.connection_opened()
        clock.advance(3)
        assert "ping" not in types(s.tick())
        s.message_received(ACK_D)
        clock.advance(14.9)
        assert "ping" not in types(s.tick())
        clock.advance(0.2)
        assert types(s.tick()).count("ping") == 1
        clock.advance(1)
        assert "ping" not in types(s.tick())
        clock.advance(14.5)
        assert types(s.tick()).count("ping") == 1

    def test_pong_device_state_unknown_are_ignored(self):
        clock = Clock()
        s = ready_session(clock)
        assert s.message_received({"type": "pong", "timestamp": 1}) == []
        assert s.message_received({"type": "device_state_update", "state": {}, "fullSnapshot": True}) == []
        assert s.message_received({"type": "brand_new_type"}) == []
        assert s.message_received("garbage") == []

    @pytest.mark.parametrize("kind", ["tpa_connection_error", "connection_error"])
    def test_connection_error_logged_with_code(self, kind):
        clock = Clock()
        s = make_session(clock)
        s.connection_opened()
        acts = s.message_received({"type": kind, "code": "INVALID_API_KEY", "message": "Invalid API key"})
        errs = logs(acts, "ERROR")
        assert errs and "INVALID_API_KEY" in errs[0] and "Invalid API key" in errs[0]
        assert API_KEY not in errs[0]
        end = s.connection_closed(1008, "Invalid API key")
        assert not any(isinstance(a, ScheduleReconnect) for a in end)
        assert any(isinstance(a, SessionEnded) and a.error_code == "INVALID_API_KEY" for a in end)

    def test_ack_timeout_forces_reconnect(self):
        clock = Clock()
        s = make_session(clock)
        s.connection_opened()
        clock.advance(5.1)
        acts = s.tick()
        assert any(isinstance(a, Close) for a in acts)
        again = s.connection_closed(1000, "ack timeout")  # our own close echoed back
        assert ScheduleReconnect(1.0, 1) in again


class TestStreamStart:
    def test_rtmp_request_after_ack_and_pipeline(self):
        clock = Clock()
        s = make_session(clock, video={"width": 1280, "height": 720, "bitrate": 1500000, "frameRate": 15})
        s.connection_opened()
        s.message_received(ACK_D)
        acts = s.pipeline_ready(RTMP)
        [req] = sent(acts)
        assert req["type"] == "rtmp_stream_request" and req["rtmpUrl"] == RTMP and req["video"]["width"] == 1280
        assert s.stream_status == "requested"

    def test_pipeline_before_ack_waits(self):
        clock = Clock()
        s = make_session(clock)
        s.connection_opened()
        assert sent(s.pipeline_ready(RTMP)) == []
        assert "rtmp_stream_request" in types(s.message_received(ACK_D))

    def test_srt_uses_stream_request_and_stream_stop(self):
        clock = Clock()
        s = ready_session(clock, url="srt://10.0.0.2:4201?streamid=k", ingest_protocol="srt")
        s.message_received(status("s1", "initializing", kind="stream_status"))
        acts = s.message_received(transcript("stop stream"))
        assert types(acts)[0] == "stream_stop" and sent(acts)[0]["streamId"] == "s1"

    def test_status_dedup_across_direct_new_and_data_stream(self):
        clock = Clock()
        s = ready_session(clock)
        first = s.message_received(status("s1", "initializing"))
        assert s.stream_id == "s1" and logs(first)
        assert s.message_received(status("s1", "initializing", kind="stream_status")) == []
        assert s.message_received(data_status("s1", "initializing")) == []
        active = s.message_received(status("s1", "active", kind="stream_status"))
        assert any("active" in t for t in logs(active))
        assert s.message_received(status("s1", "active")) == []
        assert s.message_received(data_status("s1", "active")) == []
        assert s.stream_status == "active"

    def test_status_for_unknown_stream_ignored(self):
        clock = Clock()
        s = streaming_session(clock, "s1")
        s.message_received(status("other", "stopped"))
        assert s.stream_status == "active" and s.stream_id == "s1"

    def test_start_timeout_retries(self):
        clock = Clock()
        s = ready_session(clock)
        clock.advance(10.1)
        acts = s.tick()
        assert logs(acts, "WARNING")
        clock.advance(2.0)
        assert "rtmp_stream_request" in types(s.tick())


class TestStreamFailures:
    def test_unrequested_stopped_is_failure_with_backoff_then_give_up(self):
        clock = Clock()
        s = streaming_session(clock, "s0")
        delays = []
        for i in range(5):
            acts = s.message_received(status(f"s{i}", "stopped"))
            assert logs(acts, "WARNING"), acts
            # nothing before the delay …
            waited = 0.0
            while "rtmp_stream_request" not in types(s.tick()):
                clock.advance(0.5)
                waited += 0.5
                assert waited < 30
            delays.append(waited)
            s.message_received(status(f"s{i + 1}", "initializing"))
            s.message_received(status(f"s{i + 1}", "active"))
        assert delays == [2.0, 4.0, 8.0, 8.0, 8.0]
        acts = s.message_received(status("s5", "timeout"))
        assert any("giving up" in t for t in logs(acts, "ERROR"))
        clock.advance(60)
        assert "rtmp_stream_request" not in types(s.tick())

    def test_stable_stream_resets_failure_count(self):
        clock = Clock()
        s = streaming_session(clock, "s0")
        s.message_received(status("s0", "stopped"))
        clock.advance(2)
        s.tick()
        s.message_received(status("s1", "active"))
        clock.advance(60)  # long healthy run
        s.message_received(status("s1", "stopped"))
        clock.advance(2.0)
        assert "rtmp_stream_request" in types(s.tick())  # first backoff again, not 4 s

    def test_timeout_status_is_failure(self):
        clock = Clock()
        s = streaming_session(clock, "s1")
        acts = s.message_received(status("s1", "timeout"))
        assert any("timeout" in t for t in logs(acts, "WARNING"))


class TestIngestRebuild:
    NEW = "rtmp://192.168.1.20:1936/live/n3wk3y"

    def test_lost_ingest_is_reopened_and_the_stream_requested_to_the_new_url(self):
        clock = Clock()
        s = streaming_session(clock, "s1")
        acts = s.pipeline_lost("SRT relay (srt-live-transmit) exited with code 1")
        assert StartPipeline("rtmp") in acts and logs(acts, "WARNING")
        assert not sent(acts), "nothing is requested before the new listener is ready"
        late = s.message_received(status("s1", "stopped"))  # the old stream gives up on the dead listener
        assert not logs(late, "WARNING") and not sent(late)
        [req] = [msg for msg in sent(s.pipeline_ready(self.NEW)) if msg["type"] == "rtmp_stream_request"]
        assert req["rtmpUrl"] == self.NEW
        s.message_received(status("s2", "active"))
        assert s.stream_id == "s2" and s.stream_status == "active"

    def test_failed_rebuilds_back_off_then_give_up_once(self):
        clock = Clock()
        s = make_session(clock, ingest_rebuild_delays=(0.0, 1.0, 2.0))
        s.connection_opened()
        s.message_received(ACK_D)
        s.pipeline_ready(RTMP)
        assert StartPipeline("rtmp") in s.pipeline_lost("port lost")
        assert StartPipeline("rtmp") not in s.pipeline_failed("port in use")  # retry 2 waits 1 s
        clock.advance(0.9)
        assert StartPipeline("rtmp") not in s.tick()
        clock.advance(0.2)
        assert StartPipeline("rtmp") in s.tick()
        s.pipeline_failed("port in use")
        clock.advance(2.1)
        assert StartPipeline("rtmp") in s.tick()
        gave_up = s.pipeline_failed("port in use")
        assert logs(gave_up, "ERROR") and StartPipeline("rtmp") not in gave_up
        clock.advance(60)
        assert StartPipeline("rtmp") not in s.tick()

    def test_detections_reset_the_rebuild_count(self):
        clock = Clock()
        s = make_session(clock, ingest_rebuild_delays=(0.0,))
        s.connection_opened()
        s.message_received(ACK_D)
        s.pipeline_ready(RTMP)
        for _ in range(3):  # each death is followed by a working ingest: never gives up
            assert StartPipeline("rtmp") in s.pipeline_lost("relay exited")
            s.pipeline_ready(self.NEW)
            s.frame_result(FrameResult(1, 1, None, 640, 480, 0.0, 0.0, 5.0, ()))

    def test_stream_ids_remembered_are_bounded(self):
        clock = Clock()
        s = ready_session(clock)
        for k in range(200):  # a long session: one new stream per drop
            s.message_received(status(f"s{k}", "active"))
            s.message_received(status(f"s{k}", "stopped"))
            clock.advance(30)
            s.tick()
        st = s._stream
        assert len(st.last_status) <= 16 and len(st.stop_ids) <= 16 and len(st.announced) <= 16


class TestStreamStop:
    def test_voice_stop_by_stream_id_final_only(self):
        clock = Clock()
        s = streaming_session(clock, "sx9")
        assert types(s.message_received(transcript("stop stream", final=False))) == []
        acts = s.message_received(transcript("Stop stream!"))
        stop = [msg for msg in sent(acts) if msg["type"] == "rtmp_stream_stop"]
        assert stop and stop[0]["streamId"] == "sx9"
        after = s.message_received(status("sx9", "stopped"))
        assert not logs(after, "WARNING")
        clock.advance(30)
        assert "rtmp_stream_request" not in types(s.tick())

    def test_voice_start_again(self):
        clock = Clock()
        s = streaming_session(clock, "s1")
        s.message_received(transcript("stop stream"))
        s.message_received(status("s1", "stopped"))
        acts = s.message_received(transcript("start stream"))
        assert "rtmp_stream_request" in types(acts)

    def test_button_toggles(self):
        clock = Clock()
        s = streaming_session(clock, "s1")
        press = {"type": "data_stream", "streamType": "button_press", "data": {"buttonId": "m", "pressType": "short"}}
        assert "rtmp_stream_stop" in types(s.message_received(press))
        s.message_received(status("s1", "stopped"))
        assert "rtmp_stream_request" in types(s.message_received(press))

    def test_stop_before_stream_id_stops_all_then_adopts(self):
        clock = Clock()
        s = ready_session(clock)
        acts = s.stop("user_disabled")
        [stop] = [msg for msg in sent(acts) if msg["type"] == "rtmp_stream_stop"]
        assert "streamId" not in stop
        s.message_received(status("late1", "initializing"))
        assert not logs(s.message_received(status("late1", "stopped")), "WARNING")

    def test_stop_request_then_cloud_closes(self):
        clock = Clock()
        s = streaming_session(clock, "s1")
        acts = s.stop("user_disabled")
        assert [msg["streamId"] for msg in sent(acts) if msg["type"] == "rtmp_stream_stop"] == ["s1"]
        again = s.message_received({"type": "app_stopped"})
        assert any("app_stopped" in t for t in logs(again, "INFO"))
        assert {m.get("streamId") for m in sent(again) if m["type"] == "rtmp_stream_stop"} <= {"s1"}, \
            "app_stopped after our stop may only repeat the stop of the same stream"
        end = s.connection_closed(1000, "App stopped")
        assert any(isinstance(a, SessionEnded) for a in end) and s.ended

    def test_stop_request_closes_ourselves_after_grace(self):
        clock = Clock()
        s = streaming_session(clock, "s1")
        s.stop()
        clock.advance(3.1)
        assert any(isinstance(a, Close) for a in s.tick())

    def test_app_stopped_sends_stream_stop(self):
        clock = Clock()
        s = streaming_session(clock, "s7")
        acts = s.message_received({"type": "app_stopped"})
        assert [msg.get("streamId") for msg in sent(acts) if msg["type"] == "rtmp_stream_stop"] == ["s7"]

    def test_shutdown_stops_releases_and_closes_in_order(self):
        clock = Clock()
        s = streaming_session(clock, "s1")
        acts = s.shutdown()
        kinds = [a.message["type"] if isinstance(a, Send) else type(a).__name__ for a in acts
                 if isinstance(a, (Send, Close))]
        assert kinds == ["rtmp_stream_stop", "ownership_release", "Close"]
        end = s.connection_closed(1000, "")
        assert any(isinstance(a, SessionEnded) for a in end) and s.ended

    def test_shutdown_while_disconnected_ends(self):
        clock = Clock()
        s = streaming_session(clock, "s1")
        s.connection_closed(1006, "")
        acts = s.shutdown()
        assert any(isinstance(a, SessionEnded) for a in acts) and s.ended


class TestReconnect:
    @pytest.mark.parametrize("code,reason", [(1000, ""), (1001, "going away"), (1008, "Invalid API key"),
                                             (1006, "App stopped"), (1011, "User session ended")])
    def test_no_reconnect(self, code, reason):
        clock = Clock()
        s = streaming_session(clock)
        acts = s.connection_closed(code, reason)
        assert not any(isinstance(a, ScheduleReconnect) for a in acts)
        assert any(isinstance(a, SessionEnded) for a in acts) and s.ended

    def test_abnormal_close_backoff_1_2_4_then_give_up(self):
        clock = Clock()
        s = streaming_session(clock)
        got = []
        for _ in range(3):
            acts = s.connection_closed(1006, "")
            got += [a.delay for a in acts if isinstance(a, ScheduleReconnect)]
        assert got == [1.0, 2.0, 4.0]
        acts = s.connection_closed(1006, "")
        assert any(isinstance(a, SessionEnded) for a in acts)

    def test_ack_resets_attempts(self):
        clock = Clock()
        s = streaming_session(clock)
        s.connection_closed(1011, "Internal server error")
        s.connection_opened()
        s.message_received(ACK_D)
        assert ScheduleReconnect(1.0, 1) in s.connection_closed(1006, "")

    def test_reconnect_same_init_resubscribe_and_status_check(self):
        clock = Clock()
        s = streaming_session(clock, "s1")
        first_init = None
        s2 = make_session(clock)
        first_init = sent(s2.connection_opened())[0]
        s.connection_closed(1006, "")
        acts = s.connection_opened()
        init = sent(acts)[0]
        assert init["type"] == "tpa_connection_init"
        assert {k: v for k, v in init.items() if k != "timestamp"} == \
            {k: v for k, v in first_init.items() if k != "timestamp"}
        acts = s.message_received(ACK_B)
        assert types(acts) == ["subscription_update", "stream_status_check"]
        assert not any(isinstance(a, StartPipeline) for a in acts)  # the ingest is still running

    @pytest.mark.parametrize("field", ["rtmpUrl", "streamUrl"])
    def test_surviving_stream_is_adopted(self, field):
        clock = Clock()
        s = streaming_session(clock, "s1")
        s.connection_closed(1006, "")
        s.connection_opened()
        s.message_received(ACK_D)
        resp = {"type": "stream_status_check_response", "hasActiveStream": True,
                "streamInfo": {"type": "unmanaged", "streamId": "s1", "status": "active", field: RTMP}}
        acts = s.message_received(resp)
        assert "rtmp_stream_request" not in types(acts)
        assert s.stream_id == "s1" and s.stream_status == "active"
        assert s.message_received(status("s1", "active")) == []  # still de-duplicated

    def test_lost_stream_is_requested_again(self):
        clock = Clock()
        s = streaming_session(clock, "s1")
        s.connection_closed(1006, "")
        s.connection_opened()
        s.message_received(ACK_D)
        acts = s.message_received({"type": "stream_status_check_response", "hasActiveStream": False})
        assert "rtmp_stream_request" in types(acts)

    def test_no_check_response_within_5s_means_no_stream(self):
        clock = Clock()
        s = streaming_session(clock, "s1")
        s.connection_closed(1006, "")
        s.connection_opened()
        s.message_received(ACK_D)
        clock.advance(4.9)
        assert "rtmp_stream_request" not in types(s.tick())
        clock.advance(0.2)
        assert "rtmp_stream_request" in types(s.tick())

    def test_subscription_after_every_ack(self):
        clock = Clock()
        s = ready_session(clock)
        for _ in range(3):
            s.connection_closed(1006, "")
            s.connection_opened()
            assert "subscription_update" in types(s.message_received(ACK_D))


class TestSessionFeedback:
    @staticmethod
    def cat_result(seq: int, x: float = 100.0) -> FrameResult:
        det = Detection("cat", 0.9, Box(x - 50, 100, x + 50, 200), 15)
        return FrameResult(seq, seq, None, 1280, 720, 0.0, 0.0, 5.0, (det,))

    def test_speaks_on_mentra_live(self):
        clock = Clock()
        s = streaming_session(clock)
        clock.advance(5)
        out = []
        for i in range(3):
            out += sent(s.frame_result(self.cat_result(i)))
            clock.advance(0.1)
        audio = [msg for msg in out if msg["type"] == "audio_play_request"]
        assert len(audio) == 1
        url = urlsplit(audio[0]["audioUrl"])
        assert url.netloc == "api.mentra.glass" and url.path == "/api/tts"
        assert parse_qs(url.query)["text"] == ["I see a cat on the left"]
        assert any(msg["type"] == "display_event" for msg in out)

    def test_what_do_you_see(self):
        clock = Clock()
        s = streaming_session(clock)
        acts = s.message_received(transcript("What do you see?"))
        [audio] = [msg for msg in sent(acts) if msg["type"] == "audio_play_request"]
        assert "any animals" in parse_qs(urlsplit(audio["audioUrl"]).query)["text"][0]

    def test_no_feedback_before_ack(self):
        clock = Clock()
        s = make_session(clock)
        s.connection_opened()
        assert sent(s.frame_result(self.cat_result(0))) == []


def test_redact_masks_stream_keys_in_ingest_urls():
    from detector_app.mentra.messages import redact

    msg = {"type": "rtmp_stream_request", "rtmpUrl": "rtmp://192.0.2.2:1935/live/SECRETKEY123"}
    srt = {"type": "stream_request", "streamUrl": "srt://192.0.2.2:4201?passphrase=SECRETKEY123&streamid=SECRETKEY123"}
    for message in (msg, srt):
        shown = str(redact(message))
        assert "SECRETKEY123" not in shown and "192.0.2.2" in shown
    assert "SECRETKEY123" in msg["rtmpUrl"]  # the message itself is untouched


# ----------------------------------------------------------------------------------- 3.x (MENTRAOS_PROTOCOL=v3)

class TestV3:
    def v3_session(self, clock: Clock, **overrides) -> AppSession:
        cfg = SessionConfig(package_name=PKG, api_key=SecretStr(API_KEY), cloud_protocol="v3", **overrides)
        return AppSession(cfg, SID, WS, clock=clock, user_id="alice@example.com")

    def test_handshake_headers_and_init(self):
        s = self.v3_session(Clock())
        assert s.connect_headers() == {"x-user-id": "alice@example.com", "x-session-id": SID,
                                       "x-package-name": PKG, "x-api-key": API_KEY}
        init = sent(s.connection_opened())[0]
        assert init["type"] == "tpa_connection_init" and "sessionId" not in init
        assert init["sdkVersion"].split(".")[0] == "3" and init["apiKey"] == API_KEY
        assert make_session(Clock()).connect_headers() == {}  # v2: no headers, the init names the session

    def test_drop_resumes_with_reconnect_and_reconnect_ack(self):
        clock = Clock()
        s = self.v3_session(clock)
        s.connection_opened()
        s.message_received(ACK_D)
        s.pipeline_ready(RTMP)
        s.connection_closed(1006, "")
        acts = s.connection_opened()
        assert sent(acts) == [{**sent(acts)[0], "type": "reconnect", "sessionId": SID}]
        acts = s.message_received({**ACK_D, "type": "reconnect_ack"})
        assert types(acts) == ["subscription_update", "stream_status_check"] and s.phase is Phase.READY

    @pytest.mark.parametrize("code,ends", [("SESSION_NOT_FOUND", False), ("SESSION_EXPIRED", False),
                                           ("NOT_RUNNING", True), ("BOOT_TIMEOUT", True)])
    def test_reconnect_rejected(self, code, ends):
        s = self.v3_session(Clock())
        s.connection_opened()
        s.message_received(ACK_D)
        s.connection_closed(1006, "")
        s.connection_opened()
        acts = s.message_received({"type": "reconnect_rejected", "code": code, "message": "no"})
        assert s.ended is ends
        if ends:
            assert any(isinstance(a, Close) for a in acts) and any(isinstance(a, SessionEnded) for a in acts)
        else:  # the cloud lost the session: a fresh init on the same socket, like the SDK
            assert types(acts) == ["tpa_connection_init"]

    def test_reconnect_deferred_extends_the_ack_wait(self):
        clock = Clock()
        s = self.v3_session(clock)
        s.connection_opened()
        s.message_received(ACK_D)
        s.connection_closed(1006, "")
        s.connection_opened()
        s.message_received({"type": "reconnect_deferred", "code": "BOOTING", "timeoutMs": 30000})
        clock.advance(10)
        assert not any(isinstance(a, Close) for a in s.tick())
        clock.advance(21)
        assert any(isinstance(a, Close) for a in s.tick())

    @pytest.mark.parametrize("timeout_ms", [float("nan"), 1e15, "soon", True])
    def test_reconnect_deferred_wait_is_bounded_whatever_the_cloud_says(self, timeout_ms):
        clock = Clock()
        s = self.v3_session(clock)
        s.connection_opened()
        s.message_received(ACK_D)
        s.connection_closed(1006, "")
        s.connection_opened()
        s.message_received({"type": "reconnect_deferred", "code": "BOOTING", "timeoutMs": timeout_ms})
        clock.advance(121)
        assert any(isinstance(a, Close) for a in s.tick()), "still waiting for the ack"

    def test_v2_session_ignores_a_reconnect_ack(self):
        s = make_session(Clock())
        s.connection_opened()
        assert types(s.message_received({**ACK_D, "type": "reconnect_ack"})) == [] and s.phase is Phase.AWAIT_ACK


def managed(stream_id: str, st: str, **urls: str) -> dict:
    return {"type": "managed_stream_status", "streamId": stream_id, "status": st, **urls}


class TestManaged:
    URLS = {"webrtcUrl": "https://relay/whep/m1", "hlsUrl": "https://relay/m1.m3u8", "dashUrl": "https://relay/m1.mpd"}

    def session(self, clock: Clock) -> AppSession:
        s = make_session(clock, ingest_protocol="managed")
        s.connection_opened()
        return s

    def test_request_after_ack_pipeline_waits_for_urls_then_stop(self):
        clock = Clock()
        s = self.session(clock)
        acts = s.message_received(ACK_D)
        assert "managed_stream_request" in types(acts) and not any(isinstance(a, StartPipeline) for a in acts)
        assert sent(acts)[-1]["enableWebRTC"] is True
        assert not [a for a in s.message_received(managed("m1", "initializing")) if isinstance(a, StartPipeline)]
        assert not [a for a in s.message_received(managed("m1", "active")) if isinstance(a, StartPipeline)], \
            "active without URLs: the cloud sends them in a later update"
        starts = [a for a in s.message_received(managed("m1", "active", **self.URLS)) if isinstance(a, StartPipeline)]
        assert len(starts) == 1 and starts[0].protocol == "managed"
        assert (starts[0].playback.webrtc_url, starts[0].playback.hls_url) == (self.URLS["webrtcUrl"], self.URLS["hlsUrl"])
        assert not [a for a in s.message_received(managed("m1", "active", **self.URLS)) if isinstance(a, StartPipeline)]
        s.pipeline_ready(self.URLS["webrtcUrl"])
        acts = s.stop()
        assert types(acts) == ["managed_stream_stop"]
        assert logs(s.message_received(managed("m1", "stopped")), "INFO")[-1].endswith("(as requested)")

    def test_unrequested_error_is_retried_and_no_urls_in_time_is_a_failure(self):
        clock = Clock()
        s = self.session(clock)
        s.message_received(ACK_D)
        s.message_received(managed("m1", "active", **self.URLS))
        acts = s.message_received(managed("m1", "error", message="relay gone"))
        assert any("relay gone" in t and "retry 1/" in t for t in logs(acts, "WARNING"))
        clock.advance(2.1)
        assert "managed_stream_request" in types(s.tick())
        clock.advance(30.1)  # initializing never reaches active with URLs
        assert any("no playback URLs 30 s after the request" in t for t in logs(s.tick(), "WARNING"))


def test_v3_refused_by_an_older_cloud_says_what_to_do():
    cfg = SessionConfig(package_name=PKG, api_key=SecretStr(API_KEY), cloud_protocol="v3")
    s = AppSession(cfg, SID, WS, clock=Clock(), user_id="alice@example.com")
    s.connection_opened()
    err = logs(s.message_received({"type": "tpa_connection_error", "code": "SESSION_NOT_FOUND", "message": "Session not found"}), "ERROR")
    assert len(err) == 1 and "use v2 with this cloud" in err[0]
    assert "v2" not in logs(make_session(Clock()).message_received({"type": "tpa_connection_error", "code": "SESSION_NOT_FOUND",
                                                                     "message": "x"}), "ERROR")[0]
