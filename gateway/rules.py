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
  most :data:`MAX_NESTING` deep, and an estimated cost — every node weighted by
  :data:`COLLECTION_BOUND` per enclosing comprehension — of at most :data:`MAX_COST`.
  Object data is held to the same bound (:func:`check_data`), so the estimate is an
  upper bound of the work an evaluation can do.
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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cel_expr_python import cel
from google.protobuf import empty_pb2
from google.protobuf.unknown_fields import UnknownFieldSet

from gateway._lru import BoundedLru
from gateway.errors import RuleCostError, RuleError
from gateway.limits import MAX_ANSWERS, MAX_SUBSCRIPTIONS
from gateway.model import TRIGGERS, Answer, Binding, Invoke, Publish, Rule, WriteState

MAX_RULES = 32
MAX_EXPRESSION_CHARS = 2048
MAX_NODES = 256
MAX_NESTING = 1
#: Most elements any list or map in an object's data may have (checked on every write).
COLLECTION_BOUND = 1000
MAX_COST = 1_000_000
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

# cel.expr field numbers (cel/expr/syntax.proto, checked.proto) used by the cost walk.
_CHECKED_EXPR = 4
_EXPR_KINDS = {
    3: "const",
    4: "ident",
    5: "select",
    6: "call",
    7: "list",
    8: "struct",
    9: "comprehension",
}
_SELECT_OPERAND = 1
_CALL_TARGET, _CALL_ARGS = 1, 3
_LIST_ELEMENTS = 1
_STRUCT_ENTRIES, _ENTRY_MAP_KEY, _ENTRY_VALUE = 2, 3, 4
_COMPREHENSION_ONCE = (2, 4, 7)  #: iter_range, accu_init, result: evaluated once
_COMPREHENSION_LOOP = (5, 6)  #: loop_condition, loop_step: evaluated per element


@dataclass(frozen=True, slots=True, kw_only=True)
class Cost:
    nodes: int
    nesting: int
    estimate: int


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
        object.__setattr__(
            self, "_by_trigger", {on: tuple(rules) for on, rules in by_trigger.items()}
        )

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
        activation = activation_of(
            data=data, generation=generation, epoch=epoch, now=now, host=host, event=event
        )
        proposals: list[Proposal] = []
        errors: list[str] = []
        for name, when, effect, resource, verb in self._by_trigger.get(trigger, ()):
            # One rule failing must not stop the others or the cycle.
            try:
                fired = when.eval(activation=activation)
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
                raw = result.plain_value()
                if verb == "write" and (
                    not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw)
                ):
                    errors.append(f"rule {name}: patch is not a map with string keys")
                    continue
                try:
                    value = _plain(raw)
                except _NotJSONError as exc:
                    errors.append(f"rule {name}: action failed: {exc}")
                    continue
            proposals.append(Proposal(rule=name, resource=resource, verb=verb, value=value))
        return Outcome(proposals=tuple(proposals), errors=tuple(errors))


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
    return _ENV.Activation(
        {
            "data": dict(data),
            "generation": generation,
            "epoch": epoch,
            "now": now,
            "host": host,
            "event": dict(event) if event else {},
            "request": dict(request) if request else {},
        }
    )


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
        value = expression.eval(activation=activation)
    except RuntimeError as exc:
        # The runtime raises (instead of returning an error value) on input it cannot
        # convert, e.g. a string holding a lone surrogate, which JSON allows as an escape.
        return None, _first_line(exc)
    if value.type() == cel.Type.ERROR:
        return None, _error_text(value)
    return value, None


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


def _fields(raw: bytes) -> Iterator[tuple[int, bytes]]:
    """Length-delimited fields of a serialized message, read without its schema."""
    holder = empty_pb2.Empty()
    holder.ParseFromString(raw)
    fields = UnknownFieldSet(holder)
    for index in range(len(fields)):
        field = fields[index]
        if isinstance(field.data, bytes):
            yield field.field_number, field.data


def _walk(expr: bytes, multiplier: int, depth: int, totals: dict[str, int]) -> None:
    totals["nodes"] += 1
    totals["estimate"] += multiplier
    totals["nesting"] = max(totals["nesting"], depth)
    if totals["nodes"] > MAX_NODES * 4:
        return  # far over the limit already; stop walking pathological input
    for number, body in _fields(expr):
        kind = _EXPR_KINDS.get(number)
        if kind is None or kind in ("const", "ident"):
            continue
        children = list(_fields(body))
        if kind == "select":
            nested = [b for n, b in children if n == _SELECT_OPERAND]
        elif kind == "call":
            nested = [b for n, b in children if n in (_CALL_TARGET, _CALL_ARGS)]
        elif kind == "list":
            nested = [b for n, b in children if n == _LIST_ELEMENTS]
        elif kind == "struct":
            nested = [
                b
                for n, entry in children
                if n == _STRUCT_ENTRIES
                for m, b in _fields(entry)
                if m in (_ENTRY_MAP_KEY, _ENTRY_VALUE)
            ]
        else:
            for n, b in children:
                if n in _COMPREHENSION_ONCE:
                    _walk(b, multiplier, depth, totals)
                elif n in _COMPREHENSION_LOOP:
                    _walk(b, multiplier * COLLECTION_BOUND, depth + 1, totals)
            continue
        for child in nested:
            _walk(child, multiplier, depth, totals)


def cost_of(expression: cel.Expression) -> Cost:
    """Size and a cost bound of a compiled expression, from its checked AST."""
    checked = next((b for n, b in _fields(expression.serialize()) if n == 2), b"")
    root = next((b for n, b in _fields(checked) if n == _CHECKED_EXPR), None)
    if root is None:
        raise RuleError("the CEL runtime returned no checked expression to analyse")
    totals = {"nodes": 0, "nesting": 0, "estimate": 0}
    _walk(root, 1, 0, totals)
    return Cost(nodes=totals["nodes"], nesting=totals["nesting"], estimate=totals["estimate"])


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
    cost = cost_of(expression)
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
            f"(each comprehension counts {COLLECTION_BOUND} iterations)",
            hint="move work out of all/exists/map/filter bodies",
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
    return RuleSet(tuple(compile_rule(rule) for rule in rules))


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
_BY_IDENTITY: BoundedLru[int, tuple[tuple[Rule, ...], RuleSet]] = BoundedLru(IDENTITY_CACHE_SIZE)


def compiled(rules: tuple[Rule, ...]) -> RuleSet:
    """:func:`compile_rules`, cached by the rules' value (rules are frozen dataclasses:
    hashed and compared by content, so two objects with equal rules share one entry and
    a hash collision cannot return another object's rules), with the very same tuple
    answered by identity first. A rule set that fails to compile raises every time:
    exceptions are not cached."""
    held = _BY_IDENTITY.get(id(rules))
    if held is not None and held[0] is rules:
        return held[1]
    ruleset = _compiled(rules)
    _BY_IDENTITY.put(id(rules), (rules, ruleset))
    return ruleset


# --- data ---------------------------------------------------------------------------


def load_data(data: bytes, content_type: str) -> dict[str, Any]:
    """The data rules see: a JSON object. Objects with other content have none."""
    if not content_type.startswith("application/json"):
        return {}
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


#: ``json.dumps(..., sort_keys=True, separators=(",", ":"))`` without building an
#: encoder per call (it keeps no state between calls); every write of a cycle dumps.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


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
