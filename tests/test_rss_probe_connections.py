"""The rss_probe's SQLite figures per connection (bench/rss_probe/memstats.py): the
connections come from a registry that a wrapped ``sqlite3.connect`` fills, not from a
walk of the collector's objects. That walk, from the probe's thread, made servers raise
``SystemError``, and it never saw the store's write connection: ``gateway._gc.tune()``
freezes it, and ``gc.get_objects()`` leaves frozen objects out."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench" / "rss_probe"))

import memstats

from gateway.stores import Expect, Put
from gateway.stores.sqlite import SqliteStore


@pytest.fixture
def watched(monkeypatch: pytest.MonkeyPatch) -> None:
    """watch_connections() for this test only: sqlite3.connect and the registry are put
    back afterwards."""
    if memstats.sqlite_memory() is None:
        pytest.skip("no libsqlite3.so.0 to read SQLite's figures from")
    monkeypatch.setattr(sqlite3, "connect", sqlite3.connect)
    monkeypatch.setattr(memstats, "_CONNECTIONS", None)
    memstats.watch_connections()


@pytest.mark.usefixtures("watched")
def test_a_stores_connections_are_counted_by_role_frozen_or_not(tmp_path: Path) -> None:
    found: dict[str, int] = {}

    async def main() -> None:
        async with SqliteStore.open(tmp_path / "s.db", create=True) as store:
            gc.freeze()  # as a served host does once started (gateway/_gc.py)
            try:
                await store.transact(
                    [Put(key=f"k/{n}", value=bytes(4000), etag=Expect.ANY) for n in range(300)]
                )
                await store.get("k/1")  # inline, on this thread
                await store.get_many([f"k/{n}" for n in range(300)])  # a reader thread
                found.update(memstats.sqlite_connections())
            finally:
                gc.unfreeze()
        found["after close"] = sum(
            value for name, value in memstats.sqlite_connections().items() if name.endswith("_n")
        )

    asyncio.run(main())
    assert found["writer_n"] == 1 and found["inline_n"] == 1 and found["reader_n"] == 1
    # The writer's page cache holds what it wrote (1.2 MB, under SQLite's 2,000 KiB cap).
    assert found["writer_pages"] >= 1 << 20
    assert found["writer_stmts"] >= 3 and found["writer_stmt"] > 0
    assert found["after close"] == 0


@pytest.mark.usefixtures("watched")
def test_a_caller_may_still_pass_its_own_factory(tmp_path: Path) -> None:
    class Own(sqlite3.Connection):
        pass

    connection = sqlite3.connect(tmp_path / "own.db", factory=Own)
    try:
        assert type(connection) is Own
        assert memstats.sqlite_connections()["inline_n"] == 1  # this thread is not a store's
    finally:
        connection.close()
