"""A cycle that loses a write race leaves no reference cycle behind (session 35, issue 13).

Why: a refused write's ``ConcurrencyError`` carries a traceback through the store's
frames (the writer thread's group of every caller's operations, the awaiting frame that
holds the future the error sits in). Those frames and the error refer to each other, so
reference counting never frees them: the cyclic collector does, and when any of them
outlived a young collection, only the middle one, about every ten minutes under the
soak. Until then they keep the batch's encoded objects (tens of KiB each) alive, and
the arenas and heap they fill keep that high after they go. The cycle runner answers a
conflict with ``CONFLICT`` and never shows the traceback, so it drops it."""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.errors import ConcurrencyError
from gateway.handoff.journal import Journal, object_key
from gateway.host import Host
from gateway.runtime.cycle import CycleResult, CycleRunner
from gateway.stores import Expect, Put
from gateway.stores.sqlite import SqliteStore
from gateway.testing import World, create_from_spec
from tests.test_cycle import _StaleReads, in_host, one_host, spec

__all__ = ["one_host"]  # the fixture, used by name

RULE = {"name": "p", "when": "true", "publish": {"topic": "alerts/overdue"}}
CAPABILITIES = [{"resource": "pubsub:alerts/*", "actions": ["publish"]}]


@pytest.fixture
def saved_garbage() -> Iterator[list[object]]:
    """What the collector finds unreachable from here on (kept, to be looked at); the
    collector runs only when asked, so nothing is freed behind the test's back."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.garbage.clear()
    try:
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if enabled:
            gc.enable()


def refused_writes(garbage: list[object]) -> list[str]:
    """Refusals, and the runner's or store's frames, that only the collector could free."""
    found: list[str] = []
    for thing in garbage:
        if isinstance(thing, ConcurrencyError):
            found.append(type(thing).__name__)
        elif type(thing).__name__ == "frame":
            filename = thing.f_code.co_filename  # type: ignore[attr-defined]
            if "gateway/runtime/" in filename or "gateway/stores/" in filename:
                found.append(f"{filename}:{thing.f_code.co_name}")  # type: ignore[attr-defined]
    return found


@pytest.mark.parametrize("batch", [False, True], ids=["one", "batch"])
def test_a_lost_race_leaves_no_cyclic_garbage(
    one_host: World, saved_garbage: list[object], batch: bool
) -> None:
    async def scenario(host: Host) -> None:
        ids = [f"obj://org-a.example/live/race-{n}" for n in range(3)]
        for object_id in ids:
            await create_from_spec(host, object_id, spec([RULE], capabilities=CAPABILITIES))
        loser = ids[1]
        key = object_key("default", loser)
        stale = await host.store.get(key)
        assert (await host.cycles.run("default", loser, generation=0)).result is (
            CycleResult.EVALUATED
        )
        racing = replace(host.context, journal=Journal(_StaleReads(host.store, {key: stale})))
        runner = CycleRunner(racing)
        gc.collect()
        saved_garbage.clear()  # what opening the host and creating left is not the race's
        if batch:
            answers = await runner.run_many("default", [(i, 0) for i in ids])
            assert getattr(answers[loser], "result", None) is CycleResult.CONFLICT
        else:
            report = await runner.run("default", loser, generation=0)
            assert report.result is CycleResult.CONFLICT

    in_host(one_host, scenario)
    # Only now: the host is closed, so the store's writer thread has left the frames
    # that answered the race (while it runs they are alive, not garbage).
    gc.collect()
    left = refused_writes(saved_garbage)
    assert not left, "\n".join(left)


def test_a_refused_write_leaves_no_cyclic_garbage(
    tmp_path: Path, saved_garbage: list[object]
) -> None:
    """A refused caller's error kept the writer thread's frames (up to _drain_groups,
    whose outcomes list holds the error) and transact's frame (whose `done` future holds
    it): two reference cycles per refusal, holding the group's writes until a middle
    collection. The writer now drops a refusal's traceback and transact lets go of
    `done`."""

    async def scenario() -> None:
        store = SqliteStore.open(tmp_path / "store.db", create=True)
        try:
            await store.transact([Put(key="k", value=b"x" * 50_000, etag=Expect.ABSENT)])
            gc.collect()
            saved_garbage.clear()
            refused = False
            try:  # caught as a caller does (pytest.raises keeps the error, frames and all)
                await store.transact([Put(key="k", value=b"y" * 50_000, etag=Expect.ABSENT)])
            except ConcurrencyError:
                refused = True
            assert refused
        finally:
            await store.close()  # the writer thread has left its frames

    asyncio.run(scenario())
    gc.collect()
    left = refused_writes(saved_garbage)
    assert not left, "\n".join(left)


def test_the_step_finder_names_what_each_step_was_made_of(tmp_path: Path) -> None:
    """bench/rss_probe/steps.py: a step over the threshold is shown with its sample's
    collections (objects freed), heap and tasks; a smaller rise is not a step."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench" / "rss_probe"))
    from steps import describe, samples

    line = (
        "{t} rss {rss} anon 180.0 | arenas {arenas} live {live} free 0.5 unused 0.2 blocks 9"
        " | malloc in use {heap} free 10.0 mmapped 1.3 | pymalloc | cpu {cpu} || "
        "gc0_runs={gc0} gc0_freed={freed} gc1_runs=3 gc1_freed=10 tasks={tasks} sqlite_mib=5.0"
    )
    log = tmp_path / "1.log"
    log.write_text(
        "# -m serve\n"
        + line.format(
            t=10, rss=200.0, arenas=80, live=70.0, heap=60.0, cpu=1.0, gc0=5, freed=100, tasks=34
        )
        + "\n"
        + line.format(
            t=20, rss=212.5, arenas=82, live=71.0, heap=69.0, cpu=3.0, gc0=6, freed=30_100, tasks=44
        )
        + "\n"
    )
    before, after = samples(str(log))
    shown = describe(before, after)
    assert "(+12.5)" in shown and "arenas   +2" in shown and "heap in use  +9.0" in shown
    assert "gc0 x1 freed 30,000" in shown and "gc1" not in shown
    assert "tasks  44 (+10)" in shown and "cpu  2.0 s" in shown
