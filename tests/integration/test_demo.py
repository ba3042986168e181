"""Smoke test of `idlewatch demo`: starts, serves the page, an agent goes idle, clean teardown."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

from idlewatch.api.netns import namespace_of

from tests.private_engine import free_port
from tests.waiting import until_sync

from .bridges import bridge_state, stand_in_bridges


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.read()


def test_demo_smoke(tmp_path: Path) -> None:
    """And the demo's engine lives in a network namespace of its own: the user's Docker
    bridges are left as they were (issue 22, item 1)."""
    with stand_in_bridges() as bridges:
        _demo_smoke(tmp_path)
        assert bridge_state() == bridges, "the demo changed the host's Docker bridges"


def _demo_smoke(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDLEWATCH_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "idlewatch.api.cli",
            "demo",
            "--port",
            str(port),
            "--idle",
            "3s",
            "--sweep-interval",
            "1s",
        ],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(
        target=lambda: out.extend(iter(proc.stdout.readline, "")), daemon=True
    )
    reader.start()
    try:
        until_sync(lambda: any("idlewatch demo: open" in line for line in out), 90)
        base = f"http://127.0.0.1:{port}"
        status, page = _get(base + "/")
        assert status == 200 and b"idlewatch" in page

        def idle_stopped() -> bool:
            _, body = _get(base + "/api/agents")
            agents = {a["name"]: a for a in json.loads(body)}
            return agents.get("demo-service", {}).get("status") == "stopped"

        root = next(line.split("engine: ", 1)[1].strip() for line in out if "engine: " in line)
        dockerd = (Path(root) / "docker.pid").read_text().strip()
        assert namespace_of(dockerd) != namespace_of("self"), "the demo engine's own network"
        until_sync(idle_stopped, 60)
        _, body = _get(base + "/api/audit?agent=demo-service")
        assert json.loads(body)[0]["action"] == "scale_to_zero"
        _, body = _get(base + "/api/agents")
        assert "demo-unmanaged" not in {a["name"] for a in json.loads(body)}
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(60)
        reader.join(10)
        proc.stdout.close()
    text = "".join(out)
    assert code == 0, text
    assert "demo stopped; nothing left behind" in text
    root = next(line.split("engine: ", 1)[1].strip() for line in out if line.startswith("engine: "))
    assert not Path(root).exists(), "the demo engine's directory was removed"
    assert "Traceback" not in text


def test_a_taken_port_fails_at_once_and_the_hint_works(tmp_path: Path) -> None:
    """The demo honours IDLEWATCH_PORT, and a taken port is found before the engine starts
    (that took about 8 s before issue 11), with a hint that names the settings to use."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("IDLEWATCH_")}
        env["IDLEWATCH_PORT"] = str(port)
        res = subprocess.run(
            [sys.executable, "-m", "idlewatch.api.cli", "demo"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in res.stderr
    assert "IDLEWATCH_PORT" in res.stderr and "--port" in res.stderr
    assert "starting a private Docker engine" not in res.stdout, "no engine was started"
    assert "Traceback" not in res.stderr
