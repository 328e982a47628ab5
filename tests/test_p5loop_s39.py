"""Session 39: what the event loop's thread does less of per committed cycle (benchmark
P5) writes the same bytes and builds the same values as before.

A log keeps its entries' ids (their leaf hashes, joined) as it keeps their encoding, so
that a cycle's put joins only the new entries' ids: held here to the fresh join of
every entry's leaf hash through appends, folds, compactions, decodes, an older value
written again and a fork appended from one.

Frozen values built on hot paths (gateway/_slots.py) are made as a draft twin of their
class and then given the class: held here to be exactly what the constructor makes,
still frozen, and a class whose base refuses the draft's stores built as before."""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from gateway import _slots, merkle, wire
from gateway.archive import compact
from gateway.lineage import EntryKind, LineageEntry
from gateway.model import CycleState, GovernedObject
from gateway.runtime.cycle import _rebuilt
from gateway.stores import PutEntries
from tests.test_compaction import POLICY, created, cycle
from tests.test_lineage import HOST_A, OBJECT, SIGNERS, T0


def _fresh(obj: GovernedObject) -> tuple[bytes, int, list[int], bytes]:
    """What encode_object_entries gives, computed from nothing remembered: the whole
    encoding, the first entry's offset in it, each entry's end and the entries' ids."""
    value = wire.encode_object(obj)
    fields = [b"\x0a" + wire._varint(len(e.encode())) + e.encode() for e in obj.lineage.entries]
    joined = b"".join(fields)
    at = value.find(joined) if fields else 0
    ends, end = [], 0
    for field in fields:
        end += len(field)
        ends.append(end)
    ids = b"".join(merkle.leaf_hash(e.encode()) for e in obj.lineage.entries)
    return value, at, ends, ids


def _record(obj: GovernedObject, second: int, detail: str) -> GovernedObject:
    at = T0 + timedelta(days=2, seconds=second)
    return obj.record(EntryKind.EVALUATED, host=HOST_A, at=at, detail=detail)


def test_entry_ids_are_the_fresh_join_through_every_change_of_a_log() -> None:
    obj = created()
    seen: list[tuple[str, GovernedObject]] = []

    def check(step: str, value: GovernedObject) -> None:
        got = wire.encode_object_entries(value)
        assert got == _fresh(value), step
        seen.append((step, value))

    check("created", obj)
    for generation in range(10):
        # The same denial every cycle: the cycles after the first fold into it.
        obj = cycle(obj, generation, host=HOST_A, denial="publish: denied")
        check(f"fold {generation}", obj)
        obj = _record(obj, generation, f"run {generation}")  # ends the group: no fold
        check(f"append {generation}", obj)
    lineage, _segment = compact(
        obj.lineage,
        object_id=OBJECT,
        host=HOST_A,
        at=T0 + timedelta(days=1),
        signer=SIGNERS[HOST_A],
        keep=POLICY.keep_entries,
    )
    obj = replace(obj, lineage=lineage)
    check("compacted", obj)
    obj = _record(obj, 100, "after compaction")
    check("appended after compaction", obj)
    # As a store read gives it: its entries decoded when first read, their encoding
    # cut from the record.
    decoded = wire.decode_object(wire.encode_object(obj))
    check("decoded", decoded)
    check("decoded, appended", _record(decoded, 101, "after decoding"))
    # An older value of a log that has grown since: it sees a prefix of the log.
    older = seen[5][1]
    check("an older value again", older)
    fork = _record(older, 103, "a fork")  # appended from the older value: a new log
    check("a fork of an older value", fork)
    check("the newest value after the fork", obj)
    check("the older value after the fork", older)
    for step, value in seen:  # each value still gives the same answer
        assert wire.encode_object_entries(value) == _fresh(value), step


# --- values built as drafts (gateway/_slots.py) ------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class _Frozen:
    a: int
    b: object = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class _FrozenChild(_Frozen):
    c: str = ""


def _same(got: object, want: object) -> None:
    """Equal, of the very class (no draft left), every field the very same value."""
    assert type(got) is type(want)
    assert got == want
    for field in dataclasses.fields(want):  # type: ignore[arg-type]
        assert getattr(got, field.name) is getattr(want, field.name), field.name


@pytest.mark.parametrize(
    ("cls", "values", "drafted", "reason"),
    [
        (_Frozen, {"a": 1, "b": [2]}, True, "a frozen slotted class: built as its draft"),
        (
            _FrozenChild,
            {"a": 1, "b": None, "c": "x"},
            False,
            "its base's frozen __setattr__ would refuse a draft's stores: set by descriptor",
        ),
        (
            PutEntries,
            {
                "key": "k",
                "value": b"v",
                "etag": "e",
                "entries_at": 0,
                "entry_ends": [1],
                "entry_ids": b"\x00" * 32,
            },
            False,
            "a subclass of the frozen Put",
        ),
        (
            CycleState,
            {"generation": 3, "interval": timedelta(seconds=1), "next_due": T0},
            True,
            "every cycle builds one",
        ),
    ],
)
def test_a_builder_makes_what_the_constructor_makes(
    cls: type, values: dict[str, Any], drafted: bool, reason: str
) -> None:
    assert (_slots._draft(cls, tuple(values)) is not None) is drafted, reason
    built = _slots.builder(cls, *values)(*values.values())
    _same(built, cls(**values))
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(built, next(iter(values)), 2)  # still frozen: the draft's class is gone
    replaced = _slots.replacing(cls, *list(values)[-1:])(built, "new")
    _same(replaced, dataclasses.replace(built, **{list(values)[-1]: "new"}))


def test_a_draft_needs_slots_it_can_set_by_name() -> None:
    assert _slots._draft(_Frozen, ("a", "b")) is not None
    assert _slots._draft(_Frozen, ("a", "missing")) is None
    assert _slots._draft(_Frozen, ("__class__",)) is None


def test_appended_entries_are_those_the_constructor_makes() -> None:
    obj = created()
    obj = _record(obj, 1, "one")
    entry = obj.lineage.entries[-1]
    want = LineageEntry(
        seq=entry.seq,
        prev=entry.prev,
        time=entry.time,
        host=entry.host,
        kind=entry.kind,
        epoch=entry.epoch,
        generation=entry.generation,
        data_digest=entry.data_digest,
        credentials_digest=entry.credentials_digest,
        detail=entry.detail,
    )
    _same(entry, want)
    assert hash(entry) == hash(want)
    assert entry.encode() == want.encode() and entry.leaf_hash() == want.leaf_hash()
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.seq = 9  # type: ignore[misc]


def test_a_rebuilt_object_is_a_governed_object_equal_to_replace() -> None:
    obj = created()
    lineage = _record(obj, 1, "one").lineage
    got = _rebuilt(obj, b'{"a":2}', lineage, obj.cycle)
    _same(got, dataclasses.replace(obj, data=b'{"a":2}', lineage=lineage))
