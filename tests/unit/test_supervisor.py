"""The one events supervisor: the periodic resync corrects drift, and costs nothing when off."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from idlewatch import ManualClock, Settings, Status, Watcher
from idlewatch.events import StreamSupervisor
from idlewatch.models import ContainerInfo, freeze
from idlewatch.node import NodeReporter

from tests.fakes import FakeDocker, FakeStore
from tests.waiting import until

T0 = datetime(2026, 6, 1, tzinfo=UTC)
MANAGED = freeze({"idlewatch.enable": "true"})


def _watcher(docker: FakeDocker, resync_interval: object) -> Watcher:
    settings = Settings(
        docker_url="unix:///f.sock",
        database_url="sqlite:///u.db",
        resync_interval=resync_interval,  # type: ignore[arg-type]
    )
    return Watcher(settings, docker=docker, store=FakeStore(), clock=ManualClock(T0))


async def test_a_drift_no_event_announced_is_corrected_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    docker = FakeDocker()
    docker.containers["c1"] = ContainerInfo("c1", "box", "img", "running", MANAGED)
    caplog.set_level(logging.WARNING, logger="idlewatch")
    async with _watcher(docker, 0.05) as w:
        await w.wait_synced(5)
        # the container stops, and its events never reach us (filtered, lost, a bug)
        docker.containers["c1"] = replace(docker.containers["c1"], state="exited")
        agent = await w.wait_for("box", lambda a: a is not None and a.status is Status.EXITED, 5)
        assert agent is not None and w.status().periodic_resyncs >= 1
        assert len(docker.streams) == 1, "corrected without a reconnect"
    corrections = [r.getMessage() for r in caplog.records if "periodic resync" in r.getMessage()]
    assert corrections == [
        "periodic resync corrected box: status running -> exited, replicas 1 -> 0, running 1 -> 0"
    ], corrections


async def test_never_means_no_listing_after_the_first() -> None:
    """With `never`, the engine is listed once per connection; a watcher with a short
    interval, running alongside for the same time, lists it again and again."""
    quiet, busy = FakeDocker(), FakeDocker()
    async with _watcher(quiet, "never") as w_quiet, _watcher(busy, 0.02) as w_busy:
        await w_quiet.wait_synced(5)
        await w_busy.wait_synced(5)
        await until(lambda: w_busy.status().periodic_resyncs >= 5)
        assert quiet.calls["snapshot"] == 1 and w_quiet.status().periodic_resyncs == 0
        assert busy.calls["snapshot"] >= 6


def test_serve_and_node_mode_keep_their_streams_with_the_same_supervisor() -> None:
    from idlewatch import assemble

    reporter = NodeReporter(FakeDocker(), FakeStore(), node_id="n1")
    assert type(reporter.stream) is StreamSupervisor
    assert assemble.StreamSupervisor is StreamSupervisor  # what Watcher wires, not a copy


async def test_nothing_is_stopped_while_a_periodic_listing_parks_the_events() -> None:
    """While the listing is fetched, events wait: an attach may be among them, so the sweep
    holds back until they are applied."""
    docker = FakeDocker()
    docker.containers["c1"] = ContainerInfo("c1", "box", "img", "running", MANAGED)
    listing = asyncio.Event()
    listing.set()
    real = docker.snapshot
    asked = [0]

    async def gated(*, recheck_swarm: bool = True) -> Any:
        asked[0] += 1
        await listing.wait()
        return await real(recheck_swarm=recheck_swarm)

    docker.snapshot = gated  # type: ignore[method-assign]
    settings = Settings(
        docker_url="unix:///f.sock",
        database_url="sqlite:///u.db",
        resync_interval=0.05,
        idle_timeout=60,
    )
    clock = ManualClock(T0)
    async with Watcher(settings, docker=docker, store=FakeStore(), clock=clock) as w:
        await w.wait_synced(5)
        listing.clear()  # the next periodic listing hangs: events park meanwhile
        calls = asked[0]
        await until(lambda: asked[0] > calls)
        clock.advance(120)
        report = await w.sweep_once()
        assert report.skipped == "a resync with the engine is under way"
        assert docker.calls["stop_container"] == 0
        listing.set()
        await until(lambda: w.status().periodic_resyncs >= 1)


async def test_a_returning_engine_is_tracked_on_its_first_ping_not_after_the_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 22, item 8: while the engine is down, a cheap ping every ping_interval decides
    when to resubscribe; the backoff (here 1,000 s) is not waited out."""
    from idlewatch.bus import ChangeBus
    from idlewatch.enricher import Enricher
    from idlewatch.tracker import Tracker

    docker = FakeDocker()
    tracker = Tracker(label="idlewatch.enable", default_idle_timeout_s=60,
                      clock=ManualClock(T0), bus=ChangeBus([]))  # fmt: skip
    supervisor = StreamSupervisor(
        docker, tracker, Enricher(docker, tracker), backoff=lambda n: 1000.0 if n else 0.0,
        ping_interval_s=0.01,
    )  # fmt: skip
    caplog.set_level(logging.INFO, logger="idlewatch.events")
    supervisor.start()
    try:
        await supervisor.synced.wait()
        docker.reachable = False
        subscribed = docker.calls["subscribe"]
        docker.streams[-1].end()  # the engine restarts: the stream ends, nobody answers
        await docker.wait_calls("subscribe", subscribed + 1)  # at once (attempt 0), in vain
        await docker.wait_calls("ping", docker.calls["ping"] + 3)
        assert not supervisor.synced.is_set()
        docker.reachable = True
        async with asyncio.timeout(5):
            await supervisor.synced.wait()
    finally:
        await supervisor.close()
    logs = " ".join(r.getMessage() for r in caplog.records)
    assert "lost the Docker engine at fake://engine" in logs
    assert "IDLEWATCH_DOCKER_URL" not in logs, "no address hint for an engine that answered"
