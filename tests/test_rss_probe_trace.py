"""The rss_probe's tracemalloc comparison (bench/rss_probe/summarize_trace.py) names what
grew between two snapshots, and a log with the probe's delayed-tracing line still splits
into rows (bench/rss_probe/summarize.py)."""

from __future__ import annotations

import sys
import tracemalloc
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench" / "rss_probe"))

import summarize_trace
from summarize import rows_of

PROBE = (
    "rss 250 anon 200 | arenas 80 live 70 free 0.5 unused 0.2 blocks 9"
    " | malloc in use 60.0 free 30.0 mmapped 5.0 | pymalloc"
)


def _grow(kept: list[bytes]) -> None:
    kept.extend(bytes(4096) for _ in range(256))  # 1 MiB from this line


def test_the_growth_between_two_snapshots_is_named_by_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    kept: list[bytes] = []
    tracemalloc.start(4)
    try:
        tracemalloc.take_snapshot().dump(str(tmp_path / "first.trace"))
        _grow(kept)
        tracemalloc.take_snapshot().dump(str(tmp_path / "last.trace"))
    finally:
        tracemalloc.stop()
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "summarize_trace",
            str(tmp_path / "first.trace"),
            str(tmp_path / "last.trace"),
            "--top",
            "1",
        ],
    )
    summarize_trace.main()
    printed = capsys.readouterr().out
    by_traceback = printed.split("grouped by traceback")[1].split("largest falls")[0]
    assert "_grow" in by_traceback or "kept.extend" in by_traceback
    assert "+1.0" in by_traceback  # MiB
    assert len(kept) == 256


def test_the_line_that_says_tracing_started_is_not_a_sample(tmp_path: Path) -> None:
    log = tmp_path / "1.log"
    log.write_text(
        f"# serve\n     30 {PROBE}\n    150 tracing from now, 8 frames\n    180 {PROBE}\n"
    )
    assert [row[0] for row in rows_of(str(log))] == [30, 180]
