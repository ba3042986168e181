"""Builders for the tests: agents and engine events in one line, with what a test does not
care about filled in."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from idlewatch.models import Agent, EngineEvent, EventType, Kind, Status, freeze

#: a fixed start of time for tests on a ManualClock
T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
LABEL = "idlewatch.enable"
MANAGED: Mapping[str, str] = freeze({LABEL: "true"})


def agent(
    name: str = "a",
    status: Status = Status.RUNNING,
    *,
    kind: Kind = Kind.CONTAINER,
    idle_for_s: float = 0.0,
    timeout_s: float | None = 60.0,
    now: datetime = T0,
    labels: Mapping[str, str] | None = None,
    **fields: Any,
) -> Agent:
    """An agent, running by default, last used ``idle_for_s`` before ``now``; a container
    counts 1/1 replicas while it runs (0/0 otherwise) unless ``fields`` say otherwise."""
    up = 1 if status in (Status.RUNNING, Status.PAUSED, Status.RESTARTING) else 0
    base: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "id": f"id-{name}",
        "image": "img",
        "status": status,
        "replicas": up if kind is Kind.CONTAINER else 1,
        "running": up,
        "last_activity": now - timedelta(seconds=idle_for_s),
        "idle_timeout_s": timeout_s,
        "updated_at": now,
        "labels": freeze(MANAGED if labels is None else labels),
    }
    base.update(fields)
    return Agent(**base)


def container_event(
    action: str,
    actor_id: str = "id-a",
    *,
    at: datetime = T0,
    name: str = "a",
    detail: str = "",
    attributes: Mapping[str, str] | None = None,
) -> EngineEvent:
    """A container event as the engine adapter hands it over."""
    attrs = dict(MANAGED if attributes is None else attributes)
    attrs.setdefault("name", name)
    return EngineEvent(
        EventType.CONTAINER,
        action,
        actor_id,
        int(at.timestamp() * 1e9),
        name,
        "img",
        detail,
        freeze(attrs),
    )
