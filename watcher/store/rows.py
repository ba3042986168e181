"""Rows and models: how agents, audit entries and specs are stored (pure, no I/O)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson

from ..models import Agent, AgentSpec, AuditEntry, Kind, Status, freeze


def agent_row(a: Agent) -> dict[str, Any]:
    """An agent as column values."""
    return {
        "name": a.name,
        "kind": a.kind.value,
        "id": a.id,
        "image": a.image,
        "status": a.status.value,
        "replicas": a.replicas,
        "running": a.running,
        "restore_replicas": a.restore_replicas,
        "last_activity": a.last_activity.isoformat(),
        "idle_timeout_s": a.idle_timeout_s,
        "labels": labels_json(a.labels),
        "error": a.error,
        "updated_at": a.updated_at.isoformat(),
        "last_event_ns": a.last_event_ns,
        "keep_until": a.keep_until.isoformat() if a.keep_until is not None else None,
        "paused_at": a.paused_at.isoformat() if a.paused_at is not None else None,
        "attached": attached_json(a.attached),
    }


def agent_tuple(a: Agent) -> tuple[Any, ...]:
    """An agent as a row tuple in the column order of ``agents`` (the writer's hot path:
    built directly, :func:`agent_row` in that order; a unit test holds the two together)."""
    keep_until, paused_at = a.keep_until, a.paused_at
    return (
        a.name,
        a.kind.value,
        a.id,
        a.image,
        a.status.value,
        a.replicas,
        a.running,
        a.restore_replicas,
        a.last_activity.isoformat(),
        a.idle_timeout_s,
        labels_json(a.labels),
        a.error,
        a.updated_at.isoformat(),
        a.last_event_ns,
        keep_until.isoformat() if keep_until is not None else None,
        paused_at.isoformat() if paused_at is not None else None,
        attached_json(a.attached),
    )


def labels_json(labels: Mapping[str, str]) -> str:
    """Labels as the JSON text of the ``labels`` column (keys sorted: equal labels, equal
    text)."""
    return orjson.dumps(dict(labels), option=orjson.OPT_SORT_KEYS).decode()


def agent_from_row(row: Any) -> Agent:
    """An ``agents`` row as a model."""
    return Agent(
        name=row["name"],
        kind=Kind(row["kind"]),
        id=row["id"],
        image=row["image"],
        status=Status(row["status"]),
        replicas=int(row["replicas"]),
        running=int(row["running"]),
        restore_replicas=int(row["restore_replicas"]),
        last_activity=datetime.fromisoformat(row["last_activity"]),
        idle_timeout_s=row["idle_timeout_s"],
        labels=freeze(json.loads(row["labels"])),
        error=row["error"],
        updated_at=datetime.fromisoformat(row["updated_at"]),
        last_event_ns=int(row["last_event_ns"]),
        keep_until=_when(row["keep_until"]),
        paused_at=_when(row["paused_at"]),
        attached=_attached(row["attached"]),
    )


def attached_json(attached: tuple[tuple[str, datetime, datetime], ...]) -> str | None:
    """An agent's attaches as the ``attached`` column's JSON (None: not attached)."""
    if not attached:
        return None
    return json.dumps(
        [[cid, opened.isoformat(), renewed.isoformat()] for cid, opened, renewed in attached]
    )


def _attached(text: str | None) -> tuple[tuple[str, datetime, datetime], ...]:
    if not text:
        return ()
    return tuple(
        (str(cid), datetime.fromisoformat(opened), datetime.fromisoformat(renewed))
        for cid, opened, renewed in json.loads(text)
    )


def _when(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def audit_row(e: AuditEntry) -> dict[str, Any]:
    """An audit entry as column values (in the column order of the insert)."""
    return {
        "at": e.at.isoformat(),
        "agent": e.agent,
        "action": e.action,
        "reason": e.reason,
        "actor": e.actor,
        "ok": e.ok,
        "dry_run": e.dry_run,
        "detail": e.detail,
        "replica": e.replica,
        "finished_at": e.finished_at.isoformat() if e.finished_at is not None else None,
    }


def audit_from_row(row: Any) -> AuditEntry:
    """An ``audit`` row as a model."""
    return AuditEntry(
        at=datetime.fromisoformat(row["at"]),
        agent=row["agent"],
        action=row["action"],
        reason=row["reason"],
        actor=row["actor"],
        ok=bool(row["ok"]),
        dry_run=bool(row["dry_run"]),
        detail=row["detail"],
        replica=row["replica"],
        finished_at=datetime.fromisoformat(row["finished_at"]) if row["finished_at"] else None,
    )


def spec_json(spec: AgentSpec) -> str:
    """A registered spec as the JSON text stored in ``specs``."""
    return json.dumps(
        {
            "name": spec.name,
            "image": spec.image,
            "kind": spec.kind.value,
            "command": list(spec.command) if spec.command is not None else None,
            "env": dict(spec.env),
            "labels": dict(spec.labels),
            "replicas": spec.replicas,
            "idle_timeout": spec.idle_timeout,
        }
    )


def spec_from_json(text: str) -> AgentSpec:
    """A stored spec back as a model."""
    d = json.loads(text)
    return AgentSpec(
        name=d["name"],
        image=d["image"],
        kind=Kind(d["kind"]),
        command=tuple(d["command"]) if d.get("command") is not None else None,
        env=freeze(d.get("env") or {}),
        labels=freeze(d.get("labels") or {}),
        replicas=int(d.get("replicas", 1)),
        idle_timeout=d.get("idle_timeout"),
    )
