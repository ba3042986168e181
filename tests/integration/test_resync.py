"""The one events supervisor on the real engine: node mode's stream dies and comes back the
way serve's does, and the periodic resync corrects what no event said, cheaply."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from idlewatch import Settings, Status, Watcher
from idlewatch.engine import AioDockerGateway
from idlewatch.events import StreamSupervisor
from idlewatch.models import ActivityReport
from idlewatch.node import NodeReporter
from idlewatch.store import SqlStore

from tests.private_engine import PrivateEngine

from .conftest import (
    LABEL,
    MutableGateway,
    create_service,
    eventually,
    run_container,
    running_tasks,
)
from .test_tracking import has


class CountingGateway(AioDockerGateway):
    """The real gateway, counting its engine calls (every one goes through ``_call``)."""

    calls = 0

    async def _call(self, what: str, fn: Any, *, timeout_s: float = 30.0) -> Any:
        self.calls += 1
        return await super()._call(what, fn, timeout_s=timeout_s)


async def _report(store: SqlStore, agent: str) -> ActivityReport | None:
    for report in await store.activity.load_activity():
        if report.agent == agent and report.source == "node:n1":
            return report
    return None


async def _until_report(
    store: SqlStore, agent: str, check: Callable[[ActivityReport], bool], timeout_s: float = 60
) -> ActivityReport:
    deadline = time.monotonic() + timeout_s
    while True:
        report = await _report(store, agent)
        if report is not None and check(report):
            return report
        assert time.monotonic() < deadline, f"no matching report of {agent}: {report}"
        await asyncio.sleep(0.1)


async def test_node_mode_reconnects_and_resyncs_after_the_engine_restarts(
    engine: PrivateEngine, settings_for: Callable[..., Settings]
) -> None:
    """The same supervisor as serve's: the engine goes away (its tasks die with it), comes
    back, and the node lists it again and follows its events from then on."""
    sid = create_service(engine, "sv-node")
    settings = settings_for()
    async with Watcher(settings) as w:  # the leader records the service as managed
        await w.wait_for("sv-node", has(Status.RUNNING, running=1), 30)
        await w.flush(10)
        store = SqlStore(settings.database_url)
        await store.connect()
        gateway = AioDockerGateway(engine.url, label=LABEL)
        reporter = NodeReporter(
            gateway,
            store.activity,
            node_id="n1",
            report_interval_s=0.2,
            refresh_interval_s=0.5,
            backoff=lambda attempt: 0.2,
        )
        assert type(reporter.stream) is StreamSupervisor  # serve's supervisor, not a copy
        reporter.start()
        try:
            await _until_report(store, "sv-node", lambda r: r.running == 1)
            assert reporter.stream.reconnects == 1
            await asyncio.to_thread(engine.restart)  # every stream from it ends
            await eventually(
                lambda: reporter.stream.reconnects >= 2 and reporter.stream.synced.is_set(),
                60,
                "the node's stream to reconnect and resync",
            )

            def task() -> str:
                return engine.cli(
                    "ps",
                    "-q",
                    "--filter",
                    f"label=com.docker.swarm.service.id={sid}",
                    "--filter",
                    "status=running",
                )

            await eventually(lambda: bool(task()), 60, "the service's new task container")
            # the stream is live again: a user's exec in the new task reaches the store
            before = datetime.now(UTC)
            await asyncio.to_thread(engine.cli, "exec", task().split()[0], "true")
            report = await _until_report(
                store,
                "sv-node",
                lambda r: r.last_activity is not None and r.last_activity >= before,
            )
            assert report.running == 1
        finally:
            await reporter.close()
            await store.close()
            await gateway.close()


async def test_the_periodic_resync_corrects_a_task_count_no_event_announced(
    engine: PrivateEngine,
    settings_for: Callable[..., Settings],
    caplog: pytest.LogCaptureFixture,
) -> None:
    create_service(engine, "sv-drift")
    settings = settings_for(resync_interval=1)
    gateway = MutableGateway(settings.docker_url, label=settings.label)
    caplog.set_level(logging.WARNING, logger="idlewatch.tracker")
    async with Watcher(settings, docker=gateway) as w:
        await w.wait_for("sv-drift", has(Status.RUNNING, replicas=1, running=1), 30)
        gateway.muted = True  # events of the scale never reach the watcher
        engine.cli("service", "scale", "-d", "sv-drift=2")
        await eventually(lambda: running_tasks(engine, "sv-drift") == 2, 30, "two tasks")
        await w.wait_for("sv-drift", has(Status.RUNNING, replicas=2, running=2), 30)
        assert w.status().periodic_resyncs >= 1 and w.status().reconnects == 0
    corrected = [r.getMessage() for r in caplog.records if "sv-drift" in r.getMessage()]
    assert any(m.startswith("periodic resync corrected sv-drift") for m in corrected), corrected


async def test_a_periodic_resync_costs_at_most_three_engine_calls(
    engine: PrivateEngine, settings_for: Callable[..., Settings]
) -> None:
    """A steady fleet of 20 agents (Swarm active, so services and tasks are listed too):
    each periodic resync makes at most 3 calls, and nothing else calls the engine; at the
    default of 5 minutes that is far below 3 calls per 20 s."""
    for i in range(20):
        run_container(engine, f"steady-{i}")
    settings = settings_for(resync_interval=0.5)
    gateway = CountingGateway(settings.docker_url, label=settings.label)
    async with Watcher(settings, docker=gateway) as w:
        await w.wait_synced(30)
        await eventually(lambda: len(w.agents()) == 20, 30, "the fleet")
        await w.settled(10)
        await eventually(lambda: w.status().periodic_resyncs >= 1, 10, "a first periodic resync")
        calls, resyncs = gateway.calls, w.status().periodic_resyncs
        await eventually(lambda: w.status().periodic_resyncs >= resyncs + 4, 20, "4 more resyncs")
        done = w.status().periodic_resyncs - resyncs
        made = gateway.calls - calls
        # the window may end inside a resync that has made its calls but not finished: one
        # more resync's worth; 4 calls each would still show (16 or more > 15)
        assert made <= 3 * (done + 1), f"{made} engine calls for {done} periodic resyncs"
        assert all(a.status is Status.RUNNING for a in w.agents())
