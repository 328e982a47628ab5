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
"""

from __future__ import annotations

import copy
import random

import pytest

from gateway.archive import CustodySegment, verify_archived
from gateway.custody import forget_verified_arrivals
from gateway.errors import LineageError
from gateway.lineage import forget_verified_prefixes, verify_lineage
from tests.test_archive_differential_s35 import (
    PLANS,
    Plan,
    build,
    honest_plan,
    judge,
    self_handoff,
)
from tests.test_lineage import HOST_A, HOST_A2, OBJECT, TRUST


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
