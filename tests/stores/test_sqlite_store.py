"""SqliteStore: the store contract on a real file, plus what only SQLite has to show.

The SQLite-specific tests cover durability across reopen, several OS processes
sharing one file, a process killed mid-write, and the mapping of sqlite3 failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.errors import ConfigError, StoreError, StoreUnavailableError
from gateway.stores import Expect, Put, StateStore
from gateway.stores.sqlite import SqliteStore, _range_query
from tests.stores.contract import OpenStore, StoreContract

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "gateway.db"


class TestSqliteStoreContract(StoreContract):
    @pytest.fixture
    def open_store(self, db_path: Path) -> OpenStore:
        @contextlib.asynccontextmanager
        async def opened() -> AsyncIterator[StateStore]:
            async with SqliteStore.open(db_path, create=True) as store:
                yield store

        return opened


def _make_value_first_file(path: Path) -> None:
    """A store file as the gateway made them before session 28: the value column before
    the ETag (same schema version; every statement names its columns)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        raw.execute("PRAGMA journal_mode = WAL")
        raw.execute(
            "CREATE TABLE items (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL,"
            " etag TEXT NOT NULL)"
        )
        raw.execute("PRAGMA user_version = 1")
    finally:
        raw.close()


class TestSqliteStoreContractOnAValueFirstFile(StoreContract):
    """The whole contract again on a file made with the old column order: such files,
    written by earlier versions, keep working unchanged."""

    @pytest.fixture
    def open_store(self, db_path: Path) -> OpenStore:
        _make_value_first_file(db_path)

        @contextlib.asynccontextmanager
        async def opened() -> AsyncIterator[StateStore]:
            async with SqliteStore.open(db_path, create=True) as store:
                yield store

        return opened


def test_a_new_file_stores_the_etag_before_the_value(db_path: Path) -> None:
    """A row keeps its columns in the table's order; a value of several pages spills into
    overflow pages, so the ETag comes first to be read from the row's first page."""

    async def main() -> None:
        async with SqliteStore.open(db_path, create=True) as store:
            await store.put("k", b"v" * 100_000, etag=Expect.ABSENT)
            written = await store.get("k")
            assert written is not None
            assert await store.get_etags(["k"]) == {"k": written.etag}

    asyncio.run(main())
    raw = sqlite3.connect(db_path)
    try:
        columns = [name for _cid, name, *_rest in raw.execute("PRAGMA table_info(items)")]
        # The ETag, and what keeps an object record's entries as rows of their own
        # (schema version 2, docs/storage.md), before the value.
        assert columns == ["key", "etag", "entries_at", "entry_rows", "entry_ids", "value"]
    finally:
        raw.close()


def test_an_old_value_first_file_keeps_its_order(db_path: Path) -> None:
    """Opening a file made with the value first neither rewrites nor refuses it."""
    _make_value_first_file(db_path)

    async def main() -> None:
        async with SqliteStore.open(db_path, create=True) as store:
            await store.put("k", b"v" * 100_000, etag=Expect.ABSENT)
            written = await store.get("k")
            assert written is not None and written.value == b"v" * 100_000
            assert await store.get_etags(["k", "absent"]) == {"k": written.etag}

    asyncio.run(main())
    raw = sqlite3.connect(db_path)
    try:
        columns = [name for _cid, name, *_rest in raw.execute("PRAGMA table_info(items)")]
        assert columns == ["key", "value", "etag", "entries_at", "entry_rows", "entry_ids"]
    finally:
        raw.close()


def _run_child(script: str, *args: str, **popen: object) -> subprocess.Popen[str]:
    """Start ``python -c script args...`` with this checkout importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.Popen(  # type: ignore[call-overload,no-any-return]
        [sys.executable, "-c", textwrap.dedent(script), *args],
        env=env,
        text=True,
        **popen,
    )


# --- one process --------------------------------------------------------------------


def test_satisfies_the_protocol(db_path: Path) -> None:
    """SqliteStore is a StateStore (runtime-checkable protocol)."""

    async def main() -> None:
        async with SqliteStore.open(db_path, create=True) as store:
            assert isinstance(store, StateStore)

    asyncio.run(main())


def test_writes_survive_close_and_reopen(db_path: Path) -> None:
    """What a closed store wrote is there, with the same ETags, when the file is reopened."""

    async def write() -> dict[str, str]:
        async with SqliteStore.open(db_path, create=True) as store:
            await store.transact(
                [Put(key=f"k/{n}", value=b"v%d" % n, etag=Expect.ABSENT) for n in range(5)]
            )
            found = await store.get_many([f"k/{n}" for n in range(5)])
            etags = {key: item.etag for key, item in found.items()}
            await store.delete("k/4", etag=etags.pop("k/4"))
            return etags

    async def read(etags: dict[str, str]) -> None:
        async with SqliteStore.open(db_path, create=True) as store:
            found = await store.get_many([f"k/{n}" for n in range(5)])
            assert {key: item.etag for key, item in found.items()} == etags
            assert found["k/3"].value == b"v3"
            await store.put("k/0", b"new", etag=etags["k/0"])

    etags = asyncio.run(write())
    asyncio.run(read(etags))


def test_file_settings(db_path: Path) -> None:
    """The file is in WAL mode, the connection syncs FULL, the schema version is set."""

    async def main() -> None:
        async with SqliteStore.open(db_path, create=True) as store:
            # The connection may only be used on the store's worker thread.
            synchronous = store._executor.submit(
                lambda: store._connection.execute("PRAGMA synchronous").fetchone()
            ).result()
            assert synchronous == (2,)  # FULL
            with pytest.raises(sqlite3.ProgrammingError):
                store._connection.execute("SELECT 1")

    asyncio.run(main())
    raw = sqlite3.connect(db_path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert raw.execute("PRAGMA user_version").fetchone() == (2,)
    finally:
        raw.close()


def test_get_many_beyond_one_chunk(db_path: Path) -> None:
    """get_many() of more keys than one query takes returns every existing one."""

    async def main() -> None:
        async with SqliteStore.open(db_path, create=True) as store:
            keys = [f"bulk/{n:05d}" for n in range(1300)]
            await store.transact(
                [Put(key=key, value=key.encode(), etag=Expect.ABSENT) for key in keys[::2]]
            )
            found = await store.get_many(keys)
            assert list(found) == keys[::2]
            assert len({item.etag for item in found.values()}) == len(found)
            assert all(item.value == key.encode() for key, item in found.items())

    asyncio.run(main())


def test_list_prefix_at_code_point_edges(db_path: Path) -> None:
    """Prefixes ending in U+D7FF (next is U+E000) or U+10FFFF (no successor) list right."""
    keys = [
        "a\ud7ff",
        "a\ud7ffz",
        "a\ue000",
        "b\U0010ffff",
        "b\U0010ffff\U0010ffff",
        "c",
        "\U0010ffff",
    ]

    async def main() -> None:
        async with SqliteStore.open(db_path, create=True) as store:
            await store.transact([Put(key=key, value=b"", etag=Expect.ABSENT) for key in keys])
            assert await store.list("") == sorted(keys)
            assert await store.list("a\ud7ff") == ["a\ud7ff", "a\ud7ffz"]
            assert await store.list("b\U0010ffff") == ["b\U0010ffff", "b\U0010ffff\U0010ffff"]
            assert await store.list("\U0010ffff") == ["\U0010ffff"]

    asyncio.run(main())


@pytest.mark.parametrize("value_first", [False, True], ids=["new-file", "value-first-file"])
def test_a_page_after_a_cursor_is_a_range_on_the_key_index(
    db_path: Path, value_first: bool
) -> None:
    """A listing after a cursor starts its scan at the cursor (a SEARCH on the key's
    index, bounded on both ends), never reading the keys before it: a pruning pass deep in
    a large prefix costs what its page holds. On both column orders."""
    if value_first:
        _make_value_first_file(db_path)

    async def main() -> None:
        async with SqliteStore.open(db_path, create=True) as store:
            await store.transact(
                [Put(key=f"bus/{n:04d}", value=b"", etag=Expect.ABSENT) for n in range(300)]
            )
            assert await store.list("bus/", start_after="bus/0289") == [
                f"bus/{n:04d}" for n in range(290, 300)
            ]

    asyncio.run(main())
    for start_after in ("bus/0289", None, "a"):  # the cursor, the prefix, the prefix
        sql, params = _range_query("bus/", start_after, 1001)
        with sqlite3.connect(db_path) as connection:
            plan = connection.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
        details = " ".join(row[-1] for row in plan)
        # SQLite writes a ">=" bound as "key>?" in a plan.
        assert "INDEX sqlite_autoindex_items_1 (key>? AND key<?)" in details, details
        assert details.startswith("SEARCH"), details
        assert "SCAN" not in details, details
        assert "TEMP B-TREE" not in details, details  # no sort: the index gives the order


def test_misuse_is_a_type_or_value_error(db_path: Path) -> None:
    """Wrong argument types and unusable keys raise TypeError/ValueError, writing nothing."""

    async def main() -> None:
        async with SqliteStore.open(db_path, create=True) as store:
            with pytest.raises(TypeError):
                await store.put("k", "text", etag=Expect.ANY)  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="empty"):
                await store.put("", b"", etag=Expect.ANY)
            with pytest.raises(ValueError, match="Unicode"):
                await store.put("bad\udc80", b"", etag=Expect.ANY)
            with pytest.raises(TypeError, match="sequence"):
                await store.get_many("abc")
            with pytest.raises(ValueError, match="limit"):
                await store.list("", limit=-1)
            assert await store.list("") == []

    asyncio.run(main())


def test_closed_store_is_unavailable(db_path: Path) -> None:
    """After close() every call fails with StoreUnavailableError; closing twice is fine."""

    async def main() -> None:
        store = SqliteStore.open(db_path, create=True)
        await store.close()
        await store.close()
        with pytest.raises(StoreUnavailableError, match="closed"):
            await store.get("k")
        with pytest.raises(StoreUnavailableError, match="closed"):
            await store.put("k", b"", etag=Expect.ANY)

    asyncio.run(main())


def test_waits_for_another_writer_without_blocking_the_loop(db_path: Path) -> None:
    """A write waits (busy_timeout) for another connection's lock; the loop keeps running."""

    async def main() -> None:
        async with SqliteStore.open(db_path, busy_timeout=5, create=True) as store:
            other = sqlite3.connect(db_path, isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")
                put = asyncio.create_task(store.put("k", b"v", etag=Expect.ABSENT))
                # The loop runs these sleeps while the put waits on the worker thread; a
                # put that blocked the loop would have failed (lock still held) by now.
                for _ in range(20):
                    await asyncio.sleep(0.01)
                assert not put.done()
                other.execute("ROLLBACK")
                await asyncio.wait_for(put, timeout=5)
            finally:
                other.close()
            item = await store.get("k")
            assert item is not None
            assert item.value == b"v"

    asyncio.run(main())


def test_lock_held_past_busy_timeout_is_unavailable(db_path: Path) -> None:
    """A lock held longer than busy_timeout gives StoreUnavailableError naming the file."""

    async def main() -> None:
        async with SqliteStore.open(db_path, busy_timeout=0.2, create=True) as store:
            other = sqlite3.connect(db_path, isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")
                with pytest.raises(StoreUnavailableError) as caught:
                    await store.put("k", b"v", etag=Expect.ABSENT)
                assert str(db_path) in str(caught.value)
                assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
            finally:
                other.close()
            # The lock is gone and the failed write left nothing behind.
            assert await store.get("k") is None
            await store.put("k", b"v", etag=Expect.ABSENT)

    asyncio.run(main())


def test_unopenable_path_is_unavailable(tmp_path: Path) -> None:
    """A path that is a directory cannot be opened: StoreUnavailableError naming it."""
    with pytest.raises(StoreUnavailableError) as caught:
        SqliteStore.open(tmp_path, create=True)
    assert str(tmp_path) in str(caught.value)
    assert caught.value.__cause__ is not None


def test_a_missing_store_is_an_error_unless_creation_is_asked(tmp_path: Path) -> None:
    """A mistyped path must not become a new, empty store: without ``create`` a missing
    file is a ConfigError naming it, and neither it nor its directory appears."""
    path = tmp_path / "typo" / "state.db"
    with pytest.raises(ConfigError, match="does not exist") as caught:
        SqliteStore.open(path)
    assert str(path) in str(caught.value)
    assert not path.parent.exists()

    async def create_then_reopen() -> None:
        async with SqliteStore.open(path, create=True) as store:
            await store.put("k", b"v", etag=Expect.ABSENT)
        async with SqliteStore.open(path) as store:
            assert (await store.get("k")) is not None

    asyncio.run(create_then_reopen())


def test_an_sqlite_library_without_the_json_functions_is_named_at_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's ETag reads use json_group_object (built in since SQLite 3.38); a
    Python whose SQLite lacks it is refused when the store opens, with a StoreError
    naming the library's version and what to use, not on the first commit."""
    import gateway.stores.sqlite as module

    monkeypatch.setattr(module, "_FEATURE_PROBE", "SELECT no_such_json_function('k', 'v')")
    with pytest.raises(StoreError, match=r"lacks what the store needs") as caught:
        SqliteStore.open(tmp_path / "state.db", create=True)
    assert sqlite3.sqlite_version in str(caught.value)
    assert caught.value.hint is not None and "3.38" in caught.value.hint


def test_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    """A non-SQLite file is refused with a StoreError naming it, and left untouched."""
    path = tmp_path / "notes.db"
    garbage = b"this is not an SQLite database, just some text\n" * 100
    path.write_bytes(garbage)
    with pytest.raises(StoreError) as caught:
        SqliteStore.open(path, create=True)
    assert str(path) in str(caught.value)
    assert path.read_bytes() == garbage


def test_refuses_a_foreign_sqlite_database(tmp_path: Path) -> None:
    """An SQLite file with someone else's tables is refused, not written into."""
    path = tmp_path / "other.db"
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE items (id INTEGER)")
    raw.commit()
    raw.close()
    with pytest.raises(StoreError, match="did not create"):
        SqliteStore.open(path, create=True)


def test_refuses_a_newer_schema(db_path: Path) -> None:
    """A file written by a newer schema version is refused instead of misread."""

    async def create() -> None:
        async with SqliteStore.open(db_path, create=True):
            pass

    asyncio.run(create())
    raw = sqlite3.connect(db_path)
    raw.execute("PRAGMA user_version = 99")
    raw.close()
    with pytest.raises(StoreError, match="schema version 99"):
        SqliteStore.open(db_path, create=True)


# --- several processes --------------------------------------------------------------

_RACER = """
    import asyncio, json, sys
    from gateway.errors import ConcurrencyError
    from gateway.stores import Expect
    from gateway.stores.sqlite import SqliteStore, _range_query

    async def main(path: str, name: str, count: int) -> None:
        won = []
        async with SqliteStore.open(path, create=True) as store:
            print("ready", flush=True)
            sys.stdin.readline()  # start together
            for n in range(count):
                try:
                    await store.put(f"race/{n:03d}", name.encode(), etag=Expect.ABSENT)
                except ConcurrencyError:
                    continue
                won.append(n)
        print(json.dumps(won), flush=True)

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def test_two_processes_racing_to_create(db_path: Path) -> None:
    """Two processes create the same 200 keys with Expect.ABSENT: each key has one winner."""
    count = 200
    racers = {
        name: _run_child(
            _RACER,
            str(db_path),
            name,
            str(count),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for name in ("left", "right")
    }
    try:
        for racer in racers.values():
            assert racer.stdout is not None
            assert racer.stdout.readline().strip() == "ready"
        for racer in racers.values():
            assert racer.stdin is not None
            racer.stdin.write("go\n")
            racer.stdin.flush()
        won = {}
        for name, racer in racers.items():
            out, _ = racer.communicate(timeout=30)
            assert racer.returncode == 0
            won[name] = set(json.loads(out))
    finally:
        for racer in racers.values():
            if racer.poll() is None:
                racer.kill()
                racer.wait()

    assert won["left"].isdisjoint(won["right"])
    assert won["left"] | won["right"] == set(range(count))

    async def check() -> None:
        async with SqliteStore.open(db_path, create=True) as store:
            found = await store.get_many([f"race/{n:03d}" for n in range(count)])
            for name, numbers in won.items():
                for n in numbers:
                    assert found[f"race/{n:03d}"].value == name.encode()

    asyncio.run(check())


_WRITER = """
    import asyncio, os, sys
    from gateway.stores import Expect, Put
    from gateway.stores.sqlite import SqliteStore, _range_query

    async def main(path: str) -> None:
        async with SqliteStore.open(path, create=True) as store:
            # Continue where the previous (killed) writer stopped.
            heads = await store.get_many(["head/a", "head/b"])
            n = int(heads["head/a"].value) if heads else 0
            etags = {key: item.etag for key, item in heads.items()}
            while True:
                n += 1
                # Big enough that the kill often lands while a commit is being written.
                value = b"%d:" % n + os.urandom(48 * 1024)
                await store.transact(
                    [
                        Put(key=f"pair/{n:06d}/a", value=value, etag=Expect.ABSENT),
                        Put(key=f"pair/{n:06d}/b", value=value, etag=Expect.ABSENT),
                        Put(key="head/a", value=b"%d" % n, etag=etags.get("head/a", Expect.ABSENT)),
                        Put(key="head/b", value=b"%d" % n, etag=etags.get("head/b", Expect.ABSENT)),
                    ]
                )
                print(n, flush=True)  # only after transact() returned
                heads = await store.get_many(["head/a", "head/b"])
                etags = {key: item.etag for key, item in heads.items()}

    asyncio.run(main(sys.argv[1]))
"""


def test_sigkill_mid_write_leaves_every_transaction_whole(db_path: Path) -> None:
    """SIGKILL while writing: each transaction is all there or absent; returned ones stay."""
    for _round in range(3):
        writer = _run_child(_WRITER, str(db_path), stdout=subprocess.PIPE)
        assert writer.stdout is not None
        acknowledged = 0
        try:
            deadline = time.monotonic() + 10
            # Let it commit a few dozen transactions, then kill it in the middle of more.
            while acknowledged < 40 and time.monotonic() < deadline:
                line = writer.stdout.readline()
                if not line:
                    break
                acknowledged = int(line)
        finally:
            writer.send_signal(signal.SIGKILL)
            rest, _ = writer.communicate(timeout=10)
        assert writer.returncode == -signal.SIGKILL
        for line in rest.split():
            acknowledged = int(line)
        assert acknowledged >= 40, "the writer made no progress"

        raw = sqlite3.connect(db_path)
        try:
            assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        finally:
            raw.close()

        async def check(acknowledged: int) -> None:
            async with SqliteStore.open(db_path, create=True) as store:
                heads = await store.get_many(["head/a", "head/b"])
                head = int(heads["head/a"].value)
                assert heads["head/b"].value == heads["head/a"].value
                # A transaction whose transact() returned is durable.
                assert head >= acknowledged
                keys = await store.list("pair/")
                assert keys == [f"pair/{n:06d}/{side}" for n in range(1, head + 1) for side in "ab"]
                for n in range(1, head + 1):
                    pair = await store.get_many([f"pair/{n:06d}/a", f"pair/{n:06d}/b"])
                    assert pair[f"pair/{n:06d}/a"].value == pair[f"pair/{n:06d}/b"].value
                    assert pair[f"pair/{n:06d}/a"].value.startswith(b"%d:" % n)

        asyncio.run(check(acknowledged))


def test_reads_do_not_queue_behind_a_waiting_write(db_path: Path) -> None:
    """While a write waits for another connection's lock, reads still answer (they run on
    their own connections, reading the last committed snapshot)."""

    async def main() -> None:
        async with SqliteStore.open(db_path, busy_timeout=5, create=True) as store:
            await store.put("a", b"1", etag=Expect.ABSENT)
            other = sqlite3.connect(db_path, isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")
                put = asyncio.create_task(store.put("b", b"2", etag=Expect.ABSENT))
                await asyncio.sleep(0.05)
                # Before: this read queued behind the put on the one worker thread and
                # could not finish until the other connection let go.
                item = await asyncio.wait_for(store.get("a"), timeout=4)
                assert item is not None and item.value == b"1"
                assert await store.list("") == ["a"]
                assert not put.done()
                other.execute("ROLLBACK")
                await asyncio.wait_for(put, timeout=5)
            finally:
                other.close()
            # A read after a write returned sees it.
            assert await store.list("") == ["a", "b"]

    asyncio.run(main())


def test_concurrent_writes_share_commits_and_keep_first_write_wins(db_path: Path) -> None:
    """Many concurrent transactions, some racing on one key: each caller gets its own
    outcome (exactly one create of the raced key wins, the others see ConcurrencyError),
    a failed caller writes nothing, and every returned write is there after reopening."""
    from gateway.errors import ConcurrencyError

    async def main() -> list[BaseException | dict[str, str]]:
        async with SqliteStore.open(db_path, create=True) as store:
            jobs = []
            for index in range(40):
                ops = [Put(key=f"own/{index}", value=b"x", etag=Expect.ABSENT)]
                if index % 4 == 0:
                    ops.append(Put(key="raced", value=str(index).encode(), etag=Expect.ABSENT))
                jobs.append(store.transact(ops))
            return list(await asyncio.gather(*jobs, return_exceptions=True))

    outcomes = asyncio.run(main())
    failed = [i for i, o in enumerate(outcomes) if isinstance(o, BaseException)]
    assert all(isinstance(outcomes[i], ConcurrencyError) for i in failed)
    assert len(failed) == 9  # ten callers raced for "raced"; one won

    async def check() -> None:
        async with SqliteStore.open(db_path) as store:
            keys = await store.list("own/")
            assert sorted(keys) == sorted(f"own/{i}" for i in range(40) if i not in failed)
            raced = await store.get("raced")
            assert raced is not None
            winner = int(raced.value)
            assert winner % 4 == 0 and winner not in failed

    asyncio.run(check())


def test_the_writer_starts_the_next_group_without_the_event_loop(db_path: Path) -> None:
    """Writes queued behind a commit in flight are committed by the writer thread as soon
    as that commit returns, even while the event loop is busy (before, the loop's own
    turn started each group); their callers are answered once the loop runs again, and
    only after their commit."""

    async def main() -> None:
        async with SqliteStore.open(db_path, busy_timeout=5, create=True) as store:
            other = sqlite3.connect(db_path, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")  # the first group waits for this lock
            first = asyncio.create_task(store.put("first", b"1", etag=Expect.ABSENT))
            await asyncio.sleep(0.05)
            later = [
                asyncio.create_task(store.put(f"later/{n}", b"2", etag=Expect.ABSENT))
                for n in range(3)
            ]
            await asyncio.sleep(0.05)  # queued behind the first group
            assert not first.done() and not any(task.done() for task in later)
            other.execute("ROLLBACK")
            other.close()
            # The loop is blocked from here on: nothing of it may run the next group.
            reader = sqlite3.connect(db_path, isolation_level=None)
            deadline = time.monotonic() + 5
            while True:
                (count,) = reader.execute("SELECT count(*) FROM items").fetchone()
                if count == 4 or time.monotonic() > deadline:
                    break
                time.sleep(0.01)  # noqa: ASYNC251 - blocking the loop is the point
            reader.close()
            assert count == 4, "the queued group waited for the event loop"
            await asyncio.wait_for(asyncio.gather(first, *later), timeout=5)
            assert await store.list("") == ["first", "later/0", "later/1", "later/2"]

    asyncio.run(main())


def test_a_write_cancelled_before_its_group_forms_is_not_written(db_path: Path) -> None:
    """A caller cancelled while its write still waits for a group is left out of it (and
    the writes around it are not disturbed)."""

    async def main() -> None:
        async with SqliteStore.open(db_path, busy_timeout=5, create=True) as store:
            other = sqlite3.connect(db_path, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            first = asyncio.create_task(store.put("first", b"1", etag=Expect.ABSENT))
            await asyncio.sleep(0.05)
            dropped = asyncio.create_task(store.put("dropped", b"2", etag=Expect.ABSENT))
            kept = asyncio.create_task(store.put("kept", b"3", etag=Expect.ABSENT))
            await asyncio.sleep(0.05)
            dropped.cancel()
            await asyncio.sleep(0)
            other.execute("ROLLBACK")
            other.close()
            await asyncio.wait_for(asyncio.gather(first, kept), timeout=5)
            with pytest.raises(asyncio.CancelledError):
                await dropped
            assert await store.list("") == ["first", "kept"]

    asyncio.run(main())


async def _one_group(
    store: SqliteStore, db_path: Path, writes: list[list[Put]]
) -> tuple[list[BaseException | None], list[str]]:
    """``writes`` (one list per caller) committed as one group, and the statements the
    writer ran for it: a first write waits for another connection's lock while the
    others queue behind it, so they form the next group together."""
    statements: list[str] = []
    # Set on the writer thread (a connection is used on the thread that made it).
    await store._on_worker("trace", lambda: store._connection.set_trace_callback(statements.append))
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    first = asyncio.create_task(store.put("first", b"1", etag=Expect.ANY))
    await asyncio.sleep(0.05)
    callers = [asyncio.create_task(store.transact(ops)) for ops in writes]
    await asyncio.sleep(0.05)  # queued behind the first group
    assert not first.done() and not any(caller.done() for caller in callers)
    other.execute("ROLLBACK")
    other.close()
    outcomes = await asyncio.gather(first, *callers, return_exceptions=True)
    await store._on_worker("untrace", lambda: store._connection.set_trace_callback(None))
    # The first group's statements end with its COMMIT; the group's follow, to its own.
    ends = [n for n, sql in enumerate(statements) if sql == "COMMIT"]
    assert len(ends) == 2, statements
    group = statements[ends[0] + 1 : ends[1] + 1]
    return [o if isinstance(o, BaseException) else None for o in outcomes[1:]], group


def test_a_group_is_written_in_as_few_statements_as_one_caller(db_path: Path) -> None:
    """Every statement hands the GIL to the event loop's thread and waits to get it back
    (up to 5 ms); a savepoint, a read, a write and a release per caller made a group of
    24 callers about a hundred statements. Now: one read of all their ETags and one
    write, whatever their number; each caller still gets its own outcome, and callers
    writing the same key see each other's writes in order, as separate commits would."""
    from gateway.errors import ConcurrencyError

    async def main() -> None:
        async with SqliteStore.open(db_path, busy_timeout=5, create=True) as store:
            await store.put("taken", b"0", etag=Expect.ABSENT)
            writes = [[Put(key=f"own/{n}", value=b"x", etag=Expect.ABSENT)] for n in range(20)]
            writes.append([Put(key="taken", value=b"1", etag=Expect.ABSENT)])  # refused
            writes.append([Put(key="shared", value=b"a", etag=Expect.ABSENT)])  # wins
            writes.append([Put(key="shared", value=b"b", etag=Expect.ABSENT)])  # refused
            writes.append([Put(key="shared2", value=b"c", etag=Expect.ANY)])
            outcomes, statements = await _one_group(store, db_path, writes)
            refused = [n for n, outcome in enumerate(outcomes) if outcome is not None]
            assert refused == [20, 22]
            assert all(isinstance(outcomes[n], ConcurrencyError) for n in refused)
            assert len(statements) <= 5, statements  # BEGIN, read, write, COMMIT
            assert sorted(await store.list("own/")) == sorted(f"own/{n}" for n in range(20))
            assert (await store.get("taken")).value == b"0"  # type: ignore[union-attr]
            assert (await store.get("shared")).value == b"a"  # type: ignore[union-attr]
            assert (await store.get("shared2")).value == b"c"  # type: ignore[union-attr]

    asyncio.run(main())


def test_a_write_sqlite_refuses_fails_its_caller_only(db_path: Path) -> None:
    """When SQLite itself refuses a write of the group (here a trigger; in life a full
    disk or a value past its limits), the group's writes are undone and each caller is
    applied on its own: the others commit, the one refused gets a StoreError."""

    async def main() -> None:
        async with SqliteStore.open(db_path, busy_timeout=5, create=True) as store:
            await store.put("seed", b"0", etag=Expect.ABSENT)
            guard = sqlite3.connect(db_path, isolation_level=None)
            guard.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON items WHEN NEW.key = 'refused'"
                " BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END"
            )
            guard.close()
            writes = [
                [Put(key="before", value=b"1", etag=Expect.ABSENT)],
                [Put(key="refused", value=b"2", etag=Expect.ABSENT)],
                [Put(key="after", value=b"3", etag=Expect.ABSENT)],
            ]
            outcomes, _ = await _one_group(store, db_path, writes)
            assert outcomes[0] is None and outcomes[2] is None
            assert isinstance(outcomes[1], StoreError)
            assert "refused by a trigger" in str(outcomes[1])
            assert sorted(await store.list("")) == ["after", "before", "first", "seed"]

    asyncio.run(main())
