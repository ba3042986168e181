"""The live busy check before an idle action: is somebody using this agent right now?

Asked of the engine, not of memory, under the agent's lock, after its label was checked:
- always: exec sessions someone opened that run now (the container's exec ids, each exec's
  own inspect; the healthcheck's and idlewatch's own are not sessions);
- label ``idlewatch.busy-cpu`` (percent of one core): one stats sample at or above it;
- label ``idlewatch.busy-command``: run in the container, exit 0 means busy (one that does
  not finish within ``busy_command_timeout`` counts as busy: a hung check proves nothing).
A service is checked in its tasks on this engine; its tasks elsewhere speak through the
sessions and use their nodes report. A check that cannot run (the engine fails) holds the
action back this time: the next sweep asks again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from .clock import SystemClock, to_ns
from .models import Agent, Kind
from .policy import BUSY_CPU_LABEL, busy_command, busy_cpu_percent
from .ports import Clock, DockerGateway
from .tracker import Tracker
from .usage import busy_check_argv, is_busy_check

logger = logging.getLogger(__name__)


#: every reason a busy check gives (the metrics show each, at 0 until one happens)
BUSY_REASONS = ("busy:exec", "busy:cpu", "busy:command")


@dataclass(frozen=True, slots=True)
class Busy:
    """Why an agent counts as busy: ``busy:exec``, ``busy:cpu`` or ``busy:command``."""

    reason: str
    detail: str


class BusyCheck:
    """Asks the engine whether an agent is in use now (see the module docstring)."""

    def __init__(
        self,
        docker: DockerGateway,
        tracker: Tracker,
        *,
        command_timeout_s: float,
        clock: Clock | None = None,
    ) -> None:
        self._clock: Clock = clock or SystemClock()
        self._docker = docker
        self._tracker = tracker
        self._command_timeout_s = command_timeout_s
        self._bad_label_logged: set[tuple[str, str]] = set()

    async def check(self, agent: Agent, labels: Mapping[str, str]) -> Busy | None:
        """The first sign of use found, or None; raises WatcherError when the engine fails."""
        containers = self._containers(agent)
        if not containers:
            return None  # a service with no task here: its nodes' reports are the word
        hung = False
        for cid in containers:
            busy, check_running = await self._sessions(cid)
            if busy is not None:
                return busy
            hung = hung or (cid == containers[0] and check_running)
        command = busy_command(labels)
        if command is not None and (busy := await self._command(containers[0], command, hung)):
            return busy
        threshold = self._cpu_threshold(agent.name, labels)
        if threshold is not None:
            for cid in containers:
                share = await self._docker.cpu_percent(cid)
                if share >= threshold:
                    return Busy("busy:cpu", f"{share:.1f}% of a core >= {threshold:g}%")
        return None

    async def _command(self, container_id: str, command: str, hung: bool) -> Busy | None:
        """The busy-command's verdict; one that timed out earlier and still runs counts as
        busy, and another is not started beside it."""
        if hung:
            return Busy("busy:command", f"{command!r} from an earlier check still runs")
        use = self._tracker.use
        use.check_began(container_id, to_ns(self._clock.now()))
        try:
            code = await self._docker.run_check(
                container_id, busy_check_argv(command), self._command_timeout_s, own=use.own
            )
        finally:
            use.check_ended(container_id, to_ns(self._clock.now()))
        if code is None:
            return Busy(
                "busy:command", f"{command!r} did not finish within {self._command_timeout_s:g}s"
            )
        return Busy("busy:command", f"{command!r} exited 0") if code == 0 else None

    def _containers(self, agent: Agent) -> list[str]:
        if agent.kind is Kind.CONTAINER:
            return [agent.id]
        return sorted(self._tracker.local_tasks(agent.name))

    async def _sessions(self, container_id: str) -> tuple[Busy | None, bool]:
        """Somebody's running exec sessions in one container, as the engine lists them now;
        and whether one of idlewatch's own busy-commands still runs there."""
        listing = await self._docker.open_execs(container_id)
        if listing is None:
            return None, False
        use = self._tracker.use
        # what runs now is known from here on: its end counts as use when it comes
        self._tracker.recover_sessions(container_id, listing)
        running = [
            p
            for p in listing.execs
            if use.is_users(listing, p) and not use.is_expired(container_id, p.id)
        ]
        check_running = any(p.running and is_busy_check(p.command) for p in listing.execs)
        if not running:
            return None, check_running
        busy = Busy("busy:exec", f"{len(running)} open exec session(s): {running[0].command!r}")
        return busy, check_running

    def _cpu_threshold(self, name: str, labels: Mapping[str, str]) -> float | None:
        try:
            return busy_cpu_percent(labels)
        except ValueError as exc:
            key = (name, labels.get(BUSY_CPU_LABEL, ""))
            if key not in self._bad_label_logged:
                self._bad_label_logged.add(key)
                logger.warning(
                    "agent %s: bad %s label (%s); not checked", name, BUSY_CPU_LABEL, exc
                )
            return None


__all__ = ["Busy", "BusyCheck"]
