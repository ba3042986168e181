"""Tracking from the events stream against the private engine (sweep interval: an hour)."""

from __future__ import annotations

from collections.abc import Callable

from idlewatch import Agent, Kind, Settings, Status, Watcher
from idlewatch.store import SqlStore

from tests.private_engine import PrivateEngine
from tests.waiting import until

from .conftest import create_service, run_container, running_tasks, wait_for_service


def has(status: Status, **fields: int) -> Callable[[Agent | None], bool]:
    """Predicate: the agent exists with this status (and these field values)."""

    def check(a: Agent | None) -> bool:
        return (
            a is not None
            and a.status is status
            and all(getattr(a, k) == v for k, v in fields.items())
        )

    return check


async def stored(w: Watcher, name: str) -> Agent | None:
    """The agent's row as committed to the database."""
    await w.flush(10)
    rows = {a.name: a for a in await stored_rows(w)}
    return rows.get(name)


async def stored_rows(w: Watcher) -> list[Agent]:
    """Every agent row committed to the watcher's database, read through a store of our own."""
    store = SqlStore(w.settings.database_url)
    await store.connect()
    try:
        return await store.load_agents()
    finally:
        await store.close()


async def test_discovery_tracks_only_labelled(
    engine: PrivateEngine, settings_for: Callable[..., Settings]
) -> None:
    run_container(engine, "labelled-c")
    run_container(engine, "plain-c", managed=False)
    create_service(engine, "labelled-s")
    await until(lambda: running_tasks(engine, "labelled-s") == 1, what="service task")
    async with Watcher(settings_for()) as w:
        await w.wait_synced(30)
        assert {a.name for a in w.agents()} == {"labelled-c", "labelled-s"}
        c = w.get("labelled-c")
        assert c is not None and c.kind is Kind.CONTAINER and c.status is Status.RUNNING
        s = w.get("labelled-s")
        assert s is not None and s.kind is Kind.SERVICE
        assert has(Status.RUNNING, replicas=1, running=1)(s)
        await w.flush(10)
        assert {a.name for a in await stored_rows(w)} == {"labelled-c", "labelled-s"}


async def test_container_changes_reach_the_store(engine: PrivateEngine, watcher: Watcher) -> None:
    run_container(engine, "box")
    steps = [
        ((), has(Status.RUNNING, running=1)),
        (("stop", "box"), has(Status.EXITED, running=0)),
        (("start", "box"), has(Status.RUNNING, running=1)),
        (("pause", "box"), has(Status.PAUSED)),
        (("unpause", "box"), has(Status.RUNNING)),
        (("kill", "box"), has(Status.EXITED, running=0)),
        (("start", "box"), has(Status.RUNNING)),
        (("rm", "-f", "box"), has(Status.REMOVED, running=0)),
    ]
    for cmd, check in steps:
        if cmd:
            engine.cli(*cmd)
        await watcher.wait_for("box", check, 10)
        row = await stored(watcher, "box")
        assert check(row), f"after docker {' '.join(cmd)}: stored {row}"


async def test_service_scale_reaches_the_store(engine: PrivateEngine, watcher: Watcher) -> None:
    create_service(engine, "svc")
    await wait_for_service(watcher, engine, "svc", has(Status.RUNNING, replicas=1, running=1), 20)
    engine.cli("service", "scale", "-d", "svc=2")
    await wait_for_service(watcher, engine, "svc", has(Status.RUNNING, replicas=2, running=2), 20)
    assert has(Status.RUNNING, replicas=2, running=2)(await stored(watcher, "svc"))
    engine.cli("service", "scale", "-d", "svc=0")
    await wait_for_service(watcher, engine, "svc", has(Status.STOPPED, replicas=0, running=0), 20)
    row = await stored(watcher, "svc")
    assert has(Status.STOPPED, replicas=0, running=0)(row)
    assert row is not None and row.restore_replicas == 2
    engine.cli("service", "rm", "svc")
    await watcher.wait_for("svc", has(Status.REMOVED), 20)


async def test_new_agents_appear_and_unlabelled_never_do(
    engine: PrivateEngine, watcher: Watcher
) -> None:
    run_container(engine, "late", labels={"idlewatch.idle-timeout": "5m"})
    run_container(engine, "ignored", managed=False)
    create_service(engine, "late-svc", labels={"idlewatch.idle-timeout": "never"})
    await watcher.wait_for("late", has(Status.RUNNING), 10)
    await watcher.wait_for("late-svc", has(Status.RUNNING, running=1), 20)
    late, svc = watcher.get("late"), watcher.get("late-svc")
    assert late is not None and late.idle_timeout_s == 300
    assert svc is not None and svc.idle_timeout_s is None
    assert watcher.get("ignored") is None


async def test_exec_is_activity_but_healthchecks_are_not(
    engine: PrivateEngine, watcher: Watcher
) -> None:
    run_container(
        engine,
        "hc",
        extra=("--health-cmd", "true", "--health-interval", "1s", "--health-start-period", "0s"),
    )
    await watcher.wait_for("hc", has(Status.RUNNING), 10)
    started = watcher.get("hc")
    assert started is not None
    # let at least three healthcheck runs go by (each is exec_create/start/die on the stream)
    base = watcher.status().events_received
    await until(lambda: watcher.status().events_received >= base + 9, 20, "healthcheck execs")
    await watcher.settled(10)
    after_health = watcher.get("hc")
    assert after_health is not None
    assert after_health.last_activity == started.last_activity, "healthchecks counted as use"
    engine.cli("exec", "hc", "echo", "hello")
    used = await watcher.wait_for(
        "hc", lambda a: a is not None and a.last_activity > started.last_activity, 10
    )
    assert used is not None
