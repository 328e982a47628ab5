"""gateway.custody on a real three-hop history: hops and kept narrowings come from what
other hosts signed, and no rewrite of the presenter's own records lowers them.

The history is made once by real hosts (in this process, real mTLS and SQLite): A creates,
B narrows on arrival, then C holds the object; C is the presenter whose records are
tampered with. Every case is checked against ``verify_lineage`` + ``verify_custody`` +
``require_extends_departures`` as the destination runs them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import custody
from gateway.authority import CapabilitySet, Constraints
from gateway.credentials import issue_grant, verify_chain
from gateway.custody import require_extends_departures, verify_custody
from gateway.errors import GatewayError
from gateway.keys import Signer
from gateway.lineage import Checkpoint, credentials_digest, verify_lineage
from gateway.model import GovernedObject
from gateway.objectspec import GrantSpec
from gateway.testing import HostSpec, build_world, rewrite_own_entries, serving
from gateway.trust import TrustStore
from tests.conftest import FAST_HANDOFF, HOST_A, HOST_B

HOST_C = "spiffe://org-c.example/cluster/one/gateway"
HOST_D = "spiffe://org-d.example/cluster/one/gateway"
OBJECT = "obj://org-a.example/billing/invoice-7"


@dataclass(frozen=True)
class History:
    at_c: GovernedObject  #: the object as C holds it after A -> B -> C
    trust: TrustStore  #: what a fourth host trusts (every domain)
    renew: Callable[[bytes], str]  #: a renewal root by A naming the given chain digest
    signer: Signer  #: C's envelope key: the presenter signs its own departure
    at: datetime  #: when C sends it on


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    directory: Path = tmp_path_factory.mktemp("custody")
    world = build_world(
        directory,
        [
            HostSpec(
                host_id=HOST_A,
                handoff=FAST_HANDOFF,
                policy={"offers": [{"resource": "pubsub:*", "actions": ["publish"]}]},
            ),
            HostSpec(
                host_id=HOST_B,
                handoff={**FAST_HANDOFF, "attenuate_on_rehost": True},
                policy={"offers": [{"resource": "pubsub:alerts/overdue", "actions": ["publish"]}]},
            ),
            HostSpec(
                host_id=HOST_C,
                handoff=FAST_HANDOFF,
                policy={"offers": [{"resource": "pubsub:*", "actions": ["publish"]}]},
            ),
        ],
    )

    async def main() -> History:
        async with serving(world) as hosts:
            a = hosts[HOST_A]
            await a.create_object(
                OBJECT,
                tenant="default",
                data=json.dumps({"n": 1}).encode(),
                content_type="application/json",
                grant=GrantSpec(
                    audience=("spiffe://org-b.example", "spiffe://org-c.example"),
                    valid_for=timedelta(days=1),
                    capabilities=CapabilitySet.from_config(
                        [{"resource": "pubsub:alerts/*", "actions": ["publish"]}], "test"
                    ),
                    constraints=Constraints.from_claim({}),
                ),
            )
            await a.migrate(OBJECT, tenant="default", destination=HOST_B)
            await hosts[HOST_B].migrate(OBJECT, tenant="default", destination=HOST_C)
            at_c = await hosts[HOST_C].get_object(OBJECT, tenant="default")
            trust = hosts[HOST_C].trust

            def renew(names: bytes) -> str:
                chain = verify_chain(at_c.grants, object_id=OBJECT, trust=trust, at=a.clock.now())
                root = chain.grants[0]
                return issue_grant(
                    signer=a.context.grant_signer,
                    issuer=HOST_A,
                    subject=OBJECT,
                    audience=root.audiences,
                    capabilities=chain.capabilities,
                    constraints=root.constraints,
                    not_before=root.not_before,
                    expires_at=root.expires_at,
                    at=a.clock.now(),
                    replaces=names,
                ).compact

            renewals = {d: renew(d) for d in _digests(at_c)}
            return History(
                at_c=at_c,
                trust=trust,
                renew=lambda d: renewals[d],
                signer=hosts[HOST_C].context.signer,
                at=at_c.lineage.entries[-1].time + timedelta(seconds=1),
            )

    return asyncio.run(main())


def _digests(obj: GovernedObject) -> list[bytes]:
    return [credentials_digest(obj.grants[:n]) for n in range(len(obj.grants) + 1)]


def judge(obj: GovernedObject, history: History) -> int:
    """C freezes and seals ``obj`` for a fourth host, as the source does (its own
    checkpoint over whatever it presents), and the receiver checks it as Prepare does;
    returns the hop count, or raises."""
    at = history.at
    frozen = obj.freeze("mig-forged", destination=HOST_D, host=HOST_C, at=at)
    sealed = frozen.lineage.sealed(
        object_id=OBJECT,
        host=HOST_C,
        epoch=frozen.epoch,
        at=at,
        signer=history.signer,
        to=HOST_D,
        migration="mig-forged",
    )
    trust = history.trust
    verified = verify_lineage(sealed, object_id=OBJECT, trust=trust, sealed=True)
    custody = verify_custody(
        sealed, verified.checkpoints, object_id=OBJECT, trust=trust, in_transit=True
    )
    chain = verify_chain(obj.grants, object_id=OBJECT, trust=trust, at=at) if obj.grants else None
    require_extends_departures(sealed, verified.checkpoints, frozen.grants, chain, object_id=OBJECT)
    return custody.hops


def own_cut(obj: GovernedObject) -> int:
    return Checkpoint.decode(obj.lineage.checkpoints[-1].payload).size


def relinked(obj: GovernedObject, own: list[int]) -> GovernedObject:
    """The presenter's own entries (by index), in the given order, re-recorded with fresh
    links: the best forgery of its own history it can make."""
    cut = own_cut(obj)
    return rewrite_own_entries(obj, lambda entries: [entries[i - cut] for i in own])


def test_the_genuine_history_has_two_hops_and_keeps_b_narrowing(history: History) -> None:
    obj = history.at_c
    assert judge(obj, history) == 3
    assert len(obj.grants) == 2, "B attenuated on arrival"
    assert len(obj.lineage.arrivals) == 2 and len(obj.lineage.checkpoints) == 2


@dataclass(frozen=True)
class Case:
    name: str
    reason: str
    tamper: Callable[[History], GovernedObject]
    mentions: str


def _with(obj: GovernedObject, **lineage: object) -> GovernedObject:
    return replace(obj, lineage=replace(obj.lineage, **lineage))


CASES = [
    Case(
        "arrival-dropped",
        "C leaves out its own arrival receipt: a departure without its arrival",
        lambda h: _with(h.at_c, arrivals=h.at_c.lineage.arrivals[:1]),
        "3 departures and 1 arrivals",
    ),
    Case(
        "arrival-duplicated",
        "an arrival without a departure",
        lambda h: _with(h.at_c, arrivals=(*h.at_c.lineage.arrivals, h.at_c.lineage.arrivals[0])),
        "3 departures and 3 arrivals",
    ),
    Case(
        "arrivals-swapped",
        "receipts in the wrong order do not match their departures",
        lambda h: _with(h.at_c, arrivals=h.at_c.lineage.arrivals[::-1]),
        "arrival 0",
    ),
    Case(
        "own-rehosted-dropped",
        "C drops the REHOSTED entry it wrote itself",
        lambda h: relinked(
            h.at_c,
            [
                i
                for i in range(own_cut(h.at_c), len(h.at_c.lineage.entries))
                if h.at_c.lineage.entries[i].kind.value != "rehosted"
            ],
        ),
        "taking",
    ),
    Case(
        "b-departure-dropped",
        "C presents only A's departure (B's stay vanishes)",
        lambda h: _with(
            h.at_c, checkpoints=h.at_c.lineage.checkpoints[:1], arrivals=h.at_c.lineage.arrivals[:1]
        ),
        "",
    ),
    Case(
        "narrowing-stripped",
        "C presents the root alone: B's child grant is dropped",
        lambda h: replace(h.at_c, grants=h.at_c.grants[:1]),
        "do not extend the grants recorded",
    ),
    Case(
        "old-renewal",
        "a genuine renewal by A, but of the chain before B narrowed it",
        lambda h: replace(h.at_c, grants=(h.renew(credentials_digest(h.at_c.grants[:1])),)),
        "do not extend the grants recorded",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_tampered_custody_is_refused(history: History, case: Case) -> None:
    with pytest.raises(GatewayError) as refused:
        judge(case.tamper(history), history)
    assert case.mentions in str(refused.value), f"{case.reason}: {refused.value}"


def test_a_renewal_naming_the_recorded_chain_replaces_it(history: History) -> None:
    recorded = history.at_c.lineage.entries[own_cut(history.at_c) - 1].credentials_digest
    assert recorded == credentials_digest(history.at_c.grants)
    renewed = replace(history.at_c, grants=(history.renew(recorded),))
    # The presented grants no longer match what C's own entries recorded, which C may
    # rewrite; what counts is the departures that others signed.
    assert judge(renewed, history) == 3


@settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_no_rewrite_of_the_presenters_own_records_lowers_the_hop_count(
    history: History, data: st.DataObject
) -> None:
    """Whatever C does with what it wrote itself (its entries: any subset in any order; its
    arrivals and departures: any subsequence), the receiver either refuses or counts at
    least the three hops that other hosts signed for (two) plus this one."""
    obj = history.at_c
    own = list(range(own_cut(obj), len(obj.lineage.entries)))
    kept = data.draw(
        st.permutations(own).flatmap(lambda p: st.integers(0, len(p)).map(lambda n: p[:n]))
    )
    forged = relinked(obj, list(kept))
    arrivals = data.draw(st.lists(st.sampled_from(range(len(obj.lineage.arrivals))), max_size=3))
    checkpoints = data.draw(
        st.lists(st.sampled_from(range(len(obj.lineage.checkpoints))), max_size=3)
    )
    forged = _with(
        forged,
        arrivals=tuple(obj.lineage.arrivals[i] for i in arrivals),
        checkpoints=tuple(obj.lineage.checkpoints[i] for i in checkpoints),
    )
    try:
        hops = judge(forged, history)
    except GatewayError:
        return
    assert hops >= 3


def test_arrivals_checked_before_are_not_checked_again_unless_a_byte_differs(
    history: History, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The verified-arrival memory (custody.VerifiedArrivals): a second look at the same
    history checks no arrival again; a history whose arrivals differ is checked in full
    and refused as without the memory."""
    checked: list[int] = []
    real = custody._check_arrival

    def counting(lineage, departure, raw, index, object_id, trust):  # type: ignore[no-untyped-def]
        checked.append(index)
        real(lineage, departure, raw, index, object_id, trust)

    monkeypatch.setattr(custody, "_check_arrival", counting)
    custody.forget_verified_arrivals()
    assert judge(history.at_c, history) == 3
    assert checked == [0, 1]
    checked.clear()

    assert judge(history.at_c, history) == 3
    assert checked == []
    assert custody.VERIFIED_ARRIVALS.hits == 1

    swapped = _with(history.at_c, arrivals=history.at_c.lineage.arrivals[::-1])
    with pytest.raises(GatewayError, match="arrival 0"):
        judge(swapped, history)
    assert checked == [0]
    custody.forget_verified_arrivals()
