"""Settled source journal records keep no transfer: their size does not grow with history."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from gateway import wire
from gateway.handoff.journal import settled_form, source_key
from gateway.handoff.messages import Outcome
from gateway.handoff.records import SourceRecord, SourceStep
from gateway.host import Host
from gateway.lineage import digest
from gateway.testing import World, sealed_transfer, serving, sign_transfer
from tests.conftest import HOST_A, HOST_B

OBJECT = "obj://org-a.example/billing/invoice-settled"
#: A DONE record holds ids, hosts, two receipts, times, digest and epoch: no lineage.
SETTLED_RECORD_BOUND = 2048


@pytest.fixture
def world(any_store_world: World) -> World:
    return any_store_world


async def _raw_source(host: Host, migration_id: str) -> bytes:
    got = await host.journal.store.get(source_key(migration_id))
    assert got is not None
    return got.value


def test_done_records_hold_no_transfer_and_stay_small_as_history_grows(world: World) -> None:
    async def main() -> None:
        async with serving(world) as hosts:
            a, b = hosts[HOST_A], hosts[HOST_B]
            await a.create_object(
                OBJECT, tenant="default", data=b"{}", content_type="application/json"
            )
            sizes: list[int] = []
            hops = [(a, HOST_B), (b, HOST_A)] * 6
            for epoch, (src, dst) in enumerate(hops, start=1):
                result = await src.migrate(OBJECT, tenant="default", destination=dst)
                assert result.step is SourceStep.DONE and result.epoch == epoch
                await src.settled()  # DONE is journaled right after the answer
                raw = await _raw_source(src, result.migration_id)
                record = wire.decode_source_record(raw)
                assert record.step is SourceStep.DONE
                assert record.transfer == b""
                assert record.epoch == epoch
                tomb = await src.journal.object("default", OBJECT)
                assert tomb is not None
                assert record.transfer_digest == tomb.value.last_transfer_digest
                # Asking again for a settled migration still answers the same.
                again = await src.source.resume(result.migration_id)
                assert (again.step, again.epoch) == (SourceStep.DONE, epoch)
                sizes.append(len(raw))
            assert max(sizes) < SETTLED_RECORD_BOUND
            # Independent of history: the last record is no bigger than the first (+ slack
            # for longer varints), though the lineage grew by three entries per hop.
            assert sizes[-1] <= sizes[0] + 16, sizes

    asyncio.run(main())


def test_records_written_with_their_transfer_still_read_and_slim_on_rewrite(
    world: World,
) -> None:
    """An older DONE record (transfer kept, no digest/epoch) decodes as it was, and its
    digest and epoch are taken from the transfer when it is next written."""

    async def main() -> None:
        async with serving(world) as hosts:
            a = hosts[HOST_A]
            obj = await a.create_object(
                OBJECT, tenant="default", data=b"{}", content_type="application/json"
            )
            raw_transfer = sign_transfer(a, sealed_transfer(a, obj, HOST_B, epoch=7))
            now = a.clock.now()
            old = SourceRecord(
                migration_id="mig-old",
                object_id=OBJECT,
                tenant="default",
                destination_host=HOST_B,
                step=SourceStep.DONE,
                transfer=raw_transfer,
                created_at=now,
                updated_at=now,
            )
            # What an older version wrote: the transfer, no digest, no epoch.
            decoded = wire.decode_source_record(wire.encode_source_record(old))
            assert decoded.transfer == raw_transfer and decoded.transfer_digest == b""
            slim = settled_form(decoded)
            payload = wire.decode_envelope(raw_transfer).payload
            assert slim.transfer == b""
            assert slim.transfer_digest == digest(payload)
            assert slim.epoch == 7
            # A record still open keeps its transfer: it may have to be re-sent.
            frozen = replace(decoded, step=SourceStep.FROZEN)
            assert settled_form(frozen) == frozen

    asyncio.run(main())


def test_committed_records_drop_the_transfer_and_still_finish(world: World) -> None:
    """A COMMITTED record (Commit not confirmed yet) no longer carries its transfer: it
    is never sent again after the commit. It keeps the digest and epoch, answers status
    and Decision as before, and resume() still drives it to DONE."""

    async def main() -> None:
        async with serving(world) as hosts:
            a, b = hosts[HOST_A], hosts[HOST_B]
            await a.create_object(
                OBJECT, tenant="default", data=b"{}", content_type="application/json"
            )
            migration_id = await a.source.freeze(OBJECT, tenant="default", destination=HOST_B)
            frozen = wire.decode_source_record(await _raw_source(a, migration_id))
            assert frozen.step is SourceStep.FROZEN and frozen.transfer
            # Commit as the coordinator does, without sending Commit: staged on B, then
            # the point of no return journaled here.
            receipt = await a.peers.client(HOST_B).prepare(frozen.transfer)
            committed, _etag = await a.source._commit(
                migration_id, receipt, transfer_digest=frozen.transfer_digest
            )
            committed_raw = await _raw_source(a, migration_id)
            stored = wire.decode_source_record(committed_raw)
            assert committed.step is stored.step is SourceStep.COMMITTED
            assert stored.transfer == b"" and stored.staged_receipt == receipt
            assert (stored.transfer_digest, stored.epoch) == (frozen.transfer_digest, 1)
            assert len(committed_raw) < SETTLED_RECORD_BOUND < len(frozen.transfer)
            assert await a.source._decide(migration_id, peer=HOST_B) is Outcome.COMMITTED
            result = await a.source.resume(migration_id)
            assert (result.step, result.epoch) == (SourceStep.DONE, 1)
            live = await b.journal.object("default", OBJECT)
            assert live is not None and live.value.epoch == 1

    asyncio.run(main())
