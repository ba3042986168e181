"""Webhook deliveries to make: what each configured endpoint is sent, as outbox rows.

Policy (read this first):
- An event is a status change (from the change bus, written by the leader like agent
  rows), an audit entry (an idle action, a skip, an eviction, a lifecycle action through
  the API, the CLI or the library, a dead letter), or a wake from sleep. Each endpoint
  whose ``events``, ``agents`` and ``groups`` let it through gets a row of its own.
- A row's body is fixed when it is made, so every retry sends (and signs) the same bytes:
  ``{"id", "event", "agent", "at", "data"}``, ``id`` unique per delivery (a receiver
  drops a repeat by it: delivery is at least once).
- The rows go to the writer, which commits them in the transaction of the row that
  caused them (writer.py); the leader delivers them (webhook_delivery.py).
Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import orjson

from .agent_match import AgentMatch
from .models import Agent, AuditEntry, Change, OutboxRow, WakeRecord, audit_kind
from .settings_webhooks import WebhookSpec


@dataclass(frozen=True)
class Endpoint:
    """A configured endpoint, with its key in the outbox."""

    key: str
    url: str
    events: frozenset[str] | None
    match: AgentMatch | None
    secret: bytes | None

    @classmethod
    def of(cls, spec: WebhookSpec) -> Endpoint:
        """From its settings; the key is a hash of the url (stable across restarts)."""
        secret = spec.secret.get_secret_value().encode() if spec.secret else None
        key = hashlib.sha256(spec.url.encode()).hexdigest()[:16]
        events = frozenset(spec.events) if spec.events is not None else None
        return cls(key, spec.url, events, spec.match(), secret)

    def wants(self, event: str, agent: str, labels: Any, group_label: str) -> bool:
        """Whether this endpoint is sent ``event`` about ``agent``."""
        if self.events is not None and event not in self.events:
            return False
        return self.match is None or self.match.covers_labels(agent, labels or {}, group_label)

    @property
    def where(self) -> str:
        """The url as logs show it: scheme, host and port (a path or query may hold a
        secret, as chat services' webhook urls do)."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/..."

    def sign(self, body: bytes) -> str | None:
        """The signature header's value (None without a secret)."""
        if self.secret is None:
            return None
        return "sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest()


def endpoints_of(specs: list[WebhookSpec]) -> list[Endpoint]:
    """The endpoints of the settings, one per url (a url given twice is one endpoint)."""
    seen: dict[str, Endpoint] = {}
    for spec in specs:
        seen.setdefault(spec.url, Endpoint.of(spec))
    return list(seen.values())


def event_of(entry: AuditEntry) -> str:
    """The kind of event an audit entry is: the timeline's kind, or ``dead_letter``."""
    if entry.action == "dead_letter":
        return "dead_letter"
    return audit_kind(entry.action, entry.actor)


def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


class WebhookOutbox:
    """Makes the outbox rows of events (what the writer asks for)."""

    def __init__(
        self,
        endpoints: list[Endpoint],
        group_label: str,
        lookup: Callable[[str], Agent | None],
        *,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self.endpoints = endpoints
        self._group_label = group_label
        self._lookup = lookup
        self._new_id = new_id

    def _rows(
        self, event: str, agent: str, at: datetime, data: dict[str, Any], labels: Any = None
    ) -> list[OutboxRow]:
        if labels is None:
            known = self._lookup(agent)
            labels = known.labels if known is not None else {}
        rows = []
        for endpoint in self.endpoints:
            if not endpoint.wants(event, agent, labels, self._group_label):
                continue
            delivery = self._new_id()
            body = orjson.dumps(
                {"id": delivery, "event": event, "agent": agent, "at": _iso(at), "data": data}
            )
            rows.append(OutboxRow(delivery, endpoint.key, event, agent, at, body))
        return rows

    def for_change(self, change: Change) -> list[OutboxRow]:
        """A status change (none for a change that keeps the status)."""
        agent = change.agent
        if not self.endpoints or change.previous_status is agent.status:
            return []
        data = {
            "status": agent.status.value,
            "previous_status": change.previous_status.value if change.previous_status else None,
            "reason": change.reason,
            "kind": agent.kind.value,
            "replicas": agent.replicas,
            "running": agent.running,
        }
        return self._rows("status", agent.name, agent.updated_at, data, agent.labels)

    def for_audit(self, entry: AuditEntry) -> list[OutboxRow]:
        """An audit entry: an idle action, a skip, an eviction, a lifecycle action, a
        dead letter."""
        if not self.endpoints:
            return []
        data = {
            "action": entry.action,
            "reason": entry.reason,
            "actor": entry.actor,
            "ok": entry.ok,
            "dry_run": entry.dry_run,
            "detail": entry.detail,
        }
        return self._rows(event_of(entry), entry.agent, entry.at, data)

    def for_wake(self, record: WakeRecord) -> list[OutboxRow]:
        """A wake from sleep (a wake of a running agent is no event)."""
        if not self.endpoints or record.from_state == "running":
            return []
        data = {
            "from_state": record.from_state,
            "via": record.via,
            "ready": record.ready,
            "total_ms": round(record.answered_ms, 1),
            "engine_ms": round(e, 1) if (e := record.engine_ms) is not None else None,
        }
        return self._rows("wake", record.agent, record.at, data)


__all__ = ["Endpoint", "WebhookOutbox", "endpoints_of", "event_of"]
