"""Concurrent arrivals into one tenant share stage commits (gateway.handoff.destination,
_write_stage) without giving up what one transaction per stage guaranteed: the quota is
never overshot, each stage is all-or-nothing, and a stage that loses a race is answered
exactly as it was before (a retried Prepare gets the same receipt)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.errors import QuotaExceededError
from gateway.handoff.source import MigrationResult
from gateway.host import Host
from gateway.model import LifecycleState
from gateway.testing import HostSpec, World, build_world, sealed_transfer, serving, sign_transfer
from tests.conftest import HOST_A, HOST_B

TENANT = "q"
QUOTA = 3
ARRIVING = 7


def _world(tmp_path: Path) -> World:
    return build_world(
        tmp_path,
        [
            HostSpec(host_id=HOST_A, tenants=(TENANT,)),
            HostSpec(
                host_id=HOST_B,
                tenants=(TENANT,),
                tenant_settings=({"name": TENANT, "max_objects": QUOTA},),
            ),
        ],
    )


async def _create(host: Host, index: int) -> str:
    object_id = f"obj://org-a.example/q/{index}"
    await host.create_object(
        object_id, tenant=TENANT, data=b'{"n": %d}' % index, content_type="application/json"
    )
    return object_id


def test_concurrent_arrivals_fill_a_quota_exactly(tmp_path: Path) -> None:
    """Seven migrations into a tenant with room for three, all in flight at once: three
    arrive, four are refused for the quota and stay live at their source; the tenant's
    counter says three, and every object is live in exactly one place."""

    world = _world(tmp_path)

    async def main() -> None:
        async with serving(world) as hosts:
            a, b = hosts[HOST_A], hosts[HOST_B]
            ids = [await _create(a, n) for n in range(ARRIVING)]
            outcomes = await asyncio.gather(
                *(a.migrate(i, tenant=TENANT, destination=HOST_B) for i in ids),
                return_exceptions=True,
            )
            moved = [o for o in outcomes if isinstance(o, MigrationResult)]
            refused = [o for o in outcomes if isinstance(o, QuotaExceededError)]
            assert len(moved) == QUOTA, outcomes
            assert len(refused) == ARRIVING - QUOTA, outcomes
            assert all("quota max_objects=3 is reached" in e.reason for e in refused)
            usage = await b.journal.usage(TENANT)
            assert usage.value.objects == QUOTA
            for object_id in ids:
                here = await a.journal.object(TENANT, object_id)
                there = await b.journal.object(TENANT, object_id)
                live = [
                    h
                    for h, o in ((HOST_A, here), (HOST_B, there))
                    if o is not None and o.value.state is LifecycleState.ACTIVE
                ]
                assert len(live) == 1, (object_id, live)

    asyncio.run(main())


def test_a_prepare_retried_concurrently_gets_one_stage_and_one_receipt(tmp_path: Path) -> None:
    """The same transfer twice at once (a source retrying while its first call is still
    in flight): the two are never written in one transaction (they name the same keys);
    one stages, the other is answered with that stage's receipt, and the tenant is
    charged once."""

    world = _world(tmp_path)

    async def main() -> None:
        async with serving(world) as hosts:
            a, b = hosts[HOST_A], hosts[HOST_B]
            object_id = await _create(a, 0)
            loaded = await a.journal.object(TENANT, object_id)
            assert loaded is not None
            raw = sign_transfer(a, sealed_transfer(a, loaded.value, HOST_B))
            first, second = await asyncio.gather(
                b.destination.prepare(raw, peer=HOST_A), b.destination.prepare(raw, peer=HOST_A)
            )
            assert first == second
            assert (await b.journal.usage(TENANT)).value.objects == 1

    asyncio.run(main())
