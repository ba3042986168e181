"""Wake on a TCP connection: label ``idlewatch.tcp`` = ``LISTEN:TARGET[,LISTEN:TARGET...]``.

Policy (read this first):
- Each labelled container gets a listener on ``tcp_host:LISTEN`` for each pair. A
  connection from an address outside ``tcp_allow`` (CIDRs; loopback by default: a TCP port
  has no token) is closed at once, before anything else.
- An accepted connection is a session of its agent from its first moment (``holds`` shows
  it, ``sessions`` counts it): the agent is never idle while one is open, and the close of
  the last one is use, so its idle clock starts then. Bytes in either direction are use
  (noted at most once a second per agent). On a replica that does not lead, an open
  connection reports use every HEARTBEAT_S so the leader does not take it for idle.
- Nothing is read from the client until the agent is ready: the same wake as
  ``/api/wake`` (start what sleeps through the same rules, then running, healthy, its
  ready-port), bounded by ``wake_timeout``; not ready by then, the connection is closed.
  Ready, it is spliced to the agent's TARGET port at its address on its network as the
  engine reports it (127.0.0.1 for a container on the host network). The wake adds no
  keep-alive: the connection itself holds the agent.
- Listeners follow the labels live (an agent added, relabelled, removed) and close on
  shutdown. A listener that cannot bind is one log line naming the agent, the port and
  the reason, and the rest run; a port two agents ask for stays the first one's (the
  second is named in a warning). A bad label is logged once, naming the agent and the
  text, and ignored. Containers only: a service's tasks have many addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .models import Agent, Change, Kind
from .rules import is_gone
from .tasks import cancel_and_wait
from .tcp_splice import Side, unless_gone

logger = logging.getLogger(__name__)

TCP_LABEL = "idlewatch.tcp"
#: how often an open connection reports use on a replica that does not lead
HEARTBEAT_S = 10.0
#: bytes are use, noted at most this often per agent
NOTE_EVERY_S = 1.0
#: once one side of a connection closed, how long the other may take to send what is left
LINGER_S = 30.0
#: connections at once, over every listener; more are closed at once (and logged once)
MAX_CONNECTIONS = 1024

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_tcp_label(value: str) -> tuple[tuple[int, int], ...]:
    """``LISTEN:TARGET[,LISTEN:TARGET...]`` as (listen, target) port pairs; ValueError
    with what is wrong."""
    pairs: list[tuple[int, int]] = []
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        listen, sep, target = part.partition(":")
        if not sep or not listen.strip().isdigit() or not target.strip().isdigit():
            raise ValueError(f"{part!r} is not LISTEN:TARGET (two port numbers)")
        pair = (int(listen), int(target))
        if not all(1 <= p <= 65535 for p in pair):
            raise ValueError(f"{part!r}: ports are 1..65535")
        if pair[0] in (p[0] for p in pairs):
            raise ValueError(f"listen port {pair[0]} is given twice")
        pairs.append(pair)
    if not pairs:
        raise ValueError("no LISTEN:TARGET pair")
    return tuple(pairs)


def parse_networks(values: Sequence[str]) -> tuple[Network, ...]:
    """CIDRs (or single addresses); ValueError naming the bad one."""
    out = []
    for text in values:
        try:
            out.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"{text!r} is not a CIDR: {exc}") from None
    return tuple(out)


def same_host(a: str, b: str) -> bool:
    """Whether listening on ``a`` and on ``b`` can take the same port (a wildcard takes
    every address)."""
    wildcard = ("", "0.0.0.0", "::", "*")
    return a == b or a in wildcard or b in wildcard


@dataclass(frozen=True, slots=True)
class TcpConfig:
    """Plain values from the settings."""

    host: str  # tcp_host
    allow: tuple[Network, ...]  # tcp_allow
    timeout_s: float  # wake_timeout
    #: ports a label may not take: idlewatch's own API where tcp_host overlaps its host
    reserved: frozenset[int] = frozenset()


class TcpCore(Protocol):
    """What the TCP wake asks of the core (wired in assemble.py)."""

    def get(self, name: str) -> Agent | None:
        """The tracked agent."""
        ...

    async def wake(self, name: str, timeout_s: float) -> bool:
        """Wake ``name`` as ``/api/wake`` does, without a keep-alive; whether it is ready."""
        ...

    async def address(self, agent: Agent) -> str | None:
        """Where the container's ports are reached (None: it has no address)."""
        ...

    def open_connection(self, name: str, key: str) -> str | None:
        """A session for the connection; the container id it counts on."""
        ...

    def close_connection(self, name: str, container_id: str, key: str) -> None:
        """The connection's session ends (use now)."""
        ...

    def use(self, name: str, heartbeat: bool) -> None:
        """Bytes went through (``heartbeat``: an open connection's periodic report)."""
        ...


@dataclass(slots=True)
class _Listener:
    agent: str
    target: int
    server: asyncio.Server


class TcpWake:
    """The listeners of every ``idlewatch.tcp`` label; a listener on the change bus."""

    def __init__(self, core: TcpCore, config: TcpConfig) -> None:
        self._core = core
        self._config = config
        self._wanted: dict[str, tuple[tuple[int, int], ...]] = {}  # agent -> its pairs
        self._listeners: dict[int, _Listener] = {}  # listen port -> listener
        self._failed: dict[int, str] = {}  # listen port -> the agent it could not serve
        self._warned: set[tuple[str, str]] = set()
        self._connections: set[asyncio.Task[None]] = set()
        self._open: dict[str, int] = {}  # agent -> connections open now
        self._noted: dict[str, float] = {}  # agent -> when bytes were last noted (monotonic)
        self._kick = asyncio.Event()
        self._syncer: asyncio.Task[None] | None = None
        self._heart: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self.refused = 0  # connections from outside tcp_allow
        self.accepted = 0

    # ------------------------------------------------------- ChangeListener
    def changed(self, change: Change) -> None:
        """Follow the agent's label (a sync runs when its pairs changed)."""
        agent = change.agent
        pairs = self._pairs(agent)
        if self._wanted.get(agent.name, ()) != pairs:
            if pairs:
                self._wanted[agent.name] = pairs
            else:
                self._wanted.pop(agent.name, None)
            self._kick.set()

    def forgotten(self, name: str) -> None:
        """An agent no longer tracked listens nowhere."""
        if self._wanted.pop(name, None) is not None:
            self._kick.set()

    def _pairs(self, agent: Agent) -> tuple[tuple[int, int], ...]:
        text = agent.labels.get(TCP_LABEL)
        if text is None or is_gone(agent):
            return ()
        if agent.kind is not Kind.CONTAINER:
            self._warn_once(agent.name, f"{TCP_LABEL} applies to containers only: ignored")
            return ()
        try:
            pairs = parse_tcp_label(text)
        except ValueError as exc:
            self._warn_once(agent.name, f"{TCP_LABEL}={text!r} ignored: {exc}")
            return ()
        for listen, _ in pairs:
            if listen in self._config.reserved:
                self._warn_once(
                    agent.name, f"{TCP_LABEL}: port {listen} is idlewatch's own API: ignored"
                )
        return tuple(p for p in pairs if p[0] not in self._config.reserved)

    def _warn_once(self, name: str, message: str) -> None:
        if (name, message) not in self._warned:
            self._warned.add((name, message))
            logger.warning("agent %s: %s", name, message)

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Open the listeners the labels ask for, and follow them."""
        self._syncer = asyncio.create_task(self._follow(), name="idlewatch-tcp-listeners")
        self._heart = asyncio.create_task(self._heartbeat(), name="idlewatch-tcp-heartbeat")
        self._kick.set()

    async def close(self) -> None:
        """Close every listener and connection, and stop following."""
        for task in (self._syncer, self._heart):
            if task is not None:
                await cancel_and_wait(task)
        self._syncer = self._heart = None
        for listener in self._listeners.values():
            listener.server.close()
        for task in list(self._connections):
            await cancel_and_wait(task)
        for listener in self._listeners.values():
            with contextlib.suppress(Exception):
                await listener.server.wait_closed()
        self._listeners.clear()

    @property
    def open_now(self) -> int:
        """Connections open now (waking or spliced)."""
        return sum(self._open.values())

    @property
    def listening(self) -> dict[int, str]:
        """Listen port -> agent, now."""
        return {port: lst.agent for port, lst in self._listeners.items()}

    async def _follow(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            await self._sync()

    async def _sync(self) -> None:
        wanted: dict[int, tuple[str, int]] = {}
        for name, pairs in sorted(self._wanted.items()):
            for listen, target in pairs:
                if listen in wanted:
                    self._warn_once(
                        name, f"{TCP_LABEL}: port {listen} is {wanted[listen][0]}'s already"
                    )
                    continue
                wanted[listen] = (name, target)
        gone = [p for p, lst in self._listeners.items() if wanted.get(p, ("",))[0] != lst.agent]
        for port in gone:
            closed = self._listeners.pop(port)
            closed.server.close()
            logger.info(
                "tcp: stopped listening on %s:%d for %s", self._config.host, port, closed.agent
            )
        for port in [p for p in self._failed if p not in wanted]:
            del self._failed[port]
        for port, (name, target) in wanted.items():
            listener = self._listeners.get(port)
            if listener is not None:
                listener.target = target  # relabelled to another target: the next connection
                continue
            if self._failed.get(port) == name:
                continue  # said once; tried again when its label changes
            await self._listen(port, name, target)

    async def _listen(self, port: int, name: str, target: int) -> None:
        host = self._config.host
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(
                lambda: Side(lambda side: self._accepted(port, side)), host, port,
                reuse_address=True,
            )  # fmt: skip
        except OSError as exc:
            self._failed[port] = name
            logger.error(
                "agent %s: cannot listen on %s:%d for %s: %s", name, host, port, TCP_LABEL, exc
            )
            return
        self._failed.pop(port, None)
        self._listeners[port] = _Listener(name, target, server)
        logger.info("tcp: listening on %s:%d for %s (its port %d)", host, port, name, target)

    # ---------------------------------------------------------- connections
    def _accepted(self, port: int, client: Side) -> None:
        """A client connected (its reading paused): its own task serves it."""
        task = asyncio.create_task(self._connection(port, client), name=f"idlewatch-tcp-{port}")
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _connection(self, port: int, client: Side) -> None:
        try:
            await self._serve(port, client)
        except asyncio.CancelledError:
            pass  # shutdown: the connection closes below
        except Exception as exc:  # one connection's failure is that connection's
            logger.warning("tcp: a connection on port %d failed: %s", port, exc)
        finally:
            client.close()

    def _allowed(self, peer: object) -> bool:
        if not isinstance(peer, tuple) or not peer:
            return False
        try:
            address = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in net for net in self._config.allow)

    async def _serve(self, port: int, client: Side) -> None:
        listener = self._listeners.get(port)
        if listener is None:
            return
        peer = client.peername()
        if not self._allowed(peer):
            self.refused += 1
            logger.info("tcp: refused %s on port %d (not in tcp_allow)", peer, port)
            return
        if len(self._connections) > MAX_CONNECTIONS:
            self.refused += 1
            self._warn_once(listener.agent, f"over {MAX_CONNECTIONS} tcp connections: refusing")
            return
        self.accepted += 1
        name = listener.agent
        key = f"tcp-{port}-{next(self._ids)}"
        container = self._core.open_connection(name, key)
        if container is None:
            return
        self._open[name] = self._open.get(name, 0) + 1
        try:
            await self._connect(name, listener, client)
        finally:
            self._open[name] -= 1
            if not self._open[name]:
                del self._open[name]
            self._core.close_connection(name, container, key)

    async def _connect(self, name: str, listener: _Listener, client: Side) -> None:
        """Wake, then splice; returns once both sides are closed (or the client left)."""
        timeout = self._config.timeout_s
        started = time.monotonic()
        if not await unless_gone(client, self._core.wake(name, timeout)):
            logger.info("tcp: %s not ready within %gs (or the client left)", name, timeout)
            return
        agent = self._core.get(name)
        address = await self._core.address(agent) if agent is not None else None
        if address is None:
            self._warn_once(name, f"{TCP_LABEL}: the container has no address (network none?)")
            return
        left = max(0.1, timeout - (time.monotonic() - started))
        upstream = Side(None, peer=client, note=lambda: self._note(name))
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: upstream, address, listener.target), left
            )
        except (OSError, TimeoutError) as exc:
            logger.info("tcp: %s:%d did not answer for %s: %s", address, listener.target, name, exc)
            return
        try:
            client.link(upstream)
            ends = [client.lost, upstream.lost]
            await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
            # one side is gone: the other sends what it still has, for LINGER_S at most
            # (a peer that reads nothing must not hold the session for ever)
            _, lingering = await asyncio.wait(ends, timeout=LINGER_S)
            if lingering:
                client.abort()
                upstream.abort()
        finally:
            upstream.close()

    def _note(self, name: str) -> None:
        now = time.monotonic()
        if now - self._noted.get(name, 0.0) >= NOTE_EVERY_S:
            self._noted[name] = now
            self._core.use(name, heartbeat=False)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            for name in list(self._open):
                self._core.use(name, heartbeat=True)


__all__ = [
    "TCP_LABEL",
    "TcpConfig",
    "TcpCore",
    "TcpWake",
    "parse_networks",
    "parse_tcp_label",
    "same_host",
]
