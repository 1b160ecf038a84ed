"""Ingest addresses, keys, ports, and the RTMP/SRT endpoint builders and listener preflight checks."""

from __future__ import annotations

import socket
import string
from urllib.parse import parse_qs, urlsplit

import pytest
from loguru import logger

from detector_app.ingest import addresses, srt
from detector_app.ingest.addresses import (
    advertise_host,
    free_port,
    is_loopback,
    listening,
    new_stream_key,
    port_is_free,
)
from detector_app.ingest.base import IngestError
from detector_app.ingest.rtmp import RtmpListener, rtmp_endpoint
from detector_app.ingest.srt import SRT_LATENCY_MS, SrtRelayListener, srt_endpoint

pytestmark = pytest.mark.timeout(30)

KEY = "AbCdEfGhIjKlMnOpQrSt"


@pytest.fixture
def warnings_log():
    records: list[str] = []
    sink = logger.add(lambda m: records.append(m.record["message"]), level="WARNING")
    yield records
    logger.remove(sink)


# -- keys --------------------------------------------------------------------------------------------


def test_stream_key_length_and_alphabet():
    alphabet = set(string.ascii_letters + string.digits)
    for length in (10, 20, 32):
        key = new_stream_key(length)
        assert len(key) == length and set(key) <= alphabet
    assert len(new_stream_key()) == 20


def test_stream_keys_are_random():
    keys = {new_stream_key() for _ in range(200)}
    assert len(keys) == 200
    chars = "".join(keys)
    assert len(set(chars)) > 50  # 4000 draws over a 62-symbol alphabet: nearly all symbols appear


# -- advertised host ----------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "localhost"])
def test_is_loopback_true(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["192.168.1.20", "10.0.0.5", "glasses-host.lan", "0.0.0.0"])
def test_is_loopback_false(host):
    assert not is_loopback(host)


def test_advertise_host_uses_detected_lan_address(monkeypatch, warnings_log):
    monkeypatch.setattr(addresses, "detect_lan_address", lambda: "192.168.1.42")
    assert advertise_host() == "192.168.1.42"
    assert advertise_host(None) == "192.168.1.42"
    assert advertise_host("") == "192.168.1.42"
    assert warnings_log == []


def test_advertise_host_never_loopback_when_lan_detectable(monkeypatch):
    monkeypatch.setattr(addresses, "detect_lan_address", lambda: "10.1.2.3")
    assert not is_loopback(advertise_host())


def test_advertise_host_honours_override(monkeypatch, warnings_log):
    monkeypatch.setattr(addresses, "detect_lan_address", lambda: "192.168.1.42")
    assert advertise_host("10.9.8.7") == "10.9.8.7"
    assert advertise_host("mybox.local") == "mybox.local"
    assert warnings_log == []


def test_advertise_host_warns_on_loopback_override(monkeypatch, warnings_log):
    monkeypatch.setattr(addresses, "detect_lan_address", lambda: "192.168.1.42")
    assert advertise_host("127.0.0.1") == "127.0.0.1"  # explicit choice is respected (simulator use)
    assert len(warnings_log) == 1 and "loopback" in warnings_log[0]


def test_advertise_host_falls_back_to_loopback_with_warning(monkeypatch, warnings_log):
    monkeypatch.setattr(addresses, "detect_lan_address", lambda: None)
    assert advertise_host() == "127.0.0.1"
    assert len(warnings_log) == 1 and "--ingest-host" in warnings_log[0]


class _RouteProbe:
    """A UDP socket whose routing answer is scripted: ``connect`` to a probe fails or picks ``routes[probe]``."""

    def __init__(self, routes: dict[str, str | None]) -> None:
        self.routes = routes
        self.addr = "0.0.0.0"

    def __call__(self, *args, **kw):  # socket.socket(AF_INET, SOCK_DGRAM)
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def connect(self, target) -> None:
        got = self.routes.get(target[0])
        if got is None:
            raise OSError(101, "Network is unreachable")
        self.addr = got

    def getsockname(self):
        return (self.addr, 40000)


def test_detect_lan_address_skips_loopback_and_unroutable_probes(monkeypatch):
    probe = _RouteProbe({"192.0.2.1": "127.0.0.1", "1.1.1.1": "192.168.1.7"})  # 10.255.255.255: no route
    monkeypatch.setattr(addresses.socket, "socket", probe)
    assert addresses.detect_lan_address() == "192.168.1.7"


def test_detect_lan_address_falls_back_to_the_hostname_then_none(monkeypatch):
    monkeypatch.setattr(addresses.socket, "socket", _RouteProbe({}))
    monkeypatch.setattr(addresses.socket, "getaddrinfo", lambda *a, **k: [(2, 2, 17, "", ("10.0.0.5", 0))])
    assert addresses.detect_lan_address() == "10.0.0.5"
    monkeypatch.setattr(addresses.socket, "getaddrinfo", lambda *a, **k: [(2, 2, 17, "", ("127.0.1.1", 0))])
    assert addresses.detect_lan_address() is None


# -- ports ---------------------------------------------------------------------------------------------


def test_free_port_tcp_is_bindable():
    port = free_port("127.0.0.1")
    assert 0 < port < 65536
    assert port_is_free(port, "127.0.0.1")


def test_port_is_free_false_while_tcp_listener_bound():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert not port_is_free(port, "127.0.0.1")
        assert not port_is_free(port)  # 0.0.0.0 overlaps 127.0.0.1
        assert listening(port) is True
    assert port_is_free(port, "127.0.0.1")
    assert listening(port) is False


def test_bound_but_not_listening_tcp_socket_is_not_listening():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert not port_is_free(port, "127.0.0.1")
        assert listening(port) is False  # only state LISTEN counts for TCP


def test_udp_port_checks():
    port = free_port("127.0.0.1", udp=True)
    assert port_is_free(port, "127.0.0.1", udp=True)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))
        assert not port_is_free(port, "127.0.0.1", udp=True)
        assert listening(port, udp=True) is True
    assert port_is_free(port, "127.0.0.1", udp=True)
    assert listening(port, udp=True) is False


def test_tcp_and_udp_ports_are_independent():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert listening(port, udp=True) is True
        assert listening(port, udp=False) is False


def test_listening_unknown_without_proc(monkeypatch):
    def no_proc(*a, **k):
        raise OSError("no /proc")

    monkeypatch.setattr(addresses, "open", no_proc, raising=False)  # shadows the builtin there only
    assert listening(1935) is None


# -- endpoint builders ------------------------------------------------------------------------------


def test_rtmp_endpoint_urls():
    ep = rtmp_endpoint(KEY, 1935, "0.0.0.0", "192.168.1.42")
    assert ep.protocol == "rtmp" and ep.port == 1935 and ep.key == KEY
    assert ep.publish_url == f"rtmp://192.168.1.42:1935/live/{KEY}"
    assert ep.local_publish_url == f"rtmp://127.0.0.1:1935/live/{KEY}"
    assert ep.advertise_host == "192.168.1.42" and ep.bind_host == "0.0.0.0"
    assert rtmp_endpoint(KEY, 1936, "0.0.0.0", "h", app="app2").publish_url == f"rtmp://h:1936/app2/{KEY}"


def test_srt_endpoint_url_parameters():
    ep = srt_endpoint(KEY, 9000, "0.0.0.0", "192.168.1.42")
    assert ep.protocol == "srt"
    u = urlsplit(ep.publish_url)
    assert u.scheme == "srt" and u.hostname == "192.168.1.42" and u.port == 9000
    q = parse_qs(u.query)
    assert q["passphrase"] == [KEY] and q["streamid"] == [KEY]
    assert q["latency"] == [str(SRT_LATENCY_MS * 1000)]  # microseconds in caller URLs
    assert int(q["latency"][0]) == 20_000
    assert len(KEY) >= 10 and q["pbkeylen"] == ["16"]
    local = urlsplit(ep.local_publish_url)
    assert local.hostname == "127.0.0.1" and local.port == 9000 and local.query == u.query


@pytest.mark.parametrize("build", [rtmp_endpoint, srt_endpoint])
def test_redacted_hides_key(build):
    ep = build(KEY, 1935, "0.0.0.0", "192.168.1.42")
    red = ep.redacted()
    assert KEY not in red
    assert "192.168.1.42" in red and KEY[:4] in red
    assert KEY in ep.publish_url  # the real URL is unchanged


# -- listener preflight -----------------------------------------------------------------------------


def test_rtmp_listener_port_in_use():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        ep = rtmp_endpoint(KEY, port, "127.0.0.1", "192.168.1.42")
        with pytest.raises(IngestError) as exc:
            RtmpListener(ep)
    msg = str(exc.value)
    assert str(port) in msg and "already in use" in msg and "--ingest-port" in msg


def test_srt_listener_without_relay_tool(monkeypatch):
    monkeypatch.setattr(srt.shutil, "which", lambda name: None)
    ep = srt_endpoint(KEY, free_port("127.0.0.1", udp=True), "127.0.0.1", "192.168.1.42")
    with pytest.raises(IngestError) as exc:
        SrtRelayListener(ep)
    msg = str(exc.value)
    assert "srt-live-transmit" in msg and "apt-get install srt-tools" in msg


def test_srt_listener_rejects_short_key(monkeypatch):
    monkeypatch.setattr(srt.shutil, "which", lambda name: "/usr/bin/srt-live-transmit")
    ep = srt_endpoint("short", free_port("127.0.0.1", udp=True), "127.0.0.1", "h")
    with pytest.raises(IngestError, match="at least 10"):
        SrtRelayListener(ep)


def test_srt_listener_udp_port_in_use(monkeypatch):
    monkeypatch.setattr(srt.shutil, "which", lambda name: "/usr/bin/srt-live-transmit")
    monkeypatch.setattr(srt.subprocess, "Popen", lambda *a, **k: pytest.fail("relay must not start"))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(IngestError, match="already in use"):
            SrtRelayListener(srt_endpoint(KEY, port, "127.0.0.1", "h"))


def test_fixed_ingest_port_gives_concurrent_sessions_the_next_free_ports():
    """Several glasses at once: each session gets its own listener, port and key."""
    from detector_app.stream_service import DetectionService, IngestConfig

    first = free_port("127.0.0.1", outside_ephemeral=True)
    svc = DetectionService(None, IngestConfig(bind_host="127.0.0.1", advertise_host="127.0.0.1", port=first))  # type: ignore[arg-type]
    try:
        a, b = svc.open_stream("rtmp", label="alice@example.com"), svc.open_stream("rtmp")
        assert a.endpoint.port == first and b.endpoint.port > first
        assert a.key != b.key and a.key in a.publish_url and b.key in b.publish_url
        # named for people: the wearer first, then the URL without its key
        assert a.view.source_label == f"alice@example.com · {a.endpoint.redacted()}" and a.key not in a.view.source_label
        assert b.view.source_label == b.endpoint.redacted()
    finally:
        svc.close()


def test_stream_session_reports_a_dead_ingest():
    """The SRT relay dying ends the listener; the session says why (the miniapp stops retrying into it)."""
    import shutil
    import time

    import pytest

    if shutil.which("srt-live-transmit") is None:
        pytest.fail("srt-live-transmit is required (apt-get install srt-tools)")
    from detector_app.stream_service import DetectionService, IngestConfig

    svc = DetectionService(None, IngestConfig(bind_host="127.0.0.1", advertise_host="127.0.0.1"))  # type: ignore[arg-type]
    try:
        stream = svc.open_stream("srt")
        assert stream.failure is None
        stream.pipeline.source._proc.kill()  # the relay crashes
        deadline = time.monotonic() + 10
        while stream.failure is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stream.failure is not None and "srt-live-transmit" in stream.failure
    finally:
        svc.close()


def test_closed_service_closes_its_streams_and_opens_no_more():
    """Shutdown: every stream is closed within the budget, and an open that comes late is refused."""
    import time

    from detector_app.stream_service import DetectionService, IngestConfig, ServiceClosedError

    svc = DetectionService(None, IngestConfig(bind_host="127.0.0.1", advertise_host="127.0.0.1"))  # type: ignore[arg-type]
    a, b = svc.open_stream("rtmp"), svc.open_stream("rtmp")
    t0 = time.monotonic()
    svc.close(timeout=3.0)
    assert time.monotonic() - t0 < 3.5
    assert a.closed and b.closed and svc.streams() == []
    assert not a.pipeline._decoder.is_alive() and not b.pipeline._decoder.is_alive()
    with pytest.raises(ServiceClosedError):
        svc.open_stream("rtmp")
