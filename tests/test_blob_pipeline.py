"""The stream pipeline (issue 13, point 6): writes overlap the stream within a bounded
window, and what is stored still hashes and reads back exactly."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from gateway.blobs import BATCH, CHUNK_BYTES, WRITE_WINDOW, read_blob, write_blob
from gateway.errors import TransferStreamError
from gateway.stores import Item, Operation
from gateway.stores.sqlite import SqliteStore

DATA = os.urandom(5 * BATCH * CHUNK_BYTES + 12345)


class SlowStore:
    """A real store whose commits take a while; records how many overlap."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.in_flight = 0
        self.most = 0

    async def transact(self, operations: Sequence[Operation]) -> None:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await asyncio.sleep(0.05)
            await self.store.transact(operations)
        finally:
            self.in_flight -= 1

    async def get(self, key: str) -> Item | None:
        return await self.store.get(key)

    async def list(
        self, prefix: str, *, limit: int | None = None, start_after: str | None = None
    ) -> list[str]:
        return await self.store.list(prefix, limit=limit, start_after=start_after)


async def parts(data: bytes, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_writes_overlap_the_stream_within_the_window(tmp_path: Path) -> None:
    async def main() -> None:
        async with SqliteStore.open(tmp_path / "s.db", create=True) as real:
            store = SlowStore(real)
            blob = await write_blob(
                store,  # type: ignore[arg-type]
                "blob/x/",
                parts(DATA),
                expected_digest=hashlib.sha256(DATA).digest(),
                expected_size=len(DATA),
            )
            assert store.most == WRITE_WINDOW  # overlapped, and never more than the window
            assert blob.chunks == -(-len(DATA) // CHUNK_BYTES)
            back = b"".join([c async for c in read_blob(real, blob)])
            assert back == DATA

    asyncio.run(main())


def test_a_bad_digest_leaves_no_chunk_even_with_writes_in_flight(tmp_path: Path) -> None:
    async def main() -> None:
        async with SqliteStore.open(tmp_path / "s.db", create=True) as real:
            store = SlowStore(real)
            with pytest.raises(TransferStreamError, match="digest"):
                await write_blob(
                    store,  # type: ignore[arg-type]
                    "blob/y/",
                    parts(DATA),
                    expected_digest=hashlib.sha256(b"other").digest(),
                    expected_size=len(DATA),
                )
            assert await real.list("blob/") == []

    asyncio.run(main())
