"""Session 40 (p5put-s40): a cycle's append and put keep what the last one built.

* ``wire._unchanged_parts`` checks a cycle's object against its log's remembered parts
  with one identity comparison over every value they were built from (the data apart);
* ``lineage._shared_text`` keeps the host's text and the time's part of the last call
  when its host and time are the same objects.

Both are held here to the plain paths, over seeded random sequences of objects: the
encoding to the whole message serialized at once, each appended entry's bytes to the
entry's own encode (and its refusals: a naive time, a lone surrogate in the host)."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from gateway import lineage as lineage_module
from gateway import wire
from gateway.lineage import Entries, EntryKind, Lineage, LineageEntry
from gateway.model import CycleState, GovernedObject, LifecycleState
from tests.test_compaction import created, depart
from tests.test_lineage import HOST_A, HOST_B, T0

SEEDS = range(40)


def whole(obj: GovernedObject) -> bytes:
    """The reference: the whole StoredObject message serialized at once."""
    return bytes(wire._stored_to_pb(obj).SerializeToString(deterministic=True))


def plain_entry(entry: LineageEntry) -> bytes:
    """The entry's bytes as LineageEntry's own construction and encode write them."""
    return LineageEntry(
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
        repeats=entry.repeats,
    )._encode()


def fresh(text: str) -> str:
    """A str equal to ``text`` that is not the same object."""
    return "".join(list(text)) if len(text) > 1 else (text + "x")[:-1]


def step(rng: random.Random, obj: GovernedObject, now: datetime) -> GovernedObject:
    """One random change of the kinds a cycle, a write or a handoff makes."""
    choice = rng.randrange(8)
    if choice == 0:  # the data written (head and size encoded again)
        return replace(obj, data=b'{"n":%d}' % rng.randrange(10**6))
    if choice == 1:  # the same values, other objects (the memo must not take them as new)
        return replace(obj, tenant=fresh(obj.tenant), object_id=fresh(obj.object_id))
    if choice == 2:  # the tail's values
        return replace(obj, epoch=obj.epoch + rng.randrange(2), moved_to=fresh(obj.moved_to))
    if choice == 3:  # the state
        state = rng.choice((LifecycleState.ACTIVE, LifecycleState.FROZEN))
        return replace(obj, state=state)
    if choice == 4:  # the cycle state
        cycle = CycleState(
            generation=obj.cycle.generation + 1,
            interval=timedelta(seconds=rng.randrange(1, 9)),
            next_due=now,
        )
        return replace(obj, cycle=cycle)
    if choice == 5:  # the grants (credentials digest and part)
        return replace(obj, grants=(f"a.b.{rng.randrange(100)}",))
    return obj  # unchanged: every part from the memo


def test_a_cycles_encoding_is_the_whole_message_over_random_changes() -> None:
    for seed in SEEDS:
        rng = random.Random(seed)
        obj = created()
        assert wire.encode_object(obj) == whole(obj)
        now = T0
        for _ in range(30):
            if rng.random() < 0.5:
                now = now + timedelta(milliseconds=rng.randrange(1, 5000))
            obj = step(rng, obj, now)
            for _ in range(rng.randrange(1, 3)):  # appends: one entry or two
                host = rng.choice((HOST_A, HOST_B, fresh(HOST_A)))
                obj = obj.record(
                    EntryKind.EVALUATED, host=host, at=now, detail=f"d{rng.randrange(3)}"
                )
            encoded = wire.encode_object(obj)
            assert encoded == whole(obj), seed
            # Twice: the second from the log's slot, whatever the first left there.
            assert wire.encode_object(obj) == encoded, seed


def test_an_older_value_encodes_its_own_data_after_a_newer_one() -> None:
    """Two values sharing a log: each encodes its own data, in any order."""
    rng = random.Random(7)
    obj = created()
    values = [obj]
    for generation in range(20):
        at = T0 + timedelta(seconds=generation + 1)
        obj = replace(obj, data=b'{"g":%d}' % generation).record(
            EntryKind.EVALUATED, host=HOST_A, at=at
        )
        values.append(obj)
    for _ in range(60):
        value = rng.choice(values)
        assert wire.encode_object(value) == whole(value)


def test_appended_entries_are_their_own_encoding_over_hosts_and_times() -> None:
    for seed in SEEDS:
        rng = random.Random(1000 + seed)
        obj = created()
        times = [T0 + timedelta(milliseconds=rng.randrange(10**6)) for _ in range(3)]
        hosts = [HOST_A, HOST_B, "h\u00e9-\u4e2d.example", 'q"uote\\host']
        for _ in range(25):
            at = rng.choice(times)
            if rng.random() < 0.2:
                at = at + timedelta(0)  # an equal time, another object
            host = rng.choice(hosts)
            if rng.random() < 0.2:
                host = fresh(host)
            records = [
                (EntryKind.EVALUATED, obj.data_digest(), f"r{rng.randrange(4)}")
                for _ in range(rng.randrange(1, 4))
            ]
            lineage = obj.lineage.append_all(
                records,
                host=host,
                at=at,
                epoch=rng.randrange(3),
                generation=rng.randrange(100),
                credentials_digest=bytes([rng.randrange(256)]) * 32,
            )
            obj = replace(obj, lineage=lineage)
            added = list(lineage.entries)[-len(records) :]
            for entry in added:
                assert entry.host == host and entry.time == at
                assert entry._raw == plain_entry(entry), seed  # the bytes append_all wrote
                assert entry.encode() == plain_entry(entry), seed


def test_the_slot_does_not_answer_for_another_host_or_time() -> None:
    """The slot kept by one call, then a host or time that cannot be written: the entry
    refuses at its encode, as the plain path does."""
    obj = created()
    at = datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=UTC)
    digest = obj.data_digest()
    ok = obj.lineage.append_all(
        [(EntryKind.EVALUATED, digest, "")],
        host=HOST_A,
        at=at,
        epoch=0,
        generation=1,
        credentials_digest=bytes(32),
    )
    assert lineage_module._LAST_SHARED[0] is HOST_A
    assert ok.entries[-1].encode() == plain_entry(ok.entries[-1])
    bad_host = ok.append_all(
        [(EntryKind.EVALUATED, digest, "")],
        host="bad\ud800",
        at=at,
        epoch=0,
        generation=1,
        credentials_digest=bytes(32),
    )
    with pytest.raises(UnicodeEncodeError):
        bad_host.entries[-1].encode()
    naive = ok.append_all(
        [(EntryKind.EVALUATED, digest, "")],
        host=HOST_A,
        at=at.replace(tzinfo=None),
        epoch=0,
        generation=1,
        credentials_digest=bytes(32),
    )
    with pytest.raises(ValueError, match="naive datetime"):
        naive.entries[-1].encode()
    with pytest.raises(ValueError, match="naive datetime"):
        plain_entry(naive.entries[-1])


def test_an_appended_lineage_is_what_its_class_builds() -> None:
    """Lineage._on builds its value slot by slot, without __post_init__: the same value
    as the class's own construction from its entries (which shares the log)."""
    for seed in SEEDS:
        rng = random.Random(2000 + seed)
        obj = created()
        if seed % 2:  # a lineage with a checkpoint
            obj = depart(obj, host=HOST_A, to=HOST_B, migration=f"mig-{seed}")
            assert obj.lineage.checkpoints
        for generation in range(rng.randrange(1, 12)):
            at = T0 + timedelta(seconds=generation)
            before = obj.lineage
            obj = obj.record(EntryKind.EVALUATED, host=HOST_A, at=at, detail=f"{rng.randrange(2)}")
            appended = obj.lineage
            assert appended.checkpoints is before.checkpoints
            assert appended.arrivals is before.arrivals and appended.base is before.base
            assert type(appended) is Lineage and type(appended.entries) is Entries
            built = Lineage(
                entries=appended.entries,
                checkpoints=appended.checkpoints,
                arrivals=appended.arrivals,
                base=appended.base,
            )
            assert built.entries is appended.entries  # __post_init__ left them as they are
            assert appended == built
            assert len(appended.entries) == len(list(appended.entries)) == appended.size
            assert appended.entries._log is appended._log
            assert list(appended.entries) == list(appended._log.entries)
            plain = Lineage(entries=tuple(appended.entries))
            assert (appended.root(), appended.head()) == (plain.root(), plain.head())
