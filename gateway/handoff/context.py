"""Everything one side of a handoff needs from its host, passed explicitly."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from gateway import envelope as dsse
from gateway._time import Clock
from gateway.config import HandoffConfig
from gateway.handoff.journal import Journal
from gateway.keys import Purpose, Signer
from gateway.trust import TrustStore


@dataclass(frozen=True, slots=True, kw_only=True)
class HostContext:
    host: str  #: this host's id (spiffe://...)
    region: str
    tenants: frozenset[str]
    journal: Journal
    trust: TrustStore
    signer: Signer  #: this host's envelope key
    clock: Clock
    timing: HandoffConfig

    def seal(self, payload: bytes, payload_type: str) -> dsse.Envelope:
        return dsse.seal(payload, payload_type, [self.signer])

    def open_from(
        self, host_id: str, envelope: dsse.Envelope, payload_type: str, *, at: datetime
    ) -> bytes:
        """The payload of an envelope that ``host_id`` must have signed, verified now."""
        keys = self.trust.keys_for_host(host_id, purpose=Purpose.ENVELOPE, at=at)
        threshold = keys.bundle.envelope_threshold
        return dsse.open_envelope(
            envelope, payload_type=payload_type, keys=keys, threshold=threshold
        ).payload
