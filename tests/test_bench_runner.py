"""bench/run.py (``python -m bench``) with fake figure scripts: what it passes them, how it
merges and aggregates their JSON, the table, and its exit status. The real benchmarks are
not run here (they take minutes and measure the machine); each fake writes fixed figures,
one document per call in turn, and records the arguments it was given."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import run as runner  # noqa: E402

NAN = float("nan")
FAKE = """\
import json, sys
nan = float("nan")
from pathlib import Path
argv = sys.argv[1:]
calls = Path(__file__).with_suffix(".calls")
with calls.open("a") as handle:
    handle.write(json.dumps(argv) + "\\n")
n = len(calls.read_text().splitlines())
documents = {documents!r}
document = documents[(n - 1) % len(documents)]
if isinstance(document, int):
    print("fake: boom", file=sys.stderr)
    raise SystemExit(document)
if document == "sleep":
    import time
    time.sleep(60)
out = Path(argv[argv.index("--json") + 1])
out.write_text(json.dumps(document))
"""

SCALE = [
    {
        "quick": True,
        "P1": {"ratio": ratio, "p50_ms": 14.0 * ratio, "floor_p50_ms": 14.0},
        "P1b": {"ratio": 1.1, "p50_full_ms": 22.0, "p50_empty_ms": 20.0},
        "P2": {"ratio": 0.6, "per_second": 60.0, "floor_per_second": 100.0},
        "P5": {"ratio": 0.2, "cycles_per_second": 1000.0, "bare_per_second": 5000.0},
    }
    for ratio in (1.4, 3.0, 1.8)
]
STREAM = [{"P3": {"ratio": 0.9, "rss_rise_mib": rise}} for rise in (30.0, 70.0, 40.0)]
LINEAGE = [{"P4": {"ratio": 1.5, "ratio_min": 1.1, "ratio_max": 1.7, "verify_s": 0.1}}]
SOAK = [
    {
        "soak": {
            "throughput_drift": 0.9,
            "p99_drift": 1.3,
            "rss_slope_mib_per_min": 0.4,
            "p99_ms_by_third": [100.0, 120.0, 130.0],
        }
    }
]
COMPACTION = [{"compaction": {"generations": 1000, "peak_bytes": 5000}}]


def fakes(directory: Path, **documents: list[Any]) -> Path:
    """Fake scripts in ``directory``: ``scale=[...]`` becomes bench_scale.py, and so on;
    a script given None is left out (missing)."""
    defaults = {
        "scale": SCALE,
        "stream": STREAM,
        "lineage": LINEAGE,
        "soak": SOAK,
        "compaction": COMPACTION,
    }
    defaults.update(documents)
    for name, docs in defaults.items():
        if docs is not None:
            (directory / f"bench_{name}.py").write_text(FAKE.format(documents=docs))
    return directory


def calls(directory: Path, name: str) -> list[list[str]]:
    path = directory / f"bench_{name}.calls"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def bench(scripts: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", "--scripts", str(scripts), *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def errors(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("bench: error:")]


def test_runs_round_robin_and_merges_median_min_max(tmp_path: Path) -> None:
    scripts = fakes(tmp_path)
    out = tmp_path / "out.json"
    result = bench(scripts, "--quick", "--runs", "3", "--json", str(out))
    assert result.returncode == 0, result.stderr
    merged = json.loads(out.read_text())
    # The issue's shape: each figure with a ratio, P3 with its RSS, the soak's drifts.
    assert set(merged) >= {"P1", "P1b", "P2", "P3", "P4", "P5", "soak", "compaction"}
    assert merged["P1"]["ratio"] == 1.8
    assert (merged["P1"]["ratio_min"], merged["P1"]["ratio_max"]) == (1.4, 3.0)
    assert merged["P1"]["runs"] == 3
    assert [r["ratio"] for r in merged["P1"]["per_run"]] == [1.4, 3.0, 1.8]
    assert merged["P1"]["p50_ms"] == pytest.approx(14.0 * 1.8)
    # A script's own inner min/max widen the range; its median stays the median.
    assert (merged["P4"]["ratio"], merged["P4"]["ratio_min"], merged["P4"]["ratio_max"]) == (
        1.5,
        1.1,
        1.7,
    )
    assert merged["P3"]["rss_rise_mib"] == 40.0
    assert merged["P3"]["rss_rise_mib_max"] == 70.0
    assert merged["soak"]["p99_drift"] == 1.3
    assert merged["soak"]["runs"] == 1
    # Repeatable scripts ran 3 times, the soak and compaction once; quick sizes passed.
    assert len(calls(scripts, "scale")) == len(calls(scripts, "stream")) == 3
    assert len(calls(scripts, "soak")) == len(calls(scripts, "compaction")) == 1
    scale = calls(scripts, "scale")[0]
    assert "--quick" in scale
    assert scale[scale.index("--only") + 1 :][:4] == ["P1", "P1b", "P2", "P5"]
    assert calls(scripts, "stream")[0][:2] == ["--size-mib", "256"]
    assert merged["meta"]["quick"] is True
    assert merged["meta"]["failed"] == []
    # The table on stdout, one row per target; stdout holds nothing else.
    table = {line.split("  ")[0]: line for line in result.stdout.splitlines()}
    p1 = table["P1 small migration p50"]
    assert "1.80x [1.40-3.00]" in p1
    assert p1.rstrip().endswith("must")  # 1.8 <= 2.0, not <= 1.5
    assert table["P1b into a host holding residents"].rstrip().endswith("must")
    assert table["P2 small objects, 8 in flight"].rstrip().endswith("must")
    # P3's ratio meets the aim, but one run's RSS rise was over 64 MiB.
    assert table["P3 large object stream"].rstrip().endswith("no")
    assert table["P5 committed cycles x 3 rules"].rstrip().endswith("no")
    assert table["soak p99, last/first third"].rstrip().endswith("no")
    assert "100 -> 130 ms" in table["soak p99, last/first third"]
    assert table["soak throughput, last/first third"].rstrip().endswith("must")
    assert "bench: [" in result.stderr  # progress on stderr
    assert "bench_scale.py P1 P1b P2 P5 (run 3/3): done in" in result.stderr


def test_full_mode_passes_no_quick_sizes(tmp_path: Path) -> None:
    scripts = fakes(tmp_path)
    result = bench(scripts, "--only", "P1", "P3", "soak", "-o", "json")
    assert result.returncode == 0, result.stderr
    merged = json.loads(result.stdout)  # stdout is exactly one JSON document
    assert {"P1", "P3", "soak"} <= set(merged)
    assert "P4" not in merged
    assert "P1b" not in merged
    assert calls(scripts, "scale")[0][:3] == ["--only", "P1", "--json"]
    assert calls(scripts, "stream")[0][:2] == ["--size-mib", "1024"]
    assert "--quick" not in calls(scripts, "soak")[0]
    assert calls(scripts, "lineage") == []
    assert calls(scripts, "compaction") == []


def test_failed_script_is_one_line_and_exit_1_and_the_rest_still_runs(tmp_path: Path) -> None:
    scripts = fakes(tmp_path, stream=[3])
    out = tmp_path / "out.json"
    result = bench(scripts, "--quick", "--json", str(out))
    assert result.returncode == 1
    lines = errors(result)
    assert len(lines) == 1, result.stderr
    assert "bench_stream.py failed (exit 3)" in lines[0]
    assert "fake: boom" in lines[0]  # the script's own last line, and where its log is
    assert "; log: " in lines[0]
    merged = json.loads(out.read_text())
    assert "P3" not in merged
    assert merged["P4"]["ratio"] == 1.5  # scripts after the failed one ran
    assert merged["meta"]["failed"] == lines
    p3 = next(line for line in result.stdout.splitlines() if line.startswith("P3 "))
    assert p3.rstrip().endswith("not measured")


def test_missing_script_and_missing_key_are_named_without_traceback(tmp_path: Path) -> None:
    scripts = fakes(
        tmp_path,
        soak=None,
        lineage=[{"P4": {"verify_s": 0.1}}],
        stream=[{"other": {}}],
    )
    result = bench(scripts, "--quick")
    assert result.returncode == 1
    lines = errors(result)
    assert len(lines) == 3, result.stderr
    assert any('bench_stream.py wrote no "P3" figure in its JSON (keys: other)' in x for x in lines)
    assert any('bench_lineage.py: "P4" has no number "ratio"' in x for x in lines)
    assert any("bench_soak.py not found (needed for soak)" in x for x in lines)


def test_nan_becomes_null_judged_no_and_rss_per_side_is_its_larger(tmp_path: Path) -> None:
    scripts = fakes(
        tmp_path,
        soak=[{"soak": {"throughput_drift": NAN, "p99_drift": 1.0, "rss_slope_mib_per_min": 0.1}}],
        stream=[{"P3": {"ratio": 0.9, "rss_rise_mib": {"source": 20.0, "destination": 50.0}}}],
    )
    result = bench(scripts, "--quick", "--only", "P3", "soak", "-o", "json", "--check")
    assert result.returncode == 3, result.stderr  # the NaN drift missed its must
    assert "NaN" not in result.stdout
    merged = json.loads(result.stdout)
    assert merged["soak"]["throughput_drift"] is None
    assert merged["soak"]["met"] == {
        "throughput_drift": "no",
        "p99_drift": "must",
        "rss_slope_mib_per_min": "must",
        "cold_start_rss_slope_mib_per_min": "-",  # an older soak: not given, not judged
    }
    assert merged["P3"]["rss_rise_mib"] == 50.0
    assert merged["P3"]["rss_rise_mib_per_side"] == {"source": 20.0, "destination": 50.0}
    assert merged["P3"]["met"] == {"ratio": "aim"}


def test_check_exits_3_only_when_a_must_is_missed(tmp_path: Path) -> None:
    met, missed = tmp_path / "met", tmp_path / "missed"
    met.mkdir()
    missed.mkdir()
    fine = bench(fakes(met, scale=[SCALE[0]]), "--quick", "--only", "P1", "--check")
    assert fine.returncode == 0, fine.stderr  # P1 at 1.4x
    over = bench(fakes(missed, scale=[SCALE[1]]), "--quick", "--only", "P1", "--check")
    assert over.returncode == 3, over.stderr  # P1 at 3.0x
    assert "a figure missed its must" in over.stderr
    assert errors(over) == []


def test_timeout_stops_a_script_and_counts_it_failed(tmp_path: Path) -> None:
    scripts = fakes(tmp_path, lineage=["sleep"])
    result = bench(scripts, "--quick", "--only", "P4", "--timeout", "1")
    assert result.returncode == 1
    (line,) = errors(result)
    assert "bench_lineage.py timed out after" in line


def test_bad_arguments_exit_2() -> None:
    result = subprocess.run(
        [sys.executable, "bench/run.py", "--runs", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "--runs must be at least 1" in result.stderr


@pytest.mark.parametrize(
    ("figure", "key", "value", "extra", "expected"),
    [
        ("P1", "ratio", 1.5, {}, "aim"),
        ("P1", "ratio", 1.9, {}, "must"),
        ("P1", "ratio", 2.1, {}, "no"),
        ("P2", "ratio", 0.8, {}, "aim"),
        ("P2", "ratio", 0.49, {}, "no"),
        ("P3", "ratio", 0.9, {"rss_rise_mib": 20.0}, "aim"),
        ("P3", "ratio", 0.9, {"rss_rise_mib": 20.0, "rss_rise_mib_max": 65.0}, "no"),
        ("P3", "ratio", 0.9, {}, "no"),  # no RSS figure: the limit is not shown to hold
        ("P4", "ratio", 1.2, {}, "aim"),
        ("P5", "ratio", 0.3, {}, "must"),
        ("soak", "throughput_drift", 1.5, {}, "must"),  # throughput rose: no failure
        ("soak", "throughput_drift", 0.8, {}, "no"),  # fell by 1.25x
        ("soak", "p99_drift", 1.2, {}, "must"),
        ("soak", "rss_slope_mib_per_min", 1.0, {}, "no"),  # "under 1 MiB/min"
        ("soak", "rss_slope_mib_per_min", 0.5, {}, "must"),
        ("soak", "cold_start_rss_slope_mib_per_min", 1.0, {}, "no"),  # strictly, too
        ("soak", "cold_start_rss_slope_mib_per_min", 5.1, {}, "no"),
        ("soak", "cold_start_rss_slope_mib_per_min", 0.9, {}, "must"),
        ("P1", "ratio", "n/a", {}, "-"),
    ],
)
def test_verdict_against_the_issue_targets(
    figure: str, key: str, value: Any, extra: dict[str, float], expected: str
) -> None:
    target = next(t for t in runner.TARGETS if t.figure == figure and t.key == key)
    assert runner.verdict(target, {key: value, **extra}) == expected


def test_both_rss_slope_rows_read_in_mib_per_minute() -> None:
    """The slope after the warm-up and the one from a cold start are MiB/min, not ratios."""
    table = runner.rows(
        {
            "soak": {
                "throughput_drift": 0.95,
                "p99_drift": 1.02,
                "rss_slope_mib_per_min": 1.68,
                "cold_start_rss_slope_mib_per_min": 3.3,
            }
        }
    )
    by_label = {row[0]: row for row in table[1:]}
    after = by_label["soak RSS slope after warm-up (larger server)"]
    cold = by_label["soak RSS slope from a cold start"]
    assert after[3] == "1.68 [1.68-1.68]" and cold[3] == "3.30 [3.30-3.30]", (after, cold)
    assert after[4] == cold[4] == "< 1 MiB/min"
    assert after[6] == cold[6] == "no"


def test_the_rss_slope_row_shows_its_interval() -> None:
    """The soak's ten-minute slope is noisy (bench_soak.slope_standard_error): the row
    shows the 95 % half-width beside it, and the verdict still reads the slope alone."""
    soak = {"throughput_drift": 0.95, "p99_drift": 1.02, "rss_slope_mib_per_min": 0.8}
    plain = {row[0]: row for row in runner.rows({"soak": soak})[1:]}
    shown = {
        row[0]: row
        for row in runner.rows({"soak": {**soak, "rss_slope_ci95_mib_per_min": 0.66}})[1:]
    }
    label = "soak RSS slope after warm-up (larger server)"
    assert plain[label][2] == "-"
    assert shown[label][2] == "+- 0.66 MiB/min (95 %)"
    assert shown[label][6] == plain[label][6] == "must"


def test_the_soak_cpu_per_migration_drift_is_shown_and_not_judged() -> None:
    """bench_soak reports CPU per migration by third (session 38): the table shows the
    first and last third's totals and their drift, as a diagnostic with no must (a rise
    that the coordinator, which holds no store, shares comes from the machine)."""
    soak = {
        "throughput_drift": 0.95,
        "p99_drift": 1.02,
        "rss_slope_mib_per_min": 0.8,
        "cpu_per_migration_drift": 1.11,
        "cpu_ms_per_migration_by_third": {"total": [15.6, 16.4, 17.3], "coordinator": [1, 1, 1]},
    }
    by_label = {row[0]: row for row in runner.rows({"soak": soak})[1:]}
    row = by_label["soak CPU per migration, last/first third (diagnostic)"]
    assert row[2] == "15.6 -> 17.3 ms", row
    assert row[3] == "1.11x [1.11-1.11]", row
    assert row[4] == row[5] == row[6] == "-", row
    target = next(t for t in runner.TARGETS if t.key == "cpu_per_migration_drift")
    assert runner.verdict(target, soak) == "-"
    # A soak from before session 38 has no such key: no row, and nothing breaks.
    older = {k: v for k, v in soak.items() if not k.startswith("cpu")}
    labels = [row[0] for row in runner.rows({"soak": older})[1:]]
    assert "soak CPU per migration, last/first third (diagnostic)" in labels
    assert {row[0]: row for row in runner.rows({"soak": older})[1:]}[
        "soak CPU per migration, last/first third (diagnostic)"
    ][3] == "-"
