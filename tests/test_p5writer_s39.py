"""Session 39: what the embedded store's reads on a reader thread cost, in statements.

A read of values kept whole is one statement (its own snapshot); only a read that meets
a value kept as a head and entry rows opens a transaction, so that heads and rows are
one snapshot even when a writer commits between the two reads. Deterministic: the
writer's commit is made from inside the reader's statement hook, not raced."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.stores import Expect, Put
from gateway.stores.sqlite import INLINE_READ_MAX_BYTES, INLINE_READ_MAX_KEYS, SqliteStore
from tests.test_p5rows_s38 import _Record

SEED = 39


class _Statements:
    """Every statement run on a reader thread's connection (but the settings of a new
    one), and a hook run after the first one that reads heads."""

    def __init__(self) -> None:
        self.run: list[str] = []
        self.after_heads: Callable[[], None] | None = None


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> _Statements:
    seen = _Statements()

    class Counted(sqlite3.Connection):
        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
            cursor = super().execute(sql, *args)
            reader = threading.current_thread().name.startswith("sqlite-reader")
            if reader and not sql.startswith("PRAGMA"):
                seen.run.append(sql)
                hook = seen.after_heads
                if hook is not None and sql.startswith("SELECT key, etag, value, entries_at"):
                    seen.after_heads = None
                    hook()
            return cursor

    connect = sqlite3.connect

    def counted(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        kwargs.setdefault("factory", Counted)
        return connect(*args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", counted)
    return seen


def test_a_read_of_whole_values_on_a_reader_thread_is_one_statement(
    tmp_path: Path, statements: _Statements
) -> None:
    """No BEGIN and ROLLBACK around a read that meets no entry rows: one statement is
    one snapshot already. (Three statements before session 39.)"""
    large = random.Random(SEED).randbytes(INLINE_READ_MAX_BYTES + 1)  # read on a reader
    keys = [f"k{index}" for index in range(INLINE_READ_MAX_KEYS + 1)]  # so is this many

    async def main() -> None:
        async with SqliteStore.open(tmp_path / "s.db", create=True) as store:
            await store.transact(
                [Put(key="large", value=large, etag=Expect.ABSENT)]
                + [Put(key=key, value=key.encode(), etag=Expect.ABSENT) for key in keys]
            )
            statements.run.clear()
            got = await store.get("large")
            assert got is not None and got.value == large
            assert len(statements.run) == 1, statements.run
            statements.run.clear()
            found = await store.get_many(keys)
            assert {key: item.value for key, item in found.items()} == {
                key: key.encode() for key in keys
            }
            assert len(statements.run) == 1, statements.run

    asyncio.run(main())


@pytest.mark.parametrize("with_plain_key", [False, True])
def test_a_commit_between_reading_heads_and_rows_is_never_seen_as_damage(
    tmp_path: Path, statements: _Statements, with_plain_key: bool
) -> None:
    """A writer replaces a value kept as rows (its rows dropped) right after the reader
    read its head: the read answers the old value or the new one, byte for byte, never
    a damaged file and never a mix of the two."""
    rng = random.Random(SEED)
    record = _Record(rng)
    record.entries = [record.entry() for _ in range(20)]
    plain = rng.randbytes(INLINE_READ_MAX_BYTES + 1)  # a reader's read, kept whole

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with SqliteStore.open(tmp_path / "s.db", create=True) as store:
            etag = (await store.transact([record.put("k", Expect.ABSENT)]))["k"]
            await store.put("plain", plain, etag=Expect.ABSENT)
            old = record.value()
            record.entries = [record.entry() for _ in range(18)]  # another history
            new = record.value()
            replacing = record.put("k", etag)

            def commit_between() -> None:  # on the reader thread, inside its read
                done = asyncio.run_coroutine_threadsafe(store.transact([replacing]), loop)
                done.result(timeout=60)

            statements.after_heads = commit_between
            if with_plain_key:
                found = await store.get_many(["plain", "k"])
                assert found["plain"].value == plain
                got = found["k"]
            else:
                item = await store.get("k")
                assert item is not None
                got = item
            assert statements.after_heads is None  # the writer did commit in between
            assert got.value in (old, new)
            assert (await store.get_many(["k"]))["k"].value == new

    asyncio.run(main())
