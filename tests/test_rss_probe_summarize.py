"""The rss_probe's log lines split into their parts (bench/rss_probe/summarize.py), for
each allocator the probe reports: CPython's arenas with glibc, every object from glibc
(``PYTHONMALLOC=malloc``), jemalloc (``LD_PRELOAD``), and logs written before malloc's
figures were logged."""

from __future__ import annotations

import contextlib
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


def test_the_probe_reads_sqlites_heap_and_the_memos_of_this_process(tmp_path: Path) -> None:
    import sqlite3

    from memstats import extras, format_extras, sqlite_memory

    from gateway._lru import BoundedLru

    memo: BoundedLru[int, bytes] = BoundedLru(4, max_weight=1 << 20, weigh=len)
    memo.put(1, bytes(1 << 19))
    assert memo.get(1) is not None and memo.get(2) is None
    before = sqlite_memory()
    assert before is not None  # ctypes reaches the libsqlite3 that _sqlite3 links
    with contextlib.closing(sqlite3.connect(tmp_path / "probe.db")) as connection:
        connection.execute("CREATE TABLE t (v BLOB)")
        connection.executemany("INSERT INTO t VALUES (?)", [(bytes(1000),)] * 1000)
        connection.commit()
        assert len(connection.execute("SELECT v FROM t").fetchall()) == 1000
        used, highwater, pages, allocations, largest = sqlite_memory() or (0, 0, 0, 0, 0)
        # The same library instance as _sqlite3: its heap holds this connection's pages.
        assert used > before[0] and highwater >= used and 0 < pages < used
        assert allocations > 0 and largest > 0
        # Per connection: tests/test_rss_probe_connections.py.
        found = extras()
    assert found["sqlite_mib"] > 0.5
    (made_at,) = {
        name.split(":")[1] + ":" + name.split(":")[2] for name in found if __name__ in name
    }
    assert found[f"memo:{made_at}:n"] == 1 and found[f"memo:{made_at}:mib"] == 0.5
    assert found[f"memo:{made_at}:hit%"] == 50
    assert " " not in "".join(found) and "memo:" in format_extras(found)
