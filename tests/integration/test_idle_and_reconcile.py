"""Idle scale-to-zero, dead letters, daemon restarts and an engine that is not there yet."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from idlewatch import ManualClock, Settings, Status, Watcher

from tests.private_engine import PrivateEngine
from tests.waiting import until

from .conftest import create_service, inspect, run_container, running_tasks
from .test_tracking import has


async def test_idle_agents_are_stopped_and_audited(
    engine: PrivateEngine, settings_for: Callable[..., Settings]
) -> None:
    short = {"idlewatch.idle-timeout": "30s"}
    create_service(engine, "idle-svc", replicas=2, labels=short)
    run_container(engine, "idle-c", labels=short)
    run_container(engine, "busy-c", labels=short)
    run_container(engine, "forever-c", labels={"idlewatch.idle-timeout": "0"})
    run_container(engine, "plain", managed=False)
    await until(lambda: running_tasks(engine, "idle-svc") == 2, 30, "two tasks")
    clock = ManualClock(datetime.now(UTC))
    async with Watcher(settings_for(), clock=clock) as w:
        await w.wait_synced(30)
        await w.wait_for("idle-svc", has(Status.RUNNING, running=2), 20)
        nothing = await w.sweep_once()
        assert nothing.candidates == []
        clock.advance(60)
        await w.touch("busy-c")
        report = await w.sweep_once()
        assert sorted(report.candidates) == ["idle-c", "idle-svc"]
        assert report.summary() == {"idle-c": "acted", "idle-svc": "acted"}
        await w.wait_for("idle-svc", has(Status.STOPPED, replicas=0), 20)
        await w.wait_for("idle-c", has(Status.EXITED), 20)
        assert inspect(engine, "idle-svc")["Spec"]["Mode"]["Replicated"]["Replicas"] == 0
        assert inspect(engine, "idle-c")["State"]["Running"] is False
        for name in ("busy-c", "forever-c", "plain"):
            assert inspect(engine, name)["State"]["Running"] is True, name
        audit = await w.audit()
        actions = {(e.agent, e.action, e.actor) for e in audit}
        assert ("idle-svc", "scale_to_zero", "sweep") in actions
        assert ("idle-c", "stop", "sweep") in actions
        assert all(e.agent not in ("busy-c", "plain", "forever-c") for e in audit)
        # the next start brings the service back to the count it had
        started = await w.start("idle-svc")
        assert started.restore_replicas == 2
        await w.wait_for("idle-svc", has(Status.RUNNING, replicas=2, running=2), 30)


async def test_dry_run_records_without_acting(
    engine: PrivateEngine, settings_for: Callable[..., Settings]
) -> None:
    run_container(engine, "dry", labels={"idlewatch.idle-timeout": "10s"})
    clock = ManualClock(datetime.now(UTC))
    async with Watcher(settings_for(dry_run=True), clock=clock) as w:
        await w.wait_synced(30)
        clock.advance(30)
        report = await w.sweep_once()
        assert report.summary() == {"dry": "dry-run"}
        assert (await w.sweep_once()).candidates == [], "reported once per idle period"
        assert inspect(engine, "dry")["State"]["Running"] is True
        audit = await w.audit("dry")
        assert [(e.action, e.dry_run) for e in audit] == [("stop", True)]


async def test_dead_letter_found_at_start_up(
    engine: PrivateEngine, settings_for: Callable[..., Settings]
) -> None:
    run_container(engine, "doomed")
    run_container(engine, "stopped-one")
    engine.cli("stop", "stopped-one")
    async with Watcher(settings_for()) as w:
        await w.wait_synced(30)
        assert has(Status.RUNNING)(w.get("doomed"))
        assert has(Status.EXITED)(w.get("stopped-one"))
    engine.cli("rm", "-f", "doomed", "stopped-one")  # while idlewatch is down
    async with Watcher(settings_for()) as w:
        await w.wait_synced(30)
        doomed = w.get("doomed")
        assert doomed is not None and doomed.status is Status.ERROR
        assert doomed.error is not None and "no longer exists" in doomed.error
        assert has(Status.REMOVED)(w.get("stopped-one")), "a stopped one is just removed"
        audit = await w.audit("doomed")
        assert [e.action for e in audit] == ["dead_letter"]


async def test_reconnects_after_daemon_restart(engine: PrivateEngine, watcher: Watcher) -> None:
    run_container(engine, "survivor", extra=("--restart", "always"))
    run_container(engine, "casualty")
    await watcher.wait_for("survivor", has(Status.RUNNING), 10)
    await watcher.wait_for("casualty", has(Status.RUNNING), 10)
    connects = watcher.status().reconnects
    engine.restart()
    await until(
        lambda: watcher.status().reconnects > connects and watcher.health().ready,
        60,
        "reconnect and resync",
    )
    await watcher.wait_for("casualty", has(Status.EXITED), 20)
    await watcher.wait_for("survivor", has(Status.RUNNING), 20)
    # the stream is live again: a change after the restart is seen
    engine.cli("stop", "survivor")
    await watcher.wait_for("survivor", has(Status.EXITED), 20)
    for agent in watcher.agents():
        state = inspect(engine, agent.name)["State"]["Status"]
        assert agent.status.value == state, agent


async def test_engine_absent_at_start_then_appears(
    settings_for: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    late = PrivateEngine()
    try:
        settings = settings_for(docker_url=late.url)
        caplog.set_level(logging.INFO, logger="idlewatch")
        async with Watcher(settings) as w:
            await until(
                lambda: any("unreachable" in r for r in w.health().reasons), 10, "first failure"
            )
            assert not w.health().ready
            warnings = [
                r.getMessage()
                for r in caplog.records
                if r.name == "idlewatch.events" and "cannot reach" in r.getMessage()
            ]
            assert len(warnings) == 1, warnings
            assert late.url in warnings[0] and "IDLEWATCH_DOCKER_URL" in warnings[0]
            late.start()
            await w.wait_synced(60)
            assert w.health().ready
    finally:
        late.cleanup()


async def test_only_a_label_value_of_exactly_true_is_managed(
    engine: PrivateEngine, settings_for: Callable[..., Settings]
) -> None:
    """``True``, ``TRUE``, ``1``, ``yes`` and `` true`` are never managed, so never stopped
    (issue 22, item 5: ``idlewatch.enable=True`` was idle-stopped)."""
    near_misses = {"cap": "True", "upper": "TRUE", "one": "1", "yes": "yes", "space": " true"}
    short = {"idlewatch.idle-timeout": "10s"}
    for name, value in near_misses.items():
        run_container(engine, f"lbl-{name}", managed=False, labels={"idlewatch.enable": value})
    create_service(engine, "lbl-svc", managed=False, labels={"idlewatch.enable": "True", **short})
    run_container(engine, "lbl-exact", labels=short)
    clock = ManualClock(datetime.now(UTC))
    async with Watcher(settings_for(), clock=clock) as w:
        await w.wait_synced(30)
        await w.settled(10)
        assert [a.name for a in w.agents()] == ["lbl-exact"]
        clock.advance(60)
        report = await w.sweep_once()
        assert report.candidates == ["lbl-exact"]
    for name in near_misses:
        assert inspect(engine, f"lbl-{name}")["State"]["Running"] is True, name
    assert inspect(engine, "lbl-svc")["Spec"]["Mode"]["Replicated"]["Replicas"] == 1
