"""Two Commits of one migration at the destination at once (issue 13, point 7): the soak
saw a migration refused with "active here already" in a back-and-forth race.

Cause: the source's coordinator sends Commit, and the source host's recovery loop re-sends
Commit for every COMMITTED record it finds (between the coordinator's COMMITTED and DONE
writes). The destination's second Commit read the STAGED record before the first one
activated the object, and the object after: it saw the object ACTIVE and refused, as if a
second copy were arriving. The coordinator got that refusal although its migration had
succeeded. A Commit whose record changed under it is a lost race, answered like a retry.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from gateway.handoff.records import DestinationStep, SourceStep
from gateway.testing import HostSpec, build_world
from gateway.testing.harness import InProcessWorld
from tests.conftest import HOST_A, HOST_B

OBJECT = "obj://org-a.example/race/commit-twice"


def test_a_commit_that_read_the_record_before_another_activated_it_answers_as_a_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = InProcessWorld(
        build_world(tmp_path, [HostSpec(host_id=HOST_A), HostSpec(host_id=HOST_B)])
    )
    with contextlib.closing(world):
        world.create(HOST_A, OBJECT, data={"n": 1})
        # Every Commit A sends is lost (its recovery's too): B is driven directly below.
        world.network(HOST_A).drop("commit", to=HOST_B, times=1000)
        result = world.migrate(OBJECT, source=HOST_A, to=HOST_B)
        assert result.step is SourceStep.COMMITTED
        destination = world.hosts[HOST_B].destination
        stale = world.run(destination._record_for(result.migration_id, HOST_A))
        assert stale.value.step is DestinationStep.STAGED
        first = world.run(destination.commit(result.migration_id, peer=HOST_A))

        # The second Commit read the record before the first activated, the object after.
        real = destination._record_for
        reads = 0

        async def record_for(migration_id: str, peer: str):  # type: ignore[no-untyped-def]
            nonlocal reads
            reads += 1
            return stale if reads == 1 else await real(migration_id, peer)

        monkeypatch.setattr(destination, "_record_for", record_for)
        second = world.run(destination.commit(result.migration_id, peer=HOST_A))
        assert second == first, "the same activation receipt, as for any retried Commit"
        assert reads == 2, "it looked again after losing the race"
        assert world.assert_one_live_copy(OBJECT) == HOST_B
        world.assert_invariants(OBJECT)
