"""A thin HTTP client for the API tests that checks every answer against the OpenAPI doc."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import ClientSession
from idlewatch.api.openapi import document
from jsonschema import Draft202012Validator

DOC = document()


def check_response(method: str, template: str, status: int, body: Any) -> None:
    """Fail unless ``status`` is documented for the route and ``body`` matches its schema."""
    op = DOC["paths"][template][method.lower()]
    responses = op["responses"]
    assert str(status) in responses, f"{method} {template} answered undocumented {status}: {body}"
    content = responses[str(status)].get("content", {})
    if "application/json" not in content:
        return
    schema = {**content["application/json"]["schema"], "components": DOC["components"]}
    Draft202012Validator(schema).validate(body)


class Api:
    """Calls the API over real HTTP and validates each answer against the OpenAPI document."""

    def __init__(self, session: ClientSession, base: str, token: str | None = None) -> None:
        self.session = session
        self.base = base
        self.token = token

    async def call(
        self,
        method: str,
        path: str,
        template: str | None = None,
        *,
        json: Any = None,
        data: bytes | None = None,
        token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """One request; returns (status, decoded JSON body or None)."""
        hdrs = dict(headers or {})
        tok = token if token is not None else self.token
        if tok:
            hdrs["Authorization"] = f"Bearer {tok}"
        body = orjson.dumps(json) if json is not None else data
        if body is not None:
            hdrs.setdefault("Content-Type", "application/json")
        async with self.session.request(method, self.base + path, data=body, headers=hdrs) as r:
            raw = await r.read()
            decoded = orjson.loads(raw) if raw and r.content_type == "application/json" else None
            check_response(method, template or path.split("?")[0], r.status, decoded)
            return r.status, decoded
