"""Which engine each replica sharing the database watches: one row per replica, renewed
with its lease rounds and stamped by the database's own clock."""

from __future__ import annotations

from typing import Any

from ..errors import StoreError
from ..models import EngineInfo, EngineRecord

_UPSERT = (
    "INSERT INTO replicas (replica, engine_id, engine_name, address, cluster_id, root_dir, "
    "seen_at) VALUES (:replica, :engine_id, :engine_name, :address, :cluster_id, :root_dir, "
    "{now}) ON CONFLICT (replica) DO UPDATE SET engine_id = excluded.engine_id, "
    "engine_name = excluded.engine_name, address = excluded.address, "
    "cluster_id = excluded.cluster_id, root_dir = excluded.root_dir, "
    "seen_at = excluded.seen_at"
)
OTHERS_SQL = (
    "SELECT replica, engine_id, engine_name, address, cluster_id, root_dir, "
    "{now} - seen_at AS ago FROM replicas WHERE replica <> :replica ORDER BY seen_at DESC"
)
#: records this old are history (a replica id names a process: restarts add rows)
KEPT_S = 86400.0
_PRUNE = "DELETE FROM replicas WHERE seen_at < {now} - :kept_s"


class SqlEngines:
    """An :class:`~idlewatch.ports.EngineRecords` on the store's database."""

    def __init__(self, db: Any, now_sql: str) -> None:
        self._db = db
        self._upsert_sql = _UPSERT.format(now=now_sql)
        self._others_sql = OTHERS_SQL.format(now=now_sql)
        self._prune_sql = _PRUNE.format(now=now_sql)

    async def record(self, replica: str, engine: EngineInfo, address: str) -> None:
        """Say (again) which engine ``replica`` watches."""
        values = {
            "replica": replica,
            "engine_id": engine.id,
            "engine_name": engine.name,
            "address": address,
            "cluster_id": engine.cluster_id,
            "root_dir": engine.root_dir,
        }
        try:
            await self._db.execute(self._upsert_sql, values)
        except Exception as exc:
            raise StoreError(f"cannot record this replica's engine: {exc}") from exc

    async def others(self, replica: str) -> list[EngineRecord]:
        """What the other replicas said of their engines, newest first (a day's worth:
        older records are deleted here)."""
        try:
            await self._db.execute(self._prune_sql, {"kept_s": KEPT_S})
            rows = await self._db.fetch_all(self._others_sql, {"replica": replica})
        except Exception as exc:
            raise StoreError(f"cannot read the replicas' engines: {exc}") from exc
        return [record_of(dict(r._mapping)) for r in rows]


def record_of(row: dict[str, Any]) -> EngineRecord:
    """A ``replicas`` row (with its age as ``ago``) as a model."""
    return EngineRecord(
        replica=row["replica"],
        engine_id=row["engine_id"],
        engine_name=row["engine_name"],
        address=row["address"],
        cluster_id=row["cluster_id"],
        seen_s_ago=max(0.0, float(row["ago"])),
        root_dir=row["root_dir"],
    )
