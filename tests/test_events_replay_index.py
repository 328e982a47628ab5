"""An arrival's replay reads the bus's time index from the freeze, not the whole bus.

The bus keys messages by digest (a redelivery finds its own key taken), so they are
hash-ordered and the replay read every message the bus kept on each subscribed topic,
up to 10,000 of up to 64 KiB, on every arrival, to find the blackout's by their time.
Now each message also has a ``busat/<topic>/<ms>-<digest>`` entry written with it; the
replay lists those from the freeze (less the clock skew) and builds each wake from the
key alone, reading no message. Index entries are pruned by the time in their keys.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.lineage import EntryKind
from gateway.runtime import events
from gateway.stores import Expect, Put
from tests.test_events import OBJECT, TOPIC
from tests.test_events_bounds import _arrived, _open

BEFORE = 300  #: messages on the topic from before the freeze (within the retention)
DURING = 3  #: the blackout's


def _count_reads(host: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Keys of bus messages read through the host's store (get and get_many)."""
    read: list[str] = []
    kind = type(host.store)
    get, get_many = kind.get, kind.get_many

    async def counted_get(self: Any, key: str) -> Any:
        if self is host.store and key.startswith(events.BUS):
            read.append(key)
        return await get(self, key)

    async def counted_many(self: Any, keys: Sequence[str]) -> Any:
        if self is host.store:
            read.extend(k for k in keys if k.startswith(events.BUS))
        return await get_many(self, keys)

    monkeypatch.setattr(kind, "get", counted_get)
    monkeypatch.setattr(kind, "get_many", counted_many)
    return read


def _message(message_id: str, received: Any) -> events.Message:
    return events.new_message(
        TOPIC, data={"order": 7}, message_id=message_id, source="t", kind="t", received=received
    )


def test_an_arrivals_replay_reads_no_message_and_only_the_blackouts_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        host, clock = await _open(tmp_path)
        try:
            froze = clock.now()
            for n in range(BEFORE):  # through the production path, as Dapr delivers them
                await host.events.ingest(_message(f"before-{n}", froze - timedelta(minutes=30)))
            during = [_message(f"during-{n}", froze + timedelta(seconds=1)) for n in range(DURING)]
            for message in during:
                await host.events.ingest(message)
            obj = await host.get_object(OBJECT, tenant="default")
            arrived = _arrived(obj, froze=froze, host=host.events.ctx.host)
            read = _count_reads(host, monkeypatch)
            operations = await host.events._replay(arrived, [TOPIC])
            assert read == []  # not one message read
            queued = sorted(op.key for op in operations if isinstance(op, Put))
            assert queued == sorted(events._inbox_key("default", OBJECT, m) for m in during)
        finally:
            await host.close()

    asyncio.run(main())


def test_replayed_wakes_deliver_the_blackouts_messages(tmp_path: Path) -> None:
    """End to end: the wakes a replay queues name the messages on the bus, and each is
    delivered once."""

    async def main() -> None:
        host, clock = await _open(tmp_path)
        try:
            froze = clock.now()
            # On the bus before the object came back: no wake queued for it then.
            await host.store.transact(
                [
                    put
                    for n in range(DURING)
                    for put in events._bus_puts(_message(f"d-{n}", froze + timedelta(seconds=1)))
                ]
            )
            obj = await host.get_object(OBJECT, tenant="default")
            arrived = _arrived(obj, froze=froze, host=host.events.ctx.host)
            await host.store.transact([*await host.events._replay(arrived, [TOPIC])])
            for _ in range(5):
                if not await host.events.deliver_once():
                    break
            woken = await host.get_object(OBJECT, tenant="default")
            kinds = [entry.kind for entry in woken.lineage.entries]
            assert kinds.count(EntryKind.WOKEN) == DURING
        finally:
            await host.close()

    asyncio.run(main())


def test_index_entries_go_with_their_retention(tmp_path: Path) -> None:
    async def main() -> None:
        host, clock = await _open(tmp_path)
        try:
            for n in range(5):
                await host.events.ingest(_message(f"m-{n}", clock.now()))
            assert len(await host.store.list(events.BUS_AT)) == 5
            clock.offset = events.BUS_RETENTION - timedelta(minutes=1)
            await host.events.prune()
            assert len(await host.store.list(events.BUS_AT)) == 5  # not yet
            clock.offset = events.BUS_RETENTION + timedelta(minutes=1)
            await host.events.prune()
            assert await host.store.list(events.BUS_AT) == []
            assert await host.store.list(events.BUS) == []
        finally:
            await host.close()

    asyncio.run(main())


def test_messages_an_earlier_version_put_on_the_bus_are_indexed_at_start(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        host, clock = await _open(tmp_path)
        try:
            froze = clock.now()
            legacy = [_message(f"old-{n}", froze + timedelta(seconds=1)) for n in range(4)]
            await host.store.transact(
                [Put(key=events._bus_key(m), value=m.encode(), etag=Expect.ABSENT) for m in legacy]
            )
            assert await host.events.index_bus() == 4
            assert await host.events.index_bus() == 0  # once: the index is there now
            obj = await host.get_object(OBJECT, tenant="default")
            arrived = _arrived(obj, froze=froze, host=host.events.ctx.host)
            operations = await host.events._replay(arrived, [TOPIC])
            assert len(operations) == 4
        finally:
            await host.close()

    asyncio.run(main())
