"""Reads are bounded too: comparisons, ``in``, searches, conversions and key lookups.

Session 29's analysis bounded what a rule builds and concatenates; what it reads was
only bounded by the node count. bench/rules_worst.py timed the shapes below at the data
limit (4 MiB of JSON, 1000-element collections) on this project's 2-core machine, all
accepted before: ``data.l.all(x, data.m == data.n)`` 46-86 s (each deep comparison of
two 1M-number maps 54-107 ms), ``data.l.all(x, !data.s.contains("ab"))`` 27 s,
a ``matches`` whose pattern defeats RE2's DFA 1.3 s without any loop. Each is now
refused at compile time, while the repository's own rules still compile.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import rules
from gateway.errors import RuleCostError
from gateway.limits import MAX_DATA_BYTES
from gateway.model import Answer, Publish, Rule
from gateway.rules import compile_answer, compile_rule, cost_of

D = MAX_DATA_BYTES
ROOT = Path(__file__).resolve().parent.parent


def publish(when: str) -> Rule:
    return Rule(name="r", when=when, action=Publish(topic="a/b"))


@dataclass(frozen=True)
class ReadCase:
    source: str
    reason: str


#: Bytes compared beyond MAX_COMPARED_BYTES: refused, with the figures measured before.
COMPARED_REFUSED = [
    ReadCase("data.l.all(x, data.m == data.n)", "1000 deep comparisons of maps: 46-86 s"),
    ReadCase("data.l.all(x, data.a == data.b)", "1000 deep comparisons of lists: 47 s"),
    ReadCase("data.l.all(x, data.s == data.t)", "1000 x 2 MiB memcmp: 46-71 ms"),
    ReadCase("data.l.all(x, data.s <= data.t)", "ordering reads as far as equality: 82 ms"),
    ReadCase("data.l.all(x, data.s.startsWith(data.t))", "a prefix test per element: 55 ms"),
    ReadCase("data.l.all(x, data.s.endsWith(data.t))", "a suffix test per element: 117 ms"),
    ReadCase("data.l.all(x, !(data.s in data.k))", "a list scanned per element: 187 ms"),
    ReadCase("data.l.all(x, [data.s] == [data.t])", "literals compare their elements: 47 ms"),
    ReadCase(
        "(data.l + data.l + data.l + data.l).all(x, data.s == data.t)",
        "a range four times as long: 185 ms",
    ),
    ReadCase(
        " && ".join(["data.m == data.n"] * 5),
        "five deep comparisons of the data's maps, no loop: 5 x 54-107 ms",
    ),
]

#: Bytes scanned beyond MAX_WORK_BYTES (searches weigh their pattern): refused.
WORK_REFUSED = [
    ReadCase('data.l.all(x, !data.s.contains("ab"))', "1000 x 4 MiB searched: 27 s"),
    ReadCase('data.l.all(x, !data.s.matches("a*b"))', "1000 x 4 MiB matched: 9-13 s"),
    ReadCase(
        'data.s.matches("(a|b)*a' + "(a|b)" * 20 + 'c")',
        "a pattern beyond RE2's DFA cache runs its NFA: 1.3 s once, no loop",
    ),
    ReadCase("data.l.all(x, double(data.s) > 0.0)", "a number parsed per element: 3.5 s"),
    ReadCase('data.l.all(x, bytes(data.s) != b"")', "a string copied per element: 0.24 s"),
    ReadCase(
        "data.l.all(x, data.m[data.s] == 1)",
        "a key looked up per element (a missing one copied into the error): 12 s",
    ),
    ReadCase(
        "data.l.all(x, {data.s: 1, data.t: 2} != {})",
        "a map literal's keys hashed per element: 0.8 s",
    ),
    ReadCase("data.l.all(x, int(data.s) > 0)", "digits parsed per element: 12.7 s"),
    ReadCase(
        'data.l.all(x, string(bytes(data.s)) != "")', "copied and validated per element: 6.4 s"
    ),
]

#: Realistic reads: within both budgets.
ACCEPTED = [
    ReadCase("data.l.exists(x, x == data.s)", "each element compared once: 1 ms"),
    ReadCase("data.m == data.n", "one deep comparison: about a pass over the data"),
    ReadCase(
        " && ".join(f"event.data.{f} == data.{f}" for f in "abcdefgh"),
        "fields of the data that cannot overlap share one data limit",
    ),
    ReadCase('data.tags.exists(t, t == "urgent")', "bench_cycle's escalate rule"),
    ReadCase("data.items.all(i, timestamp(i.due) < now)", "each element parsed once"),
    ReadCase('data.id.matches("^[a-z]+$") && data.name.contains("urgent")', "short patterns"),
    ReadCase("data.l.exists(x, data.m[x] == 1)", "a lookup by each element"),
    ReadCase(
        'data.state == "requested" && !(request.caller in data.approvals)',
        "settlement.yaml's approve condition",
    ),
]


@pytest.mark.parametrize("case", COMPARED_REFUSED, ids=lambda c: c.reason)
def test_comparisons_of_input_beyond_the_read_bound_are_refused(case: ReadCase) -> None:
    cost = cost_of(rules._ENV.compile(case.source))
    assert cost.largest <= rules.MAX_VALUE_BYTES and cost.work <= rules.MAX_WORK_BYTES
    assert cost.compared > rules.MAX_COMPARED_BYTES
    with pytest.raises(RuleCostError) as caught:
        compile_rule(publish(case.source))
    assert caught.value.reason == (
        f"rule 'r', when: may compare {cost.compared:,} bytes; at most "
        f"{rules.MAX_COMPARED_BYTES:,} (4 times the data limit)"
    )
    assert caught.value.hint is not None and "once per element" in caught.value.hint


@pytest.mark.parametrize("case", WORK_REFUSED, ids=lambda c: c.reason)
def test_scans_of_input_beyond_the_work_bound_are_refused(case: ReadCase) -> None:
    cost = cost_of(rules._ENV.compile(case.source))
    assert cost.largest <= rules.MAX_VALUE_BYTES
    assert cost.work > rules.MAX_WORK_BYTES
    with pytest.raises(RuleCostError, match=r"rule 'r', when: may concatenate or scan"):
        compile_rule(publish(case.source))


@pytest.mark.parametrize("case", ACCEPTED, ids=lambda c: c.reason)
def test_realistic_reads_are_accepted(case: ReadCase) -> None:
    compiled = compile_rule(publish(case.source))
    assert compiled.when.cost.compared <= rules.MAX_COMPARED_BYTES
    assert compiled.when.cost.work <= rules.MAX_WORK_BYTES


def test_an_element_compared_with_a_field_counts_the_elements_once() -> None:
    # Sum over x of min(|x|, |data.s|) is at most the sum of |x|: one data limit, not 1000.
    cost = cost_of(rules._ENV.compile("data.l.exists(x, x == data.s)"))
    assert D <= cost.compared < 2 * D


def test_a_comparison_with_text_written_in_the_rule_reads_at_most_that_text() -> None:
    cost = cost_of(rules._ENV.compile('data.l.all(x, data.status == "open")'))
    assert cost.compared == rules.COLLECTION_BOUND * len("open")


def test_a_search_weighs_its_pattern() -> None:
    # contains: ~7 ns a byte for a 2-byte needle, ~25 for a 1001-byte one (measured).
    short = cost_of(rules._ENV.compile('data.s.contains("ab")')).work
    long = cost_of(rules._ENV.compile('data.s.contains("' + "a" * 640 + '")')).work
    assert short == rules._SEARCH_MIN_WEIGHT * D
    assert long == (rules._SEARCH_MIN_WEIGHT + 10) * D
    # matches: the pattern's program, its counted repetitions unrolled.
    simple = cost_of(rules._ENV.compile('data.id.matches("^[a-z]+$")')).work
    blowup = cost_of(rules._ENV.compile('data.s.matches("[ab]*a[ab]{1000}c")')).work
    assert simple == rules._SEARCH_MIN_WEIGHT * D  # 4 instructions
    assert blowup == 1005 * D
    # a needle from a literal list: its bytes; both sides bounded by the shorter
    assert cost_of(rules._ENV.compile('data.l.exists(x, "abc".contains(x))')).work == (
        rules.COLLECTION_BOUND * 3 * rules._SEARCH_MIN_WEIGHT
    )


@pytest.mark.parametrize(
    ("pattern", "size", "reason"),
    [
        ("abc", 3, "a character each"),
        ("^[a-z]+$", 4, "anchors, a class, a quantifier one more"),
        ("[]a]", 1, "a leading ] is a member of the class"),
        ("[^\\]x]", 1, "an escaped ] too"),
        ("a{3}", 4, "a counted repetition is unrolled, and one more"),
        ("a{2,5}", 6, "to its upper count"),
        ("a{2,}", 3, "or its lower one and a loop"),
        ("(ab){3}", 7, "a group repeated: its size each time"),
        ("((a|b){10}){10}", 211, "nested counts multiply"),
        ("a|bc|d", 4, "alternatives add"),
        ("\\d{4}-\\d{2}-\\d{2}", 13, "a date"),
        ("\\p{Greek}+", 2, "a Unicode class is one atom"),
        ("a{1001}", 1001, "RE2 refuses more than 1000: unrolled 1000 times"),
        ("(", 1, "unbalanced: RE2 refuses it at evaluation"),
    ],
)
def test_pattern_size(pattern: str, size: int, reason: str) -> None:
    assert rules._pattern_size(pattern) == size, reason


def test_the_refusal_names_an_answer_too() -> None:
    with pytest.raises(RuleCostError, match="answer m, when: may compare"):
        compile_answer(Answer(method="m", when="data.l.all(x, data.m == data.n)", reply="1"))


# --- the repository's own rules -------------------------------------------------------


def _from_spec(spec: Any, where: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for index, item in enumerate(spec.get("rules") or []):
        rule = rules.rule_from_mapping(item, f"{where}: rules[{index}]")
        found += [(f"{where}: {rule.name}", e) for e in _rule_sources(rule)]
    for method, item in (spec.get("answers") or {}).items():
        answer = rules.answer_from_mapping(method, item, f"{where}: answers")
        found += [(f"{where}: {method}", e) for e in (answer.when, answer.reply, answer.write)]
    return [(w, e) for w, e in found if e]


def _rule_sources(rule: Rule) -> list[str]:
    action = rule.action
    return [rule.when, getattr(action, "patch", ""), getattr(action, "payload", "")]


#: Keys under which a rule or answer expression is written in Python (spec dicts, Rule,
#: Answer, WriteState, Publish, Invoke, Binding keyword arguments).
_KEYS = {"when", "write", "patch", "payload", "reply"}


def _from_python(path: Path) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        pairs: list[tuple[Any, Any]] = []
        if isinstance(node, ast.Dict):
            pairs = list(zip(node.keys, node.values, strict=True))
        elif isinstance(node, ast.Call):
            pairs = [(ast.Constant(k.arg), k.value) for k in node.keywords if k.arg]
        for key, value in pairs:
            if (
                isinstance(key, ast.Constant)
                and key.value in _KEYS
                and isinstance(value, ast.Constant)
                and isinstance(value.value, str)
                and value.value.strip()
            ):
                found.append((f"{path.relative_to(ROOT)}:{value.lineno}", value.value))
    return found


def repository_expressions() -> list[tuple[str, str]]:
    """Every rule and answer expression of the examples, benchmarks and tests (specs in
    YAML and in Python), which the analysis must keep accepting. The rules' own tests
    (test_rules*.py) are left out: they hold the shapes that must be refused."""
    found: list[tuple[str, str]] = []
    for path in sorted(ROOT.glob("examples/**/*.yaml")):
        spec = yaml.safe_load(path.read_text())
        if isinstance(spec, dict) and ("rules" in spec or "answers" in spec):
            found += _from_spec(spec, str(path.relative_to(ROOT)))
    for folder in ("examples", "bench", "tests"):
        for path in sorted((ROOT / folder).glob("**/*.py")):
            # bench/rules_worst.py's shapes are the slow ones
            if path.name != "rules_worst.py" and not path.name.startswith("test_rules"):
                found += _from_python(path)
    return found


def test_the_repositorys_rules_stay_within_every_bound() -> None:
    expressions = repository_expressions()
    assert len(expressions) >= 130, "the collector lost the examples' rules"
    for where, source in expressions:
        try:
            rules._compile("r", "e", source, None)
        except RuleCostError as exc:  # pragma: no cover - the failure's message
            pytest.fail(f"{where}: {source!r} is refused: {exc}")
        except rules.RuleError:
            continue  # not an expression (a payload of another kind with the same key)


# --- properties ----------------------------------------------------------------------


@given(st.text(max_size=200))
@settings(max_examples=300, deadline=None, derandomize=True)
def test_pattern_size_takes_any_text(pattern: str) -> None:
    # A pattern is chosen by whoever wrote the rule: sizing it must never fail (an
    # unbalanced or invalid one included: RE2 refuses those at evaluation), and letters
    # and digits alone are one instruction each.
    assert rules._pattern_size(pattern) >= 1
    plain = "".join(c for c in pattern if c.isalnum())
    assert rules._pattern_size(plain) == max(len(plain), 1)


_SEGMENTS = st.sampled_from(["a", "b", "c", 0, 1])


@given(
    st.dictionaries(
        st.lists(_SEGMENTS, max_size=3).map(lambda tail: ("data", *tail)),
        st.integers(min_value=1, max_value=5),
        max_size=8,
    ),
    st.integers(min_value=0, max_value=100),
)
@settings(max_examples=300, deadline=None, derandomize=True)
def test_bytes_by_prefix_is_what_overlap_gives(parts: dict[Any, int], fixed: int) -> None:
    """The prefix sum _bytes uses for paths without wildcards is exactly _overlap's."""
    bound = rules._Bound(fixed, parts)
    expected = fixed
    if parts:
        expected += D * max(
            sum(n for other, n in parts.items() if rules._overlap(path, other)) for path in parts
        )
    assert rules._bytes(bound, D) == expected


def test_a_deeply_nested_pattern_is_sized_without_recursion() -> None:
    """A pattern written in a rule may nest about a thousand groups within the
    expression's 2,048 characters: it is sized like any other, never with a
    RecursionError (which no caller turns into a refusal: it would escape as no
    GatewayError from a peer's rule)."""
    nested = "(" * 1010 + "a" + ")" * 1010
    assert rules._pattern_size(nested) == 1
    assert rules._pattern_size("(" * 2040) >= 1  # unclosed: RE2 refuses it at evaluation
    assert rules._pattern_size("(" * 1010 + "a{1000}" + ")" * 1010 + "b") == 1002
    source = f'data.s.matches("{nested}")'
    assert len(source) <= rules.MAX_EXPRESSION_CHARS
    cost = rules.cost_of(rules._ENV.compile(source))
    assert cost.work >= rules.MAX_DATA_BYTES  # the text is read at least once


# --- what one evaluation of a rule set may cost, all its rules together ------------------

#: 12 data limits of work (three 4 MiB searches, each weighted 4): within one
#: expression's MAX_WORK_BYTES (16), as is each rule below.
SEARCHES = " && ".join(f'!data.{f}.contains("ab")' for f in ("s", "t", "u"))


def _searching(name: str, on: str = "cycle") -> Rule:
    return Rule(name=name, when=SEARCHES, action=Publish(topic="a/b"), on=on)


def test_the_rules_one_trigger_wakes_share_one_budget() -> None:
    """Each expression has its bounds, but a cycle evaluates every cycle rule: 32 rules at
    one expression's bound each would cost 32 times it (about 32 s of CPU at the data
    limit, per object, per cycle). The rules one trigger wakes share
    MAX_RULESET_WORK_BYTES and MAX_RULESET_COMPARED_BYTES."""
    assert cost_of(rules._ENV.compile(SEARCHES)).work == 12 * D
    two = rules.compile_rules([_searching("a"), _searching("b")])  # 24 limits: fine
    assert len(two) == 2
    with pytest.raises(RuleCostError) as refused:
        rules.compile_rules([_searching("a"), _searching("b"), _searching("c")])
    message = str(refused.value)
    assert "the 3 rules woken by cycle may together scan" in message
    assert f"{36 * D:,} bytes" in message and f"at most {rules.MAX_RULESET_WORK_BYTES:,}" in message
    # Rules of different triggers never run in one evaluation: each trigger its budget.
    mixed = rules.compile_rules(
        [_searching("a"), _searching("b"), _searching("m", "message"), _searching("n", "message")]
    )
    assert len(mixed) == 4


def test_the_rules_one_trigger_wakes_share_one_comparison_budget() -> None:
    compare = " && ".join(["data.m == data.n"] * 4)  # 4 data limits compared: at the bound
    assert cost_of(rules._ENV.compile(compare)).compared == rules.MAX_COMPARED_BYTES
    many = [Rule(name=f"r{i}", when=compare, action=Publish(topic="a/b")) for i in range(3)]
    with pytest.raises(RuleCostError) as refused:
        rules.compile_rules(many)
    assert "may together compare" in str(refused.value)
    assert len(rules.compile_rules(many[:2])) == 2
