"""Grants and grant chains: signed credentials that can only ever be narrowed.

A grant is a compact JWS (JWT) with ``typ`` ``gateway-grant+jwt``, signed with EdDSA or
ES256 by a key whose trusted record lists the ``grant`` purpose. Claims:

=========  =================================================================
``iss``    the issuing host (``spiffe://…``)
``sub``    the object id
``aud``    who may *hold* the authority and extend the grant: a host id, a trust domain
           ``spiffe://org-b.example``, or a non-empty array of them (RFC 7519 §4.1.3)
``iat`` ``nbf`` ``exp``   issue time and validity window (seconds since the epoch)
``jti``    unique grant id
``cap``    capabilities (:class:`gateway.authority.CapabilitySet`)
``cons``   constraints (:class:`gateway.authority.Constraints`)
``prf``    base64url SHA-256 of the parent grant's exact compact bytes; absent for the root
``rpl``    root only, optional: the chain this root renews (hex SHA-256 of the replaced
           chain's credentials digest, :func:`gateway.lineage.credentials_digest`)
``home``   root only, optional: the custody home, a host of the owner's domain that
           serialises every change of holder (DESIGN.md §6)
=========  =================================================================

Checks, in this order, and why:

1. **Bytes first.** Three segments of canonical base64url (the one encoding of each
   value), a JSON header with exactly ``alg``, ``typ`` and ``kid``: no ``crit`` (we
   understand no extensions, so any critical one must fail), no ``jwk``/``jku``/``x5u``
   (keys are never taken from the message).
2. **The key is found in the issuer's own domain.** The issuer (``iss``) is read from
   the payload only to choose the trust bundle; ``kid`` must name a ``grant`` key of
   that domain, allowed for that host. A ``kid`` from another domain is refused.
3. **The algorithm is the record's.** The header's ``alg`` must equal the record's, and
   the signature is verified by PyJWT's algorithm for the record's ``alg`` (EdDSA or
   ES256 only): ``none``, HMAC and any mismatch fail before a signature is computed.
4. **Then the claims**, strictly; the validity window is checked against the caller's
   ``at`` (PyJWT would use the wall clock), and then each link against its parent (§5).
   The claims used are the ones the strict reader of step 1 parsed from the very
   segment PyJWT's JWS layer verified: one parser decides what a grant says.

Verified grants are remembered (:data:`VERIFIED_GRANTS`, a bounded LRU) by their exact
text, with the key record whose public key verified them: what a grant says and whether
a signature verifies under a given key are pure functions of those bytes. A grant seen
again is not parsed or verified again, but everything that depends on the moment or on
the trust store still runs every time: its key is looked up again in the caller's
trust store at the caller's ``at`` (retirement judged at the grant's ``iat``) and must be
the very key that verified it, and its validity window is checked at ``at``. Refusals
are never remembered: anything that does not pass on the short path goes the whole way
again, which raises exactly what it always raised.

A grant not seen before still has parts that many grants share: the header (one per
issuer key) and the ``cap`` and ``cons`` claims (one per policy). What the checks make of
each is a pure function of its exact text (the header segment as sent; the two claims as
re-serialized from what the strict reader parsed), so the last ones that passed are
remembered by that text (:data:`CHECKED_HEADERS`, :data:`PARSED_AUTHORITY`, bounded by
count and bytes). Only the checks of those parts are skipped: the grant's own payload is
decoded and read, and its signature verified, every time; a refusal is never remembered.

No I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from gateway._decode import load_json
from gateway._lru import BoundedLru
from gateway._slots import builder
from gateway._time import format_time
from gateway.authority import CapabilitySet, Constraints
from gateway.errors import (
    AuthorityFormatError,
    BadSignatureError,
    CapabilityWideningError,
    ConfigError,
    ConstraintWideningError,
    DepthExceededError,
    ExpiredError,
    GatewayError,
    GrantAlgorithmError,
    GrantFormatError,
    GrantHeaderError,
    IssuerMismatchError,
    LifetimeWideningError,
    ParentDigestError,
    RootIssuerError,
    SubjectMismatchError,
    UntrustedKeyError,
    VerificationError,
    WideningError,
)
from gateway.identity import HostId, ObjectId, trust_domain_problem
from gateway.keys import KeyRecord, Purpose, Signer
from gateway.trust import TrustStore

GRANT_TYPE = "gateway-grant+jwt"
MAX_GRANT_BYTES = 16 << 10
MAX_CHAIN = 16
_HEADER_FIELDS = frozenset({"alg", "typ", "kid"})
_CLAIMS = frozenset(
    {"iss", "sub", "aud", "iat", "nbf", "exp", "jti", "cap", "cons", "prf", "rpl", "home"}
)
#: An audience array longer than this is refused (a peer must not make us loop).
MAX_AUDIENCES = 8
_DIGEST_HEX = re.compile(r"[0-9a-f]{64}")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
#: PyJWT's algorithms, by JOSE name: one verifies each grant's signature (see
#: verify_grant).
_JWS = jwt.PyJWS()

#: Header segments that passed every header check, with the ``alg`` and ``kid`` they
#: name: a pure function of the segment's exact text (see the module docstring).
#: Typically one per issuer key; bounded, so a peer sending fresh headers only evicts.
#: Weighed at about twice a segment's length (the segment held as the key, and the
#: ``alg`` and ``kid`` it names).
CHECKED_HEADERS: BoundedLru[str, tuple[str, str]] = BoundedLru(
    256, max_weight=1 << 20, weigh=lambda checked: 128 + 4 * (len(checked[0]) + len(checked[1]))
)
#: ``cap`` and ``cons`` claims that parsed, by their JSON text as re-serialized from the
#: strict reading (:func:`_authority_key`), with what they parsed to (immutable values)
#: and that text's length (their weight, counted twice: the key and the parsed value).
PARSED_AUTHORITY: BoundedLru[str, tuple[CapabilitySet, Constraints, int]] = BoundedLru(
    1024, max_weight=4 << 20, weigh=lambda parsed: 2 * parsed[2]
)


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


#: The last character of a canonical base64url segment, by the segment's length mod 4:
#: with 2 (one byte) or 3 (two bytes) characters in the last group, its low 4 or 2 bits
#: are unused and must be zero; a full group has no unused bits.
_CANONICAL_LAST = {
    2: frozenset("AQgw"),
    3: frozenset("AEIMQUYcgkosw048"),
}


#: base64url's two letters as the standard alphabet spells them.
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")


def _b64url_decode(segment: str, what: str) -> bytes:
    """Strict base64url: the alphabet only, no padding, and only the canonical form
    (a segment whose unused low bits are not zero would be a second spelling)."""
    if not _B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise GrantFormatError(f"grant {what} is not base64url")
    try:
        # base64.urlsafe_b64decode's own steps (ASCII bytes, '-' and '_' read as '+' and
        # '/', the lenient decode), without its three Python layers: the alphabet was
        # checked above, so neither '+' nor '/' can be in the segment to be confused.
        raw = binascii.a2b_base64(
            segment.encode("ascii").translate(_FROM_URLSAFE) + b"=" * (-len(segment) % 4)
        )
    except (binascii.Error, ValueError) as exc:
        raise GrantFormatError(f"grant {what} is not base64url") from exc
    # Canonical iff encoding ``raw`` again gives ``segment``: the same test as comparing
    # with _b64url_encode(raw), without encoding the whole segment again.
    last = _CANONICAL_LAST.get(len(segment) % 4)
    if last is not None and segment[-1] not in last:
        raise GrantFormatError(
            f"grant {what} is not canonical base64url",
            hint="the grant was re-encoded or tampered with; ask its issuer for the original",
        )
    return raw


def grant_digest(compact: str) -> str:
    """What a child's ``prf`` holds: base64url SHA-256 of the parent's exact bytes."""
    return _b64url_encode(hashlib.sha256(compact.encode("ascii")).digest())


def parse_audience(audience: str) -> str:
    """``audience`` if it is a host id or a bare trust domain id; raises GrantFormatError.

    As strict as ``iss``: an empty, relative or malformed audience would either match
    nothing (an object stranded) or be matched loosely somewhere else.
    """
    if not isinstance(audience, str):
        raise GrantFormatError(f"grant audience {audience!r} is not a string")
    rest = audience.removeprefix("spiffe://")
    if audience.startswith("spiffe://") and rest and "/" not in rest:
        problem = trust_domain_problem(rest)
        if problem is None:
            return audience
        raise GrantFormatError(f"grant audience {audience!r} is not a trust domain: {problem}")
    try:
        HostId.parse(audience)
    except ConfigError as exc:
        raise GrantFormatError(
            f"grant audience {audience!r} is neither a host id nor a trust domain id: {exc.reason}",
            hint="write a host (spiffe://org-b.example/cluster/west/gateway) or a domain (spiffe://org-b.example)",
        ) from exc
    return audience


def _audiences_claim(value: object) -> tuple[str, ...]:
    """The ``aud`` claim as a tuple: a string, or a non-empty array of unique strings."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise GrantFormatError("grant claim 'aud' must be a string or a non-empty array")
    if len(items) > MAX_AUDIENCES:
        raise GrantFormatError(
            f"grant claim 'aud' lists {len(items)} audiences; at most {MAX_AUDIENCES}"
        )
    if len(set(map(str, items))) != len(items):
        raise GrantFormatError("grant claim 'aud' repeats an audience")
    return tuple(parse_audience(item) for item in items)


def audience_admits(audience: str | Sequence[str], host: str) -> bool:
    """Is ``host`` one of ``audience`` (a host, a whole domain, or several of them)?

    The audience of a grant is who may hold its authority and who may extend it.
    """
    if not isinstance(audience, str):
        return any(audience_admits(one, host) for one in audience)
    if audience == host:
        return True
    prefix = "spiffe://"
    domain = audience.removeprefix(prefix)
    if not audience.startswith(prefix) or "/" in domain:
        return False
    try:
        return HostId.parse(host).trust_domain == domain
    except ConfigError:
        return False


@dataclass(frozen=True, slots=True, kw_only=True)
class Grant:
    compact: str
    key_id: str
    issuer: str
    subject: str
    audiences: tuple[str, ...]  #: who may hold the authority and extend it
    issued_at: datetime
    not_before: datetime
    expires_at: datetime
    grant_id: str
    capabilities: CapabilitySet
    constraints: Constraints
    parent_digest: str | None
    replaces: str = ""  #: root only: hex credentials digest of the chain it renews
    home: str = ""  #: root only: the custody home host

    @property
    def audience(self) -> str:
        """The audiences as one readable string."""
        return ", ".join(self.audiences)

    @property
    def digest(self) -> str:
        return grant_digest(self.compact)

    @property
    def is_root(self) -> bool:
        return self.parent_digest is None


#: ``Grant(...)`` of every field, by position, without the frozen ``__init__`` (each
#: fresh grant a destination verifies is built once: every P2 arrival's).
_build_grant = builder(
    Grant,
    "compact",
    "key_id",
    "issuer",
    "subject",
    "audiences",
    "issued_at",
    "not_before",
    "expires_at",
    "grant_id",
    "capabilities",
    "constraints",
    "parent_digest",
    "replaces",
    "home",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedChain:
    grants: tuple[Grant, ...]

    @property
    def leaf(self) -> Grant:
        return self.grants[-1]

    @property
    def capabilities(self) -> CapabilitySet:
        """The chain's authority: each link is within its parent, so the last is the narrowest."""
        return self.leaf.capabilities

    @property
    def constraints(self) -> Constraints:
        return self.leaf.constraints

    @property
    def depth(self) -> int:
        return len(self.grants) - 1


def _seconds(moment: datetime) -> int:
    return int(moment.timestamp())


def _time(value: int, name: str) -> datetime:
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError) as exc:
        # A signed but absurd time (exp 10**30) must be a refusal, not a crash.
        raise GrantFormatError(f"grant claim {name!r} ({value}) is not a usable time") from exc


def issue_grant(
    *,
    signer: Signer,
    issuer: str,
    subject: str,
    audience: str | Sequence[str],
    capabilities: CapabilitySet,
    constraints: Constraints,
    not_before: datetime,
    expires_at: datetime,
    at: datetime,
    parent: Grant | None = None,
    replaces: bytes = b"",
    home: str = "",
) -> Grant:
    """Sign a grant. With ``parent`` it is a child and must be within it (see :func:`attenuate`).

    A root may name the chain it ``replaces`` (a renewal: the credentials digest of the
    replaced chain) and a custody ``home``; a child carries neither.
    """
    audiences = (audience,) if isinstance(audience, str) else tuple(dict.fromkeys(audience))
    try:
        HostId.parse(issuer)
    except ConfigError as exc:
        raise GrantFormatError(f"grant issuer {issuer!r} is not a host id: {exc.reason}") from exc
    _audiences_claim(list(audiences))  # refuses an empty or malformed audience before signing
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": subject,
        "aud": audiences[0] if len(audiences) == 1 else list(audiences),
        "iat": _seconds(at),
        "nbf": _seconds(not_before),
        "exp": _seconds(expires_at),
        "jti": uuid.uuid4().hex,
        "cap": capabilities.to_claim(),
        "cons": constraints.to_claim(),
    }
    if parent is not None:
        if replaces or home:
            raise GrantFormatError("only a root grant names a renewed chain or a custody home")
        claims["prf"] = parent.digest
    if replaces:
        claims["rpl"] = replaces.hex()
    if home:
        claims["home"] = home
    compact = jwt.encode(
        claims,
        signer.private_key_object(),
        algorithm=signer.algorithm.jose,
        headers={"typ": GRANT_TYPE, "kid": signer.key_id},
    )
    return _parse(compact, key_id=signer.key_id, claims=_decode_claims(compact))


def _split(compact: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a grant whose bytes are well formed (signature not checked,
    but its segment must decode)."""
    parts = _three_segments(compact)
    header = _json(_b64url_decode(parts[0], "header"), "header")
    claims = _json(_b64url_decode(parts[1], "payload"), "payload")
    _b64url_decode(parts[2], "signature")
    return header, claims


def _three_segments(compact: str) -> list[str]:
    if len(compact) > MAX_GRANT_BYTES:
        raise GrantFormatError(f"grant is {len(compact)} bytes; at most {MAX_GRANT_BYTES}")
    parts = compact.split(".")
    if len(parts) != 3 or not all(parts):
        raise GrantFormatError("a grant is three non-empty base64url segments separated by '.'")
    return parts


def _checked_segments(compact: str) -> tuple[tuple[str, str], dict[str, Any], bytes, bytes]:
    """Of a grant whose bytes are well formed: its header checked (:func:`_check_header`)
    as its ``alg`` and ``kid``, its claims, its signing input (the exact first two
    segments) and its signature. A header segment that
    passed before is not decoded and checked again (:data:`CHECKED_HEADERS`); the
    checks run in the same order either way, so a grant is refused for what it always
    was: the header's bytes, then the payload's, the signature's, the header's fields."""
    parts = _three_segments(compact)
    checked = CHECKED_HEADERS.get(parts[0])
    header = _json(_b64url_decode(parts[0], "header"), "header") if checked is None else None
    claims = _json(_b64url_decode(parts[1], "payload"), "payload")
    signature = _b64url_decode(parts[2], "signature")
    if checked is None:
        assert header is not None
        checked = _check_header(header)
        CHECKED_HEADERS.put(parts[0], checked)
    # ASCII: each segment matched the base64url alphabet.
    return checked, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), signature


def _json(raw: bytes, what: str) -> dict[str, Any]:
    # load_json refuses repeated member names (two "alg" or "iss" would let two parsers
    # see two different grants), huge integers, NaN and lone surrogates.
    value = load_json(raw, error=GrantFormatError, what=f"grant {what}")
    if not isinstance(value, dict):
        raise GrantFormatError(f"grant {what} is not a JSON object")
    return value


def _decode_claims(compact: str) -> dict[str, Any]:
    return _split(compact)[1]


def _check_header(header: dict[str, Any]) -> tuple[str, str]:
    if "crit" in header:
        raise GrantHeaderError(
            f"grant header marks {header['crit']!r} as critical; no extension is understood here"
        )
    extra = set(header) - _HEADER_FIELDS
    if extra:
        raise GrantHeaderError(
            f"grant header has fields {sorted(extra)}; only alg, typ and kid are allowed",
            hint="keys and algorithms come from trust bundles, never from a grant",
        )
    if header.get("typ") != GRANT_TYPE:
        raise GrantHeaderError(f"grant typ is {header.get('typ')!r}, not {GRANT_TYPE!r}")
    alg, kid = header.get("alg"), header.get("kid")
    if not isinstance(alg, str) or not isinstance(kid, str) or not kid:
        raise GrantHeaderError("grant header needs a string alg and a non-empty kid")
    return alg, kid


def _require(claims: dict[str, Any], name: str, kind: type) -> Any:
    value = claims.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise GrantFormatError(f"grant claim {name!r} is missing or not a {kind.__name__}")
    return value


def _parse(compact: str, *, key_id: str, claims: dict[str, Any]) -> Grant:
    extra = set(claims) - _CLAIMS
    if extra:
        raise GrantFormatError(f"grant has unknown claims {sorted(extra)}")
    parent = claims.get("prf")
    if parent is not None and not isinstance(parent, str):
        raise GrantFormatError("grant claim 'prf' must be a string")
    replaces = claims.get("rpl", "")
    home = claims.get("home", "")
    if parent is not None and ("rpl" in claims or "home" in claims):
        raise GrantFormatError("only a root grant may carry 'rpl' or 'home'")
    if not isinstance(replaces, str) or ("rpl" in claims and not _DIGEST_HEX.fullmatch(replaces)):
        raise GrantFormatError("grant claim 'rpl' must be 64 lowercase hex digits")
    if not isinstance(home, str) or ("home" in claims and not home):
        raise GrantFormatError("grant claim 'home' must be a host id")
    if home:
        try:
            HostId.parse(home)
        except ConfigError as exc:
            raise GrantFormatError(f"grant claim 'home' is not a host id: {exc.reason}") from exc
    capabilities, constraints = _authority_claims(claims)
    # Each argument is computed in the order the keyword call computed them (the first
    # claim that is wrong is the one named), then set by _build_grant.
    return _build_grant(
        compact,
        key_id,
        _require(claims, "iss", str),
        _require(claims, "sub", str),
        _audiences_claim(claims.get("aud")),
        _time(_require(claims, "iat", int), "iat"),
        _time(_require(claims, "nbf", int), "nbf"),
        _time(_require(claims, "exp", int), "exp"),
        _require(claims, "jti", str),
        capabilities,
        constraints,
        parent,
        replaces,
        home,
    )


def _authority_claims(claims: dict[str, Any]) -> tuple[CapabilitySet, Constraints]:
    """The ``cap`` and ``cons`` claims parsed, or the same parse remembered for the same
    text (:data:`PARSED_AUTHORITY`); checked in the same order either way."""
    cap = _require(claims, "cap", list)
    key = _authority_key(cap, claims.get("cons"))
    known = PARSED_AUTHORITY.get(key) if key is not None else None
    if known is not None:
        return known[0], known[1]
    try:
        capabilities = CapabilitySet.from_claim(cap)
        constraints = Constraints.from_claim(_require(claims, "cons", dict))
    except AuthorityFormatError as exc:
        raise GrantFormatError(f"grant claims: {exc.reason}", hint=exc.hint) from exc
    if key is not None:
        PARSED_AUTHORITY.put(key, (capabilities, constraints, len(key)))
    return capabilities, constraints


#: json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False), with
#: the encoder made once (json.dumps makes one per call for any non-default option).
_AUTHORITY_TEXT = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False
).encode


def _authority_key(cap: list[Any], cons: object) -> str | None:
    """The text by which a ``cap`` and ``cons`` claim are remembered: their JSON as read,
    written again. It tells apart every two values the parse could tell apart (``true``
    from ``1``, ``1`` from ``"1"``, member order), so equal text means the same parse.
    ``None`` when ``cons`` is not an object (that is refused, never remembered) or the
    values cannot be written (nothing the strict reader returns, but then: no memo)."""
    if not isinstance(cons, dict):
        return None
    try:
        return _AUTHORITY_TEXT([cap, cons])
    except (TypeError, ValueError, RecursionError):
        return None


def root_home(grants: Sequence[str]) -> str:
    """The custody home the root of ``grants`` names ("" if none). Reads the claims of a
    chain that was verified when it arrived; it checks nothing itself."""
    if not grants:
        return ""
    home = _decode_claims(grants[0]).get("home", "")
    return home if isinstance(home, str) else ""


class _VerifiedGrants(BoundedLru[str, tuple[Grant, KeyRecord]]):
    """Grants whose signature verified, by their exact text: the grant as parsed and the
    key record that verified it. Bounded LRU, so a peer sending fresh grants only ever
    evicts, and a miss costs what it always did."""

    def add(self, compact: str, grant: Grant, record: KeyRecord) -> None:
        self.put(compact, (grant, record))


#: Grants this process verified (see the module docstring): at most 4096, each its text
#: (at most MAX_GRANT_BYTES, about 1 KiB as issued) and its parsed form, a few MiB at most.
VERIFIED_GRANTS = _VerifiedGrants(capacity=1 << 12)


def forget_verified_grants() -> None:
    """Empty the verified-grant memory and the memories of checked grant parts
    (benchmarks timing a cold verify; tests)."""
    VERIFIED_GRANTS.clear()
    CHECKED_HEADERS.clear()
    PARSED_AUTHORITY.clear()


#: Made once: timedelta(...) parses its keywords on every call (a few thousand
#: instructions), and each fresh grant's signing time needs one.
_MICROSECOND = timedelta(microseconds=1)
_LAST_MOMENT_OF_SECOND = timedelta(seconds=1) - _MICROSECOND


def _signed_at(grant: Grant) -> datetime:
    """When a verified grant may at the latest have been signed, as verify_grant judges
    it: the last moment of its ``iat`` second (in range: verify_grant computed it)."""
    return grant.issued_at + _LAST_MOMENT_OF_SECOND


def _remembered_grant(
    compact: str, *, trust: TrustStore, at: datetime, leeway: timedelta
) -> Grant | None:
    """The grant if these exact bytes verified before under the key that ``trust`` still
    trusts for their issuer at ``at``, and it is valid at ``at``; ``None`` otherwise (the
    caller then verifies it the whole way, which raises whatever is wrong)."""
    found = VERIFIED_GRANTS.get(compact)
    if found is None:
        return None
    grant, verified_by = found
    try:
        keys = trust.keys_for_host(
            grant.issuer, purpose=Purpose.GRANT, at=at, signed_at=_signed_at(grant)
        )
        record = keys.resolve(grant.key_id)
        _check_window(grant, at=at, leeway=leeway)
    except GatewayError:
        return None
    # The signature verified under ``verified_by``: it stands only if the key trusted
    # now for this issuer is that same key, with that same algorithm.
    if record.public_key != verified_by.public_key or record.algorithm != verified_by.algorithm:
        return None
    return grant


def verify_grant(
    compact: str, *, trust: TrustStore, at: datetime, leeway: timedelta = timedelta(seconds=60)
) -> Grant:
    """One grant on its own: bytes, header, key of the issuer's domain, signature, claims."""
    remembered = _remembered_grant(compact, trust=trust, at=at, leeway=leeway)
    if remembered is not None:
        return remembered
    (alg, kid), claims, signing_input, signature = _checked_segments(compact)
    issuer = claims.get("iss")
    if not isinstance(issuer, str):
        raise GrantFormatError("grant claim 'iss' is missing")
    try:
        host = HostId.parse(issuer)
    except ConfigError as exc:
        # The issuer comes from a peer's bytes: a bad one is a bad grant, not bad config.
        raise GrantFormatError(
            f"grant claim 'iss' is not a host id: {exc.reason}", hint=exc.hint
        ) from exc
    # A retired key's grants stand if it signed them before its retirement: judged at
    # the grant's iat, which the signature checked below covers (a malformed iat is
    # refused with the other claims). iat is whole seconds, rounded down: take the last
    # moment of that second, so a grant signed just after the retirement is not let in.
    iat = claims.get("iat")
    signed_at = _time(iat + 1, "iat") - _MICROSECOND if type(iat) is int else None
    keys = trust.keys_for_host(issuer, purpose=Purpose.GRANT, at=at, signed_at=signed_at)
    if keys.bundle.key(kid) is None:
        others = [
            d for d, b in trust.bundles.items() if d != host.trust_domain and b.key(kid) is not None
        ]
        where = f" (it is a key of {others[0]})" if others else ""
        raise UntrustedKeyError(
            f"grant kid {kid[:16]} is not a key of the issuer's domain {host.trust_domain}{where}",
            hint="a grant must be signed by a key of the domain that issues it",
        )
    try:
        record = keys.resolve(kid)
    except VerificationError as exc:
        # Name what the key signed: the grant and the object it is for (unverified text
        # from the grant, so only short strings are echoed).
        jti, sub = (claims.get(name) for name in ("jti", "sub"))
        label = jti[:64] if isinstance(jti, str) else "?"
        subject = sub[:256] if isinstance(sub, str) else "?"
        raise type(exc)(f"grant {label} for {subject}: {exc.reason}", hint=exc.hint) from exc
    if alg != record.algorithm.jose:
        raise GrantAlgorithmError(
            f"grant says alg {alg!r}, but key {kid[:16]} is {record.algorithm.value} ({record.algorithm.jose})",
            hint="the algorithm is pinned by the key record; the grant was forged or mis-signed",
        )
    try:
        # PyJWT's algorithm for the record's ``alg`` (never the header's, which was
        # checked equal to it above) verifies the signature over the exact segments.
        # What PyJWT's JWS and JWT layers would add is done above, more strictly, or
        # below: canonical base64url, a header of exactly alg/typ/kid (so no ``crit``,
        # ``b64`` or key in the message), one strict reading of the claims (theirs was a
        # second, laxer one), every claim required by _parse, and the window checked
        # against ``at`` (they use the wall clock). Their re-reading of the same bytes
        # was most of a grant's verification time.
        algorithm = _JWS.get_algorithm_by_name(record.algorithm.jose)
        key = algorithm.prepare_key(record.public_key_object())
        if not algorithm.verify(signing_input, key, signature):
            raise jwt.InvalidSignatureError("Signature verification failed")
    except NotImplementedError as exc:
        raise GrantAlgorithmError(f"grant algorithm refused: {exc}") from exc
    except jwt.InvalidSignatureError as exc:
        raise BadSignatureError(
            f"grant {claims.get('jti', '?')} signature does not verify under {kid[:16]}"
        ) from exc
    except jwt.InvalidAlgorithmError as exc:
        raise GrantAlgorithmError(f"grant algorithm refused: {exc}") from exc
    except jwt.PyJWTError as exc:
        raise GrantFormatError(f"grant refused: {exc}") from exc
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # The claims passed _split's strict reading, so this is PyJWT choking on a value
        # it checks itself; still the peer's bytes, still only a refused grant.
        raise GrantFormatError(f"grant refused: {type(exc).__name__}: {exc}") from exc
    grant = _parse(compact, key_id=kid, claims=claims)
    _check_window(grant, at=at, leeway=leeway)
    VERIFIED_GRANTS.add(compact, grant, record)
    return grant


def _check_window(grant: Grant, *, at: datetime, leeway: timedelta) -> None:
    """The validity window at ``at``, with PyJWT's boundaries (``exp`` is exclusive)."""
    name = f"grant {grant.grant_id} by {grant.issuer}"
    if grant.expires_at <= at - leeway:
        raise ExpiredError(
            f"{name} expired at {format_time(grant.expires_at)} (now {format_time(at)})",
            hint="ask the issuer for a fresh grant",
        )
    if grant.not_before > at + leeway:
        raise ExpiredError(
            f"{name} is not valid until {format_time(grant.not_before)} (now {format_time(at)})",
            hint="check both hosts' clocks",
        )
    if grant.issued_at > at + leeway:
        raise ExpiredError(
            f"{name} is issued in the future, at {format_time(grant.issued_at)} (now {format_time(at)})",
            hint="check both hosts' clocks",
        )


def _check_link(child: Grant, parent: Grant, index: int) -> None:
    where = f"grant {index}"
    if child.parent_digest != parent.digest:
        raise ParentDigestError(
            f"{where} does not point at grant {index - 1} (prf {child.parent_digest!r})",
            hint="grants must be sent in order, root first, exactly as issued",
        )
    if child.subject != parent.subject:
        raise SubjectMismatchError(
            f"{where} is for {child.subject}, its parent for {parent.subject}"
        )
    if not audience_admits(parent.audiences, child.issuer):
        raise IssuerMismatchError(
            f"{where} is issued by {child.issuer}, but only {parent.audience} may extend grant {index - 1}"
        )
    if child.expires_at > parent.expires_at:
        raise LifetimeWideningError(
            f"{where} expires (exp {format_time(child.expires_at)}) after its parent "
            f"(exp {format_time(parent.expires_at)})",
            hint="a child grant cannot outlive its parent",
        )
    if child.not_before < parent.not_before:
        raise LifetimeWideningError(
            f"{where} is valid (nbf {format_time(child.not_before)}) before its parent "
            f"(nbf {format_time(parent.not_before)})",
            hint="a child grant cannot start earlier than its parent",
        )
    try:
        child.capabilities.require_subset_of(parent.capabilities)
    except CapabilityWideningError as exc:
        raise type(exc)(f"{where}: {exc.reason}", hint=exc.hint) from exc
    try:
        child.constraints.require_narrower_than(parent.constraints)
    except ConstraintWideningError as exc:
        raise type(exc)(f"{where}: {exc.reason}", hint=exc.hint) from exc


def _depth_limit(constraints: Iterable[Constraints]) -> int | None:
    """The tightest ``max_depth`` among ``constraints``; None when none sets one."""
    return min((c.max_depth for c in constraints if c.max_depth is not None), default=None)


def verify_chain(
    grants: Sequence[str],
    *,
    object_id: str,
    trust: TrustStore,
    at: datetime,
    leeway: timedelta = timedelta(seconds=60),
) -> VerifiedChain:
    """Verify every grant and every link; the root must come from the object's own domain."""
    if not grants:
        raise RootIssuerError(
            f"{object_id} carries no grants", hint="its owner must issue a root grant"
        )
    if len(grants) > MAX_CHAIN:
        raise DepthExceededError(f"{len(grants)} grants; at most {MAX_CHAIN}")
    parsed = [verify_grant(g, trust=trust, at=at, leeway=leeway) for g in grants]
    root = parsed[0]
    owner = ObjectId.parse(object_id).trust_domain
    if root.subject != object_id:
        raise SubjectMismatchError(f"the root grant is for {root.subject}, not {object_id}")
    if not root.is_root:
        raise ParentDigestError("the first grant names a parent; the chain must start at its root")
    if HostId.parse(root.issuer).trust_domain != owner:
        raise RootIssuerError(
            f"the root grant is issued by {root.issuer}, but {object_id} belongs to {owner}",
            hint=f"only {owner} can issue the root grant of its objects",
        )
    for index in range(1, len(parsed)):
        _check_link(parsed[index], parsed[index - 1], index)
    depth_limit = _depth_limit(g.constraints for g in parsed)
    if depth_limit is not None and len(parsed) - 1 > depth_limit:
        raise DepthExceededError(
            f"chain has {len(parsed) - 1} delegations; its grants allow {depth_limit}"
        )
    return VerifiedChain(grants=tuple(parsed))


def attenuate(
    chain: VerifiedChain,
    *,
    signer: Signer,
    issuer: str,
    audience: str | Sequence[str],
    at: datetime,
    capabilities: CapabilitySet | None = None,
    constraints: Constraints | None = None,
    expires_at: datetime | None = None,
) -> Grant:
    """A child of the chain's leaf that is no wider than it, or :class:`WideningError`.

    Everything not given is kept as the parent has it.
    """
    parent = chain.leaf
    if not audience_admits(parent.audiences, issuer):
        raise IssuerMismatchError(
            f"{issuer} cannot extend a grant addressed to {parent.audience}",
            hint="only the audience of a grant may issue a narrower child",
        )
    capabilities = capabilities if capabilities is not None else parent.capabilities
    constraints = constraints if constraints is not None else parent.constraints
    expires_at = expires_at or parent.expires_at
    capabilities.require_subset_of(parent.capabilities)
    constraints.require_narrower_than(parent.constraints)
    if expires_at > parent.expires_at:
        raise LifetimeWideningError("a child grant cannot outlive its parent")
    # The same limit verify_chain applies, including the child's own max_depth: a child
    # whose max_depth is below its own depth would be a grant no verifier accepts.
    limit = _depth_limit((*(g.constraints for g in chain.grants), constraints))
    if limit is not None and chain.depth + 1 > limit:
        raise DepthExceededError(
            f"the chain allows {limit} delegations; this would be {chain.depth + 1}"
        )
    if len(chain.grants) + 1 > MAX_CHAIN:
        raise DepthExceededError(f"a chain holds at most {MAX_CHAIN} grants")
    child = issue_grant(
        signer=signer,
        issuer=issuer,
        subject=parent.subject,
        audience=audience,
        capabilities=capabilities,
        constraints=constraints,
        not_before=parent.not_before,
        expires_at=expires_at,
        at=at,
        parent=parent,
    )
    return child


__all__ = [
    "GRANT_TYPE",
    "Grant",
    "VerifiedChain",
    "WideningError",
    "attenuate",
    "audience_admits",
    "grant_digest",
    "issue_grant",
    "parse_audience",
    "verify_chain",
    "verify_grant",
]
