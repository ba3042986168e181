"""The library surface and the `idlewatch serve` process against the private engine."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from idlewatch import Change, Status, Watcher

from tests.private_engine import PrivateEngine, free_port

from .conftest import run_container
from .serveproc import ON_UVLOOP, ServeProcess


async def test_changes_feed_yields_each_change(engine: PrivateEngine, watcher: Watcher) -> None:
    run_container(engine, "fed")
    await watcher.wait_for("fed", lambda a: a is not None and a.status is Status.RUNNING, 10)
    seen: list[Change] = []

    async def follow() -> None:
        async for change in watcher.changes():
            if change.agent.name == "fed":
                seen.append(change)
                if change.agent.status is Status.EXITED:
                    return

    task = asyncio.create_task(follow())
    await asyncio.sleep(0)  # subscribed before the stop
    engine.cli("stop", "fed")
    await asyncio.wait_for(task, 10)
    last = seen[-1]
    assert last.previous_status is Status.RUNNING and last.reason == "event:die"


def test_serve_runs_and_shuts_down_cleanly_on_sigterm(
    engine: PrivateEngine, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDLEWATCH_")}
    port = free_port()
    env.update(
        IDLEWATCH_DOCKER_URL=engine.url, IDLEWATCH_SWEEP_INTERVAL="1h", IDLEWATCH_PORT=str(port)
    )
    run_container(engine, "served")
    proc = subprocess.Popen(
        [sys.executable, "-m", "idlewatch.api.cli", "serve"],
        env=env,
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if "resynced with the engine: 1 agents tracked" in line:
            break
    else:
        proc.kill()
        proc.stderr.close()
        raise AssertionError("serve never synced:\n" + "".join(lines))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/agents", timeout=10) as r:
        assert [a["name"] for a in json.load(r)] == ["served"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    rest = proc.stderr.read()
    proc.stderr.close()
    assert "Traceback" not in rest and "shutting down" in rest
    assert (tmp_path / "data" / "idlewatch.db").is_file()


def test_serve_works_on_uvloop(engine: PrivateEngine, tmp_path: Path) -> None:
    """uvloop's transports are not asyncio.Transport subclasses: the connection guard
    asserted that they were, and refused every connection there."""
    run_container(engine, "on-uvloop")
    server = ServeProcess(engine, tmp_path, ON_UVLOOP).start()
    try:
        assert any("event loop: uvloop" in line for line in server.lines), server.lines
        with urllib.request.urlopen(f"{server.url}/api/agents", timeout=10) as r:
            assert [a["name"] for a in json.load(r)] == ["on-uvloop"]
        agent = f"{server.url}/api/agents/on-uvloop"
        with urllib.request.urlopen(urllib.request.Request(f"{agent}/stop", method="POST")) as r:
            assert r.status == 200
        start = urllib.request.Request(f"{agent}/start?wait=running&timeout=30", method="POST")
        with urllib.request.urlopen(start, timeout=40) as r:  # its events arrive on uvloop
            assert json.load(r)["status"] == "running"
    finally:
        assert server.stop() == 0
    log = "".join(server.lines)
    assert "Traceback" not in log and "shutting down" in log, log[-3000:]
