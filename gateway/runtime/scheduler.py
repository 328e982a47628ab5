"""Drives the cycles of every ACTIVE object on a host.

Triggers are at-least-once and cheap: a trigger names the generation it is for, and the
cycle itself decides (under the object's ETag) whether that generation still needs to
run. So the scheduler can be simple and forgiving: it rescans the store periodically
(objects created by another process, objects that arrived by migration), keeps the due
times it learned, and starts each due object's cycle as its own task.

One slow or failing object never holds up the others: cycles run concurrently (bounded),
each under a timeout, and an object whose cycle fails backs off on its own.

**One bad object never costs a host a core.** Whatever a cycle raises (a GatewayError,
a bug's ValueError, a timeout), its object backs off exponentially
(:func:`gateway.limits.cycle_backoff`); after
:data:`~gateway.limits.CYCLE_FAILURES_BEFORE_QUARANTINE` consecutive failures of its
own it is *quarantined*: a record ``t/<tenant>/quarantine/<object id>`` (attempts, last
reason) and an ``object.quarantined`` outbox event are written in one transaction, and
the object is no longer scheduled, on this or any restarted process, until an operator
releases it (``gateway object release``, which deletes the record). Failures of the
host rather than of the object (the store unavailable) back off too but never count
towards quarantine. So a failing object costs at most that many attempts, then nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from gateway._time import Clock, format_time, parse_time, to_millis
from gateway.errors import GatewayError, PayloadDecodeError, StoreUnavailableError
from gateway.handoff.journal import Journal, objects_prefix
from gateway.limits import CYCLE_FAILURES_BEFORE_QUARANTINE, cycle_backoff
from gateway.runtime.cycle import CycleReport, CycleResult, CycleRunner
from gateway.runtime.outbox import lifecycle_event, outbox_puts
from gateway.stores import Delete, Expect, Put, StateStore
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
    quarantined: int = 0


def quarantine_prefix(tenant: str) -> str:
    return f"t/{tenant}/quarantine/"


def quarantine_key(tenant: str, object_id: str) -> str:
    return quarantine_prefix(tenant) + object_id


@dataclass(frozen=True, slots=True, kw_only=True)
class Quarantine:
    """Why an object stopped being scheduled here, and since when."""

    tenant: str
    object_id: str
    generation: int  #: the generation whose cycle kept failing
    attempts: int  #: consecutive failed cycles before the quarantine
    reason: str  #: the last failure
    since: datetime

    def encode(self) -> bytes:
        return json.dumps(
            {
                "generation": self.generation,
                "attempts": self.attempts,
                "reason": self.reason,
                "since": format_time(self.since),
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, tenant: str, object_id: str, raw: bytes) -> Quarantine:
        try:
            document = json.loads(raw)
            return cls(
                tenant=tenant,
                object_id=object_id,
                generation=int(document["generation"]),
                attempts=int(document["attempts"]),
                reason=str(document["reason"]),
                since=parse_time(document["since"]),
            )
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise PayloadDecodeError(f"quarantine record of {object_id} is unreadable") from exc

    def describe(self) -> str:
        return (
            f"quarantined since {format_time(self.since)} after {self.attempts} failed cycles "
            f"at generation {self.generation} (last: {self.reason}); it is not evaluated "
            f"until released with `gateway object release {self.object_id}`"
        )


async def load_quarantine(store: StateStore, tenant: str, object_id: str) -> Quarantine | None:
    item = await store.get(quarantine_key(tenant, object_id))
    return None if item is None else Quarantine.decode(tenant, object_id, item.value)


async def release_quarantine(store: StateStore, tenant: str, object_id: str) -> bool:
    """Let a quarantined object be scheduled again (a running scheduler notices at its
    next scan); False if it was not quarantined."""
    item = await store.get(quarantine_key(tenant, object_id))
    if item is None:
        return False
    await store.transact([Delete(key=quarantine_key(tenant, object_id), etag=item.etag)])
    return True


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
        #: Quarantined objects, as of the last scan plus the ones quarantined since.
        self._quarantined: set[tuple[str, str]] = set()

    def notice(self) -> None:
        """Something became ACTIVE here (created, or arrived): rescan now, not at the next tick."""
        self._rescan = True
        self._wake.set()

    async def scan(self) -> int:
        """Learn every ACTIVE cycling object's due time from the store."""
        found = 0
        quarantined: set[tuple[str, str]] = set()
        for tenant in self.tenants:
            prefix = quarantine_prefix(tenant)
            quarantined.update(
                (tenant, k.removeprefix(prefix)) for k in await self.journal.store.list(prefix)
            )
        for released in self._quarantined - quarantined:
            log.info("%s was released from quarantine; scheduling it again", released[1])
        self._quarantined = quarantined
        for tenant in self.tenants:
            keys = await self.journal.store.list(objects_prefix(tenant))
            items = await self.journal.store.get_many(keys)
            for key, item in items.items():
                object_id = key.removeprefix(objects_prefix(tenant))
                if (tenant, object_id) in quarantined:
                    self._due.pop((tenant, object_id), None)
                    continue
                try:
                    cycle = decode_cycle(item.value)
                except GatewayError as exc:
                    log.warning("%s cannot be scheduled: %s", object_id, exc)
                    continue
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
                await self._failed(key, f"timed out after {self.cycle_timeout}", own=True)
                return
            except (StoreUnavailableError, OSError) as exc:
                # The host's trouble, not the object's: back off, never quarantine for it.
                self.stats.failures += 1
                await self._failed(key, str(exc), own=False)
                return
            except GatewayError as exc:
                self.stats.failures += 1
                await self._failed(key, str(exc), own=True)
                return
            except Exception as exc:
                # A bug or an unforeseen value must not make the task die and be
                # restarted at once, forever: it is one more failure of this object.
                log.exception("cycle of %s raised", object_id)
                self.stats.failures += 1
                await self._failed(key, f"{type(exc).__name__}: {exc}", own=True)
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

    async def _failed(self, key: tuple[str, str], reason: str, *, own: bool) -> None:
        """Back off; quarantine after too many consecutive failures of the object's own."""
        due = self._due.get(key)
        if due is None:
            return
        due.failures += 1
        if own and due.failures >= CYCLE_FAILURES_BEFORE_QUARANTINE:
            log.warning("cycle of %s failed (%s); attempt %d", key[1], reason, due.failures)
            if await self._quarantine(key, due, reason):
                return
        delay = cycle_backoff(due.failures)
        due.at = self.clock.now() + delay
        log.warning(
            "cycle of %s failed (%s); attempt %d, retrying in %.1f s",
            key[1],
            reason,
            due.failures,
            delay.total_seconds(),
        )

    async def _quarantine(self, key: tuple[str, str], due: _Due, reason: str) -> bool:
        """Record the quarantine and its event in one transaction; True once recorded."""
        tenant, object_id = key
        now = self.clock.now()
        record = Quarantine(
            tenant=tenant,
            object_id=object_id,
            generation=due.generation,
            attempts=due.failures,
            reason=reason[:1024],
            since=now,
        )
        epoch = 0
        with contextlib.suppress(GatewayError):  # the object may be what cannot be read
            loaded = await self.journal.object(tenant, object_id)
            epoch = loaded.value.epoch if loaded is not None else 0
        event = lifecycle_event(
            "object.quarantined",
            tenant=tenant,
            object_id=object_id,
            epoch=epoch,
            generation=due.generation,
            payload={"attempts": record.attempts, "reason": record.reason},
            at=now,
        )
        # One event per quarantine, not per epoch: an object may be released and fail again.
        event = replace(event, key=f"{tenant}/{object_id}/quarantined-{to_millis(now):015d}")
        try:
            await self.journal.store.transact(
                [
                    Put(
                        key=quarantine_key(tenant, object_id),
                        value=record.encode(),
                        etag=Expect.ANY,
                    ),
                    *outbox_puts(event),
                ]
            )
        except GatewayError as exc:
            log.warning("could not quarantine %s (%s); backing off instead", object_id, exc)
            return False
        self.stats.quarantined += 1
        self._quarantined.add(key)
        self._due.pop(key, None)
        log.warning("%s: %s", object_id, record.describe())
        return True


async def _first(*events: asyncio.Event) -> None:
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
