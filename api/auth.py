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


def auth_middleware(token: str | None) -> Middleware:
    """A middleware that requires ``Authorization: Bearer <token>`` when a token is set."""
    expected = f"Bearer {token}".encode() if token else None

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if (
            expected is None
            or request.match_info.route.name in OPEN_ROUTES
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
