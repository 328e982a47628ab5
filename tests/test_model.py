"""Tests for gateway.model: the governed object's lifecycle as a state machine.

Legal moves (DESIGN.md §6)::

    ACTIVE --freeze--> FROZEN --tombstone--> MOVED
                       FROZEN --thaw-------> ACTIVE
    STAGED --rehost--> ACTIVE

Every other move raises ObjectStateError with a reason a person can read. The epoch goes
up by exactly one per freeze and never comes down; each recorded transition adds exactly
one lineage entry of the right kind with the digests after the transition.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest

from gateway import envelope as dsse
from gateway.errors import ConfigError, ObjectStateError
from gateway.keys import Signer
from gateway.lineage import EntryKind, credentials_digest, digest, verify_chain
from gateway.model import MAX_DATA_BYTES, GovernedObject, LifecycleState, new_object

#: Stands in for the destination's signed activation receipt (the model does not verify it).
ARRIVAL = dsse.Envelope(
    payload=b"receipt",
    payload_type=dsse.PayloadType.ACTIVATION_RECEIPT,
    signatures=(dsse.Signature(keyid="00" * 32, sig=b"s" * 64),),
)

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
HOST_A = "spiffe://org-a.example/cluster/east/gateway"
HOST_B = "spiffe://org-b.example/cluster/west/gateway"
OBJECT = "obj://org-a.example/billing/invoice-42"
DATA = b'{"invoice": 42, "amount": 1250}'
GRANTS = ("header.claims.signature",)
RECEIPT = dsse.seal(b"staged", dsse.PayloadType.STAGED_RECEIPT, [Signer.generate()])


def created() -> GovernedObject:
    return new_object(
        OBJECT,
        tenant="billing",
        data=DATA,
        content_type="application/json",
        host=HOST_A,
        at=T0,
        grants=GRANTS,
    )


def frozen(migration_id: str = "mig-1") -> GovernedObject:
    return created().freeze(migration_id, destination=HOST_B, host=HOST_A, at=T0)


def moved() -> GovernedObject:
    return frozen().tombstone("mig-1", moved_to=HOST_B, receipt=RECEIPT, transfer_digest=b"t" * 32)


def staged() -> GovernedObject:
    """What a destination holds after Prepare: the frozen object, not live."""
    return replace(frozen(), state=LifecycleState.STAGED)


# --- the legal transitions ------------------------------------------------------------


def test_new_object_is_active_with_one_created_entry() -> None:
    obj = created()
    assert obj.state is LifecycleState.ACTIVE and obj.live
    assert obj.epoch == 0 and obj.migration_id == "" and obj.moved_to == ""
    (entry,) = obj.lineage.entries
    assert entry.kind is EntryKind.CREATED
    assert entry.host == HOST_A and entry.time == T0 and entry.seq == 0 and entry.prev == b""
    assert entry.data_digest == digest(DATA) == obj.data_digest()
    assert entry.credentials_digest == credentials_digest(GRANTS) == obj.credentials_digest()
    assert entry.detail == "tenant billing"


def test_freeze_raises_the_epoch_by_one_and_records_frozen() -> None:
    before = created()
    after = before.freeze("mig-1", destination=HOST_B, host=HOST_A, at=T0 + timedelta(seconds=1))
    assert after.state is LifecycleState.FROZEN and after.live
    assert after.epoch == before.epoch + 1
    assert after.migration_id == "mig-1"
    assert after.lineage.entries[:-1] == before.lineage.entries
    entry = after.lineage.entries[-1]
    assert entry.kind is EntryKind.FROZEN and entry.epoch == 1 and entry.host == HOST_A
    assert entry.data_digest == digest(DATA) and entry.credentials_digest == credentials_digest(
        GRANTS
    )
    assert "mig-1" in entry.detail and HOST_B in entry.detail
    assert before.state is LifecycleState.ACTIVE, "values are immutable: the original is unchanged"


def test_thaw_resumes_with_the_epoch_kept_raised_and_records_aborted() -> None:
    before = frozen()
    after = before.thaw("mig-1", host=HOST_A, at=T0, reason="destination unreachable")
    assert after.state is LifecycleState.ACTIVE
    assert after.epoch == before.epoch == 1, "the fencing token never goes back"
    assert after.migration_id == ""
    assert after.lineage.entries[:-1] == before.lineage.entries
    entry = after.lineage.entries[-1]
    assert entry.kind is EntryKind.ABORTED and entry.epoch == 1
    assert "destination unreachable" in entry.detail


def test_tombstone_points_at_the_destination_and_keeps_the_lineage_a_prefix() -> None:
    before = frozen()
    after = before.tombstone("mig-1", moved_to=HOST_B, receipt=RECEIPT, transfer_digest=b"t" * 32)
    assert after.state is LifecycleState.MOVED and not after.live
    assert after.moved_to == HOST_B and after.receipt == RECEIPT
    assert after.migration_id == "mig-1" and after.last_transfer_digest == b"t" * 32
    # Deliberately no entry: the lineage that left was sealed at the freeze.
    assert after.lineage == before.lineage
    assert after.epoch == before.epoch


def test_rehost_makes_a_staged_copy_live_and_records_rehosted() -> None:
    before = staged()
    after = before.rehost(host=HOST_B, source=HOST_A, at=T0 + timedelta(seconds=2), arrival=ARRIVAL)
    assert after.state is LifecycleState.ACTIVE and after.live
    assert after.epoch == before.epoch == 1
    assert after.moved_to == "" and after.receipt is None
    assert after.migration_id == "", "a live object is in no migration"
    assert after.lineage.entries[:-1] == before.lineage.entries
    entry = after.lineage.entries[-1]
    assert entry.kind is EntryKind.REHOSTED and entry.host == HOST_B and entry.epoch == 1
    assert "mig-1" in entry.detail and HOST_A in entry.detail


def test_epoch_goes_up_by_exactly_one_per_freeze_across_many_handoffs() -> None:
    obj = created()
    for round_ in range(1, 6):
        obj = obj.freeze(f"mig-{round_}", destination=HOST_B, host=HOST_A, at=T0)
        assert obj.epoch == round_
        obj = obj.thaw(f"mig-{round_}", host=HOST_A, at=T0, reason="test")
        assert obj.epoch == round_
    verify_chain(obj.lineage.entries)
    kinds = [e.kind for e in obj.lineage.entries]
    assert kinds == [EntryKind.CREATED] + [EntryKind.FROZEN, EntryKind.ABORTED] * 5
    assert [e.epoch for e in obj.lineage.entries] == [0, *[n for n in range(1, 6) for _ in (0, 1)]]


def test_every_recorded_transition_adds_exactly_one_linked_entry() -> None:
    obj = created()
    steps: list[tuple[Callable[[GovernedObject], GovernedObject], EntryKind]] = [
        (lambda o: o.freeze("m1", destination=HOST_B, host=HOST_A, at=T0), EntryKind.FROZEN),
        (lambda o: o.thaw("m1", host=HOST_A, at=T0, reason="x"), EntryKind.ABORTED),
        (lambda o: o.freeze("m2", destination=HOST_B, host=HOST_A, at=T0), EntryKind.FROZEN),
        (lambda o: replace(o, state=LifecycleState.STAGED), EntryKind.FROZEN),  # no entry
        (
            lambda o: o.rehost(host=HOST_B, source=HOST_A, at=T0, arrival=ARRIVAL),
            EntryKind.REHOSTED,
        ),
    ]
    for step, kind in steps:
        after = step(obj)
        added = len(after.lineage) - len(obj.lineage)
        if after.state is LifecycleState.STAGED:
            assert added == 0
        else:
            assert added == 1
            assert after.lineage.entries[-1].kind is kind
            assert after.lineage.entries[-1].prev == obj.lineage.entries[-1].leaf_hash()
        obj = after
    verify_chain(obj.lineage.entries)


def test_recorded_digests_follow_the_data_and_credentials() -> None:
    obj = replace(created(), data=b'{"amount": 1}', grants=(*GRANTS, "child"))
    after = obj.freeze("mig-1", destination=HOST_B, host=HOST_A, at=T0)
    entry = after.lineage.entries[-1]
    assert entry.data_digest == digest(b'{"amount": 1}')
    assert entry.credentials_digest == credentials_digest((*GRANTS, "child"))
    assert entry.credentials_digest != credentials_digest(("child", *GRANTS)), "order matters"


# --- the illegal transitions ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Illegal:
    name: str
    reason: str
    start: Callable[[], GovernedObject]
    move: Callable[[GovernedObject], GovernedObject]
    says: str  #: what the error's reason must contain


def _freeze(o: GovernedObject) -> GovernedObject:
    return o.freeze("mig-2", destination=HOST_B, host=HOST_A, at=T0)


def _thaw(o: GovernedObject) -> GovernedObject:
    return o.thaw("mig-1", host=HOST_A, at=T0, reason="x")


def _tombstone(o: GovernedObject) -> GovernedObject:
    return o.tombstone("mig-1", moved_to=HOST_B, receipt=RECEIPT, transfer_digest=b"")


def _rehost(o: GovernedObject) -> GovernedObject:
    return o.rehost(host=HOST_B, source=HOST_A, at=T0, arrival=ARRIVAL)


ILLEGAL = [
    Illegal("freeze-frozen", "one migration at a time", frozen, _freeze, "it is frozen"),
    Illegal("freeze-moved", "a tombstone never moves again", moved, _freeze, "it is moved"),
    Illegal("freeze-staged", "a staged copy is not live", staged, _freeze, "it is staged"),
    Illegal("thaw-active", "nothing to resume", created, _thaw, "it is active"),
    Illegal("thaw-moved", "a committed handoff never un-commits", moved, _thaw, "it is moved"),
    Illegal("thaw-staged", "only the source resumes", staged, _thaw, "it is staged"),
    Illegal("thaw-other-migration", "abort only the migration that froze it",
            lambda: frozen("mig-other"), _thaw, "frozen by migration mig-other"),
    Illegal("tombstone-active", "commit needs a freeze first", created, _tombstone, "it is active"),
    Illegal("tombstone-moved", "commit once", moved, _tombstone, "it is moved"),
    Illegal("tombstone-staged", "the destination does not tombstone", staged, _tombstone, "it is staged"),
    Illegal("rehost-active", "a live copy is not activated twice", created, _rehost, "it is active"),
    Illegal("rehost-frozen", "the source side never rehosts", frozen, _rehost, "it is frozen"),
    Illegal("rehost-moved", "a tombstone never comes alive", moved, _rehost, "it is moved"),
]  # fmt: skip


@pytest.mark.parametrize("case", ILLEGAL, ids=lambda c: c.name)
def test_an_illegal_transition_raises_with_a_reason(case: Illegal) -> None:
    start = case.start()
    with pytest.raises(ObjectStateError) as caught:
        case.move(start)
    assert case.says in caught.value.reason
    assert OBJECT in caught.value.reason
    assert len(str(caught.value).splitlines()) == 1


def test_a_refusal_while_frozen_names_the_migration_and_what_to_do() -> None:
    with pytest.raises(ObjectStateError) as caught:
        _freeze(frozen())
    assert "mig-1" in caught.value.reason
    assert caught.value.hint and "wait" in caught.value.hint


# --- creating objects -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BadNew:
    name: str
    reason: str
    object_id: str = OBJECT
    tenant: str = "billing"
    data: bytes = DATA
    host: str = HOST_A
    says: str = ""


BAD_NEW = [
    BadNew("other-domain", "an object id is owned by its issuing trust domain",
           object_id="obj://org-b.example/billing/invoice-42", says="belongs to org-b.example"),
    BadNew("not-an-object-id", "a host id is not an object id",
           object_id="spiffe://org-a.example/billing/x", says="not a valid object id"),
    BadNew("uppercase-domain", "ids are checked when created",
           object_id="obj://Org-A.example/x", says="lowercase"),
    BadNew("tenant-uppercase", "tenant names are DNS labels", tenant="Billing", says="tenant"),
    BadNew("tenant-empty", "a tenant has a name", tenant="", says="tenant"),
    BadNew("tenant-slash", "no paths in tenant names", tenant="a/b", says="tenant"),
    BadNew("tenant-too-long", "at most 63 characters", tenant="a" * 64, says="tenant"),
    BadNew("tenant-trailing-dash", "DNS label rules", tenant="billing-", says="tenant"),
    BadNew("oversized", "data is bounded", data=b"x" * (MAX_DATA_BYTES + 1), says="bytes; at most"),
    BadNew("bad-host", "the recording host is a SPIFFE id", host="org-a.example", says="SPIFFE"),
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_NEW, ids=lambda c: c.name)
def test_new_object_refuses_bad_input(case: BadNew) -> None:
    with pytest.raises(ConfigError) as caught:
        new_object(
            case.object_id,
            tenant=case.tenant,
            data=case.data,
            content_type="application/json",
            host=case.host,
            at=T0,
        )
    assert case.says in caught.value.reason


def test_new_object_accepts_the_limits() -> None:
    obj = new_object(
        OBJECT,
        tenant="a" * 63,
        data=b"x" * MAX_DATA_BYTES,
        content_type="application/octet-stream",
        host=HOST_A,
        at=T0,
    )
    assert len(obj.data) == MAX_DATA_BYTES
    for tenant in ("a", "0", "billing-eu-1"):
        new_object(OBJECT, tenant=tenant, data=b"", content_type="text/plain", host=HOST_A, at=T0)


def test_an_object_of_the_same_domain_may_be_created_by_any_of_its_hosts() -> None:
    obj = new_object(
        OBJECT,
        tenant="billing",
        data=DATA,
        content_type="application/json",
        host="spiffe://org-a.example/cluster/west/gateway",
        at=T0,
    )
    assert obj.lineage.entries[0].host.endswith("/west/gateway")
