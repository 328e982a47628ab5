"""The verified-prefix memory of gateway.lineage (VerifiedPrefixes): an object that comes
back opens only the checkpoints added since this process verified it, and anything that
differs from what was verified (a byte of a checkpoint, an entry, the trust store) is
verified afresh and refused exactly as without the memory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest

from gateway import envelope as dsse
from gateway import lineage as lineage_module
from gateway.errors import GatewayError
from gateway.keys import forget_verified_signatures
from gateway.lineage import (
    Lineage,
    VerifiedLineage,
    VerifiedPrefixes,
    forget_verified_prefixes,
    verify_extends,
    verify_lineage,
)
from gateway.trust import TrustStore
from tests.test_lineage import (
    HOST_A,
    HOST_A2,
    HOST_B,
    OBJECT,
    SIGNERS,
    TRUST,
    bundles,
    envelope_record,
    grow,
    hops,
    relink,
    seal,
    with_entries,
)


@pytest.fixture(autouse=True)
def cold() -> Iterator[None]:
    forget_verified_prefixes()
    forget_verified_signatures()
    yield
    forget_verified_prefixes()
    forget_verified_signatures()


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What verify_lineage opened (its ``what``: 'checkpoint N by ...' or the base)."""
    seen: list[str] = []
    real = lineage_module._open_signed

    def counting(envelope: dsse.Envelope, **kwargs: Any) -> bytes:
        seen.append(kwargs["what"])
        return real(envelope, **kwargs)

    monkeypatch.setattr(lineage_module, "_open_signed", counting)
    return seen


#: A -> B -> A2, every hop checkpointed (3 checkpoints, 7 entries).
BEFORE = hops((HOST_A, 3), (HOST_B, 2), (HOST_A2, 2))


def one_more_hop(lineage: Lineage, host: str = HOST_B) -> Lineage:
    """The object back at ``host`` for one more stay, checkpointed when it leaves."""
    epoch = lineage.entries[-1].epoch
    grown = grow(lineage, host, 3, epoch=epoch, freeze_last=True)
    return seal(grown, host, epoch=grown.entries[-1].epoch)


AFTER = one_more_hop(BEFORE)


def cold_verify(lineage: Lineage, trust: TrustStore = TRUST) -> VerifiedLineage:
    memory = lineage_module.VERIFIED_PREFIXES
    lineage_module.VERIFIED_PREFIXES = VerifiedPrefixes(objects=8, checkpoints=64)
    try:
        return verify_lineage(lineage, object_id=OBJECT, trust=trust, sealed=True)
    finally:
        lineage_module.VERIFIED_PREFIXES = memory


def test_an_object_that_comes_back_opens_only_its_new_checkpoints(opened: list[str]) -> None:
    verify_lineage(BEFORE, object_id=OBJECT, trust=TRUST, sealed=True)
    assert len(opened) == 3
    opened.clear()

    again = verify_lineage(AFTER, object_id=OBJECT, trust=TRUST, sealed=True)

    assert opened == [f"checkpoint 3 by {HOST_B} of {OBJECT}"]
    # The same result as a process that never saw the object.
    assert again == cold_verify(AFTER)
    assert lineage_module.VERIFIED_PREFIXES.hits == 1


def test_the_tree_head_of_a_departure_is_known_to_verify_extends_without_a_rebuild() -> None:
    verify_lineage(AFTER, object_id=OBJECT, trust=TRUST, sealed=True)
    seen = len(BEFORE)
    assert AFTER._log.heads[seen] == BEFORE.root()
    verify_extends(AFTER, seen_size=seen, seen_root=BEFORE.root())
    with pytest.raises(GatewayError, match="does not extend"):
        verify_extends(AFTER, seen_size=seen, seen_root=bytes(32))


def _resigned_checkpoint(lineage: Lineage) -> Lineage:
    """Checkpoint 1 (B's) with a signature over other bytes: its payload is unchanged."""
    genuine = lineage.checkpoints[1]
    bad = dsse.seal(genuine.payload + b" ", genuine.payload_type, [SIGNERS[HOST_B]])
    forged = replace(genuine, signatures=bad.signatures)
    return replace(lineage, checkpoints=(lineage.checkpoints[0], forged, *lineage.checkpoints[2:]))


def _edited_entry(lineage: Lineage) -> Lineage:
    """Entry 4 (B's) edited and every later link redone; the new checkpoint signed over it."""
    edited = list(lineage.entries[: len(BEFORE)])
    edited[4] = replace(edited[4], detail="rewritten")
    prefix = with_entries(BEFORE, relink(edited))
    return one_more_hop(prefix)


def _revoked_b() -> TrustStore:
    return bundles({"org-b.example": [envelope_record(SIGNERS[HOST_B], HOST_B, revoked=True)]})


@dataclass(frozen=True)
class Case:
    name: str
    lineage: Callable[[], Lineage]
    trust: Callable[[], TrustStore]


CASES = [
    Case("a remembered checkpoint re-signed", lambda: _resigned_checkpoint(AFTER), lambda: TRUST),
    Case("a remembered entry edited, links redone", lambda: _edited_entry(AFTER), lambda: TRUST),
    Case("a key of a remembered checkpoint revoked since", lambda: AFTER, _revoked_b),
    Case(
        "a remembered checkpoint dropped",
        lambda: replace(AFTER, checkpoints=AFTER.checkpoints[1:]),
        lambda: TRUST,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_prefix_that_differs_in_anything_is_verified_afresh_and_refused(case: Case) -> None:
    verify_lineage(BEFORE, object_id=OBJECT, trust=TRUST, sealed=True)
    lineage, trust = case.lineage(), case.trust()
    with pytest.raises(GatewayError) as without_memory:
        cold_verify(lineage, trust)

    with pytest.raises(GatewayError) as with_memory:
        verify_lineage(lineage, object_id=OBJECT, trust=trust, sealed=True)

    assert type(with_memory.value) is type(without_memory.value)
    assert with_memory.value.reason == without_memory.value.reason
    assert lineage_module.VERIFIED_PREFIXES.hits == 0


def test_the_memory_is_bounded_by_objects_and_by_checkpoints() -> None:
    memory = VerifiedPrefixes(objects=2, checkpoints=5)
    lineage_module.VERIFIED_PREFIXES, saved = memory, lineage_module.VERIFIED_PREFIXES
    try:
        # One state per (object, trust store): three stores, as three hosts would hold.
        stores = [bundles() for _ in range(3)]
        for trust in stores:
            verify_lineage(BEFORE, object_id=OBJECT, trust=trust, sealed=True)
        assert memory.sizes() == (1, 3)  # two states of 3 checkpoints would be 6 > 5
        verify_lineage(AFTER, object_id=OBJECT, trust=stores[2], sealed=True)
        assert memory.sizes() == (1, 4)  # the newer state of the same pair replaced it
        assert memory.hits == 1
    finally:
        lineage_module.VERIFIED_PREFIXES = saved
