"""The gateway's promises as assertions a test can make on what the hosts stored.

* one live copy (DESIGN.md §6): at every moment at most one host holds an object live
  (ACTIVE, or FROZEN with the right to resume); once a handoff settled, exactly one holds
  it ACTIVE and the others at most a MOVED tombstone;
* no widening: the authority an object has where it lives is within what its grant chain
  grants, and the chain verifies link by link (each grant within its parent);
* history: its lineage verifies (hash chain, signed checkpoints) and its custody agrees
  with it (every departure has its arrival, no handoff missing).

Everything is read from the hosts' stores (:func:`snapshot`), never from what a host's
code returned, so a test checks what survives a restart. The checks raise
:class:`AssertionError` naming what was wrong; the verification errors they wrap are
chained as the cause. Nothing here imports pytest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from gateway.credentials import VerifiedChain, verify_chain
from gateway.custody import verify_custody
from gateway.errors import GatewayError
from gateway.handoff.journal import DESTINATION_PREFIX, SOURCE_PREFIX, Journal
from gateway.handoff.records import (
    DestinationRecord,
    DestinationStep,
    SourceRecord,
    SourceStep,
)
from gateway.lineage import VerifiedLineage, verify_lineage
from gateway.model import GovernedObject, LifecycleState
from gateway.stores import StateStore
from gateway.trust import TrustStore

#: The most journal records :func:`snapshot` reads per host: a test world is small, and
#: a runaway loop of migrations should fail the test, not exhaust its memory.
MAX_JOURNAL_RECORDS = 10_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """One host's view of one object: its record, and the journal records about it."""

    host: str
    object: GovernedObject | None
    sources: tuple[SourceRecord, ...]  #: migrations of it this host started
    destinations: tuple[DestinationRecord, ...]  #: migrations of it to this host

    @property
    def live(self) -> bool:
        return self.object is not None and self.object.live

    @property
    def open(self) -> bool:
        """A migration of the object is still undecided or unfinished on this host."""
        return any(
            s.step in (SourceStep.FROZEN, SourceStep.COMMITTED) for s in self.sources
        ) or any(d.step is DestinationStep.STAGED for d in self.destinations)


async def snapshot(store: StateStore, *, host: str, tenant: str, object_id: str) -> Snapshot:
    """Read one host's record of ``object_id`` and its journal records from ``store``."""
    journal = Journal(store)
    loaded = await journal.object(tenant, object_id)
    source_keys = await store.list(SOURCE_PREFIX)
    destination_keys = await store.list(DESTINATION_PREFIX)
    if len(source_keys) + len(destination_keys) > MAX_JOURNAL_RECORDS:
        raise AssertionError(
            f"{host} journals {len(source_keys) + len(destination_keys)} migrations; "
            f"a test world should stay under {MAX_JOURNAL_RECORDS}"
        )
    sources = []
    for key in source_keys:
        record = await journal.source(key.removeprefix(SOURCE_PREFIX))
        if record is not None and record.value.object_id == object_id:
            sources.append(record.value)
    destinations = []
    for key in destination_keys:
        staged = await journal.destination(key.removeprefix(DESTINATION_PREFIX))
        if staged is not None and staged.value.object_id == object_id:
            destinations.append(staged.value)
    return Snapshot(
        host=host,
        object=loaded.value if loaded else None,
        sources=tuple(sources),
        destinations=tuple(destinations),
    )


def settled(snapshots: Mapping[str, Snapshot]) -> bool:
    """No migration of the object is open anywhere, and no host holds it FROZEN."""
    return not any(
        s.open or (s.object is not None and s.object.state is LifecycleState.FROZEN)
        for s in snapshots.values()
    )


def assert_at_most_one_live(snapshots: Mapping[str, Snapshot]) -> None:
    """Never two live copies: at most one host holds the object ACTIVE or FROZEN."""
    live = sorted(h for h, s in snapshots.items() if s.live)
    if len(live) > 1:
        states = ", ".join(
            f"{h}: {snapshots[h].object.state.value}"  # type: ignore[union-attr]
            for h in live
        )
        raise AssertionError(f"{len(live)} live copies ({states}); at most one may be live")


def assert_one_live_copy(snapshots: Mapping[str, Snapshot]) -> str:
    """Exactly one host holds the object ACTIVE; every other record is a MOVED tombstone.
    Returns the host that holds it."""
    assert_at_most_one_live(snapshots)
    active = [
        h for h, s in snapshots.items() if s.object and s.object.state is LifecycleState.ACTIVE
    ]
    if len(active) != 1:
        seen = {h: s.object.state.value for h, s in snapshots.items() if s.object} or "nowhere"
        raise AssertionError(f"expected exactly one ACTIVE copy, found {seen}")
    (owner,) = active
    for host, other in snapshots.items():
        state = other.object.state if other.object is not None else LifecycleState.MOVED
        if host != owner and state is not LifecycleState.MOVED:
            raise AssertionError(
                f"{host} holds the object {state.value}; "
                f"only {owner} may hold it, the others a MOVED tombstone"
            )
    return owner


def assert_no_widening(
    obj: GovernedObject, *, trust: TrustStore, at: datetime
) -> VerifiedChain | None:
    """The object's grant chain verifies, and the authority it has where it lives is
    within the chain's (for an object without grants: no authority at all, and None)."""
    if not obj.grants:
        if obj.authority.allow:
            raise AssertionError(f"{obj.object_id} has no grants but may do {obj.authority.allow}")
        return None
    try:
        chain = verify_chain(obj.grants, object_id=obj.object_id, trust=trust, at=at)
    except GatewayError as exc:
        raise AssertionError(f"{obj.object_id}: its grant chain does not verify: {exc}") from exc
    try:
        obj.authority.allow.require_subset_of(chain.capabilities)
    except GatewayError as exc:
        raise AssertionError(
            f"{obj.object_id} has wider authority than its grants give it: {exc}"
        ) from exc
    return chain


def assert_history_verifies(obj: GovernedObject, *, trust: TrustStore) -> VerifiedLineage:
    """The object's lineage verifies (links, checkpoints) and its custody agrees with it."""
    try:
        verified = verify_lineage(obj.lineage, object_id=obj.object_id, trust=trust, sealed=False)
        verify_custody(
            obj.lineage,
            verified.checkpoints,
            object_id=obj.object_id,
            trust=trust,
            in_transit=False,
        )
    except GatewayError as exc:
        raise AssertionError(f"{obj.object_id}: its history does not verify: {exc}") from exc
    return verified
