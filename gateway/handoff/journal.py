"""Where handoff state lives in the state store, and typed reads of it.

Key layout (one store per host; tenants are prefixes so a Dapr store can be shared):

===============================  ==================================================
``t/<tenant>/objects/<id>``       the object's record (ACTIVE, FROZEN or MOVED)
``t/<tenant>/fence/<id>``         highest epoch of the object ever staged here in this
                                  tenant (the fencing token)
``t/<tenant>/held/<id>``          bytes charged to the tenant's quota for the object,
                                  while it is ACTIVE, FROZEN or STAGED here
``t/<tenant>/usage``              what the tenant holds: objects and bytes, less the
                                  ``released/`` entries not yet folded into it
``t/<tenant>/released/<random>``  bytes of one object the tenant stopped holding (a
                                  commit or an abort), folded in by the next charge
``journal/source/<migration>``    the source side's record of one migration
``journal/destination/<mig.>``    the destination side's record, with the staged copy
``fence/<object id>``             (before tenancy: a fence for every tenant; no longer
                                  read or written — see docs/tenancy.md)
``nonce/<hex>``                   nonces of transfers accepted here, until they expire
``open/source|destination/<mig>`` migrations not settled yet (what recovery looks at)
===============================  ==================================================

Everything keyed by an object id is under its tenant's prefix: an object is named by
(tenant, object id) on a host, so one tenant's object can never fence, count against
or overwrite another tenant's object with the same id. (Migration ids and nonces are
chosen at random by the source; events and Dapr job names carry the tenant.)

Writes are not made here: each protocol step builds its own transaction so that all of
a step's keys change together or not at all. The ``put_*`` helpers below only build
operations for those transactions.
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

from gateway import wire
from gateway._lru import IdleLru
from gateway._slots import builder
from gateway.errors import ConcurrencyError, NotFoundError
from gateway.handoff.records import TRANSFER_DROPPED_STEPS, DestinationRecord, SourceRecord
from gateway.lineage import digest
from gateway.model import GovernedObject
from gateway.stores import Delete, Expect, Item, Operation, Put, PutEntries, StateStore
from gateway.tenancy import Usage

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Versioned(Generic[T]):
    """A value and the ETag it was read with (the precondition for writing it back)."""

    value: T
    etag: str


def object_key(tenant: str, object_id: str) -> str:
    return f"t/{tenant}/objects/{object_id}"


def objects_prefix(tenant: str) -> str:
    return f"t/{tenant}/objects/"


def source_key(migration_id: str) -> str:
    return f"journal/source/{migration_id}"


def destination_key(migration_id: str) -> str:
    return f"journal/destination/{migration_id}"


SOURCE_PREFIX = "journal/source/"
DESTINATION_PREFIX = "journal/destination/"
#: Markers of migrations not yet settled, written and removed in the same transactions
#: as the journal steps, so recovery reads only what is open, not all history.
OPEN_SOURCE_PREFIX = "open/source/"
OPEN_DESTINATION_PREFIX = "open/destination/"


def open_source_key(migration_id: str) -> str:
    return OPEN_SOURCE_PREFIX + migration_id


def open_destination_key(migration_id: str) -> str:
    return OPEN_DESTINATION_PREFIX + migration_id


NONCE_PREFIX = "nonce/"


def fence_key(tenant: str, object_id: str) -> str:
    return f"t/{tenant}/fence/{object_id}"


def held_key(tenant: str, object_id: str) -> str:
    return f"t/{tenant}/held/{object_id}"


def usage_key(tenant: str) -> str:
    return f"t/{tenant}/usage"


def released_prefix(tenant: str) -> str:
    return f"t/{tenant}/released/"


#: Releases folded into a tenant's counter by one charge (bounds its transaction).
MAX_FOLDED_RELEASES = 64


@dataclass(frozen=True, slots=True)
class TenantUsage:
    """A tenant's usage counter as read (with its ETag), and the releases since."""

    counter: Versioned[Usage] | None
    released: tuple[tuple[str, str, int], ...]  #: (key, etag, bytes) of each release

    @property
    def value(self) -> Usage:
        usage = self.counter.value if self.counter else Usage()
        for _key, _etag, size in self.released:
            usage = usage.minus(size)
        return usage

    def fold(
        self, tenant: str, *, adding: int | None = None, adding_all: Sequence[int] = ()
    ) -> list[Operation]:
        """Operations writing the counter with (up to :data:`MAX_FOLDED_RELEASES`)
        releases folded in, and one object of ``adding`` bytes added (and one more for
        each size in ``adding_all``: several stages sharing one write); they fail if the
        counter or a folded release changed since this was read."""
        folded = self.released[:MAX_FOLDED_RELEASES]
        counter = self.counter.value if self.counter else Usage()
        for _key, _etag, size in folded:
            counter = counter.minus(size)
        if adding is not None:
            counter = counter.plus(adding)
        for size in adding_all:
            counter = counter.plus(size)
        return [
            Put(
                key=usage_key(tenant),
                value=counter.encode(),
                etag=self.counter.etag if self.counter else Expect.ABSENT,
            ),
            *(Delete(key=key, etag=etag) for key, etag, _size in folded),
        ]


def nonce_key(nonce: bytes) -> str:
    return f"{NONCE_PREFIX}{nonce.hex()}"


#: Records carrying fewer entries are written whole, as one row. A young record of a few
#: KB costs the writer more as a head and entry rows (two more statements a group, six
#: columns bound: +55 % of the writer's instructions a cycle at 4-7 entries) and its
#: reads would leave the event loop's thread for a reader's: measured in session 38, a
#: migration of such objects (benchmark P2) cost its source 18 % more CPU. Past a few
#: dozen entries (P5's records, compacted at 128 to 32) rows cost the writer a fifth less.
SPLIT_MIN_ENTRIES = 16


def put_object(tenant: str, obj: GovernedObject, etag: str | Expect) -> Put:
    """The op writing ``obj``'s record in ``tenant`` if ``etag`` holds: with its lineage's
    entries told apart (:class:`~gateway.stores.PutEntries`), so that the embedded store
    writes the record's head and only the entries it does not hold yet (a cycle: one
    or two of about 430 bytes, in a record of 16-40 KB). Every read still returns the
    whole record."""
    key = object_key(tenant, obj.object_id)
    if len(obj.lineage.entries) < SPLIT_MIN_ENTRIES:
        return _put(key, wire.encode_object(obj), etag)
    value, at, ends, ids = wire.encode_object_entries(obj)  # ends: one per entry, never empty here
    return _put_entries(key, value, etag, at, ends, ids)


#: ``Put(key=..., value=..., etag=...)`` by position: every committed cycle writes its
#: object through :func:`put_object` (gateway/_slots.py).
_put = builder(Put, "key", "value", "etag")
_put_entries = builder(PutEntries, "key", "value", "etag", "entries_at", "entry_ends", "entry_ids")


def settled_form(record: SourceRecord) -> SourceRecord:
    """``record`` as stored: once COMMITTED (or DONE, or ABORTED) it never sends its
    transfer again, so the envelope (which carries the object's whole lineage) is dropped
    and only what later steps read is kept: the transfer's digest (receipts, status
    answers) and epoch (results). Done inside the op that writes the step, so the
    slimming commits with the step change or not at all. (COMMITTED records kept the
    envelope until DONE before: a second copy of the lineage written at the commit and
    decoded again to settle.)"""
    if record.step not in TRANSFER_DROPPED_STEPS or not record.transfer:
        return record
    if record.transfer_digest and record.epoch:  # kept beside it since the freeze
        return replace(record, transfer=b"")
    payload = wire.decode_envelope(record.transfer).payload
    return replace(
        record,
        transfer=b"",
        transfer_digest=record.transfer_digest or digest(payload),
        epoch=record.epoch or wire.transfer_epoch(payload),
    )


def put_source(record: SourceRecord, etag: str | Expect) -> Put:
    """The op writing the source side's ``record`` if ``etag`` holds (slimmed once
    settled, see :func:`settled_form`)."""
    return _put_settled(settled_form(record), etag)


def _put_settled(record: SourceRecord, etag: str | Expect) -> Put:
    """:func:`put_source` of a ``record`` already in its :func:`settled_form`."""
    return _put(source_key(record.migration_id), wire.encode_source_record(record), etag)


def put_destination(record: DestinationRecord, etag: str | Expect) -> Put:
    """The op writing the destination side's ``record`` if ``etag`` holds."""
    return Put(
        key=destination_key(record.migration_id),
        value=wire.encode_destination_record(record),
        etag=etag,
    )


def encode_counter(value: int) -> bytes:
    return struct.pack(">Q", value)


def decode_counter(raw: bytes) -> int:
    (value,) = struct.unpack(">Q", raw)
    return int(value)


#: Decoded records a journal remembers (objects, journal records), the encoded bytes
#: they may add up to, and the largest encoded size it remembers one of. A migration
#: reads back, within milliseconds, the record it just wrote or read; a cycle reads the
#: object its previous cycle wrote. Decoding one (protobuf, then a JSON document per
#: lineage entry) cost more than anything else on both paths. (A stored object's entries
#: are now decoded when first read, gateway.lineage.LineageEntry.stored: a cycle reads
#: none, so a miss of the object memo costs the protobuf parse and the object's fields.) A decoded object takes
#: about 2.3 times its encoded size in memory, so the cache stays under about 14 MiB; a
#: host cycling more objects than it holds (LRU, visited in turn) gains nothing on
#: cycles, but migrations still hit.
DECODED_CACHE_ENTRIES = 4096
#: Journal records are reread only while their migration runs (objects have their own
#: memo, _Objects): 4 MiB holds the source and destination records of 8 migrations in
#: flight at the largest size remembered. Measured under the soak: 85 % hits at 2 MiB
#: as at 16 MiB, and 20-27 MiB less RSS per host (docs/benchmarks.md, "RSS under the soak").
DECODED_CACHE_BYTES = 4 << 20
DECODED_CACHE_MAX_BYTES = 256 << 10


class _Decoded:
    """A bounded memo of ``decode(raw)``, keyed by the exact bytes (and the decoder).

    Keyed by content, not by store key or ETag: a hit returns what decoding those very
    bytes returned before (every decoder here is a pure function of its input and
    returns immutable values), so no write, reload or other process can make it stale.
    Per journal, i.e. per host: hosts sharing a process (tests, bench) share nothing.
    """

    def __init__(
        self, entries: int = DECODED_CACHE_ENTRIES, total_bytes: int = DECODED_CACHE_BYTES
    ) -> None:
        self._entries = entries
        self._total_bytes = total_bytes
        self._bytes = 0
        self._values: OrderedDict[tuple[object, bytes], object] = OrderedDict()

    def get(self, decode: Callable[[bytes], T], raw: bytes) -> T:
        if len(raw) > DECODED_CACHE_MAX_BYTES:
            return decode(raw)
        key = (decode, raw)
        try:
            value = self._values[key]
        except KeyError:
            value = decode(raw)
            self.remember(decode, raw, value)
            return value
        self._values.move_to_end(key)
        return value  # type: ignore[return-value]

    def remember(self, decode: Callable[[bytes], T], raw: bytes, value: T) -> None:
        """Record that ``decode(raw)`` is ``value`` (an encoder's input and output)."""
        if len(raw) > DECODED_CACHE_MAX_BYTES:
            return
        key = (decode, raw)
        if key not in self._values:
            self._bytes += len(raw)
        self._values[key] = value
        self._values.move_to_end(key)
        while len(self._values) > self._entries or self._bytes > self._total_bytes:
            (_decoder, evicted), _value = self._values.popitem(last=False)
            self._bytes -= len(evicted)


#: Object records read per store call by :meth:`Journal.object_records`.
RECORDS_PAGE = 500

#: The objects a journal remembers by store key (see :class:`_Objects`): the encoded
#: bytes they may add up to, the largest one remembered, and how long a remembered
#: object must have gone unused before a new one may take its place in a full memo.
#: An object held takes about 2.6 times its encoded bytes (an object remembered from
#: its write holds no copy of them), so 64 MiB stays under about 165 MiB, mostly the
#: same objects as the cycle runner's memo (gateway.runtime.cycle.HELD_BYTES); this is
#: the one memo of objects (cycles and migrations share it).
OBJECT_MEMO_BYTES = 64 << 20
OBJECT_MEMO_MAX_BYTES = DECODED_CACHE_MAX_BYTES
OBJECT_MEMO_IDLE_SECONDS = 60.0


class _Objects:
    """Decoded objects by store key, each with the exact bytes it was decoded from (or
    encoded to): a read of that key is served from here only when the store returned
    exactly those bytes (a memcmp; decoding is a pure function of the bytes and encoding
    is exact, so a hit is what decoding would give, whoever wrote the bytes and whether
    or not a write of them committed).

    An object remembered from its encoding (:meth:`remember_encoded`: every write of it,
    each cycle's included) is held without those bytes: they are
    :func:`wire.encode_object` of the object, a pure function of an immutable value,
    and the object's log keeps the parts that encoding is joined from, so a read
    compares the bytes it found with the object encoded again (a join, not a decode),
    exactly as with the bytes kept; a read that finds them keeps them for the next one.
    Holding them cost a quarter of a cycled object's memory (a P5 object: about 5.6 of
    23 KB) for a copy of what its log already holds; an object a host cycles is written
    again before it is read again.

    Bounded by bytes. Least recently used first, but a full memo evicts an entry only if
    it has not been used for :data:`OBJECT_MEMO_IDLE_SECONDS`; otherwise the newcomer is
    not kept. A host cycling more objects than the memo holds visits them in turn, and
    plain LRU would then evict each object just before its next use (no hit at all);
    this way the objects held keep hitting and only the rest are decoded."""

    def __init__(
        self,
        total_bytes: int = OBJECT_MEMO_BYTES,
        *,
        idle_seconds: float = OBJECT_MEMO_IDLE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        #: key -> (bytes, object), weighed by the bytes; None for the bytes of an object
        #: remembered from its encoding (they are ``wire.encode_object(object)``)
        self._held: IdleLru[str, tuple[bytes | None, GovernedObject]] = IdleLru(
            total_bytes, idle_seconds=idle_seconds, clock=clock
        )

    def get(self, key: str, raw: bytes, entry_ids: bytes = b"") -> GovernedObject:
        """The object stored under ``key`` as ``raw`` (``entry_ids``: the ids the store
        keeps for its entries, :attr:`gateway.stores.Item.entry_ids`)."""
        # A lookup of a key held counts as its use, whatever bytes it finds: other bytes
        # are decoded and remembered in its place (a use too).
        held = self._held.get(key)
        if held is not None:
            kept, obj = held
            if kept is None:
                if wire.encode_object(obj) == raw:
                    # Read, perhaps again before its next write (a migration's steps):
                    # the next read compares these bytes, as for an object decoded.
                    self._held.put(key, (raw, obj), len(raw))
                    return obj
            elif kept == raw:
                return obj
        obj = wire.decode_object(raw, entry_ids=entry_ids)
        self.remember(key, raw, obj)
        return obj

    def remember(self, key: str, raw: bytes, obj: GovernedObject) -> None:
        """``raw`` (stored, or about to be, under ``key``) decodes to ``obj``."""
        if len(raw) > OBJECT_MEMO_MAX_BYTES:
            self._held.forget(key)
            return
        self._held.put(key, (raw, obj), len(raw))

    def remember_encoded(self, key: str, raw: bytes, obj: GovernedObject) -> None:
        """``raw`` is ``wire.encode_object(obj)``, stored (or about to be) under ``key``:
        remembered without the bytes (see the class)."""
        if len(raw) > OBJECT_MEMO_MAX_BYTES:
            self._held.forget(key)
            return
        self._held.put(key, (None, obj), len(raw))


class Journal:
    """Typed reads over the store; each returns the value with its ETag, or ``None``."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._charging: dict[str, asyncio.Lock] = {}
        self._decoded = _Decoded()
        self._objects = _Objects()
        #: Each tenant's usage counter as this journal last wrote it, under the ETag
        #: the store returned (see :meth:`wrote_usage`); taken by the next :meth:`usage`.
        self._counters: dict[str, Versioned[Usage]] = {}

    def charging(self, tenant: str) -> asyncio.Lock:
        """Held around reading a tenant's usage and writing a charge: charges in one
        process then never race each other on the counter (only charges from other
        processes sharing the store can, and those are retried)."""
        return self._charging.setdefault(tenant, asyncio.Lock())

    async def _load(self, key: str, decode: Callable[[bytes], T]) -> Versioned[T] | None:
        item = await self.store.get(key)
        return self.decoded(decode, item)

    def decoded(self, decode: Callable[[bytes], T], item: Item | None) -> Versioned[T] | None:
        """An item the caller read itself (several keys in one read), decoded through
        this journal's memo, as the typed reads here return it."""
        return None if item is None else Versioned(self._decoded.get(decode, item.value), item.etag)

    # The operations a step writes, built here rather than by the module functions below
    # when the journal is at hand: the journal then knows what the written bytes decode to
    # and the step's next read of them (the same migration or cycle, moments later) costs
    # no decode. Encoding is exact (wire round-trips every field), see _Decoded.

    def put_object(self, tenant: str, obj: GovernedObject, etag: str | Expect) -> Put:
        put = put_object(tenant, obj, etag)
        self._objects.remember_encoded(put.key, put.value, obj)
        return put

    def put_source(self, record: SourceRecord, etag: str | Expect) -> Put:
        record = settled_form(record)
        put = _put_settled(record, etag)
        self._decoded.remember(wire.decode_source_record, put.value, record)
        return put

    def put_destination(self, record: DestinationRecord, etag: str | Expect) -> Put:
        put = put_destination(record, etag)
        self._decoded.remember(wire.decode_destination_record, put.value, record)
        return put

    async def object(self, tenant: str, object_id: str) -> Versioned[GovernedObject] | None:
        key = object_key(tenant, object_id)
        item = await self.store.get(key)
        if item is None:
            return None
        return Versioned(self._objects.get(key, item.value, item.entry_ids), item.etag)

    def decoded_object(self, key: str, item: Item | None) -> Versioned[GovernedObject] | None:
        """The object item under ``key`` the caller read itself (several keys in one
        read), decoded through this journal's memo of objects (not the content memo of
        records, which would hold a second copy of it)."""
        if item is None:
            return None
        return Versioned(self._objects.get(key, item.value, item.entry_ids), item.etag)

    def decode_object(self, key: str, raw: bytes, entry_ids: bytes = b"") -> GovernedObject:
        """The object stored under ``key`` as ``raw``, read by the caller itself (a batch
        read), decoded through this journal's memo of objects; ``entry_ids``: the item's
        (:attr:`gateway.stores.Item.entry_ids`), so that writing the object back hashes
        only the entries appended since."""
        return self._objects.get(key, raw, entry_ids)

    async def require_object(
        self, tenant: str, object_id: str, *, host: str
    ) -> Versioned[GovernedObject]:
        """Like :meth:`object`, but a missing object is a :class:`NotFoundError`."""
        loaded = await self.object(tenant, object_id)
        if loaded is None:
            raise NotFoundError(
                f"no object {object_id} in tenant {tenant} on {host}",
                hint="list objects with `gateway object list`",
            )
        return loaded

    async def object_and_held(
        self, tenant: str, object_id: str, *, host: str
    ) -> tuple[Versioned[GovernedObject], Versioned[int] | None]:
        """:meth:`require_object` and the object's quota charge (its ``held/`` entry, as
        :meth:`release` reads it), in one read: one snapshot."""
        keys = object_key(tenant, object_id), held_key(tenant, object_id)
        found = await self.store.get_many(keys)
        loaded = self.decoded_object(keys[0], found.get(keys[0]))
        if loaded is None:
            raise NotFoundError(
                f"no object {object_id} in tenant {tenant} on {host}",
                hint="list objects with `gateway object list`",
            )
        return loaded, self.decoded(decode_counter, found.get(keys[1]))

    async def source(self, migration_id: str) -> Versioned[SourceRecord] | None:
        return await self._load(source_key(migration_id), wire.decode_source_record)

    async def destination(self, migration_id: str) -> Versioned[DestinationRecord] | None:
        return await self._load(destination_key(migration_id), wire.decode_destination_record)

    async def fence(self, tenant: str, object_id: str) -> Versioned[int] | None:
        return await self._load(fence_key(tenant, object_id), decode_counter)

    async def held(self, tenant: str, object_id: str) -> bool:
        """Whether ``object_id`` is counted against ``tenant`` (ACTIVE, FROZEN or STAGED)."""
        return await self.store.get(held_key(tenant, object_id)) is not None

    async def usage(self, tenant: str) -> TenantUsage:
        """What ``tenant`` holds now: its counter, less the releases not yet folded in.

        The counter is not read when this journal wrote it last (:meth:`wrote_usage`):
        that counter is taken instead, once, so any other write of it in this process
        (which goes through here for its ETag) reads first. Another process may still
        have written it since: the counter's write is conditional on the ETag, so it then
        fails as any lost race does, and the caller's retry reads it."""
        counter = self._counters.pop(tenant, None)
        if counter is None:
            counter = await self._load(usage_key(tenant), Usage.decode)
        keys = await self.store.list(released_prefix(tenant))
        # Most charges find no release to fold (every stage of a host objects seldom
        # leave): no second call then.
        items = await self.store.get_many(keys) if keys else {}
        released = tuple(
            (k, items[k].etag, decode_counter(items[k].value)) for k in keys if k in items
        )
        return TenantUsage(counter=counter, released=released)

    def wrote_usage(
        self, tenant: str, operations: Sequence[Operation], written: dict[str, str] | None
    ) -> None:
        """After ``operations`` (holding a :meth:`TenantUsage.fold` of ``tenant``)
        committed with the ETags ``written`` (``None``: the store did not say them), under
        :meth:`charging`: remember the counter they wrote, for the next :meth:`usage`. A
        tenant's stages are charged one batch at a time, and each batch read the counter
        its predecessor had just written (a read on the event loop per batch)."""
        key = usage_key(tenant)
        etag = (written or {}).get(key)
        if etag is None:
            return
        for op in operations:
            if isinstance(op, Put) and op.key == key:
                self._counters[tenant] = Versioned(Usage.decode(op.value), etag)
                return

    async def charge(
        self, tenant: str, object_id: str, size: int, *, check: Callable[[Usage], None]
    ) -> list[Operation]:
        """Operations counting ``object_id`` (``size`` bytes) as held by ``tenant``.

        ``check`` sees the usage before and raises to refuse. The operations fail (the
        whole transaction does) if the object is already held in the tenant or if the
        counter changed since it was read here: a quota is never overshot by a race.
        Releases recorded since are folded into the counter on the way (a bounded number
        per transaction; the rest still count as released).
        """
        usage = await self.usage(tenant)
        check(usage.value)
        return [
            Put(key=held_key(tenant, object_id), value=encode_counter(size), etag=Expect.ABSENT),
            *usage.fold(tenant, adding=size),
        ]

    async def fold_releases(self, tenant: str) -> int:
        """Fold up to :data:`MAX_FOLDED_RELEASES` releases into ``tenant``'s counter, so
        they do not pile up in a tenant that objects leave and few arrive in. Returns how
        many were folded; a lost race folds nothing (the next pass, or charge, will)."""
        # Under the tenant's lock, as every charge in this process: the counter this
        # journal remembers (wrote_usage) is then the one in the store, unless another
        # process wrote it.
        async with self.charging(tenant):
            usage = await self.usage(tenant)
            if not usage.released:
                if usage.counter is not None:
                    self._counters[tenant] = usage.counter  # still the current one
                return 0
            operations = usage.fold(tenant)
            try:
                written = await self.store.transact(operations)
            except ConcurrencyError:
                return 0
            self.wrote_usage(tenant, operations, written)
        return min(len(usage.released), MAX_FOLDED_RELEASES)

    async def release(self, tenant: str, object_id: str) -> list[Operation]:
        """Operations that stop counting ``object_id`` against ``tenant`` (none if it was
        not counted, e.g. created by a version without quotas).

        A release does not touch the tenant's counter: it leaves a marker that the next
        charge folds in. So a commit or an abort never waits behind arrivals and creations
        in the same tenant, and never fails because of them.
        """
        held = await self._load(held_key(tenant, object_id), decode_counter)
        return self.release_held(tenant, object_id, held)

    def release_held(
        self, tenant: str, object_id: str, held: Versioned[int] | None
    ) -> list[Operation]:
        """:meth:`release` with the object's ``held/`` entry as the caller read it."""
        if held is None:
            return []
        return [
            Delete(key=held_key(tenant, object_id), etag=held.etag),
            Put(
                # Any key no other release takes: its own random 128 bits (the marker
                # is written only if absent, so a clash fails the commit, never merges).
                key=f"{released_prefix(tenant)}{os.urandom(16).hex()}",
                value=encode_counter(held.value),
                etag=Expect.ABSENT,
            ),
        ]

    async def objects(self, tenant: str) -> list[GovernedObject]:
        keys = await self.store.list(objects_prefix(tenant))
        items = await self.store.get_many(keys)
        return [
            self._objects.get(k, items[k].value, items[k].entry_ids) for k in keys if k in items
        ]

    async def object_records(self, tenant: str) -> AsyncGenerator[tuple[str, bytes], None]:
        """(object id, stored bytes) of every object record of ``tenant``, read
        :data:`RECORDS_PAGE` at a time and not decoded: for a pass over every object
        that needs only a field or two of each (``wire.decode_head``). A pass that may
        stop early closes it (``contextlib.aclosing``)."""
        prefix = objects_prefix(tenant)
        keys = await self.store.list(prefix)
        for start in range(0, len(keys), RECORDS_PAGE):
            items = await self.store.get_many(keys[start : start + RECORDS_PAGE])
            for key, item in items.items():
                yield key.removeprefix(prefix), item.value
