"""Unit fixtures: a watcher on the fake engine with the API in front of it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from aiohttp.test_utils import TestClient, TestServer
from idlewatch import ManualClock, Settings, Watcher
from idlewatch.api import create_app
from idlewatch.models import ContainerInfo

from tests.builders import MANAGED
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
