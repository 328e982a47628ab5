"""Session 39: a destination's nonce pruning reads what expires, not every nonce held;
the source's COMMITTED record is built by one copy.

``Destination.prune_nonces`` runs in every recovery pass (every 10 s). It used to list
and read every nonce each time: about 4,700 a pass at 60 migrations a second, 25-60 ms.
It now walks the nonces a page at a time from where the previous pass stopped, and
reads on past its first page only while the pages are mostly expired (a backlog).
A counting store between the destination and a host's real SQLite store shows what a
pass reads. Every nonce here expires in the future of the host's own clock, so that its
own recovery passes delete none of them: only the pruner under test, whose clock is
pinned ahead, sees any expired.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from gateway import wire
from gateway._time import to_millis
from gateway.handoff import source
from gateway.handoff.destination import NONCE_PAGE, NONCE_PAGES_PER_PASS, Destination
from gateway.handoff.journal import Journal, encode_counter, nonce_key
from gateway.handoff.records import SourceRecord, SourceStep
from gateway.host import Host
from gateway.stores import Expect, Item, Operation, Put, StateStore
from gateway.testing import World, serving
from tests.conftest import HOST_B


class CountingStore:
    """Delegates to a real store; counts the values read."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.values_read = 0

    async def get(self, key: str) -> Item | None:
        self.values_read += 1
        return await self.store.get(key)

    async def get_many(self, keys: Sequence[str]) -> dict[str, Item]:
        self.values_read += len(keys)
        return await self.store.get_many(keys)

    async def list(
        self, prefix: str, *, limit: int | None = None, start_after: str | None = None
    ) -> list[str]:
        return await self.store.list(prefix, limit=limit, start_after=start_after)

    async def transact(self, operations: Sequence[Operation]) -> dict[str, str] | None:
        return await self.store.transact(operations)

    async def delete(self, key: str, *, etag: object) -> None:
        await self.store.delete(key, etag=etag)  # type: ignore[arg-type]


class FixedClock:
    def __init__(self, now: datetime) -> None:
        self.at = now

    def now(self) -> datetime:
        return self.at


def nonce(i: int) -> bytes:
    """Distinct nonces spread over the key order as random ones are (pinned)."""
    return (i * 2654435761 % 2**32).to_bytes(4, "big") + i.to_bytes(12, "big")


async def put_nonces(host: Host, numbers: range, expiry: datetime) -> None:
    value = encode_counter(to_millis(expiry))
    puts = [Put(key=nonce_key(nonce(i)), value=value, etag=Expect.ABSENT) for i in numbers]
    for start in range(0, len(puts), 500):
        await host.store.transact(puts[start : start + 500])


def pruner(host: Host, clock: FixedClock) -> tuple[Destination, CountingStore]:
    counting = CountingStore(host.store)
    context = replace(host.context, journal=Journal(counting), clock=clock)  # type: ignore[arg-type]
    return Destination(context), counting


def run(world: World, scenario) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        async with serving(world, [HOST_B]) as opened:
            await scenario(opened[HOST_B])

    asyncio.run(main())


def test_a_pass_over_live_nonces_reads_one_page(world: World) -> None:
    """Nothing has expired: a pass reads its page and deletes nothing, however many
    nonces there are (it used to read all of them)."""

    async def scenario(b: Host) -> None:
        now = b.clock.now() + timedelta(minutes=10)
        held = 3 * NONCE_PAGE + 17
        await put_nonces(b, range(held), now + timedelta(minutes=2))
        destination, counting = pruner(b, FixedClock(now))
        for _ in range(5):
            counting.values_read = 0
            assert await destination.prune_nonces() == 0
            assert counting.values_read <= NONCE_PAGE
        assert len(await b.store.list("nonce/")) == held

    run(world, scenario)


def test_every_expired_nonce_goes_within_a_lap_and_no_live_one(world: World) -> None:
    """A few expired nonces among many live ones: the walk reaches each within one lap
    of the prefix (held / page passes), and never deletes one still live."""

    async def scenario(b: Host) -> None:
        now = b.clock.now() + timedelta(minutes=10)
        live, dead = 4 * NONCE_PAGE, 300
        await put_nonces(b, range(live), now + timedelta(minutes=2))
        await put_nonces(b, range(live, live + dead), now - timedelta(seconds=1))
        destination, counting = pruner(b, FixedClock(now))
        passes, pruned = 0, 0
        while pruned < dead:
            counting.values_read = 0
            pruned += await destination.prune_nonces()
            assert counting.values_read <= NONCE_PAGE  # never mostly expired: one page
            passes += 1
            assert passes <= (live + dead) // NONCE_PAGE + 1, "a lap went by"
        remaining = set(await b.store.list("nonce/"))
        assert remaining == {nonce_key(nonce(i)) for i in range(live)}

    run(world, scenario)


def test_a_backlog_of_expired_nonces_is_read_on_past_the_first_page(world: World) -> None:
    """Pages that are mostly expired make a pass read on (its work is then mostly
    deletes), up to its bound of pages; the live nonces among them stay."""

    async def scenario(b: Host) -> None:
        now = b.clock.now() + timedelta(minutes=10)
        dead, live = 3 * NONCE_PAGE, 40
        await put_nonces(b, range(dead), now - timedelta(seconds=1))
        await put_nonces(b, range(dead, dead + live), now + timedelta(minutes=2))
        destination, counting = pruner(b, FixedClock(now))
        assert await destination.prune_nonces() == dead
        assert counting.values_read <= NONCE_PAGES_PER_PASS * NONCE_PAGE
        remaining = set(await b.store.list("nonce/"))
        assert remaining == {nonce_key(nonce(i)) for i in range(dead, dead + live)}
        # A nonce that expires later is pruned then, and not before.
        destination, _ = pruner(b, FixedClock(now + timedelta(minutes=3)))
        assert await destination.prune_nonces() == live
        assert await b.store.list("nonce/") == []

    run(world, scenario)


# --- the COMMITTED record, one copy -------------------------------------------------


def test_the_committed_record_is_the_settled_copy_of_the_committed_step() -> None:
    """``_committed`` (one copy dropping the transfer with the step change) makes the
    very record, and so the very bytes, that a copy for the step and then the settled
    form made; records without a kept digest and epoch (older ones) go the long way."""
    rng = random.Random(39)
    at = datetime(2026, 12, 7, 11, 0, 0)
    seen = {"kept": 0, "long way": 0}
    for _ in range(400):
        kept = rng.random() < 0.7
        record = SourceRecord(
            migration_id=f"mig-{rng.randbytes(16).hex()}",
            object_id=f"obj://org-a.example/x/{rng.randrange(99)}",
            tenant=rng.choice(("default", "t2")),
            destination_host="spiffe://org-b.example/cluster/west/gateway",
            step=SourceStep.FROZEN,
            transfer=rng.randbytes(rng.randrange(1, 200)) if kept else b"",
            created_at=at - timedelta(seconds=rng.randrange(9)),
            updated_at=at - timedelta(seconds=rng.randrange(9)),
            transfer_digest=rng.randbytes(32) if kept else rng.choice((b"", rng.randbytes(32))),
            epoch=rng.randrange(1, 5) if kept else rng.randrange(5),
        )
        seen["kept" if kept else "long way"] += 1
        receipt = rng.randbytes(rng.randrange(1, 90))
        want = source._settled(
            source._replace_record(
                record, step=SourceStep.COMMITTED, staged_receipt=receipt, updated_at=at
            )
        )
        got = source._committed(record, receipt, at)
        assert got == want
        assert wire.encode_source_record(got) == wire.encode_source_record(want)
    assert min(seen.values()) > 50


# --- a tenant's usage without releases ----------------------------------------------


class ReadsCounted(CountingStore):
    def __init__(self, store: StateStore) -> None:
        super().__init__(store)
        self.reads_of_many = 0

    async def get_many(self, keys: Sequence[str]) -> dict[str, Item]:
        self.reads_of_many += 1
        return await super().get_many(keys)


def test_usage_without_releases_reads_no_releases(world: World) -> None:
    """A charge in a tenant with no release to fold (every stage of a busy destination)
    lists the releases and makes no read of their values; with one, it reads it."""

    async def scenario(b: Host) -> None:
        counting = ReadsCounted(b.store)
        journal = Journal(counting)  # type: ignore[arg-type]
        usage = await journal.usage("default")
        assert usage.released == () and counting.reads_of_many == 0
        await b.store.put("t/default/released/obj", encode_counter(7), etag=Expect.ABSENT)
        usage = await journal.usage("default")
        assert [key for key, _etag, size in usage.released] == ["t/default/released/obj"]
        assert counting.reads_of_many == 1

    run(world, scenario)
