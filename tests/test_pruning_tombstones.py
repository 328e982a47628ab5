"""Tombstones revisited (issue 13 point 5, docs/storage.md): a MOVED tombstone whose
departure left no journal record (its DONE record pruned before tombstones were pruned
with it, or kept then because a condition did not hold) is found by the periodic pruning
from the tombstone alone, and deleted under the same rule: past the retention, a custody
home, the tombstone still naming that departure, nothing staged, the fence not raised.

Hosts served in-process on real SQLite stores with settable clocks. The journal record is
removed straight from the store, as the pruner before the settled-record change did.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta
from pathlib import Path

from gateway.handoff.journal import fence_key, object_key, source_key
from gateway.handoff.pruning import TOMBSTONE_SCAN_INTERVAL, minimum_retention
from gateway.runtime.compaction import StoreArchive
from gateway.stores import Expect
from gateway.testing import HostSpec, build_world
from gateway.testing.harness import InProcessWorld
from tests.conftest import HOST_A, HOST_A2, HOST_B
from tests.test_archive_retention import _cycle
from tests.test_compaction_runtime import SMALL, TICK, world_with

HOMED = "obj://org-a.example/pruned/homed"
PLAIN = "obj://org-a.example/pruned/plain"
JUMP = minimum_retention(timedelta(seconds=60)) + timedelta(days=1)


def _forget_journal(world: InProcessWorld, host_id: str, object_id: str) -> None:
    """Delete the departure's source record, leaving the tombstone (as an old pruner
    did); checks that it was DONE and is the one the tombstone names."""
    store = world.hosts[host_id].store
    tombstone = world.run(world.hosts[host_id].journal.object("default", object_id))
    assert tombstone is not None and tombstone.value.moved_to
    key = source_key(tombstone.value.migration_id)
    assert world.run(store.get(key)) is not None
    world.run(store.delete(key, etag=Expect.ANY))


def _kept(world: InProcessWorld, host_id: str, object_id: str) -> tuple[bool, bool]:
    found = world.run(
        world.hosts[host_id].store.get_many(
            [object_key("default", object_id), fence_key("default", object_id)]
        )
    )
    return object_key("default", object_id) in found, fence_key("default", object_id) in found


def test_a_homed_tombstone_without_its_journal_record_goes_after_the_retention(
    tmp_path: Path,
) -> None:
    world = InProcessWorld(
        build_world(
            tmp_path,
            [HostSpec(host_id=HOST_A), HostSpec(host_id=HOST_A2), HostSpec(host_id=HOST_B)],
        )
    )
    with contextlib.closing(world):
        world.create(HOST_A, HOMED, spec={"data": {"n": 1}, "grant": {"home": HOST_A2}})
        world.create(HOST_A, PLAIN, spec={"data": {"n": 2}, "grant": {}})
        for object_id in (HOMED, PLAIN):
            # Away, back (A's fence is raised by the arrival), and away again.
            for source, to in ((HOST_A, HOST_B), (HOST_B, HOST_A), (HOST_A, HOST_B)):
                world.migrate(object_id, source=source, to=to)
                world.wait_settled(object_id)
            _forget_journal(world, HOST_A, object_id)
        world.recover(HOST_A)
        assert _kept(world, HOST_A, HOMED) == (True, True), "nothing goes before the retention"
        for host_id in (HOST_A, HOST_A2, HOST_B):
            world.clock(host_id).skew(JUMP)
        world.recover(HOST_A)
        assert _kept(world, HOST_A, HOMED) == (False, False)
        assert _kept(world, HOST_A, PLAIN) == (True, True), "without a home it is all there is"
        # The object still lives on B, and goes back to A as to a host that never held it.
        world.migrate(HOMED, source=HOST_B, to=HOST_A)
        for object_id in (HOMED, PLAIN):
            world.assert_invariants(object_id)


def test_with_an_archive_retention_a_tombstone_waits_for_its_segments(tmp_path: Path) -> None:
    """The tombstone is the only way to find the departed object's segments: the pruner
    keeps it while they are there, and deletes it in a later pass once they are gone."""
    specs = (HOST_A, HOST_A2, HOST_B)
    retention = JUMP + timedelta(days=5)  # longer than the tombstone's own retention
    world = InProcessWorld(
        world_with(
            tmp_path,
            {
                "compaction": {
                    **SMALL,
                    "archive_retention_seconds": int(retention.total_seconds()),
                }
            },
            specs,
        )
    )
    with contextlib.closing(world):
        host_a = world.hosts[HOST_A]
        world.create(
            HOST_A,
            HOMED,
            spec={
                "data": {"n": 0},
                "grant": {
                    "home": HOST_A2,
                    "capabilities": [{"resource": "state:self", "actions": ["read", "write"]}],
                },
                "cycle": {"interval_seconds": 1},
                "rules": TICK,
            },
        )
        world.run(_cycle(host_a, world.clock(HOST_A), HOMED, 40))
        pairs, _etag = world.run(StoreArchive(host_a.store).held("default", HOMED))
        assert len(pairs) >= 2
        for host_id in (HOST_A2, HOST_B):
            world.clock(host_id).skew(80)
        world.migrate(HOMED, source=HOST_A, to=HOST_B)
        world.wait_settled(HOMED)
        tombstone = world.run(host_a.journal.object("default", HOMED))
        assert tombstone is not None
        departure = tombstone.value.migration_id
        for host_id in specs:
            world.clock(host_id).skew(JUMP)
        world.recover(HOST_A)  # the DONE record goes; the tombstone waits for its segments
        assert world.run(host_a.store.get(source_key(departure))) is None
        assert _kept(world, HOST_A, HOMED)[0], "the tombstone stays while segments remain"
        assert world.run(StoreArchive(host_a.store).held("default", HOMED))[0] == pairs
        for host_id in specs:
            world.clock(host_id).skew(retention - JUMP + TOMBSTONE_SCAN_INTERVAL)
        world.recover(HOST_A)  # segments past their retention, then the tombstone
        assert world.run(StoreArchive(host_a.store).held("default", HOMED))[0] == []
        assert _kept(world, HOST_A, HOMED) == (False, False)
