"""``gateway demo``: two hosts of two organizations on loopback, one migration, end to end.

Nothing is simulated: each host is a separate ``gateway serve`` process with its own
dev CA, signing keys, trust bundle and SQLite file; they talk gRPC over mTLS on
127.0.0.1 with ports the OS chose; the bundles are exchanged with the same code as
``gateway trust export/import``; the migration is driven by host A's own code against
host B's server, and B answers A's Decision requests through A's server.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path

from rich.console import Console

from gateway.cli import describe_object, lineage_table, verify_and_describe_lineage
from gateway.config import load_config
from gateway.host import Host
from gateway.testing import HostSpec, ServerProcess, build_world

HOST_A = "spiffe://org-a.example/cluster/east/gateway"
HOST_B = "spiffe://org-b.example/cluster/west/gateway"
OBJECT = "obj://org-a.example/billing/invoice-42"
DATA = {"invoice": 42, "amount": 1250, "currency": "EUR", "status": "open"}

console = Console(highlight=False)


async def _migrate_and_report(config_a: Path, config_b: Path) -> None:
    host_a = await Host.open(load_config(config_a))
    try:
        obj = await host_a.create_object(
            OBJECT,
            tenant="default",
            data=json.dumps(DATA).encode(),
            content_type="application/json",
        )
        console.print(f"[bold]3.[/] created {obj.object_id} on host A")
        console.print(describe_object(obj))
        started = time.perf_counter()
        result = await host_a.migrate(OBJECT, tenant="default", destination=HOST_B)
        elapsed = (time.perf_counter() - started) * 1000
        console.print(
            f"[bold]4.[/] migrated to host B: {result.step.value}, epoch {result.epoch}, "
            f"{result.migration_id} ({elapsed:.0f} ms)"
        )
        left = await host_a.get_object(OBJECT, tenant="default")
    finally:
        await host_a.close()
    host_b = await Host.open(load_config(config_b))
    try:
        arrived = await host_b.get_object(OBJECT, tenant="default")
        console.print("[bold]5.[/] where it lives now, read from each host's own store:")
        console.print(f"   host A ({HOST_A}): {left.state.value.upper()} → {left.moved_to}")
        console.print(f"   host B ({HOST_B}): {arrived.state.value.upper()}, epoch {arrived.epoch}")
        console.print(lineage_table(arrived))
        console.print(verify_and_describe_lineage(host_b, arrived))
    finally:
        await host_b.close()


def run_demo(work: Path | None = None, *, keep: bool = False) -> int:
    temporary = work is None
    work = Path(tempfile.mkdtemp(prefix="gateway-demo-")) if work is None else work
    work.mkdir(parents=True, exist_ok=True)
    try:
        console.print(
            f"[bold]1.[/] two trust domains in {work}: dev CAs, host certificates, signing keys"
        )
        world = build_world(
            work,
            [
                HostSpec(host_id=HOST_A, region="eu-west"),
                HostSpec(host_id=HOST_B, region="eu-central"),
            ],
        )
        console.print("   exchanged signed trust bundles (org-a.example ↔ org-b.example)")
        with (
            ServerProcess(world.config(HOST_A)) as server_a,
            ServerProcess(world.config(HOST_B)) as server_b,
        ):
            for server, name in ((server_a, "A"), (server_b, "B")):
                console.print(
                    f"[bold]2.[/] host {name}: `gateway serve` process {server.pid} on {server.address}"
                )
            asyncio.run(_migrate_and_report(world.config(HOST_A), world.config(HOST_B)))
    finally:
        if temporary and not keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            console.print(f"work directory kept: {work}")
    return 0
