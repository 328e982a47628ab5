"""Tests for gateway.authority: patterns, capability sets, constraints, host policy.

Table-driven cases carry a ``reason``; the "never wider" promises of DESIGN.md §5 are
hypothesis properties over a small segment alphabet, so that nested and colliding
patterns (``a`` vs ``ab``, ``a/*`` vs ``a/b``) come up in most examples. Run with
``--hypothesis-show-statistics`` to see how often each case (nested, disjoint,
narrowed, …) was exercised.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.authority import (
    ACTIONS,
    KINDS,
    Capability,
    CapabilitySet,
    Ceiling,
    Constraints,
    EffectiveAuthority,
    HostPattern,
    HostPolicy,
    Outcome,
    Resource,
    ResourcePattern,
    effective_authority,
)
from gateway.errors import (
    AdmissionDeniedError,
    AuthorityError,
    AuthorityFormatError,
    CapabilityWideningError,
    ConfigError,
    ConstraintWideningError,
    WideningError,
)


def caps(*entries: tuple[str, Sequence[str]]) -> CapabilitySet:
    return CapabilitySet(
        capabilities=tuple(Capability.of(resource, *actions) for resource, actions in entries)
    )


P = ResourcePattern.parse


# --- resource patterns: parsing -----------------------------------------------------


@dataclass(frozen=True)
class GoodPattern:
    text: str
    kind: str
    segments: tuple[str, ...]
    wildcard: bool
    reason: str


GOOD_PATTERNS = [
    GoodPattern("pubsub:alerts/overdue", "pubsub", ("alerts", "overdue"), False, "exact"),
    GoodPattern("state:self", "state", ("self",), False, "one segment"),
    GoodPattern("invoke:payments/charge", "invoke", ("payments", "charge"), False, "invoke"),
    GoodPattern("pubsub:alerts/*", "pubsub", ("alerts",), True, "prefix wildcard"),
    GoodPattern("pubsub:*", "pubsub", (), True, "every pubsub resource"),
    GoodPattern("state:a.b/c_d/E-9", "state", ("a.b", "c_d", "E-9"), False, "all allowed chars"),
    GoodPattern(
        "state:.hidden", "state", (".hidden",), False, "a leading dot is not a dot segment"
    ),
]


@pytest.mark.parametrize("case", GOOD_PATTERNS, ids=lambda c: c.reason)
def test_pattern_parse_accepts(case: GoodPattern) -> None:
    pattern = P(case.text)
    assert (pattern.kind, pattern.segments, pattern.wildcard) == (
        case.kind,
        case.segments,
        case.wildcard,
    )
    assert str(pattern) == case.text  # one spelling per pattern


@dataclass(frozen=True)
class BadText:
    text: str
    mentions: str  # a word the reason must contain, so it names what is wrong
    reason: str


BAD_PATTERNS = [
    BadText("pubsub:al*", "whole last segment", "'*' inside a segment"),
    BadText("*:x", "kind cannot be a wildcard", "wildcard kind"),
    BadText("pubsub:a/*/b", "not a middle one", "'*' in the middle"),
    BadText("pubsub:*/*", "not a middle one", "two wildcards"),
    BadText("**", "no kind", "bare double star"),
    BadText("pubsub:**", "contains '*'", "double star segment"),
    BadText("pubsub:a/**", "contains '*'", "trailing double star"),
    BadText("pubsub:", "path is missing", "empty path"),
    BadText("pubsub", "no kind", "no colon"),
    BadText("pubsub:a//b", "empty path segment", "empty segment"),
    BadText("pubsub:/a", "empty path segment", "leading slash"),
    BadText("pubsub:a/", "ends with '/'", "trailing slash"),
    BadText("pubsub:a/./b", "dot segments", "dot segment"),
    BadText("pubsub:a/..", "dot segments", "dot-dot segment"),
    BadText("queue:x", "unknown kind", "unknown kind"),
    BadText("PubSub:x", "unknown kind", "kinds are case-sensitive"),
    BadText(":x", "unknown kind", "empty kind"),
    BadText("pubsub:a b", "contains ' '", "space"),
    BadText("pubsub:a?b", "contains '?'", "query character"),
    BadText("pubsub:" + "a" * 3000, "longer than", "too long"),
]


@pytest.mark.parametrize("case", BAD_PATTERNS, ids=lambda c: c.reason)
def test_pattern_parse_refuses(case: BadText) -> None:
    with pytest.raises(AuthorityFormatError) as caught:
        P(case.text)
    assert case.mentions in caught.value.reason
    assert case.text[:50] in caught.value.reason  # names the pattern
    assert caught.value.hint and "pubsub:alerts/*" in caught.value.hint  # shows a valid one


@pytest.mark.parametrize("text", [123, None, ["pubsub:x"]])
def test_pattern_parse_refuses_non_strings(text: Any) -> None:
    with pytest.raises(AuthorityFormatError, match="must be a string"):
        P(text)


@pytest.mark.parametrize(
    ("text", "mentions"),
    [("pubsub:a/*", "only patterns have wildcards"), ("pubsub:*", "only patterns")],
)
def test_resource_is_never_a_pattern(text: str, mentions: str) -> None:
    with pytest.raises(AuthorityFormatError, match=mentions):
        Resource.parse(text)


def test_constructor_applies_the_same_rules_as_parse() -> None:
    with pytest.raises(AuthorityFormatError):
        ResourcePattern(kind="pubsub", segments=())  # exact with no path
    with pytest.raises(AuthorityFormatError):
        ResourcePattern(kind="pubsub", segments=("a", "*"))  # '*' as a segment
    with pytest.raises(AuthorityFormatError):
        Resource(kind="nope", segments=("a",))


# --- resource patterns: covers, matches, intersect ----------------------------------


@dataclass(frozen=True)
class Cover:
    outer: str
    inner: str
    covers: bool
    reason: str


COVERS = [
    Cover("pubsub:alerts/overdue", "pubsub:alerts/overdue", True, "exact covers itself"),
    Cover("pubsub:alerts/overdue", "pubsub:alerts/other", False, "different exact"),
    Cover("pubsub:alerts/*", "pubsub:alerts/overdue", True, "exact under prefix"),
    Cover("pubsub:alerts/*", "pubsub:alerts/x/y", True, "deeper exact under prefix"),
    Cover("pubsub:alerts/*", "pubsub:alerts", False, "prefix excludes its own stem"),
    Cover("pubsub:alerts/*", "pubsub:alerts-x", False, "string prefix is not path prefix"),
    Cover("pubsub:alerts/*", "pubsub:alertsX/y", False, "string prefix, deeper"),
    Cover("pubsub:alerts/*", "pubsub:alerts/*", True, "prefix covers itself"),
    Cover("pubsub:alerts/*", "pubsub:alerts/x/*", True, "deeper prefix inside"),
    Cover("pubsub:alerts/x/*", "pubsub:alerts/*", False, "shallower prefix is wider"),
    Cover("pubsub:alerts/*", "pubsub:*", False, "the trap: pubsub:* is wider than alerts/*"),
    Cover("pubsub:*", "pubsub:alerts/*", True, "everything covers a prefix"),
    Cover("pubsub:*", "pubsub:x", True, "everything covers an exact"),
    Cover("pubsub:alerts/*", "pubsub:alertsX/*", False, "sibling prefixes are disjoint"),
    Cover("pubsub:alerts/overdue", "pubsub:alerts/*", False, "exact never covers a prefix"),
    Cover("pubsub:alerts", "pubsub:alerts/*", False, "the stem never covers its prefix"),
    Cover("pubsub:*", "state:x", False, "different kinds"),
    Cover("state:*", "pubsub:*", False, "different kinds, both wildcards"),
]


@pytest.mark.parametrize("case", COVERS, ids=lambda c: c.reason)
def test_covers(case: Cover) -> None:
    assert P(case.outer).covers(P(case.inner)) is case.covers


@pytest.mark.parametrize(
    ("pattern", "resource", "matches", "reason"),
    [
        ("pubsub:alerts/*", "pubsub:alerts/overdue", True, "one level down"),
        ("pubsub:alerts/*", "pubsub:alerts/x/y", True, "two levels down"),
        ("pubsub:alerts/*", "pubsub:alerts", False, "not the stem"),
        ("pubsub:alerts/*", "pubsub:alerts-x", False, "not a string prefix"),
        ("pubsub:*", "pubsub:anything/at/all", True, "any pubsub"),
        ("pubsub:*", "state:self", False, "other kind"),
        ("state:self", "state:self", True, "exact"),
        ("state:self", "state:self/x", False, "exact is not a prefix"),
    ],
)
def test_matches(pattern: str, resource: str, matches: bool, reason: str) -> None:
    assert P(pattern).matches(resource) is matches, reason


@pytest.mark.parametrize(
    ("left", "right", "expected", "reason"),
    [
        ("pubsub:*", "pubsub:alerts/*", "pubsub:alerts/*", "nested: the inner one"),
        ("pubsub:alerts/*", "pubsub:*", "pubsub:alerts/*", "nested, other order"),
        ("pubsub:alerts/*", "pubsub:alerts/x", "pubsub:alerts/x", "exact inside prefix"),
        ("pubsub:alerts/*", "pubsub:alertsX/*", None, "siblings are disjoint"),
        ("pubsub:alerts/*", "pubsub:alerts", None, "prefix and its stem are disjoint"),
        ("pubsub:a", "pubsub:b", None, "two exacts"),
        ("pubsub:*", "state:*", None, "different kinds"),
    ],
)
def test_intersect(left: str, right: str, expected: str | None, reason: str) -> None:
    found = P(left).intersect(P(right))
    assert (str(found) if found else None) == expected, reason


# --- capability sets ----------------------------------------------------------------


def test_claim_round_trip_is_canonical() -> None:
    claim = [
        {"res": "state:self", "act": ["write", "read"]},
        {"res": "pubsub:alerts/*", "act": ["publish"]},
        {"res": "pubsub:alerts/overdue", "act": ["publish", "subscribe"]},  # publish is redundant
    ]
    parsed = CapabilitySet.from_claim(claim)
    assert parsed.to_claim() == [
        {"res": "pubsub:alerts/*", "act": ["publish"]},
        {"res": "pubsub:alerts/overdue", "act": ["subscribe"]},
        {"res": "state:self", "act": ["read", "write"]},
    ]
    assert CapabilitySet.from_claim(parsed.to_claim()) == parsed
    assert parsed.permits("pubsub:alerts/overdue", "publish")


@pytest.mark.parametrize(
    ("claim", "mentions", "reason"),
    [
        ("pubsub:*", "expected a list", "not a list"),
        ([["pubsub:*"]], "cap[0]: expected a mapping", "entry not a mapping"),
        ([{"res": "pubsub:*"}], "cap[0].act: missing", "no actions key"),
        ([{"act": ["publish"]}], "cap[0].res: missing", "no resource key"),
        ([{"res": "pubsub:*", "act": ["publish"], "x": 1}], "cap[0].x: unknown key", "extra key"),
        ([{"res": "pubsub:al*", "act": ["publish"]}], "cap[0].res", "bad pattern"),
        ([{"res": "pubsub:*", "act": []}], "non-empty list", "empty actions"),
        ([{"res": "pubsub:*", "act": "publish"}], "non-empty list", "actions not a list"),
        ([{"res": "pubsub:*", "act": ["publish", "publish"]}], "listed twice", "duplicate action"),
        ([{"res": "pubsub:*", "act": ["write"]}], "cap[0].act[0]", "action of another kind"),
        ([{"res": "pubsub:*", "act": [1]}], "not an action", "action not a string"),
        (
            [{"res": "pubsub:a", "act": ["publish"]}, {"res": "pubsub:a", "act": ["subscribe"]}],
            "cap[1].res: pubsub:a is listed twice",
            "duplicate resource",
        ),
    ],
)
def test_from_claim_refuses(claim: Any, mentions: str, reason: str) -> None:
    with pytest.raises(AuthorityFormatError) as caught:
        CapabilitySet.from_claim(claim)
    assert mentions in caught.value.reason, reason


def test_capability_refuses_actions_outside_the_kind() -> None:
    with pytest.raises(AuthorityFormatError, match="not an action on state"):
        Capability.of("state:self", "publish")
    with pytest.raises(AuthorityFormatError, match="no actions"):
        Capability.of("state:self")


def test_permits_refuses_malformed_questions() -> None:
    granted = caps(("pubsub:*", ["publish"]))
    with pytest.raises(AuthorityFormatError):
        granted.permits("pubsub:a/*", "publish")  # a pattern is not a resource
    with pytest.raises(AuthorityFormatError, match="not an action"):
        granted.permits("pubsub:a", "write")


@dataclass(frozen=True)
class Subset:
    child: CapabilitySet
    parent: CapabilitySet
    mentions: str | None  # None: the child is within the parent
    reason: str


SUBSETS = [
    Subset(
        caps(("pubsub:alerts/x", ["publish"])),
        caps(("pubsub:alerts/*", ["publish"])),
        None,
        "exact under prefix",
    ),
    Subset(
        caps(("pubsub:alerts/x/*", ["publish"])),
        caps(("pubsub:alerts/*", ["publish"])),
        None,
        "deeper prefix",
    ),
    Subset(caps(), caps(("pubsub:*", ["publish"])), None, "nothing is within anything"),
    Subset(caps(), caps(), None, "empty within empty"),
    Subset(
        caps(("pubsub:*", ["publish"])),
        caps(("pubsub:alerts/*", ["publish"])),
        "child pubsub:* publish is wider than parent pubsub:alerts/* publish",
        "the trap from the issue",
    ),
    Subset(
        caps(("pubsub:alerts", ["publish"])),
        caps(("pubsub:alerts/*", ["publish"])),
        "outside the parent's authority, which grants publish only on pubsub:alerts/*",
        "the stem is not under its prefix",
    ),
    Subset(
        caps(("pubsub:alerts-x", ["publish"])),
        caps(("pubsub:alerts/*", ["publish"])),
        "child pubsub:alerts-x publish is outside",
        "string prefix is not path prefix",
    ),
    Subset(
        caps(("pubsub:alerts/x", ["subscribe"])),
        caps(("pubsub:alerts/*", ["publish"])),
        "which allows only publish there",
        "same resource, other action",
    ),
    Subset(
        caps(("state:self", ["read"])),
        caps(("pubsub:*", ["publish", "subscribe"])),
        "grants no read at all",
        "other kind entirely",
    ),
    Subset(
        caps(("pubsub:a/*", ["publish"])),
        caps(("pubsub:a/x", ["publish"]), ("pubsub:a/y/*", ["publish"])),
        "wider than parent pubsub:a/x publish and pubsub:a/y/* publish",
        "a union of narrower parents does not cover a prefix",
    ),
]


@pytest.mark.parametrize("case", SUBSETS, ids=lambda c: c.reason)
def test_require_subset_of(case: Subset) -> None:
    if case.mentions is None:
        case.child.require_subset_of(case.parent)
        return
    with pytest.raises(CapabilityWideningError) as caught:
        case.child.require_subset_of(case.parent)
    assert case.mentions in caught.value.reason
    assert isinstance(caught.value, WideningError)


def test_intersect_example() -> None:
    left = caps(("pubsub:*", ["publish"]), ("state:self", ["read", "write"]))
    right = caps(("pubsub:alerts/*", ["publish", "subscribe"]), ("state:*", ["read"]))
    assert left.intersect(right) == caps(("pubsub:alerts/*", ["publish"]), ("state:self", ["read"]))


# --- host patterns and constraints --------------------------------------------------

H = HostPattern.parse
WEST = "spiffe://org-b.example/cluster/west/gateway"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (WEST, "one host"),
        ("spiffe://org-b.example/*", "every host of a domain"),
        ("spiffe://org-b.example/cluster/*", "every host below a path"),
    ],
)
def test_host_pattern_parse_accepts(text: str, reason: str) -> None:
    assert str(H(text)) == text, reason


BAD_HOSTS = [
    BadText("spiffe://*.example/x", "trust domain cannot contain '*'", "wildcard in trust domain"),
    BadText("spiffe://*/x", "trust domain cannot contain '*'", "whole trust domain wildcard"),
    BadText("spiffe://org-b.example", "path is missing", "no path"),
    BadText("spiffe://org-b.example/", "path is missing", "empty path"),
    BadText("spiffe://org-b.example/a/*/b", "not a middle one", "wildcard in the middle"),
    BadText("spiffe://org-b.example/gw*", "whole last segment", "partial wildcard"),
    BadText("spiffe://Org-B.example/*", "lowercase", "upper-case trust domain"),
    BadText("https://org-b.example/*", "does not start", "wrong scheme"),
    BadText("spiffe://org-b.example:8443/*", "port", "port"),
]


@pytest.mark.parametrize("case", BAD_HOSTS, ids=lambda c: c.reason)
def test_host_pattern_parse_refuses(case: BadText) -> None:
    with pytest.raises(AuthorityFormatError) as caught:
        H(case.text)
    assert case.mentions in caught.value.reason
    assert case.text in caught.value.reason
    assert caught.value.hint and "spiffe://org-b.example/*" in caught.value.hint


@pytest.mark.parametrize(
    ("outer", "inner", "covers", "reason"),
    [
        ("spiffe://org-b.example/*", WEST, True, "domain-wide covers one host"),
        ("spiffe://org-b.example/cluster/*", WEST, True, "path prefix covers one host"),
        (WEST, "spiffe://org-b.example/*", False, "one host is narrower"),
        ("spiffe://org-b.example/*", "spiffe://org-c.example/*", False, "other domain"),
        ("spiffe://org-b.example/*", "spiffe://sub.org-b.example/x", False, "no subdomains"),
        ("spiffe://org-b.example/cluster/*", "spiffe://org-b.example/cluster", False, "stem"),
    ],
)
def test_host_pattern_covers(outer: str, inner: str, covers: bool, reason: str) -> None:
    assert H(outer).covers(H(inner)) is covers, reason


def test_constraints_claim_round_trip() -> None:
    claim = {
        "hosts": ["spiffe://org-b.example/cluster/*", "spiffe://org-a.example/*", WEST],
        "regions": ["us-east-1", "eu-west-1"],
        "max_hops": 3,
        "max_depth": 0,
    }
    parsed = Constraints.from_claim(claim)
    assert parsed.to_claim() == {
        # WEST is inside org-b.example/cluster/*, so the canonical form drops it
        "hosts": ["spiffe://org-a.example/*", "spiffe://org-b.example/cluster/*"],
        "regions": ["eu-west-1", "us-east-1"],
        "max_hops": 3,
        "max_depth": 0,
    }
    assert Constraints.from_claim(parsed.to_claim()) == parsed
    assert Constraints.from_claim({}) == Constraints()
    assert Constraints().to_claim() == {}


@pytest.mark.parametrize(
    ("claim", "mentions", "reason"),
    [
        ([], "cons: expected a mapping", "not a mapping"),
        ({"ttl": 3}, "cons.ttl: unknown constraint", "unknown key"),
        ({"hosts": "spiffe://org-b.example/*"}, "cons.hosts: expected a list", "hosts not a list"),
        ({"hosts": ["spiffe://*.example/x"]}, "cons.hosts[0]", "bad host pattern"),
        ({"hosts": [WEST, WEST]}, "cons.hosts[1]", "duplicate host"),
        ({"regions": ["eu", "eu"]}, "listed twice", "duplicate region"),
        ({"regions": ["eu west"]}, "cons.regions[0]", "bad region"),
        ({"regions": [1]}, "cons.regions[0]", "region not a string"),
        ({"max_hops": -1}, "cons.max_hops", "negative"),
        ({"max_hops": True}, "cons.max_hops", "a boolean is not a count"),
        ({"max_depth": 1.5}, "cons.max_depth", "not a whole number"),
        ({"max_depth": None}, "cons.max_depth", "null is not a count"),
    ],
)
def test_constraints_from_claim_refuses(claim: Any, mentions: str, reason: str) -> None:
    with pytest.raises(AuthorityFormatError) as caught:
        Constraints.from_claim(claim)
    assert mentions in caught.value.reason, reason


PARENT = Constraints(
    hosts=(H("spiffe://org-b.example/cluster/*"),),
    regions=frozenset({"eu-west-1", "us-east-1"}),
    max_hops=3,
    max_depth=2,
)


@dataclass(frozen=True)
class Narrower:
    child: Constraints
    parent: Constraints
    mentions: str | None  # None: the child is at least as tight
    reason: str


def child(**changes: Any) -> Constraints:
    fields = {
        "hosts": PARENT.hosts,
        "regions": PARENT.regions,
        "max_hops": PARENT.max_hops,
        "max_depth": PARENT.max_depth,
    }
    fields.update(changes)
    return Constraints(**fields)


NARROWER = [
    Narrower(child(), PARENT, None, "identical"),
    Narrower(child(hosts=(H(WEST),)), PARENT, None, "one host inside the parent's prefix"),
    Narrower(child(hosts=()), PARENT, None, "no host at all is narrower"),
    Narrower(child(regions=frozenset({"eu-west-1"})), PARENT, None, "fewer regions"),
    Narrower(child(max_hops=0, max_depth=0), PARENT, None, "lower counts"),
    Narrower(child(), Constraints(), None, "a child may add constraints its parent lacks"),
    Narrower(
        child(hosts=(H("spiffe://org-b.example/*"),)),
        PARENT,
        "child host pattern spiffe://org-b.example/* is wider than the parent's spiffe://org-b.example/cluster/*",
        "hosts wider",
    ),
    Narrower(
        child(hosts=(H(WEST), H("spiffe://org-c.example/*"))),
        PARENT,
        "spiffe://org-c.example/* is outside the parent's hosts",
        "one host outside",
    ),
    Narrower(
        child(hosts=None), PARENT, "child drops the parent's hosts constraint", "hosts dropped"
    ),
    Narrower(
        child(regions=frozenset({"eu-west-1", "ap-south-1"})),
        PARENT,
        "child allows region ap-south-1",
        "regions wider",
    ),
    Narrower(
        child(regions=None),
        PARENT,
        "child drops the parent's regions constraint",
        "regions dropped",
    ),
    Narrower(
        child(max_hops=4), PARENT, "child max_hops 4 is higher than the parent's 3", "hops higher"
    ),
    Narrower(
        child(max_hops=None), PARENT, "child drops the parent's max_hops constraint", "hops dropped"
    ),
    Narrower(
        child(max_depth=3),
        PARENT,
        "child max_depth 3 is higher than the parent's 2",
        "depth higher",
    ),
    Narrower(
        child(max_depth=None),
        PARENT,
        "child drops the parent's max_depth constraint",
        "depth dropped",
    ),
    Narrower(
        Constraints(max_hops=0),
        Constraints(max_depth=0),
        "drops the parent's max_depth",
        "a zero limit dropped is still dropped",
    ),
]


@pytest.mark.parametrize("case", NARROWER, ids=lambda c: c.reason)
def test_require_narrower_than(case: Narrower) -> None:
    if case.mentions is None:
        case.child.require_narrower_than(case.parent)
        return
    with pytest.raises(ConstraintWideningError) as caught:
        case.child.require_narrower_than(case.parent)
    assert case.mentions in caught.value.reason


@dataclass(frozen=True)
class Admit:
    constraints: Constraints
    host: str
    region: str
    hops: int
    mentions: str | None  # None: admitted
    hint: str | None
    reason: str


ADMITS = [
    Admit(PARENT, WEST, "eu-west-1", 3, None, None, "within every constraint"),
    Admit(Constraints(), "spiffe://anywhere.example/gw", "mars", 99, None, None, "unconstrained"),
    Admit(
        PARENT,
        "spiffe://org-b.example/edge/gw",
        "eu-west-1",
        1,
        "hosts constraint does not include spiffe://org-b.example/edge/gw",
        "spiffe://org-b.example/cluster/*",
        "host outside the patterns",
    ),
    Admit(
        PARENT,
        "spiffe://org-c.example/cluster/west/gateway",
        "eu-west-1",
        1,
        "hosts constraint",
        "spiffe://org-b.example/cluster/*",
        "same path, other trust domain",
    ),
    Admit(
        Constraints(hosts=()),
        WEST,
        "eu-west-1",
        1,
        "hosts constraint is empty",
        "issuer",
        "empty hosts",
    ),
    Admit(
        PARENT,
        WEST,
        "ap-south-1",
        1,
        "regions constraint does not include 'ap-south-1'",
        "eu-west-1, us-east-1",
        "region outside",
    ),
    Admit(
        PARENT,
        WEST,
        "eu-west-1",
        4,
        "has made 4 handoffs (this one included); its max_hops constraint allows 3",
        "higher max_hops",
        "one hop too many",
    ),
    Admit(Constraints(max_hops=0), WEST, "x", 1, "allows 0", None, "max_hops 0 never moves"),
]


@pytest.mark.parametrize("case", ADMITS, ids=lambda c: c.reason)
def test_admit(case: Admit) -> None:
    if case.mentions is None:
        case.constraints.admit(case.host, case.region, case.hops)
        return
    with pytest.raises(AdmissionDeniedError) as caught:
        case.constraints.admit(case.host, case.region, case.hops)
    assert case.mentions in caught.value.reason
    if case.hint:
        assert caught.value.hint and case.hint in caught.value.hint


def test_admit_refuses_negative_hops() -> None:
    with pytest.raises(ValueError, match="hops"):
        Constraints().admit(WEST, "eu", -1)


# --- host policy and effective authority --------------------------------------------

CONFIG: dict[str, Any] = {
    "offers": [
        {"resource": "pubsub:*", "actions": ["publish", "subscribe"]},
        {"resource": "state:*", "actions": ["read", "write"]},
    ],
    "ceilings": [
        {
            "peer": "org-b.example",
            "allow": [
                {"resource": "pubsub:alerts/overdue", "actions": ["publish", "subscribe"]},
                {"resource": "state:*", "actions": ["read", "write"]},
            ],
        },
        {"tenant": "billing", "allow": [{"resource": "state:*", "actions": ["read", "write"]}]},
    ],
    "deny": [{"resource": "state:self", "actions": ["write"]}],
}

CHAIN = caps(
    ("pubsub:alerts/overdue", ["subscribe"]),
    ("pubsub:alerts/*", ["publish"]),
    ("invoke:payments/charge", ["invoke"]),
    ("state:self", ["read", "write"]),
)


def test_from_config_and_explanations_read_like_the_design() -> None:
    policy = HostPolicy.from_config(CONFIG, "host.yaml")
    admission = effective_authority(CHAIN, policy, tenant="default", peer="org-b.example")
    assert [str(e) for e in admission.explanations] == [
        "invoke:payments/charge invoke: denied — this host does not offer invoke on invoke:payments/charge",
        "pubsub:alerts/* publish: narrowed to pubsub:alerts/overdue by the ceiling for peer org-b.example",
        "pubsub:alerts/overdue subscribe: granted",
        "state:self read: granted",
        "state:self write: denied by a denial in this host's configuration (state:self write)",
    ]
    assert [e.outcome for e in admission.explanations] == [
        Outcome.DENIED,
        Outcome.NARROWED,
        Outcome.GRANTED,
        Outcome.GRANTED,
        Outcome.DENIED,
    ]
    assert admission.authority.allow == caps(
        ("pubsub:alerts/overdue", ["publish", "subscribe"]), ("state:self", ["read"])
    )
    rendered = admission.render()
    assert (
        rendered.splitlines()[0]
        == "effective authority for tenant default, objects from org-b.example:"
    )
    assert "pubsub:alerts/* publish          narrowed to pubsub:alerts/overdue" in rendered


def test_ceilings_apply_only_to_their_tenant_and_peer() -> None:
    policy = HostPolicy.from_config(CONFIG, "host.yaml")
    other_peer = effective_authority(CHAIN, policy, tenant="default", peer="org-c.example")
    assert other_peer.permits("pubsub:alerts/late", "publish")  # org-b's ceiling is not for it
    billing = effective_authority(CHAIN, policy, tenant="billing", peer="org-c.example")
    assert not billing.permits("pubsub:alerts/late", "publish")
    assert str(billing.explanations[1]) == (
        "pubsub:alerts/* publish: denied — the ceiling for tenant billing allows no publish "
        "on pubsub:alerts/*"
    )


def test_every_matching_ceiling_applies() -> None:
    chain = caps(("pubsub:*", ["publish"]))
    policy = HostPolicy(
        offers=caps(("pubsub:*", ["publish"])),
        ceilings=(
            Ceiling(peer="org-b.example", allow=caps(("pubsub:a/*", ["publish"]))),
            Ceiling(tenant="default", allow=caps(("pubsub:a/b/*", ["publish"]))),
            Ceiling(allow=caps(("pubsub:*", ["publish"]))),
            Ceiling(peer="org-c.example", allow=caps()),  # does not apply
        ),
    )
    admission = effective_authority(chain, policy, tenant="default", peer="org-b.example")
    assert admission.authority.allow == caps(("pubsub:a/b/*", ["publish"]))
    assert admission.explanations[0].reason == (
        "narrowed to pubsub:a/* by the ceiling for peer org-b.example; "
        "narrowed to pubsub:a/b/* by the ceiling for tenant default"
    )


def test_denial_inside_a_prefix_is_kept_as_a_hole() -> None:
    chain = caps(("state:*", ["read"]))
    policy = HostPolicy(
        offers=caps(("state:*", ["read"])), denials=caps(("state:secrets/*", ["read"]))
    )
    admission = effective_authority(chain, policy, tenant="default", peer="org-b.example")
    assert admission.permits("state:self", "read")
    assert not admission.permits("state:secrets/key", "read")
    assert admission.authority.deny == caps(("state:secrets/*", ["read"]))
    assert admission.explanations[0].reason == (
        "granted except state:secrets/*, denied by this host's configuration"
    )
    with pytest.raises(AdmissionDeniedError, match="state:secrets/key"):
        admission.require("state:secrets/key", "read")


def test_empty_policy_grants_nothing() -> None:
    for policy in (HostPolicy.empty(), HostPolicy.from_config(None, "host.yaml")):
        admission = effective_authority(CHAIN, policy, tenant="default", peer="org-b.example")
        assert not admission.authority.allow
        assert all(e.outcome is Outcome.DENIED for e in admission.explanations)
    assert HostPolicy.from_config({}, "host.yaml") == HostPolicy.empty()


def test_admission_require_says_why() -> None:
    policy = HostPolicy.from_config(CONFIG, "host.yaml")
    admission = effective_authority(CHAIN, policy, tenant="default", peer="org-b.example")
    admission.require("pubsub:alerts/overdue", "publish")
    with pytest.raises(AdmissionDeniedError) as narrowed:
        admission.require("pubsub:alerts/late", "publish")
    assert "narrowed to pubsub:alerts/overdue by the ceiling for peer org-b.example" in str(
        narrowed.value
    )
    with pytest.raises(AdmissionDeniedError) as ungranted:
        admission.require("state:other", "read")
    assert "the object's credentials do not grant it" in ungranted.value.reason
    with pytest.raises(AdmissionDeniedError, match="does not offer invoke"):
        admission.require("invoke:payments/charge", "invoke")


@pytest.mark.parametrize(
    ("tenant", "peer", "reason"),
    [
        ("default", "spiffe://org-b.example", "a URI is not a trust domain"),
        ("default", "Org-B.example", "upper case would never match a ceiling"),
        ("Default", "org-b.example", "invalid tenant would never match a ceiling"),
    ],
)
def test_effective_authority_refuses_misspelled_tenant_or_peer(
    tenant: str, peer: str, reason: str
) -> None:
    # A misspelling would silently skip the ceilings written for that tenant or peer.
    with pytest.raises(ValueError):  # noqa: PT011 - message text is not the contract
        effective_authority(CHAIN, HostPolicy.empty(), tenant=tenant, peer=peer)


@dataclass(frozen=True)
class BadConfig:
    policy: Any
    key: str  # the key path the message must name
    reason: str


def offer(resource: Any = "pubsub:*", actions: Any = ("publish",)) -> dict[str, Any]:
    return {
        "resource": resource,
        "actions": list(actions) if isinstance(actions, tuple) else actions,
    }


BAD_CONFIGS = [
    BadConfig(["offers"], "policy:", "policy not a mapping"),
    BadConfig({"offer": []}, "policy.offer: unknown key", "typo in a top-level key"),
    BadConfig({"offers": "pubsub:*"}, "policy.offers: expected a list", "offers not a list"),
    BadConfig({"offers": [offer("pubsub:al*")]}, "policy.offers[0].resource", "bad pattern"),
    BadConfig(
        {"offers": [{"resource": "pubsub:*"}]}, "policy.offers[0].actions: missing", "no actions"
    ),
    BadConfig({"offers": [offer(actions=[])]}, "policy.offers[0].actions", "empty actions"),
    BadConfig(
        {"offers": [offer(actions=["publish", "publish"])]},
        "policy.offers[0].actions[1]",
        "duplicate action",
    ),
    BadConfig(
        {"offers": [{**offer(), "res": "x"}]},
        "policy.offers[0].res: unknown key",
        "claim key in config",
    ),
    BadConfig(
        {"deny": [offer(actions=["write"])]}, "policy.deny[0].actions[0]", "action of another kind"
    ),
    BadConfig({"ceilings": {}}, "policy.ceilings: expected a list", "ceilings not a list"),
    BadConfig(
        {"ceilings": [{"peer": "org-b.example"}]}, "policy.ceilings[0].allow: missing", "no allow"
    ),
    BadConfig(
        {"ceilings": [{"allow": [offer(), offer("pubsub:a/*/b")]}]},
        "policy.ceilings[0].allow[1].resource",
        "bad pattern deep inside",
    ),
    BadConfig(
        {"ceilings": [{"peer": "spiffe://org-b.example", "allow": []}]},
        "policy.ceilings[0].peer",
        "URI as peer",
    ),
    BadConfig({"ceilings": [{"peer": None, "allow": []}]}, "policy.ceilings[0].peer", "null peer"),
    BadConfig(
        {"ceilings": [{"tenant": None, "allow": []}]}, "policy.ceilings[0].tenant", "null tenant"
    ),
    BadConfig(
        {"ceilings": [{"tenant": "Default", "allow": []}]},
        "policy.ceilings[0].tenant",
        "bad tenant",
    ),
    BadConfig(
        {"ceilings": [{"grant": [], "allow": []}]},
        "policy.ceilings[0].grant: unknown key",
        "no way to grant",
    ),
]


@pytest.mark.parametrize("case", BAD_CONFIGS, ids=lambda c: c.reason)
def test_from_config_refuses(case: BadConfig) -> None:
    with pytest.raises(ConfigError) as caught:
        HostPolicy.from_config(case.policy, "host.yaml")
    assert caught.value.reason.startswith("host.yaml: ")
    assert case.key in caught.value.reason
    assert caught.value.hint  # every refusal says how to fix it


def test_errors_sit_under_authority_error() -> None:
    for kind in (AuthorityFormatError, CapabilityWideningError, ConstraintWideningError):
        assert issubclass(kind, AuthorityError)


# --- properties ---------------------------------------------------------------------

# A small alphabet with string-prefix traps ("a" vs "ab") so patterns nest and collide
# often; "z" never appears in a pattern, so it is the "fresh segment" of the laminarity
# argument and a witness whenever a prefix is not covered.
PATTERN_SEGMENTS = ("a", "ab", "b")
UNIVERSE_SEGMENTS = (*PATTERN_SEGMENTS, "z")
TENANTS = (None, "t1", "t2")
PEERS = (None, "org-a.example", "org-b.example")

segments = st.sampled_from(PATTERN_SEGMENTS)
kinds = st.sampled_from(sorted(KINDS))


@st.composite
def patterns(draw: st.DrawFn, kind: str | None = None) -> ResourcePattern:
    chosen = kind or draw(kinds)
    wildcard = draw(st.booleans())
    # Prefix patterns stay one level shallower, so UNIVERSE has paths strictly below them.
    path = draw(st.lists(segments, min_size=0 if wildcard else 1, max_size=2 if wildcard else 3))
    return ResourcePattern(kind=chosen, segments=tuple(path), wildcard=wildcard)


@st.composite
def resources(draw: st.DrawFn) -> Resource:
    path = draw(st.lists(st.sampled_from(UNIVERSE_SEGMENTS), min_size=1, max_size=4))
    return Resource(kind=draw(kinds), segments=tuple(path))


@st.composite
def capabilities(draw: st.DrawFn) -> Capability:
    pattern = draw(patterns())
    vocabulary = sorted(ACTIONS[pattern.kind])
    actions = draw(st.sets(st.sampled_from(vocabulary), min_size=1))
    return Capability(resource=pattern, actions=frozenset(actions))


def capability_sets(max_size: int = 4) -> st.SearchStrategy[CapabilitySet]:
    return st.lists(capabilities(), max_size=max_size).map(
        lambda found: CapabilitySet(capabilities=tuple(found))
    )


EVERYTHING = CapabilitySet(
    capabilities=tuple(
        Capability(resource=ResourcePattern(kind=kind, segments=(), wildcard=True), actions=actions)
        for kind, actions in ACTIONS.items()
    )
)
# Bounds are often "everything" so that the chain survives them often enough for the
# narrowing and denial cases to be exercised, not just "denied: not offered".
bounds = st.one_of(st.just(EVERYTHING), capability_sets())
ceilings = st.builds(
    lambda tenant, peer, allow: Ceiling(tenant=tenant, peer=peer, allow=allow),
    st.sampled_from(TENANTS),
    st.sampled_from(PEERS),
    bounds,
)
policies = st.builds(
    lambda offers, found, denials: HostPolicy(
        offers=offers, ceilings=tuple(found), denials=denials
    ),
    bounds,
    st.lists(ceilings, max_size=3),
    capability_sets(max_size=3),
)
tenants = st.sampled_from(["t1", "t2", "t3"])
peers = st.sampled_from(["org-a.example", "org-b.example", "org-c.example"])


def _universe() -> list[tuple[Resource, str]]:
    """Every (resource, action) up to depth 3 over UNIVERSE_SEGMENTS: 420 questions."""
    found = []
    for kind in sorted(KINDS):
        for depth in (1, 2, 3):
            for path in itertools.product(UNIVERSE_SEGMENTS, repeat=depth):
                for action in sorted(ACTIONS[kind]):
                    found.append((Resource(kind=kind, segments=path), action))
    return found


UNIVERSE = _universe()


def permitted(authority: CapabilitySet | EffectiveAuthority) -> frozenset[tuple[Resource, str]]:
    return frozenset((r, a) for r, a in UNIVERSE if authority.permits(r, a))


def raises_widening(child: CapabilitySet, parent: CapabilitySet) -> bool:
    try:
        child.require_subset_of(parent)
    except CapabilityWideningError:
        return True
    return False


FAST = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}


@settings(max_examples=300, **FAST)
@given(patterns(), patterns(), st.lists(resources(), min_size=1, max_size=8), segments)
def test_property_covers_and_intersect_agree_with_matches(
    p: ResourcePattern, q: ResourcePattern, sample: list[Resource], extra: str
) -> None:
    # Also ask about resources inside q, so "q matches r" is not vacuous.
    inside_q = Resource(kind=q.kind, segments=(*q.segments, extra) if q.wildcard else q.segments)
    both = p.intersect(q)
    event(f"covers(p, q)={p.covers(q)}")
    event("intersection: " + ("none" if both is None else "p" if both == p else "q"))
    for r in (*sample, inside_q):
        if p.covers(q) and q.matches(r):
            assert p.matches(r)
        in_both = p.matches(r) and q.matches(r)
        assert (both is not None and both.matches(r)) == in_both
    # laminar: nested or disjoint, never a partial overlap
    assert p.covers(q) or q.covers(p) or both is None


@settings(max_examples=200, **FAST)
@given(capability_sets(), capability_sets())
def test_property_require_subset_of_is_exact(child: CapabilitySet, parent: CapabilitySet) -> None:
    """Refused exactly when some question is permitted by the child and not the parent."""
    wider = permitted(child) - permitted(parent)
    refused = raises_widening(child, parent)
    event(f"refused={refused}")
    assert refused == bool(wider)


@settings(max_examples=100, **FAST)
@given(capability_sets())
def test_property_claim_round_trip(found: CapabilitySet) -> None:
    assert CapabilitySet.from_claim(found.to_claim()) == found
    assert permitted(CapabilitySet(capabilities=found.capabilities)) == permitted(found)


@settings(max_examples=150, **FAST)
@given(capability_sets(), policies, tenants, peers)
def test_property_effective_authority_within_chain(
    chain: CapabilitySet, policy: HostPolicy, tenant: str, peer: str
) -> None:
    admission = effective_authority(chain, policy, tenant=tenant, peer=peer)
    effective = admission.authority
    for explanation in admission.explanations:
        event(f"outcome={explanation.outcome.value}")
    assert permitted(effective) <= permitted(chain)
    effective.allow.require_subset_of(chain)
    effective.require_within(EffectiveAuthority(allow=chain))
    # The per-capability story matches the result: denied parts permit nothing.
    for explanation in admission.explanations:
        capability = explanation.capability
        (action,) = capability.actions
        under = [(r, a) for r, a in UNIVERSE if a == action and capability.resource.matches(r)]
        if explanation.outcome is Outcome.DENIED:
            assert not any(effective.permits(r, a) for r, a in under)
        if explanation.outcome is Outcome.GRANTED:
            assert all(effective.permits(r, a) for r, a in under)


# The added ceiling applies to the (tenant, peer) asked about more than half the time
# (t1 / org-a.example are the ones asked about, or it names none), so it often bites.
added_ceilings = st.builds(
    lambda tenant, peer, allow: Ceiling(tenant=tenant, peer=peer, allow=allow),
    st.sampled_from((None, "t1", "t2")),
    st.sampled_from((None, "org-a.example", "org-b.example")),
    capability_sets(),
)


@settings(max_examples=120, **FAST)
@given(capability_sets(), policies, added_ceilings, capability_sets(max_size=2))
def test_property_more_config_never_enlarges(
    chain: CapabilitySet, policy: HostPolicy, ceiling: Ceiling, denials: CapabilitySet
) -> None:
    tenant, peer = "t1", "org-a.example"
    before = effective_authority(chain, policy, tenant=tenant, peer=peer).authority
    event(f"effective authority before: {'empty' if not before.allow else 'not empty'}")
    more_ceilings = HostPolicy(
        offers=policy.offers, ceilings=(*policy.ceilings, ceiling), denials=policy.denials
    )
    more_denials = HostPolicy(
        offers=policy.offers,
        ceilings=policy.ceilings,
        denials=CapabilitySet(capabilities=policy.denials.capabilities + denials.capabilities),
    )
    for changed, label in ((more_ceilings, "ceiling"), (more_denials, "denials")):
        after = effective_authority(chain, changed, tenant=tenant, peer=peer).authority
        shrunk = permitted(after) < permitted(before)
        event(f"adding {label}: {'shrank' if shrunk else 'same'}")
        assert permitted(after) <= permitted(before)
        after.require_within(before)


@settings(max_examples=150, **FAST)
@given(capability_sets(), capability_sets())
def test_property_intersect_commutative_and_idempotent(
    left: CapabilitySet, right: CapabilitySet
) -> None:
    both = left.intersect(right)
    event(f"intersection empty={not both}")
    assert permitted(both) == permitted(right.intersect(left)) == permitted(left) & permitted(right)
    assert permitted(left.intersect(left)) == permitted(left)
    # canonical values: equal meaning, equal value
    assert both == right.intersect(left)
    assert left.intersect(left) == left
