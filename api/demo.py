"""``idlewatch demo``: a private engine, a few sample agents, and the dashboard, in one command."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from watcher import Settings, WatcherError

from .private_engine import TEST_IMAGE, PrivateEngine, ensure_installed

logger = logging.getLogger(__name__)

SLEEPER = ["sh", "-c", 'trap "exit 0" TERM; while :; do sleep 1; done']


def create_samples(engine: PrivateEngine, idle_s: float) -> None:
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
        TEST_IMAGE,
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
        TEST_IMAGE,
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
        TEST_IMAGE,
        *SLEEPER,
    )
    engine.cli("run", "-d", "--name", "demo-unmanaged", "--network", "none", TEST_IMAGE, *SLEEPER)


def demo_overrides(
    engine: PrivateEngine, idle_s: float, sweep_s: float, port: int | None
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
    """Fail at once, before the engine starts (about 8 s), when the port is taken."""
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        raise WatcherError(
            f"cannot listen on {host}:{port}: {exc.strerror} "
            "(set IDLEWATCH_PORT or --port to a free port)"
        ) from None


def run_demo(
    idle_s: float, sweep_s: float, port: int | None, settings_of: Callable[..., Settings]
) -> None:
    """Bring everything up, serve until Ctrl-C, tear it all down.

    ``settings_of(**overrides)`` reads the settings (the CLI's, which exits on a bad one).
    """
    from .cli import run_server

    engine = PrivateEngine()  # only a temporary directory until start()
    try:
        settings = settings_of(**demo_overrides(engine, idle_s, sweep_s, port))
        check_port_free(settings.host, settings.port)
        ensure_installed()
        click.echo(f"starting a private Docker engine under {engine.root} ...")
        engine.start()
        engine.build_test_image()
        engine.swarm_init()
        create_samples(engine, idle_s)

        def ready(url: str) -> None:
            click.echo(f"\nidlewatch demo: open {url}\n")
            click.echo(
                "  demo-service (2 replicas), demo-container and demo-healthcheck go idle "
                f"after {idle_s:g}s, {idle_s + 15:g}s and {idle_s + 30:g}s."
            )
            click.echo("  Activity keeps them up, e.g.:")
            click.echo(f"    DOCKER_HOST={engine.url} docker exec demo-container echo hi")
            click.echo(
                "  (the healthcheck's own execs do not count). demo-unmanaged is never "
                "touched.\n  Ctrl-C stops the demo and removes everything.",
            )
            click.echo(f"engine: {engine.root}", err=False)

        logging.basicConfig(
            level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        asyncio.run(run_server(settings, on_ready=ready))
    finally:
        started = engine.proc is not None
        if started:
            click.echo("tearing down the demo engine ...")
        engine.cleanup()
        if started:
            click.echo("demo stopped; nothing left behind")
