"""A cycle of an object that this runner committed, and nobody wrote since, reads the
object's ETag only (issue 13, P5): the runner remembers the object each cycle wrote under
the ETag the store gave that write. What it remembers is exact -- the same ETag is the
same bytes -- and never more than a shortcut: an object written by anyone else is read
again, a store that returns no ETags (Dapr) is read every cycle, and a remembered object
that is not the stored one any more can only lose its conditional commit, after which it
is forgotten and read again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gateway.authority import CapabilitySet, EffectiveAuthority
from gateway.errors import AdmissionDeniedError, RuleError
from gateway.handoff.journal import Journal, object_key
from gateway.host import Host
from gateway.lineage import EntryKind
from gateway.model import GovernedObject
from gateway.objectspec import parse_spec
from gateway.rules import compiled, rule_from_mapping
from gateway.runtime.cycle import CycleResult, CycleRunner, _Derived, _Held
from gateway.stores import Item, Operation, StateStore
from gateway.testing import HostSpec, World, build_world, create_from_spec
from tests.conftest import HOST_A
from tests.test_cycle import in_host

OFFERS = {"offers": [{"resource": "state:self", "actions": ["read", "write"]}]}
TENANT = "default"


class Watched:
    """Delegates to a real store; counts the values and ETags read. ``etags_returned``
    False makes its transact answer None, as the Dapr store does; ``stale`` makes its
    ETag reads answer an older ETag for some keys (a memo that is not current)."""

    def __init__(self, store: StateStore, *, etags_returned: bool = True) -> None:
        self.store = store
        self.etags_returned = etags_returned
        self.values_read = 0
        self.etag_reads = 0
        self.stale: dict[str, str] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def get(self, key: str) -> Item | None:
        self.values_read += 1
        return await self.store.get(key)

    async def get_many(self, keys: Sequence[str]) -> dict[str, Item]:
        found = await self.store.get_many(keys)
        self.values_read += len(found)
        return found

    async def get_etags(self, keys: Sequence[str]) -> dict[str, str]:
        self.etag_reads += len(keys)
        found = await self.store.get_etags(keys)
        return {key: self.stale.get(key, etag) for key, etag in found.items()}

    async def transact(self, operations: Sequence[Operation]) -> dict[str, str] | None:
        etags = await self.store.transact(operations)
        return etags if self.etags_returned else None


def spec() -> Any:
    return parse_spec(
        {
            "data": {"n": 0, "invoice": "INV-1"},
            "grant": {"capabilities": [{"resource": "state:self", "actions": ["write"]}]},
            "cycle": {"interval_seconds": 0.001},
            "rules": [
                {"name": "tick", "when": "true", "write": '{"n": generation, "seen": data.invoice}'}
            ],
        },
        source="test",
    )


@pytest.fixture
def world(tmp_path: Path) -> World:
    return build_world(tmp_path, [HostSpec(host_id=HOST_A, policy=OFFERS)])


def runner(host: Host, store: Watched) -> CycleRunner:
    return CycleRunner(replace(host.context, journal=Journal(store)))  # type: ignore[arg-type]


async def cycle(cycles: CycleRunner, object_id: str) -> CycleResult:
    await asyncio.sleep(0.002)  # due again (1 ms interval)
    answer = (await cycles.run_many(TENANT, [(object_id, None)]))[object_id]  # type: ignore[list-item]
    assert not isinstance(answer, Exception), answer
    return answer.result


def data(obj: GovernedObject) -> dict[str, Any]:
    return dict(json.loads(obj.data))


def evaluated(obj: GovernedObject) -> list[int]:
    return [e.generation for e in obj.lineage.entries if e.kind is EntryKind.EVALUATED]


def test_cycles_of_an_object_it_committed_read_only_its_etag(world: World) -> None:
    async def scenario(host: Host) -> None:
        object_id = "obj://org-a.example/memo/one"
        await create_from_spec(host, object_id, spec())
        store = Watched(host.store)
        cycles = runner(host, store)
        assert await cycle(cycles, object_id) is CycleResult.EVALUATED
        assert store.values_read == 1  # the first cycle reads the object
        for _ in range(4):
            assert await cycle(cycles, object_id) is CycleResult.EVALUATED
        assert store.values_read == 1  # ... and the others its ETag only
        assert store.etag_reads == 4
        # What they committed is what reading and decoding would have given each time:
        # consecutive generations, each write seeing the data the one before left.
        obj = await host.get_object(object_id, tenant=TENANT)
        assert evaluated(obj) == [0, 1, 2, 3, 4]
        assert data(obj) == {"n": 4, "invoice": "INV-1", "seen": "INV-1"}
        entries = list(obj.lineage.entries)
        assert [e.prev for e in entries[1:]] == [e.leaf_hash() for e in entries[:-1]]  # chained
        assert [e.seq for e in entries] == list(range(len(entries)))

    in_host(world, scenario)


def test_an_object_written_by_another_writer_is_read_again(world: World) -> None:
    async def scenario(host: Host) -> None:
        object_id = "obj://org-a.example/memo/shared"
        await create_from_spec(host, object_id, spec())
        store = Watched(host.store)
        cycles = runner(host, store)
        assert await cycle(cycles, object_id) is CycleResult.EVALUATED
        # Another writer (another process's runner, an update) changes the object.
        assert await cycle(runner(host, Watched(host.store)), object_id) is (CycleResult.EVALUATED)
        key = object_key(TENANT, object_id)
        current = await host.store.get(key)
        assert current is not None
        obj = host.journal.decode_object(key, current.value)
        changed = replace(obj, data=json.dumps({**data(obj), "invoice": "INV-2"}).encode())
        await host.store.transact([host.journal.put_object(TENANT, changed, current.etag)])
        read = store.values_read
        assert await cycle(cycles, object_id) is CycleResult.EVALUATED
        assert store.values_read == read + 1  # its ETag changed: read again
        obj = await host.get_object(object_id, tenant=TENANT)
        assert evaluated(obj) == [0, 1, 2]  # no generation lost or run twice
        assert data(obj)["seen"] == "INV-2"  # the rules saw the other writer's data

    in_host(world, scenario)


def test_a_store_that_returns_no_etags_is_read_every_cycle(world: World) -> None:
    """The Dapr store answers a transaction without ETags: nothing is remembered, and no
    ETag read is made (on Dapr it would read the values as well)."""

    async def scenario(host: Host) -> None:
        object_id = "obj://org-a.example/memo/dapr-like"
        await create_from_spec(host, object_id, spec())
        store = Watched(host.store, etags_returned=False)
        cycles = runner(host, store)
        for _ in range(3):
            assert await cycle(cycles, object_id) is CycleResult.EVALUATED
        assert (store.values_read, store.etag_reads) == (3, 0)
        assert evaluated(await host.get_object(object_id, tenant=TENANT)) == [0, 1, 2]

    in_host(world, scenario)


def test_a_remembered_object_that_is_not_stored_any_more_only_loses_its_commit(
    world: World,
) -> None:
    """Were the memo ever wrong (here the store is made to answer the remembered ETag
    after another writer committed), the cycle's commit, conditional on that ETag, is
    refused: nothing of it is written, the memo is forgotten, and the next cycle reads
    the object and runs the generation that is due."""

    async def scenario(host: Host) -> None:
        object_id = "obj://org-a.example/memo/stale"
        key = object_key(TENANT, object_id)
        await create_from_spec(host, object_id, spec())
        store = Watched(host.store)
        cycles = runner(host, store)
        assert await cycle(cycles, object_id) is CycleResult.EVALUATED
        remembered = (await host.store.get_etags([key]))[key]
        assert await cycle(runner(host, Watched(host.store)), object_id) is (CycleResult.EVALUATED)
        store.stale[key] = remembered
        assert await cycle(cycles, object_id) is CycleResult.CONFLICT
        assert evaluated(await host.get_object(object_id, tenant=TENANT)) == [0, 1]
        del store.stale[key]
        read = store.values_read
        assert await cycle(cycles, object_id) is CycleResult.EVALUATED
        assert store.values_read == read + 1
        assert evaluated(await host.get_object(object_id, tenant=TENANT)) == [0, 1, 2]

    in_host(world, scenario)


def _object(index: int) -> GovernedObject:
    return GovernedObject(
        object_id=f"obj://org-a.example/x/{index}",
        tenant=TENANT,
        data=b"{}",
        content_type="application/json",
    )


def test_the_memo_of_committed_objects_is_bounded_and_keeps_objects_in_use() -> None:
    now = [0.0]
    held = _Held(total_bytes=300, idle_seconds=60, clock=lambda: now[0])
    for index in range(3):
        held.put(f"k{index}", f"e{index}", _object(index), 100, _Derived())
    assert held.get("k0", "e0") is not None
    assert held.get("k0", "other") is None  # another ETag: another value
    assert held.get("k0", None) is None  # gone from the store
    # Full of objects used within the idle time: a newcomer is not kept.
    held.put("k3", "e3", _object(3), 100, _Derived())
    assert "k3" not in held
    assert all(f"k{index}" in held for index in range(3))
    # Once the least recently used has been idle long enough, it makes room.
    now[0] = 61.0
    held.get("k0", "e0")
    held.put("k3", "e3", _object(3), 100, _Derived())
    assert "k3" in held and "k1" not in held and "k0" in held
    # A write of a key replaces what was held for it; forgetting drops it.
    held.put("k0", "e9", _object(0), 100, _Derived())
    assert held.get("k0", "e0") is None and held.get("k0", "e9") is not None
    held.forget("k0")
    assert "k0" not in held and held.derived("k0") is None


def _rule(when: str) -> Any:
    return rule_from_mapping({"name": "r", "when": when, "publish": {"topic": "a/b"}}, "test")


def test_what_a_cycle_derived_is_reused_only_for_the_very_values_it_came_from() -> None:
    derived = _Derived()
    obj = replace(_object(0), rules=(_rule("true"),), grants=("g1",), data=b'{"a":1}')
    ruleset = derived.ruleset_of(obj)
    assert ruleset is compiled(obj.rules)
    assert derived.ruleset_of(obj) is ruleset
    other = replace(obj, rules=(_rule("false"),))
    assert derived.ruleset_of(other).rules[0].rule.when == "false"
    loads = []

    def load(o: GovernedObject) -> dict[str, Any]:
        loads.append(o.data)
        return dict(json.loads(o.data))

    assert derived.data_of(obj, load) == {"a": 1}
    assert derived.data_of(obj, load) == {"a": 1} and len(loads) == 1
    # Equal bytes in another bytes object are decoded again (identity is the key).
    assert derived.data_of(replace(obj, data=bytes(bytearray(obj.data))), load) == {"a": 1}
    assert len(loads) == 2
    assert derived.credentials_of(obj) == obj.credentials_digest()
    regranted = replace(obj, grants=("g2",))
    assert derived.credentials_of(regranted) == regranted.credentials_digest()
    # Data rules cannot read raises every time; nothing is remembered for it.
    broken = replace(obj, data=b'{"a":')

    def strict(o: GovernedObject) -> dict[str, Any]:
        raise RuleError("not JSON")

    for _ in range(2):
        with pytest.raises(RuleError):
            derived.data_of(broken, strict)


def test_remembered_admissions_are_permissions_of_that_very_authority() -> None:
    derived = _Derived()
    publish = EffectiveAuthority(
        allow=CapabilitySet.from_claim([{"res": "pubsub:alerts/*", "act": ["publish"]}])
    )
    equal = EffectiveAuthority(
        allow=CapabilitySet.from_claim([{"res": "pubsub:other/*", "act": ["publish"]}])
    )
    derived.require(publish, "pubsub:alerts/x", "publish")
    derived.require(publish, "pubsub:alerts/x", "publish")  # remembered
    with pytest.raises(AdmissionDeniedError):  # another authority is asked itself
        derived.require(equal, "pubsub:alerts/x", "publish")
    for _ in range(2):  # a refusal is never remembered
        with pytest.raises(AdmissionDeniedError):
            derived.require(publish, "pubsub:audit/x", "publish")


def test_a_large_batch_lets_the_event_loop_run_between_slices_of_its_evaluations(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch evaluates PREPARE_SLICE objects at a time and lets other tasks run in
    between (its reads answered on the loop's thread, it would otherwise hold the loop
    for the whole batch), and still commits the batch in one transaction."""
    from gateway.runtime import cycle as cycle_module

    monkeypatch.setattr(cycle_module, "PREPARE_SLICE", 2)

    async def scenario(host: Host) -> None:
        ids = [f"obj://org-a.example/memo/slice-{n}" for n in range(5)]
        for object_id in ids:
            await create_from_spec(host, object_id, spec())
        ticks: list[int] = []
        seen_at_commit: list[int] = []

        class Recording(Watched):
            async def transact(self, operations: Sequence[Operation]) -> dict[str, str] | None:
                seen_at_commit.append(len(ticks))
                return await super().transact(operations)

        async def ticker() -> None:
            while True:
                ticks.append(1)
                await asyncio.sleep(0)

        cycles = runner(host, Recording(host.store))
        await asyncio.sleep(0.002)
        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        started = len(ticks)
        answers = await cycles.run_many(TENANT, [(object_id, 0) for object_id in ids])
        task.cancel()
        assert {getattr(a, "result", a) for a in answers.values()} == {CycleResult.EVALUATED}
        assert len(seen_at_commit) == 1  # one transaction for the batch
        assert seen_at_commit[0] - started >= 2  # the ticker ran between the slices

    in_host(world, scenario)
