"""The handoff over files: for partners with no network path between them.

The same protocol as over gRPC, with files as the messages and an operator as the
network. Every step is the protocol's own idempotent, journaled step, so re-running a
step (after a crash, or with the same file twice) gives the same answer:

====================================  =========================================  ============
sender                                file                                       receiver
====================================  =========================================  ============
``gateway export ID --to B -o T``     T: the signed transfer (+ data chunks)     →
(freeze, journal FROZEN)
                                   ←  R: B's signed staged receipt               ``gateway import T -o R``
                                                                                 (verify, admit, stage)
``gateway export --complete R -o C``  C: A's signed COMMITTED decision           →
(journal COMMITTED, tombstone)
                                   ←  D: B's signed activation receipt           ``gateway import C -o D``
``gateway export --complete D``                                                  (activate)
(journal DONE)
====================================  =========================================  ============

Abort: until it has journaled COMMITTED the sender may ``gateway export --abort MIG -o X``
(journal ABORTED, the object is live again) and give X — its signed ABORTED decision —
to the receiver (``gateway import X`` discards the staged copy). A FROZEN transfer that
expired is aborted by ``gateway serve``'s recovery; an expired transfer file is refused
on import. A staged copy never expires on its own: it waits for C or X (the sender may
already have committed, and then it is the only copy).

What the network gave and files do not, and how it is replaced: the authenticated peer
is the host whose key signed the file (its payload names it; the signature must verify
under that host's keys); every file is signed, addressed to one host and one migration.
The longest lifetime an offline transfer may claim is :data:`MAX_OFFLINE_LIFETIME`.

A transfer file is framed so that large objects stream through bounded memory:
``MAGIC`` then frames of (4-byte big-endian length, bytes): the transfer envelope, then
the data chunks, then an empty frame. Receipts and decisions are DSSE JSON files.
"""

from __future__ import annotations

import os
import struct
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO

from gateway import envelope as dsse
from gateway import wire
from gateway._crash import crash_point
from gateway.blobs import CHUNK_BYTES, read_blob
from gateway.errors import (
    EnvelopeError,
    HandoffError,
    MigrationNotFoundError,
    unreadable,
)
from gateway.handoff.destination import Destination
from gateway.handoff.messages import DecisionAnswer, Outcome, ReceiptKind
from gateway.handoff.records import SourceRecord, SourceStep
from gateway.handoff.source import Source, _transfer_digest, open_decision
from gateway.keys import Purpose
from gateway.limits import MAX_OFFLINE_LIFETIME
from gateway.versions import check_transfer_file_header

MAGIC = b"gateway-transfer-file/v1\n"
DEFAULT_OFFLINE_TTL = timedelta(days=2)
#: A data frame holds one chunk; anything longer is refused before it is read.
MAX_CHUNK_FRAME = CHUNK_BYTES
_LENGTH = struct.Struct(">I")


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """What one offline step did, for the operator."""

    migration_id: str
    object_id: str
    what: str  #: one line: what happened and what to do next
    wrote: bytes = b""  #: the file to hand over, if any


# --- the transfer file -------------------------------------------------------------------


def _frame(out: BinaryIO, data: bytes) -> None:
    out.write(_LENGTH.pack(len(data)))
    out.write(data)


def _read_exact(src: BinaryIO, size: int, what: str) -> bytes:
    data = src.read(size)
    if len(data) != size:
        raise EnvelopeError(f"transfer file ends inside {what}", hint="the file is truncated")
    return data


def _frames(src: BinaryIO, *, first_limit: int) -> Iterator[bytes]:
    """The frames of an open transfer file, each length checked before it is read."""
    header = _read_exact(src, len(MAGIC), "its header")
    if header != MAGIC:
        check_transfer_file_header(header, MAGIC)  # another version: say which
        raise EnvelopeError(
            "not a gateway transfer file", hint="import the file `gateway export` wrote"
        )
    limit = first_limit
    while True:
        (size,) = _LENGTH.unpack(_read_exact(src, _LENGTH.size, "a frame length"))
        if size == 0:
            if src.read(1):
                raise EnvelopeError("transfer file has bytes after its end")
            return
        if size > limit:
            raise EnvelopeError(f"transfer file frame of {size} bytes; at most {limit}")
        yield _read_exact(src, size, "a frame")
        limit = MAX_CHUNK_FRAME


def transfer_envelope(path: Path) -> bytes:
    """The signed transfer at the head of a transfer file (its data frames are not read),
    for ``gateway verify``."""
    try:
        with open(path, "rb") as src:
            raw = next(_frames(src, first_limit=wire.MAX_ENVELOPE_BYTES), None)
    except OSError as exc:
        raise unreadable(path, exc) from exc
    if raw is None:
        raise EnvelopeError("transfer file holds no transfer")
    return raw


async def write_transfer_file(source: Source, migration_id: str, path: Path) -> Step:
    """Write the journaled transfer of a FROZEN migration (and its data) to ``path``;
    atomically (a temporary file renamed), so a crash leaves no half file."""
    record = await _source_record(source, migration_id)
    if record.step is not SourceStep.FROZEN:
        raise HandoffError(
            f"migration {migration_id} is {record.step.value}; only a frozen one has a "
            "transfer to hand over"
        )
    store = source.ctx.journal.store
    current = await source.ctx.journal.object(record.tenant, record.object_id)
    blob = current.value.blob if current is not None else None
    partial = path.with_name(path.name + ".partial")
    # Blocking file I/O is fine here: these steps run once, from the CLI, not in a server.
    with open(partial, "wb") as out:  # noqa: ASYNC230
        out.write(MAGIC)
        _frame(out, record.transfer)
        if blob is not None:
            async for chunk in read_blob(store, blob):
                _frame(out, chunk)
        _frame(out, b"")
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, path)
    return Step(
        migration_id=migration_id,
        object_id=record.object_id,
        what=f"wrote {path}: {record.object_id} frozen for {record.destination_host} "
        f"(migration {migration_id}); give it to that host's operator for `gateway import`",
    )


async def export(
    source: Source,
    object_id: str,
    *,
    tenant: str,
    destination: str,
    path: Path,
    ttl: timedelta = DEFAULT_OFFLINE_TTL,
) -> Step:
    """Freeze ``object_id`` for ``destination`` and write the transfer file."""
    if not timedelta(seconds=1) <= ttl <= MAX_OFFLINE_LIFETIME:
        raise HandoffError(
            f"an offline transfer lives between 1 s and {MAX_OFFLINE_LIFETIME.days} days",
            hint="choose --ttl-hours within that",
        )
    # The destination must be a host this one trusts (its receipts are checked with its
    # keys); it need not be a configured network peer.
    source.ctx.trust.keys_for_host(destination, purpose=Purpose.ENVELOPE, at=None)
    migration_id = await source.freeze(object_id, tenant=tenant, destination=destination, ttl=ttl)
    # Frozen and journaled, no file yet: `gateway export --resume` writes it again.
    crash_point("source.after-freeze")
    return await write_transfer_file(source, migration_id, path)


async def import_transfer(destination: Destination, path: Path) -> Step:
    """Verify, admit and stage the transfer in ``path``; the step carries the signed
    staged receipt to hand back. The same file again gets the same receipt."""
    try:
        return await _import_transfer(destination, path)
    except OSError as exc:  # gone, a directory, unreadable, or failing mid-read
        raise HandoffError(
            f"cannot read {path}: {exc.strerror or exc}",
            hint="import the transfer file `gateway export` wrote, from a readable place",
        ) from exc


async def _import_transfer(destination: Destination, path: Path) -> Step:
    with open(path, "rb") as src:  # noqa: ASYNC230 - a one-shot CLI step, not a server
        frames = _frames(src, first_limit=wire.MAX_ENVELOPE_BYTES)
        raw = next(frames, None)
        if raw is None:
            raise EnvelopeError("transfer file holds no transfer")
        envelope = wire.decode_envelope(raw)
        if envelope.payload_type != dsse.PayloadType.TRANSFER:
            raise EnvelopeError(f"transfer file holds a {envelope.payload_type}, not a transfer")
        # The payload names its source; that only picks whose keys must have signed it:
        # the destination verifies the signature under that host's keys before anything.
        # Parsed only: the lineage is decoded once, by the destination, after the
        # signature and the tenant checks.
        transfer = wire.ParsedTransfer(envelope.payload)
        lifetime = int(MAX_OFFLINE_LIFETIME.total_seconds())
        if not transfer.streamed:
            if next(frames, None) is not None:
                raise EnvelopeError("transfer file carries data for an object with inline data")
            receipt = await destination.prepare(
                raw, peer=transfer.source_host, max_lifetime=lifetime
            )
        else:

            async def data() -> AsyncIterator[bytes]:
                for chunk in frames:
                    yield chunk

            receipt = await destination.prepare_stream(
                raw, data(), peer=transfer.source_host, max_lifetime=lifetime
            )
    return Step(
        migration_id=transfer.migration_id,
        object_id=transfer.object_id,
        what=f"staged {transfer.object_id} from {transfer.source_host} (not live); hand the "
        f"receipt back to its operator for `gateway export --complete`",
        wrote=dsse.to_json(wire.decode_envelope(receipt)),
    )


# --- receipts and decisions ----------------------------------------------------------------


def read_signed(path: Path) -> dsse.Envelope:
    return dsse.from_json(_read(path), max_size=wire.MAX_ENVELOPE_BYTES)


def _read(path: Path) -> bytes:
    try:
        with open(path, "rb") as src:
            data = src.read(wire.MAX_ENVELOPE_BYTES + 1)
    except OSError as exc:
        raise unreadable(path, exc) from exc
    if len(data) > wire.MAX_ENVELOPE_BYTES:
        raise EnvelopeError(f"{path} is larger than {wire.MAX_ENVELOPE_BYTES} bytes")
    return data


async def _source_record(source: Source, migration_id: str) -> SourceRecord:
    loaded = await source.ctx.journal.source(migration_id)
    if loaded is None:
        raise MigrationNotFoundError(
            f"no migration {migration_id} was exported from {source.ctx.host}"
        )
    return loaded.value


async def complete(source: Source, envelope: dsse.Envelope) -> Step:
    """The sender's side of a receipt: a staged receipt commits (and yields the signed
    COMMITTED decision to hand over); an activation receipt finishes (DONE)."""
    if envelope.payload_type == ReceiptKind.STAGED.payload_type:
        kind = ReceiptKind.STAGED
    elif envelope.payload_type == ReceiptKind.ACTIVATED.payload_type:
        kind = ReceiptKind.ACTIVATED
    else:
        raise EnvelopeError(f"{envelope.payload_type} is not a receipt")
    # Parsed only to find the migration; _check_receipt verifies it against the journal.
    claimed = wire.decode_receipt(envelope.payload, kind)
    record = await _source_record(source, claimed.migration_id)
    raw = wire.encode_envelope(envelope)
    source._check_receipt(record, raw, kind)
    if kind is ReceiptKind.STAGED:
        if record.step is SourceStep.ABORTED:
            raise HandoffError(
                f"migration {record.migration_id} was aborted here; it cannot commit",
                hint="hand the receiver the abort file (`gateway export --abort`)",
            )
        record, _etag = await source._commit(
            record.migration_id, raw, transfer_digest=_transfer_digest(record)
        )
        if record.step is SourceStep.ABORTED:
            # Aborted meanwhile (recovery, past the transfer's expiry): the commit lost.
            raise HandoffError(
                f"migration {record.migration_id} was aborted here before it could commit",
                hint="hand the receiver the abort file (`gateway export --abort`)",
            )
        decision = await source.decide(record.migration_id, peer=record.destination_host)
        return Step(
            migration_id=record.migration_id,
            object_id=record.object_id,
            what=f"committed: {record.object_id} now belongs to {record.destination_host}; "
            "hand it the commit file for `gateway import`",
            wrote=dsse.to_json(wire.decode_envelope(decision)),
        )
    done = await source.done(record, raw)
    return Step(
        migration_id=done.migration_id,
        object_id=done.object_id,
        what=f"done: {done.destination_host} confirmed {done.object_id} is live there",
    )


async def abort(source: Source, migration_id: str, *, reason: str) -> Step:
    """Abort a frozen offline migration: the object is live here again; the step carries
    the signed ABORTED decision for the receiver."""
    record = await source.abort(migration_id, reason=reason, tell=False)
    decision = await source.decide(migration_id, peer=record.destination_host)
    return Step(
        migration_id=migration_id,
        object_id=record.object_id,
        what=f"aborted: {record.object_id} is live here again; hand the abort file to "
        f"{record.destination_host} so it discards its staged copy",
        wrote=dsse.to_json(wire.decode_envelope(decision)),
    )


async def import_decision(destination: Destination, envelope: dsse.Envelope) -> Step:
    """The receiver's side of a decision file: COMMITTED activates (the step carries the
    activation receipt to hand back), ABORTED discards the staged copy."""
    if envelope.payload_type != dsse.PayloadType.DECISION:
        raise EnvelopeError(
            f"{envelope.payload_type} is not a decision",
            hint="import the commit or abort file `gateway export --complete` or "
            "`--abort` wrote (a trust bundle goes to `gateway trust import`)",
        )
    claimed = DecisionAnswer.decode(envelope.payload)
    raw = wire.encode_envelope(envelope)
    # Verified against the source's keys, this migration and this host, before use.
    outcome = open_decision(
        destination.ctx, raw, source=claimed.source, migration_id=claimed.migration_id
    )
    if outcome is Outcome.COMMITTED:
        receipt = await destination.commit(claimed.migration_id, peer=claimed.source, decision=raw)
        return Step(
            migration_id=claimed.migration_id,
            object_id="",
            what=f"live here; hand the activation receipt to {claimed.source} "
            "(`gateway export --complete`)",
            wrote=dsse.to_json(wire.decode_envelope(receipt)),
        )
    await destination.abort(
        claimed.migration_id, peer=claimed.source, reason="aborted by its source"
    )
    return Step(migration_id=claimed.migration_id, object_id="", what="staged copy discarded")


__all__ = [
    "DEFAULT_OFFLINE_TTL",
    "MAX_OFFLINE_LIFETIME",
    "Step",
    "abort",
    "complete",
    "export",
    "import_decision",
    "import_transfer",
    "read_signed",
    "transfer_envelope",
    "write_transfer_file",
]
