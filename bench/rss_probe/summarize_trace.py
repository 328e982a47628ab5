"""What grew between two tracemalloc snapshots of one served host (sitecustomize.py in
this folder writes them with ``RSS_PROBE_TRACE=N RSS_PROBE_CENSUS=T1,T2``)::

    python bench/rss_probe/summarize_trace.py /tmp/probe/PID-210.trace /tmp/probe/PID-690.trace \
        [--top 25] [--frames 8]

Prints the traced totals of both, then the ``--top`` allocation sites whose memory grew
most from the first to the second, grouped by their whole traceback (the innermost
``--frames`` frames shown, innermost first), with each one's size and count in the
second snapshot; then the same grouped by the innermost line alone, which adds up the
sites that one line serves. Growth that is a memo still filling shows here as the
memo's own lines (gateway/_lru.py, a memo's ``put``); growth without a cap as a line
whose count keeps rising between further snapshots.
"""

from __future__ import annotations

import argparse
import tracemalloc

MIB = 2**20


def _load(path: str) -> tracemalloc.Snapshot:
    return tracemalloc.Snapshot.load(path).filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)]
    )


def _print_growth(
    first: tracemalloc.Snapshot, last: tracemalloc.Snapshot, *, key: str, top: int, frames: int
) -> None:
    stats = last.compare_to(first, key)
    growers = sorted(stats, key=lambda stat: stat.size_diff, reverse=True)[:top]
    shrinkers = sorted(stats, key=lambda stat: stat.size_diff)[:5]
    total = sum(stat.size_diff for stat in stats)
    print(f"grouped by {key}: net {total / MIB:+.2f} MiB; {top} largest rises:")
    for stat in growers:
        print(
            f"  {stat.size_diff / MIB:+7.2f} MiB {stat.count_diff:+8d} blocks"
            f"  (now {stat.size / MIB:6.2f} MiB in {stat.count} blocks)"
        )
        for line in stat.traceback.format(limit=frames, most_recent_first=True):
            print(f"      {line.strip()}")
    print("  largest falls:")
    for stat in shrinkers:
        where = stat.traceback.format(limit=1)[0].strip()
        print(f"  {stat.size_diff / MIB:+7.2f} MiB {stat.count_diff:+8d} blocks  {where}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", help="the earlier snapshot (.trace)")
    parser.add_argument("last", help="the later snapshot (.trace)")
    parser.add_argument("--top", type=int, default=25, help="sites to show (25)")
    parser.add_argument("--frames", type=int, default=8, help="frames shown per site (8)")
    args = parser.parse_args()
    first, last = _load(args.first), _load(args.last)
    for name, snapshot in (("first", first), ("last", last)):
        traced = sum(trace.size for trace in snapshot.traces)
        print(f"{name}: {traced / MIB:.2f} MiB traced in {len(snapshot.traces)} blocks")
    _print_growth(first, last, key="traceback", top=args.top, frames=args.frames)
    _print_growth(first, last, key="lineno", top=args.top, frames=1)


if __name__ == "__main__":
    main()
