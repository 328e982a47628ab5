"""The handoff between real hosts: gRPC over mTLS on loopback, each host with its own SQLite
file, keys and trust. Hosts run in this process (``gateway.testing.serving``) so that a
test can also play a misbehaving peer; the network, TLS and stores are all real.

After every scenario the test reads the stores and checks the invariant of DESIGN.md §6:
at most one host holds the object live (ACTIVE, or FROZEN with the right to resume), and
once settled exactly one does, with its data and lineage intact.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from gateway import envelope as dsse
from gateway import wire
from gateway.errors import (
    AdmissionDeniedError,
    AudienceError,
    BadSignatureError,
    ExpiredError,
    GatewayError,
    MigrationAbortedError,
    ObjectStateError,
    PeerMismatchError,
    PeerUnavailableError,
    ReplayError,
    RollbackError,
    UnknownPeerError,
    UntrustedKeyError,
)
from gateway.handoff.messages import NONCE_BYTES, Outcome, Transfer, UnknownMigrationAnswer
from gateway.handoff.records import DestinationStep, SourceRecord, SourceStep
from gateway.handoff.source import Source, open_decision
from gateway.host import Host
from gateway.keys import Signer
from gateway.lineage import EntryKind, verify_lineage
from gateway.model import GovernedObject, LifecycleState
from gateway.testing import World, sealed_transfer, serving, sign_transfer
from gateway.testing.faults import FaultyPeers
from gateway.testing.plugin import WorldFactory
from tests.conftest import HOST_A, HOST_A2, HOST_B

OBJECT = "obj://org-a.example/billing/invoice-42"
DATA = json.dumps({"invoice": 42, "amount": 1250}).encode()

Scenario = Callable[[dict[str, Host]], Awaitable[None]]


@pytest.fixture
def world(any_store_world: World) -> World:
    """Every scenario here runs twice: on SQLite files, and on Dapr sidecars."""
    return any_store_world


def run(world: World, scenario: Scenario, hosts: list[str] | None = None) -> None:
    async def main() -> None:
        async with serving(world, hosts) as opened:
            await scenario(opened)

    asyncio.run(main())


async def create(host: Host, object_id: str = OBJECT) -> GovernedObject:
    return await host.create_object(
        object_id, tenant="default", data=DATA, content_type="application/json"
    )


async def placement(hosts: dict[str, Host], object_id: str = OBJECT) -> dict[str, GovernedObject]:
    """Every host's record of the object, read from its own store."""
    found = {}
    for host_id, host in hosts.items():
        loaded = await host.journal.object("default", object_id)
        if loaded is not None:
            found[host_id] = loaded.value
    return found


async def assert_settled_on(
    hosts: dict[str, Host], owner: str, object_id: str = OBJECT
) -> GovernedObject:
    """Exactly ``owner`` holds the object ACTIVE; everyone else has at most a MOVED tombstone."""
    records = await placement(hosts, object_id)
    live = {h for h, o in records.items() if o.live}
    assert live == {owner}, f"live copies on {live}, expected exactly {owner}"
    obj = records[owner]
    assert obj.state is LifecycleState.ACTIVE
    assert obj.data == DATA
    verify_lineage(obj.lineage, object_id=object_id, trust=hosts[owner].trust, sealed=False)
    for host_id, other in records.items():
        if host_id != owner:
            assert other.state is LifecycleState.MOVED
    return obj


def forge_transfer(
    host: Host,
    obj: GovernedObject,
    destination: str,
    *,
    epoch: int | None = None,
    issued_at: datetime | None = None,
    ttl: timedelta = timedelta(seconds=60),
    source_host: str | None = None,
    signer: Signer | None = None,
) -> bytes:
    """A transfer sealed exactly like the source does, without touching the source's store."""
    transfer = sealed_transfer(
        host, obj, destination, epoch=epoch, issued_at=issued_at, ttl=ttl, source_host=source_host
    )
    return sign_transfer(host, transfer, signer=signer)


# --- the happy path ---------------------------------------------------------------------


def test_migration_moves_the_only_live_copy(world: World) -> None:
    async def scenario(hosts: dict[str, Host]) -> None:
        a, b = hosts[HOST_A], hosts[HOST_B]
        await create(a)
        result = await a.migrate(OBJECT, tenant="default", destination=HOST_B)
        assert result.step is SourceStep.DONE
        assert result.epoch == 1
        await a.settled()  # DONE is journaled right after the answer

        moved = await assert_settled_on(hosts, HOST_B)
        assert moved.epoch == 1
        kinds = [e.kind for e in moved.lineage.entries]
        assert kinds == [EntryKind.CREATED, EntryKind.FROZEN, EntryKind.REHOSTED]
        assert moved.lineage.entries[-1].host == HOST_B
        assert len(moved.lineage.checkpoints) == 1

        tombstone = (await placement(hosts))[HOST_A]
        assert tombstone.moved_to == HOST_B and tombstone.migration_id == result.migration_id
        assert tombstone.receipt is not None  # the destination's signed staged receipt
        source = await a.journal.source(result.migration_id)
        destination = await b.journal.destination(result.migration_id)
        assert source is not None and source.value.step is SourceStep.DONE
        assert destination is not None and destination.value.step is DestinationStep.ACTIVATED

    run(world, scenario)


def test_round_trip_extends_the_same_history(world: World) -> None:
    """A → B → A: epochs rise, each host signs a checkpoint, A sees its old history extended."""

    async def scenario(hosts: dict[str, Host]) -> None:
        a, b = hosts[HOST_A], hosts[HOST_B]
        await create(a)
        await a.migrate(OBJECT, tenant="default", destination=HOST_B)
        back = await b.migrate(OBJECT, tenant="default", destination=HOST_A)
        assert back.epoch == 2
        home = await assert_settled_on(hosts, HOST_A)
        verified = verify_lineage(home.lineage, object_id=OBJECT, trust=a.trust, sealed=False)
        assert verified.hosts == (HOST_A, HOST_B)
        assert [e.kind for e in home.lineage.entries][-1] is EntryKind.REHOSTED
        again = await a.migrate(OBJECT, tenant="default", destination=HOST_A2)
        assert again.epoch == 3
        await assert_settled_on(hosts, HOST_A2)

    run(world, scenario)


def test_every_call_is_idempotent_and_a_settled_transfer_cannot_be_replayed(
    gateway_world: WorldFactory, world: World
) -> None:
    """While a migration is open, re-sending Prepare gets the same receipt; Commit is
    idempotent; once settled, the captured transfer is refused and changes nothing."""
    running = gateway_world(world)
    running.network(HOST_A).drop("commit", to=HOST_B)

    async def scenario(hosts: dict[str, Host]) -> None:
        a = hosts[HOST_A]
        await create(a)
        # The transfer as journaled while FROZEN: the COMMITTED record no longer holds it.
        migration_id = await a.source.freeze(OBJECT, tenant="default", destination=HOST_B)
        transfer = (await a.journal.source(migration_id)).value.transfer  # type: ignore[union-attr]
        result = await a.source.resume(migration_id)
        assert result.step is SourceStep.COMMITTED
        record = (await a.journal.source(result.migration_id)).value  # type: ignore[union-attr]
        assert record.transfer == b""
        client = a.peers.client(HOST_B)
        assert await client.prepare(transfer) == record.staged_receipt  # still STAGED
        activation = await client.commit(result.migration_id)
        assert await client.commit(result.migration_id) == activation
        assert (await a.source.resume(result.migration_id)).step is SourceStep.DONE
        before = await placement(hosts)
        with pytest.raises(ReplayError):
            await client.prepare(transfer)
        assert await placement(hosts) == before

    running.run(scenario(running.hosts))


def test_two_migrations_of_one_object_race_and_one_wins(world: World) -> None:
    async def scenario(hosts: dict[str, Host]) -> None:
        a = hosts[HOST_A]
        await create(a)
        results = await asyncio.gather(
            a.migrate(OBJECT, tenant="default", destination=HOST_B),
            a.migrate(OBJECT, tenant="default", destination=HOST_A2),
            return_exceptions=True,
        )
        won = [r for r in results if not isinstance(r, BaseException)]
        lost = [r for r in results if isinstance(r, BaseException)]
        assert len(won) == 1 and len(lost) == 1
        assert isinstance(lost[0], ObjectStateError), lost[0]
        await assert_settled_on(hosts, won[0].destination)

    run(world, scenario)


@pytest.mark.patient
def test_many_objects_migrate_concurrently(world: World) -> None:
    async def scenario(hosts: dict[str, Host]) -> None:
        a = hosts[HOST_A]
        ids = [f"obj://org-a.example/batch/item-{i}" for i in range(20)]
        for object_id in ids:
            await create(a, object_id)
        results = await asyncio.gather(
            *(a.migrate(i, tenant="default", destination=HOST_B) for i in ids)
        )
        assert all(r.step is SourceStep.DONE for r in results)
        for object_id in ids:
            await assert_settled_on(hosts, HOST_B, object_id)

    run(world, scenario)


# --- refusals: nothing changes on either side -------------------------------------------


def refused(
    world: World, send: Callable[[dict[str, Host], GovernedObject], Awaitable[object]], error: type
) -> None:
    """``send`` must be refused with ``error``; afterwards the object is still only on A."""

    async def scenario(hosts: dict[str, Host]) -> None:
        obj = await create(hosts[HOST_A])
        with pytest.raises(error):
            await send(hosts, obj)
        settled = await assert_settled_on(hosts, HOST_A)
        assert settled.epoch == 0
        assert await hosts[HOST_B].store.list("journal/destination/") == []

    run(world, scenario)


def test_transfer_for_another_host_is_refused(world: World) -> None:
    """A transfer addressed to A2 and presented to B (by its real source) is refused."""

    async def send(hosts: dict[str, Host], obj: GovernedObject) -> object:
        a = hosts[HOST_A]
        return await a.peers.client(HOST_B).prepare(forge_transfer(a, obj, HOST_A2))

    refused(world, send, AudienceError)


def test_transfer_relayed_by_another_host_is_refused(world: World) -> None:
    """A2 (a trusted host of the same domain) relays A's transfer: its key may not sign for A."""

    async def send(hosts: dict[str, Host], obj: GovernedObject) -> object:
        raw = forge_transfer(hosts[HOST_A], obj, HOST_B)
        return await hosts[HOST_A2].peers.client(HOST_B).prepare(raw)

    refused(world, send, UntrustedKeyError)


def test_source_named_in_transfer_must_be_the_authenticated_peer(world: World) -> None:
    """A2 signs with its own key a transfer that claims to come from A."""

    async def send(hosts: dict[str, Host], obj: GovernedObject) -> object:
        a2 = hosts[HOST_A2]
        raw = forge_transfer(
            hosts[HOST_A], obj, HOST_B, source_host=HOST_A, signer=a2.context.signer
        )
        return await a2.peers.client(HOST_B).prepare(raw)

    refused(world, send, PeerMismatchError)


def test_expired_transfer_is_refused(world: World) -> None:
    async def send(hosts: dict[str, Host], obj: GovernedObject) -> object:
        a = hosts[HOST_A]
        old = a.clock.now() - timedelta(minutes=10)
        return await a.peers.client(HOST_B).prepare(forge_transfer(a, obj, HOST_B, issued_at=old))

    refused(world, send, ExpiredError)


def test_transfer_from_the_future_is_refused(world: World) -> None:
    async def send(hosts: dict[str, Host], obj: GovernedObject) -> object:
        a = hosts[HOST_A]
        future = a.clock.now() + timedelta(minutes=5)
        return await a.peers.client(HOST_B).prepare(
            forge_transfer(a, obj, HOST_B, issued_at=future)
        )

    refused(world, send, ExpiredError)


def test_tampered_transfer_is_refused(world: World) -> None:
    async def send(hosts: dict[str, Host], obj: GovernedObject) -> object:
        a = hosts[HOST_A]
        envelope = wire.decode_envelope(forge_transfer(a, obj, HOST_B))
        payload = envelope.payload.replace(b'"amount": 1250', b'"amount": 9999')
        assert payload != envelope.payload
        forged = dsse.Envelope(
            payload=payload, payload_type=envelope.payload_type, signatures=envelope.signatures
        )
        return await a.peers.client(HOST_B).prepare(wire.encode_envelope(forged))

    refused(world, send, BadSignatureError)


def test_tenant_not_hosted_is_refused(world: World) -> None:
    async def scenario(hosts: dict[str, Host]) -> None:
        a2 = hosts[HOST_A2]
        # A2 hosts only "default"; B has a "billing" tenant. Create there, send to A2.
        b = hosts[HOST_B]
        await b.create_object(
            "obj://org-b.example/ledger/1",
            tenant="billing",
            data=DATA,
            content_type="application/json",
        )
        with pytest.raises(AdmissionDeniedError) as caught:
            await b.migrate("obj://org-b.example/ledger/1", tenant="billing", destination=HOST_A2)
        assert "billing" in str(caught.value)
        obj = await b.get_object("obj://org-b.example/ledger/1", tenant="billing")
        assert obj.state is LifecycleState.ACTIVE and obj.epoch == 1
        assert [e.kind for e in obj.lineage.entries][-2:] == [EntryKind.FROZEN, EntryKind.ABORTED]
        assert await a2.store.list("t/") == []

    run(world, scenario)


def test_stale_epoch_can_never_be_staged(world: World) -> None:
    """After A → B → A, a transfer of A's epoch-1 copy (new migration, new nonce) is refused by B."""

    async def scenario(hosts: dict[str, Host]) -> None:
        a, b = hosts[HOST_A], hosts[HOST_B]
        original = await create(a)
        await a.migrate(OBJECT, tenant="default", destination=HOST_B)
        await b.migrate(OBJECT, tenant="default", destination=HOST_A)
        with pytest.raises(RollbackError):
            await a.peers.client(HOST_B).prepare(forge_transfer(a, original, HOST_B, epoch=1))
        await assert_settled_on(hosts, HOST_A)

    run(world, scenario)


def test_migration_id_reused_for_another_transfer_is_refused(world: World) -> None:
    async def scenario(hosts: dict[str, Host]) -> None:
        a = hosts[HOST_A]
        obj = await create(a)
        first = forge_transfer(a, obj, HOST_B)
        await a.peers.client(HOST_B).prepare(first)
        transfer = wire.decode_transfer(wire.decode_envelope(first).payload)
        other = Transfer(
            migration_id=transfer.migration_id,
            epoch=transfer.epoch,
            source_host=transfer.source_host,
            destination_host=transfer.destination_host,
            issued_at=transfer.issued_at,
            expires_at=transfer.expires_at,
            nonce=os.urandom(NONCE_BYTES),
            object=replace(transfer.object, state=LifecycleState.FROZEN),
        )
        second = dsse.seal(
            wire.encode_transfer(other), dsse.PayloadType.TRANSFER, [a.context.signer]
        )
        with pytest.raises(ReplayError):
            await a.peers.client(HOST_B).prepare(wire.encode_envelope(second))

    run(world, scenario)


def test_unknown_destination_freezes_nothing(world: World) -> None:
    async def scenario(hosts: dict[str, Host]) -> None:
        a = hosts[HOST_A]
        await create(a)
        with pytest.raises(UnknownPeerError):
            await a.migrate(
                OBJECT, tenant="default", destination="spiffe://org-z.example/x/gateway"
            )
        obj = await assert_settled_on(hosts, HOST_A)
        assert len(obj.lineage) == 1

    run(world, scenario)


def test_only_the_named_source_may_commit_abort_or_ask(world: World) -> None:
    async def scenario(hosts: dict[str, Host]) -> None:
        a, a2 = hosts[HOST_A], hosts[HOST_A2]
        obj = await create(a)
        raw = forge_transfer(a, obj, HOST_B)
        await a.peers.client(HOST_B).prepare(raw)
        migration_id = wire.decode_transfer(wire.decode_envelope(raw).payload).migration_id
        intruder = a2.peers.client(HOST_B)
        with pytest.raises(PeerMismatchError):
            await intruder.commit(migration_id)
        with pytest.raises(PeerMismatchError):
            await intruder.abort(migration_id, "not mine")
        # A Commit for an id B never staged gets B's signed "unknown migration", naming
        # the peer that asked: a source settles on it only for its own migration
        # (gateway.handoff.source, test_forgotten_commit.py); nothing is written.
        unknown = wire.decode_envelope(await intruder.commit("mig-never-staged"))
        answer = UnknownMigrationAnswer.decode(
            a2.context.open_from(
                HOST_B, unknown, dsse.PayloadType.UNKNOWN_MIGRATION, at=a2.context.clock.now()
            )
        )
        assert (answer.migration_id, answer.source) == ("mig-never-staged", HOST_A2)
        staged = await hosts[HOST_B].journal.destination(migration_id)
        assert staged is not None and staged.value.step is DestinationStep.STAGED

    run(world, scenario)


# --- failures: presumed abort and recovery ----------------------------------------------


def test_unreachable_destination_aborts_and_the_object_resumes(world: World) -> None:
    async def scenario(hosts: dict[str, Host]) -> None:
        a = hosts[HOST_A]
        await create(a)
        with pytest.raises(PeerUnavailableError):
            await a.migrate(OBJECT, tenant="default", destination=HOST_B)
        obj = await a.get_object(OBJECT, tenant="default")
        assert obj.state is LifecycleState.ACTIVE and obj.epoch == 1 and obj.data == DATA
        assert [e.kind for e in obj.lineage.entries] == [
            EntryKind.CREATED,
            EntryKind.FROZEN,
            EntryKind.ABORTED,
        ]
        verify_lineage(obj.lineage, object_id=OBJECT, trust=a.trust, sealed=False)
        (key,) = await a.store.list("journal/source/")
        record = await a.journal.source(key.removeprefix("journal/source/"))
        assert record is not None and record.value.step is SourceStep.ABORTED

    run(world, scenario, hosts=[HOST_A])  # B is configured but not running


def test_lost_prepare_reply_aborts_on_both_sides(gateway_world: WorldFactory, world: World) -> None:
    """B stages, its receipt is lost: A aborts and tells B, which discards its copy."""
    running = gateway_world(world)
    running.network(HOST_A).lose_reply("prepare", to=HOST_B)

    async def scenario(hosts: dict[str, Host]) -> None:
        a, b = hosts[HOST_A], hosts[HOST_B]
        await create(a)
        with pytest.raises(PeerUnavailableError):
            await a.migrate(OBJECT, tenant="default", destination=HOST_B)
        await assert_settled_on(hosts, HOST_A)
        (key,) = await b.store.list("journal/destination/")
        record = await b.journal.destination(key.removeprefix("journal/destination/"))
        assert record is not None and record.value.step is DestinationStep.ABORTED
        assert record.value.staged is None

    running.run(scenario(running.hosts))
    running.assert_invariants(OBJECT)


def test_staged_copy_left_behind_asks_and_is_discarded(
    gateway_world: WorldFactory, world: World
) -> None:
    """Reply and Abort both lost: B holds a staged copy until it asks A, which says aborted."""
    running = gateway_world(world)
    running.network(HOST_A).lose_reply("prepare", to=HOST_B)
    running.network(HOST_A).drop("abort", to=HOST_B)

    async def scenario(hosts: dict[str, Host]) -> None:
        a, b = hosts[HOST_A], hosts[HOST_B]
        await create(a)
        with pytest.raises(PeerUnavailableError):
            await a.migrate(OBJECT, tenant="default", destination=HOST_B)
        (key,) = await b.store.list("journal/destination/")
        migration_id = key.removeprefix("journal/destination/")
        assert (await b.journal.destination(migration_id)).value.step is DestinationStep.STAGED  # type: ignore[union-attr]
        await assert_settled_on(hosts, HOST_A)  # staged is not live
        await asyncio.sleep(0.3)  # past stage_timeout
        assert await b.recover() >= 1
        assert (await b.journal.destination(migration_id)).value.step is DestinationStep.ABORTED  # type: ignore[union-attr]
        await assert_settled_on(hosts, HOST_A)

    running.run(scenario(running.hosts))
    running.assert_invariants(OBJECT)


def test_lost_commit_is_finished_by_recovery_on_either_side(
    gateway_world: WorldFactory, world: World
) -> None:
    """Commit never arrives: A has committed (MOVED), B only staged. B's recovery asks and
    activates; A's recovery then re-sends Commit and gets the activation receipt."""
    running = gateway_world(world)
    running.network(HOST_A).drop("commit", to=HOST_B)

    async def scenario(hosts: dict[str, Host]) -> None:
        a, b = hosts[HOST_A], hosts[HOST_B]
        await create(a)
        result = await a.migrate(OBJECT, tenant="default", destination=HOST_B)
        assert result.step is SourceStep.COMMITTED
        records = await placement(hosts)
        assert records[HOST_A].state is LifecycleState.MOVED
        assert (
            HOST_B not in records
        )  # staged only: not live anywhere yet, recoverable from journals
        await asyncio.sleep(0.3)
        assert await b.recover() >= 1
        await assert_settled_on(hosts, HOST_B)
        assert await a.recover() >= 1
        record = await a.journal.source(result.migration_id)
        assert record is not None and record.value.step is SourceStep.DONE

    running.run(scenario(running.hosts))
    running.assert_invariants(OBJECT)


def test_decision_aborts_what_was_not_committed(world: World) -> None:
    """B asks about a migration A froze but never committed: A journals ABORTED first,
    resumes the object, and can then never commit it."""

    async def scenario(hosts: dict[str, Host]) -> None:
        a, b = hosts[HOST_A], hosts[HOST_B]
        await create(a)
        network = FaultyPeers(a.peers)
        network.drop("prepare", to=HOST_B)
        stalled = Source(a.context, network)
        frozen_at_prepare: list[str] = []

        async def freeze_only() -> None:
            # Freeze and journal exactly like migrate(), then stop before Prepare goes out.
            # (migrate() drives on from the record it froze, as resume() does once read.)
            original = stalled._drive

            async def stop_here(record: SourceRecord, **_kwargs: object) -> object:
                frozen_at_prepare.append(record.migration_id)
                raise asyncio.CancelledError

            stalled._drive = stop_here  # type: ignore[method-assign]
            try:
                await stalled.migrate(OBJECT, tenant="default", destination=HOST_B)
            except asyncio.CancelledError:
                pass
            finally:
                stalled._drive = original  # type: ignore[method-assign]

        await freeze_only()
        (migration_id,) = frozen_at_prepare
        assert (await a.get_object(OBJECT, tenant="default")).state is LifecycleState.FROZEN
        for asked in (migration_id, "mig-unknown"):
            answer = await b.peers.client(HOST_A).decision(asked)
            assert (
                open_decision(b.context, answer, source=HOST_A, migration_id=asked)
                is Outcome.ABORTED
            )
        # A signed answer is only good for its own migration (and destination).
        answer = await b.peers.client(HOST_A).decision(migration_id)
        with pytest.raises(BadSignatureError):
            open_decision(b.context, answer, source=HOST_A, migration_id="mig-other")
        await assert_settled_on(hosts, HOST_A)
        with pytest.raises(MigrationAbortedError):
            await a.source.resume(migration_id)
        await assert_settled_on(hosts, HOST_A)

    run(world, scenario)


def test_refusal_reason_reaches_the_operator(world: World) -> None:
    """The destination's error type and reason come back through gRPC intact."""

    async def scenario(hosts: dict[str, Host]) -> None:
        a = hosts[HOST_A]
        obj = await create(a)
        with pytest.raises(GatewayError) as caught:
            await a.peers.client(HOST_B).prepare(forge_transfer(a, obj, HOST_A2))
        assert type(caught.value) is AudienceError
        assert HOST_B in caught.value.reason and HOST_A2 in caught.value.reason
        assert caught.value.hint

    run(world, scenario)
