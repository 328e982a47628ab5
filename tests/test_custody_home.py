"""The custody home's claim rules (gateway.handoff.home), against real hosts' keys and a
real SQLite file; the process tests in tests/test_dishonest_peer.py run the same home
over mTLS, including a SIGKILL mid-claim.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import pytest

from gateway import envelope as dsse
from gateway import wire
from gateway.config import load_config
from gateway.errors import (
    BadSignatureError,
    CustodyError,
    ForkError,
    GatewayError,
    UntrustedKeyError,
)
from gateway.handoff.home import CustodyRecord, open_custody_receipt
from gateway.handoff.messages import DecisionAnswer, Outcome
from gateway.host import Host
from gateway.lineage import Checkpoint
from gateway.testing import HostSpec, World, build_world
from tests.conftest import HOST_A, HOST_A2, HOST_B

HOST_C = "spiffe://org-c.example/cluster/one/gateway"
HOST_D = "spiffe://org-d.example/cluster/one/gateway"
OBJECT = "obj://org-a.example/billing/invoice-5"
ROOT = b"\x01" * 32


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    hosts = (HOST_A, HOST_A2, HOST_B, HOST_C, HOST_D)
    return build_world(tmp_path_factory.mktemp("home"), [HostSpec(host_id=h) for h in hosts])


Body = Callable[[dict[str, Host]], Awaitable[None]]


def with_hosts(world: World, body: Body) -> None:
    async def main() -> None:
        hosts = {h: await Host.open(load_config(world.config(h))) for h in world.configs}
        try:
            await body(hosts)
        finally:
            for host in hosts.values():
                await host.close()

    asyncio.run(main())


def departure(
    hosts: dict[str, Host],
    sender: str,
    receiver: str,
    epoch: int,
    migration: str,
    *,
    signer: str | None = None,
    object_id: str = OBJECT,
) -> bytes:
    signing = hosts[signer or sender]
    checkpoint = Checkpoint(
        object_id=object_id,
        host=sender,
        epoch=epoch,
        size=2,
        root=ROOT,
        issued_at=signing.clock.now(),
        to=receiver,
        migration=migration,
    )
    return wire.encode_envelope(
        signing.context.seal(checkpoint.encode(), dsse.PayloadType.CHECKPOINT)
    )


def decision(
    hosts: dict[str, Host],
    sender: str,
    receiver: str,
    migration: str,
    outcome: Outcome = Outcome.COMMITTED,
) -> bytes:
    answer = DecisionAnswer(
        migration_id=migration,
        outcome=outcome,
        source=sender,
        destination=receiver,
        issued_at=hosts[sender].clock.now(),
    )
    return wire.encode_envelope(
        hosts[sender].context.seal(answer.encode(), dsse.PayloadType.DECISION)
    )


async def claim(
    hosts: dict[str, Host],
    sender: str,
    receiver: str,
    epoch: int,
    migration: str,
    object_id: str = OBJECT,
) -> bytes:
    return await hosts[HOST_A2].destination.home.claim(
        departure(hosts, sender, receiver, epoch, migration, object_id=object_id),
        decision(hosts, sender, receiver, migration),
        peer=receiver,
    )


def record(receipt: bytes) -> CustodyRecord:
    return CustodyRecord.decode(wire.decode_envelope(receipt).payload)


def test_custody_moves_forward_once_per_handoff_and_survives_a_restart(tmp_path: Path) -> None:
    world = build_world(
        tmp_path, [HostSpec(host_id=h) for h in (HOST_A, HOST_A2, HOST_B, HOST_C, HOST_D)]
    )

    async def first(hosts: dict[str, Host]) -> None:
        receipt = await claim(hosts, HOST_A, HOST_B, 1, "mig-1")
        granted = open_custody_receipt(
            hosts[HOST_B].context,
            receipt,
            home=HOST_A2,
            object_id=OBJECT,
            epoch=1,
            migration="mig-1",
        )
        assert (granted.holder, granted.sender, granted.epoch) == (HOST_B, HOST_A, 1)
        # The same claim again (a retry after a lost answer): the same record.
        assert record(await claim(hosts, HOST_A, HOST_B, 1, "mig-1")) == granted
        # A second claim for the epoch, to another receiver: a fork.
        with pytest.raises(ForkError, match="held by"):
            await claim(hosts, HOST_A, HOST_C, 1, "mig-2")
        assert record(await claim(hosts, HOST_B, HOST_C, 2, "mig-3")).holder == HOST_C

    with_hosts(world, first)

    async def after_restart(hosts: dict[str, Host]) -> None:
        # B kept its copy from epoch 1 and hands it to D at epoch 2: the home remembers C.
        with pytest.raises(ForkError, match=f"held by {HOST_C} since epoch 2"):
            await claim(hosts, HOST_B, HOST_D, 2, "mig-4")
        with pytest.raises(ForkError):
            await claim(hosts, HOST_B, HOST_D, 3, "mig-5")
        # The holder goes on as usual.
        assert record(await claim(hosts, HOST_C, HOST_D, 3, "mig-6")).holder == HOST_D

    with_hosts(world, after_restart)


def refusal(world: World, make: Callable[[dict[str, Host]], Awaitable[bytes]]) -> GatewayError:
    caught: list[GatewayError] = []

    async def body(hosts: dict[str, Host]) -> None:
        try:
            await make(hosts)
        except GatewayError as exc:
            caught.append(exc)

    with_hosts(world, body)
    assert caught, "the claim was granted"
    return caught[0]


def test_a_claim_by_anyone_but_the_named_receiver_is_refused(world: World) -> None:
    error = refusal(
        world,
        lambda h: h[HOST_A2].destination.home.claim(
            departure(h, HOST_A, HOST_B, 1, "m"), decision(h, HOST_A, HOST_B, "m"), peer=HOST_C
        ),
    )
    assert isinstance(error, CustodyError) and "not to" in str(error)


def test_a_claim_without_a_committed_decision_is_refused(world: World) -> None:
    error = refusal(
        world,
        lambda h: h[HOST_A2].destination.home.claim(
            departure(h, HOST_A, HOST_B, 1, "m"),
            decision(h, HOST_A, HOST_B, "m", Outcome.ABORTED),
            peer=HOST_B,
        ),
    )
    assert isinstance(error, BadSignatureError) and "COMMITTED" in error.hint


def test_a_decision_signed_by_the_receiver_itself_is_refused(world: World) -> None:
    def forged(h: dict[str, Host]) -> Awaitable[bytes]:
        answer = DecisionAnswer(
            migration_id="m",
            outcome=Outcome.COMMITTED,
            source=HOST_A,
            destination=HOST_B,
            issued_at=h[HOST_B].clock.now(),
        )
        signed = wire.encode_envelope(
            h[HOST_B].context.seal(answer.encode(), dsse.PayloadType.DECISION)
        )
        return h[HOST_A2].destination.home.claim(
            departure(h, HOST_A, HOST_B, 1, "m"), signed, peer=HOST_B
        )

    assert isinstance(refusal(world, forged), UntrustedKeyError | BadSignatureError)


def test_a_departure_signed_by_another_host_is_refused(world: World) -> None:
    error = refusal(
        world,
        lambda h: h[HOST_A2].destination.home.claim(
            departure(h, HOST_A, HOST_B, 1, "m", signer=HOST_B),
            decision(h, HOST_A, HOST_B, "m"),
            peer=HOST_B,
        ),
    )
    assert isinstance(error, UntrustedKeyError | BadSignatureError)


def test_the_home_answers_only_for_its_own_domain(world: World) -> None:
    error = refusal(
        world,
        lambda h: h[HOST_A2].destination.home.claim(
            departure(h, HOST_C, HOST_B, 1, "m", object_id="obj://org-c.example/x/y"),
            decision(h, HOST_C, HOST_B, "m"),
            peer=HOST_B,
        ),
    )
    assert isinstance(error, CustodyError) and "not the custody home" in str(error)


def test_a_first_claim_must_come_from_the_owner_domain(world: World) -> None:
    error = refusal(
        world, lambda h: claim(h, HOST_C, HOST_B, 1, "m-first", "obj://org-a.example/first/1")
    )
    assert isinstance(error, ForkError) and "first handoff must come from org-a.example" in str(
        error
    )


def test_a_custody_receipt_is_valid_for_its_one_handoff(world: World) -> None:
    async def body(h: dict[str, Host]) -> bytes:
        other = "obj://org-a.example/receipt/7"
        receipt = await claim(h, HOST_A, HOST_B, 7, "m-7", other)
        return bytes(
            open_custody_receipt(
                h[HOST_B].context, receipt, home=HOST_A2, object_id=other, epoch=8, migration="m-7"
            ).encode()
        )

    assert isinstance(refusal(world, body), BadSignatureError)


def test_a_round_trip_through_its_own_home_claims_at_each_arrival(tmp_path: Path) -> None:
    """The home may be one of the holders: A (the home) -> B -> A, all real hosts over
    mTLS in this process. Each arrival is claimed (B at A's home service, A at itself)."""
    from gateway.authority import CapabilitySet, Constraints
    from gateway.handoff.home import custody_key
    from gateway.model import LifecycleState
    from gateway.objectspec import GrantSpec
    from gateway.testing import serving

    world = build_world(tmp_path, [HostSpec(host_id=HOST_A), HostSpec(host_id=HOST_B)])

    async def main() -> None:
        async with serving(world) as hosts:
            a, b = hosts[HOST_A], hosts[HOST_B]
            await a.create_object(
                OBJECT,
                tenant="default",
                data=b"{}",
                content_type="application/json",
                grant=GrantSpec(
                    audience="spiffe://org-b.example",
                    valid_for=timedelta(days=1),
                    capabilities=CapabilitySet(),
                    constraints=Constraints.from_claim({}),
                    home=HOST_A,
                ),
            )
            await a.migrate(OBJECT, tenant="default", destination=HOST_B)
            first = await a.store.get(custody_key(OBJECT))
            assert first is not None
            assert (
                CustodyRecord.decode(first.value).holder,
                CustodyRecord.decode(first.value).handoffs,
            ) == (HOST_B, 1)
            await b.migrate(OBJECT, tenant="default", destination=HOST_A)
            back = await a.get_object(OBJECT, tenant="default")
            assert back.state is LifecycleState.ACTIVE and back.epoch == 2
            second = await a.store.get(custody_key(OBJECT))
            assert second is not None
            record = CustodyRecord.decode(second.value)
            assert (record.holder, record.sender, record.epoch, record.handoffs) == (
                HOST_A,
                HOST_B,
                2,
                2,
            )

    asyncio.run(main())
