"""Issue 13's figures in one command: each figure script beside its floor, one table.

    python -m bench --quick                  # every figure at small sizes, under 5 minutes
    python -m bench                          # the issue's sizes (1 GiB, 10k residents, ...)
    python -m bench --quick --runs 3 --json out.json
    python -m bench --only P1 P4 -o json     # a few figures, the merged JSON on stdout
    python bench/run.py --quick              # the same, without -m

What holds:

* Each figure script (bench_scale.py, bench_stream.py, bench_lineage.py, bench_soak.py,
  bench_compaction.py) runs as its own subprocess, one at a time: on a shared 2-core
  machine two benchmarks at once would measure each other. Each writes its figures with
  ``--json FILE``; the runner only merges, aggregates and compares them with the issue's
  targets, it measures nothing itself.
* ``--runs N`` repeats the repeatable scripts N times, round-robin (scale, stream,
  lineage, scale, stream, lineage, ...), so that load on the machine hits every figure
  alike. The soak and the compaction figure run once: each is already a long run whose
  figure is a drift or a size within it. A figure's ``ratio`` is the median of the runs'
  ratios; ``ratio_min``/``ratio_max`` span the runs and, where a script reports its own
  ``ratio_min``/``ratio_max`` (medians over its own inner runs), those too. Every other
  number is the median over the runs; each run's own figures stay under ``per_run``.
* Standard output holds only the result: the table, or with ``-o json`` exactly one JSON
  document (the same one ``--json FILE`` writes). Progress lines (each script as it
  starts and ends, with elapsed times) go to standard error; a script's own output goes
  to a log file (or to standard error with ``--verbose``).
* A script that fails, is missing, times out or writes no figure (or a figure without
  ``ratio``) does not stop the others: the table and JSON hold what was measured, and at
  the end one line per failed script goes to standard error and the exit status is 1.

Exit status: 0 every script ran; 1 a script failed (one line each on stderr, naming the
script and its log); 2 a bad argument; 3 with ``--check``, every script ran but a figure
missed its "must"; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PROGRAM = "bench"

#: Figures the runner knows, in table order. ``compaction`` has no ratio (it shows an
#: object's carried size staying flat over many generations) and is listed, not judged.
#: ``curves`` (bench_curves.py: the series and PNGs for bench/README.md) runs only when
#: named: it redraws committed files.
FIGURES = ("P1", "P1b", "P2", "P3", "P4", "P5", "soak", "compaction", "curves")
DEFAULT_FIGURES = FIGURES[:-1]

#: Issue 13's limit on a side's RSS rise while a large object streams (P3).
P3_RSS_LIMIT_MIB = 64.0
#: Issue 13 point 7: throughput and p99 held within 1.2x from the first to the last third,
#: RSS slope under 1 MiB/min per server.
SOAK_DRIFT_LIMIT = 1.2
SOAK_RSS_SLOPE_LIMIT = 1.0

#: Issue 13 point 8: ``--quick`` runs every figure in under 5 minutes.
QUICK_BUDGET_SECONDS = 300

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_MISSED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


# --- the scripts ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Script:
    """One figure script: the figures (top-level JSON keys) it writes, and its arguments."""

    file: str
    figures: tuple[str, ...]
    #: Arguments before ``--json FILE``, given the figures wanted and quick or full mode.
    arguments: Callable[[Sequence[str], bool], list[str]]
    #: Repeated by ``--runs``; long single-run figures (soak, compaction) are not.
    repeat: bool = True


def _scale_arguments(figures: Sequence[str], quick: bool) -> list[str]:
    # The script's own quick sizes (30 samples for P1, 100 pairs and 2,000 residents for
    # P1b, 200 moves, 1,000 cycling objects for 5 s) take a minute or two on the shared
    # 2-core VM.
    return [*(["--quick"] if quick else []), "--only", *figures]


def _stream_arguments(figures: Sequence[str], quick: bool) -> list[str]:
    # 1 GiB is the size. Quick: 256 MiB, the size of bench/README's earlier quick
    # figures (so before/after compare), one run: about 40 s here (64 MiB took 15 s, but
    # its raw stream lasts 0.3 s, too short to time against).
    return ["--size-mib", "256", "--runs", "1"] if quick else ["--size-mib", "1024"]


def _quick_flag(figures: Sequence[str], quick: bool) -> list[str]:
    return ["--quick"] if quick else []


SCRIPTS = (
    Script("bench_scale.py", ("P1", "P1b", "P2", "P5"), _scale_arguments),
    Script("bench_stream.py", ("P3",), _stream_arguments),
    Script("bench_lineage.py", ("P4",), _quick_flag),
    Script("bench_soak.py", ("soak",), _quick_flag, repeat=False),
    Script("bench_compaction.py", ("compaction",), _quick_flag, repeat=False),
    Script("bench_curves.py", ("curves",), _quick_flag, repeat=False),
)


# --- targets and the table -----------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A row of issue 13's table: what the floor is, and what the ratio must and should be."""

    figure: str
    label: str
    floor: str
    lower_is_better: bool
    #: None for a diagnostic row: shown, never judged.
    must: float | None
    aim: float | None
    #: (key, unit, scale) candidates for the absolute figure and for the floor's, first
    #: present wins: the scripts name them differently and some may rename them.
    ours: tuple[tuple[str, str, float], ...] = ()
    floor_value: tuple[tuple[str, str, float], ...] = ()
    #: The key holding the ratio; ``ratio`` except for the soak's four rows.
    key: str = "ratio"
    #: The soak's drifts: (key of the per-third list, unit), shown as first -> last third;
    #: a key of a dict of such lists names the list under ``"total"``.
    thirds: tuple[str, str] | None = None


TARGETS = (
    Target(
        "P1",
        "P1 small migration p50",
        "2 mTLS round trips + signs/verifies + commits",
        True,
        2.0,
        1.5,
        (("p50_ms", "ms", 1.0),),
        (("floor_p50_ms", "ms", 1.0),),
    ),
    Target(
        "P1b",
        "P1b into a host holding residents",
        "a twin host, empty, in pairs",
        True,
        1.2,
        1.05,
        (("p50_full_ms", "ms", 1.0),),
        (("p50_empty_ms", "ms", 1.0),),
    ),
    Target(
        "P2",
        "P2 small objects, 8 in flight",
        "P1 floor, 8 in flight",
        False,
        0.5,
        0.8,
        (("per_second", "/s", 1.0),),
        (("floor_per_second", "/s", 1.0),),
    ),
    Target(
        "P3",
        "P3 large object stream",
        "raw gRPC stream, same chunks",
        False,
        0.5,
        0.8,
        (("mib_per_s", "MiB/s", 1.0), ("mib_s", "MiB/s", 1.0), ("seconds", "s", 1.0)),
        (("raw_mib_per_s", "MiB/s", 1.0), ("raw_mib_s", "MiB/s", 1.0), ("raw_seconds", "s", 1.0)),
    ),
    Target(
        "P4",
        "P4 verify a lineage",
        "SHA-256 per entry + checkpoint verifies",
        True,
        2.0,
        1.2,
        (("verify_ms", "ms", 1.0), ("verify_s", "ms", 1e3)),
        (("floor_ms", "ms", 1.0), ("floor_s", "ms", 1e3)),
    ),
    Target(
        "P5",
        "P5 committed cycles x 3 rules",
        "bare CEL, same rules",
        False,
        0.3,
        0.5,
        (("cycles_per_second", "/s", 1.0),),
        (("bare_per_second", "/s", 1.0),),
    ),
    # The soak's drifts are last third over first third: p99 must not rise by more than
    # 1.2x, throughput must not fall by more than 1.2x (a rise is no failure).
    Target(
        "soak",
        "soak throughput, last/first third",
        "its own first third",
        False,
        1 / SOAK_DRIFT_LIMIT,
        None,
        key="throughput_drift",
        thirds=("throughput_by_third", "/s"),
    ),
    Target(
        "soak",
        "soak p99, last/first third",
        "its own first third",
        True,
        SOAK_DRIFT_LIMIT,
        None,
        key="p99_drift",
        thirds=("p99_ms_by_third", "ms"),
    ),
    Target(
        "soak",
        "soak RSS slope after warm-up (larger server)",
        "-",
        True,
        SOAK_RSS_SLOPE_LIMIT,
        None,
        key="rss_slope_mib_per_min",
    ),
    # The same fit over the whole run, the servers' first minutes included: their memos
    # and heaps filling show here as a slope (bench_soak.py's docstring).
    Target(
        "soak",
        "soak RSS slope from a cold start",
        "-",
        True,
        SOAK_RSS_SLOPE_LIMIT,
        None,
        key="cold_start_rss_slope_mib_per_min",
    ),
    # Diagnostic: whether each migration costs more late in the soak. Session 38 counted
    # that a migration's work does not grow with the store; a rise the coordinator (which
    # holds no store) shares is the machine's (docs/benchmarks.md).
    Target(
        "soak",
        "soak CPU per migration, last/first third (diagnostic)",
        "its own first third",
        True,
        None,
        None,
        key="cpu_per_migration_drift",
        thirds=("cpu_ms_per_migration_by_third", "ms"),
    ),
)


def verdict(target: Target, figure: dict[str, Any]) -> str:
    """ "aim", "must" (the must is met, not the aim), "no", or "-" (nothing to judge)."""
    value = figure.get(target.key)
    if target.must is None or not isinstance(value, int | float):
        return "-"

    def meets(limit: float) -> bool:
        if target.key.endswith("rss_slope_mib_per_min"):  # "under 1 MiB/min": strictly
            return value < limit
        return value <= limit if target.lower_is_better else value >= limit

    extra_ok = True
    if target.figure == "P3":
        # The RSS limit holds in every run: the worst run is judged, not the median.
        rise = figure.get("rss_rise_mib_max", figure.get("rss_rise_mib"))
        extra_ok = isinstance(rise, int | float) and rise <= P3_RSS_LIMIT_MIB
    if not (meets(target.must) and extra_ok):
        return "no"
    if target.aim is not None and meets(target.aim):
        return "aim"
    return "must"


def _value(figure: dict[str, Any], candidates: tuple[tuple[str, str, float], ...]) -> str:
    for key, unit, scale in candidates:
        value = figure.get(key)
        if isinstance(value, int | float):
            return f"{_number(value * scale)} {unit}"
    return "-"


def _number(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _limit(target: Target, limit: float | None) -> str:
    if limit is None:
        return "-"
    if target.key == "throughput_drift":
        return f">= {limit:.2f} (fall <= {SOAK_DRIFT_LIMIT}x)"
    if target.key.endswith("rss_slope_mib_per_min"):
        return f"< {limit:g} MiB/min"
    text = f"{'<=' if target.lower_is_better else '>='} {limit:g}x"
    if target.figure == "P3" and limit == target.must:
        text += f", rss <= {P3_RSS_LIMIT_MIB:g} MiB"
    return text


def rows(results: dict[str, Any]) -> list[list[str]]:
    """The table: figure, floor, ours, ratio median [min-max], must, aim, met?"""
    table = [["figure", "floor", "ours", "ratio median [min-max]", "must", "aim", "met?"]]
    meta = results.get("meta")
    wanted = meta.get("figures", ()) if isinstance(meta, dict) else ()
    for target in TARGETS:
        figure = results.get(target.figure)
        if not isinstance(figure, dict):
            if target.figure in wanted:  # asked for, but its script failed: say so
                table.append([target.label, "-", "-", "-", "-", "-", "not measured"])
            continue
        value = figure.get(target.key)
        if not isinstance(value, int | float):
            ratio = "-"
        else:
            low = figure.get(f"{target.key}_min", value)
            high = figure.get(f"{target.key}_max", value)
            unit = "" if target.key.endswith("rss_slope_mib_per_min") else "x"
            ratio = f"{_number(value)}{unit} [{_number(low)}-{_number(high)}]"
        ours = _value(figure, target.ours)
        if target.thirds is not None:
            key, unit = target.thirds
            series = figure.get(key)
            if isinstance(series, dict):
                series = series.get("total")
            if (
                isinstance(series, list)
                and len(series) >= 2
                and all(isinstance(v, int | float) for v in (series[0], series[-1]))
            ):
                ours = f"{_number(series[0])} -> {_number(series[-1])} {unit}"
        interval = figure.get("rss_slope_ci95_mib_per_min")
        if target.key == "rss_slope_mib_per_min" and isinstance(interval, int | float):
            ours = f"+- {_number(interval)} MiB/min (95 %)"
        if target.figure == "P3" and isinstance(figure.get("rss_rise_mib"), int | float):
            rise = figure.get("rss_rise_mib_max", figure["rss_rise_mib"])
            ours = f"{ours}; rss +{_number(rise)} MiB"
        floor = _value(figure, target.floor_value)
        floor = target.floor if floor == "-" else f"{floor}: {target.floor}"
        table.append(
            [
                target.label,
                floor,
                ours,
                ratio,
                _limit(target, target.must),
                _limit(target, target.aim),
                # Judged before NaN became null (a drift over an empty third is "no").
                figure.get("met", {}).get(target.key) or verdict(target, figure),
            ]
        )
    compaction = results.get("compaction")
    if isinstance(compaction, dict):
        # The few figures point 1 judges (the JSON keeps them all): a table cell, not a dump.
        wanted = {
            "generations": "generations",
            "peak_record_bytes": "peak record B",
            "peak_carried_entries": "peak carried entries",
            "archive_segments": "segments",
            "verified_entries": "verified entries",
        }
        shown = ", ".join(
            f"{label} {_number(compaction[key])}"
            for key, label in wanted.items()
            if isinstance(compaction.get(key), int | float)
            and not isinstance(compaction.get(key), bool)
        )
        table.append(["compaction (no ratio)", "-", shown or "-", "-", "-", "-", "-"])
    curves = results.get("curves")
    if isinstance(curves, dict):
        drawn = [k for k in ("latency_vs_residents", "verify_vs_entries") if k in curves]
        table.append(
            ["curves (bench/plots/*.png)", "-", ", ".join(drawn) or "-", "-", "-", "-", "-"]
        )
    return table


def render(table: list[list[str]]) -> str:
    """Plain aligned columns: never wrapped or cut, so piped output is whole."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = []
    for index, row in enumerate(table):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


# --- merging and aggregating ------------------------------------------------------------------


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One figure over its runs: numbers become their median; ``ratio_min``/``ratio_max``
    span the runs' ratios and the runs' own min/max; other values are the last run's."""
    merged: dict[str, Any] = {}
    for run in runs:
        merged.update(run)
    for key in merged:
        values = [run[key] for run in runs if key in run]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            merged[key] = statistics.median(values)
    for key in (
        "ratio",
        "throughput_drift",
        "p99_drift",
        "rss_slope_mib_per_min",
        "cold_start_rss_slope_mib_per_min",
    ):
        values = [run[key] for run in runs if isinstance(run.get(key), int | float)]
        if not values:
            continue
        lows = values + [run[f"{key}_min"] for run in runs if f"{key}_min" in run]
        highs = values + [run[f"{key}_max"] for run in runs if f"{key}_max" in run]
        merged[f"{key}_min"], merged[f"{key}_max"] = min(lows), max(highs)
    rises = [
        run["rss_rise_mib"] for run in runs if isinstance(run.get("rss_rise_mib"), int | float)
    ]
    if rises:
        merged["rss_rise_mib_max"] = max(rises)
    merged["runs"] = len(runs)
    if len(runs) > 1:
        merged["per_run"] = runs
    return merged


def check_figure(script: str, name: str, document: Any) -> str | None:
    """Why ``document`` (a script's JSON) lacks figure ``name``, or None when it has it."""
    if not isinstance(document, dict):
        return f"{script} wrote JSON that is not an object"
    figure = document.get(name)
    if not isinstance(figure, dict):
        keys = ", ".join(sorted(document)) or "none"
        return f'{script} wrote no "{name}" figure in its JSON (keys: {keys})'
    needed = {
        "soak": ("throughput_drift", "p99_drift", "rss_slope_mib_per_min"),
        "compaction": (),
        "curves": (),
        "P3": ("ratio", "rss_rise_mib"),
    }.get(name, ("ratio",))
    for key in needed:
        value = figure.get(key)
        if not isinstance(value, int | float) or isinstance(value, bool):
            return f'{script}: "{name}" has no number "{key}"'
    return None


# --- running ------------------------------------------------------------------------------------


@dataclass
class Failure:
    script: str
    reason: str
    log: Path | None = None

    def line(self) -> str:
        where = f"; log: {self.log}" if self.log is not None else ""
        return f"{PROGRAM}: error: {self.reason}{where}"


@dataclass
class Run:
    scripts_dir: Path
    quick: bool
    wanted: tuple[str, ...]
    runs: int
    timeout: float | None
    verbose: bool
    log_dir: Path
    started: float = field(default_factory=time.perf_counter)
    figures: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)

    def progress(self, text: str) -> None:
        total = time.perf_counter() - self.started
        print(f"{PROGRAM}: [{total:6.1f} s] {text}", file=sys.stderr, flush=True)

    def plan(self) -> list[tuple[int, Script, tuple[str, ...]]]:
        """(run, script, figures) in order: round-robin over the runs."""
        steps = []
        for run in range(1, self.runs + 1):
            for script in SCRIPTS:
                figures = tuple(f for f in script.figures if f in self.wanted)
                if figures and (run == 1 or script.repeat):
                    steps.append((run, script, figures))
        return steps

    def execute(self) -> None:
        steps = self.plan()
        for number, (run, script, figures) in enumerate(steps, 1):
            label = f"[{number}/{len(steps)}] {script.file} {' '.join(figures)}"
            if self.runs > 1:
                label += f" (run {run}/{self.runs})"
            self.once(label, script, figures, run)

    def once(self, label: str, script: Script, figures: tuple[str, ...], run: int) -> None:
        path = self.scripts_dir / script.file
        if not path.is_file():
            self.fail(Failure(script.file, f"{path} not found (needed for {', '.join(figures)})"))
            self.progress(f"{label}: missing")
            return
        stem = f"{path.stem}-{run}"
        output = self.log_dir / f"{stem}.json"
        log = self.log_dir / f"{stem}.log"
        command = [
            sys.executable,
            str(path),
            *script.arguments(figures, self.quick),
            "--json",
            str(output),
        ]
        shown = " ".join(["python", _shown(path), *command[2:-1], "FILE"])
        if shown not in self.commands:
            self.commands.append(shown)
        self.progress(f"{label}: started")
        began = time.perf_counter()
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), environment.get("PYTHONPATH", "")) if p
        )
        sink: TextIO
        with log.open("w") as handle:
            sink = sys.stderr if self.verbose else handle
            try:
                process = subprocess.Popen(
                    command, cwd=ROOT, stdout=sink, stderr=sink, env=environment
                )
            except OSError as exc:
                self.fail(Failure(script.file, f"{script.file} could not start: {exc}"))
                return
            try:
                status = process.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                elapsed = time.perf_counter() - began
                self.progress(f"{label}: timed out after {elapsed:.1f} s")
                self.fail(
                    Failure(
                        script.file,
                        f"{script.file} timed out after {elapsed:.0f} s (--timeout {self.timeout:g})",
                        None if self.verbose else log,
                    )
                )
                return
            except KeyboardInterrupt:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                raise
        elapsed = time.perf_counter() - began
        shown_log = None if self.verbose else log
        if status != 0:
            self.progress(f"{label}: failed (exit {status}) after {elapsed:.1f} s")
            last = _last_line(log) if not self.verbose else ""
            reason = f"{script.file} failed (exit {status}) after {elapsed:.0f} s"
            self.fail(Failure(script.file, f"{reason}: {last}" if last else reason, shown_log))
            return
        try:
            document = json.loads(output.read_text())
        except FileNotFoundError:
            document = None
            problem = f"{script.file} exited 0 but wrote no --json file"
        except (OSError, ValueError) as exc:
            document = None
            problem = f"{script.file} wrote a --json file that is not JSON: {exc}"
        self.progress(f"{label}: done in {elapsed:.1f} s")
        if document is None:
            self.fail(Failure(script.file, problem, shown_log))
            return
        for name in figures:
            figure = document.get(name) if isinstance(document, dict) else None
            if isinstance(figure, dict) and isinstance(figure.get("rss_rise_mib"), dict):
                # Given per side ({"source": .., "destination": ..}): the limit is per
                # side, so the larger one is the figure.
                sides = figure["rss_rise_mib"]
                figure["rss_rise_mib_per_side"] = sides
                numbers = [v for v in sides.values() if isinstance(v, int | float)]
                figure["rss_rise_mib"] = max(numbers) if numbers else None
            missing = check_figure(script.file, name, document)
            if missing is not None:
                self.fail(Failure(script.file, missing, shown_log))
                continue
            self.figures.setdefault(name, []).append(document[name])

    def fail(self, failure: Failure) -> None:
        self.failures.append(failure)

    def results(self) -> dict[str, Any]:
        results: dict[str, Any] = {}
        for name in FIGURES:
            if name in self.figures:
                results[name] = aggregate(self.figures[name])
        for target in TARGETS:
            figure = results.get(target.figure)
            if isinstance(figure, dict) and target.must is not None:  # diagnostics: no verdict
                figure.setdefault("met", {})[target.key] = verdict(target, figure)
        results = finite(results)
        results["meta"] = {
            "quick": self.quick,
            "runs": self.runs,
            "figures": list(self.wanted),
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - self.started, 1),
            "commit": _commit(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "commands": self.commands,
            "failed": [f.line() for f in self.failures],
        }
        return results


def finite(value: Any) -> Any:
    """NaN and infinities (a drift over an empty third) as null: the output is strict
    JSON that any tool reads, and a figure that could not be computed says so."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def _last_line(log: Path) -> str:
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [line for line in lines if line]
    return lines[-1][:300] if lines else ""


def _commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


# --- the command ----------------------------------------------------------------------------------


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Runs issue 13's figures (P1, P1b, P2, P3, P4, P5, the soak, compaction), "
        "each beside its floor, and prints their ratios against the issue's targets.",
        epilog="exit status: 0 done; 1 a script failed (one line each); 2 bad argument; "
        "3 with --check, a figure missed its must; 130 interrupted",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: the whole run in under 5 minutes"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=FIGURES,
        default=list(DEFAULT_FIGURES),
        metavar="FIGURE",
        help=f"figures to run, of {', '.join(FIGURES)} (default: all but curves, which "
        "redraws bench/plots/*.png)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=1,
        help="repeat each repeatable script N times, round-robin; ratios are median "
        "[min-max] over the runs (the soak and compaction run once) (default 1)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the merged figures here")
    parser.add_argument(
        "-o",
        "--output",
        choices=("table", "json"),
        default="table",
        help="what standard output holds: the table, or the merged JSON document (default table)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 3 when every script ran but a figure missed its must",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="stop a script that runs longer than this, and count it failed (default: none)",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show each script's own output on standard error instead of a log file",
    )
    parser.add_argument(
        "--scripts",
        type=Path,
        default=BENCH,
        metavar="DIR",
        help="directory holding the figure scripts (default: this one)",
    )
    parser.add_argument(
        "--log-dir",
        type=Path,
        metavar="DIR",
        help="keep each script's output and JSON here (default: a temporary directory, "
        "removed unless a script failed)",
    )
    arguments = parser.parse_args(argv)
    if arguments.runs < 1:
        parser.error("--runs must be at least 1")
    if arguments.timeout is not None and arguments.timeout <= 0:
        parser.error("--timeout must be positive")
    if not arguments.scripts.is_dir():
        parser.error(f"--scripts {arguments.scripts}: not a directory")
    return arguments


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    temporary = arguments.log_dir is None
    log_dir = arguments.log_dir or Path(tempfile.mkdtemp(prefix="bench-logs-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    run = Run(
        scripts_dir=arguments.scripts.resolve(),
        quick=arguments.quick,
        wanted=tuple(f for f in FIGURES if f in arguments.only),
        runs=arguments.runs,
        timeout=arguments.timeout,
        verbose=arguments.verbose,
        log_dir=log_dir,
    )
    mode = "quick" if arguments.quick else "full"
    run.progress(
        f"{mode} run of {', '.join(run.wanted)}, {arguments.runs} run(s); logs in {log_dir}"
    )
    try:
        run.execute()
    except KeyboardInterrupt:
        print(f"{PROGRAM}: interrupted; logs in {log_dir}", file=sys.stderr)
        return EXIT_INTERRUPTED
    results = run.results()
    document = json.dumps(results, indent=1, allow_nan=False) + "\n"
    if arguments.json is not None:
        try:
            arguments.json.write_text(document)
        except OSError as exc:
            run.fail(Failure("--json", f"cannot write --json {arguments.json}: {exc}"))
    if arguments.output == "json":
        sys.stdout.write(document)
    else:
        print(render(rows(results)))
    total = time.perf_counter() - run.started
    run.progress(f"finished in {total:.1f} s")
    if arguments.quick and total > QUICK_BUDGET_SECONDS:
        run.progress(
            f"warning: the quick run took {total:.0f} s, over its {QUICK_BUDGET_SECONDS} s "
            "budget: a script's quick sizes need trimming (each script's time is above)"
        )
    for failure in run.failures:
        print(failure.line(), file=sys.stderr)
    if run.failures:
        return EXIT_FAILED
    if temporary:
        shutil.rmtree(log_dir, ignore_errors=True)
    if arguments.check and any(
        met == "no"
        for figure in results.values()
        if isinstance(figure, dict)
        for met in figure.get("met", {}).values()
    ):
        print(f"{PROGRAM}: a figure missed its must (see the met? column)", file=sys.stderr)
        return EXIT_MISSED
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
