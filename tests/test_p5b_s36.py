"""Session 36, issue 13's P5: what the cycle path's commits cost the SQLite writer
thread and the event loop, kept down (gateway/stores/sqlite.py)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

from bench.bench_scale import store_writers
from gateway.stores import Expect, Put
from gateway.stores import sqlite as sqlite_store

#: What sqlite3 binds as it is; anything else goes through its adapter registry first,
#: whose failed lookups format and drop two AttributeErrors per parameter.
_BOUND_AS_IS = (int, float, str, bytearray)


class _Recording:
    """A connection that records what it is asked to bind and refuses it, as sqlite3
    refuses the unbindable last parameter."""

    def __init__(self) -> None:
        self.parameters: list[Any] = []

    def execute(self, sql: str, parameters: list[Any]) -> None:
        self.parameters = list(parameters)
        raise sqlite3.ProgrammingError("unsupported type")


def test_unbind_binds_nothing_sqlite3_must_adapt() -> None:
    recording = _Recording()
    sqlite_store._unbind(recording, "INSERT ...", 9)  # type: ignore[arg-type]
    *freed, last = recording.parameters
    assert len(freed) == 8
    assert {type(value) for value in freed} <= set(_BOUND_AS_IS)
    assert last is sqlite_store._UNBINDABLE


def test_p5_reads_the_cpu_of_the_sqlite_writer_thread(tmp_path: Path) -> None:
    """bench_scale's P5 prints the writer thread's CPU per cycle beside the loop's: the
    clocks it reads are those of the store's writer thread, which has run the writes."""
    store = sqlite_store.SqliteStore.open(tmp_path / "state.db", create=True)
    try:
        asyncio.run(store.transact([Put(key="k", value=b"v" * 1000, etag=Expect.ABSENT)]))
        clocks = store_writers()
        assert clocks
        assert sum(time.clock_gettime(clock) for clock in clocks) > 0
    finally:
        asyncio.run(store.close())
