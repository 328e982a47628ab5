"""The behaviour every :class:`~gateway.stores.StateStore` must have, as reusable tests.

To run these against an implementation, subclass :class:`StoreContract` in a
``test_*.py`` module and give the subclass an ``open_store`` fixture: a callable that
returns an async context manager yielding a fresh, empty store and closing it on exit.

Why a factory and not the store itself: there is no pytest-asyncio here, so every test
runs its own event loop with :func:`asyncio.run`, and a store may be bound to the loop it
was opened in (a ``grpc.aio`` channel to a Dapr sidecar is). The store is therefore
opened inside the test's loop, by :func:`store_test`.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeAlias

import pytest

from gateway.errors import ConcurrencyError, StoreError
from gateway.stores import Delete, Expect, Put, StateStore

OpenStore: TypeAlias = Callable[[], AbstractAsyncContextManager[StateStore]]
Scenario: TypeAlias = Callable[[Any, StateStore], Awaitable[None]]


def store_test(scenario: Scenario) -> Callable[[Any, OpenStore], None]:
    """Turn ``async def test_x(self, store)`` into a sync test using ``open_store``."""

    def test(self: Any, open_store: OpenStore) -> None:
        async def main() -> None:
            async with open_store() as store:
                await scenario(self, store)

        asyncio.run(main())

    # Not functools.wraps: pytest would follow __wrapped__ and ask for a `store` fixture.
    test.__name__ = scenario.__name__
    test.__qualname__ = scenario.__qualname__
    test.__doc__ = scenario.__doc__
    test.__module__ = scenario.__module__
    return test


async def etag_of(store: StateStore, key: str) -> str:
    """The current ETag of ``key`` (which must exist)."""
    item = await store.get(key)
    assert item is not None, f"{key} should exist"
    return item.etag


class StoreContract:
    """The contract tests; subclasses provide the ``open_store`` fixture."""

    # --- reads -------------------------------------------------------------------------

    @store_test
    async def test_get_missing_key_is_none(self, store: StateStore) -> None:
        """get() of a key that was never written returns None, not an error."""
        assert await store.get("never/written") is None

    @store_test
    async def test_put_returns_the_etag_get_reads(self, store: StateStore) -> None:
        """After put(), get() reports the exact value and a non-empty ETag."""
        await store.put("k", b"v", etag=Expect.ABSENT)
        etag = await etag_of(store, "k")
        item = await store.get("k")
        assert item is not None
        assert (item.key, item.value, item.etag) == ("k", b"v", etag)
        assert isinstance(etag, str)
        assert etag

    @store_test
    async def test_get_many_leaves_out_missing_keys(self, store: StateStore) -> None:
        """get_many() returns only the keys that exist, each with its value and ETag."""
        await store.transact(
            [
                Put(key="m/a", value=b"1", etag=Expect.ABSENT),
                Put(key="m/c", value=b"3", etag=Expect.ABSENT),
            ]
        )
        etags = {key: await etag_of(store, key) for key in ("m/a", "m/c")}
        found = await store.get_many(["m/a", "m/b", "m/c", "m/zz", "m/a"])
        assert set(found) == {"m/a", "m/c"}
        assert found["m/a"].value == b"1"
        assert found["m/a"].etag == etags["m/a"]
        assert found["m/c"].value == b"3"
        assert found["m/c"].etag == etags["m/c"]
        assert await store.get_many([]) == {}
        assert await store.get_many(["nothing/here"]) == {}

    # --- first write wins --------------------------------------------------------------

    @store_test
    async def test_second_create_with_absent_fails(self, store: StateStore) -> None:
        """Expect.ABSENT creates once; a second create of the same key is refused."""
        await store.put("obj/1", b"first", etag=Expect.ABSENT)
        with pytest.raises(ConcurrencyError) as caught:
            await store.put("obj/1", b"second", etag=Expect.ABSENT)
        assert "obj/1" in str(caught.value)
        item = await store.get("obj/1")
        assert item is not None
        assert item.value == b"first"

    @store_test
    async def test_concurrent_creates_have_one_winner(self, store: StateStore) -> None:
        """Of many concurrent Expect.ABSENT creates of one key, exactly one succeeds."""

        async def create(n: int) -> str | None:
            try:
                await store.put("contended", str(n).encode(), etag=Expect.ABSENT)
            except ConcurrencyError:
                return None
            return str(n)

        results = await asyncio.gather(*(create(n) for n in range(20)))
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        item = await store.get("contended")
        assert item is not None
        assert item.value == winners[0].encode()

    @store_test
    async def test_update_with_read_etag_gives_new_etag(self, store: StateStore) -> None:
        """A put with the ETag just read succeeds and yields a new, different ETag."""
        await store.put("doc", b"v1", etag=Expect.ABSENT)
        first = await etag_of(store, "doc")
        item = await store.get("doc")
        assert item is not None
        await store.put("doc", b"v2", etag=item.etag)
        second = await etag_of(store, "doc")
        assert second != first
        after = await store.get("doc")
        assert after is not None
        assert (after.value, after.etag) == (b"v2", second)

    @store_test
    async def test_update_with_same_value_still_changes_etag(self, store: StateStore) -> None:
        """Every successful write gives a new ETag, even when the value is unchanged."""
        await store.put("same", b"x", etag=Expect.ABSENT)
        first = await etag_of(store, "same")
        await store.put("same", b"x", etag=first)
        second = await etag_of(store, "same")
        assert second != first

    @store_test
    async def test_update_with_stale_etag_fails(self, store: StateStore) -> None:
        """A put with an ETag that is no longer current fails and leaves the value."""
        await store.put("doc", b"v1", etag=Expect.ABSENT)
        stale = await etag_of(store, "doc")
        await store.put("doc", b"v2", etag=stale)
        current = await etag_of(store, "doc")
        with pytest.raises(ConcurrencyError) as caught:
            await store.put("doc", b"v3", etag=stale)
        assert "doc" in str(caught.value)
        item = await store.get("doc")
        assert item is not None
        assert (item.value, item.etag) == (b"v2", current)

    @store_test
    async def test_put_with_etag_of_missing_key_fails(self, store: StateStore) -> None:
        """A put with an ETag on a key that does not exist fails and creates nothing."""
        await store.put("gone", b"v", etag=Expect.ABSENT)
        etag = await etag_of(store, "gone")
        await store.delete("gone", etag=etag)
        with pytest.raises(ConcurrencyError):
            await store.put("gone", b"again", etag=etag)
        assert await store.get("gone") is None

    @store_test
    async def test_etag_never_reused_after_delete_and_recreate(self, store: StateStore) -> None:
        """ETags of a key stay unique across updates, deletes and re-creates."""
        seen: list[str] = []
        for round_ in range(10):
            await store.put("cycle", b"created %d" % round_, etag=Expect.ABSENT)
            etag = await etag_of(store, "cycle")
            seen.append(etag)
            await store.put("cycle", b"updated %d" % round_, etag=etag)
            etag = await etag_of(store, "cycle")
            seen.append(etag)
            await store.delete("cycle", etag=etag)
        assert len(set(seen)) == len(seen)
        # An ETag from before the last delete must not match the re-created key.
        await store.put("cycle", b"last", etag=Expect.ABSENT)
        recreated = await etag_of(store, "cycle")
        assert recreated not in seen
        for old in seen:
            with pytest.raises(ConcurrencyError):
                await store.put("cycle", b"stale writer", etag=old)
        item = await store.get("cycle")
        assert item is not None
        assert item.value == b"last"

    # --- deletes -----------------------------------------------------------------------

    @store_test
    async def test_delete_with_etag(self, store: StateStore) -> None:
        """A delete with the current ETag removes the key; a stale one fails and keeps it."""
        await store.put("d", b"v1", etag=Expect.ABSENT)
        stale = await etag_of(store, "d")
        await store.put("d", b"v2", etag=stale)
        current = await etag_of(store, "d")
        with pytest.raises(ConcurrencyError):
            await store.delete("d", etag=stale)
        assert await store.get("d") is not None
        await store.delete("d", etag=current)
        assert await store.get("d") is None

    @store_test
    async def test_delete_with_etag_of_missing_key_fails(self, store: StateStore) -> None:
        """A delete with an ETag of a key that does not exist is a ConcurrencyError."""
        await store.put("d", b"v", etag=Expect.ABSENT)
        etag = await etag_of(store, "d")
        await store.delete("d", etag=etag)
        with pytest.raises(ConcurrencyError) as caught:
            await store.delete("d", etag=etag)
        assert "d" in str(caught.value)

    # --- Expect.ANY --------------------------------------------------------------------

    @store_test
    async def test_any_semantics(self, store: StateStore) -> None:
        """Expect.ANY: put creates or overwrites; delete removes or accepts a missing key."""
        await store.put("any", b"1", etag=Expect.ANY)
        created = await etag_of(store, "any")
        await store.put("any", b"2", etag=Expect.ANY)
        overwritten = await etag_of(store, "any")
        assert overwritten != created
        item = await store.get("any")
        assert item is not None
        assert (item.value, item.etag) == (b"2", overwritten)
        await store.delete("any", etag=Expect.ANY)
        assert await store.get("any") is None
        await store.delete("any", etag=Expect.ANY)  # missing: a no-op, not an error
        await store.delete("never/existed", etag=Expect.ANY)
        assert await store.get("any") is None

    # --- transactions ------------------------------------------------------------------

    @store_test
    async def test_empty_transaction_is_a_no_op(self, store: StateStore) -> None:
        """transact([]) succeeds, returns no ETag (an empty mapping, or None from a store
        that never returns ETags) and writes nothing."""
        assert not await store.transact([])
        assert await store.list("") == []

    @store_test
    async def test_transaction_gives_every_key_put_its_own_etag(self, store: StateStore) -> None:
        """Every key a transaction puts exists afterwards with its value and a fresh ETag.
        A store that returns ETags from a write (the embedded one) returns exactly those,
        one per key put and none for a key deleted; Dapr's state API has none to return
        (None)."""
        await store.put("t/gone", b"x", etag=Expect.ABSENT)
        returned = await store.transact(
            [
                *(Put(key=f"t/{n}", value=b"%d" % n, etag=Expect.ABSENT) for n in range(3)),
                Delete(key="t/gone", etag=Expect.ANY),
            ]
        )
        found = await store.get_many(["t/0", "t/1", "t/2"])
        assert {key: item.value for key, item in found.items()} == {
            "t/0": b"0",
            "t/1": b"1",
            "t/2": b"2",
        }
        assert len({item.etag for item in found.values()}) == 3
        if returned is not None:
            assert returned == {key: item.etag for key, item in found.items()}

    @store_test
    async def test_get_etags_answers_what_get_many_does_without_values(
        self, store: StateStore
    ) -> None:
        """get_etags() gives the current ETag of each existing key (missing keys left out,
        repeats answered once), the same one get_many() reads, and a new one after a write."""
        await store.transact(
            [
                Put(key="e/a", value=b"1" * 70_000, etag=Expect.ABSENT),  # a large value
                Put(key="e/c", value=b"3", etag=Expect.ABSENT),
            ]
        )
        found = await store.get_many(["e/a", "e/c"])
        etags = await store.get_etags(["e/a", "e/b", "e/c", "e/a"])
        assert etags == {key: item.etag for key, item in found.items()}
        assert list(etags) == ["e/a", "e/c"]  # in the order asked
        await store.put("e/c", b"33", etag=etags["e/c"])
        after = await store.get_etags(["e/c"])
        assert after["e/c"] not in ("", etags["e/c"])
        assert after["e/c"] == await etag_of(store, "e/c")
        await store.delete("e/a", etag=etags["e/a"])
        assert await store.get_etags(["e/a"]) == {}
        assert await store.get_etags([]) == {}
        with pytest.raises(TypeError):
            await store.get_etags("e/c")  # a str is not a list of keys

    @store_test
    async def test_get_etags_of_many_keys(self, store: StateStore) -> None:
        """More keys than one statement or one bulk request holds."""
        keys = [f"many/{n:04d}" for n in range(1200)]
        await store.transact([Put(key=key, value=b"", etag=Expect.ABSENT) for key in keys[::2]])
        etags = await store.get_etags(keys)
        assert list(etags) == keys[::2]
        found = await store.get_many(keys[::2])
        assert etags == {key: item.etag for key, item in found.items()}

    @store_test
    async def test_transaction_is_all_or_nothing(self, store: StateStore) -> None:
        """One stale ETag fails the whole transaction; no put is applied; the key is named."""
        await store.put("acct/c", b"c0", etag=Expect.ABSENT)
        stale = await etag_of(store, "acct/c")
        await store.put("acct/c", b"c1", etag=stale)
        current = await etag_of(store, "acct/c")
        with pytest.raises(ConcurrencyError) as caught:
            await store.transact(
                [
                    Put(key="acct/a", value=b"a", etag=Expect.ABSENT),
                    Put(key="acct/b", value=b"b", etag=Expect.ANY),
                    Put(key="acct/c", value=b"c2", etag=stale),
                ]
            )
        assert "acct/c" in str(caught.value)
        assert await store.get("acct/a") is None
        assert await store.get("acct/b") is None
        item = await store.get("acct/c")
        assert item is not None
        assert (item.value, item.etag) == (b"c1", current)

    @store_test
    async def test_transaction_with_deletes(self, store: StateStore) -> None:
        """Deletes and puts commit together, and a failed delete precondition undoes all."""
        await store.transact(
            [
                Put(key="x/old", value=b"old", etag=Expect.ABSENT),
                Put(key="x/keep", value=b"k1", etag=Expect.ABSENT),
            ]
        )
        etags = {key: await etag_of(store, key) for key in ("x/old", "x/keep")}
        # Move x/old to x/new and update x/keep, all at once.
        await store.transact(
            [
                Delete(key="x/old", etag=etags["x/old"]),
                Put(key="x/new", value=b"old", etag=Expect.ABSENT),
                Put(key="x/keep", value=b"k2", etag=etags["x/keep"]),
            ]
        )
        assert await store.get("x/old") is None
        assert await store.list("x/") == ["x/keep", "x/new"]
        moved = await etag_of(store, "x/keep")

        # A delete with a stale ETag fails the transaction: the put beside it is undone.
        with pytest.raises(ConcurrencyError) as caught:
            await store.transact(
                [
                    Put(key="x/other", value=b"o", etag=Expect.ABSENT),
                    Delete(key="x/keep", etag=etags["x/keep"]),
                ]
            )
        assert "x/keep" in str(caught.value)
        assert await store.get("x/other") is None
        kept = await store.get("x/keep")
        assert kept is not None
        assert (kept.value, kept.etag) == (b"k2", moved)

    @store_test
    async def test_duplicate_key_in_transaction_rejected(self, store: StateStore) -> None:
        """A transaction naming one key twice is refused as ambiguous and writes nothing."""
        with pytest.raises(StoreError) as caught:
            await store.transact(
                [
                    Put(key="dup/other", value=b"o", etag=Expect.ABSENT),
                    Put(key="dup", value=b"1", etag=Expect.ANY),
                    Delete(key="dup", etag=Expect.ANY),
                ]
            )
        # Not a conflict: retrying cannot help, so it must not look like one.
        assert not isinstance(caught.value, ConcurrencyError)
        assert "dup" in str(caught.value)
        assert await store.get("dup") is None
        assert await store.get("dup/other") is None

    # --- listing -----------------------------------------------------------------------

    @store_test
    async def test_list_prefix_is_literal_and_ordered(self, store: StateStore) -> None:
        """list() matches the prefix literally ('%', '_' are not wildcards), ascending."""
        keys = [
            "a",
            "a%",
            "a%b",
            "a_b",
            "aXb",
            "ab",
            "a/%/x",
            "a/_/y",
            "b",
            "é/1",
            "é/2",
            "日本/東京",
            "日本/大阪",
            "😀/x",
            "~",
        ]
        await store.transact([Put(key=key, value=b"", etag=Expect.ABSENT) for key in keys])
        assert await store.list("") == sorted(keys)
        assert await store.list("a%") == ["a%", "a%b"]
        assert await store.list("a_") == ["a_b"]
        assert await store.list("a/%") == ["a/%/x"]
        assert await store.list("a/_") == ["a/_/y"]
        assert await store.list("a") == sorted(k for k in keys if k.startswith("a"))
        assert await store.list("é/") == ["é/1", "é/2"]
        assert await store.list("日本/") == sorted(["日本/東京", "日本/大阪"])
        assert await store.list("😀") == ["😀/x"]
        assert await store.list("%") == []
        assert await store.list("_") == []
        assert await store.list("zzz") == []

    @store_test
    async def test_list_with_limit(self, store: StateStore) -> None:
        """list(limit=n) returns the first n matching keys in ascending order."""
        keys = [f"l/{n:02d}" for n in range(10)]
        await store.transact(
            [Put(key=key, value=b"", etag=Expect.ABSENT) for key in reversed(keys)]
        )
        await store.put("m/after", b"", etag=Expect.ABSENT)
        assert await store.list("l/", limit=3) == keys[:3]
        assert await store.list("l/", limit=10) == keys
        assert await store.list("l/", limit=100) == keys
        assert await store.list("l/", limit=0) == []
        assert await store.list("l/") == keys

    @store_test
    async def test_list_after_a_cursor(self, store: StateStore) -> None:
        """list(start_after=k) returns only the matching keys greater than k: a cursor that
        need not exist nor start with the prefix, so that bounded pages walk a prefix."""
        keys = [f"l/{n:02d}" for n in range(10)]
        await store.transact(
            [
                Put(key=key, value=b"", etag=Expect.ABSENT)
                for key in [*reversed(keys), "k/before", "l", "m/after"]
            ]
        )
        assert await store.list("l/", start_after="l/03") == keys[4:]
        assert await store.list("l/", start_after="l/03", limit=2) == keys[4:6]
        assert await store.list("l/", start_after="l/035") == keys[4:]  # not a key
        assert await store.list("l/", start_after="l/") == keys  # the prefix itself
        assert await store.list("l/", start_after="") == keys
        assert await store.list("l/", start_after="a") == keys  # before the prefix
        assert await store.list("l/", start_after="l/09") == []  # the last key
        assert await store.list("l/", start_after="m") == []  # past the prefix
        assert await store.list("l/", start_after="l/0\U0010ffff") == []
        assert await store.list("", start_after="l/08") == ["l/09", "m/after"]
        assert await store.list("l", start_after="l") == keys  # "l" itself excluded
        assert await store.list("l/", start_after=None, limit=3) == keys[:3]
        assert await store.list("l/", start_after="l/03", limit=0) == []
        # A cursor whose key was deleted meanwhile still resumes after it.
        await store.delete("l/04", etag=Expect.ANY)
        assert await store.list("l/", start_after="l/04", limit=2) == keys[5:7]
        # Pages of three, each after the last key of the one before, cover the prefix.
        walked: list[str] = []
        cursor: str | None = None
        while page := await store.list("l/", limit=3, start_after=cursor):
            walked += page
            cursor = page[-1]
        assert walked == [key for key in keys if key != "l/04"]
        with pytest.raises(TypeError, match="start_after"):
            await store.list("l/", start_after=3)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="start_after"):
            await store.list("l/", start_after="l/\udc80")

    @store_test
    async def test_list_counts_unlisted_keys_in_range_right(self, store: StateStore) -> None:
        """Unlisted keys among the listed ones (a tenant's fences sort before its objects)
        neither take the place of listed keys nor end a listing early, with or without a
        limit or a cursor: more of them than a store may read in one small batch."""
        run = uuid.uuid4().hex[:8]
        fences = [f"t/{run}/fence/o{n:03d}" for n in range(40)]
        objects = [f"t/{run}/objects/o{n:03d}" for n in range(250)]
        await store.transact(
            [Put(key=key, value=b"", etag=Expect.ABSENT) for key in [*fences, *objects]]
        )
        assert await store.list(f"t/{run}/") == objects
        assert await store.list(f"t/{run}/", limit=240) == objects[:240]
        assert await store.list(f"t/{run}/", start_after=f"t/{run}/") == objects
        assert await store.list(f"t/{run}/", start_after=f"t/{run}/fence/o010") == objects
        assert await store.list(f"t/{run}/", start_after=objects[9], limit=5) == objects[10:15]
        await store.transact([Delete(key=key, etag=Expect.ANY) for key in [*fences, *objects]])

    @store_test
    async def test_list_reflects_deletes(self, store: StateStore) -> None:
        """A deleted key is no longer listed."""
        await store.put("p/1", b"", etag=Expect.ABSENT)
        await store.put("p/2", b"", etag=Expect.ABSENT)
        await store.delete("p/1", etag=Expect.ANY)
        assert await store.list("p/") == ["p/2"]

    @store_test
    async def test_unlisted_keys_are_kept_but_never_listed(self, store: StateStore) -> None:
        """Keys in gateway.stores.UNLISTED (custody records, fences, holds, usage) are
        written, read, refused and deleted by key like any other, but no
        listing returns them, and a listing inside them is refused rather than answered
        wrong (a store may keep no index of them)."""
        run = uuid.uuid4().hex[:8]  # leftovers of a failed run on a real sidecar do not collide
        unlisted = [
            f"custody/{run}",
            f"custody/{run}/x",
            f"t/{run}/fence/o1",
            f"t/{run}/held/o1",
            f"t/{run}/usage",
        ]
        listed = f"t/{run}/objects/o1"
        await store.transact(
            [Put(key=key, value=key.encode(), etag=Expect.ABSENT) for key in [*unlisted, listed]]
        )
        found = await store.get_many([*unlisted, listed])
        assert {key: item.value for key, item in found.items()} == {
            key: key.encode() for key in [*unlisted, listed]
        }
        with pytest.raises(ConcurrencyError):
            await store.put(f"custody/{run}", b"second", etag=Expect.ABSENT)
        assert await store.list(f"t/{run}/") == [listed]
        assert listed in await store.list("")
        assert not set(unlisted) & set(await store.list(""))
        for prefix in (
            "custody/",
            f"custody/{run}",
            f"t/{run}/fence/",
            f"t/{run}/held/",
            f"t/{run}/usage",
        ):
            with pytest.raises(StoreError, match="never listed"):
                await store.list(prefix)
        await store.transact([Delete(key=key, etag=Expect.ANY) for key in [*unlisted, listed]])
        assert await store.get_many([*unlisted, listed]) == {}
        assert await store.list(f"t/{run}/") == []

    # --- values ------------------------------------------------------------------------

    @store_test
    async def test_values_are_arbitrary_bytes(self, store: StateStore) -> None:
        """Values round-trip exactly: empty, NUL bytes, every byte value, 5 MiB."""
        values = {
            "v/empty": b"",
            "v/nul": b"\x00",
            "v/nuls": b"a\x00b\x00\x00",
            "v/all": bytes(range(256)),
            "v/not-utf8": b"\xff\xfe\xc3\x28",
            "v/big": os.urandom(5 * 1024 * 1024),
        }
        for key, value in values.items():
            await store.put(key, value, etag=Expect.ABSENT)
        for key, value in values.items():
            item = await store.get(key)
            assert item is not None
            assert type(item.value) is bytes
            assert item.value == value
        found = await store.get_many(list(values))
        assert {key: item.value for key, item in found.items()} == values
