"""Webhooks against the real ``idlewatch serve``, engine and SQLite outbox (issue 26): a
receiver on loopback that is down for a while, ``serve`` SIGKILLed in between and started
again, and every delivery still arrives, in order per endpoint, at least once, signed."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.private_engine import PrivateEngine, free_port

from .conftest import run_container
from .serveproc import ServeProcess

SECRET = "whk-secret"
API = "whk-api-token"
AUTH = {"Authorization": f"Bearer {API}"}


class Receiver:
    """A webhook receiver on 127.0.0.1 that can be taken down and brought back on its port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.got: list[tuple[str, dict[str, str], bytes]] = []  # (path, headers, body)
        self._server: http.server.ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def up(self) -> None:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._lock:
                    receiver.got.append((self.path, dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def ids(self, path: str) -> list[str]:
        """The delivery ids received at ``path``, in arrival order, repeats dropped."""
        with self._lock:
            got = [json.loads(b)["id"] for p, _, b in self.got if p == f"/{path}"]
        return list(dict.fromkeys(got))


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.up()
    try:
        yield r
    finally:
        r.down()


def _until(check: Any, what: str, deadline_s: float = 60) -> None:
    end = time.monotonic() + deadline_s
    while not check():
        assert time.monotonic() < end, f"not within {deadline_s}s: {what}"
        time.sleep(0.1)


def _outbox(proc: ServeProcess, status: str | None = None) -> list[dict[str, Any]]:
    query = f"?limit=1000{'&status=' + status if status else ''}"
    resp = requests.get(f"{proc.url}/api/webhooks/deliveries{query}", headers=AUTH, timeout=10)
    assert resp.status_code == 200, resp.text
    return list(reversed(resp.json()))  # oldest first: the outbox's order


def _act(proc: ServeProcess, name: str, action: str) -> None:
    url = f"{proc.url}/api/agents/{name}/{action}"
    resp = requests.post(url, headers=AUTH, timeout=60)
    assert resp.status_code == 200, resp.text


def test_every_delivery_arrives_in_order_through_an_outage_and_a_sigkill(
    engine: PrivateEngine, receiver: Receiver, tmp_path: Path
) -> None:
    for name in ("whk-a", "whk-b", "whk-other"):
        run_container(engine, name)
    hooks = [
        {"url": receiver.url("all"), "secret": SECRET},
        {"url": receiver.url("a"), "agents": ["whk-a"], "events": ["status", "lifecycle"]},
    ]
    proc = ServeProcess(engine, tmp_path, api_token=API, webhooks=json.dumps(hooks)).start()
    try:
        _act(proc, "whk-a", "stop")
        _until(lambda: len(receiver.ids("a")) >= 2, "whk-a's stop and its status change")
        # the receiver goes down: deliveries wait in the outbox, retried with backoff
        receiver.down()
        _act(proc, "whk-b", "stop")
        _act(proc, "whk-a", "start")
        _act(proc, "whk-other", "stop")
        _until(
            lambda: any(d["attempts"] >= 1 for d in _outbox(proc, "pending")),
            "a delivery tried against the receiver that is down",
        )
        pending = {d["id"] for d in _outbox(proc, "pending")}
        assert pending
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGKILL)  # no shutdown, no flush
        proc.proc.wait(10)
    finally:
        proc.stop()
    receiver.up()
    again = ServeProcess(engine, tmp_path, api_token=API, webhooks=json.dumps(hooks)).start()
    try:
        _until(lambda: not _outbox(again, "pending"), "an empty outbox after the restart", 90)
        outbox = _outbox(again)
        assert pending <= {d["id"] for d in outbox}  # the pending ones survived the SIGKILL
        assert {d["status"] for d in outbox} == {"sent"}
        for path, endpoint_rows in (
            ("all", _rows(outbox, hooks, 0)),
            ("a", _rows(outbox, hooks, 1)),
        ):
            expected = [d["id"] for d in endpoint_rows]
            # every delivery arrived, in the outbox's order (a repeat is dropped by its id)
            assert receiver.ids(path) == expected, path
        # the filtered endpoint: whk-a only, status changes and lifecycle actions only
        a = [json.loads(b) for p, _, b in receiver.got if p == "/a"]
        assert {b["agent"] for b in a} == {"whk-a"}
        assert {b["event"] for b in a} == {"status", "lifecycle"}
        # every delivery to the signed endpoint verifies
        for p, headers, body in receiver.got:
            if p == "/all":
                mac = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                assert headers["X-Idlewatch-Signature"] == f"sha256={mac}"
                assert headers["X-Idlewatch-Delivery"] == json.loads(body)["id"]
        assert {json.loads(b)["agent"] for p, _, b in receiver.got if p == "/all"} >= {
            "whk-a",
            "whk-b",
            "whk-other",
        }
    finally:
        again.stop()


def _rows(
    outbox: list[dict[str, Any]], hooks: list[dict[str, Any]], i: int
) -> list[dict[str, Any]]:
    """The outbox rows of the i-th endpoint (its key: the url's hash, as webhooks.py makes it)."""
    key = hashlib.sha256(hooks[i]["url"].encode()).hexdigest()[:16]
    return [d for d in outbox if d["endpoint"] == key]
