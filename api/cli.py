"""The ``idlewatch`` command: it parses arguments and calls the composition roots in
:mod:`idlewatch.api.runtime` (the only place that installs signal handlers) or the API.

Exit codes: 0 success, 1 a failed action (API error, API or engine unreachable), 2 bad usage.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import click

# Only what `--help` needs is imported here: the engine client, the database layer, pydantic
# and aiohttp cost over a second to import and are imported by the commands that use them
# (tests/unit/test_first_hour.py checks it).
if TYPE_CHECKING:
    from idlewatch import Settings

    from .client import ApiClient

logger = logging.getLogger("idlewatch")

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
_STATUS_COLOURS = {
    "running": "green",
    "starting": "yellow",
    "restarting": "yellow",
    "paused": "cyan",
    "error": "red",
    "dead": "red",
    "removed": "bright_black",
}


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # "Connected to database ..." at INFO on every start says nothing idlewatch does not
    for name in ("databases", "aiosqlite", "asyncio"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))


def _settings(config: str | None, **overrides: Any) -> Settings:
    from idlewatch import SettingsError, load_settings

    try:
        return load_settings(config, **{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as exc:
        click.echo(f"idlewatch: {exc}", err=True)
        sys.exit(2)


def _fail(message: str) -> None:
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
    settings = _settings(config, **flags)
    if settings.api_token is None and not is_loopback(settings.host):
        click.echo(
            f"idlewatch: refusing to serve the API on {settings.host} without a token: the API "
            "controls Docker (root-equivalent). Set IDLEWATCH_API_TOKEN, or listen on 127.0.0.1.",
            err=True,
        )
        sys.exit(2)
    _setup_logging(settings.log_level)
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
    settings = _settings(config, **flags)
    _setup_logging(settings.log_level)
    from idlewatch import WatcherError

    from .runtime import run_node

    try:
        asyncio.run(run_node(settings))
    except WatcherError as exc:
        logger.error("idlewatch node stopped: %s", exc)
        sys.exit(1)


# ----------------------------------------------------------------------- API commands
def _api_options(fn: F) -> F:
    fn = click.option("--token", default=None, help="API token (default: the api_token setting).")(
        fn
    )
    fn = click.option(
        "--url", default=None, help="API address (default: http://<host>:<port> from the settings)."
    )(fn)
    fn = CONFIG_OPTION(fn)
    return fn


def _client(config: str | None, url: str | None, token: str | None) -> ApiClient:
    from .client import ApiClient

    s = _settings(config)
    host = "127.0.0.1" if s.host in ("0.0.0.0", "::", "") else s.host
    base = url or f"http://{host}:{s.port}"
    tok = token if token is not None else (s.api_token.get_secret_value() if s.api_token else None)
    return ApiClient(base, tok)


def _run(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    from .client import ApiCallError

    try:
        return asyncio.run(make())
    except ApiCallError as exc:
        _fail(str(exc))
        raise  # unreachable: _fail exits


def _ago(iso: str, now: datetime) -> str:
    then = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return _human((now - then).total_seconds()) + " ago"


def _human(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _idle_in(agent: dict[str, Any], now: datetime) -> str:
    """When the sweep would act, as the dashboard shows it: never, not awake, in use (an
    open session), kept (a keep-alive), or the time left (``due`` once it passed)."""
    if agent["idle_timeout"] is None:
        return "never"
    if agent["status"] not in ("running", "starting", "restarting"):
        return "-"
    if agent.get("sessions"):
        return f"in use ({agent['sessions']})"
    keep_until = agent.get("keep_until")
    if keep_until:
        kept_s = (datetime.fromisoformat(keep_until.replace("Z", "+00:00")) - now).total_seconds()
        if kept_s > 0:
            return "kept " + _human(kept_s)
    left = agent["idle_timeout"] - agent["idle_for"]
    return "due" if left <= 0 else _human(left)


def _table(agents: list[dict[str, Any]]) -> None:
    now = datetime.now(UTC)
    header = ["NAME", "KIND", "STATUS", "REPLICAS", "LAST ACTIVITY", "IDLE IN"]
    rows = [
        [
            a["name"],
            a["kind"],
            a["status"],
            f"{a['running']}/{a['replicas']}",
            _ago(a["last_activity"], now),
            _idle_in(a, now),
        ]
        for a in agents
    ]
    tty = sys.stdout.isatty()
    if not tty:
        for row in [header, *rows]:
            click.echo("\t".join(row))
        return
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    click.echo(
        click.style("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), bold=True)
    )
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=True)]
        cells[2] = click.style(cells[2], fg=_STATUS_COLOURS.get(row[2]))
        click.echo("  ".join(cells))


def _show(agent: dict[str, Any], verb: str) -> None:
    click.echo(
        f"{agent['name']}: {verb} (status {agent['status']}, "
        f"{agent['running']}/{agent['replicas']} running)"
    )


@main.command()
@click.option("--status", default=None, help="Only agents with this status.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_api_options
def agents(
    status: str | None, as_json: bool, config: str | None, url: str | None, token: str | None
) -> None:
    """List the tracked agents (from the running API)."""

    async def go() -> tuple[Any, tuple[bool, list[str], dict[str, Any]]]:
        async with _client(config, url, token) as c:
            params = {"status": status} if status else None
            return await c.call("GET", "/api/agents", params=params), await c.readiness()

    found, (ready, reasons, checks) = _run(go)
    if as_json:
        click.echo(json.dumps(found, indent=2))
    else:
        _table(found)
    if not ready:
        # the list is what idlewatch knew last: without the engine it may be stale or empty
        click.echo(f"idlewatch: not ready: {'; '.join(reasons)}", err=True)
        if not checks.get("engine_reachable", True):
            click.echo("idlewatch: the list above may be stale or incomplete", err=True)
            sys.exit(1)


def _lifecycle(done: str, path: str, help_text: str) -> Callable[..., None]:
    @_api_options
    @click.argument("name")
    def command(name: str, config: str | None, url: str | None, token: str | None) -> None:
        async def go() -> Any:
            async with _client(config, url, token) as c:
                return await c.call("POST", f"/api/agents/{name}/{path}")

        _show(_run(go), done)

    command.__doc__ = help_text
    return command


main.command("stop")(
    _lifecycle("stopped", "stop", "Stop a container or scale a service to 0 (through the API).")
)
main.command("restart")(
    _lifecycle("restarted", "restart", "Restart an agent (through the running API).")
)


@main.command()
@click.argument("name")
@click.option(
    "--for",
    "keep_for",
    default=None,
    help="Keep it awake this long from now, e.g. 30m (at most the max_keep_for setting).",
)
@_api_options
def touch(
    name: str, keep_for: str | None, config: str | None, url: str | None, token: str | None
) -> None:
    """Record activity now (through the running API); --for keeps the agent awake."""
    if keep_for is not None:
        from idlewatch.durations import DurationError, parse_duration_s

        try:
            parse_duration_s(keep_for)
        except DurationError as exc:
            raise click.BadParameter(str(exc), param_hint="'--for'") from None

    async def go() -> Any:
        async with _client(config, url, token) as c:
            body = {"keep_for": keep_for} if keep_for is not None else None
            return await c.call("POST", f"/api/agents/{name}/activity", body)

    agent = _run(go)
    until = agent.get("keep_until")
    _show(agent, f"touched, kept awake until {until}" if until else "touched")


@main.command()
@click.argument("name")
@click.option(
    "--replicas",
    type=click.IntRange(min=1),
    default=None,
    help="For a service: how many (default: the remembered count).",
)
@click.option("--wait", is_flag=True, help="Show progress until the agent runs.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds to wait with --wait.",
)
@_api_options
def start(
    name: str,
    replicas: int | None,
    wait: bool,
    timeout: float,
    config: str | None,
    url: str | None,
    token: str | None,
) -> None:
    """Start an agent (through the running API)."""

    async def go() -> dict[str, Any]:
        async with _client(config, url, token) as c:
            body = {"replicas": replicas} if replicas is not None else None
            if not wait:
                result: dict[str, Any] = await c.call("POST", f"/api/agents/{name}/start", body)
                return result
            return await _start_and_follow(c, name, body, timeout)

    _show(_run(go), "started")


async def _start_and_follow(c: ApiClient, name: str, body: Any, timeout_s: float) -> dict[str, Any]:
    from idlewatch.rules import runs_fully

    from .client import ApiCallError

    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    connected = asyncio.Event()

    async def follow() -> None:
        try:
            async for change in c.changes(name, connected):
                queue.put_nowait(change["agent"])
        finally:
            queue.put_nowait(None)

    follower = asyncio.create_task(follow())
    try:
        async with asyncio.timeout(timeout_s):
            await connected.wait()  # subscribed before starting: no change is missed
            agent: dict[str, Any] = await c.call("POST", f"/api/agents/{name}/start", body)
            _progress(agent)
            while not runs_fully(agent["status"], agent["running"], agent["replicas"]):
                nxt = await queue.get()
                if nxt is None:
                    follower.result()  # raises what ended the feed
                    raise ApiCallError(0, "feed", "the change feed closed")
                agent = nxt
                _progress(agent)
    except TimeoutError:
        raise ApiCallError(504, "timeout", f"{name} did not run within {timeout_s:g}s") from None
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError, ApiCallError):
            await follower
    return agent


def _progress(agent: dict[str, Any]) -> None:
    click.echo(
        f"{agent['name']}: {agent['status']} ({agent['running']}/{agent['replicas']} running)"
    )


@main.command()
@click.argument("name")
@click.argument("replicas", type=click.IntRange(min=0))
@_api_options
def scale(name: str, replicas: int, config: str | None, url: str | None, token: str | None) -> None:
    """Set a service's replicas (a container: 0 or 1), through the running API."""

    async def go() -> Any:
        async with _client(config, url, token) as c:
            return await c.call("POST", f"/api/agents/{name}/scale", {"replicas": replicas})

    _show(_run(go), f"scaled to {replicas}")


@main.command()
@click.option("--agent", default=None, help="Only this agent's actions.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_api_options
def audit(
    agent: str | None,
    limit: int,
    as_json: bool,
    config: str | None,
    url: str | None,
    token: str | None,
) -> None:
    """Recent actions, newest first."""

    async def go() -> Any:
        params = {"limit": str(limit), **({"agent": agent} if agent else {})}
        async with _client(config, url, token) as c:
            return await c.call("GET", "/api/audit", params=params)

    entries = _run(go)
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    for e in entries:
        flag = " (dry-run)" if e["dry_run"] else ""
        click.echo(f"{e['at']}\t{e['agent']}\t{e['action']}{flag}\t{e['actor']}\t{e['reason']}")


# ----------------------------------------------------------------------------- check
@main.command()
@CONFIG_OPTION
def check(config: str | None) -> None:
    """Validate the settings, reach the engine and the database, list what would be managed."""
    settings = _settings(config)
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
        run_demo(idle_s, sweep_s, port, lambda **kw: _settings(None, **kw), click.echo)
    except EngineSetupError as exc:
        _fail(str(exc))
    except WatcherError as exc:
        _fail(exc.message)


if __name__ == "__main__":  # pragma: no cover
    main()
