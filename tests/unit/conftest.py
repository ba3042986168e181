"""Unit fixtures: a watcher on the fake engine with the API in front of it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from idlewatch import ManualClock, Settings, Watcher
from idlewatch.api import create_app
from idlewatch.models import ContainerInfo

from tests.builders import MANAGED, box
from tests.fakes import FakeDocker, FakeStore

#: the token the served API asks for, as a request header
AUTH = {"Authorization": "Bearer tok"}
#: the fake engine, the watcher on it and a client of its API
Served = tuple[FakeDocker, Watcher, "TestClient[object, object]"]


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    """One running managed container ``box`` (id ``c1``), synced, behind the token ``tok``."""
    docker = FakeDocker()
    docker.containers["c1"] = ContainerInfo("c1", "box", "img", "running", MANAGED)
    settings = Settings(
        docker_url="unix:///fake.sock", database_url="sqlite:///unused.db", api_token="tok"
    )
    w = Watcher(
        settings,
        docker=docker,
        store=FakeStore(),
        clock=ManualClock(datetime(2026, 1, 1, tzinfo=UTC)),
    )
    w.confirm_timeout_s = 0.2  # the fake engine emits no events of its own
    await w.open()
    await w.wait_synced(5)
    client: TestClient[object, object] = TestClient(TestServer(create_app(w)))
    await client.start_server()
    try:
        yield docker, w, client
    finally:
        await client.close()
        await w.close()


# ------------------------------------------------ the wake routes' watcher (three tokens)
READ = "read-only-token"
WAKE = "wake-only"
API = "api-secret"
#: the fake engine, the watcher, its clock and a client of its API
WakeServed = tuple[FakeDocker, Watcher, ManualClock, "TestClient[Any, Any]"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def wake_served() -> AsyncIterator[WakeServed]:
    """web (running, host web.test, group team), db and napper (exited; db in team)."""
    docker = FakeDocker()
    docker.lively = True
    clock = ManualClock(datetime.now(UTC))  # the fake engine's events carry the real time
    settings = Settings(
        docker_url="unix:///f.sock",
        database_url="sqlite:///u.db",
        idle_timeout=60,
        wake_timeout=5,
        api_token=API,
        wake_token=WAKE,
        read_token=READ,
    )
    docker.containers["c1"] = box(
        "c1", "web", **{"idlewatch.hosts": "web.test", "idlewatch.group": "team"}
    )
    docker.containers["c2"] = box("c2", "db", "exited", **{"idlewatch.group": "team"})
    docker.containers["c3"] = box("c3", "napper", "exited")
    w = Watcher(settings, docker=docker, store=FakeStore(), clock=clock)
    w.confirm_timeout_s = 0.05
    async with w:
        await w.wait_synced(5)
        await w.settled(5)
        client = TestClient(TestServer(create_app(w)))
        await client.start_server()
        try:
            yield docker, w, clock, client
        finally:
            await client.close()
