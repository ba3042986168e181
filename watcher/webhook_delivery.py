"""Webhook delivery: the leader POSTs the outbox's rows to their endpoints.

Policy (read this first):
- Only the leader delivers (a follower's task idles); a new leader goes on from the
  outbox, where every row not yet accepted is still ``pending``.
- Per endpoint, in outbox order: a row is sent only once every row before it was accepted
  or given up on. A 2xx answer is accepted; anything else (an error status, a refused
  connection, no answer within ``POST_TIMEOUT_S``) is tried again after a capped backoff
  (1 s doubling up to ``BACKOFF_MAX_S``) until the row is ``webhook_max_age`` old, then
  it is marked ``failed`` and the next goes. So a receiver sees each delivery at least
  once (a crash between its 2xx and our mark sends it again), in order; the body's ``id``
  and the ``X-Idlewatch-Delivery`` header let it drop a repeat.
- Endpoints do not wait on each other (one task per round each). New rows poke the
  deliverer when the writer commits them; it also looks every ``POLL_S`` (rows another
  replica wrote, a new leadership).
- Headers: ``Content-Type: application/json``, ``X-Idlewatch-Delivery: <id>``,
  ``X-Idlewatch-Event: <kind>``, and with a secret ``X-Idlewatch-Signature:
  sha256=<hex>`` (HMAC-SHA256 of the raw body).
- Rows accepted or failed are kept ``KEPT_S`` (for ``GET /api/webhooks/deliveries``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

import aiohttp

from .errors import StoreError
from .models import Delivery
from .ports import Clock, OutboxStore
from .tasks import cancel_and_wait
from .webhooks import Endpoint

logger = logging.getLogger(__name__)

POLL_S = 2.0
POST_TIMEOUT_S = 10.0
BACKOFF_MAX_S = 300.0
#: rows read at once per endpoint
HEADS = 100
#: accepted and failed rows are kept this long
KEPT_S = 7 * 86400.0
USER_AGENT = "idlewatch-webhooks"


def backoff_s(attempts: int) -> float:
    """The wait after the ``attempts``-th failed try: 1 s, 2 s, 4 s ... at most 5 min."""
    return min(BACKOFF_MAX_S, 2.0 ** max(0, attempts - 1))


class WebhookDelivery:
    """Owns the delivery task (started by :meth:`start`, stopped by :meth:`close`)."""

    def __init__(
        self,
        outbox: OutboxStore,
        endpoints: list[Endpoint],
        is_leader: Callable[[], bool],
        clock: Clock,
        *,
        max_age_s: float,
    ) -> None:
        self._outbox = outbox
        self._endpoints = endpoints
        self._is_leader = is_leader
        self._clock = clock
        self._max_age = timedelta(seconds=max_age_s)
        self._poked = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._failing: str | None = None  # "store" or "bug" while rounds fail
        self._pruned_at: datetime | None = None
        self.sent = 0
        self.retried = 0
        self.failed = 0
        self.pending = 0  # in the outbox, as of the last round

    def poke(self) -> None:
        """New rows were committed: look now."""
        self._poked.set()

    def start(self) -> None:
        """Start the task (nothing to do without endpoints)."""
        if self._task is None and self._endpoints:
            self._task = asyncio.create_task(self._run(), name="idlewatch-webhooks")

    async def close(self) -> None:
        """Stop the task and close its connections."""
        await cancel_and_wait(self._task)
        self._task = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _run(self) -> None:
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=POST_TIMEOUT_S),
            headers={"User-Agent": USER_AGENT},
        )
        wait_s = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._poked.wait()
            self._poked.clear()
            wait_s = POLL_S
            if not self._is_leader():
                continue
            try:
                wait_s = await self.deliver_once()
                if self._failing:
                    logger.info("webhook deliveries go on")
                self._failing = None
            except StoreError as exc:
                if self._failing is None:
                    logger.warning("webhook deliveries wait for the database: %s", exc)
                self._failing = "store"
            except Exception:  # a bug: logged once while it recurs, and the task goes on
                if self._failing != "bug":
                    logger.exception("webhook delivery failed; retrying every %g s", POLL_S)
                self._failing = "bug"

    async def deliver_once(self) -> float:
        """One round: every endpoint's pending rows, in order, until one must wait; how
        long until the earliest retry is due (at most ``POLL_S``)."""
        now = self._clock.now()
        await self._orphans(now)
        # every endpoint's sender ends before the round does (an error in one cancels the
        # others): the next round never runs two senders of one endpoint
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(self._endpoint(e)) for e in self._endpoints]
        await self._prune(now)
        self.pending = await self._outbox.pending_count()
        return min([POLL_S, *(t.result() for t in tasks)])

    async def _endpoint(self, endpoint: Endpoint) -> float:
        """Deliver an endpoint's pending rows in order until one must wait; how long. The
        accepted ones are marked in one statement per batch (a crash before it sends them
        again: at least once)."""
        while True:
            heads = await self._outbox.heads([endpoint.key], HEADS)
            if not heads:
                return POLL_S
            accepted: list[int] = []
            try:
                wait_s = await self._batch(endpoint, heads, accepted)
            finally:
                if accepted:
                    await self._outbox.sent(accepted, self._clock.now())
                    self.sent += len(accepted)
            if wait_s is not None:
                return wait_s

    async def _batch(
        self, endpoint: Endpoint, heads: list[Delivery], accepted: list[int]
    ) -> float | None:
        """Send ``heads`` in order, noting the accepted in ``accepted``; None when all
        were, else how long until the first that failed (or waits) is due."""
        for row in heads:
            if not self._is_leader():  # the lease ran out meanwhile: the new leader's now
                return POLL_S
            now = self._clock.now()
            if row.next_at is not None and row.next_at > now:
                return (row.next_at - now).total_seconds()
            error = await self._post(endpoint, row)
            attempts = row.attempts + 1
            if error is None:
                accepted.append(row.seq)
            elif now - row.created_at >= self._max_age:
                await self._outbox.failed(row.seq, attempts, now, error)
                self.failed += 1
                logger.warning(
                    "webhook delivery %s to %s failed for good after %d tries: %s",
                    row.delivery_id, endpoint.where, attempts, error,
                )  # fmt: skip
            else:
                delay = backoff_s(attempts)
                await self._outbox.retry(row.seq, attempts, now + timedelta(seconds=delay), error)
                self.retried += 1
                if attempts == 1:
                    logger.info(
                        "webhook delivery to %s failed, retrying: %s", endpoint.where, error
                    )
                return delay
        return None

    async def _post(self, endpoint: Endpoint, row: Delivery) -> str | None:
        """Send one row; None when the endpoint accepted it, else why not."""
        assert self._http is not None
        headers = {
            "Content-Type": "application/json",
            "X-Idlewatch-Delivery": row.delivery_id,
            "X-Idlewatch-Event": row.event,
        }
        signature = endpoint.sign(row.body)
        if signature is not None:
            headers["X-Idlewatch-Signature"] = signature
        try:
            async with self._http.post(endpoint.url, data=row.body, headers=headers) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    return None
                return f"HTTP {resp.status}"
        except TimeoutError:
            return f"no answer within {POST_TIMEOUT_S:g} s"
        except aiohttp.ClientError as exc:
            return str(exc) or type(exc).__name__

    async def _orphans(self, now: datetime) -> None:
        """Rows of endpoints no longer configured are given up on (once, named)."""
        for row in await self._outbox.orphans([e.key for e in self._endpoints]):
            await self._outbox.failed(row.seq, row.attempts, now, "endpoint no longer configured")
            self.failed += 1

    async def _prune(self, now: datetime) -> None:
        if self._pruned_at is None or now - self._pruned_at > timedelta(hours=1):
            self._pruned_at = now
            await self._outbox.prune(now - timedelta(seconds=KEPT_S))


__all__ = ["BACKOFF_MAX_S", "POLL_S", "WebhookDelivery", "backoff_s"]
