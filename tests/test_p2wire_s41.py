"""A source journal record is written out field by field (gateway.wire.encode_source_record),
not built as a protobuf message and serialized: these tests hold its bytes to protobuf's
(wire._source_record_pb) over seeded random records, and every record protobuf's path
refuses (a string that is not UTF-8, an epoch outside a uint64, a value of the wrong
type, an unknown step, a zone that gives no offset) to the same exception and words.
A time without a zone is read as local time on both paths."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone, tzinfo

import pytest

from gateway import wire
from gateway.handoff.records import DestinationRecord, DestinationStep, SourceRecord, SourceStep
from gateway.v1 import journal_pb2
from tests.test_record_encoding import _staged, whole


class _NoOffset(tzinfo):
    """A zone that gives no offset: its times are neither naive nor subtractable."""

    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        return None


_TEXTS = ["", "a", "mig-0001", "tenant/ä", "日本語", "😀 astral", "x" * 200, "x" * 20_000]
_BAD_TEXTS: list[object] = ["bad \ud800 surrogate", b"bytes", None, 7]
_BLOBS = [b"", b"\x00", bytes(range(256)), b"r" * 300, b"t" * 4400, b"z" * 20_000]
_BAD_BLOBS: list[object] = ["text", bytearray(b"x"), None, memoryview(b"x")]
_EPOCHS = [0, 1, 127, 128, 16_383, 16_384, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]
_BAD_EPOCHS: list[object] = [-1, 1 << 64, True, 1.0, "1", None]
_ZONES = [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-9, minutes=-30))]


def _moment(rng: random.Random) -> object:
    kind = rng.randrange(12)
    if kind == 0:
        return datetime(1970, 1, 1, tzinfo=UTC)  # an empty Timestamp, still written
    if kind == 1:
        return datetime(1970, 1, 1, 0, 0, 0, rng.randrange(1, 1_000_000), tzinfo=UTC)
    if kind == 2:  # before 1970: negative seconds
        return datetime(
            1969, 12, 31, 23, 59, rng.randrange(60), rng.randrange(1_000_000), tzinfo=UTC
        )
    if kind == 3:
        return rng.choice([datetime(1, 1, 1, tzinfo=UTC), datetime.max.replace(tzinfo=UTC)])
    if kind == 4:  # no zone: local time
        return datetime(2026, 12, 7, 18, rng.randrange(60), 0, rng.randrange(1_000_000))
    if kind == 5:
        return rng.choice([datetime(2026, 1, 1, tzinfo=_NoOffset()), "2026-01-01", None])
    seconds = rng.randrange(-62_135_596_800 + 86_400, 253_402_300_799 - 86_400)
    micros = rng.choice([0, rng.randrange(1_000_000)])
    at = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds, microseconds=micros)
    return at.astimezone(rng.choice(_ZONES)) if kind == 6 else at


def _pick(rng: random.Random, good: list[object], bad: list[object]) -> object:
    return rng.choice(bad) if rng.random() < 0.02 else rng.choice(good)


def random_source_record(rng: random.Random) -> SourceRecord:
    text = lambda: _pick(rng, _TEXTS, _BAD_TEXTS)  # noqa: E731
    blob = lambda: _pick(rng, _BLOBS, _BAD_BLOBS)  # noqa: E731
    step = (
        rng.choice([*SourceStep, "frozen"]) if rng.random() < 0.02 else rng.choice(list(SourceStep))
    )
    return SourceRecord(
        migration_id=text(),  # type: ignore[arg-type]
        object_id=text(),  # type: ignore[arg-type]
        tenant=text(),  # type: ignore[arg-type]
        destination_host=text(),  # type: ignore[arg-type]
        step=step,  # type: ignore[arg-type]
        transfer=blob(),  # type: ignore[arg-type]
        staged_receipt=blob(),  # type: ignore[arg-type]
        activation_receipt=blob(),  # type: ignore[arg-type]
        created_at=_moment(rng),  # type: ignore[arg-type]
        updated_at=_moment(rng),  # type: ignore[arg-type]
        reason=text(),  # type: ignore[arg-type]
        transfer_digest=blob(),  # type: ignore[arg-type]
        epoch=_pick(rng, _EPOCHS, _BAD_EPOCHS) if rng.random() < 0.7 else rng.randrange(1 << 64),  # type: ignore[arg-type]
    )


def _outcome(encode: Callable[[SourceRecord], bytes], record: SourceRecord) -> object:
    try:
        return encode(record)
    except Exception as error:
        return (type(error), str(error))


def test_source_records_written_out_are_what_protobuf_serializes() -> None:
    rng = random.Random(41)
    encoded = refused = 0
    for case in range(4000):
        record = random_source_record(rng)
        expected = _outcome(wire._source_record_pb, record)
        assert _outcome(wire.encode_source_record, record) == expected, (case, record)
        if isinstance(expected, bytes):
            encoded += 1
        else:
            refused += 1
    # Both kinds of outcome are exercised, most records are written.
    assert encoded > 2000
    assert refused > 200


def test_an_empty_timestamp_is_still_written() -> None:
    """A record whose times are both the epoch: each Timestamp is set, so written empty."""
    at = datetime(1970, 1, 1, tzinfo=UTC)
    record = SourceRecord(
        migration_id="",
        object_id="",
        tenant="",
        destination_host="",
        step=SourceStep.FROZEN,
        transfer=b"",
        created_at=at,
        updated_at=at,
    )
    assert wire.encode_source_record(record) == b"\x28\x01\x4a\x00\x52\x00"
    assert wire.encode_source_record(record) == wire._source_record_pb(record)


def test_each_step_decodes_back() -> None:
    rng = random.Random(4141)
    for step in SourceStep:
        for _ in range(50):
            at = datetime(2026, 12, 7, tzinfo=UTC) + timedelta(milliseconds=rng.randrange(1 << 40))
            record = SourceRecord(
                migration_id=rng.choice(_TEXTS),
                object_id=rng.choice(_TEXTS),
                tenant=rng.choice(_TEXTS),
                destination_host=rng.choice(_TEXTS),
                step=step,
                transfer=rng.choice(_BLOBS),
                staged_receipt=rng.choice(_BLOBS),
                activation_receipt=rng.choice(_BLOBS),
                created_at=at,
                updated_at=at + timedelta(milliseconds=rng.randrange(10_000)),
                reason=rng.choice(_TEXTS),
                transfer_digest=rng.choice(_BLOBS),
                epoch=rng.choice(_EPOCHS),
            )
            raw = wire.encode_source_record(record)
            assert wire.decode_source_record(raw) == record
            parsed = journal_pb2.SourceRecord.FromString(raw)
            assert parsed.SerializeToString(deterministic=True) == raw


@pytest.mark.parametrize("field", ["migration_id", "reason"])
def test_a_string_that_is_not_utf8_is_refused_as_protobuf_refuses_it(field: str) -> None:
    at = datetime(2026, 12, 7, tzinfo=UTC)
    values = dict(migration_id="m", object_id="o", tenant="t", destination_host="h", reason="")
    values[field] = "\udcff"
    record = SourceRecord(
        step=SourceStep.DONE, transfer=b"", created_at=at, updated_at=at, **values
    )
    with pytest.raises(UnicodeEncodeError) as plain:
        wire._source_record_pb(record)
    with pytest.raises(UnicodeEncodeError) as fast:
        wire.encode_source_record(record)
    assert str(fast.value) == str(plain.value)


def random_destination_record(rng: random.Random, staged: DestinationRecord) -> DestinationRecord:
    text = lambda: _pick(rng, _TEXTS, _BAD_TEXTS)  # noqa: E731
    blob = lambda: _pick(rng, _BLOBS, _BAD_BLOBS)  # noqa: E731
    steps: list[object] = list(DestinationStep)
    step = rng.choice([*steps, "staged"]) if rng.random() < 0.02 else rng.choice(steps)
    return DestinationRecord(
        migration_id=text(),  # type: ignore[arg-type]
        object_id=text(),  # type: ignore[arg-type]
        tenant=text(),  # type: ignore[arg-type]
        source_host=text(),  # type: ignore[arg-type]
        step=step,  # type: ignore[arg-type]
        transfer_digest=blob(),  # type: ignore[arg-type]
        staged_receipt=blob(),  # type: ignore[arg-type]
        activation_receipt=blob(),  # type: ignore[arg-type]
        staged=staged.staged if rng.random() < 0.2 else None,
        created_at=_moment(rng),  # type: ignore[arg-type]
        updated_at=_moment(rng),  # type: ignore[arg-type]
        reason=text(),  # type: ignore[arg-type]
    )


def test_destination_records_written_out_are_what_protobuf_serializes() -> None:
    """The same over destination records (a staged copy in some): protobuf's bytes (the
    whole message, tests/test_record_encoding.py's reference) or its refusal."""
    rng = random.Random(4142)
    staged = _staged()
    encoded = refused = 0
    for case in range(3000):
        record = random_destination_record(rng, staged)
        expected = _outcome(wire._destination_record_pb, record)  # type: ignore[arg-type]
        assert _outcome(wire.encode_destination_record, record) == expected, (case, record)  # type: ignore[arg-type]
        if isinstance(expected, bytes):
            assert expected == whole(record), (case, record)
            encoded += 1
        else:
            refused += 1
    assert encoded > 1500
    assert refused > 150
