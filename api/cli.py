"""The ``idlewatch`` command: it parses arguments and calls the composition roots in
:mod:`idlewatch.api.runtime` (the only place that installs signal handlers) or the API.

Exit codes: 0 success, 1 a failed action (API error, API or engine unreachable), 2 bad usage.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import sys
from typing import Any

import click

from .cli_agents import COMMANDS
from .cli_base import CONFIG_OPTION, fail, settings_of, setup_logging
from .cli_view import COMMANDS as VIEW_COMMANDS

# Only what `--help` needs is imported here (cli_base.py says why; tests check it).
logger = logging.getLogger("idlewatch")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """idlewatch: scale idle Docker containers and Swarm services to zero, event-driven."""


# ----------------------------------------------------------------------------- serve
@main.command()
@CONFIG_OPTION
@click.option("--docker-url", default=None, help="Docker engine address (unix:// or tcp://).")
@click.option(
    "--database-url", default=None, help="sqlite+aiosqlite:/// or postgresql+asyncpg:// URL."
)
@click.option("--idle-timeout", default=None, help="Default idle timeout, e.g. 15m (never: off).")
@click.option("--sweep-interval", default=None, help="How often to look for idle agents, e.g. 60s.")
@click.option(
    "--dry-run/--no-dry-run", default=None, help="Log and audit idle stops without acting."
)
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR.")
@click.option("--host", default=None, help="Address the HTTP API listens on.")
@click.option("--port", default=None, type=int, help="Port of the HTTP API.")
def serve(config: str | None, **flags: Any) -> None:
    """Track managed agents, stop idle ones and serve the API, until SIGINT/SIGTERM."""
    settings = settings_of(config, **flags)
    if not settings.guarded() and not is_loopback(settings.host):
        click.echo(
            f"idlewatch: refusing to serve the API on {settings.host} without a token: the API "
            "controls Docker (root-equivalent). Set IDLEWATCH_API_TOKEN, or listen on 127.0.0.1.",
            err=True,
        )
        sys.exit(2)
    setup_logging(settings.log_level)
    if settings.wake_open and not is_loopback(settings.host):
        logger.warning(
            "wake_open is on and the API listens on %s: anyone who reaches it can wake any "
            "managed agent through /api/wake and /api/strategies/* (they can never stop "
            "one); set wake_token and turn wake_open off unless only your proxy reaches it",
            settings.host,
        )
    from idlewatch import WatcherError

    from .runtime import run_server

    try:
        asyncio.run(run_server(settings))
    except WatcherError as exc:
        logger.error("idlewatch stopped: %s", exc)
        sys.exit(1)


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ------------------------------------------------------------------------------ node
@main.command()
@CONFIG_OPTION
@click.option("--docker-url", default=None, help="This node's Docker engine address.")
@click.option("--database-url", default=None, help="The shared store (postgresql+asyncpg:// URL).")
@click.option("--node-id", default=None, help="Its name in the reports (default: hostname).")
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR.")
def node(config: str | None, **flags: Any) -> None:
    """Report this node's task-container activity to the shared store, until SIGINT/SIGTERM.

    Read-only: watches the engine's container events for tasks of managed services and
    writes activity reports; it never starts, stops, scales or removes anything.
    """
    settings = settings_of(config, **flags)
    setup_logging(settings.log_level)
    from idlewatch import WatcherError

    from .runtime import run_node

    try:
        asyncio.run(run_node(settings))
    except WatcherError as exc:
        logger.error("idlewatch node stopped: %s", exc)
        sys.exit(1)


# ----------------------------------------------------------------------- API commands
@main.command()
@CONFIG_OPTION
def check(config: str | None) -> None:
    """Validate the settings, reach the engine and the database, list what would be managed."""
    settings = settings_of(config)
    click.echo("settings: ok")
    from .runtime import check as check_all

    ok = asyncio.run(check_all(settings, click.echo))
    sys.exit(0 if ok else 1)


# ------------------------------------------------------------------------------ demo
@main.command()
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Port of the dashboard (default: the port setting, IDLEWATCH_PORT, else 8080).",
)
@click.option(
    "--idle",
    "idle",
    default="40s",
    show_default=True,
    help="Idle timeout of the first sample agent.",
)
@click.option("--sweep-interval", default="5s", show_default=True)
def demo(port: int | None, idle: str, sweep_interval: str) -> None:
    """Run a private Docker engine with sample agents and serve the dashboard (Ctrl-C ends)."""
    from idlewatch import WatcherError
    from idlewatch.durations import DurationError, parse_duration_s

    from .demo_engine import EngineSetupError
    from .runtime import run_demo

    try:
        idle_s, sweep_s = parse_duration_s(idle), parse_duration_s(sweep_interval)
    except DurationError as exc:
        raise click.BadParameter(str(exc)) from None
    try:
        run_demo(idle_s, sweep_s, port, lambda **kw: settings_of(None, **kw), click.echo)
    except EngineSetupError as exc:
        fail(str(exc))
    except WatcherError as exc:
        fail(exc.message)


for command in (*COMMANDS, *VIEW_COMMANDS):
    main.add_command(command)


if __name__ == "__main__":  # pragma: no cover
    main()
