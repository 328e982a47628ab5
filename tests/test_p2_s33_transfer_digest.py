"""A destination names a transfer by the digest of exactly the payload its source signed.

The staged receipt, the destination record and the staged copy all carry that digest,
and the source refuses a receipt naming any other. The destination hashes the payload
once: the digest the decode took for the staged copy (``last_transfer_digest``) is the
one it answers with. These tests hold the three to the hash of the signed bytes, for an
object that arrives with an earlier transfer's digest of its own (a second hop), so a
digest taken from anything but this payload shows.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from gateway import wire
from gateway.config import load_config
from gateway.handoff.messages import ReceiptKind
from gateway.host import Host
from gateway.lineage import digest
from gateway.model import new_object
from gateway.testing import HostSpec, build_world, sealed_transfer, sign_transfer
from tests.conftest import HOST_A, HOST_B


def test_receipt_record_and_staged_copy_name_the_signed_payload(tmp_path: Path) -> None:
    world = build_world(tmp_path, [HostSpec(host_id=HOST_A), HostSpec(host_id=HOST_B)])

    async def main() -> None:
        source = await Host.open(load_config(world.config(HOST_A)))
        receiver = await Host.open(load_config(world.config(HOST_B)))
        try:
            obj = new_object(
                "obj://org-a.example/digest/once",
                tenant="default",
                data=b'{"n": 1}',
                content_type="application/json",
                host=HOST_A,
                at=source.clock.now(),
            )
            # As after an earlier hop: the transfer carries that hop's digest, which
            # must not be taken for this transfer's.
            earlier = digest(b"an earlier transfer")
            obj = replace(obj, last_transfer_digest=earlier)
            transfer = replace(
                sealed_transfer(source, obj, HOST_B), previous_transfer_digest=earlier
            )
            raw = sign_transfer(source, transfer)
            signed = digest(wire.decode_envelope(raw).payload)
            assert signed != earlier

            receipt_raw = await receiver.destination.prepare(raw, peer=HOST_A)

            receipt = wire.decode_receipt(
                wire.decode_envelope(receipt_raw).payload, ReceiptKind.STAGED
            )
            assert receipt.transfer_digest == signed
            loaded = await receiver.journal.destination(transfer.migration_id)
            assert loaded is not None
            record = loaded.value
            assert record.transfer_digest == signed
            assert record.staged is not None
            assert record.staged.last_transfer_digest == signed
            # A retry of the same bytes is answered with the same receipt (the replay
            # compares the digest it recorded with this payload's).
            assert await receiver.destination.prepare(raw, peer=HOST_A) == receipt_raw
        finally:
            await receiver.close()
            await source.close()

    asyncio.run(main())
