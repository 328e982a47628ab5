"""Retry and backoff policies, named and configured once (STYLE.md 17).

Every place in the gateway that tries an operation again uses a tenacity policy from
here, so how often and how long is decided in one file, not in loops per call site:

* :func:`lost_race` — a conditional store write lost to another writer (an ETag moved):
  re-read and write again after a short, growing, jittered pause, so that racing
  writers spread out instead of colliding again.
* :func:`locked_file` — SQLite refused a lock it does not wait for (switching to WAL):
  wait briefly and try again until the busy timeout is spent.

Peer RPCs retry with their own policy beside their client (gateway/transport/client.py),
and the Dapr store's reads beside its adapter (gateway/stores/dapr.py): both are also
tenacity. Invariant: a policy only decides *when* to try again; what counts as worth
retrying is the call site's exception (``ConcurrencyError``, or ``tenacity.TryAgain``
raised where only the call site can tell), and what to raise when attempts run out is
the call site's too (``reraise=True`` hands it the last exception).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from tenacity import (
    AsyncRetrying,
    Retrying,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_fixed,
    wait_incrementing,
    wait_random,
)

from gateway.errors import ConcurrencyError

#: Pause after the n-th lost race: 5 ms more each time (at most 50 ms), plus up to 5 ms
#: of jitter.
LOST_RACE_WAIT = wait_incrementing(start=0.005, increment=0.005, max=0.05) + wait_random(0, 0.005)
#: Pause between tries for a file lock SQLite does not wait for itself.
LOCKED_FILE_WAIT = wait_fixed(0.01)


def lost_race(attempts: int, *, also: tuple[type[BaseException], ...] = ()) -> AsyncRetrying:
    """At most ``attempts`` tries of a block whose conditional write may lose a race
    (``ConcurrencyError``, and ``also`` where the caller says so); the last exception is
    re-raised when they run out."""
    return AsyncRetrying(
        stop=stop_after_attempt(attempts),
        wait=LOST_RACE_WAIT,
        retry=retry_if_exception_type((ConcurrencyError, *also)),
        reraise=True,
    )


def locked_file(timeout: float, *, locked: Callable[[BaseException], bool]) -> Retrying:
    """Tries until ``timeout`` seconds are spent while ``locked(error)`` says the failure
    was a lock held by another process (blocking: for SQLite's own thread)."""

    def is_lock(error: BaseException) -> bool:
        return isinstance(error, sqlite3.OperationalError) and locked(error)

    return Retrying(
        stop=stop_after_delay(timeout),
        wait=LOCKED_FILE_WAIT,
        retry=retry_if_exception(is_lock),
        reraise=True,
    )
