"""The embedded store's prepared statements do not keep the values last written through
them (gateway/stores/sqlite.py, ``_unbind``).

Python's sqlite3 resets a statement after running it but never clears its parameters,
and SQLite holds its own copy of each bound value until the statement next runs with
others. A connection keeps its prepared statements (one upsert per size of
``_SIZES``), so every size of upsert kept the last rows written with it: values of the
soak's objects (up to 60 KB each, 200 to a cycle's batch) held about 8 MiB of SQLite's
heap on the write connection, growing as larger sizes and larger objects came along.

Measured with SQLite's own counter of its heap (``sqlite3_memory_used``, read through
ctypes from the library ``_sqlite3`` links); skipped where that counter cannot be read.
"""

from __future__ import annotations

import asyncio
import ctypes
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.stores import Expect, Put
from gateway.stores.sqlite import SqliteStore

MIB = 1 << 20


def _memory_used() -> Callable[[], int]:
    """SQLite's count of the bytes its heap holds now (all connections of the process),
    from the library this Python's ``sqlite3`` uses; the test is skipped when it cannot
    be read or does not move when a connection prepares a large statement (a second
    copy of SQLite, not the one ``_sqlite3`` links)."""
    try:
        library = ctypes.CDLL("libsqlite3.so.0")
    except OSError:
        pytest.skip("no libsqlite3.so.0 to read SQLite's heap counter from")
    function = library.sqlite3_memory_used
    function.restype = ctypes.c_int64
    before = function()
    with sqlite3.connect(":memory:") as connection:
        connection.execute("SELECT ?", [b"x" * MIB])
        moved = function() - before
    if moved < MIB:
        pytest.skip("libsqlite3.so.0 is not the SQLite this Python's sqlite3 uses")
    return lambda: int(function())


def _puts(prefix: str, count: int, size: int) -> list[Put]:
    return [
        Put(key=f"{prefix}/{n:04d}", value=bytes([n % 251]) * size, etag=Expect.ANY)
        for n in range(count)
    ]


def test_large_writes_leave_their_values_with_no_prepared_statement(tmp_path: Path) -> None:
    used = _memory_used()
    held: dict[str, int] = {}

    async def main() -> None:
        async with SqliteStore.open(tmp_path / "s.db", create=True) as store:
            await store.transact(_puts("warm", 1, 10))
            before = used()
            # Four sizes of upsert (256, 128, 64 and 24 rows), 16 KiB values: 5.9 MiB
            # written, about 7.5 MiB with each statement's padding rows.
            for count in (200, 100, 50, 20):
                await store.transact(_puts(f"w{count}", count, 16 << 10))
            # The writer unbinds after answering a group, before the next one: a small
            # write's return says the last large one's unbinding is done.
            await store.transact(_puts("sync", 1, 10))
            held["after"] = used() - before
            # Everything written is still there, with its value.
            found = await store.get_many([f"w200/{n:04d}" for n in range(200)])
            assert [item.value for item in found.values()] == [
                op.value for op in _puts("w200", 200, 16 << 10)
            ]

    asyncio.run(main())
    # What stays is the write connection's page cache (SQLite's default, 2,000 KiB) and
    # the statements themselves; before, 9.6 MiB.
    assert held["after"] < 3 * MIB, held


def test_small_writes_are_not_unbound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unbinding costs about what binding did (pysqlite's per-parameter work): a commit of
    a few small values, a migration's, leaves them bound rather than pay it twice."""
    from gateway.stores import sqlite as sqlite_store

    unbound: list[int] = []
    unbind = sqlite_store._unbind

    def counting(connection: sqlite3.Connection, sql: str, count: int) -> None:
        unbound.append(count)
        unbind(connection, sql, count)

    monkeypatch.setattr(sqlite_store, "_unbind", counting)

    async def main() -> None:
        async with SqliteStore.open(tmp_path / "s.db", create=True) as store:
            await store.transact(_puts("small", 4, 1000))
            assert unbound == []
            await store.transact(_puts("large", 8, 16 << 10))
            await store.transact(_puts("sync", 1, 10))  # see the test above
            assert unbound == [8 * 3]

    asyncio.run(main())
