"""Large object data, kept as chunks in the state store and moved as a stream.

An object's data is either inline (small: it travels inside the transfer envelope) or a
blob: chunks under a host-local key prefix, with the SHA-256 and size of the whole. The
transfer envelope signs that digest and size; the bytes follow as a stream and are hashed
as they arrive, so memory stays bounded by a few chunks whatever the object's size.

Invariants:

* A blob is written under a prefix nobody else uses (a fresh one per upload), so a bad
  stream can never damage data already stored; if the stream is short, long or does not
  hash to the expected digest, every chunk written is deleted and nothing else changed.
* A blob is immutable once written; a reference names its digest, size and location.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from gateway.errors import TransferStreamError
from gateway.stores import Delete, Expect, Put, StateStore

CHUNK_BYTES = 1 << 20
#: Chunks written per store transaction (one fsync per batch, not per chunk).
BATCH = 8
MAX_BLOB_BYTES = 64 << 30
#: Keys deleted per store transaction.
DELETE_BATCH = 64


def _chunk_key(location: str, index: int) -> str:
    return f"{location}{index:08d}"


@dataclass(frozen=True, slots=True, kw_only=True)
class BlobRef:
    digest: bytes  #: SHA-256 of the whole content
    size: int
    location: str = ""  #: host-local key prefix of the chunks ("" in transit)
    chunks: int = 0

    def chunk_key(self, index: int) -> str:
        return _chunk_key(self.location, index)


async def write_blob(
    store: StateStore,
    location: str,
    source: AsyncIterator[bytes],
    *,
    expected_digest: bytes | None = None,
    expected_size: int | None = None,
    max_size: int = MAX_BLOB_BYTES,
) -> BlobRef:
    """Store a stream as a blob at ``location``, re-chunked to :data:`CHUNK_BYTES`.

    With ``expected_digest``/``expected_size`` (a signed transfer's), the stream must
    match them exactly; otherwise whatever was written is removed and
    :class:`TransferStreamError` says what was wrong.
    """
    hasher = hashlib.sha256()
    size = 0
    written = 0
    buffer = bytearray()
    batch: list[Put] = []
    # The announced size is signed, but it is the sender's word: cap it too.
    limit = min(expected_size, max_size) if expected_size is not None else max_size

    async def flush(final: bool) -> None:
        nonlocal written
        while len(buffer) >= CHUNK_BYTES or (final and buffer):
            piece = bytes(buffer[:CHUNK_BYTES])
            del buffer[:CHUNK_BYTES]
            batch.append(
                Put(key=_chunk_key(location, written + len(batch)), value=piece, etag=Expect.ABSENT)
            )
            if len(batch) >= BATCH:
                await store.transact(batch)
                written += len(batch)
                batch.clear()
        if final and batch:
            await store.transact(batch)
            written += len(batch)
            batch.clear()

    try:
        async for part in source:
            size += len(part)
            if size > limit:
                raise TransferStreamError(
                    f"object data stream is longer than the {limit} bytes announced",
                    hint="the sender and its signed transfer disagree; nothing was stored",
                )
            hasher.update(part)
            buffer.extend(part)
            await flush(final=False)
        await flush(final=True)
        if expected_size is not None and size != expected_size:
            raise TransferStreamError(
                f"object data stream ended after {size} of {expected_size} bytes (truncated)",
                hint="migrate again; nothing was stored",
            )
        digest = hasher.digest()
        if expected_digest is not None and digest != expected_digest:
            raise TransferStreamError(
                "object data does not hash to the digest its signed transfer names",
                hint="the data was altered on the way; nothing was stored",
            )
    except BaseException:
        await delete_chunks(store, location, written)
        raise
    return BlobRef(digest=digest, size=size, location=location, chunks=written)


async def read_blob(store: StateStore, ref: BlobRef) -> AsyncIterator[bytes]:
    """The chunks of a blob in order; one chunk in memory at a time."""
    for index in range(ref.chunks):
        item = await store.get(ref.chunk_key(index))
        if item is None:
            raise TransferStreamError(
                f"blob chunk {index} of {ref.location} is missing from the store"
            )
        yield item.value


async def delete_keys(store: StateStore, keys: Sequence[str]) -> None:
    """Delete ``keys`` (whatever their ETags), :data:`DELETE_BATCH` per transaction."""
    for start in range(0, len(keys), DELETE_BATCH):
        await store.transact(
            [Delete(key=k, etag=Expect.ANY) for k in keys[start : start + DELETE_BATCH]]
        )


async def delete_chunks(store: StateStore, location: str, count: int) -> None:
    await delete_keys(store, [_chunk_key(location, i) for i in range(count)])


async def delete_blob(store: StateStore, ref: BlobRef) -> None:
    await delete_chunks(store, ref.location, ref.chunks)
