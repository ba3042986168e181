"""The ``idlewatch`` commands that talk to a running ``serve`` through its API: agents,
start, stop, restart, touch, scale and audit (registered on the group by cli.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from .cli_base import api_options, client, run

if TYPE_CHECKING:
    from .client import ApiClient

_STATUS_COLOURS = {
    "running": "green",
    "starting": "yellow",
    "restarting": "yellow",
    "paused": "cyan",
    "error": "red",
    "dead": "red",
    "removed": "bright_black",
}


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


@click.command()
@click.option("--status", default=None, help="Only agents with this status.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@api_options
def agents(
    status: str | None, as_json: bool, config: str | None, url: str | None, token: str | None
) -> None:
    """List the tracked agents (from the running API)."""

    async def go() -> tuple[Any, tuple[bool, list[str], dict[str, Any]]]:
        async with client(config, url, token) as c:
            params = {"status": status} if status else None
            return await c.call("GET", "/api/agents", params=params), await c.readiness()

    found, (ready, reasons, checks) = run(go)
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
    @api_options
    @click.argument("name")
    def command(name: str, config: str | None, url: str | None, token: str | None) -> None:
        async def go() -> Any:
            async with client(config, url, token) as c:
                return await c.call("POST", f"/api/agents/{name}/{path}")

        _show(run(go), done)

    command.__doc__ = help_text
    return command


stop = click.command("stop")(
    _lifecycle("stopped", "stop", "Stop a container or scale a service to 0 (through the API).")
)
restart = click.command("restart")(
    _lifecycle("restarted", "restart", "Restart an agent (through the running API).")
)


@click.command()
@click.argument("name")
@click.option(
    "--for",
    "keep_for",
    default=None,
    help="Keep it awake this long from now, e.g. 30m (at most the max_keep_for setting).",
)
@api_options
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
        async with client(config, url, token) as c:
            body = {"keep_for": keep_for} if keep_for is not None else None
            return await c.call("POST", f"/api/agents/{name}/activity", body)

    agent = run(go)
    until = agent.get("keep_until")
    _show(agent, f"touched, kept awake until {until}" if until else "touched")


@click.command()
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
@api_options
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
        async with client(config, url, token) as c:
            body = {"replicas": replicas} if replicas is not None else None
            if not wait:
                result: dict[str, Any] = await c.call("POST", f"/api/agents/{name}/start", body)
                return result
            return await _start_and_follow(c, name, body, timeout)

    _show(run(go), "started")


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


@click.command()
@click.argument("name")
@click.argument("replicas", type=click.IntRange(min=0))
@api_options
def scale(name: str, replicas: int, config: str | None, url: str | None, token: str | None) -> None:
    """Set a service's replicas (a container: 0 or 1), through the running API."""

    async def go() -> Any:
        async with client(config, url, token) as c:
            return await c.call("POST", f"/api/agents/{name}/scale", {"replicas": replicas})

    _show(run(go), f"scaled to {replicas}")


@click.command()
@click.option("--agent", default=None, help="Only this agent's actions.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@api_options
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
        async with client(config, url, token) as c:
            return await c.call("GET", "/api/audit", params=params)

    entries = run(go)
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    for e in entries:
        flag = " (dry-run)" if e["dry_run"] else ""
        click.echo(f"{e['at']}\t{e['agent']}\t{e['action']}{flag}\t{e['actor']}\t{e['reason']}")


# ----------------------------------------------------------------------------- check

#: every command here, for the group
COMMANDS = (agents, start, stop, restart, touch, scale, audit)
