"""What every ``idlewatch`` command shares: logging, the settings (a bad one is a usage
error naming it), the failure exit, and the API commands' options and client.

Only what ``--help`` needs is imported at the top: the engine client, the database layer,
pydantic and aiohttp cost over a second to import and are imported when used."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from idlewatch import Settings

    from .client import ApiClient

logger = logging.getLogger("idlewatch")

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # "Connected to database ..." at INFO on every start says nothing idlewatch does not
    for name in ("databases", "aiosqlite", "asyncio"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))


def settings_of(config: str | None, **overrides: Any) -> Settings:
    from idlewatch import SettingsError, load_settings

    try:
        return load_settings(config, **{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as exc:
        click.echo(f"idlewatch: {exc}", err=True)
        sys.exit(2)


def fail(message: str) -> None:
    click.echo(f"idlewatch: {message}", err=True)
    sys.exit(1)


#: the one --config option every command that reads the settings takes
CONFIG_OPTION = click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False),
    default=None,
    help="TOML settings file (default: $IDLEWATCH_CONFIG).",
)


def api_options(fn: F) -> F:
    fn = click.option("--token", default=None, help="API token (default: the api_token setting).")(
        fn
    )
    fn = click.option(
        "--url", default=None, help="API address (default: http://<host>:<port> from the settings)."
    )(fn)
    fn = CONFIG_OPTION(fn)
    return fn


def client(config: str | None, url: str | None, token: str | None) -> ApiClient:
    from .client import ApiClient

    s = settings_of(config)
    host = "127.0.0.1" if s.host in ("0.0.0.0", "::", "") else s.host
    base = url or f"http://{host}:{s.port}"
    tok = token if token is not None else (s.api_token.get_secret_value() if s.api_token else None)
    return ApiClient(base, tok)


def run(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    from .client import ApiCallError

    try:
        return asyncio.run(make())
    except ApiCallError as exc:
        fail(str(exc))
        raise  # unreachable: _fail exits
