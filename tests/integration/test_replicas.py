"""Two `idlewatch serve` replicas on one PostgreSQL: one leader, both serve, a takeover.

Real processes on the private engine and the private PostgreSQL. The lease is short
(`leader_lease=3s`) so that a takeover is quick; the takeover deadline is that setting
plus a little scheduling slack.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import fresh_database
from tests.private_engine import PrivateEngine
from tests.private_postgres import PrivatePostgres
from tests.waiting import until

from .conftest import inspect, run_container
from .serveproc import ServeProcess

TOKEN = "replica-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LEASE_S = 3.0
#: a takeover may take the lease plus one scheduling hiccup of a loaded CI machine
TAKEOVER_SLACK_S = 2.0


@pytest.fixture
def replicas(
    engine: PrivateEngine, postgres: PrivatePostgres, tmp_path: Path
) -> Iterator[list[ServeProcess]]:
    """Two serve processes sharing one fresh PostgreSQL database."""
    name, url = fresh_database(postgres)
    procs = []
    try:
        for rid in ("replica-a", "replica-b"):
            workdir = tmp_path / rid
            workdir.mkdir()
            procs.append(
                ServeProcess(
                    engine,
                    workdir,
                    database_url=url,
                    api_token=TOKEN,
                    replica_id=rid,
                    leader_lease=f"{LEASE_S}s",
                    sweep_interval="1s",
                ).start()
            )
        yield procs
    finally:
        for p in procs:
            p.stop()
        postgres.drop_database(name)


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url, headers=AUTH) as resp:
        return resp.status, await resp.json()


async def _leaders(http: aiohttp.ClientSession, procs: list[ServeProcess]) -> list[str]:
    found = []
    for p in procs:
        if p.proc is None or p.proc.poll() is not None:
            continue
        _, body = await _get(http, p.url + "/readyz")
        if body["leader"]["leader"]:
            found.append(body["leader"]["replica"])
    return found


async def test_two_replicas_one_leader_both_serve(
    engine: PrivateEngine, replicas: list[ServeProcess]
) -> None:
    a, b = replicas
    run_container(engine, "rep-busy")
    run_container(engine, "rep-idle", labels={"idlewatch.idle-timeout": "2s"})
    async with aiohttp.ClientSession() as http:
        leaders = await until(lambda: _leaders(http, replicas), 10, "a leader")
        assert len(leaders) == 1
        leader, follower = (a, b) if leaders[0] == "replica-a" else (b, a)
        _, fbody = await _get(http, follower.url + "/readyz")
        assert fbody["ready"] and fbody["leader"]["holder"] == leaders[0]

        async def same_agents() -> bool:
            views = [await _get(http, p.url + "/api/agents") for p in replicas]
            names = [{x["name"] for x in body} for _, body in views]
            return names[0] == names[1] == {"rep-busy", "rep-idle"}

        await until(same_agents, 15, "both replicas to list both agents")

        # the idle one is stopped once, by the leader
        await until(lambda: _status(http, follower.url, "rep-idle", "exited"), 20, "the idle stop")
        sweeps = await _sweep_rows(http, follower.url, leader.url, "rep-idle")
        assert sweeps == [("stop", leaders[0])]

        # a websocket client of the follower sees a change the engine made
        async with http.ws_connect(follower.url + "/api/ws", headers=AUTH) as ws:
            engine.cli("stop", "-t", "1", "rep-busy")
            seen = await _ws_until(ws, "rep-busy", "exited")
        assert seen

        # a lifecycle command sent to the follower works
        async with http.post(
            follower.url + "/api/agents/rep-busy/start?wait=running&timeout=20", headers=AUTH
        ) as resp:
            assert resp.status == 200, await resp.text()
        assert inspect(engine, "rep-busy")["State"]["Status"] == "running"
        _, metrics = await _metrics(http, leader.url)
        assert f'idlewatch_leader{{replica="{leaders[0]}",holder="{leaders[0]}"}} 1' in metrics


async def test_the_leader_killed_hands_over_within_the_lease(
    engine: PrivateEngine, replicas: list[ServeProcess]
) -> None:
    run_container(engine, "rep-late", labels={"idlewatch.idle-timeout": "8s"})
    async with aiohttp.ClientSession() as http:
        (first,) = await until(lambda: _leaders(http, replicas), 10, "a leader")
        leader = next(p for p in replicas if first in p.env["IDLEWATCH_REPLICA_ID"])
        follower = next(p for p in replicas if p is not leader)
        assert leader.proc is not None
        leader.proc.kill()  # SIGKILL: no clean hand-over
        leader.proc.wait(10)
        killed_at = time.monotonic()
        (second,) = await until(
            lambda: _leaders(http, [follower]), LEASE_S + TAKEOVER_SLACK_S, "the takeover"
        )
        took_s = time.monotonic() - killed_at
        assert second != first
        # the new leader sweeps: the agent is stopped exactly once, by it
        await until(lambda: _status(http, follower.url, "rep-late", "exited"), 20, "the idle stop")
        sweeps = await _sweep_rows(http, follower.url, follower.url, "rep-late")
    print(f"\nleader {first} SIGKILLed; {second} led {took_s:.1f}s later (lease {LEASE_S}s)")
    assert sweeps == [("stop", second)]


async def _sweep_rows(
    http: aiohttp.ClientSession, url: str, leader_url: str, agent: str
) -> list[tuple[str, str]]:
    """The sweep's audit rows for ``agent``, once the first is committed and the leader has
    swept twice more (a second stop, were there one, would be there by then)."""

    async def rows() -> list[tuple[str, str]]:
        _, audit = await _get(http, f"{url}/api/audit?agent={agent}")
        return [(e["action"], e["replica"]) for e in audit if e["actor"] == "sweep"]

    await until(rows, 15, f"the sweep's audit row for {agent}")
    done = await _sweeps(http, leader_url)
    await until(lambda: _swept_since(http, leader_url, done + 2), 15, "two more sweeps")
    return await rows()


async def _sweeps(http: aiohttp.ClientSession, url: str) -> int:
    _, text = await _metrics(http, url)
    (line,) = [x for x in text.splitlines() if x.startswith("idlewatch_sweeps_total ")]
    return int(float(line.split()[1]))


async def _swept_since(http: aiohttp.ClientSession, url: str, n: int) -> bool:
    return await _sweeps(http, url) >= n


async def _status(http: aiohttp.ClientSession, url: str, name: str, status: str) -> bool:
    code, body = await _get(http, f"{url}/api/agents/{name}")
    return code == 200 and body["status"] == status


async def _ws_until(ws: aiohttp.ClientWebSocketResponse, name: str, status: str) -> bool:
    async with asyncio.timeout(15):
        while True:
            msg = await ws.receive_json()
            agent = msg.get("agent") or {}
            if agent.get("name") == name and agent.get("status") == status:
                return True


async def _metrics(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with http.get(url + "/metrics") as resp:
        return resp.status, await resp.text()


def test_replicas_of_two_engines_never_share_a_database_silently(
    engine: PrivateEngine, postgres: PrivatePostgres, tmp_path: Path
) -> None:
    """Issue 22, item 11: one serve per Docker host on one PostgreSQL "for HA" left the
    other host's idle agents running with no warning. The later replica refuses to
    start, naming both engines and the remedy; `idlewatch check` says the same; the
    follower of one engine says that it follows once, not at every sweep."""
    name, url = fresh_database(postgres)
    other = PrivateEngine()  # a second Docker host: another engine, its own network
    procs: list[ServeProcess] = []
    try:
        other.start()
        for rid in ("host-a-1", "host-a-2"):  # two replicas of host A: they share it
            workdir = tmp_path / rid
            workdir.mkdir()
            procs.append(
                ServeProcess(
                    engine, workdir, database_url=url, replica_id=rid,
                    leader_lease="2s", sweep_interval="1s",
                ).start()
            )  # fmt: skip
        b_dir = tmp_path / "host-b"
        b_dir.mkdir()
        host_b = ServeProcess(other, b_dir, database_url=url, replica_id="host-b-1")
        host_b.launch()
        try:
            code = host_b.wait_exit(30)
        except subprocess.TimeoutExpired:
            raise AssertionError("".join(host_b.lines)) from None
        log = "".join(host_b.lines)
        assert code == 1, log
        assert engine.url in log and other.url in log and "host-a-" in log, log
        assert "database of its own" in log and "Swarm" in log, log
        check = subprocess.run(
            [sys.executable, "-m", "idlewatch.api.cli", "check"],
            env=host_b.env, cwd=b_dir, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert check.returncode == 1 and engine.url in check.stdout, check.stdout + check.stderr
        follower = next(p for p in procs if "follows" in "".join(p.lines))
        held = [line for line in follower.lines if "idle sweeps held back" in line]
        assert len(held) == 1, held
    finally:
        for p in procs:
            p.stop()
        other.cleanup()
        postgres.drop_database(name)
