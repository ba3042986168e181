"""One JSON error shape for every failure: ``{"error": {"code", "message", "field"}}``;
Sablier's routes answer the same errors as RFC 9457 problems (:func:`problem`)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web
from idlewatch.errors import (
    AgentNotFound,
    Conflict,
    EngineError,
    EngineUnavailable,
    Forbidden,
    InvalidOperation,
    InvalidValue,
    StoreError,
    WatcherError,
)

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An error answer with a status, a stable code, a message and the field at fault."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field


def error_response(
    status: int, code: str, message: str, field: str | None = None, **extra: object
) -> web.Response:
    """The JSON error answer."""
    body: dict[str, object] = {"error": {"code": code, "message": message, "field": field}}
    body.update(extra)
    return web.json_response(body, status=status)


PROBLEM_TYPE = "application/problem+json"


def problem(
    status: int, code: str, detail: str, field: str | None = None, **extra: Any
) -> web.Response:
    """An RFC 9457 problem answer (the Sablier routes' errors: api/sablier.py)."""
    body = {
        "type": f"urn:idlewatch:problem:{code}",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code,
        "field": field,
        **extra,
    }
    return web.Response(body=orjson.dumps(body), status=status, content_type=PROBLEM_TYPE)


_CORE_STATUS: list[tuple[type[WatcherError], int]] = [
    (InvalidValue, 400),  # (before InvalidOperation, which it is too)
    (AgentNotFound, 404),
    (Forbidden, 403),
    (Conflict, 409),
    (InvalidOperation, 409),
    (EngineUnavailable, 503),
    (StoreError, 503),
    (EngineError, 502),
]

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def core_status(exc: WatcherError) -> int:
    """The HTTP status of a core error."""
    for cls, status in _CORE_STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def from_core(exc: WatcherError) -> web.Response:
    """Map a core error to its HTTP answer."""
    field = exc.field if isinstance(exc, InvalidValue) else None
    return error_response(core_status(exc), exc.code, exc.message, field)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every exception into the JSON error shape; log the unexpected ones."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.field)
    except WatcherError as exc:
        return from_core(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        message = exc.reason if exc.status != 404 else f"no route {request.method} {request.path}"
        if isinstance(exc, web.HTTPMethodNotAllowed):
            allowed = ", ".join(sorted(exc.allowed_methods))
            resp = error_response(
                405, code, f"{request.method} is not allowed on {request.path} (allowed: {allowed})"
            )
            resp.headers["Allow"] = allowed  # RFC 9110: a 405 names the methods that work
            return resp
        return error_response(exc.status, code, message)
    except Exception:
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal", "internal error; see the server log")
