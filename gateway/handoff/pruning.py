"""Pruning: a host's store holds what lives here, plus a bounded window of history.

What a migration leaves behind, and when it stops mattering (the rule, also in
docs/storage.md):

* **Settled journal records** (``journal/source/<m>`` DONE or ABORTED,
  ``journal/destination/<m>`` ACTIVATED or ABORTED) answer *retries* of their migration:
  a source whose Commit reply was lost re-sends it until it gets the activation receipt
  that the destination's record keeps; a destination still holding a copy asks the
  source's record for its decision. They are deleted once settled for longer than
  ``handoff.settled_retention_seconds`` (never less than :func:`minimum_retention`,
  about eight days, which is also the default). *Replays* do not need them: a replayed Prepare is refused
  by its nonce (``nonce/…``, kept until the transfer expires) and by the epoch fence,
  whatever the journal still holds; a source asked about a migration it no longer
  remembers answers ABORTED without writing anything (presumed abort), which is right for
  every migration that was not committed, and a committed one is only ever asked about
  while its destination holds it STAGED, which the source's record outlives (it settles
  DONE only once the destination activated, or once the destination signed that it no
  longer knows the migration, see below).
* **A source away past the retention.** If a Commit's reply was lost and its source
  comes back only after the destination pruned the ACTIVATED record, the destination
  answers the re-sent Commit with a signed ``UnknownMigrationAnswer`` (nothing is
  written for it). The source settles DONE on it, keeping the signed answer in place of
  the activation receipt, only if it is signed by the destination, names exactly this
  migration, source and destination, was issued after the commit, and the commit is
  at least :func:`earliest_forgotten` old on the source's own clock: no honest
  destination prunes a record of a migration earlier, and a destination still holding
  it STAGED never answers so (STAGED records are never pruned). Earlier, unsigned or
  unverifiable, it is logged, the record stays COMMITTED (the object is the
  destination's either way: the source's copy is a MOVED tombstone since the commit)
  and recovery asks again with a growing pause (gateway.handoff.recovery).
* **Fences** (``t/<tenant>/fence/<id>``, the highest epoch staged here) refuse a stale
  Prepare. A fence is kept as long as the host keeps any record of the object (live,
  frozen, staged, or its MOVED tombstone): a dishonest former holder can sign a *new*
  transfer of an old epoch at any time, so no expiry of messages bounds what such a fence
  must refuse. A fence of an object this host holds no record of (every arrival of it
  was aborted) is deleted together with the last settled record of such an arrival:
  after the retention every transfer that raised it has long expired (retention exceeds
  the longest transfer lifetime plus twice the clock skew), so no *replayed* message can
  meet it any more, and against a freshly signed stale copy it protects no more than
  any host that never held the object (DESIGN.md §6: that is what a custody home is for).
  Fences under the pre-tenancy ``fence/<id>`` keys are no longer read and are deleted.
* **MOVED tombstones** (``t/<tenant>/objects/<id>`` of an object that left) keep what
  this host saw of the object: the fence above, and the history an arriving copy must
  extend (a diverging one is refused as a fork). A tombstone matters while a stale copy
  elsewhere could come back. A *replayed* transfer cannot once the retention passed
  (every transfer of an epoch up to this departure has expired). A *freshly signed*
  stale copy from a dishonest former holder can, at any time; what stops it then is a
  custody home, which grants each epoch once (DESIGN.md §6). So a tombstone is deleted,
  with its fence, in the pass that deletes the settled (DONE) record of the departure
  that made it, only if the object's root grant names a custody home, the tombstone still
  names that departure (the object has not been back since), nothing of it is staged
  here and its fence was not raised since by a (later, aborted) arrival.
  Without a home the tombstone is kept: it is then this host's only way to refuse
  a stale copy, and tombstones are bounded by the objects that passed through, not by
  migrations.
  A tombstone whose departure has no journal record any more (pruned before this rule,
  or kept then because a condition did not hold) is found by a scan of the object
  records, at most once per :data:`TOMBSTONE_SCAN_INTERVAL`, and deleted by the same
  rule once its departure (its last entry, the freeze) is older than the retention.
  With ``tombstone_guard`` set (the host's archive retention), a tombstone goes only
  once its object's archive segments are gone: they can be found only through it.
* **Staged chunks** (on SQLite: the blob file, ADR 0009) of an aborted stage are
  deleted by the abort; of an upload that never staged, by
  ``Destination.collect_uploads`` once its transfer expired (which also sweeps ``.part``
  files left by a crash mid-write); a source's once the destination activated.
  Nothing to do here.
* **Outbox events** (``events/…``) that were delivered, published or given up on (no
  ``pending/`` marker left) are deleted once older than the same retention.

Every delete is conditional on the ETag read, so a record that changed meanwhile (a
retry settled it again, a new arrival raised the fence) is left for the next pass. A
pass costs what the retention window holds, not the host's whole history, plus (hourly
at most) one read of the object records for the tombstone scan. A served host runs a
pass every tenth of the retention (:attr:`Pruner.interval`), so a settled record is
read about eleven times over its life and deleted between one and 1.1 retentions after
it settled; a pass yields the event loop between batches for a multiple of the time
each batch took (:data:`PACE`), so it never holds migrations up for long.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from google.protobuf.message import DecodeError

from gateway import wire
from gateway._decode import load_json
from gateway._time import parse_time
from gateway.credentials import root_home
from gateway.errors import ConcurrencyError, GatewayError, StoreError
from gateway.handoff.context import HostContext
from gateway.handoff.journal import (
    DESTINATION_PREFIX,
    OPEN_DESTINATION_PREFIX,
    OPEN_SOURCE_PREFIX,
    SOURCE_PREFIX,
    decode_counter,
    fence_key,
    held_key,
    object_key,
    open_source_key,
    source_key,
)
from gateway.handoff.records import DestinationStep, SourceRecord, SourceStep
from gateway.limits import MAX_OFFLINE_LIFETIME
from gateway.model import LifecycleState
from gateway.stores import Delete, Operation
from gateway.v1 import object_pb2

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: Keys read per store call while pruning (bounds one call's memory and a transaction).
PRUNE_BATCH = 200
#: After each batch a pass waits this many times as long as the batch took (so it takes
#: at most a quarter of the event loop while it runs), and at most MAX_PAUSE_SECONDS.
PACE = 3.0
MAX_PAUSE_SECONDS = 0.5
#: Pre-tenancy fences, no longer read or written by anything (gateway.handoff.journal).
LEGACY_FENCE_PREFIX = "fence/"
EVENTS_PREFIX = "events/"
PENDING_PREFIX = "pending/"


#: Between two scans of the object records for tombstones left without a journal record.
TOMBSTONE_SCAN_INTERVAL = timedelta(hours=1)
_OBJECT_KEY = re.compile(r"t/[^/]+/objects/")
_MOVED = object_pb2.LIFECYCLE_STATE_MOVED


def minimum_retention(clock_skew: timedelta) -> timedelta:
    """The shortest retention that keeps the fence rule exact: longer than any transfer
    can live (an offline transfer file, the longest-lived kind), plus twice the clock
    skew, plus a day of margin for a host that was down."""
    return MAX_OFFLINE_LIFETIME + 2 * clock_skew + timedelta(days=1)


def earliest_forgotten(clock_skew: timedelta) -> timedelta:
    """How long after a source committed a migration its destination can, at the
    earliest, have pruned the settled record of it: its retention is never less than
    :func:`minimum_retention` with no skew, counted from its activation, which follows
    the commit; less twice the clock skew, for two clocks up to that far apart. A source
    takes a destination's signed "unknown migration" as settling the migration no
    earlier (gateway.handoff.source)."""
    return minimum_retention(timedelta(0)) - 2 * clock_skew


@dataclass(slots=True)
class PruneReport:
    source_records: int = 0
    destination_records: int = 0
    fences: int = 0
    events: int = 0
    tombstones: int = 0  #: MOVED tombstones deleted, each with its fence (not in ``fences``)

    @property
    def total(self) -> int:
        return (
            self.source_records
            + self.destination_records
            + self.fences
            + self.events
            + self.tombstones
        )


class Pruner:
    """Deletes settled history older than ``retention`` (see the module docstring)."""

    def __init__(self, context: HostContext, *, retention: timedelta | None = None) -> None:
        self.ctx = context
        floor = minimum_retention(context.timing.clock_skew)
        self.retention = floor if retention is None else max(retention, floor)
        self._next: datetime | None = None
        self._dry_run = False  #: of the pass under way: count, delete nothing
        self._pacing = True  #: of the pass under way: see _paced
        self.tombstones = 0  #: deleted by the pass under way
        self._next_scan: datetime | None = None  #: of tombstones without a journal record
        #: Asked before a tombstone is deleted (the host plugs in the archive pruning:
        #: a tombstone is the only way to find its object's archive segments, so with
        #: an archive retention it goes only after them); None lets every one go.
        self.tombstone_guard: Callable[[str, str], Awaitable[bool]] | None = None

    async def maybe_run(self) -> PruneReport | None:
        """One pass if the last was a tenth of the retention ago (:attr:`interval`):
        pruning never needs to be prompt, only to keep up. A pass reads every settled
        record of the retention window, so its cost per settled record is the number of
        passes over its life: about 11 at one pass per tenth of the retention, 11,520 at
        the old one per minute (eight days), which made a served host's pruning CPU grow
        with how long it had been running (4-5 % of its samples in the last minutes of
        the 10-minute soak, bench/README.md session 25)."""
        now = self.ctx.clock.now()
        if self._next is not None and now < self._next:
            return None
        self._next = now + self.interval
        return await self.run_once()

    @property
    def interval(self) -> timedelta:
        """Between two passes of :meth:`maybe_run`: a record goes between one and 1.1
        retentions after it settled."""
        return self.retention / 10

    async def run_once(self, *, dry_run: bool = False, paced: bool = True) -> PruneReport:
        """One pass now. ``dry_run``: count what would be deleted and delete nothing;
        ``paced``: leave the event loop to others between batches (see :func:`_paced`;
        ``gateway sweep``, which serves nothing, does not)."""
        self._dry_run, self._pacing = dry_run, paced
        report = PruneReport()
        cutoff = self.ctx.clock.now() - self.retention
        store = self.ctx.journal.store
        open_sources = {
            k.removeprefix(OPEN_SOURCE_PREFIX) for k in await store.list(OPEN_SOURCE_PREFIX)
        }
        open_destinations = {
            k.removeprefix(OPEN_DESTINATION_PREFIX)
            for k in await store.list(OPEN_DESTINATION_PREFIX)
        }
        self.tombstones = 0
        report.source_records = await self._prune_sources(cutoff, open_sources)
        report.tombstones = self.tombstones + await self._revisit_tombstones(cutoff)
        records, fences = await self._prune_destinations(cutoff, open_destinations)
        report.destination_records, report.fences = records, fences
        report.fences += await self._delete_all(await store.list(LEGACY_FENCE_PREFIX))
        report.events = await self._prune_events(cutoff)
        if report.total:
            log.info(
                "pruned %d source and %d destination records, %d fences, %d events, %d tombstones",
                report.source_records,
                report.destination_records,
                report.fences,
                report.events,
                report.tombstones,
            )
        return report

    async def _batches(self, prefix: str, skip: set[str]) -> list[list[str]]:
        keys = [
            k for k in await self.ctx.journal.store.list(prefix) if k[len(prefix) :] not in skip
        ]
        return [keys[i : i + PRUNE_BATCH] for i in range(0, len(keys), PRUNE_BATCH)]

    async def _prune_sources(self, cutoff: datetime, open_ids: set[str]) -> int:
        store = self.ctx.journal.store
        pruned = 0
        tombstones: list[SourceRecord] = []
        async for batch in self._pace(await self._batches(SOURCE_PREFIX, open_ids)):
            deletes: list[Operation] = []
            for key, item in (await store.get_many(batch)).items():
                try:
                    record = wire.decode_source_record(item.value)
                except GatewayError as exc:
                    log.warning("not pruning unreadable %s: %s", key, exc)
                    continue
                if record.step in (SourceStep.DONE, SourceStep.ABORTED) and (
                    record.updated_at < cutoff
                ):
                    deletes.append(Delete(key=key, etag=item.etag))
                    if record.step is SourceStep.DONE:
                        tombstones.append(record)
            pruned += await self._apply(deletes)
        for record in tombstones:
            self.tombstones += await self._apply_one(
                await self._homed_tombstone(record.tenant, record.object_id, record.migration_id)
            )
        return pruned

    async def _revisit_tombstones(self, cutoff: datetime) -> int:
        """MOVED tombstones whose departure left no journal record (pruned before
        tombstones were pruned with it, or kept then because a condition did not hold),
        departed before ``cutoff``: the same rule, from the tombstone alone. A scan of
        the object records, so at most once per :data:`TOMBSTONE_SCAN_INTERVAL`."""
        now = self.ctx.clock.now()
        if self._next_scan is not None and now < self._next_scan:
            return 0
        self._next_scan = now + TOMBSTONE_SCAN_INTERVAL
        store = self.ctx.journal.store
        keys = [k for k in await store.list("t/") if _OBJECT_KEY.match(k)]
        deleted = 0
        async for start in self._pace(range(0, len(keys), PRUNE_BATCH)):
            batch = await store.get_many(keys[start : start + PRUNE_BATCH])
            departed: list[tuple[str, str, str]] = []
            for key, item in batch.items():
                try:
                    # The state first (cheap): most records live here.
                    if object_pb2.StoredObject.FromString(item.value).state != _MOVED:
                        continue
                    tombstone = wire.decode_object(item.value)
                except (DecodeError, GatewayError):
                    continue
                entries = tombstone.lineage.entries
                if not tombstone.migration_id or not entries or entries[-1].time >= cutoff:
                    continue
                departed.append((key.split("/", 2)[1], tombstone.object_id, tombstone.migration_id))
            journaled = await store.get_many(
                [k for _t, _o, m in departed for k in (source_key(m), open_source_key(m))]
            )
            for tenant, object_id, migration_id in departed:
                if (
                    source_key(migration_id) in journaled
                    or open_source_key(migration_id) in journaled
                ):
                    continue  # its settled record is still there: that pass decides
                deleted += await self._apply_one(
                    await self._homed_tombstone(tenant, object_id, migration_id)
                )
        return deleted

    async def _homed_tombstone(
        self, tenant: str, object_id: str, migration_id: str
    ) -> list[Operation]:
        """The MOVED tombstone a settled departure left, with its fence, as conditional
        deletes, if they can no longer matter (the rule in the module docstring): the
        object has not been back since (the tombstone names this migration), nothing of
        it is staged here, and its root grant names a custody home."""
        store = self.ctx.journal.store
        # Asked first: what it does (prune the segments) may rewrite the tombstone, whose
        # ETag the deletes below are conditional on.
        if self.tombstone_guard is not None:
            if self._dry_run:
                # The guard prunes the object's archive first: a dry run asks nothing of
                # it, and counts no tombstone behind it.
                return []
            if not await self.tombstone_guard(tenant, object_id):
                return []
        keys = [object_key(tenant, object_id), held_key(tenant, object_id)]
        found = await store.get_many([*keys, fence_key(tenant, object_id)])
        item = found.get(keys[0])
        if item is None or keys[1] in found:
            return []
        try:
            tombstone = wire.decode_object(item.value)
        except GatewayError as exc:
            log.warning("not pruning the unreadable record of %s: %s", object_id, exc)
            return []
        if (
            tombstone.state is not LifecycleState.MOVED
            or tombstone.migration_id != migration_id
            or not root_home(tombstone.grants)
        ):
            return []
        operations: list[Operation] = [Delete(key=item.key, etag=item.etag)]
        fence = found.get(fence_key(tenant, object_id))
        if fence is not None:
            try:
                raised_since = decode_counter(fence.value) > tombstone.epoch
            except GatewayError:
                raised_since = True
            if raised_since:
                # A later arrival of it (aborted) raised the fence: its transfer may not
                # have expired yet. Keep both; nothing to gain from being clever here.
                return []
            operations.append(Delete(key=fence.key, etag=fence.etag))
        return operations

    async def _prune_destinations(self, cutoff: datetime, open_ids: set[str]) -> tuple[int, int]:
        store = self.ctx.journal.store
        records = fences = 0
        async for batch in self._pace(await self._batches(DESTINATION_PREFIX, open_ids)):
            for key, item in (await store.get_many(batch)).items():
                try:
                    record = wire.decode_destination_record(item.value)
                except GatewayError as exc:
                    log.warning("not pruning unreadable %s: %s", key, exc)
                    continue
                if record.step is DestinationStep.STAGED or record.updated_at >= cutoff:
                    continue
                operations: list[Operation] = [Delete(key=key, etag=item.etag)]
                if record.step is DestinationStep.ABORTED:
                    operations += await self._orphan_fence(record.tenant, record.object_id)
                applied = await self._apply_one(operations)
                records += applied
                fences += applied * (len(operations) - 1)
        return records, fences

    async def _orphan_fence(self, tenant: str, object_id: str) -> list[Operation]:
        """The fence of an object this host holds no record of, as a conditional delete."""
        store = self.ctx.journal.store
        found = await store.get_many(
            [
                object_key(tenant, object_id),
                held_key(tenant, object_id),
                fence_key(tenant, object_id),
            ]
        )
        fence = found.get(fence_key(tenant, object_id))
        if fence is None or object_key(tenant, object_id) in found:
            return []
        if held_key(tenant, object_id) in found:
            return []  # staged here by another migration right now
        return [Delete(key=fence.key, etag=fence.etag)]

    async def _prune_events(self, cutoff: datetime) -> int:
        store = self.ctx.journal.store
        pruned = 0
        pending = {k.removeprefix(PENDING_PREFIX) for k in await store.list(PENDING_PREFIX)}
        async for batch in self._pace(await self._batches(EVENTS_PREFIX, pending)):
            deletes: list[Operation] = []
            for key, item in (await store.get_many(batch)).items():
                settled = _settled_before(item.value)
                if settled is not None and settled < cutoff:
                    deletes.append(Delete(key=key, etag=item.etag))
            pruned += await self._apply(deletes)
        return pruned

    async def _delete_all(self, keys: Sequence[str]) -> int:
        store = self.ctx.journal.store
        deleted = 0
        for start in range(0, len(keys), PRUNE_BATCH):
            found = await store.get_many(keys[start : start + PRUNE_BATCH])
            deleted += await self._apply([Delete(key=k, etag=i.etag) for k, i in found.items()])
        return deleted

    def _pace(self, batches: Iterable[_T]) -> AsyncIterator[_T]:
        return _paced(batches, PACE if self._pacing else 0.0)

    async def _apply(self, deletes: list[Operation]) -> int:
        """Deletes in one transaction; on a lost race, one by one (each may have moved)."""
        if not deletes:
            return 0
        if self._dry_run:
            return len(deletes)
        try:
            await self.ctx.journal.store.transact(deletes)
            return len(deletes)
        except ConcurrencyError:
            return sum([await self._apply_one([op]) for op in deletes])

    async def _apply_one(self, operations: list[Operation]) -> int:
        """1 if ``operations`` were applied (or, in a dry run, would be tried), 0 if there
        were none or they lost a race."""
        if not operations:
            return 0
        if self._dry_run:
            return 1
        try:
            await self.ctx.journal.store.transact(operations)
        except ConcurrencyError:
            return 0
        return 1


async def _paced(batches: Iterable[_T], pace: float = PACE) -> AsyncIterator[_T]:
    """``batches``, with the event loop left to others after each one for ``pace``
    times as long as the batch's work took (at most :data:`MAX_PAUSE_SECONDS`): a pass
    over a large retention window is spread out instead of holding migrations up."""
    for batch in batches:
        began = time.monotonic()
        yield batch
        if pace:
            await asyncio.sleep(min((time.monotonic() - began) * pace, MAX_PAUSE_SECONDS))


def _settled_before(raw: bytes) -> datetime | None:
    """When an outbox event that is no longer pending was made; None for a pending or
    unreadable one (left alone). Read from the two fields of the runtime's event record
    (gateway.runtime.outbox.Event: ``status``, ``created_at``) without importing the
    runtime, which sits above this layer."""
    try:
        document = load_json(raw, error=StoreError, what="an outbox event")
        if not isinstance(document, dict) or document.get("status", "pending") == "pending":
            return None
        return parse_time(str(document["created_at"]))
    except (GatewayError, KeyError, ValueError):
        return None
