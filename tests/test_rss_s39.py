"""Session 39: what the soak's RSS rise is made of (docs/benchmarks.md, "Session 39").

* bench/bench_soak.py gives each server's mean RSS per third of the measured window, so
  a run says *when* RSS rose (the memos' first minutes, or all along), not only a slope.
* A served host makes a young collection every few seconds (gateway._gc.Sweeper): the
  reference cycles grpc.aio leaves per RPC no longer wait for 50,000 allocations (68 s
  and a 154 ms stall under the soak).
"""

from __future__ import annotations

import asyncio
import gc
import math
import sys
import weakref
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_soak import HOST_A, HOST_B, rss_mean_by_third
from gateway import _gc


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


class _Rpc:
    """Stands for the garbage grpc.aio leaves per RPC: a reference cycle, which reference
    counting never frees."""

    def __init__(self) -> None:
        self.itself = self


def test_a_sweeper_frees_cyclic_garbage_on_time_not_on_allocations() -> None:
    previous = _gc.tune()  # collects, then waits for GEN0_THRESHOLD allocations
    try:
        first = _Rpc()
        gone = weakref.ref(first)
        del first
        sweeper = _gc.Sweeper(interval=0.001, rounds=1)
        asyncio.run(asyncio.wait_for(sweeper.run(), timeout=30))
        assert sweeper.sweeps == 1
        assert gone() is None  # freed, although far fewer allocations than the threshold
    finally:
        gc.unfreeze()
        gc.set_threshold(*previous)


def test_a_stopped_sweeper_sweeps_no_more() -> None:
    async def scenario() -> _gc.Sweeper:
        sweeper = _gc.Sweeper(interval=3600)
        task = sweeper.start()
        await asyncio.sleep(0)
        await _gc.Sweeper.stop(task)
        assert task.done()
        return sweeper

    assert asyncio.run(scenario()).sweeps == 0
