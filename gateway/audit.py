"""Third-party verification: check an object's history and authority from a file alone.

An auditor (or a partner's CI) holds a file someone exported — a transfer or proposal
envelope, or an object archive written by ``gateway object show --export`` — and the
signed trust bundles partners exchange. :func:`audit` answers, without a store, a
configuration or a running gateway: who held the object where and when, what authority
each holder had and from which grant, and whether every signature, chain link,
checkpoint, departure, arrival and custody rule verifies.

Invariants:

* **The same checks the receiver runs.** Lineage, custody, grants and kept narrowings are
  verified by :func:`gateway.lineage.verify_lineage`, :func:`gateway.custody.verify_custody`,
  :func:`gateway.custody.require_extends_departures` and
  :func:`gateway.credentials.verify_chain`, never by a second implementation that could
  drift from them. A check either passes as the receiver would pass it or carries the
  receiver's exact error.
* **Nothing unsigned is reported as fact.** The file's own signature binds its presenter
  (the transfer's source, the archive's exporter); holders and times come from signed
  departures and arrivals. A report with any failed check is not verified, and what it
  shows of the history is marked as the file's claim.
* **Trust comes only from the bundles given.** Each bundle's self-signature is checked as
  ``gateway trust import`` checks a first import (trust on first use: its fingerprint is
  reported for comparison out of band); several bundles of one domain must form a chain of
  signed updates, oldest first.
* **Bounded.** The file, the number of bundles and every count in them are bounded before
  work is done (decoders' limits; :data:`MAX_BUNDLES`); re-checks of a chain at departure
  times are at most two per distinct chain prefix, not one per departure.
* **Judged at a stated time**: ``at``, or else when the presenter signed the file. Grant
  windows are judged then; signatures of checkpoints, arrivals and the file itself at their
  own signed times (as the receiver does), so a report about last year stays checkable.

No I/O: bytes in, a :class:`Report` out. Only :class:`~gateway.errors.ConfigError` (the
input is not a file this verifies) leaves :func:`audit`; every verification failure is a
failed :class:`Check` in the report.
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gateway import envelope as dsse
from gateway import wire
from gateway._decode import load_json
from gateway._time import format_time, parse_time
from gateway.archive import CustodySegment, Segment, verify_history
from gateway.credentials import Grant, VerifiedChain, audience_admits, verify_chain, verify_grant
from gateway.custody import Custody, require_extends_departures, verify_custody
from gateway.errors import (
    ConfigError,
    CustodyError,
    ExpiredError,
    GatewayError,
    PayloadDecodeError,
)
from gateway.handoff.messages import Receipt, ReceiptKind
from gateway.keys import Purpose
from gateway.lineage import (
    Checkpoint,
    Lineage,
    archived_before,
    credentials_digest,
    verify_lineage,
)
from gateway.trust import (
    MAX_BUNDLE_BYTES,
    TrustBundle,
    TrustStore,
    accept_bundle,
    canonical_json,
    decode_bundle,
)

#: What ``gateway object show --export`` writes: an object's grants and lineage, signed
#: by the host that exported it (so the entries it recorded since its last arrival, which
#: no checkpoint covers yet, are at least vouched for by their author).
ARCHIVE_PAYLOAD_TYPE = "application/vnd.gateway.object-archive.v1+json"
ARCHIVE_FORMAT = 1
_ARCHIVE_FIELDS = frozenset(
    {
        "format",
        "object_id",
        "tenant",
        "holder",
        "state",
        "epoch",
        "exported_at",
        "grants",
        "lineage",
    }
)
#: Lifecycle states in which the exporting host holds the object (gateway.model).
_HELD_STATES = frozenset({"active", "frozen"})
#: The largest file verified: a transfer's own limit (an archive carries no data).
MAX_FILE_BYTES = wire.MAX_ENVELOPE_BYTES
#: Bundles given on one command line; more is a mistake, not an audit.
MAX_BUNDLES = 64
#: Most grants an archive may list (a chain's own limit is checked when it is verified).
MAX_ARCHIVE_GRANTS = 64


class Kind(enum.Enum):
    TRANSFER = "transfer"
    PROPOSAL = "proposal"
    ARCHIVE = "archive"


_KINDS = {
    dsse.PayloadType.TRANSFER: Kind.TRANSFER,
    dsse.PayloadType.PROPOSAL: Kind.PROPOSAL,
    ARCHIVE_PAYLOAD_TYPE: Kind.ARCHIVE,
}


class Status(enum.Enum):
    OK = "ok"
    FAILED = "failed"
    #: Not run, because a check it depends on failed (the failed one is listed).
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True, kw_only=True)
class Check:
    name: str
    status: Status
    #: What was verified (ok), the exact error (failed), or why it was not run.
    detail: str
    error: str = ""  #: the error's class name when failed, e.g. ``BadSignatureError``

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    def to_json(self) -> dict[str, str]:
        return {
            "name": self.name,
            "status": self.status.value,
            "detail": self.detail,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class BundleInfo:
    trust_domain: str
    sequence: int
    fingerprint: str  #: SHA-256 of the canonical bundle: compare it out of band
    first_use: bool  #: trusted because it signs itself (the first bundle of its domain)


@dataclass(frozen=True, slots=True, kw_only=True)
class GrantInfo:
    index: int
    grant_id: str
    issuer: str
    key_id: str
    audiences: tuple[str, ...]
    capabilities: list[dict[str, str | list[str]]]
    constraints: dict[str, list[str] | int]
    issued_at: datetime
    not_before: datetime
    expires_at: datetime
    parent: int | None  #: index of the grant it narrows; None for the root
    replaces: str = ""  #: a renewal root: the credentials digest of the chain it renews
    home: str = ""  #: the custody home the root names

    @classmethod
    def of(cls, index: int, grant: Grant) -> GrantInfo:
        return cls(
            index=index,
            grant_id=grant.grant_id,
            issuer=grant.issuer,
            key_id=grant.key_id,
            audiences=grant.audiences,
            capabilities=grant.capabilities.to_claim(),
            constraints=grant.constraints.to_claim(),
            issued_at=grant.issued_at,
            not_before=grant.not_before,
            expires_at=grant.expires_at,
            parent=None if grant.is_root else index - 1,
            replaces=grant.replaces,
            home=grant.home,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "grant_id": self.grant_id,
            "issuer": self.issuer,
            "key_id": self.key_id,
            "audiences": list(self.audiences),
            "capabilities": self.capabilities,
            "constraints": self.constraints,
            "issued_at": format_time(self.issued_at),
            "not_before": format_time(self.not_before),
            "expires_at": format_time(self.expires_at),
            "parent": self.parent,
            "replaces": self.replaces,
            "home": self.home,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Stay:
    """One host's custody of the object: from its arrival (or creation) to its departure.

    With the handoffs before the oldest carried departure archived (ADR 0010 step 2) and
    no archive given, the first stay shown is that departure's sender's, from an arrival
    the object no longer carries: who it came from, when, and its first entry are unknown
    (None), never shown as a creation."""

    holder: str
    #: "" for the creator; None: unknown (the handoff that brought it here is archived)
    received_from: str | None
    #: the creation time, or the holder's signed activation receipt; None: not carried
    arrived_at: datetime | None
    arrival_migration: str = ""
    arrival_epoch: int | None = None
    departed_to: str = ""  #: "" while it holds the object
    departed_at: datetime | None = None  #: its signed departure checkpoint
    departure_migration: str = ""
    departure_epoch: int | None = None
    #: The departure is a transfer still without a signed arrival (or a dry run's proposal).
    in_transit: bool = False
    first_entry: int | None = 0  #: None: unknown (its arrival is archived)
    last_entry: int = 0  #: its lineage entries (inclusive)
    #: How many grants (root first) were in force while it held the object: the chain
    #: recorded at its departure, or the chain presented. None: not one of those (renewed).
    grants_in_force: int | None = None
    #: Index of the grant it held its authority from (the leaf of that chain, if the
    #: holder is one of its audiences); None: no authority from the chain.
    authority_from: int | None = None
    #: Why it has (or has not) that authority, in words. The chain is an upper bound:
    #: each host's own policy may narrow it further, which no file shows.
    authority: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "holder": self.holder,
            "received_from": self.received_from,
            "arrived_at": _time_or_none(self.arrived_at),
            "arrival_migration": self.arrival_migration,
            "arrival_epoch": self.arrival_epoch,
            "departed_to": self.departed_to,
            "departed_at": _time_or_none(self.departed_at),
            "departure_migration": self.departure_migration,
            "departure_epoch": self.departure_epoch,
            "in_transit": self.in_transit,
            "entries": [self.first_entry, self.last_entry],
            "grants_in_force": self.grants_in_force,
            "authority_from": self.authority_from,
            "authority": self.authority,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    kind: Kind
    object_id: str
    presenter: str  #: who signed the file (a transfer's source, an archive's exporter)
    signed_at: datetime | None  #: when it says it was signed
    judged_at: datetime | None  #: the time grant windows were judged at
    bundles: tuple[BundleInfo, ...] = ()
    stays: tuple[Stay, ...] = ()
    grants: tuple[GrantInfo, ...] = ()
    checks: tuple[Check, ...] = ()
    hops: int | None = None  #: departures, as custody counts them (None: not verified)
    destination: str = ""  #: a transfer's or proposal's receiver
    #: Handoffs archived before the first stay shown (ADR 0010 step 2) and not restored
    #: from an archive given: their stays are not shown. 0 with full evidence.
    handoffs_archived: int = 0

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status is Status.FAILED)

    def to_json(self) -> dict[str, Any]:
        return {
            "verified": self.ok,
            "kind": self.kind.value,
            "object_id": self.object_id,
            "presenter": self.presenter,
            "destination": self.destination,
            "signed_at": _time_or_none(self.signed_at),
            "judged_at": _time_or_none(self.judged_at),
            "hops": self.hops,
            "handoffs_archived": self.handoffs_archived,
            "trust_bundles": [
                {
                    "trust_domain": b.trust_domain,
                    "sequence": b.sequence,
                    "fingerprint": b.fingerprint,
                    "first_use": b.first_use,
                }
                for b in self.bundles
            ],
            "custody": [s.to_json() for s in self.stays],
            "grants": [g.to_json() for g in self.grants],
            "checks": [c.to_json() for c in self.checks],
        }


def _time_or_none(moment: datetime | None) -> str | None:
    return format_time(moment) if moment is not None else None


# --- archives ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Archive:
    """An object's grants and lineage as one host held them when it exported them."""

    object_id: str
    tenant: str
    holder: str  #: the exporting host, which signs the archive
    state: str  #: its lifecycle state there (``active``, ``moved``, ...), as it says
    epoch: int
    exported_at: datetime
    grants: tuple[str, ...]
    lineage: Lineage

    def encode(self) -> bytes:
        return canonical_json(
            {
                "format": ARCHIVE_FORMAT,
                "object_id": self.object_id,
                "tenant": self.tenant,
                "holder": self.holder,
                "state": self.state,
                "epoch": self.epoch,
                "exported_at": format_time(self.exported_at),
                "grants": list(self.grants),
                "lineage": base64.b64encode(wire.encode_lineage(self.lineage)).decode("ascii"),
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> Archive:
        """The archive in ``raw``: exactly its canonical form, every field bounded."""
        what = "object archive"
        document = load_json(raw, error=PayloadDecodeError, what=what)
        if not isinstance(document, dict) or set(document) != _ARCHIVE_FIELDS:
            raise PayloadDecodeError(
                f"{what} must have exactly the fields {sorted(_ARCHIVE_FIELDS)}"
            )
        if document["format"] != ARCHIVE_FORMAT:
            raise PayloadDecodeError(
                f"{what} format {document['format']!r} is not {ARCHIVE_FORMAT}"
            )
        texts = ("object_id", "tenant", "holder", "state", "exported_at", "lineage")
        wrong = [n for n in texts if not isinstance(document[n], str)]
        epoch = document["epoch"]
        grants = document["grants"]
        if wrong or not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise PayloadDecodeError(f"{what}: {', '.join(wrong) or 'epoch'} has the wrong type")
        if not isinstance(grants, list) or not all(isinstance(g, str) for g in grants):
            raise PayloadDecodeError(f"{what}: grants must be a list of strings")
        if len(grants) > MAX_ARCHIVE_GRANTS:
            raise PayloadDecodeError(
                f"{what} lists {len(grants)} grants; at most {MAX_ARCHIVE_GRANTS}"
            )
        try:
            exported_at = parse_time(document["exported_at"])
            lineage_bytes = base64.b64decode(document["lineage"], validate=True)
        except (ValueError, binascii.Error) as exc:
            raise PayloadDecodeError(f"{what}: {exc}") from exc
        archive = cls(
            object_id=document["object_id"],
            tenant=document["tenant"],
            holder=document["holder"],
            state=document["state"],
            epoch=epoch,
            exported_at=exported_at,
            grants=tuple(grants),
            lineage=wire.decode_lineage(lineage_bytes),
        )
        if archive.encode() != raw:
            raise PayloadDecodeError(f"{what} is not in canonical form")
        return archive


# --- the audit ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Subject:
    """What the file presents, read from its payload (trusted only once checks pass)."""

    kind: Kind
    object_id: str
    presenter: str
    signed_at: datetime
    grants: tuple[str, ...]
    lineage: Lineage
    destination: str = ""  #: transfers and proposals
    state: str = ""  #: archives: the lifecycle state the exporter says it has
    migration: str = ""
    epoch: int = 0


@dataclass
class _Checks:
    items: list[Check] = field(default_factory=list)

    def run(self, name: str, check: Callable[[], str]) -> bool:
        """Run ``check``; a :class:`GatewayError` it raises is this check's failure."""
        try:
            detail = check()
        except GatewayError as exc:
            self.fail(name, exc)
            return False
        self.items.append(Check(name=name, status=Status.OK, detail=detail))
        return True

    def fail(self, name: str, exc: GatewayError) -> None:
        self.items.append(
            Check(name=name, status=Status.FAILED, detail=str(exc), error=type(exc).__name__)
        )

    def ok(self, name: str, detail: str) -> None:
        self.items.append(Check(name=name, status=Status.OK, detail=detail))

    def skip(self, name: str, why: str) -> None:
        self.items.append(Check(name=name, status=Status.SKIPPED, detail=why))


def read_envelope(raw: bytes) -> dsse.Envelope:
    """A file's envelope, in DSSE JSON (what ``gateway export`` writes) or protobuf form.

    Raises :class:`ConfigError`: a file that is not an envelope at all is bad input,
    not a failed verification."""
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"the file is {len(raw)} bytes; at most {MAX_FILE_BYTES} are verified")
    try:
        if raw.lstrip()[:1] == b"{":
            return dsse.from_json(raw, max_size=MAX_FILE_BYTES)
        return wire.decode_envelope(raw, max_size=MAX_FILE_BYTES)
    except GatewayError as exc:
        raise ConfigError(
            f"not a signed gateway envelope: {exc.reason}",
            hint="give a transfer or proposal file (`gateway export`) or an object archive "
            "(`gateway object show --export`)",
        ) from exc


def _bundle_claim(raw: bytes, name: str) -> tuple[str, int]:
    """The domain and sequence a bundle file claims (checked when it is accepted)."""
    try:
        bundle = decode_bundle(dsse.from_json(raw, max_size=MAX_BUNDLE_BYTES).payload)
    except GatewayError as exc:
        raise ConfigError(
            f"{name} is not a signed trust bundle: {exc.reason}",
            hint="give the files partners export with `gateway trust export`",
        ) from exc
    return bundle.trust_domain, bundle.sequence


def audit(
    file: bytes,
    bundles: Sequence[tuple[str, bytes]],
    *,
    at: datetime | None = None,
    now: datetime,
    archive: Sequence[Segment | CustodySegment] | None = None,
) -> Report:
    """Verify ``file`` against the trust ``bundles`` (name, signed bytes); see the module.
    ``now`` is only used when the file names no time of its own (its payload is unreadable).

    Raises :class:`ConfigError` only when the input is not something this verifies: the
    file is not an envelope of a known kind, or a bundle is not a signed bundle.
    """
    if not bundles:
        raise ConfigError("no trust bundle given", hint="pass each partner's bundle with --trust")
    if len(bundles) > MAX_BUNDLES:
        raise ConfigError(f"{len(bundles)} trust bundles given; at most {MAX_BUNDLES}")
    envelope = read_envelope(file)
    kind = _KINDS.get(envelope.payload_type)
    if kind is None:
        if envelope.payload_type == dsse.PayloadType.TRUST_BUNDLE:
            raise ConfigError(
                "this file is a trust bundle",
                hint="pass bundles with --trust, and a transfer or object archive as FILE",
            )
        raise ConfigError(
            f"the envelope carries {envelope.payload_type!r:.80}, not a transfer, proposal or "
            "object archive",
        )
    claims = [(*_bundle_claim(raw, name), name, raw) for name, raw in bundles]
    checks = _Checks()
    try:
        subject = _subject(kind, envelope.payload)
    except GatewayError as exc:
        checks.fail("file payload", exc)
        checks.skip("file signature", "the payload does not say who signed it")
        _trust, infos = _accept_bundles(claims, at or now, checks)
        return Report(
            kind=kind,
            object_id="",
            presenter="",
            signed_at=None,
            judged_at=at,
            bundles=infos,
            checks=tuple(checks.items),
        )
    judged = at or subject.signed_at
    trust, infos = _accept_bundles(claims, judged, checks)
    checks.run(
        f"file signature by {subject.presenter}",
        lambda: _check_file_signature(envelope, subject, trust),
    )
    return _verify(subject, trust, judged, infos, checks, archive)


def _subject(kind: Kind, payload: bytes) -> _Subject:
    if kind is Kind.ARCHIVE:
        archive = Archive.decode(payload)
        return _Subject(
            kind=kind,
            object_id=archive.object_id,
            presenter=archive.holder,
            signed_at=archive.exported_at,
            grants=archive.grants,
            lineage=archive.lineage,
            epoch=archive.epoch,
            state=archive.state,
        )
    transfer = wire.decode_transfer(payload)
    return _Subject(
        kind=kind,
        object_id=transfer.object_id,
        presenter=transfer.source_host,
        signed_at=transfer.issued_at,
        grants=transfer.object.grants,
        lineage=transfer.object.lineage,
        destination=transfer.destination_host,
        migration=transfer.migration_id,
        epoch=transfer.epoch,
    )


def _accept_bundles(
    claims: Sequence[tuple[str, int, str, bytes]], at: datetime, checks: _Checks
) -> tuple[TrustStore, tuple[BundleInfo, ...]]:
    """Accept each domain's bundles as ``gateway trust import`` would, oldest first: the
    first signs itself (trust on first use), each later one is signed by its predecessor."""
    kept: dict[str, TrustBundle] = {}
    infos: list[BundleInfo] = []
    for domain, _sequence, name, raw in sorted(claims, key=lambda c: (c[0], c[1])):
        current = kept.get(domain)

        def accept(
            current: TrustBundle | None = current,
            raw: bytes = raw,
            domain: str = domain,
            name: str = name,
        ) -> str:
            accepted = accept_bundle(current, raw, at=at, trust_domain=domain)
            kept[domain] = accepted
            infos.append(
                BundleInfo(
                    trust_domain=domain,
                    sequence=accepted.sequence,
                    fingerprint=accepted.fingerprint(),
                    first_use=current is None,
                )
            )
            how = (
                "signed by its own bundle keys (first use: compare the fingerprint with the "
                "one its owner gives you)"
                if current is None
                else f"an update signed by the bundle keys of sequence {current.sequence}"
            )
            return (
                f"{name}: sequence {accepted.sequence}, {how}; fingerprint {accepted.fingerprint()}"
            )

        checks.run(f"trust bundle {domain}", accept)
    # Verifying keeps no store: a missing bundle is one more --trust, not an import.
    missing = (
        "pass {domain}'s bundle with --trust FILE (its owner writes it with `gateway trust export`)"
    )
    return TrustStore.of(kept.values(), missing_hint=missing), tuple(infos)


def _check_file_signature(envelope: dsse.Envelope, subject: _Subject, trust: TrustStore) -> str:
    """Signed by the presenter's keys, judged (like checkpoints) at the time it was signed."""
    keys = trust.keys_for_host(subject.presenter, purpose=Purpose.ENVELOPE, at=None)
    opened = dsse.open_envelope(
        envelope,
        payload_type=envelope.payload_type,
        keys=keys,
        threshold=keys.bundle.envelope_threshold,
    )
    for key_id in opened.key_ids:
        record = keys.resolve(key_id)
        if not record.valid_at(subject.signed_at):
            raise ExpiredError(
                f"the file is signed at {format_time(subject.signed_at)}, outside the validity "
                f"of key {key_id[:16]} of {subject.presenter}"
            )
        keys.check_not_retired(record, subject.signed_at, what=f"the {subject.kind.value} file")
    ids = ", ".join(sorted(k[:16] for k in opened.key_ids))
    return f"{subject.kind.value} signed by {subject.presenter} (key {ids}) at {format_time(subject.signed_at)}"


def _verify(
    subject: _Subject,
    trust: TrustStore,
    judged: datetime,
    bundles: tuple[BundleInfo, ...],
    checks: _Checks,
    archive: Sequence[Segment | CustodySegment] | None = None,
) -> Report:
    lineage, object_id = subject.lineage, subject.object_id
    in_flight = subject.kind is not Kind.ARCHIVE
    verified: list[Checkpoint] = []

    def check_lineage() -> str:
        result = verify_lineage(lineage, object_id=object_id, trust=trust, sealed=in_flight)
        verified.extend(result.checkpoints)
        unsigned = result.size - (result.checkpoints[-1].size if result.checkpoints else 0)
        tail = (
            f"; the last {unsigned} entries are covered by no checkpoint yet (only by the "
            "file's signature)"
            if unsigned
            else ""
        )
        return (
            f"{result.size} entries, hash chain intact, Merkle root {result.root.hex()[:16]}, "
            f"{len(result.checkpoints)} signed checkpoint(s){tail}"
        )

    lineage_ok = checks.run("lineage", check_lineage)
    # The handoffs archived before the oldest carried departure, once the archive given
    # put them back and the whole history verified: their departures and arrivals.
    restored: list[tuple[Sequence[Checkpoint], Sequence[dsse.Envelope]]] = []
    if archive is not None:

        def check_archive() -> str:
            whole = verify_history(
                archive, lineage, object_id=object_id, trust=trust, sealed=in_flight
            )
            # The archived handoffs it put back and verified (found once: finding them
            # again was about 8 % of `gateway verify --archive`); their arrivals give the
            # archived stays their signed arrival times.
            arrivals = whole.arrivals
            restored.append((whole.lineage.checkpoints[: len(arrivals)], arrivals))
            return (
                f"{whole.lineage.size} entries from {len(archive)} archive segment(s) and the object: "
                f"the archived ones match the base's root ({lineage.start} entries), and the "
                "whole history verifies as if it had never been compacted"
            )

        if lineage_ok:
            checks.run("archived history", check_archive)
        else:
            checks.skip("archived history", "the lineage did not verify")
    # Departures and arrivals are named by their hop over the whole history: the oldest
    # carried departure follows the handoffs archived before it (its signed hop count,
    # which the custody check pins), whether or not an archive put them back.
    first_hop = archived_before(verified[0]) if verified else 0
    for hop, checkpoint in enumerate(verified, start=first_hop):
        checks.ok(
            f"departure {hop} by {checkpoint.host}",
            f"checkpoint over entries 0..{checkpoint.size - 1} signed at "
            f"{format_time(checkpoint.issued_at)}: to {checkpoint.to} in {checkpoint.migration} "
            f"at epoch {checkpoint.epoch}",
        )
    if in_flight and lineage_ok:
        checks.run("the file's own departure", lambda: _own_departure(subject, verified))
    in_transit = in_flight or bool(verified and verified[-1].host == subject.presenter)
    custody: list[Custody] = []

    def check_custody() -> str:
        found = verify_custody(
            lineage, verified, object_id=object_id, trust=trust, in_transit=in_transit
        )
        custody.append(found)
        archived = (
            f" ({found.archived} archived before the oldest carried departure: the custody "
            f"it commits to)"
            if found.archived
            else ""
        )
        return (
            f"{found.hops} handoff(s){archived}; each departure signed by its sender, each "
            "completed one acknowledged by its receiver's signed arrival: "
            f"{' → '.join(found.holders)}"
        )

    if lineage_ok:
        if checks.run("custody", check_custody):
            acknowledged = verified[: len(lineage.arrivals)]
            for hop, departure in enumerate(acknowledged, start=first_hop):
                checks.ok(
                    f"arrival {hop} at {departure.to}",
                    f"activation receipt for {departure.migration} from "
                    f"{departure.host} at epoch {departure.epoch}",
                )
            if not in_flight:
                checks.run("archive holder", lambda: _holder(subject, custody[0], in_transit))
    else:
        checks.skip("custody", "the lineage did not verify")
    grants, chain = _check_grants(subject, trust, judged, checks)
    if not in_flight and lineage.entries:
        checks.run("archive grants", lambda: _grants_recorded(subject))
    if lineage_ok and subject.grants:
        checks.run(
            "narrowings kept",
            lambda: _extends(lineage, verified, subject, chain),
        )
        _check_departure_chains(subject, trust, verified, checks, first_hop=first_hop)
    archived_checkpoints, archived_arrivals = restored[0] if restored else ((), ())
    stays = _stays(
        subject,
        [*archived_checkpoints, *verified],
        [*archived_arrivals, *lineage.arrivals],
        in_transit=in_transit,
        grants=grants,
    )
    unshown = archived_before(verified[0]) if verified and not restored else 0
    return Report(
        kind=subject.kind,
        object_id=object_id,
        presenter=subject.presenter,
        signed_at=subject.signed_at,
        judged_at=judged,
        bundles=bundles,
        stays=stays,
        grants=grants,
        checks=tuple(checks.items),
        hops=custody[0].hops if custody else None,
        destination=subject.destination,
        handoffs_archived=unshown,
    )


def _own_departure(subject: _Subject, checkpoints: Sequence[Checkpoint]) -> str:
    """A transfer's lineage ends with its source's departure for exactly this migration."""
    last = checkpoints[-1] if checkpoints else None
    if (
        last is None
        or last.host != subject.presenter
        or last.to != subject.destination
        or last.migration != subject.migration
        or last.epoch != subject.epoch
    ):
        raise CustodyError(
            f"the {subject.kind.value} {subject.migration} from {subject.presenter} to "
            f"{subject.destination} at epoch {subject.epoch} does not end with its source's "
            "departure for it",
            hint="refuse it; the source must checkpoint the lineage for this very handoff",
        )
    return f"the last checkpoint is {subject.presenter}'s departure to {subject.destination} in {subject.migration}"


def _holder(subject: _Subject, custody: Custody, in_transit: bool) -> str:
    """An archive is exported by the host that holds the object, or by the one it left."""
    if in_transit:
        return f"{subject.presenter} exported it after it left (its last departure has no arrival here)"
    if subject.state not in _HELD_STATES:
        raise CustodyError(
            f"the archive says {subject.object_id} is {subject.state} on {subject.presenter}, "
            "so it does not hold it",
            hint="export the archive on the host that holds the object",
        )
    if not custody.holders or custody.holders[-1] != subject.presenter:
        held = custody.holders[-1] if custody.holders else "nobody"
        raise CustodyError(
            f"the archive is signed by {subject.presenter}, but its custody ends at {held}",
            hint="an archive is exported by the object's holder; a missing arrival or "
            "departure breaks this",
        )
    return f"{subject.presenter} holds the object, as the last signed arrival shows"


def _grants_recorded(subject: _Subject) -> str:
    """The grants an archive presents are the ones its exporter's last entry recorded.

    The exporter signs both; a holder that drops a narrowing it made itself since its last
    departure (which no one else signed) must also rewrite its own entries to pass, and
    what it cannot rewrite, the departures of others, is checked by "narrowings kept"."""
    recorded = subject.lineage.entries[-1].credentials_digest
    if credentials_digest(subject.grants) != recorded:
        raise CustodyError(
            f"the archive presents {len(subject.grants)} grant(s), but its last lineage "
            f"entry (#{subject.lineage.entries[-1].seq}) recorded other grants",
            hint="the exporter changed the grants it presents without recording it",
        )
    return "the grants presented are the ones the last lineage entry recorded"


def _check_grants(
    subject: _Subject, trust: TrustStore, judged: datetime, checks: _Checks
) -> tuple[tuple[GrantInfo, ...], VerifiedChain | None]:
    if not subject.grants:
        checks.ok("grant chain", "no grants: the object carries no authority anywhere")
        return (), None
    infos: list[GrantInfo] = []
    for index, compact in enumerate(subject.grants[:MAX_ARCHIVE_GRANTS]):

        def one(index: int = index, compact: str = compact) -> str:
            grant = verify_grant(compact, trust=trust, at=judged)
            infos.append(GrantInfo.of(index, grant))
            return (
                f"{grant.grant_id} by {grant.issuer} (key {grant.key_id[:16]}), valid "
                f"{format_time(grant.not_before)} to {format_time(grant.expires_at)}"
            )

        checks.run(f"grant {index}", one)
    chain: list[VerifiedChain] = []

    def links() -> str:
        verified = verify_chain(subject.grants, object_id=subject.object_id, trust=trust, at=judged)
        chain.append(verified)
        return (
            f"{len(verified.grants)} grant(s) from {verified.grants[0].issuer}, the owner's "
            f"domain; each link narrows its parent; valid at {format_time(judged)}"
        )

    checks.run("grant chain", links)
    return tuple(infos), chain[0] if chain else None


def _extends(
    lineage: Lineage,
    checkpoints: Sequence[Checkpoint],
    subject: _Subject,
    chain: VerifiedChain | None,
) -> str:
    require_extends_departures(
        lineage, checkpoints, subject.grants, chain, object_id=subject.object_id
    )
    return "the grants presented extend the chain recorded at every departure"


def _recorded_length(lineage: Lineage, checkpoint: Checkpoint, grants: Sequence[str]) -> int | None:
    """How many of ``grants`` (root first) the departure recorded; None: another chain."""
    recorded = checkpoint.credentials_digest
    for length in range(len(grants) + 1):
        if credentials_digest(grants[:length]) == recorded:
            return length
    return None


def _check_departure_chains(
    subject: _Subject,
    trust: TrustStore,
    checkpoints: Sequence[Checkpoint],
    checks: _Checks,
    *,
    first_hop: int,
) -> None:
    """Each chain recorded at a departure was valid when the object left: checked at the
    first and the last departure that recorded it (a validity window is an interval).
    ``first_hop``: the hop of ``checkpoints[0]``, which names the checks."""
    by_length: dict[int, list[int]] = {}
    for index, checkpoint in enumerate(checkpoints):
        length = _recorded_length(subject.lineage, checkpoint, subject.grants)
        if length:
            by_length.setdefault(length, []).append(index)
    for length, indexes in sorted(by_length.items()):
        for index in sorted({indexes[0], indexes[-1]}):
            checkpoint = checkpoints[index]

            def valid(length: int = length, checkpoint: Checkpoint = checkpoint) -> str:
                verify_chain(
                    subject.grants[:length],
                    object_id=subject.object_id,
                    trust=trust,
                    at=checkpoint.issued_at,
                )
                return (
                    f"grants 0..{length - 1} (recorded when it left {checkpoint.host}) were "
                    f"valid at {format_time(checkpoint.issued_at)}"
                )

            checks.run(f"authority at departure {first_hop + index}", valid)


def _decoded_arrival(raw: dsse.Envelope) -> Receipt | None:
    try:
        return wire.decode_receipt(raw.payload, ReceiptKind.ACTIVATED)
    except GatewayError:
        return None


def _stays(
    subject: _Subject,
    checkpoints: Sequence[Checkpoint],
    arrivals: Sequence[dsse.Envelope],
    *,
    in_transit: bool,
    grants: Sequence[GrantInfo],
) -> tuple[Stay, ...]:
    """Who held the object, from the verified departures and the arrivals' receipts
    (``arrivals[i]`` for ``checkpoints[i]``: the carried ones, after any the archive put
    back). When the oldest of ``checkpoints`` follows archived handoffs, the story starts
    with its sender, as gateway.custody does, from an arrival nothing here shows."""
    lineage = subject.lineage
    if not lineage.entries:
        return ()
    by_index = {g.index: g for g in grants}
    stays: list[Stay] = []
    holder: str
    received_from: str | None
    first: int | None
    arrived_at: datetime | None
    if checkpoints and archived_before(checkpoints[0]):
        holder, received_from, arrived_at, first = checkpoints[0].host, None, None, None
    else:
        created = lineage.entry(0)
        holder, received_from, first = lineage.creator(), "", 0
        arrived_at = created.time if created else None
    arrival: Receipt | None = None
    for index, checkpoint in enumerate(checkpoints):
        length = _recorded_length(lineage, checkpoint, subject.grants)
        transit = index == len(checkpoints) - 1 and in_transit
        stays.append(
            _stay(
                holder,
                received_from,
                arrived_at,
                arrival,
                checkpoint,
                transit,
                first,
                checkpoint.size - 1,
                length,
                by_index,
            )
        )
        holder, received_from, first = checkpoint.to, checkpoint.host, checkpoint.size
        arrival = _decoded_arrival(arrivals[index]) if index < len(arrivals) else None
        arrived_at = arrival.issued_at if arrival is not None else None
    if not (checkpoints and in_transit):
        stays.append(
            _stay(
                holder,
                received_from,
                arrived_at,
                arrival,
                None,
                False,
                first,
                lineage.size - 1,
                len(subject.grants),
                by_index,
            )
        )
    return tuple(stays)


def _stay(
    holder: str,
    received_from: str | None,
    arrived_at: datetime | None,
    arrival: Receipt | None,
    departure: Checkpoint | None,
    in_transit: bool,
    first: int | None,
    last: int,
    length: int | None,
    grants: dict[int, GrantInfo],
) -> Stay:
    authority_from: int | None = None
    if length is None:
        authority = "its chain was renewed by the owner since; the replaced grants are not carried"
    elif length == 0:
        authority = "no grants: no authority"
    elif length - 1 not in grants:
        authority = f"grant {length - 1} did not verify"
    elif audience_admits(grants[length - 1].audiences, holder):
        authority_from = length - 1
        leaf = grants[length - 1]
        authority = f"grant {leaf.index} by {leaf.issuer}, of which it is an audience"
    else:
        authority = (
            f"none: not an audience of grant {length - 1} "
            f"({', '.join(grants[length - 1].audiences)})"
        )
    return Stay(
        holder=holder,
        received_from=received_from,
        arrived_at=arrived_at,
        arrival_migration=arrival.migration_id if arrival else "",
        arrival_epoch=arrival.epoch if arrival else None,
        departed_to=departure.to if departure else "",
        departed_at=departure.issued_at if departure else None,
        departure_migration=departure.migration if departure else "",
        departure_epoch=departure.epoch if departure else None,
        in_transit=in_transit,
        first_entry=first,
        last_entry=last,
        grants_in_force=length,
        authority_from=authority_from,
        authority=authority,
    )


def archive_of(
    *,
    object_id: str,
    tenant: str,
    holder: str,
    state: str,
    epoch: int,
    exported_at: datetime,
    grants: Sequence[str],
    lineage: Lineage,
) -> bytes:
    """The payload of an object archive (sign it as :data:`ARCHIVE_PAYLOAD_TYPE`)."""
    return Archive(
        object_id=object_id,
        tenant=tenant,
        holder=holder,
        state=state,
        epoch=epoch,
        exported_at=exported_at,
        grants=tuple(grants),
        lineage=lineage,
    ).encode()
