"""Giving freed heap memory back to the operating system (glibc's ``malloc_trim``).

Why: a served host frees most of what a migration allocates (decoded objects, protobuf
messages, envelopes) a moment later, from the event loop and from several worker
threads (gRPC, the SQLite writer and readers). glibc serves each thread from its own
arena and returns an arena's free pages to the kernel only from the top of its heap,
so pages freed below a live allocation stay in the process's RSS although nothing uses
them. Under the soak (bench/bench_soak.py) each trim gave back 1-10 MiB of such free
heap (bench/soak_memory.py --trim-probe); it lowers RSS by that much, it does not change
how fast RSS grows with the objects held (docs/benchmarks.md, "RSS under the soak").
``malloc_trim(0)`` walks every arena and releases the whole free pages in it
(``madvise(MADV_DONTNEED)``).

Invariants: :func:`trim` never fails and never frees memory in use (the C library only
returns pages it holds free); off glibc (musl, macOS) it does nothing and says so.
:class:`Trimmer` calls it once per :data:`TRIM_INTERVAL_SECONDS`, on a worker thread
(glibc takes each arena's own lock, so this is safe beside allocating threads, and the
event loop is never held up by the walk).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

#: Seconds between two trims by a served host's :class:`Trimmer`. Under the soak's load
#: each trim every 20 s gave back 1-9 MiB (bench/soak_memory.py --trim-probe); every
#: 30 s keeps RSS within about that of what is live, and a trim (a walk of the arenas,
#: on a worker thread: ctypes releases the GIL) costs far under 0.1 % of a core.
TRIM_INTERVAL_SECONDS = 30.0


@functools.cache
def _libc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


def available() -> bool:
    """Whether this process's C library can trim (glibc)."""
    return _libc_trim() is not None


def trim() -> bool:
    """Return the free pages of every malloc arena to the kernel; whether any were
    returned (False also where :func:`available` is False)."""
    function = _libc_trim()
    return bool(function(0)) if function is not None else False


class Trimmer:
    """Calls :func:`trim` every ``interval`` seconds while running (a served host's
    housekeeping; started by gateway.serving)."""

    def __init__(self, interval: float = TRIM_INTERVAL_SECONDS, *, rounds: int = 0) -> None:
        self.interval = interval
        self.rounds = rounds  #: stop after this many trims (0: never; tests)
        self.trims = 0  #: trims made (tests, diagnostics)

    async def run(self) -> None:
        if not available():
            log.info("malloc_trim is not available (not glibc): freed heap is not trimmed")
            return
        loop = asyncio.get_running_loop()
        while not self.rounds or self.trims < self.rounds:
            await asyncio.sleep(self.interval)
            await loop.run_in_executor(None, trim)
            self.trims += 1

    def start(self) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(self.run(), name="malloc-trim")

    @staticmethod
    async def stop(task: asyncio.Task[None]) -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
