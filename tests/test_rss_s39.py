"""Session 39: what the soak's RSS rise is made of (docs/benchmarks.md, "Session 39").

* bench/bench_soak.py gives each server's mean RSS per third of the measured window, so
  a run says *when* RSS rose (the memos' first minutes, or all along), not only a slope.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_soak import HOST_A, HOST_B, rss_mean_by_third


def samples(values_a: list[float], values_b: list[float], every: float) -> list[dict[str, object]]:
    return [
        {"t": i * every, "rss_mib": {HOST_A: a, HOST_B: b}}
        for i, (a, b) in enumerate(zip(values_a, values_b, strict=True))
    ]


def test_rss_means_by_third_are_each_thirds_own_samples() -> None:
    # 61 samples over 600 s: t = 0..190 in the first third, 200..390 in the second,
    # 400..600 in the last (the sample at the window's end counts in the last).
    a = [100.0] * 20 + [110.0] * 20 + [111.0] * 21
    b = [float(i) for i in range(61)]
    means = rss_mean_by_third(samples(a, b, 10.0), 600.0)
    assert means[HOST_A] == [100.0, 110.0, 111.0]
    assert means[HOST_B] == [9.5, 29.5, 50.0]


def test_a_third_without_samples_has_no_mean() -> None:
    means = rss_mean_by_third(samples([1.0, 2.0], [3.0, 4.0], 500.0), 600.0)
    assert means[HOST_A][0] == 1.0 and math.isnan(means[HOST_A][1])
    assert means[HOST_A][2] == 2.0
