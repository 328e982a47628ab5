"""A message wakes every subscriber on the host, however many there are.

``ingest`` listed the first MAX_SUBSCRIBERS_PER_TOPIC (1000) subscribers of the topic and
queued wakes for those only: the 1,001st never heard of the message and nobody was told.
Now the message goes on the bus with the wakes of the first page of subscribers and, when
there are more, a ``fanout/`` record holding the message and the last subscriber queued;
the events loop queues one page after it per transaction, advancing the record in the
same transaction, so a crash between pages resumes where the last committed page ended:
no subscriber is skipped, and none is queued twice (and the ``seen`` record would stop a
second evaluation anyway). Refusing the 1,001st subscription instead was rejected: the
subscriber index is per host across tenants, so one tenant's objects would decide
whether another tenant's object may subscribe (docs/adr/0005-messages-and-calls.md).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from gateway.host import Host
from gateway.lineage import EntryKind
from gateway.objectspec import parse_spec
from gateway.runtime import events
from gateway.runtime.events import Events
from gateway.stores import Expect, Put
from gateway.testing import create_from_spec
from tests.test_events import OBJECT, SPEC, TOPIC
from tests.test_events_bounds import _open

#: One more subscriber than one transaction of the real constants queues.
SUBSCRIBERS = 1001


def _others(count: int) -> list[str]:
    return [f"obj://org-a.example/orders/fan-{n:04d}" for n in range(count)]


def test_the_1001st_subscriber_of_a_topic_is_woken_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the serving events loop, with the real page size: one real subscriber
    (OBJECT) and 1,000 more in the subscriber index; every one gets its wake queued."""

    async def main() -> None:
        host, _clock = await _open(tmp_path)
        stop = asyncio.Event()
        try:
            store = host.store
            others = _others(SUBSCRIBERS - 1)
            for start in range(0, len(others), 500):
                await store.transact(
                    [
                        Put(
                            key=events._subs_key(TOPIC, "default", object_id),
                            value=object_id.encode(),
                            etag=Expect.ABSENT,
                        )
                        for object_id in others[start : start + 500]
                    ]
                )
            subscribed = [OBJECT, *others]
            assert len(await store.list(events._subs_prefix(TOPIC))) == SUBSCRIBERS

            # Wakes stay queued (delivery would drop the ones of objects not here),
            # so the inbox shows who was reached.
            async def no_delivery() -> int:
                return 0

            monkeypatch.setattr(host.events, "deliver_once", no_delivery)
            message = await host.events.publish(TOPIC, data={"order": 7}, message_id="m-fan")
            running = asyncio.create_task(host.events.run(stop, tenants=("default",)))
            expected = sorted(events._inbox_key("default", o, message) for o in subscribed)
            for _ in range(200):  # a bound, not a timing assertion
                if len(await store.list(events.INBOX)) >= SUBSCRIBERS:
                    break
                await asyncio.sleep(0.05)
            stop.set()
            await running
            assert await store.list(events.INBOX) == expected
            assert await store.list(events.FAN_OUT) == []  # finished, and forgotten
        finally:
            stop.set()
            await host.close()

    asyncio.run(main())


async def _subscribers(host: Host, count: int) -> list[str]:
    spec = parse_spec(SPEC, source="test")
    created = [OBJECT]
    for object_id in _others(count - 1):
        await create_from_spec(host, object_id, spec)
        created.append(object_id)
    for object_id in created[1:]:
        await host.events.take_up("default", object_id)
    return created


async def _woken(host: Host, object_id: str) -> tuple[int, int]:
    obj = await host.get_object(object_id, tenant="default")
    kinds = [entry.kind for entry in obj.lineage.entries]
    return json.loads(obj.data).get("cancels", 0), kinds.count(EntryKind.WOKEN)


async def _deliver_all(events_: Events) -> None:
    for _ in range(50):
        if not await events_.deliver_once():
            return
    raise AssertionError("wakes still being delivered after 50 passes")


def test_pages_resume_after_a_restart_and_wake_each_subscriber_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages of 2 over 5 real subscribers: the first page with the message, one by a
    pass of this process, the rest by a fresh Events (a restarted process, which knows
    nothing but the store); each object evaluates the message exactly once."""
    monkeypatch.setattr(events, "SUBSCRIBERS_PER_PAGE", 2, raising=False)

    async def main() -> None:
        host, clock = await _open(tmp_path)
        try:
            store = host.store
            subscribed = await _subscribers(host, 5)
            await host.events.publish(TOPIC, data={"order": 7}, message_id="m-paged")
            assert len(await store.list(events.INBOX)) == 2
            assert len(await store.list(events.FAN_OUT)) == 1
            assert await host.events.fan_out_once() == 2
            assert len(await store.list(events.INBOX)) == 4

            restarted = Events(host.events.ctx, host.events.runner, clock=clock)
            assert await restarted.fan_out_once() == 1  # the last page, short: done
            assert await store.list(events.FAN_OUT) == []
            assert await restarted.fan_out_once() == 0
            await _deliver_all(restarted)
            for object_id in subscribed:
                assert await _woken(host, object_id) == (1, 1), object_id

            # At least once from outside: the same message again queues nothing.
            await host.events.publish(TOPIC, data={"order": 7}, message_id="m-paged")
            assert await store.list(events.INBOX) == []
            assert await store.list(events.FAN_OUT) == []
        finally:
            await host.close()

    asyncio.run(main())


def test_two_processes_fanning_out_the_same_message_skip_no_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each page advances the record conditionally (its ETag): of two processes reading
    the same cursor, one commits its page and the other's write is refused, so it reads
    the record again rather than queue the same page or jump past one."""
    monkeypatch.setattr(events, "SUBSCRIBERS_PER_PAGE", 2, raising=False)

    async def main() -> None:
        host, clock = await _open(tmp_path)
        try:
            store = host.store
            subscribed = await _subscribers(host, 7)
            message = await host.events.publish(TOPIC, data={"order": 7}, message_id="m-race")
            other = Events(host.events.ctx, host.events.runner, clock=clock)
            for _ in range(10):
                queued = await asyncio.gather(host.events.fan_out_once(), other.fan_out_once())
                if not any(queued):
                    break
            assert await store.list(events.FAN_OUT) == []
            expected = sorted(events._inbox_key("default", o, message) for o in subscribed)
            assert await store.list(events.INBOX) == expected
            await _deliver_all(host.events)
            for object_id in subscribed:
                assert await _woken(host, object_id) == (1, 1), object_id
        finally:
            await host.close()

    asyncio.run(main())


def test_a_damaged_fan_out_record_is_dropped_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A record that does not decode (or whose cursor is not a subscriber of its topic)
    cannot be continued; it is deleted with a warning naming it, not retried for good."""

    async def main() -> None:
        host, clock = await _open(tmp_path)
        try:
            store = host.store
            message = events.new_message(
                TOPIC, data=1, message_id="m-x", source="t", kind="k", received=clock.now()
            )
            await store.transact(
                [
                    Put(key=f"{events.FAN_OUT}a/b", value=b"{not json", etag=Expect.ABSENT),
                    Put(
                        key=events._fan_out_key(message),
                        value=events._encode_fan_out(message, "subs/elsewhere/x"),
                        etag=Expect.ABSENT,
                    ),
                ]
            )
            assert await host.events.fan_out_once() == 0
            assert await store.list(events.FAN_OUT) == []
            assert await store.list(events.INBOX) == []
            assert caplog.text.count("remaining subscribers are not woken") == 2
            assert "its cursor is not a subscriber" in caplog.text
        finally:
            await host.close()

    asyncio.run(main())
