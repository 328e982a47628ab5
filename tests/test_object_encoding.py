"""The at-rest encoding of an object is assembled from parts (gateway.wire.encode_object)
and its lineage's entries from the encoding their log keeps; these tests hold it to the
bytes of serializing the whole message at once, through everything that changes a
lineage: appends, older values appended from again, folded repeats, compaction,
departures, and objects with an empty lineage."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from gateway import wire
from gateway.archive import compact
from gateway.blobs import BlobRef
from gateway.errors import LineageError
from gateway.lineage import Entries, EntryKind, Lineage, LineageEntry
from gateway.model import (
    Answer,
    CycleState,
    GovernedObject,
    LifecycleState,
    Publish,
    Rule,
    WriteState,
)
from gateway.v1 import object_pb2
from tests.test_compaction import POLICY, created, cycle, depart
from tests.test_lineage import HOST_A, HOST_B, OBJECT, SIGNERS, T0


def whole(obj: GovernedObject) -> bytes:
    """The reference: the whole StoredObject message serialized at once."""
    return bytes(wire._stored_to_pb(obj).SerializeToString(deterministic=True))


def check(obj: GovernedObject) -> None:
    encoded = wire.encode_object(obj)
    assert encoded == whole(obj)
    assert wire.encode_object(wire.decode_object(encoded)) == encoded


def test_each_append_encodes_as_the_whole_message() -> None:
    obj = created()
    check(obj)
    for generation in range(40):
        # A different detail each time: nothing folds, the log only grows.
        at = T0 + timedelta(seconds=generation + 1)
        obj = obj.record(EntryKind.EVALUATED, host=HOST_A, at=at, detail=f"run {generation}")
        check(obj)
    assert len(obj.lineage.entries) == 41


def test_an_older_value_appended_from_again_encodes_its_own_entries() -> None:
    obj = created()
    for generation in range(5):
        at = T0 + timedelta(seconds=generation + 1)
        obj = obj.record(EntryKind.EVALUATED, host=HOST_A, at=at, detail=f"run {generation}")
    older = obj
    newer = older.record(EntryKind.EVALUATED, host=HOST_A, at=T0 + timedelta(hours=1))
    check(newer)  # the shared log's encoding now covers one entry more than ``older`` sees
    check(older)
    branch = older.record(EntryKind.WOKEN, host=HOST_A, at=T0 + timedelta(hours=2), detail="b")
    check(branch)  # a copy of the log, sharing the encoding of the common prefix
    check(newer)
    assert branch.lineage.entries[-1] != newer.lineage.entries[-1]


def test_folded_repeats_and_compaction_encode_as_the_whole_message() -> None:
    obj = created()
    for generation in range(30):
        obj = cycle(obj, generation, host=HOST_A, denial="publish: denied")
        check(obj)  # folded: the last group is rewritten, the prefix kept
        obj = cycle(obj, generation, host=HOST_A, denial=f"publish: denied ({generation})")
        check(obj)
    lineage, _segment = compact(
        obj.lineage,
        object_id=OBJECT,
        host=HOST_A,
        at=T0 + timedelta(days=1),
        signer=SIGNERS[HOST_A],
        keep=POLICY.keep_entries,
    )
    compacted = replace(obj, lineage=lineage)
    assert compacted.lineage.base is not None
    check(compacted)
    gone = depart(compacted, host=HOST_A, to=HOST_B, migration="mig-1")
    assert gone.lineage.checkpoints
    check(gone)


def test_an_empty_lineage_encodes_as_the_whole_message() -> None:
    check(replace(created(), lineage=Lineage()))


def every_field() -> GovernedObject:
    """An object with rules, grants, subscriptions, answers, a streamed blob, a receipt,
    an expiry and a placement."""
    obj = created()
    gone = depart(obj, host=HOST_A, to=HOST_B, migration="mig-1")
    return replace(
        obj,
        grants=("header.claims.signature", "second.grant.token"),
        rules=(
            Rule(name="w", when="true", action=WriteState(patch='{"a": 1}')),
            Rule(name="p", when="false", action=Publish(topic="t", payload="{}"), on="message"),
        ),
        subscriptions=("orders/new", "orders/old"),
        answers=(Answer(method="status", reply="data", when="true", write='{"b": 2}'),),
        blob=BlobRef(digest=bytes(range(32)), size=1 << 30, location="blobs/x", chunks=3),
        data=b"",
        cycle=CycleState(generation=7, interval=timedelta(seconds=5), next_due=T0),
        epoch=3,
        state=LifecycleState.MOVED,
        migration_id="mig-1",
        moved_to=HOST_B,
        receipt=gone.lineage.checkpoints[0],
        last_transfer_digest=bytes(32),
        authority_expires=T0 + timedelta(days=30),
    )


def test_every_field_of_an_object_encodes_as_the_whole_message() -> None:
    """Each part assembled apart still gives the whole message's bytes."""
    check(every_field())


_UTC_PLUS_2 = timezone(timedelta(hours=2))
#: (generation, interval, next due, reason)
_CYCLES = [
    (0, None, None, "nothing set: the field is still present, empty"),
    (1, timedelta(seconds=5), T0, "a cycling object"),
    (127, timedelta(milliseconds=1), T0, "the last one-byte varint"),
    (128, timedelta(milliseconds=1), T0, "the first two-byte varint"),
    ((1 << 64) - 1, timedelta(days=3650), T0, "the largest uint64"),
    (5, timedelta(0), T0, "an interval of 0 ms is left out"),
    (5, timedelta(microseconds=999), T0, "under a millisecond: 0 ms, left out"),
    (5, None, datetime(1970, 1, 1, tzinfo=UTC), "the epoch: an empty timestamp"),
    (5, None, datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC), "nanos only"),
    (5, None, datetime(1969, 12, 31, 23, 59, 58, 500, tzinfo=UTC), "negative seconds"),
    (5, None, datetime(1, 1, 1, tzinfo=UTC), "the earliest time"),
    (5, None, datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), "the latest time"),
    (5, None, datetime(2026, 6, 1, 12, 0, 0, 123456, tzinfo=_UTC_PLUS_2), "another zone"),
    (5, None, datetime(2026, 6, 1, 12, 0, 0), "no zone: read as local time"),
]


@pytest.mark.parametrize(
    ("generation", "interval", "due"),
    [case[:3] for case in _CYCLES],
    ids=[case[3] for case in _CYCLES],
)
def test_a_cycle_state_written_out_is_what_protobuf_serializes(
    generation: int, interval: timedelta | None, due: datetime | None
) -> None:
    state = CycleState(generation=generation, interval=interval, next_due=due)
    assert wire._cycle_wire(state) == wire._cycle_pb_wire(state)
    # Not decoded back: decoding holds times to milliseconds and a peer's range.
    obj = replace(created(), cycle=state)
    assert wire.encode_object(obj) == whole(obj)


@pytest.mark.parametrize(
    "state",
    [
        CycleState(generation=1 << 64),
        CycleState(generation=-1),
        CycleState(generation=1, interval=timedelta(milliseconds=-1)),
    ],
)
def test_a_cycle_state_protobuf_refuses_is_refused_the_same_way(state: CycleState) -> None:
    with pytest.raises(ValueError, match="out of range"):
        wire._cycle_pb_wire(state)
    with pytest.raises(ValueError, match="out of range"):
        wire._cycle_wire(state)


def test_a_varint_is_protobufs() -> None:
    values = {0, 1, (1 << 64) - 1}
    for bits in range(1, 64):
        values |= {(1 << (7 * (bits // 7 + 1))) - 1, 1 << bits, (1 << bits) - 1, (1 << bits) + 1}
    for value in sorted(v for v in values if v < 1 << 64):
        # CycleState.generation is field 1, a uint64: one tag byte, then the varint.
        message = object_pb2.CycleState(generation=value).SerializeToString()
        assert wire._varint(value) == (message[1:] if value else b"\x00"), value


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16383, 16384, 1 << 21])
def test_a_data_size_written_out_is_what_protobuf_serializes(size: int) -> None:
    """A write changes the data's size (field 8), written out rather than serialized;
    a streamed blob's size too (its data is empty)."""
    inline = replace(created(), data=b"x" * size)
    streamed = replace(
        created(),
        data=b"",
        blob=BlobRef(digest=bytes(range(32)), size=size << 10, location="blobs/x", chunks=1),
    )
    for obj in (inline, streamed):
        reference = object_pb2.ObjectSnapshot(data_size=obj.size)
        assert wire._size_wire(obj) == reference.SerializeToString(deterministic=True)
        assert wire.encode_object(obj) == whole(obj)


def test_a_remembered_timing_is_only_served_for_the_same_interval_and_utc_time() -> None:
    """The last interval and due time written out are remembered (a batch shares them);
    every change of either, the same instant in another zone, a time without a zone and
    a zone-less object in between are each written as protobuf writes them."""
    later = T0 + timedelta(microseconds=1)
    states = [
        (1, timedelta(seconds=5), T0),
        (2, timedelta(seconds=5), T0),  # the same timing, another generation
        (0, timedelta(seconds=5), T0),
        (2, timedelta(seconds=6), T0),  # another interval
        (2, timedelta(seconds=6), later),  # a microsecond later
        (2, None, later),
        (2, timedelta(seconds=6), None),
        (2, None, None),
        (2, timedelta(seconds=6), later.astimezone(_UTC_PLUS_2)),  # the same instant
        (2, timedelta(seconds=6), later.replace(tzinfo=None)),  # read as local time
        (2, timedelta(seconds=6), later),
        (2, timedelta(seconds=6), later),
    ]
    for generation, interval, due in states + states[::-1]:
        state = CycleState(generation=generation, interval=interval, next_due=due)
        assert wire._cycle_wire(state) == wire._cycle_pb_wire(state), state


def _fields_unset(entry: LineageEntry) -> bool:
    try:
        object.__getattribute__(entry, "seq")
    except AttributeError:
        return True
    return False


def _cycled(count: int) -> GovernedObject:
    obj = created()
    for generation in range(count):
        at = T0 + timedelta(seconds=generation + 1)
        obj = obj.record(EntryKind.EVALUATED, host=HOST_A, at=at, detail=f"run {generation}")
    return obj


def test_a_stored_object_decodes_its_entries_when_read() -> None:
    """decode_object leaves the entries' fields to their first read (LineageEntry.stored):
    appending and encoding, what a cycle does, decode none of them; the object is equal
    to the one encoded, and what a cycle then writes is exactly the whole message."""
    obj = _cycled(12)
    decoded = wire.decode_object(wire.encode_object(obj))
    entries = decoded.lineage.entries
    assert all(_fields_unset(entry) for entry in entries)
    after = decoded.record(EntryKind.EVALUATED, host=HOST_A, at=T0 + timedelta(days=1))
    assert wire.encode_object(after) == whole(after)
    assert after.lineage.head() == after.lineage.entries[-1].leaf_hash()
    assert (
        after.lineage.root()
        == obj.record(EntryKind.EVALUATED, host=HOST_A, at=T0 + timedelta(days=1)).lineage.root()
    )
    assert all(_fields_unset(entry) for entry in entries)
    assert decoded == obj  # reads (decodes) every field
    assert not any(_fields_unset(entry) for entry in entries)


def test_a_damaged_stored_entry_is_refused_when_read() -> None:
    """An entry whose stored bytes are not canonical (a damaged store) is refused with
    LineageError when read (the lineage's verification, a migration, `gateway lineage`);
    decoding the object itself does not read it."""
    obj = _cycled(3)
    message = object_pb2.StoredObject()
    message.ParseFromString(wire.encode_object(obj))
    message.lineage.entries[1] = message.lineage.entries[1].replace(b'"seq":1', b'"seq":01')
    decoded = wire.decode_object(message.SerializeToString(deterministic=True))
    with pytest.raises(LineageError):
        decoded.lineage.entries[1].time  # noqa: B018  (the read is the test)
    assert decoded.lineage.entries[2].seq == 2


@pytest.mark.parametrize("count", [0, 1, 2, 40])
def test_a_stored_lineages_log_keeps_the_encoding_of_its_entries(count: int) -> None:
    """The entries' encoding a decoded log starts with (cut from the parsed message) is
    what the log would build entry by entry, and so is every encoding after appends."""
    obj = _cycled(count)
    decoded = wire.decode_object(wire.encode_object(obj))
    log = decoded.lineage._log
    fresh = Lineage(entries=tuple(decoded.lineage.entries))
    rebuilt = fresh._log
    assert rebuilt is not log and not rebuilt.wire_ends
    wire._entries_wire(fresh)
    assert b"".join(log.wire) == b"".join(rebuilt.wire)
    assert log.wire_ends == rebuilt.wire_ends
    again = decoded.record(EntryKind.EVALUATED, host=HOST_A, at=T0 + timedelta(days=2))
    assert wire.encode_object(again) == whole(again)


def test_entries_of_one_byte_lengths_are_encoded_entry_by_entry() -> None:
    """A log whose entries' lengths do not all take two bytes as varints is left to
    build its encoding when first encoded: the same bytes."""
    obj = _cycled(2)
    lineage = wire.decode_object(wire.encode_object(obj)).lineage
    assert lineage._log.wire_ends  # typical entries (hundreds of bytes): cut at once
    short = object_pb2.Lineage(entries=[b"{}"])
    log = wire._lineage_from_pb(short, stored=True)._log
    assert not log.wire_ends  # a 2-byte entry: left to _entries_wire
    pieces, count, end = wire._entries_wire(Lineage(entries=Entries(log, len(log.entries))))
    assert b"".join(pieces[:count]) == b"\x0a\x02{}"
    assert end == 4
