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
import enum
import functools
import logging
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from gateway import envelope as dsse
from gateway import observability, wire
from gateway._crash import crash_point
from gateway._retry import lost_race
from gateway._slots import builder, replacing
from gateway._time import format_time, to_millis
from gateway.authority import Admission
from gateway.blobs import (
    MAX_BLOB_BYTES,
    BlobRef,
    delete_blob,
    delete_location,
    sweep_partial_files,
    write_blob,
)
from gateway.credentials import attenuate, audience_admits, root_home
from gateway.custody import require_extends_departures, verify_custody
from gateway.errors import (
    AdmissionDeniedError,
    AudienceError,
    ConcurrencyError,
    CustodyError,
    ExpiredError,
    ForkError,
    GatewayError,
    LineageError,
    MigrationAbortedError,
    MigrationNotFoundError,
    ObjectStateError,
    PeerMismatchError,
    QuotaExceededError,
    ReplayError,
    RollbackError,
    StoreUnavailableError,
    TransferStreamError,
)
from gateway.handoff.context import HostContext
from gateway.handoff.evidence import record_fork
from gateway.handoff.home import CustodyHome, open_custody_receipt
from gateway.handoff.journal import (
    NONCE_PREFIX,
    Versioned,
    decode_counter,
    destination_key,
    encode_counter,
    fence_key,
    held_key,
    nonce_key,
    object_key,
    open_destination_key,
)
from gateway.handoff.lifecycle import LifecycleEvent
from gateway.handoff.messages import Receipt, ReceiptKind, Transfer, UnknownMigrationAnswer
from gateway.handoff.peers import Peers
from gateway.handoff.records import DestinationRecord, DestinationStep
from gateway.limits import MAX_OPEN_UPLOADS_PER_PEER, MIN_STREAM_PART_BYTES
from gateway.lineage import (
    Checkpoint,
    EntryKind,
    departures_counted,
    digest,
    verify_extends,
    verify_lineage,
)
from gateway.model import GovernedObject, LifecycleState
from gateway.stores import Delete, Expect, Item, Operation, PrefixWalk, Put, delete_unchanged

log = logging.getLogger(__name__)

#: Nonces one pruning pass reads first (see :meth:`Destination.prune_nonces`).
NONCE_PAGE = 1000
#: Pages one pruning pass reads at most, however many of them had expired.
NONCE_PAGES_PER_PASS = 16

#: Markers of uploads in progress: upload-open/<peer tag>/<migration>/<attempt> -> expiry
#: (ms); the chunks are under upload/<the same suffix>/. The peer tag groups a peer's
#: markers so that their number can be bounded (limits.MAX_OPEN_UPLOADS_PER_PEER).
UPLOAD_MARKERS = "upload-open/"
#: Markers of staged copies by the peer they came from:
#: staged-by/<peer tag>/<size, 16 hex digits>-<migration> -> b"", written with the stage
#: and gone with the copy's open/destination/ marker (activated or discarded), so that a
#: Prepare can count what its peer holds here from the keys alone.
STAGED_BY = "staged-by/"
#: Staged copies one peer may have here, awaiting its Commit or Abort, and their bytes.
#: A source that sends neither (dishonest, or gone) kept every copy it staged for good;
#: the only bound was the optional tenant quota. One peer moving 400 objects a second
#: with 8 in flight has about 8 staged at a time; the bytes allow two of the largest
#: streamed objects (blobs.MAX_BLOB_BYTES).
MAX_STAGED_PER_PEER = 1024
MAX_STAGED_BYTES_PER_PEER = 2 * MAX_BLOB_BYTES

#: Longest lifetime a transfer may claim, whatever the sender's configuration says.
MAX_TRANSFER_LIFETIME_S = 600
#: Proposals are evaluated by people, possibly a day later (gateway admit --dry-run).
MAX_PROPOSAL_LIFETIME_S = 2 * 86400
#: Root grants whose custody home is remembered (a staged object's Commit follows its
#: Prepare within seconds; a few hundred bytes each).
ROOT_HOMES_REMEMBERED = 1024
#: Staged migrations whose (tenant, object id) is remembered for their Commit (a Commit
#: follows its Prepare within seconds; a few hundred bytes each).
STAGES_REMEMBERED = 1024
#: Stages whose record and object are held for their Commit, which then reads neither
#: (see :class:`_Staged`): the Commits of the migrations in flight follow within
#: milliseconds; one that comes later, or after a restart, reads them.
STAGES_HELD = 64
#: Stage transactions tried when only the tenant's usage counter moved under them.
STAGE_ATTEMPTS = 8


#: Stages of one tenant written in one transaction at most (bounds a commit's size).
MAX_STAGES_PER_COMMIT = 32


#: The staged copy: the arriving object with the authority this host grants it.
#: The STAGED record and the receipts an arrival builds, by position and slot by slot
#: (gateway/_slots.py: a frozen ``__init__`` cost about 17,000 instructions for a
#: receipt, 4,000 this way). Every field is given; neither class has a
#: ``__post_init__`` (tests/test_p2main_s42.py holds them to the constructors).
_staged_record = builder(
    DestinationRecord,
    "migration_id",
    "object_id",
    "tenant",
    "source_host",
    "step",
    "transfer_digest",
    "staged_receipt",
    "activation_receipt",
    "staged",
    "created_at",
    "updated_at",
    "reason",
)
_new_receipt = builder(
    Receipt,
    "kind",
    "migration_id",
    "object_id",
    "epoch",
    "host",
    "source_host",
    "transfer_digest",
    "issued_at",
)
_with_authority = replacing(GovernedObject, "authority", "authority_expires")
#: The record of an activation: ACTIVATED, its receipt, the staged copy dropped.
_activated_record = replacing(
    DestinationRecord, "step", "staged", "activation_receipt", "updated_at"
)


@dataclass(eq=False, slots=True, kw_only=True)
class _PendingStage:
    """A stage waiting for its tenant's writer: its own writes, without its charge."""

    object_id: str
    size: int
    ops: tuple[Operation, ...]
    done: asyncio.Future[None]
    #: The ETags its transaction wrote, once committed, when the store said them.
    written: dict[str, str] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class _Staged:
    """A stage as this process wrote it, for its Commit: the STAGED record under the
    ETag its write gave it, and the object's item as the Prepare read it (``None``: no
    object here yet). The activation writes on both ETags without reading them again,
    so anything written to either since (an abort, another Commit, another process)
    fails it and the Commit then reads them, as without this."""

    record: Versioned[DestinationRecord]
    current: Versioned[GovernedObject] | None


#: As the receipts above: the held stage, and the activation's lifecycle event.
_staged_for_commit = builder(_Staged, "record", "current")
_event = builder(
    LifecycleEvent, "verb", "tenant", "object_id", "epoch", "generation", "payload", "at"
)


def _answer(pending: _PendingStage, outcome: BaseException | None) -> None:
    if pending.done.done():  # answered already, or its caller cancelled it
        return
    if outcome is None:
        pending.done.set_result(None)
    elif isinstance(outcome, asyncio.CancelledError):
        pending.done.cancel()  # the writer was cancelled (the loop is closing)
    else:
        pending.done.set_exception(outcome)


def _record_etag(pending: _PendingStage, record: DestinationRecord) -> str | None:
    """The ETag a committed stage wrote its record with, if the store said it."""
    return (pending.written or {}).get(destination_key(record.migration_id))


def _fail_all(pendings: list[_PendingStage], exc: BaseException) -> None:
    """Answer every stage of a batch whose read or commit failed with ``exc``; a
    cancellation (not an ``Exception``) is raised on after they are answered."""
    for pending in pendings:
        _answer(pending, exc)
    if not isinstance(exc, Exception):
        raise exc


class _Unread(enum.Enum):
    """Marks "not read yet, read it" where ``None`` (no such object) is an answer."""

    UNREAD = "unread"


_UNREAD = _Unread.UNREAD


class _WrittenFirst(Exception):
    """Staging lost to a write other than a usage count: not a race to retry."""


class Destination:
    def __init__(
        self,
        context: HostContext,
        peers: Peers | None = None,
        home: CustodyHome | None = None,
    ) -> None:
        self.ctx = context
        #: Reaches the source (its signed decision) and custody homes; without it this
        #: host cannot activate objects that name a custody home.
        self.peers = peers
        self.home = home or CustodyHome(context)
        #: The custody home each root grant names, by the grant's exact text, remembered
        #: when an arrival verified its chain, so that its Commit does not parse the
        #: grant again (a pure function of those bytes: it cannot go stale).
        self._root_homes: OrderedDict[str, str] = OrderedDict()
        #: (tenant, object id) of the migrations this process staged, by migration id, so
        #: that Commit reads the record and the object in one query. Only a hint: what
        #: is read is checked against the record as read.
        self._staged_names: OrderedDict[str, tuple[str, str]] = OrderedDict()
        #: The stages this process wrote most recently, by migration id (_Staged).
        self._staged: OrderedDict[str, _Staged] = OrderedDict()
        #: Activations running in this process, by migration id: a second Commit of the
        #: same migration (the source's recovery re-sending it while its coordinator's
        #: call is still here, or this host's own recovery) waits for the first and then
        #: looks again, so that one migration has at most one custody claim in flight.
        #: Bounded by the stages that exist: an entry is made only for a staged record
        #: of the calling peer, and removed when its activation ends.
        self._activating: dict[str, asyncio.Event] = {}
        #: Stages waiting for their tenant's writer, and the writers running (see
        #: _write_stage).
        self._stages: dict[str, list[_PendingStage]] = {}
        self._stage_writers: dict[str, asyncio.Task[None]] = {}
        #: Streamed uploads in flight in this process, per peer (exact, unlike the store's
        #: markers, which two concurrent uploads could both count before either writes).
        self._uploads: dict[str, int] = {}
        #: Markers of the uploads this process is streaming or staging: never collected
        #: (collect_uploads), however long the peer takes, while their stage can still
        #: be written. Bounded like _uploads.
        self._uploading: set[str] = set()
        #: Where nonce pruning stopped (see :meth:`prune_nonces`).
        self._nonce_walk = PrefixWalk(NONCE_PREFIX)
        #: clean-ups of failed uploads, held until done (shielded from the call's cancel)
        self._cleanups: set[asyncio.Future[None]] = set()
        #: Stages waiting for a writer and Commits being handled in this process: none
        #: means a quiet host, where a stage is written by its own call (_write_stage).
        self._handling = 0

    # --- Prepare ----------------------------------------------------------------------

    def _open_transfer(
        self,
        raw: bytes,
        *,
        peer: str,
        payload_type: str,
        now: datetime,
        max_lifetime: int = MAX_TRANSFER_LIFETIME_S,
    ) -> tuple[Transfer, bytes]:
        """Size, decode, signatures by ``peer``'s keys, payload type, parse, source,
        audience, tenant (hosted here, ``peer`` bound to it), and only then the object and
        its lineage (work that grows with the lineage, which a peer refused for its tenant
        must not make this host do), then time."""
        ctx = self.ctx
        envelope = wire.decode_envelope(raw)
        payload = ctx.open_from(peer, envelope, payload_type, at=now)
        parsed = wire.ParsedTransfer(payload)
        observability.bind(
            migration_id=parsed.migration_id,
            object_id=parsed.object_id,
            peer=peer,
            tenant=parsed.tenant,
        )
        if parsed.source_host != peer:
            raise PeerMismatchError(
                f"transfer claims to come from {parsed.source_host}, but the connection is from {peer}"
            )
        if parsed.destination_host != ctx.host:
            raise AudienceError(
                f"transfer {parsed.migration_id} is addressed to {parsed.destination_host}, not {ctx.host}",
                hint="a transfer is valid for its one destination only; migrate again to this host",
            )
        self._check_binding(parsed.tenant, peer=peer)
        transfer = parsed.decoded()
        proposal = payload_type == dsse.PayloadType.PROPOSAL
        self._check_time(
            transfer, now, max_lifetime=MAX_PROPOSAL_LIFETIME_S if proposal else max_lifetime
        )
        # The digest of exactly ``payload``, which decoded() took already as the staged
        # copy's last_transfer_digest: hashing the same bytes again was work done twice.
        return transfer, transfer.object.last_transfer_digest

    async def _assess(
        self,
        transfer: Transfer,
        *,
        peer: str,
        now: datetime,
        read: Mapping[str, Item] | None = None,
    ) -> tuple[Admission, Versioned[int] | None, datetime | None]:
        """Everything that decides whether this host takes the object, without writing:
        epoch fence, tenant, lineage, credential chain, constraints, host policy.

        ``read``: what the caller read of the object's fence and record keys (with its
        own keys, in one query: a key missing from it is absent); read here if None."""
        ctx = self.ctx
        await self._check_tenant(transfer, peer=peer)
        tenant = transfer.object.tenant
        keys = fence_key(tenant, transfer.object_id), object_key(tenant, transfer.object_id)
        # One read for both, one snapshot (or the caller's, which held them too).
        found = read if read is not None else await ctx.journal.store.get_many(keys)
        fence = ctx.journal.decoded(decode_counter, found.get(keys[0]))
        if fence is not None and transfer.epoch <= fence.value:
            raise RollbackError(
                f"{transfer.object_id} arrives with epoch {transfer.epoch}, but epoch {fence.value} "
                "was already seen here: this is a stale copy",
                hint="only the copy with the newest epoch may move; find where the object lives now",
            )
        current = ctx.journal.decoded_object(keys[1], found.get(keys[1]))
        checkpoints = self._check_lineage(transfer, previous=current.value if current else None)
        ctx.check_rules(transfer.object)
        # Hops are the departures other hosts signed (plus this one), each matched by its
        # receiver's arrival receipt: never the sender's own entries, which it could drop.
        # Aborted attempts raised the epoch but recorded no departure.
        custody = verify_custody(
            transfer.object.lineage,
            checkpoints,
            object_id=transfer.object_id,
            trust=ctx.trust,
            in_transit=True,
        )
        chain = ctx.chain_of(transfer.object, at=now)
        if chain is not None:
            self._remember_root_home(chain.grants[0].compact, chain.grants[0].home)
        require_extends_departures(
            transfer.object.lineage,
            checkpoints,
            transfer.object.grants,
            chain,
            object_id=transfer.object_id,
        )
        # The chain verified just above, not verified again (it was verified twice).
        admission, expires = ctx.authorize(
            transfer.object, peer=peer, hops=custody.hops, at=now, chain=chain
        )
        return admission, fence, expires

    def _check_binding(self, tenant: str, *, peer: str) -> None:
        """``tenant`` is hosted here and ``peer`` is bound to it (see :meth:`_check_tenant`)."""
        ctx = self.ctx
        if tenant not in ctx.tenants:
            raise AdmissionDeniedError(
                f"tenant {tenant!r} is not hosted on {ctx.host}",
                hint="add the tenant to this host's configuration, or migrate to another host",
            )
        ctx.tenancy.require_bound(peer, tenant, host=ctx.host)

    async def _check_tenant(self, transfer: Transfer, *, peer: str) -> None:
        """The object's tenant is hosted here, ``peer`` is bound to it, and it has room.

        First of all checks, before the fence is even looked at: a peer learns nothing
        about a tenant it may not deliver into. Objects are named by (tenant, id) here, so an
        object with the same id in another tenant neither blocks nor is touched by this
        one (see gateway.tenancy). The quota is checked again when the stage is written.
        """
        ctx = self.ctx
        tenant = transfer.object.tenant
        self._check_binding(tenant, peer=peer)
        limits = ctx.tenancy.limits_of(tenant)
        if limits.max_objects is None and limits.max_bytes is None:
            return  # no quota to be out of room in: its usage is not read (two queries)
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

    async def prepare(
        self, raw: bytes, *, peer: str, max_lifetime: int = MAX_TRANSFER_LIFETIME_S
    ) -> bytes:
        """Verify, admit and stage a transfer from ``peer``; returns the signed receipt.

        ``max_lifetime`` is the longest lifetime the transfer may claim: a few minutes
        over the network, longer for a file carried by hand (gateway.handoff.offline)."""
        ctx = self.ctx
        now = ctx.clock.now()
        transfer, transfer_digest = self._open_transfer(
            raw,
            peer=peer,
            payload_type=dsse.PayloadType.TRANSFER,
            now=now,
            max_lifetime=max_lifetime,
        )
        if transfer.object.blob is not None:
            raise TransferStreamError(
                f"{transfer.object_id} carries {transfer.object.size} bytes of data as a stream",
                hint="send it with PrepareStream",
            )
        return await self._prepare(transfer, transfer_digest, peer=peer, now=now)

    async def prepare_stream(
        self,
        raw: bytes,
        data: AsyncIterator[bytes | memoryview],
        *,
        peer: str,
        max_lifetime: int = MAX_TRANSFER_LIFETIME_S,
    ) -> bytes:
        """Prepare for a large object: the transfer is verified and admitted *before* any
        data is read; the data is then stored as it streams in, hashed incrementally, and
        must match the size and digest the transfer signs, or nothing is kept."""
        data = _parts_of_bounded_count(observability.streamed(data, "received"))
        ctx = self.ctx
        now = ctx.clock.now()
        transfer, transfer_digest = self._open_transfer(
            raw,
            peer=peer,
            payload_type=dsse.PayloadType.TRANSFER,
            now=now,
            max_lifetime=max_lifetime,
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
        data: AsyncIterator[bytes | memoryview] | None = None,
    ) -> bytes:
        ctx = self.ctx
        # One read for both (each read is a query of its own, the larger part of a
        # small arrival's store time): the idempotency record, then the nonce; for an
        # object of a tenant hosted here, its fence and record too (_assess looks at them
        # only after its tenant checks: reading them first tells the peer nothing).
        record_key, used_key = destination_key(transfer.migration_id), nonce_key(transfer.nonce)
        tenant = transfer.object.tenant
        object_keys = (
            [fence_key(tenant, transfer.object_id), object_key(tenant, transfer.object_id)]
            if tenant in ctx.tenants
            else []
        )
        found = await ctx.journal.store.get_many([record_key, used_key, *object_keys])
        existing = ctx.journal.decoded(wire.decode_destination_record, found.get(record_key))
        if existing is not None:
            return self._replay(existing.value, transfer_digest)
        if used_key in found:
            raise ReplayError(
                f"transfer nonce of migration {transfer.migration_id} was already used here"
            )
        await self._require_staging_room(peer, transfer.object.size)
        try:
            admission, fence, expires = await self._assess(
                transfer, peer=peer, now=now, read=found if object_keys else None
            )
        except ForkError as exc:
            await record_fork(
                ctx,
                transfer.object,
                migration_id=transfer.migration_id,
                peer=peer,
                reason=exc.reason,
                at=now,
            )
            raise
        staged = _with_authority(transfer.object, admission.authority, expires)
        upload: str | None = None
        if data is not None and staged.blob is not None:
            # Each attempt uploads under its own prefix, announced by a marker that the
            # stage transaction removes: a marker still there after the transfer expired
            # means chunks nobody references (recovery deletes them). Chunks are never
            # deleted when the stage's outcome is unknown (a cancelled or timed-out write
            # may have committed): that would leave a staged object without its data.
            upload, blob = await self._upload(transfer, staged.blob, data, peer=peer)
            staged = replace(staged, blob=blob)
        try:
            # The object's item as read above (decoded by _assess already: a memo hit).
            current = (
                ctx.journal.decoded_object(object_keys[1], found.get(object_keys[1]))
                if object_keys
                else None
            )
            return await self._stage(
                transfer,
                transfer_digest,
                staged,
                fence,
                peer=peer,
                now=now,
                upload=upload,
                current=current,
            )
        finally:
            if upload is not None:  # its stage is written or refused: the marker says
                self._uploading.discard(upload)

    async def _require_staging_room(self, peer: str, size: int) -> None:
        """Refuse a Prepare from ``peer`` that would stage more than
        :data:`MAX_STAGED_PER_PEER` copies or :data:`MAX_STAGED_BYTES_PER_PEER` bytes here,
        counted from the peer's ``staged-by/`` keys, before anything is verified or
        written: the source aborts, and its object stays live there."""
        keys = await self.ctx.journal.store.list(
            f"{STAGED_BY}{_peer_tag(peer)}/", limit=MAX_STAGED_PER_PEER
        )
        hint = (
            "the source must commit or abort the migrations it staged here first; "
            "`gateway migration list` on this host shows them"
        )
        if len(keys) >= MAX_STAGED_PER_PEER:
            raise QuotaExceededError(
                f"{peer} has {len(keys)} copies staged here awaiting its decision; at most "
                f"{MAX_STAGED_PER_PEER}",
                hint=hint,
            )
        held = sum(_staged_size(key) for key in keys)
        if held + size > MAX_STAGED_BYTES_PER_PEER:
            raise QuotaExceededError(
                f"{peer} has {held} bytes staged here awaiting its decision; {size} more "
                f"would pass {MAX_STAGED_BYTES_PER_PEER} bytes",
                hint=hint,
            )

    async def _upload(
        self,
        transfer: Transfer,
        expected: BlobRef,
        data: AsyncIterator[bytes | memoryview],
        *,
        peer: str,
    ) -> tuple[str, BlobRef]:
        """Store a streamed upload under its own prefix; returns its marker and the blob.

        Bounded per peer: at most :data:`~gateway.limits.MAX_OPEN_UPLOADS_PER_PEER` in
        flight here, and as many markers in the store (a crash leaves markers behind until
        :meth:`collect_uploads`). An upload refused mid-stream (too long, truncated,
        digest mismatch, the peer gone) leaves neither marker nor chunks: nothing was
        staged, so nothing can reference them.
        """
        store = self.ctx.journal.store
        tag = _peer_tag(peer)
        if (
            self._uploads.get(peer, 0) >= MAX_OPEN_UPLOADS_PER_PEER
            or len(await store.list(f"{UPLOAD_MARKERS}{tag}/", limit=MAX_OPEN_UPLOADS_PER_PEER))
            >= MAX_OPEN_UPLOADS_PER_PEER
        ):
            raise TransferStreamError(
                f"{peer} already has {MAX_OPEN_UPLOADS_PER_PEER} uploads open here",
                hint="wait for them to finish; unfinished ones are collected after they expire",
            )
        self._uploads[peer] = self._uploads.get(peer, 0) + 1
        try:
            # Each attempt uploads under its own prefix, announced by a marker that the
            # stage transaction removes: a marker still there after the transfer expired
            # means chunks nobody references (recovery deletes them). Chunks are never
            # deleted when the stage's outcome is unknown (a cancelled or timed-out write
            # may have committed): that would leave a staged object without its data.
            suffix = f"{tag}/{transfer.migration_id}/{uuid.uuid4().hex[:16]}"
            upload = UPLOAD_MARKERS + suffix
            collectable = to_millis(transfer.expires_at + 2 * self.ctx.timing.clock_skew)
            self._uploading.add(upload)
            try:
                # Inside the try: a call cancelled while the marker's write is queued
                # can still see that write commit on the store's worker (which runs
                # calls in order, so the cleanup's delete comes after it).
                await store.put(upload, encode_counter(collectable), etag=Expect.ABSENT)
                blob = await write_blob(
                    store,
                    f"upload/{suffix}/",
                    data,
                    expected_digest=expected.digest,
                    expected_size=expected.size,
                )
                # A stream that outlived its marker (a slow peer; collected by another
                # process sharing the store) may have lost its first chunks to the
                # collection while the rest were still written: never stage it.
                if await store.get(upload) is None:
                    raise TransferStreamError(
                        f"the upload of migration {transfer.migration_id} outlived its "
                        "transfer: what it stored was collected as abandoned",
                        hint="send it again, faster or with a longer "
                        "handoff.transfer_ttl_seconds on the source",
                    )
            except BaseException:
                # The stream failed before any stage was attempted: its chunks are ours
                # alone. Listing (not counting what write_blob knows it wrote) also finds
                # a batch whose write was cancelled but still ran on the store's worker.
                # If this cleanup fails too, the marker stays and collect_uploads
                # finishes the job after the transfer expired. Shielded: a peer that
                # vanishes cancels this call, and that cancellation can land after the
                # stream's own error, while the cleanup awaits; it must not stop it.
                cleanup = asyncio.ensure_future(self._drop_failed_upload(suffix, upload))
                self._cleanups.add(cleanup)
                cleanup.add_done_callback(self._cleanups.discard)
                try:
                    await asyncio.shield(cleanup)
                finally:
                    self._uploading.discard(upload)
                raise
            return upload, blob
        finally:
            self._uploads[peer] -= 1
            if not self._uploads[peer]:
                del self._uploads[peer]

    async def _drop_failed_upload(self, suffix: str, upload: str) -> None:
        """Delete a failed upload's chunks (or file), then its marker."""
        store = self.ctx.journal.store
        await delete_location(store, f"upload/{suffix}/")
        await store.delete(upload, etag=Expect.ANY)

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
        current: Versioned[GovernedObject] | None = None,
    ) -> bytes:
        """``current``: the object's item as the Prepare read it (held for the Commit)."""
        ctx = self.ctx
        receipt_raw, _envelope = self._receipt(
            ReceiptKind.STAGED,
            migration_id=transfer.migration_id,
            object_id=transfer.object_id,
            epoch=transfer.epoch,
            peer=peer,
            transfer_digest=transfer_digest,
            now=now,
        )
        record = _staged_record(
            transfer.migration_id,
            transfer.object_id,
            transfer.object.tenant,
            peer,  # source_host
            DestinationStep.STAGED,
            transfer_digest,
            receipt_raw,  # staged_receipt
            b"",  # activation_receipt
            staged,
            now,  # created_at
            now,  # updated_at
            "",  # reason
        )
        crash_point("destination.before-stage")
        expires = to_millis(transfer.expires_at + ctx.timing.clock_skew)
        try:
            async for attempt in lost_race(STAGE_ATTEMPTS):
                with attempt:
                    try:
                        etag = await self._write_stage(
                            record, transfer, fence, expires=expires, upload=upload
                        )
                    except ConcurrencyError as exc:
                        if not await self._only_usage_moved(transfer, fence):
                            raise _WrittenFirst from exc  # not retried: answered below
                        # Another object of the tenant was counted meanwhile (by another
                        # process): count again, after the policy's short random pause.
                        raise
        except QuotaExceededError:
            # Other arrivals filled the tenant since _assess; nothing was staged.
            await self._discard_upload(staged, upload)
            raise
        except (ConcurrencyError, _WrittenFirst) as exc:
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
        self._remember_staged(transfer.migration_id, record.tenant, transfer.object_id)
        if etag is not None:
            self._hold_staged(
                transfer.migration_id, _staged_for_commit(Versioned(record, etag), current)
            )
        # DEBUG: a migration's INFO line here is its activation (each line written cost
        # about 150 µs of the loop's time per migration on a busy host).
        log.debug("staged %s (epoch %d) from %s", transfer.object_id, transfer.epoch, peer)
        return receipt_raw

    async def _write_stage(
        self,
        record: DestinationRecord,
        transfer: Transfer,
        fence: Versioned[int] | None,
        *,
        expires: int,
        upload: str | None,
    ) -> str | None:
        """One transaction: the journal record, the nonce, the raised fence, the tenant's
        quota charge for the staged copy (checked again: other arrivals may have filled
        the tenant since _assess), and the upload marker gone.

        Stages of one tenant are charged one writer at a time (the tenant's usage counter
        is a read-modify-write under its ETag), but not one commit each: the tenant's
        writer takes every stage waiting for it (with no key in common) into one
        transaction with one counter update, checking each against the quota in turn.
        Each stage's writes still commit all together or not at all, and a stage is
        answered only once its commit is durable. Holding the tenant's lock across one
        commit per stage made stages the queue of a busy host (8 arrivals in flight
        each waited for every earlier one's fsync and the loop turn after it).

        Returns the ETag the record was written with, when the store said it."""
        ctx = self.ctx
        tenant, staged = record.tenant, record.staged
        assert staged is not None
        pending = _PendingStage(
            object_id=transfer.object_id,
            size=staged.size,
            ops=(
                ctx.journal.put_destination(record, Expect.ABSENT),
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
                Put(key=open_destination_key(record.migration_id), value=b"", etag=Expect.ABSENT),
                Put(key=_staged_key(record), value=b"", etag=Expect.ANY),
                *([Delete(key=upload, etag=Expect.ANY)] if upload else []),
            ),
            done=asyncio.get_running_loop().create_future(),
        )
        charging = ctx.journal.charging(tenant)
        if not self._handling and tenant not in self._stage_writers and not charging.locked():
            # A lone stage (no other stage or activation in progress here, no writer
            # running: every arrival of a quiet host) is written by its own call, under
            # the same lock and in the same transaction a writer would make: starting a
            # writer task and waking it and the caller again cost three turns of the
            # event loop per arrival. On a busy host the writer's first turn lets the
            # stages arriving meanwhile join its first batch, so it is kept there.
            async with charging:
                await self._write_batch(tenant, [pending])
            await pending.done
            return _record_etag(pending, record)
        self._stages.setdefault(tenant, []).append(pending)
        if tenant not in self._stage_writers:
            self._stage_writers[tenant] = asyncio.create_task(self._write_stages(tenant))
        # A cancelled caller cancels only its stage's own future, which no writer waits
        # on: the writer writes the stage or not all the same (as a cancelled transaction
        # may still commit) and _answer leaves the future as it is; the other stages
        # are not disturbed. (A shield here cost a future and two turns of the loop.)
        self._handling += 1
        try:
            await pending.done
        finally:
            self._handling -= 1
        return _record_etag(pending, record)

    async def _write_stages(self, tenant: str) -> None:
        """The tenant's stage writer: batches of waiting stages until none waits."""
        waiting = self._stages[tenant]
        try:
            async with self.ctx.journal.charging(tenant):
                while waiting:
                    batch: list[_PendingStage] = []
                    keys: set[str] = set()
                    for pending in list(waiting):
                        mine = {op.key for op in pending.ops} | {
                            held_key(tenant, pending.object_id)
                        }
                        if len(batch) < MAX_STAGES_PER_COMMIT and not keys & mine:
                            batch.append(pending)
                            keys |= mine
                            waiting.remove(pending)
                    await self._write_batch(tenant, batch)
        finally:
            del self._stage_writers[tenant]
            for pending in waiting:  # only if this writer itself failed or was cancelled
                _answer(pending, StoreUnavailableError(f"the stage writer of {tenant} stopped"))
            waiting.clear()

    async def _write_batch(self, tenant: str, batch: list[_PendingStage]) -> None:
        journal = self.ctx.journal
        try:
            usage = await journal.usage(tenant)
        except BaseException as exc:
            _fail_all(batch, exc)
            return
        held = usage.value
        accepted: list[_PendingStage] = []
        for pending in batch:
            try:
                self.ctx.tenancy.require_room(
                    tenant, held, size=pending.size, object_id=pending.object_id
                )
            except QuotaExceededError as exc:
                _answer(pending, exc)
                continue
            held = held.plus(pending.size)
            accepted.append(pending)
        if not accepted:
            return
        ops: list[Operation] = [
            op
            for pending in accepted
            for op in (
                *pending.ops,
                Put(
                    key=held_key(tenant, pending.object_id),
                    value=encode_counter(pending.size),
                    etag=Expect.ABSENT,
                ),
            )
        ]
        ops.extend(usage.fold(tenant, adding_all=[pending.size for pending in accepted]))
        try:
            written = await journal.store.transact(ops)
        except ConcurrencyError as exc:
            if len(accepted) == 1:
                _answer(accepted[0], exc)
                return
            # One of them lost a race (or the counter moved under us, another process
            # charging): each alone then, as if there had been no batch.
            for index, pending in enumerate(accepted):
                try:
                    await self._write_alone(tenant, pending)
                except BaseException as stopped:  # cancelled: nobody is left unanswered
                    for rest in accepted[index + 1 :]:
                        _answer(rest, stopped)
                    raise
            return
        except BaseException as exc:
            _fail_all(accepted, exc)
            return
        journal.wrote_usage(tenant, ops, written)  # under the tenant's lock
        for pending in accepted:
            pending.written = written
            _answer(pending, None)

    async def _write_alone(self, tenant: str, pending: _PendingStage) -> None:
        ctx = self.ctx
        try:
            charge = await ctx.journal.charge(
                tenant,
                pending.object_id,
                pending.size,
                check=lambda usage: ctx.tenancy.require_room(
                    tenant, usage, size=pending.size, object_id=pending.object_id
                ),
            )
            ops = [*pending.ops, *charge]
            pending.written = await ctx.journal.store.transact(ops)
        except BaseException as exc:
            _answer(pending, exc)
            if not isinstance(exc, Exception):
                raise
            return
        ctx.journal.wrote_usage(tenant, ops, pending.written)  # under the tenant's lock
        _answer(pending, None)

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
    ) -> tuple[bytes, dsse.Envelope]:
        """A serialized receipt of ``kind`` for ``peer``, signed by this host, and its
        envelope (not decoded back from the bytes)."""
        receipt = _new_receipt(
            kind, migration_id, object_id, epoch, self.ctx.host, peer, transfer_digest, now
        )
        envelope = self.ctx.seal(wire.encode_receipt(receipt), kind.payload_type)
        return wire.encode_envelope(envelope), envelope

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

    def _check_lineage(
        self, transfer: Transfer, *, previous: GovernedObject | None
    ) -> tuple[Checkpoint, ...]:
        """The lineage verifies, ends with the sender's freeze and its signed departure to
        this host in this migration, and extends what this host saw; returns the verified
        checkpoints (the departures)."""
        obj = transfer.object
        verified = verify_lineage(
            obj.lineage, object_id=obj.object_id, trust=self.ctx.trust, sealed=True
        )
        departure = verified.checkpoints[-1] if verified.checkpoints else None
        if departure is None or (departure.host, departure.to, departure.migration) != (
            transfer.source_host,
            self.ctx.host,
            transfer.migration_id,
        ):
            raise CustodyError(
                "the lineage does not end with the source's signed departure to this host "
                f"in migration {transfer.migration_id}",
                hint="the source must checkpoint the lineage for this handoff before sending it",
            )
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
            try:
                compared = verify_extends(
                    obj.lineage,
                    seen_size=len(previous.lineage),
                    seen_root=previous.lineage.root(),
                    # A tombstone is the history up to its freeze: the departure this
                    # host then signed is the one after those it carries.
                    seen_departures=departures_counted(previous.lineage) + 1
                    if previous.state is LifecycleState.MOVED
                    else 0,
                )
            except LineageError as exc:
                # Two histories of one object that do not extend each other: one of them
                # comes from a copy that should not exist (a stale copy sent on).
                raise ForkError(
                    f"{obj.object_id} arrives with a history that diverges from the copy held "
                    f"here ({previous.state.value}): {exc.reason}",
                    hint="the arriving copy is refused and kept as evidence; see `gateway forks`",
                ) from exc
            if not compared:
                log.info(
                    "%s comes back after more hops than it carries: the history seen here is "
                    "archived in the arriving copy, so its extension rests on the carried "
                    "departures' signers and the archive (ADR 0010)",
                    obj.object_id,
                )
            if previous.state is not LifecycleState.MOVED:
                raise ObjectStateError(
                    f"{obj.object_id} is {previous.state.value} here already; refusing a second live copy",
                    hint="find out how two hosts came to hold it before moving it again",
                )
        return verified.checkpoints

    @staticmethod
    def _replay(record: DestinationRecord, transfer_digest: bytes) -> bytes:
        """A Prepare for a migration already journaled here.

        While STAGED it is the source retrying (its reply was lost): the same receipt again.
        Once settled it can only be a replay — the source never re-sends a transfer after
        it committed or aborted — so it is refused and changes nothing.
        """
        if record.step is DestinationStep.ABORTED:
            # Aborted is final. (An Abort that arrived *before* its Prepare wrote nothing,
            # see abort(); that Prepare stages, and Decision then discards the copy.)
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

    async def commit(self, migration_id: str, *, peer: str, decision: bytes = b"") -> bytes:
        """Make the staged object live; returns the signed activation receipt.

        ``decision``: the source's signed COMMITTED answer when the caller already holds
        it (an offline commit file); otherwise it is asked for when a custody home needs it.
        """
        self._handling += 1
        try:
            return await self._commit(migration_id, peer=peer, decision=decision)
        finally:
            self._handling -= 1

    async def answer_commit(self, migration_id: str, *, peer: str) -> bytes:
        """The Commit RPC of ``peer``: :meth:`commit`, or, for a migration this host holds
        no record of, its signed :class:`UnknownMigrationAnswer`. A source re-sending
        Commit after this host pruned the settled record (its reply was lost and the
        source was away past the retention) settles on that signed answer, within the
        limits gateway.handoff.source checks, instead of asking for ever. Nothing is
        written: a peer asking about random ids costs a read and a signature each, as a
        Decision about an unknown id does on a source (presumed abort)."""
        try:
            return await self.commit(migration_id, peer=peer)
        except MigrationNotFoundError:
            # Said only when the record is absent now: a record read again (staged or
            # settled since) keeps the error, and the source asks again.
            if await self.ctx.journal.destination(migration_id) is not None:
                raise
        answer = UnknownMigrationAnswer(
            migration_id=migration_id,
            source=peer,
            destination=self.ctx.host,
            issued_at=self.ctx.clock.now(),
        )
        log.info("commit from %s for unknown migration %s: signed as unknown", peer, migration_id)
        return wire.encode_envelope(
            self.ctx.seal(answer.encode(), dsse.PayloadType.UNKNOWN_MIGRATION)
        )

    async def _commit(self, migration_id: str, *, peer: str, decision: bytes) -> bytes:
        attempts = 0
        while attempts < 3:
            loaded, current = await self._record_and_object(migration_id, peer)
            record = loaded.value
            observability.bind(
                migration_id=migration_id,
                object_id=record.object_id,
                peer=peer,
                tenant=record.tenant,
            )
            if record.step is DestinationStep.ACTIVATED:
                return record.activation_receipt
            if record.step is DestinationStep.ABORTED:
                raise MigrationAbortedError(
                    f"migration {migration_id} was aborted here ({record.reason}); it cannot commit"
                )
            running = self._activating.get(migration_id)
            if running is not None:
                # Not an attempt of ours: wait for that one's end, then read again.
                await running.wait()
                continue
            attempts += 1
            activating = self._activating[migration_id] = asyncio.Event()
            try:
                return await self._activate(record, loaded.etag, peer, decision, current=current)
            except ConcurrencyError:
                continue  # raced with an abort or a duplicate commit: look again
            except ForkError as exc:
                # The custody home says another host holds the object: this copy must never
                # go live. Keep its history as evidence and discard it, so that recovery
                # does not ask the home again forever.
                assert record.staged is not None
                await record_fork(
                    self.ctx,
                    record.staged,
                    migration_id=migration_id,
                    peer=peer,
                    reason=exc.reason,
                    at=self.ctx.clock.now(),
                )
                await self.abort(migration_id, peer=peer, reason=f"custody refused: {exc.reason}")
                raise
            finally:
                if self._activating.get(migration_id) is activating:
                    del self._activating[migration_id]
                activating.set()
        raise ObjectStateError(f"migration {migration_id} keeps changing under commit; retry")

    async def _activate(
        self,
        record: DestinationRecord,
        etag: str,
        peer: str,
        decision: bytes = b"",
        *,
        current: Versioned[GovernedObject] | _Unread | None = _UNREAD,
    ) -> bytes:
        """``current``: the object's item as read with ``record`` (one snapshot), or
        :data:`_UNREAD` to read it here."""
        ctx = self.ctx
        now = ctx.clock.now()
        assert record.staged is not None
        if isinstance(current, _Unread):
            current = await ctx.journal.object(record.tenant, record.object_id)
        if current is not None and current.value.state is not LifecycleState.MOVED:
            again = await ctx.journal.destination(record.migration_id)
            if again is None or again.etag != etag:
                # Another Commit of this migration (the source's recovery re-sends it
                # while its coordinator sends it too) activated it between our two
                # reads: a lost race, which commit() answers as a retry, not a second copy.
                raise ConcurrencyError(f"migration {record.migration_id} changed under commit")
            raise ObjectStateError(
                f"{record.object_id} is {current.value.state.value} here already; refusing a second live copy"
            )
        await self._claim_custody(record, peer, decision)
        crash_point("destination.before-activate")
        receipt, arrival = self._receipt(
            ReceiptKind.ACTIVATED,
            migration_id=record.migration_id,
            object_id=record.object_id,
            epoch=record.staged.epoch,
            peer=peer,
            transfer_digest=record.transfer_digest,
            now=now,
        )
        # Rehosted first: the entry right after a departure is always the receiver's
        # REHOSTED (gateway.custody checks it); an attenuation follows it.
        live = self._attenuated(
            record.staged.rehost(host=ctx.host, source=peer, at=now, arrival=arrival),
            at=now,
        )
        done = _activated_record(record, DestinationStep.ACTIVATED, None, receipt, now)
        await ctx.journal.store.transact(
            [
                ctx.journal.put_object(
                    record.tenant, live, current.etag if current else Expect.ABSENT
                ),
                ctx.journal.put_destination(done, etag),
                Delete(key=open_destination_key(record.migration_id), etag=Expect.ANY),
                Delete(key=_staged_key(record), etag=Expect.ANY),
                *ctx.lifecycle.writes(
                    _event(
                        "object.rehosted",
                        record.tenant,
                        record.object_id,
                        live.epoch,
                        live.generation,
                        {"host": ctx.host, "from": peer, "migration": record.migration_id},
                        now,  # at
                    )
                ),
            ]
        )
        crash_point("destination.after-activate")
        self._staged_names.pop(record.migration_id, None)
        self._staged.pop(record.migration_id, None)
        # After the reply: what the receipt promises (the object live and durable here)
        # is true already; the log line, the metrics and scheduling the object's cycles
        # are this host's own bookkeeping, which the source need not wait for. A Commit
        # answered over gRPC has its response on its way before the loop's next turn runs
        # this (the reply is handed to gRPC in the same step as this call returns).
        asyncio.get_running_loop().call_soon(self._activated, record, live, peer, now)
        return receipt

    def _activated(
        self, record: DestinationRecord, live: GovernedObject, peer: str, now: datetime
    ) -> None:
        """Bookkeeping of an activation, once its receipt was handed back."""
        assert record.staged is not None
        log.info("activated %s from %s", record.object_id, peer)
        observability.arrived(
            record.staged, tenant=record.tenant, started=record.created_at, at=now
        )
        self.ctx.on_active(live)

    async def _claim_custody(self, record: DestinationRecord, peer: str, decision: bytes) -> None:
        """For an object whose root names a custody home: claim custody there with the
        source's signed departure and its signed COMMITTED decision, and go on only with
        the home's signed receipt for exactly this epoch (gateway.handoff.home)."""
        ctx = self.ctx
        staged = record.staged
        assert staged is not None
        home = self._root_home(staged.grants)
        if not home:
            return
        departure = wire.encode_envelope(staged.lineage.checkpoints[-1])
        if self.peers is None:
            raise CustodyError(
                f"{ctx.host} cannot reach the custody home {home} of {record.object_id}"
            )
        if not decision:
            decision = await self.peers.client(peer).decision(record.migration_id)
        try:
            if home == ctx.host:
                receipt = await self.home.claim(departure, decision, peer=ctx.host)
            else:
                receipt = await self.peers.client(home).claim(departure, decision)
        except ForkError as exc:
            raise ForkError(
                f"custody home {home} refused {record.object_id} at epoch {staged.epoch}: "
                f"{exc.reason}",
                hint="the staged copy stays staged and never goes live; see `gateway forks` "
                "on the home",
            ) from exc
        granted = open_custody_receipt(
            ctx,
            receipt,
            home=home,
            object_id=record.object_id,
            epoch=staged.epoch,
            migration=record.migration_id,
        )
        # ADR 0010 step 2: departures archived before the carried ones count too.
        departures = departures_counted(staged.lineage)
        if granted.handoffs > departures:
            # The home granted more handoffs than the history shows: the sender left out
            # a stay (a round trip through itself, which no other host's signature in the
            # history would reveal), and with it whatever that stay recorded.
            raise ForkError(
                f"custody home {home} granted {granted.handoffs} handoffs of "
                f"{record.object_id}, but its history shows {departures}",
                hint="the sender hid part of the object's history; the copy is refused",
            )

    def _remember_root_home(self, root: str, home: str) -> None:
        self._root_homes[root] = home
        self._root_homes.move_to_end(root)
        while len(self._root_homes) > ROOT_HOMES_REMEMBERED:
            self._root_homes.popitem(last=False)

    def _root_home(self, grants: tuple[str, ...]) -> str:
        """:func:`~gateway.credentials.root_home` of ``grants``, remembered if seen."""
        if not grants:
            return ""
        known = self._root_homes.get(grants[0])
        return known if known is not None else root_home(grants)

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
            if chain is None or not audience_admits(chain.leaf.audiences, ctx.host):
                return staged
            child = attenuate(
                chain,
                signer=ctx.grant_signer,
                issuer=ctx.host,
                # The same holders as the parent: narrowing what the object may do must
                # not also decide, for the parent's audience, where it may go next.
                audience=chain.leaf.audiences,
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
        """Discard a staged copy. Aborting a migration this host never staged writes
        nothing: a peer could otherwise fill the store by aborting random ids.

        Why that is still safe under presumed abort: a Prepare delayed in the network
        past this Abort may stage the copy afterwards, but a staged copy never goes live
        without the source's Commit (or a signed COMMITTED answer to Decision), and the
        source journaled ABORTED *before* it sent this Abort, so it can never commit that
        migration: recovery here asks Decision once the stage times out, gets ABORTED and
        discards the copy. The transfer also expires within its short lifetime, after
        which no delayed Prepare is accepted at all.
        """
        ctx = self.ctx
        observability.bind(migration_id=migration_id, peer=peer)
        self._staged.pop(migration_id, None)  # what its Commit would have written on
        for _attempt in range(3):
            now = ctx.clock.now()
            loaded = await ctx.journal.destination(migration_id)
            if loaded is None:
                log.info("abort of unknown migration %s from %s: nothing to do", migration_id, peer)
                return
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
            discarded = loaded.value.staged.blob if loaded.value.staged else None
            # The discarded copy no longer counts against its tenant's quota.
            released = await ctx.journal.release(loaded.value.tenant, loaded.value.object_id)
            try:
                await ctx.journal.store.transact(
                    [
                        ctx.journal.put_destination(record, loaded.etag),
                        Delete(key=open_destination_key(migration_id), etag=Expect.ANY),
                        *(
                            [Delete(key=_staged_key(loaded.value), etag=Expect.ANY)]
                            if loaded.value.staged is not None
                            else []
                        ),
                        *released,
                    ]
                )
            except ConcurrencyError:
                continue  # raced with a Prepare or a Commit: look again
            observability.migration_settled(
                "destination", "aborted", tenant=record.tenant, started=record.created_at, at=now
            )
            crash_point("destination.after-discard")
            if discarded is not None:
                # The journal no longer points at the chunks; a crash here leaves only
                # unreferenced chunks behind, never a half-deleted object.
                await delete_blob(ctx.journal.store, discarded)
            return
        raise ObjectStateError(f"migration {migration_id} keeps changing under abort; retry")

    async def _record_and_object(
        self, migration_id: str, peer: str
    ) -> tuple[Versioned[DestinationRecord], Versioned[GovernedObject] | _Unread | None]:
        """:meth:`_record_for`, and the object it stages when this process staged it (its
        name is remembered): both in one query, one snapshot. Otherwise the object is
        :data:`_UNREAD` (read once the record named it).

        Neither is read when this process wrote the stage moments ago (:class:`_Staged`),
        unless the object's root names a custody home: its activation claims custody
        before it writes, which must not be done for a record that changed meanwhile."""
        held = self._staged.pop(migration_id, None)
        if held is not None:
            staged = held.record.value.staged
            if staged is not None and not self._root_home(staged.grants):
                return self._checked_record(held.record, migration_id, peer), held.current
        names = self._staged_names.get(migration_id)
        if names is None:
            return await self._record_for(migration_id, peer), _UNREAD
        keys = destination_key(migration_id), object_key(*names)
        found = await self.ctx.journal.store.get_many(keys)
        loaded = self._checked_record(
            self.ctx.journal.decoded(wire.decode_destination_record, found.get(keys[0])),
            migration_id,
            peer,
        )
        if (loaded.value.tenant, loaded.value.object_id) != names:
            return loaded, _UNREAD  # never expected: the record names another object
        return loaded, self.ctx.journal.decoded_object(keys[1], found.get(keys[1]))

    def _hold_staged(self, migration_id: str, staged: _Staged) -> None:
        self._staged[migration_id] = staged
        while len(self._staged) > STAGES_HELD:
            self._staged.popitem(last=False)

    def _remember_staged(self, migration_id: str, tenant: str, object_id: str) -> None:
        self._staged_names[migration_id] = (tenant, object_id)
        while len(self._staged_names) > STAGES_REMEMBERED:
            self._staged_names.popitem(last=False)

    async def _record_for(self, migration_id: str, peer: str) -> Versioned[DestinationRecord]:
        loaded = await self.ctx.journal.destination(migration_id)
        return self._checked_record(loaded, migration_id, peer)

    @staticmethod
    def _checked_record(
        loaded: Versioned[DestinationRecord] | None, migration_id: str, peer: str
    ) -> Versioned[DestinationRecord]:
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
            if decode_counter(item.value) >= now or key in self._uploading:
                continue  # not expired, or still streaming or being staged here
            await delete_location(store, f"upload/{key.removeprefix(UPLOAD_MARKERS)}/")
            await store.delete(key, etag=item.etag)
            removed += 1
        # Blob files a crash left half-written (by an upload or by an object create).
        await asyncio.to_thread(sweep_partial_files, store)
        return removed

    async def prune_nonces(self) -> int:
        """Forget nonces whose transfers can no longer be accepted anyway; returns how
        many went.

        A pass reads a page of :data:`NONCE_PAGE` nonces from where the previous pass
        stopped, and reads on only while at least half of the page it read had expired
        (a backlog), up to :data:`NONCE_PAGES_PER_PASS` pages: its reads follow what
        expires, not every nonce held (reading all of them, about 4,700 at 60 migrations
        a second, cost 25-60 ms a pass). A nonce that expired is deleted within one lap
        of the walk; one still live is never deleted (each delete is conditional on the
        ETag read with its expiry)."""
        store = self.ctx.journal.store
        now = to_millis(self.ctx.clock.now())
        pruned = 0
        for _ in range(NONCE_PAGES_PER_PASS):
            keys = await self._nonce_walk.next_page(store, limit=NONCE_PAGE)
            items = await store.get_many(keys)
            expired = [item for item in items.values() if decode_counter(item.value) < now]
            pruned += await delete_unchanged(store, expired)
            if len(keys) < NONCE_PAGE or 2 * len(expired) < len(keys):
                break  # the end of the walk's lap, or no backlog
        return pruned


async def _parts_of_bounded_count(
    data: AsyncIterator[bytes | memoryview],
) -> AsyncIterator[bytes | memoryview]:
    """``data``, refused at the first message after one shorter than
    :data:`~gateway.limits.MIN_STREAM_PART_BYTES`, or at an empty one.

    The signed size bounds a stream's bytes, not its messages, and each message costs a
    decode and a trip to the hashing thread: on its own, a peer could send empty messages
    for ever (about 180 us of CPU each for 7 bytes on the wire), or a large object a byte
    at a time. So only the last message may be short."""
    short: int | None = None
    async for part in data:
        size = len(part)
        if not size:
            raise TransferStreamError(
                "an empty data message in the stream",
                hint="the sender runs a misbehaving gateway: it must send data in messages "
                f"of at least {MIN_STREAM_PART_BYTES} bytes but the last",
            )
        if short is not None:
            raise TransferStreamError(
                f"a data message of {short} bytes before the end of the stream; each but "
                f"the last carries at least {MIN_STREAM_PART_BYTES}",
                hint="the sender runs a misbehaving gateway; nothing was stored",
            )
        if size < MIN_STREAM_PART_BYTES:
            short = size
        yield part


def _staged_key(record: DestinationRecord) -> str:
    """The ``staged-by/`` marker of ``record``'s staged copy (which it holds)."""
    assert record.staged is not None
    size = record.staged.size
    return f"{STAGED_BY}{_peer_tag(record.source_host)}/{size:016x}-{record.migration_id}"


def _staged_size(key: str) -> int:
    """The size a ``staged-by/`` key names (0 if it names none: it then counts by number
    only)."""
    digits = key.rpartition("/")[2][:16]
    try:
        return int(digits, 16) if len(digits) == 16 else 0
    except ValueError:
        return 0


#: Peers whose tag is remembered (a host has a few peers; a tag is a pure function of
#: the id, so it cannot go stale).
PEER_TAGS_REMEMBERED = 256


@functools.lru_cache(maxsize=PEER_TAGS_REMEMBERED)
def _peer_tag(peer: str) -> str:
    """A store-key segment naming ``peer``: a digest, because host ids contain ``/`` and
    one id's prefix must never list another's uploads. Remembered: an arrival needs it
    three times (its staging room, its stage, its activation)."""
    return digest(peer.encode()).hex()[:16]
