"""The one events supervisor on the real engine: node mode's stream dies and comes back the
way serve's does, and the periodic resync corrects what no event said, cheaply."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from idlewatch import Settings, Status, Watcher
from idlewatch.engine import AioDockerGateway
from idlewatch.engine.client import EngineClient
from idlewatch.events import StreamSupervisor
from idlewatch.node import NodeReporter
from idlewatch.store import SqlStore

from tests.private_engine import PrivateEngine
from tests.waiting import until

from .conftest import (
    LABEL,
    MutableGateway,
    create_service,
    run_container,
    running_tasks,
    until_report,
)
from .test_tracking import has


class CountingClient(EngineClient):
    """The real engine client, counting its calls (every one goes through ``call``)."""

    calls = 0

    async def call(self, what: str, fn: Any, *, timeout_s: float = 30.0) -> Any:
        self.calls += 1
        return await super().call(what, fn, timeout_s=timeout_s)


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
            await until_report(store, "sv-node", "node:n1", lambda r: r.running == 1, 60)
            assert reporter.stream.reconnects == 1
            await asyncio.to_thread(engine.restart)  # every stream from it ends
            await until(
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

            await until(lambda: bool(task()), 60, "the service's new task container")
            # the stream is live again: a user's exec in the new task reaches the store
            before = datetime.now(UTC)
            await asyncio.to_thread(engine.cli, "exec", task().split()[0], "true")
            report = await until_report(
                store,
                "sv-node",
                "node:n1",
                lambda r: r.last_activity is not None and r.last_activity >= before,
                timeout_s=60,
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
    caplog.set_level(logging.WARNING, logger="idlewatch")
    async with Watcher(settings, docker=gateway) as w:
        await w.wait_for("sv-drift", has(Status.RUNNING, replicas=1, running=1), 30)
        gateway.muted = True  # events of the scale never reach the watcher
        engine.cli("service", "scale", "-d", "sv-drift=2")
        await until(lambda: running_tasks(engine, "sv-drift") == 2, 30, "two tasks")
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
    client = CountingClient(settings.docker_url)
    gateway = AioDockerGateway(settings.docker_url, label=settings.label, client=client)
    async with Watcher(settings, docker=gateway) as w:
        await w.wait_synced(30)
        await until(lambda: len(w.agents()) == 20, 30, "the fleet")
        await w.settled(10)
        await until(lambda: w.status().periodic_resyncs >= 1, 10, "a first periodic resync")
        calls, resyncs = client.calls, w.status().periodic_resyncs
        await until(lambda: w.status().periodic_resyncs >= resyncs + 4, 20, "4 more resyncs")
        done = w.status().periodic_resyncs - resyncs
        made = client.calls - calls
        # the window may end inside a resync that has made its calls but not finished: one
        # more resync's worth; 4 calls each would still show (16 or more > 15)
        assert 0 < made <= 3 * (done + 1), f"{made} engine calls for {done} periodic resyncs"
        assert all(a.status is Status.RUNNING for a in w.agents())
