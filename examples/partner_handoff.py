"""A partner handoff from Python: org-a moves an invoice to org-b, and org-b hands it back.

Run: python examples/partner_handoff.py

Uses gateway.testing to create both organizations (dev CAs, keys, exchanged trust
bundles) in a temporary directory, serves both hosts over mTLS on loopback in this
process, and drives the migrations through the same Host API the CLI uses.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

from gateway.lineage import verify_lineage
from gateway.testing import HostSpec, World, build_world, serving

ORG_A = "spiffe://org-a.example/cluster/east/gateway"
ORG_B = "spiffe://org-b.example/cluster/west/gateway"
INVOICE = "obj://org-a.example/billing/invoice-42"


async def handoff(world: World) -> None:
    async with serving(world) as hosts:
        a, b = hosts[ORG_A], hosts[ORG_B]
        data = json.dumps({"amount": 1250, "currency": "EUR"}).encode()
        await a.create_object(INVOICE, tenant="default", data=data, content_type="application/json")
        there = await a.migrate(INVOICE, tenant="default", destination=ORG_B)
        back = await b.migrate(INVOICE, tenant="default", destination=ORG_A)
        home = await a.get_object(INVOICE, tenant="default")
        verified = verify_lineage(home.lineage, object_id=INVOICE, trust=a.trust, sealed=False)
        print(f"to org-b: epoch {there.epoch}; back to org-a: epoch {back.epoch}")
        print(f"{INVOICE} is {home.state.value} on org-a with {verified.size} lineage entries")
        print("signed checkpoints by: " + ", ".join(verified.hosts))
        for entry in home.lineage.entries:
            print(f"  {entry.seq} {entry.kind.value:<9} {entry.host}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as directory:
        # build_world runs its own event loop, so it comes before asyncio.run.
        world = build_world(Path(directory), [HostSpec(host_id=ORG_A), HostSpec(host_id=ORG_B)])
        asyncio.run(handoff(world))
