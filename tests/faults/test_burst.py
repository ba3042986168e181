"""A burst of 10,000 real engine events while the API is under load.

Many managed containers are created, renamed, updated, started, killed and removed as
fast as a private engine allows, while clients keep calling the API. At the end every
status idlewatch shows must match the engine, removed agents must be pruned (the table
does not grow with churn), and the serve process's memory stays bounded.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.conftest import SLEEPER
from tests.integration.serveproc import ServeProcess
from tests.private_engine import TEST_IMAGE, PrivateEngine, ensure_installed
from tests.waiting import until

TOKEN = "burst-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TARGET_EVENTS = 10_000
LONG_LIVED = 12
#: the serve process's resident memory after the burst stays under this (measured ~70 MB)
RSS_BOUND_MB = 200


@pytest.fixture(scope="module")
def burst_engine() -> Iterator[PrivateEngine]:
    ensure_installed()
    eng = PrivateEngine()
    try:
        eng.start()
        eng.build_test_image()
        yield eng
    finally:
        eng.cleanup()


class Engine:
    """The engine's own HTTP API over its unix socket (no CLI process per call)."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http
        self.body = {
            "Image": TEST_IMAGE,
            "Cmd": SLEEPER,
            "Labels": {"idlewatch.enable": "true"},
            "HostConfig": {"NetworkMode": "none"},
            "StopTimeout": 1,
        }

    async def call(self, method: str, path: str, **kw: Any) -> Any:
        async with self.http.request(method, path, **kw) as resp:
            data = await resp.read()
            assert resp.status < 400, f"{method} {path}: {resp.status} {data[:200]!r}"
            return json.loads(data) if data else None

    async def create(self, name: str) -> str:
        created = await self.call(
            "POST", "/containers/create", params={"name": name}, json=self.body
        )
        return str(created["Id"])


async def _metadata_churn(eng: Engine, ids: Iterator[int], stop: asyncio.Event) -> None:
    """create, rename, update x3, remove: six events, no process started."""
    while not stop.is_set():
        i = next(ids)
        cid = await eng.create(f"burst-m{i}")
        await eng.call("POST", f"/containers/{cid}/rename", params={"name": f"burst-r{i}"})
        for shares in (256, 512, 1024):
            await eng.call("POST", f"/containers/{cid}/update", json={"CpuShares": shares})
        await eng.call("DELETE", f"/containers/{cid}", params={"force": "1"})


async def _life_churn(eng: Engine, ids: Iterator[int], stop: asyncio.Event) -> None:
    """create, start, kill, die, destroy: a real process each time."""
    while not stop.is_set():
        cid = await eng.create(f"burst-l{next(ids)}")
        await eng.call("POST", f"/containers/{cid}/start")
        await eng.call("POST", f"/containers/{cid}/kill")
        await eng.call("DELETE", f"/containers/{cid}", params={"force": "1"})


async def _update_churn(eng: Engine, cid: str, stop: asyncio.Event) -> None:
    """update events on a running container (pause/unpause under load trips the freezer)."""
    for shares in itertools.cycle((256, 512)):
        if stop.is_set():
            return
        await eng.call("POST", f"/containers/{cid}/update", json={"CpuShares": shares})


async def _count_events(http: aiohttp.ClientSession, since: float, seen: list[int]) -> None:
    """Count every container event from ``since`` on, from our own events stream."""
    async with http.get(
        "/events",
        params={"since": f"{since:.9f}", "filters": '{"type":["container"]}'},
        timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
    ) as resp:
        async for _line in resp.content:
            seen[0] += 1


async def _api_load(
    http: aiohttp.ClientSession, url: str, stop: asyncio.Event, answers: Counter[str]
) -> None:
    while not stop.is_set():
        for path in ("/api/agents", "/healthz", "/api/agents/burst-long-0"):
            async with http.get(url + path, headers=AUTH) as resp:
                await resp.read()
                answers[f"{path} {resp.status}"] += 1


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.timeout(420)
async def test_a_burst_of_10k_events(burst_engine: PrivateEngine, tmp_path: Path) -> None:
    serve = ServeProcess(
        burst_engine, tmp_path, api_token=TOKEN, sweep_interval="1s",
        removed_retention="1s", idle_timeout="never",
    ).start()  # fmt: skip
    assert serve.proc is not None
    conn = aiohttp.UnixConnector(path=str(burst_engine.socket_path), limit=0)
    try:
        async with (
            aiohttp.ClientSession(connector=conn, base_url="http://docker") as docker,
            aiohttp.ClientSession() as http,
        ):
            eng = Engine(docker)
            long_ids = []
            for i in range(LONG_LIVED):
                cid = await eng.create(f"burst-long-{i}")
                await eng.call("POST", f"/containers/{cid}/start")
                long_ids.append(cid)
            seen, stop, answers = [0], asyncio.Event(), Counter[str]()
            counter = asyncio.create_task(_count_events(docker, time.time(), seen))
            ids = itertools.count()
            workers = [asyncio.create_task(_metadata_churn(eng, ids, stop)) for _ in range(12)]
            workers += [asyncio.create_task(_life_churn(eng, ids, stop)) for _ in range(3)]
            workers += [asyncio.create_task(_update_churn(eng, c, stop)) for c in long_ids]
            workers += [asyncio.create_task(_api_load(http, serve.url, stop, answers))]
            started = time.monotonic()
            try:
                await until(_reached(seen), 300, f"{TARGET_EVENTS} engine events (seen {seen})")
            finally:
                stop.set()
                await asyncio.gather(*workers)
            burst_s = time.monotonic() - started
            # a final, known state: odd long-lived ones killed, the rest running
            for cid in long_ids[1::2]:
                await eng.call("POST", f"/containers/{cid}/kill")
            truth = await _engine_states(eng)
            api = await until(lambda: _matches(http, serve.url, truth), 60, "idlewatch to match")
            rss = _rss_mb(serve.proc.pid)
            counter.cancel()
            await asyncio.gather(counter, return_exceptions=True)
    finally:
        code = serve.stop()
    errors = {k: v for k, v in answers.items() if not k.endswith(" 200")}
    print(
        f"\nburst: {seen[0]} engine events in {burst_s:.1f}s ({seen[0] / burst_s:.0f}/s), "
        f"{sum(answers.values())} API answers during it, {len(errors)} kinds of error, "
        f"{len(api)} agents listed at the end (engine has {len(truth)}), serve RSS {rss:.0f} MB"
    )
    assert not errors, errors
    assert rss < RSS_BOUND_MB
    assert code == 0 and "Traceback" not in "".join(serve.lines)


def _reached(seen: list[int]) -> Any:
    async def check() -> bool:
        return seen[0] >= TARGET_EVENTS

    return check


async def _engine_states(eng: Engine) -> dict[str, str]:
    listed = await eng.call("GET", "/containers/json", params={"all": "1"})
    return {c["Names"][0].lstrip("/"): c["State"] for c in listed}


async def _matches(
    http: aiohttp.ClientSession, url: str, truth: dict[str, str]
) -> dict[str, str] | None:
    """idlewatch's statuses once they equal the engine's exactly (removed ones pruned)."""
    async with http.get(url + "/api/agents", headers=AUTH) as resp:
        api = {a["name"]: a["status"] for a in await resp.json()}
    return api if api == truth else None
