"""The HTTP API over the core Watcher: REST, websocket feed, auth, health and metrics.

``create_app(watcher)`` returns an application a host app can mount with ``add_subapp``;
``watcher_ctx(settings)`` is a ``cleanup_ctx`` that runs a Watcher inside a host app.

The names are imported on first use (PEP 562), so that the ``idlewatch`` command, which
lives in this package, answers ``--help`` without importing aiohttp and the core.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app, watcher_ctx
    from .keys import SETTINGS, WATCHER
    from .limits import GUARD
    from .metrics import METRICS
    from .ws import SOCKETS

_WHERE = {
    "create_app": ".app",
    "watcher_ctx": ".app",
    "GUARD": ".limits",
    "METRICS": ".metrics",
    "SETTINGS": ".keys",
    "SOCKETS": ".ws",
    "WATCHER": ".keys",
}

__all__ = ["GUARD", "METRICS", "SETTINGS", "SOCKETS", "WATCHER", "create_app", "watcher_ctx"]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
