"""The soak's RSS slope and its standard error (bench/bench_soak.py)."""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_soak import slope, slope_standard_error

MINUTES = [i / 6 for i in range(61)]  # a ten-minute soak sampled every 10 s


def ar1_series(rng: random.Random, phi: float, true_slope: float) -> list[float]:
    noise, ys = 0.0, []
    for x in MINUTES:
        noise = phi * noise + rng.gauss(0, 5)
        ys.append(200 + true_slope * x + noise)
    return ys


def test_an_exact_line_has_its_slope_and_no_error() -> None:
    ys = [120 + 0.75 * x for x in MINUTES]
    assert math.isclose(slope(MINUTES, ys), 0.75)
    assert slope_standard_error(MINUTES, ys) < 1e-12


def test_too_few_points_have_no_error() -> None:
    assert math.isnan(slope_standard_error([0.0, 1.0], [1.0, 2.0]))
    assert math.isnan(slope_standard_error([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))


def test_independent_noise_gets_the_textbook_error() -> None:
    rng = random.Random(11)
    ys = [200 + 0.5 * x + rng.gauss(0, 5) for x in MINUTES]
    b = slope(MINUTES, ys)
    mx = sum(MINUTES) / len(MINUTES)
    my = sum(ys) / len(ys)
    residuals = [y - my - b * (x - mx) for x, y in zip(MINUTES, ys, strict=True)]
    textbook = math.sqrt(
        sum(r * r for r in residuals) / (len(ys) - 2) / sum((x - mx) ** 2 for x in MINUTES)
    )
    # Independent residuals have a lag-1 autocorrelation near 0: at most a little wider.
    assert textbook * (1 - 1e-9) <= slope_standard_error(MINUTES, ys) <= 1.5 * textbook


def test_the_interval_holds_the_true_slope_under_autocorrelated_noise() -> None:
    """Coverage of slope +- 1.96 standard errors over seeded series like the soak's: the
    textbook error (independent samples) would hold it under half the time at 0.8."""
    for phi, least in ((0.0, 0.93), (0.5, 0.88), (0.8, 0.8)):
        rng = random.Random(2027)
        held = 0
        for _ in range(300):
            ys = ar1_series(rng, phi, 0.5)
            held += abs(slope(MINUTES, ys) - 0.5) < 1.96 * slope_standard_error(MINUTES, ys)
        assert held / 300 >= least, (phi, held)


def test_a_real_rise_is_told_from_the_noise() -> None:
    rng = random.Random(5)
    ys = ar1_series(rng, 0.7, 3.0)  # 3 MiB/min under the soak's kind of noise
    assert slope(MINUTES, ys) - 1.96 * slope_standard_error(MINUTES, ys) > 1.0
