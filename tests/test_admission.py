"""Credentialed policy on real hosts: the destination admits an object with the authority
its credential chain allows *and* its own policy allows, never more; its constraints can
refuse a host outright; a dry run shows the same answer before anything moves."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

import pytest

from gateway.authority import CapabilitySet, Constraints, EffectiveAuthority
from gateway.credentials import verify_chain
from gateway.errors import AdmissionDeniedError
from gateway.host import Host
from gateway.lineage import EntryKind, verify_lineage
from gateway.model import LifecycleState
from gateway.objectspec import GrantSpec
from gateway.testing import HostSpec, World, build_world, run_cli, serving
from tests.conftest import FAST_HANDOFF, HOST_A, HOST_B

OBJECT = "obj://org-a.example/billing/invoice-42"
WIDE_OFFERS = {
    "offers": [
        {"resource": "pubsub:*", "actions": ["publish", "subscribe"]},
        {"resource": "state:self", "actions": ["read", "write"]},
        {"resource": "invoke:*", "actions": ["invoke"]},
    ]
}


@pytest.fixture
def policy_world(tmp_path: Path) -> World:
    """A offers a little; B offers pubsub:* and more, and attenuates arriving objects."""
    return build_world(
        tmp_path,
        [
            HostSpec(
                host_id=HOST_A,
                region="eu-west",
                handoff=FAST_HANDOFF,
                policy={"offers": [{"resource": "pubsub:*", "actions": ["publish"]}]},
            ),
            HostSpec(
                host_id=HOST_B,
                region="eu-central",
                handoff={**FAST_HANDOFF, "attenuate_on_rehost": True},
                policy=WIDE_OFFERS,
            ),
        ],
    )


def grant(capabilities: list[dict[str, object]], **constraints: object) -> GrantSpec:
    return GrantSpec(
        audience="spiffe://org-b.example",
        valid_for=timedelta(days=1),
        capabilities=CapabilitySet.from_config(capabilities, "test"),
        constraints=Constraints.from_claim(
            {"hosts": ["spiffe://org-a.example/*", "spiffe://org-b.example/*"], **constraints}
        ),
    )


OVERDUE_ONLY = [{"resource": "pubsub:alerts/overdue", "actions": ["publish"]}]


async def create(host: Host, spec: GrantSpec) -> None:
    data = json.dumps({"invoice": 42}).encode()
    await host.create_object(
        OBJECT, tenant="default", data=data, content_type="application/json", grant=spec
    )


def exactly(claim: list[dict[str, object]]) -> EffectiveAuthority:
    return EffectiveAuthority(allow=CapabilitySet.from_claim(claim))


def test_wide_offer_narrow_grant_gives_exactly_the_grant(policy_world: World) -> None:
    """B offers pubsub:*; the grant allows pubsub:alerts/overdue; the object gets exactly that,
    shown by the dry run before the move and by the stored object after it."""

    async def scenario(hosts: dict[str, Host]) -> None:
        a, b = hosts[HOST_A], hosts[HOST_B]
        await create(a, grant(OVERDUE_ONLY))
        expected = exactly([{"res": "pubsub:alerts/overdue", "act": ["publish"]}])

        evaluation = await a.evaluate_remote(OBJECT, tenant="default", destination=HOST_B)
        assert evaluation.admitted, evaluation.refusal
        assert evaluation.authority == expected
        assert [(d.capability, d.outcome) for d in evaluation.decisions] == [
            ("pubsub:alerts/overdue publish", "granted")
        ]
        assert await b.store.list("journal/") == []  # the dry run staged nothing

        await a.migrate(OBJECT, tenant="default", destination=HOST_B)
        moved = await b.get_object(OBJECT, tenant="default")
        assert moved.state is LifecycleState.ACTIVE
        assert moved.authority == expected
        assert moved.authority.permits("pubsub:alerts/overdue", "publish")
        assert not moved.authority.permits("pubsub:alerts/other", "publish")
        assert not moved.authority.permits("invoke:payments/charge", "invoke")

        # B is the leaf grant's audience and attenuates on rehost: a child grant, recorded.
        assert len(moved.grants) == 2
        chain = verify_chain(moved.grants, object_id=OBJECT, trust=b.trust, at=b.clock.now())
        assert chain.leaf.issuer == HOST_B
        assert chain.capabilities == expected.allow
        kinds = [e.kind for e in moved.lineage.entries]
        assert kinds[-2:] == [EntryKind.REHOSTED, EntryKind.ATTENUATED]
        verify_lineage(moved.lineage, object_id=OBJECT, trust=b.trust, sealed=False)

    asyncio.run(_serve(policy_world, scenario))


def test_the_offline_dry_run_gives_the_same_answer(policy_world: World, tmp_path: Path) -> None:
    """`gateway export` on A and `gateway admit --dry-run` on B, as an operator would."""

    async def setup(hosts: dict[str, Host]) -> None:
        await create(hosts[HOST_A], grant(OVERDUE_ONLY))

    asyncio.run(_serve(policy_world, setup, [HOST_A]))
    proposal = tmp_path / "proposal.json"
    exported = run_cli(
        "export",
        OBJECT,
        "--to",
        HOST_B,
        "--dry-run",
        "--out",
        str(proposal),
        config=policy_world.config(HOST_A),
        columns=None,
        timeout=None,
    )
    assert exported.returncode == 0, exported.stderr
    admitted = run_cli(
        "admit", "--dry-run", str(proposal), config=policy_world.config(HOST_B), timeout=None
    )
    assert admitted.returncode == 0, admitted.stderr
    assert "would admit" in admitted.stdout
    assert "pubsub:alerts/overdue publish" in admitted.stdout
    assert "effective: pubsub:alerts/overdue publish" in admitted.stdout

    async def nothing_staged(hosts: dict[str, Host]) -> None:
        assert await hosts[HOST_B].store.list("journal/") == []
        assert (
            await hosts[HOST_A].get_object(OBJECT, tenant="default")
        ).state is LifecycleState.ACTIVE

    asyncio.run(_serve(policy_world, nothing_staged))


@pytest.mark.parametrize(
    ("constraints", "reason"),
    [
        ({"hosts": ["spiffe://org-a.example/*"]}, "hosts constraint does not include"),
        ({"regions": ["eu-west"]}, "regions constraint does not include 'eu-central'"),
        ({"max_hops": 0}, "max_hops constraint allows 0"),
    ],
    ids=["host-not-allowed", "region-not-allowed", "no-hops-left"],
)
def test_constraints_refuse_the_host_and_nothing_moves(
    policy_world: World, constraints: dict[str, object], reason: str
) -> None:
    async def scenario(hosts: dict[str, Host]) -> None:
        a, b = hosts[HOST_A], hosts[HOST_B]
        spec = grant(OVERDUE_ONLY)
        claim = {**spec.constraints.to_claim(), **constraints}
        spec = GrantSpec(
            audience=spec.audience,
            valid_for=spec.valid_for,
            capabilities=spec.capabilities,
            constraints=Constraints.from_claim(claim),
        )
        await create(a, spec)
        evaluation = await a.evaluate_remote(OBJECT, tenant="default", destination=HOST_B)
        assert not evaluation.admitted
        assert reason in evaluation.refusal
        with pytest.raises(AdmissionDeniedError) as refused:
            await a.migrate(OBJECT, tenant="default", destination=HOST_B)
        assert reason in str(refused.value)
        obj = await a.get_object(OBJECT, tenant="default")
        assert obj.state is LifecycleState.ACTIVE
        assert await b.store.list("t/") == []

    asyncio.run(_serve(policy_world, scenario))


def test_hop_limit_counts_every_handoff(policy_world: World) -> None:
    async def scenario(hosts: dict[str, Host]) -> None:
        a, b = hosts[HOST_A], hosts[HOST_B]
        await create(a, grant(OVERDUE_ONLY, max_hops=1))
        await a.migrate(OBJECT, tenant="default", destination=HOST_B)
        with pytest.raises(AdmissionDeniedError, match="max_hops"):
            await b.migrate(OBJECT, tenant="default", destination=HOST_A)
        assert (await b.get_object(OBJECT, tenant="default")).state is LifecycleState.ACTIVE

    asyncio.run(_serve(policy_world, scenario))


def test_object_created_outside_its_own_constraints_is_refused(policy_world: World) -> None:
    async def scenario(hosts: dict[str, Host]) -> None:
        spec = GrantSpec(
            audience=None,
            valid_for=timedelta(days=1),
            capabilities=CapabilitySet(),
            constraints=Constraints.from_claim({"hosts": ["spiffe://org-b.example/*"]}),
        )
        with pytest.raises(AdmissionDeniedError):
            await create(hosts[HOST_A], spec)
        assert await hosts[HOST_A].store.list("t/") == []

    asyncio.run(_serve(policy_world, scenario, [HOST_A]))


def test_host_policy_narrows_and_denies(tmp_path: Path) -> None:
    """A ceiling for the peer's domain narrows; a denial removes; the dry run says which."""
    world = build_world(
        tmp_path,
        [
            HostSpec(host_id=HOST_A, handoff=FAST_HANDOFF, policy=WIDE_OFFERS),
            HostSpec(
                host_id=HOST_B,
                handoff=FAST_HANDOFF,
                policy={
                    **WIDE_OFFERS,
                    "ceilings": [
                        {
                            "peer": "org-a.example",
                            "allow": [{"resource": "pubsub:alerts/*", "actions": ["publish"]}],
                        }
                    ],
                    "deny": [{"resource": "pubsub:alerts/secret", "actions": ["publish"]}],
                },
            ),
        ],
    )

    async def scenario(hosts: dict[str, Host]) -> None:
        a, b = hosts[HOST_A], hosts[HOST_B]
        wide = [
            {"resource": "pubsub:*", "actions": ["publish"]},
            {"resource": "invoke:payments/charge", "actions": ["invoke"]},
        ]
        await create(a, grant(wide))
        evaluation = await a.evaluate_remote(OBJECT, tenant="default", destination=HOST_B)
        outcomes = {d.capability: (d.outcome, d.reason) for d in evaluation.decisions}
        assert outcomes["pubsub:* publish"][0] == "narrowed"
        assert "org-a.example" in outcomes["pubsub:* publish"][1]
        assert outcomes["invoke:payments/charge invoke"][0] == "denied"
        await a.migrate(OBJECT, tenant="default", destination=HOST_B)
        moved = await b.get_object(OBJECT, tenant="default")
        assert moved.authority.permits("pubsub:alerts/overdue", "publish")
        assert not moved.authority.permits("pubsub:alerts/secret", "publish")
        assert not moved.authority.permits("pubsub:orders/new", "publish")
        assert not moved.authority.permits("invoke:payments/charge", "invoke")
        moved.authority.require_within(
            EffectiveAuthority(allow=CapabilitySet.from_config(wide, "test"))
        )

    asyncio.run(_serve(world, scenario))


async def _serve(world: World, scenario, hosts: list[str] | None = None) -> None:  # type: ignore[no-untyped-def]
    async with serving(world, hosts) as opened:
        await scenario(opened)


def test_attenuation_that_cannot_happen_never_blocks_activation(policy_world: World) -> None:
    """B attenuates arriving objects, but this chain allows no delegation (max_depth 0):
    once A has committed, B must make the object live anyway, unattenuated.
    (Regression: activation used to raise, leaving the object live nowhere.)"""

    async def scenario(hosts: dict[str, Host]) -> None:
        a, b = hosts[HOST_A], hosts[HOST_B]
        await create(a, grant(OVERDUE_ONLY, max_depth=0))
        await a.migrate(OBJECT, tenant="default", destination=HOST_B)
        moved = await b.get_object(OBJECT, tenant="default")
        assert moved.state is LifecycleState.ACTIVE
        assert len(moved.grants) == 1
        assert EntryKind.ATTENUATED not in [e.kind for e in moved.lineage.entries]

    asyncio.run(_serve(policy_world, scenario))
