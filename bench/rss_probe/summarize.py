"""Slopes of what a served host's RSS is made of, from rss_probe logs (see
sitecustomize.py in this folder)::

    python bench/rss_probe/summarize.py /tmp/probe/*.log [--from 120] [--window 600]

Per log (one server) and per window of its samples: least-squares slopes (MiB/min) and
means of RSS, RssAnon, CPython's object arenas, the live bytes in them, the arenas'
slack (arenas minus live: fragmentation of the object allocator) and "C heap" (RssAnon
minus the arenas: everything malloc holds resident, in use or free, plus thread
stacks). A rise in live bytes is objects kept; a rise in slack or in the C heap with
live bytes flat is fragmentation.

Where the log has malloc's own figures (glibc's ``mallinfo2``, or jemalloc's
``stats.allocated`` under ``LD_PRELOAD``), two more: "all live" (the object arenas' live
bytes plus what malloc has handed out and not taken back, in its heaps and mmapped) and
"held free" (RssAnon minus all live: what both allocators keep resident for nobody).
They compare runs with and without ``PYTHONMALLOC=malloc``, where every object comes
from malloc and the arenas are empty.

Where the log has the figures after ``||`` (memstats.extras: SQLite's own heap, tasks,
threads, descriptors, each memo's entries and MiB, each ``lru_cache``'s entries), each
one's slope per minute over the same window, its mean and its last value, one a line,
largest rise first; names ending in ``mib`` are MiB, so their slopes compare with RSS's.
"""

from __future__ import annotations

import argparse
import re
import sys

LINE = re.compile(
    r"\s*(\d+) rss ([\d.]+) anon ([\d.]+) \| arenas (\d+) live ([\d.]+) free ([\d.]+) "
    r"unused ([\d.]+) blocks (\d+)"
)
#: glibc: "in use I free F mmapped M"; jemalloc: "in use A resident R".
#: (Logs from before session 30 have no "mmapped": counted as 0.)
MALLOC = re.compile(r"\| malloc in use ([\d.]+) (?:free [\d.]+(?: mmapped ([\d.]+))?|resident)")
SERIES = ("rss", "anon", "arenas", "live", "slack", "C heap", "all live", "held free")


def slope(xs: list[float], ys: list[float]) -> float:
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def rows_of(path: str) -> list[tuple[float, ...]]:
    rows = []
    with open(path) as handle:
        for line in handle:
            match = LINE.match(line)
            if match is None:
                continue
            t, rss, anon, arenas, live = (float(v) for v in match.groups()[:5])
            row = (t, rss, anon, arenas, live, arenas - live, anon - arenas)
            found = MALLOC.search(line)
            if found is not None:
                in_use, mmapped = found.groups()
                everything = live + float(in_use) + float(mmapped or 0)
                row += (everything, anon - everything)
            rows.append(row)
    return rows


def extras_of(path: str) -> list[tuple[float, dict[str, float]]]:
    """Each sample's time and its ``name=value`` figures after ``||`` (none in older
    logs)."""
    found = []
    with open(path) as handle:
        for line in handle:
            match = LINE.match(line)
            if match is None or "||" not in line:
                continue
            figures = {}
            for pair in line.split("||", 1)[1].split():
                name, _, value = pair.rpartition("=")
                if name:
                    figures[name] = float(value)
            found.append((float(match.group(1)), figures))
    return found


def extras_slopes(
    samples: list[tuple[float, dict[str, float]]], low: float, high: float
) -> list[tuple[str, float, float, float]]:
    """(name, slope per minute, mean, last value) of each figure present in at least three
    samples in [low, high], by falling slope (a figure missing from a sample, such as a
    memo made later, counts from where it appears)."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for t, figures in samples:
        if not low <= t <= high:
            continue
        for name, value in figures.items():
            minutes, values = series.setdefault(name, ([], []))
            minutes.append(t / 60)
            values.append(value)
    rows = [
        (name, slope(minutes, values), sum(values) / len(values), values[-1])
        for name, (minutes, values) in series.items()
        if len(values) >= 3
    ]
    return sorted(rows, key=lambda row: (-row[1], row[0]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("logs", nargs="+", help="RSS probe logs (RSS_PROBE_OUT files)")
    parser.add_argument(
        "--from", dest="start", type=float, default=120.0, help="from second S (120)"
    )
    parser.add_argument("--window", type=float, default=0.0, help="also per window of S s")
    args = parser.parse_args(argv)
    for path in args.logs:
        rows = [row for row in rows_of(path) if row[0] >= args.start]
        if len(rows) < 3:
            print(f"{path}: too few samples")
            continue
        end = rows[-1][0]
        extras = extras_of(path)
        windows = [(args.start, end)]
        if args.window:
            at = args.start
            while at + args.window <= end + 1:
                windows.append((at, at + args.window))
                at += args.window / 2
        print(f"{path} ({len(rows)} samples to {end:.0f} s)")
        for low, high in windows:
            kept = [row for row in rows if low <= row[0] <= high]
            if len(kept) < 3:
                continue
            minutes = [row[0] / 60 for row in kept]
            parts = []
            for index, name in enumerate(SERIES, start=1):
                if any(len(row) <= index for row in kept):
                    continue
                values = [row[index] for row in kept]
                parts.append(
                    f"{name} {slope(minutes, values):+.2f} ({sum(values) / len(values):.0f})"
                )
            print(f"  {low:5.0f}-{high:5.0f} s: " + ", ".join(parts))
            for name, per_minute, mean, last in extras_slopes(extras, low, high):
                print(
                    f"      {name:48} {per_minute:+10.3f}/min  mean {mean:10.3f}  last {last:10.3f}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
