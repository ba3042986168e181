"""idlewatch's embeddable core: track managed Docker agents from the events stream, stop idle ones.

>>> async with Watcher(load_settings()) as w:   # doctest: +SKIP
...     async for change in w.changes(): ...
"""

from .clock import ManualClock, SystemClock
from .core import Health, Watcher
from .errors import (
    AgentNotFound,
    EngineError,
    EngineUnavailable,
    InvalidOperation,
    SettingsError,
    StoreError,
    SubscriberLagged,
    WatcherError,
)
from .models import Agent, AuditEntry, Change, Kind, Status
from .settings import Settings, load_settings
from .sweeper import SweepReport

__all__ = [
    "Agent",
    "AgentNotFound",
    "AuditEntry",
    "Change",
    "EngineError",
    "EngineUnavailable",
    "Health",
    "InvalidOperation",
    "Kind",
    "ManualClock",
    "Settings",
    "SettingsError",
    "Status",
    "StoreError",
    "SubscriberLagged",
    "SweepReport",
    "SystemClock",
    "Watcher",
    "WatcherError",
    "load_settings",
]
