"""API answers as documented: methods, integers, the document's rules, metrics, names."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.unit.conftest import AUTH, Served

T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def test_a_405_names_the_allowed_methods_and_open_routes_answer_it_without_a_token(
    served: Served,
) -> None:
    _, _, client = served
    resp = await client.post("/healthz")  # open route, wrong method, no token
    assert resp.status == 405
    assert set(resp.headers["Allow"].split(", ")) == {"GET", "HEAD"}
    assert (await resp.json())["error"]["code"] == "method_not_allowed"
    resp = await client.delete("/api/audit", headers=AUTH)
    assert resp.status == 405 and "GET" in resp.headers["Allow"]
    resp = await client.put("/api/agents/box/stop")  # a secured route: still 405, not 401
    assert resp.status == 405 and resp.headers["Allow"] == "POST"
    resp = await client.get("/api/agents")  # the right method without a token: 401
    assert resp.status == 401
    # the running listing's path is never an agent's name, whatever the method
    resp = await client.request("OPTIONS", "/api/agents/running", headers=AUTH)
    assert resp.status == 405 and set(resp.headers["Allow"].split(", ")) == {"GET", "HEAD"}
    for method in ("OPTIONS", "PUT", "DELETE"):  # ...with or without a token
        resp = await client.request(method, "/api/agents/running")
        assert resp.status == 405, method


async def test_integral_numbers_are_integers_as_json_schema_says(
    served: Served,
) -> None:
    _, _, client = served
    resp = await client.post("/api/agents/box/scale", json={"replicas": 1.0}, headers=AUTH)
    assert resp.status == 200, await resp.text()
    for bad in (1.5, True, "1"):
        resp = await client.post("/api/agents/box/scale", json={"replicas": bad}, headers=AUTH)
        assert resp.status == 400 and (await resp.json())["error"]["field"] == "replicas"
    resp = await client.get("/api/audit?limit=5.0", headers=AUTH)
    assert resp.status == 200
    resp = await client.get("/api/audit?limit=5.5", headers=AUTH)
    assert resp.status == 400


async def test_the_document_states_the_rules_the_server_applies(
    served: Served,
) -> None:
    _, _, client = served
    doc = await (await client.get("/api/openapi.json", headers=AUTH)).json()
    schemas = doc["components"]["schemas"]
    assert schemas["ScaleBody"]["properties"]["replicas"]["maximum"] == 10  # max_replicas
    assert schemas["ReplicasBody"]["properties"]["replicas"]["maximum"] == 10
    register = schemas["RegisterBody"]
    assert register["properties"]["env"]["propertyNames"]["pattern"]
    assert register["else"]["properties"]["replicas"] == {"const": 1}
    assert "stop_timeout + 5 s" in doc["paths"]["/api/agents/{name}/stop"]["post"]["description"]


async def test_a_plain_get_of_the_feed_says_it_is_a_websocket(
    served: Served,
) -> None:
    _, _, client = served
    resp = await client.get("/api/ws", headers=AUTH)
    body = await resp.json()
    assert resp.status == 400 and body["error"]["code"] == "websocket_upgrade_required"
    assert "websocket" in body["error"]["message"]


async def test_metrics_name_the_prometheus_text_version(
    served: Served,
) -> None:
    _, _, client = served
    resp = await client.get("/metrics")
    assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"


async def test_running_is_not_a_name_an_agent_can_be_registered_under() -> None:
    from idlewatch.api.errors import ApiError
    from idlewatch.api.requests import RegisterBody

    with pytest.raises(ApiError) as err:
        RegisterBody(name="running", image="img").to_spec()
    assert err.value.status == 400 and err.value.field == "name"
