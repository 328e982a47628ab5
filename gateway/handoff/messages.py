"""The messages of the handoff protocol as domain values (their wire form is in gateway.wire).

No I/O.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from datetime import datetime

from gateway import envelope as dsse
from gateway._decode import load_json
from gateway._time import format_time, parse_time
from gateway.authority import Admission, EffectiveAuthority
from gateway.errors import PayloadDecodeError
from gateway.model import GovernedObject

NONCE_BYTES = 16


@dataclass(frozen=True, slots=True, kw_only=True)
class Transfer:
    """A frozen object on its way from ``source_host`` to ``destination_host`` only."""

    migration_id: str
    epoch: int
    source_host: str
    destination_host: str
    issued_at: datetime
    expires_at: datetime
    nonce: bytes
    object: GovernedObject  #: the snapshot: data, rules, cycle, grants, sealed lineage
    previous_transfer_digest: bytes = b""

    @property
    def object_id(self) -> str:
        return self.object.object_id


class ReceiptKind(enum.Enum):
    """Staged and activation receipts are different messages with different payload types,
    so one can never be presented as the other."""

    STAGED = dsse.PayloadType.STAGED_RECEIPT
    ACTIVATED = dsse.PayloadType.ACTIVATION_RECEIPT

    __hash__ = object.__hash__  # as gateway.handoff.records.SourceStep's

    @property
    def payload_type(self) -> str:
        # From a dict made once, not through Enum's ``value`` descriptor (a Python call
        # and str()), on every receipt made or checked.
        return _PAYLOAD_TYPES[self]


_PAYLOAD_TYPES = {kind: str(kind.value) for kind in ReceiptKind}


@dataclass(frozen=True, slots=True, kw_only=True)
class Receipt:
    kind: ReceiptKind
    migration_id: str
    object_id: str
    epoch: int
    host: str  #: the destination, which signs
    source_host: str  #: the source it answers
    transfer_digest: bytes
    issued_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """One capability of the chain and what became of it on the evaluating host."""

    capability: str
    outcome: str  #: granted, narrowed or denied
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Evaluation:
    """A host's answer to a dry run: would it take the object, and with what authority."""

    host: str
    admitted: bool
    refusal: str = ""
    decisions: tuple[Decision, ...] = ()
    authority: EffectiveAuthority | None = None

    @classmethod
    def of(cls, host: str, admission: Admission) -> Evaluation:
        return cls(
            host=host,
            admitted=True,
            decisions=tuple(
                Decision(capability=str(e.capability), outcome=e.outcome.value, reason=e.reason)
                for e in admission.explanations
            ),
            authority=admission.authority,
        )

    @classmethod
    def refused(cls, host: str, error: Exception) -> Evaluation:
        return cls(host=host, admitted=False, refusal=f"{type(error).__name__}: {error}")

    def render(self) -> str:
        if not self.admitted:
            return f"{self.host} would refuse the object: {self.refusal}"
        lines = [f"{self.host} would admit the object with this authority:"]
        if not self.decisions:
            lines.append("  (its credentials grant nothing)")
        width = max((len(d.capability) for d in self.decisions), default=0)
        lines.extend(f"  {d.capability:<{width}}  {d.reason}" for d in self.decisions)
        if self.authority is not None:
            lines.append(f"effective: {self.authority.allow}")
            if self.authority.deny.capabilities:
                lines.append(f"except:    {self.authority.deny}")
        return "\n".join(lines)


class Outcome(enum.Enum):
    COMMITTED = "committed"
    ABORTED = "aborted"


@dataclass(frozen=True, slots=True, kw_only=True)
class DecisionAnswer:
    """A source's signed answer to Decision: what became of one migration, for one
    destination. Signed so that only the source itself can make a staged copy live."""

    migration_id: str
    outcome: Outcome
    source: str
    destination: str
    issued_at: datetime

    def encode(self) -> bytes:
        return _canonical(
            {
                "migration_id": self.migration_id,
                "outcome": self.outcome.value,
                "source": self.source,
                "destination": self.destination,
                "issued_at": format_time(self.issued_at),
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> DecisionAnswer:
        texts = _texts(raw, _DECISION_FIELDS, what="decision answer")
        try:
            answer = cls(
                migration_id=texts["migration_id"],
                outcome=Outcome(texts["outcome"]),
                source=texts["source"],
                destination=texts["destination"],
                # parse_time refuses any time text format_time would not write back.
                issued_at=parse_time(texts["issued_at"]),
            )
        except ValueError as exc:
            raise PayloadDecodeError(f"decision answer does not parse: {exc}") from exc
        if answer.encode() != raw:
            raise PayloadDecodeError("decision answer is not in canonical form")
        return answer


_DECISION_FIELDS = frozenset({"migration_id", "outcome", "source", "destination", "issued_at"})


@dataclass(frozen=True, slots=True, kw_only=True)
class UnknownMigrationAnswer:
    """A destination's signed answer to a Commit for a migration it holds no record of
    (its settled record was pruned after its retention, gateway.handoff.pruning). Signed
    and naming the one migration, source and destination, so that a source settles on
    the destination's own word, kept as evidence, never on an error status that any
    layer in between could have made up. What the source then checks before it settles
    is in gateway.handoff.source (``Source._settle_forgotten``)."""

    migration_id: str
    source: str  #: the source that sent Commit
    destination: str  #: the host that signed: it does not know the migration
    issued_at: datetime

    def encode(self) -> bytes:
        return _canonical(
            {
                "migration_id": self.migration_id,
                "source": self.source,
                "destination": self.destination,
                "issued_at": format_time(self.issued_at),
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> UnknownMigrationAnswer:
        texts = _texts(raw, _UNKNOWN_FIELDS, what="unknown-migration answer")
        try:
            answer = cls(
                migration_id=texts["migration_id"],
                source=texts["source"],
                destination=texts["destination"],
                issued_at=parse_time(texts["issued_at"]),
            )
        except ValueError as exc:
            raise PayloadDecodeError(f"unknown-migration answer does not parse: {exc}") from exc
        if answer.encode() != raw:
            raise PayloadDecodeError("unknown-migration answer is not in canonical form")
        return answer


_UNKNOWN_FIELDS = frozenset({"migration_id", "source", "destination", "issued_at"})


def _canonical(document: dict[str, str]) -> bytes:
    """A signed answer's bytes: sorted keys, no spaces (the only form decode accepts)."""
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _texts(raw: bytes, fields: frozenset[str], *, what: str) -> dict[str, str]:
    """The string fields of a signed answer: exactly ``fields``, each a string."""
    document = load_json(raw, error=PayloadDecodeError, what=what)
    if not isinstance(document, dict) or set(document) != fields:
        raise PayloadDecodeError(f"{what} must be an object with the fields {sorted(fields)}")
    wrong = [name for name in sorted(fields) if not isinstance(document[name], str)]
    if wrong:
        raise PayloadDecodeError(f"{what}: {', '.join(wrong)} must be strings")
    return {name: document[name] for name in fields}
