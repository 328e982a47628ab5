"""The embedded store's ETags without values (:meth:`SqliteStore.get_etags`), the ETags
:meth:`SqliteStore.transact` returns (each caller its own, also when commits are
shared), and large transactions written as few statements (still all or nothing).
The protocol's side of it, for every store, is in tests/stores/contract.py."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from gateway.errors import ConcurrencyError
from gateway.stores import Delete, Expect, Put
from gateway.stores.sqlite import _CHUNK, _ETAGS_AS_JSON, _UPSERT_ROWS, SqliteStore


def test_etags_are_read_by_key_without_copying_values(tmp_path: Path) -> None:
    """The ETag read is a lookup by key (never a scan), also of values far larger than a
    page, and answers exactly what a read of the values does."""
    path = tmp_path / "state.db"

    async def main() -> None:
        async with SqliteStore.open(path, create=True) as store:
            await store.put("a", b"x" * 200_000, etag=Expect.ABSENT)
            await store.put("b", b"y", etag=Expect.ABSENT)
            found = await store.get_many(["a", "b"])
            assert await store.get_etags(["a", "b", "c"]) == {
                key: item.etag for key, item in found.items()
            }

    asyncio.run(main())
    with sqlite3.connect(path) as connection:
        plan = connection.execute(
            "EXPLAIN QUERY PLAN " + _ETAGS_AS_JSON.format("?, ?"), ("a", "b")
        ).fetchall()
    assert any("USING INDEX sqlite_autoindex_items_1 (key=?)" in row[-1] for row in plan), plan


def test_each_caller_gets_the_etags_of_its_own_writes_when_commits_are_shared(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with SqliteStore.open(tmp_path / "s.db", create=True) as store:
            await store.put("gone", b"", etag=Expect.ABSENT)
            answers = await asyncio.gather(
                *(
                    store.transact(
                        [
                            Put(key=f"own/{n}/a", value=b"a", etag=Expect.ABSENT),
                            Put(key=f"own/{n}/b", value=b"b", etag=Expect.ABSENT),
                            *([Delete(key="gone", etag=Expect.ANY)] if n == 0 else []),
                        ]
                    )
                    for n in range(20)
                )
            )
            for n, etags in enumerate(answers):
                keys = [f"own/{n}/a", f"own/{n}/b"]
                assert etags == await store.get_etags(keys)
                assert set(etags) == set(keys)  # a delete has no ETag to return
            every = [etag for etags in answers for etag in etags.values()]
            assert len(set(every)) == len(every)

    asyncio.run(main())


def test_a_refused_transaction_writes_none_of_the_etags_it_chose(tmp_path: Path) -> None:
    async def main() -> None:
        async with SqliteStore.open(tmp_path / "s.db", create=True) as store:
            await store.put("k", b"1", etag=Expect.ABSENT)
            before = await store.get_etags(["k"])
            with pytest.raises(ConcurrencyError):
                await store.transact(
                    [
                        Put(key="k", value=b"2", etag=before["k"]),
                        Put(key="new", value=b"", etag="not-its-etag"),
                    ]
                )
            assert await store.get_etags(["k", "new"]) == before

    asyncio.run(main())


def test_transactions_larger_than_one_statement_stay_all_or_nothing(tmp_path: Path) -> None:
    """More puts than one upsert statement holds and more deletes than one IN list: all
    written; and with one stale precondition among them, none."""
    puts = _UPSERT_ROWS * 2 + 3
    deletes = _CHUNK + 7

    async def main() -> None:
        async with SqliteStore.open(tmp_path / "s.db", create=True) as store:
            doomed = [f"old/{n:04d}" for n in range(deletes)]
            await store.transact([Put(key=k, value=b"", etag=Expect.ABSENT) for k in doomed])
            ops = [Put(key=f"p/{n:04d}", value=b"%d" % n, etag=Expect.ABSENT) for n in range(puts)]
            refused = [*ops, *(Delete(key=k, etag=Expect.ANY) for k in doomed)]
            refused.append(Put(key="old/0000-x", value=b"", etag="stale"))
            with pytest.raises(ConcurrencyError):
                await store.transact(refused)
            assert await store.list("p/") == []
            assert len(await store.list("old/")) == deletes
            etags = await store.transact([*ops, *(Delete(key=k, etag=Expect.ANY) for k in doomed)])
            assert await store.list("old/") == []
            found = await store.get_many([op.key for op in ops])
            assert [item.value for item in found.values()] == [op.value for op in ops]
            assert etags == {key: item.etag for key, item in found.items()}

    asyncio.run(main())


def test_pooled_etags_are_fresh_and_a_forked_child_draws_its_own() -> None:
    import os

    from gateway.stores.sqlite import _pooled_etag

    drawn = {_pooled_etag() for _ in range(3000)}  # several pools' worth
    assert len(drawn) == 3000
    assert all(len(etag) == 32 and int(etag, 16) >= 0 for etag in drawn)
    _pooled_etag()  # a pool partly used, then a fork
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        os.write(write, _pooled_etag().encode())
        os._exit(0)
    os.waitpid(child, 0)
    from_child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert from_child != _pooled_etag()
