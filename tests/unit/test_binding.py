"""One database, one engine (issue 22, item 11): replicas on one database that watch
different engines refuse to start; the same engine, or managers of one Swarm, share it;
a rebuilt host takes its database over once the old engine's records are stale."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
from idlewatch import Settings, Watcher
from idlewatch.binding import DatabaseShared, mismatch
from idlewatch.models import EngineInfo, EngineRecord

from tests.fakes import FakeDocker, FakeStore

HOST_A = EngineInfo("20.10", "1.41", False, False, id="ENGINE-A", name="host-a")


def _watcher(store: FakeStore, engine_id: str, replica: str) -> Watcher:
    docker = FakeDocker()
    docker.engine_id = engine_id
    settings = Settings(
        docker_url="unix:///f.sock", database_url="sqlite:///u.db", replica_id=replica
    )
    return Watcher(settings, docker=docker, store=store)


async def test_a_replica_of_another_engine_refuses_to_start_naming_both() -> None:
    store = FakeStore()
    async with _watcher(store, "ENGINE-A", "a1"):
        with pytest.raises(DatabaseShared) as refused:
            await _watcher(store, "ENGINE-B", "b1").open()
        message = refused.value.message
        assert "ENGINE-A" in message and "ENGINE-B" in message and "a1" in message
        assert "database of its own" in message and "Swarm" in message
        async with _watcher(store, "ENGINE-A", "a2") as same_engine:  # the same engine: fine
            assert not any("another Docker engine" in r for r in same_engine.health().reasons)


def test_managers_of_one_swarm_share_a_database_and_stale_records_are_history() -> None:
    b_manager = replace(HOST_A, id="ENGINE-B", name="host-b", cluster_id="SWARM-1")
    a_record = EngineRecord("a1", "ENGINE-A", "host-a", "unix:///a", "SWARM-1", 1.0)
    assert mismatch(b_manager, "unix:///b", [a_record], "db", 60) is None
    other_swarm = replace(b_manager, cluster_id="SWARM-2")
    assert mismatch(other_swarm, "unix:///b", [a_record], "db", 60) is not None
    gone = replace(a_record, cluster_id=None, seen_s_ago=61.0)
    assert mismatch(other_swarm, "unix:///b", [gone], "db", 60) is None, "a rebuilt host"


async def test_a_rebuilt_host_takes_its_database_over_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FakeStore()
    old_at = 0.0  # the old engine's replica last recorded at the epoch: long gone
    store.engine_rows["old-1"] = (HOST_A, "unix:///a", old_at)
    caplog.set_level(logging.INFO, logger="idlewatch.binding")
    async with _watcher(store, "ENGINE-NEW", "new-1"):
        pass
    assert any("taking database" in r.getMessage() and "old-1" in r.getMessage()
               for r in caplog.records)  # fmt: skip
