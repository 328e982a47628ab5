"""PrefixWalk: bounded pages that go round a prefix (gateway/stores/__init__.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.stores import Delete, Expect, PrefixWalk, Put
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
