"""Which WebSocket URLs may receive our API key.

Webhooks are unauthenticated (protocol reference §2.1): anyone can POST a ``session_request`` naming
their own server, and we would send it the API key in ``tpa_connection_init``. So the URL host must
match the allowlist before any connection is opened.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from detector_app.ingest.addresses import is_loopback


def host_matches(host: str, pattern: str) -> bool:
    """``*.example.com`` matches ``example.com`` and any subdomain; other patterns match exactly."""
    host = host.lower().rstrip(".")
    pattern = pattern.lower().strip().rstrip(".")
    if not pattern:
        return False
    if pattern.startswith("*."):
        base = pattern[2:]
        return host == base or host.endswith("." + base)
    return host == pattern


def check_ws_url(url: str, allowlist: Iterable[str], *, allow_insecure: bool = False) -> str | None:
    """Return None if ``url`` may receive the API key, else a human-readable refusal reason."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return "malformed WebSocket URL"
    if parts.scheme not in ("ws", "wss"):
        return f"WebSocket URL scheme must be ws or wss, not {parts.scheme!r}"
    if not host:
        return "WebSocket URL has no host"
    if not any(host_matches(host, p) for p in allowlist):
        return f"WebSocket host {host!r} is not on the allowlist"
    if parts.scheme == "ws" and not (allow_insecure or is_loopback(host)):
        return f"refusing cleartext ws:// to {host!r} (the API key would travel unencrypted)"
    return None
