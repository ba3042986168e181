"""``idlewatch demo``: a private engine, a few sample agents, and the dashboard, in one command."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

from idlewatch import WatcherError

from .demo_engine import SAMPLE_IMAGE, DemoEngine

logger = logging.getLogger(__name__)

SLEEPER = ["sh", "-c", 'trap "exit 0" TERM; while :; do sleep 1; done']


def create_samples(engine: DemoEngine, idle_s: float) -> None:
    """A service, a container and a container with a healthcheck, with short idle timeouts."""
    enable = ["--label", "idlewatch.enable=true"]
    engine.cli(
        "service",
        "create",
        "-d",
        "--name",
        "demo-service",
        "--replicas",
        "2",
        "--stop-grace-period",
        "1s",
        *enable,
        "--label",
        f"idlewatch.idle-timeout={idle_s:g}s",
        SAMPLE_IMAGE,
        *SLEEPER,
    )
    engine.cli(
        "run",
        "-d",
        "--name",
        "demo-container",
        "--network",
        "none",
        *enable,
        "--label",
        f"idlewatch.idle-timeout={idle_s + 15:g}s",
        SAMPLE_IMAGE,
        *SLEEPER,
    )
    engine.cli(
        "run",
        "-d",
        "--name",
        "demo-healthcheck",
        "--network",
        "none",
        *enable,
        "--label",
        f"idlewatch.idle-timeout={idle_s + 30:g}s",
        "--health-cmd",
        "true",
        "--health-interval",
        "2s",
        SAMPLE_IMAGE,
        *SLEEPER,
    )
    engine.cli("run", "-d", "--name", "demo-unmanaged", "--network", "none", SAMPLE_IMAGE, *SLEEPER)


def demo_overrides(
    engine: DemoEngine, idle_s: float, sweep_s: float, port: int | None
) -> dict[str, Any]:
    """The settings the demo sets itself; the rest come from the usual sources, so
    ``IDLEWATCH_PORT``, ``IDLEWATCH_HOST`` or a token work as they do for ``serve``."""
    overrides: dict[str, Any] = {
        "docker_url": engine.url,
        "database_url": f"sqlite+aiosqlite:///{Path(engine.root) / 'idlewatch.db'}",
        "sweep_interval": sweep_s,
        "idle_timeout": idle_s,
        "stop_timeout": 2,
    }
    if port is not None:
        overrides["port"] = port
    return overrides


def check_port_free(host: str, port: int) -> None:
    """Fail at once, before the engine starts (about 8 s), when the port is taken: bind
    every address ``host`` stands for (IPv4 or IPv6, as ``serve`` will) and let go."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _name, address in addresses:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
    except OSError as exc:
        raise WatcherError(
            f"cannot listen on {host}:{port}: {exc.strerror} "
            "(set IDLEWATCH_PORT or --port to a free port)"
        ) from None


def ready_message(engine: DemoEngine, url: str, idle_s: float) -> str:
    """What the demo prints once the dashboard answers."""
    return (
        f"\nidlewatch demo: open {url}\n\n"
        "  demo-service (2 replicas), demo-container and demo-healthcheck go idle "
        f"after {idle_s:g}s, {idle_s + 15:g}s and {idle_s + 30:g}s.\n"
        "  Activity keeps them up, e.g.:\n"
        f"    DOCKER_HOST={engine.url} docker exec demo-container echo hi\n"
        "  (the healthcheck's own execs do not count). demo-unmanaged is never touched.\n"
        "  Ctrl-C stops the demo and removes everything.\n"
        f"engine: {engine.root}"
    )
