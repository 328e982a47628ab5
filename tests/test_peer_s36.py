"""A dishonest peer's history, session 36: who created the object, and a host handing an
object to itself.

Each variant is built as tests/test_archive_differential_s35.py builds its own: every
entry re-linked and every checkpoint, receipt and base re-signed by the host it names,
so only the rule under test can refuse it.

1. The base names the object's creator (entry 0's host). Both verifiers compare it with
   the host that recorded entry 0 wherever that is verifiable: the receiver with the
   sender of the first departure when it is carried (the creator signs it), the offline
   verifier with entry 0 itself. With handoffs archived neither entry 0 nor the first
   departure is carried, and the receiver can only check the creator's domain
   (docs/lineage.md, "Who created the object").
2. A departure names a receiver other than its sender: ``from == to`` is no handoff.
   The honest paths never write one: the source refuses to freeze an object for itself
   (gateway.handoff.source ``_freeze``; tests/test_cli.py
   ``test_migrate_to_itself_is_refused``), and every departure is sealed there.
3. Found checking what rests on the creator: where a holder may cut
   (``archive.compaction_cut``) took the creator for the holder before the oldest
   carried departure even with handoffs archived, so a creator holding its object again
   could sign a base inside another host's stay, which every receiver refuses.
"""

from __future__ import annotations

import copy
import random
from datetime import timedelta

import pytest

from gateway.archive import CustodySegment, compact_custody, compaction_cut, verify_archived
from gateway.custody import forget_verified_arrivals
from gateway.errors import LineageError
from gateway.lineage import Checkpoint, archived_before, forget_verified_prefixes, verify_lineage
from tests.test_archive_differential_s35 import (
    PLANS,
    Plan,
    build,
    honest_plan,
    judge,
    self_handoff,
)
from tests.test_lineage import HOST_A, HOST_A2, OBJECT, SIGNERS, T0, TRUST

SEED_CUT = 36


def _receiver(plan: Plan) -> None:
    forget_verified_prefixes()
    forget_verified_arrivals()
    lineage, _archive = build(plan)
    verify_lineage(lineage, object_id=OBJECT, trust=TRUST, sealed=plan.in_transit)


def _offline(plan: Plan) -> None:
    forget_verified_prefixes()
    forget_verified_arrivals()
    lineage, archive = build(plan)
    verify_archived(archive, lineage, object_id=OBJECT, trust=TRUST, sealed=plan.in_transit)


def _other_creator(name: str) -> Plan:
    plan = copy.deepcopy(PLANS[name])
    plan.base_changes["creator"] = HOST_A2  # a host of the owning domain, not entry 0's
    return plan


def _handoffs_archived(plan: Plan) -> bool:
    _lineage, archive = build(plan)
    return any(isinstance(s, CustodySegment) for s in archive)


@pytest.mark.parametrize("name", sorted(PLANS))
def test_a_base_naming_another_creator_is_refused_offline(name: str) -> None:
    with pytest.raises(LineageError) as refused:
        _offline(_other_creator(name))
    assert HOST_A2 in str(refused.value) and "creator" in str(refused.value)
    assert HOST_A in str(refused.value)


def test_the_receiver_refuses_another_creator_where_the_first_departure_is_carried() -> None:
    """Every handoff carried: the first departure is the creator's, signed by it, so a
    base naming another host is refused by name (before: a key error for a host that
    did not sign)."""
    plan = _other_creator("entries-only")
    assert not _handoffs_archived(plan)
    with pytest.raises(LineageError, match=r"names .* as the creator") as refused:
        _receiver(plan)
    assert HOST_A2 in str(refused.value) and HOST_A in str(refused.value)


@pytest.mark.parametrize("name", sorted(n for n in PLANS if n != "entries-only"))
def test_the_receiver_cannot_see_another_creator_once_handoffs_are_archived(name: str) -> None:
    """The residual risk docs/lineage.md names: entry 0 and the first departure are both
    archived, so nothing the object carries stands for entry 0. Pinned so that a check
    added here is noticed (and the docs changed with it)."""
    plan = _other_creator(name)
    assert _handoffs_archived(plan)
    _receiver(plan)  # accepted: only the creator's domain is checked
    reference, streamed = judge(plan)
    assert reference.startswith("LineageError") and streamed.startswith("LineageError")


def test_a_creator_compacting_before_any_departure_names_itself() -> None:
    """No departure yet: the base's signer held the object from entry 0, so it must name
    itself as creator (refused before too, as a base signed by a host that did not hold
    the object; now named for what it is)."""
    plan = honest_plan(random.Random(36), hops=0, cuts=[(0.5, 0)])
    plan.base_changes["creator"] = HOST_A2
    for check in (_receiver, _offline):
        with pytest.raises(LineageError, match=r"names .* as the creator"):
            check(plan)


# --- a host handing an object to itself -----------------------------------------------


def _self_handed(name: str, *, archived: bool) -> Plan:
    """``name``'s history with one departure a handoff from its host to itself: the
    oldest one (archived with its handoff where the shape archives handoffs) or the
    newest completed one (carried)."""
    plan = copy.deepcopy(PLANS[name])
    index = 0 if archived else len(plan.departures) - 1 - plan.in_transit
    self_handoff(plan, index)
    return plan


@pytest.mark.parametrize("name", sorted(PLANS))
def test_a_carried_departure_to_its_own_host_is_refused_by_both(name: str) -> None:
    plan = _self_handed(name, archived=False)
    for check in (_receiver, _offline):
        with pytest.raises(LineageError, match="to its own host") as refused:
            check(plan)
        assert "checkpoint" in str(refused.value)


@pytest.mark.parametrize("name", sorted(n for n in PLANS if n != "entries-only"))
def test_an_archived_departure_to_its_own_host_is_refused_offline(name: str) -> None:
    plan = _self_handed(name, archived=True)
    assert _handoffs_archived(plan)
    _receiver(plan)  # archived with its handoff: not in the object
    with pytest.raises(LineageError, match="to its own host"):
        _offline(plan)
    reference, _streamed = judge(plan)
    assert "to its own host" in reference


# --- what rests on the creator: where a holder may cut ---------------------------------


def test_a_cut_before_the_oldest_carried_departure_is_held_by_its_sender_not_the_creator() -> None:
    """With handoffs archived, the host that held the object between the base and the
    oldest carried departure is that departure's sender (verify_lineage's rule for who
    signs a base there), not the creator the base names. compaction_cut took the
    creator: the creator, holding the object again, cut inside another host's stay and
    signed a base every receiver refuses."""
    plan = honest_plan(random.Random(SEED_CUT), hops=12, cuts=[(0.2, 1)])
    lineage, _archive = build(plan)
    oldest = Checkpoint.decode(lineage.checkpoints[0].payload)
    newest = Checkpoint.decode(lineage.checkpoints[-1].payload)
    assert archived_before(oldest) and lineage.start < oldest.size - 1
    assert newest.to == HOST_A != oldest.host, "the creator holds it, another host sent it"
    keep = lineage.size - (oldest.size - 1)  # the cut falls in the oldest sender's stay
    cut = compaction_cut(lineage, host=HOST_A, keep=keep)
    assert cut is not None and cut >= newest.size, "moved to the creator's own stay"
    compacted, _segment, _custody = compact_custody(
        lineage,
        object_id=OBJECT,
        host=HOST_A,
        at=T0 + timedelta(hours=2),
        signer=SIGNERS[HOST_A],
        keep=keep,
        custody_keep=8,
    )
    forget_verified_prefixes()
    verify_lineage(compacted, object_id=OBJECT, trust=TRUST, sealed=False)
