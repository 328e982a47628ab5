"""Session 38: does a migration cost more in a bigger store? The soak's CPU per migration
by third (bench/bench_soak.py), the figure that tells work growing with history from a
machine that got busier."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_soak import COORDINATOR, cpu_ms_per_migration_by_third, cpu_seconds

A, B = "spiffe://org-a.example/cluster/east/gateway", "spiffe://org-b.example/cluster/west/gateway"


def samples(cpu_per_migration: list[float], rates: list[float]) -> list[dict[str, Any]]:
    """Samples every 10 s of a 90 s window: in third k, ``rates[k]`` migrations/s, each
    costing ``cpu_per_migration[k]`` CPU seconds, split 2:2:1 between A, B and the
    coordinator."""
    rows, made, used = [], 0.0, 0.0
    for step in range(10):
        t = step * 10.0
        if step:
            k = min(2, int(t // 30))
            made += rates[k] * 10
            used += rates[k] * 10 * cpu_per_migration[k]
        rows.append(
            {
                "t": t,
                "migrations": round(made),
                "cpu_s": {A: used * 0.4, B: used * 0.4, COORDINATOR: used * 0.2},
            }
        )
    return rows


def test_work_per_migration_is_told_apart_from_throughput() -> None:
    # Throughput falls by half (a busier machine) while each migration costs the same.
    cpu = cpu_ms_per_migration_by_third(samples([0.02, 0.02, 0.02], [90, 60, 45]), 90.0)
    assert [round(v, 6) for v in cpu["total"]] == [20.0, 20.0, 20.0]
    assert [round(v, 6) for v in cpu[A]] == [8.0, 8.0, 8.0]
    assert [round(v, 6) for v in cpu[COORDINATOR]] == [4.0, 4.0, 4.0]


def test_work_that_grows_shows_in_the_last_third() -> None:
    cpu = cpu_ms_per_migration_by_third(samples([0.02, 0.025, 0.03], [90, 90, 90]), 90.0)
    assert math.isclose(cpu["total"][2] / cpu["total"][0], 1.5)


def test_a_third_without_migrations_has_no_figure() -> None:
    cpu = cpu_ms_per_migration_by_third(samples([0.02, 0.02, 0.02], [90, 0, 90]), 90.0)
    assert math.isnan(cpu["total"][1]) and not math.isnan(cpu["total"][2])


def test_cpu_seconds_reads_this_process_and_not_a_missing_one() -> None:
    assert cpu_seconds(os.getpid()) > 0
    assert math.isnan(cpu_seconds(2**31 - 1))
