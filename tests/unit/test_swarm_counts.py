"""Swarm task accounting: a service's running count from its looks and its events."""

from __future__ import annotations

from datetime import UTC, datetime

from idlewatch import ManualClock, Status
from idlewatch.clock import to_ns
from idlewatch.models import (
    EngineEvent,
    EventType,
    ServiceInfo,
    freeze,
)

from tests.builders import tracker

LABEL = "idlewatch.enable"


T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _sev(action: str, sid: str, t: int, **attrs: str) -> EngineEvent:
    return EngineEvent(
        EventType.SERVICE, action, sid, to_ns(T0) + t, attributes=freeze({"name": "svc", **attrs})
    )


def _task(action: str, cid: str, sid: str) -> EngineEvent:
    return EngineEvent(
        EventType.CONTAINER,
        action,
        cid,
        to_ns(T0),
        name="svc.1.x",
        attributes=freeze({"com.docker.swarm.service.id": sid}),
    )


def test_a_recreated_service_does_not_inherit_old_task_counts() -> None:
    tr, _, _ = tracker(ManualClock(T0))
    tr.apply_service(ServiceInfo("s1", "svc", "img", freeze({LABEL: "true"}), 2, 0), "s1")
    tr.apply(_task("start", "t1", "s1"))
    tr.apply(_task("start", "t2", "s1"))
    tr.apply(_sev("remove", "s1", 1))
    tr.apply_service(ServiceInfo("s2", "svc", "img", freeze({LABEL: "true"}), 1, 0), "s2")
    svc = tr.agents["svc"]
    assert (svc.running, svc.status) == (0, Status.STARTING)


def test_a_first_inspect_seeds_the_running_count() -> None:
    tr, _, _ = tracker(ManualClock(T0))
    tr.apply_service(ServiceInfo("s1", "svc", "img", freeze({LABEL: "true"}), 3, 3), "s1")
    assert tr.agents["svc"].running == 3 and tr.agents["svc"].status is Status.RUNNING


def test_an_inspect_older_than_an_event_does_not_undo_it() -> None:
    tr, _, _ = tracker(ManualClock(T0))
    tr.apply_service(ServiceInfo("s1", "svc", "img", freeze({LABEL: "true"}), 0, 0), "s1")
    seq = tr.seq  # the inspect is sent now...
    tr.apply(_sev("update", "s1", 5, **{"replicas.old": "0", "replicas.new": "3"}))
    stale = ServiceInfo("s1", "svc", "img", freeze({LABEL: "true"}), 0, 0)
    tr.apply_service(stale, "s1", seq)  # ...and answers with what it saw before the update
    assert tr.agents["svc"].replicas == 3


def test_replicas_old_zero_is_read_as_zero() -> None:
    tr, changes, _ = tracker(ManualClock(T0))
    tr.apply_service(ServiceInfo("s1", "svc", "img", freeze({LABEL: "true"}), 2, 0), "s1")
    tr.apply(_sev("update", "s1", 5, **{"replicas.old": "0", "replicas.new": "3"}))
    assert changes[-1].reason == "event:scale 0->3"
