"""Fan-out of changes to subscribers, each with its own bounded queue; publishing never waits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from .errors import SubscriberLagged
from .models import Change

logger = logging.getLogger(__name__)

_CLOSED = None


class Subscription:
    """One subscriber's queue; iterate it for changes."""

    def __init__(self, hub: Hub, maxsize: int) -> None:
        self._hub = hub
        self.queue: asyncio.Queue[Change | None] = asyncio.Queue(maxsize)
        self.lagged = False

    def __aiter__(self) -> AsyncIterator[Change]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Change]:
        try:
            while True:
                item = await self.queue.get()
                if item is _CLOSED:
                    self._raise_if_lagged()
                    return
                yield item
        finally:
            self._hub.unsubscribe(self)

    async def batches(self, max_batch: int = 1000) -> AsyncIterator[list[Change]]:
        """The same changes in lists: each waits for one, then takes what else is queued
        already (at most ``max_batch``), never waiting for more (a consumer that writes
        what a burst published at once, as the websocket feed does)."""
        try:
            while True:
                batch: list[Change] = []
                item = await self.queue.get()
                while item is not _CLOSED:
                    batch.append(item)
                    if len(batch) >= max_batch or self.queue.empty():
                        break
                    item = self.queue.get_nowait()
                if batch:
                    yield batch
                if item is _CLOSED:
                    self._raise_if_lagged()
                    return
        finally:
            self._hub.unsubscribe(self)

    def _raise_if_lagged(self) -> None:
        """At the end of the iteration: a subscriber dropped for lagging is told so."""
        if self.lagged:
            raise SubscriberLagged(
                f"this subscriber fell more than {self.queue.maxsize} changes behind and was "
                "dropped"
            )

    def close(self) -> None:
        """End the iteration (after what is already queued)."""
        self._hub.unsubscribe(self)
        self._push_close()

    def _push_close(self) -> None:
        if self.queue.full():
            _drain_one(self.queue)
        self.queue.put_nowait(_CLOSED)


def _drain_one(queue: asyncio.Queue[Change | None]) -> None:
    with contextlib.suppress(asyncio.QueueEmpty):
        queue.get_nowait()


class Hub:
    """Publishes each change to every subscriber without ever blocking the publisher."""

    def __init__(self, queue_size: int = 10_000) -> None:
        self._queue_size = queue_size
        self._subs: set[Subscription] = set()
        self.published = 0
        self.dropped_subscribers = 0

    def subscribe(self, queue_size: int | None = None) -> Subscription:
        """A new subscription receiving every change published from now on."""
        sub = Subscription(self, queue_size or self._queue_size)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop delivering to ``sub`` (idempotent)."""
        self._subs.discard(sub)

    @property
    def subscribers(self) -> int:
        """How many subscribers are attached."""
        return len(self._subs)

    def changed(self, change: Change) -> None:
        """The change bus: publish every change."""
        self.publish(change)

    def forgotten(self, name: str) -> None:
        """The change bus: subscribers learn of removals through changes, not this."""

    def publish(self, change: Change) -> None:
        """Queue ``change`` for every subscriber; one that is full is dropped and told so."""
        self.published += 1
        for sub in list(self._subs):
            try:
                sub.queue.put_nowait(change)
            except asyncio.QueueFull:
                logger.warning(
                    "dropping a changes subscriber that is %d changes behind", sub.queue.maxsize
                )
                self.dropped_subscribers += 1
                sub.lagged = True
                self._subs.discard(sub)
                _drain_one(sub.queue)
                sub.queue.put_nowait(_CLOSED)

    def close(self) -> None:
        """End every subscription."""
        for sub in list(self._subs):
            sub.close()
