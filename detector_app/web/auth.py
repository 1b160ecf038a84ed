"""Who may see the viewer: anyone on a loopback bind; off loopback, only who has the token.

The viewer shows what a person's glasses see, so on any other address every route (page, API,
frames, thumbnails, clips, static files) needs the token: ``Authorization: Bearer TOKEN``, or
``?token=TOKEN`` once, which sets an HttpOnly cookie and redirects to the same URL without it (so the
token leaves the address bar and history). The cookie holds a value derived from the token (HMAC), not
the token: cookies are not scoped by port, so other servers on the same host receive it, and it must
not give them the token itself. Values are compared with ``hmac.compare_digest``. The
decision is a pure function of the request's credentials; the middleware is a thin shell around it.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

COOKIE = "detector_viewer"
QUERY = "token"


class Access(enum.Enum):
    ALLOW = "allow"
    ALLOW_SET_COOKIE = "set-cookie"  # the right ?token=: set the cookie, then the URL without it
    DENY = "deny"


def cookie_value(token: str) -> str:
    """What the viewer's cookie holds for ``token``: proof of the token, from which it cannot be recovered."""
    return hmac.new(token.encode("utf-8"), b"detector-app viewer cookie v1", hashlib.sha256).hexdigest()


def _same(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode("utf-8"))


def decide(token: str | None, *, authorization: str | None = None, query_token: str | None = None,
           cookie: str | None = None) -> Access:
    """Whether a request with these credentials may pass (``token`` None: no token needed)."""
    if token is None:
        return Access.ALLOW
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and _same(value.strip(), token):
        return Access.ALLOW
    if cookie is not None and _same(cookie, cookie_value(token)):
        return Access.ALLOW
    if query_token is not None and _same(query_token, token):
        return Access.ALLOW_SET_COOKIE
    return Access.DENY


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def token_middleware(token: str | None) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """aiohttp middleware for ``token`` (None: every request passes); 401 with no data otherwise."""

    @web.middleware
    async def check_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        access = decide(token, authorization=request.headers.get(hdrs.AUTHORIZATION),
                        query_token=request.query.get(QUERY), cookie=request.cookies.get(COOKIE))
        if access is Access.DENY:
            return web.Response(status=401, text="401: this viewer needs its access token\n",
                                headers={hdrs.WWW_AUTHENTICATE: 'Bearer realm="detector-app viewer"'})
        if access is Access.ALLOW_SET_COOKIE and token is not None and request.method in ("GET", "HEAD") \
                and request.headers.get(hdrs.UPGRADE, "").lower() != "websocket":
            rest = [(k, v) for k, v in request.query.items() if k != QUERY]
            response = web.Response(status=303, headers={hdrs.LOCATION: str(request.rel_url.with_query(rest))})
            response.set_cookie(COOKIE, cookie_value(token), httponly=True, samesite="Strict", path="/")
            return response
        return await handler(request)

    return check_token
