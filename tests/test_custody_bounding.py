"""ADR 0010 step 1: every departure commits to the custody before it, and receivers check it.

A history made by real hosts (in this process, real mTLS and SQLite): A creates, B takes
it, C holds it and is the presenter. C signs its own next departure, so it may write any
commitment and hop number there; each forgery below (a commitment over a history with a
handoff hidden, reordered, altered or invented; a wrong hop count; a departure of the
earlier format after committed ones) must be refused by the receiver's checks, as
Prepare runs them, with a CustodyError naming what was wrong. Objects whose checkpoints
were written before this change (no commitment) still migrate, and their next departure
commits to the chain recomputed from the first handoff.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from gateway import _custody_chain as custody_chain
from gateway import custody
from gateway import envelope as dsse
from gateway._time import SystemClock
from gateway.audit import ARCHIVE_PAYLOAD_TYPE, Status, archive_of, audit
from gateway.custody import verify_custody
from gateway.errors import CustodyError, LineageError
from gateway.host import Host
from gateway.keyring import load_keyring
from gateway.keys import Signer
from gateway.lineage import Checkpoint, Lineage, verify_lineage
from gateway.model import GovernedObject
from gateway.testing import HostSpec, World, build_world, serving
from gateway.trust import TrustStore
from tests.conftest import FAST_HANDOFF, HOST_A, HOST_B

HOST_C = "spiffe://org-c.example/cluster/one/gateway"
HOST_D = "spiffe://org-d.example/cluster/one/gateway"
OBJECT = "obj://org-a.example/billing/invoice-9"


@dataclass(frozen=True)
class History:
    at_c: GovernedObject  #: the object as C holds it after A -> B -> C
    trust: TrustStore
    signer: Signer  #: C's envelope key
    b_signer: Signer  #: B's envelope key (a dishonest B colluding with C)
    world: World
    at: datetime


def _world(directory: Path) -> list[HostSpec]:
    policy = {"offers": [{"resource": "pubsub:*", "actions": ["publish"]}]}
    return [
        HostSpec(host_id=h, handoff=FAST_HANDOFF, policy=policy) for h in (HOST_A, HOST_B, HOST_C)
    ]


async def _create_and_move_to_c(hosts: dict[str, Host]) -> None:
    """OBJECT created on A, then moved A -> B -> C."""
    await hosts[HOST_A].create_object(
        OBJECT,
        tenant="default",
        data=json.dumps({"n": 1}).encode(),
        content_type="application/json",
    )
    await hosts[HOST_A].migrate(OBJECT, tenant="default", destination=HOST_B)
    await hosts[HOST_B].migrate(OBJECT, tenant="default", destination=HOST_C)


async def _three_hosts(world: World) -> History:
    async with serving(world) as hosts:
        await _create_and_move_to_c(hosts)
        at_c = await hosts[HOST_C].get_object(OBJECT, tenant="default")
        return History(
            at_c=at_c,
            trust=hosts[HOST_C].trust,
            signer=hosts[HOST_C].context.signer,
            b_signer=hosts[HOST_B].context.signer,
            world=world,
            at=at_c.lineage.entries[-1].time + timedelta(seconds=1),
        )


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    directory = tmp_path_factory.mktemp("bounding")
    # Built outside the event loop: creating the stores runs a loop of its own.
    return asyncio.run(_three_hosts(build_world(directory, _world(directory))))


def _payloads(lineage: Lineage) -> tuple[list[bytes], list[bytes]]:
    return [c.payload for c in lineage.checkpoints], [a.payload for a in lineage.arrivals]


def seal_as_c(
    history: History,
    *,
    commitment: Callable[[Lineage], bytes] | None = None,
    hops: int | None = None,
) -> Lineage:
    """C freezes the object for D and signs its departure as the source does, except that
    the commitment and hop number are what ``commitment`` / ``hops`` say (None: honest;
    ``hops=0`` with no commitment: a checkpoint of the earlier format)."""
    obj = history.at_c
    frozen = obj.freeze("mig-forged", destination=HOST_D, host=HOST_C, at=history.at)
    lineage = frozen.lineage
    honest = lineage.sealed(
        object_id=OBJECT,
        host=HOST_C,
        epoch=frozen.epoch,
        at=history.at,
        signer=history.signer,
        to=HOST_D,
        migration="mig-forged",
    )
    if commitment is None and hops is None:
        return honest
    genuine = Checkpoint.decode(honest.checkpoints[-1].payload)
    forged = replace(
        genuine,
        custody=commitment(lineage) if commitment is not None else genuine.custody,
        hops=hops if hops is not None else genuine.hops,
    )
    signed = dsse.seal(forged.encode(), dsse.PayloadType.CHECKPOINT, [history.signer])
    return Lineage(
        entries=lineage.entries,
        checkpoints=(*lineage.checkpoints, signed),
        arrivals=lineage.arrivals,
        base=lineage.base,
    )


def receive(lineage: Lineage, history: History) -> int:
    """What a receiver (D) establishes: verify_lineage then verify_custody, as Prepare."""
    verified = verify_lineage(lineage, object_id=OBJECT, trust=history.trust, sealed=True)
    found = verify_custody(
        lineage, verified.checkpoints, object_id=OBJECT, trust=history.trust, in_transit=True
    )
    return found.hops


def test_every_departure_commits_to_the_handoffs_before_it(history: History) -> None:
    lineage = history.at_c.lineage
    departures, arrivals = _payloads(lineage)
    for index, raw in enumerate(departures):
        checkpoint = Checkpoint.decode(raw)
        assert checkpoint.hops == index + 1
        expected = custody_chain.commitment(OBJECT, departures[:index], arrivals[:index])
        assert checkpoint.custody == expected, f"departure {index}"
    assert receive(seal_as_c(history), history) == 3


def _hidden(lineage: Lineage) -> bytes:
    departures, arrivals = _payloads(lineage)
    return custody_chain.commitment(OBJECT, departures[:1], arrivals[:1])


def _reordered(lineage: Lineage) -> bytes:
    departures, arrivals = _payloads(lineage)
    return custody_chain.commitment(OBJECT, departures[::-1], arrivals[::-1])


def _altered(lineage: Lineage) -> bytes:
    departures, arrivals = _payloads(lineage)
    changed = departures[0].replace(HOST_B.encode(), HOST_D.encode())
    assert changed != departures[0]
    return custody_chain.commitment(OBJECT, [changed, *departures[1:]], arrivals)


def _invented(lineage: Lineage) -> bytes:
    departures, arrivals = _payloads(lineage)
    return custody_chain.commitment(
        OBJECT, [*departures, departures[-1]], [*arrivals, arrivals[-1]]
    )


def _other_object(lineage: Lineage) -> bytes:
    departures, arrivals = _payloads(lineage)
    return custody_chain.commitment(OBJECT + "-2", departures, arrivals)


@dataclass(frozen=True)
class Case:
    name: str
    reason: str
    commitment: Callable[[Lineage], bytes] | None
    hops: int | None
    mentions: str


CASES = [
    Case(
        "hidden", "C commits to a history without B's handoff", _hidden, None, "commits to custody"
    ),
    Case(
        "reordered",
        "C commits to the handoffs in the other order",
        _reordered,
        None,
        "commits to custody",
    ),
    Case(
        "altered",
        "C commits to a handoff with a changed receiver",
        _altered,
        None,
        "commits to custody",
    ),
    Case("invented", "C commits to an extra handoff", _invented, None, "commits to custody"),
    Case(
        "other-object",
        "C replays another object's chain",
        _other_object,
        None,
        "commits to custody",
    ),
    Case("hops-lowered", "C counts itself as the first hop", None, 1, "counts 1 hops; it is hop 3"),
    Case("hops-raised", "C counts a hop too many", None, 4, "counts 4 hops; it is hop 3"),
    Case("downgraded", "C writes an earlier-format departure", lambda _: b"", 0, "downgraded"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_false_commitment_in_the_presenters_own_departure_is_refused(
    history: History, case: Case
) -> None:
    custody.forget_verified_arrivals()
    forged = seal_as_c(history, commitment=case.commitment, hops=case.hops)
    with pytest.raises(CustodyError) as refused:
        receive(forged, history)
    assert case.mentions in str(refused.value), f"{case.reason}: {refused.value}"
    # Refused the same way when the earlier arrivals are remembered as verified: the
    # memory continues the chain from the commitment it recorded, it does not skip it.
    receive(seal_as_c(history), history)
    hits = custody.VERIFIED_ARRIVALS.hits
    with pytest.raises(CustodyError) as again:
        receive(forged, history)
    assert custody.VERIFIED_ARRIVALS.hits == hits + 1, "the earlier arrivals were remembered"
    assert str(again.value) == str(refused.value)


def test_an_earlier_departure_re_signed_by_its_own_sender_is_refused(history: History) -> None:
    """B (dishonest, colluding with C) re-signs its own departure with B's valid key. A
    false commitment or hop number there is refused at B's departure; a departure whose
    commitment is right but whose bytes differ from what C's departure committed to is
    refused at C's: each later departure pins the bytes of the one before it."""
    lineage = seal_as_c(history)
    assert receive(lineage, history) == 3
    b_departure = Checkpoint.decode(lineage.checkpoints[1].payload)
    cases: list[tuple[Checkpoint, str]] = [
        (replace(b_departure, custody=bytes(32)), "departure 1 of"),
        (replace(b_departure, hops=5), "counts 5 hops; it is hop 2"),
        (
            replace(b_departure, issued_at=b_departure.issued_at + timedelta(milliseconds=1)),
            "departure 2 of",
        ),
    ]
    for forged, mentions in cases:
        signed = dsse.seal(forged.encode(), dsse.PayloadType.CHECKPOINT, [history.b_signer])
        tampered = replace(
            lineage, checkpoints=(lineage.checkpoints[0], signed, *lineage.checkpoints[2:])
        )
        custody.forget_verified_arrivals()
        with pytest.raises(CustodyError) as refused:
            receive(tampered, history)
        assert mentions in str(refused.value), str(refused.value)


def _exported_by_c(history: History, lineage: Lineage) -> bytes:
    """C's signed archive of its copy with ``lineage`` (what `object show --export` writes)."""
    obj = history.at_c
    payload = archive_of(
        object_id=obj.object_id,
        tenant=obj.tenant,
        holder=HOST_C,
        state=obj.state.value,
        epoch=obj.epoch,
        exported_at=history.at,
        grants=obj.grants,
        lineage=lineage,
    )
    return dsse.to_json(dsse.seal(payload, ARCHIVE_PAYLOAD_TYPE, [history.signer]))


def test_the_offline_verifier_checks_the_commitments(history: History) -> None:
    """`gateway verify`'s library (gateway.audit) with only the three bundles: the genuine
    export verifies; one whose B departure was re-signed by B with a false commitment
    fails the custody check, naming the commitment."""
    now = SystemClock().now()
    bundles = [
        (f"{d}.json", load_keyring(history.world.directory / d / "keys").export(now))
        for d in ("org-a.example", "org-b.example", "org-c.example")
    ]
    genuine = audit(_exported_by_c(history, history.at_c.lineage), bundles, now=now)
    assert genuine.ok, genuine.checks
    lineage = history.at_c.lineage
    b_departure = Checkpoint.decode(lineage.checkpoints[1].payload)
    forged = dsse.seal(
        replace(b_departure, custody=bytes(32)).encode(),
        dsse.PayloadType.CHECKPOINT,
        [history.b_signer],
    )
    custody.forget_verified_arrivals()
    tampered = replace(lineage, checkpoints=(lineage.checkpoints[0], forged))
    report = audit(_exported_by_c(history, tampered), bundles, now=now)
    problems = {c.name: c.detail for c in report.checks if c.status is Status.FAILED}
    assert list(problems) == ["custody"], report.checks
    assert "departure 1 of" in problems["custody"] and "commits to custody" in problems["custody"]


@pytest.mark.parametrize("hops", [0, 2**40 + 1, 10**30])
def test_a_hop_number_out_of_bounds_does_not_decode(history: History, hops: int) -> None:
    genuine = Checkpoint.decode(history.at_c.lineage.checkpoints[-1].payload)
    raw = replace(genuine, hops=hops).encode()
    with pytest.raises(LineageError, match="hops"):
        Checkpoint.decode(raw)


def test_an_object_with_checkpoints_of_the_earlier_format_still_migrates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A -> B -> C with hosts that write no commitment (the code before ADR 0010), then C
    -> D with today's code: D accepts the old evidence as full evidence, and C's new
    departure commits to the chain recomputed from the first handoff."""

    world = build_world(
        tmp_path,
        [
            *_world(tmp_path),
            HostSpec(
                host_id=HOST_D,
                handoff=FAST_HANDOFF,
                policy={"offers": [{"resource": "pubsub:*", "actions": ["publish"]}]},
            ),
        ],
    )

    async def main() -> None:
        async with serving(world) as hosts:
            with monkeypatch.context() as old_code:
                old_code.setattr(Lineage, "_custody_commitment", lambda self, object_id: (b"", 0))
                await _create_and_move_to_c(hosts)
            at_c = await hosts[HOST_C].get_object(OBJECT, tenant="default")
            assert all(not Checkpoint.decode(c.payload).custody for c in at_c.lineage.checkpoints)
            custody.forget_verified_arrivals()
            await hosts[HOST_C].migrate(OBJECT, tenant="default", destination=HOST_D)
            at_d = await hosts[HOST_D].get_object(OBJECT, tenant="default")
            departures, arrivals = _payloads(at_d.lineage)
            newest = Checkpoint.decode(departures[-1])
            assert newest.hops == 3
            assert newest.custody == custody_chain.commitment(OBJECT, departures[:2], arrivals[:2])

    asyncio.run(main())
