"""Several replicas, one actor: everything about sharing a database with other replicas.

Every replica watches the engine and serves the API and the feed; only the leader runs
the idle sweep, writes dead letters and agent rows. :class:`Replicas` owns the replica
concerns in one place: renewing the lease (:mod:`idlewatch.leader`), merging the
activity that other replicas and ``idlewatch node`` processes report through the store,
sharing this replica's API use, recording what only the leader records, and saying who
leads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta

from .binding import EngineBinding
from .errors import StoreError
from .leader import Leadership
from .models import ActivityReport, Agent, AuditEntry, Kind
from .ports import ActivityStore, Clock
from .tasks import cancel_and_wait, cancelling, in_own_task
from .tracker import Tracker
from .writer import StoreWriter

logger = logging.getLogger(__name__)

#: a node's report of these means its running tasks changed: the task list has the count
TASK_EVENTS = frozenset({"start", "die", "destroy", "resync"})
#: activity reports are read again for this long (writes may commit out of order)
REREAD_MARGIN = timedelta(seconds=5)
#: how often every replica reads activity reported by nodes and other replicas
MERGE_INTERVAL_S = 1.0
#: a store call made on behalf of an API request gives up after this long
STORE_CALL_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class LeaderInfo:
    """Who leads the replicas sharing this database, as this replica knows it."""

    replica: str  # this replica's replica_id
    leader: bool  # whether this replica leads now
    holder: str | None  # the replica holding the lease, as last read (None: none yet)


class ActivityMerger:
    """Newer use seen elsewhere counts here too: the reports read into the tracker."""

    def __init__(
        self, activity: ActivityStore, tracker: Tracker, refresh_service: Callable[[str], None]
    ) -> None:
        self._activity = activity
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
        reports = await self._activity.load_activity(self._since)
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
            self._tracker.note_sessions(report.agent, report.source, report.sessions)
        if report.last_activity is None and report.keep_until is None:
            return 0
        return int(
            self._tracker.note_activity(
                report.agent,
                report.last_activity,
                reason=f"activity on {report.source}",
                keep_until=report.keep_until,
            )
        )


class Replicas:
    """Owns the lease and merge tasks; ``is_leader`` says whether this replica may act."""

    def __init__(
        self,
        leadership: Leadership,
        merger: ActivityMerger,
        tracker: Tracker,
        writer: StoreWriter,
        clock: Clock,
        *,
        session: Callable[[], AbstractAsyncContextManager[None]] | None = None,
        merge_interval_s: float = MERGE_INTERVAL_S,
        binding: EngineBinding | None = None,
        on_lead: Callable[[], None] = lambda: None,
    ) -> None:
        self.leadership = leadership
        #: told when this replica begins to lead (the record of spells is the leader's)
        self._on_lead = on_lead
        self._binding = binding  # one database, one engine: checked at each lease round
        #: the store's session (:meth:`~idlewatch.ports.Store.session`) where a connection
        #: per call is dear: each loop holds one. On SQLite a read every second opened a
        #: connection and its thread, and when nothing else held the file, re-created its
        #: WAL: half of an idle serve's CPU. None: a connection per call (a pool's)
        self._session = session
        self._merger = merger
        self._tracker = tracker
        self._writer = writer
        self._clock = clock
        self._merge_interval_s = merge_interval_s
        #: the leadership term whose record this replica wrote (None: following); to notice
        #: a change, never to decide an action (that asks the lease itself)
        self._term: int | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._merge_failing = False  # (logged once per spell)
        self._said_following = False  # this follower said so (once a spell)

    @property
    def is_leader(self) -> bool:
        """Whether this replica may act right now (the lease, asked now)."""
        return self.leadership.is_leader

    def info(self) -> LeaderInfo:
        """Who leads, as this replica knows it."""
        lead = self.leadership
        return LeaderInfo(lead.replica_id, lead.is_leader, lead.holder)

    async def open(self) -> None:
        """Try the lease once (a lone replica leads before its first event), then start the
        lease and merge tasks (idempotent)."""
        if self._tasks:
            return
        await self.leadership.try_once()
        self._noticed()
        self._tasks = [
            asyncio.create_task(self._lease_loop(), name="idlewatch-leadership"),
            asyncio.create_task(self._merge_loop(), name="idlewatch-merge"),
        ]

    async def close(self) -> None:
        """Stop both tasks and hand the lease over at once (safe to call twice)."""
        tasks, self._tasks = self._tasks, []
        for task in reversed(tasks):
            await cancel_and_wait(task)
        await self.leadership.release()
        self._term = None

    async def merge_once(self) -> int:
        """Count use reported by nodes and other replicas (every second, before each sweep,
        and again under the agent's lock before an idle stop); every replica does, so a
        new leader starts from the newest activity."""
        return await self._merger.merge_once()

    def report_use(self, agent: Agent, event: str) -> None:
        """Queue a report of use seen here (no wait): see :meth:`share_activity`."""
        report = ActivityReport(
            agent.name,
            f"replica:{self.leadership.replica_id}",
            agent.last_activity,
            event,
            self._clock.now(),
            keep_until=agent.keep_until,
        )
        self._writer.put_activity(report)  # the one writer: batched, retried, never lost

    async def share_activity(self, agent: Agent, event: str) -> None:
        """API use is reported through the store, by the leader too: whoever leads next
        must count it (each replica merges every report, so all of them agree)."""
        self.report_use(agent, event)
        await self.published(agent.name)

    async def published(self, name: str) -> None:
        """On a follower, once the reports queued so far are in the database, where the
        leader reads them (at most the store's call timeout); on the leader at once: its own
        tracker has them already, under the agent's lock."""
        if self.is_leader:
            return
        try:
            await self._writer.flush(STORE_CALL_TIMEOUT_S)
        except TimeoutError:
            logger.warning("%s's activity is not in the database yet (it is queued)", name)

    def record_dead_letters(self, agents: list[Agent]) -> None:
        """Audit the agents a resync found gone while recorded running (the leader does)."""
        if not self.is_leader:
            return
        for agent in agents:
            logger.warning("dead letter: %s is now error (%s)", agent.name, agent.error)
            self._writer.put_audit(
                AuditEntry(
                    self._clock.now(), agent.name, "dead_letter", agent.error or "", "reconcile"
                )
            )

    def _noticed(self) -> None:
        """Act on a change of leadership: the record is the leader's to write.

        A new term (leading again, or a lease that lapsed and was granted again between two
        looks, during which the writer dropped rows) rewrites the whole table.
        """
        lead = self.leadership
        term = lead.term if lead.is_leader else None
        if term is None and not self._said_following and lead.holder is not None:
            self._said_following = True  # once, not at every round or sweep
            logger.info("replica %s follows (leader: %s)", lead.replica_id, lead.holder)
        if term == self._term:
            return
        was_leading, self._term = self._term is not None, term
        if term is None:  # rows queued while leading must not land over the new leader's
            if not self._said_following:
                self._said_following = True
                logger.info("replica %s follows (leader: none)", lead.replica_id)
            self._writer.drop_agent_rows()
            return
        self._said_following = False  # leading: a later follow is news again
        if was_leading:
            logger.warning(
                "replica %s leads again after its lease lapsed: rewriting the record",
                lead.replica_id,
            )
        else:
            logger.info("replica %s is now the leader", lead.replica_id)
        for agent in self._tracker.agents.values():  # the record becomes this view, whole
            self._writer.put_agent(agent)
        self._on_lead()

    async def _lease_loop(self) -> None:
        await self._rounds(lambda: self.leadership.renew_every_s, self._lease_round)

    async def _lease_round(self) -> bool:
        try:
            if self._binding is not None and not await self._binding.renew():
                await self.leadership.release()  # it watches another engine: never leads
                return True
            await self.leadership.try_once()  # (it handles the store's errors itself)
        finally:  # (a bug goes on to _rounds, which logs it and goes on)
            self._noticed()
        return self.leadership.last_error is None

    async def _merge_loop(self) -> None:
        await self._rounds(lambda: self._merge_interval_s, self._merge_round)

    async def _merge_round(self) -> bool:
        try:
            await self.merge_once()
        except StoreError as exc:
            if not self._merge_failing:
                logger.warning("cannot read activity reports: %s", exc)
            self._merge_failing = True
            return False
        self._merge_failing = False  # (a bug goes on to _rounds, which logs it and goes on)
        return True

    async def _rounds(
        self, interval_s: Callable[[], float], one_round: Callable[[], Awaitable[bool]]
    ) -> None:
        """A round every ``interval_s``; with a session, the rounds share one held
        connection until one fails (the next round opens another: a dead connection is
        never kept). A bug in a round (the rounds handle the store's errors themselves) is
        logged once while it recurs, lets the held connection go (it may have been cut
        mid-query) and the loop goes on: the lease loop must never stop renewing."""
        guarded = _GuardedRound(one_round)
        while True:
            await asyncio.sleep(interval_s())
            if self._session is None:
                await guarded()
            else:
                try:
                    await in_own_task(self._held_rounds(interval_s, guarded))
                except StoreError as exc:  # closing the held connection failed
                    if not cancelling():
                        logger.warning("a replica loop's database connection: %s", exc)
                except Exception as exc:  # a bug around the rounds (a store's session, say)
                    guarded.bug(exc)
            # a round swallows a StoreError, and one raised as close() cancelled us (a
            # connection that failed to close) must not swallow the cancellation with it
            if cancelling():
                raise asyncio.CancelledError

    async def _held_rounds(
        self, interval_s: Callable[[], float], one_round: Callable[[], Awaitable[bool]]
    ) -> None:
        assert self._session is not None
        stack = contextlib.AsyncExitStack()
        try:  # (no longer than a round's interval: the lease's renewal must not wait)
            async with asyncio.timeout(min(STORE_CALL_TIMEOUT_S, interval_s())):
                await stack.enter_async_context(self._session())
        except (StoreError, TimeoutError) as exc:
            if cancelling():
                raise asyncio.CancelledError from exc
            logger.debug("cannot hold a database connection: %s", exc)
            await one_round()  # without one: the round's own handling says what fails
            return
        async with stack:
            while True:
                ok = await one_round()
                if cancelling():  # (a round that caught it as a StoreError)
                    raise asyncio.CancelledError
                if not ok:
                    return
                await asyncio.sleep(interval_s())


class _GuardedRound:
    """A replica loop's round that a bug does not end: logged once while it recurs."""

    def __init__(self, one_round: Callable[[], Awaitable[bool]]) -> None:
        self._round = one_round
        self._failing = False

    async def __call__(self) -> bool:
        try:
            ok = await self._round()
        except Exception as exc:
            self.bug(exc)
            return False
        self._failing = False
        return ok

    def bug(self, exc: Exception) -> None:
        """Log ``exc`` with its traceback unless the last round failed too."""
        if cancelling():  # (close() cancelled us mid-round: not a bug)
            raise asyncio.CancelledError from exc
        if not self._failing:
            logger.exception("a replica loop's round failed; the next one goes on")
        self._failing = True
