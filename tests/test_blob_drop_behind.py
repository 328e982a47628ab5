"""Drop-behind of blob files (ADR 0009): a stream lets the page cache drop the pages it
is done with, and never a page whose data is not yet on disk.

The writer advises ``POSIX_FADV_DONTNEED`` only for ranges that an ``fdatasync`` issued
after their ``pwrite`` has made durable; the reader only for ranges the consumer has
been given already. The advice is advice: a file system that refuses it loses nothing.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import itertools
import os
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from gateway import blobs
from gateway.blobs import read_blob_views, stored_files, write_blob
from gateway.stores.sqlite import SqliteStore

DATA = os.urandom(3 * blobs.CHUNK_BYTES + 12_345)
PART = 100_000


async def parts(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), PART):
        yield data[start : start + PART]


class Calls:
    """The file system calls of blob writes and reads, in the order they returned."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, int, int]] = []
        self._lock = threading.Lock()
        pwrite, fdatasync, fsync, fadvise = os.pwrite, os.fdatasync, os.fsync, os.posix_fadvise

        def logged_pwrite(fd: int, data: memoryview, offset: int) -> int:
            written = pwrite(fd, data, offset)
            self._log("write", offset, written)
            return written

        def logged_sync(call: Callable[[int], None]) -> Callable[[int], None]:
            def sync(fd: int) -> None:
                call(fd)
                self._log("sync", 0, 0)

            return sync

        def logged_fadvise(fd: int, offset: int, length: int, advice: int) -> None:
            if advice == os.POSIX_FADV_DONTNEED:
                self._log("drop", offset, length)
            fadvise(fd, offset, length, advice)

        monkeypatch.setattr(os, "pwrite", logged_pwrite)
        monkeypatch.setattr(os, "fdatasync", logged_sync(fdatasync))
        monkeypatch.setattr(os, "fsync", logged_sync(fsync))
        monkeypatch.setattr(os, "posix_fadvise", logged_fadvise)

    async def paced(self, source: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """``source``, each part only once the one before it is on the file: so the
        first background sync always finds written bytes to drop (deterministic)."""
        sent = 0
        async for part in source:
            for _ in range(10_000):  # at most ~10 s on a loaded machine
                if sum(n for kind, _, n in self.events if kind == "write") >= sent:
                    break
                await asyncio.sleep(0.001)
            yield part
            sent += len(part)

    def _log(self, kind: str, offset: int, length: int) -> None:
        with self._lock:
            self.events.append((kind, offset, length))


def test_a_written_range_is_dropped_only_after_a_sync_made_it_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(blobs, "SYNC_EVERY", 512 << 10)  # several background syncs
    calls = Calls(monkeypatch)

    async def main() -> None:
        async with SqliteStore.open(tmp_path / "s.db", create=True) as store:
            ref = await write_blob(
                store,
                "blob/a/",
                calls.paced(parts(DATA)),
                expected_digest=hashlib.sha256(DATA).digest(),
                expected_size=len(DATA),
            )
            assert ref.size == len(DATA)
            (file,) = stored_files(store)
            assert file.read_bytes() == DATA

    asyncio.run(main())
    drops = [i for i, (kind, _, _) in enumerate(calls.events) if kind == "drop"]
    assert len(drops) >= 2, calls.events  # background drops, then the whole file
    assert calls.events[drops[-1]][1:] == (0, 0)  # after the final fsync: everything
    for at in drops:
        _, offset, length = calls.events[at]
        end = offset + length if length else len(DATA)
        synced = max(i for i in range(at) if calls.events[i][0] == "sync")
        for i, (kind, start, written) in enumerate(calls.events):
            if kind == "write" and start < end and start + written > offset:
                assert i < synced, f"bytes {start}-{start + written} dropped before a sync"
    # Each background drop starts where the one before it ended: no range is skipped.
    ranges = [calls.events[at][1:] for at in drops[:-1]]
    assert ranges[0][0] == 0
    assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(ranges))


def test_a_read_drops_only_pages_the_consumer_was_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(blobs, "DROP_BEHIND_BYTES", 512 << 10)
    monkeypatch.setattr(blobs, "READ_AHEAD", 1)  # 1 MiB ahead: reads go on being asked for
    consumed = 0
    seen: list[tuple[int, int, int]] = []  #: (offset, length, consumed when advised)
    fadvise = os.posix_fadvise

    def watched(fd: int, offset: int, length: int, advice: int) -> None:
        if advice == os.POSIX_FADV_DONTNEED:
            seen.append((offset, length, consumed))
        fadvise(fd, offset, length, advice)

    async def main() -> None:
        nonlocal consumed
        async with SqliteStore.open(tmp_path / "s.db", create=True) as store:
            ref = await write_blob(store, "blob/r/", parts(DATA))
            monkeypatch.setattr(os, "posix_fadvise", watched)
            received = bytearray()
            async for view in read_blob_views(store, ref, piece_bytes=256 << 10):
                received += view  # copied before the next is asked for, as gRPC does
                consumed = len(received)
            assert received == DATA

    asyncio.run(main())
    assert len(seen) >= 3
    for offset, length, given in seen[:-1]:
        assert length and offset + length <= given
    covered = 0
    for offset, length, _ in seen:
        assert offset == covered  # contiguous, from the start
        covered = offset + length if length else len(DATA)
    assert covered == len(DATA)


def test_a_file_system_refusing_the_advice_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(fd: int, offset: int, length: int, advice: int) -> None:
        raise OSError(errno.EINVAL, "not supported")

    monkeypatch.setattr(blobs, "SYNC_EVERY", 512 << 10)
    monkeypatch.setattr(blobs, "DROP_BEHIND_BYTES", 1 << 20)
    monkeypatch.setattr(os, "posix_fadvise", refuse)

    async def main() -> None:
        async with SqliteStore.open(tmp_path / "s.db", create=True) as store:
            ref = await write_blob(
                store, "blob/x/", parts(DATA), expected_digest=hashlib.sha256(DATA).digest()
            )
            received = bytearray()
            async for view in read_blob_views(store, ref, piece_bytes=256 << 10):
                received += view
            assert received == DATA

    asyncio.run(main())
