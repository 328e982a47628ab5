"""Process-wide garbage-collector settings for a long-running host (``gateway serve``).

Why: a host keeps thousands of decoded objects alive (the journal's object memo, each
with its lineage entries), and CPython's cyclic collector, with its default gen-0
threshold of 700 container allocations, runs a young collection every few cycles and
an older one every few dozen, each walking objects that will live for minutes. That
cost 12-15 % of the event loop's CPU per committed cycle (docs/benchmarks.md, P5).
Almost all of a cycle's garbage is freed by reference counting the moment it is
dropped; the collector is only needed for reference cycles, which are rare here.

What :func:`tune` does, once, after start-up state is built:

* ``gc.freeze()``: everything alive at that point (modules, compiled protobuf and CEL
  state, configuration, trust bundles, the host's own objects) moves to the permanent
  generation, which no collection walks again. Frozen objects are still freed by
  reference counting; only reference *cycles* among them would be kept, and start-up
  state lives as long as the process anyway.
* A gen-0 threshold of :data:`GEN0_THRESHOLD` allocations instead of 700, and older
  generations visited as often as before relative to it.

A served host also runs a :class:`Sweeper`: a young collection every
:data:`SWEEP_INTERVAL_SECONDS`, for the garbage that comes with time rather than with
allocations (grpc.aio's reference cycle per RPC).

Invariant: memory stays bounded. The collector still runs; cyclic garbage waits for at
most :data:`GEN0_THRESHOLD` net container allocations (a few MiB at a few hundred bytes
each), and in a served host at most :data:`SWEEP_INTERVAL_SECONDS`, before a young
collection, and full collections keep CPython's own rule (only
once the long-lived objects grew by a quarter), so nothing accumulates without limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc

#: Net container allocations between two young collections (CPython's default is 700).
GEN0_THRESHOLD = 50_000
#: Young collections between two middle ones, middle ones between two full ones
#: (CPython's defaults are 10 and 10; a full collection is further gated by CPython on
#: the long-lived objects having grown by 25 %).
GEN1_THRESHOLD = 20
GEN2_THRESHOLD = 10
#: Seconds between two young collections a served host makes whatever it allocated
#: (:class:`Sweeper`).
SWEEP_INTERVAL_SECONDS = 5.0


def tune() -> tuple[int, int, int]:
    """Freeze what exists now and set the thresholds above; the previous thresholds
    (so an embedding test can put them back with ``gc.set_threshold`` and
    ``gc.unfreeze``)."""
    previous = gc.get_threshold()
    # Collect first so garbage from start-up is freed rather than frozen forever.
    gc.collect()
    gc.freeze()
    gc.set_threshold(GEN0_THRESHOLD, GEN1_THRESHOLD, GEN2_THRESHOLD)
    return previous


def drop_traceback(error: BaseException) -> None:
    """Forget the traceback of a handled error (and of the errors it was raised from)
    that nobody will show.

    Why: a traceback holds every frame the error passed through, and each frame its
    caller and its locals; when one of those locals holds the error again (a list of
    outcomes, the future it was set on), error and frames form a reference cycle that
    only the cyclic collector frees. A store's refused write passes through the writer
    thread's frames, which hold every operation of the group it was committed with, so
    one lost race kept a batch of encoded objects alive until the middle generation was
    collected (minutes later under load), and the heap kept the high they made
    (docs/benchmarks.md, session 35). Without the traceback the frames go by reference
    counting as soon as the handler lets go of the error."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        current = current.__cause__ or current.__context__


class Sweeper:
    """Makes a young collection every ``interval`` seconds while running (a served
    host's housekeeping, started by gateway.serving).

    Why: grpc.aio leaves a reference cycle per RPC, which waits for a young collection,
    and :data:`GEN0_THRESHOLD` counts allocations. Under the soak a served host made one
    every 68 s, each freeing 24,000 objects in a 154 ms stall of the event loop, and
    CPython's arenas kept each high that garbage made (docs/benchmarks.md, session 39).
    A lower threshold collected every 4.6 s but cost P5 (allocations come fast there:
    event-loop CPU per cycle 111.5 -> 118 us); by time, the collector's work is bounded
    per second instead, whatever the rate of allocations."""

    def __init__(self, interval: float = SWEEP_INTERVAL_SECONDS, *, rounds: int = 0) -> None:
        self.interval = interval
        self.rounds = rounds  #: stop after this many collections (0: never; tests)
        self.sweeps = 0  #: young collections made (tests, diagnostics)

    async def run(self) -> None:
        while not self.rounds or self.sweeps < self.rounds:
            await asyncio.sleep(self.interval)
            gc.collect(0)
            self.sweeps += 1

    def start(self) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(self.run(), name="gc-sweep")

    @staticmethod
    async def stop(task: asyncio.Task[None]) -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
