"""Storage bounded by what lives (issue 13, point 5): settled migration records and
delivered events are pruned after the retention, fences of objects held here are kept.

Objects move back and forth between two in-process hosts; after each round both clocks
jump past the retention and a recovery pass runs. The set of keys each store holds is
then the same after every round: it follows the objects, not the migrations made.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import timedelta
from pathlib import Path

import pytest

from gateway import envelope as dsse
from gateway import wire
from gateway.errors import ForkError, GatewayError
from gateway.handoff.journal import DESTINATION_PREFIX, SOURCE_PREFIX, fence_key, object_key
from gateway.handoff.messages import DecisionAnswer, Outcome
from gateway.handoff.pruning import PACE, _paced, minimum_retention
from gateway.stores import StateStore
from gateway.testing import HostSpec, build_world, sealed_transfer, sign_transfer
from gateway.testing.harness import InProcessWorld
from tests.conftest import HOST_A, HOST_A2, HOST_B

OBJECTS = [f"obj://org-a.example/pruned/{n}" for n in range(3)]


async def key_shape(store: StateStore) -> list[str]:
    """Every key but the transient ones: outbox events wait for the dispatcher (their
    pruning needs them delivered first), nonces for their transfer's expiry."""
    transient = ("events/", "pending/", "nonce/")
    return sorted(k for k in await store.list("") if not k.startswith(transient))


def test_store_keys_stay_flat_over_rounds_of_migrations(tmp_path: Path) -> None:
    world = InProcessWorld(
        build_world(tmp_path, [HostSpec(host_id=HOST_A), HostSpec(host_id=HOST_B)])
    )
    with contextlib.closing(world):
        for object_id in OBJECTS:
            world.create(HOST_A, object_id, data={"n": 1})
        jump = minimum_retention(timedelta(seconds=60)) + timedelta(days=1)
        shapes: dict[str, list[list[str]]] = {HOST_A: [], HOST_B: []}
        for _round in range(3):
            for object_id in OBJECTS:
                world.migrate(object_id, source=HOST_A, to=HOST_B)
                world.migrate(object_id, source=HOST_B, to=HOST_A)
            for host_id in (HOST_A, HOST_B):
                store = world.hosts[host_id].store
                journal = world.run(store.list("journal/"))
                assert journal, "settled records are kept until the retention passed"
                world.clock(host_id).skew(jump)
            for host_id in (HOST_A, HOST_B):
                world.recover(host_id)
                store = world.hosts[host_id].store
                assert world.run(store.list(SOURCE_PREFIX)) == []
                assert world.run(store.list(DESTINATION_PREFIX)) == []
                shapes[host_id].append(world.run(key_shape(store)))
        for host_id, rounds in shapes.items():
            assert rounds[0] == rounds[1] == rounds[2], host_id
        # Both hosts held every object: their fences stay, whatever the retention.
        for object_id in OBJECTS:
            for host_id in (HOST_A, HOST_B):
                fence = world.run(world.hosts[host_id].store.get(fence_key("default", object_id)))
                assert fence is not None, (host_id, object_id)
        for object_id in OBJECTS:
            world.assert_invariants(object_id)


def test_a_homed_tombstone_goes_after_the_retention_and_a_stale_copy_still_cannot_go_live(
    tmp_path: Path,
) -> None:
    """MOVED tombstones: kept without a custody home; with one, deleted (with the fence)
    once the departure settled past the retention. A stale copy a dishonest former
    holder then sends the host that forgot is staged there (as on any host that never
    saw the object) but never goes live: the home refuses its epoch."""
    world = InProcessWorld(
        build_world(
            tmp_path,
            [HostSpec(host_id=HOST_A), HostSpec(host_id=HOST_A2), HostSpec(host_id=HOST_B)],
        )
    )
    homed, plain = "obj://org-a.example/pruned/homed", "obj://org-a.example/pruned/plain"
    tried = "obj://org-a.example/pruned/tried-to-come-back"
    with contextlib.closing(world):
        world.create(HOST_A, homed, spec={"data": {"n": 1}, "grant": {"home": HOST_A2}})
        world.create(HOST_A, plain, spec={"data": {"n": 2}, "grant": {}})
        world.create(HOST_A, tried, spec={"data": {"n": 3}, "grant": {"home": HOST_A2}})
        # It leaves A; a later arrival at A is staged, then aborted (B never heard the
        # receipt): that raised A's fence above the tombstone's epoch.
        world.migrate(tried, source=HOST_A, to=HOST_B)
        world.network(HOST_B).lose_reply("prepare", to=HOST_A)
        with pytest.raises(GatewayError):
            world.migrate(tried, source=HOST_B, to=HOST_A)
        assert world.wait_settled(tried) == HOST_B
        for object_id in (homed, plain):
            world.migrate(object_id, source=HOST_A, to=HOST_B)
        _owner, stale = world.live_copy(homed)  # B keeps this copy (epoch 1)
        for object_id in (homed, plain):
            world.migrate(object_id, source=HOST_B, to=HOST_A)
            world.migrate(object_id, source=HOST_A, to=HOST_B)
        store_a = world.hosts[HOST_A].store

        def kept(object_id: str) -> tuple[bool, bool]:
            found = world.run(
                store_a.get_many(
                    [object_key("default", object_id), fence_key("default", object_id)]
                )
            )
            return object_key("default", object_id) in found, fence_key(
                "default", object_id
            ) in found

        assert kept(homed) == kept(plain) == (True, True)
        jump = minimum_retention(timedelta(seconds=60)) + timedelta(days=1)
        world.recover(HOST_A)
        assert kept(homed) == (True, True), "nothing goes before the retention"
        for host_id in (HOST_A, HOST_A2, HOST_B):
            world.clock(host_id).skew(jump)
        world.recover(HOST_A)
        assert kept(homed) == (False, False)
        assert kept(plain) == (True, True), "without a home the tombstone is all there is"
        assert kept(tried) == (True, True), "its fence was raised since the departure"

        # B, dishonest, sends A its stale copy again, frozen at the epoch it would have.
        host_b = world.hosts[HOST_B]
        transfer = sealed_transfer(host_b, stale, HOST_A)
        answer = DecisionAnswer(
            migration_id=transfer.migration_id,
            outcome=Outcome.COMMITTED,
            source=HOST_B,
            destination=HOST_A,
            issued_at=world.now(HOST_B),
        )
        signed = wire.encode_envelope(
            host_b.context.seal(answer.encode(), dsse.PayloadType.DECISION)
        )
        destination = world.hosts[HOST_A].destination
        world.run(destination.prepare(sign_transfer(host_b, transfer), peer=HOST_B))
        with pytest.raises(ForkError, match="custody home"):
            world.run(destination.commit(transfer.migration_id, peer=HOST_B, decision=signed))
        assert world.assert_one_live_copy(homed) == HOST_B
        on_a = world.placement(homed).get(HOST_A)
        assert on_a is None or not on_a.live
        for object_id in (homed, plain):
            world.assert_invariants(object_id)


def test_a_host_reads_its_settled_records_once_per_tenth_of_the_retention(
    tmp_path: Path,
) -> None:
    """A pass reads the whole retention window; one a minute (as before) read each
    settled record 11,520 times over an eight-day retention, so pruning's CPU grew with
    how long a host had been up (the soak's last minutes). Passes are now a tenth of the
    retention apart: about eleven reads per record, each deleted by 1.1 retentions."""
    world = InProcessWorld(
        build_world(tmp_path, [HostSpec(host_id=HOST_A), HostSpec(host_id=HOST_B)])
    )
    with contextlib.closing(world):
        world.create(HOST_A, OBJECTS[0], data={"n": 1})
        world.migrate(OBJECTS[0], source=HOST_A, to=HOST_B)
        pruner = world.hosts[HOST_A].recovery.pruner
        assert pruner.interval == pruner.retention / 10
        assert pruner.interval > timedelta(hours=19)  # the retention is at least 8 days
        passes = []
        for step in (pruner.interval, timedelta(minutes=2), timedelta(hours=12)):
            world.clock(HOST_A).skew(step)
            passes.append(world.run(pruner.maybe_run()) is not None)
        assert passes == [True, False, False]
        world.clock(HOST_A).skew(pruner.interval)
        assert world.run(pruner.maybe_run()) is not None
        # Nothing was due yet: the records are still there for retries.
        assert world.run(world.hosts[HOST_A].store.list(SOURCE_PREFIX))


def test_a_pass_leaves_the_event_loop_to_others_between_batches() -> None:
    """Each batch's work holds the loop; after it the pass waits PACE times as long, so
    a pass over a large window cannot hold migrations up for its whole length."""

    async def main() -> None:
        ticks = 0
        running = True

        async def ticker() -> None:
            nonlocal ticks
            while running:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        seen = []
        began = time.monotonic()
        async for _batch in _paced(range(3)):
            before = ticks
            end = time.monotonic() + 0.01
            while time.monotonic() < end:  # the batch's own work, holding the loop
                pass
            assert ticks == before
            seen.append(ticks)
        elapsed = time.monotonic() - began
        running = False
        await task
        assert seen[0] < seen[1] < seen[2], "nothing else ran between two batches"
        assert elapsed >= 3 * 0.01 * (1 + PACE) * 0.9

    asyncio.run(main())


def test_gateway_sweep_prunes_settled_history_now_and_a_dry_run_only_counts(
    tmp_path: Path,
) -> None:
    """A serving host prunes settled history once per tenth of the retention, so an
    operator who wants the space now runs ``gateway sweep``: its dry run counts what is
    due and deletes nothing, the sweep deletes it. A tombstone kept by the rule (no
    custody home here) is not counted as deleted."""
    from gateway._cli_sweep import describe, sweep

    world = InProcessWorld(
        build_world(tmp_path, [HostSpec(host_id=HOST_A), HostSpec(host_id=HOST_B)])
    )
    with contextlib.closing(world):
        world.create(HOST_A, OBJECTS[0], data={"n": 1})
        world.migrate(OBJECTS[0], source=HOST_A, to=HOST_B)
        host = world.hosts[HOST_A]
        store = host.store
        world.clock(HOST_A).skew(host.recovery.pruner.retention + timedelta(days=1))

        dry = world.run(sweep(host, dry_run=True))
        assert dry["settled"]["source_records"] == 1
        assert dry["settled"]["tombstones"] == 0
        assert world.run(store.list(SOURCE_PREFIX)), "a dry run deletes nothing"
        lines = describe(dry)
        assert any(line.startswith("would delete 1 source and 0 destination") for line in lines)

        done = world.run(sweep(host, dry_run=False))
        assert done["settled"]["source_records"] == 1
        assert done["settled"]["tombstones"] == 0
        assert world.run(store.list(SOURCE_PREFIX)) == []
        assert world.run(store.list(object_key("default", OBJECTS[0]).rsplit("/", 1)[0]))


def test_a_serving_host_prunes_on_its_own_task_not_in_its_recovery_pass(tmp_path: Path) -> None:
    """A pruning pass over a large window is paced and can take a while: a serving host
    runs it on its own task, so its recovery loop (``recover(prune=False)``) never waits
    for it; a direct ``recover()`` (tests, operator commands) still prunes when due."""
    world = InProcessWorld(
        build_world(tmp_path, [HostSpec(host_id=HOST_A), HostSpec(host_id=HOST_B)])
    )
    with contextlib.closing(world):
        host = world.hosts[HOST_A]
        asked: list[str] = []
        started = asyncio.Event()

        async def held_up() -> None:
            asked.append("prune")
            started.set()
            await asyncio.sleep(3600)  # a pass that takes an hour

        host.recovery.pruner.maybe_run = held_up  # type: ignore[method-assign]

        async def recovery_pass() -> int:
            return await asyncio.wait_for(host.recover(prune=False), timeout=30)

        world.run(recovery_pass())
        assert asked == []

        async def served_pruning() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(host._prune_forever(stop))
            await asyncio.wait_for(started.wait(), timeout=30)
            # the recovery loop's pass goes on meanwhile
            await asyncio.wait_for(host.recover(prune=False), timeout=30)
            stop.set()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        world.run(served_pruning())
        assert asked == ["prune"]
