"""The store contract, run against a Dapr sidecar through the official SDK.

By default the sidecar is the stand-in (tests/daprd), a fresh one per test. With
``DAPR_GRPC_ENDPOINT`` (and ``DAPR_HTTP_ENDPOINT``) set, the same tests run unchanged
against that real sidecar's ``DAPR_STATE_STORE`` (default ``statestore``): point it at a
throwaway store, because every test starts by deleting what the store holds.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from gateway.stores import Delete, Expect, StateStore
from gateway.stores.dapr import DaprStore
from tests.daprd.components import state_store
from tests.daprd.runner import DaprdThread
from tests.stores.contract import StoreContract

REAL_SIDECAR = os.environ.get("DAPR_GRPC_ENDPOINT")
STORE = os.environ.get("DAPR_STATE_STORE", "statestore")


@contextlib.asynccontextmanager
async def dapr_store(db: Path) -> AsyncIterator[DaprStore]:
    if REAL_SIDECAR:
        store = await DaprStore.connect(STORE)
        for key in await store.list(""):  # start from nothing, as the contract expects
            await store.delete(key, etag=Expect.ANY)
    else:
        # 32 MiB request bodies, as deploy/ configures its sidecars (daprd's default is 4 MiB).
        sidecar = DaprdThread(
            app_id="contract", db=db, components=[state_store(STORE)], max_body_bytes=32 << 20
        )
        addresses = sidecar.start()
        store = await DaprStore.connect(
            STORE, grpc_endpoint=addresses.grpc_endpoint, http_endpoint=addresses.http_endpoint
        )
    try:
        yield store
    finally:
        await store.close()
        if not REAL_SIDECAR:
            sidecar.stop()


class TestDaprStoreContract(StoreContract):
    @pytest.fixture
    def open_store(self, tmp_path: Path) -> Callable[[], AbstractAsyncContextManager[StateStore]]:
        return lambda: dapr_store(tmp_path / "daprd.db")


def test_the_index_is_not_user_data(tmp_path: Path) -> None:
    """The existence index lives beside user keys but is never listed nor writable."""
    import asyncio

    from gateway.errors import StoreError
    from gateway.stores import Put

    async def main() -> None:
        async with dapr_store(tmp_path / "daprd.db") as store:
            await store.transact([Put(key="a/1", value=b"x", etag=Expect.ABSENT)])
            assert await store.list("") == ["a/1"]
            with pytest.raises(StoreError):
                await store.transact([Put(key="__index__/families", value=b"[]", etag=Expect.ANY)])
            with pytest.raises(StoreError):
                await store.transact([Delete(key="__index__/families", etag=Expect.ANY)])

    asyncio.run(main())


def test_unlisted_keys_cost_no_index_write(tmp_path: Path) -> None:
    """Creating and deleting keys the gateway never lists (custody records, fences)
    writes no index leaf and names no family for them: on Dapr every listable create
    rewrites a leaf, which each handoff's custody and fence records would otherwise pay."""
    import asyncio

    from gateway.stores import Put
    from gateway.stores.dapr import _ROOTS, FAMILIES, _index_keys, _node

    async def main() -> None:
        async with dapr_store(tmp_path / "daprd.db") as store:
            run = uuid.uuid4().hex[:8]
            keys = [f"custody/{run}-{n}" for n in range(50)] + [f"t/{run}/fence/o1"]
            await store.transact([Put(key=key, value=b"x", etag=Expect.ABSENT) for key in keys])
            nodes = [_node("custody", path) for path in _ROOTS]
            assert await store.get_many(nodes) == {}
            families = await store.get(FAMILIES)
            assert families is None or "custody" not in set(_index_keys(b"\x00" + families.value))
            await store.transact([Delete(key=key, etag=Expect.ANY) for key in keys])
            assert await store.get_many(keys) == {}

    asyncio.run(main())


def test_a_state_redis_component_is_refused_at_connect(tmp_path: Path) -> None:
    """state.redis accepts ETag writes to missing keys and does not roll back failed
    transactions (docs/dapr.md, the contract run against it): the store refuses it by the
    type the sidecar's metadata API reports, before anything is written."""
    import asyncio

    from gateway.errors import StoreError
    from tests.daprd.components import Component

    redis = Component(name="statestore", type="state.redis", metadata={})
    with DaprdThread(app_id="refused", db=tmp_path / "daprd.db", components=[redis]) as sidecar:

        async def main() -> None:
            with pytest.raises(StoreError) as refused:
                await DaprStore.connect(
                    "statestore",
                    grpc_endpoint=sidecar.grpc_endpoint,
                    http_endpoint=sidecar.http_endpoint,
                )
            assert "state.redis" in str(refused.value)
            assert "first-write-wins" in str(refused.value)
            with pytest.raises(StoreError) as missing:
                await DaprStore.connect(
                    "nosuchstore",
                    grpc_endpoint=sidecar.grpc_endpoint,
                    http_endpoint=sidecar.http_endpoint,
                )
            assert "no state component named 'nosuchstore'" in str(missing.value)
            assert "statestore" in str(missing.value)  # what it has instead

        asyncio.run(main())


def test_without_a_sidecar_connect_fails_fast_in_one_line(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Nothing listens: one error naming the endpoint within a few seconds, not a minute
    of the SDK's per-attempt health-check lines."""
    import asyncio
    import time

    from gateway.errors import StoreUnavailableError
    from gateway.scaffold import free_port
    from gateway.stores.dapr import NO_SIDECAR_SECONDS

    port = free_port()
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError) as failed:
        asyncio.run(
            DaprStore.connect(
                "statestore",
                grpc_endpoint=f"127.0.0.1:{free_port()}",
                http_endpoint=f"http://127.0.0.1:{port}",
            )
        )
    took = time.monotonic() - started
    assert NO_SIDECAR_SECONDS <= took < NO_SIDECAR_SECONDS + 3
    assert f"no Dapr sidecar at http://127.0.0.1:{port}/v1.0/healthz/outbound" in str(failed.value)
    printed = capfd.readouterr()
    assert "Health check" not in printed.out + printed.err


def test_a_lost_first_write_is_a_conflict_on_this_component(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each component words a first write to a key that exists its own way, under
    daprd's INTERNAL: state.postgresql v2 "no item was updated", state.redis "failed to
    set key", state.sqlite an ETag mismatch (ABORTED). Through the SDK directly, so that
    it also runs against a component the store refuses (state.redis)."""
    import asyncio

    from dapr.aio.clients import DaprClient
    from dapr.clients.exceptions import DaprGrpcError, DaprInternalError
    from dapr.clients.grpc._state import Concurrency, StateOptions

    from gateway.stores.dapr import is_conflict, status_code

    async def main(endpoint: str) -> None:
        key = f"first-write/{os.getpid()}-{id(main)}"
        first = StateOptions(concurrency=Concurrency.first_write)
        async with DaprClient(address=endpoint) as client:
            await client.delete_state(STORE, key)
            try:
                await client.save_state(STORE, key, b"\x00one", options=first)
                with pytest.raises((DaprGrpcError, DaprInternalError)) as lost:
                    await client.save_state(STORE, key, b"\x00two", options=first)
                assert is_conflict(lost.value), (status_code(lost.value), str(lost.value))
                assert (await client.get_state(STORE, key)).data == b"\x00one"
            finally:
                await client.delete_state(STORE, key)

    if REAL_SIDECAR:
        asyncio.run(main(REAL_SIDECAR))
        return
    with DaprdThread(
        app_id="first-write", db=tmp_path / "daprd.db", components=[state_store(STORE)]
    ) as sidecar:
        for name, value in sidecar.env().items():
            monkeypatch.setenv(name, value)
        asyncio.run(main(sidecar.grpc_endpoint))


def test_conflicts_do_not_take_the_store_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ETag conflicts are the protocol working, not a failing component. Dapr's circuit
    breakers count them as failures, so the shipped Resiliency has none on the state
    store: run against a real daprd loaded with deploy/'s Resiliency, a run of conflicts
    longer than any breaker's trip count leaves the store serving."""
    import asyncio

    from dapr.aio.clients import DaprClient
    from dapr.clients.exceptions import DaprGrpcError, DaprInternalError

    from gateway.stores.dapr import is_conflict

    async def main(endpoint: str) -> None:
        key = f"conflicts/{os.getpid()}-{id(main)}"
        async with DaprClient(address=endpoint) as client:
            await client.save_state(STORE, key, b"\x00v")
            etag = (await client.get_state(STORE, key)).etag
            await client.save_state(STORE, key, b"\x00w", etag=etag)  # etag is stale now
            for _ in range(12):
                with pytest.raises((DaprGrpcError, DaprInternalError)) as lost:
                    await client.save_state(STORE, key, b"\x00x", etag=etag)
                assert is_conflict(lost.value), str(lost.value)
            fresh = await client.get_state(STORE, key)  # an open breaker would refuse this
            assert fresh.data == b"\x00w"
            await client.save_state(STORE, key, b"\x00y", etag=fresh.etag)
            await client.delete_state(STORE, key)

    if REAL_SIDECAR:
        asyncio.run(main(REAL_SIDECAR))
        return
    with DaprdThread(
        app_id="conflicts", db=tmp_path / "daprd.db", components=[state_store(STORE)]
    ) as sidecar:
        for name, value in sidecar.env().items():
            monkeypatch.setenv(name, value)
        asyncio.run(main(sidecar.grpc_endpoint))


class _Flaky:
    """The SDK client, with the next call of each named method failing first the way
    daprd reports a component that timed out or was busy (INTERNAL, the component's
    words), as seen on a real daprd (docs/dapr.md)."""

    def __init__(self, client: object, failures: dict[str, str]) -> None:
        self._client = client
        self.failures = failures

    def __getattr__(self, name: str) -> object:
        if name == "_stub":  # the raw runtime stub, which transactions go through
            return _Flaky(getattr(self._client, name), self.failures)
        method = getattr(self._client, name)
        words = self.failures.pop(name, None)
        if words is None:
            return method

        async def failing(*args: object, **kwargs: object) -> object:
            import grpc

            raise grpc.aio.AioRpcError(
                grpc.StatusCode.INTERNAL, grpc.aio.Metadata(), grpc.aio.Metadata(), details=words
            )

        return failing


@pytest.mark.parametrize(
    ("method", "words"),
    [
        ("get_state", "fail to get k from state store statestore: context deadline exceeded"),
        (
            "ExecuteStateTransaction",
            "error while executing state transaction: database is locked (5) (SQLITE_BUSY)",
        ),
        ("ExecuteStateTransaction", "error while executing state transaction: deadlock detected"),
        (
            "ExecuteStateTransaction",
            "error while executing state transaction: ERROR: could not serialize access (40001)",
        ),
    ],
)
def test_a_component_that_timed_out_or_rolled_back_is_tried_again(
    tmp_path: Path, method: str, words: str
) -> None:
    """Reads are retried on a component timeout; a write is tried again only when the
    component certainly did nothing (SQLite busy, PostgreSQL deadlock)."""
    import asyncio

    from gateway.stores import Put

    async def main() -> None:
        async with dapr_store(tmp_path / "daprd.db") as store:
            await store.transact([Put(key="a/1", value=b"x", etag=Expect.ABSENT)])
            flaky = _Flaky(store.client, dict({method: words}))
            store._client = flaky
            if method == "get_state":
                item = await store.get("a/1")
                assert item is not None and item.value == b"x"
            else:
                # A key of a family never seen in this store: its index root is created
                # in the same transaction (a real store keeps old index nodes).
                family = f"fresh{uuid.uuid4().hex[:12]}"
                await store.transact([Put(key=f"{family}/1", value=b"y", etag=Expect.ABSENT)])
                assert await store.list(f"{family}/") == [f"{family}/1"]
            assert method not in flaky.failures  # the failure did happen

    asyncio.run(main())


def test_index_leaves_stay_bounded_as_keys_come_and_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No index leaf lists more than LEAF_KEYS keys: a fuller one splits, concurrent
    creators included, and listing still finds exactly the keys that exist."""
    import asyncio

    from gateway.stores import Put
    from gateway.stores import dapr as dapr_module

    monkeypatch.setattr(dapr_module, "LEAF_KEYS", 4)

    async def main() -> None:
        async with dapr_store(tmp_path / "daprd.db") as store:
            family = f"split{uuid.uuid4().hex[:8]}"
            keys = [f"{family}/{n:03d}" for n in range(240)]
            # One transaction that overfills roots (splits several levels at once), then
            # concurrent creators.
            await store.transact([Put(key=k, value=b"", etag=Expect.ABSENT) for k in keys[:160]])
            await asyncio.gather(
                *(store.put(k, b"", etag=Expect.ABSENT) for k in keys[160:]),
            )
            for key in keys[::3]:
                await store.delete(key, etag=Expect.ANY)
            alive = [k for n, k in enumerate(keys) if n % 3]
            assert await store.list(f"{family}/") == alive
            assert await store.list(f"{family}/0", limit=5) == alive[:5]
            # A second client (no cached splits) sees the same.
            assert await DaprStore(store.client, STORE).list(f"{family}/") == alive
            roots = [dapr_module._node(family, path) for path in dapr_module._ROOTS]
            children = [node + bit for node in store._split for bit in "01"]
            nodes = [*roots, *children]
            leaves = []
            for start in range(0, len(nodes), 50):
                response = await store.client.get_bulk_state(
                    store_name=STORE, keys=nodes[start : start + 50]
                )
                leaves += [
                    json.loads(item.data[1:]) for item in response.items if item.data[1:2] == b"["
                ]
            assert store._split, "the family's index should have split"
            assert max(len(leaf) for leaf in leaves) <= 4
            assert sorted(k for leaf in leaves for k in leaf) == alive

    asyncio.run(main())


def test_transactions_on_shared_keys_in_opposite_orders_do_not_deadlock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Concurrent transactions naming the same keys in opposite orders all commit, and
    none of them is rolled back by the component: the store sends operations in key
    order, so PostgreSQL locks rows in one order. On daprd + state.postgresql v2 the same
    transactions sent in the caller's order deadlocked 98 times in 400 (docs/dapr.md);
    on the stand-in (which serializes transactions) this cannot fail."""
    import asyncio

    import gateway.stores.dapr as dapr_module
    from gateway.stores import Put

    rolled_back: list[BaseException] = []
    original = dapr_module._rolled_back

    def counting(error: BaseException) -> bool:
        if original(error):
            rolled_back.append(error)
            return True
        return False

    monkeypatch.setattr(dapr_module, "_rolled_back", counting)

    async def main() -> None:
        async with dapr_store(tmp_path / "daprd.db") as store:
            for _round in range(20):
                keys = [f"order/{uuid.uuid4().hex[:8]}/{n}" for n in range(8)]
                await store.transact([Put(key=k, value=b"0", etag=Expect.ABSENT) for k in keys])

                async def update(order: list[str], value: bytes) -> None:
                    await store.transact([Put(key=k, value=value, etag=Expect.ANY) for k in order])

                await asyncio.gather(
                    *(update(keys if n % 2 else keys[::-1], str(n).encode()) for n in range(4))
                )
                values = {item.value for item in (await store.get_many(keys)).values()}
                assert len(values) == 1  # one transaction's values, all or nothing
                await store.transact([Delete(key=k, etag=Expect.ANY) for k in keys])

    asyncio.run(main())
    assert rolled_back == []


def test_a_transaction_that_keeps_losing_gives_up_with_a_contention_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Index contention is retried (tenacity, jittered) a bounded number of times, then
    named as contention, not as a conflict of the caller's own preconditions."""
    import asyncio

    import gateway.stores.dapr as dapr_module
    from gateway.errors import ConcurrencyError, StoreContentionError
    from gateway.stores import Put

    attempts: list[int] = []

    async def losing(self: DaprStore, ops: object) -> bool:
        attempts.append(1)
        return False

    async def main() -> None:
        async with dapr_store(tmp_path / "daprd.db") as store:
            monkeypatch.setattr(DaprStore, "_try_transact", losing)
            with pytest.raises(StoreContentionError) as raised:
                await store.transact([Put(key="c/1", value=b"x", etag=Expect.ABSENT)])
            assert not isinstance(raised.value, ConcurrencyError)

    asyncio.run(main())
    assert len(attempts) == dapr_module._ATTEMPTS
