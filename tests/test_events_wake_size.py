"""A message's wakes reference it on the bus instead of each carrying a copy.

A wake (``inbox/`` entry) held the whole message, so queuing one message for a page of
1,000 subscribers wrote 1,000 copies of it in one transaction: a 60 KB message (the
limit is 64 KiB of JSON) made a transaction of about 60 MB. On SQLite that is 60 MB of
one commit and of memory per message; through Dapr it exceeds the sidecar's message
limit (32 MiB as deploy/ configures it, 4 MiB by default), so the message could never be
ingested, and at-least-once delivery would bring it back for good. An arrival's replay
(up to 1,000 wakes per topic) did the same. Now a wake holds its tenant, object and the
bus key; the bus holds the message once (it is written in the same transaction as the
first page), and delivery reads it from there. A wake whose message has left the bus
(kept BUS_RETENTION, the longest blackout whose messages are delivered after it) is
dropped with a warning; a wake written by an earlier version (the message inside) is
still delivered.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway.config import load_config
from gateway.host import Host
from gateway.lineage import EntryKind
from gateway.objectspec import parse_spec
from gateway.runtime import events
from gateway.stores import Expect, Operation, Put
from gateway.testing import HostSpec, build_world, create_from_spec
from gateway.testing.faults import SettableClock
from tests.conftest import HOST_A
from tests.daprd.components import state_store
from tests.daprd.runner import DaprdThread
from tests.test_events import OBJECT, POLICY, SPEC, TOPIC

#: Subscribers besides OBJECT: a full first page, and one more for the fan-out.
OTHERS = 1000
#: Message data near the limit (MAX_MESSAGE_BYTES, 64 KiB of JSON).
BLOB = "x" * 60_000
#: The most bytes a transaction of this scenario may write: the message twice (the bus
#: and the fan-out record) and a page of references.
MOST_BYTES = 1 << 20


def _others() -> list[str]:
    return [f"obj://org-a.example/orders/size-{n:04d}" for n in range(OTHERS)]


async def _open(tmp_path: Path, store: dict[str, Any] | None = None) -> tuple[Host, SettableClock]:
    spec = HostSpec(host_id=HOST_A, policy=POLICY, **({"store": store} if store else {}))
    world = await asyncio.to_thread(build_world, tmp_path / "world", [spec])
    clock = SettableClock()
    host = await Host.open(load_config(world.config(HOST_A)), clock=clock)
    await create_from_spec(host, OBJECT, parse_spec(SPEC, source="test"))
    await host.events.take_up("default", OBJECT)
    return host, clock


def _record_sizes(host: Host, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Bytes of values each transaction of the host's store writes, in order."""
    sizes: list[int] = []
    kind = type(host.store)  # a slotted class: patch the method, count this store's only
    transact = kind.transact

    async def recorded(self: Any, operations: Sequence[Operation]) -> Any:
        if self is host.store:
            sizes.append(sum(len(op.value) for op in operations if isinstance(op, Put)))
        return await transact(self, operations)

    monkeypatch.setattr(kind, "transact", recorded)
    return sizes


async def _index(host: Host, object_ids: list[str]) -> None:
    for start in range(0, len(object_ids), 100):
        await host.store.transact(
            [
                Put(
                    key=events._subs_key(TOPIC, "default", object_id),
                    value=object_id.encode(),
                    etag=Expect.ABSENT,
                )
                for object_id in object_ids[start : start + 100]
            ]
        )


async def _woken(host: Host) -> int:
    obj = await host.get_object(OBJECT, tenant="default")
    return [entry.kind for entry in obj.lineage.entries].count(EntryKind.WOKEN)


async def _fan_out_and_deliver(host: Host) -> None:
    for _ in range(10):
        if not await host.events.fan_out_once():
            break
    for _ in range(20):
        if not await host.events.deliver_once():
            break


async def _large_message_to_many(host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    others = _others()
    await _index(host, others)
    sizes = _record_sizes(host, monkeypatch)
    message = await host.events.publish(TOPIC, data={"note": BLOB}, message_id="m-big")
    inbox = await host.store.list(events.INBOX)
    assert len(inbox) == OTHERS  # the first page: OBJECT and 999 others
    await _fan_out_and_deliver(host)
    assert await host.store.list(events.INBOX) == []  # delivered, or dropped (not here)
    assert await host.store.list(events.FAN_OUT) == []
    assert await _woken(host) == 1
    assert max(sizes) <= MOST_BYTES, f"a transaction wrote {max(sizes)} bytes"
    # The bus still holds the message (for objects that arrive later), once.
    bus = await host.store.get(events._bus_key(message))
    assert bus is not None and BLOB in bus.value.decode()


def test_a_large_message_to_many_subscribers_writes_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        host, _clock = await _open(tmp_path)
        try:
            await _large_message_to_many(host, monkeypatch)
        finally:
            await host.close()

    asyncio.run(main())


def test_a_large_message_to_many_subscribers_through_dapr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the Dapr stand-in's state store, whose transactions go through the sidecar's
    gRPC message limit: the page of copies could not be written at all."""
    with DaprdThread(
        app_id="size", db=tmp_path / "daprd.db", components=[state_store("statestore")]
    ) as addresses:

        async def main() -> None:
            host, _clock = await _open(tmp_path, addresses.store_section())
            try:
                await _large_message_to_many(host, monkeypatch)
            finally:
                await host.close()

        asyncio.run(main())


def test_a_wake_written_with_its_message_inside_is_still_delivered(tmp_path: Path) -> None:
    """Stores written by an earlier version hold wakes in the old form."""

    async def main() -> None:
        host, clock = await _open(tmp_path)
        try:
            message = events.new_message(
                TOPIC,
                data={"order": 7},
                message_id="m-old",
                source="t",
                kind="k",
                received=clock.now(),
            )
            old = json.dumps(
                {"tenant": "default", "object_id": OBJECT, "message": message.encode().decode()},
                separators=(",", ":"),
            ).encode()
            await host.store.put(
                events._inbox_key("default", OBJECT, message), old, etag=Expect.ABSENT
            )
            assert await host.events.deliver_once() == 1
            assert await _woken(host) == 1
        finally:
            await host.close()

    asyncio.run(main())


def test_a_wake_whose_message_left_the_bus_is_dropped_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        host, _clock = await _open(tmp_path)
        try:
            message = await host.events.publish(TOPIC, data={"order": 7}, message_id="m-gone")
            await host.store.delete(events._bus_key(message), etag=Expect.ANY)
            await host.events.deliver_once()
            assert await host.store.list(events.INBOX) == []
            assert await _woken(host) == 0
            assert "left the bus" in caplog.text
        finally:
            await host.close()

    asyncio.run(main())
