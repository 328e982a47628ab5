"""Drives the cycles of every ACTIVE object on a host.

Triggers are at-least-once and cheap: a trigger names the generation it is for, and the
cycle itself decides (under the object's ETag) whether that generation still needs to
run. So the scheduler can be simple and forgiving: it rescans the store periodically
(objects created by another process, objects that arrived by migration), keeps the due
times it learned, and starts each due object's cycle as its own task.

One slow or failing object never holds up the others: cycles run concurrently (bounded),
each under a timeout, and an object whose cycle fails backs off on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway._time import Clock
from gateway.errors import GatewayError
from gateway.handoff.journal import Journal, objects_prefix
from gateway.runtime.cycle import CycleReport, CycleResult, CycleRunner
from gateway.wire import decode_cycle

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Due:
    at: datetime
    generation: int
    failures: int = 0


@dataclass(slots=True)
class SchedulerStats:
    evaluated: int = 0
    conflicts: int = 0
    failures: int = 0
    timeouts: int = 0


class Scheduler:
    def __init__(
        self,
        runner: CycleRunner,
        journal: Journal,
        tenants: Sequence[str],
        *,
        clock: Clock,
        scan_interval: timedelta = timedelta(seconds=1),
        concurrency: int = 32,
        cycle_timeout: timedelta = timedelta(seconds=10),
    ) -> None:
        self.runner = runner
        self.journal = journal
        self.tenants = tuple(tenants)
        self.clock = clock
        self.scan_interval = scan_interval
        self.cycle_timeout = cycle_timeout
        self.stats = SchedulerStats()
        self._slots = asyncio.Semaphore(concurrency)
        self._due: dict[tuple[str, str], _Due] = {}
        self._inflight: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._rescan = False

    def notice(self) -> None:
        """Something became ACTIVE here (created, or arrived): rescan now, not at the next tick."""
        self._rescan = True
        self._wake.set()

    async def scan(self) -> int:
        """Learn every ACTIVE cycling object's due time from the store."""
        found = 0
        for tenant in self.tenants:
            keys = await self.journal.store.list(objects_prefix(tenant))
            items = await self.journal.store.get_many(keys)
            for key, item in items.items():
                cycle = decode_cycle(item.value)
                object_id = key.removeprefix(objects_prefix(tenant))
                if cycle is None:
                    self._due.pop((tenant, object_id), None)
                    continue
                generation, due = cycle
                known = self._due.get((tenant, object_id))
                if known is None or known.generation != generation:
                    self._due[(tenant, object_id)] = _Due(
                        at=due or self.clock.now(), generation=generation
                    )
                found += 1
        return found

    async def run(self, stop: asyncio.Event) -> None:
        next_scan = self.clock.now()
        try:
            while not stop.is_set():
                now = self.clock.now()
                if now >= next_scan or self._rescan:
                    self._rescan = False
                    try:
                        await self.scan()
                    except GatewayError as exc:
                        log.warning("scheduler scan failed: %s", exc)
                    next_scan = now + self.scan_interval
                wake_at = next_scan
                for key, due in self._due.items():
                    if key in self._inflight:
                        continue
                    if due.at <= now:
                        task = asyncio.create_task(self._cycle(key, due.generation))
                        self._inflight[key] = task
                        task.add_done_callback(functools.partial(self._done, key))
                    else:
                        wake_at = min(wake_at, due.at)
                delay = max(0.0, (wake_at - self.clock.now()).total_seconds())
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(_first(stop, self._wake), timeout=delay)
        finally:
            for task in self._inflight.values():
                task.cancel()
            await asyncio.gather(*self._inflight.values(), return_exceptions=True)

    def _done(self, key: tuple[str, str], _task: asyncio.Task[None]) -> None:
        self._inflight.pop(key, None)
        self._wake.set()

    async def _cycle(self, key: tuple[str, str], generation: int) -> None:
        tenant, object_id = key
        async with self._slots:
            try:
                report = await asyncio.wait_for(
                    self.runner.run(tenant, object_id, generation=generation),
                    timeout=self.cycle_timeout.total_seconds(),
                )
            except TimeoutError:
                self.stats.timeouts += 1
                self._back_off(key, "timed out")
                return
            except (GatewayError, OSError) as exc:
                self.stats.failures += 1
                self._back_off(key, str(exc))
                return
        self._learn(key, report)

    def _learn(self, key: tuple[str, str], report: CycleReport) -> None:
        if report.result is CycleResult.EVALUATED:
            self.stats.evaluated += 1
        elif report.result is CycleResult.CONFLICT:
            self.stats.conflicts += 1
        cycle = report.cycle
        if cycle is None or cycle.interval is None:
            # Not cycling here (anymore), or state unknown after a conflict: the next
            # scan puts it back if it is ACTIVE and cycling.
            self._due.pop(key, None)
            return
        self._due[key] = _Due(at=cycle.next_due or self.clock.now(), generation=cycle.generation)

    def _back_off(self, key: tuple[str, str], reason: str) -> None:
        due = self._due.get(key)
        if due is None:
            return
        due.failures += 1
        delay = min(30.0, 0.5 * 2 ** min(due.failures, 6))
        due.at = self.clock.now() + timedelta(seconds=delay)
        log.warning("cycle of %s failed (%s); retrying in %.1f s", key[1], reason, delay)


async def _first(*events: asyncio.Event) -> None:
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
