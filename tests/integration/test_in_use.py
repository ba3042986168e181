"""In use means in use (issue 13), on the real engine: open sessions, busy checks,
keep-alive, pause, and the cap on awake agents."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pty
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from idlewatch import CapacityExceeded, ManualClock, Settings, Status, Watcher

from tests.private_engine import PrivateEngine
from tests.waiting import until

from .conftest import audited, inspect, run_container
from .serveproc import ServeProcess
from .test_tracking import has

BURN = ("sh", "-c", 'trap "exit 0" TERM; while :; do :; done')


async def _exec(engine: PrivateEngine, container: str, *cmd: str) -> asyncio.subprocess.Process:
    """`docker exec` in the background, as somebody working in the container."""
    return await asyncio.create_subprocess_exec(
        "docker",
        "exec",
        container,
        *cmd,
        env=engine.env(),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


def _state(engine: PrivateEngine, name: str) -> str:
    return str(inspect(engine, name)["State"]["Status"])


async def _until_exited(w: Watcher, name: str, timeout_s: float) -> None:
    await w.wait_for(name, lambda a: a is not None and a.status is Status.EXITED, timeout_s)


async def test_an_open_exec_keeps_its_agent_until_it_ends(
    engine: PrivateEngine, settings_for: Callable[..., Settings]
) -> None:
    """`docker exec c sleep 15` under a 3 s timeout: running all along (the old rule stopped
    it mid-exec), stopped within the timeout plus a sweep after it ends; the container's own
    healthcheck (every second) never counts."""
    run_container(
        engine,
        "sess",
        labels={"idlewatch.idle-timeout": "3s"},
        extra=("--health-cmd", "true", "--health-interval", "1s"),
    )
    async with Watcher(settings_for(sweep_interval=1)) as w:
        await w.wait_for("sess", has(Status.RUNNING), 15)
        started = inspect(engine, "sess")["State"]["StartedAt"]
        proc = await _exec(engine, "sess", "sleep", "15")
        await w.wait_for("sess", lambda a: a is not None and a.sessions == 1, 10)
        await proc.wait()  # 15 s, five timeouts: the agent must stay up all along
        assert _state(engine, "sess") == "running", "stopped while the exec ran"
        assert inspect(engine, "sess")["State"]["StartedAt"] == started
        # held by its session as tracked, not rescued by the live check before a stop
        assert not [e for e in await w.audit("sess") if e.action in ("stop", "idle_skipped")]
        ended = time.monotonic()
        await _until_exited(w, "sess", 3 + 1 + 6)  # the timeout, a sweep, the stop itself
        stop = await audited(w, "sess", "stop")
        assert len(stop) == 1 and stop[0].actor == "sweep"
        assert time.monotonic() - ended < 3 + 1 + 6


async def test_an_open_exec_is_recovered_by_a_restarted_idlewatch(
    engine: PrivateEngine, settings_for: Callable[..., Settings]
) -> None:
    run_container(engine, "sess2", labels={"idlewatch.idle-timeout": "3s"})
    settings = settings_for(sweep_interval=1)
    async with Watcher(settings) as w:
        await w.wait_for("sess2", has(Status.RUNNING), 15)
        proc = await _exec(engine, "sess2", "sleep", "12")
        await w.wait_for("sess2", lambda a: a is not None and a.sessions == 1, 10)
    async with Watcher(settings) as w:  # idlewatch restarted while the exec runs
        await w.wait_synced(30)
        await w.wait_for("sess2", lambda a: a is not None and a.sessions == 1, 10)
        await proc.wait()
        assert _state(engine, "sess2") == "running", "stopped while the exec ran"
        assert not [e for e in await w.audit("sess2") if e.action == "idle_skipped"]
        await _until_exited(w, "sess2", 3 + 1 + 6)


async def test_an_attach_holds_until_the_max_hold_as_its_end_leaves_no_trace(
    engine: PrivateEngine, settings_for: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    """The engine says nothing when an attach ends (no event, no count in inspect): the
    attach holds its agent until the process ends or attach_max_hold passes."""
    cid = run_container(engine, "att", labels={"idlewatch.idle-timeout": "1s"})
    caplog.set_level(logging.WARNING, logger="idlewatch")
    async with Watcher(settings_for(sweep_interval=1, attach_max_hold="6s")) as w:
        await w.wait_for("att", has(Status.RUNNING), 15)
        attached = datetime.now(UTC)
        with socket.socket(socket.AF_UNIX) as s:  # attach, then hang up at once
            s.connect(str(engine.socket_path))
            s.sendall(
                f"POST /containers/{cid}/attach?stream=1&stdout=1 HTTP/1.1\r\n"
                "Host: docker\r\nContent-Length: 0\r\n\r\n".encode()
            )
            assert s.recv(1024).startswith(b"HTTP/1.1 200 OK"), "the engine refused the attach"
        await w.wait_for("att", lambda a: a is not None and a.sessions == 1, 10)
        await _until_exited(w, "att", 6 + 1 + 8)
        stop = await audited(w, "att", "stop")
        assert len(stop) == 1 and (stop[0].at - attached).total_seconds() >= 6 - 1
    warned = [r.getMessage() for r in caplog.records if "attach_max_hold" in r.getMessage()]
    assert len(warned) == 1 and "att" in warned[0] and "attach" in warned[0]


async def test_busy_cpu_keeps_a_burning_agent_and_lets_an_idle_one_go(
    engine: PrivateEngine, settings_for: Callable[..., Settings]
) -> None:
    labels = {"idlewatch.idle-timeout": "1s", "idlewatch.busy-cpu": "5"}
    args = ["run", "-d", "--name", "burner", "--network", "none", "--stop-timeout", "2"]
    for k, v in {"idlewatch.enable": "true", **labels}.items():
        args += ["--label", f"{k}={v}"]
    engine.cli(*args, "idlewatch-test/busybox", *BURN)
    run_container(engine, "quiet", labels=labels)
    clock = ManualClock(datetime.now(UTC))
    async with Watcher(settings_for(), clock=clock) as w:
        for name in ("burner", "quiet"):
            await w.wait_for(name, has(Status.RUNNING), 15)
        clock.advance(60)
        report = await w.sweep_once()
        assert report.summary() == {"burner": "skipped: busy:cpu", "quiet": "acted"}
        assert _state(engine, "burner") == "running" and _state(engine, "quiet") == "exited"
        (skip,) = [e for e in await w.audit("burner") if e.action == "idle_skipped"]
        assert skip.reason == "busy:cpu" and "% of a core" in skip.detail
        assert w.status().idle_skipped == {"busy:exec": 0, "busy:cpu": 1, "busy:command": 0}


async def test_busy_command_keeps_an_agent_while_its_file_exists(
    engine: PrivateEngine, settings_for: Callable[..., Settings]
) -> None:
    labels = {"idlewatch.idle-timeout": "1s", "idlewatch.busy-command": "test -e /busy"}
    run_container(engine, "flagged", labels=labels)
    clock = ManualClock(datetime.now(UTC))
    async with Watcher(settings_for(), clock=clock) as w:
        await w.wait_for("flagged", has(Status.RUNNING), 15)
        engine.cli("exec", "flagged", "touch", "/busy")
        clock.advance(60)
        assert (await w.sweep_once()).summary() == {"flagged": "skipped: busy:command"}
        await w.settled(10)
        agent = w.get("flagged")
        assert agent is not None and agent.sessions == 0, "the check's own exec is no session"
        assert agent.last_activity == clock.now(), "the check counted as use at that moment"
        engine.cli("exec", "flagged", "rm", "/busy")
        clock.advance(60)
        assert (await w.sweep_once()).summary() == {"flagged": "acted"}
        assert _state(engine, "flagged") == "exited"
        actions = [(e.action, e.reason) for e in reversed(await w.audit("flagged"))]
        assert actions[0] == ("idle_skipped", "busy:command") and actions[-1][0] == "stop"


async def test_keep_for_holds_past_the_timeout_and_lets_go_after(
    engine: PrivateEngine, settings_for: Callable[..., Settings]
) -> None:
    run_container(engine, "kept", labels={"idlewatch.idle-timeout": "1s"})
    clock = ManualClock(datetime.now(UTC))
    async with Watcher(settings_for(), clock=clock) as w:
        await w.wait_for("kept", has(Status.RUNNING), 15)
        agent = await w.touch("kept", keep_for_s=30)
        assert agent.keep_until is not None
        clock.advance(25)
        assert (await w.sweep_once()).summary() == {}
        clock.advance(10)
        assert (await w.sweep_once()).summary() == {"kept": "acted"}
        assert _state(engine, "kept") == "exited"


async def test_pause_then_start_then_stop_after(
    engine: PrivateEngine, settings_for: Callable[..., Settings]
) -> None:
    labels = {
        "idlewatch.idle-timeout": "1s",
        "idlewatch.idle-action": "pause",
        "idlewatch.stop-after": "5s",
    }
    run_container(engine, "napper", labels=labels)
    clock = ManualClock(datetime.now(UTC))
    async with Watcher(settings_for(), clock=clock) as w:
        await w.wait_for("napper", has(Status.RUNNING), 15)
        clock.advance(10)
        assert (await w.sweep_once()).summary() == {"napper": "acted"}
        await w.wait_for("napper", has(Status.PAUSED), 10)
        assert _state(engine, "napper") == "paused"
        started = await w.start("napper")  # a start unpauses it
        assert started.status is Status.RUNNING and _state(engine, "napper") == "running"
        clock.advance(10)
        await w.sweep_once()
        await w.wait_for("napper", has(Status.PAUSED), 10)
        clock.advance(6)  # paused longer than its stop-after
        assert (await w.sweep_once()).summary() == {"napper": "acted"}
        await _until_exited(w, "napper", 15)
        actions = [e.action for e in reversed(await w.audit("napper"))]
        assert actions == ["pause", "start", "pause", "stop"]


async def test_max_awake_frees_the_least_recently_used_or_refuses(
    engine: PrivateEngine, settings_for: Callable[..., Settings]
) -> None:
    for name in ("cap-a", "cap-b", "cap-c"):
        run_container(engine, name, labels={"idlewatch.idle-timeout": "1h"})
    engine.cli("stop", "-t", "1", "cap-c")
    async with Watcher(settings_for(max_awake=2)) as w:
        await w.wait_for("cap-c", has(Status.EXITED), 15)
        await w.touch("cap-b")  # cap-a is now the least recently used
        started = await w.start("cap-c")
        assert started.status is Status.RUNNING
        await until(lambda: _state(engine, "cap-a") == "exited", 15, "cap-a evicted")
        assert (await w.audit("cap-a"))[0].reason == "evicted for cap-c"
        # both awake agents in use: nothing can be freed
        busy = [await _exec(engine, n, "sleep", "30") for n in ("cap-b", "cap-c")]
        for name in ("cap-b", "cap-c"):
            await w.wait_for(name, lambda a: a is not None and a.sessions == 1, 10)
        with pytest.raises(CapacityExceeded) as refused:
            await w.start("cap-a")
        assert "max_awake=2" in refused.value.message and _state(engine, "cap-a") == "exited"
        for proc in busy:
            proc.kill()


async def test_concurrent_starts_never_exceed_the_cap(
    engine: PrivateEngine, settings_for: Callable[..., Settings]
) -> None:
    names = [f"herd-{i}" for i in range(4)]
    for name in names:
        run_container(engine, name, labels={"idlewatch.idle-timeout": "1h"})
        engine.cli("stop", "-t", "1", name)
    async with Watcher(settings_for(max_awake=2)) as w:
        for name in names:
            await w.wait_for(name, has(Status.EXITED), 15)
        results = await asyncio.gather(*(w.start(n) for n in names), return_exceptions=True)
        assert not [r for r in results if isinstance(r, BaseException)], results
        await w.settled(10)
        running = [n for n in names if _state(engine, n) == "running"]
        assert len(running) == 2, running
        evicted = [e for n in names for e in await w.audit(n) if e.actor == "capacity"]
        assert len(evicted) == 2 and all(e.reason.startswith("evicted for ") for e in evicted)


async def test_stopping_a_paused_agent_is_no_use_of_it(
    engine: PrivateEngine, settings_for: Callable[..., Settings]
) -> None:
    """The engine thaws a paused container it stops (kill, unpause, die): that unpause is
    no use, so the agent's last activity stays what it was (issue 22, item 9)."""
    run_container(engine, "frozen")
    async with Watcher(settings_for()) as w:
        await w.wait_for("frozen", has(Status.RUNNING), 15)
        engine.cli("pause", "frozen")
        paused = await w.wait_for("frozen", has(Status.PAUSED), 15)
        assert paused is not None
        await w.stop("frozen")
        stopped = await w.wait_for("frozen", has(Status.EXITED), 15)
        assert stopped is not None and stopped.last_activity == paused.last_activity
        engine.cli("start", "frozen")
        engine.cli("pause", "frozen")
        engine.cli("unpause", "frozen")  # somebody's own unpause is use, as before
        resumed = await w.wait_for("frozen", has(Status.RUNNING), 15)
        assert resumed is not None and resumed.last_activity > paused.last_activity


async def test_an_attach_survives_a_restart_of_serve_and_holds_until_attach_max_hold(
    engine: PrivateEngine, tmp_path: Path
) -> None:
    """Issue 22, item 2: attached to a container with a 5 s idle timeout, serve restarted:
    the attach is still counted (it was 0, and an idle stop killed the container under
    the terminal); it holds until attach_max_hold after the attach, then the agent sleeps."""
    run_container(engine, "term", labels={"idlewatch.idle-timeout": "5s"}, extra=("-t", "-i"))
    settings = {"sweep_interval": "1s", "attach_max_hold": "20s"}
    serve = ServeProcess(engine, tmp_path, **settings).start()
    controller, terminal = pty.openpty()
    attach = await asyncio.create_subprocess_exec(
        "docker", "attach", "--sig-proxy=false", "term",
        env=engine.env(), stdin=terminal, stdout=terminal, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await until(lambda: _json(serve, "/api/agents/term")["sessions"] == 1, 15, "attach")
        attached_at = time.monotonic()
        assert serve.stop() == 0
        serve = ServeProcess(engine, tmp_path, **settings).start()
        agent = _json(serve, "/api/agents/term")
        assert agent["sessions"] == 1 and agent["attached_since"], agent
        idle_passed = attached_at + 5 + 1

        def swept_after_the_timeout() -> bool:
            return time.monotonic() > idle_passed and _sweeps(serve) >= 3

        await until(swept_after_the_timeout, 20, "sweeps past the idle timeout")
        sweeps = _sweeps(serve)
        await until(lambda: _sweeps(serve) >= sweeps + 2, 10, "two sweeps more")
        assert _state(engine, "term") == "running", "stopped under the attached terminal"
        # the terminal detaches (the engine says nothing): attach_max_hold ends the hold
        attach.terminate()
        await until(lambda: _state(engine, "term") == "exited", 40, "the idle stop")
        assert time.monotonic() - attached_at >= 20
        stops = [e for e in _json(serve, "/api/audit?agent=term") if e["action"] == "stop"]
        assert stops and stops[0]["actor"] == "sweep"
        assert any("attach_max_hold" in line for line in serve.lines)
    finally:
        if attach.returncode is None:
            attach.kill()
        await attach.wait()
        os.close(controller)
        os.close(terminal)
        serve.stop()


def _json(serve: ServeProcess, path: str) -> Any:
    with urllib.request.urlopen(serve.url + path, timeout=10) as resp:
        return json.load(resp)


def _sweeps(serve: ServeProcess) -> int:
    with urllib.request.urlopen(serve.url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    (line,) = [x for x in text.splitlines() if x.startswith("idlewatch_sweeps_total ")]
    return int(float(line.split()[1]))
