"""What counts as use of a container, and its open sessions: one place for ``serve`` and
``idlewatch node``. Pure: no I/O.

Policy (read this first):
- A container's healthcheck runs as exec sessions at every interval, with nothing marking
  them as the healthcheck but their command, so the first exec of a container waits until
  the container was looked at once (:meth:`ContainerUse.needs_look`). After that an exec
  is use unless its command is the healthcheck's; idlewatch's own execs (a busy-command,
  run as ``sh -c CMD idlewatch-busy-check`` so that any idlewatch process recognises it)
  are never use.
- An exec someone opened is an open session from its ``exec_start`` to its ``exec_die``;
  both ends are use, so the idle clock starts when the last session closes.
- An attach is an open session from its ``attach`` event until the container's process
  ends (``die``, ``destroy``): the engine emits nothing when an attach ends and keeps no
  count of attached clients (measured on Engine 20.10), so the safe reading is "attached
  until the process is gone". A container is attached or not (one session however many
  attaches came); a later ``attach`` or a terminal ``resize`` renews it, and it stops
  holding ``attach_max_hold`` after its last renewal (a detach, ctrl-p ctrl-q, is
  invisible: without that bound one attach would hold for ``session_max_hold``).
- An attach is a fact idlewatch keeps in its store (the agent's ``attached`` field): it
  survives idlewatch's own restart and a replica's takeover (:meth:`restore_attach`), and
  a recovery drops it when the container's process is no longer the one attached to (it
  stopped, or started again since).
- Sessions lost to a gap in the stream are recovered from the engine (the container's
  running exec ids, each exec's own inspect: :meth:`ContainerUse.recover`), never guessed;
  a session that ended during the gap counts as use when the recovery finds it gone;
  attaches leave no trace there and cannot be recovered.
- An exec open longer than ``session_max_hold`` stops holding (:meth:`expire`).
- Podman's exec events name no exec (no ``execID``, no command; an ``exec_died`` may come
  twice): such an event is a hint, and the container's open sessions are read from the
  engine after it, as after a gap (the tracker asks for that look).
- An ``unpause`` between a container's ``kill`` and its ``die`` is the engine stopping a
  paused container (it thaws it to let the signal in), not somebody using it: idlewatch's
  own stop of a paused agent must not make the stop time its last activity.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from .clock import from_ns
from .models import ContainerExecs, EngineEvent, ExecProcess
from .policy import is_use

#: the container's process is gone: every session in it ended
_PROCESS_ENDS = frozenset({"die", "destroy"})
#: the id of a container's one attach session
ATTACH = "attach"
#: the kind of a session that is a TCP connection through idlewatch (tcp_wake.py): it is
#: ours, so the engine never lists it and a recovery keeps it
TCP = "tcp"
#: ``docker run -it`` and ``docker start -ai`` attach a moment before the start: an attach
#: this much older than the process's start still belongs to it
ATTACH_BEFORE_START_S = 10.0
OWN_EXECS_KEPT = 1000  # idlewatch's own execs remembered (a few per idle check)
#: the engine's clock and ours may differ a little: an exec event this close to one of our
#: busy-commands (Podman's name no exec) is taken for it
OWN_CHECK_SLACK_NS = 2_000_000_000
#: the last argument of every busy-command idlewatch runs (``sh -c CMD <mark>``: the mark is
#: the shell's $0), so any idlewatch process, after a restart or on another node, tells
#: such an exec from somebody's by its command alone
BUSY_CHECK_MARK = "idlewatch-busy-check"


def busy_check_argv(command: str) -> list[str]:
    """How a busy-command is run inside a container."""
    return ["sh", "-c", command, BUSY_CHECK_MARK]


def is_busy_check(command: str) -> bool:
    """Whether an exec's command (as events and exec inspect show it) is idlewatch's own
    busy-command."""
    return command.startswith("sh -c ") and command.endswith(" " + BUSY_CHECK_MARK)


@dataclass(frozen=True, slots=True)
class Recovered:
    """What a recovery from the engine changed."""

    changed: bool  # the open sessions differ from what was known
    ended: bool  # a session known open has ended meanwhile


@dataclass(frozen=True, slots=True)
class Session:
    """One open session of a container."""

    id: str  # the exec id, or ATTACH
    kind: str  # "exec" or "attach"
    opened_at: datetime
    command: str = ""
    #: an attach: its last sign of life (a later attach, a resize); its hold counts from it
    renewed_at: datetime | None = None

    @property
    def held_since(self) -> datetime:
        """What the max hold counts from."""
        return self.renewed_at or self.opened_at


@dataclass(frozen=True, slots=True)
class HoldLimits:
    """How long a session holds its agent at most (None: for ever)."""

    exec_s: float | None  # session_max_hold
    attach_s: float | None  # attach_max_hold

    def of(self, session: Session) -> float | None:
        """The limit for this kind of session."""
        return self.attach_s if session.kind == "attach" else self.exec_s


#: sessions hold for as long as they are open
NO_HOLD_LIMITS = HoldLimits(None, None)

#: one container's attach, as the agent records it: (container id, opened, renewed)
AttachRecord = tuple[str, datetime, datetime]


class ContainerUse:
    """The healthcheck commands learnt by looking at containers, and the open sessions."""

    def __init__(self) -> None:
        self._healthcheck: dict[str, str | None] = {}  # container id -> healthcheck command
        self._open: dict[str, dict[str, Session]] = {}  # container id -> session id -> session
        self._expired: set[tuple[str, str]] = set()  # (container, session) past max hold
        self._own: dict[str, None] = {}  # idlewatch's own exec ids (ordered, bounded)
        self._stopping: set[str] = set()  # containers killed whose process has not died yet
        #: idlewatch's own busy-commands by container: (began, ended or None), engine-time
        #: ns; an exec event that names no exec (Podman's) inside one is not use
        self._checks: dict[str, tuple[int, int | None]] = {}

    # -------------------------------------------------------------- looks
    def needs_look(self, ev: EngineEvent) -> bool:
        """True when an exec of a container whose healthcheck is unknown must wait for a look."""
        return (
            ev.action == "exec_start"
            and ev.actor_id not in self._healthcheck
            and ev.attributes.get("execID", "") not in self._own
        )

    def knows(self, container_id: str) -> bool:
        """Whether the container was looked at (its healthcheck command is known)."""
        return container_id in self._healthcheck

    def healthcheck(self, container_id: str) -> str | None:
        """The container's healthcheck command, when it was looked at and has one."""
        return self._healthcheck.get(container_id)

    def learn(self, container_id: str, healthcheck_cmd: str | None) -> None:
        """Record a container's healthcheck command (None: none, or it could not be seen)."""
        self._healthcheck[container_id] = healthcheck_cmd

    def own(self, exec_id: str) -> None:
        """An exec idlewatch runs itself (a busy-command): never use, never a session."""
        self._own[exec_id] = None
        while len(self._own) > OWN_EXECS_KEPT:
            del self._own[next(iter(self._own))]

    def check_began(self, container_id: str, at_ns: int) -> None:
        """idlewatch runs a busy-command in the container from now on."""
        self._checks[container_id] = (at_ns, None)

    def check_ended(self, container_id: str, at_ns: int) -> None:
        """idlewatch's busy-command in the container is over."""
        began = self._checks.get(container_id, (at_ns, None))[0]
        self._checks[container_id] = (began, at_ns)

    def _during_own_check(self, container_id: str, at_ns: int) -> bool:
        check = self._checks.get(container_id)
        if check is None:
            return False
        began, ended = check
        return began - OWN_CHECK_SLACK_NS <= at_ns and (
            ended is None or at_ns <= ended + OWN_CHECK_SLACK_NS
        )

    def is_own(self, exec_id: str) -> bool:
        """Whether idlewatch ran this exec itself."""
        return exec_id in self._own

    # ------------------------------------------------------------ events
    def observe(self, ev: EngineEvent) -> bool:
        """Apply one container event to the sessions; True when it is somebody's use."""
        cid, action = ev.actor_id, ev.action
        if action in ("exec_start", "exec_die"):
            return self._exec(ev)
        if action == "attach" or (action == "resize" and self._attached(cid)):
            self._attach(cid, from_ns(ev.time_ns))
            return True
        if action == "kill":
            self._stopping.add(cid)
        elif action in _PROCESS_ENDS or action == "start":
            self._stopping.discard(cid)
        elif action == "unpause" and cid in self._stopping:
            return False  # the engine thaws a paused container it stops: no use
        if action in _PROCESS_ENDS:
            self._close_all(cid)
        return is_use(ev, None)

    def _exec(self, ev: EngineEvent) -> bool:
        cid, exec_id = ev.actor_id, ev.attributes.get("execID", "")
        if not exec_id:  # Podman names no exec (its exec_died may come twice, or alone for
            # a healthcheck): the sessions come from a look at the engine (the tracker asks);
            # an exec during idlewatch's own busy-command there is taken for that one
            if self._during_own_check(cid, ev.time_ns):
                return False
            return ev.action == "exec_start" and is_use(ev, self._healthcheck.get(cid))
        if exec_id in self._own or is_busy_check(ev.detail):
            return False
        if ev.action == "exec_die":
            sessions = self._open.get(cid)
            if sessions is None or sessions.pop(exec_id, None) is None:
                return False  # the healthcheck's, or one seen neither start nor recovered
            self._expired.discard((cid, exec_id))
            if not sessions:
                del self._open[cid]
            return True
        if not is_use(ev, self._healthcheck.get(cid)):
            return False
        session = Session(exec_id, "exec", from_ns(ev.time_ns), ev.detail)
        self._open.setdefault(cid, {})[exec_id] = session
        return True

    def _attached(self, cid: str) -> bool:
        return ATTACH in self._open.get(cid, {})

    def _attach(self, cid: str, when: datetime) -> None:
        """Open the container's attach session, or renew it (its hold starts again)."""
        sessions = self._open.setdefault(cid, {})
        old = sessions.get(ATTACH)
        opened = old.opened_at if old is not None else when
        renewed = max(when, old.held_since) if old is not None else when
        sessions[ATTACH] = Session(ATTACH, "attach", opened, renewed_at=renewed)
        self._expired.discard((cid, ATTACH))

    def restore_attach(self, cid: str, opened_at: datetime, renewed_at: datetime) -> None:
        """An attach the store kept (idlewatch restarted, or this replica took over): it
        holds again until a recovery finds the container's process gone or restarted."""
        self._attach(cid, opened_at)
        self._attach(cid, renewed_at)

    def attach_record(self, cid: str) -> AttachRecord | None:
        """The container's attach as the agent records it, None when not attached."""
        session = self._open.get(cid, {}).get(ATTACH)
        if session is None or (cid, ATTACH) in self._expired:
            return None
        return (cid, session.opened_at, session.held_since)

    def open_connection(self, cid: str, key: str, now: datetime) -> None:
        """A TCP connection to the container through idlewatch opened: a session."""
        self._open.setdefault(cid, {})[key] = Session(key, TCP, now)

    def close_connection(self, cid: str, key: str) -> bool:
        """The connection closed; whether it was open (a die may have closed it first)."""
        sessions = self._open.get(cid)
        if sessions is None or sessions.pop(key, None) is None:
            return False
        self._expired.discard((cid, key))
        if not sessions:
            del self._open[cid]
        return True

    def process_ended(self, cid: str) -> None:
        """The container's process is gone (a listing found it stopped): no session is left."""
        self._stopping.discard(cid)
        self._close_all(cid)

    def _close_all(self, cid: str) -> None:
        """The container's process ended: its exec and attach sessions with it. A TCP
        connection through idlewatch is not the process's: it ends when it closes (a wake
        of the container it reached may be under way)."""
        kept = {sid: s for sid, s in self._open.pop(cid, {}).items() if s.kind == TCP}
        for sid in list(self._expired):
            if sid[0] == cid and sid[1] not in kept:
                self._expired.discard(sid)
        if kept:
            self._open[cid] = kept

    # ------------------------------------------------------------ sessions
    def count(self, container_id: str) -> int:
        """The container's open sessions that hold it in use (not past the max hold)."""
        sessions = self._open.get(container_id)
        if not sessions:
            return 0
        return sum(1 for sid in sessions if (container_id, sid) not in self._expired)

    def sessions(self, container_id: str) -> list[Session]:
        """The container's open sessions, holding or not."""
        return list(self._open.get(container_id, {}).values())

    def expire(self, now: datetime, limits: HoldLimits) -> list[tuple[str, Session]]:
        """Sessions held longer than their limit stop holding; returns the ones that just
        did (each once), by container id."""
        newly = []
        for cid, sessions in self._open.items():
            for sid, session in sessions.items():
                limit = limits.of(session)
                if limit is None or (cid, sid) in self._expired:
                    continue
                if (now - session.held_since).total_seconds() > limit:
                    self._expired.add((cid, sid))
                    newly.append((cid, session))
        return newly

    def is_users(self, listing: ContainerExecs, proc: ExecProcess) -> bool:
        """Whether a running exec the engine lists is somebody's session (not the
        healthcheck's, not idlewatch's own)."""
        if not proc.running or proc.id in self._own or is_busy_check(proc.command):
            return False
        return listing.healthcheck_cmd is None or proc.command != listing.healthcheck_cmd

    def recover(self, container_id: str, listing: ContainerExecs, now: datetime) -> Recovered:
        """Make the container's exec sessions what the engine says runs in it now (after a
        gap in the stream); attaches, which leave no trace there, stay as they are. Says
        whether the open sessions changed, and whether one of them ended meanwhile (an end
        is use: the caller counts it now, as its exec_die may never be seen)."""
        self._healthcheck[container_id] = listing.healthcheck_cmd
        before = self._open.get(container_id, {})
        kept = {
            sid: s
            for sid, s in before.items()
            if (s.kind == "attach" and _same_process(s, listing.started_at)) or s.kind == TCP
        }
        for proc in listing.execs:
            if self.is_users(listing, proc):
                kept[proc.id] = before.get(proc.id) or Session(proc.id, "exec", now, proc.command)
        ended = [sid for sid in before if sid not in kept]
        for sid in ended:
            self._expired.discard((container_id, sid))
        if kept:
            self._open[container_id] = kept
        else:
            self._open.pop(container_id, None)
        return Recovered(changed=set(kept) != set(before), ended=bool(ended))

    def held_since(self, container_id: str) -> datetime | None:
        """Since when the container has been in use by its sessions that hold (None: it
        holds none)."""
        times = [
            s.opened_at
            for sid, s in self._open.get(container_id, {}).items()
            if (container_id, sid) not in self._expired
        ]
        return min(times) if times else None

    def is_expired(self, container_id: str, session_id: str) -> bool:
        """Whether a session was open longer than the max hold (it holds nothing)."""
        return (container_id, session_id) in self._expired

    # ------------------------------------------------------------ forgetting
    def forget(self, container_id: str) -> None:
        """The container is gone."""
        self._healthcheck.pop(container_id, None)
        self._stopping.discard(container_id)
        self._close_all(container_id)

    def keep_only(self, present: Iterable[str]) -> None:
        """Forget containers that a listing no longer shows (gone while nobody watched)."""
        keep = set(present)
        for cid in [c for c in self._healthcheck if c not in keep]:
            del self._healthcheck[cid]
        for cid in [c for c in self._open if c not in keep]:
            self._close_all(cid)
        self._stopping &= keep

    def with_sessions(self) -> list[str]:
        """Containers that have open sessions now."""
        return list(self._open)


def _same_process(attach: Session, started_at: datetime | None) -> bool:
    """Whether the container's process now is the one ``attach`` was made to: it runs, and
    has not started again since (a moment before the start is the same: ``run -it``)."""
    if started_at is None:
        return False
    return (started_at - attach.opened_at).total_seconds() <= ATTACH_BEFORE_START_S
