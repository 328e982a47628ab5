"""The embedded store's statements come in a few sizes (gateway/stores/sqlite.py,
``_SIZES``): a list of keys or rows is padded up to the next size, so a connection's
cache of prepared statements holds a bounded set instead of one statement per size ever
seen (about 13 MiB per connection when it filled, and a re-prepare whenever a size was
evicted). Padding must never change an answer: every read, write and delete here is
checked against what was written."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from pathlib import Path
from typing import Any, ClassVar

import pytest

from gateway.stores import Delete, Expect, Put
from gateway.stores import sqlite as sqlite_store
from gateway.stores.sqlite import _CHUNK, _SIZES, _UPSERT_ROWS, SqliteStore, _size_for


def test_every_count_has_a_size_at_most_half_again_as_large() -> None:
    assert len(_SIZES) <= 18
    assert _CHUNK in _SIZES and _UPSERT_ROWS in _SIZES
    for count in range(1, _CHUNK + 1):
        size = _size_for(count)
        assert size in _SIZES
        assert count <= size <= max(2, count * 3 // 2 + 1), (count, size)


class _RecordingCursor(sqlite3.Cursor):
    """A cursor that notes the text of every statement it runs (the store's writer runs
    its statements on one cursor of its own)."""

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        cursor = super().execute(sql, *args)
        _Recording.note(sql)
        return cursor


class _Recording(sqlite3.Connection):
    """A connection that notes the text of every statement it is asked to run, on
    itself or on a cursor of its own; SQLite's trace of the statements it ran is counted
    beside them, so that a statement run some other way is noticed."""

    texts: ClassVar[set[str]] = set()
    #: Statements noted (each run that returned) and statements SQLite traced.
    noted: ClassVar[list[str]] = []
    traced: ClassVar[list[str]] = []

    @classmethod
    def note(cls, sql: str) -> None:
        cls.texts.add(sql)
        cls.noted.append(sql)

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        cursor = super().execute(sql, *args)
        _Recording.note(sql)
        return cursor

    def cursor(self, factory: Any = _RecordingCursor) -> sqlite3.Cursor:  # type: ignore[override]
        return super().cursor(factory)


def test_many_sizes_of_reads_writes_and_deletes_use_few_statements(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    connect = sqlite3.connect

    def recording(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        connection = connect(*args, factory=_Recording, **kwargs)
        connection.set_trace_callback(_Recording.traced.append)
        return connection

    monkeypatch.setattr(sqlite_store.sqlite3, "connect", recording)
    _Recording.texts = set()
    _Recording.noted = []
    _Recording.traced = []
    written: dict[str, bytes] = {}

    async def main() -> None:
        async with SqliteStore.open(tmp_path / "s.db", create=True) as store:
            # Writes of 1 to 70 keys and of 250 to 300 (more than one upsert statement),
            # values of different sizes, so the padding row is a real choice.
            for count in [*range(1, 71), *range(250, 301, 7)]:
                ops = [
                    Put(
                        key=f"w{count}/{n}",
                        value=bytes([n % 251]) * (n * 37 % 900),
                        etag=Expect.ANY,
                    )
                    for n in range(count)
                ]
                etags = await store.transact(ops)
                assert sorted(etags) == sorted(op.key for op in ops)
                written.update((op.key, op.value) for op in ops)
            keys = sorted(written)
            # Reads of every size up to past a chunk, inline and on reader threads, with
            # keys that do not exist mixed in.
            for count in [*range(1, 40), *range(500, 530, 3), 1100]:
                asked = [*keys[:count], f"missing/{count}"]
                found = await store.get_many(asked)
                assert {k: item.value for k, item in found.items()} == {
                    k: written[k] for k in asked if k in written
                }
                etags = await store.get_etags(asked)
                assert etags == {k: item.etag for k, item in found.items()}
            # Deletes of 1 to 20 keys at a time, each checked gone, the rest kept.
            for count in range(1, 21):
                doomed, keys = keys[:count], keys[count:]
                await store.transact([Delete(key=k, etag=Expect.ANY) for k in doomed])
                for k in doomed:
                    del written[k]
                assert await store.get_many(doomed) == {}
            left = await store.get_many(list(written))
            assert {k: item.value for k, item in left.items()} == written

    asyncio.run(main())
    # Every statement SQLite ran was noted: each statement run once is traced once (a
    # statement refused before it ran, as _unbind's are, is neither).
    assert len(_Recording.traced) == len(_Recording.noted) > 0
    # Statements with a list in them, by their text with the list taken out: each kind
    # comes in at most len(_SIZES) sizes (before: one per count, hundreds here).
    listed = [t for t in _Recording.texts if re.search(r"IN \(|VALUES ", t)]
    kinds: dict[str, int] = {}
    for text in listed:
        shape = re.sub(r"IN \([?, ]*\)", "IN ()", text)
        shape = re.sub(r"VALUES [(?, )]*\)", "VALUES ()", shape)
        kinds[shape] = kinds.get(shape, 0) + 1
    assert kinds, _Recording.texts
    assert len(kinds) <= 6, kinds
    assert all(count <= len(_SIZES) for count in kinds.values()), kinds
    assert len(listed) <= 6 * len(_SIZES)
