"""The leader lease among replicas sharing one database: who may act right now.

The lease has a time to live of 80 % of ``leader_lease`` and is renewed (or, by a
follower, tried) every 20 % of it, so a dead leader is replaced within ``leader_lease``.
The database's clock decides expiry; the leader trusts its lease only until its own
monotonic clock says the lease it was granted could have run out, measured from before
the request was sent, so a paused or cut-off leader stops acting before anyone else
can start. :attr:`Leadership.is_leader` is the one source of truth: the writer, the sweep
and the lifecycle ask it at the moment they act.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable

from .errors import StoreError
from .ports import LeaseStore

logger = logging.getLogger(__name__)

ROLE = "leader"
TTL_SHARE = 0.8
RENEW_SHARE = 0.2


class Leadership:
    """The lease this replica holds or tries for; no task of its own (the replicas
    component renews it)."""

    def __init__(
        self,
        leases: LeaseStore,
        replica_id: str,
        lease_s: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._leases = leases
        self.replica_id = replica_id
        # the lease names this process, not only its replica_id: two processes started
        # with the same replica_id must not both believe they hold it
        self._token = f"{replica_id}#{secrets.token_hex(4)}"
        self._ttl_s = lease_s * TTL_SHARE
        self.renew_every_s = lease_s * RENEW_SHARE
        self._monotonic = monotonic
        self._valid_until = 0.0
        #: counts the leases granted after none was held (by this replica's clock): a lease
        #: that lapsed and was granted again starts a new term, even between two looks
        self.term = 0
        self.holder: str | None = None  # who leads, as last read from the store
        self.last_error: str | None = None

    @property
    def is_leader(self) -> bool:
        """True while the lease this replica holds is certainly still valid."""
        return self._monotonic() < self._valid_until

    async def try_once(self) -> bool:
        """Take or renew the lease once; returns whether this replica leads."""
        asked_at = self._monotonic()
        try:
            async with asyncio.timeout(self._ttl_s):  # an answer later than that is no use
                holder, _expires = await self._leases.acquire_lease(ROLE, self._token, self._ttl_s)
        except (StoreError, TimeoutError) as exc:
            # keep what was granted: it runs out on its own by our clock
            if self.last_error is None:
                logger.warning("leadership: the database does not answer: %s", exc)
            self.last_error = str(exc)
        else:
            self.last_error = None
            self.holder = holder.partition("#")[0]  # the holder's replica_id
            if holder != self._token:
                self._valid_until = 0.0
            else:
                # not held for a moment, by our clock: a new term. That is a lease asked
                # for after it ran out, and also one asked for in time whose answer came
                # after (a slow database, a starved loop): in between, is_leader said no,
                # and the writer dropped (or never queued) rows that only a rewrite of the
                # record brings back (bench/RESULTS.md, 2026-12-06: 313 rows stale in a
                # loaded ingest run)
                if self._monotonic() >= self._valid_until:
                    self.term += 1
                self._valid_until = asked_at + self._ttl_s
        return self.is_leader

    async def release(self) -> None:
        """Stop leading now and hand the lease over at once if this replica holds it."""
        if not self.is_leader:
            return
        self._valid_until = 0.0
        try:
            async with asyncio.timeout(self.renew_every_s):
                await self._leases.release_lease(ROLE, self._token)
            self.holder = None
            logger.info("leadership released by %s (shutting down)", self.replica_id)
        except (StoreError, TimeoutError) as exc:
            logger.warning("could not release the leadership (it expires): %s", exc)
