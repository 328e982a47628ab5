"""Rules: CEL conditions over an object's data and cycle, and the actions they propose.

Why ``cel-expr-python`` (Google's CEL C++ runtime), measured by ``bench/bench_cycle.py``
on this project's rules: a typical condition evaluates in about 6-9 µs against about
550-900 µs for the pure-Python ``cel-python``. The Rust-based
``common-expression-language`` is as fast or faster on bare evaluation (0.7-1.1x over a
whole rule set), but the deciding features are elsewhere: cel-expr-python type-checks at
compile time against declared variables, and serializes the *checked* AST, which is what
lets a bad or too-costly rule be refused when an object is created or imported instead of
failing mid-cycle. Evaluation is a small part of a cycle anyway (see the benchmark).

Invariants this module keeps:

* **Compile once, at the edge.** :func:`compile_rules` parses and type-checks every
  expression and bounds its size and cost; an object whose rules do not compile is
  refused with :class:`~gateway.errors.RuleError` naming the rule and the problem.
* **Bounded cost.** The checked AST is walked (from the runtime's own serialized
  ``cel.expr.CheckedExpr``): at most :data:`MAX_NODES` nodes, comprehensions nested at
  most :data:`MAX_NESTING` deep, and an estimated cost — every node weighted by the
  elements its enclosing comprehension's range may have (:data:`COLLECTION_BOUND` for a
  collection of the data) — of at most :data:`MAX_COST`. Object data is held to the same
  bound (:func:`check_data`), so the estimate bounds how many nodes an evaluation runs.
* **Bounded size.** The same walk bounds the bytes of every value the expression can
  build, given that the data, a message and a request each hold at most
  :data:`~gateway.limits.MAX_DATA_BYTES`: no value may exceed :data:`MAX_VALUE_BYTES`
  (four times that). Concatenating or collecting data inside map/filter counts one copy
  per element, so a rule that would build gigabytes from megabytes is refused when the
  object is created or arrives, not run: the runtime has no budget of its own.
* **Bounded time.** Each node's work is linear in the bytes it reads and builds, at most
  :data:`MAX_VALUE_BYTES` each, so an evaluation takes at most the cost estimate times
  that many byte operations: coarse, so the slow ones are bounded apart. The bytes
  concatenated and scanned (``size`` of a string) over all the times each node runs are
  at most :data:`MAX_WORK_BYTES` (an element's share counted once over its loop), and
  the two searches whose time is the product of their operands' sizes (``contains``,
  ``matches``) are refused when both operands come from inputs. The other linear reads
  count too (session 30): searches against text written in the rule (weighted by the
  pattern), conversions that parse or copy, keys hashed, into the same work; comparisons
  (``==``, ordering, ``startsWith``, ``endsWith``, ``in``: the smaller operand, ``in``
  both) into at most :data:`MAX_COMPARED_BYTES`, a deep comparison of collections
  being ~15 times slower a byte than a concatenation. The cycle's timeout cannot
  interrupt an evaluation (it runs in C++), so these are checked before.
* **Rules propose, they do not act.** Evaluation returns proposals; the cycle admits each
  against the object's effective authority before anything happens.

Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cel_expr_python import cel
from google.protobuf import descriptor_pb2, descriptor_pool, empty_pb2, message_factory
from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet

from gateway._decode import scan_json
from gateway._lru import IdentityLru
from gateway._none_guard import keep_none_alive
from gateway._slots import builder
from gateway.errors import RuleCostError, RuleError
from gateway.limits import MAX_ANSWERS, MAX_DATA_BYTES, MAX_ID_BYTES, MAX_SUBSCRIPTIONS
from gateway.model import TRIGGERS, Answer, Binding, Invoke, Publish, Rule, WriteState

# cel-expr-python takes a reference from None for every CEL null it converts to Python;
# on CPython 3.11 None would be deallocated (the process aborts) after about 12,000 of
# them. Before any rule is compiled or evaluated (gateway/_none_guard.py says how).
keep_none_alive()

MAX_RULES = 32
MAX_EXPRESSION_CHARS = 2048
MAX_NODES = 256
MAX_NESTING = 1
#: Most elements any list or map in an object's data may have (checked on every write).
COLLECTION_BOUND = 1000
MAX_COST = 1_000_000
#: Most bytes any value a rule builds may hold, by the bound :func:`cost_of` computes
#: (strings and bytes by their length, lists and maps by their JSON text): four times
#: the data limit, room for a rule that copies the data, a message and a request (each
#: at most the data limit) with text around them, and nowhere near the ~1000 copies of
#: the data a concatenation inside map() would make.
MAX_VALUE_BYTES = 4 * MAX_DATA_BYTES
#: Most bytes an evaluation may concatenate or scan, over all the times each node runs:
#: the runtime concatenates at ~100 MB/s and counts a string's characters at ~300 MB/s
#: (measured), so at most ~0.6 s of CPU, which the cycle's timeout cannot interrupt.
#: Sixteen data limits: the settlement example's write needs about five. Since session 30
#: the linear reads that run at about that speed or slower count here too: a search
#: (``contains``, ``matches``) weighted by its pattern, a conversion that parses or copies
#: a string (``int``, ``double``, ``timestamp``, ``bytes``...), a key hashed to index or
#: build a map.
MAX_WORK_BYTES = 16 * MAX_DATA_BYTES
#: Most bytes an evaluation may compare (``==``, ``!=``, ``<``..., ``startsWith``,
#: ``endsWith``, ``in``), over all the times each comparison runs, each counting the
#: smaller of its operands (an equality stops at the shorter one; ``in`` counts both).
#: A budget of its own because the speed per byte differs a thousandfold with what is
#: compared: two equal 2 MiB strings compare in ~0.05 ms, two maps of a million numbers
#: (2 MiB of JSON each) in 54-107 ms (measured, bench/rules_worst.py): ~35 ns a byte, 15
#: times slower than concatenating. Four data limits: a few passes of the slowest
#: comparison over the data (~0.3-0.4 s at the limit), less than decoding, checking and
#: converting such data already costs a cycle (~1-1.5 s); pieces that cannot overlap
#: (``event.data.a == data.a && event.data.b == data.b``) share one limit. The
#: repository's rules need at most 2 (settlement.yaml's ``request.caller in
#: data.approvals``).
MAX_COMPARED_BYTES = 4 * MAX_DATA_BYTES
#: What the rules one trigger wakes (every cycle rule, or every message rule) may do
#: together in one evaluation: twice one expression's bounds. Each expression keeps its
#: own, but a cycle evaluates all its rules' conditions and actions, and an object may
#: carry MAX_RULES rules: at one expression's bounds each (about a second of CPU at the
#: data limit, bench/rules_worst.py), 32 rules would cost about half a minute of one core
#: per object per cycle, which the cycle's timeout cannot interrupt. With these, about two
#: seconds at most. The repository's settlement rules use 4 of 32 data limits of work.
MAX_RULESET_WORK_BYTES = 2 * MAX_WORK_BYTES
MAX_RULESET_COMPARED_BYTES = 2 * MAX_COMPARED_BYTES
MAX_DATA_DEPTH = 32
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

#: The variables every rule expression sees.
VARIABLES: Mapping[str, cel.Type] = {
    "data": cel.Type.Map(cel.Type.STRING, cel.Type.DYN),
    "generation": cel.Type.INT,
    "epoch": cel.Type.INT,
    "now": cel.Type.TIMESTAMP,
    "host": cel.Type.STRING,
    # The CloudEvent that woke the object (rules with ``on: message``); {} on a cycle.
    "event": cel.Type.Map(cel.Type.STRING, cel.Type.DYN),
    # A call being answered: {"method", "caller", "data"} (answers); {} elsewhere.
    "request": cel.Type.Map(cel.Type.STRING, cel.Type.DYN),
}

_ENV = cel.NewEnv(variables=dict(VARIABLES))


@dataclass(frozen=True, slots=True, kw_only=True)
class Cost:
    nodes: int
    nesting: int
    estimate: int  #: node evaluations, each comprehension's body once per element
    #: Bytes: the bound of the largest value the expression may build (the inputs and
    #: their pieces are not counted: they are there already).
    largest: int
    largest_at: int = -1  #: where that value is built (a character offset), when too large
    #: Bytes concatenated or scanned (``size`` of a string, searches weighted by their
    #: pattern, conversions, keys hashed) over a whole evaluation.
    work: int = 0
    #: Bytes compared (``==``, ordering, ``startsWith``, ``endsWith``, ``in``) over a
    #: whole evaluation.
    compared: int = 0


@dataclass(frozen=True, slots=True)
class _Compiled:
    source: str
    expression: cel.Expression
    cost: Cost


@dataclass(frozen=True, slots=True, kw_only=True)
class CompiledRule:
    rule: Rule
    when: _Compiled
    effect: _Compiled | None  #: the patch (write) or payload (publish, invoke, binding)
    #: What the action touches and how (derived from ``rule``, once: every cycle asks).
    resource: str = dataclasses.field(init=False)
    verb: str = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        action = self.rule.action
        if isinstance(action, WriteState):
            resource, verb = "state:self", "write"
        elif isinstance(action, Publish):
            resource, verb = f"pubsub:{action.topic}", "publish"
        elif isinstance(action, Binding):
            resource, verb = f"binding:{action.target}", "invoke"
        else:
            resource, verb = f"invoke:{action.target}", "invoke"
        object.__setattr__(self, "resource", resource)
        object.__setattr__(self, "verb", verb)


@dataclass(frozen=True, slots=True, kw_only=True)
class Proposal:
    """An action a rule wants to take this cycle; admitted or denied by the cycle."""

    rule: str
    #: state:self, pubsub:<topic>, invoke:<app>/<method> or binding:<name>/<operation>
    resource: str
    verb: str  #: write, publish or invoke (an invoke of a service or of a binding)
    value: Any  #: the patch (a dict) or the payload, as plain JSON-able values

    def describe(self) -> str:
        return f"rule {self.rule}: {self.verb} {self.resource}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    proposals: tuple[Proposal, ...]
    errors: tuple[str, ...]  #: rules whose evaluation failed at run time (they did not fire)


#: A rule as :meth:`RuleSet.evaluate` reads it: name, condition, effect (or None),
#: resource and verb.
_Evaluable = tuple[str, cel.Expression, "cel.Expression | None", str, str]


@dataclass(frozen=True, slots=True)
class RuleSet:
    rules: tuple[CompiledRule, ...]

    def __len__(self) -> int:
        return len(self.rules)

    #: How many rules each trigger wakes (counted once: every cycle's summary says it).
    _woken: dict[str, int] = dataclasses.field(init=False, repr=False, compare=False)
    #: The rules each trigger wakes, in order, as what evaluating one reads (taken apart
    #: once: every cycle evaluates them).
    _by_trigger: dict[str, tuple[_Evaluable, ...]] = dataclasses.field(
        init=False, repr=False, compare=False
    )
    #: The variables the rules of each trigger can read (see :func:`_read_variables`).
    _reads: dict[str, tuple[str, ...]] = dataclasses.field(init=False, repr=False, compare=False)
    #: The rules of each trigger as one expression (see :meth:`_together`), compiled when
    #: first evaluated; None where it does not compile.
    _combined: dict[str, cel.Expression | None] = dataclasses.field(
        init=False, repr=False, compare=False
    )
    #: A cycle's summary entry for each number of rules that fired (``"<n> of <cycle
    #: rules> rules fired"``, n from 0): written once per rule set, not once per cycle.
    cycle_summaries: tuple[str, ...] = dataclasses.field(init=False, repr=False, compare=False)
    #: Evaluations in a row that the one expression did not answer, per trigger.
    _misses: dict[str, int] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        woken: dict[str, int] = {}
        by_trigger: dict[str, list[_Evaluable]] = {}
        for compiled in self.rules:
            woken[compiled.rule.on] = woken.get(compiled.rule.on, 0) + 1
            by_trigger.setdefault(compiled.rule.on, []).append(
                (
                    compiled.rule.name,
                    compiled.when.expression,
                    None if compiled.effect is None else compiled.effect.expression,
                    compiled.resource,
                    compiled.verb,
                )
            )
        object.__setattr__(self, "_woken", woken)
        cycle = woken.get("cycle", 0)
        object.__setattr__(
            self,
            "cycle_summaries",
            tuple(f"{fired} of {cycle} rules fired" for fired in range(cycle + 1)),
        )
        object.__setattr__(
            self, "_by_trigger", {on: tuple(rules) for on, rules in by_trigger.items()}
        )
        sources: dict[str, list[str]] = {}
        for compiled in self.rules:
            sources.setdefault(compiled.rule.on, []).append(compiled.when.source)
            if compiled.effect is not None:
                sources[compiled.rule.on].append(compiled.effect.source)
        object.__setattr__(
            self, "_reads", {on: _read_variables(texts) for on, texts in sources.items()}
        )
        object.__setattr__(self, "_combined", {})
        object.__setattr__(self, "_misses", {})

    def woken_by(self, trigger: str) -> int:
        """How many rules ``trigger`` (cycle or message) evaluates."""
        return self._woken.get(trigger, 0)

    def evaluate(
        self,
        *,
        data: Mapping[str, Any],
        generation: int,
        epoch: int,
        now: datetime,
        host: str,
        trigger: str = "cycle",
        event: Mapping[str, Any] | None = None,
    ) -> Outcome:
        """Evaluate the rules ``trigger`` wakes; ``event`` is the message that woke them."""
        # activation_of's, called by position, of the variables these rules can read:
        # every cycle builds one.
        variables = _variables(
            data, generation, epoch, now, host, event, None, self._reads.get(trigger)
        )
        evaluable = self._by_trigger.get(trigger, ())
        if evaluable:
            # One evaluation for all the rules where none fails (every cycle evaluates
            # them); anything else is evaluated rule by rule, which says what failed.
            # A rule set whose one evaluation keeps failing (a rule that fails on every
            # object's data) would pay both each time: after a few misses in a row it is
            # tried only every RETRY_TOGETHER_EVERY evaluations. Either path gives the
            # same outcome; only the cost differs.
            misses = self._misses.get(trigger, 0)
            if misses < MISSES_BEFORE_PAUSE or not misses % RETRY_TOGETHER_EVERY:
                outcome = _evaluate_together(self._together(trigger), evaluable, variables)
                if outcome is not None:
                    if misses:
                        self._misses[trigger] = 0
                    return outcome
            self._misses[trigger] = misses + 1
        # An activation only here: evaluate_together gives its variables to the one
        # evaluation (see there).
        return _evaluate_each(evaluable, _ENV.Activation(variables, None, _new_arena()))

    def _together(self, trigger: str) -> cel.Expression | None:
        """The rules ``trigger`` wakes as one expression: a list with, for each rule in
        order, ``[effect]`` if its condition holds (``[true]`` for a rule with no
        effect) and ``[]`` if not. CEL has no side effects and its conditional
        evaluates only the branch taken, so each element is what evaluating that rule's
        condition, then its effect if it fired, gives on its own; an error in any of
        them makes the whole an error. Each source is put between parentheses on lines
        of its own, so a comment runs to the end of its line only and a valid source is
        one operand (a source that does not parse alone was never compiled). None if
        the whole does not compile (the parser's size limits, say): rule by rule then."""
        combined = self._combined.get(trigger, _UNCOMPILED)
        if combined is not _UNCOMPILED:
            return combined  # type: ignore[return-value]
        parts = []
        for compiled in self.rules:
            if compiled.rule.on != trigger:
                continue
            # A rule with no effect fires as [true], not [null]: cel-expr-python 0.1.3
            # gives a CEL null to Python as None without a reference of its own (each
            # one takes a reference from None until the interpreter aborts,
            # "deallocating None").
            effect = "true" if compiled.effect is None else f"(\n{compiled.effect.source}\n)"
            parts.append(f"dyn((\n{compiled.when.source}\n) ? [{effect}] : [])")
        try:
            together: cel.Expression | None = _ENV.compile(f"[{', '.join(parts)}]")
        except RuntimeError:
            together = None
        self._combined[trigger] = together
        return together


#: Not compiled yet (a rule set's :meth:`RuleSet._together`).
_UNCOMPILED = object()
#: Evaluations in a row that the one expression may miss before it is tried only every
#: RETRY_TOGETHER_EVERY evaluations (a failing rule set cost about 25 % more per
#: evaluation trying it every time: one evaluation, then each rule's; session 40).
MISSES_BEFORE_PAUSE = 4
RETRY_TOGETHER_EVERY = 16


def _evaluate_together(
    together: cel.Expression | None, evaluable: Sequence[_Evaluable], variables: dict[str, Any]
) -> Outcome | None:
    """The outcome of ``evaluable`` from their one expression (:meth:`RuleSet._together`),
    or None when anything failed or is refused (an evaluation error, a patch that is
    not a map with string keys, a value JSON cannot hold): :func:`_evaluate_each` then
    says what, as it always did. (Exactly the outcome rule by rule otherwise:
    tests/test_p5loop_s40.py.) One evaluation instead of one per condition and effect:
    each costs the binding's call (a failed search for the arena's type: about 5,000
    instructions, session 37), the runtime's frame and a result object. The variables
    are given to that evaluation itself with an arena of its own, not through an
    activation: the binding then builds the activation inside the call (one Python
    call and object fewer), and an arena given with the variables, unlike one given
    with an activation, spares that search."""
    if together is None:
        return None
    try:
        fired: Any = together.eval(None, variables, None, _new_arena()).plain_value()
    except RuntimeError:
        return None
    if type(fired) is not list or len(fired) != len(evaluable):
        return None  # an error value reads as its message
    proposals: list[Proposal] = []
    for (name, _when, effect, resource, verb), answer in zip(evaluable, fired, strict=True):
        if not answer:
            continue
        value: Any = None
        if effect is not None:
            try:
                value = _effect_value(verb, answer[0])
            except _RefusedEffectError:
                return None
        proposals.append(_proposal(name, resource, verb, value))
    return _outcome(tuple(proposals), ())


def _evaluate_each(evaluable: Sequence[_Evaluable], activation: cel.Activation) -> Outcome:
    """The outcome of ``evaluable``, each rule's condition and effect evaluated on its own."""
    proposals: list[Proposal] = []
    errors: list[str] = []
    for name, when, effect, resource, verb in evaluable:
        # One rule failing must not stop the others or the cycle.
        try:
            # The activation passed by position: the binding's keyword handling cost
            # a third of an evaluation (every rule of every cycle).
            fired = when.eval(activation)
        except RuntimeError as exc:  # see _evaluate
            errors.append(f"rule {name}: condition failed: {_first_line(exc)}")
            continue
        # The common answers first: a value that is True or False is a BOOL (an error
        # value's is its message, an int's is an int), so only a value that is neither
        # pays for the type checks.
        answer = fired.value()
        if answer is not True:
            if answer is False:
                continue
            kind = fired.type()
            if kind == cel.Type.ERROR:
                errors.append(f"rule {name}: condition failed: {_error_text(fired)}")
            elif kind != cel.Type.BOOL:
                errors.append(f"rule {name}: condition gave {kind.name()}, not a bool")
            continue
        value: Any = None
        if effect is not None:
            result, failure = _evaluate(effect, activation)
            if result is None:
                errors.append(f"rule {name}: action failed: {failure}")
                continue
            try:
                value = _effect_value(verb, result.plain_value())
            except _RefusedEffectError as exc:
                errors.append(f"rule {name}: {exc}")
                continue
        proposals.append(_proposal(name, resource, verb, value))
    return _outcome(tuple(proposals), tuple(errors))


class _RefusedEffectError(ValueError):
    """A fired rule's effect evaluated to a value its verb cannot take (the message says
    why, as a rule's error reads after ``rule <name>:``)."""


def _effect_value(verb: str, raw: Any) -> Any:
    """The proposal's value of an effect that evaluated to ``raw``: a write's patch must
    be a map with string keys, and every value must be one JSON can hold. The one
    post-processing of both evaluation paths (:func:`_evaluate_together` returns None on
    a refusal, :func:`_evaluate_each` records it), so the two cannot drift apart."""
    if type(raw) is dict:
        # The common effect (a patch or payload of a few plain fields, what the runtime
        # gives every firing rule afresh) is its own plain value: given back as it is,
        # without the write's key check (a generator) and _plain's copy of the map.
        for key, value in raw.items():
            if type(key) is not str or type(value) not in _PLAIN_LEAVES:
                break
        else:
            return raw
    if verb == "write" and (not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw)):
        raise _RefusedEffectError("patch is not a map with string keys")
    try:
        return _plain(raw)
    except _NotJSONError as exc:
        raise _RefusedEffectError(f"action failed: {exc}") from exc


#: What :func:`_plain` gives back as it is (by exact type).
_PLAIN_LEAVES = frozenset((str, int, bool, type(None)))

# Every rule that fires makes a Proposal, every evaluation an Outcome (gateway/_slots.py).
_proposal = builder(Proposal, "rule", "resource", "verb", "value")
_outcome = builder(Outcome, "proposals", "errors")


def activation_of(
    *,
    data: Mapping[str, Any],
    generation: int,
    epoch: int,
    now: datetime,
    host: str,
    event: Mapping[str, Any] | None = None,
    request: Mapping[str, Any] | None = None,
) -> cel.Activation:
    return _activation(data, generation, epoch, now, host, event, request)


def _activation(
    data: Mapping[str, Any],
    generation: int,
    epoch: int,
    now: datetime,
    host: str,
    event: Mapping[str, Any] | None,
    request: Mapping[str, Any] | None,
    reads: tuple[str, ...] | None = None,
) -> cel.Activation:
    """The variables every rule sees (:func:`activation_of`, its arguments by position),
    or only those named in ``reads``: rules that cannot read a variable evaluate alike
    whether it is given or not, and each one given is converted to a CEL value at every
    evaluation (the five that P5's rules do not read cost about 9,300 instructions a
    cycle; session 37)."""
    variables = _variables(data, generation, epoch, now, host, event, request, reads)
    # Given its own arena, as the binding makes one when none is given: an arena of None
    # goes through pybind11's search of other modules' types before it is taken as
    # "none" (a failed attribute lookup, about 5,000 instructions; session 39).
    return _ENV.Activation(variables, None, _new_arena())


_new_arena = cel.Arena


def _variables(
    data: Mapping[str, Any],
    generation: int,
    epoch: int,
    now: datetime,
    host: str,
    event: Mapping[str, Any] | None,
    request: Mapping[str, Any] | None,
    reads: tuple[str, ...] | None,
) -> dict[str, Any]:
    """:func:`_activation`'s variables: all of them, or those named in ``reads`` (in
    that order), each built only if given (every cycle builds them: the whole set
    picked from cost about 4,000 instructions more; session 40)."""
    if reads is None:
        reads = _ALL_VARIABLES
    variables: dict[str, Any] = {}
    for name in reads:
        if name == "data":
            variables[name] = dict(data)
        elif name == "generation":
            variables[name] = generation
        elif name == "epoch":
            variables[name] = epoch
        elif name == "now":
            variables[name] = now
        elif name == "host":
            variables[name] = host
        elif name == "event":
            variables[name] = dict(event) if event else {}
        elif name == "request":
            variables[name] = dict(request) if request else {}
    return variables


_ALL_VARIABLES = tuple(VARIABLES)


def _read_variables(sources: Sequence[str]) -> tuple[str, ...]:
    """The variables of :data:`VARIABLES` that expressions of these ``sources`` can read:
    those whose name appears in one of the texts. A CEL expression reads a variable
    only through an identifier spelled out in its text (identifiers have no escapes,
    and nothing in the language names a variable from a string), so a variable whose
    name is in no text is read by none of them (a name inside a string literal or a
    longer identifier only keeps a variable that is not needed)."""
    return tuple(name for name in VARIABLES if any(name in text for text in sources))


@dataclass(frozen=True, slots=True, kw_only=True)
class CompiledAnswer:
    answer: Answer
    when: _Compiled
    reply: _Compiled
    write: _Compiled | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """What an answer gives: the reply, and the patch it writes (None: no write). Or
    ``refusal``, a readable reason it does not answer."""

    value: Any = None
    patch: dict[str, Any] | None = None
    refusal: str = ""


def compile_answer(answer: Answer) -> CompiledAnswer:
    if not _NAME.fullmatch(answer.method):
        raise RuleError(
            f"answer method {answer.method!r:.80} is not a name",
            hint="use letters, digits, '_', '.', '-' (at most 64)",
        )
    where = f"answer {answer.method}"
    return CompiledAnswer(
        answer=answer,
        when=_compile(where, "when", answer.when, _BOOL),
        reply=_compile(where, "reply", answer.reply, None),
        write=_compile(where, "write", answer.write, _STRING_MAP) if answer.write else None,
    )


def compile_answers(answers: Sequence[Answer]) -> dict[str, CompiledAnswer]:
    """Compile and check every answer; methods must be unique. Raises RuleError."""
    if len(answers) > MAX_ANSWERS:
        raise RuleCostError(f"{len(answers)} answers; an object may have at most {MAX_ANSWERS}")
    compiled: dict[str, CompiledAnswer] = {}
    for answer in answers:
        if answer.method in compiled:
            raise RuleError(f"two answers for method {answer.method!r}", hint="one per method")
        compiled[answer.method] = compile_answer(answer)
    return compiled


def give_answer(compiled: CompiledAnswer, activation: cel.Activation) -> Reply:
    """Evaluate one answer: its condition, then its reply and write."""
    fired, failure = _evaluate(compiled.when.expression, activation)
    if fired is None:
        return Reply(refusal=f"its condition failed: {failure}")
    if fired.value() is not True:
        return Reply(refusal=f"its condition ({compiled.when.source[:120]}) is false")
    result, failure = _evaluate(compiled.reply.expression, activation)
    if result is None:
        return Reply(refusal=f"its reply failed: {failure}")
    try:
        value = _plain(result.plain_value())
    except _NotJSONError as exc:
        return Reply(refusal=f"its reply failed: {exc}")
    patch = None
    if compiled.write is not None:
        written, failure = _evaluate(compiled.write.expression, activation)
        if written is None:
            return Reply(refusal=f"its write failed: {failure}")
        raw = written.plain_value()
        if not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw):
            return Reply(refusal="its write is not a map with string keys")
        try:
            patch = _plain(raw)
        except _NotJSONError as exc:
            return Reply(refusal=f"its write failed: {exc}")
    return Reply(value=value, patch=patch)


_TOPIC = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)+")


def check_subscriptions(topics: Sequence[str]) -> None:
    """Subscriptions are ``<name>/<name>`` topics (resource ``pubsub:<topic>``), unique."""
    if len(topics) > MAX_SUBSCRIPTIONS:
        raise RuleCostError(
            f"{len(topics)} subscriptions; an object may have at most {MAX_SUBSCRIPTIONS}"
        )
    for topic in topics:
        if len(topic) > 200 or not _TOPIC.fullmatch(topic):
            raise RuleError(
                f"subscription {topic!r:.80} is not of the form <name>/<name>",
                hint="e.g. orders/cancelled",
            )
    if len(set(topics)) != len(topics):
        raise RuleError("a topic is subscribed twice", hint="list each topic once")


def _evaluate(
    expression: cel.Expression, activation: cel.Activation
) -> tuple[cel.Value, None] | tuple[None, str]:
    """The expression's value, or None and why its evaluation failed."""
    try:
        value = expression.eval(activation)  # by position, see RuleSet.evaluate
    except RuntimeError as exc:
        # The runtime raises (instead of returning an error value) on input it cannot
        # convert, e.g. a string holding a lone surrogate, which JSON allows as an escape.
        return None, _first_line(exc)
    if value.type() == _ERROR:
        return None, _error_text(value)
    return value, None


_ERROR = cel.Type.ERROR


def _error_text(value: cel.Value) -> str:
    return _first_line(value.value())


def _first_line(value: object) -> str:
    return (str(value).splitlines() or [""])[0][:200]


class _NotJSONError(ValueError):
    """A rule produced a value JSON cannot hold."""


def _plain(value: Any) -> Any:
    """CEL results as JSON values: timestamps and durations as text, bytes as hex.

    Raises :class:`_NotJSONError` for NaN and the infinities (``1.0 / 0.0`` in CEL):
    ``json.dumps`` would write them as ``NaN``/``Infinity``, which is not JSON, into the
    object's data or an event that every other reader would then have to refuse.
    """
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value  # the common leaves first, by exact type (what the runtime gives)
    if isinstance(value, dict):
        return {k if type(k) is str else _plain_key(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, timedelta):
        return f"{value.total_seconds()}s"
    if isinstance(value, bytes | bytearray):  # the runtime gives CEL bytes as a bytearray
        return bytes(value).hex()
    if isinstance(value, float) and not math.isfinite(value):
        raise _NotJSONError(f"gave {value}, which JSON cannot hold")
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _plain_key(key: Any) -> str:
    """CEL map keys (string, int, uint, bool) as JSON object keys: ``true``, not ``True``."""
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(key)


# --- compiling ----------------------------------------------------------------------


def _message(raw: bytes) -> list[tuple[int, Any]]:
    """Every field of a serialized message, read without its schema: (number, value),
    the value bytes for length-delimited fields and an int for the others."""
    holder = empty_pb2.Empty()
    holder.ParseFromString(raw)
    fields = UnknownFieldSet(holder)
    return [(fields[i].field_number, fields[i].data) for i in range(len(fields))]


def _cel_schema() -> dict[str, Any]:
    """Message classes for the parts of ``cel.expr`` (syntax.proto, checked.proto) the
    analysis reads, declared here (cel-expr-python ships no Python classes for them) so
    that a checked expression is parsed once, in C, instead of field by field. Fields not
    declared are kept as unknown and ignored."""
    f = descriptor_pb2.FieldDescriptorProto
    messages: dict[str, list[tuple[str, int, int, str | None, bool]]] = {
        # name: [(field, number, type, message type, repeated)]
        "CheckedExpr": [("expr", 4, f.TYPE_MESSAGE, "Expr", False),
                        ("source_info", 5, f.TYPE_MESSAGE, "SourceInfo", False)],
        "SourceInfo": [("positions", 4, f.TYPE_MESSAGE, "SourceInfo.PositionsEntry", True)],
        "Expr": [("id", 2, f.TYPE_INT64, None, False),
                 ("const_expr", 3, f.TYPE_MESSAGE, "Constant", False),
                 ("ident_expr", 4, f.TYPE_MESSAGE, "Ident", False),
                 ("select_expr", 5, f.TYPE_MESSAGE, "Select", False),
                 ("call_expr", 6, f.TYPE_MESSAGE, "Call", False),
                 ("list_expr", 7, f.TYPE_MESSAGE, "CreateList", False),
                 ("struct_expr", 8, f.TYPE_MESSAGE, "CreateStruct", False),
                 ("comprehension_expr", 9, f.TYPE_MESSAGE, "Comprehension", False)],
        "Constant": [("int64_value", 3, f.TYPE_INT64, None, False),
                     ("uint64_value", 4, f.TYPE_UINT64, None, False),
                     ("string_value", 6, f.TYPE_BYTES, None, False),
                     ("bytes_value", 7, f.TYPE_BYTES, None, False)],
        "Ident": [("name", 1, f.TYPE_STRING, None, False)],
        "Select": [("operand", 1, f.TYPE_MESSAGE, "Expr", False),
                   ("field", 2, f.TYPE_STRING, None, False),
                   ("test_only", 3, f.TYPE_BOOL, None, False)],
        "Call": [("target", 1, f.TYPE_MESSAGE, "Expr", False),
                 ("function", 2, f.TYPE_STRING, None, False),
                 ("args", 3, f.TYPE_MESSAGE, "Expr", True)],
        "CreateList": [("elements", 1, f.TYPE_MESSAGE, "Expr", True)],
        "CreateStruct": [("entries", 2, f.TYPE_MESSAGE, "Entry", True)],
        "Entry": [("map_key", 3, f.TYPE_MESSAGE, "Expr", False),
                  ("value", 4, f.TYPE_MESSAGE, "Expr", False)],
        "Comprehension": [("iter_var", 1, f.TYPE_STRING, None, False),
                          ("iter_range", 2, f.TYPE_MESSAGE, "Expr", False),
                          ("accu_var", 3, f.TYPE_STRING, None, False),
                          ("accu_init", 4, f.TYPE_MESSAGE, "Expr", False),
                          ("loop_condition", 5, f.TYPE_MESSAGE, "Expr", False),
                          ("loop_step", 6, f.TYPE_MESSAGE, "Expr", False),
                          ("result", 7, f.TYPE_MESSAGE, "Expr", False),
                          ("iter_var2", 8, f.TYPE_STRING, None, False)],
    }  # fmt: skip
    package = "gateway_rules.cel"  # not cel.expr: must not clash if the real one is loaded
    file = descriptor_pb2.FileDescriptorProto(
        name="gateway_rules_cel.proto", package=package, syntax="proto3"
    )
    for name, fields in messages.items():
        message = file.message_type.add(name=name)
        kinds = message.oneof_decl
        if name in ("Expr", "Constant"):
            kinds.add(name="kind")
        for field, number, kind, type_name, repeated in fields:
            declared = message.field.add(
                name=field,
                number=number,
                type=kind,
                label=f.LABEL_REPEATED if repeated else f.LABEL_OPTIONAL,
            )
            if type_name is not None:
                declared.type_name = f".{package}.{type_name}"
            if kinds and field != "id":
                declared.oneof_index = 0
        if name == "SourceInfo":
            entry = message.nested_type.add(name="PositionsEntry")
            entry.options.map_entry = True
            entry.field.add(name="key", number=1, type=f.TYPE_INT64, label=f.LABEL_OPTIONAL)
            entry.field.add(name="value", number=2, type=f.TYPE_INT32, label=f.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.{name}"))
        for name in messages
    }


_CEL = _cel_schema()


#: A piece of an input: its root variable, then one segment per field or key selected.
#: A segment that is a wildcard (:data:`_ANY`, or a comprehension's element marker) may
#: stand for any key, so it overlaps every segment at its level.
_Path = tuple[Any, ...]
_ANY = "*"


@dataclass(frozen=True, slots=True)
class _Bound:
    """An upper bound of a value's size: ``fixed`` bytes, plus for each input piece in
    ``parts`` that many copies of it (what a piece holds is unknown at compile time; all
    the pieces of one input together hold at most the data limit). ``length`` bounds the
    value's elements, ``deep`` the elements of it or of any collection inside it.
    ``ref``: the value *is* the single piece in ``parts`` (not a copy made of it), so
    selecting from it gives a smaller piece."""

    fixed: int
    parts: Mapping[_Path, int]
    length: int = 0
    deep: int = 0
    ref: bool = False


@dataclass(frozen=True, slots=True)
class _Pool:
    """The root of a piece that is not an input: the ``size`` bytes a comprehension's
    range holds besides its input pieces, shared among its elements."""

    node: int
    size: int


def _piece(path: _Path, deep: int) -> _Bound:
    return _Bound(0, {path: 1}, deep, deep, ref=True)


def _within(bound: _Bound) -> _Bound:
    """Some value inside ``bound`` (an element, a field): no larger than it."""
    return _Bound(bound.fixed, bound.parts, bound.deep, bound.deep)


def _sum(bounds: Sequence[_Bound], fixed: int = 0) -> _Bound:
    parts: dict[_Path, int] = {}
    length = deep = 0
    for bound in bounds:
        fixed += bound.fixed
        for path, copies in bound.parts.items():
            parts[path] = parts.get(path, 0) + copies
        length += bound.length
        deep = max(deep, bound.deep)
    return _Bound(fixed, parts, length, max(deep, length))


def _either(first: _Bound, second: _Bound) -> _Bound:
    """A value that is one of the two."""
    parts = dict(first.parts)
    for path, copies in second.parts.items():
        parts[path] = max(parts.get(path, 0), copies)
    return _Bound(
        max(first.fixed, second.fixed),
        parts,
        max(first.length, second.length),
        max(first.deep, second.deep),
    )


def _overlap(one: _Path, other: _Path) -> bool:
    """Whether two pieces may share bytes: one lies inside the other, where a wildcard
    segment matches any key. A comprehension's current element (``("*", id)``) and what
    it accumulated from earlier elements (``("*acc", id)``) are different elements."""
    for mine, theirs in zip(one, other, strict=False):
        if mine == theirs:
            continue
        marks = isinstance(mine, tuple), isinstance(theirs, tuple)
        if not (marks[0] or marks[1] or mine == _ANY or theirs == _ANY):
            return False  # two different keys
        if marks[0] and marks[1] and mine[1] == theirs[1]:
            return False  # ("*", id) against ("*acc", id)
    return True


def _bytes(bound: _Bound, limit: int) -> int:
    """The bound in bytes when each input holds at most ``limit`` bytes: each input's mass
    is put where the most of its copies overlap."""
    roots: dict[Any, list[tuple[_Path, int]]] = {}
    for path, copies in bound.parts.items():
        roots.setdefault(path[0], []).append((path, copies))
    total = bound.fixed
    for root, parts in roots.items():
        if len(parts) == 1:
            copies = parts[0][1]
        elif all(_plain_path(path) for path, _ in parts):
            # No wildcard: two pieces overlap when one path is a prefix of the other
            # (what _overlap finds, a few times faster: a rule of 40 comparisons of
            # different fields sums 40 x 40 pairs on every compile).
            copies = max(
                sum(n for other, n in parts if other[: len(path)] == path[: len(other)])
                for path, _ in parts
            )
        else:
            copies = max(sum(n for other, n in parts if _overlap(path, other)) for path, _ in parts)
        total += copies * (root.size if isinstance(root, _Pool) else limit)
    return total


def _plain_path(path: _Path) -> bool:
    return not any(isinstance(segment, tuple) or segment == _ANY for segment in path[1:])


#: Values that are not strings, bytes, lists or maps (numbers, bools, null, timestamps,
#: durations, types) take at most this many bytes, as JSON text or in memory.
_SCALAR_BYTES = 32
_SCALAR = _Bound(_SCALAR_BYTES, {})

#: Every function the standard library declares in :data:`_ENV` (the only functions it
#: has: no extension is loaded), by what its value may hold. Listed and checked against
#: the runtime by tests/test_rules.py. A function in none of these sets is refused by
#: :func:`cost_of`: a new one (a runtime upgrade, an extension such as ``strings``'
#: ``repeat`` or ``join``) must be classified before a rule may call it.
#:
#: A scalar (bool, number, timestamp, duration, type), whatever the arguments' sizes:
#: comparisons, logic, arithmetic other than ``_+_``, ``size``, ``in``, string tests,
#: conversions to scalars, and the timestamp and duration accessors.
_SCALAR_FUNCTIONS = frozenset(
    {
        "_==_", "_!=_", "_<_", "_<=_", "_>_", "_>=_", "_&&_", "_||_", "!_", "-_",
        "_-_", "_*_", "_/_", "_%_", "@in", "@not_strictly_false", "size", "contains",
        "startsWith", "endsWith", "matches", "int", "uint", "double", "bool", "timestamp",
        "duration", "type", "getFullYear", "getMonth", "getDayOfYear", "getDayOfMonth",
        "getDate", "getDayOfWeek", "getHours", "getMinutes", "getSeconds",
        "getMilliseconds",
    }
)  # fmt: skip
#: Scalars whose time may be the product of their operands' sizes: refused when both
#: operands hold input bytes (a needle or pattern written in the rule is fine). With one
#: written in the rule, their work is the text's bytes times a weight: ``contains``
#: (a ``find``: ~7 ns a byte for a 2-byte needle, ~25 for a 1001-byte one, measured) at
#: least :data:`_SEARCH_MIN_WEIGHT` plus a unit per 64 bytes of needle; ``matches`` the
#: size of the pattern's program (:func:`_pattern_size`): RE2 runs a DFA at ~2.5 ns a
#: byte, but a pattern whose states overflow its cache (``[ab]*a[ab]{1000}c``: 1.4 s
#: over 100 kB) falls back to an NFA that costs ~10 ns a byte per instruction.
_SEARCHES = frozenset({"contains", "matches"})
_SEARCH_MIN_WEIGHT = 4
#: Reads whose time is at most the smaller operand's bytes: equality stops at the first
#: difference (and compares sizes first), ordering and the prefix tests at the shorter.
_COMPARISONS = frozenset({"_==_", "_!=_", "_<_", "_<=_", "_>_", "_>=_", "startsWith", "endsWith"})
#: Conversions that parse, validate or copy their argument (a string or bytes): linear.
_PARSES = frozenset({"int", "uint", "double", "bool", "timestamp", "duration", "string", "bytes"})
#: At most the argument's size plus a scalar's: ``string(x)``, ``bytes(x)``.
_CONVERSIONS = frozenset({"string", "bytes"})
#: The rest, each with its own rule in :meth:`_Analysis.call`: ``_+_`` (the sum of its
#: operands: concatenation of strings, bytes and lists), ``_?_:_`` (the larger branch),
#: ``_[_]`` (a piece of its operand), ``dyn`` (its argument).
_STRUCTURAL = frozenset({"_+_", "_?_:_", "_[_]", "dyn"})

#: What each variable a rule sees may hold: the three maps from outside are input pieces
#: (each at most the data limit: data by MAX_DATA_BYTES, a message's data and a call's
#: request by far less), their collections at most COLLECTION_BOUND long (check_data);
#: the host's name is an id.
_INPUTS: Mapping[str, _Bound] = {
    "data": _piece(("data",), COLLECTION_BOUND),
    "event": _piece(("event",), COLLECTION_BOUND),
    "request": _piece(("request",), COLLECTION_BOUND),
    "host": _Bound(MAX_ID_BYTES, {}),
    "now": _SCALAR,
    "generation": _SCALAR,
    "epoch": _SCALAR,
}


class _Overgrown(Exception):
    """Far more nodes than a rule may have: the walk stops (the rule is refused)."""


class _Analysis:
    """One walk of a checked expression: its node count, comprehension nesting, cost
    estimate, and a size bound of every value it builds (see :func:`cost_of`)."""

    def __init__(self) -> None:
        self.nodes = 0
        self.nesting = 0
        self.estimate = 0
        self.largest = 0  #: bytes, the largest bound of any value
        self.largest_id = 0  #: the node that builds it
        #: Bytes the evaluation may copy (concatenations) or scan (size of a string,
        #: searches, conversions, keys hashed), over all the times each node runs: its
        #: time, at the runtime's ~100 MB/s.
        self.work = 0
        #: What the comparisons read, as a bound (copies of pieces), so that pieces that
        #: cannot overlap share one limit: see :attr:`compared`.
        self.compared_fixed = 0
        self.compared_parts: dict[_Path, int] = {}
        #: The comprehension whose loop is being walked: its element marker, how many
        #: times the loop itself runs, and its accumulator's name.
        self.loop: tuple[tuple[str, int], int, str] | None = None
        self.refusal = ""  #: why the expression has no bound (it is refused)
        self.hint = ""

    def handled(self, bound: _Bound, weight: int) -> int:
        """The bytes of a value handled ``weight`` times. In a loop, the element's share
        of it is handled once per element, so over the loop at most once in all."""
        if self.loop is None:
            return weight * _bytes(bound, MAX_DATA_BYTES)
        marker, once, _ = self.loop
        element = {p: n for p, n in bound.parts.items() if marker in p}
        rest = {p: n for p, n in bound.parts.items() if marker not in p}
        return weight * _bytes(_Bound(bound.fixed, rest), MAX_DATA_BYTES) + once * _bytes(
            _Bound(0, element), MAX_DATA_BYTES
        )

    def count_work(self, bound: _Bound, weight: int) -> None:
        """Add a value handled ``weight`` times to :attr:`work`."""
        self.work += self.handled(bound, weight)

    def count_compared(self, bound: _Bound, weight: int) -> None:
        """Add a value compared ``weight`` times (the element's share of it once per
        loop), keeping its pieces: the total is their bound (:attr:`compared`)."""
        self.compared_fixed += weight * bound.fixed
        parts = self.compared_parts
        marker = self.loop[0] if self.loop is not None else None
        for path, copies in bound.parts.items():
            times = self.loop[1] if self.loop is not None and marker in path else weight
            parts[path] = parts.get(path, 0) + copies * times

    @property
    def compared(self) -> int:
        """Bytes compared over a whole evaluation: the bound of everything compared."""
        return _bytes(_Bound(self.compared_fixed, self.compared_parts), MAX_DATA_BYTES)

    def refuse(self, reason: str, *, hint: str) -> None:
        if not self.refusal:  # the first reason found
            self.refusal, self.hint = reason, hint

    def walk(
        self, expr: Any, scope: Mapping[str, _Bound], weight: int, depth: int, record: bool
    ) -> _Bound:
        """The bound of ``expr``'s value (a ``cel.expr.Expr``). ``weight``: how many times
        it is evaluated; ``record``: count it (False on the first of a loop's two walks)."""
        if record:
            self.nodes += 1
            self.estimate += weight
            self.nesting = max(self.nesting, depth)
            if self.nodes > MAX_NODES * 4:
                raise _Overgrown
        kind = expr.WhichOneof("kind")
        if kind == "call_expr":
            bound = self.call(expr.call_expr, scope, weight, depth, record)
        elif kind == "select_expr":
            select = expr.select_expr
            operand = self.walk(select.operand, scope, weight, depth, record)
            # has(a.b) is a test; a.b is a piece of a.
            bound = _SCALAR if select.test_only else _part(operand, select.field)
        elif kind == "ident_expr":
            name = expr.ident_expr.name
            bound = scope[name] if name in scope else _piece((name,), COLLECTION_BOUND)
        elif kind == "const_expr":
            bound = _constant(expr.const_expr)
        elif kind == "list_expr":
            items = [self.walk(e, scope, weight, depth, record) for e in expr.list_expr.elements]
            bound = _collection(items, len(items))
        elif kind == "struct_expr":
            entries = expr.struct_expr.entries
            items = [
                self.walk(e, scope, weight, depth, record)
                for entry in entries
                for e in (entry.map_key, entry.value)
            ]
            if record:  # building a map hashes its keys
                for key in items[::2]:
                    if _from_inputs(key):
                        self.count_work(key, weight)
            bound = _collection(items, len(entries))
        elif kind == "comprehension_expr":
            bound = self.comprehension(
                expr.comprehension_expr, expr.id, scope, weight, depth, record
            )
        else:
            bound = _SCALAR
        if record and not bound.ref:  # a piece of an input is not built: it is there
            size = _bytes(bound, MAX_DATA_BYTES) if bound.parts else bound.fixed
            if size > self.largest:
                self.largest, self.largest_id = size, expr.id
        return bound

    def call(
        self, call: Any, scope: Mapping[str, _Bound], weight: int, depth: int, record: bool
    ) -> _Bound:
        function = call.function
        operands = (
            [self.walk(call.target, scope, weight, depth, record)]
            if call.HasField("target")
            else []
        )
        operands += [self.walk(arg, scope, weight, depth, record) for arg in call.args]
        if function in _SEARCHES and all(_from_inputs(o) for o in operands):
            # Substring search (std::string_view::find) and an automaton built from the
            # pattern take time up to the product of the two sizes: 4 MB in 4 MB is hours.
            self.refuse(
                f"{function}() searches input text for input text: its time may grow with "
                "the square of the data limit",
                hint="search for text written in the rule, or compare with == or startsWith",
            )
        if record:
            self.count_reads(call, function, operands, weight)
        if function in _SCALAR_FUNCTIONS:
            return _SCALAR
        if function == "_+_":
            total = _sum(operands)
            appends = (
                self.loop is not None
                and call.args
                and call.args[0].WhichOneof("kind") == "ident_expr"
                and call.args[0].ident_expr.name == self.loop[2]
            )
            # Concatenation copies both sides; a comprehension appending to its
            # accumulator does not copy the accumulator (measured: map over 4 MB, 37 ms).
            if record and not appends:
                self.count_work(total, weight)
            return total
        if function in _CONVERSIONS and len(operands) == 1:
            return _Bound(operands[0].fixed + _SCALAR_BYTES, operands[0].parts)
        if function == "_?_:_" and len(operands) == 3:
            return _either(operands[1], operands[2])
        if function == "_[_]" and len(operands) == 2:
            return _part(operands[0], _key(call.args[-1]))
        if function == "dyn" and len(operands) == 1:
            return operands[0]
        self.refuse(
            f"function {function} has no size bound",
            hint="only the CEL standard library is sized; see docs/limits.md",
        )
        return _sum(operands, _SCALAR_BYTES)

    def count_reads(self, call: Any, function: str, operands: list[_Bound], weight: int) -> None:
        """Count what a call reads, ``weight`` times: its work or its comparisons."""
        if function in _COMPARISONS and len(operands) == 2:
            # The smaller side bounds what is read: over a loop, the sum of the smaller
            # of each pair is at most the smaller of the sums (x == data.s reads each
            # element once, not data.s once per element).
            smaller = min(operands, key=lambda o: self.handled(o, weight))
            self.count_compared(smaller, weight)
        elif function == "@in" and len(operands) == 2:
            # A list is scanned (each element compared, at most its bytes), a map hashes
            # the value sought: both sides.
            for operand in operands:
                self.count_compared(operand, weight)
        elif function in _SEARCHES and len(operands) == 2:
            text, pattern = operands
            text_bytes = _bytes(text, MAX_DATA_BYTES)
            needle = min(_bytes(pattern, MAX_DATA_BYTES), text_bytes)
            if function == "contains":
                factor = _SEARCH_MIN_WEIGHT + needle // 64
            else:
                factor = max(_SEARCH_MIN_WEIGHT, _program_size(call.args[-1], pattern))
            self.work += self.handled(text, weight) * factor
        elif (function == "size" or function in _PARSES) and len(operands) == 1:
            self.count_work(operands[0], weight)  # a string's size counts code points
        elif function == "_[_]" and len(operands) == 2 and _from_inputs(operands[1]):
            self.count_work(operands[1], weight)  # a key from the input is hashed

    def comprehension(
        self,
        loop: Any,
        node: int,
        scope: Mapping[str, _Bound],
        weight: int,
        depth: int,
        record: bool,
    ) -> _Bound:
        """A macro (all, exists, exists_one, map, filter) expanded: the range and initial
        value once, the condition and step per element, then the result. The step is walked
        twice: first with the accumulator as an unknown, to learn how it grows from one
        element to the next; then with the accumulator's bound, to bound what it builds."""
        span = self.walk(loop.iter_range, scope, weight, depth, record)
        initial = self.walk(loop.accu_init, scope, weight, depth, record)
        count = span.length
        marker = ("*", node)
        inside = dict(scope)
        inside[loop.iter_var] = _element(span, marker)
        if loop.iter_var2:  # a two-variable comprehension: the second is also an element
            inside[loop.iter_var2] = inside[loop.iter_var]
        inner = weight * max(count, 1)
        if depth + 1 > MAX_NESTING:
            # Refused by its nesting anyway: walk the loop once, for the counts only (a
            # second walk per level would double the work at every level).
            accumulated = before = initial
        else:
            unknown = f"@{node}"
            inside[loop.accu_var] = _piece((unknown,), 0)
            step = self.walk(loop.loop_step, inside, inner, depth + 1, False)
            accumulated = self.accumulate(initial, step, count, marker, unknown)
            # What the last step starts from: the step then builds at most ``accumulated``.
            before = self.accumulate(initial, step, max(count - 1, 0), marker, unknown)
        # Within the loop, what was accumulated comes from earlier elements than the
        # current one: a different piece of the range (see _overlap).
        inside[loop.accu_var] = _renamed(before, marker, ("*acc", node))
        outer, self.loop = self.loop, (marker, weight, loop.accu_var)
        self.walk(loop.loop_condition, inside, inner, depth + 1, record)
        self.walk(loop.loop_step, inside, inner, depth + 1, record)
        self.loop = outer
        after = _renamed(accumulated, marker, _ANY)
        if record:
            size = _bytes(after, MAX_DATA_BYTES)
            if size > self.largest:
                self.largest, self.largest_id = size, node
        return self.walk(loop.result, {**scope, loop.accu_var: after}, weight, depth, record)

    def accumulate(
        self, initial: _Bound, step: _Bound, count: int, marker: tuple[str, int], unknown: str
    ) -> _Bound:
        """The accumulator after ``count`` steps, from one step's bound in terms of the
        accumulator before it (the input piece ``unknown``). A step that keeps it once
        (``acc + [f]``, ``p ? acc + [x] : acc``) adds to it: each step's own share counts
        ``count`` times, except the element's, whose shares over all steps are together
        no more than the range. A step that does not keep it (``acc && p``) replaces it."""
        kept = sum(n for path, n in step.parts.items() if path[0] == unknown)
        added = {path: n for path, n in step.parts.items() if path[0] != unknown}
        if kept == 0:
            return _either(initial, _Bound(step.fixed, added, step.length, step.deep))
        if kept > 1:
            self.refuse(
                "a comprehension's value may double at every element",
                hint="append to the accumulator once per step",
            )
            return initial
        parts = dict(initial.parts)
        for path, copies in added.items():
            parts[path] = parts.get(path, 0) + (copies if marker in path else copies * count)
        length = initial.length + count * step.length
        return _Bound(
            initial.fixed + count * step.fixed,
            parts,
            length,
            max(initial.deep, step.deep, length),
        )


def _program_size(expr: Any, bound: _Bound) -> int:
    """An upper bound of the instructions RE2 compiles a pattern to: counted for a pattern
    written in the rule, else its bytes times RE2's largest repetition count (1000)."""
    if expr.WhichOneof("kind") == "const_expr" and expr.const_expr.HasField("string_value"):
        return _pattern_size(expr.const_expr.string_value.decode("utf-8", "replace"))
    return _bytes(bound, MAX_DATA_BYTES) * _MAX_REPEAT


#: RE2 refuses a repetition count above this (``a{1001}``), and nested counts whose
#: product is above it.
_MAX_REPEAT = 1000
_REPEAT = re.compile(r"\{(\d+)(?:(,)(\d*))?\}")


def _pattern_size(pattern: str) -> int:
    """An upper bound of a regular expression's program size: each atom (a character, an
    escape, a class) one instruction, a group the sum of its alternatives, a quantifier
    one more, a counted repetition ``{n,m}`` its atom ``max(n, m)`` times (the program
    unrolls it). Conservative where it does not understand: an unknown construct is an
    atom, and a pattern RE2 refuses fails at evaluation (an error value). A ``)`` with no
    group open ends the count; groups still open at the end are closed there.

    One pass with a stack of the enclosing groups, not recursion: a rule's pattern may
    nest about a thousand groups (tests/test_rules_reads.py)."""
    enclosing: list[tuple[int, int]] = []  # (total, branch) of each group around
    total = branch = 0  # alternatives closed so far, and the one being read
    last = 0  # the size of the atom before a quantifier
    at = 0
    while at < len(pattern):
        char = pattern[at]
        if char == ")":
            if not enclosing:
                break
            last = total + branch
            total, branch = enclosing.pop()
            branch += last
            at += 1
            continue
        if char == "|":
            total, branch, last = total + branch, 0, 0
            at += 1
            continue
        counted = _REPEAT.match(pattern, at) if char == "{" else None
        if char in "*+?" or counted:
            if counted:
                low, comma, high = counted.groups()
                times = max(int(low), int(high) if high else 0) or (1 if comma else 0)
                branch += last * (min(max(times, 1), _MAX_REPEAT) - 1) + 1
                at = counted.end()
            else:
                branch += 1
                at += 1
            continue
        if char == "(":
            enclosing.append((total, branch))
            total = branch = last = 0
            at += 1
            continue
        if char == "[":
            end = at + 1 + (pattern[at + 1 : at + 2] in ("^",))
            end += pattern[end : end + 1] == "]"  # a leading ] is a member
            while end < len(pattern) and pattern[end] != "]":
                end += 2 if pattern[end] == "\\" else 1
            last, at = 1, end + 1
        elif char == "\\":
            braces = pattern[at + 1 : at + 3] in ("p{", "P{")  # \p{Greek}
            at = (pattern.find("}", at) + 1 or len(pattern)) if braces else at + 2
            last = 1
        else:
            last, at = 1, at + 1
        branch += last
    while enclosing:  # groups left open: closed at the end
        last = total + branch
        total, branch = enclosing.pop()
        branch += last
    return max(total + branch, 1)


def _from_inputs(bound: _Bound) -> bool:
    """Whether the value may hold bytes of an input (not only of the expression's text)."""
    return any(not isinstance(path[0], _Pool) for path in bound.parts)


def _constant(constant: Any) -> _Bound:
    kind = constant.WhichOneof("kind")
    if kind in ("string_value", "bytes_value"):  # their UTF-8 bytes
        return _Bound(len(getattr(constant, kind)), {})
    return _SCALAR


def _key(expr: Any) -> Any:
    """An index's key as a path segment: a constant string or integer names one element;
    anything else may be any (:data:`_ANY`)."""
    if expr.WhichOneof("kind") == "const_expr":
        constant = expr.const_expr
        kind = constant.WhichOneof("kind")
        if kind == "string_value":
            return constant.string_value.decode("utf-8", "replace")
        if kind in ("int64_value", "uint64_value"):
            return getattr(constant, kind)
    return _ANY


def _part(whole: _Bound, segment: Any) -> _Bound:
    """A field, key or element of ``whole``: a smaller input piece if ``whole`` is one."""
    if whole.ref:
        (path,) = whole.parts
        return _piece((*path, segment), whole.deep)
    return _within(whole)


def _element(span: _Bound, marker: tuple[str, int]) -> _Bound:
    """An element of a comprehension's range: a piece of it, marked so that the shares
    of all elements can be told from the rest."""
    if span.ref:
        (path,) = span.parts
        return _piece((*path, marker), span.deep)
    parts = {(*path, marker): copies for path, copies in span.parts.items()}
    if span.fixed:
        parts[(_Pool(marker[1], span.fixed), marker)] = 1
    return _Bound(0, parts, span.deep, span.deep)


def _collection(items: Sequence[_Bound], length: int) -> _Bound:
    """A list or map literal of ``length`` elements: its items (a map's keys and values),
    plus a separator per item and the brackets."""
    whole = _sum(items, fixed=len(items) + 2)
    return _Bound(whole.fixed, whole.parts, length, max([length, *(i.deep for i in items)]))


def _renamed(bound: _Bound, marker: tuple[str, int], name: Any) -> _Bound:
    parts: dict[_Path, int] = {}
    for path, copies in bound.parts.items():
        renamed = tuple(name if segment == marker else segment for segment in path)
        parts[renamed] = parts.get(renamed, 0) + copies
    return _Bound(bound.fixed, parts, bound.length, bound.deep)


def cost_of(expression: cel.Expression) -> Cost:
    """Size, cost and a size bound of a compiled expression, from its checked AST.

    ``largest`` bounds, in bytes, every value the expression may build (strings and bytes
    by their length, lists and maps by their JSON text, other values by
    :data:`_SCALAR_BYTES`), when the data, a message and a request each hold at most
    :data:`~gateway.limits.MAX_DATA_BYTES` and their collections at most
    :data:`COLLECTION_BOUND` elements. Each value's bound is fixed bytes plus some copies
    of input pieces (``data.a``, an element of ``data.l``): ``_+_`` and list and map
    literals add their operands, ``string()`` and ``bytes()`` their argument, ``?:``
    takes the larger branch, a field or element is a piece of its operand, the rest of
    the standard library gives scalars. Pieces that cannot overlap (``data.a`` and
    ``data.b``) share one data limit; a comprehension's accumulator grows by each step's
    share per element, except that the shares of the elements themselves add up to at
    most the range (so ``filter`` and ``map(x, x.f)`` stay within the data, while
    ``map(x, data.s)`` counts ``data.s`` once per element). In memory a value takes a
    small constant factor more (value headers), as the data itself does.

    The time an evaluation takes is bounded by the same figures: ``estimate`` node
    evaluations, each linear in the at most ``largest`` bytes it touches (the searches
    that are not linear are refused on two inputs, below). ``work`` bounds the bytes the
    slow linear nodes handle over the whole evaluation: concatenations (not a
    comprehension's appends to its accumulator, which the runtime does in place),
    ``size`` (of a string, it counts characters), conversions (``int``, ``double``,
    ``timestamp``, ``string``, ``bytes``...), keys from the inputs hashed by ``_[_]`` or
    a map literal, and ``contains``/``matches`` of input text for text of the rule, the
    text's bytes times :data:`_SEARCH_MIN_WEIGHT` plus a unit per 64 bytes of needle, or
    times the pattern's program size (:func:`_pattern_size`). ``compared`` bounds the
    bytes comparisons read: ``==``, ``!=``, ordering, ``startsWith`` and ``endsWith`` the
    smaller operand (over a loop, each element's share once), ``in`` both; kept as
    pieces until the end, so that comparisons of fields that cannot overlap share one
    data limit.

    Raises :class:`~gateway.errors.RuleCostError` when some value it builds has no
    bound (a function the size table does not know, an accumulator that could double),
    or when ``contains``/``matches`` searches input text for input text."""
    serialized = _message(expression.serialize())
    raw = next((b for n, b in serialized if n == 2 and isinstance(b, bytes)), b"")
    try:
        checked = _CEL["CheckedExpr"].FromString(raw)
    except DecodeError as exc:
        raise RuleError(
            "the CEL runtime returned a checked expression that does not parse"
        ) from exc
    if not checked.HasField("expr"):
        raise RuleError("the CEL runtime returned no checked expression to analyse")
    analysis = _Analysis()
    try:
        analysis.walk(checked.expr, _INPUTS, 1, 0, True)
    except _Overgrown:
        pass  # refused for its node count
    else:
        if analysis.refusal:
            raise RuleCostError(analysis.refusal, hint=analysis.hint)
    at = -1
    if analysis.largest > MAX_VALUE_BYTES:
        at = checked.source_info.positions.get(analysis.largest_id, -1)
    return Cost(
        nodes=analysis.nodes,
        nesting=analysis.nesting,
        estimate=analysis.estimate,
        largest=analysis.largest,
        largest_at=at,
        work=analysis.work,
        compared=analysis.compared,
    )


_BOOL = ("BOOL",)
#: ``{}`` type-checks as map<dyn, dyn>; its keys are checked at run time like any dyn.
_STRING_MAP = ("MAP<STRING,", "MAP<DYN,")


def _compile(rule: str, part: str, source: str, expected: tuple[str, ...] | None) -> _Compiled:
    """Parse, type-check and bound one expression. ``expected`` holds accepted type-name
    prefixes; None accepts any type. ``dyn`` is accepted and checked at run time."""
    # Answers pass "answer <method>" as their name; rules their plain name.
    where = f"{rule}, {part}" if rule.startswith("answer ") else f"rule {rule!r}, {part}"
    if not source.strip():
        raise RuleError(f"{where}: the expression is empty")
    if len(source) > MAX_EXPRESSION_CHARS:
        raise RuleCostError(
            f"{where}: expression is {len(source)} characters; at most {MAX_EXPRESSION_CHARS}",
            hint="split it into several rules",
        )
    try:
        expression = _ENV.compile(source)
    except RuntimeError as exc:
        # The runtime's message is "ERROR: <input>:L:C: what\n | source\n | ...^": keep line one.
        message = str(exc).removeprefix("INVALID_ARGUMENT: ").splitlines()[0]
        raise RuleError(
            f"{where}: {message}",
            hint=f"variables are {', '.join(sorted(VARIABLES))}; see https://cel.dev",
        ) from exc
    returned = expression.return_type().name()
    if expected is not None and returned != "DYN" and not returned.startswith(expected):
        wanted = "a bool" if expected is _BOOL else "a map with string keys"
        raise RuleError(f"{where}: gives {returned.lower()}, but must give {wanted}")
    try:
        cost = cost_of(expression)
    except RuleCostError as exc:
        raise RuleCostError(f"{where}: {exc.reason}", hint=exc.hint) from exc
    if cost.nodes > MAX_NODES:
        raise RuleCostError(
            f"{where}: {cost.nodes} expression nodes; at most {MAX_NODES}", hint="simplify it"
        )
    if cost.nesting > MAX_NESTING:
        raise RuleCostError(
            f"{where}: comprehensions nested {cost.nesting} deep; at most {MAX_NESTING}",
            hint="avoid all/exists/map/filter inside each other",
        )
    if cost.estimate > MAX_COST:
        raise RuleCostError(
            f"{where}: estimated cost {cost.estimate:,} exceeds {MAX_COST:,} "
            f"(each comprehension counts an iteration per element its range may have: "
            f"{COLLECTION_BOUND} for a collection of the data)",
            hint="move work out of all/exists/map/filter bodies",
        )
    if cost.largest > MAX_VALUE_BYTES:
        at = f" at character {cost.largest_at}" if cost.largest_at >= 0 else ""
        raise RuleCostError(
            f"{where}: the value built{at} may hold {cost.largest:,} bytes; at most "
            f"{MAX_VALUE_BYTES:,} ({MAX_VALUE_BYTES // MAX_DATA_BYTES} times the data limit)",
            hint="do not concatenate or collect data inside all/exists/map/filter bodies, "
            "or copy it many times: each copy may be as large as the data",
        )
    if cost.work > MAX_WORK_BYTES:
        raise RuleCostError(
            f"{where}: may concatenate or scan {cost.work:,} bytes; at most "
            f"{MAX_WORK_BYTES:,} ({MAX_WORK_BYTES // MAX_DATA_BYTES} times the data limit)",
            hint="move concatenations, size(), searches, conversions and lookups of data "
            "out of all/exists/map/filter bodies: they run once per element; a pattern "
            "counts its length and repetitions",
        )
    if cost.compared > MAX_COMPARED_BYTES:
        raise RuleCostError(
            f"{where}: may compare {cost.compared:,} bytes; at most "
            f"{MAX_COMPARED_BYTES:,} ({MAX_COMPARED_BYTES // MAX_DATA_BYTES} times the data "
            "limit)",
            hint="move comparisons of data with data out of all/exists/map/filter bodies: "
            "they run once per element (comparing the element, or text written in the "
            "rule, is cheap)",
        )
    return _Compiled(source, expression, cost)


def compile_rule(rule: Rule) -> CompiledRule:
    if not _NAME.fullmatch(rule.name):
        raise RuleError(
            f"rule name {rule.name!r} is not a name", hint="use letters, digits, '_', '.', '-'"
        )
    when = _compile(rule.name, "when", rule.when, _BOOL)
    action = rule.action
    effect: _Compiled | None = None
    if isinstance(action, WriteState):
        effect = _compile(rule.name, "patch", action.patch, _STRING_MAP)
    elif isinstance(action, Binding):
        # Exactly <binding>/<operation>: the operation is one name (create, get, post…).
        if not re.fullmatch(r"[A-Za-z0-9._-]+/[A-Za-z0-9._-]+", action.target):
            raise RuleError(
                f"rule {rule.name!r}: {action.target!r} is not of the form <binding>/<operation>",
                hint="e.g. notify/create",
            )
        if action.payload:
            effect = _compile(rule.name, "payload", action.payload, None)
    elif isinstance(action, Publish | Invoke):
        destination = action.topic if isinstance(action, Publish) else action.target
        if not re.fullmatch(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)+", destination):
            raise RuleError(
                f"rule {rule.name!r}: {destination!r} is not of the form <name>/<name>",
                hint="e.g. alerts/overdue or payments/charge",
            )
        if action.payload:
            effect = _compile(rule.name, "payload", action.payload, None)
    return CompiledRule(rule=rule, when=when, effect=effect)


def compile_rules(rules: Sequence[Rule]) -> RuleSet:
    """Compile and check every rule; names must be unique. Raises RuleError."""
    if len(rules) > MAX_RULES:
        raise RuleCostError(f"{len(rules)} rules; an object may have at most {MAX_RULES}")
    names = [r.name for r in rules]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise RuleError(f"two rules are named {duplicate!r}", hint="rule names must be unique")
    compiled = tuple(compile_rule(rule) for rule in rules)
    _check_together(compiled)
    return RuleSet(compiled)


def _check_together(compiled: Sequence[CompiledRule]) -> None:
    """The rules each trigger wakes, within :data:`MAX_RULESET_WORK_BYTES` and
    :data:`MAX_RULESET_COMPARED_BYTES` together (rules of different triggers never run in
    one evaluation)."""
    totals: dict[str, tuple[int, int, int]] = {}  # trigger -> (rules, work, compared)
    for rule in compiled:
        count, work, compared = totals.get(rule.rule.on, (0, 0, 0))
        for part in (rule.when, rule.effect):
            if part is not None:
                work += part.cost.work
                compared += part.cost.compared
        totals[rule.rule.on] = (count + 1, work, compared)
    for trigger, (count, work, compared) in totals.items():
        if work > MAX_RULESET_WORK_BYTES:
            raise RuleCostError(
                f"the {count} rules woken by {trigger} may together scan or concatenate "
                f"{work:,} bytes in one evaluation; at most {MAX_RULESET_WORK_BYTES:,} "
                f"({MAX_RULESET_WORK_BYTES // MAX_DATA_BYTES} times the data limit)",
                hint="fewer rules that search, convert or concatenate the data, or move "
                "that work into one rule whose result the others read from the data",
            )
        if compared > MAX_RULESET_COMPARED_BYTES:
            raise RuleCostError(
                f"the {count} rules woken by {trigger} may together compare {compared:,} "
                f"bytes in one evaluation; at most {MAX_RULESET_COMPARED_BYTES:,} "
                f"({MAX_RULESET_COMPARED_BYTES // MAX_DATA_BYTES} times the data limit)",
                hint="compare large parts of the data with each other in fewer rules",
            )


#: Compiled rule sets kept (each a few KB): far more distinct rule sets than objects
#: usually share, so arrivals and cycles of objects with common rules compile once.
COMPILED_CACHE_SIZE = 1024


@functools.lru_cache(maxsize=COMPILED_CACHE_SIZE)
def _compiled(rules: tuple[Rule, ...]) -> RuleSet:
    return compile_rules(rules)


#: Rule tuples seen lately, by identity: ``id(rules) -> (rules, their RuleSet)``. A
#: cycling object keeps the same tuple from cycle to cycle (its value is rebuilt around
#: it), and hashing a tuple of rules by content (every field of every rule) cost more
#: than the cache lookup saved. The entry holds the tuple itself, so its id cannot be
#: reused while the entry lives, and a hit is checked with ``is``. The least recently
#: used entry goes first, one at a time: emptied whole when full, it swung its live bytes
#: between empty and full (4 MiB), and CPython's object arenas ratchet up to each high
#: (docs/benchmarks.md, sessions 28 and 29). A hit comes soon after the put (an
#: arrival's check, then its first cycle; a cycling object keeps its own in the cycle
#: runner), so a thousand entries do.
IDENTITY_CACHE_SIZE = 1024
_BY_IDENTITY: IdentityLru[tuple[Rule, ...], RuleSet] = IdentityLru(IDENTITY_CACHE_SIZE)


def compiled(rules: tuple[Rule, ...]) -> RuleSet:
    """:func:`compile_rules`, cached by the rules' value (rules are frozen dataclasses:
    hashed and compared by content, so two objects with equal rules share one entry and
    a hash collision cannot return another object's rules), with the very same tuple
    answered by identity first. A rule set that fails to compile raises every time:
    exceptions are not cached."""
    held = _BY_IDENTITY.get(rules)
    if held is not None:
        return held
    ruleset = _compiled(rules)
    _BY_IDENTITY.put(rules, ruleset)
    return ruleset


# --- data ---------------------------------------------------------------------------


def load_data(data: bytes, content_type: str) -> dict[str, Any]:
    """The data rules see: a JSON object. Objects with other content have none."""
    if not content_type.startswith("application/json"):
        return {}
    if data[:1] == b"{" and data[1:2] != b"\x00":
        # An object in UTF-8 with nothing around it (what a write stores), read by the
        # scanner json.loads ends in, without its encoding detection (a Python call)
        # and whitespace scans: every cycle whose object was read from the store reads
        # its data. json.loads takes UTF-8 for text starting with "{" and a byte that
        # is not NUL. Anything else, or an error, goes through json.loads itself.
        try:
            text = data.decode("utf-8", "surrogatepass")
            value, end = scan_json(text, 0)
        except (ValueError, RecursionError, StopIteration):
            pass  # refused below, with json.loads's own message
        else:
            if end == len(text) and type(value) is dict:
                return value
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as exc:
        # ValueError: JSONDecodeError, UnicodeDecodeError, and the bare one an integer
        # of more than 4300 digits raises (data from an arriving object, or a create).
        raise RuleError(f"object data is not JSON: {exc!s:.200}") from exc
    if not isinstance(value, dict):
        raise RuleError("object data must be a JSON object for rules to read it")
    return value


def check_data(value: Any, *, depth: int = 0) -> None:
    """Data rules may see must stay within the bounds the cost estimate assumes, and be
    text the runtime can read."""
    if depth > MAX_DATA_DEPTH:
        raise RuleCostError(f"object data is nested more than {MAX_DATA_DEPTH} deep")
    if isinstance(value, str):
        _check_text(value)
    elif isinstance(value, dict | list):
        if len(value) > COLLECTION_BOUND:
            raise RuleCostError(
                f"object data holds a collection of {len(value)} elements; at most {COLLECTION_BOUND}",
                hint="keep large collections out of an object with rules",
            )
        if isinstance(value, dict):
            for key in value:
                if isinstance(key, str):
                    _check_text(key)
        for item in value.values() if isinstance(value, dict) else value:
            check_data(item, depth=depth + 1)


def check_patch(merged: Mapping[str, Any], patch: Mapping[str, Any]) -> None:
    """:func:`check_data` of ``merged`` (data within the bounds, updated by ``patch``),
    checking only what the patch brought: the merged top level's size, and the patch's
    keys and values (at the depth they have in ``merged``).

    Exact when the data the patch was merged into is within the bounds, which is what
    an object's rules read: its data was checked whole when it was created or arrived
    (:meth:`gateway.handoff.context.HostContext.check_rules`), and every write since was
    checked so. A value the patch did not touch is the one that was checked then, so a
    write costs what it writes, not the size of the whole document."""
    if len(merged) > COLLECTION_BOUND:
        raise RuleCostError(
            f"object data holds a collection of {len(merged)} elements; at most {COLLECTION_BOUND}",
            hint="keep large collections out of an object with rules",
        )
    for key, value in patch.items():
        # The common patch (a few plain leaves under ASCII keys: P5's write, every other
        # cycle) takes no call: ASCII text is valid Unicode, and an int, a bool or None
        # is nothing check_data would look into.
        kind = type(value)
        if (
            type(key) is str
            and key.isascii()
            and (kind is int or kind is bool or value is None or (kind is str and value.isascii()))
        ):
            continue
        if isinstance(key, str):
            _check_text(key)
        check_data(value, depth=1)


def _check_text(text: str) -> None:
    # JSON may escape a lone surrogate ("\ud800") and json.loads accepts it, but it is
    # not Unicode: the CEL runtime fails on it mid-evaluation, so refuse it at the edge.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RuleError(
            f"object data holds a string that is not valid Unicode ({exc.reason} at {exc.start})",
            hint="encode binary content as base64 or hex text",
        ) from exc


def dump_data(value: Mapping[str, Any]) -> bytes:
    return _CANONICAL.encode(value).encode("utf-8")


def dump_tree(value: Mapping[str, Any]) -> bytes:
    """:func:`dump_data` of a value that is a tree (JSON decoded, CEL's values merged
    into it): the same encoder, built once, without the bookkeeping that refuses a
    value containing itself (which only a YAML alias can make: a spec's data goes
    through :func:`dump_data`). Every write of a cycle dumps."""
    return canonical_tree(value).encode("utf-8")


def canonical_tree(value: Any) -> str:
    """``_CANONICAL.encode(value)`` for a value that is a tree (see :func:`dump_tree`):
    the C encoder json.JSONEncoder.encode builds per call, built once (without its
    markers of the containers being encoded, it keeps nothing between calls)."""
    if _TREE is None:
        return _CANONICAL.encode(value)
    return "".join(_TREE(value, 0))


#: ``json.dumps(..., sort_keys=True, separators=(",", ":"))`` without building an
#: encoder per call (it keeps no state between calls); every write of a cycle dumps.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))
#: The C encoder _CANONICAL.encode builds for a non-string value, without markers
#: (check_circular off): None where the json module has no C speedups.
_TREE: Callable[[Any, int], list[str]] | None = (
    None
    if json.encoder.c_make_encoder is None  # type: ignore[attr-defined]
    else json.encoder.c_make_encoder(  # type: ignore[attr-defined]
        None,
        _CANONICAL.default,
        json.encoder.encode_basestring_ascii,
        _CANONICAL.indent,
        _CANONICAL.key_separator,
        _CANONICAL.item_separator,
        _CANONICAL.sort_keys,
        _CANONICAL.skipkeys,
        _CANONICAL.allow_nan,
    )
)


def rule_from_mapping(item: Any, where: str) -> Rule:
    """A rule written in an object spec file::

    - name: overdue
      when: data.amount > 1000 && data.status == "open"
      publish: {topic: alerts/overdue, payload: '{"invoice": data.invoice}'}
    """
    if not isinstance(item, dict):
        raise RuleError(f"{where}: expected a mapping with name, when and one action")
    allowed = {"name", "when", "on", "write", "publish", "invoke", "binding"}
    unknown = sorted(set(item) - allowed, key=str)  # YAML keys need not be strings
    if unknown:
        raise RuleError(
            f"{where}.{unknown[0]}: unknown key", hint=f"allowed: {', '.join(sorted(allowed))}"
        )
    actions = [k for k in ("write", "publish", "invoke", "binding") if k in item]
    if len(actions) != 1:
        raise RuleError(f"{where}: give exactly one of write, publish, invoke, binding")
    name, when = item.get("name"), item.get("when", "true")
    if not isinstance(name, str) or not isinstance(when, str):
        raise RuleError(f"{where}: name and when must be strings")
    on = item.get("on", "cycle")
    if on not in TRIGGERS:
        raise RuleError(
            f"{where}.on: {on!r:.40} is not a trigger", hint=f"one of: {', '.join(TRIGGERS)}"
        )
    body = item[actions[0]]
    if actions[0] == "write":
        if not isinstance(body, str):
            raise RuleError(
                f"{where}.write: expected a CEL map expression, e.g. '{{\"checked\": true}}'"
            )
        return Rule(name=name, when=when, action=WriteState(patch=body), on=on)
    if not isinstance(body, dict):
        raise RuleError(f"{where}.{actions[0]}: expected a mapping")
    target_key = "topic" if actions[0] == "publish" else "target"
    target, payload = body.get(target_key), body.get("payload", "")
    if (
        not isinstance(target, str)
        or not isinstance(payload, str)
        or set(body) - {target_key, "payload"}
    ):
        raise RuleError(
            f"{where}.{actions[0]}: needs {target_key} (and optionally payload) as strings"
        )
    if actions[0] == "publish":
        return Rule(name=name, when=when, action=Publish(topic=target, payload=payload), on=on)
    if actions[0] == "binding":
        return Rule(name=name, when=when, action=Binding(target=target, payload=payload), on=on)
    return Rule(name=name, when=when, action=Invoke(target=target, payload=payload), on=on)


def answer_from_mapping(method: Any, item: Any, where: str) -> Answer:
    """One entry of a spec's ``answers:`` mapping::

    answers:
      status:
        when: 'request.caller.startsWith("org-b.example/")'   # optional
        reply: '{"status": data.status}'
        write: '{"asked": true}'                               # optional
    """
    if not isinstance(method, str):
        raise RuleError(f"{where}: a method name must be a string")
    if not isinstance(item, dict):
        raise RuleError(f"{where}.{method}: expected a mapping with reply (and when, write)")
    unknown = sorted(set(item) - {"when", "reply", "write"}, key=str)
    if unknown:
        raise RuleError(f"{where}.{method}.{unknown[0]}: unknown key", hint="when, reply, write")
    reply, when, write = item.get("reply"), item.get("when", "true"), item.get("write", "")
    if not isinstance(reply, str) or not isinstance(when, str) or not isinstance(write, str):
        raise RuleError(f"{where}.{method}: reply (required), when and write are CEL strings")
    return Answer(method=method, when=when, reply=reply, write=write)
