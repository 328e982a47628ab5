"""Compaction through the real cycle path: one object cycles for N generations on a host
with the DEFAULT policy (lineage.compaction on, repeats folded), then migrates to a second
host over mTLS, and its whole history is verified from the archive + the object.

    python bench/bench_compaction.py [--generations 1000000] [--quick] [--json FILE]

Each generation is ``Host.cycles.run`` (gateway/runtime/cycle.py) against the host's real
SQLite store: load the object, evaluate its CEL rules, admit, fold repeats, commit durably,
and compact when the policy says so (archive segment first, then the object). The host's
clock is a frozen test clock moved by the object's interval per generation (10 ms), so a
million generations take simulated hours, not weeks; nothing else is simulated.

The object's rules: a publish that is denied every generation (folded: counted, not copied)
and a write every 10th generation (changes the data: not folded), so the history grows by
about 0.6 entries per generation and is compacted again and again.

Printed at intervals: carried lineage entries and bytes (the encoded lineage) and the
stored record's bytes, with the largest seen since the last line (measured after every
cycle, from the record the cycle wrote). The carried size must stay under a fixed bound
whatever N is: the figure to read is ``peak_carried_bytes`` beside ``archive_bytes``.

--json FILE writes {"compaction": {...}} with those figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway import wire
from gateway._time import SystemClock
from gateway.archive import verify_archived
from gateway.config import load_config
from gateway.host import Host
from gateway.keys import forget_verified_signatures
from gateway.lineage import forget_decoded_entries, forget_verified_prefixes
from gateway.model import GovernedObject
from gateway.objectspec import parse_spec
from gateway.runtime.compaction import StoreArchive
from gateway.runtime.cycle import CycleResult
from gateway.testing import HostSpec, World, build_world, create_from_spec, serving
from gateway.testing.faults import SettableClock

A = "spiffe://org-a.example/cluster/east/gateway"
B = "spiffe://org-b.example/cluster/west/gateway"
OBJECT = "obj://org-a.example/billing/long-lived"
TENANT = "default"
INTERVAL = 0.01  #: seconds of simulated time per generation
#: The host offers writes, not publishing: the publish rule is denied every time.
POLICY = {"offers": [{"resource": "state:self", "actions": ["read", "write"]}]}
SPEC = {
    "data": {"n": 0},
    "grant": {
        "audience": "spiffe://org-b.example",
        "capabilities": [
            {"resource": "state:self", "actions": ["read", "write"]},
            {"resource": "pubsub:*", "actions": ["publish"]},
        ],
        "constraints": {"hosts": ["spiffe://org-a.example/*", "spiffe://org-b.example/*"]},
    },
    "cycle": {"interval_seconds": INTERVAL},
    "rules": [
        {"name": "tick", "when": "generation % 10 == 0", "write": "{'n': data.n + 1}"},
        {"name": "alert", "when": "true", "publish": {"topic": "alerts/x", "payload": "data.n"}},
    ],
}


def measure(obj: GovernedObject) -> tuple[int, int]:
    return len(obj.lineage.entries), len(wire.encode_lineage(obj.lineage))


def simulated(generations: int) -> timedelta:
    return timedelta(seconds=generations * INTERVAL + 3600)


def world_for(generations: int, directory: Path) -> World:
    """Hosts A and B whose keys and certificates were valid before the simulated run."""
    began = SystemClock().now() - simulated(generations) - timedelta(hours=1)
    return build_world(directory, [HostSpec(host_id=h, policy=POLICY) for h in (A, B)], at=began)


async def run(generations: int, samples: int, world: World, budget: float) -> dict[str, Any]:
    clock = SettableClock()
    clock.skew(-simulated(generations))
    clock.freeze()
    host = await Host.open(load_config(world.config(A)), clock=clock)
    peak = {"record": 0, "entries": 0}
    compactions = 0
    hook = host.compaction.after_cycle

    async def observed(tenant: str, obj: GovernedObject, *, stored_bytes: int, now: Any) -> bool:
        # The record the cycle just wrote: the largest it gets is just before compacting.
        peak["record"] = max(peak["record"], stored_bytes)
        peak["entries"] = max(peak["entries"], len(obj.lineage.entries))
        nonlocal compactions
        done = await hook(tenant, obj, stored_bytes=stored_bytes, now=now)
        compactions += done
        return done

    host.compaction.after_cycle = observed  # type: ignore[method-assign]
    rows = []
    peak_carried_bytes = 0
    started = time.perf_counter()
    try:
        await create_from_spec(host, OBJECT, parse_spec(SPEC, source="bench"))
        every = max(generations // samples, 1)
        print(
            f"{'generation':>10} {'carried':>8} {'lineage B':>10} {'record B':>9} "
            f"{'peak record B':>13} {'history':>9} {'compactions':>11} {'cycles/s':>8}",
            flush=True,
        )
        ran = 0
        for generation in range(generations):
            if time.perf_counter() - started > budget:
                print(
                    f"time budget of {budget:.0f} s spent: stopped after {generation} generations"
                )
                break
            ran = generation + 1
            clock.skew(INTERVAL)
            report = await host.cycles.run(TENANT, OBJECT)
            if report.result is not CycleResult.EVALUATED:
                raise RuntimeError(f"generation {generation}: {report.result.value}")
            if (
                generation % every == every - 1
                or generation == generations - 1
                or (time.perf_counter() - started > budget)
            ):
                obj = (await host.journal.require_object(TENANT, OBJECT, host=A)).value
                carried, lineage_bytes = measure(obj)
                peak_carried_bytes = max(peak_carried_bytes, lineage_bytes)
                elapsed = time.perf_counter() - started
                row = {
                    "generation": generation + 1,
                    "carried_entries": carried,
                    "carried_bytes": lineage_bytes,
                    "peak_record_bytes": peak["record"],
                    "history_entries": obj.lineage.size,
                    "compactions": compactions,
                }
                rows.append(row)
                print(
                    f"{generation + 1:>10} {carried:>8} {lineage_bytes:>10} "
                    f"{len(wire.encode_object(obj)):>9} {peak['record']:>13} "
                    f"{obj.lineage.size:>9} {compactions:>11} {(generation + 1) / elapsed:>8.0f}",
                    flush=True,
                )
        cycle_seconds = time.perf_counter() - started
    finally:
        await host.close()

    # Migrate A -> B over mTLS (both hosts served in this process, real clock).
    started = time.perf_counter()
    async with serving(world, [A, B]) as hosts:
        result = await hosts[A].migrate(OBJECT, tenant=TENANT, destination=B)
        moved = (await hosts[B].journal.require_object(TENANT, OBJECT, host=B)).value
        migrate_seconds = time.perf_counter() - started
        # The archive as it is now, on both hosts: served with the real clock, the
        # object is overdue (its clock ran ahead), so A may cycle and compact it once
        # more before the freeze, and B after the arrival (then `moved` may already
        # carry B's base); a third party is given the archive of every host that held
        # the object. Read after `moved`: a segment beyond its base is a spare.
        segments = [
            *await StoreArchive(hosts[A].store).segments(TENANT, OBJECT),
            *await StoreArchive(hosts[B].store).segments(TENANT, OBJECT),
        ]
        archive_bytes = sum(len(s.encode()) for s in segments)
        # Cold, as a third party verifying offline: B's arrival verified the carried
        # checkpoints in this process a moment ago.
        forget_verified_signatures()
        forget_verified_prefixes()
        forget_decoded_entries()
        started = time.perf_counter()
        whole = verify_archived(
            segments, moved.lineage, object_id=OBJECT, trust=hosts[B].trust, sealed=False
        )
        verify_seconds = time.perf_counter() - started
    if whole.size != moved.lineage.size or whole.root != moved.lineage.root():
        raise RuntimeError("the verified history is not the object's")
    carried, lineage_bytes = measure(moved)
    return {
        "generations_requested": generations,
        "generations": ran,
        "time_budget_seconds": budget,
        "cycle_seconds": round(cycle_seconds, 1),
        "cycles_per_second": round(ran / cycle_seconds, 1),
        "compactions": compactions,
        "history_entries": moved.lineage.size,
        "peak_carried_entries": peak["entries"],
        "peak_record_bytes": peak["record"],
        "peak_carried_bytes_sampled": peak_carried_bytes,
        "carried_after_move_entries": carried,
        "carried_after_move_bytes": lineage_bytes,
        "archive_segments": len(segments),
        "archive_bytes": archive_bytes,
        "migrated": result.step.value,
        "migrate_seconds": round(migrate_seconds, 2),
        "verify_whole_history_seconds": round(verify_seconds, 2),
        "verified_entries": whole.size,
        "samples": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--generations", type=int, default=1_000_000, help="cycles to run (default 1000000)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="100000 generations within a 60 s budget (whichever comes first)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        help="stop cycling after this many seconds and report how many generations ran "
        "(default 600, 60 with --quick)",
    )
    parser.add_argument("--samples", type=int, default=20, help="lines printed during the run")
    parser.add_argument("--json", metavar="FILE", help='write {"compaction": {...}} to FILE')
    args = parser.parse_args()
    generations = 100_000 if args.quick else args.generations
    budget = args.budget if args.budget is not None else 60.0 if args.quick else 600.0
    with tempfile.TemporaryDirectory(prefix="bench-compaction-") as directory:
        world = world_for(generations, Path(directory))
        figures = asyncio.run(run(generations, args.samples, world, budget))
    print(
        f"{figures['generations']} of {generations} generations in {figures['cycle_seconds']} s "
        f"({figures['cycles_per_second']} cycles/s), {figures['compactions']} compactions; "
        f"history {figures['history_entries']} entries; peak carried "
        f"{figures['peak_carried_entries']} entries, peak record {figures['peak_record_bytes']} B; "
        f"archive {figures['archive_segments']} segments, {figures['archive_bytes']} B; "
        f"migrated ({figures['migrated']}) in {figures['migrate_seconds']} s; whole history "
        f"({figures['verified_entries']} entries) verified from archive + object in "
        f"{figures['verify_whole_history_seconds']} s"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"compaction": figures}, indent=2) + "\n")


if __name__ == "__main__":
    main()
