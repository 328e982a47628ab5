"""The algebra of authority: capabilities, constraints, host policy, effective authority.

Pure values and decisions, no I/O and no JWT (``gateway.credentials`` signs and verifies
grants; this module gives meaning to their ``cap`` and ``cons`` claims).

Resources and patterns
    A resource is ``kind:path``: ``pubsub:alerts/overdue``, ``state:self``,
    ``invoke:payments/charge``. The kinds, and the actions each allows, are
    :data:`ACTIONS`. Path segments are ``[A-Za-z0-9._-]+``, never ``.`` or ``..``.
    A pattern is exact (``pubsub:alerts/overdue``) or a prefix wildcard whose only
    ``*`` is its whole last segment: ``pubsub:alerts/*`` is everything strictly below
    ``alerts`` (not ``pubsub:alerts`` itself, not ``pubsub:alerts-x``), ``pubsub:*`` is
    every pubsub resource. Host patterns (``spiffe://org-b.example/cluster/*``) use the
    same path rules below one exact trust domain.

Invariants this module keeps, and why they matter:

* **Patterns form a laminar family**: any two are nested or disjoint (see
  :func:`_path_covers`). So the intersection of two patterns is one of them or
  nothing, and a pattern is inside a *union* of patterns only when it is inside one
  of them; every subset decision here is exact, never an approximation that could
  let a child widen.
* **Every value is canonical**: a :class:`CapabilitySet` keeps only its maximal
  (resource, action) pairs, grouped and sorted, so equal authorities are equal values
  and ``to_claim()`` is deterministic.
* **Nothing is implied**: an empty set grants nothing, an absent host policy offers
  nothing (:meth:`HostPolicy.empty`), and a child grant that omits one of its
  parent's constraints is *wider* than its parent, not "unconstrained by default".
* **Effective authority only shrinks**: it is the chain ∩ what the host offers ∩
  every matching ceiling, minus the host's denials; adding configuration can only
  remove authority (tested as a property).

Malformed input raises :class:`AuthorityFormatError` (or :class:`ConfigError` for
host configuration, naming the key); widening raises a :class:`WideningError`
subclass; a refused admission raises :class:`AdmissionDeniedError`. Predicates such as
:meth:`ResourcePattern.covers` return ``bool``; decisions a caller must act on raise.
"""

from __future__ import annotations

import enum
import functools
import string
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Final, TypeVar

from gateway.errors import (
    AdmissionDeniedError,
    AuthorityFormatError,
    CapabilityWideningError,
    ConfigError,
    ConstraintWideningError,
)
from gateway.identity import HostId, trust_domain_problem, validate_tenant

__all__ = [
    "ACTIONS",
    "KINDS",
    "Admission",
    "Capability",
    "CapabilitySet",
    "Ceiling",
    "Constraints",
    "EffectiveAuthority",
    "Explanation",
    "HostPattern",
    "HostPolicy",
    "Outcome",
    "Resource",
    "ResourcePattern",
    "effective_authority",
]

#: The one place that says which resource kinds exist and what can be done to each.
ACTIONS: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {
        "pubsub": frozenset({"publish", "subscribe"}),
        "state": frozenset({"read", "write"}),
        "invoke": frozenset({"invoke"}),
        # binding:<name>/<operation>: a Dapr output binding (InvokeBinding) and operation.
        "binding": frozenset({"invoke"}),
        # call:<method>/<caller>: who may ask the object what (gateway/runtime/calls.py);
        # the caller is <trust domain>/<host path> or <trust domain>/dapr/<app id>.
        "call": frozenset({"call"}),
    }
)
KINDS: Final[frozenset[str]] = frozenset(ACTIONS)

_T = TypeVar("_T")

_SEGMENT_CHARS: Final = frozenset(string.ascii_letters + string.digits + "._-")
_MAX_TEXT: Final = 2048  # longer resource or host texts are refused, not parsed
_MAX_REGION: Final = 64
_WILDCARD: Final = "*"

_RESOURCE_EXAMPLE: Final = (
    "pubsub:alerts/overdue (exact) or pubsub:alerts/* (everything below alerts/)"
)
_HOST_EXAMPLE: Final = (
    "spiffe://org-b.example/cluster/west/gateway (one host) or spiffe://org-b.example/* "
    "(every host of org-b.example)"
)
_WIDENING_HINT: Final = "a child grant may keep or narrow its parent's authority, never add to it"


def _shown(text: str) -> str:
    """``text`` quoted for a message, shortened: patterns may come from peers."""
    return repr(text if len(text) <= 120 else text[:100] + "…")


def _kinds_text() -> str:
    return ", ".join(sorted(KINDS))


def _actions_text(kind: str) -> str:
    return ", ".join(sorted(ACTIONS[kind]))


# --- paths: the laminar algebra shared by resource and host patterns -------------------

_Path = tuple[tuple[str, ...], bool]  # (segments, wildcard)


def _path_covers(outer: _Path, inner: _Path) -> bool:
    """Whether every path ``inner`` matches is matched by ``outer`` (set inclusion).

    ``(P, False)`` is the set {P}; ``(P, True)`` is every path that *strictly* extends P.

    Laminarity (two patterns are nested or disjoint), which the rest of the module
    relies on: two exact sets are equal or disjoint. An exact {S} and a prefix set P*
    are nested when S strictly extends P, else disjoint. For two prefix sets P* and
    Q*: if P is a prefix of Q (or equal), every strict extension of Q strictly extends
    P, so Q* ⊆ P* (and symmetrically); otherwise P and Q differ at some index below
    both lengths, and no path can extend both, so P* ∩ Q* = ∅.

    Consequence used for subset checks: a pattern is covered by a finite union of
    patterns only if one of them covers it alone. For an exact pattern that is
    immediate (one point). For a prefix P*, each member of the union either covers
    P*, is disjoint from it, or sits strictly inside it and names a fixed segment right
    after P; a path P + (a fresh segment, which exists because segments are unbounded
    strings) is in P* but in none of the inner members, so without a single covering
    member the union misses it.
    """
    outer_segments, outer_wildcard = outer
    inner_segments, inner_wildcard = inner
    if not outer_wildcard:
        # An exact set is a single path: it covers only the same exact path.
        return not inner_wildcard and outer_segments == inner_segments
    depth = len(outer_segments)
    if inner_wildcard:
        # Q* ⊆ P* iff Q extends P or equals it.
        return inner_segments[:depth] == outer_segments
    # {S} ⊆ P* iff S strictly extends P: ``alerts/*`` does not cover ``alerts``.
    return len(inner_segments) > depth and inner_segments[:depth] == outer_segments


def _segment_problem(segment: str) -> str | None:
    if not segment:
        return "it has an empty path segment"
    if segment == _WILDCARD:
        return "'*' may only be the whole last segment (pubsub:alerts/*), not a middle one"
    if _WILDCARD in segment:
        return (
            f"the segment {segment!r} contains '*'; '*' may only be the whole last segment"
            " (pubsub:alerts/*), never part of a name or a middle segment"
        )
    if segment in (".", ".."):
        return f"it has a {segment!r} segment; dot segments are not allowed"
    for char in segment:
        if char not in _SEGMENT_CHARS:
            return f"the segment {segment!r} contains {char!r}; only [A-Za-z0-9._-] are allowed"
    return None


def _path_problem(segments: tuple[str, ...], wildcard: bool) -> str | None:
    if not segments and not wildcard:
        return "the path is missing"
    for segment in segments:
        problem = _segment_problem(segment)
        if problem:
            return problem
    return None


def _split_path(path: str, *, allow_wildcard: bool) -> _Path | str:
    """Split ``a/b/*`` into ``(("a", "b"), True)``, or say what is wrong with it."""
    if not path:
        return "the path is missing"
    parts = path.split("/")
    wildcard = parts[-1] == _WILDCARD
    if wildcard:
        if not allow_wildcard:
            return "it has a '*'; a resource names one thing, only patterns have wildcards"
        parts = parts[:-1]
    elif len(parts) > 1 and not parts[-1]:
        return "the path ends with '/'"
    segments = tuple(parts)
    return _path_problem(segments, wildcard) or (segments, wildcard)


def _path_text(segments: tuple[str, ...], wildcard: bool) -> str:
    return "/".join((*segments, _WILDCARD) if wildcard else segments)


# --- resources and resource patterns ------------------------------------------------


def _split_resource(text: object, what: str) -> tuple[str, str]:
    if not isinstance(text, str):
        raise AuthorityFormatError(
            f"a {what} must be a string like pubsub:alerts/overdue, got {type(text).__name__}",
            hint=f"write it like {_RESOURCE_EXAMPLE}",
        )
    if len(text) > _MAX_TEXT:
        raise AuthorityFormatError(
            f"{_shown(text)} is not a valid {what}: longer than {_MAX_TEXT} characters",
            hint=f"write it like {_RESOURCE_EXAMPLE}",
        )
    kind, colon, path = text.partition(":")
    if not colon:
        raise AuthorityFormatError(
            f"{_shown(text)} is not a valid {what}: it has no kind (kind:path)",
            hint=f"write it like {_RESOURCE_EXAMPLE}; kinds: {_kinds_text()}",
        )
    return kind, path


def _kind_problem(kind: str) -> str | None:
    if kind in KINDS:
        return None
    if _WILDCARD in kind:
        return "the kind cannot be a wildcard; a pattern names exactly one kind"
    return f"unknown kind {kind!r}; kinds are {_kinds_text()}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Resource:
    """One concrete resource, e.g. ``pubsub:alerts/overdue``; never a pattern."""

    kind: str
    segments: tuple[str, ...]

    def __post_init__(self) -> None:
        problem = _kind_problem(self.kind) or _path_problem(self.segments, False)
        if problem:
            raise AuthorityFormatError(
                f"{_shown(str(self))} is not a valid resource: {problem}",
                hint="write it like pubsub:alerts/overdue",
            )

    @classmethod
    def parse(cls, text: str) -> Resource:
        """Parse ``kind:path``, raising AuthorityFormatError that says what is wrong."""
        kind, path = _split_resource(text, "resource")
        split = _kind_problem(kind) or _split_path(path, allow_wildcard=False)
        if isinstance(split, str):
            raise AuthorityFormatError(
                f"{_shown(text)} is not a valid resource: {split}",
                hint="write it like pubsub:alerts/overdue",
            )
        return cls(kind=kind, segments=split[0])

    def __str__(self) -> str:
        return f"{self.kind}:{_path_text(self.segments, False)}"


@functools.lru_cache(maxsize=1024)
def _parsed(text: str) -> Resource:
    """``Resource.parse`` memoised: admission checks parse the same few resources over and
    over. A Resource is immutable; a parse error is raised, and so never cached."""
    return Resource.parse(text)


def _resource(resource: Resource | str) -> Resource:
    if isinstance(resource, Resource):
        return resource
    # Only strings are cached (hashable); anything else gets parse's own error.
    return _parsed(resource) if isinstance(resource, str) else Resource.parse(resource)


def _check_action(kind: str, action: object) -> str:
    if not isinstance(action, str) or action not in ACTIONS[kind]:
        shown = repr(action) if isinstance(action, str) else type(action).__name__
        raise AuthorityFormatError(
            f"{shown} is not an action on {kind} resources",
            hint=f"{kind} actions are: {_actions_text(kind)}",
        )
    return action


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourcePattern:
    """An exact resource or a prefix wildcard; the set of resources it matches.

    ``segments=("alerts",), wildcard=True`` is ``pubsub:alerts/*``;
    ``segments=(), wildcard=True`` is ``pubsub:*``.
    """

    kind: str
    segments: tuple[str, ...]
    wildcard: bool = False

    def __post_init__(self) -> None:
        problem = _kind_problem(self.kind) or _path_problem(self.segments, self.wildcard)
        if problem:
            raise AuthorityFormatError(
                f"{_shown(str(self))} is not a valid resource pattern: {problem}",
                hint=f"write it like {_RESOURCE_EXAMPLE}",
            )

    @classmethod
    def parse(cls, text: str) -> ResourcePattern:
        """Parse a pattern, raising AuthorityFormatError naming it and showing a valid one."""
        kind, path = _split_resource(text, "resource pattern")
        split = _kind_problem(kind) or _split_path(path, allow_wildcard=True)
        if isinstance(split, str):
            raise AuthorityFormatError(
                f"{_shown(text)} is not a valid resource pattern: {split}",
                hint=f"write it like {_RESOURCE_EXAMPLE}",
            )
        return cls(kind=kind, segments=split[0], wildcard=split[1])

    @classmethod
    def exactly(cls, resource: Resource | str) -> ResourcePattern:
        """The pattern that matches ``resource`` and nothing else."""
        found = _resource(resource)
        return cls(kind=found.kind, segments=found.segments)

    @property
    def _path(self) -> _Path:
        return (self.segments, self.wildcard)

    @property
    def _sort_key(self) -> tuple[str, tuple[str, ...], bool]:
        return (self.kind, self.segments, self.wildcard)

    def matches(self, resource: Resource | str) -> bool:
        """Whether the concrete ``resource`` is in this pattern's set."""
        found = _resource(resource)
        return self.kind == found.kind and _path_covers(self._path, (found.segments, False))

    def covers(self, other: ResourcePattern) -> bool:
        """Whether every resource ``other`` matches, this matches too (``other`` ⊆ ``self``)."""
        return self.kind == other.kind and _path_covers(self._path, other._path)

    def intersect(self, other: ResourcePattern) -> ResourcePattern | None:
        """The resources both match, or None; by laminarity it is one of the two or nothing."""
        if self.covers(other):
            return other
        if other.covers(self):
            return self
        return None

    def __str__(self) -> str:
        return f"{self.kind}:{_path_text(self.segments, self.wildcard)}"


# --- capabilities -------------------------------------------------------------------

_Atom = tuple[ResourcePattern, str]  # one (pattern, action) pair


@dataclass(frozen=True, slots=True, kw_only=True)
class Capability:
    """A resource pattern and a non-empty set of actions from its kind's vocabulary."""

    resource: ResourcePattern
    actions: frozenset[str]

    def __post_init__(self) -> None:
        if not isinstance(self.actions, frozenset):
            raise TypeError("Capability.actions must be a frozenset")
        if not self.actions:
            raise AuthorityFormatError(
                f"the capability on {self.resource} lists no actions",
                hint=f"list at least one of: {_actions_text(self.resource.kind)}",
            )
        for action in sorted(self.actions):
            _check_action(self.resource.kind, action)

    @classmethod
    def of(cls, resource: str, *actions: str) -> Capability:
        """Convenience: ``Capability.of("pubsub:alerts/*", "publish")``."""
        return cls(resource=ResourcePattern.parse(resource), actions=frozenset(actions))

    def __str__(self) -> str:
        return f"{self.resource} {','.join(sorted(self.actions))}"


def _maximal(atoms: Iterable[_Atom]) -> set[_Atom]:
    """The atoms not covered by another atom with the same action (same meaning, fewer)."""
    unique = set(atoms)
    return {
        (pattern, action)
        for pattern, action in unique
        if not any(
            other_action == action and other != pattern and other.covers(pattern)
            for other, other_action in unique
        )
    }


def _patterns_text(patterns: Iterable[ResourcePattern]) -> str:
    return ", ".join(str(p) for p in sorted(patterns, key=lambda p: p._sort_key))


@dataclass(frozen=True, slots=True, kw_only=True)
class CapabilitySet:
    """A canonical set of capabilities: what an object may do, on what.

    The constructor normalizes: entries covered by another entry for the same action
    are dropped, the rest are grouped by pattern and sorted. ``permits`` is unchanged
    by this, and two sets that permit the same things structurally are equal values.
    """

    capabilities: tuple[Capability, ...] = ()

    def __post_init__(self) -> None:
        atoms = _maximal(
            (capability.resource, action)
            for capability in self.capabilities
            for action in capability.actions
        )
        grouped: dict[ResourcePattern, set[str]] = {}
        for pattern, action in atoms:
            grouped.setdefault(pattern, set()).add(action)
        canonical = tuple(
            Capability(resource=pattern, actions=frozenset(grouped[pattern]))
            for pattern in sorted(grouped, key=lambda p: p._sort_key)
        )
        object.__setattr__(self, "capabilities", canonical)

    @classmethod
    def from_claim(cls, claim: object) -> CapabilitySet:
        """Parse a ``cap`` claim: a list of exactly ``{"res": str, "act": [str, ...]}``.

        Strict: unknown or missing keys, a resource listed twice, an action listed
        twice or outside the kind's vocabulary are refused with AuthorityFormatError.
        """
        return cls(capabilities=_parse_capabilities(claim, "cap", "res", "act", _claim_error))

    def to_claim(self) -> list[dict[str, str | list[str]]]:
        """The canonical ``cap`` claim: sorted by resource, actions sorted."""
        return [
            {"res": str(capability.resource), "act": sorted(capability.actions)}
            for capability in self.capabilities
        ]

    def __iter__(self) -> Iterator[Capability]:
        return iter(self.capabilities)

    def __bool__(self) -> bool:
        return bool(self.capabilities)

    def _atoms(self) -> Iterator[_Atom]:
        for capability in self.capabilities:
            for action in sorted(capability.actions):
                yield capability.resource, action

    def permits(self, resource: Resource | str, action: str) -> bool:
        """Whether some capability matches ``resource`` and lists ``action``.

        Raises AuthorityFormatError for a malformed resource or an action its kind
        does not have, so a typo is reported instead of quietly denied.
        """
        found = _resource(resource)
        _check_action(found.kind, action)
        return any(
            action in capability.actions and capability.resource.matches(found)
            for capability in self.capabilities
        )

    def require_subset_of(self, parent: CapabilitySet) -> None:
        """Raise CapabilityWideningError unless everything this permits, ``parent`` permits.

        Exact, by laminarity (see :func:`_path_covers`): each (pattern, action) here
        must be covered by a single (pattern, action) of the parent.
        """
        parent_atoms = list(parent._atoms())
        for pattern, action in self._atoms():
            if not any(a == action and q.covers(pattern) for q, a in parent_atoms):
                raise CapabilityWideningError(
                    _why_not_covered(pattern, action, parent_atoms), hint=_WIDENING_HINT
                )

    def intersect(self, other: CapabilitySet) -> CapabilitySet:
        """What both permit: pairwise pattern and action intersections, normalized."""
        return CapabilitySet(
            capabilities=tuple(
                Capability(resource=both, actions=frozenset({action}))
                for pattern, action in self._atoms()
                for other_pattern, other_action in other._atoms()
                if other_action == action and (both := pattern.intersect(other_pattern)) is not None
            )
        )

    def __str__(self) -> str:
        return "; ".join(str(c) for c in self.capabilities) or "(nothing)"

    @classmethod
    def from_config(cls, value: object, where: str) -> CapabilitySet:
        """Capabilities written as in configuration files (``resource`` / ``actions``);
        errors are ConfigError naming ``where`` and the index."""

        def fail(at: str, problem: str, fix: str) -> ConfigError:
            return ConfigError(f"{at}: {problem}", hint=fix)

        return cls(capabilities=_parse_capabilities(value, where, "resource", "actions", fail))


def _why_not_covered(pattern: ResourcePattern, action: str, parent: list[_Atom]) -> str:
    """Why the parent does not cover (pattern, action): the reason names what it does grant."""
    child = f"child {pattern} {action}"
    narrower = [q for q, a in parent if a == action and pattern.covers(q)]
    if narrower:
        shown = " and ".join(f"{q} {action}" for q in narrower)
        return f"{child} is wider than parent {shown}"
    other_actions = sorted({a for q, a in parent if a != action and q.covers(pattern)})
    if other_actions:
        return f"{child} is not granted by the parent, which allows only {', '.join(other_actions)} there"
    elsewhere = [q for q, a in parent if a == action]
    if elsewhere:
        return f"{child} is outside the parent's authority, which grants {action} only on {_patterns_text(elsewhere)}"
    return f"{child} is outside the parent's authority, which grants no {action} at all"


_Fail = Callable[[str, str, str], Exception]  # (key path, problem, fix) -> error to raise


def _claim_error(where: str, problem: str, fix: str) -> Exception:
    return AuthorityFormatError(f"{where}: {problem}", hint=fix)


def _type_name(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"{type(value).__name__} {value!r}"[:80]


def _parse_capabilities(
    value: object,
    where: str,
    resource_key: str,
    actions_key: str,
    fail: _Fail,
) -> tuple[Capability, ...]:
    """Capabilities from a list of ``{resource_key: str, actions_key: [str, ...]}``.

    Shared by grant claims (``res``/``act``) and host configuration
    (``resource``/``actions``) so both follow one rule set and differ only in how
    they report (AuthorityFormatError vs ConfigError naming the file).
    """
    example = f'{{"{resource_key}": "pubsub:alerts/*", "{actions_key}": ["publish"]}}'
    if not isinstance(value, list | tuple):
        raise fail(
            where, f"expected a list of capabilities, got {_type_name(value)}", f"e.g. [{example}]"
        )
    found: list[Capability] = []
    seen: dict[ResourcePattern, int] = {}
    for index, item in enumerate(value):
        at = f"{where}[{index}]"
        if not isinstance(item, dict):
            raise fail(at, f"expected a mapping, got {_type_name(item)}", f"e.g. {example}")
        unknown = sorted(str(key) for key in item if key not in (resource_key, actions_key))
        if unknown:
            raise fail(
                f"{at}.{unknown[0]}",
                "unknown key",
                f"a capability has exactly '{resource_key}' and '{actions_key}'",
            )
        for key in (resource_key, actions_key):
            if key not in item:
                raise fail(f"{at}.{key}", "missing", f"e.g. {example}")
        try:
            pattern = ResourcePattern.parse(item[resource_key])
        except AuthorityFormatError as exc:
            raise fail(f"{at}.{resource_key}", exc.reason, exc.hint or _RESOURCE_EXAMPLE) from exc
        if pattern in seen:
            raise fail(
                f"{at}.{resource_key}",
                f"{pattern} is listed twice (also at {where}[{seen[pattern]}])",
                "list each resource once, with all its actions",
            )
        seen[pattern] = index
        actions = item[actions_key]
        if not isinstance(actions, list | tuple) or not actions:
            raise fail(
                f"{at}.{actions_key}",
                f"expected a non-empty list of actions, got {_type_name(actions)}",
                f"{pattern.kind} actions are: {_actions_text(pattern.kind)}",
            )
        checked: list[str] = []
        for position, action in enumerate(actions):
            try:
                _check_action(pattern.kind, action)
            except AuthorityFormatError as exc:
                raise fail(f"{at}.{actions_key}[{position}]", exc.reason, exc.hint or "") from exc
            if action in checked:
                raise fail(
                    f"{at}.{actions_key}[{position}]",
                    f"{action!r} is listed twice",
                    "list each action once",
                )
            checked.append(action)
        found.append(Capability(resource=pattern, actions=frozenset(checked)))
    return tuple(found)


# --- hosts and constraints ----------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class HostPattern:
    """One host, or every host below a path, of exactly one trust domain.

    ``spiffe://org-b.example/*`` is every host of org-b.example;
    ``spiffe://org-b.example/cluster/*`` every host below ``/cluster``. The trust
    domain is never a wildcard: a pattern must not reach into domains by name shape.
    """

    trust_domain: str
    segments: tuple[str, ...]
    wildcard: bool = False

    def __post_init__(self) -> None:
        problem = trust_domain_problem(self.trust_domain) or _path_problem(
            self.segments, self.wildcard
        )
        if problem:
            raise AuthorityFormatError(
                f"{_shown(str(self))} is not a valid host pattern: {problem}",
                hint=f"write it like {_HOST_EXAMPLE}",
            )

    @classmethod
    def parse(cls, text: str) -> HostPattern:
        """Parse a host pattern, raising AuthorityFormatError naming it and a valid one."""

        def refuse(problem: str) -> AuthorityFormatError:
            return AuthorityFormatError(
                f"{_shown(text)} is not a valid host pattern: {problem}",
                hint=f"write it like {_HOST_EXAMPLE}",
            )

        if not isinstance(text, str):
            raise AuthorityFormatError(
                f"a host pattern must be a string, got {type(text).__name__}",
                hint=f"write it like {_HOST_EXAMPLE}",
            )
        if len(text) > _MAX_TEXT:
            raise refuse(f"longer than {_MAX_TEXT} characters")
        prefix = "spiffe://"
        if not text.startswith(prefix):
            raise refuse(f"it does not start with {prefix!r}")
        trust_domain, slash, path = text[len(prefix) :].partition("/")
        if _WILDCARD in trust_domain:
            raise refuse(
                "the trust domain cannot contain '*'; a host pattern names one trust domain"
            )
        problem = trust_domain_problem(trust_domain)
        if problem:
            raise refuse(problem)
        if not slash or not path:
            raise refuse(
                f"the path is missing; spiffe://{trust_domain}/* means every host of {trust_domain}"
            )
        split = _split_path(path, allow_wildcard=True)
        if isinstance(split, str):
            raise refuse(split)
        return cls(trust_domain=trust_domain, segments=split[0], wildcard=split[1])

    @property
    def _path(self) -> _Path:
        return (self.segments, self.wildcard)

    @property
    def _sort_key(self) -> tuple[str, tuple[str, ...], bool]:
        return (self.trust_domain, self.segments, self.wildcard)

    def matches(self, host: HostId | str) -> bool:
        """Whether the host ``host`` is in this pattern's set (str is parsed as a SPIFFE id)."""
        found = host if isinstance(host, HostId) else HostId.parse(host)
        segments = tuple(found.path[1:].split("/"))
        return self.trust_domain == found.trust_domain and _path_covers(
            self._path, (segments, False)
        )

    def covers(self, other: HostPattern) -> bool:
        """Whether every host ``other`` matches, this matches too."""
        return self.trust_domain == other.trust_domain and _path_covers(self._path, other._path)

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}/{_path_text(self.segments, self.wildcard)}"


_CONSTRAINT_KEYS: Final = ("hosts", "regions", "max_hops", "max_depth")


def _region_problem(region: object) -> str | None:
    if not isinstance(region, str):
        return f"a region is a string, got {_type_name(region)}"
    if not region or len(region) > _MAX_REGION:
        return f"a region name is 1-{_MAX_REGION} characters"
    if any(char not in _SEGMENT_CHARS for char in region):
        return f"region {region!r} may only contain [A-Za-z0-9._-]"
    return None


def _count_problem(value: object) -> str | None:
    # bool is an int in Python; True must not silently mean max_hops 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return f"expected a whole number ≥ 0, got {_type_name(value)}"
    return None


def _listing(items: Iterable[object]) -> str:
    return ", ".join(str(item) for item in items) or "none"


@dataclass(frozen=True, slots=True, kw_only=True)
class Constraints:
    """Where and how far an object may go (the ``cons`` claim); None means not constrained.

    ``hosts``: the object may live only on hosts matching one of these patterns;
    ``regions``: only on hosts in one of these regions; ``max_hops``: at most this
    many handoffs in its life (its epoch); ``max_depth``: at most this many
    delegations in its credential chain (checked by ``gateway.credentials``). An
    empty ``hosts`` or ``regions`` is a real constraint that admits nowhere.
    """

    hosts: tuple[HostPattern, ...] | None = None
    regions: frozenset[str] | None = None
    max_hops: int | None = None
    max_depth: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_hops", "max_depth"):
            value = getattr(self, name)
            problem = None if value is None else _count_problem(value)
            if problem:
                raise AuthorityFormatError(f"constraint {name}: {problem}", hint="e.g. 3")
        if self.regions is not None:
            if not isinstance(self.regions, frozenset):
                raise TypeError("Constraints.regions must be a frozenset or None")
            for region in sorted(self.regions):
                problem = _region_problem(region)
                if problem:
                    raise AuthorityFormatError(
                        f"constraint regions: {problem}", hint="e.g. eu-west-1"
                    )
        if self.hosts is not None:
            # Canonical: only maximal patterns, sorted; admits exactly the same hosts.
            maximal = {
                host
                for host in self.hosts
                if not any(other != host and other.covers(host) for other in self.hosts)
            }
            object.__setattr__(self, "hosts", tuple(sorted(maximal, key=lambda h: h._sort_key)))

    @classmethod
    def from_claim(cls, claim: object) -> Constraints:
        """Parse a ``cons`` claim strictly: only known keys, well-formed values, no repeats."""
        if not isinstance(claim, dict):
            raise AuthorityFormatError(
                f"cons: expected a mapping, got {_type_name(claim)}",
                hint='e.g. {"hosts": ["spiffe://org-b.example/*"], "max_hops": 3}',
            )
        unknown = sorted(str(key) for key in claim if key not in _CONSTRAINT_KEYS)
        if unknown:
            raise AuthorityFormatError(
                f"cons.{unknown[0]}: unknown constraint",
                hint=f"constraints are: {', '.join(_CONSTRAINT_KEYS)}",
            )
        hosts: tuple[HostPattern, ...] | None = None
        if "hosts" in claim:
            hosts = tuple(_parse_unique(claim["hosts"], "cons.hosts", HostPattern.parse))
        regions: frozenset[str] | None = None
        if "regions" in claim:

            def region(value: object) -> str:
                problem = _region_problem(value)
                if problem or not isinstance(value, str):
                    raise AuthorityFormatError(problem or "not a region", hint="e.g. eu-west-1")
                return value

            regions = frozenset(_parse_unique(claim["regions"], "cons.regions", region))
        counts: dict[str, int | None] = {}
        for name in ("max_hops", "max_depth"):
            value = claim.get(name)
            if name in claim:
                problem = _count_problem(value)
                if problem:
                    raise AuthorityFormatError(f"cons.{name}: {problem}", hint="e.g. 3")
            counts[name] = value
        return cls(
            hosts=hosts, regions=regions, max_hops=counts["max_hops"], max_depth=counts["max_depth"]
        )

    def to_claim(self) -> dict[str, list[str] | int]:
        """The canonical ``cons`` claim: only the constraints present, lists sorted."""
        claim: dict[str, list[str] | int] = {}
        if self.hosts is not None:
            claim["hosts"] = [str(host) for host in self.hosts]
        if self.regions is not None:
            claim["regions"] = sorted(self.regions)
        if self.max_hops is not None:
            claim["max_hops"] = self.max_hops
        if self.max_depth is not None:
            claim["max_depth"] = self.max_depth
        return claim

    def require_narrower_than(self, parent: Constraints) -> None:
        """Raise ConstraintWideningError unless every constraint is at least as tight.

        A constraint the parent has and this one omits is a widening (omitting means
        "unconstrained"); constraints the parent lacks may be added freely.
        """
        if parent.hosts is not None:
            if self.hosts is None:
                raise _dropped("hosts", _listing(parent.hosts))
            for host in self.hosts:
                if not any(theirs.covers(host) for theirs in parent.hosts):
                    inside = [theirs for theirs in parent.hosts if host.covers(theirs)]
                    why = (
                        f"is wider than the parent's {_listing(inside)}"
                        if inside
                        else f"is outside the parent's hosts ({_listing(parent.hosts)})"
                    )
                    raise ConstraintWideningError(
                        f"child host pattern {host} {why}", hint=_WIDENING_HINT
                    )
        if parent.regions is not None:
            if self.regions is None:
                raise _dropped("regions", _listing(sorted(parent.regions)))
            extra = sorted(self.regions - parent.regions)
            if extra:
                raise ConstraintWideningError(
                    f"child allows region {extra[0]}, which the parent's regions "
                    f"({_listing(sorted(parent.regions))}) do not include",
                    hint=_WIDENING_HINT,
                )
        for name in ("max_hops", "max_depth"):
            theirs: int | None = getattr(parent, name)
            mine: int | None = getattr(self, name)
            if theirs is None:
                continue
            if mine is None:
                raise _dropped(name, str(theirs))
            if mine > theirs:
                raise ConstraintWideningError(
                    f"child {name} {mine} is higher than the parent's {theirs}", hint=_WIDENING_HINT
                )

    def admit(self, host: HostId | str, region: str, hops: int) -> None:
        """Raise AdmissionDeniedError unless the object may live on ``host`` in ``region``.

        ``hops`` is the number of handoffs the object has made, counting the one that
        brings it here (its epoch). ``max_depth`` is a property of the chain, not of
        the host, and is not checked here.
        """
        if isinstance(hops, bool) or not isinstance(hops, int) or hops < 0:
            raise ValueError(f"hops must be a whole number ≥ 0, got {hops!r}")
        found = host if isinstance(host, HostId) else HostId.parse(host)
        if self.hosts is not None and not any(pattern.matches(found) for pattern in self.hosts):
            if not self.hosts:
                raise AdmissionDeniedError(
                    f"the object's hosts constraint is empty: no host, {found} included, may hold it",
                    hint="its issuer must grant it a hosts constraint that includes this host",
                )
            raise AdmissionDeniedError(
                f"the object's hosts constraint does not include {found}",
                hint=f"move it to a host matching {_listing(self.hosts)}",
            )
        if self.regions is not None and region not in self.regions:
            raise AdmissionDeniedError(
                f"the object's regions constraint does not include {region!r}",
                hint=f"move it to a host in {_listing(sorted(self.regions)) if self.regions else 'no region: the constraint is empty'}",
            )
        if self.max_hops is not None and hops > self.max_hops:
            raise AdmissionDeniedError(
                f"the object has made {hops} handoffs (this one included); its max_hops constraint allows {self.max_hops}",
                hint="it cannot move further; keep it where it is, or ask its issuer for a higher max_hops",
            )


def _dropped(name: str, parent_value: str) -> ConstraintWideningError:
    return ConstraintWideningError(
        f"child drops the parent's {name} constraint (parent: {parent_value}); "
        "an omitted constraint means unconstrained, which is wider",
        hint=f"copy the parent's {name} constraint into the child, or narrow it",
    )


def _parse_unique(value: object, where: str, parse: Callable[[Any], _T]) -> list[_T]:
    """Parse every item of a list with ``parse``, refusing repeats; errors name the index."""
    if not isinstance(value, list | tuple):
        raise AuthorityFormatError(
            f"{where}: expected a list, got {_type_name(value)}", hint="e.g. [...]"
        )
    found: list[_T] = []
    for index, item in enumerate(value):
        try:
            parsed = parse(item)
        except AuthorityFormatError as exc:
            raise AuthorityFormatError(f"{where}[{index}]: {exc.reason}", hint=exc.hint) from exc
        if parsed in found:
            raise AuthorityFormatError(
                f"{where}[{index}]: {item!r} is listed twice", hint="list each once"
            )
        found.append(parsed)
    return found


# --- host policy --------------------------------------------------------------------


def _peer_problem(peer: object) -> str | None:
    if not isinstance(peer, str):
        return f"a peer is a trust domain name, got {_type_name(peer)}"
    if "://" in peer:
        return f"{peer!r} is a URI; a ceiling's peer is a trust domain name"
    return trust_domain_problem(peer)


@dataclass(frozen=True, slots=True, kw_only=True)
class Ceiling:
    """The most this host lets an object hold, for one tenant and/or one peer trust domain.

    ``tenant=None`` applies to every tenant, ``peer=None`` to objects from every peer.
    Every ceiling that applies is an upper bound, so all of them are intersected.
    """

    tenant: str | None = None
    peer: str | None = None
    allow: CapabilitySet

    def __post_init__(self) -> None:
        if self.tenant is not None:
            validate_tenant(self.tenant)
        if self.peer is not None:
            problem = _peer_problem(self.peer)
            if problem:
                raise ConfigError(
                    f"ceiling peer: {problem}", hint="write a trust domain, e.g. org-b.example"
                )

    def applies_to(self, *, tenant: str, peer: str) -> bool:
        return self.tenant in (None, tenant) and self.peer in (None, peer)

    def describe(self) -> str:
        """``the ceiling for peer org-b.example`` and the like, for explanations."""
        parts = [
            f"tenant {self.tenant}" if self.tenant else "",
            f"peer {self.peer}" if self.peer else "",
        ]
        named = " and ".join(part for part in parts if part)
        return f"the ceiling for {named}" if named else "the ceiling for every tenant and peer"


@dataclass(frozen=True, slots=True, kw_only=True)
class HostPolicy:
    """A host's local configuration: what it offers, its ceilings, and its denials.

    There is deliberately no way to *grant* anything here: every part only bounds or
    subtracts from what an object's credentials already carry.
    """

    offers: CapabilitySet
    ceilings: tuple[Ceiling, ...] = ()
    denials: CapabilitySet = field(default_factory=CapabilitySet)

    @classmethod
    def empty(cls) -> HostPolicy:
        """The secure default: nothing is offered, so nothing is effective."""
        return cls(offers=CapabilitySet())

    def ceilings_for(self, *, tenant: str, peer: str) -> tuple[Ceiling, ...]:
        return tuple(c for c in self.ceilings if c.applies_to(tenant=tenant, peer=peer))

    @classmethod
    def from_config(cls, mapping: object, where: str) -> HostPolicy:
        """Parse the ``policy`` section of a host configuration (None: no section).

        ``where`` names the file; errors are ConfigError naming ``where``, the key path
        (``policy.ceilings[0].allow[1].resource``) and a fix::

            policy:
              offers:   [{resource: "pubsub:*", actions: [publish]}]
              ceilings: [{tenant: default, peer: org-b.example, allow: [...]}]
              deny:     [{resource: "state:secrets/*", actions: [read]}]
        """

        def fail(at: str, problem: str, fix: str) -> ConfigError:
            return ConfigError(f"{where}: {at}: {problem}", hint=fix)

        if mapping is None:
            return cls.empty()
        if not isinstance(mapping, dict):
            raise fail(
                "policy",
                f"expected a mapping, got {_type_name(mapping)}",
                "see HostPolicy.from_config for an example",
            )
        allowed = ("offers", "ceilings", "deny")
        for key in mapping:
            if key not in allowed:
                raise fail(f"policy.{key}", "unknown key", f"allowed keys: {', '.join(allowed)}")

        def capabilities(value: object, at: str) -> CapabilitySet:
            return CapabilitySet(
                capabilities=_parse_capabilities(value, at, "resource", "actions", fail)
            )

        offers = capabilities(mapping.get("offers", []), "policy.offers")
        denials = capabilities(mapping.get("deny", []), "policy.deny")
        raw_ceilings = mapping.get("ceilings", [])
        if not isinstance(raw_ceilings, list):
            raise fail(
                "policy.ceilings",
                f"expected a list, got {_type_name(raw_ceilings)}",
                "e.g. [{peer: org-b.example, allow: [...]}]",
            )
        ceilings: list[Ceiling] = []
        for index, item in enumerate(raw_ceilings):
            at = f"policy.ceilings[{index}]"
            if not isinstance(item, dict):
                raise fail(
                    at,
                    f"expected a mapping, got {_type_name(item)}",
                    "e.g. {peer: org-b.example, allow: [...]}",
                )
            for key in item:
                if key not in ("tenant", "peer", "allow"):
                    raise fail(
                        f"{at}.{key}", "unknown key", "a ceiling has 'tenant', 'peer' and 'allow'"
                    )
            if "allow" not in item:
                raise fail(
                    f"{at}.allow",
                    "missing",
                    'list what objects may hold here, e.g. [{resource: "pubsub:*", actions: [publish]}]',
                )
            tenant = item.get("tenant")
            if "tenant" in item:
                # An explicit null is refused: "any tenant" is said by leaving the key out.
                if not isinstance(tenant, str):
                    raise fail(
                        f"{at}.tenant",
                        f"expected a tenant name, got {_type_name(tenant)}",
                        "leave 'tenant' out to match every tenant",
                    )
                try:
                    validate_tenant(tenant)
                except ConfigError as exc:
                    raise fail(f"{at}.tenant", exc.reason, exc.hint or "") from exc
            peer = item.get("peer")
            if "peer" in item:
                problem = _peer_problem(peer)
                if problem:
                    raise fail(
                        f"{at}.peer",
                        problem,
                        "write a trust domain, e.g. org-b.example; leave 'peer' out to match every peer",
                    )
            ceilings.append(
                Ceiling(tenant=tenant, peer=peer, allow=capabilities(item["allow"], f"{at}.allow"))
            )
        return cls(offers=offers, ceilings=tuple(ceilings), denials=denials)


# --- effective authority and admission ----------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class EffectiveAuthority:
    """What an object may do on this host: ``allow`` minus anything ``deny`` matches.

    A denial cannot in general be cut out of a prefix set (``pubsub:alerts/*`` minus
    ``pubsub:alerts/secret`` is no pattern), so it is kept beside ``allow``. The
    constructor normalizes: allowed entries a denial covers entirely are dropped, and
    only denials that fall strictly inside what is allowed (the holes) are kept.
    """

    allow: CapabilitySet
    deny: CapabilitySet = field(default_factory=CapabilitySet)

    def __post_init__(self) -> None:
        denied = list(self.deny._atoms())
        kept = CapabilitySet(
            capabilities=tuple(
                Capability(resource=pattern, actions=frozenset({action}))
                for pattern, action in self.allow._atoms()
                if not any(a == action and d.covers(pattern) for d, a in denied)
            )
        )
        object.__setattr__(self, "allow", kept)
        # By laminarity each remaining denial is inside an allowed entry or disjoint
        # from all of them; intersecting keeps exactly the holes.
        object.__setattr__(self, "deny", self.deny.intersect(kept))

    def permits(self, resource: Resource | str, action: str) -> bool:
        found = _resource(resource)
        return self.allow.permits(found, action) and not self.deny.permits(found, action)

    def require(self, resource: Resource | str, action: str) -> None:
        """Raise AdmissionDeniedError unless ``action`` on ``resource`` is permitted."""
        found = _resource(resource)
        if self.allow.permits(found, action) and not self.deny.permits(found, action):
            return
        why = (
            "this host's configuration denies it"
            if self.allow.permits(found, action)
            else "it is not in the object's effective authority on this host"
        )
        raise AdmissionDeniedError(
            f"{action} on {found} is refused: {why}", hint="see the admission dry run for why"
        )

    def require_within(self, other: EffectiveAuthority) -> None:
        """Raise CapabilityWideningError unless this permits nothing ``other`` does not.

        Structural and sufficient: ``allow`` ⊆ ``other.allow``, and every hole of
        ``other`` that falls in this ``allow`` is a hole here too.
        """
        self.allow.require_subset_of(other.allow)
        other.deny.intersect(self.allow).require_subset_of(self.deny)


class Outcome(enum.Enum):
    GRANTED = "granted"  #: all of the chain's capability holds here
    NARROWED = "narrowed"  #: part of it holds
    DENIED = "denied"  #: none of it holds


@dataclass(frozen=True, slots=True, kw_only=True)
class Explanation:
    """What became of one (pattern, action) of the object's chain on this host, and why."""

    capability: Capability  #: one pattern and one action from the chain
    outcome: Outcome
    reason: str  #: "granted", "denied — …", "narrowed to … by …"
    granted: tuple[ResourcePattern, ...] = ()  #: what of it holds here
    holes: tuple[ResourcePattern, ...] = ()  #: denied inside what is granted

    def __str__(self) -> str:
        return f"{self.capability}: {self.reason}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Admission:
    """The answer to "what may this object do here?", with a reason per capability."""

    tenant: str
    peer: str
    authority: EffectiveAuthority
    explanations: tuple[Explanation, ...]

    def permits(self, resource: Resource | str, action: str) -> bool:
        return self.authority.permits(resource, action)

    def withheld(self, reason: str) -> Admission:
        """This admission with every capability denied for ``reason``."""
        return replace(
            self,
            authority=EffectiveAuthority(allow=CapabilitySet()),
            explanations=tuple(
                replace(e, outcome=Outcome.DENIED, reason=reason, granted=(), holes=())
                for e in self.explanations
            ),
        )

    def require(self, resource: Resource | str, action: str) -> None:
        """Raise AdmissionDeniedError, saying why, unless ``action`` on ``resource`` is permitted."""
        found = _resource(resource)
        if self.authority.permits(found, action):
            return
        for explanation in self.explanations:
            capability = explanation.capability
            if action in capability.actions and capability.resource.matches(found):
                raise AdmissionDeniedError(
                    f"{action} on {found} is refused: the credentials grant {capability}, "
                    f"but on this host it is {explanation.reason.replace(' — ', ': ', 1)}",
                    hint="this host's policy (offers, ceilings, deny) decides; an operator can change it there",
                )
        raise AdmissionDeniedError(
            f"{action} on {found} is refused: the object's credentials do not grant it",
            hint="only the object's issuer can grant more, in a new grant",
        )

    def render(self) -> str:
        """A few lines for people: one per capability of the chain, and what became of it."""
        lines = [f"effective authority for tenant {self.tenant}, objects from {self.peer}:"]
        if not self.explanations:
            lines.append("  (the object's credentials grant nothing)")
        width = max((len(str(e.capability)) for e in self.explanations), default=0)
        for explanation in self.explanations:
            lines.append(f"  {explanation.capability!s:<{width}}  {explanation.reason}")
        return "\n".join(lines)


def _restrict(
    patterns: frozenset[ResourcePattern], bound: CapabilitySet, action: str
) -> frozenset[ResourcePattern]:
    """The parts of ``patterns`` that ``bound`` allows for ``action`` (maximal ones only)."""
    bounds = [q for q, a in bound._atoms() if a == action]
    pieces = [both for p in patterns for q in bounds if (both := p.intersect(q)) is not None]
    return frozenset(p for p, _ in _maximal((p, action) for p in pieces))


def _explain(
    pattern: ResourcePattern, action: str, policy: HostPolicy, ceilings: tuple[Ceiling, ...]
) -> Explanation:
    """Follow one (pattern, action) of the chain through offers, ceilings and denials."""
    capability = Capability(resource=pattern, actions=frozenset({action}))

    def denied(reason: str) -> Explanation:
        return Explanation(
            capability=capability, outcome=Outcome.DENIED, reason=f"denied — {reason}"
        )

    steps: list[str] = []
    current = _restrict(frozenset({pattern}), policy.offers, action)
    if not current:
        offered = [q for q, a in policy.offers._atoms() if a == action and q.kind == pattern.kind]
        also = f" (it offers {action} only on {_patterns_text(offered)})" if offered else ""
        return denied(f"this host does not offer {action} on {pattern}{also}")
    if current != {pattern}:
        steps.append(f"narrowed to {_patterns_text(current)} by what this host offers")
    for ceiling in ceilings:
        bounded = _restrict(current, ceiling.allow, action)
        if not bounded:
            return denied(f"{ceiling.describe()} allows no {action} on {_patterns_text(current)}")
        if bounded != current:
            steps.append(f"narrowed to {_patterns_text(bounded)} by {ceiling.describe()}")
        current = bounded
    denials = [d for d, a in policy.denials._atoms() if a == action]
    whole = {p for p in current if any(d.covers(p) for d in denials)}
    remaining = current - whole
    if not remaining:
        return Explanation(
            capability=capability,
            outcome=Outcome.DENIED,
            reason=f"denied by a denial in this host's configuration ({_patterns_text(d for d in denials if any(d.covers(p) for p in whole))} {action})",
        )
    holes = {d for d in denials if any(p.covers(d) and p != d for p in remaining)}
    if whole or holes:
        # Whole pieces a denial removed, and holes a denial cuts inside what remains.
        steps.append(f"except {_patterns_text(whole | holes)}, denied by this host's configuration")
    ordered = tuple(sorted(remaining, key=lambda p: p._sort_key))
    if not steps:
        return Explanation(
            capability=capability, outcome=Outcome.GRANTED, reason="granted", granted=ordered
        )
    reason = "; ".join(steps)
    if not reason.startswith("narrowed"):
        reason = f"granted {reason}"
    return Explanation(
        capability=capability,
        outcome=Outcome.NARROWED,
        reason=reason,
        granted=ordered,
        holes=tuple(sorted(holes, key=lambda p: p._sort_key)),
    )


def effective_authority(
    chain: CapabilitySet, policy: HostPolicy, *, tenant: str, peer: str
) -> Admission:
    """What an object whose chain grants ``chain`` may do here, for ``tenant``, from ``peer``.

    effective = chain ∩ offers ∩ (every ceiling that applies to tenant and peer) −
    denials, computed per (pattern, action) of the chain so each gets a reason.
    ``peer`` is the trust domain the object came from (``org-b.example``); it and
    ``tenant`` are validated, because a misspelled one would silently skip the
    ceilings written for it.
    """
    problem = _peer_problem(peer)
    if problem:
        raise ValueError(f"peer must be a trust domain like org-b.example: {problem}")
    try:
        validate_tenant(tenant)
    except ConfigError as exc:
        raise ValueError(exc.reason) from exc
    ceilings = policy.ceilings_for(tenant=tenant, peer=peer)
    explanations = tuple(
        _explain(pattern, action, policy, ceilings) for pattern, action in chain._atoms()
    )
    authority = EffectiveAuthority(
        allow=CapabilitySet(
            capabilities=tuple(
                Capability(resource=granted, actions=e.capability.actions)
                for e in explanations
                for granted in e.granted
            )
        ),
        deny=CapabilitySet(
            capabilities=tuple(
                Capability(resource=hole, actions=e.capability.actions)
                for e in explanations
                for hole in e.holes
            )
        ),
    )
    return Admission(tenant=tenant, peer=peer, authority=authority, explanations=explanations)
