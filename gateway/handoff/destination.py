"""The destination side of the handoff: verify and stage, activate on commit, discard on abort.

Invariants this side keeps:

* A staged copy is never live. It becomes ACTIVE only on the source's Commit (or on a
  COMMITTED answer to Decision), never on a timeout.
* Verification order (DESIGN.md §4): size → decode → signatures by a key of the
  *authenticated peer* → payload type → parse → the payload names that peer as source
  → audience is this host → time window → idempotent retry or nonce unseen → the
  object's tenant is hosted, the peer is bound to it and it has quota room → epoch
  above the fence *of that tenant* → lineage (and what this host saw of it before).
  Nothing is written before every check passed; then one transaction writes the
  journal record, the nonce, the raised fence and the tenant's quota charge together.
* An object is named by (tenant, id): another tenant's object with the same id
  neither blocks an arrival nor is touched by it (gateway.tenancy).
* Every call is idempotent by migration id: a retried Prepare gets the same receipt, a
  retried Commit the same activation receipt.
* Only the source that the migration names may commit, abort or ask about it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime

from gateway import envelope as dsse
from gateway import wire
from gateway._crash import crash_point
from gateway._time import format_time, to_millis
from gateway.authority import Admission
from gateway.blobs import delete_blob, delete_keys, write_blob
from gateway.credentials import attenuate, audience_admits
from gateway.errors import (
    AdmissionDeniedError,
    AudienceError,
    ConcurrencyError,
    ExpiredError,
    GatewayError,
    LineageError,
    MigrationAbortedError,
    MigrationNotFoundError,
    ObjectStateError,
    PeerMismatchError,
    QuotaExceededError,
    ReplayError,
    RollbackError,
    TransferStreamError,
)
from gateway.handoff.context import HostContext
from gateway.handoff.journal import (
    Versioned,
    decode_counter,
    encode_counter,
    fence_key,
    nonce_key,
    open_destination_key,
    put_destination,
    put_object,
)
from gateway.handoff.messages import Receipt, ReceiptKind, Transfer
from gateway.handoff.records import DestinationRecord, DestinationStep
from gateway.lineage import EntryKind, digest, verify_extends, verify_lineage
from gateway.model import GovernedObject, LifecycleState
from gateway.runtime.outbox import lifecycle_event, outbox_puts
from gateway.stores import Delete, Expect, Put

log = logging.getLogger(__name__)

#: Markers of uploads in progress: upload-open/<migration>/<attempt> -> expiry (ms).
UPLOAD_MARKERS = "upload-open/"

#: Longest lifetime a transfer may claim, whatever the sender's configuration says.
MAX_TRANSFER_LIFETIME_S = 600
#: Proposals are evaluated by people, possibly a day later (gateway admit --dry-run).
MAX_PROPOSAL_LIFETIME_S = 2 * 86400
#: Stage transactions tried when only the tenant's usage counter moved under them.
STAGE_ATTEMPTS = 8


class Destination:
    def __init__(self, context: HostContext) -> None:
        self.ctx = context

    # --- Prepare ----------------------------------------------------------------------

    def _open_transfer(
        self, raw: bytes, *, peer: str, payload_type: str, now: datetime
    ) -> tuple[Transfer, bytes]:
        """Size, decode, signatures by ``peer``'s keys, payload type, parse, source, audience, time."""
        ctx = self.ctx
        envelope = wire.decode_envelope(raw)
        payload = ctx.open_from(peer, envelope, payload_type, at=now)
        transfer = wire.decode_transfer(payload)
        if transfer.source_host != peer:
            raise PeerMismatchError(
                f"transfer claims to come from {transfer.source_host}, but the connection is from {peer}"
            )
        if transfer.destination_host != ctx.host:
            raise AudienceError(
                f"transfer {transfer.migration_id} is addressed to {transfer.destination_host}, not {ctx.host}",
                hint="a transfer is valid for its one destination only; migrate again to this host",
            )
        proposal = payload_type == dsse.PayloadType.PROPOSAL
        self._check_time(
            transfer,
            now,
            max_lifetime=MAX_PROPOSAL_LIFETIME_S if proposal else MAX_TRANSFER_LIFETIME_S,
        )
        return transfer, digest(payload)

    async def _assess(
        self, transfer: Transfer, *, peer: str, now: datetime
    ) -> tuple[Admission, Versioned[int] | None, datetime | None]:
        """Everything that decides whether this host takes the object, without writing:
        epoch fence, tenant, lineage, credential chain, constraints, host policy."""
        ctx = self.ctx
        await self._check_tenant(transfer, peer=peer)
        fence = await ctx.journal.fence(transfer.object.tenant, transfer.object_id)
        if fence is not None and transfer.epoch <= fence.value:
            raise RollbackError(
                f"{transfer.object_id} arrives with epoch {transfer.epoch}, but epoch {fence.value} "
                "was already seen here: this is a stale copy",
                hint="only the copy with the newest epoch may move; find where the object lives now",
            )
        current = await ctx.journal.object(transfer.object.tenant, transfer.object_id)
        self._check_lineage(transfer, previous=current.value if current else None)
        ctx.check_rules(transfer.object)
        # Hops are the handoffs the object completed (plus this one), not its epoch:
        # attempts that aborted raised the epoch but moved nothing.
        hops = 1 + sum(1 for e in transfer.object.lineage.entries if e.kind is EntryKind.REHOSTED)
        admission, expires = ctx.authorize(transfer.object, peer=peer, hops=hops, at=now)
        return admission, fence, expires

    async def _check_tenant(self, transfer: Transfer, *, peer: str) -> None:
        """The object's tenant is hosted here, ``peer`` is bound to it, and it has room.

        First of all checks, before the fence is even read: a peer learns nothing about
        a tenant it may not deliver into. Objects are named by (tenant, id) here, so an
        object with the same id in another tenant neither blocks nor is touched by this
        one (see gateway.tenancy). The quota is checked again when the stage is written.
        """
        ctx = self.ctx
        tenant = transfer.object.tenant
        if tenant not in ctx.tenants:
            raise AdmissionDeniedError(
                f"tenant {tenant!r} is not hosted on {ctx.host}",
                hint="add the tenant to this host's configuration, or migrate to another host",
            )
        ctx.tenancy.require_bound(peer, tenant, host=ctx.host)
        usage = await ctx.journal.usage(tenant)
        ctx.tenancy.require_room(
            tenant,
            usage.value,
            size=transfer.object.size,
            object_id=transfer.object_id,
        )

    async def evaluate(self, raw: bytes, *, peer: str) -> Admission:
        """The dry run: what this host would grant the proposed object, and why. Writes nothing."""
        now = self.ctx.clock.now()
        transfer, _digest = self._open_transfer(
            raw, peer=peer, payload_type=dsse.PayloadType.PROPOSAL, now=now
        )
        admission, _fence, _expires = await self._assess(transfer, peer=peer, now=now)
        return admission

    async def prepare(self, raw: bytes, *, peer: str) -> bytes:
        """Verify, admit and stage a transfer from ``peer``; returns the signed receipt."""
        ctx = self.ctx
        now = ctx.clock.now()
        transfer, transfer_digest = self._open_transfer(
            raw, peer=peer, payload_type=dsse.PayloadType.TRANSFER, now=now
        )
        if transfer.object.blob is not None:
            raise TransferStreamError(
                f"{transfer.object_id} carries {transfer.object.size} bytes of data as a stream",
                hint="send it with PrepareStream",
            )
        return await self._prepare(transfer, transfer_digest, peer=peer, now=now)

    async def prepare_stream(self, raw: bytes, data: AsyncIterator[bytes], *, peer: str) -> bytes:
        """Prepare for a large object: the transfer is verified and admitted *before* any
        data is read; the data is then stored as it streams in, hashed incrementally, and
        must match the size and digest the transfer signs, or nothing is kept."""
        ctx = self.ctx
        now = ctx.clock.now()
        transfer, transfer_digest = self._open_transfer(
            raw, peer=peer, payload_type=dsse.PayloadType.TRANSFER, now=now
        )
        expected = transfer.object.blob
        if expected is None:
            raise TransferStreamError(
                f"{transfer.object_id} carries its data inline; send it with Prepare"
            )
        return await self._prepare(transfer, transfer_digest, peer=peer, now=now, data=data)

    async def _prepare(
        self,
        transfer: Transfer,
        transfer_digest: bytes,
        *,
        peer: str,
        now: datetime,
        data: AsyncIterator[bytes] | None = None,
    ) -> bytes:
        ctx = self.ctx
        existing = await ctx.journal.destination(transfer.migration_id)
        if existing is not None:
            return self._replay(existing.value, transfer_digest)
        if await ctx.journal.store.get(nonce_key(transfer.nonce)) is not None:
            raise ReplayError(
                f"transfer nonce of migration {transfer.migration_id} was already used here"
            )
        admission, fence, expires = await self._assess(transfer, peer=peer, now=now)
        staged = replace(transfer.object, authority=admission.authority, authority_expires=expires)
        upload: str | None = None
        if data is not None and staged.blob is not None:
            # Each attempt uploads under its own prefix, announced by a marker that the
            # stage transaction removes: a marker still there after the transfer expired
            # means chunks nobody references (recovery deletes them). Chunks are never
            # deleted when the stage's outcome is unknown (a cancelled or timed-out write
            # may have committed): that would leave a staged object without its data.
            upload = f"{UPLOAD_MARKERS}{transfer.migration_id}/{uuid.uuid4().hex[:16]}"
            collectable = to_millis(transfer.expires_at + 2 * ctx.timing.clock_skew)
            await ctx.journal.store.put(upload, encode_counter(collectable), etag=Expect.ABSENT)
            blob = await write_blob(
                ctx.journal.store,
                f"upload/{upload.removeprefix(UPLOAD_MARKERS)}/",
                data,
                expected_digest=staged.blob.digest,
                expected_size=staged.blob.size,
            )
            staged = replace(staged, blob=blob)
        return await self._stage(
            transfer, transfer_digest, staged, fence, peer=peer, now=now, upload=upload
        )

    async def _stage(
        self,
        transfer: Transfer,
        transfer_digest: bytes,
        staged: GovernedObject,
        fence: Versioned[int] | None,
        *,
        peer: str,
        now: datetime,
        upload: str | None = None,
    ) -> bytes:
        ctx = self.ctx
        receipt_raw = self._receipt(
            ReceiptKind.STAGED,
            migration_id=transfer.migration_id,
            object_id=transfer.object_id,
            epoch=transfer.epoch,
            peer=peer,
            transfer_digest=transfer_digest,
            now=now,
        )
        record = DestinationRecord(
            migration_id=transfer.migration_id,
            object_id=transfer.object_id,
            tenant=transfer.object.tenant,
            source_host=peer,
            step=DestinationStep.STAGED,
            transfer_digest=transfer_digest,
            staged_receipt=receipt_raw,
            staged=staged,
            created_at=now,
            updated_at=now,
        )
        crash_point("destination.before-stage")
        expires = to_millis(transfer.expires_at + ctx.timing.clock_skew)
        for attempt in range(STAGE_ATTEMPTS):
            try:
                await self._write_stage(record, transfer, fence, expires=expires, upload=upload)
                break
            except QuotaExceededError:
                # Other arrivals filled the tenant since _assess; nothing was staged.
                await self._discard_upload(staged, upload)
                raise
            except ConcurrencyError as exc:
                if attempt + 1 < STAGE_ATTEMPTS and await self._only_usage_moved(transfer, fence):
                    # Another object of the tenant was counted meanwhile (by another
                    # process): count again, after a short random pause.
                    await asyncio.sleep(random.uniform(0, 0.005 * (attempt + 1)))  # noqa: S311
                    continue
                # Someone else wrote first: the same Prepare retried concurrently (answer
                # it like any retry) or another migration of this object (refuse this one).
                # Our transaction certainly failed, so our own upload is unreferenced.
                await self._discard_upload(staged, upload)
                again = await ctx.journal.destination(transfer.migration_id)
                if again is not None:
                    return self._replay(again.value, transfer_digest)
                raise ObjectStateError(
                    f"another migration of {transfer.object_id} was staged here at the same time",
                    hint="only one migration of an object can proceed; retry after it settles",
                ) from exc
        crash_point("destination.after-stage")
        return receipt_raw

    async def _write_stage(
        self,
        record: DestinationRecord,
        transfer: Transfer,
        fence: Versioned[int] | None,
        *,
        expires: int,
        upload: str | None,
    ) -> None:
        """One transaction: the journal record, the nonce, the raised fence, the tenant's
        quota charge for the staged copy (checked again: other arrivals may have filled
        the tenant since _assess), and the upload marker gone."""
        ctx = self.ctx
        tenant, staged = record.tenant, record.staged
        assert staged is not None
        async with ctx.journal.charging(tenant):
            charge = await ctx.journal.charge(
                tenant,
                transfer.object_id,
                staged.size,
                check=lambda usage: ctx.tenancy.require_room(
                    tenant, usage, size=staged.size, object_id=transfer.object_id
                ),
            )
            await ctx.journal.store.transact(
                [
                    put_destination(record, Expect.ABSENT),
                    Put(
                        key=nonce_key(transfer.nonce),
                        value=encode_counter(expires),
                        etag=Expect.ABSENT,
                    ),
                    Put(
                        key=fence_key(tenant, transfer.object_id),
                        value=encode_counter(transfer.epoch),
                        etag=fence.etag if fence else Expect.ABSENT,
                    ),
                    *charge,
                    Put(
                        key=open_destination_key(record.migration_id), value=b"", etag=Expect.ABSENT
                    ),
                    *([Delete(key=upload, etag=Expect.ANY)] if upload else []),
                ]
            )

    async def _discard_upload(self, staged: GovernedObject, upload: str | None) -> None:
        """Delete this attempt's chunks, known not to be referenced by any stage."""
        if upload is not None and staged.blob is not None:
            await delete_blob(self.ctx.journal.store, staged.blob)
            await self.ctx.journal.store.delete(upload, etag=Expect.ANY)

    async def _only_usage_moved(self, transfer: Transfer, fence: Versioned[int] | None) -> bool:
        """After a stage lost a write race: whether only the tenant's usage counter
        changed (another object of the tenant was counted), so staging again is safe."""
        journal = self.ctx.journal
        tenant = transfer.object.tenant
        if await journal.destination(transfer.migration_id) is not None:
            return False
        if await journal.store.get(nonce_key(transfer.nonce)) is not None:
            return False
        if await journal.held(tenant, transfer.object_id):
            return False
        now = await journal.fence(tenant, transfer.object_id)
        return (now.etag if now else None) == (fence.etag if fence else None)

    def _receipt(
        self,
        kind: ReceiptKind,
        *,
        migration_id: str,
        object_id: str,
        epoch: int,
        peer: str,
        transfer_digest: bytes,
        now: datetime,
    ) -> bytes:
        """A serialized receipt of ``kind`` for ``peer``, signed by this host."""
        receipt = Receipt(
            kind=kind,
            migration_id=migration_id,
            object_id=object_id,
            epoch=epoch,
            host=self.ctx.host,
            source_host=peer,
            transfer_digest=transfer_digest,
            issued_at=now,
        )
        return wire.encode_envelope(self.ctx.seal(wire.encode_receipt(receipt), kind.payload_type))

    def _check_time(self, transfer: Transfer, now: datetime, *, max_lifetime: int) -> None:
        skew = self.ctx.timing.clock_skew
        if transfer.issued_at > now + skew:
            raise ExpiredError(
                f"transfer {transfer.migration_id} is issued in the future ({format_time(transfer.issued_at)})",
                hint="check both hosts' clocks",
            )
        if transfer.expires_at + skew < now:
            raise ExpiredError(
                f"transfer {transfer.migration_id} expired at {format_time(transfer.expires_at)}",
                hint="migrate again; the source seals a fresh transfer",
            )
        if (transfer.expires_at - transfer.issued_at).total_seconds() > max_lifetime:
            raise ExpiredError(
                f"transfer {transfer.migration_id} claims a lifetime over {max_lifetime} s",
                hint="lower handoff.transfer_ttl_seconds on the source",
            )

    def _check_lineage(self, transfer: Transfer, *, previous: GovernedObject | None) -> None:
        obj = transfer.object
        verify_lineage(obj.lineage, object_id=obj.object_id, trust=self.ctx.trust, sealed=True)
        last = obj.lineage.entries[-1] if obj.lineage.entries else None
        if (
            last is None
            or last.kind is not EntryKind.FROZEN
            or last.host != transfer.source_host
            or last.epoch != transfer.epoch
        ):
            raise LineageError(
                "the lineage does not end with the source freezing the object at this epoch",
                hint="the source must freeze (and record) the object before sending it",
            )
        if (
            last.data_digest != obj.data_digest()
            or last.credentials_digest != obj.credentials_digest()
        ):
            raise LineageError("the data or credentials sent differ from what the lineage records")
        if previous is not None:
            if previous.state is not LifecycleState.MOVED:
                raise ObjectStateError(
                    f"{obj.object_id} is {previous.state.value} here already; refusing a second live copy",
                    hint="find out how two hosts came to hold it before moving it again",
                )
            verify_extends(
                obj.lineage, seen_size=len(previous.lineage), seen_root=previous.lineage.root()
            )

    @staticmethod
    def _replay(record: DestinationRecord, transfer_digest: bytes) -> bytes:
        """A Prepare for a migration already journaled here.

        While STAGED it is the source retrying (its reply was lost): the same receipt again.
        Once settled it can only be a replay — the source never re-sends a transfer after
        it committed or aborted — so it is refused and changes nothing.
        """
        if record.step is DestinationStep.ABORTED:
            # Also when an Abort arrived before this (delayed) Prepare: aborted is final.
            raise MigrationAbortedError(f"migration {record.migration_id} was aborted here")
        if record.transfer_digest != transfer_digest:
            raise ReplayError(
                f"migration id {record.migration_id} was already used for a different transfer"
            )
        if record.step is DestinationStep.ACTIVATED:
            raise ReplayError(
                f"transfer of migration {record.migration_id} was already accepted and activated here",
                hint="a transfer is accepted once; a replay changes nothing",
            )
        return record.staged_receipt

    # --- Commit / Abort ---------------------------------------------------------------

    async def commit(self, migration_id: str, *, peer: str) -> bytes:
        """Make the staged object live; returns the signed activation receipt."""
        for _attempt in range(3):
            loaded = await self._record_for(migration_id, peer)
            record = loaded.value
            if record.step is DestinationStep.ACTIVATED:
                return record.activation_receipt
            if record.step is DestinationStep.ABORTED:
                raise MigrationAbortedError(
                    f"migration {migration_id} was aborted here ({record.reason}); it cannot commit"
                )
            try:
                return await self._activate(record, loaded.etag, peer)
            except ConcurrencyError:
                continue  # raced with an abort or a duplicate commit: look again
        raise ObjectStateError(f"migration {migration_id} keeps changing under commit; retry")

    async def _activate(self, record: DestinationRecord, etag: str, peer: str) -> bytes:
        ctx = self.ctx
        now = ctx.clock.now()
        assert record.staged is not None
        current = await ctx.journal.object(record.tenant, record.object_id)
        if current is not None and current.value.state is not LifecycleState.MOVED:
            raise ObjectStateError(
                f"{record.object_id} is {current.value.state.value} here already; refusing a second live copy"
            )
        crash_point("destination.before-activate")
        live = self._attenuated(record.staged, at=now).rehost(host=ctx.host, source=peer, at=now)
        receipt = self._receipt(
            ReceiptKind.ACTIVATED,
            migration_id=record.migration_id,
            object_id=record.object_id,
            epoch=live.epoch,
            peer=peer,
            transfer_digest=record.transfer_digest,
            now=now,
        )
        done = replace(
            record,
            step=DestinationStep.ACTIVATED,
            staged=None,
            activation_receipt=receipt,
            updated_at=now,
        )
        await ctx.journal.store.transact(
            [
                put_object(record.tenant, live, current.etag if current else Expect.ABSENT),
                put_destination(done, etag),
                Delete(key=open_destination_key(record.migration_id), etag=Expect.ANY),
                *outbox_puts(
                    lifecycle_event(
                        "object.rehosted",
                        tenant=record.tenant,
                        object_id=record.object_id,
                        epoch=live.epoch,
                        generation=live.generation,
                        payload={"host": ctx.host, "from": peer, "migration": record.migration_id},
                        at=now,
                    )
                ),
            ]
        )
        crash_point("destination.after-activate")
        ctx.on_active(live)
        return receipt

    def _attenuated(self, staged: GovernedObject, *, at: datetime) -> GovernedObject:
        """With ``handoff.attenuate_on_rehost``, a host that is the audience of the object's
        leaf grant issues a child narrowed to what the object may do here, and records it.
        The object then carries less authority onwards, never more."""
        ctx = self.ctx
        if not ctx.attenuate_on_rehost:
            return staged
        # By now the source has committed: the object is ours to make live whatever
        # happens. Attenuating is optional, so anything that prevents it (a chain at its
        # depth limit, a grant or key that expired while the object was staged) leaves
        # the object as it arrived; it must never block activation.
        try:
            chain = ctx.chain_of(staged, at=at)
            if chain is None or not audience_admits(chain.leaf.audience, ctx.host):
                return staged
            child = attenuate(
                chain,
                signer=ctx.grant_signer,
                issuer=ctx.host,
                audience=ctx.host,
                at=at,
                capabilities=staged.authority.allow,
            )
        except GatewayError as exc:
            log.warning("not attenuating %s on rehost: %s", staged.object_id, exc)
            return staged
        narrowed = replace(staged, grants=(*staged.grants, child.compact))
        return narrowed.record(
            EntryKind.ATTENUATED,
            host=ctx.host,
            at=at,
            detail=f"grant {child.grant_id} narrows to {child.capabilities}",
        )

    async def abort(self, migration_id: str, *, peer: str, reason: str) -> None:
        """Discard a staged copy. Aborting an unknown migration records it as aborted, so
        a Prepare delayed in the network can never stage it afterwards."""
        ctx = self.ctx
        for _attempt in range(3):
            now = ctx.clock.now()
            loaded = await ctx.journal.destination(migration_id)
            if loaded is None:
                record = DestinationRecord(
                    migration_id=migration_id,
                    object_id="",
                    tenant="",
                    source_host=peer,
                    step=DestinationStep.ABORTED,
                    transfer_digest=b"",
                    created_at=now,
                    updated_at=now,
                    reason=reason,
                )
                etag: str | Expect = Expect.ABSENT
            else:
                if loaded.value.source_host != peer:
                    raise PeerMismatchError(
                        f"migration {migration_id} belongs to {loaded.value.source_host}, not {peer}"
                    )
                if loaded.value.step is DestinationStep.ABORTED:
                    return
                if loaded.value.step is DestinationStep.ACTIVATED:
                    raise ObjectStateError(
                        f"migration {migration_id} already committed and the object is live here; "
                        "it cannot abort"
                    )
                record = replace(
                    loaded.value,
                    step=DestinationStep.ABORTED,
                    staged=None,
                    reason=reason,
                    updated_at=now,
                )
                etag = loaded.etag
            discarded = loaded.value.staged.blob if loaded and loaded.value.staged else None
            # The discarded copy no longer counts against its tenant's quota.
            released = (
                await ctx.journal.release(loaded.value.tenant, loaded.value.object_id)
                if loaded is not None
                else []
            )
            try:
                await ctx.journal.store.transact(
                    [
                        put_destination(record, etag),
                        Delete(key=open_destination_key(migration_id), etag=Expect.ANY),
                        *released,
                    ]
                )
            except ConcurrencyError:
                continue  # raced with a Prepare or a Commit: look again
            crash_point("destination.after-discard")
            if discarded is not None:
                # The journal no longer points at the chunks; a crash here leaves only
                # unreferenced chunks behind, never a half-deleted object.
                await delete_blob(ctx.journal.store, discarded)
            return
        raise ObjectStateError(f"migration {migration_id} keeps changing under abort; retry")

    async def _record_for(self, migration_id: str, peer: str) -> Versioned[DestinationRecord]:
        loaded = await self.ctx.journal.destination(migration_id)
        if loaded is None:
            raise MigrationNotFoundError(f"no migration {migration_id} was staged here")
        if loaded.value.source_host != peer:
            raise PeerMismatchError(
                f"migration {migration_id} belongs to {loaded.value.source_host}, not {peer}"
            )
        return loaded

    # --- housekeeping -----------------------------------------------------------------

    async def collect_uploads(self) -> int:
        """Delete the chunks of uploads whose stage never committed (their marker is still
        there after the transfer expired); returns how many uploads were removed."""
        store = self.ctx.journal.store
        now = to_millis(self.ctx.clock.now())
        markers = await store.get_many(await store.list(UPLOAD_MARKERS))
        removed = 0
        for key, item in markers.items():
            if decode_counter(item.value) >= now:
                continue
            chunks = await store.list(f"upload/{key.removeprefix(UPLOAD_MARKERS)}/")
            await delete_keys(store, chunks)
            await store.delete(key, etag=item.etag)
            removed += 1
        return removed

    async def prune_nonces(self) -> int:
        """Forget nonces whose transfers can no longer be accepted anyway."""
        store = self.ctx.journal.store
        now = to_millis(self.ctx.clock.now())
        keys = await store.list("nonce/")
        items = await store.get_many(keys)
        expired = [
            Delete(key=k, etag=item.etag)
            for k, item in items.items()
            if decode_counter(item.value) < now
        ]
        for start in range(0, len(expired), 100):
            try:
                await store.transact(expired[start : start + 100])
            except ConcurrencyError:
                continue
        return len(expired)
