"""Addresses and keys for ingest URLs: what the glasses must push to.

The URL handed to the glasses must carry this machine's LAN address: 127.0.0.1 would point the
glasses at themselves. Auto-detection asks the kernel which source address it would route from
(a UDP ``connect`` sends no packet) and can be overridden with ``--ingest-host``/``INGEST_HOST``.
"""

from __future__ import annotations

import ipaddress
import random
import secrets
import socket
import string
import time

from loguru import logger

_KEY_ALPHABET = string.ascii_letters + string.digits


def new_stream_key(length: int = 20) -> str:
    """Random per-session key; alphanumeric so it is safe in RTMP paths and SRT passphrases."""
    return "".join(secrets.choice(_KEY_ALPHABET) for _ in range(length))


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host in ("localhost", "localhost.localdomain")


def detect_lan_address() -> str | None:
    """Best-guess LAN IPv4 of this machine, or None when there is no non-loopback route."""
    for probe in ("192.0.2.1", "10.255.255.255", "1.1.1.1"):  # routing lookups only, nothing is sent
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect((probe, 9))
                addr = s.getsockname()[0]
            if addr and not is_loopback(addr) and addr != "0.0.0.0":
                return addr
        except OSError:
            continue
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            addr = str(info[4][0])
            if not is_loopback(addr):
                return addr
    except OSError:
        pass
    return None


def advertise_host(override: str | None = None, for_glasses: bool = True) -> str:
    """Host to put in URLs meant for the glasses. Warns loudly if only loopback is available."""
    if override:
        if for_glasses and is_loopback(override):
            logger.warning(
                "Ingest host {} is a loopback address: real glasses cannot reach it "
                "(fine for the simulator and replay on this machine).",
                override,
            )
        return override
    addr = detect_lan_address()
    if addr is None:
        logger.warning("Could not detect a LAN address; glasses will not reach 127.0.0.1. Set --ingest-host.")
        return "127.0.0.1"
    return addr


def port_is_free(port: int, host: str = "0.0.0.0", udp: bool = False) -> bool:
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1", udp: bool = False, *, outside_ephemeral: bool = False) -> int:
    """A port that is free now (listeners, relays, servers, tests: the project's one port helper).

    ``outside_ephemeral`` picks one below Linux's ephemeral range (32768+), so no client socket can
    grab it between now and a later bind (the SRT relay's loopback port, bound by PyAV)."""
    if outside_ephemeral:
        rng = random.Random()
        for _ in range(200):
            port = rng.randint(20000, 32000)
            if port_is_free(port, host, udp=udp):
                return port
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def listening(port: int, udp: bool = False) -> bool | None:
    """Is something bound/listening on ``port``? Reads /proc/net (Linux); None when unknown."""
    files = ("/proc/net/udp", "/proc/net/udp6") if udp else ("/proc/net/tcp", "/proc/net/tcp6")
    found_any = False
    for path in files:
        try:
            with open(path) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        found_any = True
        for line in lines:
            parts = line.split()
            local, state = parts[1], parts[3]
            if int(local.rsplit(":", 1)[1], 16) == port and (udp or state == "0A"):
                return True
    return False if found_any else None


def wait_listening(port: int, udp: bool, timeout: float = 5.0) -> None:
    """Until something listens on ``port`` (bounded); on systems without /proc, a short pause."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = listening(port, udp=udp)
        if state is None:  # cannot tell (non-Linux): give the listener a moment
            time.sleep(0.3)
            return
        if state:
            return
        time.sleep(0.02)
