"""Lifecycle operations through the core, against the private engine."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from idlewatch import AgentNotFound, InvalidOperation, Settings, Status, Watcher

from tests.private_engine import PrivateEngine

from .conftest import MutableGateway, create_service, inspect, run_container, wait_for_service
from .test_tracking import has


async def test_container_lifecycle(engine: PrivateEngine, watcher: Watcher) -> None:
    run_container(engine, "life")
    await watcher.wait_for("life", has(Status.RUNNING), 10)
    await watcher.stop("life")
    await watcher.wait_for("life", has(Status.EXITED), 10)
    assert inspect(engine, "life")["State"]["Running"] is False
    before = watcher.get("life")
    assert before is not None
    await watcher.start("life")
    await watcher.wait_for("life", has(Status.RUNNING), 10)
    after = watcher.get("life")
    assert after is not None and after.last_activity > before.last_activity
    started_at = inspect(engine, "life")["State"]["StartedAt"]
    await watcher.restart("life")
    await watcher.wait_for("life", has(Status.RUNNING), 10)
    assert inspect(engine, "life")["State"]["StartedAt"] != started_at
    await watcher.scale("life", 0)
    await watcher.wait_for("life", has(Status.EXITED), 10)
    with pytest.raises(InvalidOperation):
        await watcher.scale("life", 2)
    touched = await watcher.touch("life")
    assert touched.last_activity >= after.last_activity
    actions = [e.action for e in await watcher.audit("life")]
    assert actions == ["stop", "restart", "start", "stop"]  # newest first; scale 0 is a stop


async def test_service_lifecycle(engine: PrivateEngine, watcher: Watcher) -> None:
    create_service(engine, "svc-life")
    await wait_for_service(watcher, engine, "svc-life", has(Status.RUNNING, running=1), 20)
    await watcher.scale("svc-life", 3)
    three = has(Status.RUNNING, replicas=3, running=3)
    await wait_for_service(watcher, engine, "svc-life", three, 30)
    await watcher.stop("svc-life")
    none = has(Status.STOPPED, replicas=0, running=0)
    await wait_for_service(watcher, engine, "svc-life", none, 30)
    agent = await watcher.start("svc-life")
    assert agent.restore_replicas == 3
    await wait_for_service(watcher, engine, "svc-life", three, 30)
    version = inspect(engine, "svc-life")["Spec"]["TaskTemplate"].get("ForceUpdate", 0)
    await watcher.restart("svc-life")
    assert inspect(engine, "svc-life")["Spec"]["TaskTemplate"]["ForceUpdate"] == version + 1
    with pytest.raises(InvalidOperation):
        await watcher.scale("svc-life", 11)  # above max_replicas (10)
    with pytest.raises(InvalidOperation):
        await watcher.scale("svc-life", -1)


async def test_unlabelled_and_vanished_are_never_touched(
    engine: PrivateEngine, settings_for: Callable[..., Settings]
) -> None:
    settings = settings_for()
    gateway = MutableGateway(settings.docker_url, label=settings.label)
    async with Watcher(settings, docker=gateway) as watcher:
        await watcher.wait_synced(30)
        await _unlabelled_and_vanished(engine, watcher, gateway)


async def _unlabelled_and_vanished(
    engine: PrivateEngine, watcher: Watcher, gateway: MutableGateway
) -> None:
    run_container(engine, "outsider", managed=False)
    create_service(engine, "outsider-svc", managed=False)
    for op in (watcher.stop, watcher.restart, watcher.touch):
        with pytest.raises(AgentNotFound):
            await op("outsider")
        with pytest.raises(AgentNotFound):
            await op("outsider-svc")
    assert inspect(engine, "outsider")["State"]["Running"] is True
    run_container(engine, "ghost")
    await watcher.wait_for("ghost", has(Status.RUNNING), 10)
    ghost = watcher.get("ghost")
    assert ghost is not None
    gateway.muted = True  # deaf to events: the removal is only found by the live check
    engine.cli("rm", "-f", "ghost")
    with pytest.raises(AgentNotFound, match="no longer exists"):
        await watcher.stop("ghost")
    assert has(Status.ERROR)(watcher.get("ghost"))
