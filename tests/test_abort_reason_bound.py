"""A source's abort reason is held to what a destination accepts (MAX_REASON_CHARS).

The reason of an abort after a refusal is "destination refused: " and the refusal's
text, which may be long (a peer's reason and hint of up to 1,024 characters each, or an
honest error naming a long id). Past MAX_REASON_CHARS the destination refused the Abort
(a reason too long), so it was never told: its staged copy waited for recovery's
Decision instead (review helper, session 33)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from gateway.handoff.records import DestinationStep, SourceStep
from gateway.limits import MAX_REASON_CHARS
from gateway.testing import HostSpec, build_world
from gateway.testing.harness import InProcessWorld
from tests.conftest import HOST_A, HOST_B

OBJECT = "obj://org-a.example/billing/long-reason"


def test_a_long_abort_reason_is_cut_and_the_destination_is_told(tmp_path: Path) -> None:
    world = InProcessWorld(
        build_world(tmp_path, [HostSpec(host_id=HOST_A), HostSpec(host_id=HOST_B)])
    )
    with contextlib.closing(world):
        a, b = world.hosts[HOST_A], world.hosts[HOST_B]
        world.create(HOST_A, OBJECT, data={"n": 1})
        migration_id = world.run(a.source.freeze(OBJECT, tenant="default", destination=HOST_B))
        loaded = world.run(a.journal.source(migration_id))
        assert loaded is not None

        async def prepare() -> bytes:
            return await a.peers.client(HOST_B).prepare(loaded.value.transfer)

        world.run(prepare())
        aborted = world.run(
            a.source.abort(migration_id, reason="destination refused: " + "x" * 3000)
        )
        assert aborted.step is SourceStep.ABORTED
        assert len(aborted.reason) <= MAX_REASON_CHARS
        assert aborted.reason.startswith("destination refused: xxx")
        told = world.run(b.journal.destination(migration_id))
        assert told is not None
        assert told.value.step is DestinationStep.ABORTED  # told at once, not left STAGED
        assert world.assert_one_live_copy(OBJECT) == HOST_A
