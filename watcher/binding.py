"""One database, one engine: replicas that share a database must watch the same Docker
engine, or managers of one Swarm.

Policy (read this first):
- Replicas that watch different engines and share a database fail silently otherwise: the
  leader cannot see the other host's containers (its idle agents never sleep), and each
  dead-letters the other's agents. So each replica records which engine it watches (id,
  host name, Swarm cluster) at every lease round, stamped by the store's clock.
- At start, once the engine answers, the other replicas that recorded within
  ``stale_after_s`` are compared: another engine that is not a manager of this one's
  Swarm is :class:`DatabaseShared`, one error naming both engines and the remedy, and
  ``serve`` refuses to start. ``idlewatch check`` says the same.
- An engine that answers only later is compared then: a mismatch holds every action back
  (no lease, no sweep) and is readiness's reason, logged once.
- A host that was rebuilt (a new engine id, the old engine gone) takes its database over
  by itself: the old engine's records go stale after ``stale_after_s`` (a log line names
  it). Nothing to delete by hand.
"""

from __future__ import annotations

import asyncio
import logging

from .errors import StoreError, WatcherError
from .models import EngineInfo, EngineRecord
from .ports import DockerGateway, EngineRecords

logger = logging.getLogger(__name__)

#: a replica's record older than this (seconds) is history: its engine is gone
MIN_STALE_AFTER_S = 60.0


class DatabaseShared(WatcherError):
    """Another replica on this database watches another engine."""

    code = "database_shared"


def stale_after_s(leader_lease_s: float) -> float:
    """How long a replica's record of its engine stays current: several lease rounds."""
    return max(MIN_STALE_AFTER_S, 4 * leader_lease_s)


def mismatch(
    engine: EngineInfo, address: str, others: list[EngineRecord], database: str, stale_s: float
) -> str | None:
    """The error when a current record names another engine (None: all is well)."""
    for other in others:
        if other.seen_s_ago <= stale_s and not other.compatible(engine):
            return (
                f"database {database} is used by replica {other.replica}, which watches "
                f"another Docker engine: {other.address} on {other.engine_name or '?'} (id "
                f"{other.engine_id}, data {other.root_dir}, last seen {other.seen_s_ago:.0f}s "
                f"ago); this replica watches {address} on {engine.name or '?'} (id "
                f"{engine.id}, data {engine.root_dir}). Replicas that "
                "share a database must watch one engine, or be managers of one Swarm: give "
                "each host a database of its own (IDLEWATCH_DATABASE_URL), or join the hosts "
                f"in a Swarm. A rebuilt host takes its database over by itself once the old "
                f"engine's replicas have been gone for {stale_s:.0f}s."
            )
    return None


class EngineBinding:
    """Checks and records which engine this replica watches (see the module docstring)."""

    def __init__(
        self,
        records: EngineRecords,
        docker: DockerGateway,
        replica_id: str,
        *,
        database: str,
        stale_after_s: float,
    ) -> None:
        self._records = records
        self._docker = docker
        self._replica_id = replica_id
        self._database = database
        self._stale_after_s = stale_after_s
        self.engine: EngineInfo | None = None
        #: why this replica may not act on this database (None: it may)
        self.conflict: str | None = None
        self._taken_over: set[str] = set()  # replicas of a gone engine, named once

    async def check_at_start(self, timeout_s: float = 5.0) -> None:
        """Compare with the other replicas once the engine answers: DatabaseShared when
        another current one watches another engine. An engine that does not answer now
        is compared when it does (:meth:`renew`)."""
        try:
            async with asyncio.timeout(timeout_s):
                self.engine = await self._docker.describe()
        except (WatcherError, TimeoutError) as exc:
            logger.info("which engine this is will be checked once it answers: %s", exc)
            return
        await self._compare()
        if self.conflict is not None:
            raise DatabaseShared(self.conflict)

    async def renew(self) -> bool:
        """Each lease round: learn the engine if need be, record it, compare; whether this
        replica may act. Store errors are the lease's to report: the last verdict stands."""
        if self.engine is None:
            try:
                async with asyncio.timeout(5):
                    self.engine = await self._docker.describe()
            except (WatcherError, TimeoutError):
                return self.conflict is None
        try:
            await self._compare()
        except StoreError as exc:
            logger.debug("cannot compare engines now: %s", exc)
        return self.conflict is None

    async def _compare(self) -> None:
        engine = self.engine
        assert engine is not None
        others = await self._records.others(self._replica_id)
        conflict = mismatch(
            engine, self._docker.address, others, self._database, self._stale_after_s
        )
        if conflict is not None and self.conflict is None:
            logger.error("%s", conflict)
        elif conflict is None and self.conflict is not None:
            logger.info("the replicas on this database watch one engine again")
        self.conflict = conflict
        if conflict is None:
            for old in others:
                if not old.compatible(engine) and old.replica not in self._taken_over:
                    self._taken_over.add(old.replica)
                    logger.info(
                        "taking database %s over from replica %s (engine %s, %s, gone "
                        "for %.0fs)", self._database, old.replica, old.engine_name,
                        old.engine_id, old.seen_s_ago,
                    )  # fmt: skip
            await self._records.record(self._replica_id, engine, self._docker.address)


__all__ = ["DatabaseShared", "EngineBinding", "mismatch", "stale_after_s"]
