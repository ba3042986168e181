"""API behaviour that needs no engine: error shapes and the engine-down answer, on fakes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from aiohttp.test_utils import TestClient, TestServer

from api import create_app
from tests.fakes import FakeDocker, FakeStore
from watcher import ManualClock, Settings, Watcher
from watcher.models import ContainerInfo, freeze


@pytest.fixture
async def setup() -> AsyncIterator[tuple[FakeDocker, TestClient[object, object]]]:
    docker = FakeDocker()
    docker.containers["c1"] = ContainerInfo(
        "c1", "box", "img", "running", freeze({"idlewatch.enable": "true"})
    )
    settings = Settings(docker_url="unix:///fake.sock", database_url="sqlite:///unused.db")
    w = Watcher(
        settings,
        docker=docker,
        store=FakeStore(),
        clock=ManualClock(datetime(2026, 1, 1, tzinfo=UTC)),
        backoff=lambda n: 0.0,
    )
    await w.open()
    await w.wait_synced(5)
    client = TestClient(TestServer(create_app(w)))
    await client.start_server()
    try:
        yield docker, client  # type: ignore[misc]
    finally:
        await client.close()
        await w.close()


async def test_engine_down_is_503(setup: tuple[FakeDocker, TestClient[object, object]]) -> None:
    docker, client = setup
    docker.reachable = False
    resp = await client.post("/api/agents/box/stop")
    body = await resp.json()
    assert resp.status == 503 and body["error"]["code"] == "engine_unavailable"


async def test_every_error_has_the_json_shape(
    setup: tuple[FakeDocker, TestClient[object, object]],
) -> None:
    _, client = setup
    for method, path, status in [
        ("GET", "/nowhere", 404),
        ("DELETE", "/api/audit", 405),
        ("GET", "/api/agents/ghost", 404),
        ("POST", "/api/agents/box/scale", 400),
    ]:
        resp = await client.request(method, path)
        body = await resp.json()
        assert resp.status == status, (path, body)
        assert set(body["error"]) == {"code", "message", "field"}
