"""Where handoff state lives in the state store, and typed reads of it.

Key layout (one store per host; tenants are prefixes so a Dapr store can be shared):

===============================  ==================================================
``t/<tenant>/objects/<id>``       the object's record (ACTIVE, FROZEN or MOVED)
``journal/source/<migration>``    the source side's record of one migration
``journal/destination/<mig.>``    the destination side's record, with the staged copy
``fence/<object id>``             highest epoch ever staged here (the fencing token)
``nonce/<hex>``                   nonces of transfers accepted here, until they expire
``open/source|destination/<mig>`` migrations not settled yet (what recovery looks at)
===============================  ==================================================

Writes are not made here: each protocol step builds its own transaction so that all of
a step's keys change together or not at all. The ``put_*`` helpers below only build
operations for those transactions.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from gateway import wire
from gateway.errors import NotFoundError
from gateway.handoff.records import DestinationRecord, SourceRecord
from gateway.model import GovernedObject
from gateway.stores import Expect, Put, StateStore

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


def fence_key(object_id: str) -> str:
    return f"fence/{object_id}"


def nonce_key(nonce: bytes) -> str:
    return f"{NONCE_PREFIX}{nonce.hex()}"


def put_object(tenant: str, obj: GovernedObject, etag: str | Expect) -> Put:
    """The op writing ``obj``'s record in ``tenant`` if ``etag`` holds."""
    return Put(key=object_key(tenant, obj.object_id), value=wire.encode_object(obj), etag=etag)


def put_source(record: SourceRecord, etag: str | Expect) -> Put:
    """The op writing the source side's ``record`` if ``etag`` holds."""
    return Put(
        key=source_key(record.migration_id),
        value=wire.encode_source_record(record),
        etag=etag,
    )


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


class Journal:
    """Typed reads over the store; each returns the value with its ETag, or ``None``."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    async def _load(self, key: str, decode: Callable[[bytes], T]) -> Versioned[T] | None:
        item = await self.store.get(key)
        return None if item is None else Versioned(decode(item.value), item.etag)

    async def object(self, tenant: str, object_id: str) -> Versioned[GovernedObject] | None:
        return await self._load(object_key(tenant, object_id), wire.decode_object)

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

    async def source(self, migration_id: str) -> Versioned[SourceRecord] | None:
        return await self._load(source_key(migration_id), wire.decode_source_record)

    async def destination(self, migration_id: str) -> Versioned[DestinationRecord] | None:
        return await self._load(destination_key(migration_id), wire.decode_destination_record)

    async def fence(self, object_id: str) -> Versioned[int] | None:
        return await self._load(fence_key(object_id), decode_counter)

    async def objects(self, tenant: str) -> list[GovernedObject]:
        keys = await self.store.list(objects_prefix(tenant))
        items = await self.store.get_many(keys)
        return [wire.decode_object(items[k].value) for k in keys if k in items]
