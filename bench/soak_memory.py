"""Do the process-wide memories hit under the soak's load, and what grows in memory?

Run from the project directory::

    python bench/soak_memory.py --seconds 180
    python bench/soak_memory.py --seconds 240 --trace 60 200   # tracemalloc diff

The soak of bench/bench_soak.py (200 small objects cycling every 5 s, moved back and
forth between two hosts, 8 in flight), but with both hosts served in this process
(gateway.testing.harness.InProcessWorld), so their memories can be read: every
``--sample`` seconds it prints the hit rate since the last sample and the size of the
entry memo (gateway.lineage), the verified-signature memory (gateway.keys), the
verified-prefix memory (gateway.lineage), the verified-arrival memory
(gateway.custody) and the decoded-base memory (gateway.lineage), with this process's
RSS. Both hosts share one process, so the entry memo and signature memory serve both
(the same entries and signatures, as two servers' would each hold), and the prefix and
arrival memories hold one state per host.

Each sample also gives, per host, the journal's object memo and decoded-record memo
(entries and encoded bytes held: gateway.handoff.journal) and the mean encoded size of
the objects it holds, so growth can be split into "a bounded memo filling up" and
"what it holds getting larger" (objects carrying more history). ``--gc-probe`` runs a
full collection after each sample and prints the unreachable objects it found (reference
cycles the tuned collector had not reached yet) and the RSS that freed;
``--trim-probe`` then calls glibc's ``malloc_trim(0)`` and prints the RSS it gave back:
memory the allocator held free, i.e. fragmentation rather than live data. The garbage
collector is set as ``gateway serve`` sets it (gateway/_gc.py) once the objects exist.

``--caps-scale F`` multiplies the cap of every process-wide and per-journal memo by F
(0.125: an eighth) before the soak: with small caps every memo is full within the
first minute, so RSS growth that continues after that is not a memo filling up.

``--account`` empties each memory in turn at the end (then collects and trims) and
prints the RSS each gave back: what each held after the soak, measured.

``--trace A B [C ...]`` starts tracemalloc (which slows everything) and, from each
moment to the next and from the first to the last, prints the allocation sites whose
memory grew most (``--trace-frames N``: grouped by the N innermost frames of their
traceback; 1, the default, groups by source line). ``--census A [B ...]`` counts, at
each moment and after a full collection, the objects the collector tracks by type, and
the untracked ones they refer to (str, bytes, int, ...), and prints what grew since the
previous census.

Every sample also prints CPython's object allocator (``sys._debugmallocstats``): the
arenas it holds (each 1 MiB of RSS once touched), the bytes in live blocks, the bytes
free inside used pools and in unused pools. Live bytes that grow are live objects;
arenas that grow while live bytes stay are fragmentation (arenas kept by a few
long-lived blocks).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import sys
import tempfile
import threading
import time
import tracemalloc
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_soak import HOST_A, HOST_B, POLICY, TENANT, Soak, object_spec, rss_mib
from bench.rss_probe.memstats import census, mallinfo2, pymalloc_stats
from gateway import _gc, _malloc, credentials, custody, keys, rules, wire
from gateway import lineage as lineage_module
from gateway.stores import Put
from gateway.testing import HostSpec, build_world, create_from_spec
from gateway.testing.harness import InProcessWorld


def native_memory() -> str:
    """Where the RSS is, beyond the memos: anonymous vs file-backed pages (/proc), Python's
    own object allocator (pymalloc arenas, mmapped outside malloc), and glibc's heap
    (mallinfo2: in use, free inside the heap, mmapped blocks). Growth in "malloc in use"
    that tracemalloc does not show is C code's (SQLite, gRPC, OpenSSL)."""
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("RssAnon", "RssFile", "RssShmem"):
                fields[name] = int(value.split()[0]) / 1024
    blocks = sys.getallocatedblocks()
    text = " ".join(f"{k} {v:.1f}" for k, v in fields.items())
    info = mallinfo2()
    if info is not None:
        arena, hblkhd, uordblks, fordblks = info
        text += (
            f" | malloc heap {arena / 2**20:.1f} in use {uordblks / 2**20:.1f} "
            f"free {fordblks / 2**20:.1f} mmapped {hblkhd / 2**20:.1f}"
        )
    traced = (
        f" traced {tracemalloc.get_traced_memory()[0] / 2**20:.1f}"
        if tracemalloc.is_tracing()
        else ""
    )
    return f"{text} | python blocks {blocks}{traced}"


def pymalloc_text() -> str:
    stats = pymalloc_stats()
    mib = 2**20
    return (
        f"obmalloc arenas {stats.get('arenas', 0)} (high {stats.get('arenas_highwater', 0)}) "
        f"live {stats.get('allocated', 0) / mib:.1f} free-in-pools "
        f"{stats.get('available', 0) / mib:.1f} unused-pools {stats.get('unused_pools', 0) / mib:.1f}"
    )


def counters() -> dict[str, tuple[int, int, int]]:
    """(hits, misses, size) per memory."""
    entries = lineage_module._remembered_entry.cache_info()
    prefixes = lineage_module.VERIFIED_PREFIXES
    return {
        "entry memo": (entries.hits, entries.misses, entries.currsize),
        "signatures": (
            keys.VERIFIED_SIGNATURES.hits,
            keys.VERIFIED_SIGNATURES.misses,
            len(keys.VERIFIED_SIGNATURES),
        ),
        "prefixes": (prefixes.hits, prefixes.misses, prefixes.sizes()[1]),
        "arrivals": (custody.VERIFIED_ARRIVALS.hits, 0, len(custody.VERIFIED_ARRIVALS)),
        "envelope bytes": (
            wire._envelope_bytes.cache_info().hits,
            wire._envelope_bytes.cache_info().misses,
            wire._envelope_bytes.cache_info().currsize,
        ),
        "records": (RECORD_MEMO_COUNTS[0], RECORD_MEMO_COUNTS[1], 0),
        "bases": (
            lineage_module._BASE_MEMO.hits,
            lineage_module._BASE_MEMO.misses,
            lineage_module._BASE_MEMO.size()[1],
        ),
    }


def scale_caps(world: InProcessWorld, factor: float) -> None:
    """Every memo's cap times ``factor`` (see the module docstring, --caps-scale)."""

    def scaled(value: int) -> int:
        return max(1, int(value * factor))

    entry = lineage_module._remembered_entry
    lineage_module._remembered_entry = functools.lru_cache(
        maxsize=scaled(lineage_module.ENTRY_MEMO_SIZE)
    )(entry.__wrapped__)
    prefixes = lineage_module.VERIFIED_PREFIXES
    prefixes._objects, prefixes._checkpoints = (
        scaled(prefixes._objects),
        scaled(prefixes._checkpoints),
    )
    lineage_module._BASE_MEMO.max_bytes = scaled(lineage_module._BASE_MEMO.max_bytes)
    for memory in (keys.VERIFIED_SIGNATURES, credentials.VERIFIED_GRANTS):
        memory._capacity = scaled(memory._capacity)
    custody.VERIFIED_ARRIVALS._capacity = scaled(custody.VERIFIED_ARRIVALS._capacity)
    for host in world.hosts.values():
        objects, decoded = host.journal._objects, host.journal._decoded
        objects._held._total_size = scaled(objects._held._total_size)
        decoded._entries, decoded._total_bytes = (
            scaled(decoded._entries),
            scaled(decoded._total_bytes),
        )


RECORD_MEMO_COUNTS = [0, 0]  #: hits, misses of the journals' record memos


def count_record_memo(world: InProcessWorld) -> None:
    """Count hits and misses of each journal's record memo (it keeps no counters)."""
    for host in world.hosts.values():
        memo = host.journal._decoded
        plain = memo.get

        def get(decode: Any, raw: bytes, memo: Any = memo, plain: Any = plain) -> Any:
            RECORD_MEMO_COUNTS[0 if (decode, raw) in memo._values else 1] += 1
            return plain(decode, raw)

        memo.get = get  # type: ignore[method-assign]


def forget_all(memo: Any) -> None:
    """Empty an IdleLru (gateway._lru), which has no clear of its own."""
    for key in list(memo._entries):
        memo.forget(key)


def journal_memos(world: InProcessWorld) -> str:
    """Per host: object memo entries/MiB, mean object KB, decoded memo entries/MiB."""
    parts = []
    for name, host in world.hosts.items():
        objects, decoded = host.journal._objects, host.journal._decoded
        count, held = len(objects._held._entries), objects._held._size
        mean = held / count / 1024 if count else 0.0
        parts.append(
            f"{name.split('//')[1][:5]} obj {count} {held / 2**20:.1f}M "
            f"({mean:.0f} KB) dec {len(decoded._values)} {decoded._bytes / 2**20:.1f}M"
        )
    return "; ".join(parts)


async def drive(world: InProcessWorld, ids: list[str], args: argparse.Namespace) -> None:
    soak = Soak(hosts=world.hosts, ids=ids, where=dict.fromkeys(ids, HOST_A), in_flight=8)
    # Soak keeps every migration's (time, latency), about 100 bytes of small objects
    # each, which grew this process's object arenas by about 0.5 MiB/min: a count is
    # enough here, so that what grows is the hosts'.
    soak.done = _Count()  # type: ignore[assignment]
    series: list[tuple[float, float, float, float, float]] = []
    queue: asyncio.Queue[str] = asyncio.Queue()
    for object_id in ids:
        queue.put_nowait(object_id)
    stop = asyncio.Event()
    workers = [asyncio.create_task(soak.worker(queue, stop)) for _ in range(args.in_flight)]
    began = time.perf_counter()
    before = counters()
    done_before = 0
    snapshots: dict[float, tracemalloc.Snapshot] = {}
    censuses: dict[float, dict[str, int]] = {}
    holder_maps: dict[float, dict[int, Any]] = {}
    print(
        "  t s  mig/s  rss MiB  | memory: hit rate since last sample, size (prefixes: "
        "checkpoints held; arrivals: hits only; bases: payload bytes held)",
        flush=True,
    )
    try:
        while time.perf_counter() - began < args.seconds:
            await asyncio.sleep(args.sample)
            now = time.perf_counter() - began
            after = counters()
            parts = []
            for name, (hits, misses, size) in after.items():
                h, m = hits - before[name][0], misses - before[name][1]
                rate = f"{h / (h + m):.0%}" if h + m else "-"
                parts.append(
                    f"{name} {rate} {size}" if name != "arrivals" else f"{name} {h} {size}"
                )
            rate = (len(soak.done) - done_before) / args.sample
            rss = held = rss_mib_self()
            trimmed = ""
            if args.gc_probe:
                if args.gc_types:
                    gc.set_debug(gc.DEBUG_SAVEALL)  # keep what it finds, to count it
                unreachable = gc.collect()
                if args.gc_types:
                    gc.set_debug(0)
                    print(f"{'':21}cyclic garbage: {garbage_types(args.gc_types)}", flush=True)
                trimmed += f" gc {unreachable} freed {held - rss_mib_self():.1f}"
                held = rss_mib_self()
            if args.trim_probe:
                _malloc.trim()
                trimmed += f" trim freed {held - rss_mib_self():.1f}"
            print(f"{now:5.0f} {rate:6.1f} {rss:8.1f}{trimmed}  | " + ", ".join(parts), flush=True)
            print(
                f"{'':21}{journal_memos(world)}; tasks {len(asyncio.all_tasks())} "
                f"threads {threading.active_count()} gc objects {len(gc.get_objects())}",
                flush=True,
            )
            print(f"{'':21}{native_memory()}", flush=True)
            print(f"{'':21}{pymalloc_text()}; {memo_weights()}", flush=True)
            stats = pymalloc_stats()
            series.append(
                (
                    now,
                    float(len(soak.done)),
                    rss,
                    stats.get("arenas", 0) * 1.0,
                    stats.get("allocated", 0) / 2**20,
                )
            )
            before, done_before = after, len(soak.done)
            for moment in args.trace or ():
                if moment not in snapshots and now >= moment:
                    snapshots[moment] = tracemalloc.take_snapshot().filter_traces(
                        [tracemalloc.Filter(False, tracemalloc.__file__)]
                    )
                    print(
                        f"{'':21}tracemalloc snapshot at {now:.0f} s, {len(soak.done)} migrations",
                        flush=True,
                    )
                    if len(snapshots) >= 2:
                        first, last = (snapshots[m] for m in sorted(snapshots)[-2:])
                        print_growth(first, last, args.trace_frames, 15)
            for moment in args.holders or ():
                if moment not in holder_maps and now >= moment:
                    holder_maps[moment] = holders()
                    print(f"{'':21}holders at {now:.0f} s, {len(soak.done)} migrations", flush=True)
                    if len(holder_maps) >= 2:
                        print_holder_growth(
                            holder_maps[sorted(holder_maps)[-2]], holder_maps[moment]
                        )
            for moment in args.census or ():
                if moment not in censuses and now >= moment:
                    censuses[moment] = census()
                    print(
                        f"{'':21}census at {now:.0f} s, {len(soak.done)} migrations, "
                        f"{sum(censuses[moment].values())} objects",
                        flush=True,
                    )
                    if len(censuses) >= 2:
                        earlier = censuses[sorted(censuses)[-2]]
                        print_census_growth(earlier, censuses[moment])
    finally:
        stop.set()
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    if args.trace and len(snapshots) >= 2:
        first, last = (snapshots[m] for m in (min(snapshots), max(snapshots)))
        print(f"\nallocations grown from {min(snapshots):.0f} s to {max(snapshots):.0f} s:")
        print_growth(first, last, args.trace_frames, 25)
    print(f"\nrefusals: {dict(soak.refusals) or 'none'}; migrations {len(soak.done)}")
    summarize(series, args.fit_from)
    if args.account:
        account(world)


class _Count:
    """Stands for Soak.done: counts what is appended, keeps nothing."""

    def __init__(self) -> None:
        self._count = 0

    def append(self, _item: object) -> None:
        self._count += 1

    def __len__(self) -> int:
        return self._count


def summarize(series: list[tuple[float, float, float, float, float]], start: float) -> None:
    """Least-squares slopes from ``start`` s on: RSS and object arenas (MiB/min and MiB
    per 10,000 migrations), and the range of live object bytes (a running maximum of
    live bytes is what keeps arenas: an arena is returned only when all of it is free)."""
    kept = [row for row in series if row[0] >= start]
    if len(kept) < 3:
        return

    def slope(xs: list[float], ys: list[float]) -> float:
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        den = sum((x - mx) ** 2 for x in xs)
        return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0

    times = [row[0] / 60 for row in kept]
    done = [row[1] / 10_000 for row in kept]
    print(f"\nfrom {start:.0f} s ({len(kept)} samples, {kept[-1][1] - kept[0][1]:.0f} migrations):")
    for name, index in (("RSS", 2), ("object arenas", 3), ("live object bytes", 4)):
        values = [row[index] for row in kept]
        print(
            f"  {name:18} {slope(times, values):+6.2f} MiB/min {slope(done, values):+6.2f} "
            f"MiB/10k migrations, {min(values):.1f}-{max(values):.1f} MiB"
        )


def print_growth(
    first: tracemalloc.Snapshot, last: tracemalloc.Snapshot, frames: int, top: int
) -> None:
    """The allocation sites that grew most from ``first`` to ``last``."""
    key = "lineno" if frames <= 1 else "traceback"
    stats = last.compare_to(first, key)
    total = sum(stat.size_diff for stat in stats)
    print(f"{'':21}traced growth {total / 2**20:+.2f} MiB; largest:", flush=True)
    for stat in stats[:top]:
        print(
            f"{'':23}{stat.size_diff / 2**20:+7.2f} MiB {stat.count_diff:+8d} blocks "
            f"(now {stat.size / 2**20:.2f} MiB)"
        )
        lines = stat.traceback.format(limit=frames, most_recent_first=True)
        for line in lines:
            if line.startswith("  File"):
                print(f"{'':27}{line.strip()}")
    sys.stdout.flush()


def holders(kinds: tuple[type, ...] = (tuple, int)) -> dict[int, tuple[str, int, str, Any]]:
    """After a full collection: the tracked containers that refer directly to untracked
    objects of ``kinds`` (the atomic tuples, ints... the collector does not count), by
    id: (their type, how many they hold, a sample, the container itself)."""
    gc.collect()
    found: dict[int, tuple[str, int, str, Any]] = {}
    for container in gc.get_objects():
        count, sample = 0, None
        for referent in gc.get_referents(container):
            if type(referent) in kinds and not gc.is_tracked(referent):
                count += 1
                sample = referent
        if count >= 20:
            found[id(container)] = (
                type(container).__qualname__,
                count,
                repr(sample)[:60],
                container,
            )
    return found


def describe(container: Any, depth: int = 2) -> str:
    """Who holds ``container``, ``depth`` levels up: each referrer's type and the
    attribute or key under which it holds it."""
    if depth == 0:
        return ""
    names = []
    for referrer in gc.get_referrers(container):
        if isinstance(referrer, list) and len(referrer) > 100_000:
            continue  # the list gc.get_objects() made
        if isinstance(referrer, dict):
            key = next((k for k, v in referrer.items() if v is container), None)
            if key is None:
                continue
            owner = describe(referrer, depth - 1)
            names.append(f"dict[{key!r}]" + (f" <- {owner}" if owner else ""))
        elif isinstance(referrer, tuple) and len(referrer) == 4 and referrer[3] is container:
            continue  # holders()' own record
        else:
            slot = ""
            for name in getattr(type(referrer), "__slots__", ()):
                if getattr(referrer, name, None) is container:
                    slot = f".{name}"
            names.append(type(referrer).__qualname__ + slot)
    return ", ".join(names[:3])


def print_holder_growth(
    earlier: dict[int, tuple[str, int, str, Any]], later: dict[int, tuple[str, int, str, Any]]
) -> None:
    grown = []
    for key, (name, count, sample, container) in later.items():
        before = earlier.get(key, (name, 0, "", None))[1]
        grown.append((count - before, count, name, sample, container))
    grown.sort(key=lambda row: row[0], reverse=True)
    print(f"{'':21}containers of untracked tuples/ints that grew most:")
    for diff, count, name, sample, container in grown[:10]:
        print(
            f"{'':23}{diff:+7d} (now {count}) {name} len {len(container)} held by "
            f"{describe(container)}; e.g. {sample}"
        )
    sys.stdout.flush()


def print_census_growth(earlier: dict[str, int], later: dict[str, int]) -> None:
    grown = sorted(
        ((later.get(n, 0) - earlier.get(n, 0), n) for n in set(earlier) | set(later)),
        reverse=True,
    )
    print(f"{'':21}grown by type: " + ", ".join(f"{n} {d:+d}" for d, n in grown[:15]))
    print(f"{'':21}shrunk by type: " + ", ".join(f"{n} {d:+d}" for d, n in grown[-5:]))
    sys.stdout.flush()


def memo_weights() -> str:
    """Entries (and the weight each memo accounts, where it keeps one) of the
    process-wide memos not in the hit-rate line."""
    parts = [
        f"grants {len(credentials.VERIFIED_GRANTS)}",
        f"basebytes {len(wire._BASE_BYTES)}/{wire._BASE_BYTES.weight() / 2**20:.1f}M",
        f"bases {lineage_module._BASE_MEMO.size()[0]}",
        f"prefix objs {lineage_module.VERIFIED_PREFIXES.sizes()[0]}",
    ]
    for name in ("CHECKED_HEADERS", "PARSED_AUTHORITY"):
        memo = getattr(credentials, name, None)
        if memo is not None:
            try:
                parts.append(f"{name.lower()} {len(memo)}")
            except TypeError:
                info = getattr(memo, "cache_info", None)
                if info is not None:
                    parts.append(f"{name.lower()} {info().currsize}")
    return ", ".join(parts)


def account(world: InProcessWorld) -> None:
    """Empty each memory in turn (then a full collection and a trim) and print the RSS
    each gave back: what it held at the end, in this order (a value two memories share
    counts for the last of them to let go)."""
    hosts = list(world.hosts.values())
    steps: list[tuple[str, Callable[[], object]]] = [
        ("journal object memos", lambda: [forget_all(h.journal._objects._held) for h in hosts]),
        ("journal record memos", lambda: [h.journal._decoded._values.clear() for h in hosts]),
        ("verified prefixes", lineage_module.VERIFIED_PREFIXES.clear),
        ("entry memo", lineage_module._remembered_entry.cache_clear),
        ("decoded bases", lineage_module._BASE_MEMO.clear),
        ("encoded envelopes", wire._envelope_bytes.cache_clear),
        ("encoded bases", wire._BASE_BYTES.clear),
        ("verified signatures", keys.VERIFIED_SIGNATURES.clear),
        ("verified grants", credentials.VERIFIED_GRANTS.clear),
        ("verified arrivals", custody.VERIFIED_ARRIVALS.clear),
        ("rules by identity", rules._BY_IDENTITY.clear),
        ("cycle data memos", lambda: [h.cycles._data._values.clear() for h in hosts]),
    ]
    print(
        f"\nrules by identity: {len(rules._BY_IDENTITY)} entries; cycle data memos: "
        + ", ".join(str(len(h.cycles._data)) for h in hosts)
    )
    gc.collect()
    _malloc.trim()
    print(
        f"\nRSS, and live object bytes (obmalloc), given back by emptying each memory "
        f"(from {rss_mib_self():.1f} MiB):"
    )
    for name, empty in steps:
        held, live = rss_mib_self(), pymalloc_stats().get("allocated", 0)
        empty()
        gc.collect()
        _malloc.trim()
        freed = (live - pymalloc_stats().get("allocated", 0)) / 2**20
        print(f"  {name:22} {held - rss_mib_self():6.1f} MiB, live {freed:6.1f} MiB", flush=True)
    print(f"  {'left':22} {rss_mib_self():6.1f} MiB")


def garbage_types(top: int) -> str:
    """The ``top`` most common types in ``gc.garbage`` (what a collection under
    ``gc.DEBUG_SAVEALL`` found in reference cycles), the encoded values of the store
    operations among them (a refused write's traceback kept its whole commit group:
    session 35), and the code of the most common frames (where the cycles were made),
    then empties it."""
    counts: dict[str, int] = {}
    frames: dict[str, int] = {}
    held = 0
    for thing in gc.garbage:
        name = type(thing).__qualname__
        counts[name] = counts.get(name, 0) + 1
        if isinstance(thing, Put):
            held += len(thing.value)
        elif isinstance(thing, types.FrameType):
            code = thing.f_code
            where = f"{Path(code.co_filename).name}:{code.co_name}"
            frames[where] = frames.get(where, 0) + 1
    total = len(gc.garbage)
    gc.garbage.clear()
    ranked = sorted(counts.items(), key=lambda item: -item[1])[:top]
    places = sorted(frames.items(), key=lambda item: -item[1])[:top]
    return (
        f"{total} objects: "
        + ", ".join(f"{name} {count}" for name, count in ranked)
        + f"; store writes' values {held / 2**20:.1f} MiB; frames: "
        + (", ".join(f"{where} {count}" for where, count in places) or "none")
    )


def rss_mib_self() -> float:
    import os

    return rss_mib(os.getpid())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=180.0, help="how long (180)")
    parser.add_argument("--objects", type=int, default=200, help="objects (200)")
    parser.add_argument("--in-flight", type=int, default=8, help="migrations in flight (8)")
    parser.add_argument("--sample", type=float, default=15.0, help="seconds between samples")
    parser.add_argument(
        "--trace",
        type=float,
        nargs="+",
        metavar="T",
        help="tracemalloc snapshots at these seconds; growth between them",
    )
    parser.add_argument(
        "--trace-frames",
        type=int,
        default=1,
        metavar="N",
        help="group tracemalloc growth by the N innermost frames (1: by line)",
    )
    parser.add_argument(
        "--fit-from",
        type=float,
        default=120.0,
        metavar="S",
        help="fit the slopes printed at the end from this second on (120)",
    )
    parser.add_argument(
        "--identity-memos",
        type=int,
        metavar="N",
        help="entries of the identity memos (rules' compiled-by-identity, the cycle "
        "runners' decoded data; least recently used first): 1024 as shipped",
    )
    parser.add_argument(
        "--holders",
        type=float,
        nargs="+",
        metavar="T",
        help="at these seconds, the containers holding most untracked tuples/ints; growth",
    )
    parser.add_argument(
        "--census",
        type=float,
        nargs="+",
        metavar="T",
        help="count objects by type at these seconds (after a full collection)",
    )
    parser.add_argument(
        "--trim-probe",
        action="store_true",
        help="call malloc_trim(0) after each sample and print the RSS it returned",
    )
    parser.add_argument(
        "--gc-probe",
        action="store_true",
        help="run a full collection after each sample; print what it found and freed",
    )
    parser.add_argument(
        "--gc-types",
        type=int,
        default=0,
        metavar="N",
        help="with --gc-probe: the N most common types among the unreachable objects found",
    )
    parser.add_argument(
        "--account",
        action="store_true",
        help="at the end, empty each memory in turn and print the RSS it gave back",
    )
    parser.add_argument(
        "--record-memo-mib",
        type=float,
        help="the journals' record memo cap in MiB of encoded records (16 as shipped)",
    )
    parser.add_argument(
        "--caps-scale",
        type=float,
        default=1.0,
        metavar="F",
        help="multiply every memo's cap by F (1: as shipped)",
    )
    args = parser.parse_args(argv)
    if args.trace:
        tracemalloc.start(max(1, args.trace_frames))
    with tempfile.TemporaryDirectory(prefix="soak-memory-") as name:
        built = build_world(
            Path(name), [HostSpec(host_id=h, policy=POLICY) for h in (HOST_A, HOST_B)]
        )
        world = InProcessWorld(built)
        if args.caps_scale != 1.0:
            scale_caps(world, args.caps_scale)
        if args.record_memo_mib is not None:
            for host in world.hosts.values():
                host.journal._decoded._total_bytes = int(args.record_memo_mib * 2**20)
        count_record_memo(world)
        if args.identity_memos is not None:
            rules._BY_IDENTITY._values._capacity = args.identity_memos
            for host in world.hosts.values():
                host.cycles._data._values._capacity = args.identity_memos
        try:
            ids = [f"obj://org-a.example/soak/{n}" for n in range(args.objects)]

            async def create() -> None:
                for index, object_id in enumerate(ids):
                    await create_from_spec(
                        world.hosts[HOST_A],
                        object_id,
                        object_spec(index, interval=5.0),
                        tenant=TENANT,
                    )

            world.run(create(), timeout=600)
            _gc.tune()  # as `gateway serve` does once its host is open
            world.run(drive(world, ids, args), timeout=args.seconds + 600)
        finally:
            world.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
