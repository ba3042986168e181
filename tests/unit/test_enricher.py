"""The enricher: a container's events wait behind its own look only, in their order; one
look per service at a time; closing mid-look leaves nothing waiting."""

from __future__ import annotations

import asyncio
from typing import Any

from idlewatch.enricher import Enricher
from idlewatch.models import (
    Agent,
    ContainerExecs,
    ContainerInfo,
    EngineEvent,
    EventType,
    Need,
    ServiceInfo,
    Snapshot,
    freeze,
)

from tests.waiting import until

MANAGED = freeze({"idlewatch.enable": "true"})


class Consumer:
    """Records what the enricher applies, in order."""

    def __init__(self) -> None:
        self.applied: list[tuple[str, str]] = []
        self.looked: list[str] = []
        self.services: list[tuple[str, ServiceInfo | None]] = []
        self.known: set[str] = set()
        self.seq = 0

    def accepts(self, ev: EngineEvent) -> bool:
        return True

    def apply(self, ev: EngineEvent) -> Need:
        self.applied.append((ev.actor_id, ev.action))
        return Need.NOTHING

    def resync(self, snapshot: Snapshot, *, periodic: bool) -> list[Agent]:
        return []

    def describe(self) -> str:
        return "test"

    def knows_container(self, container_id: str) -> bool:
        return container_id in self.known

    def apply_container(self, info: ContainerInfo) -> None:
        self.known.add(info.id)
        self.looked.append(info.id)

    def unknown_container(self, container_id: str) -> None:
        self.known.add(container_id)

    def forget_container(self, container_id: str) -> None:
        self.known.discard(container_id)

    def apply_service(
        self, info: ServiceInfo | None, service_id: str, seq_before: int | None = None
    ) -> None:
        self.services.append((service_id, info))

    def sessions_to_recover(self) -> list[str]:
        return []

    def recover_sessions(self, container_id: str, listing: ContainerExecs) -> None:
        self.applied.append((container_id, "recovered"))


class GatedEngine:
    """Looks that wait for the test to open their gate; counts looks in flight."""

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.in_flight: dict[str, int] = {}
        self.most_in_flight: dict[str, int] = {}
        self.calls: list[str] = []

    async def _gated(self, ref: str) -> None:
        self.calls.append(ref)
        self.in_flight[ref] = self.in_flight.get(ref, 0) + 1
        self.most_in_flight[ref] = max(self.most_in_flight.get(ref, 0), self.in_flight[ref])
        try:
            gate = self.gates.get(ref)
            if gate is not None:
                await gate.wait()
        finally:
            self.in_flight[ref] -= 1

    async def inspect_container(self, ref: str) -> ContainerInfo | None:
        await self._gated(ref)
        return ContainerInfo(ref, ref, "img", "running", MANAGED)

    async def inspect_service(self, ref: str) -> ServiceInfo | None:
        await self._gated(ref)
        return ServiceInfo(ref, ref, "img", MANAGED, 1, 1)

    async def open_execs(self, ref: str) -> ContainerExecs | None:
        await self._gated(ref)
        return ContainerExecs(None, ())


def ev(cid: str, action: str, t: int = 1, etype: EventType = EventType.CONTAINER) -> EngineEvent:
    return EngineEvent(etype, action, cid, t)


def make() -> tuple[GatedEngine, Consumer, Enricher]:
    engine, consumer = GatedEngine(), Consumer()
    enricher = Enricher(engine, consumer)  # type: ignore[arg-type]
    enricher.start()
    return engine, consumer, enricher


async def test_a_containers_events_wait_behind_its_look_in_order_others_go_on() -> None:
    engine, consumer, enricher = make()
    engine.gates["c1"] = asyncio.Event()
    try:
        enricher.submit(ev("c1", "exec_start", 1), Need.CONTAINER)
        await until(lambda: engine.in_flight.get("c1") == 1)
        assert enricher.holds("c1")
        enricher.submit(ev("c1", "exec_die", 2), Need.CONTAINER)  # arrives during the look
        enricher.submit(ev("c2", "exec_start", 3), Need.CONTAINER)
        await until(lambda: ("c2", "exec_start") in consumer.applied)  # not behind c1
        assert [a for a in consumer.applied if a[0] == "c1"] == []
        assert enricher.backlog == 2
        engine.gates["c1"].set()
        await asyncio.wait_for(enricher.settled(), 5)
        assert [a for a in consumer.applied if a[0] == "c1"] == [
            ("c1", "exec_start"),
            ("c1", "exec_die"),
        ]
        assert not enricher.holds("c1") and enricher.backlog == 0
        assert engine.calls.count("c1") == 1  # one look, then known
    finally:
        await enricher.close()


async def test_a_service_is_looked_at_once_at_a_time_and_again_when_asked_meanwhile() -> None:
    engine, consumer, enricher = make()
    engine.gates["s1"] = asyncio.Event()
    try:
        update = ev("s1", "update", etype=EventType.SERVICE)
        enricher.submit(update, Need.SERVICE)
        await until(lambda: engine.in_flight.get("s1") == 1)
        enricher.submit(update, Need.SERVICE)  # asked again while the first look runs
        enricher.submit(update, Need.SERVICE)
        for _ in range(20):
            await asyncio.sleep(0)
        assert engine.most_in_flight["s1"] == 1
        engine.gates["s1"].set()
        await asyncio.wait_for(enricher.settled(), 5)
        assert engine.most_in_flight["s1"] == 1
        assert engine.calls.count("s1") == 2  # the one in flight, then one for the asks
        assert [sid for sid, _ in consumer.services] == ["s1", "s1"]
    finally:
        await enricher.close()


async def test_closing_mid_look_releases_whoever_waits_for_it_to_settle() -> None:
    engine, _, enricher = make()
    for i in range(40):  # more than the workers: some never begin
        engine.gates[f"c{i}"] = asyncio.Event()
        enricher.submit(ev(f"c{i}", "exec_start"), Need.CONTAINER)
    await until(lambda: sum(engine.in_flight.values()) > 0)
    waiter = asyncio.create_task(enricher.settled())
    await enricher.close()
    await asyncio.wait_for(waiter, 5)
    assert sum(engine.in_flight.values()) == 0
    assert enricher.backlog == 0 and not enricher.holds("c39")


async def test_a_consumer_failure_mid_look_keeps_the_containers_later_events(
    caplog: Any,
) -> None:
    _, consumer, enricher = make()

    def broken(info: ContainerInfo) -> None:
        raise KeyError("a malformed inspect")

    consumer.apply_container = broken  # type: ignore[method-assign]
    try:
        enricher.submit(ev("c1", "exec_start", 1), Need.CONTAINER)
        enricher.submit(ev("c1", "exec_die", 2), Need.CONTAINER)
        await asyncio.wait_for(enricher.settled(), 5)
        assert consumer.applied == [("c1", "exec_start"), ("c1", "exec_die")]
        assert not enricher.holds("c1")
        assert "could not use the look at c1" in caplog.text
    finally:
        await enricher.close()
