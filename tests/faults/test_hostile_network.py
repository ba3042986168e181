"""Hostile clients against a real ``idlewatch serve``: big bodies, deep JSON, slow-loris, floods.

Every limit comes from a setting (small values here, so the tests stay fast); each test
checks the server keeps answering others and leaves no traceback in its log. The serve
process runs against a private engine of this module's own (no Swarm, no containers).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from idlewatch import Settings, SettingsError, load_settings
from idlewatch.api import limits
from idlewatch.api.requests import read_body

from tests.integration.serveproc import ServeProcess
from tests.private_engine import PrivateEngine, ensure_installed
from tests.waiting import until

MAX_BODY = 256 * 1024
REQUEST_TIMEOUT_S = 3.0
WS_MAX_CLIENTS = 100
WS_CONNECTS = 2000
#: the serve process's resident memory after WS_CONNECTS websocket connects must stay below
#: this (measured about 75 MB; most of it is the interpreter and its libraries)
RSS_BOUND_MB = 250


@pytest.fixture(scope="module")
def engine() -> Iterator[PrivateEngine]:
    """A private engine for this module (serve only needs one to resync with)."""
    ensure_installed()
    eng = PrivateEngine()
    try:
        eng.start()
        yield eng
    finally:
        eng.cleanup()


@pytest.fixture(scope="module")
def server(
    engine: PrivateEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServeProcess]:
    """One serve process with small limits, shared by the tests of this module."""
    proc = ServeProcess(
        engine,
        tmp_path_factory.mktemp("hostile"),
        max_body_bytes=str(MAX_BODY),
        request_timeout=f"{REQUEST_TIMEOUT_S:g}s",
        ws_max_clients=str(WS_MAX_CLIENTS),
        max_connections="4000",
    ).start()
    try:
        yield proc
    finally:
        proc.stop()


def _no_traceback(server: ServeProcess) -> None:
    log = "".join(server.lines)
    assert "Traceback" not in log and "unhandled error" not in log, log[-3000:]


def _raise_open_files(wanted: int) -> int:
    """Raise this process's soft open-file limit to the hard limit; returns what fits."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return wanted if hard == resource.RLIM_INFINITY else min(wanted, hard - 200)


async def _read_response(
    reader: asyncio.StreamReader, timeout_s: float = 10
) -> tuple[int, dict[str, Any]]:
    """One HTTP response from a raw connection: (status, JSON body or {})."""
    async with asyncio.timeout(timeout_s):
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        status = int(head.split()[1])
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        body = await reader.readexactly(length)
    try:
        return status, json.loads(body) if body else {}
    except ValueError:
        return status, {"text": body.decode("latin-1")}


async def _raw(port: int, data: bytes) -> tuple[int, dict[str, Any]]:
    """Send ``data`` on a new connection and read one response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await _read_response(reader)
    finally:
        writer.close()


async def _get(url: str, timeout_s: float = 10) -> tuple[int, Any]:
    """GET on a fresh connection (the server closes idle keep-alive connections)."""
    conn = aiohttp.TCPConnector(force_close=True)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=conn) as s, s.get(url, timeout=timeout) as r:
        return r.status, await r.json(content_type=None)


def _post_head(port: int, path: str, extra: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\n{extra}\r\n"
    ).encode()


# ----------------------------------------------------------------------------- bodies
async def test_oversized_bodies_get_413_naming_the_limit(server: ServeProcess) -> None:
    path = "/api/agents/nobody/scale"
    # announced by Content-Length: refused before a byte of it is read (none is sent)
    status, body = await _raw(
        server.port, _post_head(server.port, path, f"Content-Length: {MAX_BODY * 40}\r\n")
    )
    assert status == 413, body
    assert body["error"]["code"] == "payload_too_large"
    assert f"max_body_bytes={MAX_BODY}" in body["error"]["message"]

    # chunked, no length: counted while it arrives
    chunk = b"[" * 65536
    framed = b"%x\r\n%s\r\n" % (len(chunk), chunk) * (MAX_BODY // len(chunk) + 2) + b"0\r\n\r\n"
    status, body = await _raw(
        server.port, _post_head(server.port, path, "Transfer-Encoding: chunked\r\n") + framed
    )
    assert status == 413, body
    assert f"max_body_bytes={MAX_BODY}" in body["error"]["message"]

    # and the server is fine: a body in chunks, just under the limit, is read whole
    ok = b'{"replicas": 1' + b" " * (MAX_BODY - 100) + b"}"
    framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (ok[:10], ok[10:5000], ok[5000:]))
    status, body = await _raw(
        server.port,
        _post_head(server.port, path, "Transfer-Encoding: chunked\r\n") + framed + b"0\r\n\r\n",
    )
    assert status == 404 and body["error"]["code"] == "not_found", body  # parsed, no such agent
    assert (await _get(server.url + "/healthz"))[0] == 200
    _no_traceback(server)


async def test_a_body_arriving_in_pieces_is_read_whole() -> None:
    """read_body loops to the end of the body (one read() returns what has arrived so far)."""
    settings = Settings(docker_url="unix:///fake.sock", database_url="sqlite:///unused.db")
    from idlewatch.api.keys import SETTINGS

    app = web.Application()
    app[SETTINGS] = settings
    # a stand-in for the connection: flow control calls are accepted and ignored
    protocol = mock.Mock(connected=True, _reading_paused=False)
    stream = aiohttp.StreamReader(protocol, 2**16, loop=asyncio.get_running_loop())
    req = make_mocked_request("POST", "/", app=app, payload=stream)
    reading = asyncio.create_task(read_body(req))
    stream.feed_data(b'{"replicas": ')
    await asyncio.sleep(0)  # let read_body take the first piece
    assert not reading.done()
    stream.feed_data(b"3}")
    stream.feed_eof()
    assert await reading == b'{"replicas": 3}'


async def test_deep_json_gets_400_without_a_traceback(server: ServeProcess) -> None:
    path = "/api/agents/nobody/scale"
    deep = b"[" * 100_000 + b"]" * 100_000
    status, body = await _raw(
        server.port, _post_head(server.port, path, f"Content-Length: {len(deep)}\r\n") + deep
    )
    assert status == 400 and body["error"]["code"] == "malformed_json", body
    # deep, but within the parser's depth: the model refuses it
    nested = b'{"replicas": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    status, body = await _raw(
        server.port, _post_head(server.port, path, f"Content-Length: {len(nested)}\r\n") + nested
    )
    assert status == 400 and body["error"]["code"] == "invalid_body", body
    # a header line beyond the parser's limit: aiohttp's own 400, connection closed
    status, _ = await _raw(
        server.port, f"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * 20_000}\r\n\r\n".encode()
    )
    assert status == 400
    assert (await _get(server.url + "/healthz"))[0] == 200
    _no_traceback(server)


# ------------------------------------------------------------------------- slow-loris
class _Attacker:
    """A raw connection that sends a request a byte at a time and never finishes it."""

    def __init__(self, port: int, head: bytes, *, drip: bool = True) -> None:
        self.port = port
        self.head = head
        self.drip = drip
        self.connected = asyncio.Event()
        self.answer = b""
        self.closed = False

    async def run(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(self.head)
        await writer.drain()
        self.connected.set()
        drip = asyncio.create_task(self._drip(writer) if self.drip else asyncio.sleep(0))
        try:
            while chunk := await reader.read(4096):
                self.answer += chunk
        except ConnectionError:
            pass  # reset by the server: also a disconnection
        finally:
            self.closed = True  # EOF or reset: the server closed the connection
            drip.cancel()
            try:  # (the test may cancel this task meanwhile: the writer is closed anyway)
                await asyncio.gather(drip, return_exceptions=True)
            finally:
                writer.close()

    @staticmethod
    async def _drip(writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                writer.write(b"a")
                await writer.drain()
                await asyncio.sleep(0.2)  # the attack's own pace, not a wait for a condition


async def test_slow_loris_clients_are_cut_while_others_are_served(server: ServeProcess) -> None:
    _raise_open_files(1000)
    host = f"Host: 127.0.0.1:{server.port}\r\n"
    slow_head = f"GET /healthz HTTP/1.1\r\n{host}X-Pad: ".encode()
    slow_body = _post_head(server.port, "/api/agents/nobody/scale", "Content-Length: 1000\r\n")
    attackers = [  # a third drip a header, a third a body, a third connect and say nothing
        _Attacker(server.port, (slow_head, slow_body, b"")[i % 3], drip=i % 3 != 2)
        for i in range(200)
    ]
    tasks = [asyncio.create_task(a.run()) for a in attackers]
    try:
        async with asyncio.timeout(20):
            await asyncio.gather(*(a.connected.wait() for a in attackers))
        # the attack is on: others are still served, at once
        status, body = await _get(server.url + "/healthz", timeout_s=REQUEST_TIMEOUT_S)
        open_then = sum(not a.closed for a in attackers)
        assert status == 200 and body == {"status": "ok"}
        assert open_then == len(attackers), "some attackers were cut before /healthz answered"

        async def all_cut() -> bool:
            return all(a.closed for a in attackers)

        await until(all_cut, REQUEST_TIMEOUT_S + 20, "every slow client to be disconnected")
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for a in attackers:
        if a.head is slow_body:  # a route was reading the body: it answered 408 first
            assert a.answer.startswith(b"HTTP/1.1 408"), a.answer[:200]
            assert b"request_timeout=3s" in a.answer
        else:
            assert a.answer == b"", a.answer[:200]  # cut before it had sent a request head
    assert (await _get(server.url + "/healthz"))[0] == 200
    _no_traceback(server)


# -------------------------------------------------------------------- connection caps
async def _drain(ws: aiohttp.ClientWebSocketResponse) -> None:
    async for _msg in ws:
        pass


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class _RssSampler:
    """The peak resident memory of a process, sampled in a thread until stopped."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_mb = _rss_mb(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak_mb = max(self.peak_mb, _rss_mb(self.pid))

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def test_thousands_of_websocket_connects_are_capped(server: ServeProcess) -> None:
    n = _raise_open_files(WS_CONNECTS)
    assert n > WS_MAX_CLIENTS * 5, f"the open-file limit allows only {n} connects"
    assert server.proc is not None
    ws_url = server.url + "/api/ws"
    held: list[aiohttp.ClientWebSocketResponse] = []
    readers: list[asyncio.Task[None]] = []
    refused: list[int] = []
    other: list[BaseException] = []
    gate = asyncio.Semaphore(200)  # connects in flight at once (the kernel's accept queue)

    async def connect(s: aiohttp.ClientSession) -> None:
        async with gate:
            try:
                ws = await s.ws_connect(ws_url, heartbeat=None, autoping=True)
            except aiohttp.WSServerHandshakeError as exc:
                refused.append(exc.status)
                return
            except (aiohttp.ClientError, OSError) as exc:
                other.append(exc)
                return
            held.append(ws)
            msg = await ws.receive(timeout=20)
            assert msg.type is aiohttp.WSMsgType.TEXT and '"snapshot"' in msg.data
            # idle from here on, but answering the server's pings (as receive() does)
            readers.append(asyncio.create_task(_drain(ws)))

    served: list[int] = []
    flooding = True

    async def others() -> None:
        while flooding:
            served.append((await _get(server.url + "/api/agents"))[0])

    baseline_mb = _rss_mb(server.proc.pid)
    conn = aiohttp.TCPConnector(limit=0, force_close=True)
    with _RssSampler(server.proc.pid) as rss:
        async with aiohttp.ClientSession(connector=conn) as s:
            watcher = asyncio.create_task(others())
            try:
                await asyncio.gather(*(connect(s) for _ in range(n)))
            finally:
                flooding = False
                await watcher
            assert not other, other[:3]
            assert len(held) == WS_MAX_CLIENTS
            assert refused == [503] * (n - WS_MAX_CLIENTS)
            assert served and set(served) == {200}  # others were answered during the flood
            status, body = await _raw(
                server.port,
                b"GET /api/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket"
                b"\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="
                b"\r\n\r\n",
            )
            assert status == 503 and body["error"]["code"] == "too_many_clients", body
            assert f"ws_max_clients={WS_MAX_CLIENTS}" in body["error"]["message"]
            for ws in held:
                await ws.close()
            await asyncio.gather(*readers)

            async def a_client_fits() -> bool:
                try:
                    ws = await s.ws_connect(ws_url)
                except aiohttp.WSServerHandshakeError:
                    return False
                await ws.close()
                return True

            await until(a_client_fits, 15, "a websocket client to be accepted again")
    print(
        f"\nserve RSS: {baseline_mb:.0f} MB before, peak {rss.peak_mb:.0f} MB during "
        f"{n} websocket connects ({WS_MAX_CLIENTS} held); bound {RSS_BOUND_MB} MB"
    )
    assert rss.peak_mb < RSS_BOUND_MB
    _no_traceback(server)


@pytest.fixture
def small_server(engine: PrivateEngine, tmp_path: Path) -> Iterator[ServeProcess]:
    """A serve process accepting at most 20 connections."""
    proc = ServeProcess(engine, tmp_path, max_connections="20").start()
    try:
        yield proc
    finally:
        proc.stop()


async def test_connections_beyond_max_connections_get_503(small_server: ServeProcess) -> None:
    port = small_server.port
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
    try:
        status, body = await _raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 503 and body["error"]["code"] == "too_many_connections", body
        assert "max_connections=20" in body["error"]["message"]
        idle.pop()[1].close()  # one leaves: there is room again

        async def served() -> bool:
            try:
                return (await _raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))[0] == 200
            except ConnectionError:
                return False

        await until(served, 15, "a connection to be accepted again")
    finally:
        for _r, w in idle:
            w.close()
    _no_traceback(small_server)


# ---------------------------------------------------------------------------- settings
@pytest.mark.parametrize(
    ("name", "value"),
    [("max_connections", "0"), ("ws_max_clients", "0"), ("request_timeout", "0")],
)
def test_limit_settings_name_the_bad_value(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(f"IDLEWATCH_{name.upper()}", value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert name in str(err.value) and value in str(err.value)


def test_max_connections_fits_the_open_file_limit(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(limits.resource, "setrlimit", lambda _r, lim: calls.append(lim))
    monkeypatch.setattr(limits.resource, "getrlimit", lambda _r: (1024, 100_000))
    roomy = limits.ConnectionGuard(2048, 30)
    limits.fit_to_open_files(roomy)  # the soft limit is raised to fit
    assert calls == [(2048 + limits.FD_RESERVE, 100_000)] and roomy.max_connections == 2048

    monkeypatch.setattr(limits.resource, "getrlimit", lambda _r: (1024, 1024))
    tight = limits.ConnectionGuard(2048, 30)
    limits.fit_to_open_files(tight)  # the hard limit is too low: fewer connections, said so
    assert tight.max_connections == 1024 - limits.FD_RESERVE
    assert "max_connections=2048 does not fit the open-file limit 1024" in caplog.text
