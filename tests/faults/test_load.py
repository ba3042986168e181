"""Load: concurrent API requests and websocket clients on `serve` while events flow.

The same code as `make bench`'s load figure (bench/load_figures.py) at a smaller scale: a real
`idlewatch serve` process on the fake engine emitting events live, websocket clients in their
own process, and waves of concurrent API requests (list, get, touch, readiness) with the
token. It checks the outcome only (the figures, throughput and latency, belong to the bench):
no request fails, every websocket client stays connected and receives changes, serve logs no
warning.
"""

from __future__ import annotations

from pathlib import Path

from bench import load_figures


async def test_requests_and_websocket_clients_while_events_flow_see_no_error() -> None:
    r = await load_figures.run(agents=100, rate=100, clients=20, requests=200, waves=2)
    assert r["completed"] == 400
    assert r["errors"] == 0, (r["error_kinds"], r["error_bodies"])
    ws = r["ws"]
    assert ws["connected"] == 20 and ws["connect_errors"] == 0
    assert ws["disconnected"] == 0, ws
    assert ws["min_per_client"] > 0, ws
    assert r["events_applied_per_s"] > 0  # events flowed through the watcher meanwhile
    assert r["serve_log"] == []


async def test_the_bare_baseline_serves_what_serve_answered(tmp_path: Path) -> None:
    """The bench's bare server (bench/load_bare.py) replays serve's captured payloads to the
    same mix: no error, and its websocket clients receive changes too."""
    payloads = tmp_path / "payloads.json"
    r = await load_figures.run(
        agents=50, rate=50, clients=5, requests=50, waves=1, capture=payloads
    )
    assert r["errors"] == 0 and payloads.exists()
    bare = await load_figures.run_bare(
        payloads, agents=50, rate=50, clients=5, requests=50, waves=1
    )
    assert bare["completed"] == 50 and bare["errors"] == 0, bare["error_kinds"]
    assert bare["ws"]["connected"] == 5 and bare["ws"]["min_per_client"] > 0, bare["ws"]
