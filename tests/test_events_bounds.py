"""The bounds of messages and calls, in one process with a settable clock: the records
that make evaluation at-most-once and that count refused calls are pruned after their
retention; repeated identical refusals reach the lineage once per interval, with a
count; oversized and malformed input is refused before any work."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway._time import format_time
from gateway.config import load_config
from gateway.errors import CallDeniedError, ConfigError, LimitExceededError
from gateway.handoff.journal import held_key
from gateway.host import Host
from gateway.limits import MAX_CALL_REQUEST_BYTES, MAX_MESSAGE_BYTES
from gateway.lineage import EntryKind
from gateway.model import GovernedObject
from gateway.objectspec import parse_spec
from gateway.runtime import calls, events
from gateway.stores import Expect, Put
from gateway.testing import HostSpec, build_world, create_from_spec
from gateway.testing.faults import SettableClock
from tests.conftest import HOST_A
from tests.test_events import OBJECT, POLICY, SPEC, TOPIC


async def _open(tmp_path: Path) -> tuple[Host, SettableClock]:
    world = await asyncio.to_thread(
        build_world, tmp_path / "world", [HostSpec(host_id=HOST_A, policy=POLICY)]
    )
    clock = SettableClock()
    host = await Host.open(load_config(world.config(HOST_A)), clock=clock)
    spec = parse_spec({**SPEC, "answers": {"status": {"reply": "data.status"}}}, source="test")
    await create_from_spec(host, OBJECT, spec)
    await host.events.take_up("default", OBJECT)
    return host, clock


def test_seen_records_and_the_bus_are_pruned_after_their_retention(tmp_path: Path) -> None:
    async def main() -> None:
        host, clock = await _open(tmp_path)
        try:
            store = host.store
            await host.events.publish(TOPIC, data={"order": 7}, message_id="m-1")
            assert await host.events.deliver_once() == 1
            assert len(await store.list(events.SEEN)) == 1
            assert len(await store.list(events.BUS)) == 1

            # The same id again: the bus holds it, nothing is queued or evaluated.
            await host.events.publish(TOPIC, data={"order": 7}, message_id="m-1")
            assert await store.list(events.INBOX) == []

            clock.offset = events.BUS_RETENTION + timedelta(minutes=1)
            # The bus entry and its time index entry, not the seen record.
            assert await host.events.prune() == 2
            assert await store.list(events.BUS) == []
            # Redelivered after the bus forgot it: the seen record still stops it.
            await host.events.publish(TOPIC, data={"order": 7}, message_id="m-1")
            assert await host.events.deliver_once() == 1
            obj = await host.get_object(OBJECT, tenant="default")
            assert json.loads(obj.data)["cancels"] == 1
            assert [e.kind for e in obj.lineage.entries].count(EntryKind.WOKEN) == 1

            clock.offset = events.SEEN_RETENTION + timedelta(hours=2)
            # The bus entry again with its index entry, and the seen record.
            assert await host.events.prune() == 3
            assert await store.list(events.SEEN) == []
            assert await store.list(events.BUS_AT) == []
        finally:
            await host.close()

    asyncio.run(main())


def test_prune_passes_are_bounded_and_go_round_both_prefixes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each pass looks at PRUNE_BATCH records of each prefix at most (the bus through its
    time index), and successive passes resume where the last one stopped: expired bus
    messages and seen records are all reached however many young ones (more than a
    batch) sort among them; no young one is deleted."""
    monkeypatch.setattr(events, "PRUNE_BATCH", 10)

    async def main() -> None:
        host, clock = await _open(tmp_path)
        try:
            store = host.store

            async def fill(name: str, count: int) -> None:
                now = clock.now()
                operations: list[Put] = []
                for i in range(count):
                    message = events.new_message(
                        "noise/topic",
                        data=None,
                        message_id=f"{name}-{i}",
                        source="t",
                        kind="t",
                        received=now,
                    )
                    operations.extend(events._bus_puts(message))
                    operations.append(
                        Put(
                            key=events._seen_key("default", f"{name}-object", message),
                            value=json.dumps({"at": format_time(now)}).encode(),
                            etag=Expect.ANY,
                        )
                    )
                await store.transact(operations)

            await fill("old", 15)
            old = set(await store.list(events.BUS)) | set(await store.list(events.SEEN))
            clock.offset = events.SEEN_RETENTION + timedelta(minutes=1)
            await fill("young", 25)
            records = set(await store.list(events.BUS)) | set(await store.list(events.SEEN))
            young = records - old
            assert len(old) == 30 and len(young) == 50
            passes = 0
            while old & set(await store.list("")):
                # A page of each prefix looked at, and the messages the index page names.
                assert await host.events.prune() <= 4 * events.PRUNE_BATCH
                passes += 1
                assert passes <= 8, "expired records not reached"
            assert young <= set(await store.list(""))
        finally:
            await host.close()

    asyncio.run(main())


def test_wakes_held_for_a_staged_object_do_not_starve_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """deliver_once looked at the first DELIVERY_BATCH inbox entries every pass: wakes
    held for an object staged here by an unsettled migration (or frozen by a stuck one)
    stay in the inbox, and once a batch of them sorted first, no wake of any object after
    them was ever delivered. Passes now go round the inbox."""
    monkeypatch.setattr(events, "DELIVERY_BATCH", 4)

    async def main() -> None:
        host, clock = await _open(tmp_path)
        try:
            store = host.store
            staged = next(
                oid
                for oid in (f"obj://org-a.example/orders/staged-{n}" for n in range(64))
                if events._object_digest(oid) < events._object_digest(OBJECT)
            )
            await store.put(held_key("default", staged), b"{}", etag=Expect.ABSENT)
            waiting = [
                events.new_message(
                    TOPIC,
                    data={"order": n},
                    message_id=f"w-{n}",
                    source="t",
                    kind="t",
                    received=clock.now(),
                )
                for n in range(6)
            ]
            await store.transact(
                [
                    Put(
                        key=events._inbox_key("default", staged, message),
                        value=events._wrap("default", staged, message),
                        etag=Expect.ABSENT,
                    )
                    for message in waiting
                ]
                # On the bus too, as ingest puts them (a wake names its message there).
                + [put for m in waiting for put in events._bus_puts(m)]
            )
            await host.events.publish(TOPIC, data={"order": 7}, message_id="m-1")
            for _pass in range(4):
                await host.events.deliver_once()
            obj = await host.get_object(OBJECT, tenant="default")
            assert [e.kind for e in obj.lineage.entries].count(EntryKind.WOKEN) == 1
            # The staged object's wakes wait for it, all of them.
            assert len(await store.list(events._inbox_prefix("default", staged))) == 6
        finally:
            await host.close()

    asyncio.run(main())


def _arrived(obj: GovernedObject, *, froze: datetime, host: str) -> GovernedObject:
    """``obj`` as if it had frozen at another host at ``froze`` and arrived here after."""
    frozen = obj.record(EntryKind.FROZEN, host="spiffe://elsewhere", at=froze)
    return frozen.record(EntryKind.REHOSTED, host=host, at=froze + timedelta(seconds=5))


async def _put_on_bus(host: Host, ids: list[str], received: datetime) -> None:
    messages = [
        events.new_message(
            TOPIC, data={"order": 7}, message_id=i, source="t", kind="t", received=received
        )
        for i in ids
    ]
    await host.store.transact([put for m in messages for put in events._bus_puts(m)])


def test_an_arrival_replays_every_blackout_message_not_those_of_the_first_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replay after an arrival read the first PRUNE_BATCH bus messages of each topic:
    the bus keeps a topic's messages for an hour and its keys are hash-ordered, so with
    more than that on the topic, the blackout's messages were a random part of what was
    looked at, and the others were never delivered. The replay now pages through the
    topic and queues every message received since the freeze (less the clock skew)."""
    monkeypatch.setattr(events, "PRUNE_BATCH", 5)

    async def main() -> None:
        host, clock = await _open(tmp_path)
        try:
            froze = clock.now()
            await _put_on_bus(host, [f"before-{n}" for n in range(12)], froze - timedelta(hours=1))
            blackout = [f"during-{n}" for n in range(3)]
            await _put_on_bus(host, blackout, froze + timedelta(seconds=1))
            obj = await host.get_object(OBJECT, tenant="default")
            arrived = _arrived(obj, froze=froze, host=host.events.ctx.host)
            operations = await host.events._replay(arrived, [TOPIC])
            queued = []
            for op in operations:  # each wake names its message on the bus
                if isinstance(op, Put):
                    on_bus = await host.store.get(json.loads(op.value)["bus"])
                    assert on_bus is not None
                    queued.append(json.loads(on_bus.value)["id"])
            assert sorted(queued) == blackout
        finally:
            await host.close()

    asyncio.run(main())


def test_a_replay_queues_a_bounded_number_of_wakes_per_topic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The wakes of a replay go into one transaction with the arrival's subscriptions: at
    most MAX_REPLAYED_PER_TOPIC per topic, and the rest are named in a warning."""
    monkeypatch.setattr(events, "PRUNE_BATCH", 5)
    monkeypatch.setattr(events, "MAX_REPLAYED_PER_TOPIC", 4)

    async def main() -> None:
        host, clock = await _open(tmp_path)
        try:
            froze = clock.now()
            await _put_on_bus(host, [f"during-{n}" for n in range(11)], froze)
            obj = await host.get_object(OBJECT, tenant="default")
            arrived = _arrived(obj, froze=froze, host=host.events.ctx.host)
            with caplog.at_level("WARNING", logger=events.__name__):
                operations = await host.events._replay(arrived, [TOPIC])
            assert len(operations) == 4
            # The wakes were full within the first page: the pages after it are not read.
            assert f"at least 1 more messages on {TOPIC} since" in caplog.text
        finally:
            await host.close()

    asyncio.run(main())


def test_a_serving_host_catches_up_on_a_backlog_of_expired_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prune pass a minute, of one page per prefix, was all pruning did: a prefix that
    gained more than a page a minute grew without limit. While passes find at least half
    a page expired, the next one comes after PRUNE_CATCH_UP_SECONDS instead."""
    monkeypatch.setattr(events, "PRUNE_BATCH", 10)
    monkeypatch.setattr(events, "PRUNE_CATCH_UP_SECONDS", 0.01)

    async def main() -> None:
        host, clock = await _open(tmp_path)
        stop = asyncio.Event()
        try:
            await _put_on_bus(host, [f"old-{n}" for n in range(60)], clock.now())
            clock.offset = events.BUS_RETENTION + timedelta(minutes=1)
            running = asyncio.create_task(host.events.run(stop, tenants=("default",)))
            for _ in range(500):  # a bound, not a timing assertion
                if not await host.store.list(events.BUS):
                    break
                await asyncio.sleep(0.02)
            assert await host.store.list(events.BUS) == []
            stop.set()
            await running
        finally:
            stop.set()
            await host.close()

    asyncio.run(main())


def test_repeated_refusals_are_counted_not_copied(tmp_path: Path) -> None:
    async def main() -> None:
        host, clock = await _open(tmp_path)
        try:
            for _ in range(5):
                with pytest.raises(CallDeniedError, match="may not call status"):
                    await host.calls.call(
                        tenant="default",
                        object_id=OBJECT,
                        method="status",
                        data=b"",
                        caller="org-b.example/cluster/west/gateway",
                    )
            obj = await host.get_object(OBJECT, tenant="default")
            denied = [e.detail for e in obj.lineage.entries if e.kind is EntryKind.CALL_DENIED]
            assert len(denied) == 1 and "denied" in denied[0]

            clock.offset = calls.DENIAL_RECORD_INTERVAL + timedelta(seconds=1)
            with pytest.raises(CallDeniedError):
                await host.calls.call(
                    tenant="default",
                    object_id=OBJECT,
                    method="status",
                    data=b"",
                    caller="org-b.example/cluster/west/gateway",
                )
            obj = await host.get_object(OBJECT, tenant="default")
            denied = [e.detail for e in obj.lineage.entries if e.kind is EntryKind.CALL_DENIED]
            assert len(denied) == 2 and "(and 4 more times since" in denied[1], denied

            assert await host.calls.prune_denials() == 0  # touched just now
            clock.offset += calls.DENIAL_RETENTION
            assert await host.calls.prune_denials() == 2  # its counter and its caller's record
        finally:
            await host.close()

    asyncio.run(main())


def test_pruning_reaches_refusal_counters_behind_a_full_batch_of_young_ones(
    tmp_path: Path,
) -> None:
    """prune_denials looked at the first ``limit`` counters each time: while those were
    touched within the retention (callers refused every day), expired counters sorting
    after them were never looked at. Passes now go round the prefix."""

    async def main() -> None:
        host, clock = await _open(tmp_path)
        try:
            store = host.store
            now = clock.now()
            old = now - calls.DENIAL_RETENTION - timedelta(minutes=1)
            young = [f"{calls.DENIALS}default/a-busy/{n:02d}" for n in range(12)]
            expired = [f"{calls.DENIALS}default/z-quiet/{n:02d}" for n in range(4)]
            await store.transact(
                [
                    Put(key=key, value=calls._encode_counter(1, at, at), etag=Expect.ABSENT)
                    for keys, at in ((young, now), (expired, old))
                    for key in keys
                ]
            )
            for _pass in range(6):
                assert await host.calls.prune_denials(limit=5) <= 5
            assert await store.list(calls.DENIALS) == young
        finally:
            await host.close()

    asyncio.run(main())


def test_oversized_or_malformed_input_is_refused_before_work(tmp_path: Path) -> None:
    async def main() -> None:
        host, _clock = await _open(tmp_path)
        try:
            with pytest.raises(LimitExceededError, match="at most"):
                await host.events.publish(TOPIC, data="x" * MAX_MESSAGE_BYTES)
            with pytest.raises(ConfigError, match="not of the form"):
                await host.events.publish("no-slash", data=None)
            with pytest.raises(LimitExceededError, match="the request is"):
                await host.calls.call(
                    tenant="default",
                    object_id=OBJECT,
                    method="status",
                    data=b"1" * (MAX_CALL_REQUEST_BYTES + 1),
                    caller=host.host_id,
                )
            with pytest.raises(ConfigError, match="is not a name"):
                await host.calls.call(
                    tenant="default", object_id=OBJECT, method="../x", data=b"", caller="x/y"
                )
            assert await host.store.list(events.BUS) == []
        finally:
            await host.close()

    asyncio.run(main())


def test_a_replay_reads_a_bounded_number_of_pages_per_topic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A take-up runs on every arrival (and at start for every arrived object): its reads
    of a topic's bus stop after MAX_REPLAY_PAGES pages however busy the topic was during
    the blackout, and a warning says the rest was not looked at. (Messages from before
    the freeze are not read at all: the time index is listed from the freeze.)"""
    monkeypatch.setattr(events, "PRUNE_BATCH", 5)
    monkeypatch.setattr(events, "MAX_REPLAY_PAGES", 2)

    async def main() -> None:
        host, clock = await _open(tmp_path)
        try:
            froze = clock.now()
            await _put_on_bus(host, [f"old-{n}" for n in range(30)], froze - timedelta(minutes=30))
            during = [f"during-{n}" for n in range(30)]
            await _put_on_bus(host, during, froze + timedelta(seconds=1))
            obj = await host.get_object(OBJECT, tenant="default")
            # Woken by every one of them already (on the host it came from): nothing to
            # queue, so only the page bound stops the listing.
            for message_id in during:
                message = events.new_message(
                    TOPIC,
                    data={"order": 7},
                    message_id=message_id,
                    source="t",
                    kind="t",
                    received=froze + timedelta(seconds=1),
                )
                obj = obj.record(
                    EntryKind.WOKEN,
                    host="spiffe://elsewhere",
                    at=froze,
                    detail=f"message {message.digest} on {TOPIC} (id {message_id}, from t)",
                )
            arrived = _arrived(obj, froze=froze, host=host.events.ctx.host)
            pages: list[str | None] = []
            store_type = type(host.store)
            listing = store_type.list

            async def counted(store: Any, prefix: str, **kwargs: Any) -> list[str]:
                if prefix.startswith((events.BUS, events.BUS_AT)):
                    pages.append(kwargs.get("start_after"))
                return await listing(store, prefix, **kwargs)

            monkeypatch.setattr(store_type, "list", counted)
            with caplog.at_level("WARNING", logger=events.__name__):
                operations = await host.events._replay(arrived, [TOPIC])
            assert operations == []
            assert len(pages) == 2
            assert f"the bus holds at least 10 messages on {TOPIC} since" in caplog.text
        finally:
            await host.close()

    asyncio.run(main())
