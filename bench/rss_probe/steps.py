"""Each step of a served host's RSS, lined up with what happened in its sample, from
rss_probe logs (see sitecustomize.py in this folder)::

    python bench/rss_probe/steps.py /tmp/probe/*.log [--over 5] [--from 120]

For every sample whose RSS rose more than ``--over`` MiB since the one before (and,
with ``--highs``, every sample that set a new high of the run from ``--from`` on), one
line: seconds, the rise, and how much of it CPython's arenas (and their live bytes) and
glibc's heap (in use, free) made; then the collections of each generation run in the
sample and the objects they freed, the process's CPU in the sample (work done: a burst
of migrations or cycles shows as CPU), tasks alive, and SQLite's heap. A step with a
middle collection in it, or a rise of live bytes with a burst of tasks, reads directly.
Standard library only.
"""

from __future__ import annotations

import argparse
import itertools
import re

HEAD = re.compile(
    r"\s*(\d+) rss ([\d.]+) anon ([\d.]+) \| arenas (\d+) live ([\d.]+) free ([\d.]+) "
    r"unused ([\d.]+) blocks (\d+)"
)
MALLOC = re.compile(r"\| malloc in use ([\d.]+) free ([\d.]+)")
CPU = re.compile(r"\| cpu ([\d.]+)")
EXTRA = re.compile(r"(\S+)=([-\d.]+)")


def samples(path: str) -> list[dict[str, float]]:
    rows: list[dict[str, float]] = []
    with open(path) as handle:
        for line in handle:
            head = HEAD.match(line)
            if head is None:
                continue
            t, rss, anon, arenas, live = (float(v) for v in head.groups()[:5])
            row = {"t": t, "rss": rss, "anon": anon, "arenas": arenas, "live": live}
            found = MALLOC.search(line)
            if found is not None:
                row["heap"], row["heapfree"] = (float(v) for v in found.groups())
            cpu = CPU.search(line)
            if cpu is not None:
                row["cpu"] = float(cpu.group(1))
            _, _, tail = line.partition("||")
            for name, value in EXTRA.findall(tail):
                if name.startswith(("gc", "tasks", "sqlite_mib")):
                    row[name] = float(value)
            rows.append(row)
    return rows


def describe(before: dict[str, float], after: dict[str, float]) -> str:
    def rise(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    collections = []
    for generation in (0, 1, 2):
        runs = rise(f"gc{generation}_runs")
        if runs:
            freed = rise(f"gc{generation}_freed")
            collections.append(f"gc{generation} x{runs:.0f} freed {freed:,.0f}")
    return (
        f"{after['t']:6.0f} s  rss {after['rss']:6.1f} ({rise('rss'):+5.1f})  "
        f"arenas {rise('arenas'):+4.0f} live {rise('live'):+5.1f}  "
        f"heap in use {rise('heap'):+5.1f} free {rise('heapfree'):+5.1f}  "
        f"cpu {rise('cpu'):4.1f} s  tasks {after.get('tasks', 0):3.0f} ({rise('tasks'):+3.0f})  "
        f"sqlite {rise('sqlite_mib'):+4.1f}  " + (", ".join(collections) or "no collection")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("logs", nargs="+", help="RSS probe logs (RSS_PROBE_OUT files)")
    parser.add_argument("--over", type=float, default=5.0, help="MiB a step rises (5)")
    parser.add_argument("--from", dest="start", type=float, default=0.0, help="from second S")
    parser.add_argument("--highs", action="store_true", help="also each new high from --from")
    args = parser.parse_args(argv)
    for path in args.logs:
        rows = samples(path)
        print(f"== {path}: {len(rows)} samples")
        high = None
        for before, after in itertools.pairwise(rows):
            if after["t"] < args.start:
                continue
            new_high = high is not None and after["rss"] > high
            high = after["rss"] if high is None else max(high, after["rss"])
            if after["rss"] - before["rss"] > args.over or (args.highs and new_high):
                print(("* " if new_high else "  ") + describe(before, after))
        if rows:
            print(f"   high {max(r['rss'] for r in rows if r['t'] >= args.start):.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
