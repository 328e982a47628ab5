"""Lineage compaction run by the host: repeats folded in the cycle, and the oldest entries
of an object moved to an archive when the host's policy says so (ADR 0007, docs/lineage.md).

Invariants:

* **Only ACTIVE objects held here are compacted**, by this host, under its envelope
  (lineage) key; the object is re-read and the compacted value is stored conditional on
  the ETag read, so a cycle, an arrival or a departure that wrote first wins and the
  compaction is simply dropped.
* **Archive first.** The segment is durable (and listed in the object's archive index)
  before the compacted object is stored. A crash in between, or a writer that came first,
  leaves at worst a spare segment for entries the object still carries. A segment's key
  names its first entry *and its length*, so two compactions racing on the same object
  (a cycle and a message wake, or two Dapr replicas) never overwrite each other's segment:
  the one whose object commits has its segment intact, and
  :func:`gateway.archive.verify_archived` picks the chain that rebuilds the signed root,
  past any spare.
* **Compaction never fails a cycle.** It runs after the cycle committed; an error is
  logged and the object stays as the cycle left it (it is tried again after the next
  cycle).
* **Where segments go.** By default the host's own store, under
  ``t/<tenant>/archive/<sha256(object id)[:32]>/`` (unlisted keys, gateway.stores.UNLISTED:
  no listing index is written on Dapr; an ``index`` record per object names the segments
  held here), so a Dapr host needs no filesystem. With ``lineage.compaction.archive_dir``
  they are files (gateway.archive.ArchiveDir) instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Protocol

from gateway._crash import crash_point
from gateway.archive import (
    MAX_SEGMENTS,
    ArchiveDir,
    CompactionPolicy,
    CustodySegment,
    Segment,
    compact_custody,
    compaction_cut,
    fold_repeats,
    read_custody,
    read_segments,
)
from gateway.config import Config
from gateway.errors import ConcurrencyError, GatewayError, LineageError, StoreError
from gateway.handoff.context import HostContext
from gateway.lineage import Entries
from gateway.model import GovernedObject, LifecycleState
from gateway.stores import Expect, Put, StateStore

log = logging.getLogger(__name__)

#: Attempts at updating an object's archive index that another writer keeps changing.
_INDEX_ATTEMPTS = 5
#: Segments read per store round trip (each may be hundreds of KB).
_READ_BATCH = 16


def archive_prefix(tenant: str, object_id: str) -> str:
    """Where an object's segments are kept in a store (unlisted: read by exact key)."""
    return f"t/{tenant}/archive/{hashlib.sha256(object_id.encode()).hexdigest()[:32]}/"


def segment_key(tenant: str, object_id: str, start: int, count: int) -> str:
    return f"{archive_prefix(tenant, object_id)}{start:020d}+{count}"


def custody_key(tenant: str, object_id: str, first: int, count: int) -> str:
    """Where archived handoffs ``[first, first + count)`` are kept (ADR 0010 step 2)."""
    return f"{archive_prefix(tenant, object_id)}custody-{first:020d}+{count}"


def custody_index_key(tenant: str, object_id: str) -> str:
    return f"{archive_prefix(tenant, object_id)}custody-index"


def index_key(tenant: str, object_id: str) -> str:
    return f"{archive_prefix(tenant, object_id)}index"


class Archive(Protocol):
    """Where a host keeps the segments it archived."""

    async def write(self, tenant: str, segment: Segment) -> None:
        """Store ``segment`` durably, beside any other segment of the object."""

    async def segments(self, tenant: str, object_id: str) -> list[Segment]:
        """The segments of ``object_id`` held here, oldest first."""

    async def write_custody(self, tenant: str, segment: CustodySegment) -> None:
        """Store archived handoffs durably (ADR 0010 step 2), beside the entry segments."""

    async def custody_segments(self, tenant: str, object_id: str) -> list[CustodySegment]:
        """The custody segments of ``object_id`` held here, oldest first."""


class StoreArchive:
    """Segments in the host's own state store, with an index record per object."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    async def held(self, tenant: str, object_id: str) -> tuple[list[tuple[int, int]], str | Expect]:
        """(start, count) of each segment held here, and the index's ETag."""
        return await self._listed(index_key(tenant, object_id), object_id)

    async def held_custody(
        self, tenant: str, object_id: str
    ) -> tuple[list[tuple[int, int]], str | Expect]:
        """(first hop, count) of each custody segment held here, and its index's ETag."""
        return await self._listed(custody_index_key(tenant, object_id), object_id)

    async def _listed(self, key: str, object_id: str) -> tuple[list[tuple[int, int]], str | Expect]:
        item = await self.store.get(key)
        if item is None:
            return [], Expect.ABSENT
        try:
            listed = json.loads(item.value)
        except ValueError as exc:
            raise StoreError(f"the archive index of {object_id} is damaged") from exc
        if (
            not isinstance(listed, list)
            or len(listed) > MAX_SEGMENTS
            or not all(
                isinstance(pair, list)
                and len(pair) == 2
                and all(type(n) is int and n >= 0 for n in pair)
                for pair in listed
            )
        ):
            raise StoreError(
                f"the archive index of {object_id} is damaged or names more than "
                f"{MAX_SEGMENTS} segments"
            )
        return [(start, count) for start, count in listed], item.etag

    async def write(self, tenant: str, segment: Segment) -> None:
        pair = (segment.start, len(segment.entries))
        await self._write_listed(
            segment.object_id,
            kind="archive",
            key=segment_key(tenant, segment.object_id, *pair),
            index=index_key(tenant, segment.object_id),
            pair=pair,
            value=segment.encode(),
            hint="raise lineage.compaction.max_entries so each compaction archives more",
        )

    async def write_custody(self, tenant: str, segment: CustodySegment) -> None:
        # Keyed by first hop and count, like entry segments: a racing compaction's
        # spare never overwrites the one whose object committed. Listed in an index of
        # its own (store keys are unlisted), updated in the same transaction.
        pair = (segment.first, len(segment.departures))
        await self._write_listed(
            segment.object_id,
            kind="custody",
            key=custody_key(tenant, segment.object_id, *pair),
            index=custody_index_key(tenant, segment.object_id),
            pair=pair,
            value=segment.encode(),
            hint="raise lineage.custody_keep so each compaction archives more",
        )

    async def _write_listed(
        self,
        object_id: str,
        *,
        kind: str,
        key: str,
        index: str,
        pair: tuple[int, int],
        value: bytes,
        hint: str,
    ) -> None:
        """Put one segment and list it in its index, in one transaction."""
        for _attempt in range(_INDEX_ATTEMPTS):
            pairs, etag = await self._listed(index, object_id)
            listed = sorted({*pairs, pair})
            if len(listed) > MAX_SEGMENTS:
                raise LineageError(
                    f"{object_id} has {MAX_SEGMENTS} {kind} segments on this host already",
                    hint=hint,
                )
            try:
                await self.store.transact(
                    [
                        # The same (start, count) again is the same entries again (a retry).
                        Put(key=key, value=value, etag=Expect.ANY),
                        Put(key=index, value=json.dumps(listed).encode(), etag=etag),
                    ]
                )
                return
            except ConcurrencyError:
                continue  # another compaction of the same object updated the index first
        raise StoreError(f"the {kind} index of {object_id} kept changing under this write")

    async def custody_segments(self, tenant: str, object_id: str) -> list[CustodySegment]:
        pairs, _etag = await self.held_custody(tenant, object_id)
        keys = [custody_key(tenant, object_id, first, count) for first, count in pairs]
        found = await self.store.get_many(keys) if keys else {}
        return sorted(
            (CustodySegment.decode(item.value) for item in found.values()),
            key=lambda s: (s.first, len(s.departures)),
        )

    async def segments(self, tenant: str, object_id: str) -> list[Segment]:
        pairs, _etag = await self.held(tenant, object_id)
        keys = [segment_key(tenant, object_id, start, count) for start, count in pairs]
        segments: list[Segment] = []
        for batch in range(0, len(keys), _READ_BATCH):
            found = await self.store.get_many(keys[batch : batch + _READ_BATCH])
            segments.extend(Segment.decode(item.value) for item in found.values())
        return sorted(segments, key=lambda s: (s.start, len(s.entries)))


class DirArchive:
    """Segments as files under a directory (``lineage.compaction.archive_dir``)."""

    def __init__(self, root: Path) -> None:
        self.files = ArchiveDir(root)

    async def write(self, tenant: str, segment: Segment) -> None:
        try:
            await asyncio.to_thread(self.files.write, tenant, segment)
        except OSError as exc:
            raise StoreError(
                f"cannot write an archive segment under {self.files.root}: {exc.strerror}",
                hint="check lineage.compaction.archive_dir exists and is writable",
            ) from exc

    async def write_custody(self, tenant: str, segment: CustodySegment) -> None:
        try:
            await asyncio.to_thread(self.files.write_custody, tenant, segment)
        except OSError as exc:
            raise StoreError(
                f"cannot write a custody segment under {self.files.root}: {exc.strerror}",
                hint="check lineage.compaction.archive_dir exists and is writable",
            ) from exc

    async def segments(self, tenant: str, object_id: str) -> list[Segment]:
        folder = self.files.directory(tenant, object_id)
        if not folder.is_dir():
            return []
        return await asyncio.to_thread(read_segments, folder)

    async def custody_segments(self, tenant: str, object_id: str) -> list[CustodySegment]:
        folder = self.files.directory(tenant, object_id)
        if not folder.is_dir():
            return []
        return await asyncio.to_thread(read_custody, folder)


def compaction_for(config: Config, context: HostContext) -> Compaction:
    """The host's compaction as ``lineage:`` in its config says (gateway/config.py)."""
    settings = config.lineage
    directory = settings.archive_dir
    return Compaction(
        context,
        policy=settings.compaction,
        archive=DirArchive(directory) if directory is not None else None,
        fold=settings.fold_repeats,
    )


class Compaction:
    """Folds repeats in a cycle and compacts an object after a cycle when it is due."""

    def __init__(
        self,
        context: HostContext,
        *,
        policy: CompactionPolicy | None = None,
        archive: Archive | None = None,
        fold: bool = True,
    ) -> None:
        self.ctx = context
        self.policy = policy if policy is not None else CompactionPolicy()
        self.archive: Archive = (
            archive if archive is not None else StoreArchive(context.journal.store)
        )
        self.fold = fold

    def folded(self, before: GovernedObject, after: GovernedObject) -> GovernedObject:
        """``after`` (one cycle on ``before``) with that cycle counted into the identical
        cycle before it, if folding is on and it is one (gateway.archive.fold_repeats)."""
        if not self.fold:
            return after
        # What Lineage.repeated refuses first, asked before fold_repeats slices out the
        # cycle's entries: most cycles differ from the one before in their last entry
        # (its summary, or the data's digest after a write), and then nothing folds.
        # The two last entries read off the lineages' logs: Entries' __len__ and
        # __getitem__ are Python calls, four of them on every cycle (about 3,000
        # instructions; session 41).
        carried, entries = before.lineage.entries, after.lineage.entries
        if type(carried) is not Entries or type(entries) is not Entries:
            return fold_repeats(before, after)  # never: Lineage's __post_init__ makes Entries
        count, total = carried._count, entries._count
        if (
            count
            and total > count
            and not carried._log.entries[count - 1].same_event(entries._log.entries[total - 1])
        ):
            return after
        return fold_repeats(before, after)

    def due(self, obj: GovernedObject, stored: bytes, *, now: datetime) -> bool:
        """Whether ``obj``, as a cycle just committed it (``stored``), is due to be
        compacted (what :meth:`after_cycle` asks first)."""
        return self.policy.due(obj.lineage, now=now, stored_bytes=len(stored))

    async def after_arrival(self, tenant: str, obj: GovernedObject) -> bool:
        """Compact ``obj`` as it just became active here by an arrival, if it is due.

        For an object that does not cycle here (no interval): compaction otherwise runs
        only after a cycle, a call or a message's wake, so an object that only moves
        carried every hop's entries and departure checkpoint (about 2.7 KB a hop) until
        it no longer fit an envelope. Its record's size is not known here, so the
        policy's bytes limit is left to the next cycle; its entries, age and carried
        handoffs (ADR 0010) are checked. Never raises: the arrival stays committed."""
        return await self.after_cycle(tenant, obj, stored_bytes=None, now=self.ctx.clock.now())

    async def after_cycle(
        self, tenant: str, obj: GovernedObject, *, stored_bytes: int | None, now: datetime
    ) -> bool:
        """Compact ``obj`` (as a cycle just committed it, ``stored_bytes`` long, or
        ``None`` if not known) if the policy says it is due. Never raises: a cycle that
        committed stays committed."""
        if not self.policy.due(obj.lineage, now=now, stored_bytes=stored_bytes):
            return False
        try:
            return await self.compact(tenant, obj.object_id, stored_bytes=stored_bytes)
        except GatewayError as exc:
            log.warning("lineage compaction of %s failed: %s", obj.object_id, exc)
            return False

    async def compact(
        self, tenant: str, object_id: str, *, stored_bytes: int | None = None
    ) -> bool:
        """Compact the object if it is ACTIVE here and due; False if it was not (or another
        writer came first). Raises GatewayError when the archive cannot be written."""
        ctx = self.ctx
        loaded = await ctx.journal.object(tenant, object_id)
        if loaded is None or loaded.value.state is not LifecycleState.ACTIVE:
            return False
        obj = loaded.value
        now = ctx.clock.now()
        if not self.policy.due(obj.lineage, now=now, stored_bytes=stored_bytes):
            return False
        keep = self.policy.keep(obj.lineage)
        if compaction_cut(obj.lineage, host=ctx.host, keep=keep) is None:
            return False  # only another host's stay is old enough to archive
        lineage, segment, custody = compact_custody(
            obj.lineage,
            object_id=object_id,
            host=ctx.host,
            at=now,
            signer=ctx.signer,
            keep=keep,
            custody_keep=self.policy.custody_keep,
        )
        await self.archive.write(tenant, segment)
        if custody is not None:
            # Archive first here too: the handoffs are durable before the object drops them.
            await self.archive.write_custody(tenant, custody)
        crash_point("compaction.after-archive")
        try:
            await ctx.journal.store.transact(
                [ctx.journal.put_object(tenant, replace(obj, lineage=lineage), loaded.etag)]
            )
        except ConcurrencyError:
            return False  # a cycle or a handoff wrote first; the segment is a spare
        log.info(
            "compacted %s: entries %d-%d archived, %d carried",
            object_id,
            segment.start,
            segment.start + len(segment.entries) - 1,
            len(lineage.entries),
        )
        return True
