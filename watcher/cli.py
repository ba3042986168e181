"""The ``idlewatch`` command. The only place that installs signal handlers or runs a loop."""

from __future__ import annotations

import asyncio
import ipaddress
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
@click.option("--host", default=None, help="Address the HTTP API listens on.")
@click.option("--port", default=None, type=int, help="Port of the HTTP API.")
def serve(config: str | None, **flags: Any) -> None:
    """Track managed agents, stop idle ones and serve the API, until SIGINT/SIGTERM."""
    overrides = {k: v for k, v in flags.items() if v is not None}
    try:
        settings = load_settings(config, **overrides)
    except SettingsError as exc:
        click.echo(f"idlewatch: {exc}", err=True)
        sys.exit(2)
    if settings.api_token is None and not is_loopback(settings.host):
        click.echo(
            f"idlewatch: refusing to serve the API on {settings.host} without a token: the API "
            "controls Docker (root-equivalent). Set IDLEWATCH_API_TOKEN, or listen on 127.0.0.1.",
            err=True,
        )
        sys.exit(2)
    _setup_logging(settings.log_level)
    try:
        asyncio.run(_serve(settings))
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


async def _serve(settings: Settings) -> None:
    from aiohttp import web

    from api import create_app

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Watcher(settings) as w:
        runner = web.AppRunner(create_app(w, settings), handle_signals=False, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, settings.host, settings.port, shutdown_timeout=5)
            try:
                await site.start()
            except OSError as exc:
                raise WatcherError(
                    f"cannot listen on {settings.host}:{settings.port}: {exc.strerror} "
                    "(set IDLEWATCH_PORT or --port)"
                ) from exc
            logger.info("API listening on http://%s:%d", settings.host, settings.port)
            await stop.wait()
            logger.info("shutting down")
        finally:
            await runner.cleanup()


if __name__ == "__main__":  # pragma: no cover
    main()
