"""The small migration's path (issue 13, P1/P2): what the destination does before it
answers, and how its stage writes are made, without changing what an answer promises."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.handoff.journal import (
    OPEN_DESTINATION_PREFIX,
    OPEN_SOURCE_PREFIX,
    destination_key,
    object_key,
    source_key,
    usage_key,
)
from gateway.handoff.records import DestinationStep, SourceStep
from gateway.model import LifecycleState
from gateway.stores import Delete, Operation, Put
from gateway.tenancy import Usage
from gateway.testing import World, serving
from tests.conftest import HOST_A, HOST_B

TENANT = "default"


def _object(index: int) -> str:
    return f"obj://org-a.example/billing/path-{index}"


async def _create(host: Any, count: int) -> None:
    """Objects 0 .. count-1 (see :func:`_object`) on ``host``, with empty JSON data."""
    for index in range(count):
        await host.create_object(
            _object(index), tenant=TENANT, data=b"{}", content_type="application/json"
        )


def _on_two_hosts(world: World, objects: int, scenario: Any) -> None:
    """Run ``scenario(a, b)`` with hosts A and B serving and ``objects`` objects on A."""

    async def main() -> None:
        async with serving(world, [HOST_A, HOST_B]) as hosts:
            a, b = hosts[HOST_A], hosts[HOST_B]
            await _create(a, objects)
            await scenario(a, b)

    asyncio.run(main())


class _CountedStages:
    """Stands in for a journal's store (everything else delegated): counts the
    transactions holding stage records, and holds the first of them until ``release``
    is set (so that others arrive meanwhile)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.original = store.transact
        self.stages: list[int] = []
        self.release = asyncio.Event()
        self.held = asyncio.Event()
        self.hold_first = False

    async def transact(self, operations: list[Operation]) -> None:
        # A stage opens its migration (the activation closes it).
        staged = sum(
            1
            for op in operations
            if isinstance(op, Put) and op.key.startswith(OPEN_DESTINATION_PREFIX)
        )
        if staged:
            self.stages.append(staged)
            if self.hold_first and len(self.stages) == 1:
                self.held.set()
                await self.release.wait()
        await self.original(operations)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def test_a_lone_stage_is_written_by_its_call_and_concurrent_ones_still_share_commits(
    world: World,
) -> None:
    """A Prepare arriving alone is staged in one transaction without a writer task; while
    it is being written, the arrivals of the same tenant queue and then share one commit,
    each answered only after its own stage is durable."""

    async def scenario(a: Any, b: Any) -> None:
        counted = _CountedStages(b.journal.store)
        b.journal.store = counted  # type: ignore[assignment]

        result = await a.migrate(_object(0), tenant=TENANT, destination=HOST_B)
        assert result.step is SourceStep.DONE
        assert counted.stages == [1]
        assert not b.destination._stage_writers  # no writer was started for it

        counted.stages.clear()
        counted.hold_first = True
        first = asyncio.create_task(a.migrate(_object(1), tenant=TENANT, destination=HOST_B))
        await asyncio.wait_for(counted.held.wait(), timeout=10)
        assert TENANT not in b.destination._stage_writers  # written by its own call
        rest = [
            asyncio.create_task(a.migrate(_object(i), tenant=TENANT, destination=HOST_B))
            for i in range(2, 7)
        ]
        # Every later Prepare waits for its stage while the first one's is held.
        for _ in range(500):
            if len(b.destination._stages.get(TENANT, [])) == 5:
                break
            await asyncio.sleep(0.01)
        assert len(b.destination._stages[TENANT]) == 5
        assert not first.done() and not any(task.done() for task in rest)
        counted.release.set()
        results = await asyncio.wait_for(asyncio.gather(first, *rest), timeout=30)
        assert all(r.step is SourceStep.DONE for r in results)
        assert counted.stages == [1, 5], counted.stages  # the five shared one commit
        for index in range(7):
            live = await b.journal.object(TENANT, _object(index))
            assert live is not None and live.value.state is LifecycleState.ACTIVE

    _on_two_hosts(world, 7, scenario)


def test_activation_bookkeeping_runs_after_the_receipt_is_returned(world: World) -> None:
    """Commit returns the activation receipt with the object live and durable; the log
    line, metrics and scheduling of its cycles run at the loop's next turn, after it."""

    async def scenario(a: Any, b: Any) -> None:
        migration_id = await a.source.freeze(_object(0), tenant=TENANT, destination=HOST_B)
        frozen = await a.journal.source(migration_id)
        assert frozen is not None
        await a.peers.client(HOST_B).prepare(frozen.value.transfer)

        order: list[str] = []
        activated = b.destination._activated

        def bookkeeping(*args: Any) -> None:
            order.append("bookkeeping")
            activated(*args)

        b.destination._activated = bookkeeping  # type: ignore[method-assign]
        receipt = await b.destination.commit(migration_id, peer=HOST_A)
        order.append("answered")
        assert receipt
        record = await b.journal.destination(migration_id)
        assert record is not None and record.value.step is DestinationStep.ACTIVATED
        live = await b.journal.object(TENANT, _object(0))
        assert live is not None and live.value.state is LifecycleState.ACTIVE
        await asyncio.sleep(0)
        assert order == ["answered", "bookkeeping"]

    _on_two_hosts(world, 1, scenario)


def test_a_stage_on_a_busy_host_goes_to_the_tenants_writer(world: World) -> None:
    """While another migration's activation is being handled here, a stage is left to
    the tenant's writer (whose first turn lets stages arriving meanwhile join its batch)
    rather than written by its own call."""

    async def scenario(a: Any, b: Any) -> None:
        store = b.journal.store
        release = asyncio.Event()
        held = asyncio.Event()
        writers: list[bool] = []

        class _HeldActivation:
            async def transact(self, operations: list[Operation]) -> None:
                if any(
                    isinstance(op, Delete) and op.key.startswith(OPEN_DESTINATION_PREFIX)
                    for op in operations
                ):
                    held.set()  # an activation closes its migration
                    await release.wait()
                elif any(
                    isinstance(op, Put) and op.key.startswith(OPEN_DESTINATION_PREFIX)
                    for op in operations
                ):
                    writers.append(TENANT in b.destination._stage_writers)
                await store.transact(operations)

            def __getattr__(self, name: str) -> Any:
                return getattr(store, name)

        b.journal.store = _HeldActivation()  # type: ignore[assignment]
        first = asyncio.create_task(a.migrate(_object(0), tenant=TENANT, destination=HOST_B))
        await asyncio.wait_for(held.wait(), timeout=10)
        second = asyncio.create_task(a.migrate(_object(1), tenant=TENANT, destination=HOST_B))
        for _ in range(500):
            if len(writers) == 2:
                break
            await asyncio.sleep(0.01)
        assert len(writers) == 2  # staged while the activation is held
        release.set()
        results = await asyncio.wait_for(asyncio.gather(first, second), timeout=30)
        assert all(r.step is SourceStep.DONE for r in results)
        # The first stage (a quiet host) by its own call; the second by the writer.
        assert writers == [False, True]

    _on_two_hosts(world, 2, scenario)


class _CountedReads:
    """Stands in for a journal's store (everything else delegated): records the keys of
    every read, one tuple per call; with ``no_etags``, its transactions return ``None``
    as the Dapr store's do (the ETags written are not known)."""

    def __init__(self, store: Any, *, no_etags: bool = False) -> None:
        self.store = store
        self.reads: list[tuple[str, ...]] = []
        self.no_etags = no_etags

    async def get(self, key: str) -> Any:
        self.reads.append((key,))
        return await self.store.get(key)

    async def get_many(self, keys: Any) -> Any:
        if keys:
            self.reads.append(tuple(keys))
        return await self.store.get_many(keys)

    async def get_etags(self, keys: Any) -> Any:
        self.reads.append(tuple(keys))
        return await self.store.get_etags(keys)

    async def transact(self, operations: Any) -> Any:
        written = await self.store.transact(operations)
        return None if self.no_etags else written

    def reading(self, key: str) -> int:
        """How many reads named ``key``."""
        return sum(1 for keys in self.reads if key in keys)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def test_a_migration_reads_back_nothing_it_wrote(world: World) -> None:
    """The source reads its object (with its quota charge) once, at the freeze; the
    commit and DONE write on the ETags their own earlier writes returned. The destination
    reads its record once, in the Prepare (idempotency); the Commit writes on the ETag
    the stage returned and the object's as the Prepare read it. (It was 2 reads of the
    source record, 2 of the object and 2 of the destination record.)"""

    async def scenario(a: Any, b: Any) -> None:
        source = _CountedReads(a.journal.store)
        destination = _CountedReads(b.journal.store)
        a.journal.store = source  # type: ignore[assignment]
        b.journal.store = destination  # type: ignore[assignment]
        result = await a.migrate(_object(0), tenant=TENANT, destination=HOST_B)
        assert result.step is SourceStep.DONE
        await a.settled()  # the DONE write follows the answer: its reads count too
        assert source.reading(source_key(result.migration_id)) == 0, source.reads
        assert source.reading(object_key(TENANT, _object(0))) == 1, source.reads
        assert destination.reading(destination_key(result.migration_id)) == 1
        assert destination.reading(object_key(TENANT, _object(0))) == 1
        record = await a.journal.source(result.migration_id)
        assert record is not None and record.value.step is SourceStep.DONE
        tomb = await a.journal.object(TENANT, _object(0))
        assert tomb is not None and tomb.value.state is LifecycleState.MOVED
        assert not await a.journal.held(TENANT, _object(0))  # its charge released
        live = await b.journal.object(TENANT, _object(0))
        assert live is not None and live.value.state is LifecycleState.ACTIVE

    _on_two_hosts(world, 1, scenario)


def test_a_store_that_does_not_say_its_etags_gets_the_records_read(world: World) -> None:
    """A store whose transactions return no ETags (Dapr's) gets the records read back
    where a write needs their ETag, as before."""

    async def scenario(a: Any, b: Any) -> None:
        source = _CountedReads(a.journal.store, no_etags=True)
        destination = _CountedReads(b.journal.store, no_etags=True)
        a.journal.store = source  # type: ignore[assignment]
        b.journal.store = destination  # type: ignore[assignment]
        result = await a.migrate(_object(0), tenant=TENANT, destination=HOST_B)
        assert result.step is SourceStep.DONE
        await a.settled()  # the DONE write follows the answer
        assert source.reading(source_key(result.migration_id)) == 2  # commit, DONE
        assert destination.reading(destination_key(result.migration_id)) == 2
        live = await b.journal.object(TENANT, _object(0))
        assert live is not None and live.value.state is LifecycleState.ACTIVE

    _on_two_hosts(world, 1, scenario)


def test_records_written_by_another_writer_meanwhile_are_read_again(world: World) -> None:
    """Between the Prepare and the Commit another writer rewrites the source's record,
    its object and the destination's record (the same bytes, new ETags, as another
    process sharing the store could): the writes on the remembered ETags fail, and both
    sides read what is there and finish the migration."""

    async def scenario(a: Any, b: Any) -> None:
        source = _CountedReads(a.journal.store)
        destination = _CountedReads(b.journal.store)
        prepare = b.destination.prepare

        async def rewrite(store: Any, key: str) -> None:
            item = await store.get(key)
            await store.put(key, item.value, etag=item.etag)

        async def prepared(raw: bytes, **kwargs: Any) -> bytes:
            receipt = await prepare(raw, **kwargs)
            (opened,) = await source.store.list(OPEN_SOURCE_PREFIX)
            migration_id = opened.removeprefix(OPEN_SOURCE_PREFIX)
            await rewrite(source.store, source_key(migration_id))
            await rewrite(source.store, object_key(TENANT, _object(0)))
            await rewrite(destination.store, destination_key(migration_id))
            return receipt

        b.destination.prepare = prepared  # type: ignore[method-assign]
        a.journal.store = source  # type: ignore[assignment]
        b.journal.store = destination  # type: ignore[assignment]
        result = await a.migrate(_object(0), tenant=TENANT, destination=HOST_B)
        assert result.step is SourceStep.DONE
        assert source.reading(source_key(result.migration_id)) >= 1  # read again
        assert destination.reading(destination_key(result.migration_id)) >= 2
        tomb = await a.journal.object(TENANT, _object(0))
        assert tomb is not None and tomb.value.state is LifecycleState.MOVED
        live = await b.journal.object(TENANT, _object(0))
        assert live is not None and live.value.state is LifecycleState.ACTIVE

    _on_two_hosts(world, 1, scenario)


def test_a_tenants_charges_read_its_usage_counter_only_after_someone_else_wrote_it(
    world: World,
) -> None:
    """Each stage batch charges the tenant's usage counter; the next batch takes the
    counter its predecessor wrote instead of reading it (it was one read per batch).
    A counter written meanwhile by another process (here: straight into the store) makes
    the next charge's conditional write fail; it is then read, and the count is right."""

    async def scenario(a: Any, b: Any) -> None:
        destination = _CountedReads(b.journal.store)
        b.journal.store = destination  # type: ignore[assignment]
        counter = usage_key(TENANT)
        for index in range(2):
            result = await a.migrate(_object(index), tenant=TENANT, destination=HOST_B)
            assert result.step is SourceStep.DONE
        assert destination.reading(counter) == 1, destination.reads  # the first charge
        before = await destination.store.get(counter)
        assert before is not None and Usage.decode(before.value).objects == 2
        # Another process charges five objects of the tenant.
        others = Usage(objects=7, size=Usage.decode(before.value).size)
        await destination.store.put(counter, others.encode(), etag=before.etag)
        result = await a.migrate(_object(2), tenant=TENANT, destination=HOST_B)
        assert result.step is SourceStep.DONE
        assert destination.reading(counter) == 2  # read again after the lost race
        after = await destination.store.get(counter)
        assert after is not None and Usage.decode(after.value).objects == 8

    _on_two_hosts(world, 3, scenario)
