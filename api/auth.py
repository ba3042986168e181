"""Bearer-token auth for every API route, the websocket and the event stream (health and
metrics stay open).

Every named route has its scope in :data:`ROUTE_SCOPES` or is in :data:`OPEN_ROUTES`;
:func:`check_route_scopes` refuses to build an app with a route in neither, so a new route
cannot ship without one. Tokens: ``api_token`` has every scope, ``wake_token`` only
``wake``, ``read_token`` only ``read``, and each of ``tokens`` its own scopes and,
optionally, the agents it is limited to (api/access.py). A known token without the scope a
route needs is a 403 naming the scope; an unknown or missing one a 401. Tokens are compared
in constant time (every comparison made) and never logged. The feeds (``/api/ws``,
``/api/events``) also take ``?ticket=`` (api/tickets.py); ``/api/ws`` still takes
``?token=``, deprecated (a token in a URL is kept in access logs).
"""

from __future__ import annotations

import hmac
import logging

from aiohttp import web
from aiohttp.typedefs import Middleware
from idlewatch.settings_access import SCOPES, AccessSettings

from .access import ACCESS, EVERYTHING, Access
from .errors import Handler, error_response, problem
from .tickets import TICKETS

logger = logging.getLogger(__name__)

#: route names that never need a token (agents_running_other only answers 405)
OPEN_ROUTES = frozenset(
    {"healthz", "readyz", "health", "metrics", "dashboard", "dashboard_js", "agents_running_other"}
)

#: the scope every other named route needs
ROUTE_SCOPES: dict[str, str] = {
    # read: every GET, the websocket and the event stream
    "agents": "read",
    "agents_running": "read",
    "agent": "read",
    "agent_timeline": "read",
    "audit": "read",
    "stats": "read",
    "scopes": "read",
    "groups": "read",
    "group": "read",
    "openapi": "read",
    "ws": "read",
    "events": "read",
    "feed_tickets": "read",
    "webhook_deliveries": "read",
    # touch: activity and keep-alive
    "activity": "touch",
    # wake: what a proxy calls
    "wake": "wake",
    "wake_post": "wake",
    "sablier_blocking": "wake",
    "sablier_dynamic": "wake",
    "sablier_poke": "wake",
    "sablier_themes": "wake",
    # control: lifecycle
    "start": "control",
    "pause": "control",
    "stop": "control",
    "restart": "control",
    "scale": "control",
    "legacy_start": "control",
    "legacy_stop": "control",
    "group_start": "control",
    "group_stop": "control",
    # deploy: what exists
    "register": "deploy",
    "deploy": "deploy",
    "delete": "deploy",
}

#: the routes a proxy calls to wake agents
WAKE_ROUTES = frozenset(r for r, s in ROUTE_SCOPES.items() if s == "wake")
#: the routes that take ``?ticket=`` (a browser cannot set headers there)
FEED_ROUTES = frozenset({"ws", "events"})


def needed_scope(route: str | None) -> str:
    """The scope a request to ``route`` needs (KeyError for a route without one)."""
    return ROUTE_SCOPES[route or ""]


def check_route_scopes(app: web.Application) -> None:
    """RuntimeError naming every named route that has no scope and is not open."""
    missing = sorted(
        {
            r.name
            for r in app.router.routes()
            if r.name is not None and r.name not in OPEN_ROUTES and r.name not in ROUTE_SCOPES
        }
    )
    if missing:
        raise RuntimeError(f"routes without a scope in api/auth.py ROUTE_SCOPES: {missing}")


def auth_middleware(settings: AccessSettings) -> Middleware:
    """The middleware enforcing ``settings``' tokens (see the module doc)."""
    return _TokenAuth(settings).middleware


def _bearer(token: str) -> bytes:
    return f"Bearer {token}".encode()


class _TokenAuth:
    def __init__(self, settings: AccessSettings) -> None:
        known: list[tuple[bytes, Access]] = []
        fixed = (
            (settings.wake_token, Access(frozenset({"wake"}))),
            (settings.read_token, Access(frozenset({"read"}))),
            (settings.api_token, EVERYTHING),
        )
        for secret, access in fixed:
            if secret is not None:
                known.append((_bearer(secret.get_secret_value()), access))
        for spec in settings.tokens:
            access = Access(frozenset(spec.scopes), spec.match())
            known.append((_bearer(spec.token.get_secret_value()), access))
        self._known = known
        self._api_open = not settings.guarded()
        self._wake_open = not settings.wake_guarded()
        self._warned_query_token = False

    def _access_of(self, presented: bytes) -> Access | None:
        found = None
        for t, access in self._known:  # every comparison made (constant time), none skipped
            if hmac.compare_digest(presented, t):
                found = access
        return found

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.name
        # no route, or not this method: the 404 or 405 (with Allow) says only which routes
        # exist (what the OpenAPI document says), and a 401 there would be misleading
        if route in OPEN_ROUTES or request.match_info.http_exception is not None:
            return await handler(request)
        need = needed_scope(route)
        if self._wake_open if need == "wake" else self._api_open:
            request[ACCESS] = EVERYTHING
            return await handler(request)
        given = request.headers.get("Authorization", "")
        access: Access | None = None
        if not given and route in FEED_ROUTES and "ticket" in request.query:
            access = request.config_dict[TICKETS].redeem(request.query["ticket"])
            if access is None:
                return error_response(
                    401,
                    "unauthorized",
                    "unknown, used or expired ticket: ask POST /api/feed-tickets for a new one "
                    "(a ticket is good for one connection, within 30 s)",
                    "ticket",
                )
        else:
            if route == "ws" and not given and "token" in request.query:
                given = "Bearer " + request.query["token"]  # deprecated: see the module doc
                self._warn_query_token()
            access = self._access_of(given.encode())
        # Sablier's clients read problems (api/sablier.py)
        refuse = problem if (route or "").startswith("sablier_") else error_response
        if access is None:
            why = "missing" if not given else "wrong"
            which = "wake_token or api_token" if need == "wake" else "api_token"
            return refuse(
                401, "unauthorized", f"{why} bearer token: send Authorization: Bearer <{which}>"
            )
        if need not in access.scopes:
            has = ", ".join(s for s in SCOPES if s in access.scopes)
            return refuse(
                403,
                "forbidden",
                f"this token may not {request.method} {request.path}: it needs the "
                f"{need!r} scope (this token has {has})",
                scope=need,
            )
        request[ACCESS] = access
        return await handler(request)

    def _warn_query_token(self) -> None:
        if not self._warned_query_token:
            self._warned_query_token = True
            logger.warning(
                "a websocket client sent its token in the URL (?token=), where access logs "
                "keep it: deprecated; use a ticket from POST /api/feed-tickets"
            )


__all__ = [
    "FEED_ROUTES",
    "OPEN_ROUTES",
    "ROUTE_SCOPES",
    "WAKE_ROUTES",
    "auth_middleware",
    "check_route_scopes",
    "needed_scope",
]
