"""The sweep acts only on a current picture: never while the stream is down, never on
what is removed; a redeploy never removes what idlewatch did not deploy."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from idlewatch import AgentNotFound, ManualClock, Settings, Status, Watcher
from idlewatch.errors import Conflict
from idlewatch.models import (
    AgentSpec,
    ContainerInfo,
    Snapshot,
    freeze,
)

from tests.fakes import FakeDocker, FakeStore

LABEL = "idlewatch.enable"


T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _settings(**kw: object) -> Settings:
    return Settings(docker_url="unix:///fake.sock", database_url="sqlite:///unused.db", **kw)  # type: ignore[arg-type]


async def _watcher(docker: FakeDocker, store: FakeStore | None = None, **kw: object) -> Watcher:
    w = Watcher(
        _settings(**kw),
        docker=docker,
        store=store or FakeStore(),
        clock=ManualClock(T0),
        backoff=lambda n: 0.0,
    )
    await w.open()
    await w.wait_synced(5)
    return w


async def test_redeploy_never_removes_a_managed_container_it_did_not_deploy() -> None:
    docker = FakeDocker()
    store = FakeStore()
    w = await _watcher(docker, store, allowed_images=["img*"])
    try:
        docker.containers["web"] = ContainerInfo(
            "u1", "web", "postgres", "running", freeze({LABEL: "true"})
        )
        store.specs["web"] = AgentSpec("web", "img")  # registered (through another replica)

        async def conflict(spec: AgentSpec, *, network: str | None) -> str:
            raise Conflict("name taken")

        docker.create_agent = conflict  # type: ignore[method-assign]
        with pytest.raises(Conflict, match="not deployed by idlewatch"):
            await w.deploy("web")
        assert docker.calls["remove_agent"] == 0
    finally:
        await w.close()


async def test_the_stream_survives_a_bug_in_a_resync() -> None:
    docker = FakeDocker()
    real = docker.snapshot
    failures = [KeyError("Spec")]

    async def flaky(*, recheck_swarm: bool = True) -> Snapshot:
        if failures:
            raise failures.pop()
        return await real()

    docker.snapshot = flaky  # type: ignore[method-assign]
    w = Watcher(
        _settings(), docker=docker, store=FakeStore(), clock=ManualClock(T0), backoff=lambda n: 0.0
    )
    await w.open()
    try:
        await w.wait_synced(5)
        assert docker.calls["subscribe"] == 2 and w.health().ready
    finally:
        await w.close()


async def test_no_idle_stop_while_the_stream_is_down() -> None:
    docker = FakeDocker()
    docker.containers["c1"] = ContainerInfo("c1", "idle", "img", "running", freeze({LABEL: "true"}))
    clock = ManualClock(T0)
    w = Watcher(
        _settings(idle_timeout="1m"),
        docker=docker,
        store=FakeStore(),
        clock=clock,
        backoff=lambda n: 0.01,
    )
    await w.open()
    try:
        await w.wait_synced(5)
        docker.reachable = False
        docker.streams[-1].end()
        await asyncio.wait_for(docker.wait_calls("subscribe", 3), 5)
        clock.advance(600)
        report = await w.sweep_once()
        assert report.skipped and report.candidates == []
        assert docker.calls["stop_container"] == 0
    finally:
        await w.close()


async def test_removed_agents_are_not_acted_on_and_can_be_forgotten() -> None:
    docker = FakeDocker()
    docker.containers["c1"] = ContainerInfo("c1", "gone", "img", "exited", freeze({LABEL: "true"}))
    w = await _watcher(docker, allowed_images=["img*"])
    try:
        docker.containers.clear()
        docker.streams[-1].end()  # resync: the container is gone -> removed
        await w.wait_for("gone", lambda a: a is not None and a.status is Status.REMOVED, 5)
        with pytest.raises(AgentNotFound, match="removed"):
            await w.start("gone")
        await w.delete("gone")
        assert w.get("gone") is None and docker.calls["remove_agent"] == 0
    finally:
        await w.close()
