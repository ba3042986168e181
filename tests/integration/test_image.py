"""idlewatch's own image: built offline from local wheels, healthy by its own HEALTHCHECK."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml
from idlewatch.api.netns import in_host_network

from tests.private_engine import PrivateEngine, free_port

from .hostbase import build_host_python_base

ROOT = Path(__file__).resolve().parents[2]


def _logs(engine: PrivateEngine) -> str:
    res = subprocess.run(
        ["docker", "logs", "idlewatch-self"],
        env=engine.env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    return res.stdout + res.stderr


def test_image_builds_offline_and_turns_healthy(engine: PrivateEngine, tmp_path: Path) -> None:
    base = build_host_python_base(engine, tmp_path)
    wheels = tmp_path / "wheels"
    subprocess.run(  # the package index is reached from the host's network only
        [sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(wheels), str(ROOT)],
        check=True,
        timeout=600,
        preexec_fn=in_host_network(),
    )
    engine.cli(
        "build",
        "-q",
        "-f",
        str(ROOT / "config" / "Dockerfile"),
        "--build-arg",
        f"BASE={base}",
        "--build-arg",
        "WHEELS=wheels",
        "-t",
        "idlewatch-test/idlewatch:latest",
        str(tmp_path),
        timeout_s=600,
    )
    port = free_port()
    gid = os.stat(engine.socket_path).st_gid
    engine.cli(
        "run",
        "-d",
        "--name",
        "idlewatch-self",
        "--network",
        "host",
        "--group-add",
        str(gid),
        "-v",
        f"{engine.socket_path}:/var/run/docker.sock",
        "-v",
        "idlewatch-test-data:/data",
        "-e",
        "IDLEWATCH_HOST=127.0.0.1",
        "-e",
        f"IDLEWATCH_PORT={port}",
        "idlewatch-test/idlewatch:latest",
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            state = json.loads(engine.cli("inspect", "idlewatch-self"))[0]["State"]
            health = (state.get("Health") or {}).get("Status")
            if health == "healthy":
                break
            assert state["Running"], engine.cli("logs", "idlewatch-self", check=False)
            assert time.monotonic() < deadline, f"still {health}: " + engine.cli(
                "logs", "idlewatch-self", check=False
            )
            time.sleep(0.5)
        config = json.loads(engine.cli("inspect", "idlewatch-self"))[0]["Config"]
        assert config["User"] == "10001:10001", "runs as non-root"
    finally:
        engine.cli("rm", "-f", "idlewatch-self", check=False)
        engine.cli("volume", "rm", "-f", "idlewatch-test-data", check=False)


def test_stack_file_validates(engine: PrivateEngine) -> None:
    out = engine.cli("stack", "config", "-c", str(ROOT / "config" / "stack.yml"))
    stack = yaml.safe_load(out)
    svc = stack["services"]["idlewatch"]
    assert svc["deploy"]["placement"]["constraints"] == ["node.role == manager"]
    assert svc["deploy"]["replicas"] == 2  # several replicas, one leader, one PostgreSQL
    assert any(v["target"] == "/var/run/docker.sock" for v in svc["volumes"])
    for name in ("idlewatch_api_token", "idlewatch_database_url", "idlewatch_db_password"):
        assert stack["secrets"][name]["external"] is True
    # serve and node read the same database URL (a secret: it carries the password)
    for service in ("idlewatch", "node"):
        targets = {s["target"] for s in stack["services"][service]["secrets"]}
        assert "idlewatch_database_url" in targets
    assert stack["services"]["postgres"]["deploy"]["replicas"] == 1


def test_compose_file_is_well_formed() -> None:
    compose = yaml.safe_load((ROOT / "config" / "compose.yml").read_text())
    svc = compose["services"]["idlewatch"]
    assert "/var/run/docker.sock:/var/run/docker.sock" in svc["volumes"]
    assert "idlewatch-data" in compose["volumes"]
    assert svc["environment"]["IDLEWATCH_API_TOKEN"].startswith("${IDLEWATCH_API_TOKEN:?")
