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

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable

from tenacity import (
    AsyncRetrying,
    AttemptManager,
    RetryCallState,
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
#: The same pauses for attempts 2, 3, ... counted from 1 (see :class:`LostRace`).
_LATER_WAIT = wait_incrementing(start=0.01, increment=0.005, max=0.05) + wait_random(0, 0.005)
#: Pause between tries for a file lock SQLite does not wait for itself.
LOCKED_FILE_WAIT = wait_fixed(0.01)


def lost_race(attempts: int, *, also: tuple[type[BaseException], ...] = ()) -> LostRace:
    """At most ``attempts`` tries of a block whose conditional write may lose a race
    (``ConcurrencyError``, and ``also`` where the caller says so); the last exception is
    re-raised when they run out. Used as tenacity is (``async for attempt in ...: with
    attempt: ...``)."""
    return LostRace(attempts, (ConcurrencyError, *also))


class LostRace:
    """:func:`lost_race`'s iterator. The first try needs no retry state: most writes win
    their race, and building and stepping tenacity's ``AsyncRetrying`` cost about 30-70 us
    per use on the event loop (three uses per migration). Only after a lost first try are
    the remaining ``attempts - 1`` driven by tenacity, after the same first pause
    (``LOST_RACE_WAIT`` for attempt 1), with the waits it would have used for them
    (``_LATER_WAIT``): the policy is the one a single tenacity loop would apply."""

    __slots__ = ("_attempts", "_first", "_later", "_retried")

    def __init__(self, attempts: int, retried: tuple[type[BaseException], ...]) -> None:
        self._attempts = attempts
        self._retried = retried
        self._first: _FirstTry | None = None
        self._later: AsyncIterator[AttemptManager] | None = None

    def __aiter__(self) -> LostRace:
        return self

    async def __anext__(self) -> _FirstTry | AttemptManager:
        if self._later is not None:
            return await self._later.__anext__()
        if self._first is None:
            self._first = _FirstTry(self._retried)
            return self._first
        lost = self._first.lost
        if lost is None:
            raise StopAsyncIteration  # the first try got through
        if self._attempts <= 1:
            raise lost
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._attempts - 1),
            wait=_LATER_WAIT,
            retry=retry_if_exception_type(self._retried),
            reraise=True,
        )
        await asyncio.sleep(LOST_RACE_WAIT(RetryCallState(retrying, None, (), {})))
        self._later = retrying.__aiter__()
        return await self._later.__anext__()


class _FirstTry:
    """The context of the first try: keeps a lost race for the next step of the loop (as
    tenacity's ``AttemptManager`` does), lets anything else through."""

    __slots__ = ("_retried", "lost")

    def __init__(self, retried: tuple[type[BaseException], ...]) -> None:
        self._retried = retried
        self.lost: BaseException | None = None

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _tb: object
    ) -> bool:
        if error is not None and isinstance(error, self._retried):
            self.lost = error
            return True
        return False


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
