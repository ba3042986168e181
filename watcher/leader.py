"""Several replicas, one actor: a lease in the shared database says who leads.

Every replica watches the engine and serves the API and the feed; only the leader runs
the idle sweep, writes dead letters and agent rows, and merges the activity that other
replicas and ``idlewatch node`` processes report through the store.

The lease has a time to live of 80 % of ``leader_lease`` and is renewed (or, by a
follower, tried) every 20 % of it, so a dead leader is replaced within ``leader_lease``.
The database's clock decides expiry; the leader trusts its lease only until its own
monotonic clock says the lease it was granted could have run out, measured from before
the request was sent, so a paused or cut-off leader stops acting before anyone else
can start.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from .errors import StoreError
from .models import ActivityReport, Kind
from .ports import Store
from .tasks import cancel_and_wait
from .tracker import Tracker

logger = logging.getLogger(__name__)

ROLE = "leader"
#: a node's report of these means its running tasks changed: the task list has the count
TASK_EVENTS = frozenset({"start", "die", "destroy", "resync"})
TTL_SHARE = 0.8
RENEW_SHARE = 0.2
#: activity reports are read again for this long (writes may commit out of order)
REREAD_MARGIN = timedelta(seconds=5)


class Leadership:
    """Owns the lease task; ``is_leader`` says whether this replica may act right now."""

    def __init__(
        self,
        store: Store,
        replica_id: str,
        lease_s: float,
        *,
        on_change: Callable[[bool], None] = lambda leading: None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self.replica_id = replica_id
        # the lease names this process, not only its replica_id: two processes started
        # with the same replica_id must not both believe they hold it
        self._token = f"{replica_id}#{secrets.token_hex(4)}"
        self._ttl_s = lease_s * TTL_SHARE
        self._every_s = lease_s * RENEW_SHARE
        self._on_change = on_change
        self._monotonic = monotonic
        self._valid_until = 0.0
        self._was_leader = False
        self._task: asyncio.Task[None] | None = None
        self.holder: str | None = None  # who leads, as last read from the store
        self.last_error: str | None = None

    @property
    def is_leader(self) -> bool:
        """True while the lease this replica holds is certainly still valid."""
        return self._monotonic() < self._valid_until

    def start(self) -> None:
        """Start the lease task (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="idlewatch-leadership")

    async def close(self) -> None:
        """Stop renewing and hand the lease over at once if this replica holds it."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        if self.is_leader:
            self._valid_until = 0.0
            try:
                async with asyncio.timeout(self._every_s):
                    await self._store.release_lease(ROLE, self._token)
                self.holder = None
                logger.info("leadership released by %s (shutting down)", self.replica_id)
            except (StoreError, TimeoutError) as exc:
                logger.warning("could not release the leadership (it expires): %s", exc)
        self._notify(closing=True)

    async def _run(self) -> None:
        while True:
            try:
                await self.try_once()
            except Exception:  # the lease loop must outlive any one bad attempt
                logger.exception("leadership attempt failed")
            await asyncio.sleep(self._every_s)

    async def try_once(self) -> bool:
        """Take or renew the lease once; returns whether this replica leads."""
        asked_at = self._monotonic()
        try:
            async with asyncio.timeout(self._ttl_s):  # an answer later than that is no use
                holder, _expires = await self._store.acquire_lease(
                    ROLE, self._token, self._ttl_s
                )
        except (StoreError, TimeoutError) as exc:
            # keep what was granted: it runs out on its own by our clock
            if self.last_error is None:
                logger.warning("leadership: the database does not answer: %s", exc)
            self.last_error = str(exc)
        else:
            self.last_error = None
            self.holder = holder.partition("#")[0]  # the holder's replica_id
            self._valid_until = asked_at + self._ttl_s if holder == self._token else 0.0
        self._notify()
        return self.is_leader

    def _notify(self, *, closing: bool = False) -> None:
        leading = self.is_leader
        if leading != self._was_leader:
            self._was_leader = leading
            if not closing:  # on shutdown the release line above said it
                logger.info(
                    "replica %s %s",
                    self.replica_id,
                    "is now the leader"
                    if leading
                    else f"follows (leader: {self.holder or 'none'})",
                )
            self._on_change(leading)


class ActivityMerger:
    """The leader's side of activity reports: newer use seen elsewhere counts here too."""

    def __init__(self, store: Store, tracker: Tracker, refresh_service: Callable[[str], None]):
        self._store = store
        self._tracker = tracker
        self._refresh_service = refresh_service
        self._since: datetime | None = None
        self._running: dict[tuple[str, str], int] = {}  # (agent, source) -> tasks reported

    async def merge_once(self) -> int:
        """Read the reports written since the last read and apply them; how many counted.

        The cursor is the store's own clock (``reported_at``), so neither the sources'
        clocks nor a source that reconnects after a long cut matter; it is moved back by
        a margin for writes that commit out of order (applying a report twice changes
        nothing).
        """
        reports = await self._store.load_activity(self._since)
        stamps = [r.reported_at for r in reports if r.reported_at is not None]
        if stamps:
            newest = max(stamps) - REREAD_MARGIN
            self._since = newest if self._since is None else max(self._since, newest)
        return sum(self._apply(report) for report in reports)

    def _apply(self, report: ActivityReport) -> int:
        agent = self._tracker.get(report.agent)
        if agent is None:
            return 0
        key = (report.agent, report.source)
        if agent.kind is Kind.SERVICE and report.source.startswith("node:"):
            before = self._running.get(key)
            self._running[key] = report.running
            if before != report.running and (before is not None or report.event in TASK_EVENTS):
                # tasks started or died on a node: the manager's task list has the count
                self._refresh_service(agent.id)
        if report.last_activity is None:
            return 0
        return int(
            self._tracker.note_activity(
                report.agent, report.last_activity, reason=f"activity on {report.source}"
            )
        )
