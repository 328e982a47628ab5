"""Session 42: the one evaluation of a trigger's rules takes no reference from None.

cel-expr-python 0.1.3 gives each CEL null it converts to Python (``plain_value``,
``value``) as ``None`` without a reference of its own: every one takes a reference from
None, and once None's count reaches zero the interpreter aborts ("deallocating None").
The one evaluation (gateway.rules.RuleSet._together) marks a rule with no effect that
fired with ``[true]``, whose element it never reads, so P5's effect-less publish costs
None nothing."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

from gateway.model import Publish, Rule
from gateway.rules import compile_rules

NOW = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)
HOST = "spiffe://org-a.example/cluster/east/gateway"


def test_a_rule_without_an_effect_takes_no_reference_from_none() -> None:
    ruleset = compile_rules(
        [Rule(name="small", when="data.amount < 100", action=Publish(topic="alerts/small"))]
    )
    data = {"amount": 1}
    outcome = ruleset.evaluate(data=data, generation=1, epoch=1, now=NOW, host=HOST)
    assert [(p.rule, p.value) for p in outcome.proposals] == [("small", None)]
    before = sys.getrefcount(None)
    for generation in range(200):
        ruleset.evaluate(data=data, generation=generation, epoch=1, now=NOW, host=HOST)
    assert sys.getrefcount(None) >= before
