"""``migrate`` answers once activation is confirmed; DONE is journaled right after.

The window between the answer and the DONE record (gateway/handoff/settles.py) is held
open here for as long as each test needs, and everything that can look at the source
in it is tried: the journal, the object coming straight back and leaving again, a
recovery pass, closing the host, and the DONE write failing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from gateway.config import load_config
from gateway.errors import StoreUnavailableError
from gateway.handoff.journal import open_source_key
from gateway.handoff.records import SourceRecord, SourceStep
from gateway.handoff.source import Source
from gateway.host import Host
from gateway.model import LifecycleState
from gateway.testing import World, serving
from tests.conftest import HOST_A, HOST_B

OBJECT = "obj://org-a.example/billing/invoice-30"
DATA = json.dumps({"invoice": 30}).encode()


class HeldDone:
    """Holds ``source``'s DONE writes until :attr:`release` is set, then makes them
    (or raises ``fail`` from the first one instead); counts them."""

    def __init__(self, source: Source, *, fail: Exception | None = None) -> None:
        self.release = asyncio.Event()
        self.calls = 0
        self._fail = fail
        self._done = source.done

    async def __call__(self, record: SourceRecord, receipt_raw: bytes, **kw: Any) -> SourceRecord:
        self.calls += 1
        await self.release.wait()
        if self._fail is not None:
            fail, self._fail = self._fail, None
            raise fail
        return await self._done(record, receipt_raw, **kw)


def hold_done(
    source: Source, monkeypatch: pytest.MonkeyPatch, *, fail: Exception | None = None
) -> HeldDone:
    held = HeldDone(source, fail=fail)
    monkeypatch.setattr(source, "done", held)
    return held


async def create(host: Host) -> None:
    await host.create_object(OBJECT, tenant="default", data=DATA, content_type="application/json")


async def step_of(host: Host, migration_id: str) -> SourceStep:
    loaded = await host.journal.source(migration_id)
    assert loaded is not None
    return loaded.value.step


async def is_open(host: Host, migration_id: str) -> bool:
    """Whether recovery still looks at the migration (its open marker is there)."""
    return await host.store.get(open_source_key(migration_id)) is not None


@asynccontextmanager
async def unserved(world: World, host_id: str) -> AsyncIterator[Host]:
    """``host_id`` opened as ``gateway migrate`` opens it: no server, no recovery task."""
    host = await Host.open(load_config(world.config(host_id)))
    try:
        yield host
    finally:
        await host.close()


def test_migrate_answers_done_while_the_done_record_is_still_being_written(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        async with serving(world, [HOST_A, HOST_B]) as hosts:
            a, b = hosts[HOST_A], hosts[HOST_B]
            await create(a)
            held = hold_done(a.source, monkeypatch)
            result = await a.migrate(OBJECT, tenant="default", destination=HOST_B)

            # The answer is proven: the object is live on B ...
            assert result.step is SourceStep.DONE
            live = await b.journal.object("default", OBJECT)
            assert live is not None and live.value.state is LifecycleState.ACTIVE
            # ... while A's record is still COMMITTED and open: durable, and recovery's
            # to finish should this process die now.
            assert await step_of(a, result.migration_id) is SourceStep.COMMITTED
            assert await is_open(a, result.migration_id)

            held.release.set()
            await a.settled()
            done = await a.journal.source(result.migration_id)
            assert done is not None and done.value.step is SourceStep.DONE
            assert done.value.activation_receipt  # the proof the answer rested on
            assert not await is_open(a, result.migration_id)
            assert held.calls == 1

    asyncio.run(main())


def test_the_object_comes_back_and_leaves_again_before_the_first_done_lands(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Back and forth, as bench_soak.py drives it: A's pending DONE refuses nothing."""

    async def main() -> None:
        async with serving(world, [HOST_A, HOST_B]) as hosts:
            a, b = hosts[HOST_A], hosts[HOST_B]
            await create(a)
            held = hold_done(a.source, monkeypatch)
            first = await a.migrate(OBJECT, tenant="default", destination=HOST_B)
            back = await b.migrate(OBJECT, tenant="default", destination=HOST_A)
            again = await a.migrate(OBJECT, tenant="default", destination=HOST_B)
            assert (first.step, back.step, again.step) == (SourceStep.DONE,) * 3
            assert again.epoch == first.epoch + 2
            assert await step_of(a, first.migration_id) is SourceStep.COMMITTED

            held.release.set()
            await a.settled()
            await b.settled()
            for migration_id in (first.migration_id, again.migration_id):
                assert await step_of(a, migration_id) is SourceStep.DONE
                assert not await is_open(a, migration_id)
            assert await step_of(b, back.migration_id) is SourceStep.DONE
            live = await b.journal.object("default", OBJECT)
            assert live is not None and live.value.state is LifecycleState.ACTIVE
            assert held.calls == 2

    asyncio.run(main())


def test_recovery_in_the_window_waits_for_the_done_write_instead_of_writing_it_again(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with serving(world, [HOST_B]), unserved(world, HOST_A) as a:
            await create(a)
            held = hold_done(a.source, monkeypatch)
            result = await a.migrate(OBJECT, tenant="default", destination=HOST_B)
            with caplog.at_level(logging.INFO, logger="gateway"):
                recovering = asyncio.create_task(a.recover(prune=False))
                await asyncio.sleep(0.2)
                assert not recovering.done(), "recovery waits for the settle under way"
                held.release.set()
                assert await recovering == 1  # it found the migration DONE
            assert held.calls == 1, "recovery neither re-sent Commit nor wrote DONE again"
            assert await step_of(a, result.migration_id) is SourceStep.DONE
            assert not await is_open(a, result.migration_id)
            assert not [
                r
                for r in caplog.records
                if r.levelno >= logging.INFO and "recovery" in r.getMessage()
            ]

    asyncio.run(main())


def test_close_waits_for_a_done_write_still_under_way(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        async with serving(world, [HOST_B]):
            async with unserved(world, HOST_A) as a:
                await create(a)
                held = hold_done(a.source, monkeypatch)
                result = await a.migrate(OBJECT, tenant="default", destination=HOST_B)
                assert result.step is SourceStep.DONE
                # Released only once close() is under way (and waiting for it).
                asyncio.get_running_loop().call_later(0.2, held.release.set)
            async with unserved(world, HOST_A) as reopened:
                assert await step_of(reopened, result.migration_id) is SourceStep.DONE
                assert not await is_open(reopened, result.migration_id)

    asyncio.run(main())


@pytest.mark.parametrize(
    ("failure", "level"),
    [
        pytest.param(
            StoreUnavailableError("the store went away"),
            logging.WARNING,
            id="store-unavailable",
        ),
        pytest.param(RuntimeError("a bug in the DONE write"), logging.ERROR, id="bug"),
    ],
)
def test_a_done_write_that_fails_is_logged_and_left_to_recovery(
    world: World,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    failure: Exception,
    level: int,
) -> None:
    """The answer stands (the object is B's); the record stays COMMITTED and open, and
    the next recovery pass re-sends Commit and journals DONE on B's receipt."""

    async def main() -> None:
        async with serving(world, [HOST_B]), unserved(world, HOST_A) as a:
            await create(a)
            held = hold_done(a.source, monkeypatch, fail=failure)
            held.release.set()
            with caplog.at_level(logging.WARNING, logger="gateway.handoff.settles"):
                result = await a.migrate(OBJECT, tenant="default", destination=HOST_B)
                await a.settled()
            assert result.step is SourceStep.DONE
            (logged,) = caplog.records
            assert logged.levelno == level and result.migration_id in logged.getMessage()
            assert "recovery finishes it" in logged.getMessage()
            assert await step_of(a, result.migration_id) is SourceStep.COMMITTED
            assert await is_open(a, result.migration_id)

            assert await a.recover(prune=False) == 1
            done = await a.journal.source(result.migration_id)
            assert done is not None and done.value.step is SourceStep.DONE
            assert done.value.activation_receipt
            assert not await is_open(a, result.migration_id)
            assert held.calls == 2

    asyncio.run(main())
