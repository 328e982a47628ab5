"""Storage sweep: what no protocol step collects, found by what the store still names.

Two leftovers of long-lived hosts (docs/storage.md, the pruning rule and "Blob data"):

* **Orphan blob files** (ADR 0009). A record's delete and its file's unlink are two
  steps; a crash between them (crash points ``source.after-commit-journal``,
  ``destination.after-discard``) leaves a ``.blob`` that no record names.
  :func:`sweep_orphan_blobs` deletes a ``.blob`` file only if **no record names it and
  it is older than** :data:`ORPHAN_BLOB_AGE_S`:

  - *Named* means: an upload marker (``upload-open/…``: an upload in flight, whose stage
    has not committed), a destination journal record's staged copy, or an object record
    (any tenant, any state). References move only in that order (the stage transaction
    removes the marker and writes the record; activation moves the staged copy into the
    object record), and the sweep reads them in that order, *after* listing the files:
    a reference that moves while the sweep reads is seen at its old place or its new one,
    never at neither.
  - *The age guard* covers the one window with no record at all: an object create
    publishes its file, then commits the record that names it (gateway.host). It is far
    longer than that window and than any transfer may live (an upload's marker outlives
    its file's writes anyway), so a file being written or just written is never deleted.
  - ``.part`` files are not this sweep's: a write in progress owns one, and
    ``blobs.sweep_partial_files`` (recovery) removes those untouched for an hour.
  - Any record the sweep cannot read stops the whole pass (it might name a file):
    nothing is deleted rather than something in use.

* **Archive segments of objects that left** (docs/lineage.md, "Retention"). Segments in
  the host's store (``t/<tenant>/archive/…``: entry segments, and custody segments, the
  handoffs compaction archived under ADR 0010 step 2, each kind with its own index) of
  an object whose record here is a MOVED tombstone are deleted once the departure is
  older than ``lineage.compaction.archive_retention_seconds``; **unset (the default), nothing is
  ever pruned**, as before. Segments of an object that lives here (ACTIVE, FROZEN,
  STAGED) are its history and never pruned. Each delete is one transaction guarded by the
  tombstone's ETag (rewritten unchanged), so an object that comes back while its
  segments are being pruned keeps the rest (its arrival, had it raced the guard, is
  retried by the destination's commit loop as after any lost race). With
  ``archive_export_dir`` a segment is written there (fsynced) before it is deleted, and
  not deleted if that fails. Segments written to ``lineage.compaction.archive_dir`` are
  files the operator owns and are not touched. The handoff pruner asks
  :meth:`ArchivePruner.tombstone_may_go` before deleting a tombstone: it goes only once
  its object's segments are gone.

Runs at host start and then every :data:`SWEEP_INTERVAL_S` (``Host.recover``), before
the handoff pruner, so a departed object's segments are pruned before the tombstone that
names them can be (a tombstone is the only way to find them: archive keys are unlisted).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from google.protobuf.message import DecodeError

from gateway import wire
from gateway.archive import ArchiveDir, CustodySegment, Segment
from gateway.blobs import FILE_LOCATION, blob_directory, blob_file_name, fsync_directory
from gateway.errors import ConcurrencyError, GatewayError, StoreError
from gateway.handoff.context import HostContext
from gateway.handoff.destination import UPLOAD_MARKERS
from gateway.handoff.journal import DESTINATION_PREFIX, object_key
from gateway.model import GovernedObject, LifecycleState
from gateway.runtime.compaction import (
    StoreArchive,
    custody_index_key,
    custody_key,
    index_key,
    segment_key,
)
from gateway.stores import Delete, Expect, Operation, Put, StateStore
from gateway.v1 import journal_pb2, object_pb2

log = logging.getLogger(__name__)

#: A ``.blob`` file no record names is deleted only once it is this old: far longer than
#: an object create takes between publishing its file and committing its record, and
#: than any transfer may live (destination.MAX_TRANSFER_LIFETIME_S, 600 s).
ORPHAN_BLOB_AGE_S = 3600
#: Between two sweeps of one serving host (the first runs at start).
SWEEP_INTERVAL_S = 3600
#: Records read per store call while looking for references (bounds memory per call).
READ_BATCH = 200
#: Segments deleted per transaction when pruning an object's archive.
SEGMENT_DELETE_BATCH = 200

_OBJECT_KEY = re.compile(r"t/[^/]+/objects/")
_ANY = Expect.ANY


def _index_value(pairs: list[tuple[int, int]]) -> bytes:
    """An archive index naming ``pairs`` (the form StoreArchive writes)."""
    return json.dumps(sorted(pairs)).encode()


class _Unreadable(Exception):
    """A record the sweep cannot parse: it might name a file, so nothing is deleted."""


def _file_of(location: str) -> str | None:
    return blob_file_name(location) if location.startswith(FILE_LOCATION) else None


async def referenced_blob_files(store: StateStore) -> set[str]:
    """Names of the ``.blob`` files some record of ``store`` refers to (see the module
    docstring for the order, which is what makes the set complete)."""
    named: set[str] = set()
    for marker in await store.list(UPLOAD_MARKERS):
        named.add(blob_file_name(f"upload/{marker.removeprefix(UPLOAD_MARKERS)}/"))
    keys = await store.list(DESTINATION_PREFIX)
    for start in range(0, len(keys), READ_BATCH):
        for key, item in (await store.get_many(keys[start : start + READ_BATCH])).items():
            try:
                record = journal_pb2.DestinationRecord.FromString(item.value)
            except DecodeError as exc:
                raise _Unreadable(key) from exc
            if record.HasField("staged") and (name := _file_of(record.staged.blob.location)):
                named.add(name)
    # Every tenant's objects, configured or not: a tenant dropped from the config still
    # owns its files.
    keys = [k for k in await store.list("t/") if _OBJECT_KEY.match(k)]
    for start in range(0, len(keys), READ_BATCH):
        for key, item in (await store.get_many(keys[start : start + READ_BATCH])).items():
            try:
                stored = object_pb2.StoredObject.FromString(item.value)
            except DecodeError as exc:
                raise _Unreadable(key) from exc
            if name := _file_of(stored.blob.location):
                named.add(name)
    return named


def _blob_files(directory: Path) -> list[tuple[Path, float]]:
    found: list[tuple[Path, float]] = []
    for path in directory.glob("*.blob"):
        try:
            found.append((path, path.stat().st_mtime))
        except FileNotFoundError:
            continue  # deleted meanwhile by its owner
    return found


async def find_orphan_blobs(
    store: StateStore, *, older_than_s: float = ORPHAN_BLOB_AGE_S
) -> list[Path]:
    """The ``.blob`` files of ``store`` that no record names and that are older than
    ``older_than_s`` (none on a store without a blob directory). Deletes nothing.

    Raises :class:`StoreError` if a record that might name a file cannot be read."""
    directory = blob_directory(store)
    if directory is None or not await asyncio.to_thread(directory.is_dir):
        return []
    cutoff = time.time() - older_than_s
    # Files first, records after: a file published after this listing is not a candidate.
    candidates = [
        p for p, mtime in await asyncio.to_thread(_blob_files, directory) if mtime < cutoff
    ]
    if not candidates:
        return []
    try:
        named = await referenced_blob_files(store)
    except _Unreadable as exc:
        raise StoreError(
            f"the record {exc} is unreadable and might name a blob file, so no file is deleted",
            hint="look at that record (`gateway object show`, `gateway migration list`); "
            "the sweep deletes nothing while any record is unreadable",
        ) from exc
    return [p for p in candidates if p.name not in named]


def unlink_files(paths: list[Path]) -> list[Path]:
    """Unlink each of ``paths``; the ones this call removed (a file gone meanwhile is
    skipped)."""
    removed = []
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
    return removed


async def sweep_orphan_blobs(
    store: StateStore, *, older_than_s: float = ORPHAN_BLOB_AGE_S
) -> list[Path]:
    """Delete the ``.blob`` files of ``store`` that no record names and that are older
    than ``older_than_s``; returns the paths deleted (none on a store without a blob
    directory, or when a record could not be read: then it logs why)."""
    try:
        orphans = await find_orphan_blobs(store, older_than_s=older_than_s)
    except StoreError as exc:
        log.warning("blob sweep skipped: %s", exc)
        return []
    removed = await asyncio.to_thread(unlink_files, orphans)
    if removed:
        log.info("removed %d blob files no record names", len(removed))
    return removed


@dataclass(frozen=True, slots=True)
class _Kind:
    """One kind of record a departed object's archive holds here, listed in its own index:
    entry segments, or custody segments (ADR 0010 step 2). The pruner treats both alike."""

    index: Callable[[str, str], str]
    key: Callable[[str, str, int, int], str]
    held: Callable[[StoreArchive, str, str], Awaitable[tuple[list[tuple[int, int]], str | Expect]]]
    #: writes one stored segment as a file under an export directory
    export: Callable[[ArchiveDir, str, bytes], Path]


_KINDS = (
    _Kind(  # entry segments
        index_key,
        segment_key,
        StoreArchive.held,
        lambda files, tenant, raw: files.write(tenant, Segment.decode(raw)),
    ),
    _Kind(  # custody segments
        custody_index_key,
        custody_key,
        StoreArchive.held_custody,
        lambda files, tenant, raw: files.write_custody(tenant, CustodySegment.decode(raw)),
    ),
)


def departed_at(obj: GovernedObject) -> datetime | None:
    """When a MOVED tombstone's object left: the time of its last entry (the freeze of
    the departure, recorded by this host)."""
    entries = obj.lineage.entries
    return entries[-1].time if entries else None


@dataclass(frozen=True, slots=True)
class DueArchive:
    """A departed object whose archive segments here are past the retention."""

    tenant: str
    object_id: str
    departed_at: datetime
    segments: int


@dataclass(slots=True)
class ArchivePruner:
    """Prunes the store-held segments of departed objects past ``retention``; with
    ``export_dir``, each segment is first written there as a file (the layout
    ``gateway verify --archive`` reads: ``<dir>/<tenant>/<sha256(id)[:32]>/``), and a
    segment that cannot be written is not deleted."""

    ctx: HostContext
    retention: timedelta
    export_dir: Path | None = None

    async def tombstone_may_go(self, tenant: str, object_id: str) -> bool:
        """For the handoff pruner, before it deletes a tombstone: the tombstone is the
        only way to find the object's segments (archive keys are unlisted), so it may go
        only once they are pruned. Prunes them now if the retention has passed (only a
        MOVED tombstone's: :meth:`prune_object` checks)."""
        key = object_key(tenant, object_id)
        await self.prune_object(tenant, key, self.ctx.clock.now() - self.retention)
        archive = StoreArchive(self.ctx.journal.store)
        try:
            for kind in _KINDS:
                pairs, _etag = await kind.held(archive, tenant, object_id)
                if pairs:
                    return False
        except StoreError:
            return False
        return True

    async def _tombstones(self) -> AsyncIterator[tuple[str, str, bytes]]:
        """(tenant, key, stored bytes) of each MOVED record here, :data:`READ_BATCH` per
        read. A record that does not parse is skipped: it is not pruned."""
        store = self.ctx.journal.store
        keys = [k for k in await store.list("t/") if _OBJECT_KEY.match(k)]
        for start in range(0, len(keys), READ_BATCH):
            for key, item in (await store.get_many(keys[start : start + READ_BATCH])).items():
                try:
                    stored = object_pb2.StoredObject.FromString(item.value)
                except DecodeError:
                    continue
                if stored.state != object_pb2.LIFECYCLE_STATE_MOVED:
                    continue  # lives here (or is arriving): its segments are its history
                yield key.split("/", 2)[1], key, item.value

    async def run_once(self) -> int:
        """One pass over the tombstones here; returns how many segments were deleted."""
        cutoff = self.ctx.clock.now() - self.retention
        deleted = 0
        async for tenant, key, _value in self._tombstones():
            deleted += await self.prune_object(tenant, key, cutoff)
        return deleted

    async def due(self) -> list[DueArchive]:
        """What :meth:`run_once` would prune now, deleting nothing: each MOVED tombstone
        here that left before the retention and still names segments."""
        cutoff = self.ctx.clock.now() - self.retention
        archive = StoreArchive(self.ctx.journal.store)
        found = []
        async for tenant, _key, value in self._tombstones():
            try:
                tombstone = wire.decode_object(value)
            except GatewayError:
                continue  # as prune_object: a record it cannot read is not pruned
            when = departed_at(tombstone)
            if tombstone.state is not LifecycleState.MOVED or when is None or when >= cutoff:
                continue
            held = 0
            for kind in _KINDS:
                pairs, _etag = await kind.held(archive, tenant, tombstone.object_id)
                held += len(pairs)
            if held:
                found.append(DueArchive(tenant, tombstone.object_id, when, held))
        return found

    async def prune_object(self, tenant: str, key: str, cutoff: datetime) -> int:
        """Delete the segments of the tombstone at ``key`` if it left before ``cutoff``,
        :data:`SEGMENT_DELETE_BATCH` per transaction, each guarded by the tombstone's
        ETag, entry segments first, then custody segments; returns how many were deleted."""
        store = self.ctx.journal.store
        archive = StoreArchive(store)
        deleted = 0
        while True:
            item = await store.get(key)
            if item is None:
                return deleted
            try:
                tombstone = wire.decode_object(item.value)
            except GatewayError:
                return deleted
            when = departed_at(tombstone)
            if tombstone.state is not LifecycleState.MOVED or when is None or when >= cutoff:
                return deleted
            try:
                for kind in _KINDS:
                    pairs, index_etag = await kind.held(archive, tenant, tombstone.object_id)
                    if pairs:
                        break
            except StoreError as exc:
                log.warning("not pruning the archive of %s: %s", tombstone.object_id, exc)
                return deleted
            if not pairs:
                if deleted:
                    log.info(
                        "pruned the %d archive segments of %s (left %s)",
                        deleted,
                        tombstone.object_id,
                        when.isoformat(),
                    )
                return deleted
            batch, rest = pairs[:SEGMENT_DELETE_BATCH], pairs[SEGMENT_DELETE_BATCH:]
            if self.export_dir is not None and not await self._export(
                tenant, tombstone, kind, batch
            ):
                return deleted
            operations: list[Operation] = [
                # The guard: the same tombstone, unchanged since it was read. An object
                # that came back meanwhile owns these segments again.
                Put(key=key, value=item.value, etag=item.etag),
                *(
                    Delete(key=kind.key(tenant, tombstone.object_id, s, n), etag=_ANY)
                    for s, n in batch
                ),
            ]
            index = kind.index(tenant, tombstone.object_id)
            if rest:
                operations.append(Put(key=index, value=_index_value(rest), etag=index_etag))
            else:
                operations.append(Delete(key=index, etag=index_etag))
            try:
                await store.transact(operations)
            except ConcurrencyError:
                return deleted  # a compaction, an arrival or a pruner came first: next pass
            deleted += len(batch)

    async def _export(
        self, tenant: str, tombstone: GovernedObject, kind: _Kind, pairs: list[tuple[int, int]]
    ) -> bool:
        """Write the segments ``pairs`` of ``kind`` under :attr:`export_dir`; False if any
        could not be read or written (then nothing is deleted)."""
        assert self.export_dir is not None
        store = self.ctx.journal.store
        keys = [kind.key(tenant, tombstone.object_id, s, n) for s, n in pairs]
        found = await store.get_many(keys)
        files = ArchiveDir(self.export_dir)
        try:
            written = [found[k].value for k in keys if k in found]
            for raw in written:
                await asyncio.to_thread(kind.export, files, tenant, raw)
            if written:
                # The files' names too are durable before the store forgets the data.
                await asyncio.to_thread(
                    fsync_directory, files.directory(tenant, tombstone.object_id)
                )
        except (GatewayError, OSError) as exc:
            log.warning(
                "not pruning the archive of %s: exporting it to %s failed: %s",
                tombstone.object_id,
                self.export_dir,
                exc,
            )
            return False
        return True


class StorageSweep:
    """The sweep a serving host runs at start and every :data:`SWEEP_INTERVAL_S`: orphan
    blob files, then (if a retention is configured) departed objects' archive segments.
    Never raises a store or disk error: it is housekeeping, tried again next time."""

    def __init__(
        self,
        context: HostContext,
        *,
        archive_retention: timedelta | None = None,
        archive_export_dir: Path | None = None,
        interval_s: float = SWEEP_INTERVAL_S,
    ) -> None:
        self.ctx = context
        self.archives = (
            ArchivePruner(context, archive_retention, archive_export_dir)
            if archive_retention is not None
            else None
        )
        self.interval_s = interval_s
        self._next: float | None = None

    async def maybe_run(self) -> bool:
        """One sweep if none ran in this process for :attr:`interval_s`."""
        now = time.monotonic()
        if self._next is not None and now < self._next:
            return False
        self._next = now + self.interval_s
        await self.run_once()
        return True

    async def run_once(self) -> tuple[int, int]:
        """(blob files, archive segments) deleted."""
        files = segments = 0
        try:
            files = len(await sweep_orphan_blobs(self.ctx.journal.store))
        except (GatewayError, OSError) as exc:
            log.warning("blob sweep failed: %s", exc)
        if self.archives is not None:
            try:
                segments = await self.archives.run_once()
            except GatewayError as exc:
                log.warning("archive pruning failed: %s", exc)
        return files, segments
