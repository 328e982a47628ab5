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

Invariant: memory stays bounded. The collector still runs; cyclic garbage waits for at
most :data:`GEN0_THRESHOLD` net container allocations (a few MiB at a few hundred bytes
each) before a young collection, and full collections keep CPython's own rule (only
once the long-lived objects grew by a quarter), so nothing accumulates without limit.
"""

from __future__ import annotations

import gc

#: Net container allocations between two young collections (CPython's default is 700).
GEN0_THRESHOLD = 50_000
#: Young collections between two middle ones, middle ones between two full ones
#: (CPython's defaults are 10 and 10; a full collection is further gated by CPython on
#: the long-lived objects having grown by 25 %).
GEN1_THRESHOLD = 20
GEN2_THRESHOLD = 10


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
