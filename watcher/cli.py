"""The ``idlewatch`` command. The only place that installs signal handlers or runs a loop."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Any

import click

from .core import Watcher
from .errors import SettingsError, WatcherError
from .settings import Settings, load_settings

logger = logging.getLogger("idlewatch")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """idlewatch: scale idle Docker containers and Swarm services to zero, event-driven."""


@main.command()
@click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False),
    default=None,
    help="TOML settings file (default: $IDLEWATCH_CONFIG).",
)
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
def serve(config: str | None, **flags: Any) -> None:
    """Track managed agents and stop idle ones until SIGINT/SIGTERM."""
    overrides = {k: v for k, v in flags.items() if v is not None}
    try:
        settings = load_settings(config, **overrides)
    except SettingsError as exc:
        click.echo(f"idlewatch: {exc}", err=True)
        sys.exit(2)
    _setup_logging(settings.log_level)
    try:
        asyncio.run(_serve(settings))
    except WatcherError as exc:
        logger.error("idlewatch stopped: %s", exc)
        sys.exit(1)


async def _serve(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Watcher(settings):
        await stop.wait()
        logger.info("shutting down")


if __name__ == "__main__":  # pragma: no cover
    main()
