"""Session 40: a rule set's rules evaluated in one CEL evaluation (benchmark P5).

:meth:`RuleSet.evaluate` evaluates the rules a trigger wakes as one expression, a list
holding for each rule ``[effect]`` when its condition holds (``[true]`` for a rule
without an effect) and ``[]`` when it does not, and reads its proposals from that list;
anything else (an error anywhere, a value the rules' post-processing refuses) is
evaluated again rule by rule, as before. Held here, seeded, to give exactly the
outcome of the rule-by-rule path, refusals and errors included, and to take the
one-evaluation path whenever nothing failed."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

from gateway import rules
from gateway.model import Invoke, Publish, Rule, WriteState
from gateway.rules import RuleSet, compile_rules

NOW = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)
HOST = "spiffe://org-a.example/cluster/east/gateway"

#: Conditions: plain, reading each variable, one that is not a bool at run time (dyn), one
#: that fails (a missing key), one that divides by zero when its operand is 0, one with
#: a comment running to the end of its text.
CONDITIONS = [
    "true",
    "false",
    'data.amount > 1000 && data.status == "open"',
    "generation % 2 == 0",
    "data.amount < 100",
    'host.startsWith("spiffe://") && epoch > 1',
    'now > timestamp("2020-01-01T00:00:00Z")',
    "data.flag",  # dyn: a bool, an int or missing, by the data
    "data.missing > 1",  # fails: no such key
    "10 / data.zero > 1",  # fails when zero is 0
    "has(data.tags) && data.tags.exists(t, t == 'urgent')",
    "data.amount > 5 // a comment to the end\n",
    "event.size() == 0 && request.size() == 0",
]
#: Effects of publishes and invokes (any value), "" for none.
PAYLOADS = [
    "",
    '{"invoice": data.invoice, "amount": data.amount}',
    "data.amount * 2",
    '{"bad": 1.0 / data.fzero}',  # NaN or infinity: not JSON, refused after evaluation
    '{"x": data.missing}',  # fails
    "[generation, epoch, host]",
    'timestamp("2021-01-01T00:00:00Z")',
    "data.tags",
]
#: Patches of writes (maps); one has keys that are not strings at run time.
PATCHES = [
    '{"checked": generation}',
    '{"amount": data.amount + 1}',
    "data.patch",  # dyn: a map with string keys, or one with int keys (refused)
    '{"y": data.missing}',  # fails
    '{"f": 1.5, "n": null, "l": [1, "a"]}',
]


def _rule(pick: random.Random, index: int) -> Rule:
    when = pick.choice(CONDITIONS)
    kind = pick.randrange(3)
    name = f"r{index}"
    if kind == 0:
        return Rule(name=name, when=when, action=WriteState(patch=pick.choice(PATCHES)))
    if kind == 1:
        action = Publish(topic=f"alerts/t{index}", payload=pick.choice(PAYLOADS))
        return Rule(name=name, when=when, action=action)
    return Rule(
        name=name, when=when, action=Invoke(target="payments/x", payload=pick.choice(PAYLOADS))
    )


def _data(pick: random.Random) -> dict[str, Any]:
    data: dict[str, Any] = {
        "invoice": f"INV-{pick.randrange(10_000):06d}",
        "amount": pick.choice([0, 50, 99, 100, 999, 1001, 2500]),
        "status": pick.choice(["open", "paid"]),
        "zero": pick.choice([0, 1, 2]),
        "fzero": pick.choice([0.0, 1.0]),
        "flag": pick.choice([True, False, 1, "yes"]),
        "patch": pick.choice([{"a": 1}, {"b": "x", "c": None}, {1: 2}]),
    }
    if pick.random() < 0.5:
        data["tags"] = pick.sample(["urgent", "eu", "q3"], pick.randrange(4))
    if pick.random() < 0.2:
        del data["flag"]
    return data


def _one_by_one(ruleset: RuleSet, data: dict[str, Any], generation: int) -> rules.Outcome:
    """What evaluate gave before: each rule's condition and effect evaluated on its own."""
    activation = rules._activation(
        data, generation, 2, NOW, HOST, None, None, ruleset._reads.get("cycle")
    )
    return rules._evaluate_each(ruleset._by_trigger.get("cycle", ()), activation)


def test_one_evaluation_gives_what_each_rule_on_its_own_gives() -> None:
    pick = random.Random(4040)
    together = apart = 0
    for _ in range(400):
        ruleset = compile_rules([_rule(pick, index) for index in range(pick.randrange(1, 6))])
        for _ in range(5):
            data, generation = _data(pick), pick.randrange(100)
            expected = _one_by_one(ruleset, data, generation)
            got = ruleset.evaluate(data=data, generation=generation, epoch=2, now=NOW, host=HOST)
            assert got == expected, (ruleset, data, generation)
            variables = rules._variables(
                data, generation, 2, NOW, HOST, None, None, ruleset._reads.get("cycle")
            )
            fast = rules._evaluate_together(
                ruleset._together("cycle"), ruleset._by_trigger["cycle"], variables
            )
            if fast is None:
                apart += 1
                continue
            together += 1
            assert fast == expected
            assert not expected.errors  # an error is always the rule-by-rule path's
    # Both paths are exercised, the one evaluation most of the time.
    assert together > 600 and apart > 200, (together, apart)


def test_a_rule_set_with_no_failures_takes_one_evaluation() -> None:
    ruleset = compile_rules(
        [
            Rule(
                name="overdue",
                when='data.amount > 1000 && data.status == "open"',
                action=Publish(topic="alerts/overdue", payload='{"invoice": data.invoice}'),
            ),
            Rule(
                name="checked",
                when="generation % 2 == 0",
                action=WriteState(patch='{"checked": generation}'),
            ),
            Rule(name="small", when="data.amount < 100", action=Publish(topic="alerts/small")),
        ]
    )
    calls = 0
    evaluate_together = rules._evaluate_together

    def counted(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        outcome = evaluate_together(*args)
        assert outcome is not None
        return outcome

    rules._evaluate_together = counted  # type: ignore[assignment]
    try:
        data = {"invoice": "INV-1", "amount": 1500, "status": "open"}
        outcome = ruleset.evaluate(data=data, generation=4, epoch=1, now=NOW, host=HOST)
    finally:
        rules._evaluate_together = evaluate_together  # type: ignore[assignment]
    assert calls == 1
    assert [(p.rule, p.verb, p.resource, p.value) for p in outcome.proposals] == [
        ("overdue", "publish", "pubsub:alerts/overdue", {"invoice": "INV-1"}),
        ("checked", "write", "state:self", {"checked": 4}),
    ]
    assert outcome.errors == ()


def test_a_source_cannot_reach_past_its_own_place_in_the_expression() -> None:
    # A comment to the end of the text, and a text that would close the list early if it
    # were pasted in without line breaks and parentheses, evaluate as on their own.
    ruleset = compile_rules(
        [
            Rule(
                name="a",
                when="true // ] : []), dyn(true",
                action=Publish(topic="alerts/a", payload='{"x": 1} // )] : [])'),
            ),
            Rule(name="b", when="false", action=Publish(topic="alerts/b")),
        ]
    )
    outcome = ruleset.evaluate(data={}, generation=1, epoch=1, now=NOW, host=HOST)
    assert [(p.rule, p.value) for p in outcome.proposals] == [("a", {"x": 1})]
    assert ruleset._together("cycle") is not None


def test_the_variables_given_are_those_read_with_the_values_of_all_of_them() -> None:
    # _variables builds only the variables named in ``reads``; held to picking them out of
    # the whole set, for every subset of the names, in their order.
    pick = random.Random(40)
    names = list(rules.VARIABLES)
    for _ in range(300):
        data = _data(pick)
        event = pick.choice([None, {}, {"type": "a", "data": {"k": 1}}])
        request = pick.choice([None, {}, {"method": "m", "caller": "c", "data": {}}])
        generation, epoch = pick.randrange(1000), pick.randrange(10)
        whole = rules._variables(data, generation, epoch, NOW, HOST, event, request, None)
        assert whole == {
            "data": data,
            "generation": generation,
            "epoch": epoch,
            "now": NOW,
            "host": HOST,
            "event": dict(event) if event else {},
            "request": dict(request) if request else {},
        }
        reads = tuple(name for name in names if pick.random() < 0.5)
        got = rules._variables(data, generation, epoch, NOW, HOST, event, request, reads)
        assert list(got.items()) == [(name, whole[name]) for name in reads]
        # Copies, as before: the activation never holds the caller's own mappings.
        for name in ("data", "event", "request"):
            if name in got:
                assert got[name] is not {"data": data, "event": event, "request": request}[name]


def test_a_rule_set_whose_evaluation_keeps_failing_tries_one_evaluation_seldom() -> None:
    # A rule that fails at every evaluation would make each one cost the one evaluation and
    # then every rule's own; after a few such in a row, the rule set tries the one
    # evaluation only now and then, and takes it again at once when it succeeds.
    ruleset = compile_rules(
        [
            Rule(name="ok", when="generation % 2 == 0", action=Publish(topic="alerts/ok")),
            Rule(name="broken", when="data.missing > 1", action=Publish(topic="alerts/b")),
        ]
    )
    calls = 0
    evaluate_together = rules._evaluate_together

    def counted(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        return evaluate_together(*args)

    rules._evaluate_together = counted  # type: ignore[assignment]
    try:
        for generation in range(200):
            failing = ruleset.evaluate(data={}, generation=generation, epoch=1, now=NOW, host=HOST)
            assert failing == _one_by_one(ruleset, {}, generation)
            assert failing.errors
        assert calls <= 4 + 200 // 16 + 1, calls
        tried = calls
        # The data no longer fails: within one retry period it is one evaluation again.
        for generation in range(40):
            fine = ruleset.evaluate(
                data={"missing": 0}, generation=generation, epoch=1, now=NOW, host=HOST
            )
            assert fine == _one_by_one(ruleset, {"missing": 0}, generation)
        assert calls - tried >= 40 - 16, (calls, tried)
    finally:
        rules._evaluate_together = evaluate_together  # type: ignore[assignment]
