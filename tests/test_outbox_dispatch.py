"""The outbox dispatcher's passes (gateway/runtime/outbox.py), on a real store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway._time import SystemClock
from gateway.runtime import outbox
from gateway.runtime.outbox import EVENTS, PENDING, Dispatcher, Event, event_key, outbox_puts
from gateway.stores.sqlite import SqliteStore


class StuckTarget:
    """An invoke target that never answers for one app (as a dead host behind a long
    timeout) and answers at once for the others."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.delivered: list[str] = []

    async def invoke(self, event: Event) -> None:
        if event.target.startswith("stuck/"):
            await self.release.wait()
        self.delivered.append(event.key)


def _event(object_id: str, app: str) -> Event:
    return Event(
        key=event_key("default", object_id, 1, 0),
        tenant="default",
        object_id=object_id,
        generation=1,
        rule="r",
        verb="invoke",
        resource=f"invoke:{app}/m",
        payload={},
        created_at=SystemClock().now(),
    )


def test_pending_events_behind_a_full_batch_of_undelivered_ones_are_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dispatch_once listed the first 1000 pending markers every pass: while those were
    in flight to a target that does not answer (or backing off between attempts), every
    event sorting after them waited, and a steady stream of such events sorting first
    starved them for good. Passes now go round pending/."""
    monkeypatch.setattr(outbox, "DISPATCH_BATCH", 3)

    async def main() -> None:
        async with SqliteStore.open(tmp_path / "s.db", create=True) as store:
            stuck = [_event(f"obj://a/stuck-{n}", "stuck") for n in range(4)]
            later = _event("obj://z/later", "fine")
            await store.transact([put for e in [*stuck, later] for put in outbox_puts(e)])
            target = StuckTarget()
            dispatcher = Dispatcher(store, invoker=target, sink=None, clock=SystemClock())
            try:
                for _pass in range(4):
                    await dispatcher.dispatch_once()
                    await asyncio.sleep(0)
                # Started in one of those passes; its delivery only has to finish (a bound
                # on a slow disk, not a timing assertion).
                for _ in range(500):
                    if await store.list(PENDING) == [PENDING + e.key for e in stuck]:
                        break
                    await asyncio.sleep(0.02)
                assert target.delivered == [later.key]
                assert await store.list(PENDING) == [PENDING + e.key for e in stuck]
                delivered = await store.get(EVENTS + later.key)
                assert delivered is not None
                assert Event.decode(later.key, delivered.value).status == "delivered"
            finally:
                target.release.set()
                await asyncio.gather(*dispatcher._inflight.values())
            assert sorted(target.delivered) == sorted(e.key for e in [*stuck, later])

    asyncio.run(main())
