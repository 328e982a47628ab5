"""Journal records: what each side has durably decided about one migration. No I/O."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from gateway.model import GovernedObject


class SourceStep(enum.Enum):
    FROZEN = "frozen"  #: object frozen, transfer sealed; may still abort
    COMMITTED = "committed"  #: point of no return: the object moves
    DONE = "done"  #: destination confirmed activation
    ABORTED = "aborted"  #: object resumed here; can never commit

    # Hashed as the singletons they are, as gateway.keys' enums (Enum's own __hash__ is
    # Python code hashing the name, about 1,100 instructions a call): a record's step is
    # looked up in sets and dicts on every write (settled_form, the wire's step tables).
    # Members are compared by identity (Enum defines no __eq__), so hash and equality
    # agree; iteration order of a set of steps was never fixed (string hashes are salted).
    __hash__ = object.__hash__


class DestinationStep(enum.Enum):
    STAGED = "staged"  #: verified and stored, not live
    ACTIVATED = "activated"  #: live here
    ABORTED = "aborted"  #: staged copy discarded (or never staged); can never activate

    __hash__ = object.__hash__  # as SourceStep's


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceRecord:
    migration_id: str
    object_id: str
    tenant: str
    destination_host: str
    step: SourceStep
    #: exact serialized transfer envelope, re-sent unchanged on retries; empty once the
    #: record is past FROZEN (COMMITTED, DONE, ABORTED): the destination then holds it
    #: or never will, and only its digest and epoch are still read
    transfer: bytes
    staged_receipt: bytes = b""
    activation_receipt: bytes = b""
    created_at: datetime
    updated_at: datetime
    reason: str = ""
    #: digest of the transfer payload; set when the record settles (b"" in older records)
    transfer_digest: bytes = b""
    #: epoch the transfer carried; set when the record settles (0 in older records)
    epoch: int = 0


#: Steps after which a source record never sends its transfer again.
SETTLED_SOURCE_STEPS = frozenset({SourceStep.DONE, SourceStep.ABORTED})
#: Steps whose record no longer carries its transfer (see journal.settled_form): after
#: COMMITTED the source sends only Commit (by migration id) and answers Decision, and
#: the staged receipt it journaled with COMMITTED shows the destination holds the transfer.
TRANSFER_DROPPED_STEPS = frozenset({SourceStep.COMMITTED, *SETTLED_SOURCE_STEPS})


@dataclass(frozen=True, slots=True, kw_only=True)
class DestinationRecord:
    migration_id: str
    object_id: str
    tenant: str
    source_host: str
    step: DestinationStep
    transfer_digest: bytes
    staged_receipt: bytes = b""
    activation_receipt: bytes = b""
    staged: GovernedObject | None = None
    created_at: datetime
    updated_at: datetime
    reason: str = ""
