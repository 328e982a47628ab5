"""The bus is pruned from its time index: a pass reads only the messages it deletes.

Each message on the bus has a ``busat/<topic>/<ms>-<digest>`` entry that names its time.
The prune used to read a page of bus messages (up to PRUNE_BATCH of up to 64 KiB) every
minute to find their times, young or not, beside the index's own key-based prune. Now
the index drives both: an expired index entry goes with the message it names, and only
those messages are read (to delete them only if still as read). Bus messages with no
index entry (damaged, or put by a replica of an earlier version) are still found, by a
slower sweep that reads values once every ORPHAN_SWEEP_EVERY passes.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from gateway.runtime import events
from gateway.stores import Expect, Put
from tests.test_events_bounds import _open
from tests.test_events_replay_index import _count_reads, _message

YOUNG = 50


def test_a_prune_pass_reads_no_young_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        host, clock = await _open(tmp_path)
        try:
            old = [_message(f"old-{n}", clock.now()) for n in range(3)]
            for message in old:
                await host.events.ingest(message)
            clock.offset = events.BUS_RETENTION + timedelta(minutes=1)
            for n in range(YOUNG):
                await host.events.ingest(_message(f"young-{n}", clock.now()))
            read = _count_reads(host, monkeypatch)
            await host.events.prune()
            # The first pass: the expired messages, read once to be deleted, then the
            # first orphan sweep (a page of values: the young ones left).
            assert set(read[:3]) == {events._bus_key(m) for m in old}
            young = set(await host.store.list(events.BUS))
            assert len(young) == YOUNG and set(read[3:]) == young
            read.clear()
            for _ in range(events.ORPHAN_SWEEP_EVERY - 1):
                await host.events.prune()
            assert read == []  # no message read between two sweeps
            await host.events.prune()
            assert set(read) == young  # the next sweep
            assert set(await host.store.list(events.BUS)) == young
            assert len(await host.store.list(events.BUS_AT)) == YOUNG
        finally:
            await host.close()

    asyncio.run(main())


def test_an_unindexed_bus_message_is_pruned_by_the_sweep(tmp_path: Path) -> None:
    """A message a replica of an earlier version put on the bus (no index entry) is
    still pruned after its retention, within ORPHAN_SWEEP_EVERY passes."""

    async def main() -> None:
        host, clock = await _open(tmp_path)
        try:
            message = _message("legacy", clock.now())
            await host.store.transact(
                [Put(key=events._bus_key(message), value=message.encode(), etag=Expect.ANY)]
            )
            await host.events.prune()  # the first pass sweeps: too young yet
            assert await host.store.list(events.BUS) == [events._bus_key(message)]
            clock.offset = events.BUS_RETENTION + timedelta(minutes=1)
            passes = 0
            while await host.store.list(events.BUS):
                await host.events.prune()
                passes += 1
                assert passes <= events.ORPHAN_SWEEP_EVERY, "the orphan was never swept"
        finally:
            await host.close()

    asyncio.run(main())


def test_a_young_copy_under_an_expired_entrys_key_is_kept(tmp_path: Path) -> None:
    """The same message redelivered after the bus forgot it is put again under the same
    bus key with a new index entry: a stale index entry left from the first copy (a
    replica pruned the message, not yet the entry) must not take the young copy."""

    async def main() -> None:
        host, clock = await _open(tmp_path)
        try:
            first = _message("again", clock.now())
            await host.events.ingest(first)
            clock.offset = events.BUS_RETENTION + timedelta(minutes=1)
            # As if another replica's sweep had deleted the message only.
            await host.store.delete(events._bus_key(first), etag=Expect.ANY)
            second = _message("again", clock.now())
            await host.events.ingest(second)
            assert events._bus_key(first) == events._bus_key(second)
            await host.events.prune()
            assert await host.store.list(events.BUS) == [events._bus_key(second)]
            assert await host.store.list(events.BUS_AT) == [events._bus_at_key(second)]
        finally:
            await host.close()

    asyncio.run(main())
