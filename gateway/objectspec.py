"""Object specification files: what ``gateway object create --spec FILE`` reads.

A spec says what a new object holds (data), what it may do and where it may live (its
root grant, issued by the creating host), and its evaluation schedule::

    data:                       # any YAML/JSON value, stored as JSON
      invoice: 42
      amount: 1250
    grant:
      audience: spiffe://org-b.example      # who may hold and extend it besides this host
      home: spiffe://org-a.example/cluster/east/gateway   # optional custody home
      valid_for_days: 30
      capabilities:
        - resource: pubsub:alerts/overdue
          actions: [publish]
      constraints:
        hosts: ["spiffe://org-a.example/*", "spiffe://org-b.example/*"]
        max_hops: 3
    cycle:
      interval_seconds: 5
    rules:
      - name: overdue
        when: data.amount > 1000 && data.status == "open"
        publish: {topic: alerts/overdue, payload: '{"invoice": data.invoice}'}
      - name: count
        when: "true"
        write: '{"checks": generation + 1}'
      - name: cancel                          # woken by a message, not by the cycle
        on: message
        when: event.type == "order.cancelled"
        write: '{"status": "cancelled"}'
    subscribe: [orders/cancelled]             # needs pubsub:orders/cancelled subscribe
    answers:                                  # requests it answers (gateway call)
      status:
        when: 'request.caller.startsWith("org-b.example/")'
        reply: '{"status": data.status}'

(docs/events-and-calls.md describes subscriptions, answers and the authority they need.)

Parsed once, at the edge, into a frozen :class:`ObjectSpec`; errors name the file and key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from gateway._decode import check_document
from gateway.authority import CapabilitySet, Constraints
from gateway.credentials import parse_audience
from gateway.errors import AuthorityError, ConfigError, GrantFormatError, unreadable
from gateway.identity import HostId
from gateway.limits import MAX_DATA_BYTES
from gateway.model import MAX_CYCLE_INTERVAL, Answer, CycleState, Rule
from gateway.rules import answer_from_mapping, dump_data, rule_from_mapping

_TOP = frozenset({"data", "content_type", "grant", "cycle", "rules", "subscribe", "answers"})
_GRANT = frozenset({"audience", "valid_for_days", "capabilities", "constraints", "home"})
_CYCLE = frozenset({"interval_seconds"})


@dataclass(frozen=True, slots=True, kw_only=True)
class GrantSpec:
    #: Who may hold and extend the object besides the creating host (which always
    #: holds its own root): host or trust-domain ids. None or empty: the creator only.
    audience: str | tuple[str, ...] | None
    valid_for: timedelta
    capabilities: CapabilitySet
    constraints: Constraints
    home: str = ""  #: the custody home (a host of this domain); empty: none

    @property
    def audiences(self) -> tuple[str, ...]:
        if self.audience is None:
            return ()
        return (self.audience,) if isinstance(self.audience, str) else self.audience


@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectSpec:
    data: bytes
    content_type: str
    grant: GrantSpec | None
    cycle: CycleState
    rules: tuple[Rule, ...] = ()
    subscriptions: tuple[str, ...] = ()
    answers: tuple[Answer, ...] = ()


def _fail(source: str, where: str, problem: str, fix: str) -> ConfigError:
    return ConfigError(f"{source}: {where}: {problem}", hint=fix)


_MIN_INTERVAL = 0.001
_MAX_INTERVAL = MAX_CYCLE_INTERVAL.total_seconds()
#: The most bytes a spec file may hold: its inline data is at most MAX_DATA_BYTES of
#: JSON, and YAML may spend more characters on the same values (indentation, quoting).
MAX_SPEC_BYTES = 4 * MAX_DATA_BYTES


def interval_of(seconds: float) -> timedelta:
    """An evaluation interval, kept to the millisecond: the precision of every time the
    gateway signs (a transfer carries the next due time, and receivers refuse finer)."""
    if not _MIN_INTERVAL <= seconds <= _MAX_INTERVAL:
        raise ConfigError(
            f"an evaluation interval is {_MIN_INTERVAL} to {_MAX_INTERVAL:.0f} seconds",
            hint="e.g. 5",
        )
    return timedelta(milliseconds=round(seconds * 1000))


def _short(value: Any) -> str:
    """A value for an error message: bounded, and never an int too long to print
    (repr of an int of thousands of digits raises ValueError)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return "a very large integer"
    if isinstance(value, BaseException):
        return " ".join(str(value).split())[:120]
    return repr(value)[:80]


def _check_expansion(raw: Any, source: str) -> None:
    """Refuse data whose JSON would be larger than an object may hold inline, before
    writing it: YAML aliases repeat what they name, so ten lines of ``&a``/``*a`` make a
    document of a billion values, which json.dumps would expand in full. The size is a
    lower bound of the JSON's length, computed once per distinct container."""
    sizes: dict[int, int] = {}

    def size(value: Any) -> int:
        if isinstance(value, str):
            return len(value) + 2
        if not isinstance(value, dict | list):
            return 1
        known = sizes.get(id(value))
        if known is not None:
            return known
        sizes[id(value)] = 0  # a cycle (``&a [*a]``) counts nothing; dump_data refuses it
        items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
        total = 2 + sum(size(item) + 1 for item in items)
        sizes[id(value)] = total
        return total

    try:
        total = size(raw)
    except RecursionError as exc:
        raise _fail(source, "data", "nested too deeply", "use a few levels") from exc
    if total > MAX_DATA_BYTES:
        raise _fail(
            source,
            "data",
            f"would be more than {total:,} bytes of JSON; at most {MAX_DATA_BYTES:,} inline "
            "(YAML aliases repeat what they name)",
            "keep the data small; give large content with --data-file instead",
        )


def _mapping(value: Any, source: str, where: str, allowed: frozenset[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(
            source,
            where,
            f"expected a mapping, got {type(value).__name__}",
            "see gateway/objectspec.py",
        )
    unknown = sorted(set(value) - allowed, key=str)  # YAML keys need not be strings
    if unknown:
        raise _fail(
            source,
            f"{where}.{unknown[0]!s:.64}",
            "unknown key",
            f"allowed keys: {', '.join(sorted(allowed))}",
        )
    return value


def parse_spec(document: Any, *, source: str) -> ObjectSpec:
    top = _mapping(document if document is not None else {}, source, "(top level)", _TOP)
    content_type = top.get("content_type", "application/json")
    if not isinstance(content_type, str) or "/" not in content_type:
        raise _fail(
            source,
            "content_type",
            f"{_short(content_type)} is not a media type",
            "e.g. application/json",
        )
    raw = top.get("data", {})
    if content_type == "application/json":
        _check_expansion(raw, source)
        try:
            data = dump_data(raw)
        except (TypeError, ValueError, RecursionError) as exc:
            # YAML has dates, non-string keys and integers too long to print as JSON.
            raise _fail(
                source, "data", f"cannot be written as JSON: {_short(exc)}", "use JSON values"
            ) from exc
    elif isinstance(raw, str):
        data = raw.encode("utf-8")
    else:
        raise _fail(
            source, "data", f"must be a string for {content_type}", "or use application/json"
        )

    grant = None
    if "grant" in top:
        spec = _mapping(top["grant"], source, "grant", _GRANT)
        days = spec.get("valid_for_days", 30)
        if isinstance(days, bool) or not isinstance(days, int | float) or not 0 < days <= 3650:
            raise _fail(
                source,
                "grant.valid_for_days",
                f"expected 0 < days ≤ 3650, got {_short(days)}",
                "e.g. 30",
            )
        audience = spec.get("audience")
        listed: list[str] = []
        if audience is not None:
            candidates = audience if isinstance(audience, list) and audience else [audience]
            for one in candidates:
                try:
                    listed.append(parse_audience(one))
                except GrantFormatError as exc:
                    raise _fail(
                        source,
                        "grant.audience",
                        f"expected a host or trust-domain id (or a list of them), got {_short(one)}",
                        "e.g. spiffe://org-b.example (any host of org-b) or a full host id",
                    ) from exc
        home = spec.get("home", "")
        if not isinstance(home, str):
            raise _fail(
                source,
                "grant.home",
                f"expected a host id, got {_short(home)}",
                "a host of this domain",
            )
        if home:
            try:
                HostId.parse(home)
            except ConfigError as exc:
                raise _fail(source, "grant.home", exc.reason, "a host of this domain") from exc
        try:
            constraints = Constraints.from_claim(spec.get("constraints", {}))
        except AuthorityError as exc:
            raise _fail(source, "grant.constraints", exc.reason, exc.hint or "") from exc
        grant = GrantSpec(
            audience=None if audience is None else tuple(listed),
            home=home,
            valid_for=timedelta(days=days),
            capabilities=CapabilitySet.from_config(
                spec.get("capabilities", []), f"{source}: grant.capabilities"
            ),
            constraints=constraints,
        )

    cycle = CycleState()
    if "cycle" in top:
        spec = _mapping(top["cycle"], source, "cycle", _CYCLE)
        interval = spec.get("interval_seconds")
        if isinstance(interval, bool) or not isinstance(interval, int | float):
            interval = math.nan  # refused below, as any other unusable number
        if not _MIN_INTERVAL <= interval <= _MAX_INTERVAL:  # nan and inf fail this too
            raise _fail(
                source,
                "cycle.interval_seconds",
                f"expected seconds from {_MIN_INTERVAL} to {_MAX_INTERVAL:.0f}, "
                f"got {_short(spec.get('interval_seconds'))}",
                "e.g. 5",
            )
        cycle = CycleState(interval=interval_of(interval))

    raw_rules = top.get("rules", [])
    if not isinstance(raw_rules, list):
        raise _fail(source, "rules", "expected a list", "write '- name: ...' items")
    rules = tuple(
        rule_from_mapping(item, f"{source}: rules[{index}]") for index, item in enumerate(raw_rules)
    )
    topics = top.get("subscribe", [])
    if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
        raise _fail(source, "subscribe", "expected a list of topics", "e.g. [orders/cancelled]")
    raw_answers = top.get("answers", {})
    if not isinstance(raw_answers, dict):
        raise _fail(source, "answers", "expected a mapping of method to answer", "see the docs")
    answers = tuple(
        answer_from_mapping(method, item, f"{source}: answers")
        for method, item in raw_answers.items()
    )
    return ObjectSpec(
        data=data,
        content_type=content_type,
        grant=grant,
        cycle=cycle,
        rules=rules,
        subscriptions=tuple(topics),
        answers=answers,
    )


def load_spec(path: str | Path) -> ObjectSpec:
    source = Path(path)
    try:
        # At most one byte past the limit: a spec may come from another team, and a huge
        # (sparse) file or /dev/zero read whole took all of memory before any check.
        with open(source, "rb") as handle:
            raw = handle.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise unreadable(source, exc) from exc
    if len(raw) > MAX_SPEC_BYTES:
        raise _fail(
            str(source),
            "(whole file)",
            f"larger than {MAX_SPEC_BYTES:,} bytes, the most a spec may be",
            "a spec's inline data is at most 4 MiB of JSON; create a larger object from "
            "--data-file, without --spec",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(str(source), f"byte {exc.start}", "not UTF-8 text", "save it as UTF-8") from exc
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(top level)"
        raise _fail(
            str(source), where, "not valid YAML", "check indentation and quoting there"
        ) from exc
    except (ValueError, OverflowError) as exc:
        # PyYAML's constructors convert scalars with int() and date(): an integer of
        # thousands of digits or a date like 2026-02-30 fail there, outside YAMLError.
        raise _fail(
            str(source), "(a value)", f"cannot be read: {_short(exc)}", "check numbers and dates"
        ) from exc
    except RecursionError as exc:  # [[[[… nests deeper than the YAML composer can go
        raise _fail(
            str(source), "(top level)", "nested too deeply", "a spec is a few levels deep"
        ) from exc
    check_document(document, error=ConfigError, what=str(source))
    return parse_spec(document, source=str(source))
