"""The operator's view through the API on the fake engine: holds in the agent JSON, the
timeline and stats routes and their errors, the wake histogram in /metrics."""

from __future__ import annotations

import asyncio

from idlewatch.api.shapes import Agent as AgentShape
from idlewatch.api.shapes import Stats as StatsShape
from idlewatch.api.shapes import Timeline as TimelineShape

from tests.unit.conftest import AUTH, Served


async def test_an_agent_says_what_holds_it_and_what_comes_next(served: Served) -> None:
    _, w, client = served
    body = await (await client.get("/api/agents/box", headers=AUTH)).json()
    AgentShape.model_validate(body)
    assert body["next_action"]["action"] == "stop" and body["next_action"]["at"] is not None
    await w.touch("box", keep_for_s=600)
    body = await (await client.get("/api/agents/box", headers=AUTH)).json()
    assert [h["kind"] for h in body["holds"]] == ["keep_alive"]
    assert body["holds"][0]["until"] == body["keep_until"]
    assert body["next_action"] == {"action": "none", "at": None, "reason": "held: keep_alive"}
    listing = await (await client.get("/api/agents", headers=AUTH)).json()
    assert listing[0]["holds"] == body["holds"]  # the listing says the same


async def test_stats_and_timeline_answer_their_shapes_and_name_bad_input(served: Served) -> None:
    docker, w, client = served
    resp = await client.get("/api/stats?window=7d", headers=AUTH)
    assert resp.status == 200
    stats = StatsShape.model_validate(await resp.json())
    assert stats.agents["running"] == 1 and stats.awake_now == 1
    resp = await client.get("/api/stats?window=2h", headers=AUTH)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["field"] == "window" and "2h" in error["message"]
    resp = await client.get("/api/stats?windows=1h", headers=AUTH)
    assert resp.status == 400 and (await resp.json())["error"]["field"] == "windows"

    docker.lively = True  # the fake engine says what it did, as an engine does
    await w.stop("box")
    docker.start_gate = asyncio.Event()  # the start hangs: the wake is not ready in time
    result = await w.wake(["box"], timeout_s=0.3, via="sablier")
    assert not result.ready
    docker.start_gate.set()
    resp = await client.get("/api/agents/box/timeline?limit=5", headers=AUTH)
    assert resp.status == 200
    page = TimelineShape.model_validate(await resp.json())
    (wake,) = [e for e in page.entries if e.kind == "wake"]
    assert wake.actor == "sablier"
    metrics = await (await client.get("/metrics")).text()
    # not ready: in the timeline, but no cost in the histogram
    assert 'idlewatch_wake_seconds_count{phase="total",from="stopped"} 0' in metrics
    for query, field in (
        ("limit=0", "limit"),
        ("limit=x", "limit"),
        ("before=yesterday", "before"),
        ("before=2026-01-01T00:00:00", "before"),
    ):
        resp = await client.get(f"/api/agents/box/timeline?{query}", headers=AUTH)
        assert resp.status == 400, query
        assert (await resp.json())["error"]["field"] == field
    resp = await client.get("/api/agents/nobody/timeline", headers=AUTH)
    assert resp.status == 404


async def test_the_wake_histogram_is_in_the_metrics(served: Served) -> None:
    _, w, client = served
    await w.wake(["box"])
    text = await (await client.get("/metrics")).text()
    assert "# TYPE idlewatch_wake_seconds histogram" in text
    count = 'idlewatch_wake_seconds_count{phase="total",from="running"} 1'
    assert count in text
    assert 'idlewatch_wake_seconds_bucket{phase="total",from="running",le="+Inf"} 1' in text


async def test_a_start_that_waits_is_timed_as_a_wake(served: Served) -> None:
    docker, w, client = served
    docker.lively = True  # the fake engine says what it did, as an engine does
    await w.stop("box")
    resp = await client.post("/api/agents/box/start?wait=running", headers=AUTH)
    assert resp.status == 200
    page = await (await client.get("/api/agents/box/timeline", headers=AUTH)).json()
    (wake,) = [e for e in page["entries"] if e["kind"] == "wake"]
    assert wake["actor"] == "start" and wake["from"] == "stopped" and wake["ready"]
    p = wake["phases"]
    assert 0 <= p["start_sent"] <= p["running"] <= p["ready"] <= p["answered"]
    metrics = await (await client.get("/metrics")).text()
    assert 'idlewatch_wake_seconds_count{phase="engine",from="stopped"} 1' in metrics
    # a pause through the API, and what cannot pause says why
    resp = await client.post("/api/agents/box/pause", headers=AUTH)
    assert resp.status == 200 and (await resp.json())["status"] == "paused"
    resp = await client.post("/api/agents/box/pause", headers=AUTH)
    assert (
        resp.status == 409
        and "only a running one pauses" in (await resp.json())["error"]["message"]
    )
    resp = await client.post("/api/agents/box/start?wait=running", headers=AUTH)
    assert resp.status == 200
    # a start of what runs already is no wake: nothing more recorded
    resp = await client.post("/api/agents/box/start?wait=running", headers=AUTH)
    page = await (await client.get("/api/agents/box/timeline", headers=AUTH)).json()
    assert len([e for e in page["entries"] if e["kind"] == "wake"]) == 2  # (the unpause)
