"""Session 36, issue 13's P5: what the cycle path's commits cost the SQLite writer
thread and the event loop, kept down (gateway/stores/sqlite.py)."""

from __future__ import annotations

import sqlite3
from typing import Any

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
