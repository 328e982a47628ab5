"""The SQLite store's writer runs its statements on one cursor of its own
(gateway/stores/sqlite.py, ``SqliteStore._cursor``): ``Connection.execute`` made and
freed a cursor per statement, about 1.4k instructions each (docs/benchmarks.md, session
41, branch p5etag-s41)."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import threading
from pathlib import Path
from typing import Any, ClassVar

import pytest

from gateway.errors import ConcurrencyError
from gateway.stores import Delete, Expect, Put, PutEntries
from gateway.stores import sqlite as sqlite_store
from gateway.stores.sqlite import SqliteStore


class _Cursor(sqlite3.Cursor):
    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        _Counted.on_cursor.append(sql)
        return super().execute(sql, *args)


class _Counted(sqlite3.Connection):
    """Notes, on the store's writer thread, each statement run through the connection
    and through a cursor of it."""

    on_connection: ClassVar[list[str]] = []
    on_cursor: ClassVar[list[str]] = []

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        if threading.current_thread().name.startswith("sqlite-store"):
            _Counted.on_connection.append(sql)
        return super().execute(sql, *args)

    def cursor(self, factory: Any = _Cursor) -> sqlite3.Cursor:  # type: ignore[override]
        return super().cursor(factory)


def test_the_writer_runs_its_statements_on_one_cursor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Single callers, groups of callers (one refused), entry puts and deletes: after the
    store is open, the writer asks its connection for nothing; every statement goes
    through its cursor, and what they wrote reads back."""
    connect = sqlite3.connect

    def counted(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        return connect(*args, factory=_Counted, **kwargs)

    monkeypatch.setattr(sqlite_store.sqlite3, "connect", counted)
    _Counted.on_connection = []
    _Counted.on_cursor = []

    async def main() -> None:
        async with SqliteStore.open(tmp_path / "s.db", create=True) as store:
            _Counted.on_connection.clear()
            first = await store.transact(
                [Put(key=f"k{n}", value=bytes([n]) * 300, etag=Expect.ABSENT) for n in range(6)]
            )
            parts = [b"one", b"two!"]
            entries = PutEntries(
                key="e",
                value=b"head" + b"".join(parts),
                etag=Expect.ABSENT,
                entries_at=4,
                entry_ends=(3, 7),
                entry_ids=b"".join(hashlib.sha256(part).digest() for part in parts),
            )
            outcomes = await asyncio.gather(
                store.transact([Put(key="k0", value=b"new", etag=first["k0"])]),
                store.transact([Put(key="k1", value=b"stale", etag="not-its-etag")]),
                store.transact([Delete(key="k2", etag=first["k2"])]),
                store.transact([entries]),
                return_exceptions=True,
            )
            assert [type(outcome) for outcome in outcomes[:3]] == [
                dict,
                ConcurrencyError,
                dict,
            ]
            assert isinstance(outcomes[3], dict)
            found = await store.get_many(["k0", "k1", "k2", "e"])
            assert found["k0"].value == b"new"
            assert found["k1"].value == bytes([1]) * 300
            assert "k2" not in found
            assert found["e"].etag == outcomes[3]["e"]
            assert found["e"].value == b"headone" + b"two!"
            # A refused single caller rolls back (through the connection: _rollback).
            with pytest.raises(ConcurrencyError):
                await store.transact([Put(key="k3", value=b"x", etag=Expect.ABSENT)])

    asyncio.run(main())
    assert [sql for sql in _Counted.on_connection if sql != "ROLLBACK"] == []
    assert "BEGIN IMMEDIATE" in _Counted.on_cursor and "COMMIT" in _Counted.on_cursor
    assert any(sql.startswith("INSERT") for sql in _Counted.on_cursor)
