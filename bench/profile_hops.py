"""Where a migration's CPU goes, early in an object's life and after many hops (issue 13,
point 7: the soak's drift).

Run from the project directory::

    python bench/profile_hops.py                 # profile at hop 3 and hop 75
    python bench/profile_hops.py --hops 3 40 75 --runs 5 --json hops.json

Two hosts (InProcessWorld: both served in this process over real mTLS, one event loop),
one small soak object (bench_soak.object_spec: 3 CEL rules). Before each hop the holder
runs one cycle of the object (both clocks moved on by the cycle interval, so it is due),
then it migrates to the other host, as in the soak: about four carried lineage entries,
one departure checkpoint and one arrival receipt per hop. At each hop count asked for,
``--runs`` migrations are profiled with cProfile on the event loop's thread, timed by
thread CPU time (the SQLite worker threads and gRPC's C threads are not in it), and their
CPU is split into parts by the cumulative time of the functions that do each part.
The parts overlap only where a part calls another (named in PARTS); "other" is the
migration's loop-thread CPU not in a named part.

``--cold`` forgets the verified-signature memory and the entry memo before each profiled
migration (what a host that never saw the object pays); by default they are as the hops
left them (the soak's back-and-forth case).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_soak import HOST_A, HOST_B, POLICY, TENANT, object_spec
from gateway.custody import forget_verified_arrivals
from gateway.keys import forget_verified_signatures
from gateway.lineage import forget_decoded_entries, forget_verified_prefixes
from gateway.testing import HostSpec, build_world, create_from_spec
from gateway.testing.harness import InProcessWorld

#: (part, file suffix, function name): the part's CPU is the function's cumulative time.
#: Source and destination run on one loop here, so each part names whose work it is.
PARTS: list[tuple[str, str, str]] = [
    ("source: migrate (source side only)", "handoff/source.py", "migrate"),
    ("source: freeze (read, record, seal, encode, write)", "handoff/source.py", "freeze"),
    ("source: seal checkpoint (root + sign)", "gateway/lineage.py", "sealed"),
    ("source: encode transfer", "gateway/wire.py", "encode_transfer"),
    ("source: encode object (journal writes)", "gateway/wire.py", "encode_object"),
    ("source: decode object (journal reads)", "gateway/wire.py", "decode_object"),
    ("dest: prepare (whole)", "handoff/destination.py", "_prepare"),
    ("dest: open transfer (envelope + decode)", "handoff/destination.py", "_open_transfer"),
    ("dest:   decode transfer", "gateway/wire.py", "decode_transfer"),
    ("dest:     lineage from pb (entry decode)", "gateway/wire.py", "_lineage_from_pb"),
    ("dest: assess (all checks)", "handoff/destination.py", "_assess"),
    ("dest:   verify_lineage", "gateway/lineage.py", "verify_lineage"),
    ("dest:     open checkpoints (sig + decode)", "gateway/lineage.py", "_open_signed"),
    ("dest:     verify_chain (links, leaf hashes)", "gateway/lineage.py", "verify_chain"),
    ("dest:   verify_extends", "gateway/lineage.py", "verify_extends"),
    ("dest:   verify_custody", "gateway/custody.py", "verify_custody"),
    ("dest:     arrivals (sig + decode receipt)", "gateway/custody.py", "_check_arrival"),
    ("dest:   require_extends_departures", "gateway/custody.py", "require_extends_departures"),
    ("dest: stage (write)", "handoff/destination.py", "_stage"),
    ("dest: commit (whole)", "handoff/destination.py", "commit"),
    ("any: signature verify (KeyRecord.verify)", "gateway/keys.py", "verify"),
    ("any: signing (Signer.sign)", "gateway/keys.py", "sign"),
    ("any: envelope open (dsse)", "gateway/envelope.py", "open_envelope"),
    ("any: entry decode (LineageEntry.decode)", "gateway/lineage.py", "decode"),
    ("any: checkpoint decode", "gateway/lineage.py", "_from_document"),
]


def cumulative(stats: pstats.Stats, suffix: str, name: str) -> float:
    total = 0.0
    for (path, _line, function), row in stats.stats.items():  # type: ignore[attr-defined]
        if function == name and path.endswith(suffix):
            total += row[3]
    return total


async def one_cycle(world: InProcessWorld, holder: str, object_id: str) -> None:
    await world.hosts[holder].cycles.run(TENANT, object_id)


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"cold": args.cold, "runs": args.runs, "points": []}
    with tempfile.TemporaryDirectory(prefix="profile-hops-") as name:
        built = build_world(
            Path(name), [HostSpec(host_id=h, policy=POLICY) for h in (HOST_A, HOST_B)]
        )
        world = InProcessWorld(built)
        try:
            object_id = "obj://org-a.example/soak/0"
            world.run(
                create_from_spec(
                    world.hosts[HOST_A], object_id, object_spec(0, interval=5.0), tenant=TENANT
                )
            )
            holder = HOST_A
            hops = 0
            targets = sorted(args.hops)
            while targets:
                for clock in (HOST_A, HOST_B):
                    world.clock(clock).skew(timedelta(seconds=5.1))
                world.run(one_cycle(world, holder, object_id))
                to = HOST_B if holder == HOST_A else HOST_A
                if hops >= targets[0]:
                    point = profile_point(world, holder, to, object_id, hops, args)
                    results["points"].append(point)
                    hops += args.runs
                    holder = to if args.runs % 2 else holder
                    targets.pop(0)
                    continue
                world.migrate(object_id, source=holder, to=to, tenant=TENANT)
                holder, hops = to, hops + 1
        finally:
            world.close()
    return results


def profile_point(
    world: InProcessWorld, holder: str, to: str, object_id: str, hops: int, args: argparse.Namespace
) -> dict[str, Any]:
    loaded = world.run(world.hosts[holder].journal.object(TENANT, object_id))
    assert loaded is not None
    lineage = loaded.value.lineage
    shape = {
        "hops": hops,
        "entries": len(lineage.entries),
        "checkpoints": len(lineage.checkpoints),
        "arrivals": len(lineage.arrivals),
    }
    per_run: list[dict[str, float]] = []
    walls: list[float] = []
    source, dest = holder, to
    for _ in range(args.runs):
        if args.cold:
            forget_verified_signatures()
            forget_decoded_entries()
            forget_verified_prefixes()
            forget_verified_arrivals()
        profiler = cProfile.Profile(time.thread_time)

        async def profiled(
            source: str = source, dest: str = dest, profiler: cProfile.Profile = profiler
        ) -> float:
            began = time.perf_counter()
            profiler.enable()  # on the loop's thread: profiles are per thread
            try:
                await world.hosts[source].migrate(object_id, tenant=TENANT, destination=dest)
            finally:
                profiler.disable()
            return time.perf_counter() - began

        walls.append(world.run(profiled()))
        stats = pstats.Stats(profiler)
        per_run.append({part: cumulative(stats, suffix, fn) for part, suffix, fn in PARTS})
        last_stats = stats
        source, dest = dest, source
        for clock in (HOST_A, HOST_B):
            world.clock(clock).skew(timedelta(seconds=5.1))
        world.run(one_cycle(world, source, object_id))
    medians = {part: statistics.median(r[part] for r in per_run) * 1e3 for part, _s, _f in PARTS}
    say(
        f"\nhop {hops}: {shape['entries']} entries, {shape['checkpoints']} checkpoints, "
        f"{shape['arrivals']} arrivals carried; wall {statistics.median(walls) * 1e3:.1f} ms "
        f"median of {args.runs} [{min(walls) * 1e3:.1f}-{max(walls) * 1e3:.1f}]"
    )
    for part, value in medians.items():
        say(f"  {part:<52} {value:8.2f} ms")
    if args.top:
        say(f"  top {args.top} by own time (last run):")
        last_stats.sort_stats("tottime").print_stats(args.top)
    direct = time_parts(world, to if args.runs % 2 else holder, object_id, args)
    for part, value in direct.items():
        say(f"  direct (no profiler) {part:<31} {value:8.3f} ms")
    return {
        **shape,
        "wall_ms": [w * 1e3 for w in walls],
        "cpu_ms_median": medians,
        "direct_ms_median": direct,
    }


def time_parts(
    world: InProcessWorld, holder: str, object_id: str, args: argparse.Namespace
) -> dict[str, float]:
    """The lineage parts of an arrival timed without the profiler (median of 21 calls,
    memories as the hops left them unless --cold): what a receiver pays per object."""
    from gateway import wire
    from gateway.custody import verify_custody
    from gateway.lineage import verify_lineage

    host = world.hosts[holder]
    loaded = world.run(host.journal.object(TENANT, object_id))
    assert loaded is not None
    lineage = loaded.value.lineage
    trust = host.context.trust
    raw = wire.encode_lineage(lineage)
    decoded = wire.decode_lineage(raw)
    verified = verify_lineage(decoded, object_id=object_id, trust=trust, sealed=False)

    def timed(work: Any) -> float:
        values = []
        for _ in range(21):
            if args.cold:
                forget_verified_signatures()
                forget_decoded_entries()
                forget_verified_prefixes()
                forget_verified_arrivals()
            began = time.perf_counter()
            work()
            values.append(time.perf_counter() - began)
        return statistics.median(values) * 1e3

    return {
        "encode_lineage": timed(lambda: wire.encode_lineage(lineage)),
        "decode_lineage": timed(lambda: wire.decode_lineage(raw)),
        "verify_lineage": timed(
            lambda: verify_lineage(decoded, object_id=object_id, trust=trust, sealed=False)
        ),
        "verify_custody": timed(
            lambda: verify_custody(
                decoded,
                verified.checkpoints,
                object_id=object_id,
                trust=trust,
                in_transit=False,
            )
        ),
    }


def say(text: str) -> None:
    print(text, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--hops", type=int, nargs="+", default=[3, 75], help="hop counts to profile at (3 75)"
    )
    parser.add_argument("--runs", type=int, default=5, help="migrations profiled per point (5)")
    parser.add_argument(
        "--cold", action="store_true", help="forget signature and entry memories first"
    )
    parser.add_argument("--top", type=int, default=0, help="print the top N functions")
    parser.add_argument("--json", type=Path, help="write the figures as JSON to this file")
    args = parser.parse_args(argv)
    results = run(args)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
