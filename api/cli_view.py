"""``idlewatch why`` and ``idlewatch stats``: the operator's view in a terminal, through the
API of a running ``serve`` (registered on the group by cli.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click

from .cli_base import api_options, client, run

#: how many timeline entries ``why`` shows
WHY_ENTRIES = 8


def _when(iso: str | None, now: datetime) -> str:
    """An API time in plain words, relative to now: ``in 4m10s``, ``3m02s ago``."""
    if iso is None:
        return "-"
    then = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    seconds = (then - now).total_seconds()
    words = _span(abs(seconds))
    stamp = then.strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{stamp} (in {words})" if seconds >= 0 else f"{stamp} ({words} ago)"


def _span(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def _entry(e: dict[str, Any]) -> str:
    """One timeline entry in a line."""
    kind = e["kind"]
    if kind == "use":
        what = f"used via {e['source']} x{e['count']}"
    elif kind == "wake":
        phases = ", ".join(f"{k} {v:g} ms" for k, v in e.get("phases", {}).items())
        what = f"woken from {e.get('from')} ({phases})" if e.get("ready") else "wake not ready"
    elif kind == "status":
        what = f"became {e.get('status')}" + (" (idle action)" if e["actor"] == "sweep" else "")
    else:
        what = f"{e.get('action', kind)} by {e['actor']}: {e['reason']}"
        if kind == "skip":
            what = f"idle action skipped: {e['reason']}"
    return f"  {e['at']}  {kind:<11} {what}"


@click.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON (agent and timeline).")
@api_options
def why(name: str, as_json: bool, config: str | None, url: str | None, token: str | None) -> None:
    """Why NAME is awake (or asleep), when the sweep will act, and what happened lately."""

    async def go() -> tuple[Any, Any]:
        async with client(config, url, token) as c:
            agent = await c.call("GET", f"/api/agents/{name}")
            page = await c.call(
                "GET", f"/api/agents/{name}/timeline", params={"limit": str(WHY_ENTRIES)}
            )
            return agent, page

    agent, page = run(go)
    if as_json:
        click.echo(json.dumps({"agent": agent, "timeline": page["entries"]}, indent=2))
        return
    now = datetime.now(UTC)
    click.echo(f"{agent['name']} is {agent['status']} ({agent['running']}/{agent['replicas']})")
    holds = agent.get("holds", [])
    if holds:
        click.echo("held awake by:")
        for h in holds:
            until = f", until {_when(h['until'], now)}" if h.get("until") else ""
            click.echo(f"  {h['kind']}: {h['detail']}{until}")
    else:
        click.echo("held awake by: nothing")
    nxt = agent["next_action"]
    if nxt["action"] == "none":
        click.echo(f"next action: none ({nxt['reason']})")
    else:
        click.echo(f"next action: {nxt['action']} at {_when(nxt['at'], now)}: {nxt['reason']}")
    entries = page["entries"]
    click.echo("recently:" if entries else "recently: nothing recorded")
    for e in entries:
        click.echo(_entry(e))


@click.command()
@click.option(
    "--window",
    type=click.Choice(["1h", "24h", "7d", "30d"]),
    default="24h",
    show_default=True,
    help="How far back the figures go.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the JSON.")
@api_options
def stats(
    window: str, as_json: bool, config: str | None, url: str | None, token: str | None
) -> None:
    """Agents by status, agent-hours awake and saved, what wakes cost, over a window."""

    async def go() -> Any:
        async with client(config, url, token) as c:
            return await c.call("GET", "/api/stats", params={"window": window})

    s = run(go)
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    counts = ", ".join(f"{n} {status}" for status, n in s["agents"].items() if n)
    cap = f" of max_awake {s['max_awake']}" if s["max_awake"] is not None else ""
    click.echo(f"agents now: {counts or 'none'}; awake {s['awake_now']}{cap}")
    click.echo(f"last {s['window']}:")
    click.echo(f"  awake agent-hours  {s['awake_agent_hours']:.2f}")
    click.echo(f"  paused agent-hours {s['paused_agent_hours']:.2f}")
    click.echo(f"  saved agent-hours  {s['saved_agent_hours']:.2f}")
    w = s["wakes"]
    if w["count"]:
        t, e = w["total_ms"], w["engine_ms"]
        click.echo(
            f"  wakes {w['count']}: total p50 {_ms(t['p50'])} p95 {_ms(t['p95'])}; "
            f"engine p50 {_ms(e['p50'])} p95 {_ms(e['p95'])}"
        )
    else:
        click.echo("  wakes 0")
    idle = ", ".join(f"{k} {v}" for k, v in s["idle_actions"].items()) or "none"
    skips = ", ".join(f"{k} {v}" for k, v in s["skips"].items()) or "none"
    click.echo(f"  idle actions: {idle}; skipped: {skips}")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:g} ms"


COMMANDS = (why, stats)
