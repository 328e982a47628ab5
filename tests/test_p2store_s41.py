"""The SQLite writer's Python around its statements (session 41, branch p2store-s41):
the same work in fewer instructions. What it must keep is checked here against a
model written in plain Python, independent of the store's code: which callers of a
group commit, the refusal texts of those that do not, the values, ETags and entry ids
read back, and that no entry row is left that no head lists."""

from __future__ import annotations

import asyncio
import hashlib
import random
from pathlib import Path

import pytest

from gateway.stores import Delete, Expect, Operation, Put, PutEntries
from gateway.stores import sqlite as sqlite_store
from gateway.stores.sqlite import SqliteStore, _Writes

_KEYS = [f"k{n}" for n in range(10)]


class _Model:
    """What the store must hold: key -> (value, ETag, entry ids read back), and each
    key's lineage-like entries (to write appends, compactions and rewrites of them)."""

    def __init__(self) -> None:
        self.items: dict[str, tuple[bytes, str, bytes]] = {}
        self.entries: dict[str, list[bytes]] = {}

    def refusal(self, op: Operation, seen: dict[str, str]) -> str | None:
        verb = "put" if isinstance(op, Put) else "delete"
        found = seen.get(op.key)
        expected = op.etag
        if expected is Expect.ANY:
            return None
        if expected is Expect.ABSENT:
            if found is None:
                return None
            problem = "expected the key to be absent but it exists"
        elif found is None:
            problem = f"expected ETag {expected!r} but the key does not exist"
        elif found != expected:
            problem = f"ETag mismatch: expected {expected!r} but the key has a different ETag"
        else:
            return None
        return (
            f"{verb} of key {op.key!r} refused: {problem} — somebody else wrote first;"
            " read the key again and decide whether to retry"
        )

    def apply(self, writes: _Writes) -> str | None:
        seen = {key: etag for key, (_value, etag, _ids) in self.items.items()}
        for op in writes:
            refused = self.refusal(op, seen)
            if refused is not None:
                return refused
        for op in writes:
            if isinstance(op, Put):
                ids = b""
                if type(op) is PutEntries and _describes(op):
                    ids = op.entry_ids
                self.items[op.key] = (op.value, writes.etags[op.key], ids)
            else:
                self.items.pop(op.key, None)
        return None


def _describes(op: PutEntries) -> bool:
    ends = list(op.entry_ends)
    return bool(
        ends and len(op.entry_ids) == len(ends) * 32 and op.entries_at + ends[-1] <= len(op.value)
    )


def _random_put_entries(rng: random.Random, model: _Model, key: str, etag: str | Expect) -> Put:
    held = model.entries.get(key, [])
    move = rng.random()
    if held and move < 0.5:  # a cycle: entries appended
        entries = held + [rng.randbytes(rng.randint(5, 40)) for _ in range(rng.randint(1, 3))]
    elif held and move < 0.65:  # a compaction: the oldest dropped
        entries = [*held[rng.randint(1, len(held)) :], rng.randbytes(9)]
    elif held and move < 0.8:  # the last entry rewritten (a fold)
        entries = [*held[:-1], rng.randbytes(rng.randint(5, 40))]
    else:  # another history (some entries repeated: equal ids, equal bytes)
        entries = [rng.randbytes(rng.randint(1, 30)) for _ in range(rng.randint(1, 6))]
        if rng.random() < 0.3:
            entries += entries[:2]
    model.entries[key] = entries
    head, tail = rng.randbytes(rng.randint(0, 20)), rng.randbytes(rng.randint(0, 20))
    ends: list[int] = []
    for entry in entries:
        ends.append((ends[-1] if ends else 0) + len(entry))
    ids = b"".join(hashlib.sha256(entry).digest() for entry in entries)
    at = len(head)
    spoil = rng.random()
    if spoil < 0.05:
        ids = ids[:-1]  # ids that do not pair up with the entries: written whole
    elif spoil < 0.1:
        at += len(tail) + 1  # entries past the value's end: written whole
    return PutEntries(
        key=key,
        value=head + b"".join(entries) + tail,
        etag=etag,
        entries_at=at,
        entry_ends=tuple(ends),
        entry_ids=ids,
    )


def _random_caller(rng: random.Random, model: _Model) -> _Writes:
    ops: list[Operation] = []
    for key in rng.sample(_KEYS, rng.randint(1, 5)):
        held = model.items.get(key)
        pick = rng.random()
        etag: str | Expect
        if pick < 0.25:
            etag = Expect.ANY
        elif pick < 0.5:
            etag = Expect.ABSENT
        elif pick < 0.85 and held is not None:
            etag = held[1]
        else:
            etag = f"{rng.getrandbits(128):032x}"  # stale or made up: refused
        kind = rng.random()
        if kind < 0.2:
            ops.append(Delete(key=key, etag=etag))
        elif kind < 0.55:
            ops.append(_random_put_entries(rng, model, key, etag))
        else:
            ops.append(Put(key=key, value=rng.randbytes(rng.randint(0, 300)), etag=etag))
    return _Writes(ops)


def _check_file(store: SqliteStore, model: _Model) -> None:
    async def read() -> dict[str, tuple[bytes, str, bytes]]:
        found = await store.get_many(_KEYS)
        return {key: (item.value, item.etag, item.entry_ids) for key, item in found.items()}

    assert asyncio.run(read()) == model.items
    connection = store._connection

    def orphans() -> int:
        (rows,) = connection.execute("SELECT count(*) FROM entries").fetchone()
        (listed,) = connection.execute("SELECT total(length(entry_rows)) FROM items").fetchone()
        return int(rows - listed // 8)

    assert store._executor.submit(orphans).result() == 0


@pytest.mark.parametrize("seed", range(12))
def test_groups_commit_what_separate_transactions_would(tmp_path: Path, seed: int) -> None:
    """Seeded groups of 1 to 6 callers, each of 1 to 5 puts, entry puts and deletes with
    every kind of precondition (many refused): each caller's outcome and refusal text
    and the file afterwards are what the model says."""
    rng = random.Random(seed)
    model = _Model()
    store = SqliteStore.open(tmp_path / "s.db", create=True)
    # Another process's store on the same file: what it writes changes ETags the first
    # store's writer remembers entry lists under (and the other way round).
    other = SqliteStore.open(tmp_path / "s.db")
    try:
        for _round in range(40):
            group = [_random_caller(rng, model) for _ in range(rng.choice([1, 1, 2, 3, 6]))]
            expected = [model.apply(writes) for writes in group]
            writer = other if rng.random() < 0.25 else store
            outcomes = writer._executor.submit(writer._commit_group, list(group)).result()
            assert [None if o is None else str(o) for o in outcomes] == expected
            _check_file(store, model)
    finally:
        asyncio.run(other.close())
        asyncio.run(store.close())


def test_the_model_sees_a_broken_precondition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The test above fails when the writer's precondition check is broken (an ETag
    mismatch let through): it is not blind to the refusals."""
    passing = sqlite_store._check_precondition

    def lenient(op: Operation, found: str | None) -> None:
        if isinstance(op.etag, str):
            return
        passing(op, found)

    monkeypatch.setattr(sqlite_store, "_check_precondition", lenient)
    with pytest.raises(AssertionError):
        test_groups_commit_what_separate_transactions_would(tmp_path, 0)


def test_the_writer_forgets_the_entry_lists_of_values_it_no_longer_keeps_as_rows(
    tmp_path: Path,
) -> None:
    """A key written whole or deleted leaves the writer's memo of entry lists (only keys
    it remembers are looked for there now), and the memo's byte count stays the sum of
    what it holds: the memo stays bounded by what is kept as rows."""
    rng = random.Random(41)
    model = _Model()
    store = SqliteStore.open(tmp_path / "s.db", create=True)

    def memo() -> tuple[set[str], int, int]:
        held = store._entry_lists
        return (
            set(held),
            store._entry_list_bytes,
            sum(len(n) + len(i) for _e, n, i in held.values()),
        )

    try:
        for round_ in range(60):
            key = _KEYS[round_ % 4]
            kind = rng.random()
            op: Operation
            if kind < 0.5:
                op = _random_put_entries(rng, model, key, Expect.ANY)
            elif kind < 0.8:
                op = Put(key=key, value=rng.randbytes(50), etag=Expect.ANY)
            else:
                op = Delete(key=key, etag=Expect.ANY)
            writes = _Writes([op])
            assert model.apply(writes) is None
            store._executor.submit(store._commit_group, [writes]).result()
            keys, counted, summed = store._executor.submit(memo).result()
            split = {k for k, (_v, _e, ids) in model.items.items() if ids}
            assert keys == split
            assert counted == summed
        _check_file(store, model)
    finally:
        asyncio.run(store.close())


def test_checking_a_caller_at_a_glance_refuses_what_the_op_by_op_check_refuses() -> None:
    """``_check_preconditions`` against ``_check_precondition`` op by op (the plain
    path): seeded callers, every kind of precondition on keys present and absent, the
    same first refusal and text or none."""
    rng = random.Random(7)
    for _case in range(2000):
        found = {key: f"{rng.getrandbits(16):04x}" for key in rng.sample(_KEYS, rng.randint(0, 6))}
        ops: list[Operation] = []
        for key in rng.sample(_KEYS, rng.randint(1, 5)):
            etag: str | Expect = rng.choice(
                [Expect.ANY, Expect.ABSENT, found.get(key, "0000"), f"{rng.getrandbits(16):04x}"]
            )
            if rng.random() < 0.3:
                ops.append(Delete(key=key, etag=etag))
            else:
                ops.append(Put(key=key, value=b"v", etag=etag))
        plain: str | None = None
        try:
            for op in ops:
                sqlite_store._check_precondition(op, found.get(op.key))
        except Exception as exc:  # the refusal, compared by type and text below
            plain = f"{type(exc).__name__}: {exc}"
        glance: str | None = None
        try:
            sqlite_store._check_preconditions(tuple(ops), found)
        except Exception as exc:
            glance = f"{type(exc).__name__}: {exc}"
        assert glance == plain, (ops, found)


def test_the_writers_json_reading_gives_what_json_loads_gives() -> None:
    """The state documents SQLite makes (``json_group_object`` of ETags, ``[ETag]`` and
    ``[hex, hex]`` pairs), read by the scanner alone, equal ``json.loads`` of them."""
    import json
    import sqlite3

    rng = random.Random(11)
    connection = sqlite3.connect(":memory:")
    connection.execute("CREATE TABLE t (k TEXT, v TEXT, rows BLOB)")
    for case in range(200):
        connection.execute("DELETE FROM t")
        for n in range(rng.randint(0, 12)):
            key = rng.choice(["k", "t/o/", "é", 'q"\\', "\u2028"]) + str(case * 100 + n)
            rows = rng.randbytes(rng.choice([0, 8, 16]))
            connection.execute(
                "INSERT INTO t VALUES (?, ?, ?)", (key, f"{rng.getrandbits(64):x}", rows)
            )
        for sql in (
            "SELECT json_group_object(k, CASE WHEN length(rows) THEN json_array(v) ELSE v END) FROM t",
            "SELECT json_group_object(k, json_array(hex(rows), hex(v))) FROM t WHERE length(rows)",
        ):
            (document,) = connection.execute(sql).fetchone()
            assert sqlite_store._json_object(document) == json.loads(document)
    connection.close()


def test_a_caller_of_more_keys_than_one_statement_reads(tmp_path: Path) -> None:
    """Callers of 600 to 1,100 keys (more than one chunk of the state read), some of
    them kept as rows, with preconditions passing and failing: the model's outcomes and
    file."""
    rng = random.Random(5)
    model = _Model()
    store = SqliteStore.open(tmp_path / "s.db", create=True)
    keys = [f"many/{n:05d}" for n in range(1100)]
    try:
        for round_ in range(6):
            ops: list[Operation] = []
            for key in keys[: rng.randint(600, 1100)]:
                held = model.items.get(key)
                etag: str | Expect = held[1] if held is not None else Expect.ABSENT
                if round_ == 3 and key == keys[550]:
                    etag = "0" * 32  # a stale ETag in the second chunk: all refused
                if rng.random() < 0.1:
                    ops.append(_random_put_entries(rng, model, key, etag))
                else:
                    ops.append(Put(key=key, value=rng.randbytes(20), etag=etag))
            writes = _Writes(ops)
            expected = model.apply(writes)
            assert (expected is None) == (round_ != 3)
            (outcome,) = store._executor.submit(store._commit_group, [writes]).result()
            assert (None if outcome is None else str(outcome)) == expected

            async def read() -> dict[str, tuple[bytes, str, bytes]]:
                found = await store.get_many(keys)
                return {k: (item.value, item.etag, item.entry_ids) for k, item in found.items()}

            assert asyncio.run(read()) == model.items
    finally:
        asyncio.run(store.close())
