"""A cycle whose object is read from the store (a runner that holds nothing of it: a
restart, or a host cycling more objects than its memos hold) writes it back hashing only
the entries the cycle appended and the one they link to: the store hands back the ids
it keeps for the record's entry rows (gateway.stores.Item.entry_ids, session 40) and the
runner's read passes them on. What it writes is what hashing every entry would write."""

from __future__ import annotations

import pytest

from gateway import merkle
from gateway.handoff import journal
from gateway.handoff.journal import object_key
from gateway.host import Host
from gateway.lineage import LEAF_HASH_BYTES
from gateway.stores import PutEntries
from gateway.testing import World, create_from_spec
from tests.test_cycle import in_host
from tests.test_cycle_etags import TENANT, Watched, cycle, evaluated, runner, spec
from tests.test_cycle_etags import world as world


def test_a_cycle_of_an_object_read_from_the_store_hashes_only_its_new_entries(
    world: World,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def scenario(host: Host) -> None:
        object_id = "obj://org-a.example/ids/one"
        await create_from_spec(host, object_id, spec())
        key = object_key(TENANT, object_id)
        warm = runner(host, Watched(host.store))
        generations = 0
        while True:  # cycled until the store keeps it as a head and entry rows
            await cycle(warm, object_id)
            generations += 1
            item = await host.store.get(key)
            assert item is not None
            if item.entry_ids:
                break
            assert generations < 4 * journal.SPLIT_MIN_ENTRIES
        carried = len(item.entry_ids) // LEAF_HASH_BYTES
        assert carried >= journal.SPLIT_MIN_ENTRIES

        hashed: list[bytes] = []
        plain = merkle.leaf_hash

        def counted(data: bytes) -> bytes:
            hashed.append(data)
            return plain(data)

        writes: list[PutEntries] = []
        store = Watched(host.store)
        transact = store.transact

        async def recorded(operations):  # type: ignore[no-untyped-def]
            writes.extend(op for op in operations if type(op) is PutEntries)
            return await transact(operations)

        store.transact = recorded  # type: ignore[method-assign]
        cold = runner(host, store)  # a new runner and journal: nothing of the object held
        monkeypatch.setattr(merkle, "leaf_hash", counted)
        await cycle(cold, object_id)
        monkeypatch.undo()

        assert store.values_read == 1  # read from the store, not from a memo
        assert len(writes) == 1
        obj = await host.get_object(object_id, tenant=TENANT)
        entries = obj.lineage.entries
        appended = len(entries) - carried
        assert 1 <= appended < carried
        # The appended entries and the entry the first of them links to; not every one.
        assert len(hashed) <= appended + 1, (len(hashed), appended, carried)
        # ... and the ids written are the ids of every entry, as hashing them all gives.
        assert writes[0].entry_ids == b"".join(entry.leaf_hash() for entry in entries)
        assert evaluated(obj) == list(range(generations + 1))

    in_host(world, scenario)
