"""Journal writes that settle a migration after its caller was answered.

A source answers ``migrate`` as soon as the destination's signed activation receipt is
verified (gateway.handoff.source). By then the outcome is decided and durable (the
COMMITTED record and the tombstone were fsync'd before Commit was sent) and the receipt
proves the object live on the destination. What is left, journaling DONE (the receipt
kept as evidence, the open marker deleted), changes nothing anyone depends on, so it
follows the answer instead of delaying it; about a sixth of a small migration's time.

Invariants this module keeps:

* **Nothing is lost.** A settle that fails (the store busy or closing, the host killed)
  leaves the COMMITTED record and its open marker exactly as they were; recovery
  re-sends Commit, the destination answers the same receipt again, and DONE is
  journaled then (gateway.handoff.recovery). A failure is logged, never raised into a
  task nobody awaits.
* **Nothing is done twice for nothing.** A resume of a migration whose settle is still
  running waits for it (:meth:`PendingSettles.wait_for`) instead of sending Commit again.
* **Nothing is left behind at close.** The host waits for pending settles before it
  closes its store (:meth:`PendingSettles.wait`; ``await host.settled()`` for callers
  that read the journal right after a migration).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from gateway.errors import GatewayError

log = logging.getLogger(__name__)


class PendingSettles:
    """The settles this host started and that have not finished, by migration id."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, migration_id: object) -> bool:
        return migration_id in self._tasks

    def start(self, migration_id: str, settle: Coroutine[Any, Any, object]) -> None:
        """Run ``settle`` (the DONE write of ``migration_id``) in the background."""
        task = asyncio.get_running_loop().create_task(self._run(migration_id, settle))
        self._tasks[migration_id] = task
        task.add_done_callback(lambda done: self._forget(migration_id, done))

    async def _run(self, migration_id: str, settle: Coroutine[Any, Any, object]) -> None:
        try:
            await settle
        except GatewayError as exc:
            log.warning(
                "migration %s is activated; its DONE record is not journaled yet (recovery "
                "finishes it): %s",
                migration_id,
                exc,
            )
        except Exception:
            # A bug, not a store that said no: loud, but the record stays COMMITTED and
            # recovery still finishes it.
            log.exception(
                "migration %s is activated; journaling its DONE record failed (recovery "
                "finishes it)",
                migration_id,
            )

    def _forget(self, migration_id: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(migration_id) is task:
            del self._tasks[migration_id]

    def cancel(self) -> None:
        """Stop every settle under way, as the end of the process would: their records
        stay COMMITTED and open, and recovery finishes them (simulated crashes)."""
        for task in self._tasks.values():
            task.cancel()

    async def wait_for(self, migration_id: str) -> None:
        """Until the settle of ``migration_id`` (if one is running) has finished."""
        task = self._tasks.get(migration_id)
        if task is not None:
            # asyncio.wait: a caller that gives up waiting does not cancel the write.
            await asyncio.wait((task,))

    async def wait(self) -> None:
        """Until every settle started so far, and any started meanwhile, has finished.
        Bound it with ``asyncio.timeout``: a waiter cancelled so leaves the writes running."""
        while self._tasks:
            await asyncio.wait(tuple(self._tasks.values()))
