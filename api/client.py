"""A small client of the idlewatch HTTP API, used by the CLI commands."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from types import TracebackType
from typing import Any

import aiohttp
import orjson


class ApiCallError(Exception):
    """The API answered with an error (or could not be reached: status 0)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if status else message)
        self.status = status
        self.code = code
        self.message = message


class ApiClient:
    """``async with ApiClient(url, token) as c: await c.agents()``."""

    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = 30) -> None:
        self.base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s))

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._session.close()

    async def call(
        self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None
    ) -> Any:
        """One request; the decoded JSON answer, or ApiCallError."""
        data = orjson.dumps(body) if body is not None else None
        headers = {**self._headers, **({"Content-Type": "application/json"} if data else {})}
        try:
            async with self._session.request(
                method, self.base + path, data=data, headers=headers, params=params
            ) as resp:
                raw = await resp.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ApiCallError(
                0,
                "unreachable",
                f"cannot reach the API at {self.base} "
                f"({exc.__class__.__name__}); is `idlewatch serve` running?",
            ) from exc
        decoded = orjson.loads(raw) if raw else None
        if resp.status >= 400:
            err = (decoded or {}).get("error", {}) if isinstance(decoded, dict) else {}
            raise ApiCallError(
                resp.status,
                err.get("code", "http_error"),
                err.get("message", f"HTTP {resp.status}"),
            )
        return decoded

    async def readiness(self) -> tuple[bool, list[str], dict[str, Any]]:
        """``/readyz``: whether the server is ready, its reasons and its checks (503 is no
        error here: it is the answer)."""
        try:
            async with self._session.get(self.base + "/readyz") as resp:
                body = orjson.loads(await resp.read() or b"{}")
        except (aiohttp.ClientError, OSError, TimeoutError, orjson.JSONDecodeError) as exc:
            raise ApiCallError(0, "unreachable", f"cannot read {self.base}/readyz: {exc}") from exc
        body = body if isinstance(body, dict) else {}
        return bool(body.get("ready")), list(body.get("reasons") or []), body.get("checks") or {}

    async def changes(
        self, name: str, connected: asyncio.Event | None = None
    ) -> AsyncGenerator[dict[str, Any], None]:
        """The websocket feed's changes of one agent; ``connected`` is set once subscribed."""
        try:
            ws = await self._session.ws_connect(
                self.base + "/api/ws", headers=self._headers, heartbeat=20
            )
        except aiohttp.WSServerHandshakeError as exc:
            raise ApiCallError(
                exc.status, "websocket", f"websocket refused: HTTP {exc.status}"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ApiCallError(0, "unreachable", f"cannot reach the API at {self.base}") from exc
        async with ws:
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    break
                data = orjson.loads(msg.data)
                if data.get("type") == "snapshot" and connected is not None:
                    connected.set()  # the server subscribed us before sending the snapshot
                if data.get("type") == "change" and data["agent"]["name"] == name:
                    yield data
