"""Load: concurrent API requests and websocket clients on `serve` while events flow.

The same code as `make bench`'s load figure (bench/load_figures.py) at a smaller scale: a real
`idlewatch serve` process on the fake engine emitting events live, websocket clients in their
own process, and waves of concurrent API requests (list, get, touch, readiness) with the
token. It checks the outcome only (the figures, throughput and latency, belong to the bench):
no request fails, every websocket client stays connected and receives changes, serve logs no
warning.
"""

from __future__ import annotations

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
