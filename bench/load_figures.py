"""Figure 7: 1,000 concurrent API requests and 200 websocket clients while events flow.

A real `idlewatch serve` (its own process, file SQLite, a bearer token) tracks a fleet on the
fake engine (its own process), which emits events live at a steady rate for the whole run.
The websocket clients (bench/ws_clients.py, their own process) connect first and count every
change they receive. This process then fires the API requests in waves, each wave all at once
on one aiohttp session with no connection limit: a mix of list, get, touch and readiness.
Errors are any non-2xx answer or exception; the figures are throughput, latency percentiles,
websocket deliveries and drops, and the events the watcher applied meanwhile (from /metrics).
tests/faults/test_load.py runs the same code at a smaller scale and checks the outcome only.
"""

from __future__ import annotations

import asyncio
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from tests.private_engine import free_port

from . import ws_clients
from .common import percentile, tcp_counter
from .engine_figures import serve_process, wait_ready
from .fake_engine import FakeEngineProcess

AGENTS = 500
RATE = 200  # events/s emitted by the fake engine, before, during and after the load
CLIENTS = 200
REQUESTS = 1000  # per wave, all in flight at once
WAVES = 5
TOKEN = "bench-load-token"
#: the request mix of a wave: (method, route, share)
MIX = (
    ("GET", "/api/agents", 0.10),
    ("GET", "/api/agents/{name}", 0.45),
    ("POST", "/api/agents/{name}/activity", 0.35),
    ("GET", "/readyz", 0.10),
)


@dataclass
class Load:
    """Every request's latency (by wave and by route), every wave's wall time, every error."""

    waves_ms: list[list[float]] = field(default_factory=list)
    by_route_ms: dict[str, list[float]] = field(default_factory=dict)
    wave_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    error_bodies: dict[str, str] = field(default_factory=dict)  # one sample per kind


def plan(n: int, names: list[str], rng: random.Random) -> list[tuple[str, str, str]]:
    """``n`` requests in the proportions of :data:`MIX`, shuffled: (method, route, path)."""
    out: list[tuple[str, str, str]] = []
    for method, route, share in MIX:
        for _ in range(round(n * share)):
            out.append((method, route, route.format(name=rng.choice(names))))
    rng.shuffle(out)
    return out[:n]


async def _one(session: aiohttp.ClientSession, req: tuple[str, str, str], load: Load) -> None:
    method, route, path = req
    t0 = time.perf_counter()
    try:
        async with session.request(method, path) as resp:
            body = await resp.read()
            if not 200 <= resp.status < 300:
                kind = f"{method} {route}: {resp.status}"
                load.errors[kind] += 1
                load.error_bodies.setdefault(kind, body[:300].decode(errors="replace"))
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        load.errors[f"{method} {route}: {type(exc).__name__}: {exc}"] += 1
    ms = (time.perf_counter() - t0) * 1000
    load.waves_ms[-1].append(ms)
    load.by_route_ms.setdefault(f"{method} {route}", []).append(ms)


async def wave(
    session: aiohttp.ClientSession, reqs: list[tuple[str, str, str]], load: Load
) -> None:
    """All of ``reqs`` in flight at once (``session`` has the base URL and the token)."""
    load.waves_ms.append([])
    t0 = time.perf_counter()
    await asyncio.gather(*(_one(session, r, load) for r in reqs))
    load.wave_s.append(time.perf_counter() - t0)


async def events_applied(session: aiohttp.ClientSession) -> float:
    """The watcher's ``idlewatch_events_applied_total`` from /metrics."""
    async with session.get("/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith("idlewatch_events_applied_total "):
            return float(line.split()[1])
    raise RuntimeError("no idlewatch_events_applied_total in /metrics")


async def _fleet(session: aiohttp.ClientSession, n: int, timeout_s: float) -> list[str]:
    """Wait until serve tracks the whole fleet; its agents' names."""
    deadline = time.monotonic() + timeout_s
    while True:
        async with session.get("/api/agents") as resp:
            agents = await resp.json() if resp.status == 200 else []
        if len(agents) >= n:
            return [a["name"] for a in agents]
        if time.monotonic() > deadline:
            raise TimeoutError(f"serve tracks {len(agents)} agents, not {n}")
        await asyncio.sleep(0.1)


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def run_bare(
    payloads: Path,
    agents: int = AGENTS,
    rate: float = RATE,
    clients: int = CLIENTS,
    requests: int = REQUESTS,
    waves: int = WAVES,
) -> dict[str, Any]:
    """The same scenario against the bare server (bench/load_bare.py) serving ``payloads``
    (captured from ``serve`` by :func:`run` in the same run)."""
    _raise_nofile()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        log = Path(tmp) / "bare.log"
        proc = _spawn_bare(port, payloads, rate, log)
        syn0 = tcp_counter("TCPSynRetrans")
        try:
            await wait_ready(port, proc=proc)
            result = await _drive(f"http://127.0.0.1:{port}", agents, clients, requests, waves, log)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        result["syn_retransmits"] = tcp_counter("TCPSynRetrans") - syn0
        result["serve_log"] = _distinct(log.read_bytes()[: result.pop("log_end")].decode())
    return result


async def run(
    agents: int = AGENTS,
    rate: float = RATE,
    clients: int = CLIENTS,
    requests: int = REQUESTS,
    waves: int = WAVES,
    capture: Path | None = None,
) -> dict[str, Any]:
    """The whole scenario once; the figures as a dict (see :func:`summary`). With
    ``capture``, the payloads ``serve`` answered are written there for :func:`run_bare`."""
    _raise_nofile()
    with tempfile.TemporaryDirectory() as tmp:
        engine = FakeEngineProcess(Path(tmp) / "fake.sock", 0, agents, rate)
        await engine.start()
        proc, port = serve_process(engine.url, tmp, api_token=TOKEN)
        log = Path(tmp) / "serve.log"
        syn0 = tcp_counter("TCPSynRetrans")
        try:
            await wait_ready(port, proc=proc)
            result = await _drive(
                f"http://127.0.0.1:{port}", agents, clients, requests, waves, log, capture
            )
        except BaseException:
            print(f"serve's log:\n{log.read_text()[-4000:]}", flush=True)
            raise
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            await engine.stop()
        result["syn_retransmits"] = tcp_counter("TCPSynRetrans") - syn0
        # up to the end of the load: the clients' own teardown may log a lost connection
        result["serve_log"] = _distinct(log.read_bytes()[: result.pop("log_end")].decode())
    return result


def _size(path: Path) -> int:
    return path.stat().st_size


def _distinct(log: str) -> list[str]:
    """serve's distinct warning and error lines (without their times), at most ten."""
    seen: dict[str, None] = {}
    for line in log.splitlines():
        if " WARNING " in line or " ERROR " in line:
            seen[line.split(" ", 2)[-1][:200]] = None
    return list(seen)[:10]


def _spawn_bare(port: int, payloads: Path, rate: float, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as err:  # the child keeps its own copy
        return subprocess.Popen(
            [sys.executable, "-m", "bench.load_bare", str(port), str(payloads), str(rate)],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


async def _capture(session: aiohttp.ClientSession, path: Path) -> None:
    """What serve answers for the listing and readiness, for the bare server to replay."""
    async with session.get("/api/agents") as resp:
        listing = await resp.json()
    async with session.get("/readyz") as resp:
        ready = await resp.json()
    await asyncio.to_thread(path.write_bytes, orjson.dumps({"agents": listing, "ready": ready}))


async def _drive(
    base: str,
    agents: int,
    clients: int,
    requests: int,
    waves: int,
    log: Path,
    capture: Path | None = None,
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    rng = random.Random(3)
    load = Load()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(base, connector=connector, headers=headers) as session:
        names = await _fleet(session, agents, 60)
        if capture is not None:
            await _capture(session, capture)
        ws_url = f"{base.replace('http', 'ws')}/api/ws"  # the token in a header, not the URL
        feed = await ws_clients.spawn(ws_url, clients, ws_clients.UNTIL_STOPPED, 600, TOKEN)
        try:
            applied0, t0 = await events_applied(session), time.monotonic()
            for _ in range(waves):
                await wave(session, plan(requests, names, rng), load)
            applied1, t1 = await events_applied(session), time.monotonic()
            log_end = _size(log)  # serve's stderr is line-buffered
        finally:
            ws = await ws_clients.results(feed, stop=True)
    result = _figures(load, ws, (applied1 - applied0) / (t1 - t0), clients, requests * waves)
    result["log_end"] = log_end
    return result


def _figures(
    load: Load, ws: dict[str, Any], applied_per_s: float, clients: int, total: int
) -> dict[str, Any]:
    lat = sorted(ms for w in load.waves_ms for ms in w)
    return {
        "requests": total,
        "completed": len(lat),
        "errors": sum(load.errors.values()),
        "error_kinds": dict(load.errors.most_common(5)),
        "error_bodies": load.error_bodies,
        "requests_per_s": total / sum(load.wave_s),
        "wave_requests_per_s": [
            round(len(w) / s) for w, s in zip(load.waves_ms, load.wave_s, strict=True)
        ],
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
        "max_ms": lat[-1],
        "wave_p99_ms": [round(percentile(sorted(w), 99), 1) for w in load.waves_ms],
        "route_p99_ms": {
            k: round(percentile(sorted(v), 99), 1) for k, v in load.by_route_ms.items()
        },
        "events_applied_per_s": applied_per_s,
        "ws_clients": clients,
        "ws": ws,
    }


def summary(r: dict[str, Any]) -> str:
    """The figures as printed lines."""
    ws = r["ws"]
    per_wave = r["requests"] // len(r["wave_requests_per_s"])
    return "\n".join(
        [
            f"API: {r['requests']} requests, waves of {per_wave} all in flight at once: "
            f"{r['requests_per_s']:.0f} requests/s, p50 {r['p50_ms']:.1f} ms, "
            f"p99 {r['p99_ms']:.1f} ms, max {r['max_ms']:.1f} ms",
            f"by wave (the first opens the connections): requests/s {r['wave_requests_per_s']},"
            f" p99 ms {r['wave_p99_ms']}",
            f"API p99 by route (ms): {r['route_p99_ms']}",
            f"errors: {r['errors']} {r['error_kinds'] or ''} {r['error_bodies'] or ''}",
            f"websocket: {ws['connected']}/{r['ws_clients']} connected, "
            f"{ws['connect_errors']} failed to connect, {ws['disconnected']} disconnected; "
            f"{ws['delivered']} changes delivered ({ws['min_per_client']}-{ws['max_per_client']}"
            f" per client), lag p50 {ws['p50_ms']:.1f} ms, p99 {ws['p99_ms']:.1f} ms",
            f"events applied during the load: {r['events_applied_per_s']:.0f}/s",
            f"SYN retransmissions on this machine meanwhile: {r['syn_retransmits']}; "
            f"serve's warnings and errors: {r['serve_log'] or 'none'}",
        ]
    )


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.ERROR)
    print(summary(asyncio.run(run())))
