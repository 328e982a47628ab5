"""Large object data, kept as one file beside a SQLite store (or as chunks in a Dapr
state store), and moved as a stream.

An object's data is either inline (small: it travels inside the transfer envelope) or a
blob: a file, or chunks under a host-local key prefix, with the SHA-256 and size of the
whole. The
transfer envelope signs that digest and size; the bytes follow as a stream and are hashed
as they arrive, so memory stays bounded by a few chunks whatever the object's size.

Invariants:

* A blob is written under a prefix nobody else uses (a fresh one per upload), so a bad
  stream can never damage data already stored; if the stream is short, long or does not
  hash to the expected digest, every chunk written is deleted and nothing else changed.
* A blob is immutable once written; a reference names its digest, size and location.
* **On a store with a blob directory (SQLite), a blob is one file, not chunks** (ADR
  0009). Its location is ``file:`` + the usual prefix; the file is named by a digest of
  that prefix, so it has exactly one owner (the record naming it) and is deleted without
  reference counts. It is written as ``<name>.part``, hashed as it arrives, checked
  against the expected size (before each part is written) and digest, fsynced, linked
  to ``<name>.blob`` (never replacing one) and the directory fsynced, all *before* the
  ``BlobRef`` is returned: a transaction can only
  name a blob that is complete, verified and durable. A crash leaves at most a file no
  record names, found by the same markers and rules as orphaned chunks
  (:func:`delete_location`, :func:`sweep_partial_files`). A failed write removes only
  the names it created. Its pipeline: one thread hashes and writes each part in
  arrival order, at most :data:`FILE_WINDOW_BYTES` held;
  an ``fdatasync`` every :data:`SYNC_EVERY` bytes runs beside the stream; reads keep
  :data:`READ_AHEAD` chunks in flight (a stream to a peer reads into reused buffers:
  :func:`read_blob_views`). A blob file does not stay in the page cache
  (drop-behind, :func:`_drop_cached`): the writer lets go of a range only once an
  ``fdatasync`` that began after its writes returned, the reader only what its consumer
  was given. Stores without a directory (Dapr) keep chunks as below.
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
import contextlib
import functools
import hashlib
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

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


#: Location prefix of a blob kept as one file in the store's blob directory.
FILE_LOCATION = "file:"
#: Bytes received but not yet hashed and written to a blob file: the destination's
#: memory for a stream, whatever the sender's message size (at most the transport's
#: 32 MiB message cap: one part is always let through).
FILE_WINDOW_BYTES = 8 << 20
#: Message size of a blob streamed from a file. Measured with 4 MiB (bench_stream.py,
#: 256 MiB x 3): the gateway's rate did not move (92 MiB/s either way), the floor's fell,
#: and the destination's RSS rise went from 34 to 77-175 MiB (gRPC's buffers hold
#: whole messages): 1 MiB, like the chunks.
STREAM_PIECE_BYTES = CHUNK_BYTES
#: Bytes written between two background ``fdatasync`` calls: the disk works while the
#: stream goes on instead of all at the final fsync (the kernel's own writeback starts
#: only at 10 % of RAM dirty), and dirty pages stay bounded.
SYNC_EVERY = 32 << 20
#: Bytes a stream reads between two drops of the page cache pages behind it
#: (:func:`_drop_cached`): each drop is a system call, the pages it frees are reused for
#: the next reads.
DROP_BEHIND_BYTES = 8 << 20
#: A ``.part`` file untouched for this long belongs to no write in progress.
PARTIAL_FILE_AGE_S = 3600

#: Reads of blob files, off the event loop (``pread`` releases the GIL and names its
#: offset, so reads may finish in any order).
_FILE_IO = ThreadPoolExecutor(max_workers=2, thread_name_prefix="blob-file")
#: Background ``fdatasync``: never behind the writes it lets go on.
_SYNCER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="blob-sync")


def blob_directory(store: object) -> Path | None:
    """The store's directory for blob files, or ``None`` (chunks in the store)."""
    directory = getattr(store, "blob_directory", None)
    return directory if isinstance(directory, Path) else None


def _file_name(location: str) -> str:
    """A file name for a blob location: a digest, so that no peer-chosen part of a
    location (a migration id) ever becomes a path, and one location one name."""
    location = location.removeprefix(FILE_LOCATION)
    return hashlib.sha256(location.encode()).hexdigest()


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

    @property
    def in_file(self) -> bool:
        return self.location.startswith(FILE_LOCATION)


async def write_blob(
    store: StateStore,
    location: str,
    source: AsyncIterator[bytes | memoryview],
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
    directory = blob_directory(store)
    if directory is not None:
        return await _write_file(
            directory,
            location,
            source,
            expected_digest=expected_digest,
            expected_size=expected_size,
            max_size=max_size,
        )
    loop = asyncio.get_running_loop()
    hasher = hashlib.sha256()
    size = 0
    submitted = 0  #: chunks handed to the store (some perhaps still being committed)
    buffer = bytearray()
    batch: list[Put] = []
    writes: collections.deque[asyncio.Future[object]] = collections.deque()
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
        digest = _finished(hasher, size, expected_size, expected_digest)
    except BaseException:
        # Let what is in flight finish first, so that no batch lands after the cleanup.
        await asyncio.gather(*writes, *hashes, return_exceptions=True)
        await delete_chunks(store, location, submitted)
        raise
    return BlobRef(digest=digest, size=size, location=location, chunks=submitted)


def _finished(
    hasher: hashlib._Hash, size: int, expected_size: int | None, expected_digest: bytes | None
) -> bytes:
    """The stream's digest, once its size and digest are what the signed transfer said."""
    if expected_size is not None and size != expected_size:
        raise TransferStreamError(
            f"object data stream ended after {size} of {expected_size} bytes (truncated)",
            hint="migrate again; nothing was stored",
        )
    digest: bytes = hasher.digest()
    if expected_digest is not None and digest != expected_digest:
        raise TransferStreamError(
            "object data does not hash to the digest its signed transfer names",
            hint="the data was altered on the way; nothing was stored",
        )
    return digest


async def _write_file(
    directory: Path,
    location: str,
    source: AsyncIterator[bytes | memoryview],
    *,
    expected_digest: bytes | None,
    expected_size: int | None,
    max_size: int,
) -> BlobRef:
    """:func:`write_blob` into one file: hashing and writing (one thread, in order) and
    syncing overlap the stream, at most :data:`FILE_WINDOW_BYTES` held."""
    loop = asyncio.get_running_loop()
    name = _file_name(location)
    partial, final = directory / f"{name}.part", directory / f"{name}.blob"
    limit = min(expected_size, max_size) if expected_size is not None else max_size
    try:
        await asyncio.to_thread(_ensure_directory, directory)
        # O_EXCL: a location is used once; never write into someone else's file.
        fd = await asyncio.to_thread(
            os.open, partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
        )
    except OSError as exc:
        raise TransferStreamError(
            f"cannot create the blob file {partial}: {exc.strerror}",
            hint="check the free space and permissions of the store's directory",
        ) from exc
    ours = [partial]  #: what the cleanup of a failed write may delete
    hasher = hashlib.sha256()
    size = 0
    unsynced = 0
    pending: collections.deque[asyncio.Future[int]] = collections.deque()
    held = 0  #: bytes of the parts in ``pending``
    syncing: asyncio.Future[int] | None = None
    marks = _Marks()

    def absorb(part: bytes | memoryview, offset: int) -> None:
        # Hashing needs arrival order: the executor has one thread, first in first out.
        # Writing on the same thread costs one hand-off per part instead of two, and
        # measured lower: hashing and writing on two threads raised the destination's
        # peak RSS rise at 1 GiB from 44 to 62-112 MiB for no clear gain in rate.
        hasher.update(part)
        view = memoryview(part)
        while view:  # pwrite may write less than asked (a signal, a full disk)
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
        marks.landed = offset  # parts are written in order: all before it are written

    async def release() -> int:
        return await pending.popleft()

    try:
        async for part in source:
            length = len(part)
            if size + length > limit:
                raise TransferStreamError(
                    f"object data stream is longer than the {limit} bytes announced",
                    hint="the sender and its signed transfer disagree; nothing was stored",
                )
            while pending and held + length > FILE_WINDOW_BYTES:
                held -= await release()
            pending.append(
                loop.run_in_executor(
                    _HASHER,
                    functools.partial(_on_disk, partial, absorb, part, size, answer=length),
                )
            )
            held += length
            size += length
            unsynced += length
            if unsynced >= SYNC_EVERY and (syncing is None or syncing.done()):
                if syncing is not None:
                    await syncing  # done: surfaces its error, if any
                syncing = loop.run_in_executor(
                    _SYNCER, _on_disk, partial, _sync_and_drop, fd, marks
                )
                unsynced = 0
        while pending:
            await release()
        digest = _finished(hasher, size, expected_size, expected_digest)
        if syncing is not None:
            await syncing
            syncing = None
        # Durable before anyone can name it: the data, then its name, then the directory.
        await loop.run_in_executor(
            _SYNCER, _on_disk, partial, _publish, fd, partial, final, directory, ours
        )
    except BaseException:
        # Let what is in flight finish first, so that nothing writes after the cleanup.
        await asyncio.gather(*pending, *([syncing] if syncing else []), return_exceptions=True)
        await asyncio.to_thread(_discard_files, *ours)
        raise
    finally:
        # Only now: no thread uses the descriptor any more (a number closed early could
        # be reused by another open while a pwrite is still queued).
        os.close(fd)
    return BlobRef(
        digest=digest,
        size=size,
        location=FILE_LOCATION + location,
        chunks=-(-size // CHUNK_BYTES),
    )


def _on_disk(path: Path, call: Callable[..., None], *args: object, answer: int = 0) -> int:
    """``call(*args)``, then ``answer``; a failure of the disk said as what it means for
    the stream (an ``OSError`` of the *peer's* connection is not one, stays what it is)."""
    try:
        call(*args)
        return answer
    except OSError as exc:
        raise TransferStreamError(
            f"cannot write the blob file {path}: {exc.strerror or exc}",
            hint="check the free space of the store's disk; nothing was stored",
        ) from exc


@dataclass(slots=True)
class _Marks:
    """Offsets of a blob file being written: ``landed``, every byte before it written
    (set by the one hashing thread, in order); ``dropped``, every byte before it synced
    and let go of (set by the one syncing thread)."""

    landed: int = 0
    dropped: int = 0


def _sync_and_drop(fd: int, marks: _Marks) -> None:
    """``fdatasync``, then let the page cache drop what was written *before* it began:
    durable now, so clean (a byte written during the sync waits for the next one)."""
    end = marks.landed
    os.fdatasync(fd)
    if end > marks.dropped:
        _drop_cached(fd, marks.dropped, end - marks.dropped)
        marks.dropped = end


def _drop_cached(fd: int, offset: int, length: int) -> None:
    """Advise the kernel that ``length`` bytes at ``offset`` (0: to the end) will not be
    read again. Only clean pages are dropped (a dirty page is written first or kept), so
    this never loses data; it is advice, and a file system that ignores it loses only
    the gain. Why (ADR 0009, "drop-behind"): a stream touches each page cache page once,
    and a page the kernel has to allocate afresh for every MiB cost more than the copy
    into it on the hosts measured (a virtual machine's first touch of a page it gave
    back to the hypervisor: 2.5 s of kernel time per GiB); pages let go of right after
    use are the next ones the stream reuses, and a 1 GiB stream does not push the
    host's store out of the cache."""
    with contextlib.suppress(AttributeError, OSError):
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def _publish(fd: int, partial: Path, final: Path, directory: Path, ours: list[Path]) -> None:
    os.fsync(fd)
    _drop_cached(fd, 0, 0)  # synced: whatever the background drops left behind
    # link + unlink, not rename: never replaces a blob already at that name (nor
    # deletes it in the cleanup: only names in ``ours`` are this write's).
    os.link(partial, final)
    ours.append(final)
    os.unlink(partial)
    fsync_directory(directory)


def _ensure_directory(directory: Path) -> None:
    if not directory.is_dir():
        directory.mkdir(parents=True, exist_ok=True)
        fsync_directory(directory.parent)  # the directory's own name is durable too


def fsync_directory(directory: Path) -> None:
    """Make the names in ``directory`` durable (after a create, rename or unlink)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard_files(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


async def read_blob_views(
    store: StateStore, ref: BlobRef, *, piece_bytes: int = STREAM_PIECE_BYTES
) -> AsyncIterator[bytes | memoryview]:
    """:func:`read_blob` for a consumer that copies each piece before it asks for the
    next (gRPC's serializer): a file is read into a few buffers used over and over, and
    each piece is a view that is **valid only until the next piece is asked for**. A
    fresh MiB per piece cost a page fault per 4 KiB, most of the source's system time."""
    if ref.in_file:
        async for view in _read_file(store, ref, piece_bytes, reuse=True):
            yield view
        return
    async for chunk in read_blob(store, ref, piece_bytes=piece_bytes):
        yield chunk


async def read_blob(
    store: StateStore, ref: BlobRef, *, piece_bytes: int = CHUNK_BYTES
) -> AsyncIterator[bytes]:
    """The chunks of a blob in order, :data:`READ_AHEAD` chunks read ahead. A blob file
    is read in pieces of ``piece_bytes`` (a stream to a peer asks for
    :data:`STREAM_PIECE_BYTES`); chunks in a store come as they were stored."""
    if ref.in_file:
        async for chunk in _read_file(store, ref, piece_bytes, reuse=False):
            assert isinstance(chunk, bytes)  # reuse=False: pread's own bytes
            yield chunk
        return
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


def _read_into(
    fd: int, buffer: bytearray, length: int, offset: int, drop: tuple[int, int] | None = None
) -> memoryview:
    """``pread`` into ``buffer``: a view of what was read (shorter at the end of file).
    ``drop``: (offset, length) already read, whose cached pages are let go of first."""
    if drop is not None:
        _drop_cached(fd, *drop)
    view = memoryview(buffer)[:length]
    done = 0
    while done < length:  # preadv may read less than asked
        count = os.preadv(fd, [view[done:]], offset + done)
        if not count:
            break
        done += count
    return view[:done]


def _pread(fd: int, length: int, offset: int, drop: tuple[int, int] | None) -> bytes:
    """``os.pread``, after letting go of ``drop`` as :func:`_read_into` does."""
    if drop is not None:
        _drop_cached(fd, *drop)
    return os.pread(fd, length, offset)


def _path_of(store: StateStore, ref: BlobRef) -> Path:
    directory = blob_directory(store)
    if directory is None:
        raise TransferStreamError(
            f"blob {ref.location} is a file, but this store keeps no blob directory",
            hint="open the host with the store (and its .blobs directory) that wrote it",
        )
    return directory / f"{_file_name(ref.location)}.blob"


async def _read_file(
    store: StateStore, ref: BlobRef, piece: int, *, reuse: bool
) -> AsyncIterator[bytes | memoryview]:
    """A blob file in pieces of ``piece`` bytes, :data:`READ_AHEAD` chunks' worth (at
    least two pieces) read ahead (``pread`` at offsets: any thread may read). With
    ``reuse``, into ``window + 1`` buffers: those being read, and the one yielded last
    (taken back only once the consumer asks for the next piece)."""
    path = _path_of(store, ref)
    window = max(2, READ_AHEAD * CHUNK_BYTES // piece)
    loop = asyncio.get_running_loop()
    try:
        fd = await asyncio.to_thread(os.open, path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise TransferStreamError(
            f"blob file of {ref.location} cannot be opened: {exc.strerror}",
            hint=f"the store's blob directory lacks {path.name}; restore it from a backup",
        ) from exc
    ahead: collections.deque[asyncio.Future[bytes | memoryview]] = collections.deque()
    spare = [bytearray(piece) for _ in range(window + 1)] if reuse else []
    reading: collections.deque[bytearray] = collections.deque()  #: buffers of ``ahead``
    lent: bytearray | None = None  #: the buffer of the piece yielded last
    try:
        with contextlib.suppress(AttributeError, OSError):  # advice only
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        following = dropped = 0
        for offset in range(0, ref.size, piece):
            if lent is not None:  # the consumer asked for the next piece: done with it
                spare.append(lent)
                lent = None
            while following < ref.size and len(ahead) < window:
                length = min(piece, ref.size - following)
                # Every piece before ``offset`` has been read: its pages may go (in the
                # next read's job, not a hand-off of its own).
                drop = None
                if offset - dropped >= DROP_BEHIND_BYTES:
                    drop, dropped = (dropped, offset - dropped), offset
                job: Callable[[], bytes | memoryview]
                if reuse:
                    buffer = spare.pop()
                    reading.append(buffer)
                    job = functools.partial(_read_into, fd, buffer, length, following, drop)
                else:
                    job = functools.partial(_pread, fd, length, following, drop)
                ahead.append(loop.run_in_executor(_FILE_IO, job))
                following += length
            chunk = await ahead.popleft()
            if reuse:
                lent = reading.popleft()
            if len(chunk) != min(piece, ref.size - offset):
                raise TransferStreamError(
                    f"blob file of {ref.location} is shorter than its {ref.size} bytes",
                    hint=f"{path} was truncated outside the gateway; restore it from a backup",
                )
            yield chunk
        await loop.run_in_executor(_FILE_IO, _drop_cached, fd, dropped, 0)  # the rest
    finally:
        # Not cancelled: a read already on its thread would run on, and the descriptor
        # must stay open until it has.
        await asyncio.gather(*ahead, return_exceptions=True)
        os.close(fd)


async def delete_location(store: StateStore, location: str) -> None:
    """Remove whatever an upload or a write at ``location`` left behind, complete or
    not (chunks under the prefix, its file, its ``.part`` file): for a location whose
    blob no record names (an expired upload marker)."""
    directory = blob_directory(store)
    if directory is not None:
        name = _file_name(location)
        await asyncio.to_thread(
            _discard_files, directory / f"{name}.part", directory / f"{name}.blob"
        )
    await delete_keys(store, await store.list(location))


def sweep_partial_files(store: StateStore, *, older_than_s: float = PARTIAL_FILE_AGE_S) -> int:
    """Delete ``.part`` files not written to for ``older_than_s``: left by a crash in the
    middle of a write (a complete blob is renamed before any record can name it, so a
    ``.part`` file is never referenced). Returns how many were deleted."""
    directory = blob_directory(store)
    if directory is None or not directory.is_dir():
        return 0
    removed = 0
    cutoff = time.time() - older_than_s
    for path in directory.glob("*.part"):
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
    return removed


def stored_files(store: StateStore) -> list[Path]:
    """Every blob file (complete or partial) in the store's directory; for checks and
    tests."""
    directory = blob_directory(store)
    if directory is None or not directory.is_dir():
        return []
    return sorted(directory.iterdir())


async def delete_keys(store: StateStore, keys: Sequence[str]) -> None:
    """Delete ``keys`` (whatever their ETags), :data:`DELETE_BATCH` per transaction."""
    for start in range(0, len(keys), DELETE_BATCH):
        await store.transact(
            [Delete(key=k, etag=Expect.ANY) for k in keys[start : start + DELETE_BATCH]]
        )


async def delete_chunks(store: StateStore, location: str, count: int) -> None:
    await delete_keys(store, [_chunk_key(location, i) for i in range(count)])


async def delete_blob(store: StateStore, ref: BlobRef) -> None:
    if ref.in_file:
        path = _path_of(store, ref)
        await asyncio.to_thread(path.unlink, missing_ok=True)
        return
    await delete_chunks(store, ref.location, ref.chunks)


def blob_file_name(location: str) -> str:
    """The name of the ``.blob`` file of ``location`` (with or without ``file:``) in a
    blob directory: what a record naming that location refers to (for the sweep of
    files no record names, gateway.runtime.sweep)."""
    return f"{_file_name(location)}.blob"
