"""The application keys every API module reads: the watcher and its settings. Each other
key is declared beside its type (``AGENT_JSON`` in render.py, ``METRICS`` in metrics.py,
``SOCKETS`` and ``FEED`` in ws.py)."""

from __future__ import annotations

from aiohttp import web
from idlewatch import Settings, Watcher

WATCHER: web.AppKey[Watcher] = web.AppKey("watcher", Watcher)
SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
