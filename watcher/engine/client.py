"""The ONLY module that imports aiodocker: every call into it (its private query methods
included) goes through :class:`EngineClient`, and every error it raises becomes ours,
naming the engine's address."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import aiodocker
import aiohttp
import orjson

from ..errors import EngineError, EngineUnavailable

T = TypeVar("T")

_STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_read=None, sock_connect=10)
CALL_TIMEOUT_S = 30.0
PING_TIMEOUT_S = 5.0


class EngineClient:
    """One aiodocker session with an engine (opened on first use) and its calls."""

    def __init__(self, url: str) -> None:
        self.address = url
        self._docker: aiodocker.Docker | None = None

    def _client(self) -> aiodocker.Docker:
        if self._docker is None:
            self._docker = aiodocker.Docker(url=self.address)
        return self._docker

    async def close(self) -> None:
        """Close the HTTP session (safe to call twice)."""
        if self._docker is not None:
            await self._docker.close()
            self._docker = None

    async def call(
        self, what: str, fn: Callable[[], Awaitable[T]], *, timeout_s: float = CALL_TIMEOUT_S
    ) -> T:
        """Run one engine call, its errors ours (EngineUnavailable, EngineError)."""
        try:
            async with asyncio.timeout(timeout_s):
                return await fn()
        except aiodocker.DockerError as exc:
            if exc.status == 900:
                raise self._unavailable(what, _root_cause(exc.message)) from exc
            raise EngineError(f"{what}: {exc.message}", status=exc.status) from exc
        except TimeoutError as exc:
            raise EngineUnavailable(
                f"{what}: the Docker engine at {self.address} gave no answer within "
                f"{timeout_s:.0f}s"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise self._unavailable(what, _root_cause(str(exc))) from exc

    def _unavailable(self, what: str, cause: str) -> EngineUnavailable:
        return EngineUnavailable(
            f"{what}: cannot reach the Docker engine at {self.address}: {cause}"
        )

    async def json(
        self,
        what: str,
        path: str,
        method: str = "GET",
        *,
        timeout_s: float = CALL_TIMEOUT_S,
        **kw: Any,
    ) -> Any:
        """One API call answered with JSON."""
        return await self.call(
            what, lambda: self._client()._query_json(path, method, **kw), timeout_s=timeout_s
        )

    async def look_json(self, what: str, path: str) -> Any:
        """A GET of one engine object, on the enricher's hot path: on aiodocker's session
        and API version, without its generic query (a third more CPU per look: 110 against
        72 us on the ingest benchmark's fake engine); errors as :meth:`json` gives them."""
        docker = self._client()

        async def get() -> Any:
            await docker._check_version()
            url = f"{docker.docker_host}/{docker.api_version}/{path}"
            async with docker.session.get(url) as resp:
                body = await resp.read()
                if resp.status >= 400:
                    raise aiodocker.DockerError(resp.status, error_message(body))
                return orjson.loads(body)

        try:
            return await self.call(what, get)
        except orjson.JSONDecodeError as exc:
            raise EngineError(f"{what}: the engine answered with bad JSON ({exc})") from exc

    async def ping(self) -> None:
        """EngineUnavailable unless the engine answers its cheap ``/_ping``."""

        async def ping() -> None:
            resp = await self._client()._do_query("_ping", "GET", versioned_api=False)
            resp.release()

        await self.call("ping", ping, timeout_s=PING_TIMEOUT_S)

    async def open_stream(self, what: str, path: str, params: dict[str, Any]) -> Any:
        """A streamed GET (the events): the open response, with no read timeout."""
        docker = self._client()
        return await self.call(
            what,
            lambda: docker._do_query(path, "GET", params=params, timeout=_STREAM_TIMEOUT),
        )

    async def delete(self, what: str, path: str, params: dict[str, Any] | None) -> None:
        """A DELETE that answers no body."""

        async def delete() -> None:
            resp = await self._client()._do_query(path, "DELETE", params=params)
            resp.release()

        await self.call(what, delete)

    async def run_exec(
        self, container: str, argv: Sequence[str], timeout_s: float, own: Callable[[str], None]
    ) -> int | None:
        """Run ``argv`` in a container: its exit code, None when it did not finish within
        ``timeout_s``. ``own`` is told the exec id before it starts."""
        created = await self.json(
            "create exec",
            f"containers/{container}/exec",
            "POST",
            data={"Cmd": list(argv), "AttachStdout": True, "AttachStderr": True},
        )
        exec_id = str(created["Id"])
        own(exec_id)
        process = aiodocker.execs.Exec(self._client(), exec_id, tty=False)

        async def run() -> int | None:
            async with process.start(detach=False) as stream:
                while await stream.read_out() is not None:
                    pass  # the output is not ours to keep; its end is the exec's end
            state = await process.inspect()
            code = state.get("ExitCode")
            return int(code) if code is not None else None

        try:
            return await self.call("run busy-command", run, timeout_s=timeout_s)
        except EngineUnavailable as exc:
            if "no answer within" in exc.message:
                return None  # still running: the caller decides what a hung check means
            raise


def error_message(body: bytes) -> str:
    """The engine's ``{"message": ...}`` error body, or the body as text."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
        return str(parsed["message"])
    return body.decode("utf-8", "replace").strip()


def _root_cause(message: str) -> str:
    """The innermost part of aiodocker's nested "... [... [reason]]" connection messages."""
    inner = message.rsplit("[", 1)[-1].rstrip("]").strip()
    return inner or message


__all__ = ["CALL_TIMEOUT_S", "EngineClient", "error_message"]
