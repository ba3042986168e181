"""The engine adapter's own logic on canned engine answers: listings and looks."""

from __future__ import annotations

from typing import Any

import pytest
from idlewatch.engine import AioDockerGateway
from idlewatch.engine.client import EngineClient
from idlewatch.errors import EngineError
from idlewatch.models import (
    freeze,
)

MANAGED = freeze({"idlewatch.enable": "true"})


class CannedClient(EngineClient):
    """The engine's HTTP layer replaced by canned answers."""

    def __init__(self, answers: dict[str, list[Any]]) -> None:
        super().__init__("unix:///canned.sock")
        self.answers = answers
        self.asked: list[str] = []

    async def json(self, what: str, path: str, method: str = "GET", **kw: Any) -> Any:
        self.asked.append(path)
        answer = self.answers[path].pop(0) if len(self.answers[path]) > 1 else self.answers[path][0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def look_json(self, what: str, path: str) -> Any:
        return await self.json(what, path)


class CannedGateway(AioDockerGateway):
    """The gateway's own logic on canned engine answers (the HTTP layer replaced)."""

    def __init__(self, answers: dict[str, list[Any]]) -> None:
        self.canned = CannedClient(answers)
        super().__init__("unix:///canned.sock", label="idlewatch.enable", client=self.canned)
        self.answers = answers

    @property
    def asked(self) -> list[str]:
        return self.canned.asked


MANAGER = {"Swarm": {"LocalNodeState": "active", "ControlAvailable": True, "NodeID": "n1"}}


ALONE = {"Swarm": {"LocalNodeState": "inactive"}}


async def test_a_manager_that_cannot_list_services_now_keeps_its_services() -> None:
    """A 503 during a Swarm election is no departure from the Swarm: the listing fails (a
    periodic one is skipped, a first one retried), nothing is marked gone."""
    gw = CannedGateway(
        {
            "info": [MANAGER],
            "containers/json": [[]],
            "services": [EngineError("list services: swarm does not have a leader", status=503)],
            "tasks": [[]],
        }
    )
    with pytest.raises(EngineError):
        await gw.snapshot()
    assert gw.asked.count("info") == 2  # asked again: still a manager


async def test_an_engine_that_left_the_swarm_lists_as_a_plain_one() -> None:
    gw = CannedGateway(
        {
            "info": [MANAGER, ALONE],
            "containers/json": [[]],
            "services": [EngineError("This node is not a swarm manager", status=503)],
            "tasks": [[]],
        }
    )
    snap = await gw.snapshot()
    assert snap.swarm_active is False and snap.services == ()


async def test_a_periodic_listing_costs_a_manager_3_calls_a_plain_engine_asks_its_role() -> None:
    gw = CannedGateway(
        {"info": [MANAGER], "containers/json": [[]], "services": [[]], "tasks": [[]]}
    )
    await gw.snapshot()
    gw.asked.clear()
    await gw.snapshot(recheck_swarm=False)
    assert sorted(gw.asked) == ["containers/json", "services", "tasks"]
    plain = CannedGateway({"info": [ALONE], "containers/json": [[]]})
    await plain.snapshot()
    plain.asked.clear()
    await plain.snapshot(recheck_swarm=False)  # one that joins a Swarm is seen next time
    assert sorted(plain.asked) == ["containers/json", "containers/json", "info"]


async def test_the_lean_look_path_gives_the_engines_answers_and_errors(tmp_path: Any) -> None:
    """The enricher's GET path (aiohttp directly, not aiodocker's query): an object, a 404
    as "gone", errors with the engine's status and message (JSON or text), bad JSON, no
    engine at all."""
    from aiohttp import web
    from idlewatch.errors import EngineUnavailable

    inspect = {
        "Id": "c1",
        "Name": "/box",
        "Config": {
            "Image": "img",
            "Labels": dict(MANAGED),
            "Healthcheck": {"Test": ["CMD", "true"]},
        },
        "State": {"Status": "running"},
        "ExecIDs": None,
    }

    async def container(request: web.Request) -> web.StreamResponse:
        ref = request.match_info["ref"]
        if ref == "c1":
            return web.json_response(inspect)
        if ref == "gone":
            return web.json_response({"message": "No such container: gone"}, status=404)
        if ref == "junk":
            return web.Response(text="{not json", content_type="application/json")
        if ref == "busy":
            return web.json_response({"message": "container is restarting"}, status=409)
        return web.Response(text="boom", status=500)

    async def version(request: web.Request) -> web.StreamResponse:
        return web.json_response({"ApiVersion": "1.41"})

    app = web.Application()
    app.router.add_get("/version", version)
    app.router.add_get("/v1.41/containers/{ref}/json", container)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = str(tmp_path / "engine.sock")
    await web.UnixSite(runner, sock).start()
    gw = AioDockerGateway(f"unix://{sock}", label="idlewatch.enable")
    try:
        info = await gw.inspect_container("c1")
        assert info is not None and (info.name, info.healthcheck_cmd) == ("box", "true")
        assert await gw.inspect_container("gone") is None
        with pytest.raises(EngineError, match="boom") as failed:
            await gw.inspect_container("broken")
        assert failed.value.status == 500
        with pytest.raises(EngineError, match="container is restarting") as refused:
            await gw.inspect_container("busy")  # the engine's JSON message, its status
        assert refused.value.status == 409
        with pytest.raises(EngineError, match="bad JSON"):
            await gw.inspect_container("junk")
    finally:
        await gw.close()
        await runner.cleanup()
    nobody = AioDockerGateway(f"unix://{tmp_path / 'none.sock'}", label="idlewatch.enable")
    try:
        with pytest.raises(EngineUnavailable):
            await nobody.inspect_container("c1")
    finally:
        await nobody.close()
