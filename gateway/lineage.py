"""Lineage: the hash-chained, host-signed record of everything that happened to an object.

Invariants this module keeps:

* **Exact bytes.** An entry is hashed as its canonical JSON bytes; :meth:`LineageEntry.decode`
  accepts only bytes that re-encode to themselves, so every entry has one hash.
* **Chained.** Entry *n* holds the leaf hash of entry *n-1* (RFC 9162 leaf hash
  ``SHA-256(0x00 || entry)``), and its sequence number is *n*. Editing, dropping,
  inserting or reordering an entry breaks the chain at that point.
* **Signed by who recorded it.** Each host that lets an object go signs a checkpoint:
  the Merkle tree head (RFC 9162) over every entry so far. The entries after the
  previous checkpoint must all be recorded by the host that signs the next one, and
  the checkpoint must be signed by a key trusted for that host. Verification costs one
  hash per entry and one signature per hop, not one signature per entry.
* **Only extended.** A host that saw an object before checks that the lineage it
  receives now starts with exactly the entries it saw (:func:`verify_extends`), so a
  fork, a truncation or a rewrite of history is detected.

No I/O.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway import envelope as dsse
from gateway import merkle
from gateway._decode import load_json
from gateway._time import format_time, parse_time
from gateway.errors import ConfigError, ExpiredError, LineageError, VerificationError
from gateway.identity import HostId, ObjectId
from gateway.keys import Purpose, Signer
from gateway.trust import TrustStore, canonical_json

MAX_DETAIL = 1024
_ENTRY_FIELDS = frozenset(
    {
        "seq",
        "prev",
        "time",
        "host",
        "kind",
        "epoch",
        "generation",
        "data_digest",
        "credentials_digest",
        "detail",
    }
)
_CHECKPOINT_FIELDS = frozenset(
    {"object_id", "host", "epoch", "size", "root", "issued_at", "to", "migration"}
)


class EntryKind(enum.Enum):
    CREATED = "created"
    UPDATED = "updated"
    EVALUATED = "evaluated"
    ACTION_ADMITTED = "action-admitted"
    ACTION_DENIED = "action-denied"
    ATTENUATED = "attenuated"
    FROZEN = "frozen"
    ABORTED = "aborted"
    REHOSTED = "rehosted"
    WOKEN = "woken"  #: a message on a subscribed topic woke the object (runtime/events.py)
    CALLED = "called"  #: a call was answered (runtime/calls.py)
    CALL_DENIED = "call-denied"  #: a call was refused; repeats are counted (runtime/calls.py)


def _strict_json(raw: bytes, fields: frozenset[str], what: str) -> dict[str, Any]:
    document = load_json(raw, error=LineageError, what=what)
    if not isinstance(document, dict) or set(document) != fields:
        raise LineageError(f"{what} must be an object with exactly the fields {sorted(fields)}")
    if canonical_json(document) != raw:
        raise LineageError(f"{what} is not in canonical form (sorted keys, no spaces)")
    return document


def _field(document: dict[str, Any], name: str, kind: type, what: str) -> Any:
    value = document[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise LineageError(f"{what}: {name} must be {kind.__name__}")
    if isinstance(value, int) and value < 0:
        raise LineageError(f"{what}: {name} must not be negative")
    return value


def _hex(document: dict[str, Any], name: str, what: str, *, empty_ok: bool = False) -> bytes:
    text = _field(document, name, str, what)
    if empty_ok and text == "":
        return b""
    try:
        value = bytes.fromhex(text)
    except ValueError as exc:
        raise LineageError(f"{what}: {name} is not hex") from exc
    if len(value) != 32 or value.hex() != text:
        raise LineageError(f"{what}: {name} must be 64 lowercase hex digits")
    return value


class _EncodedOnce:
    """Holds an entry's canonical bytes once computed (or as received); not a field."""

    __slots__ = ("_raw",)
    _raw: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class LineageEntry(_EncodedOnce):
    seq: int
    prev: bytes  #: leaf hash of the previous entry; empty for the first
    time: datetime
    host: str
    kind: EntryKind
    epoch: int
    generation: int
    data_digest: bytes
    credentials_digest: bytes
    detail: str = ""

    def encode(self) -> bytes:
        # Entries are immutable, so their bytes are computed once: appends and wire
        # encoding would otherwise re-encode the whole history every time.
        try:
            return self._raw
        except AttributeError:
            raw = self._encode()
            object.__setattr__(self, "_raw", raw)
            return raw

    def _encode(self) -> bytes:
        return canonical_json(
            {
                "seq": self.seq,
                "prev": self.prev.hex(),
                "time": format_time(self.time),
                "host": self.host,
                "kind": self.kind.value,
                "epoch": self.epoch,
                "generation": self.generation,
                "data_digest": self.data_digest.hex(),
                "credentials_digest": self.credentials_digest.hex(),
                "detail": self.detail,
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> LineageEntry:
        what = "lineage entry"
        document = _strict_json(raw, _ENTRY_FIELDS, what)
        try:
            kind = EntryKind(_field(document, "kind", str, what))
            time_text = _field(document, "time", str, what)
            moment = parse_time(time_text)
        except ValueError as exc:
            raise LineageError(f"{what}: {exc}") from exc
        entry = cls(
            seq=_field(document, "seq", int, what),
            prev=_hex(document, "prev", what, empty_ok=True),
            time=moment,
            host=_field(document, "host", str, what),
            kind=kind,
            epoch=_field(document, "epoch", int, what),
            generation=_field(document, "generation", int, what),
            data_digest=_hex(document, "data_digest", what),
            credentials_digest=_hex(document, "credentials_digest", what),
            detail=_field(document, "detail", str, what),
        )
        # _strict_json checked that ``raw`` is the canonical dump of ``document``, and
        # parse_time accepts only the text format_time writes; every other field converts
        # back to the same JSON value, so ``raw`` is exactly what encode() produces.
        object.__setattr__(entry, "_raw", bytes(raw))
        return entry

    def leaf_hash(self) -> bytes:
        return merkle.leaf_hash(self.encode())


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkpoint:
    """What a host vouches for when an object leaves it: the first ``size`` entries, and
    that it hands the object to ``to`` in ``migration`` (the signed record of a departure,
    which the next receiver counts hops from: the sender cannot unsay it later)."""

    object_id: str
    host: str
    epoch: int
    size: int
    root: bytes
    issued_at: datetime
    to: str
    migration: str

    def encode(self) -> bytes:
        return canonical_json(
            {
                "object_id": self.object_id,
                "host": self.host,
                "epoch": self.epoch,
                "size": self.size,
                "root": self.root.hex(),
                "issued_at": format_time(self.issued_at),
                "to": self.to,
                "migration": self.migration,
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> Checkpoint:
        what = "checkpoint"
        document = _strict_json(raw, _CHECKPOINT_FIELDS, what)
        try:
            issued_at = parse_time(_field(document, "issued_at", str, what))
        except ValueError as exc:
            raise LineageError(f"{what}: {exc}") from exc
        return cls(
            object_id=_field(document, "object_id", str, what),
            host=_field(document, "host", str, what),
            epoch=_field(document, "epoch", int, what),
            size=_field(document, "size", int, what),
            root=_hex(document, "root", what),
            issued_at=issued_at,
            to=_field(document, "to", str, what),
            migration=_field(document, "migration", str, what),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Lineage:
    entries: tuple[LineageEntry, ...] = ()
    #: One per departure, oldest first, each signed by the host the object left.
    checkpoints: tuple[dsse.Envelope, ...] = ()
    #: One per completed arrival, oldest first: the receiver's signed activation receipt
    #: for the departure of the same index (see gateway.custody).
    arrivals: tuple[dsse.Envelope, ...] = ()

    def __len__(self) -> int:
        return len(self.entries)

    def leaf_hashes(self) -> list[bytes]:
        return [e.leaf_hash() for e in self.entries]

    def root(self) -> bytes:
        return merkle.root(self.leaf_hashes())

    def append(
        self,
        kind: EntryKind,
        *,
        host: str,
        at: datetime,
        epoch: int,
        generation: int,
        data_digest: bytes,
        credentials_digest: bytes,
        detail: str = "",
    ) -> Lineage:
        if len(detail) > MAX_DETAIL:
            detail = detail[: MAX_DETAIL - 1] + "…"
        previous = self.entries[-1].leaf_hash() if self.entries else b""
        entry = LineageEntry(
            seq=len(self.entries),
            prev=previous,
            time=at,
            host=host,
            kind=kind,
            epoch=epoch,
            generation=generation,
            data_digest=data_digest,
            credentials_digest=credentials_digest,
            detail=detail,
        )
        return Lineage(
            entries=(*self.entries, entry), checkpoints=self.checkpoints, arrivals=self.arrivals
        )

    def sealed(
        self,
        *,
        object_id: str,
        host: str,
        epoch: int,
        at: datetime,
        signer: Signer,
        to: str,
        migration: str,
    ) -> Lineage:
        """This lineage with a checkpoint by ``host`` over every entry so far, recording
        its departure to ``to`` in ``migration``."""
        checkpoint = Checkpoint(
            object_id=object_id,
            host=host,
            epoch=epoch,
            size=len(self.entries),
            root=self.root(),
            issued_at=at,
            to=to,
            migration=migration,
        )
        signed = dsse.seal(checkpoint.encode(), dsse.PayloadType.CHECKPOINT, [signer])
        return Lineage(
            entries=self.entries, checkpoints=(*self.checkpoints, signed), arrivals=self.arrivals
        )

    def arrived(self, receipt: dsse.Envelope) -> Lineage:
        """This lineage with the receiver's signed activation receipt for its last departure."""
        return Lineage(
            entries=self.entries,
            checkpoints=self.checkpoints,
            arrivals=(*self.arrivals, receipt),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedLineage:
    size: int
    root: bytes
    hosts: tuple[str, ...]  #: hosts that signed checkpoints, oldest first
    checkpoints: tuple[Checkpoint, ...]


def verify_chain(entries: Sequence[LineageEntry]) -> list[bytes]:
    """Check sequence numbers and hash links; return the leaf hashes."""
    hashes: list[bytes] = []
    previous_epoch = 0
    for index, entry in enumerate(entries):
        if entry.seq != index:
            raise LineageError(f"entry {index} has sequence number {entry.seq}")
        expected = hashes[-1] if hashes else b""
        if entry.prev != expected:
            raise LineageError(
                f"entry {index} does not link to entry {index - 1}: the lineage was edited, "
                "reordered or has an entry missing",
                hint="refuse the object; ask its previous host for the original",
            )
        # The epoch is the fencing token: it starts at 0 and only a freeze raises it, by
        # exactly one. A history that jumps (to poison a receiver's fence) or stalls
        # (to reuse an epoch) is not one the protocol can produce.
        if index == 0 and (entry.kind is not EntryKind.CREATED or entry.epoch != 0):
            raise LineageError("the lineage does not start with the object's creation at epoch 0")
        if index > 0:
            step = 1 if entry.kind is EntryKind.FROZEN else 0
            if entry.epoch != previous_epoch + step:
                raise LineageError(
                    f"entry {index} ({entry.kind.value}) is at epoch {entry.epoch} after epoch "
                    f"{previous_epoch}; only a freeze raises the epoch, by one"
                )
        previous_epoch = entry.epoch
        hashes.append(entry.leaf_hash())
    return hashes


def verify_lineage(
    lineage: Lineage,
    *,
    object_id: str,
    trust: TrustStore,
    sealed: bool,
) -> VerifiedLineage:
    """Verify links and every checkpoint; with ``sealed``, the last checkpoint must
    cover every entry (an object in transit carries nothing its host did not sign).

    Raises :class:`LineageError`, or the verification error of a checkpoint signature.
    """
    hashes = verify_chain(lineage.entries)
    if lineage.entries:
        # Only the domain that owns an object id creates objects under it (the object's
        # first host signs the first checkpoint, so this cannot be forged by a peer).
        owner = ObjectId.parse(object_id).trust_domain
        creator = lineage.entries[0].host
        try:
            created_in = HostId.parse(creator).trust_domain
        except ConfigError as exc:
            raise LineageError(
                f"the first entry names {creator!r}, which is not a host id"
            ) from exc
        if created_in != owner:
            raise LineageError(
                f"{object_id} was created by {creator}, outside {owner}, the domain that owns it"
            )
    covered = 0
    hosts: list[str] = []
    checkpoints: list[Checkpoint] = []
    for index, envelope in enumerate(lineage.checkpoints):
        if covered >= len(lineage.entries):
            raise LineageError(f"checkpoint {index} covers no new entries")
        # The host that must have signed is the one that recorded the next entries; keys
        # are looked up for it before the checkpoint payload is parsed.
        host = lineage.entries[covered].host
        try:
            keys = trust.keys_for_host(host, purpose=Purpose.ENVELOPE, at=None)
        except ConfigError as exc:
            # The entry's host is data from the wire, not configuration: a malformed one
            # is a broken lineage.
            raise LineageError(
                f"entry {covered} names {host!r}, which is not a host id: {exc.reason}"
            ) from exc
        except VerificationError as exc:
            raise type(exc)(f"checkpoint {index} by {host}: {exc.reason}", hint=exc.hint) from exc
        try:
            # The domain's envelope threshold holds for checkpoints as for every envelope.
            verified = dsse.open_envelope(
                envelope,
                payload_type=dsse.PayloadType.CHECKPOINT,
                keys=keys,
                threshold=keys.bundle.envelope_threshold,
            )
        except VerificationError as exc:
            raise type(exc)(f"checkpoint {index} by {host}: {exc.reason}", hint=exc.hint) from exc
        checkpoint = Checkpoint.decode(verified.payload)
        # Keys rotate: a checkpoint is good if its key was valid, and not yet retired, when
        # it was signed (its signed issued_at), so retiring a key strands nothing it
        # vouched for. Revoked keys were refused when resolving above: revocation
        # distrusts the past too.
        for key_id in verified.key_ids:
            record = keys.resolve(key_id)
            if not record.valid_at(checkpoint.issued_at):
                raise ExpiredError(
                    f"checkpoint {index} by {host} was signed at {format_time(checkpoint.issued_at)}, "
                    f"outside the validity of key {key_id[:16]}"
                )
            keys.check_not_retired(
                record, checkpoint.issued_at, what=f"checkpoint {index} by {host} of {object_id}"
            )
        if checkpoint.object_id != object_id:
            raise LineageError(f"checkpoint {index} is for {checkpoint.object_id}, not {object_id}")
        if checkpoint.host != host:
            raise LineageError(
                f"checkpoint {index} names {checkpoint.host}, but {host} recorded its entries"
            )
        if not covered < checkpoint.size <= len(lineage.entries):
            raise LineageError(
                f"checkpoint {index} covers {checkpoint.size} entries; expected more than "
                f"{covered} and at most {len(lineage.entries)}"
            )
        for entry in lineage.entries[covered : checkpoint.size]:
            if entry.host != host:
                raise LineageError(
                    f"entry {entry.seq} is recorded by {entry.host} but vouched for by {host}",
                    hint="each host signs only what it recorded",
                )
        if checkpoint.epoch != lineage.entries[checkpoint.size - 1].epoch:
            raise LineageError(
                f"checkpoint {index} by {host} is for epoch {checkpoint.epoch}, but the last "
                f"entry it covers is at epoch {lineage.entries[checkpoint.size - 1].epoch}"
            )
        if merkle.root(hashes[: checkpoint.size]) != checkpoint.root:
            raise LineageError(f"checkpoint {index} by {host} does not match the entries it covers")
        covered = checkpoint.size
        hosts.append(host)
        checkpoints.append(checkpoint)
    if sealed and covered != len(lineage.entries):
        raise LineageError(
            f"{len(lineage.entries) - covered} lineage entries are not covered by a signed checkpoint",
            hint="the sending host must checkpoint the lineage before the object leaves",
        )
    return VerifiedLineage(
        size=len(lineage.entries),
        root=merkle.root(hashes),
        hosts=tuple(hosts),
        checkpoints=tuple(checkpoints),
    )


def verify_extends(lineage: Lineage, *, seen_size: int, seen_root: bytes) -> None:
    """The lineage must start with exactly the ``seen_size`` entries seen before."""
    if len(lineage.entries) < seen_size:
        raise LineageError(
            f"lineage has {len(lineage.entries)} entries, fewer than the {seen_size} seen here before",
            hint="history was truncated; refuse the object",
        )
    if merkle.root([e.leaf_hash() for e in lineage.entries[:seen_size]]) != seen_root:
        raise LineageError(
            "lineage does not extend the history seen here before (a fork or a rewrite)",
            hint="refuse the object and compare both histories with `gateway lineage`",
        )


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def credentials_digest(grants: Sequence[str]) -> bytes:
    """SHA-256 of the grants as a canonical JSON array (order matters: root first)."""
    return digest(json.dumps(list(grants), separators=(",", ":")).encode("ascii"))
