"""Session 37's shortcuts on the cycle path (issue 13, P5) give exactly what the plain
path gives. Seeded: every run checks the same cases."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gateway._time import format_time
from gateway.runtime import outbox
from gateway.stores import Expect, Put
from gateway.stores.sqlite import SqliteStore

SEED = 37


def _blobs(rng: random.Random) -> list[bytes]:
    sizes = [0, 1, 2, 31, 4096, 20_000, 70_000, *(rng.randrange(1, 30_000) for _ in range(40))]
    return [rng.randbytes(size) for size in sizes]


def test_bytes_are_bound_as_themselves_without_the_registry_fallback() -> None:
    # The writer binds every value as bytes; sqlite3 asks its adapter registry about
    # each, and without a registered adapter that lookup failed through an attribute
    # error before binding the value itself (gateway/stores/sqlite.py).
    rng = random.Random(SEED)
    for value in _blobs(rng):
        assert sqlite3.adapt(value) is value


def test_values_written_read_back_byte_for_byte(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    values = {f"t/objects/{index:04d}": value for index, value in enumerate(_blobs(rng))}

    async def main() -> None:
        async with SqliteStore.open(tmp_path / "s.db", create=True) as store:
            await store.transact(
                [Put(key=key, value=value, etag=Expect.ABSENT) for key, value in values.items()]
            )
            found = await store.get_many(list(values))
        assert {key: item.value for key, item in found.items()} == values
        assert all(type(item.value) is bytes for item in found.values())

    asyncio.run(main())

    # The same bytes a plain connection writes and reads with no adapter involved.
    plain = sqlite3.connect(":memory:")
    plain.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v BLOB)")
    plain.executemany("INSERT INTO t VALUES (?, ?)", [(k, bytearray(v)) for k, v in values.items()])
    assert dict(plain.execute("SELECT k, v FROM t")) == values
    plain.close()


def test_enum_members_bound_once_are_the_members() -> None:
    # Read on every cycle through module globals instead of the class (EnumType's
    # __getattr__ makes each class read go through a hook): the very same members.
    from gateway.lineage import EntryKind
    from gateway.model import LifecycleState
    from gateway.runtime import cycle, outbox
    from gateway.stores import sqlite as sqlite_store

    assert cycle._ACTIVE is LifecycleState.ACTIVE
    assert cycle._ADMITTED is EntryKind.ACTION_ADMITTED
    assert cycle._EVALUATED_ENTRY is EntryKind.EVALUATED
    assert cycle._EVALUATED is cycle.CycleResult.EVALUATED
    assert outbox._ABSENT is Expect.ABSENT
    assert sqlite_store._ANY is Expect.ANY
    assert sqlite_store._ABSENT is Expect.ABSENT


def _utc_times(rng: random.Random) -> list[datetime]:
    times = [
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 12, 7, 1, 2, 3, 999, tzinfo=UTC),
        datetime(2026, 12, 7, 1, 2, 3, 1000, tzinfo=UTC),
    ]
    times += [
        datetime(2026, 1, 1, tzinfo=UTC) + timedelta(microseconds=rng.randrange(10**14))
        for _ in range(60)
    ]
    # Each again (a batch's events share one time object), an equal copy, a neighbour.
    out: list[datetime] = []
    for at in times:
        step = timedelta(microseconds=rng.choice((1, 999, 1000)))
        out += [at, at, at.replace(), at + step if at.year < 9999 else at - step]
    rng.shuffle(out)
    return out


def test_event_times_are_written_as_format_time_writes_them() -> None:
    rng = random.Random(SEED)
    for at in _utc_times(rng):
        assert outbox._utc_text(at) == format_time(at)
        assert outbox._utc_text(at) == format_time(at)  # from the slot


def test_events_encode_as_the_canonical_encoder_does_across_shared_times() -> None:
    rng = random.Random(SEED)
    for index, at in enumerate(_utc_times(rng)):
        event = outbox.pending_event(
            key=f"t/o/{index:012d}/000",
            tenant="t",
            object_id=f"o-{index}",
            generation=index,
            rule="r",
            verb="publish",
            resource="pubsub:orders/created",
            payload={"n": index, "s": "x\u00e9"},
            created_at=at,
        )
        assert event.encode() == outbox._CANONICAL.encode(event.document()).encode()


#: Rules reading every variable, some only in part of a trigger's rules, one naming
#: variables only inside string literals, one refused at run time.
POOL: list[dict[str, Any]] = [
    {"name": "amount", "when": "data.amount > 1000", "publish": {"topic": "a/big"}},
    {"name": "even", "when": "generation % 2 == 0", "write": '{"checked": generation}'},
    {"name": "epoch", "when": "epoch > 1", "write": '{"e": epoch}'},
    {"name": "late", "when": "now > timestamp('2026-06-01T00:00:00Z')", "write": "{}"},
    {"name": "host", "when": 'host == "h1"', "publish": {"topic": "a/h", "payload": "host"}},
    {"name": "quoted", "when": '"now host epoch" != ""', "write": '{"s": "generation"}'},
    {"name": "missing", "when": "data.nothing > 1", "publish": {"topic": "a/x"}},
    {"name": "status", "when": 'data.status == "open"', "write": '{"status": "seen"}'},
    {"name": "ev", "on": "message", "when": 'event.type == "t"', "write": '{"seen": event.id}'},
    {"name": "ev-data", "on": "message", "when": "data.amount < 100", "write": "{}"},
    {"name": "ev-now", "on": "message", "when": "has(event.id) && now > now", "write": "{}"},
    {"name": "req", "when": "size(request) == 0 && size(event) == 0", "write": "{}"},
]


def test_rule_sets_given_only_the_variables_they_read_evaluate_as_given_all() -> None:
    from gateway.rules import VARIABLES, RuleSet, compiled, rule_from_mapping

    rng = random.Random(SEED)
    for case in range(150):
        chosen = rng.sample(POOL, rng.randrange(1, len(POOL) + 1))
        ruleset = compiled(tuple(rule_from_mapping(r, "test") for r in chosen))
        # Not through compiled(): its cache would answer the very same rule set.
        plain = RuleSet(rules=ruleset.rules)
        object.__setattr__(plain, "_reads", {})  # every variable, for every trigger
        assert plain is not ruleset
        data = {
            "amount": rng.randrange(2000),
            "status": rng.choice(["open", "paid"]),
            "invoice": f"INV-{case}",
        }
        for trigger, event in (("cycle", None), ("message", {"type": "t", "id": f"m{case}"})):
            kwargs: dict[str, Any] = {
                "data": data,
                "generation": rng.randrange(10),
                "epoch": rng.randrange(3),
                "now": datetime(2026, rng.randrange(1, 13), 1, tzinfo=UTC),
                "host": rng.choice(["h1", "h2"]),
                "trigger": trigger,
                "event": event,
            }
            assert ruleset.evaluate(**kwargs) == plain.evaluate(**kwargs)
        reads = ruleset._reads
        assert set(reads.get("cycle", ())) | set(reads.get("message", ())) <= set(VARIABLES)


def test_named_tuples_built_as_one_tuple_equal_their_own_construction() -> None:
    import pytest

    from gateway._slots import tuple_builder
    from gateway.runtime.cycle import (
        _Current,
        _current,
        _held_object,
        _HeldObject,
        _Prepared,
        _prepared,
    )

    rng = random.Random(SEED)
    for build, cls in ((_current, _Current), (_prepared, _Prepared), (_held_object, _HeldObject)):
        for _ in range(50):
            values = tuple(
                rng.choice([object(), rng.random(), f"v{rng.randrange(99)}", None, [1], b"x"])
                for _ in cls._fields
            )
            made, want = build(values), cls(*values)
            assert type(made) is cls
            assert made == want
            assert all(getattr(made, f) is getattr(want, f) for f in cls._fields)
            assert made._asdict() == want._asdict()
    with pytest.raises(TypeError):
        tuple_builder(Put)


def _plain_check_operations(ops: tuple[Any, ...]) -> None:
    """gateway.stores.sqlite._check_operations as it was before its exact-type path."""
    from gateway.errors import StoreError
    from gateway.stores import Delete

    seen: set[str] = set()
    for op in ops:
        if not isinstance(op, Put | Delete):
            raise TypeError(f"a transaction takes Put and Delete, got {type(op).__name__}")
        key = op.key
        if not isinstance(key, str):
            raise TypeError(f"keys are str, got {type(key).__name__}")
        if not key:
            raise ValueError("keys must not be empty")
        try:
            key.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"key {key!r} is not valid Unicode text: {exc.reason}") from exc
        if not isinstance(op.etag, str | Expect):
            raise TypeError(
                f"the etag of key {op.key!r} must be a str or Expect, got {type(op.etag).__name__}"
            )
        if isinstance(op, Put) and not isinstance(op.value, bytes):
            raise TypeError(
                f"the value of key {op.key!r} must be bytes, got {type(op.value).__name__}"
            )
        if op.key in seen:
            raise StoreError(
                f"the transaction names key {op.key!r} more than once",
                hint="merge the operations on that key into one",
            )
        seen.add(op.key)


def _outcome(check: Any, ops: tuple[Any, ...]) -> tuple[type, str] | None:
    try:
        check(ops)
    except Exception as exc:
        return type(exc), str(exc)
    return None


def test_operations_are_checked_as_the_plain_checks_check_them() -> None:
    from gateway.stores import Delete
    from gateway.stores.sqlite import _check_key, _check_operations

    class MyStr(str):
        pass

    class MyBytes(bytes):
        pass

    keys: list[Any] = ["t/a", "t/b", "t/é", "t/\ud800", "", MyStr("t/c"), 7, None, "t/a"]
    etags: list[Any] = ["e1", Expect.ANY, Expect.ABSENT, MyStr("e2"), None, 3, b"e"]
    values: list[Any] = [b"", b"v", MyBytes(b"v"), bytearray(b"v"), "v", None]
    rng = random.Random(SEED)
    outcomes = set()
    for _ in range(3000):
        ops: list[Any] = []
        for _ in range(rng.randrange(1, 5)):
            key = rng.choice(keys[:3]) if rng.random() < 0.7 else rng.choice(keys)
            etag = rng.choice(etags[:3]) if rng.random() < 0.7 else rng.choice(etags)
            shape = rng.random()
            if shape < 0.5:
                value = rng.choice(values[:2]) if rng.random() < 0.7 else rng.choice(values)
                ops.append(Put(key=key, value=value, etag=etag))
            elif shape < 0.95:
                ops.append(Delete(key=key, etag=etag))
            else:
                ops.append(rng.choice([object(), key, (key, etag)]))
        want = _outcome(_plain_check_operations, tuple(ops))
        assert _outcome(_check_operations, tuple(ops)) == want
        outcomes.add(None if want is None else want[0])
        for key in keys[:-1]:
            plain = _outcome(_plain_check_operations, (Delete(key=key, etag=Expect.ANY),))
            assert _outcome(_check_key, key) == plain
    assert outcomes >= {None, TypeError, ValueError}
    assert len(outcomes) == 4  # and the StoreError of a key named twice


def test_object_puts_built_by_position_equal_their_own_construction() -> None:
    from gateway.handoff import journal

    rng = random.Random(SEED)
    for index in range(200):
        key = f"t/objects/o-{index}"
        value = rng.randbytes(rng.randrange(64))
        etag = rng.choice([Expect.ABSENT, Expect.ANY, f"etag-{index}"])
        made, want = journal._put(key, value, etag), Put(key=key, value=value, etag=etag)
        assert type(made) is Put
        assert made == want
        assert (made.key, made.value, made.etag) == (key, value, etag)
        assert made.value is value and made.etag is etag


def _plain_same_event(one: Any, other: Any) -> bool:
    """LineageEntry.same_event as it was: the six fields in declaration order."""
    return (
        one.kind is other.kind
        and one.host == other.host
        and one.epoch == other.epoch
        and one.data_digest == other.data_digest
        and one.credentials_digest == other.credentials_digest
        and one.detail == other.detail
    )


def test_same_event_answers_as_the_fields_compared_in_declaration_order() -> None:
    from gateway.lineage import EntryKind, LineageEntry

    rng = random.Random(SEED)
    kinds = [EntryKind.EVALUATED, EntryKind.ACTION_ADMITTED, EntryKind.WOKEN]

    def entry(base: dict[str, Any]) -> LineageEntry:
        fields = dict(base)
        for name, choices in (
            ("kind", kinds),
            ("host", ["h1", "h2"]),
            ("epoch", [0, 1]),
            ("data_digest", [b"\x01" * 32, b"\x02" * 32]),
            ("credentials_digest", [b"\x03" * 32, b"\x04" * 32]),
            ("detail", ["2 of 3 rules fired", "1 of 3 rules fired", ""]),
        ):
            if rng.random() < 0.25:
                fields[name] = rng.choice(choices)
        return LineageEntry(**fields)

    base: dict[str, Any] = {
        "seq": 1,
        "prev": b"",
        "time": datetime(2026, 12, 7, tzinfo=UTC),
        "host": "h1",
        "kind": EntryKind.EVALUATED,
        "epoch": 0,
        "generation": 1,
        "data_digest": b"\x01" * 32,
        "credentials_digest": b"\x03" * 32,
        "detail": "2 of 3 rules fired",
    }
    answers = set()
    for _ in range(2000):
        one, other = entry(base), entry(base)
        want = _plain_same_event(one, other)
        assert one.same_event(other) is want
        # The same for entries decoded lazily from their bytes (LineageEntry.stored).
        stored = LineageEntry.stored(one.encode()), LineageEntry.stored(other.encode())
        assert stored[0].same_event(stored[1]) is want
        answers.add(want)
    assert answers == {True, False}
