"""Two curves for bench/README.md, each beside its floor measured in the same run:

(a) migration latency p50 against the objects resident on the destination: host A
    migrates small objects to host C while C is filled step by step with cycling
    objects; at every step the same number of migrations and of P1 floor operations
    (bench_scale.Floor: 2 mTLS round trips + the protocol's signs, verifies and durable
    commits, counted on one migration) run interleaved. Flat is the goal (P1b).
(b) lineage verify time against entries, one checkpoint per 100 entries (P4's density):
    verify_lineage of a freshly decoded lineage against the floor of one SHA-256 per
    entry plus one signature verify per checkpoint (bench_lineage's P4 measurement).

    python bench/bench_curves.py --quick      # residents 0..2,000, entries 1k..20k
    python bench/bench_curves.py              # residents 0..10,000, entries 1k..30k
    python bench/bench_curves.py --only verify --json curves.json

Writes the series as JSON (``--json FILE``: ``{"curves": {"latency_vs_residents": ...,
"verify_vs_entries": ...}}``) and draws bench/plots/latency_vs_residents.png and
bench/plots/verify_vs_entries.png (matplotlib, Agg backend: no display needed; install
with ``pip install -e '.[bench]'``). Hosts, floor and lineage builder are
bench_scale.py's and bench_lineage.py's own (imported, not copied), so the curves
measure what P1b and P4 measure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_lineage
import bench_scale
from bench_scale import HOST_A, HOST_B, HOST_C, POLICY

from gateway.host import Host
from gateway.testing import HostSpec, World, build_world

PLOTS = Path(__file__).resolve().parent / "plots"
QUICK_RESIDENTS = (0, 500, 1000, 2000)
FULL_RESIDENTS = (0, 1000, 2000, 5000, 10_000)
QUICK_ENTRIES = (1000, 2000, 5000, 10_000, 20_000)
#: Up to 30k: a lineage of 50k entries encodes to about 22 MB, past the 16 MiB that
#: wire.decode_lineage (and every host) accepts, so no object or single archive segment
#: can carry it; longer histories verify segment by segment (bench_compaction.py).
FULL_ENTRIES = (1000, 2000, 5000, 10_000, 20_000, 30_000)
#: Entries per checkpoint: P4 verifies 10k entries with 100 checkpoints.
ENTRIES_PER_CHECKPOINT = 100
#: Migrations and floor operations run, unrecorded, before the first step.
WARM_UP = 8


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- (a) migration latency against residents ---------------------------------------------------


async def make_floor(
    world: World, directory: Path, source: Host, destination: Host, ids: list[str]
) -> Any:
    """bench_scale's P1 floor, sized by counting one migration A -> C of ``ids[0]``
    (after ``ids[1]`` warmed the path; ``ids[2]`` counts C's verifies with its own
    memos, as bench_scale.count_protocol says): its signs, verifies, commits and bytes."""
    counts = await bench_scale.count_protocol(
        source, destination, [ids[1], ids[0], ids[2]], to=HOST_C
    )
    signs, verifies = counts["signs"], counts["verifies"]
    transfer_bytes, object_bytes = counts["transfer_bytes"], counts["object_bytes"]
    commits = (counts["commits_source"], counts["commits_destination"])
    say(f"floor: {signs} signs, {verifies} verifies, commits {commits}, {transfer_bytes} B")
    floor = bench_scale.Floor(
        directory,
        world,
        transfer_bytes=transfer_bytes,
        reply_bytes=400,
        signs=signs,
        verifies=verifies,
        commits=commits,
        object_bytes=object_bytes,
    )
    await floor.start()
    return floor


async def latency_curve(
    world: World, directory: Path, steps: tuple[int, ...], samples: int
) -> dict[str, Any]:
    hosts, running = await bench_scale.serve(world, [HOST_A, HOST_C])
    source, destination = hosts[HOST_A], hosts[HOST_C]
    floor = None
    points: list[dict[str, Any]] = []
    try:
        ids = await bench_scale.create_many(
            source,
            "org-a.example/curve/move",
            3 + WARM_UP + samples * len(steps),
            interval=3600,
        )
        floor = await make_floor(world, directory, source, destination, ids[:3])
        moving = iter(ids[3:])
        # Warm both paths (connections, caches, allocator) before the first step, so the
        # first point is not slower for being first.
        for _ in range(WARM_UP):
            await bench_scale.migrate_sequential(source, [next(moving)], HOST_C)
            await floor.once()
        resident = 0
        for step, target in enumerate(steps):
            if target > resident:
                began = time.perf_counter()
                await bench_scale.create_many(
                    destination,
                    f"org-c.example/curve/resident{step}",
                    target - resident,
                    interval=3600,
                )
                say(f"C filled to {target} residents in {time.perf_counter() - began:.0f} s")
                resident = target
                await asyncio.sleep(1.5)  # let C's scheduler settle after the creations
            ours: list[float] = []
            floors: list[float] = []
            for _ in range(samples):  # interleaved, so load hits both alike
                ours.extend(await bench_scale.migrate_sequential(source, [next(moving)], HOST_C))
                floors.append(await floor.once())
            point = {
                "residents": target,
                "p50_ms": statistics.median(ours) * 1e3,
                "p90_ms": bench_scale.percentile(ours, 0.9) * 1e3,
                "floor_p50_ms": statistics.median(floors) * 1e3,
                "samples": samples,
            }
            points.append(point)
            say(
                f"residents {target}: p50 {point['p50_ms']:.1f} ms, "
                f"floor {point['floor_p50_ms']:.1f} ms"
            )
    finally:
        if floor is not None:
            await floor.stop()
        await bench_scale.shut(running)
    return {"points": points}


# --- (b) lineage verify time against entries ---------------------------------------------------


def verify_point(entries: int, checkpoints: int, runs: int) -> dict[str, float]:
    """Median seconds of verify_lineage and of its floor for one lineage size, and the
    median of the runs' own ratios.

    The one place that measures a point, with bench_lineage's own code: its
    ``verify_seconds(entries, checkpoints, runs)`` where it has one (a dict with
    ``verify_s`` and ``floor_s``, or a pair (ours, floor)), else its P4 measurement
    ``p4`` (build, encode, decode afresh per run, floor and verify_lineage timed alike)."""
    measure = getattr(bench_lineage, "verify_seconds", None)
    if measure is not None:
        got = measure(entries, checkpoints, runs)
        if isinstance(got, dict) and {"verify_s", "floor_s"} <= set(got):
            ours, floor = float(got["verify_s"]), float(got["floor_s"])
            return {
                "verify_s": ours,
                "floor_s": floor,
                "ratio": float(got.get("ratio", ours / floor)),
            }
        if isinstance(got, tuple | list) and len(got) == 2:
            ours, floor = float(got[0]), float(got[1])
            return {"verify_s": ours, "floor_s": floor, "ratio": ours / floor}
        raise SystemExit(
            f"bench_curves: error: bench_lineage.verify_seconds returned {type(got).__name__}, "
            "not {verify_s, floor_s} or (ours, floor) — adapt verify_point"
        )
    figure = bench_lineage.p4(entries, checkpoints, runs)
    return {key: float(figure[key]) for key in ("verify_s", "floor_s", "ratio")}


def verify_curve(steps: tuple[int, ...], runs: int) -> dict[str, Any]:
    points = []
    for entries in steps:
        checkpoints = max(entries // ENTRIES_PER_CHECKPOINT, 1)
        began = time.perf_counter()
        measured = verify_point(entries, checkpoints, runs)
        point = {
            "entries": entries,
            "checkpoints": checkpoints,
            "verify_ms": measured["verify_s"] * 1e3,
            "floor_ms": measured["floor_s"] * 1e3,
            # The median of the runs' own ratios (each run times both back to back): less
            # moved by load than the ratio of the two medians.
            "ratio": measured["ratio"],
            "runs": runs,
        }
        points.append(point)
        say(
            f"entries {entries} / {checkpoints} checkpoints: verify {point['verify_ms']:.1f} ms, "
            f"floor {point['floor_ms']:.1f} ms ({time.perf_counter() - began:.0f} s)"
        )
    return {"points": points}


# --- plots ----------------------------------------------------------------------------------------


def draw(curves: dict[str, Any], directory: Path, caption: str) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display on a server or in CI
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SystemExit(
            f"bench_curves: error: matplotlib is not installed ({exc}) — "
            "pip install -e '.[bench]', or run with --no-plots"
        ) from exc
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    latency = curves.get("latency_vs_residents")
    if latency and latency["points"]:
        points = latency["points"]
        figure, axes = plt.subplots(figsize=(7, 4.2))
        x = [p["residents"] for p in points]
        axes.plot(x, [p["p50_ms"] for p in points], "o-", label="gateway migration p50")
        axes.plot(x, [p["p90_ms"] for p in points], ".:", label="gateway migration p90")
        axes.plot(x, [p["floor_p50_ms"] for p in points], "s--", label="floor p50 (P1 floor)")
        axes.set_xlabel("objects resident on the destination")
        axes.set_ylabel("latency (ms)")
        axes.set_ylim(bottom=0)
        axes.set_title("Migration latency against resident objects")
        axes.grid(alpha=0.3)
        _ratio_axis(axes, x, [p["p50_ms"] / p["floor_p50_ms"] for p in points])
        figure.text(0.01, 0.01, caption, fontsize=7, color="grey")
        figure.tight_layout(rect=(0, 0.03, 1, 1))
        path = directory / "latency_vs_residents.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    verify = curves.get("verify_vs_entries")
    if verify and verify["points"]:
        points = verify["points"]
        figure, axes = plt.subplots(figsize=(7, 4.2))
        x = [p["entries"] for p in points]
        axes.loglog(x, [p["verify_ms"] for p in points], "o-", label="verify_lineage")
        axes.loglog(
            x,
            [p["floor_ms"] for p in points],
            "s--",
            label="floor: SHA-256 per entry + a verify per checkpoint",
        )
        axes.set_xlabel(f"lineage entries (a checkpoint per {ENTRIES_PER_CHECKPOINT})")
        axes.set_ylabel("verify time (ms)")
        axes.set_title("Lineage verify time against entries")
        axes.grid(alpha=0.3, which="both")
        _ratio_axis(axes, x, [p["ratio"] for p in points])
        figure.text(0.01, 0.01, caption, fontsize=7, color="grey")
        figure.tight_layout(rect=(0, 0.03, 1, 1))
        path = directory / "verify_vs_entries.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written


def _ratio_axis(axes: Any, x: list[int], ratios: list[float]) -> None:
    """ours / floor on a right-hand axis: on a shared machine both curves move with the
    load, and their ratio is what the issue's targets are about."""
    right = axes.twinx()
    right.plot(x, ratios, "x-", color="grey", alpha=0.7, label="ours / floor (right axis)")
    right.set_ylabel("ours / floor")
    right.set_ylim(bottom=0, top=max(ratios) * 1.3)
    lines, labels = axes.get_legend_handles_labels()
    more, more_labels = right.get_legend_handles_labels()
    axes.legend(lines + more, labels + more_labels, fontsize=8, loc="upper left")


# --- the command ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help="residents 0..2,000 and entries 1k..20k"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=("latency", "verify"),
        default=["latency", "verify"],
        help="curves to measure (default both)",
    )
    parser.add_argument(
        "--residents", type=int, nargs="+", help="resident counts on the destination"
    )
    parser.add_argument("--entries", type=int, nargs="+", help="lineage sizes to verify")
    parser.add_argument(
        "--samples", type=int, help="migrations (and floor operations) per step (20; 40 full)"
    )
    parser.add_argument("--runs", type=int, default=7, help="verifies per lineage size (7)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the series here")
    parser.add_argument(
        "--plots", type=Path, default=PLOTS, metavar="DIR", help="where the PNGs go"
    )
    parser.add_argument("--no-plots", action="store_true", help="measure only, draw nothing")
    arguments = parser.parse_args(argv)
    residents = tuple(
        arguments.residents or (QUICK_RESIDENTS if arguments.quick else FULL_RESIDENTS)
    )
    entries = tuple(arguments.entries or (QUICK_ENTRIES if arguments.quick else FULL_ENTRIES))
    samples = arguments.samples or (20 if arguments.quick else 40)
    if sorted(residents) != list(residents) or min(residents) < 0:
        parser.error("--residents must be increasing and not negative")
    if min(entries) < ENTRIES_PER_CHECKPOINT or samples < 1 or arguments.runs < 1:
        parser.error(f"--entries must be >= {ENTRIES_PER_CHECKPOINT}; --samples, --runs >= 1")
    started = time.perf_counter()
    curves: dict[str, Any] = {}
    if "latency" in arguments.only:
        with tempfile.TemporaryDirectory(prefix="bench-curves-") as name:
            directory = Path(name)
            peers = {HOST_A: ("default",), HOST_B: ("default",), HOST_C: ("default",)}
            world = build_world(
                directory,
                [
                    HostSpec(host_id=h, policy=POLICY, peer_tenants=peers)
                    for h in (HOST_A, HOST_B, HOST_C)
                ],
            )
            curves["latency_vs_residents"] = asyncio.run(
                latency_curve(world, directory, residents, samples)
            )
    if "verify" in arguments.only:
        curves["verify_vs_entries"] = verify_curve(entries, arguments.runs)
    curves["meta"] = {
        "quick": arguments.quick,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 1),
        "python": platform.python_version(),
    }
    caption = (
        f"{'quick' if arguments.quick else 'full'} run, {curves['meta']['finished']}, "
        f"Python {platform.python_version()}; bench/bench_curves.py"
    )
    if not arguments.no_plots:
        for path in draw(curves, arguments.plots, caption):
            say(f"wrote {path}")
    if arguments.json is not None:
        arguments.json.write_text(json.dumps({"curves": curves}, indent=1) + "\n")
    print(json.dumps({"curves": curves}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
