"""What the objects on this host carry that a given key signed.

Before a key is revoked its operator needs to know what the revocation strands: every
object whose lineage checkpoints or grants the key signed is refused by each host that
imports the revoking bundle. This module finds them in a host's own store.

Invariants this module keeps:

* Read-only: it decodes stored objects and compares key ids; it changes nothing.
* A signature counts as the key's if it names the key id, or names none and verifies
  under the key (envelopes may omit the key id, and such a signature is still the
  key's for every verifier that tries all keys).
* The number of objects and entries it reads is bounded by what the store holds; it
  reports each object once, with every checkpoint and grant of it the key signed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import jwt

from gateway import envelope as dsse
from gateway.errors import BadSignatureError, GatewayError
from gateway.handoff.journal import Journal
from gateway.keys import KeyRecord
from gateway.lineage import Checkpoint, handoffs_archived
from gateway.model import GovernedObject, LifecycleState
from gateway.stores import StateStore


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyUse:
    """One object on this host and what of it one key signed."""

    object_id: str
    tenant: str
    state: str
    signed: tuple[str, ...]  #: e.g. "lineage checkpoint 0 by spiffe://…", "grant 5f…"

    def render(self) -> str:
        return f"{self.object_id} ({self.tenant}, {self.state}): {', '.join(self.signed)}"


def _signs(envelope: dsse.Envelope, record: KeyRecord) -> bool:
    for signature in envelope.signatures:
        if signature.keyid == record.key_id:
            return True
        if not signature.keyid:
            try:
                record.verify(dsse.pae(envelope.payload_type, envelope.payload), signature.sig)
            except BadSignatureError:
                continue
            return True
    return False


def signed_by(obj: GovernedObject, record: KeyRecord) -> tuple[str, ...]:
    """The lineage checkpoints and grants of ``obj`` that ``record``'s key signed."""
    found: list[str] = []
    try:  # numbered as in the whole history, archived handoffs (ADR 0010) included
        offset = handoffs_archived(obj.lineage)
    except GatewayError:
        offset = 0
    for index, envelope in enumerate(obj.lineage.checkpoints):
        if not _signs(envelope, record):
            continue
        try:
            by = f" by {Checkpoint.decode(envelope.payload).host}"
        except GatewayError:
            by = ""  # stored, so verified once; say what we can rather than fail the scan
        found.append(f"lineage checkpoint {offset + index}{by}")
    for index, compact in enumerate(obj.grants):
        try:
            kid = jwt.get_unverified_header(compact).get("kid")
            jti = jwt.decode(compact, options={"verify_signature": False}).get("jti")
        except jwt.PyJWTError:
            continue
        if kid == record.key_id:
            found.append(f"grant {index} ({jti})" if isinstance(jti, str) else f"grant {index}")
    return tuple(found)


async def objects_signed_by(
    store: StateStore, tenants: Iterable[str], record: KeyRecord
) -> list[KeyUse]:
    """Every object of ``tenants`` in ``store`` that carries a signature by ``record``'s key."""
    journal = Journal(store)
    uses: list[KeyUse] = []
    for tenant in tenants:
        for obj in await journal.objects(tenant):
            signed = signed_by(obj, record)
            if signed:
                uses.append(
                    KeyUse(
                        object_id=obj.object_id,
                        tenant=tenant,
                        state=(
                            f"moved to {obj.moved_to}"
                            if obj.state is LifecycleState.MOVED
                            else obj.state.value
                        ),
                        signed=signed,
                    )
                )
    return uses
