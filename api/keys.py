"""Typed application keys shared by the API modules."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

from aiohttp import web
from idlewatch import Settings, Watcher

from .metrics import Metrics

if TYPE_CHECKING:
    from .schemas import AgentJson
    from .ws import Feed

WATCHER: web.AppKey[Watcher] = web.AppKey("watcher", Watcher)
SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
AGENT_JSON: web.AppKey[AgentJson] = web.AppKey("agent_json")


class Sockets:
    """The open websockets of one app, held weakly."""

    def __init__(self) -> None:
        self._set: weakref.WeakSet[web.WebSocketResponse] = weakref.WeakSet()
        self.dropped = 0  # clients aborted for not reading

    def add(self, ws: web.WebSocketResponse) -> None:
        """Track a socket."""
        self._set.add(ws)

    def discard(self, ws: web.WebSocketResponse) -> None:
        """Stop tracking a socket."""
        self._set.discard(ws)

    def all(self) -> list[web.WebSocketResponse]:
        """The sockets still open."""
        return list(self._set)

    def __len__(self) -> int:
        return len(self._set)


SOCKETS: web.AppKey[Sockets] = web.AppKey("sockets", Sockets)
FEED: web.AppKey[Feed] = web.AppKey("feed")
