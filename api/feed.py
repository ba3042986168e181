"""The live feed's fan-out, shared by the websocket (api/ws.py) and the event stream
(api/sse.py): a snapshot, then every change in order.

One fan-out task per app takes the changes queued since its last turn, serializes each
once, frames them once per kind of client (RFC 6455 text frames, or server-sent events in
HTTP chunks) and writes them to every client's transport in one write: a burst of changes
costs one send per client, not one per change and client (bench/load_figures.py: the
fan-out was two thirds of serve's time under a burst of touches). A client whose token is
limited to some agents gets only theirs (its frames are built for it alone). What keeps one
client from delaying the others: before each write the client's unsent bytes are checked,
and a client above ``ws_max_buffer_bytes`` (one that stopped reading) is aborted, never
awaited; a write never waits on a drain. A client that just connected gets its snapshot
(or what it missed) first while changes queue for it (at most ``ws_queue_size``).

Every change gets a number, ``seq``, in the order the feed sent it; the last
``events_replay`` changes are kept in a ring, so that an event-stream client that comes
back with ``Last-Event-ID`` gets exactly what it missed. Ids are ``<epoch>-<seq>``, the
epoch telling this process's ids from a previous one's (those get a fresh snapshot).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import orjson
from aiohttp import web
from idlewatch import Agent, SubscriberLagged, Watcher
from idlewatch.models import Change
from idlewatch.tasks import cancel_and_wait

from .render import AgentJson, health_json

logger = logging.getLogger(__name__)

FEED_QUEUE = 100_000  # the fan-out task's own hub queue
FEED_BATCH = 100  # changes written to a client at once, at most (about 50 KB)


@dataclass(frozen=True, slots=True)
class Message:
    """One message of the feed: its JSON, the agent it is about (None: for everyone) and,
    for a change, its number."""

    payload: bytes
    agent: Agent | None = None
    seq: int | None = None


#: how one kind of client frames a run of messages for its transport
Framer = Callable[[Sequence[Message], str], bytes]


class Client:
    """One connected feed client and what waits for it while its snapshot is sent."""

    def __init__(
        self,
        request: web.Request,
        framer: Framer,
        backlog_max: int,
        sees: Callable[[Agent], bool] | None,
        *,
        restart: Callable[[], Awaitable[None]],
        on_abort: Callable[[], None] = lambda: None,
        redact: Callable[[bytes], bytes] | None = None,
    ) -> None:
        #: a limited token's: takes out of a message what it may not see (api/access.py)
        self.redact = redact
        self.request = request
        self.framer = framer
        self.sees = sees
        self.ready = False
        self.backlog: deque[Message] = deque()
        self.backlog_max = backlog_max
        self.dropped = False
        self.closing = False  # set when its handler ends it (no more writes)
        #: ends the connection so that the client starts over (the feed overflowed)
        self.restart = restart
        self._on_abort = on_abort

    def wants(self, msg: Message) -> bool:
        """Whether this client is to get ``msg`` (a limited token sees only its agents)."""
        return self.sees is None or msg.agent is None or self.sees(msg.agent)

    def mine(self, msgs: Sequence[Message]) -> list[Message]:
        """The messages this client gets, as it may see them."""
        wanted = [m for m in msgs if self.wants(m)]
        if self.redact is None:
            return wanted
        return [Message(self.redact(m.payload), m.agent, m.seq) for m in wanted]

    def abort(self, why: str) -> None:
        """Drop the client at once (a close would wait on a drain that never comes)."""
        if self.dropped:
            return
        self.dropped = True
        logger.warning("dropping a feed client: %s", why)
        self._on_abort()
        if self.request.transport is not None:
            self.request.transport.abort()


class Feed:
    """Owns the fan-out tasks of one app (started by the first client, stopped at cleanup)."""

    def __init__(self, max_buffer_bytes: int, render: AgentJson, replay: int = 1000) -> None:
        self.max_buffer_bytes = max_buffer_bytes
        self._render = render
        self.clients: set[Client] = set()
        self.epoch = f"{time.time_ns():x}"
        self.seq = 0  # the number of the last change sent
        self.ring: deque[Message] = deque(maxlen=replay)
        self._task: asyncio.Task[None] | None = None
        self._health_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------- snapshots
    def snapshot(
        self, watcher: Watcher, now: datetime, sees: Callable[[Agent], bool] | None
    ) -> bytes:
        """The fleet (what ``sees`` lets through) and the health, as one message."""
        agents = watcher.agents()
        if sees is not None:
            agents = [a for a in agents if sees(a)]
        listing = self._render.listing(agents, now, watcher.view.explain, complete=True)
        health = health_json(watcher.health())
        return orjson.dumps({"type": "snapshot", "agents": listing, "health": health})

    def health(self, watcher: Watcher) -> bytes:
        """The health now, as the feed sends it."""
        return orjson.dumps({"type": "health", **health_json(watcher.health())})

    def event_id(self, seq: int) -> str:
        """The id of the change numbered ``seq`` (or of a snapshot taken after it)."""
        return f"{self.epoch}-{seq}"

    def since(self, last_id: str) -> list[Message] | None:
        """The changes after ``last_id``, or None when they are not all in the ring (a
        snapshot is due: an id of another process, one too old, or not one of ours)."""
        epoch, _, number = last_id.strip().partition("-")
        if epoch != self.epoch or not number.isdigit():
            return None
        seq = int(number)
        oldest = self.ring[0].seq if self.ring else self.seq + 1
        assert oldest is not None
        if seq > self.seq or seq < oldest - 1:
            return None
        return [m for m in self.ring if m.seq is not None and m.seq > seq]

    # ------------------------------------------------------------- the tasks
    def ensure_started(self, watcher: Watcher) -> None:
        """Start the fan-out tasks on the first client (the watcher may come from a parent app)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(watcher), name="idlewatch-feed")
            self._health_task = asyncio.create_task(
                self._run_health(watcher), name="idlewatch-feed-health"
            )

    async def close(self) -> None:
        """Stop the fan-out tasks."""
        await cancel_and_wait(self._health_task)
        await cancel_and_wait(self._task)
        self._task = self._health_task = None

    async def _run_health(self, watcher: Watcher) -> None:
        """Tell every client when readiness changes (an engine outage, its end...): a
        dashboard must not show "live" and an empty fleet while the engine is unreachable.
        The first value goes out too: the health may have changed between a snapshot and
        this task's start, and a repeated one is harmless."""
        async for health in watcher.health_changes():
            self.fan_out([Message(orjson.dumps({"type": "health", **health_json(health)}))])

    async def _run(self, watcher: Watcher) -> None:
        while True:
            try:
                async for batch in watcher.change_batches(FEED_QUEUE, FEED_BATCH):
                    now = watcher.clock.now()
                    msgs = []
                    for change in batch:
                        self.seq += 1
                        payload = self._change(change, now, watcher)
                        msgs.append(Message(payload, change.agent, self.seq))
                    self.ring.extend(msgs)
                    self.fan_out(msgs)
            except SubscriberLagged:
                # the feed itself fell behind: every client may have missed changes, so
                # ask them to start over (and get a fresh snapshot) rather than lie
                logger.error("the feed overflowed; asking every client to reconnect")
                self.ring.clear()
                self.epoch = f"{time.time_ns():x}"  # no id from before is resumable
                for client in list(self.clients):
                    await client.restart()

    def _change(self, change: Change, now: datetime, watcher: Watcher) -> bytes:
        return orjson.dumps(
            {
                "type": "change",
                "agent": self._render(change.agent, now, watcher.view.explain),
                "previous_status": change.previous_status.value if change.previous_status else None,
                "reason": change.reason,
            }
        )

    def fan_out(self, msgs: Sequence[Message]) -> None:
        """Write ``msgs`` to every client: their frames are built once per kind of client
        (and for each limited client alone) and go out in one write per client; never waits."""
        shared: dict[Framer, bytes] = {}
        for client in list(self.clients):
            if client.dropped or client.closing:
                continue
            if not client.ready:
                client.backlog.extend(client.mine(msgs))
                if len(client.backlog) > client.backlog_max:
                    client.abort("too many changes queued before its snapshot was taken")
                continue
            transport = client.request.transport
            if transport is None or transport.is_closing():
                continue  # closing: its handler's finally takes it out of the set
            if transport.get_write_buffer_size() > self.max_buffer_bytes:
                client.abort(f"more than {self.max_buffer_bytes} bytes unread")
                continue
            if client.sees is None:
                frames = shared.get(client.framer)
                if frames is None:
                    frames = shared[client.framer] = client.framer(msgs, self.epoch)
            else:
                mine = client.mine(msgs)
                if not mine:
                    continue
                frames = client.framer(mine, self.epoch)
            transport.write(frames)


FEED: web.AppKey[Feed] = web.AppKey("feed", Feed)


async def feed_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the fan-out tasks end with the app."""
    yield
    await app[FEED].close()


__all__ = ["FEED", "FEED_BATCH", "FEED_QUEUE", "Client", "Feed", "Framer", "Message", "feed_ctx"]
