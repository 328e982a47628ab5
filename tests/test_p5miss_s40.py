"""A cycle whose object missed every memo (read back from the store and decoded) does
little more than one whose object was held (session 40, docs/benchmarks.md "P5's memo
miss"): the store hands back the ids it keeps for the record's entries, so writing the
object again hashes only the entries appended since. Each shortcut is held equal to
the plain path, refusals included."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import random
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway import lineage as lineage_module
from gateway import merkle, wire
from gateway.archive import compact
from gateway.errors import LineageError, PayloadDecodeError
from gateway.handoff import journal
from gateway.handoff.journal import Journal, object_key
from gateway.lineage import EntryKind, Lineage, LineageEntry
from gateway.model import (
    Binding,
    CycleState,
    GovernedObject,
    Invoke,
    Publish,
    Rule,
    WriteState,
)
from gateway.stores import Expect, Item, PutEntries
from gateway.stores.sqlite import SqliteStore
from gateway.v1 import object_pb2
from tests.test_compaction import POLICY, created, cycle
from tests.test_lineage import HOST_A, OBJECT, SIGNERS, T0
from tests.test_object_encoding import every_field

TENANT = "billing"


def _grown(rng: random.Random, obj: GovernedObject, steps: int) -> GovernedObject:
    """``obj`` after ``steps`` random changes of the kinds a host makes: cycles that
    fold (the same denial again) or not, single entries, a compaction now and then."""
    for step in range(steps):
        what = rng.random()
        generation = obj.cycle.generation + step
        if what < 0.4:
            obj = cycle(obj, generation, host=HOST_A, denial="publish: denied")
        elif what < 0.9:
            at = T0 + timedelta(seconds=generation + 1, milliseconds=rng.randrange(1000))
            detail = f"run {rng.randrange(1_000_000)}"
            obj = obj.record(EntryKind.EVALUATED, host=HOST_A, at=at, detail=detail)
        elif len(obj.lineage.entries) > POLICY.keep_entries + 1:
            lineage, _segment = compact(
                obj.lineage,
                object_id=OBJECT,
                host=HOST_A,
                at=T0 + timedelta(days=1, seconds=step),
                signer=SIGNERS[HOST_A],
                keep=POLICY.keep_entries,
            )
            obj = replace(obj, lineage=lineage)
    return obj


def _split(obj: GovernedObject, rng: random.Random) -> GovernedObject:
    """``obj`` grown until the journal writes it as a head and entry rows."""
    while len(obj.lineage.entries) < journal.SPLIT_MIN_ENTRIES:
        obj = _grown(rng, obj, 4)
    return obj


def _next(obj: GovernedObject, rng: random.Random) -> GovernedObject:
    """One more cycle of ``obj``, as a host would run it (folded or not)."""
    return _grown(rng, obj, 1 + rng.randrange(2))


def test_the_store_reads_back_the_ids_it_keeps_for_a_records_entries(tmp_path: Path) -> None:
    """A value written as a head and entry rows is read (get and get_many) with the
    ids it was written with; a value kept whole, with none."""
    rng = random.Random(40)

    async def main() -> None:
        async with SqliteStore.open(tmp_path / "s.db", create=True) as store:
            obj = created()
            etag: str | Expect = Expect.ABSENT
            kinds = set()
            for _ in range(40):
                put = journal.put_object(TENANT, obj, etag)
                kinds.add(type(put))
                etag = (await store.transact([put]))[put.key]
                ids = put.entry_ids if type(put) is PutEntries else b""
                got = await store.get(put.key)
                many = await store.get_many([put.key])
                assert got is not None and got.value == put.value and got.entry_ids == ids
                assert many[put.key].entry_ids == ids
                obj = _grown(rng, obj, 2)
            assert kinds == {journal.Put, PutEntries}

    asyncio.run(main())


def _leaf_hashes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every leaf hash computed from now on, recorded."""
    made: list[bytes] = []
    plain = merkle.leaf_hash

    def counted(data: bytes) -> bytes:
        made.append(data)
        return plain(data)

    monkeypatch.setattr(merkle, "leaf_hash", counted)
    return made


def test_a_decoded_record_given_its_ids_hashes_only_the_new_entries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Decoded with the ids the store keeps, a record's next write hashes the entry the
    cycle links to and the entries it appended, not every entry it carried; the ids it
    writes are those of hashing every entry."""
    rng = random.Random(41)
    obj = _split(created(), rng)
    put = journal.put_object(TENANT, obj, Expect.ABSENT)
    assert type(put) is PutEntries
    decoded = wire.decode_object(put.value, entry_ids=put.entry_ids)
    made = _leaf_hashes(monkeypatch)
    after = decoded.record(EntryKind.EVALUATED, host=HOST_A, at=T0 + timedelta(days=2))
    again = journal.put_object(TENANT, after, "etag")
    assert type(again) is PutEntries
    assert len(made) == 2  # the last carried entry (the new one's link) and the new one
    monkeypatch.undo()
    plain = wire.decode_object(put.value).record(
        EntryKind.EVALUATED, host=HOST_A, at=T0 + timedelta(days=2)
    )
    assert again.entry_ids == b"".join(e.leaf_hash() for e in plain.lineage.entries)
    assert again.value == wire.encode_object(plain)


def test_ids_of_another_count_are_not_the_records_and_are_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ids that are not one per entry (a value written with other parts, or none) are
    not used: the write hashes every entry, as without them."""
    rng = random.Random(42)
    obj = _split(created(), rng)
    put = journal.put_object(TENANT, obj, Expect.ABSENT)
    assert type(put) is PutEntries
    for ids in (put.entry_ids[:-32], put.entry_ids + put.entry_ids[:32], b"", b"\x00" * 7):
        decoded = wire.decode_object(put.value, entry_ids=ids)
        assert not decoded.lineage._log.wire_ids
        made = _leaf_hashes(monkeypatch)
        after = decoded.record(EntryKind.EVALUATED, host=HOST_A, at=T0 + timedelta(days=2))
        again = journal.put_object(TENANT, after, "etag")
        assert len(made) == len(after.lineage.entries)
        monkeypatch.undo()
        assert again.entry_ids == b"".join(e.leaf_hash() for e in after.lineage.entries)


def _put_fields(put: Any) -> tuple[Any, ...]:
    if type(put) is PutEntries:
        return put.value, put.entries_at, list(put.entry_ends), put.entry_ids
    return (put.value,)


@pytest.mark.parametrize("seed", range(6))
def test_writes_of_records_read_back_equal_the_plain_paths(tmp_path: Path, seed: int) -> None:
    """Objects through random cycles, folds and compactions, written by a journal to a
    store and read back by another (whose memo holds none of them: every read is a
    miss), with the store's ids: each next write is the write of the same object
    decoded without ids (every entry hashed), value, parts and ids alike; and each id
    is its entry's leaf hash."""
    rng = random.Random(400 + seed)

    async def main() -> None:
        async with SqliteStore.open(tmp_path / "w.db", create=True) as store:
            writer = Journal(store)
            objects = {f"t{index}": created() for index in range(4)}
            etags: dict[str, str | Expect] = dict.fromkeys(objects, Expect.ABSENT)
            for _round in range(24):
                for tenant, obj in objects.items():
                    obj = _next(obj, rng)
                    put = writer.put_object(tenant, obj, etags[tenant])
                    etags[tenant] = (await store.transact([put]))[put.key]
                    objects[tenant] = obj
                    reader = Journal(store)  # a fresh memo: this read misses
                    loaded = await reader.object(tenant, OBJECT)
                    item = await store.get(object_key(tenant, OBJECT))
                    assert loaded is not None and isinstance(item, Item)
                    plain = wire.decode_object(item.value)
                    step = rng.getstate()
                    ours = reader.put_object(tenant, _next(loaded.value, rng), loaded.etag)
                    rng.setstate(step)
                    theirs = journal.put_object(tenant, _next(plain, rng), loaded.etag)
                    assert _put_fields(ours) == _put_fields(theirs)
                    if type(ours) is PutEntries:
                        entries = wire.decode_object(ours.value).lineage.entries
                        hashes = b"".join(merkle.leaf_hash(e.encode()) for e in entries)
                        assert ours.entry_ids == hashes
                    assert loaded.value == plain == obj

    asyncio.run(main())


def test_a_decoded_object_is_the_one_its_constructor_builds() -> None:
    """wire builds a decoded object (and its cycle state) slot by slot: the same value
    as the class's own constructor, in every way, and the decoder's defaults for the
    fields a snapshot does not carry are the class's."""
    rng = random.Random(43)
    made = [every_field(), _split(created(), rng), _grown(rng, created(), 3)]
    for obj in made:
        for decoded in (wire.decode_object(wire.encode_object(obj)),):
            rebuilt = GovernedObject(**{n: getattr(decoded, n) for n in wire._OBJECT_FIELDS})
            assert type(decoded) is GovernedObject and decoded == rebuilt == obj
            assert hash(decoded.cycle) == hash(rebuilt.cycle) and repr(decoded) == repr(rebuilt)
            assert type(decoded.cycle) is CycleState and decoded.cycle == CycleState(
                generation=obj.cycle.generation,
                interval=obj.cycle.interval,
                next_due=obj.cycle.next_due,
            )
    assert tuple(f.name for f in dataclasses.fields(GovernedObject)) == wire._OBJECT_FIELDS
    parameters = inspect.signature(wire._object_from_snapshot).parameters
    defaults = {n: p for n, p in parameters.items() if p.kind is p.KEYWORD_ONLY}
    assert len(defaults.keys() & set(wire._OBJECT_FIELDS)) == 9  # the placement
    for field in dataclasses.fields(GovernedObject):
        if field.name in defaults:
            default = (
                field.default_factory() if field.default is dataclasses.MISSING else field.default  # type: ignore[misc]
            )
            assert defaults[field.name].default == default, field.name


def _rule_sets(rng: random.Random) -> list[tuple[Rule, ...]]:
    """Rule sets of every action and trigger, some sharing rules, one empty."""
    made: list[tuple[Rule, ...]] = [()]
    for index in range(30):
        rules = []
        for number in range(rng.randrange(1, 5)):
            action = rng.choice(
                [
                    WriteState(patch=f'{{"n": {rng.randrange(3)}}}'),
                    Publish(topic=f"alerts/{rng.randrange(3)}", payload="{}"),
                    Invoke(target=f"payments/{rng.randrange(3)}", payload=""),
                    Binding(target="queue", payload="{}"),
                ]
            )
            on = rng.choice(["cycle", "cycle", "message"])
            rules.append(Rule(name=f"r{number}", when=f"{index % 4} < 3", action=action, on=on))
        made.append(tuple(rules))
    return made


def test_rules_read_back_from_a_stored_record_are_the_plain_decodes() -> None:
    """A stored record's rules are remembered by the bytes cut from the record
    serialized again: each record's rules are the ones written (not another record's),
    the same as the plain decode's (each rule's own encoding as the key), and a rule
    the decoder refuses is refused every time, on either path."""
    rng = random.Random(44)
    base = created()
    for _round in range(2):
        wire._RULES.clear()
        for rules in _rule_sets(rng):
            raw = wire.encode_object(replace(base, rules=rules))
            decoded = wire.decode_object(raw)
            message = wire._parse(object_pb2.StoredObject(), raw, "x", canonical=False)
            assert decoded.rules == rules == wire._stored_from_pb(message, lazy=False).rules
            if rules:
                refused = object_pb2.StoredObject()
                refused.ParseFromString(raw)
                refused.snapshot.rules[-1].trigger = "sometimes"
                bad = refused.SerializeToString(deterministic=True)
                for _ in range(2):
                    with pytest.raises(PayloadDecodeError, match="sometimes"):
                        wire.decode_object(bad)


def _histories(rng: random.Random) -> list[GovernedObject]:
    """Objects of every history shape: none, young, grown, compacted (a base), departed
    (a checkpoint) and arrived back."""
    made = [created(), _grown(rng, created(), 3), _split(created(), rng)]
    compacted = _grown(random.Random(7), created(), 60)
    while compacted.lineage.base is None:
        compacted = _grown(rng, compacted, 20)
    made += [compacted, _grown(rng, compacted, 5), every_field()]
    return made


def test_a_stored_lineage_is_the_one_its_constructor_builds() -> None:
    """A record's lineage built for the store's path (entries made as stored entries
    by plain slot stores, the log and value without the dataclass's __init__) is the
    lineage the constructor builds from LineageEntry.stored: the same entries, log,
    tree heads, links and encoding, before and after appends; entries the fast path
    does not take (too long, not bytes) go through LineageEntry.stored as before."""
    rng = random.Random(45)
    for obj in _histories(rng):
        message = wire._parse(
            object_pb2.StoredObject(), wire.encode_object(obj), "x", canonical=False
        )
        raws = message.lineage.entries[:]
        ours = wire._lineage_from_pb(message.lineage, stored=True)
        theirs = Lineage(
            entries=tuple(map(LineageEntry.stored, raws)),
            checkpoints=ours.checkpoints,
            arrivals=ours.arrivals,
            base=ours.base,
        )
        assert all(type(e) is lineage_module._StoredEntry for e in ours.entries)
        assert [e._raw for e in ours.entries] == raws
        log, plain = ours._log, theirs._log
        assert (log.start, log.base_payload, log.frontier) == (
            plain.start,
            plain.base_payload,
            None,
        )
        assert log.start_frontier.hashes == plain.start_frontier.hashes
        assert (ours.size, ours.head(), ours.root()) == (theirs.size, theirs.head(), theirs.root())
        assert ours == theirs == obj.lineage
        at = T0 + timedelta(days=3)
        for step in range(3):
            ours = ours.append(
                EntryKind.EVALUATED,
                host=HOST_A,
                at=at,
                epoch=0,
                generation=step,
                data_digest=bytes(32),
                credentials_digest=bytes(32),
            )
            theirs = theirs.append(
                EntryKind.EVALUATED,
                host=HOST_A,
                at=at,
                epoch=0,
                generation=step,
                data_digest=bytes(32),
                credentials_digest=bytes(32),
            )
            assert (
                ours.root()
                == theirs.root()
                == Lineage(entries=tuple(ours.entries), base=ours.base).root()
            )
            assert ours.head() == theirs.head()
    long = b"x" * (lineage_module.MAX_ENTRY_BYTES + 1)
    with pytest.raises(LineageError):
        lineage_module.stored_entries([*raws, long])
    assert [type(e) for e in lineage_module.stored_entries([bytearray(raws[0])])] == [LineageEntry]


def test_a_log_makes_its_frontier_when_a_tree_head_is_first_asked_for() -> None:
    """A log holds no frontier until a tree head is asked for, then keeps it and extends
    it with later appends: every head is the one built from scratch."""
    obj = _grown(random.Random(46), created(), 10)
    lineage = wire.decode_object(wire.encode_object(obj)).lineage
    assert lineage._log.frontier is None
    heads = [lineage.root()]
    kept = lineage._log.frontier
    assert kept is not None and kept is not lineage._log.start_frontier
    for step in range(5):
        lineage = lineage.append(
            EntryKind.EVALUATED,
            host=HOST_A,
            at=T0 + timedelta(days=4),
            epoch=0,
            generation=step,
            data_digest=bytes(32),
            credentials_digest=bytes(32),
        )
        heads.append(lineage.root())
        assert lineage._log.frontier is kept
        assert heads[-1] == Lineage(entries=tuple(lineage.entries)).root()
    assert lineage_module._NO_LEAVES.end == 0 and not lineage_module._NO_LEAVES.hashes


def _plain_cycle(message: object_pb2.CycleState, *, exact: bool) -> Any:
    """What _cycle_from_pb gives without its slot: the state, or the error's text."""
    try:
        return CycleState(
            generation=message.generation,
            interval=wire._interval_from_ms(message.interval_ms),
            next_due=wire._peer_dt(message.next_due, "next evaluation time", exact=exact)
            if message.HasField("next_due")
            else None,
        )
    except PayloadDecodeError as exc:
        return str(exc)


def test_a_remembered_next_due_time_is_the_one_reading_its_stamp_gives() -> None:
    """Cycle states read in a row (stamps shared, repeated, sub-millisecond, out of
    range, read exactly and not) are what reading each alone gives, refusals included:
    a refused stamp is refused every time, and an exact read is never answered by a
    lenient one's time."""
    rng = random.Random(50)
    stamps = [(1_800_000_000, 0), (1_800_000_000, 5_000_000), (1_800_000_000, 5_000_001)]
    stamps += [(-62_135_596_801, 0), (253_402_300_800, 0), (1, -1), (1, 1_000_000_000)]
    stamps += [(-5_000_000_000, 0), (rng.randrange(2_000_000_000), 0)]
    cases = []
    for _ in range(400):
        message = object_pb2.CycleState(
            generation=rng.randrange(5), interval_ms=rng.choice([0, 5, 1000])
        )
        if rng.random() < 0.9:
            seconds, nanos = rng.choice(stamps)
            message.next_due.seconds, message.next_due.nanos = seconds, nanos
        cases.append((message, rng.random() < 0.5))
    sub = object_pb2.CycleState(generation=1, interval_ms=5)
    sub.next_due.seconds, sub.next_due.nanos = 1_800_000_000, 5_000_001  # sub-millisecond
    cases += [(sub, False), (sub, True)] * 3
    for message, exact in cases:
        try:
            got: Any = wire._cycle_from_pb(message, exact=exact)
        except PayloadDecodeError as exc:
            got = str(exc)
        assert got == _plain_cycle(message, exact=exact)
