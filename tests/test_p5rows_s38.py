"""Session 38: the embedded store keeps an object record's lineage entries as rows of
their own (gateway.stores.PutEntries), and every read returns exactly the bytes a plain
single-row store returns.

Seeded and deterministic: random sequences of hinted puts (appends, compactions that
drop the oldest entries, folds that rewrite the last, other histories, repeated
entries), plain puts, deletes, failed preconditions, groups of concurrent callers and
reopens, held byte-equal to the same store given the same values without the hint; the
file's entry rows held to exactly the entries its heads list (none leaked, none
missing); a failed precondition leaving heads and rows untouched; a file written by the
previous schema read and then written as rows; the journal's object puts describing
their own bytes."""

from __future__ import annotations

import asyncio
import hashlib
import random
import sqlite3
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway import merkle, wire
from gateway.archive import compact
from gateway.errors import ConcurrencyError
from gateway.handoff import journal
from gateway.lineage import EntryKind
from gateway.stores import ENTRY_ID_BYTES, Delete, Expect, Put, PutEntries
from gateway.stores.sqlite import SqliteStore
from tests.test_compaction import POLICY, created, cycle
from tests.test_lineage import HOST_A, OBJECT, SIGNERS, T0

SEED = 38
KEYS = [f"t/acme/objects/o-{index}" for index in range(6)]


class _Record:
    """A value as the journal writes an object: a head around entries, each with an id
    that is a digest of its bytes."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.prefix = rng.randbytes(rng.randrange(0, 40))
        self.suffix = rng.randbytes(rng.randrange(0, 40))
        self.entries: list[bytes] = []

    def entry(self) -> bytes:
        return self.rng.randbytes(self.rng.randrange(1, 90))

    def change(self) -> None:
        rng = self.rng
        what = rng.random()
        if what < 0.45 or not self.entries:  # a cycle: one or two new entries
            self.entries += [self.entry() for _ in range(rng.choice([1, 1, 1, 2]))]
        elif what < 0.6:  # a compaction: the oldest go
            del self.entries[: rng.randrange(1, len(self.entries) + 1)]
            self.entries.append(self.entry())
        elif what < 0.75:  # a fold: the last entry rewritten
            self.entries[-1] = self.entry()
        elif what < 0.82:  # an entry repeated (the same bytes, so the same id)
            self.entries.append(rng.choice(self.entries))
        elif what < 0.88:  # another history altogether
            self.entries = [self.entry() for _ in range(rng.randrange(0, 6))]
        elif what < 0.94:  # entries reordered
            rng.shuffle(self.entries)
        else:  # the head changes (state, data)
            self.prefix = rng.randbytes(rng.randrange(0, 40))
        if rng.random() < 0.3:
            self.suffix = rng.randbytes(rng.randrange(0, 40))

    def value(self) -> bytes:
        return self.prefix + b"".join(self.entries) + self.suffix

    def put(self, key: str, etag: str | Expect) -> Put:
        value = self.value()
        if not self.entries:
            return Put(key=key, value=value, etag=etag)
        ends, end = [], 0
        for entry in self.entries:
            end += len(entry)
            ends.append(end)
        return PutEntries(
            key=key,
            value=value,
            etag=etag,
            entries_at=len(self.prefix),
            entry_ends=ends,
            entry_ids=b"".join(hashlib.sha256(entry).digest() for entry in self.entries),
        )


def _plain(op: Put | Delete) -> Put | Delete:
    """``op`` without its parts: what a store that ignores the hint is given."""
    if isinstance(op, Put):
        return Put(key=op.key, value=op.value, etag=Expect.ANY)
    return Delete(key=op.key, etag=Expect.ANY)


def _file_state(path: Path) -> tuple[list[Any], list[Any]]:
    raw = sqlite3.connect(path)
    try:
        heads = raw.execute(
            "SELECT key, etag, value, entries_at, entry_rows, entry_ids FROM items ORDER BY key"
        ).fetchall()
        rows = raw.execute("SELECT number, id, value FROM entries ORDER BY number").fetchall()
    finally:
        raw.close()
    return heads, rows


def _check_rows(path: Path) -> None:
    """Every entry row is listed by exactly one head, once, under its own id."""
    heads, rows = _file_state(path)
    by_number = {number: entry_id for number, entry_id, _value in rows}
    listed: list[int] = []
    for key, _etag, _value, _at, numbers, ids in heads:
        count = len(numbers) // 8
        assert len(ids) == count * ENTRY_ID_BYTES, key
        for index in range(count):
            number = int.from_bytes(numbers[index * 8 : index * 8 + 8], "big", signed=True)
            listed.append(number)
            assert by_number.get(number) == ids[index * 32 : index * 32 + 32], key
    assert sorted(listed) == sorted(by_number), "entry rows leaked or shared"


async def _same_reads(store: SqliteStore, plain: SqliteStore) -> None:
    want = {key: item.value for key, item in (await plain.get_many(KEYS)).items()}
    got = await store.get_many(KEYS)
    assert {key: item.value for key, item in got.items()} == want
    assert set(await store.get_etags(KEYS)) == set(want)
    for key in KEYS:
        item = await store.get(key)
        assert (item.value if item else None) == want.get(key)
    # The reader threads' path too (a read the loop's thread hands over).
    read = await store._read("read", lambda c: store._get_many(KEYS, c))
    assert {key: item.value for key, item in read.items()} == want


async def _random_run(tmp_path: Path, seed: int, steps: int) -> None:
    rng = random.Random(seed)
    path = tmp_path / f"rows-{seed}.db"
    store = SqliteStore.open(path, create=True)
    plain = SqliteStore.open(tmp_path / f"plain-{seed}.db", create=True)
    records = {key: _Record(rng) for key in KEYS}
    etags: dict[str, str] = {}
    try:
        for _step in range(steps):
            what = rng.random()
            key = rng.choice(KEYS)
            if what < 0.45:  # a hinted put (a cycle, a compaction, ...)
                records[key].change()
                op: Put | Delete = records[key].put(key, etags.get(key, Expect.ABSENT))
                etags.update(await store.transact([op]))
                await plain.transact([_plain(op)])
            elif what < 0.52:  # a plain put of the same bytes, or of others
                value = records[key].value() if rng.random() < 0.5 else rng.randbytes(50)
                op = Put(key=key, value=value, etag=etags.get(key, Expect.ABSENT))
                etags.update(await store.transact([op]))
                await plain.transact([_plain(op)])
            elif what < 0.58 and key in etags:
                await store.delete(key, etag=etags.pop(key))
                await plain.delete(key, etag=Expect.ANY)
            elif what < 0.66:  # a failed precondition writes nothing
                before = _file_state(path)
                records[key].change()
                op = records[key].put(key, "no-such-etag")
                with pytest.raises(ConcurrencyError):
                    await store.transact([op, *([_other_put(rng, key, records)])])
                assert _file_state(path) == before
            elif what < 0.8:  # a group: concurrent callers, one of them refused
                await _group(rng, store, plain, records, etags)
            elif what < 0.86:
                await store.close()
                store = SqliteStore.open(path)
            else:  # a transaction of several keys
                chosen = rng.sample(KEYS, rng.randrange(2, 4))
                ops = []
                for one in chosen:
                    records[one].change()
                    ops.append(records[one].put(one, etags.get(one, Expect.ABSENT)))
                etags.update(await store.transact(ops))
                await plain.transact([_plain(one) for one in ops])
            await _same_reads(store, plain)
            _check_rows(path)
    finally:
        await store.close()
        await plain.close()


def _other_put(rng: random.Random, key: str, records: dict[str, _Record]) -> Put:
    other = rng.choice([k for k in KEYS if k != key])
    return Put(key=other, value=records[other].value(), etag=Expect.ANY)


async def _group(
    rng: random.Random,
    store: SqliteStore,
    plain: SqliteStore,
    records: dict[str, _Record],
    etags: dict[str, str],
) -> None:
    """Callers that arrive together and share one commit (_apply_together); the last
    one's precondition fails."""
    chosen = rng.sample(KEYS, 4)
    ops = []
    for key in chosen[:3]:
        records[key].change()
        ops.append(records[key].put(key, etags.get(key, Expect.ABSENT)))
    refused = records[chosen[3]].put(chosen[3], "no-such-etag")
    results = await asyncio.gather(
        *(store.transact([op]) for op in ops), store.transact([refused]), return_exceptions=True
    )
    assert isinstance(results[-1], ConcurrencyError)
    for result in results[:-1]:
        assert isinstance(result, dict)
        etags.update(result)
    await plain.transact([_plain(op) for op in ops])


@pytest.mark.parametrize("seed", [SEED, SEED + 1, SEED + 2])
def test_reads_equal_a_plain_stores_through_random_writes(tmp_path: Path, seed: int) -> None:
    asyncio.run(_random_run(tmp_path, seed, steps=120))


def test_a_cycle_writes_its_new_entry_only(tmp_path: Path) -> None:
    """An append keeps every row the key holds and adds one row per new entry."""
    rng = random.Random(SEED)
    record = _Record(rng)
    record.entries = [record.entry() for _ in range(10)]
    path = tmp_path / "s.db"

    async def main() -> None:
        async with SqliteStore.open(path, create=True) as store:
            etag = (await store.transact([record.put("k", Expect.ABSENT)]))["k"]
            before = {number for number, _id, _v in _file_state(path)[1]}
            record.entries.append(record.entry())
            await store.transact([record.put("k", etag)])
            after = {number for number, _id, _v in _file_state(path)[1]}
            assert before < after and len(after - before) == 1
            got = await store.get("k")
            assert got is not None and got.value == record.value()

    asyncio.run(main())


def test_a_failed_precondition_leaves_head_and_rows_untouched(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    record = _Record(rng)
    record.entries = [record.entry() for _ in range(5)]
    path = tmp_path / "s.db"

    async def main() -> None:
        async with SqliteStore.open(path, create=True) as store:
            etag = (await store.transact([record.put("k", Expect.ABSENT)]))["k"]
            before = _file_state(path)
            assert before[1]  # the entries are rows
            for change in (lambda: record.entries.append(record.entry()), record.change):
                change()
                with pytest.raises(ConcurrencyError):
                    await store.transact([record.put("k", "stale")])
                with pytest.raises(ConcurrencyError):
                    await store.delete("k", etag="stale")
                assert _file_state(path) == before
            await store.transact([record.put("k", etag)])
            got = await store.get("k")
            assert got is not None and got.value == record.value()

    asyncio.run(main())


def _make_version_1_file(path: Path, *, value_first: bool) -> None:
    """A store file as gateways before session 38 made them (schema version 1)."""
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        raw.execute("PRAGMA journal_mode = WAL")
        columns = (
            "value BLOB NOT NULL, etag TEXT NOT NULL"
            if value_first
            else ("etag TEXT NOT NULL, value BLOB NOT NULL")
        )
        raw.execute(f"CREATE TABLE items (key TEXT PRIMARY KEY NOT NULL, {columns})")
        raw.execute(
            "INSERT INTO items (key, etag, value) VALUES ('a', 'e1', x'0102'), ('b', 'e2', ?)",
            (b"x" * 70_000,),
        )
        raw.execute("PRAGMA user_version = 1")
    finally:
        raw.close()


@pytest.mark.parametrize("value_first", [False, True])
def test_a_file_of_the_previous_schema_is_read_and_then_written_as_rows(
    tmp_path: Path, value_first: bool
) -> None:
    path = tmp_path / "old.db"
    _make_version_1_file(path, value_first=value_first)
    rng = random.Random(SEED)
    record = _Record(rng)
    record.entries = [record.entry() for _ in range(4)]

    async def main() -> None:
        async with SqliteStore.open(path) as store:
            got = await store.get_many(["a", "b"])
            assert got["a"].value == b"\x01\x02" and got["a"].etag == "e1"
            assert got["b"].value == b"x" * 70_000
            await store.transact([record.put("a", "e1")])
            record.change()
            await store.transact([record.put("c", Expect.ABSENT)])
        async with SqliteStore.open(path) as store:  # and again, now at version 2
            assert (await store.get("c")).value == record.value()  # type: ignore[union-attr]
            assert (await store.get("b")).value == b"x" * 70_000  # type: ignore[union-attr]

    asyncio.run(main())
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA user_version").fetchone() == (2,)
    finally:
        raw.close()
    _check_rows(path)


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    from gateway.errors import StoreError

    path = tmp_path / "new.db"
    SqliteStore.open(path, create=True)._connection  # noqa: B018 - made at version 2
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("PRAGMA user_version = 3")
    raw.close()
    with pytest.raises(StoreError, match="schema version 3"):
        SqliteStore.open(path)


def _object_values() -> list[Any]:
    """Objects through appends, folds, a compaction and further cycles."""
    obj = created()
    made = [obj]
    for generation in range(12):
        obj = cycle(obj, generation, host=HOST_A, denial="publish: denied")
        made.append(obj)
        at = T0 + timedelta(seconds=generation + 1)
        obj = obj.record(EntryKind.EVALUATED, host=HOST_A, at=at, detail=f"run {generation}")
        made.append(obj)
    lineage, _segment = compact(
        obj.lineage,
        object_id=OBJECT,
        host=HOST_A,
        at=T0 + timedelta(days=1),
        signer=SIGNERS[HOST_A],
        keep=POLICY.keep_entries,
    )
    obj = replace(obj, lineage=lineage)
    made.append(obj)
    for generation in range(3):
        at = T0 + timedelta(days=1, seconds=generation + 1)
        obj = obj.record(EntryKind.EVALUATED, host=HOST_A, at=at, detail=f"after {generation}")
        made.append(obj)
    made.append(made[5])  # an older value written again
    return made


def test_the_journals_object_puts_describe_their_own_bytes(tmp_path: Path) -> None:
    """Each part is where it is said to be, each id is its entry's leaf hash, and the
    store returns every value as encode_object writes it."""
    objects = _object_values()

    async def main() -> None:
        async with SqliteStore.open(tmp_path / "j.db", create=True) as store:
            etag: str | Expect = Expect.ABSENT
            kinds = set()
            for obj in objects:
                put = journal.put_object("acme", obj, etag)
                assert put.value == wire.encode_object(obj)
                # A young record is written whole (journal.SPLIT_MIN_ENTRIES).
                split = len(obj.lineage.entries) >= journal.SPLIT_MIN_ENTRIES
                assert type(put) is (PutEntries if split else Put)
                kinds.add(type(put))
                start = 0
                for index, entry in enumerate(obj.lineage.entries if split else ()):
                    raw = entry.encode()
                    end = put.entry_ends[index]
                    field = put.value[put.entries_at + start : put.entries_at + end]
                    assert field == b"\x0a" + wire._varint(len(raw)) + raw
                    assert put.entry_ids[index * 32 : index * 32 + 32] == merkle.leaf_hash(raw)
                    start = end
                etag = (await store.transact([put]))[put.key]
                got = await store.get(put.key)
                assert got is not None and got.value == put.value
                assert wire.decode_object(got.value).lineage.entries == obj.lineage.entries
            assert kinds == {Put, PutEntries}  # young records, then split ones, then back

    asyncio.run(main())


def test_two_stores_on_one_file_never_trust_a_list_the_other_replaced(tmp_path: Path) -> None:
    """Each writer remembers the entry lists it wrote, by ETag; a write by another
    process (here another store on the same file) changes the ETag, so the list is read
    from the file again, not taken from memory."""
    rng = random.Random(SEED)
    path = tmp_path / "shared.db"
    record = _Record(rng)
    record.entries = [record.entry() for _ in range(6)]

    async def main() -> None:
        one = SqliteStore.open(path, create=True)
        other = SqliteStore.open(path)
        try:
            etag: str | Expect = Expect.ABSENT
            for step in range(40):
                record.change()
                writer = (one, other)[rng.randrange(2)] if step else one
                etag = (await writer.transact([record.put("k", etag)]))["k"]
                for reader in (one, other):
                    got = await reader.get("k")
                    assert got is not None and got.value == record.value()
                _check_rows(path)
        finally:
            await one.close()
            await other.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("reason", "change"),
    [
        ("ids of another count", {"entry_ids": b"\x00" * 31}),
        ("entries past the value", {"entries_at": 10_000}),
        ("a negative offset", {"entries_at": -1}),
        ("ends that go back", {"entry_ends": [5, 3, 9]}),
        ("no entries", {"entry_ends": [], "entry_ids": b""}),
    ],
)
def test_parts_that_do_not_describe_the_value_write_it_whole(
    tmp_path: Path, reason: str, change: dict[str, Any]
) -> None:
    value = bytes(range(40))
    put = PutEntries(
        key="k",
        value=value,
        etag=Expect.ABSENT,
        entries_at=2,
        entry_ends=[5, 7, 9],
        entry_ids=b"".join(hashlib.sha256(bytes([n])).digest() for n in range(3)),
    )
    path = tmp_path / "s.db"

    async def main() -> None:
        async with SqliteStore.open(path, create=True) as store:
            await store.transact([replace(put, **change)])
            got = await store.get("k")
            assert got is not None and got.value == value, reason

    asyncio.run(main())
    heads, rows = _file_state(path)
    assert rows == [] and heads[0][2] == value, reason
