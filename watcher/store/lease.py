"""The leader lease: one row per singleton role, taken and renewed by the database's clock."""

from __future__ import annotations

from typing import Any

from ..errors import StoreError

#: insert, or take over an expired lease, or renew our own; no row back: held by another
_LEASE_SQL = (
    "INSERT INTO leader (name, holder, expires_at, updated_at) "
    "VALUES (:role, :holder, {now} + :ttl, {now}) "
    "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
    "expires_at = excluded.expires_at, updated_at = excluded.updated_at "
    "WHERE leader.holder = excluded.holder OR leader.expires_at < excluded.updated_at "
    "RETURNING holder, expires_at"
)


class SqlLeases:
    """A :class:`~idlewatch.ports.LeaseStore` on the store's database.

    Each call is one statement with no explicit transaction: a connection lost in the middle
    of a transaction would stay stuck in ``databases`` for the long-lived lease task.
    """

    def __init__(self, db: Any, now_sql: str) -> None:
        self._db = db
        self._take_sql = _LEASE_SQL.format(now=now_sql)

    async def acquire_lease(self, role: str, holder: str, ttl_s: float) -> tuple[str, float]:
        """Take or renew ``role`` when free, expired or ours, by the database's clock."""
        values = {"role": role, "holder": holder, "ttl": ttl_s}
        try:  # one atomic statement; no transaction a lost connection could leave stuck
            row = await self._db.fetch_one(self._take_sql, values)
            if row is None:  # someone else holds a valid lease: who, for the record
                row = await self._db.fetch_one(
                    "SELECT holder, expires_at FROM leader WHERE name = :role", {"role": role}
                )
        except Exception as exc:
            raise StoreError(f"cannot take the {role} lease: {exc}") from exc
        if row is None:
            raise StoreError(f"the {role} lease vanished while being read")
        return str(row._mapping["holder"]), float(row._mapping["expires_at"])

    async def release_lease(self, role: str, holder: str) -> None:
        """Drop the lease now if ``holder`` has it."""
        try:
            await self._db.execute(
                "DELETE FROM leader WHERE name = :role AND holder = :holder",
                {"role": role, "holder": holder},
            )
        except Exception as exc:
            raise StoreError(f"cannot release the {role} lease: {exc}") from exc
