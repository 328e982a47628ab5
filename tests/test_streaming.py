"""Large objects: data stored as chunks and moved as a stream, hashed as it arrives.

A stream that is short, long or does not hash to the digest its signed transfer names is
refused, and nothing changes on either side: no journal record, no chunks left behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from gateway import envelope as dsse
from gateway._time import to_millis
from gateway.blobs import CHUNK_BYTES, read_blob, stored_files
from gateway.errors import TransferStreamError
from gateway.handoff.destination import Destination
from gateway.handoff.journal import encode_counter
from gateway.handoff.source import Source, new_migration_id
from gateway.host import Host
from gateway.lineage import verify_lineage
from gateway.model import GovernedObject, LifecycleState
from gateway.stores import Expect
from gateway.testing import World, serving
from gateway.testing.faults import FaultyPeers
from tests.conftest import HOST_A, HOST_B

OBJECT = "obj://org-a.example/archive/scan-7"
SIZE = 5 * CHUNK_BYTES + 12_345  # several chunks and a partial one
PAYLOAD = os.urandom(SIZE)


async def pieces(data: bytes, size: int = 300_000) -> AsyncIterator[bytes]:
    """Chunks of a size unrelated to the store's, as a network would deliver them."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def create_large(host: Host) -> GovernedObject:
    return await host.create_object(
        OBJECT,
        tenant="default",
        data=b"",
        content_type="application/octet-stream",
        data_stream=pieces(PAYLOAD),
    )


async def content(host: Host, obj: GovernedObject) -> bytes:
    assert obj.blob is not None
    return b"".join([chunk async for chunk in read_blob(host.store, obj.blob)])


def run(world: World, scenario, hosts: list[str] | None = None) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        async with serving(world, hosts) as opened:
            await scenario(opened)

    asyncio.run(main())


def test_large_object_streams_to_the_destination_and_leaves_the_source(world: World) -> None:
    async def scenario(hosts: dict[str, Host]) -> None:
        a, b = hosts[HOST_A], hosts[HOST_B]
        created = await create_large(a)
        assert created.size == SIZE and created.data == b""
        assert created.data_digest() == hashlib.sha256(PAYLOAD).digest()
        assert created.blob is not None and created.blob.chunks == 6
        result = await a.migrate(OBJECT, tenant="default", destination=HOST_B)
        arrived = await b.get_object(OBJECT, tenant="default")
        assert arrived.state is LifecycleState.ACTIVE and arrived.epoch == result.epoch
        assert await content(b, arrived) == PAYLOAD
        verify_lineage(arrived.lineage, object_id=OBJECT, trust=b.trust, sealed=False)
        left = await a.get_object(OBJECT, tenant="default")
        assert left.state is LifecycleState.MOVED
        assert left.blob is not None and left.blob.location == "" and left.size == SIZE
        assert await a.store.list("blob/") == []  # the source's chunks went with the object
        assert stored_files(a.store) == [] and len(stored_files(b.store)) == 1  # its file too
        # And back again: the data survives a round trip byte for byte.
        await b.migrate(OBJECT, tenant="default", destination=HOST_A)
        home = await a.get_object(OBJECT, tenant="default")
        assert await content(a, home) == PAYLOAD
        assert await b.store.list("upload/") == []
        assert stored_files(b.store) == [] and len(stored_files(a.store)) == 1

    run(world, scenario)


async def sealed_transfer(a: Host) -> bytes:
    """A's real transfer of the large object, sealed but not journaled (A is untouched)."""
    loaded = await a.journal.object("default", OBJECT)
    assert loaded is not None
    _frozen, raw, _digest, _epoch = a.source._seal(
        loaded.value, HOST_B, new_migration_id(), dsse.PayloadType.TRANSFER, a.clock.now()
    )
    return raw


@pytest.mark.parametrize(
    ("stream", "reason"),
    [
        (lambda: pieces(PAYLOAD[:-1]), "truncated"),
        (lambda: pieces(PAYLOAD + b"x"), "longer than"),
        (
            lambda: pieces(PAYLOAD[:100] + bytes([PAYLOAD[100] ^ 1]) + PAYLOAD[101:]),
            "does not hash",
        ),
        (lambda: pieces(b""), "truncated"),
    ],
    ids=["truncated", "too-long", "digest-mismatch", "empty"],
)
def test_a_bad_stream_is_refused_and_nothing_changes(world: World, stream, reason: str) -> None:  # type: ignore[no-untyped-def]
    async def scenario(hosts: dict[str, Host]) -> None:
        a, b = hosts[HOST_A], hosts[HOST_B]
        await create_large(a)
        raw = await sealed_transfer(a)
        with pytest.raises(TransferStreamError, match=reason):
            await a.peers.client(HOST_B).prepare_stream(raw, stream, size=SIZE)
        assert await b.store.list("journal/") == []
        assert await b.store.list("upload/") == [] and stored_files(b.store) == []
        assert await b.store.list("fence/") == [] and await b.store.list("nonce/") == []
        obj = await a.get_object(OBJECT, tenant="default")
        assert obj.state is LifecycleState.ACTIVE and obj.epoch == 0
        assert await content(a, obj) == PAYLOAD
        # The same transfer with the right bytes still goes through afterwards.
        receipt = await a.peers.client(HOST_B).prepare_stream(
            raw, lambda: pieces(PAYLOAD), size=SIZE
        )
        assert receipt

    run(world, scenario)


def test_large_object_cannot_be_sent_without_its_data(world: World) -> None:
    async def scenario(hosts: dict[str, Host]) -> None:
        a, b = hosts[HOST_A], hosts[HOST_B]
        await create_large(a)
        with pytest.raises(TransferStreamError, match="PrepareStream"):
            await a.peers.client(HOST_B).prepare(await sealed_transfer(a))
        assert await b.store.list("journal/") == []

    run(world, scenario)


def test_an_aborted_stream_migration_discards_the_staged_chunks(world: World) -> None:
    async def scenario(hosts: dict[str, Host]) -> None:
        a, b = hosts[HOST_A], hosts[HOST_B]
        await create_large(a)
        network = FaultyPeers(a.peers, sender=a.host_id)
        network.lose_reply("prepare")
        lossy = Source(a.context, network)
        with pytest.raises(Exception):  # noqa: B017, PT011 - the reply was lost: PeerUnavailableError
            await lossy.migrate(OBJECT, tenant="default", destination=HOST_B)
        assert await b.store.list("upload/") == []  # B staged, then discarded on Abort
        assert stored_files(b.store) == []
        obj = await a.get_object(OBJECT, tenant="default")
        assert obj.state is LifecycleState.ACTIVE
        assert await content(a, obj) == PAYLOAD

    run(world, scenario)


def test_a_stage_cancelled_mid_commit_keeps_its_data(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client's deadline cancels PrepareStream while the stage transaction is on the
    SQLite worker: it commits anyway. The retried Prepare gets the receipt, the source
    commits and drops its copy: the destination must still have every chunk.
    (Regression: chunks used to be deleted on any failure, including an unknown outcome.)"""
    from gateway.stores.sqlite import SqliteStore

    async def scenario(hosts: dict[str, Host]) -> None:
        a, b = hosts[HOST_A], hosts[HOST_B]
        await create_large(a)
        raw = await sealed_transfer(a)
        original = SqliteStore._apply
        slow_once = {"armed": True}

        def slow_stage(self: SqliteStore, ops: tuple[Any, ...]) -> Any:
            if slow_once["armed"] and any(op.key.startswith("journal/destination/") for op in ops):
                slow_once["armed"] = False
                time.sleep(0.3)  # a slow fsync; the caller gives up meanwhile
            return original(self, ops)

        monkeypatch.setattr(SqliteStore, "_apply", slow_stage)
        first = asyncio.create_task(b.destination.prepare_stream(raw, pieces(PAYLOAD), peer=HOST_A))
        for _ in range(200):  # until the stage transaction has reached the worker
            if not slow_once["armed"]:
                break
            await asyncio.sleep(0.01)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.sleep(0.4)  # the cancelled stage commits on the worker thread
        receipt = await b.destination.prepare_stream(raw, pieces(PAYLOAD), peer=HOST_A)
        assert receipt
        (key,) = await b.store.list("journal/destination/")
        record = await b.journal.destination(key.removeprefix("journal/destination/"))
        assert record is not None and record.value.staged is not None
        chunks = [c async for c in read_blob(b.store, record.value.staged.blob)]  # type: ignore[arg-type]
        assert b"".join(chunks) == PAYLOAD

    run(world, scenario)


def test_an_upload_whose_peer_vanishes_leaves_nothing_behind(world: World) -> None:
    async def scenario(hosts: dict[str, Host]) -> None:
        a, b = hosts[HOST_A], hosts[HOST_B]
        await create_large(a)
        raw = await sealed_transfer(a)

        async def dies_midway() -> AsyncIterator[bytes]:
            yield PAYLOAD[: 3 * CHUNK_BYTES]
            raise ConnectionError("the source vanished")

        with pytest.raises(ConnectionError):
            await b.destination.prepare_stream(raw, dies_midway(), peer=HOST_A)
        # Nothing was staged, so nothing can reference the chunks: all gone at once.
        assert await b.store.list("upload-open/") == []
        assert await b.store.list("upload/") == [] and stored_files(b.store) == []

    run(world, scenario)


def test_unfinished_uploads_are_collected_after_their_transfer_expired(world: World) -> None:
    """What a crash mid-upload leaves (a marker and some chunks) is collected only after
    the transfer could no longer be staged."""

    async def scenario(hosts: dict[str, Host]) -> None:
        b = hosts[HOST_B]
        expiry = to_millis(b.clock.now() + timedelta(minutes=5))
        await b.store.put(
            "upload-open/peer/mig-x/attempt", encode_counter(expiry), etag=Expect.ABSENT
        )
        await b.store.put("upload/peer/mig-x/attempt/00000000", b"chunk", etag=Expect.ABSENT)
        assert await b.destination.collect_uploads() == 0  # not expired yet: maybe in flight
        later = replace(b.context, clock=Later(b.context.clock, timedelta(hours=1)))
        assert await Destination(later).collect_uploads() == 1
        assert await b.store.list("upload-open/") == []
        assert await b.store.list("upload/") == []

    run(world, scenario)


class Later:
    def __init__(self, clock: Any, ahead: timedelta) -> None:
        self.clock, self.ahead = clock, ahead

    def now(self) -> Any:
        return self.clock.now() + self.ahead
