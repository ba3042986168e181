"""idlewatch: event-driven scale-to-zero for Docker containers and Swarm services.

The embeddable core: track managed Docker agents from the events stream, stop idle ones.

>>> async with Watcher(load_settings()) as w:   # doctest: +SKIP
...     async for change in w.changes(): ...

The HTTP API is :mod:`idlewatch.api`. Names that pull in the engine client, the database
layer or pydantic (``Watcher``, ``Settings``...) are imported on first use (PEP 562), so
that ``import idlewatch`` and the ``idlewatch`` command stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .clock import ManualClock, SystemClock
from .errors import (
    AgentNotFound,
    CapacityExceeded,
    EngineError,
    EngineUnavailable,
    InvalidOperation,
    InvalidValue,
    SettingsError,
    StoreError,
    SubscriberLagged,
    WatcherError,
)
from .models import Agent, AgentSpec, AuditEntry, Change, Kind, Status

if TYPE_CHECKING:
    from .core import Watcher
    from .replicas import LeaderInfo
    from .settings import Settings
    from .settings_load import load_settings
    from .status import Health, WatcherStatus
    from .sweeper import SweepReport
    from .wake import WakeResult

_LAZY = {
    "Watcher": ".core",
    "Settings": ".settings",
    "load_settings": ".settings_load",
    "Health": ".status",
    "WatcherStatus": ".status",
    "LeaderInfo": ".replicas",
    "SweepReport": ".sweeper",
    "WakeResult": ".wake",
}

__all__ = [
    "Agent",
    "AgentNotFound",
    "AgentSpec",
    "CapacityExceeded",
    "AuditEntry",
    "Change",
    "EngineError",
    "EngineUnavailable",
    "Health",
    "InvalidOperation",
    "InvalidValue",
    "Kind",
    "LeaderInfo",
    "ManualClock",
    "Settings",
    "SettingsError",
    "Status",
    "StoreError",
    "SubscriberLagged",
    "SweepReport",
    "SystemClock",
    "WakeResult",
    "Watcher",
    "WatcherError",
    "WatcherStatus",
    "load_settings",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
