"""A destination's journal record is assembled from its fields and its staged copy's
at-rest bytes (gateway.wire.encode_destination_record), and a transfer's payload from
its fields and its object's encoding parts (gateway.wire.encode_transfer); these tests
hold both to the bytes of serializing the whole message at once: every step, with and
without a staged copy, every field of an object, fields at their defaults."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from gateway import wire
from gateway.handoff.messages import Transfer
from gateway.handoff.records import DestinationRecord, DestinationStep
from gateway.model import LifecycleState
from gateway.v1 import journal_pb2, object_pb2
from tests.test_compaction import created, depart
from tests.test_lineage import HOST_A, HOST_B, T0
from tests.test_object_encoding import every_field


def whole(record: DestinationRecord) -> bytes:
    """The reference: the whole message, its staged copy set as a submessage."""
    message = journal_pb2.DestinationRecord(
        migration_id=record.migration_id,
        object_id=record.object_id,
        tenant=record.tenant,
        source_host=record.source_host,
        step=wire._DESTINATION_STEPS[record.step],
        transfer_digest=record.transfer_digest,
        staged_receipt=record.staged_receipt,
        activation_receipt=record.activation_receipt,
        created_at=wire._ts(record.created_at),
        updated_at=wire._ts(record.updated_at),
        reason=record.reason,
    )
    if record.staged is not None:
        message.staged.CopyFrom(wire._stored_to_pb(record.staged))
    return bytes(message.SerializeToString(deterministic=True))


def _staged() -> DestinationRecord:
    gone = depart(created(), host=HOST_A, to=HOST_B, migration="mig-1")
    return DestinationRecord(
        migration_id="mig-1",
        object_id=gone.object_id,
        tenant=gone.tenant,
        source_host=HOST_A,
        step=DestinationStep.STAGED,
        transfer_digest=bytes(range(32)),
        staged_receipt=b"\x0a\x03abc" * 40,
        staged=replace(gone, state=LifecycleState.STAGED, migration_id="mig-1"),
        created_at=T0,
        updated_at=T0 + timedelta(milliseconds=1),
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: (change to the staged record, reason)
_CASES = [
    ({}, "staged, as a Prepare writes it"),
    (
        {"step": DestinationStep.ACTIVATED, "staged": None, "activation_receipt": b"r" * 300},
        "activated: no staged copy, the receipt after the staged one",
    ),
    ({"step": DestinationStep.ABORTED, "staged": None, "reason": "refused"}, "aborted"),
    ({"reason": "a reason beside a staged copy"}, "field 12 after the staged copy"),
    ({"staged_receipt": b"", "transfer_digest": b""}, "fields before it at their defaults"),
    ({"created_at": _EPOCH, "updated_at": _EPOCH}, "times at the epoch: empty, still present"),
    ({"migration_id": "m" * 300, "source_host": "h" * 200}, "two-byte lengths"),
]


@pytest.mark.parametrize("change", [case[0] for case in _CASES], ids=[c[1] for c in _CASES])
def test_a_destination_record_encodes_as_the_whole_message(change: dict[str, object]) -> None:
    record = replace(_staged(), **change)  # type: ignore[arg-type]
    encoded = wire.encode_destination_record(record)
    assert encoded == whole(record)
    assert wire.decode_destination_record(encoded) == record
    assert wire.encode_destination_record(wire.decode_destination_record(encoded)) == encoded


def test_a_large_staged_copy_takes_a_multi_byte_length() -> None:
    record = _staged()
    assert record.staged is not None
    big = replace(record, staged=replace(record.staged, data=b'{"x":"' + b"y" * 70_000 + b'"}'))
    assert wire.encode_destination_record(big) == whole(big)


def whole_transfer(transfer: Transfer) -> bytes:
    """The reference: the whole Transfer message serialized at once."""
    obj = transfer.object
    return bytes(
        object_pb2.Transfer(
            migration_id=transfer.migration_id,
            object_id=obj.object_id,
            epoch=transfer.epoch,
            source_host=transfer.source_host,
            destination_host=transfer.destination_host,
            issued_at=wire._ts(transfer.issued_at),
            expires_at=wire._ts(transfer.expires_at),
            nonce=transfer.nonce,
            object=wire._snapshot_to_pb(obj),
            credentials=list(obj.grants),
            lineage=wire._lineage_to_pb(obj.lineage),
            previous_transfer_digest=transfer.previous_transfer_digest,
        ).SerializeToString(deterministic=True)
    )


def _transfer() -> Transfer:
    gone = depart(created(), host=HOST_A, to=HOST_B, migration="mig-1")
    return Transfer(
        migration_id="mig-1",
        epoch=gone.epoch,
        source_host=HOST_A,
        destination_host=HOST_B,
        issued_at=T0 + timedelta(days=1),
        expires_at=T0 + timedelta(days=1, minutes=5),
        nonce=bytes(range(16)),
        object=gone,
    )


#: (change to a sealed transfer, reason)
_TRANSFERS = [
    (lambda t: t, "a transfer as a source seals it"),
    (lambda t: replace(t, previous_transfer_digest=bytes(32)), "field 12 after the lineage"),
    (lambda t: replace(t, object=every_field()), "every field of the object"),
    (
        lambda t: replace(t, object=replace(t.object, grants=("a.b.c", "d.e.f"))),
        "grants: field 10, not StoredObject's 2",
    ),
    (
        lambda t: replace(
            t, object=replace(t.object, lineage=replace(t.object.lineage, checkpoints=()))
        ),
        "no envelopes in the lineage",
    ),
    (
        lambda t: replace(t, object=replace(t.object, data=b'{"x":"' + b"y" * 70_000 + b'"}')),
        "a large object: multi-byte lengths",
    ),
    (lambda t: replace(t, issued_at=_EPOCH, nonce=b"", migration_id=""), "defaults before it"),
]


@pytest.mark.parametrize("change", [case[0] for case in _TRANSFERS], ids=[c[1] for c in _TRANSFERS])
def test_a_transfer_encodes_as_the_whole_message(change: object) -> None:
    transfer = change(_transfer())  # type: ignore[operator]
    assert wire.encode_transfer(transfer) == whole_transfer(transfer)
    assert wire.encode_transfer(transfer) == whole_transfer(transfer)  # from the memo too


def test_a_sealed_transfer_decodes_to_its_object() -> None:
    transfer = _transfer()
    decoded = wire.decode_transfer(wire.encode_transfer(transfer))
    assert decoded.object.lineage == transfer.object.lineage
    assert (decoded.object.data, decoded.object.grants) == (
        transfer.object.data,
        transfer.object.grants,
    )
    assert decoded.nonce == transfer.nonce and decoded.epoch == transfer.epoch
