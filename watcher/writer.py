"""The one writer task: coalesces agent rows by name, batches them, retries on failure.

Callers never wait on the database: ``put_agent``/``put_audit`` are synchronous and cheap.
A failed batch is kept (newer rows replace older ones of the same agent) and retried with
capped backoff, so a database hiccup loses nothing.

It listens on the change bus: the record of agents is the leader's to write, so it asks
:class:`~idlewatch.leader.Leadership` when a change arrives and again before a batch
is written (a replica that lost the lease never writes an agent row over the new leader's).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from .errors import StoreError
from .models import (
    ActivityReport,
    Agent,
    AgentSpec,
    AuditEntry,
    Change,
    CloseOrphans,
    HistoryRow,
    OutboxRow,
    RecordRow,
    SpellMark,
    UseBurst,
    WakeRecord,
)
from .ports import Store
from .tasks import cancel_and_wait, cancelling, in_own_task
from .webhooks import WebhookOutbox

#: how last_error begins when the writer failed on a bug rather than on the database
_INTERNAL = "internal error in the writer: "
#: told after each commit with the agent rows written and the wall time in ns
CommitObserver = Callable[[list[Agent], int], None]


class LeaderView(Protocol):
    """What the writer asks of the leadership (:class:`~idlewatch.leader.Leadership`)."""

    @property
    def is_leader(self) -> bool:
        """Whether this replica may write the record now."""
        ...

    @property
    def replica_id(self) -> str:
        """This replica's name, stamped on its audit rows."""
        ...


logger = logging.getLogger(__name__)


class StoreWriter:
    """Owns the writer task; start with :meth:`start`, stop with :meth:`close` (flushes)."""

    def __init__(
        self,
        store: Store,
        leadership: LeaderView,
        *,
        retry_max_s: float = 5.0,
        batch_max: int = 5000,
        pace_s: float = 0.0,
        on_state: Callable[[], None] = lambda: None,
        on_commit: CommitObserver | None = None,
        webhooks: WebhookOutbox | None = None,
        on_outbox: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        #: makes the webhook deliveries of status changes, audit entries and wakes, which
        #: are committed in the same transaction as those rows (webhooks.py)
        self._webhooks = webhooks if webhooks is not None and webhooks.endpoints else None
        self._on_outbox = on_outbox  # told after a commit that wrote deliveries
        self._outbox: list[OutboxRow] = []
        self._leadership = leadership
        self._replica_id = leadership.replica_id
        self._on_state = on_state  # told when writes start failing or recover
        self._on_commit = on_commit
        self._observer_failing = False
        self._retry_max_s = retry_max_s
        self._batch_max = batch_max
        #: the least time between two commits (``write_pace``): a burst of changes within
        #: it goes in one transaction, a lone change after a quiet spell at once, and a
        #: flush() cuts the wait short. At the engine's maximum churn a 200 ms pace took
        #: serve from 0.027 to 0.019 of a core, and rows from 2 ms to 100-200 ms behind
        #: (bench/RESULTS.md): hence off by default.
        self._pace_s = pace_s
        self._agents: dict[str, Agent] = {}
        self._audits: list[AuditEntry] = []
        #: spell marks in order, and the newest of each burst of use (the leader's to
        #: write, like agent rows)
        self._history: list[SpellMark | CloseOrphans] = []
        self._bursts: dict[tuple[str, str, datetime], UseBurst] = {}
        #: wakes, written by whichever replica served them (like audit rows)
        self._wakes: list[WakeRecord] = []
        self._forgets: set[str] = set()
        self._activity: dict[tuple[str, str], ActivityReport] = {}  # newest per (agent, source)
        self._specs: dict[str, AgentSpec | None] = {}
        self._wake = asyncio.Event()
        self._hurry = asyncio.Event()  # set by flush(): the pacing re-checks
        self._hurry_until = 0  # commit without pacing until _committed reaches this
        self._done = asyncio.Condition()
        self._enqueued = 0
        self._committed = 0
        self._task: asyncio.Task[None] | None = None
        self._retry_delay_s = 0.05  # doubles up to retry_max_s while writes fail
        self.last_error: str | None = None
        self.rows_written = 0
        self.last_commit_monotonic = 0.0
        self.last_queue_lag_s = 0.0  # from the oldest queued row of a batch to its commit
        self._oldest_queued = 0.0

    # ------------------------------------------------------------ the change bus
    def changed(self, change: Change) -> None:
        """A change of the table: its row, when this replica leads (every replica
        publishes; one writes the record)."""
        if self._leadership.is_leader:
            self.put_agent(change.agent)
            if self._webhooks is not None:
                self._outbox += self._webhooks.for_change(change)

    def forgotten(self, name: str) -> None:
        """An agent is no longer tracked: its row goes, when this replica leads."""
        if self._leadership.is_leader:
            self.forget(name)

    def put_agent(self, agent: Agent) -> None:
        """Queue the newest version of an agent row."""
        if not self._agents:
            self._oldest_queued = time.monotonic()
        self._agents[agent.name] = agent
        self._forgets.discard(agent.name)
        self._enqueued += 1
        self._wake.set()

    def forget(self, name: str) -> None:
        """Queue the deletion of an agent row."""
        self._agents.pop(name, None)
        self._forgets.add(name)
        self._enqueued += 1
        self._wake.set()

    def drop_agent_rows(self) -> None:
        """Forget queued agent rows and deletions (audit rows and specs stay queued): this
        replica stopped leading, and the record is the new leader's to write."""
        self._agents.clear()
        self._forgets.clear()
        self._history.clear()
        self._bursts.clear()
        self._outbox = [r for r in self._outbox if r.event != "status"]  # (the leader's)

    def put_activity(self, report: ActivityReport) -> None:
        """Queue an activity report (the newest per agent and source is written)."""
        self._activity[(report.agent, report.source)] = report
        self._enqueued += 1
        self._wake.set()

    def put_history(self, row: RecordRow) -> None:
        """Queue a spell's change or a burst of use (dropped unless this replica leads;
        a burst replaces what was queued of it)."""
        if self._leadership.is_leader:
            if isinstance(row, UseBurst):
                self._bursts[(row.agent, row.source, row.first_at)] = row
            else:
                self._history.append(row)
            self._enqueued += 1
            self._wake.set()

    def put_wake(self, record: WakeRecord) -> None:
        """Queue a wake's record (and its webhook deliveries)."""
        self._wakes.append(record)
        if self._webhooks is not None:
            self._outbox += self._webhooks.for_wake(record)
        self._enqueued += 1
        self._wake.set()

    def put_spec(self, name: str, spec: AgentSpec | None) -> None:
        """Queue saving (or, with None, deleting) a registered spec."""
        self._specs[name] = spec
        self._enqueued += 1
        self._wake.set()

    def put_audit(self, entry: AuditEntry) -> None:
        """Queue an audit entry (stamped with the replica that acted)."""
        self._audits.append(dataclasses.replace(entry, replica=self._replica_id))
        if self._webhooks is not None:
            self._outbox += self._webhooks.for_audit(entry)
        self._enqueued += 1
        self._wake.set()

    @property
    def pending(self) -> int:
        """Rows waiting to be written."""
        return (
            len(self._agents)
            + len(self._audits)
            + len(self._forgets)
            + len(self._specs)
            + len(self._activity)
            + len(self._history)
            + len(self._bursts)
            + len(self._wakes)
            + len(self._outbox)
        )

    def start(self) -> None:
        """Start the writer task (idempotent)."""
        if self._task is None:
            self._retry_delay_s = 0.05
            self._task = asyncio.create_task(self._run(), name="idlewatch-writer")

    async def flush(self, timeout_s: float | None = None) -> None:
        """Wait until everything queued before this call is committed."""
        target = self._enqueued
        if self._committed < target:  # no pacing until this is committed
            self._hurry_until = max(self._hurry_until, target)
            self._hurry.set()
        async with asyncio.timeout(timeout_s), self._done:
            await self._done.wait_for(lambda: self._committed >= target)

    async def close(self, flush_timeout_s: float = 10.0) -> None:
        """Write what is pending (bounded by a timeout), then stop the task."""
        if self._task is None:
            return
        if self._committed < self._enqueued:
            try:
                await self.flush(flush_timeout_s)
            except TimeoutError:
                logger.error(
                    "shutting down with %d unwritten rows (database unavailable)", self.pending
                )
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            # The session opens with the first write (an open and close with nothing to
            # write never starts a connection it would then have to abandon mid-connect).
            await self._wake.wait()
            try:
                await in_own_task(self._session(), "idlewatch-writer-session")
            except StoreError as exc:  # no connection (server down): keep the rows, retry
                if not cancelling():
                    self._failed(exc)
            except Exception as exc:  # a bug, not the database: logged once while it recurs
                if not cancelling():
                    if not (self.last_error or "").startswith(_INTERNAL):
                        logger.exception("the store writer failed, will retry")
                    self._failed(exc, internal=True)
            # a write that failed as close() cancelled us (a rollback or a close on a
            # broken connection) is caught as a StoreError: the cancellation still stands
            if cancelling():
                raise asyncio.CancelledError
            await asyncio.sleep(self._retry_delay_s)
            self._retry_delay_s = min(self._retry_delay_s * 2, self._retry_max_s)
            self._wake.set()

    async def _session(self) -> None:
        """Write batches on one held database session until one fails.

        One session across batches: opening a connection per write (a thread and a
        connect for SQLite) cost more CPU than the writes themselves.
        """
        async with self._store.session():
            while True:
                await self._wake.wait()
                self._wake.clear()
                ok = True
                # (rows dropped on losing the lease leave nothing pending, but a flush may
                # wait for them: a write of nothing marks them done)
                while (self.pending or self._committed < self._enqueued) and ok:
                    await self._paced()
                    ok = await self._write_once()
                    if cancelling():  # (a write that caught it as a StoreError)
                        raise asyncio.CancelledError
                if not ok:
                    return  # drop the session: the next one reconnects
                self._retry_delay_s = 0.05

    async def _paced(self) -> None:
        """Wait out the rest of the pace since the last commit (rows keep coalescing),
        unless somebody waits in :meth:`flush`."""
        if not self.last_commit_monotonic:  # nothing committed yet: no pace to wait out
            return
        while self._committed >= self._hurry_until:  # nobody waits for what is queued
            wait_s = self._pace_s - (time.monotonic() - self.last_commit_monotonic)
            if wait_s <= 0:
                return
            self._hurry.clear()  # (the loop re-checks the target after any wake)
            try:
                async with asyncio.timeout(wait_s):
                    await self._hurry.wait()
            except TimeoutError:
                return

    async def _write_once(self) -> bool:
        target = self._enqueued
        if not self._leadership.is_leader:
            self.drop_agent_rows()  # the lease ran out: the record is the new leader's
        agents, audits = self._take_batch()
        complete = not self._agents  # this batch holds everything queued up to `target`
        forgets, self._forgets = self._forgets, set()
        specs, self._specs = self._specs, {}
        activity, self._activity = self._activity, {}
        history = self._take_history(complete)
        if not (agents or audits or forgets or specs or activity or history):
            await self._committed_up_to(target)  # only dropped rows were waited for
            return True
        try:
            await self._store.write(agents, audits, sorted(forgets), specs, history)
        except Exception as exc:  # kept for the next try, whatever failed
            self._put_back(agents, audits)
            self._put_back_history(history)
            self._forgets |= {n for n in forgets if n not in self._agents}
            self._specs = {**specs, **self._specs}
            self._activity = {**activity, **self._activity}
            if not isinstance(exc, StoreError):
                raise  # a bug, not the database: _run logs it with its traceback
            self._failed(exc)
            return False
        self.rows_written += len(agents) + len(audits)  # (committed, whatever comes next)
        self.last_commit_monotonic = time.monotonic()
        self._committed_rows(agents, history)
        if activity:
            try:
                await self._store.activity.report_activity(list(activity.values()))
            except Exception as exc:  # the rows above are committed: keep only the reports
                self._activity = {**activity, **self._activity}
                if not isinstance(exc, StoreError):
                    raise  # a bug: _run logs it with its traceback
                self._failed(exc)
                return False
        self._recovered()
        if complete:
            await self._committed_up_to(target)
        return True

    def _committed_rows(self, agents: list[Agent], history: list[HistoryRow]) -> None:
        """Tell who waits on committed rows: the commit observer, the webhook deliverer."""
        if agents:
            self.last_queue_lag_s = self.last_commit_monotonic - self._oldest_queued
            self._notify_commit(agents)
        if any(isinstance(r, OutboxRow) for r in history):
            self._on_outbox()

    def _take_history(self, complete: bool) -> list[HistoryRow]:
        """The wakes, and the marks and bursts when ``complete`` (a mark follows the agent
        rows it may depend on: all of them)."""
        history: list[HistoryRow] = [*self._wakes, *self._outbox]
        self._wakes, self._outbox = [], []
        if complete:
            history += [*self._history, *self._bursts.values()]
            self._history, self._bursts = [], {}
        return history

    def _put_back_history(self, history: list[HistoryRow]) -> None:
        self._wakes[:0] = [r for r in history if isinstance(r, WakeRecord)]
        self._outbox[:0] = [r for r in history if isinstance(r, OutboxRow)]
        self._history[:0] = [r for r in history if isinstance(r, SpellMark | CloseOrphans)]
        for r in history:  # a burst queued meanwhile is newer
            if isinstance(r, UseBurst):
                self._bursts.setdefault((r.agent, r.source, r.first_at), r)

    def _recovered(self) -> None:
        if self.last_error is None:
            return
        internal = self.last_error.startswith(_INTERNAL)
        logger.info("the store writer recovered" if internal else "database writes recovered")
        self.last_error = None
        self._on_state()

    def _notify_commit(self, agents: list[Agent]) -> None:
        if self._on_commit is None:
            return
        try:
            self._on_commit(agents, time.time_ns())
        except Exception:  # the rows are committed: an observer's bug stays its own
            if not self._observer_failing:  # (logged once while it keeps failing)
                logger.exception("a commit observer failed")
            self._observer_failing = True
        else:
            self._observer_failing = False

    async def _committed_up_to(self, target: int) -> None:
        async with self._done:
            self._committed = max(self._committed, target)
            self._done.notify_all()

    def _failed(self, exc: Exception, *, internal: bool = False) -> None:
        first = self.last_error is None
        if first and not internal:  # (an internal error was logged with its traceback)
            logger.error("database write failed, will retry: %s", exc)
        self.last_error = f"{_INTERNAL}{exc!r}" if internal else str(exc)
        if first:
            self._on_state()

    def _take_batch(self) -> tuple[list[Agent], list[AuditEntry]]:
        if len(self._agents) <= self._batch_max:
            agents = list(self._agents.values())
            self._agents = {}
        else:
            names = list(self._agents)[: self._batch_max]
            agents = [self._agents.pop(n) for n in names]
        audits, self._audits = self._audits, []
        return agents, audits

    def _put_back(self, agents: list[Agent], audits: list[AuditEntry]) -> None:
        for agent in agents:
            if agent.name not in self._forgets:  # forgotten meanwhile: do not bring it back
                self._agents.setdefault(agent.name, agent)  # a newer queued row wins
        self._audits[:0] = audits
