"""bench/bench_scale.py's P2 gives each side's event-loop CPU over the floor's same side
in the same run: the floor's rounds alternate with ours, so load on the shared machine
(which moves a side's milliseconds by 15-25 % from run to run) moves both terms, and
paired before/after readings of a change compare these rather than the milliseconds.
"""

from __future__ import annotations

import pytest

from bench.bench_scale import p2_cpu_figures


def test_each_sides_loop_cpu_is_read_over_the_floors_same_side() -> None:
    cpu = {"source": 2.0, "destination": 3.0, "floor_source": 1.0, "floor_destination": 1.5}
    loop = {"source": 1.2, "destination": 2.4, "floor_source": 0.5, "floor_destination": 0.6}
    figures = p2_cpu_figures(cpu, loop, 400)
    assert figures["source_loop_over_floor"] == pytest.approx(1.2 / 0.5)
    assert figures["destination_loop_over_floor"] == pytest.approx(2.4 / 0.6)


def test_the_per_migration_figures_are_as_before() -> None:
    # The keys earlier runs' JSON holds keep their meaning: ms per migration, and both
    # sides' whole CPU over the floor's.
    cpu = {"source": 2.0, "destination": 3.0, "floor_source": 1.0, "floor_destination": 1.5}
    loop = {"source": 1.2, "destination": 2.4, "floor_source": 0.5, "floor_destination": 0.6}
    figures = p2_cpu_figures(cpu, loop, 400)
    assert figures["source_cpu_ms"] == pytest.approx(5.0)
    assert figures["floor_destination_cpu_ms"] == pytest.approx(3.75)
    assert figures["destination_loop_cpu_ms"] == pytest.approx(6.0)
    assert figures["floor_source_loop_cpu_ms"] == pytest.approx(1.25)
    assert figures["cpu_ratio"] == pytest.approx(5.0 / 2.5)
