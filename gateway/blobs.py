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
* **A stream is a pipeline with a bounded window.** Receiving, hashing and writing
  overlap: hashing runs on its own thread (in arrival order: one thread, FIFO), at most
  :data:`HASH_WINDOW` parts behind the network; batches are committed while the next
  ones arrive, at most :data:`WRITE_WINDOW` batches in flight. Reading a blob keeps
  :data:`READ_AHEAD` chunks in flight. Memory stays bounded by these windows (about
  ``WRITE_WINDOW * BATCH + HASH_WINDOW + READ_AHEAD`` chunks), never the object's size.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from gateway.errors import TransferStreamError
from gateway.stores import Delete, Expect, Item, Put, StateStore

CHUNK_BYTES = 1 << 20
#: Chunks written per store transaction (one fsync per batch, not per chunk). Four, not
#: eight: the destination's peak memory (profiled with bench_stream.py) rose 72-80 MiB
#: with 8, over the 64 MiB budget; an fsync per 4 MiB costs little against writing them.
BATCH = 4
MAX_BLOB_BYTES = 64 << 30
#: Keys deleted per store transaction.
DELETE_BATCH = 64
#: Batches being committed while the stream goes on.
WRITE_WINDOW = 2
#: Received parts waiting to be hashed.
HASH_WINDOW = 4
#: Chunks read ahead of the one being sent.
READ_AHEAD = 4

#: Hashing off the event loop (hashlib releases the GIL on large buffers), so the loop
#: keeps receiving while a part is hashed. ONE thread: its queue is first in, first
#: out, which is what keeps each stream's parts hashed in order; streams take turns.
_HASHER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="blob-hash")


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
    loop = asyncio.get_running_loop()
    hasher = hashlib.sha256()
    size = 0
    submitted = 0  #: chunks handed to the store (some perhaps still being committed)
    buffer = bytearray()
    batch: list[Put] = []
    writes: collections.deque[asyncio.Future[None]] = collections.deque()
    hashes: collections.deque[asyncio.Future[None]] = collections.deque()
    # The announced size is signed, but it is the sender's word: cap it too.
    limit = min(expected_size, max_size) if expected_size is not None else max_size

    def add(piece: bytes) -> None:
        batch.append(
            Put(key=_chunk_key(location, submitted + len(batch)), value=piece, etag=Expect.ABSENT)
        )

    async def commit(final: bool) -> None:
        nonlocal submitted
        while len(buffer) >= CHUNK_BYTES or (final and buffer):
            piece = bytes(buffer[:CHUNK_BYTES])
            del buffer[:CHUNK_BYTES]
            add(piece)
            if len(batch) >= BATCH:
                await submit()
        if final and batch:
            await submit()

    async def submit() -> None:
        nonlocal submitted
        while len(writes) >= WRITE_WINDOW:
            await writes.popleft()
        writes.append(asyncio.ensure_future(store.transact(tuple(batch))))
        submitted += len(batch)
        batch.clear()

    try:
        async for part in source:
            size += len(part)
            if size > limit:
                raise TransferStreamError(
                    f"object data stream is longer than the {limit} bytes announced",
                    hint="the sender and its signed transfer disagree; nothing was stored",
                )
            while len(hashes) >= HASH_WINDOW:
                await hashes.popleft()
            # In arrival order: the hashing executor has one thread, first in first out.
            hashes.append(loop.run_in_executor(_HASHER, hasher.update, part))
            if not buffer and len(part) == CHUNK_BYTES and isinstance(part, bytes):
                # A sender that sends whole chunks (ours does): stored as received,
                # without three copies through the re-chunking buffer.
                add(part)
                if len(batch) >= BATCH:
                    await submit()
                continue
            buffer.extend(part)
            await commit(final=False)
        await commit(final=True)
        while writes:
            await writes.popleft()
        while hashes:
            await hashes.popleft()
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
        # Let what is in flight finish first, so that no batch lands after the cleanup.
        await asyncio.gather(*writes, *hashes, return_exceptions=True)
        await delete_chunks(store, location, submitted)
        raise
    return BlobRef(digest=digest, size=size, location=location, chunks=submitted)


async def read_blob(store: StateStore, ref: BlobRef) -> AsyncIterator[bytes]:
    """The chunks of a blob in order, :data:`READ_AHEAD` chunks read ahead."""
    ahead: collections.deque[asyncio.Task[Item | None]] = collections.deque()
    following = 0
    try:
        for index in range(ref.chunks):
            while following < ref.chunks and len(ahead) < READ_AHEAD:
                ahead.append(asyncio.ensure_future(store.get(ref.chunk_key(following))))
                following += 1
            item = await ahead.popleft()
            if item is None:
                raise TransferStreamError(
                    f"blob chunk {index} of {ref.location} is missing from the store"
                )
            yield item.value
    finally:
        for task in ahead:
            task.cancel()
        await asyncio.gather(*ahead, return_exceptions=True)


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
