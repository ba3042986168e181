"""Which modules two paths run through, and how often a wake notes its use.

``python -m bench.paths`` (from the repository root, in the project's venv) runs a Watcher on
the fake engine and store of ``tests/fakes.py``, with the API in front of it, and records
with ``sys.setprofile`` every function of ``idlewatch`` that is called during:

1. **a wake**: ``GET /api/wake`` with ``X-Forwarded-Host`` for a stopped container carrying
   ``idlewatch.hosts``, until the answer and the writes it caused are settled;
2. **an ``exec_start`` event**: from the engine's stream until the websocket frame arrived
   and the row is written.

It prints the modules of each path and, for the wake, the calls that note use (tracker
touches, activity reports) and wait. A structural figure, not a speed one: it counts calls,
it times nothing.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from idlewatch import ManualClock, Settings, Watcher
from idlewatch.api import create_app
from idlewatch.models import ContainerInfo, EngineEvent, EventType, freeze

from tests.fakes import FakeDocker, FakeStore

MANAGED = {"idlewatch.enable": "true"}
#: function names that note use or wait, counted on the wake's path
NOTED = ("touch", "report_use", "share_activity", "wait_until", "wait_for", "wait_answers")

Calls = collections.Counter[tuple[str, str]]


def recorder(calls: Calls) -> Callable[[FrameType, str, Any], None]:
    def profile(frame: FrameType, event: str, _arg: Any) -> None:
        if event == "call":
            path = frame.f_code.co_filename
            at = path.rfind("/idlewatch/")
            if at >= 0:
                calls[(path[at + len("/idlewatch/") :], frame.f_code.co_name)] += 1

    return profile


async def measure() -> tuple[Calls, Calls]:
    docker = FakeDocker()
    docker.lively = True  # the fake engine emits the events of what it is asked to do
    hosts = freeze({**MANAGED, "idlewatch.hosts": "web.test"})
    docker.containers["c1"] = ContainerInfo("c1", "web", "img", "exited", hosts)
    docker.containers["c2"] = ContainerInfo("c2", "box", "img", "running", freeze(MANAGED))
    settings = Settings(docker_url="unix:///f.sock", database_url="sqlite:///u.db")
    w = Watcher(settings, docker=docker, store=FakeStore(), clock=ManualClock(datetime.now(UTC)))
    wake: Calls = collections.Counter()
    exec_start: Calls = collections.Counter()
    async with w:
        await w.wait_synced(5)
        await w.settled(5)
        client: TestClient[Any, Any] = TestClient(TestServer(create_app(w)))
        await client.start_server()
        try:
            ws = await client.ws_connect("/api/ws")
            await ws.receive_json(timeout=5)  # the snapshot
            sys.setprofile(recorder(wake))
            resp = await client.get("/api/wake", headers={"X-Forwarded-Host": "web.test"})
            await w.settled(5)
            sys.setprofile(None)
            if resp.status != 200:
                raise SystemExit(f"the wake answered {resp.status}: {await resp.text()}")
            while True:  # the wake's own frames
                try:
                    await ws.receive_json(timeout=0.3)
                except TimeoutError:
                    break
            sys.setprofile(recorder(exec_start))
            event = EngineEvent(
                EventType.CONTAINER,
                "exec_start",
                "c2",
                time.time_ns(),
                "box",
                "img",
                "sh",
                freeze({**MANAGED, "execID": "e1"}),
            )
            docker.streams[-1].queue.put_nowait(event)
            await ws.receive_json(timeout=5)
            await w.settled(5)
            sys.setprofile(None)
            await ws.close()
        finally:
            sys.setprofile(None)
            await client.close()
    return wake, exec_start


def main() -> None:
    wake, exec_start = asyncio.run(measure())
    for name, calls in (("wake of a stopped container", wake), ("exec_start event", exec_start)):
        modules = sorted({path for path, _ in calls})
        print(f"{name}: {len(modules)} modules: {' '.join(modules)}")
        print(f"  in core.py: {', '.join(sorted({f for p, f in calls if p == 'core.py'}))}")
    print("wake: calls that note use or wait:")
    for (path, fn), n in sorted(wake.items()):
        if fn in NOTED:
            print(f"  {path}:{fn} x{n}")


if __name__ == "__main__":
    main()
