"""Trust bundles: which keys and certificate authorities speak for a trust domain.

Invariants this module keeps:

* **One bundle per trust domain, never merged.** A key trusted for ``org-b.example``
  can never vouch for ``org-a.example``; lookups always name the domain.
* **Bundles only move forward.** Each bundle has a sequence number; a bundle with a
  lower number is refused (:class:`RollbackError`), the same number is accepted only
  if the content is identical, and an update must be signed by ``bundle``-purpose keys
  of the bundle it replaces (so a stolen file server cannot swap a domain's keys).
  The very first bundle of a domain is trusted on first use, which is why
  ``gateway trust import`` prints its fingerprint for the operator to compare.
* **A key is usable only** for the purposes, hosts and validity window its record
  lists, and never once revoked. An empty set of usable keys is an error naming the
  domain, not a silent "nothing to check".
* **Retired is not revoked.** A retired key verifies only what it signed before its
  ``retired_at`` (judged at the signed time: a checkpoint's ``issued_at``, a grant's
  ``iat``; for anything else, at the moment of verification); a revoked key verifies
  nothing. Retiring and revoking are one-way: a newer bundle keeps a retired or
  revoked key listed, never retired later than before, never un-revoked
  (:class:`RollbackError`), so peers that imported it can never be talked out of it.

No I/O: bundles come in and go out as bytes; the host decides where they live.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType
from typing import Any

from gateway import envelope as dsse
from gateway._decode import load_json
from gateway._slots import builder
from gateway._time import format_time, parse_time
from gateway.errors import (
    EnvelopeError,
    ExpiredError,
    RetiredKeyError,
    RevokedKeyError,
    RollbackError,
    TrustError,
    UntrustedKeyError,
)
from gateway.identity import HostId, check_domain_authority, trust_domain_problem
from gateway.keys import Algorithm, KeyRecord, Purpose, Signer

BUNDLE_FORMAT = 1
MAX_BUNDLE_BYTES = 1 << 20

_KEY_FIELDS = frozenset(
    {
        "key_id",
        "algorithm",
        "public_key",
        "purposes",
        "hosts",
        "valid_from",
        "valid_until",
        "retired_at",
        "revoked",
    }
)
_BUNDLE_FIELDS = frozenset(
    {
        "format",
        "trust_domain",
        "sequence",
        "issued_at",
        "keys",
        "x509_authorities",
        "envelope_threshold",
        "bundle_threshold",
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrustBundle:
    """Everything a peer needs to trust one domain: its keys and its TLS CAs."""

    trust_domain: str
    sequence: int
    issued_at: datetime
    keys: tuple[KeyRecord, ...]
    x509_authorities: tuple[bytes, ...] = ()  #: PEM CA certificates for mTLS
    envelope_threshold: int = 1  #: distinct keys that must sign each envelope
    bundle_threshold: int = 1  #: distinct bundle keys that must sign the next bundle

    def __post_init__(self) -> None:
        # One order for the keys, so that equal bundles compare (and encode) equal.
        object.__setattr__(self, "keys", tuple(sorted(self.keys, key=lambda k: k.key_id)))
        if self.sequence < 1:
            raise TrustError(
                f"bundle for {self.trust_domain} has sequence {self.sequence}; must be ≥ 1"
            )
        ids = [k.key_id for k in self.keys]
        if len(set(ids)) != len(ids):
            raise TrustError(f"bundle for {self.trust_domain} lists a key twice")
        for name, threshold, purpose in (
            ("envelope_threshold", self.envelope_threshold, Purpose.ENVELOPE),
            ("bundle_threshold", self.bundle_threshold, Purpose.BUNDLE),
        ):
            # A retired key signs nothing new, so it cannot help meet a threshold either.
            usable = [
                k
                for k in self.keys
                if purpose in k.purposes and not k.revoked and k.retired_at is None
            ]
            if threshold < 1 or threshold > max(1, len(usable)):
                raise TrustError(
                    f"bundle for {self.trust_domain}: {name} {threshold} cannot be met by "
                    f"{len(usable)} unretired, unrevoked {purpose.value} key(s)",
                    hint="add a key (`gateway keys add`) before retiring or revoking one",
                )

    def key(self, key_id: str) -> KeyRecord | None:
        # A loop, not next() over a generator: every signature checked looks its key up
        # here, some twice, and the generator's frame was most of the cost.
        for record in self.keys:
            if record.key_id == key_id:
                return record
        return None

    def resolver(self, *, purpose: Purpose, host: str | None, at: datetime | None) -> DomainKeys:
        """Keys of this domain usable for ``purpose`` by ``host`` at time ``at``."""
        return _domain_keys(self, purpose, host, at, None)

    def fingerprint(self) -> str:
        """SHA-256 of the canonical bundle: what operators compare out of band."""
        return hashlib.sha256(encode_bundle(self)).hexdigest()

    def with_key(self, record: KeyRecord, *, issued_at: datetime) -> TrustBundle:
        """A successor bundle that adds (or replaces) one key record."""
        keys = (*(k for k in self.keys if k.key_id != record.key_id), record)
        return replace(self, keys=keys, sequence=self.sequence + 1, issued_at=issued_at)


@dataclass(frozen=True, slots=True)
class DomainKeys:
    """A :class:`~gateway.envelope.KeyResolver` over one bundle, purpose, host and time."""

    bundle: TrustBundle
    purpose: Purpose
    host: str | None
    at: datetime | None  #: None: the caller checks validity itself, at the signing time
    #: When the signature was made, if the signed message says so (a grant's ``iat``):
    #: retirement is judged then. None: judged at ``at``, or by the caller if that is None.
    signed_at: datetime | None = None

    def resolve(self, key_id: str) -> KeyRecord:
        domain = self.bundle.trust_domain
        record = self.bundle.key(key_id)
        if record is None:
            raise UntrustedKeyError(
                f"key {key_id[:16]} is not in the trust bundle of {domain} "
                f"(sequence {self.bundle.sequence})",
                hint=f"if {domain} rotated keys, import its newer bundle with `gateway trust import`; "
                "a running `gateway serve` uses it within seconds (at once on SIGHUP), no restart",
            )
        self._check(record)
        return record

    def all(self) -> Sequence[KeyRecord]:
        usable = []
        for record in self.bundle.keys:
            try:
                self._check(record)
            except (UntrustedKeyError, ExpiredError):
                continue
            usable.append(record)
        return usable

    def check_not_retired(self, record: KeyRecord, signed_at: datetime, *, what: str) -> None:
        """Refuse ``what``, signed by ``record`` at ``signed_at``, if the key was retired
        by then. For callers that resolved with ``at=None`` and read the signing time
        from the verified payload (lineage checkpoints)."""
        if record.retired_by(signed_at):
            raise self._retired(record, signed_at, what=what)

    def _retired(self, record: KeyRecord, signed_at: datetime, *, what: str) -> RetiredKeyError:
        assert record.retired_at is not None
        return RetiredKeyError(
            f"{what} is signed at {format_time(signed_at)} by key {record.key_id[:16]} of "
            f"{self.bundle.trust_domain}, which was retired at {format_time(record.retired_at)} "
            "and signs nothing after that",
            hint=f"{self.bundle.trust_domain} must sign with its current key: restart its "
            "`gateway serve` after `gateway keys add`/`retire`, and import its newest bundle here",
        )

    def _check(self, record: KeyRecord) -> None:
        domain = self.bundle.trust_domain
        if record.revoked:
            # Revocation distrusts the past too: every checkpoint, grant and envelope the
            # key ever signed. Say so, and what the people involved can do about it.
            raise RevokedKeyError(
                f"{_key_name(record, domain)} is revoked: everything it signed (lineage "
                "checkpoints, grants, transfers) is refused",
                hint=f"what it signed must be signed again with a current key of {domain}: "
                "ask its owner to re-issue the grant or recreate the object; if the key was "
                "replaced but never leaked, it should have been retired "
                "(`gateway keys retire`), which keeps its old signatures valid",
            )
        if self.purpose not in record.purposes:
            raise UntrustedKeyError(
                f"{_key_name(record, domain)} may sign "
                f"{sorted(p.value for p in record.purposes)}, not {self.purpose.value}"
            )
        if self.host is not None and record.hosts and self.host not in record.hosts:
            raise UntrustedKeyError(
                f"{_key_name(record, domain)} may not sign for host {self.host}"
            )
        if self.at is not None and not record.valid_at(self.at):
            raise ExpiredError(
                f"{_key_name(record, domain)} is valid from "
                f"{format_time(record.valid_from)} until "
                f"{format_time(record.valid_until) if record.valid_until else 'revoked'}, "
                f"not at {format_time(self.at)}",
                hint="check both hosts' clocks, or import the peer's current bundle",
            )
        signed_at = self.signed_at if self.signed_at is not None else self.at
        if signed_at is not None and record.retired_by(signed_at):
            raise self._retired(record, signed_at, what=f"this {self.purpose.value} signature")


#: ``DomainKeys(bundle=..., purpose=..., host=..., at=..., signed_at=...)`` by position
#: (gateway/_slots.py): its frozen ``__init__`` cost about 10,800 instructions, a
#: resolver made for every signature checked (5 a P2 arrival, 2 on its source), against
#: 2,600 slot by slot. DomainKeys has no ``__post_init__``: nothing is skipped.
_domain_keys = builder(DomainKeys, "bundle", "purpose", "host", "at", "signed_at")


def _key_name(record: KeyRecord, domain: str) -> str:
    """How a refusal names the key: made only when refusing, not on every resolve."""
    return f"key {record.key_id[:16]} of {domain}"


#: TrustStore.missing_hint on a host.
IMPORT_BUNDLE_HINT = "import {domain}'s bundle with `gateway trust import FILE`"


@dataclass(frozen=True, slots=True)
class TrustStore:
    """The bundles a host trusts: its own domain's and each peer domain's, kept apart."""

    bundles: Mapping[str, TrustBundle] = field(default_factory=lambda: MappingProxyType({}))
    #: What to do when a domain's bundle is missing, ``{domain}`` standing for it: a host
    #: imports it; `gateway verify`, which keeps no store, is given it with --trust.
    missing_hint: str = field(default=IMPORT_BUNDLE_HINT, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "bundles", MappingProxyType(dict(self.bundles)))

    @classmethod
    def of(cls, bundles: Iterable[TrustBundle], *, missing_hint: str = "") -> TrustStore:
        collected: dict[str, TrustBundle] = {}
        for bundle in bundles:
            if bundle.trust_domain in collected:
                raise TrustError(f"two bundles for {bundle.trust_domain}; keep only the newest")
            collected[bundle.trust_domain] = bundle
        return cls(collected, missing_hint or IMPORT_BUNDLE_HINT)

    def bundle(self, trust_domain: str) -> TrustBundle:
        found = self.bundles.get(trust_domain)
        if found is None:
            known = ", ".join(sorted(self.bundles)) or "none"
            raise UntrustedKeyError(
                f"no trust bundle for {trust_domain} (trusted domains: {known})",
                hint=self.missing_hint.replace("{domain}", trust_domain),
            )
        return found

    def keys_for_host(
        self,
        host_id: str,
        *,
        purpose: Purpose,
        at: datetime | None,
        signed_at: datetime | None = None,
    ) -> DomainKeys:
        """Keys that may sign ``purpose`` for ``host_id`` (a ``spiffe://`` host id);
        retirement is judged at ``signed_at`` if given, else at ``at``."""
        bundle = self.bundle(HostId.parse(host_id).trust_domain)
        return _domain_keys(bundle, purpose, host_id, at, signed_at)

    def with_bundle(self, bundle: TrustBundle) -> TrustStore:
        return TrustStore({**self.bundles, bundle.trust_domain: bundle})

    def x509_authorities(self) -> tuple[bytes, ...]:
        return tuple(ca for b in self.bundles.values() for ca in b.x509_authorities)


# --- canonical JSON form -------------------------------------------------------------


def canonical_json(document: Mapping[str, Any]) -> bytes:
    """Sorted keys, no spaces, UTF-8; also how lineage entries and checkpoints are hashed."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _key_to_json(record: KeyRecord) -> dict[str, Any]:
    document: dict[str, Any] = {
        "key_id": record.key_id,
        "algorithm": record.algorithm.value,
        "public_key": base64.b64encode(record.public_key).decode("ascii"),
        "purposes": sorted(p.value for p in record.purposes),
        "hosts": sorted(record.hosts),
        "valid_from": format_time(record.valid_from),
        "valid_until": format_time(record.valid_until) if record.valid_until else None,
        "revoked": record.revoked,
    }
    # Present only once retired: a bundle without retirements keeps the bytes (and the
    # fingerprint) it always had, and a gateway too old to know the field refuses a
    # bundle that retires a key instead of silently trusting it for new signatures.
    if record.retired_at is not None:
        document["retired_at"] = format_time(record.retired_at)
    return document


def encode_bundle(bundle: TrustBundle) -> bytes:
    """Canonical JSON (sorted keys, no spaces): equal bundles have equal bytes."""
    return canonical_json(
        {
            "format": BUNDLE_FORMAT,
            "trust_domain": bundle.trust_domain,
            "sequence": bundle.sequence,
            "issued_at": format_time(bundle.issued_at),
            "keys": [_key_to_json(k) for k in sorted(bundle.keys, key=lambda k: k.key_id)],
            "x509_authorities": [ca.decode("ascii") for ca in bundle.x509_authorities],
            "envelope_threshold": bundle.envelope_threshold,
            "bundle_threshold": bundle.bundle_threshold,
        }
    )


def _require(
    document: Mapping[str, Any], name: str, kind: type | tuple[type, ...], where: str
) -> Any:
    value = document.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TrustError(f"{where}: {name!r} is missing or not a {getattr(kind, '__name__', kind)}")
    return value


def _key_from_json(document: Any, where: str) -> KeyRecord:
    if not isinstance(document, dict):
        raise TrustError(f"{where}: must be an object")
    unknown = set(document) - _KEY_FIELDS
    if unknown:
        raise TrustError(f"{where}: unknown fields {sorted(unknown)}", hint="upgrade the gateway")
    try:
        public_key = base64.b64decode(_require(document, "public_key", str, where), validate=True)
        valid_until = document.get("valid_until")
        if valid_until is not None and not isinstance(valid_until, str):
            raise TrustError(f"{where}: 'valid_until' is not a str or null")
        # Absent when not retired (null would be a second spelling of the same record).
        retired_at = document.get("retired_at")
        if "retired_at" in document and not isinstance(retired_at, str):
            raise TrustError(f"{where}: 'retired_at' is not a str (omit it if not retired)")
        return KeyRecord(
            key_id=_require(document, "key_id", str, where),
            algorithm=Algorithm.parse(_require(document, "algorithm", str, where)),
            public_key=public_key,
            purposes=frozenset(
                Purpose.parse(p) for p in _require(document, "purposes", list, where)
            ),
            hosts=frozenset(str(h) for h in _require(document, "hosts", list, where)),
            valid_from=parse_time(_require(document, "valid_from", str, where)),
            valid_until=parse_time(valid_until) if valid_until is not None else None,
            retired_at=parse_time(retired_at) if isinstance(retired_at, str) else None,
            revoked=bool(_require(document, "revoked", bool, where)),
        )
    except ValueError as exc:
        raise TrustError(f"{where}: {exc}") from exc


def decode_bundle(raw: bytes) -> TrustBundle:
    """Parse a bundle; it must be exactly the canonical form, and nothing unknown."""
    if len(raw) > MAX_BUNDLE_BYTES:
        raise TrustError(f"trust bundle is {len(raw)} bytes; at most {MAX_BUNDLE_BYTES}")
    # Huge integers, NaN, "[[[[…", lone surrogates (which encode_bundle below could not
    # re-encode) and repeated members are refused here, as TrustError.
    document = load_json(raw, error=TrustError, what="trust bundle")
    if not isinstance(document, dict):
        raise TrustError("trust bundle must be a JSON object")
    unknown = set(document) - _BUNDLE_FIELDS
    if unknown:
        raise TrustError(
            f"trust bundle has unknown fields {sorted(unknown)}", hint="upgrade the gateway"
        )
    if document.get("format") != BUNDLE_FORMAT:
        raise TrustError(f"trust bundle format {document.get('format')!r} is not {BUNDLE_FORMAT}")
    try:
        bundle = TrustBundle(
            trust_domain=_require(document, "trust_domain", str, "bundle"),
            sequence=_require(document, "sequence", int, "bundle"),
            issued_at=parse_time(_require(document, "issued_at", str, "bundle")),
            keys=tuple(
                _key_from_json(k, f"keys[{i}]")
                for i, k in enumerate(_require(document, "keys", list, "bundle"))
            ),
            x509_authorities=tuple(
                str(ca).encode("ascii")
                for ca in _require(document, "x509_authorities", list, "bundle")
            ),
            envelope_threshold=_require(document, "envelope_threshold", int, "bundle"),
            bundle_threshold=_require(document, "bundle_threshold", int, "bundle"),
        )
    except ValueError as exc:
        raise TrustError(f"trust bundle: {exc}") from exc
    if encode_bundle(bundle) != raw:
        raise TrustError(
            "trust bundle is not in canonical form",
            hint="export it again with `gateway trust export`",
        )
    return bundle


# --- signed bundles and updates --------------------------------------------------------


def sign_bundle(bundle: TrustBundle, signers: Sequence[Signer]) -> bytes:
    """The bundle as a DSSE JSON envelope signed by the domain's bundle keys."""
    for signer in signers:
        record = bundle.key(signer.key_id)
        if record is None or Purpose.BUNDLE not in record.purposes:
            raise TrustError(
                f"key {signer.key_id[:16]} is not a bundle key of {bundle.trust_domain}",
                hint="sign with a key whose record lists the 'bundle' purpose",
            )
    return dsse.to_json(dsse.seal(encode_bundle(bundle), dsse.PayloadType.TRUST_BUNDLE, signers))


def accept_bundle(
    current: TrustBundle | None,
    signed: bytes,
    *,
    at: datetime,
    trust_domain: str | None = None,
) -> TrustBundle:
    """Verify a signed bundle against the one it would replace; return the bundle to keep.

    With no ``current`` bundle the new one must be signed by its own bundle keys (the
    trust-on-first-use step); otherwise by ``current``'s bundle keys, with a higher
    sequence number.
    """
    try:
        envelope = dsse.from_json(signed, max_size=MAX_BUNDLE_BYTES)
    except EnvelopeError as exc:
        raise TrustError(f"not a signed trust bundle: {exc}") from exc
    # First use: nothing to verify against but the bundle's own bundle keys, so the
    # payload must be parsed to find them; the operator confirms the fingerprint.
    authority = decode_bundle(envelope.payload) if current is None else current
    verified = dsse.open_envelope(
        envelope,
        payload_type=dsse.PayloadType.TRUST_BUNDLE,
        keys=authority.resolver(purpose=Purpose.BUNDLE, host=None, at=at),
        threshold=authority.bundle_threshold,
    )
    claimed = decode_bundle(verified.payload)
    # Checked here, where bundles come in, not in decode_bundle: a bundle stored before
    # this check must not keep its host from opening.
    problem = trust_domain_problem(claimed.trust_domain)
    if problem:
        raise TrustError(
            f"the bundle is not for a trust domain: {problem}",
            hint="a bundle names the SPIFFE trust domain of its keys, e.g. org-b.example",
        )
    expected = trust_domain or authority.trust_domain
    if claimed.trust_domain != expected:
        raise TrustError(f"bundle is for {claimed.trust_domain}, expected {expected}")
    for ca in claimed.x509_authorities:
        try:
            check_domain_authority(ca, claimed.trust_domain)
        except ValueError as exc:  # cryptography parses extensions lazily, and may refuse them
            raise TrustError(
                f"a CA of {claimed.trust_domain} has an unreadable extension: {exc}"
            ) from exc
    if current is not None:
        if claimed.sequence < current.sequence:
            raise RollbackError(
                f"bundle for {claimed.trust_domain} has sequence {claimed.sequence}, "
                f"older than the trusted {current.sequence}",
                hint="an older bundle never replaces a newer one; get the peer's current bundle",
            )
        if claimed.sequence == current.sequence:
            if encode_bundle(claimed) != encode_bundle(current):
                raise RollbackError(
                    f"bundle for {claimed.trust_domain} reuses sequence {claimed.sequence} "
                    "with different content",
                    hint="the peer must publish changes under a new sequence number",
                )
            return current
        _check_no_reinstatement(current, claimed)
    return claimed


def _check_no_reinstatement(current: TrustBundle, claimed: TrustBundle) -> None:
    """A newer bundle may retire or revoke keys, never take either back.

    Checked against the bundle it replaces, so a key stays revoked along every chain
    of updates: a revoked key must stay listed (dropping it would let a later bundle
    list it afresh), and a retired key must stay listed, retired no later, or revoked.
    """
    domain = claimed.trust_domain
    for old in current.keys:
        if not (old.revoked or old.retired_at is not None):
            continue
        new = claimed.key(old.key_id)
        name = f"bundle for {domain} sequence {claimed.sequence}: key {old.key_id[:16]}"
        hint = "retiring and revoking are one-way; add a new key instead"
        if new is None:
            state = "revoked" if old.revoked else "retired"
            raise RollbackError(f"{name} was {state} and is no longer listed", hint=hint)
        if old.revoked and not new.revoked:
            raise RollbackError(f"{name} is no longer revoked", hint=hint)
        if new.revoked or old.retired_at is None:
            continue
        if new.retired_at is None or new.retired_at > old.retired_at:
            raise RollbackError(
                f"{name} was retired at {format_time(old.retired_at)}; the update "
                + (
                    "un-retires it"
                    if new.retired_at is None
                    else f"moves that to {format_time(new.retired_at)}"
                ),
                hint=hint,
            )


def new_bundle(
    trust_domain: str,
    keys: Iterable[KeyRecord],
    *,
    x509_authorities: Iterable[bytes] = (),
    issued_at: datetime,
    sequence: int = 1,
) -> TrustBundle:
    return TrustBundle(
        trust_domain=trust_domain,
        sequence=sequence,
        issued_at=issued_at,
        keys=tuple(keys),
        x509_authorities=tuple(x509_authorities),
    )
