"""A stored record read back (session 41, docs/benchmarks.md "P5's memo miss, again"):
its repeated fields read once each and counted before their items, its entries built by
``stored_entries``, its cycle state read from its field; each held equal to the plain
path (serializing the whole message, reading each field), refusals included. (The
branch's view of the record's bytes and its memo of the last cycle state were not
merged: see that section.)"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import replace
from datetime import timedelta

import pytest

from gateway import limits, wire
from gateway import lineage as lineage_module
from gateway.errors import GatewayError
from gateway.lineage import EntryKind, LineageEntry
from gateway.model import GovernedObject
from gateway.rules import MAX_RULES
from gateway.v1 import object_pb2
from tests.test_compaction import created
from tests.test_lineage import HOST_A, T0
from tests.test_object_encoding import whole
from tests.test_p5miss_s40 import _grown


def _cycled(count: int, *, detail: str = "run") -> GovernedObject:
    obj = created()
    for generation in range(count):
        at = T0 + timedelta(seconds=generation + 1)
        obj = obj.record(EntryKind.EVALUATED, host=HOST_A, at=at, detail=f"{detail} {generation}")
    return obj


def _damaged(rng: random.Random, raw: bytes) -> bytes:
    at = rng.randrange(len(raw))
    return raw[:at] + bytes((raw[at] ^ (1 << rng.randrange(8)),)) + raw[at + 1 :]


@pytest.mark.parametrize("seed", range(12))
def test_records_read_back_and_written_again_equal_the_plain_paths(seed: int) -> None:
    """Seeded histories (cycles that fold or not, entries recorded, compactions), read
    back and written again by turns, older values encoded after newer ones, transfers
    and forks among them: every encoding is the whole message serialized, and damaged
    records are refused as the plain decode refuses them."""
    rng = random.Random(seed)
    obj = _cycled(rng.randrange(1, 6), detail="x" * rng.choice((1, 40, 300)))
    older: list[GovernedObject] = []
    for _step in range(30):
        obj = _grown(rng, obj, 1 + rng.randrange(3))
        value = wire.encode_object(obj)
        assert value == whole(obj)
        what = rng.random()
        if what < 0.5:
            obj = wire.decode_object(value if rng.random() < 0.8 else bytes(bytearray(value)))
            assert wire.encode_object(obj) == value
        elif what < 0.6:
            obj = replace(obj, data=rng.randbytes(rng.choice((10, 600, 9000))))
        older.append(obj)
        if older and rng.random() < 0.3:
            old = rng.choice(older)
            assert wire.encode_object(old) == whole(old)
            if rng.random() < 0.3:  # a fork: appending to an older value copies its log
                fork = old.record(EntryKind.EVALUATED, host=HOST_A, at=T0 + timedelta(days=9))
                assert wire.encode_object(fork) == whole(fork)
        damaged = _damaged(rng, value)
        try:
            fast = wire.decode_object(damaged)
        except GatewayError:  # then the strict decode refuses it too
            with pytest.raises(GatewayError):
                wire._stored_from_pb(
                    wire._parse(object_pb2.StoredObject(), damaged, "x", canonical=False),
                    lazy=False,
                )
        else:
            assert wire.encode_object(fast) == whole(fast)


_FAULTS = ("data", "subscriptions", "answers", "rules", "checkpoints", "arrivals")


def _faulty(faults: tuple[str, ...]) -> bytes:
    """A stored record with each of ``faults`` (a count over its limit, or data that does
    not match its digest)."""
    message = object_pb2.StoredObject()
    message.ParseFromString(wire.encode_object(_cycled(3)))
    snapshot = message.snapshot
    if "data" in faults:
        snapshot.data = b'{"a":1}'
    if "subscriptions" in faults:
        snapshot.subscriptions.extend(f"t/{i}" for i in range(limits.MAX_SUBSCRIPTIONS + 1))
    if "answers" in faults:
        snapshot.answers.extend(
            object_pb2.Answer(method=f"m{i}") for i in range(limits.MAX_ANSWERS + 1)
        )
    if "rules" in faults:
        rule = snapshot.rules[0] if snapshot.rules else object_pb2.Rule(name="r", when="true")
        snapshot.rules.extend([rule] * (MAX_RULES + 1))
    if "checkpoints" in faults:
        message.lineage.checkpoints.extend([b"x"] * (limits.MAX_HANDOFFS + 1))
    if "arrivals" in faults:
        message.lineage.arrivals.extend([b"x"] * (limits.MAX_HANDOFFS + 1))
    return message.SerializeToString(deterministic=True)


_FIRST_FAULT_SAYS = {
    "data": "does not match its digest",
    "subscriptions": "subscriptions and",
    "answers": "subscriptions and",
    "rules": "rules; at most",
    "checkpoints": "checkpoints; at most",
    "arrivals": "arrivals; at most",
}


@pytest.mark.parametrize(
    "faults",
    [faults for size in (1, 2, 3) for faults in itertools.combinations(_FAULTS, size)],
)
def test_a_record_with_several_faults_is_refused_for_the_first_one_read(
    faults: tuple[str, ...],
) -> None:
    """Counts are checked before the items are read, in the order the fields were always
    read (data, subscriptions and answers, rules, checkpoints, arrivals): a record with
    several faults is refused for the first of them, by the lazy and the strict decode."""
    raw = _faulty(faults)
    says = _FIRST_FAULT_SAYS[faults[0]]
    with pytest.raises(GatewayError, match=says):
        wire.decode_object(raw)
    message = wire._parse(object_pb2.StoredObject(), raw, "x", canonical=False)
    with pytest.raises(GatewayError, match=says):
        wire._stored_from_pb(message, lazy=False)


def _slots(entry: LineageEntry) -> tuple[type, object, object]:
    return type(entry), object.__getattribute__(entry, "_raw"), entry._leaf


@pytest.mark.parametrize("seed", range(10))
def test_stored_entries_are_each_the_entry_stored_makes(seed: int) -> None:
    """stored_entries makes, for a list of plain bytes within the bound, the entries
    LineageEntry.stored makes one by one (same class, bytes and unset leaf, equal once
    read), and takes their path for anything else: bytes past the bound refused with
    the same error, a bytearray decoded at once, damaged bytes refused when read."""
    rng = random.Random(seed)
    good = [entry.encode() for entry in _cycled(6).lineage.entries]
    for _case in range(20):
        raws: list[bytes] = [rng.choice(good) for _ in range(rng.randrange(0, 9))]
        what = rng.random()
        if what < 0.15 and raws:
            raws[rng.randrange(len(raws))] = b"x" * (lineage_module.MAX_ENTRY_BYTES + 1)
        elif what < 0.3 and raws:
            at = rng.randrange(len(raws))
            raws[at] = bytearray(raws[at])  # type: ignore[call-overload]
        elif what < 0.45 and raws:
            at = rng.randrange(len(raws))
            raws[at] = raws[at].replace(b'"seq":', b'"seq": ')
        try:
            plain = [LineageEntry.stored(raw) for raw in raws]
        except GatewayError as exc:
            with pytest.raises(type(exc), match=re.escape(str(exc))):
                lineage_module.stored_entries(raws)
            continue
        fast = lineage_module.stored_entries(raws)
        assert type(fast) is list
        assert list(map(_slots, fast)) == list(map(_slots, plain))
        for mine, theirs in zip(fast, plain, strict=True):
            try:
                expected = theirs.seq
            except GatewayError as exc:
                with pytest.raises(type(exc)):
                    mine.seq  # noqa: B018  (the read is the test)
            else:
                assert mine.seq == expected and mine == theirs


def _cycle_records(rng: random.Random) -> list[bytes]:
    """Stored records of one object at random cycle states, some in runs of the same
    state (a batch), some a stored record would never hold (refused)."""
    message = object_pb2.StoredObject()
    message.ParseFromString(wire.encode_object(_cycled(2)))
    records = []
    state = message.snapshot.cycle
    for _ in range(40):
        if rng.random() < 0.6:  # a new state; else the last one again
            state.Clear()
            if rng.random() < 0.9:
                state.generation = rng.choice((0, 1, 7, 1 << 40))
            if rng.random() < 0.8:
                state.interval_ms = rng.choice((1, 1000, 86_400_000, 1 << 62))
            if rng.random() < 0.8:
                state.next_due.seconds = rng.choice((0, 1_800_000_000, 1 << 40, -5))
                state.next_due.nanos = rng.choice((0, 1_000_000, 1_500_000, 999_999_999))
            if rng.random() < 0.1:
                message.snapshot.ClearField("cycle")
        records.append(message.SerializeToString(deterministic=True))
    return records


@pytest.mark.parametrize("seed", range(10))
def test_a_remembered_cycle_state_is_the_one_reading_its_field_gives(seed: int) -> None:
    """Records decoded in turn (runs of one cycle state among others) carry the cycle
    state the plain read of their field gives, and are refused as it refuses them."""
    rng = random.Random(seed)
    for raw in _cycle_records(rng):
        message = wire._parse(object_pb2.StoredObject(), raw, "x", canonical=False)
        try:
            expected = wire._cycle_from_pb(message.snapshot.cycle, exact=False)
        except GatewayError as exc:
            with pytest.raises(type(exc), match=re.escape(str(exc))):
                wire.decode_object(raw)
            continue
        decoded = wire.decode_object(raw)
        assert decoded.cycle == expected
        assert (decoded.cycle.interval, decoded.cycle.next_due) == (
            expected.interval,
            expected.next_due,
        )


def test_a_log_never_holds_a_view_of_bytes_that_can_change() -> None:
    """Bytes handed in as a bytearray (or a view) may change or grow after the decode:
    the log copies its entries from them, and the object written again is the same."""
    raw = wire.encode_object(_cycled(8))
    for given in (bytearray(raw), memoryview(raw)):
        decoded = wire.decode_object(given)  # type: ignore[arg-type]
        if type(given) is bytearray:
            given[:] = b"\0" * len(given)
            given += b"more"
        assert wire.encode_object(decoded) == raw
