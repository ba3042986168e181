"""API behaviour that needs no engine: error shapes and the engine-down answer, on fakes."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from idlewatch import ManualClock, Settings, Watcher
from idlewatch.api import create_app
from idlewatch.models import ContainerInfo, freeze

from tests.fakes import FakeDocker, FakeStore


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


async def test_errors_are_counted_in_the_metrics(
    setup: tuple[FakeDocker, TestClient[object, object]],
) -> None:
    _, client = setup
    await client.get("/api/agents/ghost")
    text = await (await client.get("/metrics")).text()
    assert 'route="/api/agents/{name}",code="404"} 1' in text


async def test_body_limit_holds_when_mounted_as_a_sub_app() -> None:
    from aiohttp import web

    docker = FakeDocker()
    settings = Settings(
        docker_url="unix:///fake.sock",
        database_url="sqlite:///unused.db",
        allowed_images=["img*"],
        max_body_bytes=2048,
    )
    w = Watcher(settings, docker=docker, store=FakeStore(), backoff=lambda n: 0.0)
    await w.open()
    host = web.Application()  # the root app's client_max_size is the default 1 MiB
    host.add_subapp("/iw", create_app(w))
    client = TestClient(TestServer(host))
    await client.start_server()
    try:
        resp = await client.post("/iw/api/agents", data=b'{"name": "' + b"x" * 50_000 + b'"}')
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == "payload_too_large"
    finally:
        await client.close()
        await w.close()


async def test_registration_refuses_reserved_labels_and_container_replicas() -> None:
    docker = FakeDocker()
    settings = Settings(
        docker_url="unix:///fake.sock", database_url="sqlite:///unused.db", allowed_images=["img*"]
    )
    w = Watcher(settings, docker=docker, store=FakeStore(), backoff=lambda n: 0.0)
    await w.open()
    client = TestClient(TestServer(create_app(w)))
    await client.start_server()
    try:
        for body, field in (
            ({"name": "ag", "image": "img", "labels": {"idlewatch.enable": "false"}}, "labels"),
            ({"name": "ag", "image": "img", "replicas": 2}, "replicas"),
            # the engine refuses a one-character container name: a 400 here, never its 502
            # (found by tests/faults/test_api_fuzz.py)
            ({"name": "a", "image": "img", "command": ["sh"]}, "name"),
        ):
            resp = await client.post("/api/agents", json=body)
            assert resp.status == 400 and (await resp.json())["error"]["field"] == field
        assert docker.calls["create_agent"] == 0
    finally:
        await client.close()
        await w.close()


def test_container_names_follow_the_engine_and_service_names_may_be_one_character() -> None:
    from idlewatch.api.errors import ApiError
    from idlewatch.api.requests import RegisterBody

    with pytest.raises(ApiError) as err:
        RegisterBody(name="a", image="img").to_spec()
    assert err.value.status == 400 and err.value.field == "name"
    assert RegisterBody(name="ab", image="img").to_spec().name == "ab"
    assert RegisterBody(name="a", image="img", kind="service").to_spec().name == "a"


async def test_every_route_is_in_the_openapi_document(
    setup: tuple[FakeDocker, TestClient[object, object]],
) -> None:
    from idlewatch.api.openapi import document

    _, client = setup
    doc = document()["paths"]
    for route in client.server.app.router.routes():  # type: ignore[union-attr]
        info = route.resource.canonical if route.resource else ""
        if route.method in ("HEAD", "*"):  # "*": a 405 that names the allowed methods
            continue
        assert info in doc and route.method.lower() in doc[info], (route.method, info)


def test_agent_json_keeps_the_fixed_part_per_version_and_shares_nothing_mutable() -> None:
    """The listing's memo (issue 15): a new version of an agent is rendered anew, idle_for
    is computed per call, the labels dict shared by answers cannot be changed, and a
    complete listing drops the names the fleet no longer has."""
    from idlewatch.api.render import AgentJson
    from idlewatch.holds import Policy
    from idlewatch.models import Agent, Kind, Status

    from tests.builders import explainer

    t0 = datetime(2026, 8, 1, tzinfo=UTC)
    a = Agent(
        "a", Kind.CONTAINER, "c1", "img", Status.RUNNING, 1, 1, t0, 60.0, t0, freeze({"team": "x"})
    )
    render = AgentJson()
    why = explainer(Policy("stop", None))
    first = render(a, t0, why)
    with pytest.raises(TypeError):  # shared by every answer of this version: frozen
        first["labels"]["team"] = "changed by a caller"
    assert orjson.loads(orjson.dumps(first))["labels"] == {"team": "x"}
    assert copy.deepcopy(first)["labels"] == {"team": "x"}  # a copy is an ordinary dict
    assert json.loads(json.dumps(first))["labels"] == {"team": "x"}
    again = render(a, t0.replace(second=30), why)
    assert again["labels"] == {"team": "x"} and again["idle_for"] == 30.0
    assert list(again) == list(first)  # the same key order, idle_for in its place
    b = a._replace(status=Status.EXITED, running=0, replicas=0)
    assert render(b, t0, why)["status"] == "exited"
    gone = a._replace(name="gone")
    render.listing([b, gone], t0, why, complete=True)
    render.listing([b], t0, why, complete=True)
    assert [x["name"] for x in render.listing([b], t0, why, complete=False)] == ["a"]
    assert set(render._kept) == {"a"}
    # the serialized listing says what the dicts say (idle_for with 3 decimals)
    later = t0.replace(second=7, microsecond=123456)
    c = a._replace(name="c", last_activity=t0.replace(second=9))  # active after `later`
    as_bytes = orjson.loads(render.listing_bytes([b, c], later, why, complete=False))
    as_dicts = render.listing([b, c], later, why, complete=False)
    assert as_bytes == as_dicts and [list(x) for x in as_bytes] == [list(x) for x in as_dicts]
    assert [x["idle_for"] for x in as_bytes] == [7.123, 0.0]


@pytest.mark.parametrize(
    "tokens",
    [
        {},  # the quick start: open on loopback
        {"api_token": "t"},
        {"wake_token": "w"},  # only the wake routes ask
        {"api_token": "t", "wake_open": True},  # every route but the wake routes asks
        {"api_token": "t", "read_token": "r"},  # a read_token: 403 outside its scope
    ],
    ids=["quick-start", "api-token", "wake-token-only", "wake-open", "read-token"],
)
async def test_the_openapi_document_declares_the_auth_the_server_asks_for(
    tokens: dict[str, object],
) -> None:
    """Issue 22, item 6: every operation the document declares secured answers 401 without
    a token, and every other one does not (no 401 documented for it either)."""
    settings = Settings(
        docker_url="unix:///fake.sock", database_url="sqlite:///unused.db", **tokens
    )
    w = Watcher(settings, docker=FakeDocker(), store=FakeStore(), backoff=lambda n: 0.0)
    await w.open()
    client = TestClient(TestServer(create_app(w)))
    await client.start_server()
    headers = {"Authorization": "Bearer t"} if "api_token" in tokens else {}
    try:
        resp = await client.get("/api/openapi.json", headers=headers)
        doc = await resp.json()
        for path, operations in doc["paths"].items():
            for method, op in operations.items():
                secured = bool(op["security"])
                assert ("401" in op["responses"]) is secured, (method, path)
                assert not secured or "403" in op["responses"], (method, path)
                if not secured:
                    continue
                url = path.replace("{name}", "ghost")
                answer = await client.request(method.upper(), url, headers={"Host": "x"})
                assert answer.status == 401, (method, path, answer.status)
        unsecured = {
            (m, p) for p, ops in doc["paths"].items() for m, op in ops.items() if not op["security"]
        }
        for method, path in unsecured:
            url = path.replace("{name}", "ghost")
            answer = await client.request(method.upper(), url, headers={"Host": "x"})
            assert answer.status != 401, (method, path)
        assert ("securitySchemes" in doc["components"]) is bool(
            tokens.get("api_token") or tokens.get("wake_token")
        )
    finally:
        await client.close()
        await w.close()
