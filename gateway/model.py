"""The governed object and its lifecycle, as immutable values.

Every transition returns a new :class:`GovernedObject`; freeze, thaw and rehost add one
lineage entry that records it (with the digests of data and credentials *after* the
transition). Tombstoning adds none: the lineage that left with the object was sealed
at the freeze, and the source's copy must stay a prefix of it, or the object could
never come back (its next arrival is checked to *extend* what this host saw). The
lifecycle is a small state machine, enforced here so no caller can skip a step:

    ACTIVE --freeze--> FROZEN --tombstone--> MOVED          (source side of a handoff)
                       FROZEN --thaw-------> ACTIVE         (handoff aborted)
    STAGED --rehost--> ACTIVE                               (destination side)

The epoch goes up by one at every freeze; it is the fencing token that keeps a stale
copy from ever coming back (DESIGN.md §6). No I/O.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from gateway import envelope as dsse
from gateway._slots import replacing
from gateway.authority import CapabilitySet, EffectiveAuthority
from gateway.blobs import BlobRef
from gateway.errors import ConfigError, ObjectStateError
from gateway.identity import HostId, ObjectId, validate_tenant
from gateway.limits import (
    MAX_CONTENT_TYPE_CHARS,
    check_counter,
    check_interval,
    check_text,
    check_time,
    next_counter,
)
from gateway.limits import MAX_CYCLE_INTERVAL as _MAX_CYCLE_INTERVAL
from gateway.limits import MAX_DATA_BYTES as MAX_DATA_BYTES
from gateway.lineage import EntryKind, Lineage, credentials_digest, digest

NO_AUTHORITY = EffectiveAuthority(allow=CapabilitySet())


class LifecycleState(enum.Enum):
    ACTIVE = "active"
    FROZEN = "frozen"
    MOVED = "moved"
    STAGED = "staged"


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteState:
    """Merge the map a CEL expression yields into the object's own data."""

    patch: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Publish:
    """Publish an event; ``topic`` is ``<pubsub>/<topic>`` (resource ``pubsub:<topic>``)."""

    topic: str
    payload: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Invoke:
    """Invoke a service method; ``target`` is ``<app>/<method>`` (resource ``invoke:<target>``)."""

    target: str
    payload: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Binding:
    """Invoke a Dapr output binding; ``target`` is ``<binding>/<operation>`` (resource
    ``binding:<target>``). Only a host with a Dapr sidecar carries it out: on the
    embedded default it is refused at admission (gateway/runtime/cycle.py)."""

    target: str
    payload: str = ""


Action = WriteState | Publish | Invoke | Binding

#: What wakes a rule: its cycle (the default) or a message on a subscribed topic.
TRIGGERS = ("cycle", "message")


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    name: str
    when: str  #: CEL condition
    action: Action
    on: str = "cycle"  #: one of :data:`TRIGGERS`


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    """How the object answers a request for ``method`` (gateway/runtime/calls.py):
    ``reply`` is a CEL expression over its data and the request, given when ``when``
    holds; ``write`` (optional) a CEL map merged into its data, as a rule's write."""

    method: str
    reply: str
    when: str = "true"
    write: str = ""


#: The longest evaluation interval an object may have (a year): longer is no schedule,
#: and a bounded interval keeps ``next_due + interval`` far from the end of ``datetime``.
MAX_CYCLE_INTERVAL = _MAX_CYCLE_INTERVAL


@dataclass(frozen=True, slots=True, kw_only=True)
class CycleState:
    generation: int = 0  #: evaluations completed
    interval: timedelta | None = None  #: None: the object does not cycle
    next_due: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class GovernedObject:
    object_id: str
    tenant: str
    data: bytes
    content_type: str
    grants: tuple[str, ...] = ()  #: compact JWTs, root first
    rules: tuple[Rule, ...] = ()
    lineage: Lineage = field(default_factory=Lineage)
    cycle: CycleState = field(default_factory=CycleState)
    epoch: int = 0
    state: LifecycleState = LifecycleState.ACTIVE
    migration_id: str = ""  #: FROZEN / MOVED / STAGED: the migration concerned
    moved_to: str = ""  #: MOVED: the host that holds the object now
    receipt: dsse.Envelope | None = None  #: MOVED: the destination's staged receipt
    last_transfer_digest: bytes = b""  #: chain of custody
    #: What the object may do on the host holding it (chain ∩ host policy); host-local.
    authority: EffectiveAuthority = field(default_factory=lambda: NO_AUTHORITY)
    #: Large objects: the data is this blob (``data`` is empty).
    blob: BlobRef | None = None
    #: When ``authority`` ends (its grant chain expires); None: no grants, nothing to end.
    authority_expires: datetime | None = None
    #: Topics whose messages wake the object (each needs ``pubsub:<topic>`` subscribe).
    subscriptions: tuple[str, ...] = ()
    #: The requests it answers (gateway/runtime/calls.py), one per method.
    answers: tuple[Answer, ...] = ()

    def authority_at(self, moment: datetime) -> EffectiveAuthority:
        """What the object may do here at ``moment``: nothing once its grants expired."""
        if self.authority_expires is not None and moment >= self.authority_expires:
            return NO_AUTHORITY
        return self.authority

    @property
    def generation(self) -> int:
        return self.cycle.generation

    @property
    def live(self) -> bool:
        """ACTIVE, or FROZEN (which keeps the right to resume if the handoff aborts)."""
        return self.state in (LifecycleState.ACTIVE, LifecycleState.FROZEN)

    def data_digest(self) -> bytes:
        return self.blob.digest if self.blob is not None else digest(self.data)

    @property
    def size(self) -> int:
        return self.blob.size if self.blob is not None else len(self.data)

    def credentials_digest(self) -> bytes:
        return remembered_credentials_digest(self.grants)

    def record(
        self, kind: EntryKind, *, host: str, at: datetime, detail: str = ""
    ) -> GovernedObject:
        """This object with one lineage entry more, describing its current state."""
        return _with_lineage(
            self,
            self.lineage.append(
                kind,
                host=host,
                at=at,
                epoch=self.epoch,
                generation=self.cycle.generation,
                data_digest=self.data_digest(),
                credentials_digest=self.credentials_digest(),
                detail=detail,
            ),
        )

    def _require(self, state: LifecycleState, doing: str) -> None:
        if self.state is not state:
            where = f" (migration {self.migration_id})" if self.migration_id else ""
            raise ObjectStateError(
                f"cannot {doing} {self.object_id}: it is {self.state.value}{where}, not {state.value}",
                hint=_STATE_HINTS.get(self.state, ""),
            )

    def freeze(
        self, migration_id: str, *, destination: str, host: str, at: datetime
    ) -> GovernedObject:
        """Stop the object for a handoff: epoch + 1, FROZEN, recorded."""
        self._require(LifecycleState.ACTIVE, "migrate")
        # Refused here, at the limit, rather than as an encoding error deeper down.
        epoch = next_counter(self.epoch, what=f"the epoch of {self.object_id}")
        frozen = _frozen(self, LifecycleState.FROZEN, epoch, migration_id)
        return frozen.record(
            EntryKind.FROZEN, host=host, at=at, detail=f"migration {migration_id} to {destination}"
        )

    def thaw(self, migration_id: str, *, host: str, at: datetime, reason: str) -> GovernedObject:
        """The handoff aborted: the object resumes here (its epoch stays raised)."""
        self._require(LifecycleState.FROZEN, "resume")
        if self.migration_id != migration_id:
            raise ObjectStateError(
                f"{self.object_id} is frozen by migration {self.migration_id}, not {migration_id}"
            )
        resumed = replace(self, state=LifecycleState.ACTIVE, migration_id="")
        return resumed.record(
            EntryKind.ABORTED,
            host=host,
            at=at,
            detail=f"migration {migration_id} aborted: {reason}",
        )

    def tombstone(
        self, migration_id: str, *, moved_to: str, receipt: dsse.Envelope, transfer_digest: bytes
    ) -> GovernedObject:
        """The handoff committed: keep only a pointer to where the object lives now."""
        self._require(LifecycleState.FROZEN, "commit the migration of")
        return _tombstoned(
            self,
            LifecycleState.MOVED,
            # A large object's chunks go with it; the tombstone keeps only digest and size.
            replace(self.blob, location="", chunks=0) if self.blob is not None else None,
            moved_to,
            receipt,
            migration_id,
            transfer_digest,
        )

    def rehost(
        self, *, host: str, source: str, at: datetime, arrival: dsse.Envelope
    ) -> GovernedObject:
        """The staged copy goes live on this host; ``arrival`` is this host's signed
        activation receipt, kept in the lineage as the acknowledgement of the departure
        that brought the object here (gateway.custody)."""
        self._require(LifecycleState.STAGED, "activate")
        live = _rehosted(self, LifecycleState.ACTIVE, "", None, "", self.lineage.arrived(arrival))
        return live.record(
            EntryKind.REHOSTED,
            host=host,
            at=at,
            detail=f"from {source}, migration {self.migration_id}, epoch {self.epoch}",
        )


#: The copies every migration makes of its object (freeze and its lineage entry, the
#: tombstone, the rehosted copy), field by field as ``dataclasses.replace`` would
#: (gateway/_slots.py; tests/test_p2more_s37.py holds them equal to it).
_with_lineage = replacing(GovernedObject, "lineage")
_frozen = replacing(GovernedObject, "state", "epoch", "migration_id")
_tombstoned = replacing(
    GovernedObject,
    "state",
    "blob",
    "moved_to",
    "receipt",
    "migration_id",
    "last_transfer_digest",
)
_rehosted = replacing(GovernedObject, "state", "moved_to", "receipt", "migration_id", "lineage")

#: :func:`gateway.lineage.credentials_digest`, memoised on the (immutable, hashable)
#: grants tuple: every lineage entry records the credentials digest, and the grants
#: rarely change. An arrival asks it of the same grants twice, in the destination's
#: lineage check and in custody's rule 4 (gateway.custody.require_extends_departures):
#: both ask here, so its 844 bytes (a P2 object's one grant) are hashed once.
remembered_credentials_digest = functools.lru_cache(maxsize=1024)(credentials_digest)


_STATE_HINTS = {
    LifecycleState.FROZEN: "a migration is under way; wait for it to finish or abort",
    LifecycleState.MOVED: "the object lives elsewhere now; see `gateway object show`",
    LifecycleState.STAGED: "the object is staged here and not live until its source commits",
}


def new_object(
    object_id: str,
    *,
    tenant: str,
    data: bytes,
    content_type: str,
    host: str,
    at: datetime,
    grants: tuple[str, ...] = (),
    rules: tuple[Rule, ...] = (),
    cycle: CycleState | None = None,
    blob: BlobRef | None = None,
    subscriptions: tuple[str, ...] = (),
    answers: tuple[Answer, ...] = (),
) -> GovernedObject:
    """A new ACTIVE object with its CREATED entry. The id must be owned by ``host``'s domain.

    Large data is passed as ``blob`` (already stored), with ``data`` empty.
    """
    parsed = ObjectId.parse(object_id)
    host_domain = HostId.parse(host).trust_domain
    if parsed.trust_domain != host_domain:
        raise ConfigError(
            f"object id {object_id} belongs to {parsed.trust_domain}; this host is in {host_domain}",
            hint=f"create objects under obj://{host_domain}/...",
        )
    if len(data) > MAX_DATA_BYTES:
        raise ConfigError(
            f"object data is {len(data)} bytes; at most {MAX_DATA_BYTES} inline",
            hint="store larger data as a blob (gateway object create --data-file streams it)",
        )
    if blob is not None and data:
        raise ConfigError("an object's data is inline or a blob, not both")
    check_text(content_type, limit=MAX_CONTENT_TYPE_CHARS, what="content type")
    if cycle is not None:
        # The limits a peer's copy is checked against on arrival (gateway.limits): never
        # create here what a peer, or this host later, would have to refuse.
        check_cycle(cycle, what=object_id)
    created = GovernedObject(
        object_id=str(parsed),
        tenant=validate_tenant(tenant),
        data=data,
        content_type=content_type,
        grants=grants,
        rules=rules,
        cycle=cycle or CycleState(),
        blob=blob,
        subscriptions=subscriptions,
        answers=answers,
    )
    return created.record(EntryKind.CREATED, host=host, at=at, detail=f"tenant {tenant}")


def check_cycle(cycle: CycleState, *, what: str) -> CycleState:
    """A cycle state within :mod:`gateway.limits`: its generation can advance, its interval
    is in range, and adding the interval to its next due time cannot overflow."""
    check_counter(cycle.generation, what=f"the generation of {what}")
    if cycle.interval is not None:
        check_interval(cycle.interval, what=f"the cycle interval of {what}")
    if cycle.next_due is not None:
        check_time(cycle.next_due, what=f"the next due time of {what}")
    return cycle
