"""Builders for the tests: agents, engine facts and events in one line each, with what a
test does not care about filled in. Times count from :data:`T0` (``t_s`` seconds after)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from idlewatch import Settings
from idlewatch.clock import ManualClock, to_ns
from idlewatch.holds import Explanation, Policy, explain
from idlewatch.models import Agent, ContainerInfo, EngineEvent, EventType, Kind, Status, freeze
from idlewatch.tracker import Tracker

from tests.fakes import ChangeLog

#: a fixed start of time for tests on a ManualClock
T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
NS0 = to_ns(T0)
LABEL = "idlewatch.enable"
MANAGED: Mapping[str, str] = freeze({LABEL: "true"})
SERVICE_ID = "com.docker.swarm.service.id"


def at(t_s: float) -> datetime:
    """``t_s`` seconds after T0."""
    return T0 + timedelta(seconds=t_s)


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


def box(cid: str, name: str, state: str = "running", **labels: str) -> ContainerInfo:
    """A managed container as the engine lists it."""
    return ContainerInfo(cid, name, "img", state, freeze({**MANAGED, **labels}))


def task(cid: str, sid: str = "s1", state: str = "running", hc: str | None = None) -> ContainerInfo:
    """A task container of service ``sid``."""
    labels = {SERVICE_ID: sid, "com.docker.swarm.service.name": f"svc-{sid}"}
    return ContainerInfo(cid, f"svc-{sid}.1.{cid}", "img", state, freeze(labels), hc)


def container_event(
    action: str,
    cid: str = "c1",
    name: str = "box",
    t_s: float = 0.0,
    *,
    detail: str = "",
    managed: bool = True,
    **attrs: str,
) -> EngineEvent:
    """A container event as the engine adapter hands it over, ``t_s`` after T0."""
    assert "t" not in attrs, "the time is t_s (t would become an attribute)"
    labels = {LABEL: "true"} if managed else {}
    return EngineEvent(
        EventType.CONTAINER,
        action,
        cid,
        NS0 + int(t_s * 1e9),
        name,
        "img",
        detail,
        freeze({"name": name, **labels, **attrs}),
    )


def service_event(action: str, sid: str = "s1", t_s: float = 0.0, **attrs: str) -> EngineEvent:
    """A service event (no labels: the engine sends only the name and replica counts)."""
    return EngineEvent(
        EventType.SERVICE,
        action,
        sid,
        NS0 + int(t_s * 1e9),
        attributes=freeze({"name": "svc", **attrs}),
    )


def task_event(
    action: str,
    cid: str = "c1",
    sid: str = "s1",
    t_s: float = 0.0,
    detail: str = "",
    exec_id: str = "",
) -> EngineEvent:
    """A container event of a task of service ``sid``."""
    attrs = {SERVICE_ID: sid, "com.docker.swarm.service.name": f"svc-{sid}"}
    if exec_id:
        attrs["execID"] = exec_id
    return EngineEvent(
        EventType.CONTAINER,
        action,
        cid,
        NS0 + int(t_s * 1e9),
        name=f"svc-{sid}.1.{cid}",
        detail=detail,
        attributes=freeze(attrs),
    )


def settings(**overrides: Any) -> Settings:
    """Settings for a watcher on fakes (the engine and the database are given)."""
    base: dict[str, Any] = {"docker_url": "unix:///fake.sock", "database_url": "sqlite:///u.db"}
    return Settings(**{**base, **overrides})


def tracker(
    clock: ManualClock | None = None, *, timeout_s: float | None = 900
) -> tuple[Tracker, ChangeLog, ManualClock]:
    """A tracker on a manual clock (from T0), its changes kept in a list."""
    changes = ChangeLog()
    clock = clock or ManualClock(T0)
    made = Tracker(label=LABEL, default_idle_timeout_s=timeout_s, clock=clock, bus=changes)
    return made, changes, clock


def explainer(policy: Policy) -> Callable[[Agent, datetime], Explanation]:
    """An agent's holds and next action under one policy, no groups, no busy check."""
    return lambda a, now: explain(a, now, policy)
