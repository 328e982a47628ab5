"""The source side of the handoff: the coordinator of a presumed-abort two-phase commit.

Invariants this side keeps (DESIGN.md §6):

* **Journal first.** Freezing the object and recording the sealed transfer happen in
  one transaction before anything is sent; committing (journal COMMITTED + tombstone)
  happens in one transaction before Commit is sent. A crash between any two steps
  leaves a journal from which :meth:`Source.resume` finishes the job.
* **Presumed abort.** Until COMMITTED is journaled the source may abort, and it journals
  ABORTED (and resumes the object) *before* telling anyone. A destination that asks
  about a migration the source never committed gets ABORTED, and the source can then
  never commit it: the COMMITTED write is conditional on the FROZEN record's ETag.
* **Answered once proven, settled after.** ``migrate`` answers DONE as soon as the
  destination's activation receipt is verified: the outcome has been durable since
  COMMITTED, and the receipt proves the object live there. The DONE record follows in
  the background (gateway.handoff.settles); until it lands the record reads COMMITTED
  with its open marker, which every reader treats as "committed, being confirmed", and
  recovery finishes it if the write fails.
* **One transfer per migration.** Retries re-send the exact sealed bytes from the
  journal, so the destination's idempotency (by migration id and transfer digest)
  holds across process restarts.
"""

from __future__ import annotations

import enum
import logging
import os
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from gateway import envelope as dsse
from gateway import observability, wire
from gateway._crash import crash_point
from gateway._retry import lost_race
from gateway._slots import builder, replacing
from gateway._slots import replacer as _replacer
from gateway._time import format_time
from gateway.blobs import STREAM_PIECE_BYTES, BlobRef, delete_blob, read_blob_views
from gateway.errors import (
    BadSignatureError,
    ConcurrencyError,
    GatewayError,
    HandoffError,
    MigrationAbortedError,
    MigrationNotFoundError,
    NotFoundError,
    ObjectStateError,
    PeerMismatchError,
    PeerUnavailableError,
    StoreUnavailableError,
    VerificationError,
)
from gateway.handoff.context import HostContext
from gateway.handoff.journal import (
    Versioned,
    decode_counter,
    held_key,
    object_key,
    open_source_key,
    settled_form,
    source_key,
)
from gateway.handoff.lifecycle import LifecycleEvent
from gateway.handoff.messages import (
    NONCE_BYTES,
    DecisionAnswer,
    Outcome,
    ReceiptKind,
    Transfer,
    UnknownMigrationAnswer,
)
from gateway.handoff.peers import Peers
from gateway.handoff.pruning import earliest_forgotten
from gateway.handoff.records import TRANSFER_DROPPED_STEPS, SourceRecord, SourceStep
from gateway.limits import MAX_REASON_CHARS
from gateway.lineage import digest
from gateway.model import GovernedObject
from gateway.stores import Delete, Expect, Put

log = logging.getLogger(__name__)

FREEZE_ATTEMPTS = 8
COMMIT_ATTEMPTS = 8
#: A proposal is read by the destination's operator, maybe the next day.
PROPOSAL_TTL = timedelta(days=1)


@dataclass(frozen=True, slots=True, kw_only=True)
class MigrationResult:
    migration_id: str
    object_id: str
    destination: str
    #: DONE once the destination's signed activation receipt is verified (the object
    #: is live there), COMMITTED while that is still to be confirmed. From ``migrate``,
    #: DONE comes before the DONE record is journaled: that write follows in the
    #: background (``await host.settled()`` waits for it; recovery finishes it if it
    #: fails). Whoever reads the result wants to know where the object lives, and that
    #: is proven by then; the record only keeps the proof.
    step: SourceStep
    epoch: int


class _Unknown(enum.Enum):
    """Marks "not known here, read it" where ``None`` is a meaningful value."""

    UNKNOWN = "unknown"


_UNKNOWN = _Unknown.UNKNOWN


@dataclass(frozen=True, slots=True, kw_only=True)
class _Frozen:
    """What a freeze wrote, and read with the object, for the commit of the same call:
    the FROZEN record and the frozen object under the ETags their write gave them, and
    the object's quota charge as read. The commit writes on these ETags without reading
    the three again (a read on the event loop each, the larger part of a small
    migration's store time). Its write is conditional on them, so anything written
    meanwhile (an abort, by a Decision or an operator) fails it, and it then reads."""

    record: Versioned[SourceRecord]
    current: Versioned[GovernedObject]
    held: Versioned[int] | None


_replace_record = _replacer(SourceRecord)
_replace_object = _replacer(GovernedObject)
_committed_record = replacing(SourceRecord, "step", "staged_receipt", "updated_at", "transfer")
#: The DONE record from the COMMITTED one: by position, about a third of the keyword
#: replacer's cost (once per migration, at its settle).
_done_record = replacing(SourceRecord, "step", "activation_receipt", "updated_at", "reason")


def _settled(record: SourceRecord) -> SourceRecord:
    """:func:`~gateway.handoff.journal.settled_form`, with its usual case (a record that
    keeps its transfer's digest and epoch beside the transfer since the freeze only
    drops the envelope) replaced slot by slot. A record written so is what the journal
    writes as it is, with no second ``replace`` there or at DONE."""
    kept = record.transfer and record.transfer_digest and record.epoch
    if kept and record.step in TRANSFER_DROPPED_STEPS:
        return _replace_record(record, transfer=b"")
    return settled_form(record)


def _committed(record: SourceRecord, staged_receipt: bytes, at: datetime) -> SourceRecord:
    """``record`` COMMITTED on ``staged_receipt`` at ``at``, as stored (:func:`_settled`).
    In its usual case (the transfer's digest and epoch kept beside it since the freeze)
    one copy that also drops the transfer, not a copy for the step and another for the
    transfer: the same record, so the same bytes stored."""
    if record.transfer_digest and record.epoch:
        return _committed_record(record, SourceStep.COMMITTED, staged_receipt, at, b"")
    return settled_form(
        _replace_record(
            record, step=SourceStep.COMMITTED, staged_receipt=staged_receipt, updated_at=at
        )
    )


#: The frozen dataclasses a migration builds once each, by position and slot by slot
#: (gateway/_slots.py: a frozen ``__init__`` sets each field through
#: ``object.__setattr__`` with keyword handling around it; the FROZEN record's cost
#: about 25,600 instructions against 4,400). Every field is given: none has a
#: ``__post_init__`` to skip (tests/test_p2main_s42.py holds them to the constructors).
_frozen_record = builder(
    SourceRecord,
    "migration_id",
    "object_id",
    "tenant",
    "destination_host",
    "step",
    "transfer",
    "staged_receipt",
    "activation_receipt",
    "created_at",
    "updated_at",
    "reason",
    "transfer_digest",
    "epoch",
)
_transfer = builder(
    Transfer,
    "migration_id",
    "epoch",
    "source_host",
    "destination_host",
    "issued_at",
    "expires_at",
    "nonce",
    "object",
    "previous_transfer_digest",
)
_result = builder(MigrationResult, "migration_id", "object_id", "destination", "step", "epoch")
_written = builder(_Frozen, "record", "current", "held")
_event = builder(
    LifecycleEvent, "verb", "tenant", "object_id", "epoch", "generation", "payload", "at"
)


def new_migration_id() -> str:
    """``mig-`` and the hex of a random (version 4) UUID: ``uuid.uuid4().hex``, with the
    version and variant bits set on the 16 random bytes directly (``uuid.UUID`` builds
    an int and checks its arguments in Python: most of this function's cost)."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 4122 variant
    return "mig-" + raw.hex()


def _transfer_payload(record: SourceRecord) -> bytes:
    """The signed payload of the transfer envelope the record journals."""
    return wire.decode_envelope(record.transfer).payload


def _transfer_digest(record: SourceRecord) -> bytes:
    """The digest by which receipts (and the tombstone) name the record's transfer.
    Settled records keep only this digest; older ones still hold the transfer."""
    return record.transfer_digest or digest(_transfer_payload(record))


def _transfer_epoch(record: SourceRecord) -> int:
    """The epoch the record's transfer carries (kept alone once the record settled)."""
    return record.epoch or wire.transfer_epoch(_transfer_payload(record))


class Source:
    def __init__(self, context: HostContext, peers: Peers) -> None:
        self.ctx = context
        self.peers = peers

    @observability.traced("gateway.migrate")
    async def migrate(self, object_id: str, *, tenant: str, destination: str) -> MigrationResult:
        """Move an ACTIVE object to ``destination``; returns once it is committed, DONE
        once its activation there is confirmed (its DONE record follows, see
        :class:`MigrationResult`).

        Raises :class:`MigrationAbortedError` (or the destination's own refusal, with
        the object ACTIVE here again) if the destination refused or could not be reached
        before commit.
        """
        self.peers.client(destination)  # an unknown peer fails before anything is frozen
        record, frozen, known = await self._freeze(
            object_id, tenant=tenant, destination=destination
        )
        crash_point("source.after-freeze")
        # Driven on from what the freeze just wrote: the same record and object a
        # resume() would read back, with their ETags when the store said them.
        return await self._drive(record, blob=frozen.blob, frozen=known, settle_later=True)

    async def freeze(
        self,
        object_id: str,
        *,
        tenant: str,
        destination: str,
        ttl: timedelta | None = None,
    ) -> str:
        """Freeze an ACTIVE object for ``destination`` and journal the sealed transfer
        (FROZEN), sending nothing; returns the migration id. :meth:`resume` sends it
        over the network; an offline transfer carries the journaled bytes in a file."""
        record, _frozen, _known = await self._freeze(
            object_id, tenant=tenant, destination=destination, ttl=ttl
        )
        return record.migration_id

    async def _freeze(
        self,
        object_id: str,
        *,
        tenant: str,
        destination: str,
        ttl: timedelta | None = None,
    ) -> tuple[SourceRecord, GovernedObject, _Frozen | None]:
        """:meth:`freeze`; returns the FROZEN record and the frozen object it wrote, and
        them with their ETags for the commit when the store said what it wrote (else
        ``None``: the commit reads them)."""
        ctx = self.ctx
        if destination == ctx.host:
            raise ObjectStateError(f"{object_id} already lives on {ctx.host}")
        migration_id = new_migration_id()
        observability.bind(
            migration_id=migration_id, object_id=object_id, peer=destination, tenant=tenant
        )
        # A live object changes between our read and our freeze (its cycle commits every
        # interval); freezing is local and conditional on the ETag read, so a lost race
        # is simply tried again on the fresh object. Another migration is not retried:
        # the object is then FROZEN or MOVED, and freeze() refuses it.
        try:
            async for attempt in lost_race(FREEZE_ATTEMPTS):
                with attempt:
                    # With its quota charge, which the commit releases (one read, one snapshot).
                    loaded, held = await ctx.journal.object_and_held(
                        tenant, object_id, host=ctx.host
                    )
                    now = ctx.clock.now()
                    frozen, raw, transfer_digest, epoch = self._seal(
                        loaded.value,
                        destination,
                        migration_id,
                        dsse.PayloadType.TRANSFER,
                        now,
                        ttl=ttl,
                    )
                    # transfer_digest and epoch are kept beside the transfer from the
                    # start: receipts and the settled record name the transfer by them,
                    # without decoding it.
                    record = _frozen_record(
                        migration_id,
                        object_id,
                        tenant,
                        destination,
                        SourceStep.FROZEN,
                        raw,
                        b"",  # staged_receipt
                        b"",  # activation_receipt
                        now,  # created_at
                        now,  # updated_at
                        "",  # reason
                        transfer_digest,
                        epoch,
                    )
                    written = await ctx.journal.store.transact(
                        [
                            ctx.journal.put_object(tenant, frozen, loaded.etag),
                            ctx.journal.put_source(record, Expect.ABSENT),
                            Put(key=open_source_key(migration_id), value=b"", etag=Expect.ABSENT),
                        ]
                    )
        except ConcurrencyError as exc:
            raise ObjectStateError(
                f"{object_id} kept changing while the migration was being prepared",
                hint="check `gateway object show` and retry",
            ) from exc
        # DEBUG: a migration's INFO line here is its commit (one line per migration).
        log.debug("froze %s for migration %s to %s", object_id, migration_id, destination)
        written = written or {}  # None: a store that does not say the ETags it wrote
        record_etag = written.get(source_key(migration_id))
        frozen_etag = written.get(object_key(tenant, object_id))
        if record_etag is None or frozen_etag is None:
            return record, frozen, None
        return (
            record,
            frozen,
            _written(Versioned(record, record_etag), Versioned(frozen, frozen_etag), held),
        )

    def _seal(
        self,
        obj: GovernedObject,
        destination: str,
        migration_id: str,
        payload_type: str,
        now: datetime,
        *,
        ttl: timedelta | None = None,
    ) -> tuple[GovernedObject, bytes, bytes, int]:
        """Freeze ``obj`` (in memory) and seal it for ``destination``: the frozen object,
        the serialized envelope (whose lineage ends with a checkpoint by this host), the
        digest of the signed payload and the epoch it carries."""
        ctx = self.ctx
        frozen = obj.freeze(migration_id, destination=destination, host=ctx.host, at=now)
        sealed = frozen.lineage.sealed(
            object_id=obj.object_id,
            host=ctx.host,
            epoch=frozen.epoch,
            at=now,
            signer=ctx.signer,
            to=destination,
            migration=migration_id,
        )
        transfer = _transfer(
            migration_id,
            frozen.epoch,
            ctx.host,  # source_host
            destination,
            now,  # issued_at
            now + (ttl or ctx.timing.transfer_ttl),  # expires_at
            os.urandom(NONCE_BYTES),
            _replace_object(frozen, lineage=sealed),
            obj.last_transfer_digest,
        )
        payload = wire.encode_transfer(transfer)
        raw = wire.encode_envelope(ctx.seal(payload, payload_type))
        return frozen, raw, digest(payload), frozen.epoch

    async def propose(self, object_id: str, *, tenant: str, destination: str) -> bytes:
        """A proposal envelope for a dry run: the object as it would travel, under a payload
        type no host stages. Nothing is frozen or written."""
        loaded = await self.ctx.journal.object(tenant, object_id)
        if loaded is None:
            raise NotFoundError(f"no object {object_id} in tenant {tenant} on {self.ctx.host}")
        _frozen, raw, _digest, _epoch = self._seal(
            loaded.value,
            destination,
            f"dry-{new_migration_id()}",
            dsse.PayloadType.PROPOSAL,
            self.ctx.clock.now(),
            ttl=PROPOSAL_TTL,
        )
        return raw

    async def resume(self, migration_id: str) -> MigrationResult:
        """Drive a migration forward from whatever its journal says. Safe to call again.

        Unlike :meth:`migrate`, returns DONE only once DONE is journaled (recovery and an
        operator's resume are followed by reads of the journal); a settle still running
        for this migration is waited for rather than Commit sent again."""
        await self.ctx.settles.wait_for(migration_id)
        loaded = await self.ctx.journal.source(migration_id)
        if loaded is None:
            raise MigrationNotFoundError(
                f"no migration {migration_id} was started on {self.ctx.host}"
            )
        record = loaded.value
        observability.bind(
            migration_id=migration_id,
            object_id=record.object_id,
            peer=record.destination_host,
            tenant=record.tenant,
        )
        return await self._drive(record)

    async def _drive(
        self,
        record: SourceRecord,
        *,
        blob: BlobRef | _Unknown | None = _UNKNOWN,
        frozen: _Frozen | None = None,
        settle_later: bool = False,
    ) -> MigrationResult:
        """:meth:`resume` from ``record`` as read (or just written). ``blob``: the frozen
        object's data reference when the caller holds the object, else it is read;
        ``frozen``: what the caller's freeze wrote, see :class:`_Frozen`;
        ``settle_later``: answer DONE once activation is confirmed, DONE journaled in
        the background (see :meth:`_activate`)."""
        migration_id = record.migration_id
        etag: str | None = None  # the record's, when this call wrote it and knows it
        if record.step is SourceStep.FROZEN:
            record, etag = await self._prepare_and_commit(record, blob=blob, frozen=frozen)
            if record.step is SourceStep.FROZEN:  # never reported as anything it is not
                raise HandoffError(
                    f"migration {migration_id} is still open; its commit was not recorded"
                )
        step: SourceStep = record.step
        if step is SourceStep.COMMITTED:
            step = await self._activate(record, etag=etag, settle_later=settle_later)
        if step is SourceStep.ABORTED:
            raise MigrationAbortedError(
                f"migration {migration_id} of {record.object_id} aborted: {record.reason}",
                hint=f"{record.object_id} is active on {self.ctx.host} again",
            )
        return _result(
            migration_id, record.object_id, record.destination_host, step, _transfer_epoch(record)
        )

    async def _prepare_and_commit(
        self,
        record: SourceRecord,
        *,
        blob: BlobRef | _Unknown | None = _UNKNOWN,
        frozen: _Frozen | None = None,
    ) -> tuple[SourceRecord, str | None]:
        """Prepare, then :meth:`_commit`; returns the record and its ETag when known."""
        client = self.peers.client(record.destination_host)
        if isinstance(blob, _Unknown):
            current = await self.ctx.journal.object(record.tenant, record.object_id)
            blob = current.value.blob if current is not None else None
        try:
            if blob is None:
                receipt_raw = await client.prepare(record.transfer)
            else:
                store = self.ctx.journal.store
                receipt_raw = await client.prepare_stream(
                    record.transfer,
                    lambda: observability.streamed(
                        # Views: the client copies each piece before asking for the next.
                        read_blob_views(store, blob, piece_bytes=STREAM_PIECE_BYTES),
                        "sent",
                    ),
                    size=blob.size,
                )
            receipt = self._check_receipt(record, receipt_raw, ReceiptKind.STAGED)
        except PeerUnavailableError as exc:
            await self.abort(record.migration_id, reason=f"destination unreachable: {exc.reason}")
            raise
        except GatewayError as exc:
            await self.abort(record.migration_id, reason=f"destination refused: {exc}")
            raise
        crash_point("source.after-prepare")
        return await self._commit(
            record.migration_id,
            receipt_raw,
            transfer_digest=_transfer_digest(record),
            receipt=receipt,
            names=(record.tenant, record.object_id),
            frozen=frozen,
        )

    async def _commit(
        self,
        migration_id: str,
        receipt_raw: bytes,
        *,
        transfer_digest: bytes,
        receipt: dsse.Envelope | None = None,
        names: tuple[str, str] | None = None,
        frozen: _Frozen | None = None,
    ) -> tuple[SourceRecord, str | None]:
        """Point of no return: journal COMMITTED and tombstone the object, atomically.
        Returns the record, and its ETag when known (the store said what it wrote, or
        the record was read).

        A lost write race is retried as long as the record is still FROZEN: only an
        abort may change a FROZEN record, so anything else that makes the write fail
        (contention in the store, a busy store) is not a decision against committing.

        ``names``: the (tenant, object id) of the migration when the caller holds its
        record; the record, the object and its quota charge are then read in one query
        (one snapshot), which is checked against the record as read.

        ``frozen``: what the freeze of this call wrote; the first try writes on its ETags
        without reading, and a lost race (something was written since) reads as above.
        """
        ctx = self.ctx
        if receipt is None:  # decoded once: the same on every try
            receipt = wire.decode_envelope(receipt_raw, max_size=wire.MAX_RECEIPT_BYTES)
        current = None
        try:
            async for attempt in lost_race(COMMIT_ATTEMPTS, also=(StoreUnavailableError,)):
                with attempt:
                    if frozen is not None:
                        journal, current, held = frozen.record, frozen.current, frozen.held
                        frozen = None  # a lost race reads them
                    else:
                        journal, current, held = await self._commit_reads(migration_id, names)
                        if journal.value.step is not SourceStep.FROZEN:
                            # A Decision or another driver got here first; follow it.
                            return journal.value, journal.etag
                    assert current is not None  # a FROZEN record's object was found
                    record = journal.value
                    moved = current.value.tombstone(
                        migration_id,
                        moved_to=record.destination_host,
                        receipt=receipt,
                        transfer_digest=transfer_digest,
                    )
                    # As stored: without the transfer (see journal.settled_form).
                    committed = _committed(record, receipt_raw, ctx.clock.now())
                    written = await ctx.journal.store.transact(
                        [
                            ctx.journal.put_object(record.tenant, moved, current.etag),
                            ctx.journal.put_source(committed, journal.etag),
                            # A tombstone is not held: the tenant's quota gets the room back.
                            *ctx.journal.release_held(record.tenant, record.object_id, held),
                            *ctx.lifecycle.writes(
                                _event(
                                    "migration.committed",
                                    record.tenant,
                                    record.object_id,
                                    moved.epoch,
                                    moved.generation,
                                    {
                                        "from": ctx.host,
                                        "to": record.destination_host,
                                        "migration": migration_id,
                                    },
                                    committed.updated_at,
                                )
                            ),
                        ]
                    )
        except (ConcurrencyError, StoreUnavailableError) as exc:
            raise HandoffError(
                f"could not record the commit of migration {migration_id}: {exc.reason}",
                hint="the migration stays open; recovery aborts it if it cannot be committed",
            ) from exc
        assert current is not None  # the loop either committed with it or raised
        log.info("committed migration %s of %s", migration_id, record.object_id)
        crash_point("source.after-commit-journal")
        if current.value.blob is not None:
            # The destination holds the data (its staged receipt says so): ours can go.
            await delete_blob(ctx.journal.store, current.value.blob)
        return committed, (written or {}).get(source_key(migration_id))

    async def _commit_reads(
        self, migration_id: str, names: tuple[str, str] | None
    ) -> tuple[Versioned[SourceRecord], Versioned[GovernedObject] | None, Versioned[int] | None]:
        """The record, and (if it is FROZEN) the object and its quota charge, as
        :meth:`_commit` reads them."""
        ctx = self.ctx
        wanted = (
            (object_key(*names), held_key(*names), source_key(migration_id))
            if names is not None
            else ()
        )
        found = await ctx.journal.store.get_many(wanted) if wanted else {}
        journal = (
            ctx.journal.decoded(wire.decode_source_record, found.get(wanted[2]))
            if wanted
            else await ctx.journal.source(migration_id)
        )
        assert journal is not None
        record = journal.value
        if record.step is not SourceStep.FROZEN:
            return journal, None, None
        # The object and its quota charge in one read (one snapshot).
        keys = (
            object_key(record.tenant, record.object_id),
            held_key(record.tenant, record.object_id),
        )
        if keys != wanted[:2]:  # not read with the record: read them now
            found = await ctx.journal.store.get_many(keys)
        current = ctx.journal.decoded_object(keys[0], found.get(keys[0]))
        if current is None:
            raise ObjectStateError(f"{record.object_id} vanished from {ctx.host} during migration")
        return journal, current, ctx.journal.decoded(decode_counter, found.get(keys[1]))

    async def _activate(
        self, record: SourceRecord, *, etag: str | None = None, settle_later: bool = False
    ) -> SourceStep:
        """Send Commit until the destination confirms; then journal DONE; returns the
        step to report. ``etag``: the record's, when the caller wrote it (see
        :meth:`done`).

        ``settle_later``: DONE is journaled in the background (host.settled() waits for
        it) and DONE is reported once the receipt is verified. Durability is the same:
        the COMMITTED record was fsync'd before Commit was sent, and the receipt, signed
        by the destination about exactly this transfer, is the proof DONE keeps. If the
        write fails or the host dies first, the record stays COMMITTED and open, and
        recovery re-sends Commit and journals DONE on the same receipt."""
        client = self.peers.client(record.destination_host)
        try:
            receipt_raw = await client.commit(record.migration_id)
            envelope = wire.decode_envelope(receipt_raw, max_size=wire.MAX_RECEIPT_BYTES)
            if envelope.payload_type == dsse.PayloadType.UNKNOWN_MIGRATION:
                settled = await self._settle_forgotten(record, envelope, receipt_raw, etag=etag)
                return settled.step
            self._check_receipt(record, receipt_raw, ReceiptKind.ACTIVATED, envelope=envelope)
        except (PeerUnavailableError, VerificationError) as exc:
            # Committed is committed: the object is the destination's. Recovery re-sends
            # Commit, and the destination may also ask for the decision.
            log.warning(
                "migration %s committed; activation not confirmed yet: %s", record.migration_id, exc
            )
            return record.step
        crash_point("source.after-activation")
        if settle_later:
            self.ctx.settles.start(record.migration_id, self._settle(record, receipt_raw, etag))
            return SourceStep.DONE
        return (await self.done(record, receipt_raw, etag=etag)).step

    async def _settle(self, record: SourceRecord, receipt_raw: bytes, etag: str | None) -> None:
        """:meth:`done` in the background, after ``migrate`` answered."""
        crash_point("source.after-answer")
        await self.done(record, receipt_raw, etag=etag)

    async def _settle_forgotten(
        self,
        record: SourceRecord,
        envelope: dsse.Envelope,
        answer_raw: bytes,
        *,
        etag: str | None,
    ) -> SourceRecord:
        """The destination answered Commit with its signed "unknown migration": it pruned
        its settled record after its retention, while this host was away with the reply
        lost (gateway.handoff.pruning). Journal DONE on it, kept as evidence in place of
        the activation receipt, once this host can tell the answer is one an honest
        destination gives: signed by it (a verification error otherwise, and Commit is
        sent again), about exactly this migration, issued after the commit, and the
        commit at least :func:`~gateway.handoff.pruning.earliest_forgotten` old on this
        host's own clock. A STAGED record is never pruned, so an honest destination that
        answers so holds no copy that could still ask for this decision.

        What DONE changes here: Commit is no longer sent and the open marker goes; the
        record answers Decision COMMITTED as before, until it is pruned a retention
        later. The object is not touched: it is a MOVED tombstone since the commit and
        its data went with the destination's staged receipt. Answered too early, the
        record stays COMMITTED and :class:`MigrationNotFoundError` says why; recovery
        asks again with a growing pause (gateway.handoff.recovery)."""
        ctx = self.ctx
        peer = record.destination_host
        now = ctx.clock.now()
        payload = ctx.open_from(peer, envelope, dsse.PayloadType.UNKNOWN_MIGRATION, at=now)
        answer = UnknownMigrationAnswer.decode(payload)
        if (answer.migration_id, answer.source, answer.destination) != (
            record.migration_id,
            ctx.host,
            peer,
        ):
            raise BadSignatureError(
                f"the unknown-migration answer {peer} signed is about another migration, "
                "source or destination",
                hint="Commit is sent again; an answer is valid for its one migration only",
            )
        skew = ctx.timing.clock_skew
        committed_at = record.updated_at
        earliest = committed_at + earliest_forgotten(skew)
        if answer.issued_at < committed_at - skew or now < earliest:
            # Not settled: recovery logs this as a warning and asks again later.
            raise MigrationNotFoundError(
                f"{peer} signed at {format_time(answer.issued_at)} that it does not know "
                f"migration {record.migration_id}, committed here at "
                f"{format_time(committed_at)}: too early for its retention to have pruned "
                f"it (not before {format_time(earliest)}); not settled",
                hint=f"{record.object_id} belongs to {peer} (committed); check that {peer} "
                "runs on its own store. This host sends Commit again, less and less often",
            )
        # What this host knows, not what it guesses: an honest destination answers so
        # only once it pruned its settled record of the migration, which may have been
        # ACTIVATED (the usual case: the reply to Commit was lost) or ABORTED there (it
        # refused the object at Commit, e.g. for a fork its custody home reported).
        reason = (
            f"settled without an activation receipt: {peer} signed at "
            f"{format_time(answer.issued_at)} that it no longer knows the migration, "
            "which an honest destination says only after pruning its settled record of "
            "it; whether it activated the object there (the reply to Commit lost) or "
            f"aborted it is not known here: ask {peer}'s operator"
        )
        log.warning("migration %s of %s %s", record.migration_id, record.object_id, reason)
        return await self.done(record, answer_raw, etag=etag, reason=reason)

    async def done(
        self,
        record: SourceRecord,
        receipt_raw: bytes,
        *,
        etag: str | None = None,
        reason: str = "",
    ) -> SourceRecord:
        """Journal DONE with the destination's activation receipt (already checked), or
        with its signed unknown-migration answer and the ``reason`` it settled on that
        (see :meth:`_settle_forgotten`).

        ``etag``: the ETag under which the caller itself wrote ``record`` (its commit, a
        moment ago), when the store said it: the record is then not read again just to
        learn it. The write is conditional on it, so a record written by anyone since
        fails it, and the record is then read as without it."""
        ctx = self.ctx
        loaded: Versioned[SourceRecord] | None
        if etag is not None:
            loaded = Versioned(_settled(record), etag)
        else:
            loaded = await ctx.journal.source(record.migration_id)
        assert loaded is not None
        if loaded.value.step is SourceStep.DONE:
            return loaded.value
        if loaded.value.step is not SourceStep.COMMITTED:
            # A valid activation receipt for a migration this host never committed (or
            # aborted) means the destination activated without a COMMITTED decision.
            # DONE over it would make decide() sign COMMITTED for an aborted migration.
            raise HandoffError(
                f"migration {record.migration_id} is {loaded.value.step.value} here; an "
                "activation receipt can only settle a committed migration",
                hint="hand back the staged receipt first; an aborted migration stays aborted",
            )
        done = _done_record(loaded.value, SourceStep.DONE, receipt_raw, ctx.clock.now(), reason)
        try:
            await ctx.journal.store.transact(
                [
                    ctx.journal.put_source(done, loaded.etag),
                    Delete(key=open_source_key(record.migration_id), etag=Expect.ANY),
                ]
            )
        except ConcurrencyError:
            again = await ctx.journal.source(record.migration_id)
            assert again is not None
            return again.value
        observability.migration_settled(
            "source",
            "unconfirmed" if reason else "done",
            tenant=done.tenant,
            started=done.created_at,
            at=done.updated_at,
        )
        return done

    def _check_receipt(
        self,
        record: SourceRecord,
        raw: bytes,
        kind: ReceiptKind,
        *,
        envelope: dsse.Envelope | None = None,
    ) -> dsse.Envelope:
        """A receipt must be signed by the destination and about exactly this transfer;
        returns its envelope (decoded once, for whoever stores it next). ``envelope``:
        ``raw`` decoded already by the caller."""
        now = self.ctx.clock.now()
        if envelope is None:
            envelope = wire.decode_envelope(raw, max_size=wire.MAX_RECEIPT_BYTES)
        payload = self.ctx.open_from(record.destination_host, envelope, kind.payload_type, at=now)
        receipt = wire.decode_receipt(payload, kind)
        if (
            receipt.migration_id != record.migration_id
            or receipt.object_id != record.object_id
            or receipt.host != record.destination_host
            or receipt.source_host != self.ctx.host
            or receipt.transfer_digest != _transfer_digest(record)
        ):
            raise BadSignatureError(
                f"{kind.name.lower()} receipt for migration {record.migration_id} is signed "
                "but describes another transfer",
                hint="the destination answered about something else; the migration aborts",
            )
        return envelope

    async def abort(self, migration_id: str, *, reason: str, tell: bool = True) -> SourceRecord:
        """Abort before commit: journal ABORTED and resume the object, then tell the
        destination (best effort; it asks for the decision if it missed this).
        ``reason`` is cut to :data:`~gateway.limits.MAX_REASON_CHARS`, what a destination
        accepts: one that quotes a long refusal would have the Abort refused, untold."""
        ctx = self.ctx
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[: MAX_REASON_CHARS - 1] + "…"
        for _attempt in range(3):
            journal = await ctx.journal.source(migration_id)
            if journal is None:
                raise MigrationNotFoundError(f"no migration {migration_id} on {ctx.host}")
            record = journal.value
            if record.step is SourceStep.ABORTED:
                return record
            if record.step is not SourceStep.FROZEN:
                raise ObjectStateError(
                    f"migration {migration_id} is already {record.step.value}; it can no longer abort"
                )
            current = await ctx.journal.object(record.tenant, record.object_id)
            if current is None:
                raise ObjectStateError(
                    f"{record.object_id} vanished from {ctx.host} during migration"
                )
            now = ctx.clock.now()
            resumed = current.value.thaw(migration_id, host=ctx.host, at=now, reason=reason)
            aborted = replace(record, step=SourceStep.ABORTED, reason=reason, updated_at=now)
            try:
                await ctx.journal.store.transact(
                    [
                        ctx.journal.put_object(record.tenant, resumed, current.etag),
                        ctx.journal.put_source(aborted, journal.etag),
                        Delete(key=open_source_key(migration_id), etag=Expect.ANY),
                    ]
                )
            except ConcurrencyError:
                continue
            log.info("aborted migration %s of %s: %s", migration_id, record.object_id, reason)
            observability.migration_settled(
                "source", "aborted", tenant=record.tenant, started=record.created_at, at=now
            )
            crash_point("source.after-abort-journal")
            ctx.on_active(resumed)  # it cycles here again
            if not tell:
                return aborted  # offline: the operator carries the signed answer
            try:
                await self.peers.client(record.destination_host).abort(migration_id, reason)
            except GatewayError as exc:
                log.info("destination not told of abort %s (it will ask): %s", migration_id, exc)
            return aborted
        raise ObjectStateError(f"migration {migration_id} keeps changing under abort; retry")

    async def decide(self, migration_id: str, *, peer: str) -> bytes:
        """Answer a destination's Decision, signed. Anything not committed is aborted first."""
        outcome = await self._decide(migration_id, peer=peer)
        decision = DecisionAnswer(
            migration_id=migration_id,
            outcome=outcome,
            source=self.ctx.host,
            destination=peer,
            issued_at=self.ctx.clock.now(),
        )
        return wire.encode_envelope(self.ctx.seal(decision.encode(), dsse.PayloadType.DECISION))

    async def _decide(self, migration_id: str, *, peer: str) -> Outcome:
        ctx = self.ctx
        journal = await ctx.journal.source(migration_id)
        if journal is None:
            # Presumed abort, without writing anything: a peer could otherwise fill the
            # store by asking about random ids. Answering ABORTED for an id with no record
            # can never contradict a later commit, because this host chooses migration
            # ids itself (random, 128 bits) and journals FROZEN in the same transaction
            # that freezes the object, *before* any transfer carrying the id exists: no
            # honest destination can ask about an id before its FROZEN record is here,
            # and nobody can guess an id this host will use.
            log.info("decision asked by %s for unknown migration %s: aborted", peer, migration_id)
            return Outcome.ABORTED
        record = journal.value
        if record.destination_host != peer:
            raise PeerMismatchError(f"migration {migration_id} is not addressed to {peer}")
        if record.step is SourceStep.FROZEN:
            try:
                record = await self.abort(
                    migration_id, reason="the destination asked before the source committed"
                )
            except ObjectStateError as exc:
                # The coordinator committed between our read and our abort: follow it.
                again = await ctx.journal.source(migration_id)
                assert again is not None
                record = again.value
                if record.step is SourceStep.FROZEN:
                    # The abort was not journaled (it kept losing its write): the
                    # coordinator may still commit, so ABORTED would be a promise this
                    # host cannot keep. No answer now; the destination asks again.
                    raise HandoffError(
                        f"migration {migration_id} could not be decided now: {exc.reason}",
                        hint="ask again; the migration is still open here",
                    ) from exc
        if record.step in (SourceStep.COMMITTED, SourceStep.DONE):
            return Outcome.COMMITTED
        return Outcome.ABORTED


def open_decision(context: HostContext, raw: bytes, *, source: str, migration_id: str) -> Outcome:
    """The outcome a source signed for ``migration_id``, addressed to this host; raises
    a verification error if the answer is not exactly that (an unsigned or misdirected
    answer could make a destination activate a copy its source aborted)."""
    payload = context.open_from(
        source,
        wire.decode_envelope(raw, max_size=wire.MAX_RECEIPT_BYTES),
        dsse.PayloadType.DECISION,
        at=context.clock.now(),
    )
    decision = DecisionAnswer.decode(payload)
    if (decision.migration_id, decision.source, decision.destination) != (
        migration_id,
        source,
        context.host,
    ):
        raise BadSignatureError(
            f"the decision signed by {source} is about another migration or destination",
            hint="ask again; a decision is only valid for its one migration and destination",
        )
    return decision.outcome
