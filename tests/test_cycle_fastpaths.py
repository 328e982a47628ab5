"""The cycle path's shortcuts give exactly what the long way gives: the object rebuilt
slot by slot equals ``dataclasses.replace``, compiled rules answered by identity are
those answered by content, and the collector settings of a served host are what
gateway/_gc.py says (and bounded: the collector still runs)."""

from __future__ import annotations

import gc
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta

from gateway import _gc
from gateway.lineage import EntryKind
from gateway.model import CycleState, GovernedObject, LifecycleState, Rule
from gateway.rules import compiled, rule_from_mapping
from gateway.runtime.cycle import _rebuilt

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _rule(when: str) -> Rule:
    return rule_from_mapping({"name": "r", "when": when, "publish": {"topic": "a/b"}}, "test")


def test_an_object_rebuilt_slot_by_slot_equals_replace() -> None:
    obj = GovernedObject(
        object_id="obj://org-a.example/x/1",
        tenant="default",
        data=b'{"a":1}',
        content_type="application/json",
        grants=("g1", "g2"),
        rules=(_rule("true"),),
        cycle=CycleState(generation=3, interval=timedelta(seconds=5), next_due=NOW),
        epoch=7,
        state=LifecycleState.ACTIVE,
        last_transfer_digest=b"\x01" * 32,
        authority_expires=NOW + timedelta(days=1),
        subscriptions=("orders/new",),
    )
    lineage = obj.record(EntryKind.EVALUATED, host="h", at=NOW, detail="d").lineage
    cycle = CycleState(generation=4, interval=timedelta(seconds=5), next_due=NOW)
    got = _rebuilt(obj, b'{"a":2}', lineage, cycle)
    want = replace(obj, data=b'{"a":2}', lineage=lineage, cycle=cycle)
    assert got == want
    # Every field, by identity: nothing copied, converted or defaulted on the way.
    for field in fields(GovernedObject):
        assert getattr(got, field.name) is getattr(want, field.name), field.name
    assert obj.data == b'{"a":1}'  # the original is untouched


def test_compiled_rules_by_identity_are_those_by_content() -> None:
    first = (_rule("data.amount > 1"),)
    same = (_rule("data.amount > 1"),)  # equal, another tuple
    other = (_rule("data.amount > 2"),)
    assert first is not same
    assert compiled(first) is compiled(same)  # by content, then by identity
    assert compiled(first) is compiled(first)
    assert compiled(other) is not compiled(first)
    assert compiled(other).rules[0].rule.when == "data.amount > 2"


def test_gc_tune_freezes_start_up_state_and_collects_less_often() -> None:
    kept = [object() for _ in range(10)]  # something tracked, alive when tuned
    kept.append([kept])
    frozen_before = gc.get_freeze_count()
    previous = _gc.tune()
    try:
        assert gc.get_threshold() == (
            _gc.GEN0_THRESHOLD,
            _gc.GEN1_THRESHOLD,
            _gc.GEN2_THRESHOLD,
        )
        assert gc.get_freeze_count() > frozen_before
        assert gc.isenabled()  # bounded: cyclic garbage is still collected
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
        gc.set_threshold(*previous)
