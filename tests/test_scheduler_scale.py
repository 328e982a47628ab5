"""The scheduler's work follows the objects due, not the objects held (issue 13, point 3).

A counting store between the scheduler and the host's real SQLite store shows what the
scheduler itself reads: every object once at start, then nothing per wake -- objects
that become active are scheduled from the object it is told about, cycles report their
own next due time, and the slow reconciliation reads only objects never seen.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from pathlib import Path

from gateway.config import load_config
from gateway.handoff.journal import Journal
from gateway.host import Host
from gateway.objectspec import ObjectSpec, parse_spec
from gateway.runtime.scheduler import WAKE_PREFIX, Scheduler
from gateway.stores import Item, Operation, StateStore
from gateway.testing import HostSpec, build_world, create_from_spec
from tests.conftest import HOST_A

OFFERS = {"offers": [{"resource": "state:self", "actions": ["read", "write"]}]}


class CountingStore:
    """Delegates to a real store; counts object values read and listings made."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.values_read = 0
        self.listings = 0

    async def get(self, key: str) -> Item | None:
        self.values_read += 1
        return await self.store.get(key)

    async def get_many(self, keys: Sequence[str]) -> dict[str, Item]:
        found = await self.store.get_many(keys)
        self.values_read += len(found)
        return found

    async def list(
        self, prefix: str, *, limit: int | None = None, start_after: str | None = None
    ) -> list[str]:
        self.listings += 1
        return await self.store.list(prefix, limit=limit, start_after=start_after)

    async def transact(self, operations: Sequence[Operation]) -> None:
        await self.store.transact(operations)


async def until(check: Callable[[], Awaitable[bool]], *, seconds: float = 20) -> None:
    """Wait for ``check`` to hold (a bound, not a timing assertion: only a hang fails)."""
    for _ in range(int(seconds / 0.02)):
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the scheduler never got there")


async def _now(value: bool | Awaitable[bool]) -> bool:
    return value if isinstance(value, bool) else await value


async def cycled(host: Host, object_id: str, generations: int) -> bool:
    return (await host.get_object(object_id, tenant="default")).generation >= generations


def spec(interval: float) -> ObjectSpec:
    return parse_spec(
        {
            "data": {"n": 0},
            "grant": {"capabilities": [{"resource": "state:self", "actions": ["write"]}]},
            "cycle": {"interval_seconds": interval},
            "rules": [{"name": "tick", "when": "true", "write": '{"n": generation}'}],
        },
        source="test",
    )


def test_wakes_read_nothing_but_what_is_due(tmp_path: Path) -> None:
    """40 resident objects cycling hourly, one cycling every 0.05 s, one created while the
    scheduler runs: the cycling ones advance, and after the first reconciliation the
    scheduler reads no object from the store (before: all of them at every 1 s scan and at
    every arrival)."""
    world = build_world(tmp_path, [HostSpec(host_id=HOST_A, policy=OFFERS)])

    async def main() -> None:
        host = await Host.open(load_config(world.config(HOST_A)))
        # As under `serve`: the scheduler runs in this process and is told directly, so
        # creations leave no wake markers for another process's scheduler.
        host._scheduling = True
        try:
            for index in range(40):
                await create_from_spec(
                    host, f"obj://org-a.example/idle/{index}", spec(3600), tenant="default"
                )
            busy = "obj://org-a.example/busy"
            await create_from_spec(host, busy, spec(0.05), tenant="default")
            counting = CountingStore(host.store)
            scheduler = Scheduler(
                host.cycles,
                Journal(counting),  # type: ignore[arg-type]
                ["default"],
                clock=host.clock,
                reconcile_interval=timedelta(hours=1),
            )
            stop = asyncio.Event()
            task = asyncio.create_task(scheduler.run(stop))
            await until(lambda: _now(scheduler.stats.evaluated >= 3))
            assert counting.values_read == 41  # the first reconciliation: each object once
            listings = counting.listings
            # An object made active here is scheduled from the object itself.
            late = "obj://org-a.example/late"
            scheduler.notice(await create_from_spec(host, late, spec(0.05), tenant="default"))
            await until(lambda: cycled(host, late, 3))
            generation = (await host.get_object(busy, tenant="default")).generation
            assert generation >= 3
            assert counting.values_read == 41
            assert counting.listings == listings
            # Asked to reconcile, it lists keys but reads only what it never saw: none.
            scheduler.notice()
            await until(lambda: _now(counting.listings != listings))
            assert counting.values_read == 41
            stop.set()
            await task
            idle = await host.get_object("obj://org-a.example/idle/0", tenant="default")
            # New objects are due at once, then in an hour: never more than one cycle.
            assert idle.generation <= 1
        finally:
            await host.close()

    asyncio.run(main())


def test_another_process_wakes_the_scheduler_through_a_marker(tmp_path: Path) -> None:
    """An object created by a host that does not run the scheduler (a CLI process) leaves
    a wake marker; the running scheduler takes it, reads that one object, and cycles it."""
    world = build_world(tmp_path, [HostSpec(host_id=HOST_A, policy=OFFERS)])

    async def main() -> None:
        host = await Host.open(load_config(world.config(HOST_A)))
        try:
            counting = CountingStore(host.store)
            scheduler = Scheduler(
                host.cycles,
                Journal(counting),  # type: ignore[arg-type]
                ["default"],
                clock=host.clock,
                reconcile_interval=timedelta(hours=1),
                wake_poll=timedelta(milliseconds=50),
            )
            stop = asyncio.Event()
            task = asyncio.create_task(scheduler.run(stop))
            await until(lambda: _now(counting.listings >= 3))
            assert counting.values_read == 0
            other = "obj://org-a.example/from-cli"
            await create_from_spec(host, other, spec(0.05), tenant="default")
            await until(lambda: cycled(host, other, 2))
            assert counting.values_read == 1
            assert await host.store.list(WAKE_PREFIX) == []
            stop.set()
            await task
        finally:
            await host.close()

    asyncio.run(main())
