"""A destination's journal record is assembled from its fields and its staged copy's
at-rest bytes (gateway.wire.encode_destination_record); these tests hold it to the
bytes of serializing the whole DestinationRecord message at once, for every step, with
and without a staged copy, and with fields at their defaults."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from gateway import wire
from gateway.handoff.records import DestinationRecord, DestinationStep
from gateway.model import LifecycleState
from gateway.v1 import journal_pb2
from tests.test_compaction import created, depart
from tests.test_lineage import HOST_A, HOST_B, T0


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
