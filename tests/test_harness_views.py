"""The waiting helpers judge "never two live copies" on views that held at one instant.

Hosts are read one after another; a migration that commits between two reads shows the
source FROZEN (read just before) and the destination ACTIVE (read just after). Session
30 saw that torn view fail a crash test once under load. These worlds script what each
read of the stores returns.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.model import LifecycleState
from gateway.testing import harness
from gateway.testing.harness import RunningWorld
from gateway.testing.invariants import Snapshot


def record(state: LifecycleState, *, epoch: int, generation: int = 3) -> Any:
    live = state in (LifecycleState.ACTIVE, LifecycleState.FROZEN)
    return SimpleNamespace(
        state=state, epoch=epoch, generation=generation, migration_id="m-1", live=live
    )


def view(**records: Any) -> dict[str, Snapshot]:
    return {
        host: Snapshot(host=host, object=obj, sources=(), destinations=())
        for host, obj in records.items()
    }


class ScriptedWorld(RunningWorld):
    """Each call to ``snapshots`` is the next view of the script (the last one repeats)."""

    def __init__(self, views: list[dict[str, Snapshot]]) -> None:
        self._views: Iterator[dict[str, Snapshot]] = iter(views)
        self._last = views[-1]
        self.reads = 0

    def snapshots(self, object_id: str, *, tenant: str = "default") -> dict[str, Snapshot]:
        self.reads += 1
        self._last = next(self._views, self._last)
        return self._last


FROZEN_A = record(LifecycleState.FROZEN, epoch=2)
MOVED_A = record(LifecycleState.MOVED, epoch=2)
ACTIVE_B = record(LifecycleState.ACTIVE, epoch=2)
ACTIVE_A = record(LifecycleState.ACTIVE, epoch=1)


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness.time, "sleep", lambda seconds: None)


def test_a_torn_read_across_a_commit_is_not_two_live_copies() -> None:
    # First look: A read before the commit, B after it. Then the hosts as they are.
    world = ScriptedWorld([view(a=FROZEN_A, b=ACTIVE_B), view(a=MOVED_A, b=ACTIVE_B)])
    assert world.wait_settled("obj://x") == "b"


def test_two_live_copies_that_hold_still_fail() -> None:
    world = ScriptedWorld([view(a=ACTIVE_A, b=ACTIVE_B)])
    with pytest.raises(AssertionError, match="2 live copies"):
        world.wait_settled("obj://x")


def test_a_view_that_keeps_moving_is_not_judged_until_it_holds_still() -> None:
    # Two live in every read, but each read differs from the one before (the records
    # keep changing), so no read is a view of one instant; then the world settles.
    moving = [
        view(a=record(LifecycleState.ACTIVE, epoch=1, generation=g), b=ACTIVE_B)
        for g in range(harness.CONSISTENT_ATTEMPTS + 2)
    ]
    world = ScriptedWorld([*moving, view(a=MOVED_A, b=ACTIVE_B)])
    assert world.wait_settled("obj://x") == "b"
    assert world.reads > harness.CONSISTENT_ATTEMPTS


def test_a_one_instant_view_of_two_live_copies_fails_even_after_a_torn_one() -> None:
    # A torn first look, then two identical reads that both show two live copies.
    world = ScriptedWorld(
        [view(a=FROZEN_A, b=ACTIVE_B), view(a=ACTIVE_A, b=ACTIVE_B), view(a=ACTIVE_A, b=ACTIVE_B)]
    )
    with pytest.raises(AssertionError, match="2 live copies"):
        world.wait_settled("obj://x")
