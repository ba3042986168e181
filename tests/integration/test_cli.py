"""Every CLI command through a real `idlewatch serve` process on the private engine."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.private_engine import PrivateEngine, free_port
from tests.waiting import until_sync

from .conftest import create_service, inspect, run_container, running_tasks
from .serveproc import ServeProcess

TOKEN = "cli-token"


@pytest.fixture
def server(engine: PrivateEngine, tmp_path: Path) -> Iterator[ServeProcess]:
    run_container(engine, "cli-c")
    create_service(engine, "cli-s")
    until_sync(lambda: running_tasks(engine, "cli-s") == 1, 30)
    proc = ServeProcess(engine, tmp_path, api_token=TOKEN).start()
    try:
        yield proc
    finally:
        assert proc.stop() == 0


def test_agents_table_and_json(server: ServeProcess) -> None:
    res = server.cli("agents", token=TOKEN)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split("\t") == [
        "NAME",
        "KIND",
        "STATUS",
        "REPLICAS",
        "LAST ACTIVITY",
        "IDLE IN",
    ]
    rows = {line.split("\t")[0]: line.split("\t") for line in lines[1:]}
    assert rows["cli-c"][1:4] == ["container", "running", "1/1"]
    assert rows["cli-s"][1] == "service"
    res = server.cli("agents", "--json", "--status", "running", token=TOKEN)
    assert {a["name"] for a in json.loads(res.stdout)} == {"cli-c", "cli-s"}


def test_lifecycle_commands(engine: PrivateEngine, server: ServeProcess) -> None:
    res = server.cli("stop", "cli-c", token=TOKEN)
    assert res.returncode == 0, res.stderr
    assert "cli-c: stopped" in res.stdout
    assert inspect(engine, "cli-c")["State"]["Running"] is False
    res = server.cli("start", "cli-c", token=TOKEN)
    assert res.returncode == 0 and inspect(engine, "cli-c")["State"]["Running"] is True
    assert server.cli("restart", "cli-c", token=TOKEN).returncode == 0
    res = server.cli("touch", "cli-c", token=TOKEN)
    assert res.returncode == 0 and "touched" in res.stdout
    res = server.cli("scale", "cli-s", "2", token=TOKEN)
    assert res.returncode == 0 and "scaled to 2" in res.stdout
    assert server.cli("stop", "cli-s", token=TOKEN).returncode == 0
    res = server.cli("start", "cli-s", "--wait", "--timeout", "60", token=TOKEN)
    assert res.returncode == 0, res.stderr
    progress = res.stdout.splitlines()
    assert progress[-1].startswith("cli-s: started (status running, 2/2 running)"), progress
    assert len(progress) >= 2, "shows progress before it runs"
    res = server.cli("audit", "--agent", "cli-c", token=TOKEN)
    actions = [line.split("\t")[2] for line in res.stdout.splitlines()]
    assert actions[:3] == ["restart", "start", "stop"]


def test_why_and_stats(server: ServeProcess) -> None:
    """Issue 24: why an agent is awake and what comes next, in plain words; the stats."""
    assert server.cli("touch", "cli-c", "--for", "30m", token=TOKEN).returncode == 0
    res = server.cli("why", "cli-c", token=TOKEN)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "cli-c is running (1/1)"
    assert any(x.startswith("  keep_alive: kept alive by a touch or a wake, until") for x in lines)
    assert "next action: none (held: keep_alive)" in lines
    assert any("touch" in x for x in lines[lines.index("recently:") :]), lines
    res = server.cli("why", "cli-c", "--json", token=TOKEN)
    assert json.loads(res.stdout)["agent"]["holds"][0]["kind"] == "keep_alive"
    res = server.cli("stats", "--window", "7d", token=TOKEN)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("agents now: ") and "saved agent-hours" in res.stdout
    res = server.cli("stats", "--window", "2h", token=TOKEN)
    assert res.returncode == 2 and "2h" in res.stderr
    res = server.cli("why", "nobody", token=TOKEN)
    assert res.returncode == 1 and "not_found" in res.stderr


def test_error_paths(server: ServeProcess) -> None:
    res = server.cli("agents", token="wrong")
    assert res.returncode == 1 and "unauthorized" in res.stderr
    res = server.cli("stop", "no-such-agent", token=TOKEN)
    assert res.returncode == 1 and "not_found" in res.stderr
    res = server.cli("scale", "cli-s", "lots", token=TOKEN)
    assert res.returncode == 2 and "lots" in res.stderr
    res = server.cli("scale", "cli-c", "2", token=TOKEN)
    assert res.returncode == 1 and "invalid_operation" in res.stderr
    res = server.cli("agents", token=TOKEN, url=f"http://127.0.0.1:{free_port()}")
    assert res.returncode == 1 and "cannot reach the API" in res.stderr
    res = server.cli("frobnicate", token=TOKEN)
    assert res.returncode == 2


def test_check(engine: PrivateEngine, tmp_path: Path, server: ServeProcess) -> None:
    """And a check creates nothing: run where no database is yet, it says so and leaves no
    ./data behind (issue 22, item 10: it made ./data/idlewatch.db)."""
    import subprocess
    import sys

    env = dict(server.env)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    res = subprocess.run(
        [sys.executable, "-m", "idlewatch.api.cli", "check"],
        env=env,
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "no database yet: serve creates it" in res.stdout, res.stdout
    assert list(elsewhere.iterdir()) == [], "a check must not create state"
    res = subprocess.run(
        [sys.executable, "-m", "idlewatch.api.cli", "check"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "(sqlite+aiosqlite:///./data/idlewatch.db: schema " in res.stdout, res.stdout
    assert "swarm: active, this node is a manager" in res.stdout
    assert "container cli-c (running)" in res.stdout and "service cli-s" in res.stdout
    env["IDLEWATCH_DOCKER_URL"] = "unix:///nonexistent/docker.sock"
    res = subprocess.run(
        [sys.executable, "-m", "idlewatch.api.cli", "check"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1 and "engine: FAILED" in res.stdout


def test_usage_errors_and_help_words(server: ServeProcess) -> None:
    """Issue 22, item 10: a bad --for is a usage error (2), not a failed action (1); help
    says what a command does, not what it did."""
    import subprocess
    import sys

    res = server.cli("touch", "cli-c", "--for", "abc", token=TOKEN)
    assert res.returncode == 2 and "--for" in res.stderr, res.stderr
    help_text = subprocess.run(
        [sys.executable, "-m", "idlewatch.api.cli", "--help"],
        capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    assert "Stop a container or scale a service to 0" in help_text, help_text
    assert "Stopped" not in help_text and "Restarted" not in help_text, help_text


def test_help_everywhere() -> None:
    import subprocess
    import sys

    for cmd in (
        [],
        ["serve"],
        ["agents"],
        ["start"],
        ["stop"],
        ["restart"],
        ["touch"],
        ["scale"],
        ["check"],
        ["audit"],
    ):
        res = subprocess.run(
            [sys.executable, "-m", "idlewatch.api.cli", *cmd, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 0 and "Usage:" in res.stdout, cmd


def test_agents_says_when_the_engine_is_unreachable(engine: PrivateEngine, tmp_path: Path) -> None:
    """With no engine at the address, the listing is no empty success (issue 11)."""
    nowhere = f"unix://{tmp_path}/no-engine.sock"
    proc = ServeProcess(engine, tmp_path, api_token=TOKEN, docker_url=nowhere)
    proc.start(wait_synced=False)
    try:
        res = proc.cli("agents", token=TOKEN)
        assert res.returncode == 1, res.stdout + res.stderr
        assert "engine unreachable" in res.stderr and nowhere in res.stderr, res.stderr
        assert "may be stale" in res.stderr
    finally:
        assert proc.stop() == 0
