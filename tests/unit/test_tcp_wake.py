"""Wake on a TCP connection (issue 25), on a fake core and loopback sockets: the label,
the allow-list, sessions, the splice, and listeners that follow the labels."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator

import pytest
from idlewatch.models import Agent, Change, Kind
from idlewatch.tcp_wake import TcpConfig, TcpWake, parse_networks, parse_tcp_label

from tests.builders import agent as make_agent
from tests.waiting import until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeCore:
    """The core as the TCP wake sees it: one agent per name, a wake that answers as told."""

    def __init__(self) -> None:
        self.agents: dict[str, Agent] = {}
        self.ready = True
        self.wakes: list[str] = []
        self.open: dict[str, str] = {}  # key -> agent
        self.closed: list[str] = []
        self.used: list[tuple[str, bool]] = []
        self.wake_gate: asyncio.Event | None = None

    def get(self, name: str) -> Agent | None:
        return self.agents.get(name)

    async def wake(self, name: str, timeout_s: float) -> bool:
        self.wakes.append(name)
        if self.wake_gate is not None:
            await self.wake_gate.wait()
        return self.ready

    async def address(self, agent: Agent) -> str | None:
        return "127.0.0.1"

    def open_connection(self, name: str, key: str) -> str | None:
        self.open[key] = name
        return "cid-" + name

    def close_connection(self, name: str, container_id: str, key: str) -> None:
        assert container_id == "cid-" + name
        del self.open[key]
        self.closed.append(key)

    def use(self, name: str, heartbeat: bool) -> None:
        self.used.append((name, heartbeat))


async def echo_server(greeting: bytes = b"") -> tuple[asyncio.Server, int]:
    """An echo server on loopback; with ``greeting``, it speaks first (as SSH, MySQL or
    SMTP do)."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if greeting:
            writer.write(greeting)
            await writer.drain()
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


@pytest.fixture
async def tcp() -> AsyncIterator[tuple[FakeCore, TcpWake, int]]:
    core = FakeCore()
    wake = TcpWake(core, TcpConfig("127.0.0.1", parse_networks(["127.0.0.0/8"]), 5.0))
    server, target = await echo_server()
    wake.start()
    try:
        yield core, wake, target
    finally:
        await wake.close()
        server.close()


def label(core: FakeCore, wake: TcpWake, name: str, value: str | None) -> Agent:
    labels = {"idlewatch.tcp": value} if value is not None else {}
    agent = make_agent(name, labels=labels)
    core.agents[name] = agent
    wake.changed(Change(agent, None, "test"))
    return agent


def test_the_label_is_pairs_of_ports() -> None:
    assert parse_tcp_label("2222:22") == ((2222, 22),)
    assert parse_tcp_label(" 5432:5432 , 8022:22 ") == ((5432, 5432), (8022, 22))
    for bad, why in (
        ("22", "LISTEN:TARGET"),
        ("a:22", "LISTEN:TARGET"),
        ("0:22", "1..65535"),
        ("2222:70000", "1..65535"),
        ("2222:22,2222:23", "given twice"),
        ("", "no LISTEN:TARGET"),
    ):
        with pytest.raises(ValueError, match=why):
            parse_tcp_label(bad)
    with pytest.raises(ValueError, match=r"'10\.0\.0\.0/33' is not a CIDR"):
        parse_networks(["10.0.0.0/33"])


async def test_a_connection_wakes_holds_and_is_spliced(
    tcp: tuple[FakeCore, TcpWake, int],
) -> None:
    core, wake, target = tcp
    listen = free_port()
    label(core, wake, "db", f"{listen}:{target}")
    await until(lambda: listen in wake.listening, 5, "listening")
    core.wake_gate = asyncio.Event()
    reader, writer = await asyncio.open_connection("127.0.0.1", listen)
    await until(lambda: core.wakes == ["db"], 5, "the wake asked")
    assert list(core.open.values()) == ["db"], "a session from the first moment"
    writer.write(b"hello")  # sent while the agent wakes: read once it is ready
    core.wake_gate.set()
    assert await asyncio.wait_for(reader.readexactly(5), 5) == b"hello"
    payload = os.urandom(8 << 20)  # 8 MiB both ways: flow control and buffers reused
    writer.write(payload)
    echoed = asyncio.create_task(reader.readexactly(len(payload)))
    await writer.drain()
    assert await asyncio.wait_for(echoed, 20) == payload
    assert ("db", False) in core.used, "bytes are use"
    writer.write_eof()  # a half-close reaches the agent, whose end ends the connection
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    await until(lambda: not core.open and len(core.closed) == 1, 5, "the session closed")


async def test_not_ready_in_time_or_outside_the_allow_list_is_closed(
    tcp: tuple[FakeCore, TcpWake, int],
) -> None:
    core, wake, target = tcp
    listen = free_port()
    label(core, wake, "db", f"{listen}:{target}")
    await until(lambda: listen in wake.listening, 5, "listening")
    core.ready = False
    reader, writer = await asyncio.open_connection("127.0.0.1", listen)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    await until(lambda: len(core.closed) == 1 and not core.open, 5, "its session closed")
    outsider = TcpWake(core, TcpConfig("127.0.0.1", parse_networks(["10.0.0.0/8"]), 5.0))
    other = free_port()
    outsider.start()
    try:
        x = make_agent("x", labels={"idlewatch.tcp": f"{other}:{target}"})
        core.agents["x"] = x
        outsider.changed(Change(x, None, "t"))
        await until(lambda: other in outsider.listening, 5, "listening")
        reader, writer = await asyncio.open_connection("127.0.0.1", other)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        assert outsider.refused == 1 and core.wakes.count("x") == 0 and not core.open
    finally:
        await outsider.close()


async def test_listeners_follow_the_labels_and_a_port_taken_is_one_log_line(
    tcp: tuple[FakeCore, TcpWake, int], caplog: pytest.LogCaptureFixture
) -> None:
    core, wake, target = tcp
    first, second = free_port(), free_port()
    label(core, wake, "a", f"{first}:{target}")
    await until(lambda: wake.listening == {first: "a"}, 5, "a listens")
    label(core, wake, "a", f"{second}:{target}")  # relabelled: the old port closes
    await until(lambda: wake.listening == {second: "a"}, 5, "a moved")
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", first)
    label(core, wake, "a", None)  # the label removed
    await until(lambda: wake.listening == {}, 5, "a listens nowhere")
    # a port something else holds: one error naming the agent and the port; the rest run
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = int(taken.getsockname()[1])
        with caplog.at_level(logging.ERROR, logger="idlewatch.tcp_wake"):
            label(core, wake, "b", f"{busy}:{target}")
            label(core, wake, "c", f"{first}:{target}")
            await until(lambda: wake.listening == {first: "c"}, 5, "c listens")
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "agent b" in errors[0] and str(busy) in errors[0], errors
    # a bad label, and a service: warned, ignored
    label(core, wake, "d", "not-a-port")
    service = make_agent(
        "e", kind=Kind.SERVICE, labels={"idlewatch.tcp": f"{free_port()}:{target}"}
    )
    wake.changed(Change(service, None, "test"))
    wake.forgotten("c")
    await until(lambda: wake.listening == {}, 5, "c forgotten")


async def _banner_through(core: FakeCore, tries: int) -> list[bytes]:
    wake = TcpWake(core, TcpConfig("127.0.0.1", parse_networks(["127.0.0.0/8"]), 5.0))
    server, target = await echo_server(b"SSH-2.0-test\r\n")
    wake.start()
    try:
        listen = free_port()
        label(core, wake, "ssh", f"{listen}:{target}")
        await until(lambda: listen in wake.listening, 5, "listening")
        got = []
        for _ in range(tries):
            reader, writer = await asyncio.open_connection("127.0.0.1", listen)
            got.append(await asyncio.wait_for(reader.readline(), 5))
            writer.close()
        return got
    finally:
        await wake.close()
        server.close()


async def test_a_server_that_speaks_first_is_heard() -> None:
    """The agent's first bytes (an SSH banner sent on accept) reach the client."""
    assert await _banner_through(FakeCore(), 20) == [b"SSH-2.0-test\r\n"] * 20


def test_the_splice_runs_on_uvloop_too() -> None:
    """serve runs on uvloop, whose transports are not asyncio.Transport instances."""
    import uvloop

    assert uvloop.run(_banner_through(FakeCore(), 3)) == [b"SSH-2.0-test\r\n"] * 3


async def test_a_client_that_hangs_up_while_its_agent_wakes_lets_go(
    tcp: tuple[FakeCore, TcpWake, int],
) -> None:
    core, wake, target = tcp
    listen = free_port()
    label(core, wake, "db", f"{listen}:{target}")
    await until(lambda: listen in wake.listening, 5, "listening")
    core.wake_gate = asyncio.Event()  # the wake never ends in this test
    _, writer = await asyncio.open_connection("127.0.0.1", listen)
    await until(lambda: core.open, 5, "a session")
    writer.close()
    await until(lambda: not core.open and len(core.closed) == 1, 5, "the session let go")
    core.wake_gate.set()


async def test_a_label_may_not_take_idlewatch_s_own_api_port(
    caplog: pytest.LogCaptureFixture,
) -> None:
    core = FakeCore()
    api = free_port()
    wake = TcpWake(
        core,
        TcpConfig("127.0.0.1", parse_networks(["127.0.0.0/8"]), 5.0, reserved=frozenset({api})),
    )
    wake.start()
    try:
        with caplog.at_level(logging.WARNING, logger="idlewatch.tcp_wake"):
            label(core, wake, "web", f"{api}:80")
            await asyncio.sleep(0)
        assert wake.listening == {}
        assert any("idlewatch's own API" in r.getMessage() for r in caplog.records)
    finally:
        await wake.close()


async def test_an_open_connection_reports_use_on_a_heartbeat(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A replica that does not lead tells the leader, by use reports, that a connection
    it holds is open (the adapter drops them on the leader)."""
    monkeypatch.setattr("idlewatch.tcp_wake.HEARTBEAT_S", 0.05)
    core = FakeCore()
    wake = TcpWake(core, TcpConfig("127.0.0.1", parse_networks(["127.0.0.0/8"]), 5.0))
    server, target = await echo_server()
    wake.start()
    try:
        listen = free_port()
        label(core, wake, "db", f"{listen}:{target}")
        await until(lambda: listen in wake.listening, 5, "listening")
        _, writer = await asyncio.open_connection("127.0.0.1", listen)
        await until(lambda: ("db", True) in core.used, 5, "a heartbeat while open")
        writer.close()
        await until(lambda: not core.open, 5, "closed")
        beats = core.used.count(("db", True))
        await asyncio.sleep(0.2)  # several heartbeat periods with nothing open
        assert core.used.count(("db", True)) == beats
    finally:
        await wake.close()
        server.close()
