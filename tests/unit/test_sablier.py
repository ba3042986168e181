"""Sablier 1.17 parity on a fake engine: poke, optional names, problems, themes, health.

The same requests against the real ``serve`` and engine: tests/integration/test_sablier_clients.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

from idlewatch.api.sablier import THEMES, shutting_down

from tests.unit.conftest import API, WAKE, bearer
from tests.unit.conftest import WakeServed as Served
from tests.unit.test_wake import SABLIER


async def test_poke_starts_what_sleeps_and_answers_at_once(wake_served: Served) -> None:
    docker, w, _clock, client = wake_served
    docker.start_gate = asyncio.Event()  # the start is held: poke must not wait for it
    resp = await client.get(
        "/api/strategies/poke?names=napper&session_duration=2m", headers=bearer(WAKE)
    )
    body = await resp.json()
    assert resp.status == 200 and resp.headers.getall(SABLIER) == ["not-ready"]
    assert body["session"]["status"] == "not-ready"
    assert body["session"]["instances"][0]["instance"]["status"] == "not-ready"
    assert docker.calls["start_container"] == 1
    kept = w.get("napper")
    assert kept is not None and kept.keep_until is not None
    docker.start_gate.set()
    resp = await client.get("/api/strategies/poke?names=web", headers=bearer(WAKE))
    assert resp.headers.getall(SABLIER) == ["ready"]
    assert (await resp.json())["session"]["status"] == "ready"


async def test_an_optional_name_is_woken_and_kept_but_never_waited_for(wake_served: Served) -> None:
    docker, w, _clock, client = wake_served
    docker.start_gate = asyncio.Event()  # napper's start never ends in this test
    resp = await client.get(
        "/api/strategies/blocking?names=web&names=optional:napper&names=optional:ghost"
        "&session_duration=3m&timeout=5s",
        headers=bearer(WAKE),
    )
    body = await resp.json()
    assert resp.status == 200 and resp.headers.getall(SABLIER) == ["ready"], body
    instances = {i["instance"]["name"]: i["instance"] for i in body["session"]["instances"]}
    assert set(instances) == {"web", "napper"}, "an unknown optional name is left out"
    assert instances["napper"]["optional"] is True and "optional" not in instances["web"]
    assert instances["napper"]["status"] == "not-ready"
    assert docker.calls["start_container"] == 1  # napper was started
    for name in ("web", "napper"):
        kept = w.get(name)
        assert kept is not None and kept.keep_until is not None, name
    # /api/wake takes it too, and says which are optional
    resp = await client.get("/api/wake?names=web,optional:napper&timeout=5s", headers=bearer(WAKE))
    body = await resp.json()
    assert resp.status == 200, body
    assert [(a["name"], a["optional"]) for a in body["agents"]] == [
        ("web", False),
        ("napper", True),
    ]
    resp = await client.get("/api/wake?names=optional:", headers=bearer(WAKE))
    assert resp.status == 400 and (await resp.json())["error"]["field"] == "names"
    docker.start_gate.set()


async def test_an_unknown_theme_is_a_404_problem_and_starts_nothing(wake_served: Served) -> None:
    docker, _w, _clock, client = wake_served
    resp = await client.get("/api/strategies/dynamic?names=napper&theme=neon", headers=bearer(WAKE))
    problem = await resp.json()
    assert resp.status == 404 and resp.content_type == "application/problem+json"
    assert problem["field"] == "theme" and "neon" in problem["detail"]
    assert SABLIER not in resp.headers
    assert docker.calls["start_container"] == 0 and docker.calls["unpause_container"] == 0
    resp = await client.get("/api/themes", headers=bearer(WAKE))
    assert (await resp.json()) == {"themes": sorted(THEMES)}
    for theme in THEMES:
        resp = await client.get(
            f"/api/strategies/dynamic?names=web&theme={theme}", headers=bearer(WAKE)
        )
        page = await resp.read()
        assert resp.status == 200 and resp.headers.getall(SABLIER) == ["ready"]
        assert int(resp.headers["Content-Length"]) == len(page)


async def test_every_sablier_error_is_a_problem_without_the_status_header(
    wake_served: Served,
) -> None:
    _docker, _w, _clock, client = wake_served
    for path, status in (
        ("/api/strategies/blocking?names=ghost", 404),
        ("/api/strategies/poke?names=ghost", 404),
        ("/api/strategies/dynamic?names=ghost", 404),
        ("/api/strategies/blocking?names=web&timeout=never", 400),
        ("/api/strategies/poke?names=web&session_duration=-1s", 400),
        ("/api/strategies/poke?names=web&bogus=1", 400),
    ):
        resp = await client.get(path, headers=bearer(WAKE))
        body = await resp.json(content_type=None)
        assert resp.status == status, (path, body)
        assert resp.content_type == "application/problem+json", path
        assert SABLIER not in resp.headers, path
        assert body["status"] == status and body["type"].startswith("urn:idlewatch:problem:")
    for headers, status in (({}, 401), (bearer("wrong"), 401)):
        resp = await client.get("/api/strategies/poke?names=web", headers=headers)
        assert resp.status == status and resp.content_type == "application/problem+json"


async def test_health_is_open_and_says_when_shutting_down(wake_served: Served) -> None:
    _docker, _w, _clock, client = wake_served
    resp = await client.get("/health")
    assert resp.status == 200 and await resp.text() == "ok"
    shutting_down(client.app)  # what serve does when the stop signal comes
    resp = await client.get("/health")
    assert resp.status == 503 and resp.content_type == "application/problem+json"


async def test_a_keep_alive_repeat_for_a_running_agent_stays_on_the_hot_path(
    wake_served: Served,
) -> None:
    """Traefik's plugin re-sends the same GET every keepAliveInterval while a client's
    connection lives: no engine call, and no more than one change a second."""
    docker, w, _clock, client = wake_served
    calls = sum(docker.calls.values())
    changes: list[Any] = []

    async def watch() -> None:
        async for change in w.changes():
            changes.append(change)

    watching = asyncio.create_task(watch())
    await asyncio.sleep(0)
    for _ in range(30):
        resp = await client.get(
            "/api/strategies/blocking?names=web&session_duration=1m", headers=bearer(WAKE)
        )
        assert resp.headers.getall(SABLIER) == ["ready"]
    await asyncio.sleep(0.05)
    watching.cancel()
    assert sum(docker.calls.values()) == calls, docker.calls
    assert len(changes) <= 2, changes


async def test_a_shorter_session_never_shortens_a_longer_keep_alive(wake_served: Served) -> None:
    _docker, w, _clock, client = wake_served
    resp = await client.post(
        "/api/agents/web/activity", json={"keep_for": "1h"}, headers=bearer(API)
    )
    assert resp.status == 200
    long = w.get("web")
    assert long is not None and long.keep_until is not None
    await client.get("/api/strategies/poke?names=web&session_duration=1m", headers=bearer(WAKE))
    after = w.get("web")
    assert after is not None and after.keep_until == long.keep_until
