"""Wake on a TCP connection (issue 25) with the real ``idlewatch serve`` and engine.

The agent is a container on its engine's host network that binds 127.0.0.1 only (the
suite's one exception to network ``none``): busybox httpd, reached through its
``idlewatch.tcp`` listener on loopback as a client on the same host would.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.private_engine import TEST_IMAGE, PrivateEngine, free_port
from tests.waiting import until_sync

from .conftest import inspect
from .serveproc import ServeProcess

IDLE_S = 2


def _state(engine: PrivateEngine, name: str) -> str:
    return str(inspect(engine, name)["State"]["Status"])


def _get(serve: ServeProcess, path: str) -> Any:
    with urllib.request.urlopen(f"{serve.url}{path}", timeout=10) as resp:
        return json.load(resp)


def _metrics(serve: ServeProcess) -> str:
    with urllib.request.urlopen(f"{serve.url}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


def _value(metrics: str, name: str) -> float:
    (line,) = [x for x in metrics.splitlines() if x.startswith(name + " ")]
    return float(line.split()[-1])


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _ask(port: int) -> bytes:
    """One HTTP request over a raw TCP connection to the listener; the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=40) as s:
        s.sendall(b"GET / HTTP/1.0\r\nHost: app\r\n\r\n")
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
        return b"".join(chunks)


def test_a_connection_wakes_holds_and_lets_go(
    loopback_engine: PrivateEngine, tmp_path: Path
) -> None:
    engine = loopback_engine
    app_port, listen = free_port(), free_port()
    script = (
        f'mkdir -p /www && echo "hello over tcp" > /www/index.html && trap "exit 0" TERM; '
        f"exec httpd -f -p 127.0.0.1:{app_port} -h /www"
    )
    engine.cli(
        "run", "-d", "--name", "app", "--network", "host", "--stop-timeout", "1",
        "--label", "idlewatch.enable=true",
        "--label", f"idlewatch.tcp={listen}:{app_port}",
        "--label", f"idlewatch.ready-port={app_port}",
        "--label", f"idlewatch.idle-timeout={IDLE_S}s",
        TEST_IMAGE, "sh", "-c", script,
    )  # fmt: skip
    engine.cli("stop", "-t", "1", "app")
    # a client outside tcp_allow is refused, and SIGTERM closes the listeners
    strict = ServeProcess(engine, tmp_path / "strict", tcp_allow="10.0.0.0/8", sweep_interval="1s")
    (tmp_path / "strict").mkdir()
    strict.start()
    try:
        until_sync(lambda: _accepts(listen), 20, "the listener opened")
        with socket.create_connection(("127.0.0.1", listen), timeout=10) as s:
            assert s.recv(100) == b"", "closed at once"
        assert _state(engine, "app") == "exited", "nothing started for a refused client"
        assert any("not in tcp_allow" in line for line in strict.lines), strict.lines[-20:]
        metrics = _metrics(strict)  # (the probes that waited for the listener were refused too)
        assert _value(metrics, 'idlewatch_tcp_connections_total{result="refused"}') >= 1
        assert _value(metrics, 'idlewatch_tcp_connections_total{result="accepted"}') == 0
        assert _value(metrics, "idlewatch_tcp_listeners") == 1
    finally:
        assert strict.stop() == 0
    assert not _accepts(listen), "SIGTERM closed the listener"
    assert not any("Traceback" in line for line in strict.lines), "".join(strict.lines)

    serve = ServeProcess(
        engine, tmp_path, sweep_interval="1s", wake_timeout="30s", stop_timeout="1"
    ).start()
    try:
        until_sync(lambda: _accepts(listen), 20, "the listener opened")
        answer = _ask(listen)  # the agent sleeps: the connection wakes it and is answered
        assert b"200 OK" in answer and b"hello over tcp" in answer, answer[:300]
        assert _state(engine, "app") == "running"
        (start,) = [e for e in _get(serve, "/api/audit?agent=app") if e["action"] == "start"]
        assert start["actor"] == "wake"
        # a connection held open (nothing sent) holds the agent past its idle timeout
        held = socket.create_connection(("127.0.0.1", listen), timeout=10)
        try:
            until_sync(lambda: _get(serve, "/api/agents/app")["sessions"] == 1, 10, "a session")
            assert _value(_metrics(serve), "idlewatch_tcp_connections_open") == 1
            holds = _get(serve, "/api/agents/app")["holds"]
            assert [h["kind"] for h in holds if h["kind"] == "session"] == ["session"], holds
            deadline = time.monotonic() + 3 * IDLE_S
            while time.monotonic() < deadline:  # three idle timeouts, sweeps every second
                assert _state(engine, "app") == "running"
                time.sleep(0.5)
        finally:
            held.close()
            closed_at = time.monotonic()
        until_sync(lambda: _state(engine, "app") == "exited", 30, "stopped once let go")
        assert time.monotonic() - closed_at >= IDLE_S - 0.5
        stops = [e for e in _get(serve, "/api/audit?agent=app") if e["action"] == "stop"]
        assert stops and stops[0]["actor"] == "sweep", stops
    finally:
        assert serve.stop() == 0
    assert not any("Traceback" in line for line in serve.lines), "".join(serve.lines)
