"""The webhook outbox on the store's database: rows are inserted by the writer with the
change that caused them (record.py), and read and marked here by the leader's deliverer
(webhook_delivery.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from ..errors import StoreError
from ..models import Delivery
from .schema import outbox_table

_O = outbox_table.c


def _at(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def delivery_of(row: Any) -> Delivery:
    """A row as a :class:`Delivery`."""
    created = _at(row["created_at"])
    assert created is not None
    return Delivery(
        seq=int(row["seq"]),
        delivery_id=row["delivery_id"],
        endpoint=row["endpoint"],
        event=row["event"],
        agent=row["agent"],
        created_at=created,
        status=row["status"],
        attempts=int(row["attempts"]),
        next_at=_at(row["next_at"]),
        last_error=row["last_error"],
        done_at=_at(row["done_at"]),
        body=str(row["body"]).encode(),
    )


class SqlOutbox:
    """An :class:`~idlewatch.ports.OutboxStore` on the store's database."""

    def __init__(self, db: Any) -> None:
        self._db = db

    async def _fetch(self, what: str, query: Any) -> list[Delivery]:
        try:
            return [delivery_of(r._mapping) for r in await self._db.fetch_all(query)]
        except Exception as exc:  # the drivers raise many unrelated types
            raise StoreError(f"cannot read {what}: {exc}") from exc

    async def _run(self, what: str, query: Any) -> None:
        try:
            await self._db.execute(query)
        except Exception as exc:
            raise StoreError(f"cannot {what}: {exc}") from exc

    async def heads(self, endpoints: list[str], limit: int) -> list[Delivery]:
        """The oldest pending deliveries of each endpoint (up to ``limit`` each), by seq."""
        out: list[Delivery] = []
        for endpoint in endpoints:
            query = (
                sa.select(outbox_table)
                .where(_O.endpoint == endpoint, _O.status == "pending")
                .order_by(_O.seq)
                .limit(limit)
            )
            out += await self._fetch("the webhook outbox", query)
        return out

    async def sent(self, seqs: list[int], at: datetime) -> None:
        """Deliveries the endpoint accepted (each one more try), in one statement."""
        query = (
            sa.update(outbox_table)
            .where(_O.seq.in_(seqs), _O.status == "pending")
            .values(status="sent", attempts=_O.attempts + 1, done_at=at.timestamp(), next_at=None)
        )
        await self._run("mark a webhook delivery sent", query)

    async def retry(self, seq: int, attempts: int, next_at: datetime, error: str) -> None:
        """A delivery that failed and is tried again at ``next_at``."""
        query = (
            sa.update(outbox_table)
            .where(_O.seq == seq, _O.status == "pending")
            .values(attempts=attempts, next_at=next_at.timestamp(), last_error=error[:500])
        )
        await self._run("mark a webhook delivery for retry", query)

    async def failed(self, seq: int, attempts: int, at: datetime, error: str) -> None:
        """A delivery given up on (older than webhook_max_age, or its endpoint is gone)."""
        query = (
            sa.update(outbox_table)
            .where(_O.seq == seq, _O.status == "pending")
            .values(
                status="failed",
                attempts=attempts,
                done_at=at.timestamp(),
                next_at=None,
                last_error=error[:500],
            )
        )
        await self._run("mark a webhook delivery failed", query)

    async def orphans(self, endpoints: list[str]) -> list[Delivery]:
        """Pending deliveries of endpoints no longer configured."""
        query = sa.select(outbox_table).where(_O.status == "pending")
        if endpoints:
            query = query.where(_O.endpoint.not_in(endpoints))
        return await self._fetch("the webhook outbox", query.order_by(_O.seq).limit(1000))

    async def recent(self, status: str | None, limit: int) -> list[Delivery]:
        """The newest deliveries (of one status), newest first."""
        query = sa.select(outbox_table).order_by(_O.seq.desc()).limit(limit)
        if status is not None:
            query = query.where(_O.status == status)
        return await self._fetch("the webhook outbox", query)

    async def pending_count(self) -> int:
        """Deliveries not yet accepted nor given up on (through the status index)."""
        query = sa.select(sa.func.count()).where(_O.status == "pending")
        try:
            return int(await self._db.fetch_val(query) or 0)
        except Exception as exc:
            raise StoreError(f"cannot count the webhook outbox: {exc}") from exc

    async def prune(self, before: datetime) -> None:
        """Delete delivered and failed rows finished before ``before``."""
        query = sa.delete(outbox_table).where(
            _O.status != "pending", _O.done_at < before.timestamp()
        )
        await self._run("prune the webhook outbox", query)


__all__ = ["SqlOutbox", "delivery_of"]
