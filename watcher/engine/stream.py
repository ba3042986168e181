"""The events stream: an open ``/events`` response read in chunks and split into
normalized events (normalize.py); a subscription replays from a given ``timeNano``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from ..errors import EngineUnavailable
from ..models import EngineEvent
from ..normalize import BadEvent, parse_line
from .client import EngineClient

logger = logging.getLogger(__name__)

_CHUNK = 1 << 16
_FAIR_AFTER_LINES = 32  # a chunk of this many events yields to the loop after it


def since(ns: int) -> str:
    """A ``since`` parameter the engine takes: absolute seconds with nanoseconds."""
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


async def subscribe(client: EngineClient, since_ns: int | None) -> DockerStream:
    """Open the events stream for containers and services, replaying from ``since_ns``."""
    params: dict[str, Any] = {"filters": {"type": ["container", "service"]}}
    if since_ns is not None:
        params["since"] = since(since_ns)
    return DockerStream(await client.open_stream("subscribe to events", "events", params))


class DockerStream:
    """An open ``/events`` response, read in chunks and split into normalized events."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._resp = response
        self.bad_items = 0

    def __aiter__(self) -> AsyncIterator[EngineEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[EngineEvent]:
        buf = b""
        try:
            while True:
                chunk = await self._resp.content.read(_CHUNK)
                if not chunk:
                    break
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    ev = self._parse(line)
                    if ev is not None:
                        yield ev
                if len(lines) >= _FAIR_AFTER_LINES:
                    # a big chunk was likely buffered already, and a read of buffered data
                    # returns without suspending: let the other tasks (the enricher's
                    # looks, the API) run between chunks of a burst
                    await asyncio.sleep(0)
        except (aiohttp.ClientError, OSError) as exc:
            raise EngineUnavailable(f"events stream broke: {exc}") from exc
        if buf.strip():
            self._parse(buf)  # a truncated last line: logged as bad, never applied

    def _parse(self, line: bytes) -> EngineEvent | None:
        if not line.strip():
            return None
        try:
            return parse_line(line)
        except BadEvent as exc:
            self.bad_items += 1
            logger.warning("skipping a bad events-stream item: %s", exc)
            return None

    async def close(self) -> None:
        """Release the connection."""
        self._resp.close()


__all__ = ["DockerStream", "since", "subscribe"]
