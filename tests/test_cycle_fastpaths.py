"""The cycle path's shortcuts give exactly what the long way gives: the object rebuilt
slot by slot equals ``dataclasses.replace``, compiled rules answered by identity are
those answered by content, remembered data and admissions are what decoding and asking
again would give (and refusals are never remembered), and the collector settings of a served host are what
gateway/_gc.py says (and bounded: the collector still runs)."""

from __future__ import annotations

import gc
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from gateway import _gc, rules
from gateway._lru import IdentityLru
from gateway.authority import CapabilitySet, EffectiveAuthority
from gateway.errors import AdmissionDeniedError, RuleError
from gateway.lineage import EntryKind
from gateway.model import NO_AUTHORITY, CycleState, GovernedObject, LifecycleState, Rule
from gateway.rules import compiled, load_data, rule_from_mapping
from gateway.runtime.cycle import CycleRunner, _Derived, _rebuilt

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


def test_compiled_rules_by_identity_evict_the_least_recently_used_one_at_a_time() -> None:
    # Emptied whole when full, the memo made the live bytes swing by megabytes (and
    # CPython's object arenas ratchet up): when full, one entry goes, the stalest.
    rule = _rule("data.amount > 1")
    memo = rules._BY_IDENTITY
    memo.clear()
    held = [tuple([rule]) for _ in range(rules.IDENTITY_CACHE_SIZE)]  # distinct tuples
    for each in held:
        compiled(each)
    assert len(memo) == rules.IDENTITY_CACHE_SIZE
    compiled(held[0])  # used again: now the most recently used
    newcomer = tuple([rule])
    compiled(newcomer)
    assert len(memo) == rules.IDENTITY_CACHE_SIZE  # one went, not all
    assert memo.get(held[1]) is None  # the least recently used
    for kept in (held[0], held[2], held[-1], newcomer):
        assert memo.get(kept) is not None
    memo.clear()


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


def _authority(*claims: dict[str, object]) -> EffectiveAuthority:
    return EffectiveAuthority(allow=CapabilitySet.from_claim(list(claims)))


def test_a_remembered_admission_is_only_ever_a_permission_of_that_authority() -> None:
    admitted = _Derived()
    publish = _authority({"res": "pubsub:alerts/*", "act": ["publish"]})
    for _ in range(2):  # asked twice: the second answer comes from the memo
        admitted.require(publish, "pubsub:alerts/x", "publish")
    # A refusal is never remembered: it raises, with its reason, every time.
    for _ in range(2):
        with pytest.raises(AdmissionDeniedError, match="pubsub:audit/x"):
            admitted.require(publish, "pubsub:audit/x", "publish")
    # Another authority (equal or not) is asked itself: what one permits says nothing of
    # the other, and the memo is by identity.
    narrower = _authority({"res": "pubsub:other/*", "act": ["publish"]})
    with pytest.raises(AdmissionDeniedError):
        admitted.require(narrower, "pubsub:alerts/x", "publish")
    with pytest.raises(AdmissionDeniedError):
        admitted.require(NO_AUTHORITY, "pubsub:alerts/x", "publish")  # expired grants


def test_objects_holding_the_very_same_authority_share_its_remembered_admissions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An object's first cycle on a runner asks its authority nothing another object's
    cycle found permitted for that very authority; refusals are still asked (and raise)
    every time, and another authority, even an equal one, is asked itself."""
    asked: list[tuple[str, str]] = []
    require = EffectiveAuthority.require

    def counted(self: EffectiveAuthority, resource: str, verb: str) -> None:
        asked.append((resource, verb))
        require(self, resource, verb)

    monkeypatch.setattr(EffectiveAuthority, "require", counted)
    shared = IdentityLru[EffectiveAuthority, set[tuple[str, str]]](16)
    publish = _authority({"res": "pubsub:alerts/*", "act": ["publish"]})
    first, second = _Derived(shared), _Derived(shared)
    first.require(publish, "pubsub:alerts/x", "publish")
    second.require(publish, "pubsub:alerts/x", "publish")
    assert asked == [("pubsub:alerts/x", "publish")]  # the second object asked nothing
    for derived in (first, second):
        with pytest.raises(AdmissionDeniedError, match="pubsub:audit/x"):
            derived.require(publish, "pubsub:audit/x", "publish")
    assert len(asked) == 3
    equal = _authority({"res": "pubsub:alerts/*", "act": ["publish"]})
    assert equal == publish and equal is not publish
    _Derived(shared).require(equal, "pubsub:alerts/x", "publish")
    assert len(asked) == 4
    narrower = _authority({"res": "pubsub:other/*", "act": ["publish"]})
    with pytest.raises(AdmissionDeniedError):
        _Derived(shared).require(narrower, "pubsub:alerts/x", "publish")
    with pytest.raises(AdmissionDeniedError):
        second.require(NO_AUTHORITY, "pubsub:alerts/x", "publish")  # expired grants


def _json_object(data: bytes, content_type: str = "application/json") -> GovernedObject:
    return GovernedObject(
        object_id="obj://org-a.example/x/1", tenant="default", data=data, content_type=content_type
    )


def test_remembered_data_is_what_decoding_the_same_bytes_gives() -> None:
    runner = SimpleNamespace(_data=IdentityLru[bytes, dict[str, Any]](16))
    obj = _json_object(b'{"b":[1,{"c":"d"}],"a":1}')
    first = CycleRunner._loaded(runner, obj)  # type: ignore[arg-type]
    assert first == load_data(obj.data, obj.content_type)
    assert CycleRunner._loaded(runner, obj) is first  # the same bytes object: remembered
    # Equal bytes in another object are decoded again (identity, not content, is the
    # key), and give an equal value.
    again = _json_object(bytes(bytearray(obj.data)))
    assert CycleRunner._loaded(runner, again) == first
    # Data rules cannot read raises every time, as decoding does; other content is {}.
    broken = _json_object(b'{"a":')
    for _ in range(2):
        with pytest.raises(RuleError):
            CycleRunner._loaded(runner, broken)  # type: ignore[arg-type]
    assert CycleRunner._loaded(runner, _json_object(b"\x00", "application/octet-stream")) == {}  # type: ignore[arg-type]


def test_an_identity_memo_answers_only_for_the_very_same_key_and_stays_bounded() -> None:
    memo = IdentityLru[bytes, int](2)
    a, b, c = b"a" * 40, b"b" * 40, b"c" * 40
    memo.put(a, 1)
    memo.put(b, 2)
    assert memo.get(a) == 1 and memo.get(b) == 2
    assert memo.get(bytes(bytearray(a))) is None  # equal, not the same object
    memo.get(a)  # a is now the more recently used
    memo.put(c, 3)  # full: the least recently used (b) goes, and only it
    assert memo.get(a) == 1 and memo.get(b) is None and memo.get(c) == 3
    assert len(memo) == 2
