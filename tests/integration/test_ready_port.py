"""Ready means answers (issue 22, item 3): an agent whose app listens a second after its
process starts, behind the real nginx and Caddy from config/, answers its first request
200 every time once it carries ``idlewatch.ready-port``.

The agent is a container on its engine's host network that binds 127.0.0.1 only (the
suite's one such exception): its engine shares this test session's private network, so
the proxies reach it on loopback as they would on a real host.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.private_engine import TEST_IMAGE, PrivateEngine, free_port
from tests.waiting import until

from .proxies import APP_HOST, start_caddy, start_nginx
from .serveproc import ServeProcess

WAKE_TOKEN = "ready-port-token"
TRIES = 30


def _app(engine: PrivateEngine, port: int) -> None:
    """An app that listens one second after its process starts (busybox httpd)."""
    script = (
        f'mkdir -p /www && echo "hello from app" > /www/index.html && trap "exit 0" TERM; '
        f"sleep 1; exec httpd -f -p 127.0.0.1:{port} -h /www"
    )
    engine.cli(
        "run", "-d", "--name", "app", "--network", "host", "--stop-timeout", "1",
        "--label", "idlewatch.enable=true", "--label", f"idlewatch.hosts={APP_HOST}",
        "--label", f"idlewatch.ready-port={port}",
        TEST_IMAGE, "sh", "-c", script,
    )  # fmt: skip


def _status(serve: ServeProcess) -> Any:
    with urllib.request.urlopen(f"{serve.url}/api/agents/app", timeout=10) as resp:
        return json.load(resp)["status"]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["nginx", "caddy"])
async def test_every_first_request_is_answered_by_the_app(
    loopback_engine: PrivateEngine, tmp_path: Path, kind: str
) -> None:
    port = free_port()
    _app(loopback_engine, port)
    serve = ServeProcess(
        loopback_engine, tmp_path, wake_token=WAKE_TOKEN, wake_timeout="20s"
    ).start()
    start = start_nginx if kind == "nginx" else start_caddy
    proxy = start(idlewatch_port=serve.port, upstream_port=port, token=WAKE_TOKEN)
    answers: list[tuple[int, str]] = []
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(TRIES):
                loopback_engine.cli("stop", "-t", "1", "app")
                await until(lambda: _status(serve) == "exited", 15, "the app stopped")
                headers = {"Host": proxy.host_header()}
                async with session.get(proxy.url + "/", headers=headers) as resp:
                    answers.append((resp.status, (await resp.text()).strip()))
    finally:
        log = proxy.stop()
        serve.stop()
        loopback_engine.cli("rm", "-f", "app", check=False)
    bad = [a for a in answers if a != (200, "hello from app")]
    assert not bad, f"{len(bad)} of {TRIES} first requests failed: {bad[:5]}\n{log[-2000:]}"
