"""Bearer-token auth for every API route and the websocket (health and metrics stay open).

Three tokens, each a set of scopes (the names issue-26's scoped tokens extend):
``api_token`` has every scope, ``wake_token`` only ``wake`` (the wake and Sablier routes),
``read_token`` only ``read`` (every GET and the websocket). A known token without the
scope a route needs is a 403 naming the scope; an unknown or missing one a 401.
"""

from __future__ import annotations

import hmac

from aiohttp import web
from aiohttp.typedefs import Middleware

from .errors import Handler, error_response, problem

#: route names that never need a token (agents_running_other only answers 405)
OPEN_ROUTES = frozenset(
    {"healthz", "readyz", "health", "metrics", "dashboard", "dashboard_js", "agents_running_other"}
)

#: the routes a proxy calls to wake agents: ``api_token`` or ``wake_token`` opens them,
#: and ``wake_open`` makes them (and only them) open
WAKE_ROUTES = frozenset(
    {
        "wake",
        "wake_post",
        "sablier_blocking",
        "sablier_dynamic",
        "sablier_poke",
        "sablier_themes",
    }
)

SCOPES = ("read", "touch", "wake", "control", "deploy")

#: the scope of each route that is not a read (every other POST or DELETE is ``control``)
_WRITE_SCOPES = {
    "activity": "touch",
    "register": "deploy",
    "deploy": "deploy",
    "delete": "deploy",
}

#: the scopes of the request's token (every scope when no token is set)
SCOPES_KEY = web.RequestKey("scopes", frozenset[str])


def needed_scope(route: str | None, method: str) -> str:
    """The scope a request to ``route`` with ``method`` needs."""
    if route in WAKE_ROUTES:
        return "wake"
    if method in ("GET", "HEAD"):
        return "read"
    return _WRITE_SCOPES.get(route or "", "control")


def _bearer(token: str | None) -> bytes | None:
    return f"Bearer {token}".encode() if token else None


def auth_middleware(
    token: str | None,
    *,
    wake_token: str | None = None,
    read_token: str | None = None,
    wake_open: bool = False,
) -> Middleware:
    """A middleware that requires ``Authorization: Bearer <token>`` when a token is set.

    The wake routes take ``api_token`` or ``wake_token`` (whichever are set); with neither
    set they follow the API's rule (open: ``serve`` then listens on loopback only), and
    ``wake_open`` opens them whatever is set. The wake token opens nothing else, the read
    token every GET and the websocket.
    """
    return _TokenAuth(token, wake_token, read_token, wake_open).middleware


class _TokenAuth:
    def __init__(
        self, token: str | None, wake_token: str | None, read_token: str | None, wake_open: bool
    ) -> None:
        #: (presented header, its scopes)
        self._known = [
            (t, frozenset(scopes))
            for t, scopes in (
                (_bearer(wake_token), ("wake",)),
                (_bearer(read_token), ("read",)),
                (_bearer(token), SCOPES),
            )
            if t is not None
        ]
        self._api_open = token is None
        self._wake_open = wake_open or not any("wake" in s for _, s in self._known)

    def _scopes_of(self, presented: bytes) -> frozenset[str] | None:
        found = None
        for t, scopes in self._known:  # every comparison made (constant time), none skipped
            if hmac.compare_digest(presented, t):
                found = scopes
        return found

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.name
        # no route, or not this method: the 404 or 405 (with Allow) says only which routes
        # exist (what the OpenAPI document says), and a 401 there would be misleading
        if route in OPEN_ROUTES or request.match_info.http_exception is not None:
            return await handler(request)
        need = needed_scope(route, request.method)
        if self._wake_open if need == "wake" else self._api_open:
            request[SCOPES_KEY] = frozenset(SCOPES)
            return await handler(request)
        given = request.headers.get("Authorization", "")
        if route == "ws" and not given and "token" in request.query:
            given = "Bearer " + request.query["token"]  # browsers cannot set ws headers
        scopes = self._scopes_of(given.encode())
        # Sablier's clients read problems (api/sablier.py)
        refuse = problem if (route or "").startswith("sablier_") else error_response
        if scopes is None:
            why = "missing" if not given else "wrong"
            which = "wake_token or api_token" if need == "wake" else "api_token"
            return refuse(
                401, "unauthorized", f"{why} bearer token: send Authorization: Bearer <{which}>"
            )
        if need not in scopes:
            return refuse(
                403,
                "forbidden",
                f"this token may not {request.method} {request.path}: it needs the "
                f"{need!r} scope (this token has {', '.join(sorted(scopes))})",
                scope=need,
            )
        request[SCOPES_KEY] = scopes
        return await handler(request)
