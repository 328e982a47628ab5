"""``gateway demo``: a live, governed object moves between two organizations, end to end.

Nothing is simulated: each host is a separate ``gateway serve`` process with its own dev
CA, signing keys, trust bundle, SQLite file, scheduler and outbox; they talk gRPC over
mTLS on 127.0.0.1 with ports the OS chose; trust bundles are exchanged with the same code
as ``gateway trust export/import``. The object cycles on host A, firing its rules;
host B is asked for a dry run, then the object migrates and keeps cycling on B from the
generation it stopped at. One rule asks for something host B's wide policy would offer
but the object's own grant does not cover: it is denied on both hosts, and recorded.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from gateway._cli_base import PIPE_WIDTH
from gateway.config import load_config
from gateway.host import Host
from gateway.objectspec import ObjectSpec, parse_spec
from gateway.present import (
    describe_object,
    events_table,
    lineage_summary,
    verify_and_describe_lineage,
)
from gateway.runtime.outbox import list_events
from gateway.testing import HostSpec, ServerProcess, build_world, create_from_spec

HOST_A = "spiffe://org-a.example/cluster/east/gateway"
HOST_B = "spiffe://org-b.example/cluster/west/gateway"
OBJECT = "obj://org-a.example/billing/invoice-42"
CYCLE_SECONDS = 0.5
RUN_SECONDS = 2.2

#: What each host offers objects at most. B offers every topic, and invocations.
POLICY_A = {
    "offers": [
        {"resource": "pubsub:*", "actions": ["publish"]},
        {"resource": "state:self", "actions": ["read", "write"]},
    ]
}
POLICY_B = {
    "offers": [
        {"resource": "pubsub:*", "actions": ["publish", "subscribe"]},
        {"resource": "state:self", "actions": ["read", "write"]},
        {"resource": "invoke:*", "actions": ["invoke"]},
    ]
}

SPEC = {
    "data": {"invoice": 42, "amount": 1250, "currency": "EUR", "status": "open"},
    "grant": {
        "audience": "spiffe://org-b.example",
        "valid_for_days": 30,
        "capabilities": [
            {"resource": "pubsub:alerts/overdue", "actions": ["publish"]},
            {"resource": "state:self", "actions": ["read", "write"]},
        ],
        "constraints": {
            "hosts": ["spiffe://org-a.example/*", "spiffe://org-b.example/*"],
            "max_hops": 3,
        },
    },
    "cycle": {"interval_seconds": CYCLE_SECONDS},
    "rules": [
        {
            "name": "overdue",
            "when": 'data.amount > 1000 && data.status == "open"',
            "publish": {
                "topic": "alerts/overdue",
                "payload": '{"invoice": data.invoice, "generation": generation, "host": host}',
            },
        },
        {
            "name": "escalate",
            "when": "generation >= 2",
            "publish": {"topic": "alerts/escalations", "payload": "data.invoice"},
        },
        {"name": "count", "when": "true", "write": '{"checks": generation + 1}'},
    ],
}

# Piped, the demo's lines are not wrapped at 80 columns (as every command's, PIPE_WIDTH).
console = Console(highlight=False, width=None if sys.stdout.isatty() else PIPE_WIDTH)


async def _watch(host: Host, seconds: float, label: str) -> None:
    """Let the host's own scheduler cycle the object, showing the generation as it goes."""
    deadline = time.monotonic() + seconds
    with console.status(f"{label}: cycling…") as status:
        while time.monotonic() < deadline:
            obj = await host.get_object(OBJECT, tenant="default")
            status.update(f"{label}: generation {obj.generation}, data {obj.data.decode()}")
            await asyncio.sleep(0.2)
    obj = await host.get_object(OBJECT, tenant="default")
    console.print(f"   {label}: reached generation {obj.generation}")


async def _scenario(config_a: Path, config_b: Path, spec: ObjectSpec) -> None:
    host_a = await Host.open(load_config(config_a))
    try:
        obj = await create_from_spec(host_a, OBJECT, spec)
        console.print(
            f"[bold]3.[/] created {obj.object_id} on host A, with a root grant and 3 rules"
        )
        console.print(describe_object(obj))
        await _watch(host_a, RUN_SECONDS, "host A")
        evaluation = await host_a.evaluate_remote(OBJECT, tenant="default", destination=HOST_B)
        console.print("[bold]4.[/] dry run — host B's answer before anything moves:")
        console.print(evaluation.render(), markup=False)
        started = time.perf_counter()
        result = await host_a.migrate(OBJECT, tenant="default", destination=HOST_B)
        elapsed = (time.perf_counter() - started) * 1000
        console.print(
            f"[bold]5.[/] migrated to host B: {result.step.value}, epoch {result.epoch}, "
            f"{result.migration_id} ({elapsed:.0f} ms)"
        )
        left = await host_a.get_object(OBJECT, tenant="default")
        events_a = await list_events(host_a.store)
    finally:
        await host_a.close()
    host_b = await Host.open(load_config(config_b))
    try:
        await _watch(host_b, RUN_SECONDS, "host B")
        arrived = await host_b.get_object(OBJECT, tenant="default")
        console.print("[bold]6.[/] where it lives now, read from each host's own store:")
        console.print(
            f"   host A: {left.state.value.upper()} → {left.moved_to} (stopped at generation {left.generation})"
        )
        console.print(
            f"   host B: {arrived.state.value.upper()}, epoch {arrived.epoch}, generation {arrived.generation}"
        )
        console.print(
            f"   authority on B: {arrived.authority.allow} (B offers pubsub:*; the grant decides)"
        )
        console.print("[bold]7.[/] events each host published (its outbox):")
        console.print(events_table(events_a, title="host A's outbox", show_object=False))
        console.print(
            events_table(
                await list_events(host_b.store), title="host B's outbox", show_object=False
            )
        )
        console.print(lineage_summary(arrived))
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
                HostSpec(host_id=HOST_A, region="eu-west", policy=POLICY_A),
                HostSpec(
                    host_id=HOST_B,
                    region="eu-central",
                    policy=POLICY_B,
                    handoff={"attenuate_on_rehost": True},
                ),
            ],
        )
        console.print("   exchanged signed trust bundles (org-a.example ↔ org-b.example)")
        spec = parse_spec(SPEC, source="demo")
        with (
            ServerProcess(world.config(HOST_A)) as server_a,
            ServerProcess(world.config(HOST_B)) as server_b,
        ):
            for server, name in ((server_a, "A"), (server_b, "B")):
                console.print(
                    f"[bold]2.[/] host {name}: `gateway serve` process {server.pid} on {server.address}"
                )
            asyncio.run(_scenario(world.config(HOST_A), world.config(HOST_B), spec))
    finally:
        if temporary and not keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            console.print(f"work directory kept: {work}")
    return 0
