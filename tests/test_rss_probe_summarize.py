"""The rss_probe's log lines split into their parts (bench/rss_probe/summarize.py), for
each allocator the probe reports: CPython's arenas with glibc, every object from glibc
(``PYTHONMALLOC=malloc``), jemalloc (``LD_PRELOAD``), and logs written before malloc's
figures were logged."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench" / "rss_probe"))

from summarize import rows_of

PROBE = "rss {rss} anon {anon} | arenas {arenas} live {live} free 0.5 unused 0.2 blocks 9"

CASES = [
    pytest.param(
        PROBE.format(rss=250, anon=200, arenas=80, live=70)
        + " | malloc in use 60.0 free 30.0 mmapped 5.0 | pymalloc",
        (200 - 80, 70 + 60 + 5),
        id="pymalloc arenas with glibc: all live adds the arenas' live bytes, glibc's and mmapped",
    ),
    pytest.param(
        PROBE.format(rss=250, anon=200, arenas=0, live=0)
        + " | malloc in use 140.0 free 40.0 mmapped 5.0 | malloc",
        (200, 145),
        id="PYTHONMALLOC=malloc: no arenas, so the C heap is all of RssAnon",
    ),
    pytest.param(
        PROBE.format(rss=250, anon=200, arenas=0, live=0)
        + " | malloc in use 150.0 resident 180.0 | malloc",
        (200, 150),
        id="jemalloc: its allocated bytes are all that is live",
    ),
]


@pytest.mark.parametrize(("tail", "expected"), CASES)
def test_a_line_splits_into_c_heap_all_live_and_held_free(
    tmp_path: Path, tail: str, expected: tuple[float, float]
) -> None:
    log = tmp_path / "1.log"
    log.write_text(f"# serve\n     30 {tail}\n     60 census 60 written\n")
    [row] = rows_of(str(log))
    c_heap, all_live = expected
    assert row[0] == 30
    assert math.isclose(row[6], c_heap)
    assert math.isclose(row[7], all_live)
    assert math.isclose(row[8], 200 - all_live)  # held free: RssAnon minus all live


def test_an_older_line_without_malloc_figures_keeps_the_arena_split(tmp_path: Path) -> None:
    log = tmp_path / "1.log"
    log.write_text("     30 " + PROBE.format(rss=250, anon=200, arenas=80, live=70) + "\n")
    [row] = rows_of(str(log))
    assert len(row) == 7
    assert math.isclose(row[5], 10)  # the arenas' slack
    assert math.isclose(row[6], 120)  # C heap


def test_the_figures_after_the_bars_give_slopes_per_minute_largest_rise_first(
    tmp_path: Path,
) -> None:
    from summarize import extras_of, extras_slopes

    log = tmp_path / "1.log"
    lines = []
    for n, t in enumerate((120, 180, 240, 300)):
        line = PROBE.format(rss=250, anon=200, arenas=80, live=70)
        # SQLite's heap rises 0.5 MiB a minute, a memo fills by 10 entries a minute, the
        # threads stay put, and a memo made at 180 s appears then.
        figures = f"sqlite_mib={2 + 0.5 * n} memo:gateway.wire:579:n={10 * n} threads=9"
        if t >= 180:
            figures += " memo:gateway.runtime.cycle:537:n=4"
        lines.append(f"{t:7d} {line} | malloc in use 60.0 free 30.0 mmapped 5.0 || {figures}")
    log.write_text("\n".join(["# serve", *lines, "    330 census 330 written"]) + "\n")
    samples = extras_of(str(log))
    assert [t for t, _ in samples] == [120, 180, 240, 300]
    assert samples[0][1] == {"sqlite_mib": 2.0, "memo:gateway.wire:579:n": 0.0, "threads": 9.0}
    ordered = extras_slopes(samples, 120, 300)
    assert ordered[0][0] == "memo:gateway.wire:579:n"  # the largest rise first
    rows = {name: rest for name, *rest in ordered}
    per_minute, mean, last = rows["sqlite_mib"]
    assert math.isclose(per_minute, 0.5) and math.isclose(mean, 2.75) and last == 3.5
    assert math.isclose(rows["threads"][0], 0.0, abs_tol=1e-12)
    assert rows["memo:gateway.runtime.cycle:537:n"][1:] == [4.0, 4.0]
    assert "sqlite_mib" not in {name for name, *_ in extras_slopes(samples, 200, 300)}


def test_a_log_without_the_bars_has_no_extra_figures(tmp_path: Path) -> None:
    from summarize import extras_of

    log = tmp_path / "1.log"
    log.write_text("     30 " + PROBE.format(rss=250, anon=200, arenas=80, live=70) + "\n")
    assert extras_of(str(log)) == []
