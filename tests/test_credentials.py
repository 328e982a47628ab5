"""Tests for gateway.credentials: grants, chains, and the attacks on both (DESIGN.md §5).

Three parts:

* **One table of refusals** (:data:`CASES`): every widening a child could attempt and
  every JWT trick, one case each, each refused by :func:`verify_chain` with its own
  error type and a reason that names what was wrong. Wider children are signed with
  :func:`issue_grant` (which, unlike :func:`attenuate`, does not check) or built byte
  by byte, so that each case differs from a valid chain in exactly the one thing it
  attacks (:func:`test_forging_helpers_make_valid_grants` is the control).
* **Positive tests**: chains that must verify, and :func:`attenuate` keeping or
  refusing what it is given.
* **Properties** (hypothesis): ``attenuate`` never returns anything wider than its
  parent, refuses exactly when an independent brute-force oracle says the request is
  wider, and whatever it refuses, :func:`verify_chain` refuses too when it is forged;
  no single changed character of a grant is ever accepted.

``alg: none``: a JWS with ``alg`` ``none`` has an empty signature segment, and a grant
is three *non-empty* segments, so the bytes check (step 1 of the module docstring)
refuses it as :class:`GrantFormatError` before its header is even read. The same header
with a junk signature gets through the bytes check and is refused by the algorithm pin
(:class:`GrantAlgorithmError`). Both cases are in the table.

Everything runs at a fixed time :data:`T0` years away from the wall clock, so a
verifier that consulted the wall clock instead of ``at`` would fail here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.authority import (
    ACTIONS,
    Capability,
    CapabilitySet,
    Constraints,
    HostPattern,
    Resource,
    ResourcePattern,
)
from gateway.credentials import (
    GRANT_TYPE,
    MAX_CHAIN,
    Grant,
    attenuate,
    audience_admits,
    grant_digest,
    issue_grant,
    verify_chain,
    verify_grant,
)
from gateway.errors import (
    AdmissionDeniedError,
    BadSignatureError,
    CapabilityWideningError,
    ChainError,
    ConstraintWideningError,
    DepthExceededError,
    ExpiredError,
    GatewayError,
    GrantAlgorithmError,
    GrantError,
    GrantFormatError,
    GrantHeaderError,
    IssuerMismatchError,
    LifetimeWideningError,
    ParentDigestError,
    RevokedKeyError,
    RootIssuerError,
    SubjectMismatchError,
    UntrustedKeyError,
    VerificationError,
    WideningError,
)
from gateway.identity import HostId
from gateway.keys import Algorithm, Purpose, SignatureEncoding, Signer
from gateway.trust import TrustStore, new_bundle

T0 = datetime(2031, 3, 1, 12, 0, tzinfo=UTC)  #: "now" for every verification here
ISSUED = T0 - timedelta(minutes=5)
NBF = T0 - timedelta(hours=1)
EXP = T0 + timedelta(days=1)

OBJECT = "obj://org-a.example/billing/invoice-42"
OTHER_OBJECT = "obj://org-a.example/billing/invoice-43"
HOST_A = "spiffe://org-a.example/cluster/east/gateway"
HOST_A2 = "spiffe://org-a.example/cluster/west/gateway"
HOST_B = "spiffe://org-b.example/cluster/west/gateway"
HOST_B2 = "spiffe://org-b.example/cluster/east/gateway"
HOST_C = "spiffe://org-c.example/edge/gateway"
HOST_D = "spiffe://org-d.example/edge/gateway"  #: a domain nobody here trusts
DOMAIN_B = "spiffe://org-b.example"  #: an audience that admits every host of org-b


def caps(*entries: tuple[str, list[str]]) -> CapabilitySet:
    return CapabilitySet(
        capabilities=tuple(Capability.of(resource, *actions) for resource, actions in entries)
    )


def hosts(*patterns: str) -> tuple[HostPattern, ...]:
    return tuple(HostPattern.parse(p) for p in patterns)


ROOT_CAPS = caps(("pubsub:alerts/*", ["publish"]), ("state:self", ["read"]))
ROOT_CONS = Constraints(
    hosts=hosts("spiffe://org-b.example/cluster/*", "spiffe://org-c.example/*"),
    regions=frozenset({"eu-central", "eu-west"}),
    max_hops=3,
    max_depth=3,
)


# --- three trust domains ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Realm:
    """org-a owns the objects; org-b and org-c are partners; each host has a grant key."""

    a: Signer  #: Ed25519, grants for HOST_A
    a2: Signer  #: Ed25519, grants for HOST_A2 only
    a_envelope: Signer  #: Ed25519, HOST_A, envelopes only (no grant purpose)
    b: Signer  #: ES256, grants for HOST_B
    b2: Signer  #: Ed25519, grants for HOST_B2
    b_revoked: Signer  #: HOST_B's old key, revoked in org-b's current bundle
    c: Signer  #: Ed25519, grants for HOST_C
    outsider: Signer  #: ES256, in no bundle at all
    trust: TrustStore

    @property
    def signer_of(self) -> Mapping[str, Signer]:
        return {HOST_A: self.a, HOST_A2: self.a2, HOST_B: self.b, HOST_B2: self.b2, HOST_C: self.c}


def make_realm() -> Realm:
    since = T0 - timedelta(days=30)
    both = [Purpose.GRANT, Purpose.ENVELOPE]
    a, a2, a_envelope = (Signer.generate() for _ in range(3))
    b, b2, b_revoked = (
        Signer.generate(Algorithm.ECDSA_P256_SHA256),
        Signer.generate(),
        Signer.generate(),
    )
    c = Signer.generate()
    org_a = new_bundle(
        "org-a.example",
        [
            a.record(purposes=both, hosts=[HOST_A], valid_from=since),
            a2.record(purposes=both, hosts=[HOST_A2], valid_from=since),
            a_envelope.record(purposes=[Purpose.ENVELOPE], hosts=[HOST_A], valid_from=since),
        ],
        issued_at=since,
    )
    old = b_revoked.record(purposes=both, hosts=[HOST_B], valid_from=since)
    org_b = new_bundle(
        "org-b.example",
        [
            old,
            b.record(purposes=both, hosts=[HOST_B], valid_from=since),
            b2.record(purposes=both, hosts=[HOST_B2], valid_from=since),
        ],
        issued_at=since,
    ).with_key(replace(old, revoked=True), issued_at=since + timedelta(days=1))
    org_c = new_bundle(
        "org-c.example",
        [c.record(purposes=both, hosts=[HOST_C], valid_from=since)],
        issued_at=since,
    )
    return Realm(
        a=a,
        a2=a2,
        a_envelope=a_envelope,
        b=b,
        b2=b2,
        b_revoked=b_revoked,
        c=c,
        outsider=Signer.generate(Algorithm.ECDSA_P256_SHA256),
        trust=TrustStore.of([org_a, org_b, org_c]),
    )


_REALM = make_realm()  # keys are made once: hypothesis runs a test body hundreds of times


@pytest.fixture(scope="module")
def realm() -> Realm:
    return _REALM


# --- grants, honest and forged ----------------------------------------------------------


def root(
    r: Realm,
    *,
    signer: Signer | None = None,
    issuer: str = HOST_A,
    subject: str = OBJECT,
    audience: str = HOST_B,
    capabilities: CapabilitySet = ROOT_CAPS,
    constraints: Constraints = ROOT_CONS,
    not_before: datetime = NBF,
    expires_at: datetime = EXP,
) -> Grant:
    """A root grant of org-a for OBJECT, addressed to HOST_B, valid around T0."""
    return issue_grant(
        signer=signer or r.signer_of[issuer],
        issuer=issuer,
        subject=subject,
        audience=audience,
        capabilities=capabilities,
        constraints=constraints,
        not_before=not_before,
        expires_at=expires_at,
        at=ISSUED,
    )


def extend(
    r: Realm,
    parent: Grant,
    *,
    signer: Signer | None = None,
    issuer: str = HOST_B,
    audience: str = HOST_C,
    subject: str | None = None,
    capabilities: CapabilitySet | None = None,
    constraints: Constraints | None = None,
    not_before: datetime | None = None,
    expires_at: datetime | None = None,
    points_at: Grant | None = None,
    unlinked: bool = False,
) -> Grant:
    """A child of ``parent``, signed without any check: everything not given is the
    parent's, ``prf`` is ``points_at``'s digest (default the parent's) or absent."""
    return issue_grant(
        signer=signer or r.signer_of[issuer],
        issuer=issuer,
        subject=subject or parent.subject,
        audience=audience,
        capabilities=capabilities if capabilities is not None else parent.capabilities,
        constraints=constraints if constraints is not None else parent.constraints,
        not_before=not_before or parent.not_before,
        expires_at=expires_at or parent.expires_at,
        at=ISSUED,
        parent=None if unlinked else (points_at or parent),
    )


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def to_json(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def by(signer: Signer) -> Callable[[bytes], bytes]:
    """JOSE signing with ``signer`` (ES256 signatures are r||s, not DER)."""
    return lambda message: signer.sign(message, encoding=SignatureEncoding.P1363)


def jws(
    header: Mapping[str, Any] | bytes,
    claims: Mapping[str, Any] | bytes,
    sign: Callable[[bytes], bytes],
) -> str:
    """A compact JWS built by hand, so that header, claims and signature can be anything."""
    head = header if isinstance(header, bytes) else to_json(header)
    body = claims if isinstance(claims, bytes) else to_json(claims)
    signing_input = f"{b64(head)}.{b64(body)}"
    return f"{signing_input}.{b64(sign(signing_input.encode('ascii')))}"


def header_of(signer: Signer, **changes: Any) -> dict[str, Any]:
    return {"alg": signer.algorithm.jose, "typ": GRANT_TYPE, "kid": signer.key_id, **changes}


def claims_of(grant: Grant | str) -> dict[str, Any]:
    compact = grant.compact if isinstance(grant, Grant) else grant
    claims: dict[str, Any] = json.loads(unb64(compact.split(".")[1]))
    return claims


def root_claims(**changes: Any) -> dict[str, Any]:
    """The claims of an honest root grant (as :func:`root` would sign them)."""
    return {
        "iss": HOST_A,
        "sub": OBJECT,
        "aud": HOST_B,
        "iat": int(ISSUED.timestamp()),
        "nbf": int(NBF.timestamp()),
        "exp": int(EXP.timestamp()),
        "jti": uuid.uuid4().hex,
        "cap": ROOT_CAPS.to_claim(),
        "cons": ROOT_CONS.to_claim(),
        **changes,
    }


def forged_root(r: Realm, *, header: Mapping[str, Any] | None = None, **claims: Any) -> str:
    """A root signed by HOST_A's real key, with ``header`` and ``claims`` changed."""
    return jws(header_of(r.a, **(header or {})), root_claims(**claims), by(r.a))


def forged_child(r: Realm, parent: Grant, **claims: Any) -> str:
    """An honest child of ``parent`` by HOST_B's real key, with ``claims`` added."""
    honest = claims_of(extend(r, parent))
    signer = r.signer_of[HOST_B]
    return jws(header_of(signer), {**honest, **claims}, by(signer))


def replace_signature(compact: str, signature: str) -> str:
    head, body, _ = compact.split(".")
    return f"{head}.{body}.{signature}"


def root_whose_signature_has(r: Realm, char: str) -> Grant:
    """A root whose signature segment contains ``char`` (each jti gives a new signature)."""
    for _ in range(200):
        grant = root(r)
        if char in grant.compact.split(".")[2]:
            return grant
    raise AssertionError(f"no signature with {char!r} in 200 tries")


_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def with_low_bits_set(segment: str) -> str:
    """The same bytes spelled differently: the last character's unused low bits set."""
    assert len(segment) % 4 in (2, 3), "a segment without unused bits"
    last = _ALPHABET.index(segment[-1])
    respelled = segment[:-1] + _ALPHABET[last | 1]
    assert respelled != segment and unb64(respelled) == unb64(segment)
    return respelled


# --- the table of refusals --------------------------------------------------------------

Build = Callable[[Realm], list[str]]


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    build: Build  #: the grants presented for OBJECT, root first
    error: type[GatewayError]  #: exactly this type, not a subclass
    reason: str  #: why the chain must be refused
    mentions: str  #: what the error's reason must name


def child_with(parent: Mapping[str, Any] | None = None, **child: Any) -> Build:
    """[root, child]: the root as :func:`root` makes it (with ``parent`` changes), one child."""

    def build(r: Realm) -> list[str]:
        first = root(r, **(parent or {}))
        return [first.compact, extend(r, first, **child).compact]

    return build


def only(make: Callable[[Realm], str]) -> Build:
    return lambda r: [make(r)]


def under_root(make: Callable[[Realm, Grant], str]) -> Build:
    def build(r: Realm) -> list[str]:
        first = root(r)
        return [first.compact, make(r, first)]

    return build


def wrong_parent(r: Realm) -> list[str]:
    first, sibling = root(r), root(r)
    return [first.compact, extend(r, first, points_at=sibling).compact]


def reversed_pair(r: Realm) -> list[str]:
    first = root(r)
    return [extend(r, first).compact, first.compact]


def skipped_link(r: Realm) -> list[str]:
    first = root(r)
    second = extend(r, first)
    third = extend(r, second, issuer=HOST_C)
    return [first.compact, third.compact, second.compact]


def too_deep(r: Realm) -> list[str]:
    first = root(r, constraints=replace(ROOT_CONS, max_depth=1))
    second = extend(r, first)
    return [first.compact, second.compact, extend(r, second, issuer=HOST_C).compact]


def too_long(r: Realm) -> list[str]:
    """MAX_CHAIN + 1 links that would otherwise all be fine (no max_depth anywhere)."""
    chain = [root(r, constraints=replace(ROOT_CONS, max_depth=None))]
    while len(chain) <= MAX_CHAIN:
        chain.append(extend(r, chain[-1], audience=HOST_B))
    return [g.compact for g in chain]


def revoked_child(r: Realm) -> list[str]:
    first = root(r)
    return [first.compact, extend(r, first, signer=r.b_revoked).compact]


def expired_root(r: Realm) -> list[str]:
    gone = T0 - timedelta(minutes=10)  # beyond the 60 s leeway
    first = root(r, expires_at=gone)
    return [first.compact, extend(r, first).compact]


def tampered(r: Realm) -> str:
    """An honest signature over the honest claims, and a payload that asks for more."""
    honest = root(r)
    more = claims_of(honest) | {"cap": caps(("pubsub:*", ["publish", "subscribe"])).to_claim()}
    head, _, signature = honest.compact.split(".")
    return f"{head}.{b64(to_json(more))}.{signature}"


def alg_none(signature: bytes) -> Callable[[Realm], str]:
    def make(r: Realm) -> str:
        return jws(header_of(r.a, alg="none"), root_claims(), lambda _: signature)

    return make


def hmac_with_public_key(encoding: serialization.Encoding) -> Callable[[Realm], str]:
    """HS256 keyed with HOST_A's *public* key, as a confused verifier would check it."""

    def make(r: Realm) -> str:
        public = serialization.load_der_public_key(r.a.public_key).public_bytes(
            encoding, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return jws(
            header_of(r.a, alg="HS256"),
            root_claims(),
            lambda message: hmac.new(public, message, hashlib.sha256).digest(),
        )

    return make


def es256_under_ed25519_record(r: Realm) -> str:
    # A real P-256 signature, by a key the attacker holds, naming HOST_A's Ed25519 key.
    return jws(header_of(r.a, alg="ES256"), root_claims(), by(r.outsider))


def eddsa_under_p256_record(r: Realm, parent: Grant) -> str:
    # HOST_B's record is ES256; a real Ed25519 signature (by another org-b key) under its kid.
    claims = claims_of(extend(r, parent))
    return jws(header_of(r.b, alg="EdDSA"), claims, by(r.b2))


def duplicate_header_alg(r: Realm) -> str:
    raw = to_json(header_of(r.a))[:-1] + b',"alg":"none"}'
    return jws(raw, root_claims(), by(r.a))


def duplicate_payload_iss(r: Realm) -> str:
    raw = to_json(root_claims())[:-1] + f',"iss":"{HOST_B}"}}'.encode()
    return jws(header_of(r.a), raw, by(r.a))


def missing_claim(name: str) -> Callable[[Realm], str]:
    def make(r: Realm) -> str:
        claims = root_claims()
        del claims[name]
        return jws(header_of(r.a), claims, by(r.a))

    return make


def respelled_signature(char: str, replacement: str) -> Callable[[Realm], str]:
    """The same signature bytes in the standard base64 alphabet ('-' → '+', '_' → '/')."""

    def make(r: Realm) -> str:
        honest = root_whose_signature_has(r, char).compact
        signature = honest.split(".")[2]
        return replace_signature(honest, signature.replace(char, replacement))

    return make


def signature_low_bits(r: Realm) -> str:
    honest = root(r).compact
    return replace_signature(honest, with_low_bits_set(honest.split(".")[2]))


def signature_padded(r: Realm) -> str:
    honest = root(r).compact
    signature = honest.split(".")[2]
    return replace_signature(honest, signature + "=" * (-len(signature) % 4))


CASES = [
    # --- capabilities: a child asks for more than its parent has --------------------------
    Case(
        "cap-wildcard-wider",
        child_with(capabilities=caps(("pubsub:*", ["publish"]))),
        CapabilityWideningError,
        "pubsub:* is every topic; the parent has only alerts/*",
        "pubsub:* publish is wider than parent pubsub:alerts/*",
    ),
    Case(
        "cap-extra-action",
        child_with(capabilities=caps(("pubsub:alerts/*", ["publish", "subscribe"]))),
        CapabilityWideningError,
        "the parent may only publish on alerts/*",
        "subscribe",
    ),
    Case(
        "cap-extra-action-on-state",
        child_with(capabilities=caps(("state:self", ["read", "write"]))),
        CapabilityWideningError,
        "the parent may only read state:self",
        "state:self write",
    ),
    Case(
        "cap-new-resource-kind",
        child_with(
            capabilities=caps(
                ("pubsub:alerts/*", ["publish"]), ("invoke:payments/charge", ["invoke"])
            )
        ),
        CapabilityWideningError,
        "the parent grants no invoke at all",
        "invoke:payments/charge invoke",
    ),
    Case(
        "pattern-wildcard-under-exact",
        child_with(
            parent={"capabilities": caps(("pubsub:alerts/overdue", ["publish"]))},
            capabilities=caps(("pubsub:alerts/*", ["publish"])),
        ),
        CapabilityWideningError,
        "alerts/* is wider than the one topic alerts/overdue",
        "pubsub:alerts/* publish is wider than parent pubsub:alerts/overdue",
    ),
    Case(
        "pattern-bare-prefix-under-wildcard",
        child_with(capabilities=caps(("pubsub:alerts", ["publish"]))),
        CapabilityWideningError,
        "alerts/* is everything strictly below alerts, not alerts itself",
        "child pubsub:alerts publish",
    ),
    Case(
        "pattern-sibling-name",
        child_with(capabilities=caps(("pubsub:alerts-x/*", ["publish"]))),
        CapabilityWideningError,
        "alerts-x is not below alerts, however the strings compare",
        "pubsub:alerts-x/*",
    ),
    # --- constraints: only ever tighter -----------------------------------------------
    Case(
        "hosts-wider",
        child_with(
            constraints=replace(
                ROOT_CONS, hosts=hosts("spiffe://org-b.example/*", "spiffe://org-c.example/*")
            )
        ),
        ConstraintWideningError,
        "every org-b host is more than org-b's /cluster/* hosts",
        "spiffe://org-b.example/* is wider than the parent's spiffe://org-b.example/cluster/*",
    ),
    Case(
        "hosts-new-domain",
        child_with(
            constraints=replace(
                ROOT_CONS,
                hosts=hosts(
                    "spiffe://org-b.example/cluster/*",
                    "spiffe://org-c.example/*",
                    "spiffe://org-d.example/*",
                ),
            )
        ),
        ConstraintWideningError,
        "org-d is outside the parent's hosts",
        "spiffe://org-d.example/*",
    ),
    Case(
        "hosts-dropped",
        child_with(constraints=replace(ROOT_CONS, hosts=None)),
        ConstraintWideningError,
        "no hosts constraint means any host",
        "drops the parent's hosts",
    ),
    Case(
        "regions-wider",
        child_with(constraints=replace(ROOT_CONS, regions=frozenset({"eu-west", "us-east"}))),
        ConstraintWideningError,
        "us-east is not a parent region",
        "us-east",
    ),
    Case(
        "regions-dropped",
        child_with(constraints=replace(ROOT_CONS, regions=None)),
        ConstraintWideningError,
        "no regions constraint means any region",
        "drops the parent's regions",
    ),
    Case(
        "max-hops-higher",
        child_with(constraints=replace(ROOT_CONS, max_hops=4)),
        ConstraintWideningError,
        "4 handoffs where the parent allows 3",
        "max_hops 4 is higher than the parent's 3",
    ),
    Case(
        "max-hops-dropped",
        child_with(constraints=replace(ROOT_CONS, max_hops=None)),
        ConstraintWideningError,
        "no max_hops means unlimited handoffs",
        "drops the parent's max_hops",
    ),
    Case(
        "max-depth-higher",
        child_with(constraints=replace(ROOT_CONS, max_depth=4)),
        ConstraintWideningError,
        "4 delegations where the parent allows 3",
        "max_depth 4 is higher than the parent's 3",
    ),
    Case(
        "max-depth-dropped",
        child_with(constraints=replace(ROOT_CONS, max_depth=None)),
        ConstraintWideningError,
        "no max_depth means unlimited delegation",
        "drops the parent's max_depth",
    ),
    # --- lifetime ------------------------------------------------------------------------
    Case(
        "exp-after-parent",
        child_with(expires_at=EXP + timedelta(hours=1)),
        LifetimeWideningError,
        "a child cannot outlive its parent",
        "grant 1 expires",
    ),
    Case(
        "nbf-before-parent",
        child_with(not_before=NBF - timedelta(hours=1)),
        LifetimeWideningError,
        "a child cannot start before its parent",
        "grant 1 is valid (nbf",
    ),
    # --- who, for what, and how the links hang together ------------------------------------
    Case(
        "sub-switched",
        child_with(subject=OTHER_OBJECT),
        SubjectMismatchError,
        "a grant for one object cannot be reused for another",
        OTHER_OBJECT,
    ),
    Case(
        "root-for-another-object",
        lambda r: [root(r, subject=OTHER_OBJECT).compact],
        SubjectMismatchError,
        "the chain is presented for OBJECT",
        f"the root grant is for {OTHER_OBJECT}",
    ),
    Case(
        "iss-not-parent-aud",
        child_with(issuer=HOST_B2),
        IssuerMismatchError,
        "the root is addressed to HOST_B; HOST_B2 (same domain) may not extend it",
        f"issued by {HOST_B2}, but only {HOST_B} may extend grant 0",
    ),
    Case(
        "domain-aud-other-domain-issuer",
        child_with(parent={"audience": DOMAIN_B}, issuer=HOST_C),
        IssuerMismatchError,
        "an audience of all org-b admits no org-c host",
        f"issued by {HOST_C}, but only {DOMAIN_B} may extend",
    ),
    Case(
        "prf-missing",
        child_with(unlinked=True),
        ParentDigestError,
        "a second root placed as a child is not linked to the first",
        "prf None",
    ),
    Case(
        "prf-of-another-grant",
        wrong_parent,
        ParentDigestError,
        "the child was issued under a sibling root, not this one",
        "does not point at grant 0",
    ),
    Case(
        "grants-reversed",
        reversed_pair,
        ParentDigestError,
        "a chain starts at its root",
        "the first grant names a parent",
    ),
    Case(
        "grants-out-of-order",
        skipped_link,
        ParentDigestError,
        "root, grandchild, child: the grandchild does not point at the root",
        "grant 1 does not point at grant 0",
    ),
    Case(
        "root-by-foreign-domain",
        lambda r: [root(r, issuer=HOST_B).compact],
        RootIssuerError,
        "only org-a can issue the root grant of an org-a object",
        "belongs to org-a.example",
    ),
    Case(
        "no-grants",
        lambda r: [],
        RootIssuerError,
        "an empty chain is not an empty authority, it is no chain",
        "carries no grants",
    ),
    Case(
        "depth-overflow",
        too_deep,
        DepthExceededError,
        "max_depth 1 and a chain of three grants (two delegations)",
        "chain has 2 delegations; its grants allow 1",
    ),
    Case(
        "chain-longer-than-max",
        too_long,
        DepthExceededError,
        "refused before any signature is checked, to bound the work",
        f"at most {MAX_CHAIN}",
    ),
    # --- keys and time ---------------------------------------------------------------------
    Case(
        "revoked-issuer-key",
        revoked_child,
        RevokedKeyError,
        "org-b revoked the key that signed the child",
        "is revoked",
    ),
    Case(
        "expired-parent",
        expired_root,
        ExpiredError,
        "the root expired 10 minutes before T0, beyond the 60 s leeway",
        "expired at",
    ),
    Case(
        "parent-not-yet-valid",
        lambda r: [root(r, not_before=T0 + timedelta(minutes=10)).compact],
        ExpiredError,
        "nbf 10 minutes after T0, beyond the leeway",
        "is not valid until",
    ),
    Case(
        "issued-in-the-future",
        only(lambda r: forged_root(r, iat=int((T0 + timedelta(hours=1)).timestamp()))),
        ExpiredError,
        "iat an hour after T0: a clock that far off is not trusted",
        "issued in the future",
    ),
    Case(
        "kid-of-another-domain",
        only(lambda r: jws(header_of(r.b), root_claims(), by(r.b))),
        UntrustedKeyError,
        "org-b's key cannot sign for an org-a issuer",
        "(it is a key of org-b.example)",
    ),
    Case(
        "kid-unknown",
        only(lambda r: jws(header_of(r.outsider), root_claims(), by(r.outsider))),
        UntrustedKeyError,
        "a key in no bundle",
        "is not a key of the issuer's domain org-a.example",
    ),
    Case(
        "kid-of-another-host",
        only(lambda r: jws(header_of(r.a2), root_claims(), by(r.a2))),
        UntrustedKeyError,
        "HOST_A2's key is limited to HOST_A2",
        f"may not sign for host {HOST_A}",
    ),
    Case(
        "kid-without-grant-purpose",
        only(lambda r: jws(header_of(r.a_envelope), root_claims(), by(r.a_envelope))),
        UntrustedKeyError,
        "an envelope key may not sign grants",
        "not grant",
    ),
    Case(
        "issuer-domain-untrusted",
        only(lambda r: jws(header_of(r.outsider), root_claims(iss=HOST_D), by(r.outsider))),
        UntrustedKeyError,
        "no bundle for org-d.example",
        "no trust bundle for org-d.example",
    ),
    # --- JWT attacks ---------------------------------------------------------------------------
    Case(
        "alg-none-empty-signature",
        only(alg_none(b"")),
        GrantFormatError,
        "an empty signature segment is not a grant (refused before the header is read)",
        "three non-empty base64url segments",
    ),
    Case(
        "alg-none-junk-signature",
        only(alg_none(b"junk")),
        GrantAlgorithmError,
        "well-formed bytes, but the record pins EdDSA",
        "alg 'none'",
    ),
    Case(
        "hs256-public-key-pem-as-secret",
        only(hmac_with_public_key(serialization.Encoding.PEM)),
        GrantAlgorithmError,
        "HMAC keyed with the public PEM: classic key confusion",
        "alg 'HS256'",
    ),
    Case(
        "hs256-public-key-der-as-secret",
        only(hmac_with_public_key(serialization.Encoding.DER)),
        GrantAlgorithmError,
        "HMAC keyed with the public DER",
        "alg 'HS256'",
    ),
    Case(
        "es256-under-ed25519-record",
        only(es256_under_ed25519_record),
        GrantAlgorithmError,
        "a real P-256 signature under a kid whose record is Ed25519",
        "alg 'ES256', but key",
    ),
    Case(
        "eddsa-under-p256-record",
        under_root(eddsa_under_p256_record),
        GrantAlgorithmError,
        "a real Ed25519 signature under a kid whose record is ES256",
        "alg 'EdDSA', but key",
    ),
    Case(
        "typ-jwt",
        only(lambda r: forged_root(r, header={"typ": "JWT"})),
        GrantHeaderError,
        "an ordinary JWT (an ID token, say) is not a grant",
        "typ is 'JWT'",
    ),
    Case(
        "typ-missing",
        only(lambda r: jws({"alg": "EdDSA", "kid": r.a.key_id}, root_claims(), by(r.a))),
        GrantHeaderError,
        "a token that does not say it is a grant is not one",
        "typ is None",
    ),
    Case(
        "crit-header",
        only(lambda r: forged_root(r, header={"crit": ["exp"]})),
        GrantHeaderError,
        "no extension is understood, so any critical one must fail",
        "critical",
    ),
    Case(
        "jwk-header",
        only(lambda r: forged_root(r, header={"jwk": {"kty": "OKP", "crv": "Ed25519", "x": ""}})),
        GrantHeaderError,
        "a key carried in the message would be the attacker's",
        "['jwk']",
    ),
    Case(
        "jku-header",
        only(lambda r: forged_root(r, header={"jku": "https://evil.example/jwks.json"})),
        GrantHeaderError,
        "a key URL in the message would be the attacker's",
        "['jku']",
    ),
    Case(
        "b64-signature-low-bits",
        only(signature_low_bits),
        GrantFormatError,
        "the same signature bytes, a second spelling",
        "signature is not canonical base64url",
    ),
    Case(
        "b64-signature-padded",
        only(signature_padded),
        GrantFormatError,
        "base64url in JWS has no padding",
        "signature is not base64url",
    ),
    Case(
        "b64-signature-plus",
        only(respelled_signature("-", "+")),
        GrantFormatError,
        "'+' is the standard alphabet, not base64url",
        "signature is not base64url",
    ),
    Case(
        "b64-signature-slash",
        only(respelled_signature("_", "/")),
        GrantFormatError,
        "'/' is the standard alphabet, not base64url",
        "signature is not base64url",
    ),
    Case(
        "header-duplicate-member",
        only(duplicate_header_alg),
        GrantFormatError,
        "two alg members: two parsers could read two algorithms",
        "repeats a member name",
    ),
    Case(
        "payload-duplicate-member",
        only(duplicate_payload_iss),
        GrantFormatError,
        "two iss members: two parsers could read two issuers",
        "repeats a member name",
    ),
    Case(
        "payload-tampered",
        only(tampered),
        BadSignatureError,
        "the right key's signature, over other claims",
        "signature does not verify",
    ),
    Case(
        "unknown-claim",
        only(lambda r: forged_root(r, scope="admin")),
        GrantFormatError,
        "a claim we do not understand might widen something we do not check",
        "unknown claims ['scope']",
    ),
    Case(
        "claim-cap-missing",
        only(missing_claim("cap")),
        GrantFormatError,
        "no cap is not 'everything'",
        "'cap' is missing",
    ),
    Case(
        "iss-not-a-host-id",
        only(lambda r: forged_root(r, iss="spiffe://org-a.example")),
        GrantFormatError,
        "a grant is issued by one host (a peer's malformed iss is not a config error)",
        "'iss' is not a host id",
    ),
    Case(
        "exp-out-of-range",
        only(lambda r: forged_root(r, exp=10**30)),
        GrantFormatError,
        "a signed but absurd time is a refusal, not a crash",
        "'exp'",
    ),
    Case(
        "aud-empty",
        only(lambda r: forged_root(r, aud="")),
        GrantFormatError,
        "an empty audience names nobody: refused as strictly as a bad iss",
        "audience ''",
    ),
    Case(
        "aud-not-spiffe",
        only(lambda r: forged_root(r, aud="org-b.example")),
        GrantFormatError,
        "a bare name is neither a host id nor a trust domain id",
        "neither a host id nor a trust domain id",
    ),
    Case(
        "aud-domain-with-slash",
        only(lambda r: forged_root(r, aud="spiffe://org-b.example/")),
        GrantFormatError,
        "a trailing slash is not a host path: one spelling per audience",
        "spiffe://org-b.example/",
    ),
    Case(
        "aud-bad-domain",
        only(lambda r: forged_root(r, aud="spiffe://Org B")),
        GrantFormatError,
        "a trust domain is lower-case DNS-like text",
        "not a trust domain",
    ),
    Case(
        "aud-empty-array",
        only(lambda r: forged_root(r, aud=[])),
        GrantFormatError,
        "an empty array names nobody",
        "non-empty array",
    ),
    Case(
        "aud-array-repeats",
        only(lambda r: forged_root(r, aud=[HOST_B, HOST_B])),
        GrantFormatError,
        "a repeated audience is a second spelling of the same claim",
        "repeats",
    ),
    Case(
        "aud-array-too-long",
        only(lambda r: forged_root(r, aud=[f"spiffe://org-{n}.example" for n in range(9)])),
        GrantFormatError,
        "a peer cannot make a verifier walk an unbounded audience list",
        "at most 8",
    ),
    Case(
        "aud-wrong-type",
        only(lambda r: forged_root(r, aud=7)),
        GrantFormatError,
        "aud is a string or an array of strings",
        "string or a non-empty array",
    ),
    Case(
        "rpl-not-digest",
        only(lambda r: forged_root(r, rpl="abc")),
        GrantFormatError,
        "a renewal names the replaced chain by its full SHA-256",
        "'rpl'",
    ),
    Case(
        "home-not-host",
        only(lambda r: forged_root(r, home="spiffe://org-a.example")),
        GrantFormatError,
        "a custody home is one gateway, not a whole domain",
        "'home'",
    ),
    Case(
        "rpl-on-child",
        under_root(lambda r, parent: forged_child(r, parent, rpl="00" * 32)),
        GrantFormatError,
        "only the owner's root may renew a chain",
        "only a root grant",
    ),
    Case(
        "home-on-child",
        under_root(lambda r, parent: forged_child(r, parent, home=HOST_A)),
        GrantFormatError,
        "a child cannot move the custody home",
        "only a root grant",
    ),
    Case(
        "grant-too-large",
        only(lambda r: forged_root(r, jti="x" * 20_000)),
        GrantFormatError,
        "size is bounded before anything is parsed",
        "at most 16384",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_chain_is_refused(case: Case, realm: Realm) -> None:
    grants = case.build(realm)
    with pytest.raises(GatewayError) as caught:
        verify_chain(grants, object_id=OBJECT, trust=realm.trust, at=T0)
    error = caught.value
    assert type(error) is case.error, f"{case.reason}: got {error.diagnostics()}"
    assert isinstance(error.reason, str) and error.reason.strip()
    assert case.mentions in error.reason, f"{case.reason}: reason was {error.reason!r}"


def test_table_has_one_case_per_attack() -> None:
    names = [c.name for c in CASES]
    assert len(names) == len(set(names))
    assert all(c.reason and c.mentions for c in CASES)
    expected = {
        BadSignatureError,
        CapabilityWideningError,
        ConstraintWideningError,
        DepthExceededError,
        ExpiredError,
        GrantAlgorithmError,
        GrantFormatError,
        GrantHeaderError,
        IssuerMismatchError,
        LifetimeWideningError,
        ParentDigestError,
        RevokedKeyError,
        RootIssuerError,
        SubjectMismatchError,
        UntrustedKeyError,
    }
    assert {c.error for c in CASES} == expected


def test_forging_helpers_make_valid_grants(realm: Realm) -> None:
    """The control for the table: unattacked, the hand-built grants verify."""
    for first in (
        forged_root(realm),
        jws({"typ": GRANT_TYPE, "kid": realm.a.key_id, "alg": "EdDSA"}, root_claims(), by(realm.a)),
    ):
        assert (
            verify_chain([first], object_id=OBJECT, trust=realm.trust, at=T0).leaf.issuer == HOST_A
        )
    parent = root(realm)
    child = jws(header_of(realm.b), claims_of(extend(realm, parent)), by(realm.b))
    verify_chain([parent.compact, child], object_id=OBJECT, trust=realm.trust, at=T0)
    for build in (child_with(), lambda r: [root(r, audience=DOMAIN_B).compact]):
        verify_chain(build(realm), object_id=OBJECT, trust=realm.trust, at=T0)


# --- chains that verify, and attenuate -------------------------------------------------


def test_root_and_two_attenuations_verify(realm: Realm) -> None:
    first = root(realm)
    chain = verify_chain([first.compact], object_id=OBJECT, trust=realm.trust, at=T0)
    narrower = caps(("pubsub:alerts/overdue", ["publish"]), ("state:self", ["read"]))
    second = attenuate(
        chain,
        signer=realm.b,
        issuer=HOST_B,
        audience=HOST_C,
        at=T0,
        capabilities=narrower,
        constraints=replace(ROOT_CONS, regions=frozenset({"eu-west"}), max_hops=2),
    )
    chain = verify_chain(
        [first.compact, second.compact], object_id=OBJECT, trust=realm.trust, at=T0
    )
    third = attenuate(
        chain,
        signer=realm.c,
        issuer=HOST_C,
        audience=HOST_C,
        at=T0,
        capabilities=caps(("pubsub:alerts/overdue", ["publish"])),
        expires_at=T0 + timedelta(hours=2),
    )
    grants = [first.compact, second.compact, third.compact]
    verified = verify_chain(grants, object_id=OBJECT, trust=realm.trust, at=T0)
    assert [g.compact for g in verified.grants] == grants
    assert verified.depth == 2
    assert [g.issuer for g in verified.grants] == [HOST_A, HOST_B, HOST_C]
    assert verified.capabilities == caps(("pubsub:alerts/overdue", ["publish"]))
    assert verified.constraints.regions == frozenset({"eu-west"})
    assert verified.constraints.max_hops == 2
    assert verified.leaf.expires_at == T0 + timedelta(hours=2)
    assert verified.capabilities.permits("pubsub:alerts/overdue", "publish")
    assert not verified.capabilities.permits("pubsub:alerts/late", "publish")
    assert not verified.capabilities.permits("state:self", "read")


def test_attenuate_keeps_what_it_is_not_given(realm: Realm) -> None:
    first = root(realm)
    chain = verify_chain([first.compact], object_id=OBJECT, trust=realm.trust, at=T0)
    child = attenuate(chain, signer=realm.b, issuer=HOST_B, audience=HOST_C, at=T0)
    assert child.capabilities == first.capabilities
    assert child.constraints == first.constraints
    assert child.expires_at == first.expires_at
    assert child.not_before == first.not_before
    assert child.subject == OBJECT
    assert (child.issuer, child.audience, child.issued_at) == (HOST_B, HOST_C, T0)
    assert child.parent_digest == first.digest == grant_digest(first.compact)
    assert child.grant_id != first.grant_id
    verify_chain([first.compact, child.compact], object_id=OBJECT, trust=realm.trust, at=T0)


def test_domain_audience_lets_any_host_of_that_domain_extend(realm: Realm) -> None:
    first = root(realm, audience=DOMAIN_B)
    chain = verify_chain([first.compact], object_id=OBJECT, trust=realm.trust, at=T0)
    for host in (HOST_B, HOST_B2):
        child = attenuate(chain, signer=realm.signer_of[host], issuer=host, audience=HOST_C, at=T0)
        verify_chain([first.compact, child.compact], object_id=OBJECT, trust=realm.trust, at=T0)
    with pytest.raises(IssuerMismatchError, match="cannot extend"):
        attenuate(chain, signer=realm.c, issuer=HOST_C, audience=HOST_C, at=T0)


@pytest.mark.parametrize(
    ("audience", "issuer", "admits"),
    [
        (HOST_B, HOST_B, True),
        (HOST_B, HOST_B2, False),
        (DOMAIN_B, HOST_B, True),
        (DOMAIN_B, HOST_B2, True),
        (DOMAIN_B, HOST_C, False),
        ("spiffe://org-b.example/", HOST_B, False),  # not a domain: a trailing slash
        ("spiffe://org-b.example/cluster", HOST_B, False),  # a path is a host, not a prefix
        ("spiffe://org-b", HOST_B, False),  # domains compare whole, not by prefix
        ("spiffe://org-b.example.evil", HOST_B, False),
        ("org-b.example", HOST_B, False),  # no scheme: not an audience form
    ],
)
def test_audience_admits(audience: str, issuer: str, admits: bool) -> None:
    assert audience_admits(audience, issuer) is admits


@dataclass(frozen=True, slots=True)
class Refusal:
    name: str
    request: Mapping[str, Any]  #: keyword arguments to attenuate
    error: type[GatewayError]
    reason: str


REFUSALS = [
    Refusal(
        "capability-wider",
        {"capabilities": caps(("pubsub:*", ["publish"]))},
        CapabilityWideningError,
        "pubsub:* under pubsub:alerts/*",
    ),
    Refusal(
        "action-added",
        {"capabilities": caps(("state:self", ["read", "write"]))},
        CapabilityWideningError,
        "write where the parent reads",
    ),
    Refusal(
        "pattern-trick",
        {"capabilities": caps(("pubsub:alerts", ["publish"]))},
        CapabilityWideningError,
        "alerts itself is not below alerts/",
    ),
    Refusal(
        "hosts-dropped",
        {"constraints": replace(ROOT_CONS, hosts=None)},
        ConstraintWideningError,
        "omitted means unconstrained",
    ),
    Refusal(
        "regions-wider",
        {"constraints": replace(ROOT_CONS, regions=frozenset({"us-east"}))},
        ConstraintWideningError,
        "a region the parent lacks",
    ),
    Refusal(
        "max-hops-higher",
        {"constraints": replace(ROOT_CONS, max_hops=9)},
        ConstraintWideningError,
        "more handoffs",
    ),
    Refusal(
        "max-depth-higher",
        {"constraints": replace(ROOT_CONS, max_depth=9)},
        ConstraintWideningError,
        "more delegations",
    ),
    Refusal(
        "outlives-parent",
        {"expires_at": EXP + timedelta(seconds=1)},
        LifetimeWideningError,
        "one second is enough",
    ),
    Refusal(
        "not-the-audience",
        {"issuer": HOST_B2},
        IssuerMismatchError,
        "the root is addressed to HOST_B only",
    ),
    Refusal(
        "max-depth-below-its-own-depth",
        {"constraints": replace(ROOT_CONS, max_depth=0)},
        DepthExceededError,
        "a child at depth 1 that allows 0 delegations would never verify",
    ),
]


@pytest.mark.parametrize("refusal", REFUSALS, ids=[r.name for r in REFUSALS])
def test_attenuate_refuses_widening(refusal: Refusal, realm: Realm) -> None:
    first = root(realm)
    chain = verify_chain([first.compact], object_id=OBJECT, trust=realm.trust, at=T0)
    request = {"issuer": HOST_B, "audience": HOST_C, **refusal.request}
    with pytest.raises(GatewayError) as caught:
        attenuate(chain, signer=realm.signer_of[request["issuer"]], at=T0, **request)
    assert type(caught.value) is refusal.error, refusal.reason
    assert caught.value.reason


def test_attenuate_refuses_past_the_chain_depth(realm: Realm) -> None:
    first = root(realm, constraints=replace(ROOT_CONS, max_depth=1))
    second = extend(realm, first, audience=HOST_B)
    chain = verify_chain(
        [first.compact, second.compact], object_id=OBJECT, trust=realm.trust, at=T0
    )
    with pytest.raises(DepthExceededError, match="allows 1 delegations"):
        attenuate(chain, signer=realm.b, issuer=HOST_B, audience=HOST_C, at=T0)


def test_a_chain_of_max_chain_grants_verifies_and_attenuate_stops_there(realm: Realm) -> None:
    grants = too_long(realm)[:MAX_CHAIN]
    chain = verify_chain(grants, object_id=OBJECT, trust=realm.trust, at=T0)
    assert chain.depth == MAX_CHAIN - 1
    with pytest.raises(DepthExceededError, match=f"at most {MAX_CHAIN}"):
        attenuate(chain, signer=realm.b, issuer=HOST_B, audience=HOST_B, at=T0)


def test_both_algorithms_sign_and_verify(realm: Realm) -> None:
    org_b_object = "obj://org-b.example/ledger/7"
    for signer, issuer, object_id in ((realm.a, HOST_A, OBJECT), (realm.b, HOST_B, org_b_object)):
        grant = root(realm, signer=signer, issuer=issuer, subject=object_id)
        assert verify_grant(grant.compact, trust=realm.trust, at=T0) == grant
        verify_chain([grant.compact], object_id=object_id, trust=realm.trust, at=T0)


def test_validity_is_judged_at_the_given_time_not_the_wall_clock(realm: Realm) -> None:
    """T0 is years from now: a verifier that used the wall clock would refuse (or accept)
    these for the wrong reason."""
    grant = root(realm, not_before=T0, expires_at=T0 + timedelta(hours=1)).compact
    verify_grant(grant, trust=realm.trust, at=T0)
    leeway = timedelta(seconds=60)
    verify_grant(grant, trust=realm.trust, at=T0 - leeway)  # nbf within the leeway
    with pytest.raises(ExpiredError, match="not valid until"):
        verify_grant(grant, trust=realm.trust, at=T0 - leeway - timedelta(seconds=1))
    end = T0 + timedelta(hours=1)
    verify_grant(grant, trust=realm.trust, at=end + leeway - timedelta(seconds=1))
    with pytest.raises(ExpiredError, match="expired at"):
        verify_grant(grant, trust=realm.trust, at=end + leeway)  # exp is exclusive
    with pytest.raises(ExpiredError):
        verify_grant(grant, trust=realm.trust, at=end, leeway=timedelta(0))


def test_grant_digest_is_sha256_of_the_exact_bytes(realm: Realm) -> None:
    compact = root(realm).compact
    assert unb64(grant_digest(compact)) == hashlib.sha256(compact.encode()).digest()
    assert "=" not in grant_digest(compact)


# --- properties -------------------------------------------------------------------------

_SEGMENTS = ("a", "b")  #: few segments, so that patterns often nest or collide
_HOST_SEGMENTS = ("x", "y")
_REGIONS = ("eu", "us")


def _paths(alphabet: tuple[str, ...], sizes: tuple[int, ...]) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = [()]
    result: list[tuple[str, ...]] = []
    for size in range(1, max(sizes) + 1):
        found = [(*path, s) for path in found for s in alphabet]
        if size in sizes:
            result.extend(found)
    return result


#: Concrete resources and hosts with one fresh segment (``z``) beyond the alphabet. A
#: pattern over the alphabet of at most two segments is inside another exactly when
#: every sample it matches, the other matches: ``P/*`` always has the witness ``P/z``.
RESOURCES = tuple(
    Resource(kind=kind, segments=path)
    for kind in ("pubsub", "state")
    for path in _paths((*_SEGMENTS, "z"), (1, 2, 3))
)
HOSTS = tuple(
    HostId(trust_domain=domain, path="/" + "/".join(path))
    for domain in ("org-b.example", "org-c.example")
    for path in _paths((*_HOST_SEGMENTS, "z"), (1, 2, 3))
)


@st.composite
def resource_patterns(draw: st.DrawFn) -> ResourcePattern:
    kind = draw(st.sampled_from(("pubsub", "state")))
    segments = tuple(draw(st.lists(st.sampled_from(_SEGMENTS), max_size=2)))
    wildcard = draw(st.booleans()) if segments else True
    return ResourcePattern(kind=kind, segments=segments, wildcard=wildcard)


@st.composite
def capability_sets(draw: st.DrawFn) -> CapabilitySet:
    entries = []
    for pattern in draw(st.lists(resource_patterns(), max_size=3)):
        actions = draw(st.sets(st.sampled_from(sorted(ACTIONS[pattern.kind])), min_size=1))
        entries.append(Capability(resource=pattern, actions=frozenset(actions)))
    return CapabilitySet(capabilities=tuple(entries))


@st.composite
def host_patterns(draw: st.DrawFn) -> HostPattern:
    domain = draw(st.sampled_from(("org-b.example", "org-b.example", "org-c.example")))
    segments = tuple(draw(st.lists(st.sampled_from(_HOST_SEGMENTS), max_size=2)))
    wildcard = draw(st.booleans()) if segments else True
    return HostPattern(trust_domain=domain, segments=segments, wildcard=wildcard)


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


constraint_sets = st.builds(
    Constraints,
    hosts=_maybe(st.lists(host_patterns(), max_size=2).map(tuple)),
    regions=_maybe(st.frozensets(st.sampled_from(_REGIONS))),
    max_hops=_maybe(st.integers(0, 3)),
    max_depth=_maybe(st.integers(0, 3)),
)


def _deeper(
    draw: st.DrawFn, segments: tuple[str, ...], wildcard: bool
) -> tuple[tuple[str, ...], bool]:
    """The same pattern, or (for a wildcard) one inside it."""
    if wildcard and draw(st.booleans()):
        child = (*segments, draw(st.sampled_from(_SEGMENTS)))
        return child, draw(st.booleans())
    return segments, wildcard


@st.composite
def narrowed_capabilities(draw: st.DrawFn, parent: CapabilitySet) -> CapabilitySet:
    """A request built from the parent's own capabilities, usually within it."""
    entries = []
    for capability in parent:
        if not draw(st.booleans()):
            continue
        segments, wildcard = _deeper(
            draw, capability.resource.segments, capability.resource.wildcard
        )
        actions = draw(st.sets(st.sampled_from(sorted(capability.actions)), min_size=1))
        pattern = ResourcePattern(
            kind=capability.resource.kind, segments=segments, wildcard=wildcard
        )
        entries.append(Capability(resource=pattern, actions=frozenset(actions)))
    return CapabilitySet(capabilities=tuple(entries))


@st.composite
def narrowed_constraints(draw: st.DrawFn, parent: Constraints) -> Constraints:
    """A request built from the parent's own constraints, usually at least as tight."""
    found: tuple[HostPattern, ...] | None = None
    if parent.hosts is not None:
        found = tuple(
            HostPattern(trust_domain=h.trust_domain, segments=s, wildcard=w)
            for h in parent.hosts
            if draw(st.booleans())
            for s, w in [_deeper(draw, h.segments, h.wildcard)]
        )
    regions = parent.regions
    if regions is not None:
        regions = draw(st.frozensets(st.sampled_from(sorted(regions)))) if regions else regions

    def lower(value: int | None) -> int | None:
        return None if value is None else draw(st.integers(0, value))

    return Constraints(
        hosts=found,
        regions=regions,
        max_hops=lower(parent.max_hops),
        max_depth=lower(parent.max_depth),
    )


def _caps_within(child: CapabilitySet, parent: CapabilitySet) -> bool:
    """The oracle: brute force over the samples, never calling require_subset_of."""
    return all(
        parent.permits(resource, action)
        for resource in RESOURCES
        for action in ACTIONS[resource.kind]
        if child.permits(resource, action)
    )


def _hosts_within(
    child: tuple[HostPattern, ...] | None, parent: tuple[HostPattern, ...] | None
) -> bool:
    if parent is None:
        return True
    if child is None:
        return False
    return all(
        any(p.matches(host) for p in parent)
        for host in HOSTS
        if any(c.matches(host) for c in child)
    )


def _at_most(child: int | None, parent: int | None) -> bool:
    return parent is None or (child is not None and child <= parent)


def _constraints_within(child: Constraints, parent: Constraints) -> bool:
    return (
        _hosts_within(child.hosts, parent.hosts)
        and (
            parent.regions is None
            or (child.regions is not None and child.regions <= parent.regions)
        )
        and _at_most(child.max_hops, parent.max_hops)
        and _at_most(child.max_depth, parent.max_depth)
    )


def _admits(constraints: Constraints, host: HostId, region: str, hops: int) -> bool:
    try:
        constraints.admit(host, region, hops)
    except AdmissionDeniedError:
        return False
    return True


_EXPIRIES = (None, EXP + timedelta(hours=1), EXP, EXP - timedelta(hours=1), T0 + timedelta(hours=1))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    parent_caps=capability_sets(),
    parent_cons=constraint_sets,
    via_intermediate=st.booleans(),
    requested_exp=st.sampled_from(_EXPIRIES),
    data=st.data(),
)
def test_attenuate_never_widens(
    parent_caps: CapabilitySet,
    parent_cons: Constraints,
    via_intermediate: bool,
    requested_exp: datetime | None,
    data: st.DataObject,
) -> None:
    """Requests are random (often wider) or cut from the parent (often narrower)."""
    requested_caps: CapabilitySet | None = data.draw(
        st.one_of(st.none(), capability_sets(), narrowed_capabilities(parent_caps)),
        label="requested capabilities",
    )
    requested_cons: Constraints | None = data.draw(
        st.one_of(st.none(), constraint_sets, narrowed_constraints(parent_cons)),
        label="requested constraints",
    )
    r = _REALM
    first = root(r, audience=DOMAIN_B, capabilities=parent_caps, constraints=parent_cons)
    chain = verify_chain([first.compact], object_id=OBJECT, trust=r.trust, at=T0)
    if via_intermediate and parent_cons.max_depth != 0:
        # An intermediate that keeps everything: the checks must hold at any depth.
        middle = attenuate(chain, signer=r.b, issuer=HOST_B, audience=DOMAIN_B, at=T0)
        grants = [first.compact, middle.compact]
        chain = verify_chain(grants, object_id=OBJECT, trust=r.trust, at=T0)
    event(f"parent depth {chain.depth}")
    parent = chain.leaf
    wanted_caps = requested_caps if requested_caps is not None else parent.capabilities
    wanted_cons = requested_cons if requested_cons is not None else parent.constraints
    wanted_exp = requested_exp or parent.expires_at
    limits = [g.constraints.max_depth for g in chain.grants] + [wanted_cons.max_depth]
    limit = min((d for d in limits if d is not None), default=None)
    violated = {
        CapabilityWideningError: not _caps_within(wanted_caps, parent.capabilities),
        ConstraintWideningError: not _constraints_within(wanted_cons, parent.constraints),
        LifetimeWideningError: wanted_exp > parent.expires_at,
        DepthExceededError: limit is not None and chain.depth + 1 > limit,
    }
    # attenuate checks capabilities, constraints, lifetime, depth; verify_chain checks
    # lifetime, capabilities, constraints (per link), then depth.
    attenuate_order = (
        CapabilityWideningError,
        ConstraintWideningError,
        LifetimeWideningError,
        DepthExceededError,
    )
    verify_order = (
        LifetimeWideningError,
        CapabilityWideningError,
        ConstraintWideningError,
        DepthExceededError,
    )
    expected = next((e for e in attenuate_order if violated[e]), None)
    grants = [g.compact for g in chain.grants]
    request: dict[str, Any] = {
        "capabilities": requested_caps,
        "constraints": requested_cons,
        "expires_at": requested_exp,
    }
    if expected is not None:
        event(f"refused: {expected.__name__}")
        with pytest.raises((WideningError, ChainError)) as caught:
            attenuate(chain, signer=r.b2, issuer=HOST_B2, audience=HOST_C, at=T0, **request)
        assert type(caught.value) is expected, caught.value.diagnostics()
        # Forged anyway, the same child is refused by every verifier.
        forged = extend(
            r,
            parent,
            issuer=HOST_B2,
            capabilities=wanted_caps,
            constraints=wanted_cons,
            expires_at=wanted_exp,
        )
        with pytest.raises((WideningError, ChainError)) as refused:
            verify_chain([*grants, forged.compact], object_id=OBJECT, trust=r.trust, at=T0)
        assert type(refused.value) is next(e for e in verify_order if violated[e])
        return
    child = attenuate(chain, signer=r.b2, issuer=HOST_B2, audience=HOST_C, at=T0, **request)
    same = (child.capabilities, child.constraints) == (parent.capabilities, parent.constraints)
    event("accepted, same authority" if same else "accepted, narrower")
    child.capabilities.require_subset_of(parent.capabilities)
    child.constraints.require_narrower_than(parent.constraints)
    assert child.expires_at <= parent.expires_at and child.not_before >= parent.not_before
    assert (child.capabilities, child.constraints) == (wanted_caps, wanted_cons)
    verified = verify_chain([*grants, child.compact], object_id=OBJECT, trust=r.trust, at=T0)
    assert verified.leaf == child
    for resource in RESOURCES:
        for action in ACTIONS[resource.kind]:
            if verified.capabilities.permits(resource, action):
                assert parent.capabilities.permits(resource, action), (resource, action)
    for host in HOSTS[::3]:
        for region in (*_REGIONS, "zz"):
            for hops in (0, 2, 4):
                if _admits(verified.constraints, host, region, hops):
                    assert _admits(parent.constraints, host, region, hops)


_VALID = forged_root(_REALM)
_REPLACEMENTS = _ALPHABET + ".=+/ {}\"'"


@settings(max_examples=200, deadline=None)
@given(position=st.integers(0, len(_VALID) - 1), replacement=st.sampled_from(_REPLACEMENTS))
def test_no_changed_character_is_accepted(position: int, replacement: str) -> None:
    if _VALID[position] == replacement:
        replacement = "A" if replacement != "A" else "B"
    changed = _VALID[:position] + replacement + _VALID[position + 1 :]
    segment = ("header", "payload", "signature")[min(_VALID[:position].count("."), 2)]
    event(f"changed the {segment}" if _VALID[position] != "." else "changed a separator")
    with pytest.raises((GrantError, VerificationError)) as caught:
        verify_grant(changed, trust=_REALM.trust, at=T0)
    event(f"refused: {type(caught.value).__name__}")


def test_an_empty_or_malformed_audience_is_never_issued(realm: Realm) -> None:
    for audience in ("", "org-b.example", "spiffe://org-b.example/", (), ("spiffe://x", "")):
        with pytest.raises(GrantFormatError):
            issue_grant(
                signer=realm.a,
                issuer=HOST_A,
                subject=OBJECT,
                audience=audience,
                capabilities=ROOT_CAPS,
                constraints=ROOT_CONS,
                not_before=NBF,
                expires_at=EXP,
                at=ISSUED,
            )


def test_an_audience_array_verifies_and_admits_each_of_its_holders(realm: Realm) -> None:
    grant = issue_grant(
        signer=realm.a,
        issuer=HOST_A,
        subject=OBJECT,
        audience=(HOST_A, "spiffe://org-b.example"),
        capabilities=ROOT_CAPS,
        constraints=ROOT_CONS,
        not_before=NBF,
        expires_at=EXP,
        at=ISSUED,
    )
    chain = verify_chain([grant.compact], object_id=OBJECT, trust=realm.trust, at=T0)
    assert chain.leaf.audiences == (HOST_A, "spiffe://org-b.example")
    assert audience_admits(chain.leaf.audiences, HOST_A)
    assert audience_admits(chain.leaf.audiences, HOST_B)
    assert not audience_admits(chain.leaf.audiences, "spiffe://org-c.example/x/gateway")
    assert not audience_admits(chain.leaf.audiences, "not a host")
