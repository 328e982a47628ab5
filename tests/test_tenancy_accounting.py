"""Tenant quota accounting in the store (gateway.handoff.journal charge / release / fold)
and the tenancy checks, against a real SQLite store.

The property: after any sequence of charges and releases, racing or not, a tenant's usage
is exactly what it holds (one ``held/`` entry per object, their sizes summed), and a
charge that would exceed a quota writes nothing.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.authority import CapabilitySet, HostPolicy, effective_authority
from gateway.errors import AdmissionDeniedError, ConcurrencyError, QuotaExceededError
from gateway.handoff.journal import MAX_FOLDED_RELEASES, Journal, decode_counter
from gateway.stores.sqlite import SqliteStore
from gateway.tenancy import Tenancy, TenantLimits, Usage
from gateway.testing import sqlite_keys

OBJECT = "obj://org-a.example/q/1"


def run(tmp_path: Path, scenario: Callable[[Journal], Awaitable[None]]) -> None:
    async def main() -> None:
        store = SqliteStore.open(tmp_path / "state.db", create=True)
        try:
            await scenario(Journal(store))
        finally:
            await store.close()

    asyncio.run(main())


async def truth(journal: Journal, tenant: str) -> Usage:
    """What the tenant holds, counted the slow way (every ``held/`` entry)."""
    assert isinstance(journal.store, SqliteStore)
    keys = sqlite_keys(journal.store.path, f"t/{tenant}/held/")  # holds are never listed
    items = await journal.store.get_many(keys)
    return Usage(objects=len(items), size=sum(decode_counter(i.value) for i in items.values()))


def no_check(_usage: Usage) -> None:
    return None


def test_an_object_is_charged_once_and_released_once(tmp_path: Path) -> None:
    async def scenario(journal: Journal) -> None:
        await journal.store.transact(await journal.charge("a", OBJECT, 10, check=no_check))
        with pytest.raises(ConcurrencyError):  # already held in the tenant
            await journal.store.transact(await journal.charge("a", OBJECT, 10, check=no_check))
        # The same id in another tenant is another object.
        await journal.store.transact(await journal.charge("b", OBJECT, 7, check=no_check))
        assert (await journal.usage("a")).value == Usage(objects=1, size=10)
        assert (await journal.usage("b")).value == Usage(objects=1, size=7)
        await journal.store.transact(await journal.release("a", OBJECT))
        assert await journal.release("a", OBJECT) == []  # not held: nothing to release
        assert (await journal.usage("a")).value == Usage()
        assert (await journal.usage("b")).value == Usage(objects=1, size=7)
        assert await journal.fold_releases("a") == 1
        assert await journal.store.list("t/a/released/") == []
        assert (await journal.usage("a")).value == Usage()

    run(tmp_path, scenario)


def test_racing_charges_cannot_overshoot_a_quota(tmp_path: Path) -> None:
    """Two charges read the same usage (both see room for one more); only one commits."""
    tenancy = Tenancy(limits={"a": TenantLimits(max_objects=1)})

    async def scenario(journal: Journal) -> None:
        def check(object_id: str) -> Callable[[Usage], None]:
            return lambda usage: tenancy.require_room("a", usage, size=1, object_id=object_id)

        first = await journal.charge("a", "obj://org-a.example/q/1", 1, check=check("1"))
        second = await journal.charge("a", "obj://org-a.example/q/2", 1, check=check("2"))
        await journal.store.transact(first)
        with pytest.raises(ConcurrencyError):
            await journal.store.transact(second)
        with pytest.raises(QuotaExceededError, match=r"max_objects=1 is reached \(1 held\)"):
            await journal.charge("a", "obj://org-a.example/q/2", 1, check=check("2"))
        assert await truth(journal, "a") == (await journal.usage("a")).value

    run(tmp_path, scenario)


def test_a_release_does_not_race_with_charges(tmp_path: Path) -> None:
    """A commit or abort (a release) never fails because an arrival was counted meanwhile."""

    async def scenario(journal: Journal) -> None:
        await journal.store.transact(await journal.charge("a", OBJECT, 5, check=no_check))
        release = await journal.release("a", OBJECT)
        await journal.store.transact(
            await journal.charge("a", "obj://org-a.example/q/other", 3, check=no_check)
        )
        await journal.store.transact(release)  # still applies: it does not touch the counter
        assert (await journal.usage("a")).value == Usage(objects=1, size=3)

    run(tmp_path, scenario)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(0, 5), st.integers(0, 100), st.booleans()),
        max_size=40,
    )
)
def test_usage_is_always_what_the_tenant_holds(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[bool, int, int, bool]]
) -> None:
    """Random charges (within a quota of 4 objects / 200 bytes), releases and folds."""
    tenancy = Tenancy(limits={"a": TenantLimits(max_objects=4, max_bytes=200)})
    directory = tmp_path_factory.mktemp("accounting")

    async def scenario(journal: Journal) -> None:
        for charging, n, size, fold in steps:
            object_id = f"obj://org-a.example/q/{n}"
            if charging:
                try:
                    check = functools.partial(
                        tenancy.require_room, "a", size=size, object_id=object_id
                    )
                    ops = await journal.charge("a", object_id, size, check=check)
                    await journal.store.transact(ops)
                except (QuotaExceededError, ConcurrencyError):
                    pass
            else:
                await journal.store.transact(await journal.release("a", object_id))
            if fold:
                await journal.fold_releases("a")
            usage = (await journal.usage("a")).value
            assert usage == await truth(journal, "a")
            assert usage.objects <= 4 and usage.size <= 200

    run(directory, scenario)


def test_folding_is_bounded_per_transaction(tmp_path: Path) -> None:
    async def scenario(journal: Journal) -> None:
        total = MAX_FOLDED_RELEASES + 3
        for n in range(total):
            await journal.store.transact(
                await journal.charge("a", f"obj://org-a.example/q/{n}", 1, check=no_check)
            )
        for n in range(total):
            await journal.store.transact(await journal.release("a", f"obj://org-a.example/q/{n}"))
        assert await journal.fold_releases("a") == MAX_FOLDED_RELEASES
        assert len(await journal.store.list("t/a/released/")) == 3
        assert (await journal.usage("a")).value == Usage()
        assert await journal.fold_releases("a") == 3
        assert (await journal.usage("a")).value == Usage()

    run(tmp_path, scenario)


def test_a_zero_quota_takes_nothing_and_no_limit_takes_anything() -> None:
    tenancy = Tenancy(limits={"closed": TenantLimits(max_objects=0)})
    with pytest.raises(QuotaExceededError, match="closed' quota max_objects=0"):
        tenancy.require_room("closed", Usage(), size=0, object_id=OBJECT)
    tenancy.require_room("open", Usage(objects=10**9, size=10**15), size=10**9, object_id=OBJECT)


def test_require_authority_refuses_an_object_an_empty_ceiling_leaves_nothing() -> None:
    """An empty ceiling means "nothing", not "no ceiling"; with require_authority the
    tenant refuses the object, without it the object is admitted with no authority."""
    policy = HostPolicy.from_config(
        {
            "offers": [{"resource": "pubsub:*", "actions": ["publish"]}],
            "ceilings": [{"tenant": "locked", "allow": []}],
        },
        "gateway.yaml",
    )
    chain = CapabilitySet.from_config(
        [{"resource": "pubsub:alerts/x", "actions": ["publish"]}], "grant"
    )
    locked = effective_authority(chain, policy, tenant="locked", peer="org-b.example")
    assert not locked.authority.allow.capabilities
    assert "the ceiling for tenant locked allows no publish" in locked.render()
    other = effective_authority(chain, policy, tenant="other", peer="org-b.example")
    assert other.permits("pubsub:alerts/x", "publish")

    strict = Tenancy(limits={"locked": TenantLimits(require_authority=True)})
    with pytest.raises(AdmissionDeniedError, match="tenant 'locked' requires authority"):
        strict.require_placement("locked", locked, object_id=OBJECT)
    strict.require_placement("other", locked, object_id=OBJECT)  # other tenants do not care
    Tenancy().require_placement("locked", locked, object_id=OBJECT)
