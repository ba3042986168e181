"""Looks at the engine: a failed look, and a container's events kept in order behind one."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from idlewatch import ManualClock, Settings, Status, Watcher
from idlewatch.clock import to_ns
from idlewatch.models import (
    Agent,
    ContainerInfo,
    EngineEvent,
    EventType,
    Kind,
    freeze,
)

from tests.fakes import FakeDocker, FakeStore
from tests.waiting import until

T0 = datetime(2026, 7, 1, tzinfo=UTC)


MANAGED = freeze({"idlewatch.enable": "true"})


HEALTHCHECK = "/bin/sh -c true"


async def test_a_failed_look_counts_the_exec_and_is_asked_again_in_serve_too() -> None:
    docker = FakeDocker()
    settings = Settings(docker_url="unix:///f.sock", database_url="sqlite:///u.db")
    async with Watcher(settings, docker=docker, store=FakeStore(), clock=ManualClock(T0)) as w:
        await w.wait_synced(5)
        # started after the listing: no session reading looked at it, its healthcheck is unknown
        docker.containers["c1"] = ContainerInfo("c1", "box", "img", "running", MANAGED, HEALTHCHECK)
        t = to_ns(T0) + 10**12
        docker.streams[-1].queue.put_nowait(
            EngineEvent(EventType.CONTAINER, "start", "c1", t - 10**9, "box", "img", "", MANAGED)
        )
        start = await w.wait_for("box", lambda a: a is not None, 5)
        assert start is not None

        def hc(i: int) -> EngineEvent:
            return EngineEvent(
                EventType.CONTAINER,
                "exec_start",
                "c1",
                t + i,
                "box",
                "img",
                HEALTHCHECK,
                freeze({**MANAGED, "execID": f"h{i}"}),
            )

        docker.reachable = False  # the look fails; the open stream keeps going
        docker.streams[-1].queue.put_nowait(hc(1))
        used = await w.wait_for(
            "box", lambda a: a is not None and a.last_activity > start.last_activity, 5
        )
        assert used is not None
        docker.reachable = True
        docker.streams[-1].queue.put_nowait(hc(2))
        await until(lambda: docker.calls["inspect_container"] >= 2)  # asked again
        await w.settled(5)
        after = w.get("box")
        assert after is not None and after.last_activity == used.last_activity  # now known


async def test_a_containers_events_are_applied_in_order_while_one_waits_for_a_look() -> None:
    """An exec's end that arrives while its start waits for the look at the container is
    applied after it, so the end of a user's session still counts (it did not in node mode
    once the supervisor was shared)."""
    from idlewatch.node import NodeReporter
    from idlewatch.policy import SERVICE_ID_LABEL

    docker = FakeDocker()
    task_labels = freeze({SERVICE_ID_LABEL: "s1"})
    docker.containers["c1"] = ContainerInfo("c1", "svc.1.x", "img", "running", task_labels)
    store = FakeStore()

    store.rows["web"] = Agent("web", Kind.SERVICE, "s1", "img", Status.RUNNING, 1, 1, T0, 60.0, T0)
    rep = NodeReporter(docker, store, node_id="n1", report_interval_s=0.01, refresh_interval_s=0.01)
    rep.start()
    try:
        await asyncio.wait_for(rep.stream.synced.wait(), 5)
        t = to_ns(T0) + 10**12

        def ev(action: str, i: int) -> EngineEvent:
            attrs = {**task_labels, "execID": "u1"}
            return EngineEvent(
                EventType.CONTAINER,
                action,
                "c1",
                t + i * 10**9,
                "svc.1.x",
                "img",
                "sh",
                freeze(attrs),
            )

        docker.streams[-1].queue.put_nowait(ev("exec_start", 1))  # waits for a look
        docker.streams[-1].queue.put_nowait(ev("exec_die", 2))  # right behind it
        await until(lambda: docker.streams[-1].queue.empty())
        await rep.stream.settled()
        found = rep.activity.report("s1", "web", rep.source)
        assert found.last_activity is not None
        assert abs(to_ns(found.last_activity) - (t + 2 * 10**9)) < 10**6, "the end counted"
    finally:
        await rep.close()
