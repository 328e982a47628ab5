"""Evidence of forks: what a host keeps when it sees two diverging copies of one object.

Without a custody home, fencing is per host and a dishonest former holder can send a
stale copy to a host that never saw the object (DESIGN.md §6). What a host *can* do is
notice when a second, diverging copy reaches it: the arriving history does not extend
the one it holds, or a custody home refused the copy's claim. It then refuses the later
copy, keeps the evidence, and reports it (an ``object.forked`` event in the outbox, and
``gateway forks``). The copy it already holds is left as it is.

Bounded: at most :data:`MAX_PER_OBJECT` records per object and :data:`MAX_RECORDS` in all
(a peer that keeps sending forks cannot fill the store); each record keeps the arriving
copy's lineage (entries and signed checkpoints, bounded by the transfer size limit) so
that both histories can be compared later with the one this host holds.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime

from gateway import wire
from gateway._time import format_time
from gateway.errors import ConcurrencyError, GatewayError, PayloadDecodeError
from gateway.handoff.context import HostContext
from gateway.handoff.lifecycle import LifecycleEvent
from gateway.model import GovernedObject
from gateway.stores import Expect, Put, StateStore

log = logging.getLogger(__name__)

EVIDENCE_PREFIX = "evidence/"
MAX_PER_OBJECT = 4
MAX_RECORDS = 256


@dataclass(frozen=True, slots=True, kw_only=True)
class ForkEvidence:
    object_id: str
    tenant: str
    sender: str  #: the authenticated peer that sent the refused copy
    migration: str
    epoch: int
    reason: str
    seen_at: str
    lineage: bytes  #: the refused copy's lineage, as the wire encodes it

    def encode(self) -> bytes:
        return json.dumps(
            {
                "object_id": self.object_id,
                "tenant": self.tenant,
                "sender": self.sender,
                "migration": self.migration,
                "epoch": self.epoch,
                "reason": self.reason,
                "seen_at": self.seen_at,
                "lineage": base64.b64encode(self.lineage).decode("ascii"),
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def decode(cls, raw: bytes) -> ForkEvidence:
        try:
            document = json.loads(raw)
            return cls(
                object_id=str(document["object_id"]),
                tenant=str(document["tenant"]),
                sender=str(document["sender"]),
                migration=str(document["migration"]),
                epoch=int(document["epoch"]),
                reason=str(document["reason"]),
                seen_at=str(document["seen_at"]),
                lineage=base64.b64decode(document["lineage"], validate=True),
            )
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            raise PayloadDecodeError(f"fork evidence record does not parse: {exc}") from exc


def _object_prefix(tenant: str, object_id: str) -> str:
    return f"{EVIDENCE_PREFIX}{tenant}/{object_id}/"


async def record_fork(
    ctx: HostContext,
    obj: GovernedObject,
    *,
    migration_id: str,
    peer: str,
    reason: str,
    at: datetime,
) -> bool:
    """Keep the refused copy's history and report it; False when the bounds say no more
    evidence is kept (it is still logged). Never raises: evidence must not turn a clear
    refusal into another error."""
    store = ctx.journal.store
    try:
        mine = await store.list(_object_prefix(obj.tenant, obj.object_id))
        if len(mine) >= MAX_PER_OBJECT or len(await store.list(EVIDENCE_PREFIX)) >= MAX_RECORDS:
            log.warning(
                "fork of %s from %s not kept (evidence full): %s", obj.object_id, peer, reason
            )
            return False
        lineage = wire.encode_lineage(obj.lineage)
        key = _object_prefix(obj.tenant, obj.object_id) + hashlib.sha256(lineage).hexdigest()[:32]
        evidence = ForkEvidence(
            object_id=obj.object_id,
            tenant=obj.tenant,
            sender=peer,
            migration=migration_id,
            epoch=obj.epoch,
            reason=reason,
            seen_at=format_time(at),
            lineage=lineage,
        )
        event = LifecycleEvent(
            verb="object.forked",
            tenant=obj.tenant,
            object_id=obj.object_id,
            epoch=obj.epoch,
            generation=obj.generation,
            payload={"from": peer, "migration": migration_id, "reason": reason},
            at=at,
        )
        await store.transact(
            [
                Put(key=key, value=evidence.encode(), etag=Expect.ABSENT),
                *ctx.lifecycle.writes(event),
            ]
        )
    except ConcurrencyError:
        return False  # the same copy was recorded already
    except GatewayError as exc:
        log.warning("could not keep evidence of a fork of %s: %s", obj.object_id, exc)
        return False
    log.warning(
        "refused a diverging copy of %s from %s; evidence kept: %s", obj.object_id, peer, reason
    )
    return True


async def list_forks(store: StateStore) -> list[ForkEvidence]:
    """Every fork evidence record in ``store``, by key."""
    keys = await store.list(EVIDENCE_PREFIX)
    items = await store.get_many(keys)
    return [ForkEvidence.decode(items[k].value) for k in keys if k in items]
