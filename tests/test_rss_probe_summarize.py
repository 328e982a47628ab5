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
