"""A served host's collector settings (gateway/_gc.py) keep cyclic garbage that outlived
one young collection for a few more young collections, not for minutes.

Such garbage is every RPC's reference cycle that was still in flight when a young
collection ran (grpc.aio's handler lookup leaves one per call): it is promoted to the
middle generation and freed only by a middle collection. With a middle threshold of 20
the soak made one middle collection in ten minutes, which freed 40,000-65,000 objects
(6-14 MiB of live Python objects) at once: a ten-minute sawtooth under the soak's
ten-minute RSS slope (docs/benchmarks.md, "Session 34: the soak's RSS slope")."""

from __future__ import annotations

import gc
import weakref
from typing import Any

from gateway import _gc

#: Young collections after the one the cycle outlived, by which it must be freed.
MOST_YOUNG_COLLECTIONS = 4


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


def test_a_cycle_that_outlived_a_young_collection_is_freed_a_few_young_ones_later() -> None:
    previous = _gc.tune()
    young: list[int] = []  # automatic collections of generation 0 since the cycle was dropped

    def count(phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info["generation"] == 0:
            young.append(1)

    freed: list[bool] = []
    gc.callbacks.append(count)
    try:
        node = _Node()
        weakref.finalize(node, freed.append, True)
        # Alive through one automatic young collection: promoted to the middle generation.
        held = [[] for _ in range(_gc.GEN0_THRESHOLD + 1000)]
        del held
        young.clear()
        del node  # now garbage, waiting in the middle generation
        for _ in range(4 * _gc.GEN1_THRESHOLD + 8):
            if freed:
                break
            # Net container allocations past the young threshold (some lists come from the
            # free list, uncounted): one automatic collection.
            held = [[] for _ in range(_gc.GEN0_THRESHOLD + 1000)]
            del held
        assert freed, "the cycle was never freed"
        assert len(young) <= MOST_YOUNG_COLLECTIONS
    finally:
        gc.callbacks.remove(count)
        gc.unfreeze()
        gc.set_threshold(*previous)
