"""Sablier 1.17's clients against the real ``idlewatch serve`` and engine (issue 25).

Each client sends what it sends in the field: Traefik's plugin (v1.3) a plain GET with
Go's headers, repeated every ``keepAliveInterval`` while the visitor's connection lives,
passing our status and body through; the proxy-wasm plugin the same GET, letting the
request through when the status header is missing, so an error must never carry it.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.private_engine import PrivateEngine

from .conftest import inspect, run_container
from .serveproc import ServeProcess

TRAEFIK = {"User-Agent": "Go-http-client/1.1", "Accept-Encoding": "gzip"}
PROXY_WASM = {"User-Agent": "envoy", "Accept": "*/*"}
SABLIER = "X-Sablier-Session-Status"
API = "sab-api-token"


def _state(engine: PrivateEngine, name: str) -> str:
    return str(inspect(engine, name)["State"]["Status"])


def _until(check: Any, what: str, deadline_s: float = 30) -> None:
    end = time.monotonic() + deadline_s
    while not check():
        assert time.monotonic() < end, f"not within {deadline_s}s: {what}"
        time.sleep(0.05)


@pytest.fixture
def serve(engine: PrivateEngine, tmp_path: Path) -> Iterator[ServeProcess]:
    for name in ("sab-web", "sab-side", "sab-poke", "sab-dyn", "sab-theme"):
        run_container(engine, name)
        engine.cli("stop", "-t", "1", name)
    proc = ServeProcess(
        engine, tmp_path, api_token=API, wake_open="true", wake_timeout="30s"
    ).start()
    try:
        yield proc
    finally:
        proc.stop()


def _get(serve: ServeProcess, path: str, query: list[tuple[str, str]], headers: Any) -> Any:
    url = f"{serve.url}{path}?{urllib.parse.urlencode(query)}"
    return requests.get(url, headers=headers, timeout=60)


def _status_header(resp: Any) -> list[str]:
    """Every value of the session header as sent (a repeated header is two values)."""
    return list(resp.raw.headers.getlist(SABLIER))


def test_what_traefiks_plugin_sends(engine: PrivateEngine, serve: ServeProcess) -> None:
    query = [
        ("names", "sab-web"),
        ("names", "optional:sab-side"),
        ("session_duration", "1m"),
        ("timeout", "30s"),
    ]
    resp = _get(serve, "/api/strategies/blocking", query, TRAEFIK)
    assert resp.status_code == 200 and _status_header(resp) == ["ready"], resp.text
    instances = {i["instance"]["name"]: i["instance"] for i in resp.json()["session"]["instances"]}
    assert instances["sab-side"]["optional"] is True and "optional" not in instances["sab-web"]
    assert _state(engine, "sab-web") == "running"
    _until(lambda: _state(engine, "sab-side") == "running", "the optional agent runs")
    for _ in range(5):  # keepAliveInterval repeats while the visitor's connection lives
        again = _get(serve, "/api/strategies/blocking", query, TRAEFIK)
        assert again.status_code == 200 and _status_header(again) == ["ready"]
    # poke: started, answered at once
    t0 = time.monotonic()
    poke = _get(
        serve, "/api/strategies/poke", [("names", "sab-poke"), ("session_duration", "1m")], TRAEFIK
    )
    assert poke.status_code == 200 and _status_header(poke) == ["not-ready"], poke.text
    assert time.monotonic() - t0 < 5
    _until(lambda: _state(engine, "sab-poke") == "running", "poke's agent runs")
    poke = _get(serve, "/api/strategies/poke", [("names", "sab-poke")], TRAEFIK)
    assert _status_header(poke) in (["ready"], ["not-ready"])  # (ready once the event came)
    # an unknown theme: a problem, and nothing started
    bad = _get(
        serve, "/api/strategies/dynamic", [("names", "sab-theme"), ("theme", "neon")], TRAEFIK
    )
    assert bad.status_code == 404 and _status_header(bad) == []
    assert bad.headers["Content-Type"].startswith("application/problem+json")
    assert bad.json()["field"] == "theme"
    assert _state(engine, "sab-theme") == "exited"
    audit = requests.get(
        f"{serve.url}/api/audit?agent=sab-theme",
        headers={"Authorization": f"Bearer {API}"},
        timeout=10,
    ).json()
    assert not [e for e in audit if e["action"] == "start"], audit
    themes = requests.get(f"{serve.url}/api/themes", timeout=10).json()["themes"]
    assert "ghost" in themes and "hacker-terminal" in themes
    health = requests.get(f"{serve.url}/health", timeout=10)
    assert health.status_code == 200


def test_what_the_proxy_wasm_plugin_sends(engine: PrivateEngine, serve: ServeProcess) -> None:
    query = [
        ("names", "sab-dyn"),
        ("session_duration", "1m"),
        ("display_name", "Dyn"),
        ("theme", "ghost"),
        ("show_details", "true"),
        ("refresh_frequency", "2s"),
    ]
    page = _get(serve, "/api/strategies/dynamic", query, PROXY_WASM)
    assert page.status_code == 200 and _status_header(page) in (["not-ready"], ["ready"])
    assert int(page.headers["Content-Length"]) == len(page.content)
    assert "Dyn is" in page.text
    _until(lambda: _state(engine, "sab-dyn") == "running", "the dynamic page's agent runs")
    _until(
        lambda: (
            _status_header(_get(serve, "/api/strategies/dynamic", query, PROXY_WASM)) == ["ready"]
        ),
        "the page says ready",
    )
    # an error never carries the header: the plugin would take a missing one as a pass
    for bad_query in (
        [("names", "sab-nobody")],
        [("names", "sab-dyn"), ("refresh_frequency", "0")],
    ):
        bad = _get(serve, "/api/strategies/dynamic", bad_query, PROXY_WASM)
        assert bad.status_code in (400, 404) and _status_header(bad) == []
        problem = bad.json()
        assert {"type", "title", "status", "detail"} <= problem.keys()
