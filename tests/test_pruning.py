"""Storage bounded by what lives (issue 13, point 5): settled migration records and
delivered events are pruned after the retention, fences of objects held here are kept.

Objects move back and forth between two in-process hosts; after each round both clocks
jump past the retention and a recovery pass runs. The set of keys each store holds is
then the same after every round: it follows the objects, not the migrations made.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta
from pathlib import Path

from gateway.handoff.journal import DESTINATION_PREFIX, SOURCE_PREFIX, fence_key
from gateway.handoff.pruning import minimum_retention
from gateway.stores import StateStore
from gateway.testing import HostSpec, build_world
from gateway.testing.harness import InProcessWorld
from tests.conftest import HOST_A, HOST_B

OBJECTS = [f"obj://org-a.example/pruned/{n}" for n in range(3)]


async def key_shape(store: StateStore) -> list[str]:
    """Every key but the transient ones: outbox events wait for the dispatcher (their
    pruning needs them delivered first), nonces for their transfer's expiry."""
    transient = ("events/", "pending/", "nonce/")
    return sorted(k for k in await store.list("") if not k.startswith(transient))


def test_store_keys_stay_flat_over_rounds_of_migrations(tmp_path: Path) -> None:
    world = InProcessWorld(
        build_world(tmp_path, [HostSpec(host_id=HOST_A), HostSpec(host_id=HOST_B)])
    )
    with contextlib.closing(world):
        for object_id in OBJECTS:
            world.create(HOST_A, object_id, data={"n": 1})
        jump = minimum_retention(timedelta(seconds=60)) + timedelta(days=1)
        shapes: dict[str, list[list[str]]] = {HOST_A: [], HOST_B: []}
        for _round in range(3):
            for object_id in OBJECTS:
                world.migrate(object_id, source=HOST_A, to=HOST_B)
                world.migrate(object_id, source=HOST_B, to=HOST_A)
            for host_id in (HOST_A, HOST_B):
                store = world.hosts[host_id].store
                journal = world.run(store.list("journal/"))
                assert journal, "settled records are kept until the retention passed"
                world.clock(host_id).skew(jump)
            for host_id in (HOST_A, HOST_B):
                world.recover(host_id)
                store = world.hosts[host_id].store
                assert world.run(store.list(SOURCE_PREFIX)) == []
                assert world.run(store.list(DESTINATION_PREFIX)) == []
                shapes[host_id].append(world.run(key_shape(store)))
        for host_id, rounds in shapes.items():
            assert rounds[0] == rounds[1] == rounds[2], host_id
        # Both hosts held every object: their fences stay, whatever the retention.
        for object_id in OBJECTS:
            for host_id in (HOST_A, HOST_B):
                fence = world.run(world.hosts[host_id].store.get(fence_key("default", object_id)))
                assert fence is not None, (host_id, object_id)
        for object_id in OBJECTS:
            world.assert_invariants(object_id)
