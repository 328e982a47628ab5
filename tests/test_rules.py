"""Tests for gateway.rules: compiling, cost bounds, evaluation, object data, spec mappings.

Table-driven cases carry a ``reason``. Error cases assert the exact error type (a
compile mistake is a :class:`RuleError`, never the :class:`RuleCostError` leaf, and the
other way round) and that the message names the rule and the part (``when``, ``patch``,
``payload``) it is about. The "errors are data" promise of :meth:`RuleSet.evaluate` is a
hypothesis property over JSON-ish data, including values the CEL runtime cannot take
(integers beyond 64 bits, NaN, lone surrogates).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from cel_expr_python import cel
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway import rules
from gateway.errors import RuleCostError, RuleError
from gateway.limits import MAX_DATA_BYTES
from gateway.model import Answer, Invoke, Publish, Rule, WriteState
from gateway.rules import (
    COLLECTION_BOUND,
    MAX_DATA_DEPTH,
    MAX_EXPRESSION_CHARS,
    MAX_NODES,
    MAX_RULES,
    Cost,
    Outcome,
    Proposal,
    RuleSet,
    check_data,
    compile_rule,
    compile_rules,
    cost_of,
    dump_data,
    load_data,
    rule_from_mapping,
)

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
HOST = "spiffe://org-a.example/cluster/east/gateway"


def publish(
    when: str = "true", *, name: str = "r", topic: str = "alerts/x", payload: str = ""
) -> Rule:
    return Rule(name=name, when=when, action=Publish(topic=topic, payload=payload))


def write(patch: str, *, when: str = "true", name: str = "r") -> Rule:
    return Rule(name=name, when=when, action=WriteState(patch=patch))


def invoke(
    when: str = "true", *, name: str = "r", target: str = "payments/charge", payload: str = ""
) -> Rule:
    return Rule(name=name, when=when, action=Invoke(target=target, payload=payload))


def evaluate(ruleset: RuleSet, data: dict[str, Any], *, generation: int = 7) -> Outcome:
    return ruleset.evaluate(data=data, generation=generation, epoch=2, now=NOW, host=HOST)


def chain(term: str, count: int) -> str:
    """``term || term || ...``: the parser balances it, so it stays shallow while growing."""
    return " || ".join([term] * count)


# --- compiling: mistakes ------------------------------------------------------------


@dataclass(frozen=True)
class BadRules:
    rules: tuple[Rule, ...]
    names: str  #: the message must name the rule and, for an expression, its part
    mentions: str  #: and say what is wrong
    reason: str


BAD_RULES = [
    BadRules((publish("data.x >"),), "rule 'r', when", "Syntax error", "syntax error"),
    BadRules((publish("data.x ==== 1"),), "rule 'r', when", "Syntax error", "bad operator"),
    BadRules(
        (publish("foo == 1"),), "rule 'r', when", "undeclared reference to 'foo'", "unknown name"
    ),
    BadRules(
        (publish("data.x == nope(1)"),),
        "rule 'r', when",
        "undeclared reference",
        "unknown function",
    ),
    BadRules((publish("1"),), "rule 'r', when", "gives int, but must give a bool", "int condition"),
    BadRules((publish("'yes'"),), "rule 'r', when", "gives string", "string condition"),
    BadRules((publish("{'a': true}"),), "rule 'r', when", "gives map", "map condition"),
    BadRules((publish("[true]"),), "rule 'r', when", "gives list", "list condition"),
    BadRules((publish("null"),), "rule 'r', when", "must give a bool", "null condition"),
    BadRules(
        (publish("generation + 'a' == 'b'"),),
        "rule 'r', when",
        "no matching overload",
        "int + string does not type-check",
    ),
    BadRules((publish("now > 5"),), "rule 'r', when", "no matching overload", "timestamp > int"),
    BadRules((write("[1]"),), "rule 'r', patch", "must give a map with string keys", "list patch"),
    BadRules((write("1"),), "rule 'r', patch", "gives int", "int patch"),
    BadRules((write("'a'"),), "rule 'r', patch", "gives string", "string patch"),
    BadRules((write("{1: 2}"),), "rule 'r', patch", "gives map<int, int>", "int keys"),
    BadRules((write("{true: 2}"),), "rule 'r', patch", "gives map<bool, int>", "bool keys"),
    BadRules((write("data.x +"),), "rule 'r', patch", "Syntax error", "patch syntax error"),
    BadRules(
        (publish(payload="data.x +"),), "rule 'r', payload", "Syntax error", "payload syntax error"
    ),
    BadRules(
        (invoke(payload="missing"),), "rule 'r', payload", "undeclared reference", "payload name"
    ),
    BadRules((publish(topic="alerts"),), "rule 'r'", "not of the form", "topic without a slash"),
    BadRules((publish(topic="alerts//x"),), "rule 'r'", "not of the form", "empty segment"),
    BadRules((publish(topic="/x"),), "rule 'r'", "not of the form", "empty first segment"),
    BadRules((publish(topic="alerts/"),), "rule 'r'", "not of the form", "empty last segment"),
    BadRules((publish(topic="alerts/a b"),), "rule 'r'", "not of the form", "space in topic"),
    BadRules((publish(topic=""),), "rule 'r'", "not of the form", "empty topic"),
    BadRules((invoke(target="payments"),), "rule 'r'", "not of the form", "target without slash"),
    BadRules((publish(name="bad name"),), "rule name 'bad name'", "is not a name", "space"),
    BadRules((publish(name=""),), "rule name ''", "is not a name", "empty name"),
    BadRules((publish(name="-x"),), "rule name '-x'", "is not a name", "leading dash"),
    BadRules((publish(name="x" * 65),), "rule name 'xxx", "is not a name", "name too long"),
    BadRules((publish(name="a/b"),), "rule name 'a/b'", "is not a name", "slash in a name"),
    BadRules(
        (publish(name="a"), write("{}", name="b"), invoke(name="a")),
        "two rules are named 'a'",
        "unique",
        "duplicate names",
    ),
    BadRules((publish(""),), "rule 'r', when", "the expression is empty", "empty condition"),
    BadRules((publish("  \n\t"),), "rule 'r', when", "the expression is empty", "blank condition"),
    BadRules((write(""),), "rule 'r', patch", "the expression is empty", "empty patch"),
    BadRules(
        (publish("[" * 40 + "]" * 40 + " == []"),),
        "rule 'r', when",
        "recursion",
        "deeper than the parser allows",
    ),
    BadRules(
        (publish(name="ok"), publish("nope", name="second")),
        "rule 'second', when",
        "undeclared reference",
        "the failing rule of several is the one named",
    ),
]


@pytest.mark.parametrize("case", BAD_RULES, ids=lambda c: c.reason)
def test_compile_refuses(case: BadRules) -> None:
    with pytest.raises(RuleError) as caught:
        compile_rules(case.rules)
    assert type(caught.value) is RuleError, "a mistake, not a cost: no RuleCostError"
    assert case.names in caught.value.reason
    assert case.mentions.lower() in str(caught.value).lower()
    assert "\n" not in caught.value.reason, "one line, as the CLI prints it"


# --- compiling: what is accepted ----------------------------------------------------


@dataclass(frozen=True)
class GoodRule:
    rule: Rule
    resource: str
    verb: str
    reason: str


GOOD_RULES = [
    GoodRule(publish("data.flag"), "pubsub:alerts/x", "publish", "dyn condition, checked at run"),
    GoodRule(publish("has(data.x)"), "pubsub:alerts/x", "publish", "presence test"),
    GoodRule(publish("data.a.b.c == 1"), "pubsub:alerts/x", "publish", "nested select on dyn"),
    GoodRule(publish('data["a-b"] > 1'), "pubsub:alerts/x", "publish", "index with any key"),
    GoodRule(
        publish('now > timestamp("2020-01-01T00:00:00Z")'), "pubsub:alerts/x", "publish", "time"
    ),
    GoodRule(
        publish('now - duration("1h") < now && epoch >= 0'),
        "pubsub:alerts/x",
        "publish",
        "duration arithmetic",
    ),
    GoodRule(publish("generation % 2 == 0"), "pubsub:alerts/x", "publish", "int arithmetic"),
    GoodRule(
        publish('host.startsWith("spiffe://") && host.endsWith("/gateway")'),
        "pubsub:alerts/x",
        "publish",
        "string functions on host",
    ),
    GoodRule(
        publish('data.name.contains("x") && size(data.name) < 10 && data.name.matches("^[a-z]")'),
        "pubsub:alerts/x",
        "publish",
        "string functions on dyn data",
    ),
    GoodRule(
        publish("data.items.exists(i, i > 1) && data.items.size() <= 1000"),
        "pubsub:alerts/x",
        "publish",
        "one comprehension",
    ),
    GoodRule(
        publish("data.xs.filter(i, i > 1).exists(j, j > 2)"),
        "pubsub:alerts/x",
        "publish",
        "a comprehension over a comprehension's result is not nested",
    ),
    GoodRule(
        publish(topic="alerts.v1/over-due_2/x"), "pubsub:alerts.v1/over-due_2/x", "publish", "topic"
    ),
    GoodRule(
        publish(payload='{"invoice": data.invoice, "at": now}'),
        "pubsub:alerts/x",
        "publish",
        "payload of any type",
    ),
    GoodRule(publish(payload="1"), "pubsub:alerts/x", "publish", "scalar payload"),
    GoodRule(write('{"checked": true}'), "state:self", "write", "map literal patch"),
    GoodRule(write("{}"), "state:self", "write", "empty map (map<dyn, dyn>)"),
    GoodRule(write("data"), "state:self", "write", "the data itself"),
    GoodRule(write("data.nested"), "state:self", "write", "dyn patch, checked at run time"),
    GoodRule(write("{data.key: 1}"), "state:self", "write", "dyn keys, checked at run time"),
    GoodRule(invoke(payload="data"), "invoke:payments/charge", "invoke", "invoke"),
    GoodRule(publish(name="A.b_c-9"), "pubsub:alerts/x", "publish", "every name character"),
    GoodRule(publish(name="x" * 64), "pubsub:alerts/x", "publish", "longest name"),
    GoodRule(
        publish('"' + "a" * (MAX_EXPRESSION_CHARS - 8) + '" != ""'),
        "pubsub:alerts/x",
        "publish",
        "exactly the longest expression",
    ),
]


@pytest.mark.parametrize("case", GOOD_RULES, ids=lambda c: c.reason)
def test_compile_accepts(case: GoodRule) -> None:
    compiled = compile_rule(case.rule)
    assert (compiled.resource, compiled.verb) == (case.resource, case.verb)
    assert compiled.rule is case.rule
    assert len(compile_rules([case.rule])) == 1


def test_compile_accepts_the_most_rules() -> None:
    names = [f"r{i}" for i in range(MAX_RULES)]
    ruleset = compile_rules([publish(name=name) for name in names])
    assert [c.rule.name for c in ruleset.rules] == names
    assert compile_rules([]).rules == ()


# --- compiling: cost bounds -------------------------------------------------------------


@dataclass(frozen=True)
class TooCostly:
    rules: tuple[Rule, ...]
    mentions: str
    reason: str


TOO_COSTLY = [
    TooCostly(
        (publish('"' + "a" * MAX_EXPRESSION_CHARS + '" == ""'),),
        "rule 'r', when: expression is 2056 characters; at most 2048",
        "expression too long",
    ),
    TooCostly(
        (write("{" + ", ".join(f'"k{i}": {i}' for i in range(300)) + "}"),),
        "rule 'r', patch: expression is",
        "patch too long",
    ),
    TooCostly(
        (publish(chain("true", 200)),),
        "rule 'r', when: 399 expression nodes; at most 256",
        "too many nodes within the character limit",
    ),
    TooCostly(
        (invoke(payload="[" + ",".join(["1"] * 300) + "]"),),
        "rule 'r', payload: 301 expression nodes",
        "too many nodes in a payload",
    ),
    TooCostly(
        (publish("data.a.exists(i, data.b.exists(j, i == j))"),),
        "rule 'r', when: comprehensions nested 2 deep; at most 1",
        "nested comprehension",
    ),
    TooCostly(
        (write('{"x": data.a.map(i, data.b.filter(j, j > i))}'),),
        "rule 'r', patch: comprehensions nested 2 deep",
        "nested comprehension in a patch",
    ),
    TooCostly(
        tuple(publish(name=f"r{i}") for i in range(MAX_RULES + 1)),
        f"{MAX_RULES + 1} rules; an object may have at most {MAX_RULES}",
        "too many rules",
    ),
    TooCostly(
        (publish(name="ok"), publish(chain("true", 200), name="big")),
        "rule 'big', when",
        "the costly rule of several is the one named",
    ),
]


def test_node_limit_is_reachable_within_the_character_limit() -> None:
    assert len(chain("true", 200)) < MAX_EXPRESSION_CHARS


@pytest.mark.parametrize("case", TOO_COSTLY, ids=lambda c: c.reason)
def test_compile_refuses_costly(case: TooCostly) -> None:
    with pytest.raises(RuleCostError) as caught:
        compile_rules(case.rules)
    assert case.mentions in caught.value.reason


def test_estimated_cost_bounds_nesting_when_nesting_is_allowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With MAX_NESTING = 1 and MAX_NODES = 256 the estimate stays under 256 * 1000, so it is
    # the nesting limit that refuses first. Relax nesting to see the estimate do its job:
    # the inner loop's 6 nodes run COLLECTION_BOUND² times (see test_cost_of).
    monkeypatch.setattr(rules, "MAX_NESTING", 2)
    with pytest.raises(RuleCostError) as caught:
        compile_rule(publish("data.x.all(i, data.y.exists(j, true))"))
    assert "rule 'r', when: estimated cost 6,009,005 exceeds 1,000,000" in caught.value.reason


def test_estimated_cost_over_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rules, "MAX_COST", 8004)
    with pytest.raises(RuleCostError, match="estimated cost 8,005 exceeds 8,004"):
        compile_rule(publish("data.x.exists(i, i > 1)"))
    monkeypatch.setattr(rules, "MAX_COST", 8005)
    compile_rule(publish("data.x.exists(i, i > 1)"))


def test_largest_single_comprehension_is_accepted() -> None:
    # A comprehension whose body takes nearly every node: within MAX_NODES and MAX_COST.
    body = chain("i > 1", 60)  # 60 * 3 + 59 = 239 nodes
    compiled = compile_rule(publish(f"data.x.exists(i, {body})"))
    assert compiled.when.cost.nodes <= MAX_NODES
    assert compiled.when.cost.estimate > 200 * COLLECTION_BOUND


@dataclass(frozen=True)
class CostCase:
    source: str
    cost: Cost
    reason: str


D = MAX_DATA_BYTES
SCALAR = rules._SCALAR_BYTES
#: data.x.filter(i, ...): the elements kept are together at most data.x (D), plus the
#: 3 bytes (brackets, separator) of the one-element list each of 1000 steps appends, and
#: the empty list's 2.
FILTERED = D + 3 * COLLECTION_BOUND + 2


# Node counts follow the checked AST (cel/expr/syntax.proto). The macros expand as in
# cel-cpp, with __result__ the accumulator:
#   xs.exists(i, p)  iter_range xs; accu_init false; loop_condition
#                    @not_strictly_false(!__result__); loop_step __result__ || p;
#                    result __result__
#   xs.all(i, p)     accu_init true; loop_condition @not_strictly_false(__result__);
#                    loop_step __result__ && p
#   xs.map(i, f)     accu_init []; loop_condition true; loop_step __result__ + [f]
#   xs.filter(i, p)  accu_init []; loop_condition true;
#                    loop_step p ? __result__ + [i] : __result__
# The comprehension node, iter_range, accu_init and result count once; loop_condition
# and loop_step count COLLECTION_BOUND times.
COSTS = [
    CostCase("true", Cost(nodes=1, nesting=0, estimate=1, largest=32), "one constant"),
    CostCase(
        "1 + 2",
        Cost(nodes=3, nesting=0, estimate=3, largest=2 * SCALAR, work=2 * SCALAR),
        "call _+_ and two constants",
    ),
    CostCase("data.a", Cost(nodes=2, nesting=0, estimate=2, largest=0), "select on an ident"),
    CostCase(
        "has(data.a)",
        Cost(nodes=2, nesting=0, estimate=2, largest=SCALAR),
        "has() is a test-only select",
    ),
    CostCase('data["a"]', Cost(nodes=3, nesting=0, estimate=3, largest=1), "index is a call _[_]"),
    CostCase(
        "size(data.x)", Cost(nodes=3, nesting=0, estimate=3, largest=SCALAR, work=D), "global call"
    ),
    CostCase(
        "data.x.size()",
        Cost(nodes=3, nesting=0, estimate=3, largest=SCALAR, work=D),
        "receiver call: the target",
    ),
    CostCase("!true", Cost(nodes=2, nesting=0, estimate=2, largest=SCALAR), "unary call"),
    CostCase(
        "[1, 2, 3]",
        Cost(nodes=4, nesting=0, estimate=4, largest=3 * SCALAR + 5),
        "a list and its elements",
    ),
    CostCase(
        "{'a': 1}",
        Cost(nodes=3, nesting=0, estimate=3, largest=1 + SCALAR + 4),
        "a map, its key and value",
    ),
    CostCase(
        "data.x.exists(i, i > 1)",
        # once: comprehension 1 + iter_range (data.x) 2 + accu_init 1 + result 1 = 5
        # loop: @not_strictly_false(!__result__) 3 + (__result__ || i > 1) 5 = 8
        # i > 1 compares a scalar per element: the smaller side, 1 (a scalar), each time
        Cost(
            nodes=13,
            nesting=1,
            estimate=5 + 8 * COLLECTION_BOUND,
            largest=SCALAR,
            compared=SCALAR * COLLECTION_BOUND,
        ),
        "exists",
    ),
    CostCase(
        "data.x.all(i, i > 1)",
        # loop: @not_strictly_false(__result__) 2 + (__result__ && i > 1) 5 = 7
        Cost(
            nodes=12,
            nesting=1,
            estimate=5 + 7 * COLLECTION_BOUND,
            largest=SCALAR,
            compared=SCALAR * COLLECTION_BOUND,
        ),
        "all",
    ),
    CostCase(
        "data.x.map(i, i * 2)",
        # loop: true 1 + (__result__ + [i * 2]) 1 + 1 + 1 + 3 = 6
        # a list of 1000 scalars: each step appends [i * 2] (a scalar and 3 bytes) to []
        Cost(
            nodes=12,
            nesting=1,
            estimate=5 + 7 * COLLECTION_BOUND,
            largest=2 + (SCALAR + 3) * COLLECTION_BOUND,
        ),
        "map",
    ),
    CostCase(
        "data.x.filter(i, i > 1)",
        # loop: true 1 + (i > 1 ? __result__ + [i] : __result__) 1 + 3 + 4 + 1 = 9
        Cost(
            nodes=15,
            nesting=1,
            estimate=5 + 10 * COLLECTION_BOUND,
            largest=FILTERED,
            compared=SCALAR * COLLECTION_BOUND,
        ),
        "filter",
    ),
    CostCase(
        "data.x.filter(i, i > 1).exists(j, j > 2)",
        # the filter is the iter_range of the exists: evaluated once, not nested
        Cost(
            nodes=1 + 15 + 1 + 3 + 5 + 1,
            nesting=1,
            estimate=1 + 10_005 + 1 + 1 + 8_000,
            largest=FILTERED,
            compared=2 * SCALAR * COLLECTION_BOUND,
        ),
        "a comprehension as iter_range",
    ),
    CostCase(
        "data.x.all(i, data.y.exists(j, true))",
        # outer once 5; outer loop 2 + (__result__ && <exists>) 2, times 1000;
        # inner once 5 times 1000; inner loop 3 + (__result__ || true) 3, times 1000²
        Cost(nodes=20, nesting=2, estimate=5 + 4 * 1000 + 5 * 1000 + 6 * 1000**2, largest=SCALAR),
        "nested: the inner loop weighs COLLECTION_BOUND squared",
    ),
]


@pytest.mark.parametrize("case", COSTS, ids=lambda c: c.reason)
def test_cost_of(case: CostCase) -> None:
    assert cost_of(rules._ENV.compile(case.source)) == case.cost


@given(st.integers(min_value=1, max_value=300))
@settings(max_examples=25, deadline=None, derandomize=True)
def test_cost_of_or_chain(count: int) -> None:
    cost = cost_of(rules._ENV.compile(chain("true", count)))
    assert cost == Cost(nodes=2 * count - 1, nesting=0, estimate=2 * count - 1, largest=SCALAR)


# --- sizes: what a rule may build -----------------------------------------------------


@dataclass(frozen=True)
class SizeCase:
    source: str
    copies: int  #: the bound, in whole data limits (cost.largest // MAX_DATA_BYTES)
    reason: str


#: Within MAX_VALUE_BYTES (4 data limits): compiled, with this bound.
SIZES_ACCEPTED = [
    SizeCase("data.a", 0, "a piece of the data is not built: it is there"),
    SizeCase("[data.a]", 1, "a list of a piece of the data"),
    SizeCase("data.a + data.b", 1, "two fields cannot overlap: together within the data"),
    SizeCase("data.a + data.a", 2, "the same field twice is two copies"),
    SizeCase("data.l[0] + data.l[1]", 1, "two constant indexes are different elements"),
    SizeCase("data.m[data.k] + data.m[data.j]", 2, "two computed keys may be the same"),
    SizeCase(
        '{"invoice": data.invoice, "amount": data.amount, "currency": data.currency}',
        1,
        "a payload of several fields (settlement.yaml)",
    ),
    SizeCase('{"approvals": data.approvals + [request.caller]}', 2, "data and the request"),
    SizeCase("[data, event, request]", 3, "each input is at most the data limit"),
    SizeCase("data.s + data.s + data.s + data.s", 4, "nested concatenations at the limit"),
    SizeCase("data.items.filter(x, x.qty > 0)", 1, "filter keeps elements of its range"),
    SizeCase("data.items.map(x, x.name)", 1, "map of a field: the elements' fields"),
    SizeCase("data.items.map(x, x.price * x.qty)", 0, "map to numbers: 1000 scalars"),
    SizeCase("data.items.map(x, x + x)", 2, "each element twice, summed over the range"),
    SizeCase("data.l.map(x, x).map(y, y + y)", 2, "a map over a map's result"),
    SizeCase("string(data.a) + string(data.b)", 1, "string() keeps its argument's size"),
    SizeCase("bytes(data.s)", 1, "bytes() too"),
    SizeCase("data.flag ? data.a + data.a : data.a", 2, "a choice: the larger branch"),
    SizeCase("[1, 2, 3].map(x, data.s)", 3, "a literal range counts its own elements"),
]

#: Over MAX_VALUE_BYTES: refused when compiled, however small the data is today.
SIZES_REFUSED = [
    SizeCase("data.l.map(x, data.s + data.s)", 2000, "the review's blowup: 2 GB from 1 MB"),
    SizeCase("data.s + data.s + data.s + data.s + data.s", 5, "nested concatenations"),
    SizeCase("[data, data, data, data]", 4, "a list literal of data: 4 copies and brackets"),
    SizeCase("data.l.map(x, data.s)", 1000, "collecting data inside map: a copy per element"),
    SizeCase("data.l.filter(x, true).map(y, [y, data.t])", 1000, "data with each element"),
    SizeCase("data.l.map(x, data.m[x])", 1000, "a lookup per element may hit one key"),
    SizeCase("data.l.map(x, string(data.n))", 1000, "string() of data may be a string"),
    SizeCase("(data.l + data.l).map(x, data.s)", 2000, "the range's length, not 1000"),
]


#: Bytes concatenated or scanned over an evaluation, in data limits: within
#: MAX_WORK_BYTES (16) or refused.
WORK_ACCEPTED = [
    SizeCase(
        '{"approvals": data.approvals + [request.caller], "n": size(data.approvals) + 1}',
        3,
        "settlement.yaml's write: a concatenation of two inputs, a size",
    ),
    SizeCase('data.items.map(x, x.first + " " + x.last)', 2, "each element's share once"),
    SizeCase("data.items.exists(i, size(i.tags) > 2)", 1, "size of each element"),
    SizeCase("data.l.map(x, x)", 0, "appending to the accumulator copies no accumulator"),
    SizeCase("data.l.exists(x, x == data.s)", 0, "comparing copies nothing"),
]
WORK_REFUSED = [
    SizeCase(
        "data.l.all(x, data.s + data.s + data.s + data.s != data.t)",
        9000,
        "100 elements and 1 MB took 12.5 s; at the limits, minutes",
    ),
    SizeCase("data.l.exists(x, x == data.s + data.s)", 2000, "built per element, not kept"),
    SizeCase("data.l.exists(x, size(data.s) > 0)", 1000, "a string's size counts it"),
]


@pytest.mark.parametrize("case", WORK_ACCEPTED, ids=lambda c: c.reason)
def test_work_bound_accepts(case: SizeCase) -> None:
    compiled = compile_rule(publish(payload=case.source))
    assert compiled.effect is not None
    assert compiled.effect.cost.work // MAX_DATA_BYTES == case.copies


@pytest.mark.parametrize("case", WORK_REFUSED, ids=lambda c: c.reason)
def test_work_bound_refuses(case: SizeCase) -> None:
    cost = cost_of(rules._ENV.compile(case.source))
    assert cost.largest <= rules.MAX_VALUE_BYTES  # every value is small enough
    assert cost.work // MAX_DATA_BYTES == case.copies
    with pytest.raises(RuleCostError) as caught:
        compile_rule(publish(case.source))
    assert caught.value.reason == (
        f"rule 'r', when: may concatenate or scan {cost.work:,} bytes; at most "
        f"{rules.MAX_WORK_BYTES:,} (16 times the data limit)"
    )


@pytest.mark.parametrize("case", SIZES_ACCEPTED, ids=lambda c: c.reason)
def test_size_bound_accepts(case: SizeCase) -> None:
    compiled = compile_rule(publish(payload=case.source))
    assert compiled.effect is not None
    assert compiled.effect.cost.largest // MAX_DATA_BYTES == case.copies
    assert compiled.effect.cost.largest <= rules.MAX_VALUE_BYTES


@pytest.mark.parametrize("case", SIZES_REFUSED, ids=lambda c: c.reason)
def test_size_bound_refuses(case: SizeCase) -> None:
    cost = cost_of(rules._ENV.compile(case.source))
    assert cost.largest // MAX_DATA_BYTES == case.copies
    assert 0 <= cost.largest_at < len(case.source)
    with pytest.raises(RuleCostError) as caught:
        compile_rule(publish(payload=case.source, name="big"))
    assert caught.value.reason == (
        f"rule 'big', payload: the value built at character {cost.largest_at} may hold "
        f"{cost.largest:,} bytes; at most {rules.MAX_VALUE_BYTES:,} (4 times the data limit)"
    )
    assert caught.value.hint is not None and "map/filter" in caught.value.hint


def test_size_bound_refuses_a_condition_and_an_answer_too() -> None:
    with pytest.raises(RuleCostError, match="rule 'r', when: the value built"):
        compile_rule(publish("size(data.l.map(x, data.s)) > 0"))
    blowup = Answer(method="m", reply="data.l.map(x, data.s + data.s)")
    with pytest.raises(RuleCostError, match="answer m, reply: the value built"):
        rules.compile_answer(blowup)


def test_iterations_follow_the_range() -> None:
    # A computed range may be longer than a collection of the data: the cost estimate
    # counts its own length (2000 here), a literal range its elements.
    doubled = cost_of(rules._ENV.compile("(data.l + data.l).exists(x, x == 1)"))
    single = cost_of(rules._ENV.compile("data.l.exists(x, x == 1)"))
    assert doubled.estimate == 8 + 8 * 2 * COLLECTION_BOUND  # the range: _+_, 2 x data.l
    assert single.estimate == 5 + 8 * COLLECTION_BOUND
    # the range: a list and its 2 elements
    assert cost_of(rules._ENV.compile("[1, 2].exists(x, x == 1)")).estimate == 6 + 8 * 2


#: One use of every function the standard library declares in rules._ENV (the env has
#: no extension): each must be in the size table, and these are the names it resolves to.
STANDARD_LIBRARY = {
    "data.l.exists(x, x > 1) && data.l.all(x, x > 1) && data.l.exists_one(x, x > 1)": (
        "@not_strictly_false", "!_", "_||_", "_&&_", "_>_", "_?_:_", "_+_", "_==_",
    ),
    "data.l.map(x, x > 1, x) + data.l.filter(x, x >= 1)": ("_+_", "_?_:_", "_>_", "_>=_"),
    '1 in data.l && "a" in data && has(data.a) && !(-data.n < 2) && 2 <= 3 && 1 != 2': (
        "@in", "_&&_", "!_", "-_", "_<_", "_<=_", "_!=_",
    ),
    "1 - 2 * 3 / 4 % 5": ("_-_", "_*_", "_/_", "_%_"),
    "now.getFullYear() + now.getMonth() + now.getDayOfYear() + now.getDayOfMonth()"
    " + now.getDate() + now.getDayOfWeek() + now.getHours('UTC') + now.getMinutes()"
    " + now.getSeconds() + now.getMilliseconds()": (
        "getFullYear", "getMonth", "getDayOfYear", "getDayOfMonth", "getDate",
        "getDayOfWeek", "getHours", "getMinutes", "getSeconds", "getMilliseconds", "_+_",
    ),
    'timestamp("2020-01-01T00:00:00Z") + duration("1s") < now': (
        "timestamp", "duration", "_+_", "_<_",
    ),
    'type(1) == int && int("1") + int(1.0) > 0 && uint(1) + uint("1") > 0u && double(1) > 0.0'
    ' && bool("true")': ("type", "int", "uint", "double", "bool", "_==_", "_+_", "_>_", "_&&_"),
    'string(b"a") + string(now) + string(1) + string(bytes("a")) + dyn(data.x)': (
        "string", "bytes", "dyn", "_+_",
    ),
    'data.s.contains("b") && data.s.startsWith("a") && data.s.endsWith("a")'
    ' && data.s.matches("a+") && size(data.s) + data.s.size() > 0 && data.l[0] == 1': (
        "contains", "startsWith", "endsWith", "matches", "size", "_[_]", "_&&_", "_+_",
        "_>_", "_==_",
    ),
}  # fmt: skip


def _functions(expr: Any) -> set[str]:
    kind = expr.WhichOneof("kind")
    if kind is None or kind in ("const_expr", "ident_expr"):
        return set()
    if kind == "select_expr":
        return _functions(expr.select_expr.operand)
    if kind == "call_expr":
        call = expr.call_expr
        found = {call.function} | _functions(call.target)
        return found.union(*(_functions(a) for a in call.args))
    if kind == "list_expr":
        return set().union(*(_functions(e) for e in expr.list_expr.elements))
    if kind == "struct_expr":
        entries = expr.struct_expr.entries
        return set().union(*(_functions(e.map_key) | _functions(e.value) for e in entries))
    loop = expr.comprehension_expr
    parts = (loop.iter_range, loop.accu_init, loop.loop_condition, loop.loop_step, loop.result)
    return set().union(*(_functions(p) for p in parts))


def test_every_standard_function_has_a_size_rule() -> None:
    known = rules._SCALAR_FUNCTIONS | rules._CONVERSIONS | rules._STRUCTURAL
    seen: set[str] = set()
    for source, expected in STANDARD_LIBRARY.items():
        expression = rules._ENV.compile(source)
        raw = next(b for n, b in rules._message(expression.serialize()) if n == 2)
        found = _functions(rules._CEL["CheckedExpr"].FromString(raw).expr)
        assert found == set(expected), source
        cost_of(expression)  # no RuleCostError: every one is sized
        seen |= found
    assert seen == known, "the table lists a function no test uses, or misses one"


@pytest.mark.parametrize(
    "source",
    [
        "data.s.contains(data.t)",
        "data.s.matches(data.pattern)",
        "matches(request.caller, data.pattern)",
        "data.l.exists(x, x.contains(data.q))",
        'data.l.exists(x, (x + "!").contains(event.data))',
    ],
)
def test_a_search_of_input_text_for_input_text_is_refused(source: str) -> None:
    # 200 kB of "a" searched for 100 kB of "a" then "b" took 0.7 s; the time grows faster
    # than the square of the size, and the runtime cannot be interrupted.
    with pytest.raises(RuleCostError) as caught:
        compile_rule(publish(source))
    assert "searches input text for input text" in caught.value.reason
    assert caught.value.hint is not None and "written in the rule" in caught.value.hint


@pytest.mark.parametrize(
    "source",
    [
        'data.s.contains("urgent")',
        'data.id.matches("^[a-z]+$")',
        '["a", "b"].exists(x, data.s.contains(x))',
        'data.l.exists(x, "abc".contains(x))',
        "request.caller.startsWith(data.prefix) && data.s == data.t",
    ],
)
def test_a_search_with_one_side_written_in_the_rule_is_accepted(source: str) -> None:
    compile_rule(publish(source))


def test_a_function_without_a_size_rule_is_refused() -> None:
    # An extension (here a declared ``repeat``) would let a rule build any size.
    env = cel.NewEnv(
        variables=dict(rules.VARIABLES),
        functions=[
            cel.FunctionDecl(
                "repeat",
                [
                    cel.Overload(
                        "string_repeat_int",
                        cel.Type.STRING,
                        [cel.Type.STRING, cel.Type.INT],
                        is_member=True,
                    )
                ],
            )
        ],
    )
    with pytest.raises(RuleCostError, match="function repeat has no size bound"):
        cost_of(env.compile("data.s.repeat(1000000)"))


def _measure(value: Any) -> int:
    """What the size bound counts: strings by their UTF-8 bytes, lists and maps by their
    items and one byte per separator and bracket, other values by their JSON text."""
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, list):
        return sum(_measure(v) for v in value) + max(len(value) - 1, 0) + 2
    if isinstance(value, dict):
        inside = sum(_measure(k) + _measure(v) for k, v in value.items())
        return inside + max(2 * len(value) - 1, 0) + 2
    return len(json.dumps(value))


#: Shapes whose values the property test below measures against their bound.
MEASURED = [
    "data.a + data.b",
    "data.a + data.a + data.b",
    "[data.a, data.l, data.a]",
    '{"x": data.a, "y": data.l}',
    "data.l.map(x, x + x)",
    "data.l.map(x, x + data.a)",
    "data.l.filter(x, x != data.a)",
    "data.l.map(x, [x, x]).map(y, y + [data.a])",
    "data.l + data.l.map(x, x)",
    "data.l[0] + data.l[1] + data.a",
    "data.m.map(k, data.m[k] + k)",
    'data.l.exists(x, x == "q") ? data.l : [data.a]',
    "string(data.a) + string(size(data.l))",
    "[data]",
    "[data, data.a, data.l, data.l[0]]",
    "[data.a, data.b].map(x, x + x)",
    '(data.l + [data.a, "lit"]).filter(x, x != "")',
    "data.l.map(x, [x]).map(y, y + y)",
    "data.m.filter(k, true).map(k, [k, data.m[k], data.a])",
    '{"l": data.l.map(x, x + data.b), "m": data.m}',
]

_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
_LONG = "x" * 300


@given(
    a=_TEXT,
    b=_TEXT,
    items=st.lists(_TEXT, min_size=2, max_size=8),
    keys=st.dictionaries(_TEXT, _TEXT, max_size=6),
)
@settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
# Where the data is mostly one field: a miscount of copies shows (each was seen to fail
# with the copies of an element's share counted once, or a piece not overlapping its
# parent).
@example(a=_LONG, b="", items=["", "", "", ""], keys={})
@example(a="", b="", items=[_LONG, "y"], keys={})
@example(a="", b="", items=["", ""], keys={_LONG: "k", "k": _LONG})
def test_values_stay_within_their_size_bound(
    a: str, b: str, items: list[str], keys: dict[str, str]
) -> None:
    """Evaluated on data of D bytes of JSON, every shape's value measures at most its
    bound computed with the data limit set to D: the bound is an upper bound."""
    data = {"a": a, "b": b, "l": items, "m": keys}
    limit = len(rules.dump_data(data))
    # The data's own limits, so that the bound is close to the values (with 1000-element
    # collections the brackets of 1000 elements would hide any miscount of the data).
    longest = max(len(data), len(items), len(keys))
    inputs = {
        **rules._INPUTS,
        **{name: rules._piece((name,), longest) for name in ("data", "event", "request")},
    }
    for source in MEASURED:
        expression = rules._ENV.compile(source)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(rules, "MAX_DATA_BYTES", limit)
            patch.setattr(rules, "_INPUTS", inputs)
            bound = cost_of(expression).largest
        activation = rules.activation_of(data=data, generation=1, epoch=1, now=NOW, host=HOST)
        value = expression.eval(activation=activation).plain_value()
        assert _measure(value) <= bound, (source, value, bound)


# --- object data ---------------------------------------------------------------------


def nested(depth: int) -> Any:
    """``depth`` containers around a scalar, alternating lists and maps."""
    value: Any = 1
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


@dataclass(frozen=True)
class DataCase:
    value: Any
    error: type[RuleError] | None
    reason: str


DATA = [
    DataCase({"a": [0] * COLLECTION_BOUND}, None, "a list at the bound"),
    DataCase({str(i): i for i in range(COLLECTION_BOUND)}, None, "a map at the bound"),
    DataCase({"a": [0] * (COLLECTION_BOUND + 1)}, RuleCostError, "a list over the bound"),
    DataCase({str(i): i for i in range(COLLECTION_BOUND + 1)}, RuleCostError, "map over bound"),
    DataCase(
        {"a": {"b": [{"c": list(range(COLLECTION_BOUND + 1))}]}},
        RuleCostError,
        "a deep list over the bound",
    ),
    DataCase(nested(MAX_DATA_DEPTH), None, "nested to the limit"),
    DataCase(nested(MAX_DATA_DEPTH + 1), RuleCostError, "nested deeper than the limit"),
    DataCase({"s": "x" * 100_000}, None, "long strings are bounded by the data size instead"),
    DataCase({"s": "caf\u00e9 \U0001f600"}, None, "any Unicode"),
    DataCase({"s": "\ud800"}, RuleError, "a lone surrogate value"),
    DataCase({"a": [{"\udfff": 1}]}, RuleError, "a lone surrogate key"),
]


@pytest.mark.parametrize("case", DATA, ids=lambda c: c.reason)
def test_check_data(case: DataCase) -> None:
    if case.error is None:
        check_data(case.value)
        return
    with pytest.raises(RuleError) as caught:
        check_data(case.value)
    assert type(caught.value) is case.error


@pytest.mark.parametrize(
    ("raw", "content_type", "expected", "reason"),
    [
        (b'{"a": 1}', "application/json", {"a": 1}, "JSON object"),
        (b'{"a": 1}', "application/json; charset=utf-8", {"a": 1}, "with parameters"),
        (b"\x00\x01", "application/octet-stream", {}, "other content: no data for rules"),
        (b"[1]", "text/plain", {}, "only the content type decides"),
        (b'{"s": "\\ud83d\\ude00"}', "application/json", {"s": "\U0001f600"}, "surrogate pair"),
    ],
)
def test_load_data(raw: bytes, content_type: str, expected: Any, reason: str) -> None:
    assert load_data(raw, content_type) == expected, reason


@pytest.mark.parametrize(
    ("raw", "mentions", "reason"),
    [
        (b"{", "not JSON", "truncated"),
        (b"\xff\xfe", "not JSON", "not UTF-8"),
        (b"[1, 2]", "must be a JSON object", "an array"),
        (b'"text"', "must be a JSON object", "a string"),
        (b"null", "must be a JSON object", "null"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON", "nested past the recursion limit"),
    ],
)
def test_load_data_refuses(raw: bytes, mentions: str, reason: str) -> None:
    with pytest.raises(RuleError, match=mentions):
        load_data(raw, "application/json")


def test_load_then_check_refuses_escaped_lone_surrogate() -> None:
    # Valid JSON grammar, not valid Unicode: refused before any rule sees it.
    data = load_data(b'{"s": "\\ud800"}', "application/json")
    with pytest.raises(RuleError, match="not valid Unicode"):
        check_data(data)


def test_dump_data_is_canonical() -> None:
    assert dump_data({"b": [1, {"d": 2, "c": None}], "a": "é"}) == (
        b'{"a":"\\u00e9","b":[1,{"c":null,"d":2}]}'
    )
    assert load_data(dump_data({"x": [1.5, True]}), "application/json") == {"x": [1.5, True]}


# --- evaluation ------------------------------------------------------------------------


def test_runtime_errors_do_not_fire_and_do_not_stop_others() -> None:
    ruleset = compile_rules(
        [
            publish("data.s > 1", name="compare"),
            publish("data.missing == 1", name="missing"),
            publish("data.s == 'abc'", name="fires", payload="data.s"),
            write("{'n': data.nope}", name="bad-patch"),
            invoke("false", name="quiet"),
            invoke(name="last", payload="generation"),
        ]
    )
    outcome = evaluate(ruleset, {"s": "abc"})
    assert outcome.proposals == (
        Proposal(rule="fires", resource="pubsub:alerts/x", verb="publish", value="abc"),
        Proposal(rule="last", resource="invoke:payments/charge", verb="invoke", value=7),
    )
    assert [e.split(":", 1)[0] for e in outcome.errors] == [
        "rule compare",
        "rule missing",
        "rule bad-patch",
    ]
    assert outcome.errors[0].startswith("rule compare: condition failed: ")
    assert "missing" in outcome.errors[1]
    assert outcome.errors[2].startswith("rule bad-patch: action failed: ")
    assert all("\n" not in e for e in outcome.errors)


@pytest.mark.parametrize(
    ("value", "type_name", "reason"),
    [
        (3, "INT", "an int"),
        (0, "INT", "zero, equal to False but not False (a false condition costs no type check)"),
        ("", "STRING", "the empty string, falsy but not False"),
        ([], "LIST", "an empty list, falsy but not False"),
        ("true", "STRING", "a string that reads like a bool"),
        (None, "NULL", "null"),
        ([True], "LIST", "a list"),
        ({"a": True}, "MAP", "a map"),
    ],
)
def test_non_bool_condition_is_reported(value: Any, type_name: str, reason: str) -> None:
    outcome = evaluate(compile_rules([publish("data.flag")]), {"flag": value})
    assert outcome.proposals == ()
    assert len(outcome.errors) == 1
    assert outcome.errors[0].startswith(f"rule r: condition gave {type_name}"), reason
    assert outcome.errors[0].endswith("not a bool")


def test_false_is_neither_a_proposal_nor_an_error() -> None:
    outcome = evaluate(
        compile_rules([publish("data.flag"), publish("false", name="f")]), {"flag": False}
    )
    assert outcome == Outcome(proposals=(), errors=())


def test_variables() -> None:
    ruleset = compile_rules(
        [
            publish(
                "generation == 7 && epoch == 2 && host.startsWith('spiffe://org-a.example/')"
                " && now == timestamp('2025-01-02T03:04:05Z')",
                payload="[generation, epoch, host, now]",
            )
        ]
    )
    (proposal,) = evaluate(ruleset, {}).proposals
    assert proposal.value == [7, 2, HOST, "2025-01-02T03:04:05Z"]
    assert evaluate(ruleset, {}, generation=8).proposals == ()


@pytest.mark.parametrize(
    ("payload", "expected", "reason"),
    [
        ("now", "2025-01-02T03:04:05Z", "timestamps as RFC 3339 text in UTC"),
        ("timestamp('2020-01-01T10:00:00+02:00')", "2020-01-01T08:00:00Z", "offsets to UTC"),
        ("timestamp('2020-01-01T00:00:00.25Z')", "2020-01-01T00:00:00.250000Z", "fractions"),
        ("duration('90s')", "90.0s", "durations as seconds"),
        ("now - timestamp('2025-01-02T03:04:04.5Z')", "0.5s", "a difference of timestamps"),
        ("b'\\x01\\xff'", "01ff", "bytes as hex"),
        ("bytes('ab')", "6162", "bytes from a string"),
        ("3u", 3, "uint as int"),
        ("-3", -3, "int"),
        ("1.5", 1.5, "double"),
        ("'text'", "text", "string"),
        ("true", True, "bool"),
        ("null", None, "null"),
        ("[]", [], "empty list"),
        ("[now, 1, [b'a']]", ["2025-01-02T03:04:05Z", 1, ["61"]], "inside lists"),
        (
            "{'a': {'b': b'ab', 't': now}}",
            {"a": {"b": "6162", "t": "2025-01-02T03:04:05Z"}},
            "maps",
        ),
        ("{1: 'one', 2u: 'two'}", {"1": "one", "2": "two"}, "int keys as text"),
        (
            "{true: 'yes', false: 'no'}",
            {"true": "yes", "false": "no"},
            "bool keys as JSON spells them",
        ),
        ("data", {"n": 1, "l": [1.5, None, "s"], "m": {"k": True}}, "the data itself"),
        ("data.l", [1.5, None, "s"], "part of the data"),
    ],
)
def test_payload_becomes_json(payload: str, expected: Any, reason: str) -> None:
    data = {"n": 1, "l": [1.5, None, "s"], "m": {"k": True}}
    outcome = evaluate(compile_rules([publish(payload=payload)]), data)
    assert outcome.errors == (), reason
    (proposal,) = outcome.proposals
    assert proposal.value == expected, reason
    assert json.loads(json.dumps(proposal.value, allow_nan=False)) == expected


@pytest.mark.parametrize(
    ("payload", "data", "reason"),
    [
        ("1.0 / 0.0", {}, "infinity"),
        ("-1.0 / 0.0", {}, "minus infinity"),
        ("[double('NaN')]", {}, "NaN inside a list"),
        ("{'x': data.x}", {"x": math.inf}, "infinity from the data"),
    ],
)
def test_payload_that_json_cannot_hold_is_an_error(payload: str, data: Any, reason: str) -> None:
    outcome = evaluate(compile_rules([publish(payload=payload), publish(name="next")]), data)
    assert [p.rule for p in outcome.proposals] == ["next"], reason
    (error,) = outcome.errors
    assert error.startswith("rule r: action failed: ") and "JSON cannot hold" in error


@pytest.mark.parametrize(
    ("patch", "data", "expected", "reason"),
    [
        ("{'seen': true}", {}, {"seen": True}, "a literal map"),
        ("{}", {}, {}, "an empty map"),
        ("data.m", {"m": {"a": 1}}, {"a": 1}, "a map from the data"),
        ("{data.k: 1}", {"k": "key"}, {"key": 1}, "a dyn key that is a string"),
        ("{'at': now}", {}, {"at": "2025-01-02T03:04:05Z"}, "values become JSON"),
        ("data.l", {"l": [1]}, None, "a list"),
        ("data.n", {"n": 1}, None, "an int"),
        ("data.m", {"m": None}, None, "null"),
        ("{data.k: 1}", {"k": 5}, None, "a dyn key that is an int"),
        ("{'a': 1, 2: 'b'}", {}, None, "mixed keys"),
    ],
)
def test_patch_must_be_a_map_at_run_time(
    patch: str, data: dict[str, Any], expected: Any, reason: str
) -> None:
    outcome = evaluate(compile_rules([write(patch), publish(name="next")]), data)
    if expected is None:
        assert [p.rule for p in outcome.proposals] == ["next"], reason
        (error,) = outcome.errors
        assert error == "rule r: patch is not a map with string keys", reason
    else:
        assert outcome.errors == (), reason
        assert outcome.proposals[0] == Proposal(
            rule="r", resource="state:self", verb="write", value=expected
        )


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"s": "\ud800"}, "a lone surrogate value"),
        ({"\udfff": "x"}, "a lone surrogate key"),
        ({"m": {"k": ["a\ud800b"]}}, "deep inside"),
    ],
)
def test_data_the_runtime_cannot_convert_is_an_error(data: dict[str, Any], reason: str) -> None:
    # The runtime raises RuntimeError for these instead of giving an error value.
    ruleset = compile_rules(
        [publish("size(data) > 0", name="reads"), publish(name="blind"), write("data", name="w")]
    )
    outcome = evaluate(ruleset, data)
    assert [p.rule for p in outcome.proposals] == ["blind"], reason
    assert [e.split(":", 1)[0] for e in outcome.errors] == ["rule reads", "rule w"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"x": 2**64}, "beyond uint64"),
        ({"x": -(2**63) - 1}, "below int64"),
        ({"x": (1, 2)}, "a tuple is not a CEL value"),
        ({"x": object()}, "nor is an arbitrary object"),
    ],
)
def test_values_out_of_cel_range_are_errors(data: dict[str, Any], reason: str) -> None:
    outcome = evaluate(compile_rules([publish("data.x == 1"), publish(name="next")]), data)
    assert [p.rule for p in outcome.proposals] == ["next"], reason
    (error,) = outcome.errors
    assert error.startswith("rule r: condition failed: "), reason


# --- spec mappings -------------------------------------------------------------------------

WHERE = "spec.yaml: rules[0]"


@pytest.mark.parametrize(
    ("item", "expected", "reason"),
    [
        (
            {"name": "a", "when": "data.x > 1", "publish": {"topic": "alerts/x"}},
            publish("data.x > 1", name="a"),
            "publish without payload",
        ),
        (
            {"name": "a", "when": "true", "publish": {"topic": "alerts/x", "payload": "data"}},
            publish(name="a", payload="data"),
            "publish with payload",
        ),
        ({"name": "w", "write": '{"x": 1}'}, write('{"x": 1}', name="w"), "when defaults to true"),
        (
            {"name": "i", "when": "data.go", "invoke": {"target": "pay/charge", "payload": "1"}},
            invoke("data.go", name="i", target="pay/charge", payload="1"),
            "invoke",
        ),
        (
            {"name": "bad name", "when": "1", "publish": {"topic": "nope"}},
            publish("1", name="bad name", topic="nope"),
            "the mapping is only the shape; compile_rules judges the content",
        ),
    ],
)
def test_rule_from_mapping(item: Any, expected: Rule, reason: str) -> None:
    assert rule_from_mapping(item, WHERE) == expected, reason


@pytest.mark.parametrize(
    ("item", "mentions", "reason"),
    [
        (["name", "a"], f"{WHERE}: expected a mapping", "a list"),
        ("name: a", f"{WHERE}: expected a mapping", "a string"),
        (None, f"{WHERE}: expected a mapping", "empty item"),
        ({"name": "a", "foo": 1, "write": "{}"}, f"{WHERE}.foo: unknown key", "unknown key"),
        ({1: "x", "foo": 2, "name": "a", "write": "{}"}, f"{WHERE}.1: unknown key", "int key"),
        ({"name": "a", "when": "true"}, "give exactly one of write, publish, invoke", "no action"),
        (
            {"name": "a", "write": "{}", "publish": {"topic": "a/b"}},
            "give exactly one of",
            "two actions",
        ),
        ({"when": "true", "write": "{}"}, "name and when must be strings", "no name"),
        ({"name": 1, "write": "{}"}, "name and when must be strings", "int name"),
        ({"name": "a", "when": True, "write": "{}"}, "name and when must be strings", "bool when"),
        ({"name": "a", "write": {"x": 1}}, f"{WHERE}.write: expected a CEL map", "a YAML map"),
        ({"name": "a", "publish": "alerts/x"}, f"{WHERE}.publish: expected a mapping", "str"),
        ({"name": "a", "publish": {}}, f"{WHERE}.publish: needs topic", "no topic"),
        (
            {"name": "a", "publish": {"topic": "a/b", "extra": 1}},
            "needs topic (and optionally payload)",
            "extra key",
        ),
        ({"name": "a", "publish": {"topic": 5}}, "needs topic", "int topic"),
        ({"name": "a", "publish": {"topic": "a/b", "payload": {}}}, "needs topic", "map payload"),
        ({"name": "a", "invoke": {"topic": "a/b"}}, f"{WHERE}.invoke: needs target", "topic key"),
    ],
)
def test_rule_from_mapping_refuses(item: Any, mentions: str, reason: str) -> None:
    with pytest.raises(RuleError) as caught:
        rule_from_mapping(item, WHERE)
    assert type(caught.value) is RuleError
    assert mentions in caught.value.reason, reason
    assert caught.value.reason.startswith(WHERE)


# --- properties ---------------------------------------------------------------------------

#: Rules that read the data every way a rule can: comparisons, presence, sizes,
#: comprehensions over maps and lists, dyn conditions, dyn patches, whole-data payloads.
PROPERTY_RULES = compile_rules(
    [
        publish("data.a > 1", name="gt"),
        publish("has(data.b) && data.b == 'x'", name="has"),
        publish("size(data) > 2", name="size", payload="size(data)"),
        publish("data.exists(k, k.startsWith('a'))", name="keys", payload="data"),
        publish("data.c", name="dyn"),
        publish("data.l.all(i, i != null)", name="all", payload="data.l.map(i, [i])"),
        publish("string(data.a) == '1'", name="str", payload="[data.a, data.b]"),
        write("data.d", name="patch-dyn"),
        write("{'seen': generation, 'copy': data}", name="patch-copy"),
        invoke("generation % 2 == 0", name="even", payload="data.e * 2"),
        invoke("type(data.a) == int", name="typed", payload="data.a + 1"),
    ]
)

KEYS = st.sampled_from(["a", "b", "c", "d", "e", "l", "ab", "z"]) | st.text(max_size=3)
TEXT = st.text(max_size=4) | st.sampled_from(["x", "1", "\ud800", "a\udfffb"])
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()  # unbounded: beyond 64 bits too
    | st.floats(allow_nan=True, allow_infinity=True)
    | TEXT
)
JSONISH = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=12,
)
DATA_DICTS = st.dictionaries(KEYS, JSONISH, max_size=6)


@given(data=DATA_DICTS, generation=st.integers(min_value=0, max_value=2**63 - 1))
@settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
def test_evaluate_never_raises_and_is_deterministic(data: dict[str, Any], generation: int) -> None:
    first = evaluate(PROPERTY_RULES, data, generation=generation)
    second = evaluate(PROPERTY_RULES, data, generation=generation)
    assert first == second
    names = [c.rule.name for c in PROPERTY_RULES.rules]
    fired = [p.rule for p in first.proposals]
    assert fired == sorted(fired, key=names.index), "proposals keep the rules' order"
    assert set(fired).isdisjoint(e.split(":", 1)[0].removeprefix("rule ") for e in first.errors)
    for proposal in first.proposals:
        json.dumps(proposal.value, allow_nan=False)  # JSON, strictly
        if proposal.verb == "write":
            assert isinstance(proposal.value, dict)
            assert all(isinstance(k, str) for k in proposal.value)
