"""Bearer-token auth for every API route and the websocket (health and metrics stay open)."""

from __future__ import annotations

import hmac

from aiohttp import web
from aiohttp.typedefs import Middleware

from .errors import Handler, error_response

#: route names that never need a token (agents_running_other only answers 405)
OPEN_ROUTES = frozenset(
    {"healthz", "readyz", "metrics", "dashboard", "dashboard_js", "agents_running_other"}
)


#: the routes a proxy calls to wake agents: ``api_token`` or ``wake_token`` opens them,
#: and ``wake_open`` makes them (and only them) open
WAKE_ROUTES = frozenset({"wake", "wake_post", "sablier_blocking", "sablier_dynamic"})


def _bearer(token: str | None) -> bytes | None:
    return f"Bearer {token}".encode() if token else None


def auth_middleware(
    token: str | None, *, wake_token: str | None = None, wake_open: bool = False
) -> Middleware:
    """A middleware that requires ``Authorization: Bearer <token>`` when a token is set.

    The wake routes take ``api_token`` or ``wake_token`` (whichever are set); with neither
    set they follow the API's rule (open: ``serve`` then listens on loopback only), and
    ``wake_open`` opens them whatever is set. The wake token opens nothing else.
    """
    expected = _bearer(token)
    wake_tokens = [t for t in (_bearer(token), _bearer(wake_token)) if t is not None]

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.name
        if route in WAKE_ROUTES and request.match_info.http_exception is None:
            if wake_open or not wake_tokens:
                return await handler(request)
            presented = request.headers.get("Authorization", "").encode()
            # compare with each (constant time), never stopping at the first match
            if sum(hmac.compare_digest(presented, t) for t in wake_tokens) == 0:
                why = "missing" if not presented else "wrong"
                return error_response(
                    401,
                    "unauthorized",
                    f"{why} bearer token: send Authorization: Bearer <wake_token or api_token>",
                )
            return await handler(request)
        if (
            expected is None
            or route in OPEN_ROUTES
            # no route, or not this method: the 404 or 405 (with Allow) says only which routes
            # exist (what the OpenAPI document says), and a 401 there would be misleading
            or request.match_info.http_exception is not None
        ):
            return await handler(request)
        given = request.headers.get("Authorization", "")
        if request.match_info.route.name == "ws" and not given and "token" in request.query:
            given = "Bearer " + request.query["token"]  # browsers cannot set ws headers
        if not hmac.compare_digest(given.encode(), expected):
            why = "missing" if not given else "wrong"
            return error_response(
                401, "unauthorized", f"{why} bearer token: send Authorization: Bearer <api_token>"
            )
        return await handler(request)

    return middleware
