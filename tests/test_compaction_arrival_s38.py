"""Session 38: an object that never cycles is compacted as it arrives.

Compaction ran only after a cycle (or a call, or a message's wake), so an object with no
interval that only moved between hosts carried every hop's entries and departure
checkpoint: about 2.7 KB a hop, 150 KB after 55 hops, until it no longer fit an envelope
and could never move again. The receiving host now compacts it when it arrives, if its
policy says it is due; the whole history still verifies from the hosts' archives and the
object it carries."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from gateway import wire
from gateway.archive import verify_archived
from gateway.host import Host
from gateway.limits import DEFAULT_CUSTODY_KEEP, MIN_CARRIED_HANDOFFS
from gateway.lineage import verify_lineage
from gateway.testing import HostSpec, build_world, serving
from tests.conftest import FAST_HANDOFF, HOST_A, HOST_B

OBJECT = "obj://org-a.example/billing/invoice-7"
#: The carried handoffs past which a compaction is due (16 + 8 by default).
DUE = DEFAULT_CUSTODY_KEEP + MIN_CARRIED_HANDOFFS
#: Enough hops for four compactions.
HOPS = 4 * DUE + 1


async def _background_done(*hosts: Host) -> None:
    """Wait for what each host started beside its arrivals (the compaction among it)."""
    for host in hosts:
        while host._background:
            await asyncio.wait(set(host._background))


def test_an_object_that_only_moves_stays_bounded_and_its_history_verifies(
    tmp_path: Path,
) -> None:
    specs = [HostSpec(host_id=h, handoff=FAST_HANDOFF) for h in (HOST_A, HOST_B)]
    world = build_world(tmp_path, specs)

    async def run() -> None:
        async with serving(world) as hosts:
            a, b = hosts[HOST_A], hosts[HOST_B]
            created = await a.create_object(
                OBJECT,
                tenant="default",
                data=json.dumps({"n": 1}).encode(),
                content_type="application/json",
            )
            assert created.cycle.interval is None  # it never cycles: only arrivals compact it
            sizes, carried = [], []
            for hop in range(HOPS):
                source, destination = (a, b) if hop % 2 == 0 else (b, a)
                await source.migrate(OBJECT, tenant="default", destination=destination.host_id)
                await _background_done(a, b)
                held = await destination.get_object(OBJECT, tenant="default")
                sizes.append(len(wire.encode_object(held)))
                carried.append((len(held.lineage.checkpoints), len(held.lineage.entries)))
            last = b if HOPS % 2 else a
            obj = await last.get_object(OBJECT, tenant="default")

            # Bounded: after every arrival, never more handoffs or entries carried than
            # make a compaction due, and the record's size flat from one stretch of DUE
            # hops to the next (without compaction it grew by about 2.1 KB a hop).
            policy = b.compaction.policy
            assert all(c <= DUE and e <= policy.max_entries for c, e in carried), carried
            assert obj.lineage.start > 0  # entries were archived
            stretches = [max(sizes[k : k + DUE]) for k in range(0, 4 * DUE, DUE)]
            assert stretches[3] <= stretches[1] * 1.05, stretches

            # Still whole: the carried lineage verifies as a receiver checks it, and the
            # history from both hosts' archives and the object is every hop's.
            verify_lineage(obj.lineage, trust=last.trust, object_id=OBJECT, sealed=False)
            segments = []
            for host in (a, b):
                segments += await host.compaction.archive.segments("default", OBJECT)
                segments += await host.compaction.archive.custody_segments("default", OBJECT)
            whole = verify_archived(
                segments, obj.lineage, object_id=OBJECT, trust=last.trust, sealed=False
            )
            assert whole.size == obj.lineage.size
            assert [c.to for c in whole.checkpoints] == [
                (HOST_B if hop % 2 == 0 else HOST_A) for hop in range(HOPS)
            ]

    asyncio.run(run())
