"""The embedded store checkpoints its WAL on a thread of its own, not in the writer's
commits (gateway/stores/sqlite.py, "Checkpoints run beside the writer").

A group of P5's cycles writes more than SQLite's default 1,000 pages of WAL, so every
COMMIT used to copy the whole WAL into the file and sync both before its callers were
answered. Now a COMMIT syncs the WAL only (durability unchanged), and the checkpointer
thread copies it afterwards; the writer's own automatic checkpoint remains as a bound
on the WAL. A new file grows only when a checkpoint copies pages into it, which tells
here whether one ran."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from gateway.stores import Expect, Put
from gateway.stores import sqlite as sqlite_store
from gateway.stores.sqlite import (
    _WRITER_AUTOCHECKPOINT,
    CHECKPOINT_PAGES,
    PAGE_SIZE,
    SqliteStore,
)

MIB = 1 << 20


def _puts(prefix: str, count: int, size: int) -> list[Put]:
    return [
        Put(key=f"{prefix}/{n:04d}", value=bytes([n % 251]) * size, etag=Expect.ANY)
        for n in range(count)
    ]


async def _checkpointer_idle(store: SqliteStore) -> None:
    """Wait until the checkpoint the last group asked for has run: the writer answers a
    group's callers before it asks, so first a job queued behind its drain."""
    await store._on_worker("wait for the writer", lambda: None)
    await asyncio.get_running_loop().run_in_executor(store._checkpointer, lambda: None)


def test_a_commit_returns_before_its_wal_is_copied_into_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """About 6 MiB in one commit (1,500 pages, past SQLite's default auto-checkpoint and
    short of the writer's bound): the file has not grown when the commit returns, and
    has once the checkpointer ran. Before, the COMMIT itself copied it."""
    released = threading.Event()
    checkpoint = SqliteStore._checkpoint

    def held_back(self: SqliteStore) -> None:
        released.wait(30)
        checkpoint(self)

    monkeypatch.setattr(SqliteStore, "_checkpoint", held_back)
    path = tmp_path / "s.db"

    async def main() -> None:
        async with SqliteStore.open(path, create=True) as store:
            await store.transact(_puts("warm", 1, 10))
            empty = path.stat().st_size
            written = _puts("big", 96, 64 << 10)
            await store.transact(written)
            assert path.stat().st_size < empty + MIB, "the COMMIT copied the WAL"
            released.set()
            await _checkpointer_idle(store)
            assert path.stat().st_size > empty + 6 * MIB
            found = await store.get_many([op.key for op in written])
            assert [item.value for item in found.values()] == [op.value for op in written]

    assert 96 * (64 << 10) // PAGE_SIZE > CHECKPOINT_PAGES
    assert 96 * (64 << 10) // PAGE_SIZE < _WRITER_AUTOCHECKPOINT
    asyncio.run(main())


def test_the_wal_stays_bounded_under_back_to_back_groups(tmp_path: Path) -> None:
    """Writers that keep the writer thread busy (so that the WAL is never started again
    between a checkpoint and the next group): the writer's own automatic checkpoint
    bounds the WAL to its size and the largest commit."""
    path = tmp_path / "s.db"
    largest = 0

    async def main() -> None:
        nonlocal largest
        async with SqliteStore.open(path, create=True) as store:
            for round_ in range(6):
                # 8 callers of 1 MiB each at once: groups of several callers.
                await asyncio.gather(
                    *(
                        store.transact(_puts(f"r{round_}c{caller}", 16, 64 << 10))
                        for caller in range(8)
                    )
                )
                wal = path.with_name(path.name + "-wal")
                largest = max(largest, wal.stat().st_size)
            found = await store.get_many([f"r5c7/{n:04d}" for n in range(16)])
            assert len(found) == 16

    asyncio.run(main())
    frame = PAGE_SIZE + 24
    group = 8 * 16 * ((64 << 10) // PAGE_SIZE + 2)  # a group of all 8 callers, generously
    assert largest <= (_WRITER_AUTOCHECKPOINT + group) * frame, largest


def test_close_stops_the_checkpointer_and_keeps_every_write(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    written = _puts("big", 96, 64 << 10)

    async def write() -> None:
        async with SqliteStore.open(path, create=True) as store:
            await store.transact(written)

    asyncio.run(write())
    assert not [t for t in threading.enumerate() if t.name.startswith("sqlite-checkpoint")]
    # The last connection closed copied the WAL and removed it, as before.
    assert not path.with_name(path.name + "-wal").exists()

    async def read() -> None:
        async with SqliteStore.open(path) as store:
            found = await store.get_many([op.key for op in written])
            assert [item.value for item in found.values()] == [op.value for op in written]

    asyncio.run(read())


def test_a_failed_checkpoint_costs_no_write_and_is_asked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint only copies what the synced WAL already holds: its failure is left
    to the next one, and the writer goes on."""
    attempts: list[int] = []
    connect = sqlite_store._connect_checkpointer

    def failing(file: Path, busy_timeout: float) -> sqlite3.Connection:
        attempts.append(1)
        if len(attempts) == 1:
            raise sqlite3.OperationalError("disk I/O error")
        return connect(file, busy_timeout)

    monkeypatch.setattr(sqlite_store, "_connect_checkpointer", failing)
    path = tmp_path / "s.db"

    async def main() -> None:
        async with SqliteStore.open(path, create=True) as store:
            for round_ in range(2):
                await store.transact(_puts(f"r{round_}", 96, 64 << 10))
                await _checkpointer_idle(store)
            assert len(attempts) == 2
            found = await store.get_many([f"r1/{n:04d}" for n in range(96)])
            assert len(found) == 96

    asyncio.run(main())


def test_the_writer_connection_checkpoints_only_past_its_bound(tmp_path: Path) -> None:
    async def main() -> None:
        async with SqliteStore.open(tmp_path / "s.db", create=True) as store:
            pages = await store._on_worker(
                "read the setting",
                lambda: store._connection.execute("PRAGMA wal_autocheckpoint").fetchone()[0],
            )
            assert pages == _WRITER_AUTOCHECKPOINT

    asyncio.run(main())


def test_the_writer_connection_keeps_the_default_page_cache(tmp_path: Path) -> None:
    """The writer keeps SQLite's default page cache, as the readers do: a larger one is
    dropped whenever another process commits to the file (every ``gateway migrate``
    beside a running server), and only churned the soak's heap (session 43)."""

    async def main() -> None:
        async with SqliteStore.open(tmp_path / "s.db", create=True) as store:
            await store.transact(_puts("k", 1, 10))
            writer = await store._on_worker(
                "read the setting",
                lambda: store._connection.execute("PRAGMA cache_size").fetchone()[0],
            )
            reader = await store._read(
                "read the setting",
                lambda connection: connection.execute("PRAGMA cache_size").fetchone()[0],
            )
            assert writer == reader == -2000

    asyncio.run(main())
