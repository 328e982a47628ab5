"""Copies a peer leaves staged here are bounded in number and bytes.

A copy is staged at Prepare and stays until its source's Commit or Abort (or its
decision, asked by recovery). A source that never sends either, dishonest or gone,
left every copy it staged in the store for good: the only bound was the optional tenant
quota. Each stage now writes a marker ``staged-by/<peer tag>/<size>-<migration>``, gone
with the copy's ``open/destination/`` marker, and a Prepare from a peer that already
has MAX_STAGED_PER_PEER copies or MAX_STAGED_BYTES_PER_PEER bytes staged here is
refused before anything is written: the source aborts and its object stays live there.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from gateway.errors import GatewayError
from gateway.handoff import destination as destination_module
from gateway.handoff.records import SourceStep
from gateway.model import LifecycleState
from gateway.testing import HostSpec, build_world
from gateway.testing.harness import InProcessWorld
from tests.conftest import HOST_A, HOST_B

LIMIT = 3


def _objects(n: int) -> list[str]:
    return [f"obj://org-a.example/staged/o-{i}" for i in range(n)]


def test_a_peer_that_never_commits_stages_a_bounded_number_of_copies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(destination_module, "MAX_STAGED_PER_PEER", LIMIT)
    world = InProcessWorld(
        build_world(tmp_path, [HostSpec(host_id=HOST_A), HostSpec(host_id=HOST_B)])
    )
    with contextlib.closing(world):
        ids = _objects(LIMIT + 1)
        for object_id in ids:
            world.create(HOST_A, object_id, data={"n": 1})
        # Every Commit A sends is lost: its copies stay staged at B.
        world.network(HOST_A).drop("commit", to=HOST_B, times=1000)
        results = [world.migrate(i, source=HOST_A, to=HOST_B) for i in ids[:LIMIT]]
        assert all(r.step is SourceStep.COMMITTED for r in results)
        with pytest.raises(GatewayError, match="staged"):
            world.migrate(ids[LIMIT], source=HOST_A, to=HOST_B)
        # Refused before anything was written: the object is live at A, nothing at B.
        assert world.assert_one_live_copy(ids[LIMIT]) == HOST_A
        host_b = world.hosts[HOST_B]
        assert world.run(host_b.journal.object("default", ids[LIMIT])) is None
        # One copy settled (its Commit arrives): room for one more.
        world.run(host_b.destination.commit(results[0].migration_id, peer=HOST_A))
        assert world.run(host_b.store.list(destination_module.STAGED_BY)) != []
        world.network(HOST_A).clear()
        moved = world.migrate(ids[LIMIT], source=HOST_A, to=HOST_B)
        assert moved.step is SourceStep.DONE
        assert world.assert_one_live_copy(ids[LIMIT]) == HOST_B
        world.assert_invariants(ids[LIMIT])


def test_staged_bytes_per_peer_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(destination_module, "MAX_STAGED_BYTES_PER_PEER", 6000)
    world = InProcessWorld(
        build_world(tmp_path, [HostSpec(host_id=HOST_A), HostSpec(host_id=HOST_B)])
    )
    with contextlib.closing(world):
        ids = _objects(3)
        for object_id in ids:
            world.create(HOST_A, object_id, data={"pad": "x" * 2500})
        world.network(HOST_A).drop("commit", to=HOST_B, times=1000)
        for object_id in ids[:2]:
            assert world.migrate(object_id, source=HOST_A, to=HOST_B).step is SourceStep.COMMITTED
        with pytest.raises(GatewayError, match="bytes"):
            world.migrate(ids[2], source=HOST_A, to=HOST_B)
        snapshot = world.run(world.hosts[HOST_A].journal.object("default", ids[2]))
        assert snapshot is not None and snapshot.value.state is LifecycleState.ACTIVE


def test_an_abort_takes_the_marker_with_the_copy(tmp_path: Path) -> None:
    world = InProcessWorld(
        build_world(tmp_path, [HostSpec(host_id=HOST_A), HostSpec(host_id=HOST_B)])
    )
    with contextlib.closing(world):
        (object_id,) = _objects(1)
        world.create(HOST_A, object_id, data={"n": 1})
        world.network(HOST_A).drop("commit", to=HOST_B, times=1000)
        result = world.migrate(object_id, source=HOST_A, to=HOST_B)
        host_b = world.hosts[HOST_B]
        assert len(world.run(host_b.store.list(destination_module.STAGED_BY))) == 1
        world.run(host_b.destination.abort(result.migration_id, peer=HOST_A, reason="test"))
        assert world.run(host_b.store.list(destination_module.STAGED_BY)) == []
