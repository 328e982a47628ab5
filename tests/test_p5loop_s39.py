"""Session 39: what the event loop's thread does less of per committed cycle (benchmark
P5) writes the same bytes as before.

A log keeps its entries' ids (their leaf hashes, joined) as it keeps their encoding, so
that a cycle's put joins only the new entries' ids: held here to the fresh join of
every entry's leaf hash through appends, folds, compactions, decodes, an older value
written again and a fork appended from one."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from gateway import merkle, wire
from gateway.archive import compact
from gateway.lineage import EntryKind
from gateway.model import GovernedObject
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
