"""What bounded pruning passes use (gateway/stores/__init__.py): PrefixWalk, bounded pages
that go round a prefix, and delete_unchanged, deletion in transactions."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.stores import DELETE_CHUNK, Delete, Expect, PrefixWalk, Put, delete_unchanged
from gateway.stores.sqlite import SqliteStore


def test_pages_resume_after_the_last_key_and_wrap_at_the_end(tmp_path: Path) -> None:
    async def main() -> None:
        async with SqliteStore.open(tmp_path / "s.db", create=True) as store:
            keys = [f"p/{n}" for n in range(7)]
            await store.transact(
                [Put(key=k, value=b"", etag=Expect.ABSENT) for k in [*keys, "o", "q"]]
            )
            walk = PrefixWalk("p/")
            assert await walk.next_page(store, limit=3) == keys[:3]
            assert await walk.next_page(store, limit=3) == keys[3:6]
            assert await walk.next_page(store, limit=3) == keys[6:]  # short: the end
            assert await walk.next_page(store, limit=3) == keys[:3]  # so round again

            # A key written behind the walk is reached on the next round; one deleted
            # ahead of it is simply not there.
            await store.transact(
                [Put(key="p/00", value=b"", etag=Expect.ABSENT), Delete(key="p/4", etag=Expect.ANY)]
            )
            assert await walk.next_page(store, limit=3) == ["p/3", "p/5", "p/6"]
            # That page was full and ended at the end: the next starts over at once
            # rather than answering an empty page.
            assert await walk.next_page(store, limit=3) == ["p/0", "p/00", "p/1"]

            with pytest.raises(ValueError, match="at least one key"):
                await walk.next_page(store, limit=0)

    asyncio.run(main())


def test_an_empty_prefix_gives_empty_pages(tmp_path: Path) -> None:
    async def main() -> None:
        async with SqliteStore.open(tmp_path / "s.db", create=True) as store:
            walk = PrefixWalk("none/")
            assert await walk.next_page(store, limit=5) == []
            assert await walk.next_page(store, limit=5) == []

    asyncio.run(main())


def test_delete_unchanged_keeps_only_what_changed_since_it_was_read(tmp_path: Path) -> None:
    """Items go in transactions of DELETE_CHUNK; a chunk holding an item that changed (or
    went) since it was read is done again item by item: the others still go."""

    async def main() -> None:
        async with SqliteStore.open(tmp_path / "s.db", create=True) as store:
            keys = [f"bus/{n:04d}" for n in range(2 * DELETE_CHUNK + 50)]
            await store.transact([Put(key=k, value=b"old", etag=Expect.ABSENT) for k in keys])
            items = list((await store.get_many(keys)).values())
            changed, gone = keys[DELETE_CHUNK + 3], keys[DELETE_CHUNK + 7]
            await store.put(changed, b"new", etag=items[DELETE_CHUNK + 3].etag)
            await store.delete(gone, etag=Expect.ANY)

            assert await delete_unchanged(store, items) == len(keys) - 2
            assert await store.list("bus/") == [changed]
            assert await delete_unchanged(store, []) == 0

    asyncio.run(main())
