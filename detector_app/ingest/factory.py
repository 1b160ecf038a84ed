"""Create a listener for one stream session: fresh key, its own port, the URL for the glasses."""

from __future__ import annotations

from detector_app.ingest.addresses import advertise_host, free_port, new_stream_key
from detector_app.ingest.base import IngestEndpoint, IngestError, VideoSource
from detector_app.ingest.nginx import missing_reason
from detector_app.ingest.rtmp import RtmpListener, rtmp_endpoint
from detector_app.ingest.srt import SrtRelayListener, srt_endpoint

DEFAULT_PORTS = {"rtmp": 1935, "srt": 4201, "whip": 8889}
INGEST_MODES = ("nginx", "embedded")


def choose_rtmp_ingest(requested: str | None, missing: str | None | bool = False) -> tuple[str, str | None]:
    """``--ingest``/``INGEST`` → (mode, a note to log once). None = nginx where it is installed, else
    the embedded listener; an explicit ``nginx`` without nginx is the user's to fix (``IngestError``).
    ``missing`` is ``missing_reason()`` (passed by tests; False = look it up)."""
    reason = missing_reason() if missing is False else missing
    if requested is not None and requested not in INGEST_MODES:
        raise IngestError(f"unknown --ingest {requested!r}: use nginx or embedded")
    if requested == "embedded":
        return "embedded", None
    if reason is None:
        return "nginx", None
    if requested == "nginx":
        raise IngestError(f"--ingest nginx: {reason}")
    return "embedded", f"RTMP ingest: embedded listener, one port per session ({reason})"


def open_listener(
    protocol: str,
    port: int | None = None,
    bind_host: str = "0.0.0.0",
    advertise: str | None = None,
    key: str | None = None,
    for_glasses: bool = True,
) -> tuple[IngestEndpoint, VideoSource]:
    """Start listening (nothing is published yet). ``port=0`` picks a free port (one per session).

    ``for_glasses=False`` (replay, tests) silences the warning about a loopback address in the URL.
    """
    protocol = protocol.lower()
    if protocol not in DEFAULT_PORTS:
        raise IngestError(f"unknown ingest protocol {protocol!r}: use rtmp, srt or whip")
    udp = protocol == "srt"
    if port is None:
        port = DEFAULT_PORTS[protocol]
    if port == 0:
        port = free_port(bind_host, udp=udp)
    host = advertise_host(advertise, for_glasses)
    key = key or new_stream_key()
    if protocol == "whip":
        from detector_app.ingest.whip import open_whip_listener  # lazy: aiortc only where WHIP is used

        return open_whip_listener(port, bind_host, host, key)
    if protocol == "rtmp":
        endpoint = rtmp_endpoint(key, port, bind_host, host)
        return endpoint, RtmpListener(endpoint)
    endpoint = srt_endpoint(key, port, bind_host, host)
    return endpoint, SrtRelayListener(endpoint)
