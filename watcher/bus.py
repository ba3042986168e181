"""The tracker's one output: a synchronous change bus and the listeners' interface.

The events reader applies events synchronously, so a listener never awaits: the writer
queues a row, the hub queues for subscribers, the signal wakes ``wait_for`` callers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from .models import Agent, Change

T = TypeVar("T")


class AgentLookup(Protocol):
    """Where an agent is read by name (the tracker)."""

    def get(self, name: str) -> Agent | None:
        """The agent, if tracked."""
        ...


class ChangeListener(Protocol):
    """Something told about every change of the tracked table (must not block)."""

    def changed(self, change: Change) -> None:
        """An agent was added or changed."""
        ...

    def forgotten(self, name: str) -> None:
        """An agent is no longer tracked (its row goes)."""
        ...


class ChangeBus:
    """Hands each change to every listener, in the order given at construction."""

    def __init__(self, listeners: Sequence[ChangeListener]) -> None:
        self._listeners = tuple(listeners)

    def add(self, listener: ChangeListener) -> None:
        """Tell ``listener`` too, after the others (one that reads the table it follows)."""
        self._listeners = (*self._listeners, listener)

    def changed(self, change: Change) -> None:
        """Tell every listener."""
        for listener in self._listeners:
            listener.changed(change)

    def forgotten(self, name: str) -> None:
        """Tell every listener."""
        for listener in self._listeners:
            listener.forgotten(name)


class ChangeSignal:
    """Wakes the callers that wait for a condition on the table (``Watcher.wait_for``).

    A listener like the others; with nobody waiting it costs one attribute check.
    """

    def __init__(self) -> None:
        self._event: asyncio.Event | None = None

    def changed(self, change: Change) -> None:
        """Wake the waiters: each re-checks its own condition."""
        self._wake()

    def forgotten(self, name: str) -> None:
        """Wake the waiters (an agent that went may be what they wait for)."""
        self._wake()

    def _wake(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None

    async def wait_until(self, read: Callable[[], T], done: Callable[[T], bool]) -> T:
        """Wait until ``done(read())`` holds, re-checking after every change; the last read."""
        while not done(value := read()):
            if self._event is None:
                self._event = asyncio.Event()
            await self._event.wait()
        return value


class AgentWaits:
    """Waits for a condition on one agent, woken by the change signal (no polling): what
    every operation that answers "once it runs" waits on."""

    def __init__(self, signal: ChangeSignal, agents: AgentLookup) -> None:
        self._signal = signal
        self._agents = agents

    async def wait_for(
        self, name: str, predicate: Callable[[Agent | None], bool], timeout_s: float
    ) -> Agent | None:
        """Wait until ``predicate(agent)`` holds; TimeoutError after ``timeout_s`` (its
        message shows the agent as last seen)."""
        try:
            async with asyncio.timeout(timeout_s):
                return await self._signal.wait_until(lambda: self._agents.get(name), predicate)
        except TimeoutError:
            raise TimeoutError(
                f"{name!r} did not reach the state waited for within {timeout_s:g}s; "
                f"last seen: {self._agents.get(name)}"
            ) from None
