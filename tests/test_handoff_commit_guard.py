"""One migration has at most one activation (and so one custody claim) in flight on its
destination at a time (gateway/handoff/destination.py, ``Destination.commit``).

A second Commit of the same migration (the source's recovery re-sending it while its
coordinator's call is still running, or the destination's own recovery) waits for the
first to end and then reads the record again: it answers with the same activation
receipt and never claims custody a second time while the first claim is being written
(tests/test_dishonest_peer.py::test_a_home_killed_mid_claim_recovers_to_one_live_copy
saw such a second claim answered before the first was durable).
"""

from __future__ import annotations

import asyncio
import json

from gateway.handoff.records import DestinationStep, SourceStep
from gateway.host import Host
from gateway.model import LifecycleState
from gateway.testing import World
from gateway.testing.plugin import WorldFactory
from tests.conftest import HOST_A, HOST_B

OBJECT = "obj://org-a.example/billing/invoice-77"
DATA = json.dumps({"invoice": 77, "amount": 10}).encode()


def test_concurrent_commits_of_one_migration_claim_one_at_a_time(
    gateway_world: WorldFactory, world: World
) -> None:
    running = gateway_world(world)
    running.network(HOST_A).drop("commit", to=HOST_B)  # B stays STAGED until we commit

    async def scenario(hosts: dict[str, Host]) -> None:
        a, b = hosts[HOST_A], hosts[HOST_B]
        await a.create_object(OBJECT, tenant="default", data=DATA, content_type="application/json")
        result = await a.migrate(OBJECT, tenant="default", destination=HOST_B)
        assert result.step is SourceStep.COMMITTED

        destination = b.destination
        claim = destination._claim_custody
        inside = 0
        most = 0
        claims = 0

        async def slow_claim(*args: object, **kwargs: object) -> None:
            # Stands for a claim's round trip to a custody home: a window in which a
            # second Commit would start a second claim if nothing held it back.
            nonlocal inside, most, claims
            inside += 1
            claims += 1
            most = max(most, inside)
            try:
                await asyncio.sleep(0.2)
                await claim(*args, **kwargs)  # type: ignore[arg-type]
            finally:
                inside -= 1

        destination._claim_custody = slow_claim  # type: ignore[method-assign]
        receipts = await asyncio.gather(
            *(destination.commit(result.migration_id, peer=HOST_A) for _ in range(3))
        )
        assert most == 1, "two claims of one migration were in flight at once"
        assert claims == 1, "a Commit after the activation claimed again"
        assert receipts[0] and receipts.count(receipts[0]) == 3, "one activation, one receipt"
        assert destination._activating == {}, "nothing left held once the activation ended"
        record = await b.journal.destination(result.migration_id)
        assert record is not None and record.value.step is DestinationStep.ACTIVATED
        live = await b.journal.object("default", OBJECT)
        assert live is not None and live.value.state is LifecycleState.ACTIVE
        moved = await a.journal.object("default", OBJECT)
        assert moved is not None and moved.value.state is LifecycleState.MOVED

    running.run(scenario(running.hosts))
    running.assert_invariants(OBJECT)
