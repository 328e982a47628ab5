"""Sustained load (issue 13, points 7 and 5): does a host stay as fast, as small and as
correct after ten minutes of migrations as in the first?

Run from the project directory::

    python bench/bench_soak.py --quick                  # 1 minute of soak
    python bench/bench_soak.py                          # 10 minutes (the issue's soak)
    python bench/bench_soak.py --json soak.json
    python bench/bench_soak.py --store-flat --quick     # 1,000 migrations in and out
    python bench/bench_soak.py --store-flat --migrations 10000

**Soak** (default). Two hosts of two organizations (own CAs, keys, mTLS), each a real
``gateway serve`` process (gateway.testing.ServerProcess) on its own SQLite file. 200
small objects (3 CEL rules, cycling every 5 s in the servers) move back and forth
between them, 8 migrations in flight. This process coordinates each migration the way
``gateway migrate`` does (the library's ``Host.migrate`` on the source's own store, beside
its running server), so the servers do the destination's work, their recovery, their
cycles and their pruning. Every ``--sample`` seconds it records migrations/s, latency
p50/p99 of the migrations that finished in the interval, each server's RSS (VmRSS of its
process), each store's bytes on disk (db + wal + shm: blob chunks live inside the db),
lineage entries per object (a rotating sample of objects) and refusals by reason; and
it checks that no object is live on both hosts (an object seen ACTIVE on A, then on B,
then on A again with the same ETag was live twice at once).

The load runs ``--warmup`` seconds (120; 20 with ``--quick``) before the measured
``--seconds``: a served host's memos fill and its heap reaches its working size in about
its first two minutes (135 -> 250 MiB here), a one-off rise that a straight line through
ten minutes would read as a slope of several MiB/min although nothing grows afterwards.
Every figure covers the measured window; ``cold_start`` gives the drifts and the RSS
slopes over the whole run, warm-up included (and ``cold_start_rss_slope_mib_per_min``,
a row of its own in bench/run.py's table).

Drift is computed from the migrations themselves: throughput and p99 of those that
finished in the last third of the window over those of the first third. The RSS slope is a
least-squares line through each server's samples (MiB per minute); the figure is the
larger server's (``rss_slope_last_two_thirds``: the same fit without the first third;
``rss_anon_slope_*``: the same fits of RssAnon, the heaps, without the file pages
mapped). ``store_bytes_per_migration`` is the growth of both stores over the window
divided by the migrations made; it is also given per third, to show whether it grows
with history. Every refusal counts: in this setup (honest hosts, no faults) nothing
should be refused.

**Store flat** (``--store-flat``). Two hosts in this process (InProcessWorld, the same
harness tests/test_pruning.py uses) move ``--objects`` objects in and out ``--migrations``
times. After every ``--every`` migrations **both clocks are jumped past the settled
retention** (about eight days: settled journals are pruned only after it, so a real host
shows this flat line only after its first week) and one recovery pass runs on each host,
which prunes. Printed at each point: the store bytes on disk (db + wal + shm), the bytes of
the values it holds (key + value), the part of those that is history (everything but the
object records: journals, fences, nonces, events, quota charges) and the number of keys.
The figures are the last point over the first. Each object moves about 50 times
(``--objects`` defaults to migrations / 50): an object's own record grows with every hop
until lineage compaction folds its history (issue 13, point 1), and that growth shows in
the live bytes, not in the history bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import finite
from gateway.config import load_config
from gateway.errors import GatewayError
from gateway.handoff.journal import object_key
from gateway.handoff.pruning import minimum_retention
from gateway.host import Host
from gateway.model import LifecycleState
from gateway.objectspec import ObjectSpec, parse_spec
from gateway.testing import HostSpec, ServerProcess, World, build_world, create_from_spec, start_all

HOST_A = "spiffe://org-a.example/cluster/east/gateway"
HOST_B = "spiffe://org-b.example/cluster/west/gateway"
TENANT = "default"
OFFERED = [
    {"resource": "pubsub:*", "actions": ["publish"]},
    {"resource": "state:self", "actions": ["read", "write"]},
    {"resource": "invoke:*", "actions": ["invoke"]},
]
POLICY = {"offers": OFFERED, "ceilings": [{"allow": OFFERED}]}
RULES = [
    {
        "name": "overdue",
        "when": 'data.amount > 1000 && data.status == "open"',
        "publish": {"topic": "alerts/overdue", "payload": '{"invoice": data.invoice}'},
    },
    {"name": "checked", "when": "generation % 2 == 0", "write": '{"checked": generation}'},
    {"name": "small", "when": "data.amount < 100", "publish": {"topic": "alerts/small"}},
]
#: Lineage entries are read from this many objects per sample (decoding all is costly).
LINEAGE_SAMPLE = 8
#: Objects checked for two live copies per sample (three reads each).
LIVE_CHECK_SAMPLE = 25


def object_spec(index: int, *, interval: float | None) -> ObjectSpec:
    """A small invoice object; ``interval`` None: it does not cycle."""
    document: dict[str, Any] = {
        "data": {
            "invoice": f"INV-{index:06d}",
            "amount": (index * 37) % 2000,
            "status": "open" if index % 3 else "paid",
        },
        "grant": {
            "capabilities": [
                {"resource": "pubsub:alerts/*", "actions": ["publish"]},
                {"resource": "state:self", "actions": ["read", "write"]},
            ],
            "audience": [HOST_A, HOST_B],
            "constraints": {"max_hops": 1_000_000},
            # Long enough for the store-flat mode's jumped clocks (some 80 days).
            "valid_for_days": 3650,
        },
        "rules": RULES,
    }
    if interval is not None:
        document["cycle"] = {"interval_seconds": interval}
    return parse_spec(document, source="bench_soak")


def say(text: str) -> None:
    print(text, flush=True)


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (0 with fewer than two points)."""
    if len(xs) < 2:
        return 0.0
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def slope_standard_error(xs: list[float], ys: list[float]) -> float:
    """Standard error of :func:`slope`, widened for the samples' autocorrelation; nan
    with fewer than three points.

    Why: a server's RSS wanders by several MiB over minutes (the allocator's free pages
    between trims, the memos' contents), so neighbouring samples are not independent
    and the textbook standard error understates how far a ten-minute slope can fall
    from the true one. The residuals are treated as a first-order autoregression: the
    textbook error times sqrt((1 + r) / (1 - r)), r the residuals' lag-1
    autocorrelation (clamped to [0, 0.95]). On simulated series of the soak's shape (61
    samples, AR(1) noise, seeded) +- 1.96 of it held the true slope 97 / 92 / 85 % of
    the time at r = 0 / 0.5 / 0.8; Newey and West's estimator held it 92 / 85 / 67 %.
    The soak's residuals had r = 0.3-0.7."""
    n = len(xs)
    if n < 3:
        return float("nan")
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0
    residuals = [y - my - b * (x - mx) for x, y in zip(xs, ys, strict=True)]
    squares = sum(r * r for r in residuals)
    if not den or not squares:
        return 0.0 if den else float("nan")
    lag1 = sum(residuals[i] * residuals[i - 1] for i in range(1, n)) / squares
    lag1 = min(max(lag1, 0.0), 0.95)
    textbook = math.sqrt(squares / (n - 2) / den)
    return textbook * math.sqrt((1 + lag1) / (1 - lag1))


def rss_mib(pid: int) -> float:
    return rss_parts_mib(pid).get("VmRSS", float("nan"))


#: What a process's RSS is made of (Linux, /proc/PID/status): anonymous memory (the
#: heaps: Python's and the C library's), file pages mapped (the interpreter, libraries,
#: SQLite's files) and shared memory (SQLite's WAL index). A leak of the program shows in
#: RssAnon; RssFile and RssShmem follow the files it maps.
RSS_PARTS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")


def rss_parts_mib(pid: int) -> dict[str, float]:
    parts: dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                name, _, rest = line.partition(":")
                if name in RSS_PARTS:
                    parts[name] = int(rest.split()[0]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return parts


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, every thread) process ``pid`` has used so far, from
    /proc/PID/stat; nan if it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            # After the command's closing parenthesis (it may hold spaces): field 3 on.
            fields = handle.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


#: The process that coordinates the migrations (this one), beside the two servers, in
#: each sample's ``cpu_s``.
COORDINATOR = "coordinator"


def rss_mean_by_third(samples: list[dict[str, Any]], span: float) -> dict[str, list[float]]:
    """Each server's mean RSS (MiB) over each third of the measured window (nan for a
    third without samples; a sample at the window's end counts in the last).

    Why: a slope says how fast RSS rose on average, not when. A host's memos fill in its
    first minutes and its heap then swings with the cyclic collector and the trims, so
    the rise from one third to the next tells a one-off fill (first third to second)
    from growth that goes on (second to last); a mean over a third's samples is steadier
    than any one sample (docs/benchmarks.md, "Session 39")."""
    third = span / 3
    means: dict[str, list[float]] = {}
    for host in (HOST_A, HOST_B):
        parts: list[list[float]] = [[], [], []]
        for sample in samples:
            if sample["t"] >= 0:
                parts[min(2, int(sample["t"] / third))].append(sample["rss_mib"][host])
        means[host] = [statistics.fmean(part) if part else float("nan") for part in parts]
    return means


def cpu_ms_per_migration_by_third(
    samples: list[dict[str, Any]], span: float
) -> dict[str, list[float]]:
    """CPU milliseconds each process (the two servers, the coordinator, ``total``) used
    per migration finished, in each third of the measured window.

    Why: throughput and p99 by third are wall-clock figures on a machine shared with other
    work, so a drift in them cannot tell work that grows with history (a store that holds
    more costs more per migration) from a machine that got busier. CPU per migration
    can: it grows only if each migration costs more. (Nearly: the servers' cycles cost
    CPU per second, not per migration, so a throughput that falls for another reason
    raises it by the cycles' share of the CPU times the fall.) A third starts at the
    last sample before it, as the store growth by third does."""
    third = span / 3
    cut = [[s for s in samples if k * third <= s["t"] < (k + 1) * third] for k in range(3)]
    cut[2] += [s for s in samples if s["t"] >= span]
    processes = list(samples[0].get("cpu_s", {})) if samples else []
    result: dict[str, list[float]] = {p: [] for p in [*processes, "total"]}
    for k, part in enumerate(cut):
        start = next((s for s in reversed(samples) if s["t"] < k * third), None)
        start = start or (part[0] if part else None)
        made = part[-1]["migrations"] - start["migrations"] if part and start else 0
        for process in processes:
            used = part[-1]["cpu_s"][process] - start["cpu_s"][process] if made else 0.0
            result[process].append(used * 1e3 / made if made else float("nan"))
        result["total"].append(math.fsum(result[p][k] for p in processes) if made else float("nan"))
    return result


def store_file(world: World, host_id: str) -> Path:
    path = load_config(world.config(host_id)).sqlite
    assert path is not None
    return path


def store_bytes(path: Path) -> int:
    """The store's bytes on disk: the database, its write-ahead log and shared index."""
    return sum(
        p.stat().st_size
        for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"))
        if p.exists()
    )


def wal_bytes(path: Path) -> int:
    wal = path.with_name(path.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


def live_bytes(path: Path) -> dict[str, tuple[int, int]]:
    """(keys, bytes of key + value) per key family, read-only beside the running host."""
    families: dict[str, list[int]] = {}
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        for key, size in connection.execute("SELECT key, length(value) FROM items"):
            parts = key.split("/")
            # The key without its id: a tenant's family is three parts (t/TENANT/KIND),
            # another two (journal/source), a one-level key's its prefix (nonce/ID: one
            # family, not one per nonce).
            family = "/".join(parts[: min(3 if parts[0] == "t" else 2, max(len(parts) - 1, 1))])
            row = families.setdefault(family, [0, 0])
            row[0] += 1
            row[1] += len(key) + size
        # Object records of many entries keep them as rows of their own (schema version
        # 2, docs/storage.md): their heads are counted above, their entries here.
        try:
            rows, size = connection.execute(
                "SELECT count(*), coalesce(sum(length(id) + length(value)), 0) FROM entries"
            ).fetchone()
        except sqlite3.OperationalError:  # a file of schema version 1: no such table
            rows = size = 0
        if rows:
            families["t/*/objects (entry rows)"] = [rows, size]
    finally:
        connection.close()
    return {k: (v[0], v[1]) for k, v in sorted(families.items())}


#: Ids and numbers vary per refusal; the reason is what stays.
_VARYING = re.compile(r"obj://\S+|[0-9a-f]{16,}|spiffe://\S+|\d+(\.\d+)?")


def reason_of(exc: BaseException) -> str:
    text = _VARYING.sub("_", str(exc).splitlines()[0] if str(exc) else "")
    return f"{type(exc).__name__}: {text[:120]}"


# --- soak ------------------------------------------------------------------------------


@dataclass
class Soak:
    hosts: dict[str, Host]
    ids: list[str]
    where: dict[str, str]
    in_flight: int
    done: list[tuple[float, float]] = field(default_factory=list)  #: (finished at, latency)
    refusals: Counter[str] = field(default_factory=Counter)
    double_live: list[str] = field(default_factory=list)
    unresolved: int = 0

    def other(self, host_id: str) -> str:
        return HOST_B if host_id == HOST_A else HOST_A

    async def locate(self, object_id: str) -> str | None:
        """The host holding ``object_id`` ACTIVE now, if one does."""
        for host_id, host in self.hosts.items():
            loaded = await host.journal.object(TENANT, object_id)
            if loaded is not None and loaded.value.state is LifecycleState.ACTIVE:
                return host_id
        return None

    async def worker(self, queue: asyncio.Queue[str], stop: asyncio.Event) -> None:
        while not stop.is_set():
            object_id = await queue.get()
            source = self.where[object_id]
            began = time.perf_counter()
            try:
                await self.hosts[source].migrate(
                    object_id, tenant=TENANT, destination=self.other(source)
                )
                self.done.append((time.perf_counter(), time.perf_counter() - began))
                self.where[object_id] = self.other(source)
            except GatewayError as exc:
                self.refusals[reason_of(exc)] += 1
                for _ in range(50):  # where is it now? (settling, if still open)
                    found = await self.locate(object_id)
                    if found is not None:
                        self.where[object_id] = found
                        break
                    await asyncio.sleep(0.2)
                else:
                    self.unresolved += 1
                    continue  # left out of the rotation; reported
            queue.put_nowait(object_id)

    async def check_live(self, object_ids: list[str]) -> None:
        """An object ACTIVE on A, then on B, then on A with the same ETag, was live on
        both at once (reads of two stores are not one snapshot: this avoids a false alarm
        from an object moving between the reads)."""
        a, b = self.hosts[HOST_A].journal, self.hosts[HOST_B].journal
        for object_id in object_ids:
            first = await a.object(TENANT, object_id)
            if first is None or first.value.state is not LifecycleState.ACTIVE:
                continue
            there = await b.object(TENANT, object_id)
            if there is None or there.value.state is not LifecycleState.ACTIVE:
                continue
            again = await a.object(TENANT, object_id)
            if again is not None and again.etag == first.etag:
                self.double_live.append(object_id)

    async def lineage_entries(self, object_ids: list[str]) -> float:
        return (await self.carried(object_ids))[0]

    async def carried(self, object_ids: list[str]) -> tuple[float, float, float]:
        """Means over the live copies of ``object_ids``: lineage entries carried, handoffs
        (departures) carried (ADR 0010 step 2 bounds them), and stored record bytes."""
        counts, handoffs, sizes = [], [], []
        for object_id in object_ids:
            for host in self.hosts.values():
                item = await host.journal.store.get(object_key(TENANT, object_id))
                loaded = await host.journal.object(TENANT, object_id)
                if loaded is not None and loaded.value.state is LifecycleState.ACTIVE:
                    counts.append(len(loaded.value.lineage.entries))
                    handoffs.append(len(loaded.value.lineage.checkpoints))
                    sizes.append(len(item.value) if item is not None else 0)
                    break
        if not counts:
            return float("nan"), float("nan"), float("nan")
        return statistics.fmean(counts), statistics.fmean(handoffs), statistics.fmean(sizes)


async def drive(
    world: World, servers: dict[str, ServerProcess], ids: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    hosts = {h: await Host.open(load_config(world.config(h))) for h in (HOST_A, HOST_B)}
    files = {h: store_file(world, h) for h in hosts}
    soak = Soak(hosts=hosts, ids=ids, where=dict.fromkeys(ids, HOST_A), in_flight=args.in_flight)
    queue: asyncio.Queue[str] = asyncio.Queue()
    for object_id in ids:
        queue.put_nowait(object_id)
    stop = asyncio.Event()
    samples: list[dict[str, Any]] = []
    began = time.perf_counter()
    workers = [asyncio.create_task(soak.worker(queue, stop)) for _ in range(args.in_flight)]
    say(
        f"{'t s':>5} {'mig/s':>6} {'p50 ms':>7} {'p99 ms':>7} {'rss A':>6} {'rss B':>6} "
        f"{'store A MiB':>11} {'store B MiB':>11} {'entries':>7} refusals"
    )
    last_count, last_time, turn = 0, began, 0
    try:
        while True:
            await asyncio.sleep(args.sample)
            now = time.perf_counter()
            recent = [lat for at, lat in soak.done[last_count:]]
            rotation = ids[turn * LIVE_CHECK_SAMPLE % len(ids) :][:LIVE_CHECK_SAMPLE]
            await soak.check_live(rotation)
            picked = ids[turn * LINEAGE_SAMPLE % len(ids) :][:LINEAGE_SAMPLE]
            sample = {
                "t": now - began,
                "migrations_per_s": len(recent) / (now - last_time),
                "p50_ms": percentile(recent, 0.5) * 1e3,
                "p99_ms": percentile(recent, 0.99) * 1e3,
                "rss_mib": {h: rss_mib(servers[h].pid) for h in hosts},
                "rss_parts_mib": {h: rss_parts_mib(servers[h].pid) for h in hosts},
                "cpu_s": {
                    **{h: cpu_seconds(servers[h].pid) for h in hosts},
                    COORDINATOR: time.process_time(),
                },
                "store_bytes": {h: store_bytes(files[h]) for h in hosts},
                "wal_bytes": {h: wal_bytes(files[h]) for h in hosts},
                **dict(
                    zip(
                        ("lineage_entries", "handoffs_carried", "record_bytes"),
                        await soak.carried(picked),
                        strict=True,
                    )
                ),
                "migrations": len(soak.done),
                "refusals": sum(soak.refusals.values()),
                # The machine is shared: a drift measured while others' load rose is not
                # the gateway's alone.
                "load_average_1min": os.getloadavg()[0],
            }
            samples.append(sample)
            turn += 1
            last_count, last_time = len(soak.done), now
            say(
                f"{sample['t']:5.0f} {sample['migrations_per_s']:6.1f} {sample['p50_ms']:7.0f} "
                f"{sample['p99_ms']:7.0f} {sample['rss_mib'][HOST_A]:6.1f} "
                f"{sample['rss_mib'][HOST_B]:6.1f} "
                f"{sample['store_bytes'][HOST_A] / 2**20:11.1f} "
                f"{sample['store_bytes'][HOST_B] / 2**20:11.1f} "
                f"{sample['lineage_entries']:7.0f} {sample['refusals']}"
            )
            if now - began >= args.warmup + args.seconds:
                break
    finally:
        stop.set()
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    ended = time.perf_counter()
    # Let what was in flight settle (recovery included), then check every object: exactly
    # one live copy. An object still without one after a minute is reported, not hidden.
    live: Counter[int] = Counter()
    for _ in range(60):
        live = Counter()
        for object_id in ids:
            holders = []
            for host_id, host in hosts.items():
                loaded = await host.journal.object(TENANT, object_id)
                if loaded is not None and loaded.value.live:
                    holders.append(host_id)
            live[len(holders)] += 1
        if live[1] == len(ids):
            break
        await asyncio.sleep(1)
    families = {h: live_bytes(files[h]) for h in hosts}
    for host in hosts.values():
        await host.close()
    # The figures cover the measured window, after the warm-up; the same figures over the
    # whole run, from the servers' cold start, stay beside them.
    measured = [{**s, "t": s["t"] - args.warmup} for s in samples if s["t"] >= args.warmup]
    result = summarize(soak, measured, began + args.warmup, ended, live, families, args)
    cold = summarize(soak, samples, began, ended, live, families, args)
    result["warmup_s"] = args.warmup
    result["cold_start"] = {
        key: cold[key]
        for key in (
            "throughput_drift",
            "p99_drift",
            "cpu_per_migration_drift",
            "rss_slope_mib_per_min",
            "rss_slope_by_host",
            "rss_slope_last_two_thirds",
            "throughput_by_third",
            "p99_ms_by_third",
            "migrations",
            "seconds",
        )
    }
    # A row of its own in bench/run.py's table, judged by the same bound.
    result["cold_start_rss_slope_mib_per_min"] = cold["rss_slope_mib_per_min"]
    result["warmup_samples"] = [s for s in samples if s["t"] < args.warmup]
    return result


def summarize(
    soak: Soak,
    samples: list[dict[str, Any]],
    began: float,
    ended: float,
    live: Counter[int],
    families: dict[str, dict[str, tuple[int, int]]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    span = ended - began
    third = span / 3
    thirds: list[list[float]] = [[], [], []]
    for at, latency in soak.done:
        if 0 <= at - began < span:
            thirds[min(2, int((at - began) / third))].append(latency)
    rates = [len(t) / third for t in thirds]
    p99s = [percentile(t, 0.99) for t in thirds]
    minutes = [s["t"] / 60 for s in samples]
    slopes = {h: slope(minutes, [s["rss_mib"][h] for s in samples]) for h in (HOST_A, HOST_B)}
    slope_errors = {
        h: slope_standard_error(minutes, [s["rss_mib"][h] for s in samples])
        for h in (HOST_A, HOST_B)
    }
    # The same fit over the last two thirds: what is left once caches have filled.
    late = [s for s in samples if s["t"] >= third]
    late_slopes = {
        h: slope([s["t"] / 60 for s in late], [s["rss_mib"][h] for s in late])
        for h in (HOST_A, HOST_B)
    }
    # The same two fits of the anonymous part alone (the heaps): file pages mapped are
    # not the program's growth.
    anon = {
        h: [(s["t"] / 60, s.get("rss_parts_mib", {}).get(h, {}).get("RssAnon")) for s in samples]
        for h in (HOST_A, HOST_B)
    }
    anon_slopes = {
        h: slope([t for t, v in points if v is not None], [v for t, v in points if v is not None])
        for h, points in anon.items()
    }
    anon_late_slopes = {
        h: slope(
            [t for t, v in points if v is not None and t * 60 >= third],
            [v for t, v in points if v is not None and t * 60 >= third],
        )
        for h, points in anon.items()
    }
    totals = [sum(s["store_bytes"].values()) for s in samples]
    migrations = sum(1 for at, _latency in soak.done if at >= began)

    def growth_per_migration(part: list[dict[str, Any]], before: dict[str, Any] | None) -> float:
        if not part:
            return float("nan")
        start = before or part[0]
        made = part[-1]["migrations"] - start["migrations"]
        grown = sum(part[-1]["store_bytes"].values()) - sum(start["store_bytes"].values())
        return grown / made if made else float("nan")

    cut = [[s for s in samples if k * third <= s["t"] < (k + 1) * third] for k in range(3)]
    cut[2] += [s for s in samples if s["t"] >= span]
    per_third = []
    for k in range(3):
        previous = next((s for s in reversed(samples) if s["t"] < k * third), None)
        per_third.append(growth_per_migration(cut[k], previous))
    cpu = cpu_ms_per_migration_by_third(samples, span)
    result = {
        "throughput_drift": rates[2] / rates[0] if rates[0] else float("nan"),
        "p99_drift": p99s[2] / p99s[0] if p99s[0] else float("nan"),
        # Last third over first: above 1 only if each migration costs more.
        "cpu_per_migration_drift": cpu["total"][2] / cpu["total"][0]
        if cpu["total"] and cpu["total"][0]
        else float("nan"),
        "cpu_ms_per_migration_by_third": cpu,
        "rss_slope_mib_per_min": max(slopes.values()),
        "rss_slope_by_host": slopes,
        "rss_slope_standard_error_by_host": slope_errors,
        # +- this around the larger server's slope holds its true slope about 95 % of
        # the time (slope_standard_error).
        "rss_slope_ci95_mib_per_min": 1.96 * slope_errors[max(slopes, key=slopes.__getitem__)],
        "rss_slope_last_two_thirds": max(late_slopes.values()),
        "rss_mean_mib_by_third": rss_mean_by_third(samples, span),
        "rss_anon_slope_by_host": anon_slopes,
        "rss_anon_slope_last_two_thirds_by_host": anon_late_slopes,
        "store_bytes_per_migration": (totals[-1] - totals[0]) / sampled
        if (sampled := samples[-1]["migrations"] - samples[0]["migrations"] if samples else 0)
        else float("nan"),
        "store_bytes_per_migration_by_third": per_third,
        "store_bytes_first_last": [totals[0], totals[-1]] if totals else [],
        "store_bytes_by_host_first_last": {
            h: [samples[0]["store_bytes"][h], samples[-1]["store_bytes"][h]]
            for h in (HOST_A, HOST_B)
        }
        if samples
        else {},
        "live_bytes_by_family": {
            h: {k: {"keys": n, "bytes": b} for k, (n, b) in f.items()} for h, f in families.items()
        },
        "throughput_by_third": rates,
        "p50_ms_by_third": [percentile(t, 0.5) * 1e3 for t in thirds],
        "p99_ms_by_third": [p * 1e3 for p in p99s],
        "lineage_entries_first_last": [
            samples[0]["lineage_entries"],
            samples[-1]["lineage_entries"],
        ]
        if samples
        else [],
        "handoffs_carried_first_last": [
            samples[0].get("handoffs_carried"),
            samples[-1].get("handoffs_carried"),
        ]
        if samples
        else [],
        "record_bytes_first_last": [
            samples[0].get("record_bytes"),
            samples[-1].get("record_bytes"),
        ]
        if samples
        else [],
        "refusals": dict(soak.refusals),
        "objects_live_twice": sorted(set(soak.double_live)),
        "objects_unresolved": soak.unresolved,
        "live_copies_at_end": {str(k): v for k, v in sorted(live.items())},
        "migrations": migrations,
        "load_average_by_third": [
            statistics.fmean(s["load_average_1min"] for s in part) if part else float("nan")
            for part in cut
        ],
        "seconds": span,
        "objects": len(soak.ids),
        "in_flight": args.in_flight,
        "interval_s": args.interval,
        "samples": samples,
    }
    return result


def run_soak(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as name:
        directory = Path(name)
        world = build_world(
            directory,
            [HostSpec(host_id=h, policy=POLICY) for h in (HOST_A, HOST_B)],
        )
        ids = [f"obj://org-a.example/soak/{n}" for n in range(args.objects)]

        async def create() -> None:
            host = await Host.open(load_config(world.config(HOST_A)))
            try:
                for index, object_id in enumerate(ids):
                    await create_from_spec(
                        host, object_id, object_spec(index, interval=args.interval), tenant=TENANT
                    )
            finally:
                await host.close()

        say(f"creating {len(ids)} objects on A, cycling every {args.interval} s")
        asyncio.run(create())
        with contextlib.ExitStack() as stack:
            servers = {h: ServerProcess(world.config(h)) for h in (HOST_A, HOST_B)}
            start_all(stack, *servers.values())
            say(
                f"serving A (pid {servers[HOST_A].pid}) and B (pid {servers[HOST_B].pid}); "
                f"{args.in_flight} in flight for {args.warmup:.0f} s of warm-up, then "
                f"{args.seconds:.0f} s measured"
            )
            result = asyncio.run(drive(world, servers, ids, args))
            if args.keep_logs is not None:
                args.keep_logs.mkdir(parents=True, exist_ok=True)
                for h, server in servers.items():
                    target = args.keep_logs / f"serve-{h.split('/')[2]}.log"
                    with contextlib.suppress(OSError):
                        target.write_bytes(server.log_path.read_bytes())
    return result


def print_soak(result: dict[str, Any]) -> None:
    say("")
    say(
        f"soak: {result['migrations']} migrations in {result['seconds']:.0f} s, "
        f"after {result['warmup_s']:.0f} s of warm-up"
    )
    t = result["throughput_by_third"]
    say(f"  throughput by third (mig/s): {t[0]:.1f} {t[1]:.1f} {t[2]:.1f}")
    say("  p50 by third (ms): " + " ".join(f"{v:.0f}" for v in result["p50_ms_by_third"]))
    say("  p99 by third (ms): " + " ".join(f"{v:.0f}" for v in result["p99_ms_by_third"]))
    say(
        f"  throughput drift (last/first third) {result['throughput_drift']:.2f}, "
        f"p99 drift {result['p99_drift']:.2f}"
    )
    cpu = result["cpu_ms_per_migration_by_third"]
    say(
        "  CPU ms per migration by third: "
        + ", ".join(
            f"{p.split('/')[2] if '/' in p else p} " + " ".join(f"{v:.1f}" for v in values)
            for p, values in cpu.items()
        )
        + f" (drift {result['cpu_per_migration_drift']:.2f})"
    )
    say(
        f"  RSS slope (MiB/min, larger server) {result['rss_slope_mib_per_min']:.2f} "
        f"(last two thirds {result['rss_slope_last_two_thirds']:.2f}); by server, +- 1.96 "
        "standard errors: "
        + ", ".join(
            f"{'A' if h == HOST_A else 'B'} {result['rss_slope_by_host'][h]:.2f} +- "
            f"{1.96 * result['rss_slope_standard_error_by_host'][h]:.2f}"
            for h in (HOST_A, HOST_B)
        )
    )
    say(
        "  RSS mean by third (MiB): "
        + ", ".join(
            f"{'A' if h == HOST_A else 'B'} "
            + " ".join(f"{v:.1f}" for v in result["rss_mean_mib_by_third"][h])
            for h in (HOST_A, HOST_B)
        )
    )
    say(
        "  RssAnon slope (MiB/min) "
        + ", ".join(
            f"{'A' if h == HOST_A else 'B'} {result['rss_anon_slope_by_host'][h]:.2f} "
            f"(last two thirds {result['rss_anon_slope_last_two_thirds_by_host'][h]:.2f})"
            for h in (HOST_A, HOST_B)
        )
    )
    cold = result["cold_start"]
    say(
        f"  from the cold start ({cold['seconds']:.0f} s, warm-up included): throughput "
        f"drift {cold['throughput_drift']:.2f}, p99 drift {cold['p99_drift']:.2f}, RSS slope "
        f"{cold['rss_slope_mib_per_min']:.2f} (last two thirds "
        f"{cold['rss_slope_last_two_thirds']:.2f})"
    )
    first, last = result["store_bytes_first_last"]
    say(
        f"  stores {first / 2**20:.1f} -> {last / 2**20:.1f} MiB, "
        f"{result['store_bytes_per_migration']:.0f} B per migration (by third: "
        + " ".join(f"{v:.0f}" for v in result["store_bytes_per_migration_by_third"])
        + ")"
    )
    entries = result["lineage_entries_first_last"]
    say(f"  lineage entries per object {entries[0]:.0f} -> {entries[1]:.0f}")
    handoffs, record = result["handoffs_carried_first_last"], result["record_bytes_first_last"]
    if handoffs:
        say(
            f"  handoffs carried per object {handoffs[0]:.0f} -> {handoffs[1]:.0f}, "
            f"record bytes {record[0]:.0f} -> {record[1]:.0f}"
        )
    say(
        "  machine load average (1 min) by third: "
        + " ".join(f"{v:.1f}" for v in result["load_average_by_third"])
    )
    say(f"  refusals {result['refusals'] or 'none'}")
    say(
        f"  live copies at the end {result['live_copies_at_end']}, "
        f"seen live twice {result['objects_live_twice'] or 'never'}"
    )
    for host, families in result["live_bytes_by_family"].items():
        top = sorted(families.items(), key=lambda kv: -kv[1]["bytes"])[:6]
        say(
            f"  {host.split('/')[2]} live values: "
            + ", ".join(f"{k} {v['keys']} keys {v['bytes'] / 2**20:.1f} MiB" for k, v in top)
        )


# --- store flat ------------------------------------------------------------------------


def run_store_flat(args: argparse.Namespace) -> dict[str, Any]:
    from gateway.testing.harness import InProcessWorld

    with tempfile.TemporaryDirectory(prefix="bench-store-flat-") as name:
        directory = Path(name)
        built = build_world(
            directory, [HostSpec(host_id=h, policy=POLICY) for h in (HOST_A, HOST_B)]
        )
        files = {h: store_file(built, h) for h in (HOST_A, HOST_B)}
        world = InProcessWorld(built)
        # Just past the retention: host certificates (90 days) must outlive ten jumps.
        jump = minimum_retention(timedelta(seconds=60)) + timedelta(hours=1)
        series: list[dict[str, Any]] = []
        refusals: Counter[str] = Counter()
        with contextlib.closing(world):
            ids = [f"obj://org-a.example/flat/{n}" for n in range(args.objects)]
            for index, object_id in enumerate(ids):
                # No cycling: what is measured is what migrations leave behind.
                world.run(
                    create_from_spec(
                        world.hosts[HOST_A],
                        object_id,
                        object_spec(index, interval=None),
                        tenant=TENANT,
                    )
                )
            where = dict.fromkeys(ids, HOST_A)
            say(
                f"{len(ids)} objects, {args.migrations} migrations, clocks jumped "
                f"{jump.days} days and pruned every {args.every}"
            )
            say(
                f"{'migrations':>10} {'store A':>10} {'store B':>10} {'live A':>10} "
                f"{'live B':>10} {'history A':>9} {'history B':>9} {'keys A':>6} {'keys B':>6}"
            )
            made = 0

            async def move(object_id: str) -> None:
                source = where[object_id]
                to = HOST_B if source == HOST_A else HOST_A
                try:
                    await world.hosts[source].migrate(object_id, tenant=TENANT, destination=to)
                    where[object_id] = to
                except GatewayError as exc:
                    refusals[reason_of(exc)] += 1

            async def batch(count: int) -> None:
                slots = asyncio.Semaphore(args.in_flight)
                queue = [ids[(made + k) % len(ids)] for k in range(count)]

                async def one(object_id: str) -> None:
                    async with slots:
                        await move(object_id)

                # One object at most once per batch part: no two migrations of one object.
                for start in range(0, len(queue), len(ids)):
                    await asyncio.gather(*(one(o) for o in queue[start : start + len(ids)]))

            while made < args.migrations:
                step = min(args.every, args.migrations - made)
                world.run(batch(step), timeout=3600)
                made += step
                for host_id in (HOST_A, HOST_B):
                    world.clock(host_id).skew(jump)
                for host_id in (HOST_A, HOST_B):
                    world.recover(host_id)
                held = {h: live_bytes(files[h]) for h in files}
                point = {
                    "migrations": made,
                    "store_bytes": {h: store_bytes(files[h]) for h in files},
                    "wal_bytes": {h: wal_bytes(files[h]) for h in files},
                    "live_bytes": {h: sum(b for _n, b in held[h].values()) for h in files},
                    # Everything but the object records: what migrations leave behind.
                    "history_bytes": {
                        h: sum(b for k, (_n, b) in held[h].items() if "/objects" not in k)
                        for h in files
                    },
                    "keys": {h: sum(n for n, _b in held[h].values()) for h in files},
                }
                series.append(point)
                say(
                    f"{made:10d} {point['store_bytes'][HOST_A]:10d} "
                    f"{point['store_bytes'][HOST_B]:10d} {point['live_bytes'][HOST_A]:10d} "
                    f"{point['live_bytes'][HOST_B]:10d} "
                    f"{point['history_bytes'][HOST_A]:9d} {point['history_bytes'][HOST_B]:9d} "
                    f"{point['keys'][HOST_A]:6d} {point['keys'][HOST_B]:6d}"
                )
            for object_id in ids:
                world.assert_one_live_copy(object_id)
            families = {h: live_bytes(files[h]) for h in files}
    first, last = series[0], series[-1]
    result = {
        "clock_jumped_days_per_point": jump.days,
        "objects": len(ids),
        "migrations": made,
        "every": args.every,
        "series": series,
        "store_bytes_last_over_first": sum(last["store_bytes"].values())
        / sum(first["store_bytes"].values()),
        "live_bytes_last_over_first": sum(last["live_bytes"].values())
        / sum(first["live_bytes"].values()),
        "history_bytes_last_over_first": sum(last["history_bytes"].values())
        / sum(first["history_bytes"].values()),
        "keys_first_last": [sum(first["keys"].values()), sum(last["keys"].values())],
        "live_bytes_by_family": {
            h: {k: {"keys": n, "bytes": b} for k, (n, b) in f.items()} for h, f in families.items()
        },
        "refusals": dict(refusals),
    }
    say(
        f"store bytes last/first {result['store_bytes_last_over_first']:.2f}, "
        f"live bytes last/first {result['live_bytes_last_over_first']:.2f}, "
        f"history bytes last/first {result['history_bytes_last_over_first']:.2f}, "
        f"keys {result['keys_first_last']}, "
        f"refusals {dict(refusals) or 'none'}"
    )
    return result


# --- main ------------------------------------------------------------------------------


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1 minute soak / 1,000 migrations")
    parser.add_argument("--seconds", type=float, help="soak duration (600; 60 with --quick)")
    parser.add_argument(
        "--objects", type=int, help="objects (200 soak; store-flat: migrations / 50)"
    )
    parser.add_argument("--interval", type=float, default=5.0, help="cycle interval s (5)")
    parser.add_argument("--in-flight", type=int, default=8, help="migrations in flight (8)")
    parser.add_argument(
        "--warmup",
        type=float,
        help="seconds of the same load before the measured --seconds (120; 20 with --quick): "
        "the servers' memos and heaps reach their working size; the figures cover what "
        "follows, and cold_start in the JSON gives them over the whole run (0: none)",
    )
    parser.add_argument("--sample", type=float, help="seconds between samples (10; 3 quick)")
    parser.add_argument(
        "--store-flat",
        action="store_true",
        help="instead of the soak: store size over many migrations in and out, pruned",
    )
    parser.add_argument(
        "--migrations", type=int, help="store-flat: migrations (10,000; 1,000 with --quick)"
    )
    parser.add_argument("--every", type=int, help="store-flat: migrations between points")
    parser.add_argument("--keep-logs", type=Path, help="copy the servers' logs into this folder")
    parser.add_argument("--json", type=Path, help="write the figures as JSON to this file")
    args = parser.parse_args(argv)
    quick = args.quick
    args.seconds = args.seconds or (60.0 if quick else 600.0)
    if args.warmup is None:
        args.warmup = 20.0 if quick else 120.0
    args.sample = args.sample or (3.0 if quick else 10.0)
    args.migrations = args.migrations or (1000 if quick else 10_000)
    # Store-flat: each object moves about 50 times (an object's own lineage grows with
    # every hop until compaction folds it; that shows as t/*/objects bytes).
    args.objects = args.objects or (max(2, args.migrations // 50) if args.store_flat else 200)
    args.every = args.every or max(1, args.migrations // 10)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    results: dict[str, Any] = {"quick": args.quick}
    if args.store_flat:
        results["store_flat"] = run_store_flat(args)
    else:
        results["soak"] = run_soak(args)
        print_soak(results["soak"])
    if args.json is not None:
        args.json.write_text(json.dumps(finite(results), indent=1, allow_nan=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
