"""The messages of the handoff protocol as domain values (their wire form is in gateway.wire).

No I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from gateway import envelope as dsse
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

    @property
    def payload_type(self) -> str:
        return str(self.value)


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
