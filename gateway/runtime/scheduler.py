"""Drives the cycles of every ACTIVE object on a host.

Triggers are at-least-once and cheap: a trigger names the generation it is for, and the
cycle itself decides (under the object's ETag) whether that generation still needs to
run. So the scheduler can be simple and forgiving about what it learns.

**Work per wake is proportional to the objects due, not to the objects held.** Due times
live in a heap (earliest first); a wake pops only the entries that are due. The store
is read in full once, at start; afterwards the scheduler learns due times from what it
is told (:meth:`Scheduler.notice` with the object that became ACTIVE here: created or
arrived) and from each cycle's own report (its next due time), never by rereading every
object. A slow *reconciliation* (``reconcile_interval``, a minute by default) lists
object keys and the quarantine records, and reads only objects it has never seen:
objects created by another process sharing the store (a CLI next to a server) and
objects released from quarantine start cycling within that interval. A superseded heap
entry (the object's due time changed, or it stopped cycling) is dropped when popped.

**Other processes wake it through the store.** A process that makes an object ACTIVE
without running this scheduler (``gateway object create`` or ``gateway migrate`` next
to a running server, ``gateway object release``) writes a marker
``sched/wake/<tenant>/<object id>`` after its own commit; the scheduler lists that prefix
(only markers, so the cost follows what changed) at most once per ``wake_poll``, deletes
the markers, then reads those objects. The marker is deleted before the object is read,
so a marker written meanwhile is either seen next time or was written before the read.

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
import heapq
import itertools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from gateway._time import Clock, format_time, parse_time, to_millis
from gateway.errors import GatewayError, PayloadDecodeError, StoreUnavailableError
from gateway.handoff.journal import Journal, objects_prefix
from gateway.limits import CYCLE_FAILURES_BEFORE_QUARANTINE, cycle_backoff
from gateway.model import GovernedObject, LifecycleState
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
    #: The heap entry that stands for this due time (older entries are stale).
    token: int = 0


@dataclass(slots=True)
class SchedulerStats:
    evaluated: int = 0
    conflicts: int = 0
    failures: int = 0
    timeouts: int = 0
    quarantined: int = 0


WAKE_PREFIX = "sched/wake/"

#: Due objects of one tenant cycled by one task, in one store read and one commit
#: (:meth:`CycleRunner.run_many`): the per-cycle costs of a task, a deadline, a read and
#: a transaction are shared by the batch. Bounded so that one transaction stays small
#: and a batch that must be rerun object by object (it timed out) stays cheap. 128, not
#: 32: the writer thread then takes a quarter of the callers per group commit (each one
#: a savepoint and statements that hand the GIL back and forth), which P5 (1,000
#: objects) measured at 4,700-4,900 against 4,400 committed cycles/s; the batch yields
#: the event loop between slices of its evaluations (gateway.runtime.cycle.PREPARE_SLICE),
#: so a larger batch holds the loop no longer at a time.
CYCLE_BATCH = 128


def wake_key(tenant: str, object_id: str) -> str:
    return f"{WAKE_PREFIX}{tenant}/{object_id}"


async def request_wake(store: StateStore, tenant: str, object_id: str) -> None:
    """Tell a scheduler running in another process that ``object_id`` may cycle now."""
    await store.put(wake_key(tenant, object_id), b"", etag=Expect.ANY)


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
    await store.transact(
        [
            Delete(key=quarantine_key(tenant, object_id), etag=item.etag),
            Put(key=wake_key(tenant, object_id), value=b"", etag=Expect.ANY),
        ]
    )
    return True


class Scheduler:
    def __init__(
        self,
        runner: CycleRunner,
        journal: Journal,
        tenants: Sequence[str],
        *,
        clock: Clock,
        reconcile_interval: timedelta = timedelta(seconds=60),
        wake_poll: timedelta = timedelta(seconds=1),
        concurrency: int = 32,
        cycle_timeout: timedelta = timedelta(seconds=10),
    ) -> None:
        self.runner = runner
        self.journal = journal
        self.tenants = tuple(tenants)
        self.clock = clock
        self.reconcile_interval = reconcile_interval
        self.wake_poll = wake_poll
        self.cycle_timeout = cycle_timeout
        self.stats = SchedulerStats()
        self._slots = asyncio.Semaphore(concurrency)
        self._due: dict[tuple[str, str], _Due] = {}
        #: (due time, token, key), earliest first; an entry whose token is not its key's
        #: current one is stale and skipped.
        self._heap: list[tuple[datetime, int, tuple[str, str]]] = []
        self._tokens = itertools.count(1)
        #: Objects read here at least once (cycling or not): reconciliation skips them.
        self._seen: set[tuple[str, str]] = set()
        self._inflight: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        #: When the sleeping loop wakes by itself (None: not sleeping). An object noticed
        #: as due no earlier than that needs no wake: each wake costs the loop a pass and
        #: a new wait (several tasks), once per arrival on a busy destination.
        self._sleeping_until: datetime | None = None
        self._reconcile = False
        #: Objects to read again at the next wake (their cycle lost a write race).
        self._recheck: set[tuple[str, str]] = set()
        #: Quarantined objects, as of the last reconciliation plus the ones quarantined since.
        self._quarantined: set[tuple[str, str]] = set()

    def notice(self, obj: GovernedObject | None = None) -> None:
        """``obj`` became ACTIVE here (created, arrived or resumed): schedule it now, from
        the object itself. Without an object: reconcile with the store at the next wake."""
        if obj is None:
            self._reconcile = True
        else:
            key = (obj.tenant, obj.object_id)
            self._seen.add(key)
            if key not in self._quarantined:
                cycle = obj.cycle
                if obj.state is LifecycleState.ACTIVE and cycle.interval is not None:
                    at = cycle.next_due or self.clock.now()
                    self._set_due(key, cycle.generation, at)
                    sleeping_until = self._sleeping_until
                    if (
                        sleeping_until is not None
                        and at >= sleeping_until
                        and self.clock.now() < sleeping_until
                    ):
                        return  # the loop looks at the heap by then anyway
                else:
                    self._due.pop(key, None)
                    if self._sleeping_until is not None:
                        return  # its heap entry is superseded; nothing to do sooner
        self._wake.set()

    def _set_due(
        self, key: tuple[str, str], generation: int, at: datetime, *, failures: int = 0
    ) -> None:
        token = next(self._tokens)
        self._due[key] = _Due(at, generation, failures, token)  # by position: every cycle
        heapq.heappush(self._heap, (at, token, key))

    async def _quarantine_records(self) -> set[tuple[str, str]]:
        quarantined: set[tuple[str, str]] = set()
        for tenant in self.tenants:
            prefix = quarantine_prefix(tenant)
            quarantined.update(
                (tenant, k.removeprefix(prefix)) for k in await self.journal.store.list(prefix)
            )
        for released in self._quarantined - quarantined:
            log.info("%s was released from quarantine; scheduling it again", released[1])
            # Read it again at this reconciliation: it may cycle again.
            self._seen.discard(released)
        self._quarantined = quarantined
        return quarantined

    async def scan(self) -> int:
        """Reconcile with the store: learn the due time of every ACTIVE cycling object not
        seen here yet (all of them, the first time). Returns how many it scheduled."""
        found = 0
        quarantined = await self._quarantine_records()
        for key in quarantined:
            self._due.pop(key, None)
        for tenant in self.tenants:
            prefix = objects_prefix(tenant)
            unseen = [
                object_id
                for object_id in (
                    k.removeprefix(prefix) for k in await self.journal.store.list(prefix)
                )
                if (tenant, object_id) not in self._seen
            ]
            found += await self._read(tenant, unseen)
        return found

    async def _read(self, tenant: str, object_ids: Sequence[str]) -> int:
        """Read these objects' due times from the store (in bounded batches); returns how
        many are ACTIVE and cycling."""
        found = 0
        prefix = objects_prefix(tenant)
        for start in range(0, len(object_ids), 500):
            keys = [prefix + object_id for object_id in object_ids[start : start + 500]]
            items = await self.journal.store.get_many(keys)
            for key, item in items.items():
                object_id = key.removeprefix(prefix)
                if (tenant, object_id) in self._seen:
                    continue  # told about meanwhile: what it was told is newer
                self._seen.add((tenant, object_id))
                if (tenant, object_id) in self._quarantined:
                    continue
                try:
                    cycle = decode_cycle(item.value)
                except GatewayError as exc:
                    log.warning("%s cannot be scheduled: %s", object_id, exc)
                    continue
                if cycle is None:
                    continue
                generation, due = cycle
                self._set_due((tenant, object_id), generation, due or self.clock.now())
                found += 1
        return found

    async def _take_wakes(self) -> None:
        """Markers left by other processes: forget what was seen of those objects and
        read them again (markers first deleted, see the module docstring)."""
        keys = await self.journal.store.list(WAKE_PREFIX, limit=1000)
        if not keys:
            return
        await self.journal.store.transact([Delete(key=k, etag=Expect.ANY) for k in keys])
        for key in keys:
            tenant, _, object_id = key.removeprefix(WAKE_PREFIX).partition("/")
            if tenant in self.tenants:
                self._seen.discard((tenant, object_id))
                self._recheck.add((tenant, object_id))
        # A release from quarantine is among them: learn the quarantine records again.
        await self._quarantine_records()

    async def run(self, stop: asyncio.Event) -> None:
        next_reconcile = self.clock.now()
        next_poll = next_reconcile
        try:
            while not stop.is_set():
                now = self.clock.now()
                if now >= next_poll:
                    try:
                        await self._take_wakes()
                    except GatewayError as exc:
                        log.warning("scheduler could not read wake markers: %s", exc)
                    next_poll = now + self.wake_poll
                if now >= next_reconcile or self._reconcile:
                    self._reconcile = False
                    try:
                        await self.scan()
                    except GatewayError as exc:
                        log.warning("scheduler reconciliation failed: %s", exc)
                    next_reconcile = now + self.reconcile_interval
                    now = self.clock.now()
                if self._recheck:
                    recheck, self._recheck = self._recheck, set()
                    try:
                        for tenant in {t for t, _ in recheck}:
                            await self._read(tenant, [o for t, o in recheck if t == tenant])
                    except GatewayError as exc:
                        log.warning("scheduler could not reread objects: %s", exc)
                        self._reconcile = True
                    now = self.clock.now()
                heap = self._heap
                batches: dict[str, list[tuple[str, int]]] = {}
                while heap and heap[0][0] <= now:
                    _at, token, key = heapq.heappop(heap)
                    due = self._due.get(key)
                    if due is None or due.token != token:
                        continue  # superseded
                    if key in self._inflight:
                        # Its cycle is running; what it reports decides its next due time
                        # (or the backoff does, if it fails).
                        continue
                    batch = batches.setdefault(key[0], [])
                    batch.append((key[1], due.generation))
                    if len(batch) == CYCLE_BATCH:
                        self._start(key[0], batches.pop(key[0]))
                for tenant, batch in batches.items():
                    self._start(tenant, batch)
                wake_at = min(next_reconcile, next_poll)
                if heap:
                    wake_at = min(wake_at, heap[0][0])
                delay = max(0.0, (wake_at - self.clock.now()).total_seconds())
                self._wake.clear()
                self._sleeping_until = wake_at
                try:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(_first(stop, self._wake), timeout=delay)
                finally:
                    self._sleeping_until = None
        finally:
            for task in self._inflight.values():
                task.cancel()
            await asyncio.gather(*self._inflight.values(), return_exceptions=True)

    def _start(self, tenant: str, batch: list[tuple[str, int]]) -> None:
        """One task for a batch of due objects of one tenant (see :data:`CYCLE_BATCH`)."""
        if len(batch) == 1:
            object_id, generation = batch[0]
            task = asyncio.create_task(self._cycle((tenant, object_id), generation))
        else:
            task = asyncio.create_task(self._cycles(tenant, batch))
        keys = [(tenant, object_id) for object_id, _ in batch]
        for key in keys:
            self._inflight[key] = task
        task.add_done_callback(functools.partial(self._done, keys))

    def _done(self, keys: list[tuple[str, str]], _task: asyncio.Task[None]) -> None:
        for key in keys:
            self._inflight.pop(key, None)
        self._wake.set()

    async def _cycles(self, tenant: str, batch: list[tuple[str, int]]) -> None:
        """Cycle a batch in one read and one commit (:meth:`CycleRunner.run_many`); each
        object's answer or failure is its own. When the batch as a whole times out or
        fails unexpectedly, which object caused it is unknown: each is then run again on
        its own, under its own deadline (idempotent per generation), so only the culprit
        backs off or is quarantined."""
        async with self._slots:
            try:
                async with asyncio.timeout(self.cycle_timeout.total_seconds()):
                    answers = await self.runner.run_many(tenant, batch)
            except (StoreUnavailableError, OSError) as exc:
                for object_id, _ in batch:
                    self.stats.failures += 1
                    await self._failed((tenant, object_id), str(exc), own=False)
                return
            except Exception:
                log.warning("a batch of %d cycles failed; running each on its own", len(batch))
                answers = None
        if answers is None:
            await asyncio.gather(
                *(self._cycle((tenant, object_id), generation) for object_id, generation in batch)
            )
            return
        for object_id, answer in answers.items():
            if isinstance(answer, Exception):
                await self._failure((tenant, object_id), answer)
            else:
                self._learn((tenant, object_id), answer)

    async def _cycle(self, key: tuple[str, str], generation: int) -> None:
        tenant, object_id = key
        async with self._slots:
            try:
                # asyncio.timeout, not wait_for: the same deadline without a second task
                # per cycle (wait_for wraps the coroutine in one on 3.11).
                async with asyncio.timeout(self.cycle_timeout.total_seconds()):
                    report = await self.runner.run(tenant, object_id, generation=generation)
            except TimeoutError:
                self.stats.timeouts += 1
                await self._failed(key, f"timed out after {self.cycle_timeout}", own=True)
                return
            except Exception as exc:
                await self._failure(key, exc)
                return
        self._learn(key, report)

    async def _failure(self, key: tuple[str, str], exc: Exception) -> None:
        """Back off (and perhaps quarantine) after a cycle of ``key`` raised ``exc``."""
        self.stats.failures += 1
        if isinstance(exc, StoreUnavailableError | OSError):
            # The host's trouble, not the object's: back off, never quarantine for it.
            await self._failed(key, str(exc), own=False)
        elif isinstance(exc, GatewayError):
            await self._failed(key, str(exc), own=True)
        else:
            # A bug or an unforeseen value must not make the task die and be
            # restarted at once, forever: it is one more failure of this object.
            log.error("cycle of %s raised", key[1], exc_info=exc)
            await self._failed(key, f"{type(exc).__name__}: {exc}", own=True)

    def _learn(self, key: tuple[str, str], report: CycleReport) -> None:
        if report.result is _EVALUATED:
            self.stats.evaluated += 1
        elif report.result is _CONFLICT:
            self.stats.conflicts += 1
        cycle = report.cycle
        if cycle is None or cycle.interval is None:
            # Not cycling here (anymore), or state unknown after a conflict: it comes
            # back when it becomes ACTIVE here again (notice), or, for a conflict with a
            # writer in another process, at the next reconciliation.
            self._due.pop(key, None)
            if report.result is _CONFLICT:
                self._seen.discard(key)
                self._recheck.add(key)
            return
        self._set_due(key, cycle.generation, cycle.next_due or self.clock.now())

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
        self._set_due(key, due.generation, self.clock.now() + delay, failures=due.failures)
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


#: Enum members read on every cycle's report, bound once: in Python 3.11 ``EnumType``
#: defines ``__getattr__``, so each ``Kind.MEMBER`` read goes through the class's
#: attribute hook (about 420 instructions against about 40 for a module global;
#: session 37).
_EVALUATED = CycleResult.EVALUATED
_CONFLICT = CycleResult.CONFLICT


async def _first(*events: asyncio.Event) -> None:
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
