"""`make bench`: every figure of the benchmark suite, printed and written to bench/results.json."""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from tests.private_engine import PrivateEngine, ensure_installed

from . import (
    engine_figures,
    ingest,
    load_figures,
    small_figures,
    wake_check,
    wake_figures,
    ws_figures,
)
from .common import machine, stats

RESULTS = Path(__file__).with_name("results.json")


def fig(value: float, unit: str, target: str, note: str, **extra: Any) -> dict[str, Any]:
    """One figure in the results.json shape."""
    return {"value": round(value, 4), "unit": unit, "target": target, "note": note, **extra}


async def collect() -> dict[str, dict[str, Any]]:
    """Run everything once; about five minutes on 2 cores."""
    figures: dict[str, dict[str, Any]] = {}
    t0 = time.monotonic()

    print("ingest (200,000 events, 10,000 agents, 3 runs) ...", flush=True)
    ing = await ingest.run(repeats=3)
    ours = [r["events_per_s"] for r in ing["ours"]]
    ceil = ing["ceilings"]
    ratios = [o / c for o, c in zip(ours, ceil, strict=True)]
    wrong = sum(r["wrong_status"] + r["wrong_in_store"] for r in ing["ours"])
    figures["ingest_events_per_s"] = fig(
        statistics.median(ours),
        "events/s",
        ">= 0.5 x ceiling, every final status right",
        f"median of 3; ratio to the ceiling {statistics.median(ratios):.2f} "
        f"(spread {min(ratios):.2f}-{max(ratios):.2f}); wrong statuses at the end: {wrong}; "
        f"includes {ing['ours'][0]['inspections']} healthcheck inspections",
        spread=stats(ours),
        ratio_to_ceiling=round(statistics.median(ratios), 3),
        wrong_final_status=wrong,
    )
    figures["ingest_ceiling_events_per_s"] = fig(
        statistics.median(ceil),
        "events/s",
        "reference",
        "aiodocker's subscriber with a no-op handler, same stream, same run",
        spread=stats(ceil),
    )

    engine = PrivateEngine()
    try:
        print("starting the private engine ...", flush=True)
        engine.start()
        engine.build_test_image()
        engine.swarm_init()
        print("latency (200 state changes) ...", flush=True)
        lat = await engine_figures.latency(engine, 200)
        figures["latency_p50_ms"] = fig(
            lat["store_p50"],
            "ms",
            "-",
            f"event timeNano -> row committed; to a websocket client p50 {lat['ws_p50']:.2f} ms",
            websocket_p50_ms=round(lat["ws_p50"], 3),
        )
        figures["latency_p99_ms"] = fig(
            max(lat["store_p99"], lat["ws_p99"]),
            "ms",
            "<= 20 ms for both",
            f"row committed p99 {lat['store_p99']:.2f} ms; websocket client p99 "
            f"{lat['ws_p99']:.2f} ms; {lat['n']} changes",
            store_p99_ms=round(lat["store_p99"], 3),
            websocket_p99_ms=round(lat["ws_p99"], 3),
        )
        print("CPU at engine max churn (20 s) ...", flush=True)
        cpu = await engine_figures.cpu_at_max_churn(engine, 20)
        figures["cpu_frac_at_engine_max_churn"] = fig(
            cpu["cpu_frac"],
            "fraction of one core",
            "<= 0.02",
            f"`idlewatch serve` process, engine at {cpu['events_per_s']:.0f} events/s for "
            f"{cpu['seconds']:.0f} s",
        )
        print("polling baseline (100 containers) ...", flush=True)
        poll = await engine_figures.polling_baseline(engine, 100)
        cycle = statistics.median(poll["poll_cycle_ms"])
        ours_staleness_s = lat["store_p50"] / 1000
        figures["poll_staleness_s_vs_events"] = fig(
            poll["poll_staleness_s"],
            "s",
            "idlewatch: milliseconds",
            f"polling every 60 s: mean staleness = 60/2 + one cycle ({cycle:.0f} ms, measured); "
            f"idlewatch: {ours_staleness_s * 1000:.1f} ms (event -> store p50)",
            idlewatch_s=round(ours_staleness_s, 4),
            poll_cycle_ms=stats(poll["poll_cycle_ms"]),
        )
        figures["poll_engine_calls_per_min"] = fig(
            poll["poll_calls_per_min"],
            "calls/min",
            "idlewatch: 0 in steady state",
            f"polling: 1 list + 100 inspects a minute; idlewatch counted over an idle window "
            f"with sweeps: {poll['idlewatch_calls_per_min']:.0f}/min",
            idlewatch_calls_per_min=poll["idlewatch_calls_per_min"],
        )
        print("wake: paused, stopped (30 tries each), service at 0 (20 tries) ...", flush=True)
        figures.update(_wake(await wake_figures.run(engine)))
        print(
            "wake on request: /api/wake under 200 clients vs a bare handler, 3 x 2 runs;"
            " cold through nginx vs a bare start ...",
            flush=True,
        )
        figures.update(_wake_check(await wake_check.checks(engine), await wake_check.cold(engine)))
    finally:
        engine.cleanup()

    print("sweep over 10,000 agents ...", flush=True)
    sw = await small_figures.sweep_10k()
    figures["sweep_ms_10k"] = fig(
        sw["ms"]["median"], "ms", "<= 10 ms", "median of 50 sweeps, none idle", spread=sw["ms"]
    )
    figures["sweep_engine_calls"] = fig(
        sw["engine_calls"], "calls", "0", "engine calls per sweep when nothing is idle"
    )
    print("websocket feed, 1,000 clients (2 x 20 s) ...", flush=True)
    ws = await ws_figures.run()
    o, b = ws["ours"], ws["bare"]
    lost = o["expected_per_client"] * 1000 - o["delivered"]
    figures["ws_p99_ms_1000_clients"] = fig(
        o["p99_ms"],
        "ms",
        "<= 100 ms and <= 1.3 x bare baseline, nothing lost",
        f"ratio to the bare loop {o['p99_ms'] / b['p99_ms']:.2f}; p50 {o['p50_ms']:.1f} ms; "
        f"lost {lost}; clients dropped by the server {o['dropped_by_server']}",
        ratio_to_bare=round(o["p99_ms"] / b["p99_ms"], 3),
        lost=lost,
    )
    figures["ws_delivered_per_s"] = fig(
        o["delivered"] / o["seconds"],
        "messages/s",
        "-",
        f"{o['delivered']} messages in {o['seconds']:.1f} s",
    )
    figures["ws_p99_ms_bare_baseline"] = fig(
        b["p99_ms"],
        "ms",
        "reference",
        f"bare aiohttp broadcast loop, same load, same run; p50 {b['p50_ms']:.1f} ms",
    )
    print("load: 5 waves of 1,000 concurrent API requests, 200 websocket clients ...", flush=True)
    figures.update(await _load())
    print("memory of serve tracking 10,000 agents ...", flush=True)
    figures["rss_mb_10k"] = fig(
        (await small_figures.rss_10k())["rss_mb"],
        "MB",
        "<= 120 MB",
        "VmRSS of `idlewatch serve` after tracking 10,000 agents",
    )
    print(f"done in {time.monotonic() - t0:.0f} s", flush=True)
    return figures


def _wake(wake: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Issue 13's wake figures: ours (start?wait=running over HTTP) against the bare call."""
    bare_call = {
        "paused": "a bare unpause",
        "stopped": "a bare start",
        "service": "a bare scale to 1 until its task's start event",
    }
    out = {}
    for kind, w in wake.items():
        o, b = w["ours"], w["bare"]
        out[f"wake_{kind}_ms"] = fig(
            o["p50"],
            "ms",
            "adds <= 5 ms at p50 and <= 15 ms at p99 to the engine's own time",
            f"start?wait=running p50 {o['p50']:.1f} ms, p99 {o['p99']:.1f} ms; {bare_call[kind]}"
            f" (the engine's own time) p50 {b['p50']:.1f} ms, p99 {b['p99']:.1f} ms; added "
            f"p50 {w['added_p50_ms']:+.1f} ms, p99 {w['added_p99_ms']:+.1f} ms; "
            f"{w['tries']} tries each, alternated",
            ours=o,
            bare=b,
            added_p50_ms=round(w["added_p50_ms"], 2),
            added_p99_ms=round(w["added_p99_ms"], 2),
        )
    return out


def _wake_check(hot: dict[str, Any], cold: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Issue 14's figures: the wake check's hot path and a cold wake through nginx."""
    ours = [r["per_s"] for r in hot["ours"]]
    bare = [r["per_s"] for r in hot["bare"]]
    p99 = [r["p99_ms"] for r in hot["ours"]]
    errors = sum(r["errors"] for r in hot["ours"] + hot["bare"])
    ratios = hot["ratios"]
    return {
        "wake_check_per_s": fig(
            statistics.median(ours),
            "requests/s",
            ">= 0.5 x the bare handler",
            f"GET /api/wake for a running agent, {wake_check.CLIENTS} keep-alive clients, "
            f"{wake_check.SECONDS:g} s a run, {len(ours)} runs alternated with the bare one; "
            f"ratio to the bare handler {statistics.median(ratios):.2f} (spread "
            f"{min(ratios):.2f}-{max(ratios):.2f}); errors {errors}",
            spread=stats(ours),
            ratio_to_bare=round(statistics.median(ratios), 3),
            runs=[round(x, 1) for x in ours],
        ),
        "wake_check_p99_ms": fig(
            statistics.median(p99),
            "ms",
            "-",
            f"median of the runs' p99; bare handler's p99 "
            f"{statistics.median([r['p99_ms'] for r in hot['bare']]):.1f} ms",
            spread=stats(p99),
        ),
        "wake_check_bare_per_s": fig(
            statistics.median(bare),
            "requests/s",
            "reference",
            "a bare aiohttp handler answering 200 with the same header, its own process, "
            "same client, same run",
            spread=stats(bare),
            runs=[round(x, 1) for x in bare],
        ),
        "wake_cold_ms": fig(
            cold["ours"]["median"],
            "ms",
            "-",
            f"a request through nginx (config/nginx-wake.conf) for a stopped container until "
            f"the upstream answers, median of {cold['tries']}; a bare docker start of it, "
            f"same run: {cold['bare']['median']:.0f} ms (the engine's own time)",
            spread=cold["ours"],
            bare=cold["bare"],
        ),
    }


async def _load() -> dict[str, dict[str, Any]]:
    """Figure 7 (bench/load_figures.py): API requests and websocket clients while events flow."""
    ld = await load_figures.run()
    ws = ld["ws"]
    mix = ", ".join(f"{share:.0%} {m} {r}" for m, r, share in load_figures.MIX)
    setting = (
        f"`idlewatch serve` with {load_figures.AGENTS} agents, the engine emitting "
        f"{load_figures.RATE} events/s, {ld['ws_clients']} websocket clients connected"
    )
    return {
        "load_api_requests_per_s": fig(
            ld["requests_per_s"],
            "requests/s",
            "-",
            f"{ld['requests']} requests in waves of {load_figures.REQUESTS}, each all in flight "
            f"at once on one client session ({mix}); {setting}; by wave "
            f"{ld['wave_requests_per_s']} (the first opens the connections)",
            by_wave=ld["wave_requests_per_s"],
        ),
        "load_api_p99_ms": fig(
            ld["p99_ms"],
            "ms",
            "-",
            f"p50 {ld['p50_ms']:.0f} ms, max {ld['max_ms']:.0f} ms; p99 by wave "
            f"{ld['wave_p99_ms']}; SYN retransmissions meanwhile: {ld['syn_retransmits']}",
            p50_ms=round(ld["p50_ms"], 1),
            by_wave=ld["wave_p99_ms"],
            by_route=ld["route_p99_ms"],
        ),
        "load_api_errors": fig(
            ld["errors"],
            "requests",
            "0",
            f"non-2xx answers or exceptions: {ld['error_kinds'] or 'none'}; serve's warnings "
            f"and errors: {ld['serve_log'] or 'none'}",
        ),
        "load_ws_clients_lost": fig(
            ws["connect_errors"] + ws["disconnected"],
            "clients",
            "0",
            f"{ws['connected']}/{ld['ws_clients']} connected, {ws['disconnected']} disconnected; "
            f"{ws['delivered']} changes delivered ({ws['min_per_client']}-"
            f"{ws['max_per_client']} a client); change applied -> client p50 "
            f"{ws['p50_ms']:.0f} ms, p99 {ws['p99_ms']:.0f} ms",
            delivered=ws["delivered"],
            lag_p99_ms=round(ws["p99_ms"], 1),
        ),
        "load_events_applied_per_s": fig(
            ld["events_applied_per_s"],
            "events/s",
            f"= the engine's {load_figures.RATE}/s",
            "events the watcher applied during the waves (idlewatch_events_applied_total)",
        ),
    }


def table(figures: dict[str, dict[str, Any]]) -> str:
    """The printed table."""
    rows = [("figure", "value", "unit", "target")]
    rows += [(k, f"{v['value']:.4g}", v["unit"], v["target"]) for k, v in figures.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"  {k}: {v['note']}" for k, v in figures.items()]
    return "\n".join(lines) + "\n\nnotes:\n" + "\n".join(notes)


def main() -> int:
    """Run, print, write bench/results.json."""
    logging.basicConfig(level=logging.ERROR)
    ensure_installed()
    figures = asyncio.run(collect())
    RESULTS.write_text(json.dumps({"figures": figures, "machine": machine()}, indent=2) + "\n")
    print()
    print(table(figures))
    print(f"\nwritten to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
