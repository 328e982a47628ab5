"""What the migration and cycle paths stopped repeating (issue 13, profiling round):
decoded records remembered per journal, peer certificates remembered per CA set, small
point reads on the event loop's thread. Each memo must give exactly what the work it
saves would have given."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gateway import wire
from gateway.errors import UntrustedKeyError
from gateway.handoff import journal as journal_module
from gateway.stores import Expect
from gateway.stores.sqlite import INLINE_READ_MAX_BYTES, SqliteStore
from gateway.testing import HostSpec, build_world
from gateway.testing.harness import InProcessWorld
from gateway.transport import tls
from tests.conftest import HOST_A, HOST_B

OBJECT = "obj://org-a.example/billing/invoice-9"


def test_remembered_records_are_what_their_bytes_decode_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every record a step writes through the journal (created, cycled, frozen, moved,
    staged, activated, settled) decodes from its bytes to exactly the value remembered
    for them, so a read served from the memo equals a read that decodes."""
    remembered: list[str] = []
    real = journal_module._Decoded.remember

    def checking(self: Any, decode: Any, raw: bytes, value: Any) -> None:
        assert decode(raw) == value, f"{decode.__name__} does not give back what was encoded"
        remembered.append(decode.__name__)
        real(self, decode, raw, value)

    monkeypatch.setattr(journal_module._Decoded, "remember", checking)
    real_object = journal_module._Objects.remember

    def checking_object(self: Any, key: str, raw: bytes, obj: Any) -> None:
        assert wire.decode_object(raw) == obj, "decode_object does not give back what was encoded"
        remembered.append("decode_object")
        real_object(self, key, raw, obj)

    monkeypatch.setattr(journal_module._Objects, "remember", checking_object)
    world = InProcessWorld(
        build_world(tmp_path, [HostSpec(host_id=HOST_A), HostSpec(host_id=HOST_B)])
    )
    with contextlib.closing(world):
        world.create(
            HOST_A,
            OBJECT,
            data={"amount": 1500, "status": "open"},
            spec={
                "grant": {
                    "audience": "spiffe://org-b.example",
                    "capabilities": [{"resource": "state:self", "actions": ["read", "write"]}],
                },
                "cycle": {"interval_seconds": 60},
                "rules": [
                    {"name": "mark", "when": "data.amount > 1000", "write": '{"seen": true}'},
                ],
            },
        )
        host_a = world.hosts[HOST_A]
        world.run(host_a.cycles.run("default", OBJECT))
        world.migrate(OBJECT, source=HOST_A, to=HOST_B)
        world.assert_invariants(OBJECT)
    assert {"decode_object", "decode_source_record", "decode_destination_record"} <= set(remembered)


def test_a_journal_decodes_bytes_it_saw_once() -> None:
    """The memo is keyed by the bytes and the decoder: the same bytes decode once,
    other bytes decode afresh, and it holds a bounded number of entries."""
    calls: list[bytes] = []

    def decode(raw: bytes) -> tuple[bytes]:
        calls.append(raw)
        return (raw,)

    memo = journal_module._Decoded(entries=2)
    assert memo.get(decode, b"one") == (b"one",)
    assert memo.get(decode, b"one") == (b"one",)
    assert calls == [b"one"]
    memo.get(decode, b"two")
    memo.get(decode, b"three")  # evicts b"one", the least recently used
    memo.get(decode, b"one")
    assert calls == [b"one", b"two", b"three", b"one"]
    big = b"x" * (journal_module.DECODED_CACHE_MAX_BYTES + 1)
    memo.get(decode, big)
    memo.get(decode, big)
    assert calls[-2:] == [big, big]  # too large to keep: decoded every time


def test_a_remembered_peer_is_checked_again_when_its_domain_cas_change(tmp_path: Path) -> None:
    """A certificate accepted once is accepted again while its domain's CAs are the same
    bytes; with other CAs (a reloaded bundle) it is checked afresh and refused."""
    world = build_world(tmp_path, [HostSpec(host_id=HOST_A), HostSpec(host_id=HOST_B)])
    tls_a = world.host_directory(HOST_A) / "tls"
    tls_b = world.host_directory(HOST_B) / "tls"
    auth = {"x509_pem_cert": [(tls_a / "host.crt").read_bytes()]}
    good = {"org-a.example": ((tls_a / "ca.crt").read_bytes(),)}
    tls._ACCEPTED_PEERS.clear()
    assert tls.authenticated_peer(auth, good) == HOST_A
    assert tls.authenticated_peer(auth, good) == HOST_A
    assert len(tls._ACCEPTED_PEERS) == 1
    wrong = {"org-a.example": ((tls_b / "ca.crt").read_bytes(),)}
    with pytest.raises(UntrustedKeyError):
        tls.authenticated_peer(auth, wrong)
    with pytest.raises(UntrustedKeyError):
        tls.authenticated_peer(auth, {})


def test_point_reads_large_values_and_a_closed_store(tmp_path: Path) -> None:
    """``get`` answers the same whether the value is read on the loop's thread (small)
    or on a reader thread (larger than INLINE_READ_MAX_BYTES, or the file busy)."""

    async def main() -> None:
        store = SqliteStore.open(tmp_path / "s.db", create=True)
        small, large = b"s" * 100, b"L" * (INLINE_READ_MAX_BYTES + 1)
        await store.put("k/small", small, etag=Expect.ABSENT)
        await store.put("k/large", large, etag=Expect.ABSENT)
        await store.put("k/empty", b"", etag=Expect.ABSENT)
        got = await store.get("k/small")
        assert got is not None and got.value == small
        got = await store.get("k/large")
        assert got is not None and got.value == large
        got = await store.get("k/empty")
        assert got is not None and got.value == b""
        assert await store.get("k/missing") is None
        # Another connection holds the write lock mid-transaction: reads still answer
        # the last committed value (WAL), without waiting.
        other = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        other.execute("UPDATE items SET value = x'00' WHERE key = 'k/small'")
        got = await store.get("k/small")
        assert got is not None and got.value == small
        other.execute("ROLLBACK")
        other.close()
        await store.close()
        from gateway.errors import StoreUnavailableError

        with pytest.raises(StoreUnavailableError):
            await store.get("k/small")

    asyncio.run(main())


def test_stored_authority_decodes_the_same_from_the_memo() -> None:
    """The authority memo returns values equal to a fresh decode, and refuses bad bytes
    every time (errors are not remembered)."""
    raw = b'{"allow":[{"act":["read"],"res":"state:self"}],"deny":[]}'
    first = wire.decode_authority(raw)
    assert wire.decode_authority(raw) is first
    assert wire._decode_authority(raw) == first
    from gateway.errors import PayloadDecodeError

    for _ in range(2):
        with pytest.raises(PayloadDecodeError):
            wire.decode_authority(b'{"allow": 1}')


def test_short_and_long_listings_and_many_keys_answer_alike(tmp_path: Path) -> None:
    """``list`` and ``get_many`` give the same answer whether it came from the loop's
    thread (short) or from a reader thread (a listing over INLINE_LIST_MAX_KEYS keys,
    more than INLINE_READ_MAX_KEYS keys, or a large value among them)."""
    from gateway.stores import sqlite as sqlite_module

    async def main() -> None:
        store = SqliteStore.open(tmp_path / "s.db", create=True)
        many = sqlite_module.INLINE_LIST_MAX_KEYS + 5
        for index in range(many):
            await store.put(f"long/{index:05d}", b"v", etag=Expect.ABSENT)
        for index in range(3):
            await store.put(f"short/{index}", b"v%d" % index, etag=Expect.ABSENT)
        await store.put("short/large", b"L" * (INLINE_READ_MAX_BYTES + 1), etag=Expect.ABSENT)
        listed = await store.list("long/")
        assert listed == [f"long/{index:05d}" for index in range(many)]
        assert await store.list("long/", limit=3) == listed[:3]
        assert await store.list("short/", limit=2) == ["short/0", "short/1"]
        assert await store.list("absent/") == []
        found = await store.get_many(["short/1", "short/0", "missing"])
        assert list(found) == ["short/1", "short/0"]
        assert found["short/1"].value == b"v1"
        found = await store.get_many(["short/0", "short/large"])
        assert found["short/large"].value == b"L" * (INLINE_READ_MAX_BYTES + 1)
        found = await store.get_many(listed)  # more keys than read inline
        assert list(found) == listed
        await store.close()

    asyncio.run(main())


def test_new_files_get_page_size_and_old_files_keep_theirs(tmp_path: Path) -> None:
    """A new store file uses PAGE_SIZE; a file made before with other pages (16 KiB, as
    sessions before 24 made them) opens, reads and writes as before, keeping its own
    page size."""
    from gateway.stores import sqlite as sqlite_module

    old = tmp_path / "old.db"
    connection = sqlite3.connect(old, isolation_level=None)
    connection.execute("PRAGMA page_size = 16384")
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute(
        "CREATE TABLE items (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL,"
        " etag TEXT NOT NULL)"
    )
    connection.execute("INSERT INTO items VALUES ('k', x'01', 'e1')")
    connection.execute("PRAGMA user_version = 1")
    connection.close()

    async def main() -> None:
        assert sqlite_module.PAGE_SIZE != 16384
        for path, pages in ((tmp_path / "new.db", sqlite_module.PAGE_SIZE), (old, 16384)):
            store = SqliteStore.open(path, create=True)
            await store.put("k2", b"v" * (3 << 20), etag=Expect.ABSENT)
            got = await store.get("k2")
            assert got is not None and len(got.value) == 3 << 20
            await store.close()
            check = sqlite3.connect(path)
            assert check.execute("PRAGMA page_size").fetchone() == (pages,)
            check.close()

    asyncio.run(main())


def test_the_decoded_memo_is_bounded_by_bytes_too() -> None:
    """Entries go, oldest first, once their encoded bytes exceed the memo's total."""
    memo = journal_module._Decoded(entries=100, total_bytes=10)
    calls: list[bytes] = []

    def decode(raw: bytes) -> bytes:
        calls.append(raw)
        return raw

    for raw in (b"aaaa", b"bbbb", b"cccc"):  # 12 bytes: b"aaaa" must go
        memo.get(decode, raw)
    memo.get(decode, b"cccc")
    memo.get(decode, b"bbbb")
    memo.get(decode, b"aaaa")
    assert calls == [b"aaaa", b"bbbb", b"cccc", b"aaaa"]


def test_the_object_memo_serves_only_the_exact_bytes_and_keeps_objects_in_use() -> None:
    """A read is served from the memo only for the bytes remembered under that key; a
    full memo evicts an object only once it went unused for the idle time, and refuses
    a newcomer rather than evict one in use (objects cycled in turn keep hitting)."""
    decoded: list[bytes] = []
    real_decode = wire.decode_object
    objects = {}
    for name in ("a", "b", "c"):
        objects[name] = wire.decode_object(stored_object(name))
    now = [0.0]
    memo = journal_module._Objects(
        total_bytes=2 * len(stored_object("a")) + 10, idle_seconds=5.0, clock=lambda: now[0]
    )

    def counting(raw: bytes, *, entry_ids: bytes = b"") -> Any:
        decoded.append(raw)
        return real_decode(raw, entry_ids=entry_ids)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(wire, "decode_object", counting)
        assert memo.get("k/a", stored_object("a")) == objects["a"]
        assert memo.get("k/a", stored_object("a")) == objects["a"]
        assert len(decoded) == 1  # the same bytes under the same key: a hit
        assert memo.get("k/a", stored_object("b")) == objects["b"]
        assert len(decoded) == 2  # other bytes under that key: decoded, never the old value
        memo.get("k/b", stored_object("b"))
        memo.get("k/c", stored_object("c"))  # full, both in use: c is not kept
        memo.get("k/c", stored_object("c"))
        assert len(decoded) == 5
        memo.get("k/a", stored_object("b"))
        memo.get("k/b", stored_object("b"))
        assert len(decoded) == 5  # the objects held still hit
        now[0] = 10.0
        memo.get("k/c", stored_object("c"))  # a and b idle: the oldest gives way
        memo.get("k/c", stored_object("c"))
        assert len(decoded) == 6


def stored_object(name: str) -> bytes:
    from datetime import UTC, datetime

    from gateway.model import new_object

    obj = new_object(
        f"obj://org-a.example/billing/{name}",
        tenant="default",
        data=b'{"n":1}',
        content_type="application/json",
        host=HOST_A,
        at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    return wire.encode_object(obj)
