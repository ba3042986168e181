"""Ready means answers: an agent labelled ``idlewatch.ready-port`` is ready once that port
accepts a connection, not when its process starts.

Policy (read this first):
- Without a healthcheck the engine reports "running" the moment the process starts, often
  before the app listens, and a proxy that forwards then gets a refused connection (502).
  With ``idlewatch.ready-port=PORT`` a wake waits, once the agent runs (and is healthy, if
  it has a healthcheck), until PORT accepts a TCP connection at the container's address
  as the engine reports it (127.0.0.1 on the host's network), trying every
  ``probe_every_s``; the wake's own timeout bounds it.
- A port that answered is confirmed for the agent's running spell: the hot path (a running
  agent asked about again and again) costs one lookup, no probe. Anything but running (a
  stop, a pause, a restart) forgets it.
- One probe per agent however many requests wait (single flight); it ends when the last
  waiter gives up.
- Containers only (a service's tasks have many addresses: use a healthcheck there). A bad
  label, a service with the label, or a container with no address (network ``none``) is
  named in a warning once and the agent is ready when it runs, as without the label.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from .models import Agent, Change, ContainerInfo, Kind, Status
from .tasks import cancel_and_wait

logger = logging.getLogger(__name__)

READY_PORT_LABEL = "idlewatch.ready-port"
#: how often a port that refused is tried again
PROBE_EVERY_S = 0.05
#: one connection attempt gives up after this long (a port that drops packets)
CONNECT_TIMEOUT_S = 1.0


class ContainerLookup(Protocol):
    """What the probe asks of the engine: a container as inspected (its address)."""

    async def inspect_container(self, ref: str) -> ContainerInfo | None:
        """The container, or None when it is gone."""
        ...


def ready_port(agent: Agent) -> int | None:
    """The agent's ready-port label as a port number; None when absent. ValueError for a
    value that is not a port."""
    raw = agent.labels.get(READY_PORT_LABEL, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise ValueError(f"{READY_PORT_LABEL}={raw!r}: expected a port number 1-65535")
    return int(raw)


class ReadyPorts:
    """Which running agents' ready-ports answered, and the probes that find out; a listener
    on the change bus (see the module docstring)."""

    def __init__(self, docker: ContainerLookup, *, probe_every_s: float = PROBE_EVERY_S) -> None:
        self._docker = docker
        self._probe_every_s = probe_every_s
        self._confirmed: dict[str, str] = {}  # agent name -> the container id that answered
        self._probes: dict[str, asyncio.Task[None]] = {}
        self._waiting: dict[str, int] = {}  # agent name -> waiters of its probe
        self._warned: set[tuple[str, str]] = set()
        self.probes = 0  # probes begun (for tests and metrics)

    # ------------------------------------------------------- ChangeListener
    def changed(self, change: Change) -> None:
        """A running spell that ends forgets its confirmation."""
        agent = change.agent
        if agent.status is not Status.RUNNING or self._confirmed.get(agent.name) != agent.id:
            self._confirmed.pop(agent.name, None)

    def forgotten(self, name: str) -> None:
        """An agent no longer tracked keeps nothing here."""
        self._confirmed.pop(name, None)

    # ------------------------------------------------------------- reading
    def answers(self, agent: Agent) -> bool:
        """Whether nothing more than running is needed: no usable ready-port label, or its
        port answered in this running spell. No I/O."""
        if self._confirmed.get(agent.name) == agent.id:
            return True
        return self._port(agent) is None

    def _port(self, agent: Agent) -> int | None:
        try:
            port = ready_port(agent)
        except ValueError as exc:
            self._warn_once(agent.name, f"{exc}; ready when it runs")
            return None
        if port is not None and agent.kind is Kind.SERVICE:
            self._warn_once(
                agent.name, f"{READY_PORT_LABEL} applies to containers only: use a healthcheck"
            )
            return None
        return port

    # ------------------------------------------------------------- waiting
    async def wait_answers(self, agent: Agent) -> None:
        """Return once the running agent's ready-port accepts a connection (at once when
        :meth:`answers`); the caller's timeout bounds the wait."""
        if self.answers(agent):
            return
        name = agent.name
        task = self._probes.get(name)
        if task is None or task.done():
            self.probes += 1
            task = asyncio.create_task(self._probe(agent), name=f"idlewatch-ready-port-{name}")
            self._probes[name] = task
        self._waiting[name] = self._waiting.get(name, 0) + 1
        try:
            await asyncio.shield(task)
        finally:
            self._waiting[name] -= 1
            if not self._waiting[name]:
                del self._waiting[name]
                if self._probes.get(name) is task:
                    del self._probes[name]
                if not task.done():  # nobody waits any more: no probe without a waiter
                    await cancel_and_wait(task)

    async def _probe(self, agent: Agent) -> None:
        port = self._port(agent)
        assert port is not None
        info = await self._docker.inspect_container(agent.id)
        address = info.address if info is not None else None
        if address is None:
            self._warn_once(
                agent.name, f"{READY_PORT_LABEL}={port}: the container has no address "
                "(network none?); ready when it runs",
            )  # fmt: skip
        else:
            # (polling: nothing announces that a port listens)
            while True:
                if await _accepts(address, port):
                    break
                await asyncio.sleep(self._probe_every_s)
            logger.debug("agent %s: %s:%d answers", agent.name, address, port)
        self._confirmed[agent.name] = agent.id

    async def close(self) -> None:
        """Cancel and await the probes under way."""
        for task in list(self._probes.values()):
            await cancel_and_wait(task)
        self._probes.clear()

    def _warn_once(self, name: str, message: str) -> None:
        if (name, message) not in self._warned:
            self._warned.add((name, message))
            logger.warning("agent %s: %s", name, message)


async def _accepts(address: str, port: int) -> bool:
    """Whether ``address:port`` accepts a TCP connection now (closed at once)."""
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            _reader, writer = await asyncio.open_connection(address, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


__all__ = ["READY_PORT_LABEL", "ReadyPorts", "ready_port"]
