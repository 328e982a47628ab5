"""Serialization between domain values and their protobuf wire form.

The only module outside ``transport/`` that touches generated ``*_pb2`` types.

Rules kept here:

* **Received messages have one byte form.** Envelopes and signed payloads are accepted
  only if re-encoding the parsed message gives back exactly the received bytes. That
  refuses unknown fields, duplicated fields and non-minimal encodings, so what was
  verified is exactly what is used, and a new field forces a new payload type.
* **Size limits come first**, before any parsing.
* Every protobuf decode failure becomes an :class:`~gateway.errors.EnvelopeError`
  subclass naming what could not be read; so does every value the standard library
  would choke on later (a ``Timestamp`` outside the years 0001-9999, an interval beyond
  ``timedelta``): nothing but a :class:`~gateway.errors.GatewayError` leaves a decoder.
* **Peer times are plausible and exact**: transfer and receipt times lie between 1970
  and 9000 (so skew and lifetime arithmetic on them cannot overflow), in whole
  milliseconds, and are present when the encoder always writes them; a decoded value
  re-encodes to the signed bytes.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import json
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, TypeVar, cast

from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp

from gateway import _wire_counts, limits
from gateway import envelope as dsse
from gateway._decode import load_json
from gateway._lru import BoundedLru, IdentityLru
from gateway._slots import builder
from gateway._wire_counts import read_varint
from gateway.authority import CapabilitySet, EffectiveAuthority
from gateway.blobs import MAX_BLOB_BYTES, BlobRef
from gateway.credentials import MAX_CHAIN
from gateway.errors import (
    AuthorityError,
    EnvelopeError,
    EnvelopeTooLargeError,
    LimitExceededError,
    LineageError,
    PayloadDecodeError,
)
from gateway.handoff.messages import (
    NONCE_BYTES,
    Decision,
    Evaluation,
    Receipt,
    ReceiptKind,
    Transfer,
)
from gateway.handoff.records import (
    DestinationRecord,
    DestinationStep,
    SourceRecord,
    SourceStep,
)
from gateway.limits import MAX_ANSWERS, MAX_SUBSCRIPTIONS
from gateway.lineage import (
    LEAF_HASH_BYTES,
    MAX_ENTRY_BYTES,
    Entries,
    Lineage,
    LineageEntry,
    _Log,
    _raw_of,
    digest,
    stored_entries,
    stored_lineage,
)
from gateway.model import (
    MAX_CYCLE_INTERVAL,
    NO_AUTHORITY,
    TRIGGERS,
    Action,
    Answer,
    Binding,
    CycleState,
    GovernedObject,
    Invoke,
    LifecycleState,
    Publish,
    Rule,
    WriteState,
)
from gateway.rules import MAX_RULES
from gateway.v1 import envelope_pb2, gateway_pb2, journal_pb2, object_pb2

MAX_ENVELOPE_BYTES = 16 << 20
#: The largest signed answer a peer may send: a receipt (staged, activated, unknown
#: migration) or a decision. Each holds a few ids of at most 2 KiB and a signature or
#: two; refused before its signatures are checked (a 16 MiB "receipt" would be hashed
#: whole by each verify).
MAX_RECEIPT_BYTES = 64 << 10

M = TypeVar("M", bound=Message)
T = TypeVar("T")


def _parse(message: M, raw: bytes, what: str, *, canonical: bool) -> M:
    try:
        message.ParseFromString(raw)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise PayloadDecodeError(f"{what} does not decode: {exc}") from exc
    # Unknown fields survive a parse and are written back at the end, so they would pass
    # the comparison below; dropping them first makes any unknown field a mismatch.
    message.DiscardUnknownFields()
    if canonical and message.SerializeToString(deterministic=True) != raw:
        raise PayloadDecodeError(
            f"{what} is not in canonical encoding (unknown, repeated or oddly encoded fields)",
            hint="the sender runs an incompatible gateway version",
        )
    return message


def _require_present(message: Message, fields: tuple[str, ...], what: str) -> None:
    missing = [name for name in fields if not message.HasField(name)]
    if missing:
        raise PayloadDecodeError(f"{what} has no {', '.join(missing)}")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ts(moment: datetime) -> Timestamp:
    if moment.tzinfo is None:  # read as local time, as astimezone does
        stamp = Timestamp()
        stamp.FromDatetime(moment.astimezone(UTC))
        return stamp
    # What FromDatetime computes (timegm + microseconds), without its time tuple: every
    # cycle writes two or three of these.
    delta = moment - _EPOCH
    return Timestamp(seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1000)


#: What a ``Timestamp`` may hold (RFC 3339 years 0001-9999); beyond it ``ToDatetime`` raises.
_MIN_SECONDS = -62_135_596_800
_MAX_SECONDS = 253_402_300_799
#: Times a peer sends (transfer times, receipt times, a cycle's next due time) lie in
#: this window: every host's clock is past 1970, and a time before year 9000 leaves room
#: for the skew, lifetime and interval arithmetic done on it, which would otherwise
#: overflow ``datetime`` near year 9999 and crash the handler instead of refusing.
_PEER_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_PEER_LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def _dt(stamp: Timestamp, what: str = "a time") -> datetime:
    if not _MIN_SECONDS <= stamp.seconds <= _MAX_SECONDS or not 0 <= stamp.nanos < 1_000_000_000:
        raise PayloadDecodeError(
            f"{what} ({stamp.seconds}s, {stamp.nanos}ns) is not a time in the years 0001-9999"
        )
    # What ToDatetime(tzinfo=UTC) and truncate give (the same value and zone object),
    # without protobuf's Python-level conversion: every record, receipt and stored object
    # read carries two or three of these.
    # timedelta(days, seconds, microseconds, milliseconds) by position: the keywords
    # were parsed on every call.
    return _EPOCH + timedelta(0, stamp.seconds, 0, stamp.nanos // 1_000_000)


def _peer_dt(stamp: Timestamp, what: str, *, exact: bool = True) -> datetime:
    """A time a peer signed; ``exact``: in whole milliseconds, the only precision the
    gateway writes, so that a decoded value re-encodes to the bytes that were signed
    (stored records are read leniently: they may predate this rule)."""
    moment = _dt(stamp, what)
    if not _PEER_EARLIEST <= moment < _PEER_LATEST:
        raise PayloadDecodeError(
            f"{what} {moment.isoformat()} is outside {_PEER_EARLIEST.year}-{_PEER_LATEST.year}",
            hint="check the sending host's clock",
        )
    if exact and stamp.nanos % 1_000_000:
        raise PayloadDecodeError(
            f"{what} has sub-millisecond precision ({stamp.nanos}ns); not in canonical form",
            hint="the sender runs an incompatible gateway version",
        )
    return moment


# --- envelopes ----------------------------------------------------------------------


def encode_envelope(envelope: dsse.Envelope) -> bytes:
    message = envelope_pb2.Envelope(
        payload=envelope.payload,
        payload_type=envelope.payload_type,
        signatures=[envelope_pb2.Signature(sig=s.sig, keyid=s.keyid) for s in envelope.signatures],
    )
    return message.SerializeToString(deterministic=True)


def decode_envelope(raw: bytes, *, max_size: int = MAX_ENVELOPE_BYTES) -> dsse.Envelope:
    """Parse a serialized envelope: size first, then strict decoding. Signatures are not
    checked here (see :func:`gateway.envelope.open_envelope`)."""
    if len(raw) > max_size:
        raise EnvelopeTooLargeError(f"envelope is {len(raw)} bytes; at most {max_size} accepted")
    try:
        # Counted before the parse: 16 MiB of empty signatures made protobuf build eight
        # million messages, and this function as many Python objects (27 s, ~1 GB).
        _wire_counts.check_counts(raw, _ENVELOPE_SHAPE, "envelope")
        message = _parse(envelope_pb2.Envelope(), raw, "envelope", canonical=True)
    except PayloadDecodeError as exc:
        raise EnvelopeError(exc.reason, hint=exc.hint) from exc
    if len(message.signatures) > dsse.MAX_SIGNATURES:  # before one object is made per each
        raise EnvelopeTooLargeError(
            f"envelope has {len(message.signatures)} signatures; at most {dsse.MAX_SIGNATURES}"
        )
    # Every check Envelope(...) makes, made by received() on the same values.
    # A slice, not the container itself: iterating a repeated field ends in an
    # IndexError raised and formatted in C (about 1,900 instructions).
    return dsse.received(message.payload, message.payload_type, message.signatures[:])


# --- objects ------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _rules_to_pb(rules: tuple[Rule, ...]) -> tuple[object_pb2.Rule, ...]:
    """Memoised (rules are immutable and hashable, and a host holds few distinct rule
    sets): every cycle writes its object's rules again. The messages are only ever
    copied into a new message, never changed."""
    return tuple(_rule_to_pb(r) for r in rules)


def _rule_to_pb(rule: Rule) -> object_pb2.Rule:
    # "cycle" travels as "" so that an object without message rules encodes as before.
    message = object_pb2.Rule(
        name=rule.name, when=rule.when, trigger="" if rule.on == "cycle" else rule.on
    )
    action = rule.action
    if isinstance(action, WriteState):
        message.write.patch = action.patch
    elif isinstance(action, Publish):
        message.publish.topic = action.topic
        message.publish.payload = action.payload
    elif isinstance(action, Binding):
        message.binding.target = action.target
        message.binding.payload = action.payload
    else:
        message.invoke.target = action.target
        message.invoke.payload = action.payload
    return message


def _rule_from_pb(message: object_pb2.Rule) -> Rule:
    kind = message.WhichOneof("action")
    action: Action
    if kind == "write":
        action = WriteState(patch=message.write.patch)
    elif kind == "publish":
        action = Publish(topic=message.publish.topic, payload=message.publish.payload)
    elif kind == "invoke":
        action = Invoke(target=message.invoke.target, payload=message.invoke.payload)
    elif kind == "binding":
        action = Binding(target=message.binding.target, payload=message.binding.payload)
    else:
        raise PayloadDecodeError(f"rule {message.name!r} has no action")
    trigger = message.trigger or "cycle"
    if trigger not in TRIGGERS:
        raise PayloadDecodeError(
            f"rule {message.name!r:.80} is woken by {trigger!r:.40}, which this gateway does not know",
            hint=f"rules are woken by one of: {', '.join(TRIGGERS)}",
        )
    return Rule(name=message.name, when=message.when, action=action, on=trigger)


#: Decoded rule sets remembered by their rules' encodings (at most this many bytes of
#: them, counted twice: the key and the decoded values are about as large). A host holds
#: few distinct rule sets, and every stored object or transfer decoded builds its rules
#: again (about 6 us a rule, a fifth of a small object's decode).
RULES_MEMO_BYTES = 1 << 20
_RULES: BoundedLru[bytes | tuple[bytes, ...], tuple[int, tuple[Rule, ...]]] = BoundedLru(
    1024, max_weight=RULES_MEMO_BYTES, weigh=lambda held: held[0]
)


def _rules_from_pb(
    snapshot: object_pb2.ObjectSnapshot, wire: bytes | None = None
) -> tuple[Rule, ...]:
    """The rules of ``snapshot`` (counted by the caller first), remembered by their
    deterministic encodings: a rule is decoded from its fields alone, those bytes say
    every field (unknown ones were discarded at the parse), and rules are immutable, so
    a hit is what decoding again would give. A refused rule raises, and is not kept.

    ``wire``: the snapshot's field 6 (its rules) as cut from the record serialized again
    (:func:`_cut`), which says every rule as well: the key then costs no serialization
    of each rule (a stored record read back). Otherwise the key is each rule's own
    encoding (a transfer)."""
    key: bytes | tuple[bytes, ...]
    if wire is not None:
        if not wire:
            return ()
        key = wire
        weight = 2 * len(wire)
    else:
        messages = snapshot.rules[:]
        if not messages:
            return ()
        key = tuple(message.SerializeToString(deterministic=True) for message in messages)
        weight = 2 * sum(map(len, key))
    held = _RULES.get(key)
    if held is not None:
        return held[1]
    rules = tuple(map(_rule_from_pb, snapshot.rules[:]))
    _RULES.put(key, (weight, rules))
    return rules


def _answer_to_pb(answer: Answer) -> object_pb2.Answer:
    return object_pb2.Answer(
        method=answer.method, when=answer.when, reply=answer.reply, write=answer.write
    )


def _answer_from_pb(message: object_pb2.Answer) -> Answer:
    return Answer(
        method=message.method, when=message.when or "true", reply=message.reply, write=message.write
    )


def _cycle_to_pb(cycle: CycleState) -> object_pb2.CycleState:
    message = object_pb2.CycleState(generation=cycle.generation)
    if cycle.interval is not None:
        message.interval_ms = cycle.interval // timedelta(milliseconds=1)
    if cycle.next_due is not None:
        message.next_due.CopyFrom(_ts(cycle.next_due))
    return message


def _cycle_from_pb(message: object_pb2.CycleState, *, exact: bool) -> CycleState:
    global _LAST_DUE
    generation = message.generation
    interval = _interval_from_ms(message.interval_ms)
    next_due = None
    if message.HasField("next_due"):
        stamp = message.next_due
        read = (stamp.seconds, stamp.nanos, exact)
        last = _LAST_DUE  # one read: the slot is replaced whole, never changed
        if last[0] == read:
            next_due = last[1]
        else:
            next_due = _peer_dt(stamp, "next evaluation time", exact=exact)
            _LAST_DUE = (read, next_due)
    # CycleState(...) by position (gateway/_slots.py): every object decoded builds one.
    return _cycle_state(generation, interval, next_due)


#: The last next due time read (its stamp's seconds and nanoseconds, and ``exact``) and
#: the time it gave: the objects one batch of cycles wrote share one next due time (the
#: batch's ``now`` plus their interval), and are read back together. Only a time that
#: passed _peer_dt's checks is held, and a stamp equal in all three gives that same
#: time (datetimes are immutable), so a hit is what reading it again would give.
_LAST_DUE: tuple[tuple[int, int, bool] | None, datetime | None] = (None, None)


_cycle_state = builder(CycleState, "generation", "interval", "next_due")


#: The longest evaluation interval read, in the stored unit.
_MAX_INTERVAL_MS = MAX_CYCLE_INTERVAL // timedelta(milliseconds=1)


def _interval_from_ms(interval_ms: int) -> timedelta | None:
    """A stored evaluation interval (0: the object does not cycle), bounded. Read for
    every record by :func:`decode_head`: the bound is a constant and the product is a
    third of ``timedelta(milliseconds=...)``'s cost, the same value."""
    if not interval_ms:
        return None
    if interval_ms > _MAX_INTERVAL_MS:
        raise PayloadDecodeError(
            f"evaluation interval of {interval_ms} ms is longer than {MAX_CYCLE_INTERVAL.days} days"
        )
    return _MILLISECOND * interval_ms


_MAX_TIMEDELTA_MS = timedelta.max // timedelta(milliseconds=1)


def _snapshot_to_pb(obj: GovernedObject) -> object_pb2.ObjectSnapshot:
    return object_pb2.ObjectSnapshot(
        object_id=obj.object_id,
        tenant=obj.tenant,
        data=obj.data,
        content_type=obj.content_type,
        data_digest=obj.data_digest(),
        rules=_rules_to_pb(tuple(obj.rules)),
        cycle=_cycle_to_pb(obj.cycle),
        data_size=obj.size,
        data_streamed=obj.blob is not None,
        subscriptions=list(obj.subscriptions),
        answers=[_answer_to_pb(a) for a in obj.answers],
    )


def _lineage_to_pb(lineage: Lineage) -> object_pb2.Lineage:
    return object_pb2.Lineage(
        entries=[e.encode() for e in lineage.entries],
        checkpoints=[encode_envelope(c) for c in lineage.checkpoints],
        arrivals=[encode_envelope(a) for a in lineage.arrivals],
        base=encode_envelope(lineage.base) if lineage.base is not None else b"",
    )


def encode_lineage(lineage: Lineage) -> bytes:
    """A lineage on its own (entries, checkpoints, arrivals), e.g. kept as evidence."""
    return bytes(_lineage_to_pb(lineage).SerializeToString())


def decode_lineage(raw: bytes, *, max_size: int = MAX_ENVELOPE_BYTES) -> Lineage:
    """A lineage on its own, as :func:`encode_lineage` wrote it (an archive for auditors,
    fork evidence): size first, one byte form, the counters and times a transfer's lineage
    may hold. Nothing is verified here (see :func:`gateway.lineage.verify_lineage`)."""
    if len(raw) > max_size:
        raise EnvelopeTooLargeError(f"lineage is {len(raw)} bytes; at most {max_size} accepted")
    _wire_counts.check_counts(raw, _LINEAGE_SHAPE, "lineage")
    lineage = _lineage_from_pb(_parse(object_pb2.Lineage(), raw, "lineage", canonical=True))
    for entry in lineage.entries:
        if entry.epoch > limits.MAX_COUNTER or entry.generation > limits.MAX_COUNTER:
            raise LimitExceededError(
                f"lineage entry {entry.seq} has a counter above {limits.MAX_COUNTER}"
            )
        limits.check_time(entry.time, what=f"time of lineage entry {entry.seq}")
    return lineage


def _lineage_from_pb(message: object_pb2.Lineage, *, stored: bool = False) -> Lineage:
    """The lineage in ``message``; ``stored``: read from this host's store, its entries
    decoded when first read (:meth:`LineageEntry.stored`), else each decoded now."""
    # Each repeated field's container read once (each read of a field makes a new one,
    # about 1.5k instructions), and counted before its items are read.
    held_checkpoints, held_arrivals = message.checkpoints, message.arrivals
    for name, items in (("checkpoints", held_checkpoints), ("arrivals", held_arrivals)):
        # Each is a signature to check: bounded before any is decoded or verified.
        if len(items) > limits.MAX_HANDOFFS:
            raise LimitExceededError(
                f"the lineage carries {len(items)} {name}; at most {limits.MAX_HANDOFFS} handoffs",
                hint="an object this well travelled cannot move again; keep it where it is",
            )
    try:
        entries = (
            stored_entries(message.entries[:])
            if stored
            else tuple(map(LineageEntry.decode, message.entries[:]))
        )
        checkpoints = tuple(map(decode_envelope, held_checkpoints[:]))
        arrivals = tuple(map(decode_envelope, held_arrivals[:]))
        base = decode_envelope(message.base) if message.base else None
        if type(entries) is list:  # stored: the log takes the fresh list as it is
            return stored_lineage(entries, checkpoints=checkpoints, arrivals=arrivals, base=base)
        lineage = Lineage(entries=entries, checkpoints=checkpoints, arrivals=arrivals, base=base)
    except EnvelopeError as exc:
        raise LineageError(f"a lineage checkpoint is malformed: {exc.reason}") from exc
    return lineage


class _Cut(NamedTuple):
    """A stored record's message serialized again (deterministic: its fields' encodings
    in field-number order) and where its parts lie in those bytes."""

    whole: bytes
    starts: list[int]  #: where each top-level field up to the lineage starts, then its end
    values: list[int]  #: where each one's value starts
    at: int  #: the index of the lineage (field 3) among them
    #: Where the snapshot's rules (field 6), cycle (7), data size (8) and the fields
    #: after it (9-11) start: the first field numbered at least that, or its end.
    rules: int
    cycle: int
    size: int
    after: int


def _cut(message: object_pb2.StoredObject) -> _Cut | None:
    """``message`` serialized again in one C call, and where its parts are; None if it
    lacks the snapshot or the lineage (fields 1 and 3, always written, even when empty)."""
    whole = message.SerializeToString(deterministic=True)
    numbers, starts, values = _field_starts(whole, 0, len(whole), last=3)
    at = bisect.bisect_left(numbers, 3)
    if not numbers or numbers[0] != 1 or at == len(numbers) or numbers[at] != 3:
        return None
    inner, inner_starts, _ = _field_starts(whole, values[0], starts[1])
    return _Cut(
        whole,
        starts,
        values,
        at,
        inner_starts[bisect.bisect_left(inner, 6)],
        inner_starts[bisect.bisect_left(inner, 7)],
        inner_starts[bisect.bisect_left(inner, 8)],
        inner_starts[bisect.bisect_left(inner, 9)],
    )


def _keep_wire(obj: GovernedObject, cut: _Cut, entry_ids: bytes) -> None:
    """Give the fresh log of ``obj`` (decoded from a record this host stored, ``cut``
    from its message serialized again, :func:`_cut`) what encoding ``obj`` again would
    build: the encoding of its entries (:func:`_entries_wire`) and the parts of the
    rest (:func:`_unchanged_parts`). A message's deterministic encoding
    is its fields' encodings in field-number order, and decoding then encoding a value
    gives the value back (tests/test_object_encoding.py), so each cut is the bytes its
    part encodes to: a cycle whose object missed every memo then encodes only its cycle
    state and its new entries, as one that hit does.

    The entries' encoding is kept when every entry's length takes two bytes (128 bytes
    to 16 KiB: every entry recorded so far), so that the ends are one running sum; the
    parts when the object's data is inline (a blob's placement is written from the
    host's own record of it, not from the snapshot's fields), the head only for data of
    at most :data:`KEPT_HEAD_MAX_DATA_BYTES`. Otherwise the log builds what is missing
    when first encoded.

    ``entry_ids`` (the ids the store keeps for the record's entries, one per entry, in
    order) become the log's :attr:`~gateway.lineage._Log.wire_ids`: the next put then
    hashes only the entries appended since (a record read back from the store hashed
    every entry it carried for its ids). Ids of another count are not the record's
    entries' and are ignored (the put hashes them all, as before)."""
    log = obj.lineage._log
    if log.wire_ends or log.parts is not None:
        return
    if entry_ids and len(entry_ids) == LEAF_HASH_BYTES * len(log.entries) and not log.wire_ids:
        log.wire_ids = bytearray(entry_ids)
    whole, starts, values, at, rules, cycle, size, after = cut
    entries_at, lineage_end = values[at], starts[at + 1]
    # The stored entries' own bytes (LineageEntry.stored keeps them), read as slots.
    raws = list(map(_raw_of, log.entries))
    sizes = list(map(len, raws))
    if sizes and _TWO_BYTE_MIN <= min(sizes) <= max(sizes) < _TWO_BYTE_END:
        # Each entry's end: the running sum of its tag (1 byte), length (2) and bytes.
        ends = list(itertools.accumulate(map(operator.add, sizes, itertools.repeat(3))))
        entries_end = entries_at + ends[-1]
        # Each entry's field is its frame and its own bytes (what whole holds there),
        # the bytes referenced, not copied (see _Log.wire).
        known = list(map(_FRAMES.get, sizes))  # C calls: a dict's get, no frame each
        # A length not seen before (each only once) makes its frame in Python.
        frames = cast(list[bytes], known) if None not in known else list(map(_frame, sizes))
        pieces: list[bytes] = [b""] * (2 * len(raws))
        pieces[::2] = frames
        pieces[1::2] = raws
        log.wire = pieces
        log.wire_ends = ends
    elif sizes:
        return
    else:
        entries_end = entries_at
    if obj.blob is not None or whole[entries_end : entries_end + 1] == _ENTRY_TAG:
        return
    snapshot_at, snapshot_end = values[0], starts[1]
    # The head (fields 1-5) holds a copy of the data, which a decoded object that is
    # only read (not written again) would carry twice: past a few hundred bytes of data
    # it is held with no data, and the object's first encoding builds it and the size
    # (a small message and the data's digest, about 10k instructions), as after a write.
    data = obj.data if len(obj.data) <= KEPT_HEAD_MAX_DATA_BYTES else None
    parts = (
        b"" if data is None else whole[snapshot_at:rules],
        whole[rules:cycle],
        b"" if data is None else whole[size:after],
        whole[after:snapshot_end],
        whole[starts[1] : starts[at]],  # the grants
        whole[entries_end:lineage_end],
        whole[lineage_end:],
    )
    body, envelopes, tail = _part_values(obj)
    log.parts = (body, envelopes, tail, data, parts, body + envelopes + tail)


#: The most data whose head :func:`_keep_wire` cuts from a stored record (a copy of
#: the data an object read from the store then carries beside its own).
KEPT_HEAD_MAX_DATA_BYTES = 512


def _field_starts(
    buffer: bytes, at: int, end: int, *, last: int = 1 << 29
) -> tuple[list[int], list[int], list[int]]:
    """The fields of the message encoded in ``buffer[at:end]`` (protobuf's own
    deterministic encoding, so in number order; nothing is checked) up to the first
    numbered ``last`` or more: their numbers, where each starts (and, last, where the
    fields read end), and where each one's value starts. Only for bytes protobuf has just
    serialized here, which read_varint always reads to their end."""
    numbers: list[int] = []
    starts: list[int] = []
    values: list[int] = []
    # Lengths and varints of one or two bytes (every field of a record but the
    # snapshot's and the lineage's lengths) read inline: a call of read_varint each
    # cost more than the rest of the field's step.
    while at < end:
        key = buffer[at]
        if key < 0x80:
            value_at = at + 1
        else:  # a field numbered 16 or more
            key, value_at = read_varint(buffer, at)
        starts.append(at)
        kind = key & 7
        if kind == 2:
            length = buffer[value_at]
            if length < 0x80:
                value_at += 1
            elif buffer[value_at + 1] < 0x80:
                length = (length & 0x7F) | (buffer[value_at + 1] << 7)
                value_at += 2
            else:
                length, value_at = read_varint(buffer, value_at)
            at = value_at + length
        elif kind == 0:
            at = value_at + 1 if buffer[value_at] < 0x80 else read_varint(buffer, value_at)[1]
        else:  # fixed 64 (1) or 32 (5) bits
            at = value_at + (8 if kind == 1 else 4)
        numbers.append(key >> 3)
        values.append(value_at)
        if key >> 3 >= last:
            break
    starts.append(at)
    return numbers, starts, values


def _object_from_snapshot(
    snapshot: object_pb2.ObjectSnapshot,
    credentials: list[str],
    lineage: object_pb2.Lineage,
    *,
    exact: bool = False,
    stored: bool = False,
    rules_wire: bytes | None = None,
    epoch: int = 0,
    state: LifecycleState = LifecycleState.ACTIVE,
    migration_id: str = "",
    moved_to: str = "",
    receipt: dsse.Envelope | None = None,
    last_transfer_digest: bytes = b"",
    authority: EffectiveAuthority = NO_AUTHORITY,
    blob: BlobRef | None = None,
    authority_expires: datetime | None = None,
) -> GovernedObject:
    """The object in ``snapshot``; ``rules_wire``: its rules' encoding, if known (see
    :func:`_rules_from_pb`); the keywords after it: its other fields (a
    stored object's or a staged copy's, GovernedObject's defaults otherwise), given here
    rather than set by a ``replace`` after, which built every object decoded twice (a
    ``blob`` given replaces the snapshot's digest-only one)."""
    data = snapshot.data  # read once: each read of a bytes field makes a new object
    if snapshot.data_streamed:
        if data or len(snapshot.data_digest) != 32:
            raise PayloadDecodeError(
                f"streamed object {snapshot.object_id} has inline data or no digest"
            )
        if blob is None:
            blob = BlobRef(digest=snapshot.data_digest, size=snapshot.data_size)
    elif digest(data) != snapshot.data_digest or len(data) != snapshot.data_size:
        raise PayloadDecodeError(
            f"data of {snapshot.object_id} does not match its digest",
            hint="the object was damaged on the way; migrate it again",
        )
    # Counted before anything is built from them; their content is checked with the
    # rules (gateway.handoff.context.check_rules).
    # (Each container read once: each read of a repeated field makes a new one.)
    held_subscriptions, held_answers = snapshot.subscriptions, snapshot.answers
    if len(held_subscriptions) > MAX_SUBSCRIPTIONS or len(held_answers) > MAX_ANSWERS:
        raise LimitExceededError(
            f"{snapshot.object_id:.200} has {len(held_subscriptions)} subscriptions and "
            f"{len(held_answers)} answers; at most {MAX_SUBSCRIPTIONS} and {MAX_ANSWERS}"
        )
    if len(snapshot.rules) > MAX_RULES:
        raise LimitExceededError(
            f"{snapshot.object_id:.200} has {len(snapshot.rules)} rules; at most {MAX_RULES}"
        )
    # Each repeated field read as a slice (a list, one C call): iterating the container
    # itself indexes it until an IndexError, whose message is formatted (about 2k
    # instructions a field, seven fields an object). Built in the order the fields were
    # always read, so a record with several faults is refused for the same one.
    rules = _rules_from_pb(snapshot, rules_wire)
    subscriptions = tuple(held_subscriptions[:])
    answers = tuple(map(_answer_from_pb, held_answers[:]))
    # GovernedObject(...) with every field, by position (gateway/_slots.py): its frozen
    # keyword __init__ cost about 39k instructions a decode (tests/test_p5miss_s40.py
    # holds the two equal, and these keywords' defaults equal the class's).
    return _new_object(
        snapshot.object_id,
        snapshot.tenant,
        data,
        snapshot.content_type,
        tuple(credentials),
        rules,
        _lineage_from_pb(lineage, stored=stored),
        _cycle_from_pb(snapshot.cycle, exact=exact),
        epoch,
        state,
        migration_id,
        moved_to,
        receipt,
        last_transfer_digest,
        authority,
        blob,
        authority_expires,
        subscriptions,
        answers,
    )


#: Every field of a GovernedObject, in the order :func:`_new_object` takes them.
_OBJECT_FIELDS = (
    "object_id",
    "tenant",
    "data",
    "content_type",
    "grants",
    "rules",
    "lineage",
    "cycle",
    "epoch",
    "state",
    "migration_id",
    "moved_to",
    "receipt",
    "last_transfer_digest",
    "authority",
    "blob",
    "authority_expires",
    "subscriptions",
    "answers",
)
_new_object = builder(GovernedObject, *_OBJECT_FIELDS)


_STATE_TO_PB = {
    LifecycleState.ACTIVE: object_pb2.LIFECYCLE_STATE_ACTIVE,
    LifecycleState.FROZEN: object_pb2.LIFECYCLE_STATE_FROZEN,
    LifecycleState.MOVED: object_pb2.LIFECYCLE_STATE_MOVED,
    LifecycleState.STAGED: object_pb2.LIFECYCLE_STATE_STAGED,
}
_STATE_FROM_PB = {v: k for k, v in _STATE_TO_PB.items()}


def _stored_to_pb(obj: GovernedObject) -> object_pb2.StoredObject:
    return object_pb2.StoredObject(
        snapshot=_snapshot_to_pb(obj),
        credentials=list(obj.grants),
        lineage=_lineage_to_pb(obj.lineage),
        epoch=obj.epoch,
        state=_STATE_TO_PB[obj.state],
        migration_id=obj.migration_id,
        moved_to=obj.moved_to,
        receipt=encode_envelope(obj.receipt) if obj.receipt else b"",
        last_transfer_digest=obj.last_transfer_digest,
        authority=encode_authority(obj.authority),
        blob=_blob_to_pb(obj.blob),
        authority_expires=_ts(obj.authority_expires) if obj.authority_expires else None,
    )


def _blob_to_pb(blob: BlobRef | None) -> object_pb2.BlobRef | None:
    if blob is None:
        return None
    return object_pb2.BlobRef(
        digest=blob.digest, size=blob.size, location=blob.location, chunks=blob.chunks
    )


@functools.lru_cache(maxsize=256)
def encode_authority(authority: EffectiveAuthority) -> bytes:
    """Canonical JSON ``{"allow": [...], "deny": [...]}`` (the grant claim format).

    Memoised: an object's authority is written with every cycle and every step of a
    migration, and a host holds few distinct ones (values are immutable and hashable)."""
    document = {"allow": authority.allow.to_claim(), "deny": authority.deny.to_claim()}
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8")


def decode_authority(raw: bytes) -> EffectiveAuthority:
    if not raw:
        return NO_AUTHORITY
    if len(raw) > MAX_CACHED_AUTHORITY_BYTES:
        return _decode_authority(raw)
    return _decode_authority_cached(raw)


#: Stored authorities are few distinct documents (one per grant shape and peer domain)
#: read with every object; parsing one into patterns cost more than the rest of a small
#: object's decode. Decoding is pure and its value immutable, so a memo is exact.
MAX_CACHED_AUTHORITY_BYTES = 16 << 10


@functools.lru_cache(maxsize=256)
def _decode_authority_cached(raw: bytes) -> EffectiveAuthority:
    return _decode_authority(raw)


def _decode_authority(raw: bytes) -> EffectiveAuthority:
    document = load_json(raw, error=PayloadDecodeError, what="stored effective authority")
    try:
        return EffectiveAuthority(
            allow=CapabilitySet.from_claim(document["allow"]),
            deny=CapabilitySet.from_claim(document["deny"]),
        )
    except (ValueError, KeyError, TypeError, AuthorityError) as exc:
        raise PayloadDecodeError(f"stored effective authority is unreadable: {exc}") from exc


def _stored_from_pb(
    message: object_pb2.StoredObject, *, lazy: bool = True, entry_ids: bytes = b""
) -> GovernedObject:
    """An object this host stored; ``lazy``: its lineage's entries decoded when first read
    (see :meth:`LineageEntry.stored`: what a cycle reads), else each decoded now."""
    state = _STATE_FROM_PB.get(message.state)
    if state is None:
        raise PayloadDecodeError(
            f"stored object {message.snapshot.object_id} has unknown state {message.state}"
        )
    # At rest the blob's host-local location replaces the digest-only transit form.
    blob = _blob_from_pb(message.blob) if message.HasField("blob") else None
    cut = _cut(message) if lazy else None
    obj = _object_from_snapshot(
        message.snapshot,
        message.credentials[:],
        message.lineage,
        stored=lazy,
        rules_wire=None if cut is None else cut.whole[cut.rules : cut.cycle],
        epoch=message.epoch,
        state=state,
        migration_id=message.migration_id,
        moved_to=message.moved_to,
        receipt=decode_envelope(message.receipt) if message.receipt else None,
        last_transfer_digest=message.last_transfer_digest,
        authority=decode_authority(message.authority),
        authority_expires=_dt(message.authority_expires, "authority expiry")
        if message.HasField("authority_expires")
        else None,
        blob=blob,
    )
    if cut is not None:
        _keep_wire(obj, cut, entry_ids)
    return obj


def _blob_from_pb(message: object_pb2.BlobRef) -> BlobRef:
    return BlobRef(
        digest=message.digest, size=message.size, location=message.location, chunks=message.chunks
    )


def _stored_head(raw: bytes) -> object_pb2.StoredObject:
    """A stored object parsed for the few fields a pass over every record reads (none
    of its lineage is turned into model objects)."""
    return _parse(object_pb2.StoredObject(), raw, "stored object", canonical=False)


def decode_cycle(raw: bytes) -> tuple[int, datetime | None] | None:
    """(generation, next due) of a stored object that is ACTIVE and cycling, else None.

    Cheap on purpose: the scheduler reads every object often and needs none of the
    lineage, which is by far the largest part to decode. Kept apart from
    :func:`decode_head` because it is the scheduler's per-object path: a RecordHead that
    also carried generation and due time, with this as a wrapper, measured 1.1-1.8x its
    cost per record (session 33, 1.7 and 25 KB records).
    """
    message = _stored_head(raw)
    cycle = message.snapshot.cycle
    if message.state != object_pb2.LIFECYCLE_STATE_ACTIVE or not cycle.interval_ms:
        return None
    return cycle.generation, _dt(cycle.next_due, "next evaluation time") if cycle.HasField(
        "next_due"
    ) else None


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordHead:
    """What a pass over every object record needs of each, read from the stored record
    without decoding the object (its lineage is most of it): the objects gauge counts
    states (gateway.host.Host.count_objects), the start-up take-up of subscriptions finds
    the ACTIVE subscribing objects (gateway.runtime.events), the reconciliation of Dapr
    cycle jobs the ACTIVE cycling ones with their interval (Host._schedule_all_jobs).

    A record the full decode refuses for its state or its interval is refused here too,
    so that every pass counts and logs the same records as unreadable."""

    state: LifecycleState
    #: None: the object does not cycle.
    interval: timedelta | None
    subscribing: bool


def decode_head(raw: bytes) -> RecordHead:
    """The :class:`RecordHead` of a stored object: one parse, no lineage decode."""
    message = _stored_head(raw)
    state = _STATE_FROM_PB.get(message.state)
    if state is None:
        raise PayloadDecodeError(f"stored object has an unknown lifecycle state {message.state}")
    snapshot = message.snapshot
    return RecordHead(
        state=state,
        interval=_interval_from_ms(snapshot.cycle.interval_ms),
        subscribing=bool(snapshot.subscriptions),
    )


def encode_object(obj: GovernedObject) -> bytes:
    """The at-rest form of an object (state, placement and all): the bytes of
    :func:`_stored_to_pb`, serialized deterministically, assembled from parts.

    Every cycle writes its object again, and the lineage is most of an object's bytes.
    A message's encoding is its fields' encodings in field-number order, so the parts
    are serialized apart and joined: the snapshot's fields 1-5, its rules (6, memoised
    per rule set), its cycle (7), the data's size (8), its fields 9-11, the grants (2),
    the lineage's entries (3.1), the lineage's other fields (3.2-3.4) and the fields
    after it (4-12). A cycle changes only the cycle and the entries (and, when its rules
    write, the data: fields 3, 5 and 8), so every other part is remembered
    (:func:`_unchanged_parts`) by the identity of the values it was built from. The
    lineage's entries come from the encoding its log keeps (:func:`_entries_wire`),
    which grows by the new entries only. Same bytes as serializing the whole message
    (tests/test_object_encoding.py holds the two together)."""
    return _joined(obj, first=b"", snapshot_tag=_SNAPSHOT_TAG, lineage_tag=_LINEAGE_TAG)[0]


def encode_object_entries(obj: GovernedObject) -> tuple[bytes, int, list[int], bytes]:
    """:func:`encode_object`'s bytes and where the lineage's entries lie in them: the
    offset of the first entry's field, the end of each entry's field relative to it,
    and each entry's leaf hash, joined (its id: gateway.stores.PutEntries, so that the
    embedded store writes only the entries it does not hold yet).

    The ends are those of the encoding the log keeps (:func:`_entries_wire`), which
    encode_object has just brought up to date, and an entry remembers its leaf hash (the
    next entry links to it), so beyond encode_object this costs a copy of the ends and
    one hash read per entry, not an encoding or a hash."""
    value, at = _joined(obj, first=b"", snapshot_tag=_SNAPSHOT_TAG, lineage_tag=_LINEAGE_TAG)
    log, count = _log_and_count(obj.lineage)
    if not count:
        return value, at, [], b""
    # The log keeps its entries' ids joined, as it keeps their encoding: only the entries
    # appended since its last put are read (entries are only ever appended to a log, and
    # a fold or a fork starts a new one with the ids of the entries it shares).
    ids = log.wire_ids
    size = LEAF_HASH_BYTES * count
    done = len(ids) // LEAF_HASH_BYTES
    if done < count:
        new = log.entries[done:count]
        # Every entry but the newest remembers its leaf hash (the next one links to it);
        # the newest is hashed now rather than by the next cycle's append. Then the
        # remembered hashes are read as slots (about 30 ns an entry; a call of leaf_hash
        # per entry cost about 300 instructions, an attrgetter about 500).
        new[-1].leaf_hash()
        try:
            ids += b"".join([entry._leaf for entry in new])  # type: ignore[misc]
        except (TypeError, AttributeError):  # another one not hashed yet (None, or never set)
            ids += b"".join([entry.leaf_hash() for entry in new])
    # A copy (the log's buffer grows with the next append); a prefix for an older value.
    return value, at, log.wire_ends[:count], bytes(ids) if len(ids) == size else bytes(ids[:size])


def _joined(
    obj: GovernedObject,
    *,
    first: bytes,
    snapshot_tag: bytes,
    lineage_tag: bytes,
    credentials: bytes | None = None,
    last: bytes | None = None,
) -> tuple[bytes, int]:
    """``first``, then the object's snapshot and its lineage under the given tags with
    ``credentials`` between them, then ``last``: a StoredObject (:func:`encode_object`)
    or a Transfer's fields 9-12 (:func:`encode_transfer`), from the object's remembered
    parts. ``credentials`` and ``last`` default to StoredObject's own (field 2, and
    fields 4-12); and the offset in those bytes of the lineage's first entry."""
    head, rules, size, after, own_credentials, rest, tail = _unchanged_parts(obj)
    timing = _cycle_wire(obj.cycle)
    pieces, count, end = _entries_wire(obj.lineage)
    if last is None:
        last = tail
    parts: list[bytes] = [
        first,
        snapshot_tag,
        _varint(len(head) + len(rules) + len(timing) + len(size) + len(after)),
        head,
        rules,
        timing,
        size,
        after,
        own_credentials if credentials is None else credentials,
        lineage_tag,
        _varint(end + len(rest)),
    ]
    # The entries' fields: the whole log's when this value sees all of it (a cycle's).
    parts += pieces if count == len(pieces) else pieces[:count]
    parts.append(rest)
    parts.append(last)
    joined = b"".join(parts)
    return joined, len(joined) - end - len(rest) - len(last)


#: Encoded parts remembered (:func:`_unchanged_parts`): at most this many bytes, each
#: part counted twice (the values held as its key are about as large).
OBJECT_PARTS_MEMO_BYTES = 16 << 20
OBJECT_PARTS_MEMO_ENTRIES = 16384

_Parts = tuple[bytes, bytes, bytes, bytes, bytes, bytes, bytes]
#: (the body's values, the lineage's envelopes, the tail's values, data, parts, and the
#: first three joined: what a cycle's object is checked against, one comparison)
_HeldParts = tuple[
    tuple[object, ...], tuple[object, ...], tuple[object, ...], bytes, _Parts, tuple[object, ...]
]
#: key: ids of the body's values -> what they encode to
_OBJECT_PARTS: BoundedLru[tuple[int, ...], _HeldParts] = BoundedLru(
    OBJECT_PARTS_MEMO_ENTRIES,
    max_weight=OBJECT_PARTS_MEMO_BYTES,
    weigh=lambda held: 2 * sum(map(len, held[4])),
)


def _part_values(
    obj: GovernedObject,
) -> tuple[tuple[object, ...], tuple[object, ...], tuple[object, ...]]:
    """The values :func:`_unchanged_parts` builds the parts from, as it holds them: the
    body's, the lineage's envelopes and the tail's (it builds the same tuples inline;
    tests/test_miss_s39.py finds a decoded object's parts through them)."""
    lineage = obj.lineage
    return (
        (
            obj.object_id,
            obj.tenant,
            obj.content_type,
            obj.blob,
            obj.rules,
            obj.subscriptions,
            obj.answers,
            obj.grants,
        ),
        (lineage.checkpoints, lineage.arrivals, lineage.base),
        (
            obj.epoch,
            obj.state,
            obj.migration_id,
            obj.moved_to,
            obj.receipt,
            obj.last_transfer_digest,
            obj.authority,
            obj.authority_expires,
        ),
    )


def _unchanged_parts(obj: GovernedObject) -> _Parts:
    """The parts of ``obj``'s encoding that are neither its cycle state nor its
    lineage's entries, remembered by the identity of every value they are built from.
    Each entry holds those values, so no id can be reused while it lives, and a hit is
    checked value by value with ``is``: a hit is what encoding them again would give
    (all are immutable). The data is held apart: a cycle whose rules write changes it
    (and only the snapshot's fields 1-6 and 8-11 then: data and its size), so the rest
    still comes from the memo.
    A cycle rebuilds its object from the same values, so from its second cycle on an
    object's encoding builds only its cycle state (and its data's fields 1-5 and its
    size, if written).

    The entry is found by the body's values alone (the data's identity, rules, grants:
    most of the bytes); the lineage's envelopes (checkpoints, arrivals, base: its fields
    3.2-3.4, :func:`_envelopes_wire`) and the tail's values (epoch, state, placement,
    authority: StoredObject's fields 4-12, :func:`_tail`) are held beside them and, if
    any differs, only that part is encoded again. A freeze, a tombstone or an abort
    changes just the tail (and adds entries); a departure's checkpoint or an arrival's
    receipt changes just the envelopes: neither encodes its whole body again (on a
    destination, the live object at a Commit takes its body from the staged copy's)."""
    lineage = obj.lineage
    # What _part_values returns, built here without its call (every cycle asks this),
    # as one tuple: the body's values (8), the lineage's envelopes (3), the tail's (8).
    values = (
        obj.object_id,
        obj.tenant,
        obj.content_type,
        obj.blob,
        obj.rules,
        obj.subscriptions,
        obj.answers,
        obj.grants,
        lineage.checkpoints,
        lineage.arrivals,
        lineage.base,
        obj.epoch,
        obj.state,
        obj.migration_id,
        obj.moved_to,
        obj.receipt,
        obj.last_transfer_digest,
        obj.authority,
        obj.authority_expires,
    )
    # The log's own slot first: it holds the parts of this object's last encoding and
    # lives as long as the object does, so an object held by a host's memos finds them
    # however many other objects were encoded since (the shared memo below is LRU: a host
    # cycling more objects than it holds finds nothing there).
    log = lineage.entries._log  # type: ignore[attr-defined]  # Entries (__post_init__)
    hit: _HeldParts | None = log.parts
    # A cycle's object: every value the same as at the last encoding (one comparison,
    # not three), the data perhaps written (then only its fields 1-5 and 8 again).
    if hit is not None and all(map(operator.is_, hit[5], values)):
        if hit[3] is obj.data:
            return hit[4]
        return _with_data(obj, hit, values)
    body, envelopes, tail = values[:8], values[8:11], values[11:]
    key = None  # None: the parts come from the log's slot (not kept in the shared memo)
    if hit is None or not all(map(operator.is_, hit[0], body)):
        key = tuple(map(id, body))
        hit = _OBJECT_PARTS.get(key)
    if hit is not None and all(map(operator.is_, hit[0], body)):
        parts = hit[4]
        same_data = hit[3] is obj.data
        same_envelopes = all(map(operator.is_, hit[1], envelopes))
        same_tail = all(map(operator.is_, hit[2], tail))
        if same_data and same_envelopes and same_tail:
            if key is not None:
                log.parts = hit
            return parts
        parts = (
            parts[0] if same_data else _head(obj),
            parts[1],
            parts[2] if same_data else _size_wire(obj),
            parts[3],
            parts[4],
            parts[5] if same_envelopes else _envelopes_wire(lineage),
            parts[6] if same_tail else _tail(obj),
        )
    else:
        parts = (*_encode_body(obj), _tail(obj))
    held = (body, envelopes, tail, obj.data, parts, values)
    log.parts = held
    if key is not None:
        _OBJECT_PARTS.put(key, held)
    return parts


def _with_data(obj: GovernedObject, hit: _HeldParts, values: tuple[object, ...]) -> _Parts:
    """The parts of ``hit`` (the log's, every value the same) with ``obj``'s data: its
    head and size encoded again, the rest kept; remembered in the log's slot."""
    parts = hit[4]
    parts = (_head(obj), parts[1], _size_wire(obj), parts[3], parts[4], parts[5], parts[6])
    obj.lineage.entries._log.parts = (hit[0], hit[1], hit[2], obj.data, parts, values)  # type: ignore[attr-defined]
    return parts


def _head(obj: GovernedObject) -> bytes:
    """Fields 1-5 of the object's ObjectSnapshot (identity, data and its digest)."""
    return object_pb2.ObjectSnapshot(
        object_id=obj.object_id,
        tenant=obj.tenant,
        data=obj.data,
        content_type=obj.content_type,
        data_digest=obj.data_digest(),
    ).SerializeToString(deterministic=True)


def _size_wire(obj: GovernedObject) -> bytes:
    """Field 8 of the object's ObjectSnapshot (the data's size), written out: a write
    changes it, and building a message for one number cost more than the rest of the
    write's encoding (protobuf's path for a size no uint64 holds, which it refuses)."""
    size = obj.size
    if not 0 <= size < _UINT64:
        return object_pb2.ObjectSnapshot(data_size=size).SerializeToString(deterministic=True)
    return _SIZE_TAG + _varint(size) if size else b""


def _after(obj: GovernedObject) -> bytes:
    """Fields 9-11 of the object's ObjectSnapshot (streamed or not, subscriptions,
    answers)."""
    return object_pb2.ObjectSnapshot(
        data_streamed=obj.blob is not None,
        subscriptions=obj.subscriptions,
        answers=[_answer_to_pb(a) for a in obj.answers],
    ).SerializeToString(deterministic=True)


#: :data:`_STATE_TO_PB` by each member's ``id``: a state's hash is Enum's Python-level
#: ``__hash__`` (about 1,100 instructions), an int's is its value. Members are
#: singletons, alive as long as their class, so their ids are theirs for good.
_STATE_TO_PB_BY_ID = {id(state): value for state, value in _STATE_TO_PB.items()}

#: :func:`encode_authority`'s bytes by the authority value's identity: an object's
#: authority is one value shared by every object admitted alike (the destination's
#: admissions are remembered, stored authorities decoded once), and hashing it for the
#: memo above walks every capability's fields in Python: with the state's hash, a tail
#: cost 22,200 instructions, 14,700 so (callgrind; two capabilities; twice an arrival).
#: A value not held is encoded (memoised) as before.
AUTHORITY_WIRE_REMEMBERED = 256
_AUTHORITY_WIRE: IdentityLru[EffectiveAuthority, bytes] = IdentityLru(AUTHORITY_WIRE_REMEMBERED)


def _authority_wire(authority: EffectiveAuthority) -> bytes:
    """:func:`encode_authority`, remembered by identity (see :data:`_AUTHORITY_WIRE`)."""
    raw = _AUTHORITY_WIRE.get(authority)
    if raw is None:
        raw = encode_authority(authority)
        _AUTHORITY_WIRE.put(authority, raw)
    return raw


def _tail(obj: GovernedObject) -> bytes:
    """Fields 4-12 of the object's StoredObject (epoch, state, placement, authority)."""
    tail = object_pb2.StoredObject(
        epoch=obj.epoch,
        state=_STATE_TO_PB_BY_ID[id(obj.state)],
        migration_id=obj.migration_id,
        moved_to=obj.moved_to,
        receipt=encode_envelope(obj.receipt) if obj.receipt else b"",
        last_transfer_digest=obj.last_transfer_digest,
        authority=_authority_wire(obj.authority),
    )
    blob = _blob_to_pb(obj.blob)
    if blob is not None:
        tail.blob.CopyFrom(blob)
    if obj.authority_expires:
        tail.authority_expires.CopyFrom(_ts(obj.authority_expires))
    return tail.SerializeToString(deterministic=True)


def _encode_body(obj: GovernedObject) -> tuple[bytes, bytes, bytes, bytes, bytes, bytes]:
    """The snapshot's fields 1-6 and 8-11, the grants and the lineage's fields 3.2-3.4."""
    return (
        _head(obj),
        _rules_wire(tuple(obj.rules)),
        _size_wire(obj),
        _after(obj),
        _credentials_wire(tuple(obj.grants)),
        _envelopes_wire(obj.lineage),
    )


def _envelopes_wire(lineage: Lineage) -> bytes:
    """Fields 2-4 of ``lineage``'s Lineage message (checkpoints, arrivals, base)."""
    return object_pb2.Lineage(
        checkpoints=[_envelope_bytes(c) for c in lineage.checkpoints],
        arrivals=[_envelope_bytes(a) for a in lineage.arrivals],
        base=_base_bytes(lineage.base) if lineage.base is not None else b"",
    ).SerializeToString(deterministic=True)


#: Fields 1 (StoredObject.snapshot), 3 (StoredObject.lineage) and 1 (Lineage.entries),
#: length-delimited.
_SNAPSHOT_TAG = b"\x0a"
_LINEAGE_TAG = b"\x1a"
_ENTRY_TAG = b"\x0a"
#: ObjectSnapshot.cycle (field 7, length-delimited) and data_size (field 8, a varint).
_CYCLE_TAG = b"\x3a"
_SIZE_TAG = b"\x40"
_MILLISECOND = timedelta(milliseconds=1)
#: Lengths whose varint takes exactly two bytes: [128, 16384).
_TWO_BYTE_MIN = 0x80
_TWO_BYTE_END = 0x4000
_UINT64 = 1 << 64


@functools.lru_cache(maxsize=256)
def _rules_wire(rules: tuple[Rule, ...]) -> bytes:
    """Field 6 of an ObjectSnapshot (its rules), memoised like :func:`_rules_to_pb`."""
    return bytes(
        object_pb2.ObjectSnapshot(rules=_rules_to_pb(rules)).SerializeToString(deterministic=True)
    )


@functools.lru_cache(maxsize=1024)
def _credentials_wire(grants: tuple[str, ...]) -> bytes:
    """Field 2 of a StoredObject (its grants), memoised: an object's grants change only
    when it moves, and every cycle writes them again (values are immutable)."""
    return bytes(object_pb2.StoredObject(credentials=grants).SerializeToString(deterministic=True))


def _cycle_pb_wire(cycle: CycleState) -> bytes:
    """Field 7 of an ObjectSnapshot (its cycle state), serialized by protobuf."""
    state = object_pb2.ObjectSnapshot()
    state.cycle.generation = cycle.generation  # present even when all its fields are 0
    if cycle.interval is not None:
        state.cycle.interval_ms = cycle.interval // _MILLISECOND
    if cycle.next_due is not None:
        state.cycle.next_due.CopyFrom(_ts(cycle.next_due))
    return state.SerializeToString(deterministic=True)


def _cycle_wire(cycle: CycleState) -> bytes:
    """:func:`_cycle_pb_wire`, written out field by field: the only part of an object's
    encoding that every cycle builds anew (tests/test_object_encoding.py holds the two
    together). Values protobuf would refuse (out of a uint64's range) or convert first
    (a time without a zone, read as local time) take its path, and so raise or convert
    as they always did."""
    generation = cycle.generation
    timing = _timing_wire(cycle.interval, cycle.next_due)
    if timing is None or not 0 <= generation < _UINT64:
        return _cycle_pb_wire(cycle)
    # Fields in number order, a zero left out (proto3).
    body = b"\x08" + _varint(generation) + timing if generation else timing
    return _CYCLE_TAG + _varint(len(body)) + body


#: The last interval and due time written out in UTC, and their fields (one slot,
#: replaced whole, so a thread never sees one's fields with another's values): a batch
#: of cycles shares one ``now``, and so mostly one next due time. Equal UTC times are
#: the same instant (equality ignores the zone only when both have the same one).
_LAST_TIMING: tuple[timedelta | None, datetime | None, bytes] = (None, None, b"")


def _timing_wire(interval: timedelta | None, due: datetime | None) -> bytes | None:
    """Fields 2 and 3 of a CycleState (interval, next due time), or None for values
    only protobuf's path may take."""
    global _LAST_TIMING
    last = _LAST_TIMING
    if last[0] == interval and last[1] == due and (due is None or due.tzinfo is UTC):
        return last[2]
    interval_ms = 0 if interval is None else interval // _MILLISECOND
    if not 0 <= interval_ms < _UINT64 or (due is not None and due.tzinfo is None):
        return None
    timing = b"\x10" + _varint(interval_ms) if interval_ms else b""
    if due is not None:
        stamp = _stamp_wire(due)
        timing += b"\x1a" + _varint(len(stamp)) + stamp
        if due.tzinfo is UTC:
            _LAST_TIMING = (interval, due, timing)
    return timing


def _stamp_wire(moment: datetime) -> bytes:
    """The serialized ``_ts(moment)`` of a ``moment`` with a zone: its fields, without
    the submessage's tag and length. Serialized by protobuf: its varints, written out
    in Python, cost more (13.7k Ir against 8.5k for a time of today)."""
    delta = moment - _EPOCH  # the time as _ts computes it
    seconds = delta.days * 86_400 + delta.seconds
    return Timestamp(seconds=seconds, nanos=delta.microseconds * 1000).SerializeToString()


#: The varints of 0-127: one byte each (a field's length, a small number).
_SHORT_VARINTS = tuple(bytes((value,)) for value in range(0x80))


def _varint(value: int) -> bytes:
    """Protobuf's base-128 varint of a non-negative ``value`` (a field's length)."""
    if value < 0x80:
        return bytes((value,))
    if value < 0x4000:  # most lengths, generations and intervals: two bytes
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _log_and_count(lineage: Lineage) -> tuple[_Log, int]:
    """``(lineage._log, len(lineage.entries))`` read from its entries' slots: both are
    Python-level calls (a property and ``Entries.__len__``), asked several times by every
    cycle's encoding."""
    entries = lineage.entries
    if type(entries) is Entries:
        return entries._log, entries._count
    return lineage._log, len(entries)  # never: Lineage's __post_init__ makes Entries


def _entries_wire(lineage: Lineage) -> tuple[list[bytes], int, int]:
    """The encoding of field 1 of ``lineage``'s Lineage message (its entries), from the
    pieces its log keeps (:attr:`~gateway.lineage._Log.wire`), extended by the entries
    not encoded yet. The log holds the entries of every value appended from it; this
    value sees the first ``count``: the log's pieces, how many of them are this value's
    (two an entry) and how many bytes they join to."""
    log, count = _log_and_count(lineage)
    ends = log.wire_ends
    done = len(ends)
    pieces = log.wire
    if done < count:
        end = ends[-1] if ends else 0
        for entry in log.entries[done:count]:
            raw = entry.encode()
            frame = _FRAMES.get(len(raw)) or _frame(len(raw))
            pieces.append(frame)
            pieces.append(raw)
            end += len(frame) + len(raw)
            ends.append(end)
    return pieces, 2 * count, ends[count - 1] if count else 0


def _frame(size: int) -> bytes:
    """The tag and length that come before an entry of ``size`` bytes in its field (see
    :data:`_FRAMES`)."""
    frame = _FRAMES.get(size)
    if frame is None:
        frame = _ENTRY_TAG + _varint(size)
        if size <= MAX_ENTRY_BYTES:
            _FRAMES[size] = frame
    return frame


#: An entry field's frame by the entry's length: one object per length, which every
#: entry's field of that length references (:attr:`gateway.lineage._Log.wire`). At most
#: one per length an entry may have (gateway.lineage.MAX_ENTRY_BYTES), about 40 bytes
#: each; a host's entries take a few hundred lengths.
_FRAMES: dict[int, bytes] = {}


@functools.lru_cache(maxsize=4096)
def _envelope_bytes(envelope: dsse.Envelope) -> bytes:
    """Memoised :func:`encode_envelope` for a lineage's checkpoints and arrivals, which
    every cycle writes again unchanged (envelopes are immutable and hashable). Each is a
    few hundred bytes (fixed fields), so the count bounds the bytes; bases, which are
    not, go through :func:`_base_bytes`."""
    return encode_envelope(envelope)


#: Encoded bases remembered, by envelope: at most this many encoded bytes, counted
#: twice (the envelope held as the key is as large; usually the object holding it keeps
#: it alive anyway). A base grows with the departures it cuts at (tens to hundreds of
#: KB after a few hundred hops), so in the count-bounded memo above the bases held grew
#: with every hop (docs/benchmarks.md, "RSS under the soak"). 1 MiB, not 8: a
#: compaction supersedes an object's base and nothing asks for the old one again, so
#: beyond the current bases (about 200 of 2-4 KB in the soak) the memo holds dead
#: entries, and at 8 MiB it filled with them for the soak's whole measured window (+0.6
#: MiB/min of the 1.0-2.7 MiB/min of live bytes a served host gained, session 31's
#: probe), to save a 5-10 us encode on the rare miss (the object parts memo above
#: answers most encodings first).
BASE_BYTES_MEMO_BYTES = 1 << 20
_BASE_BYTES: BoundedLru[dsse.Envelope, bytes] = BoundedLru(
    4096, max_weight=BASE_BYTES_MEMO_BYTES, weigh=lambda raw: 2 * len(raw)
)


def _base_bytes(base: dsse.Envelope) -> bytes:
    """Memoised :func:`encode_envelope` for a lineage's base (every cycle writes it)."""
    raw = _BASE_BYTES.get(base)
    if raw is None:
        raw = encode_envelope(base)
        _BASE_BYTES.put(base, raw)
    return raw


def decode_object(raw: bytes, *, entry_ids: bytes = b"") -> GovernedObject:
    """The object this host stored as ``raw``; ``entry_ids``: the ids the store keeps
    for its lineage's entries (:attr:`gateway.stores.Item.entry_ids`), kept by its log
    for the object's next write (see :func:`_keep_wire`)."""
    message = _parse(object_pb2.StoredObject(), raw, "stored object", canonical=False)
    return _stored_from_pb(message, entry_ids=entry_ids)


# --- transfers and receipts ---------------------------------------------------------


#: Transfer.object (field 9) and Transfer.lineage (field 11), length-delimited.
_TRANSFER_OBJECT_TAG = b"\x4a"
_TRANSFER_LINEAGE_TAG = b"\x5a"


def encode_transfer(transfer: Transfer) -> bytes:
    """The transfer's payload, serialized deterministically. Its object, grants and
    lineage (fields 9-11) are the same values as StoredObject's fields 1-3, so they are
    assembled from the object's encoding parts (:func:`_unchanged_parts`, which the
    freeze's write of the object then finds remembered) between fields 1-8 and 12: the
    same bytes as serializing the whole message (tests/test_record_encoding.py)."""
    obj = transfer.object
    head_fields = object_pb2.Transfer(
        migration_id=transfer.migration_id,
        object_id=obj.object_id,
        epoch=transfer.epoch,
        source_host=transfer.source_host,
        destination_host=transfer.destination_host,
        issued_at=_ts(transfer.issued_at),
        expires_at=_ts(transfer.expires_at),
        nonce=transfer.nonce,
    ).SerializeToString(deterministic=True)
    last = object_pb2.Transfer(
        previous_transfer_digest=transfer.previous_transfer_digest
    ).SerializeToString(deterministic=True)
    return _joined(
        obj,
        first=head_fields,
        snapshot_tag=_TRANSFER_OBJECT_TAG,
        lineage_tag=_TRANSFER_LINEAGE_TAG,
        credentials=_transfer_credentials_wire(tuple(obj.grants)),
        last=last,
    )[0]


@functools.lru_cache(maxsize=1024)
def _transfer_credentials_wire(grants: tuple[str, ...]) -> bytes:
    """Field 10 of a Transfer (the object's grants), memoised like
    :func:`_credentials_wire`."""
    return bytes(object_pb2.Transfer(credentials=grants).SerializeToString(deterministic=True))


_EARLIEST_S = int(limits.EARLIEST_TIME.timestamp())
_LATEST_S = int(limits.LATEST_TIME.timestamp())


def _check_stamp(stamp: Timestamp, what: str) -> None:
    """Seconds within the limits, checked before any datetime is made from them."""
    if not _EARLIEST_S <= stamp.seconds <= _LATEST_S:
        raise LimitExceededError(
            f"{what} is {stamp.seconds} s from 1970; times must lie between "
            f"{limits.EARLIEST_TIME.year} and {limits.LATEST_TIME.year}",
            hint="check the sender's clock; no honest gateway writes such a time",
        )


def _check_transfer_bounds(message: object_pb2.Transfer) -> None:
    """Every size, counter and time a peer chose, against gateway.limits, before any of it
    is used: a transfer the destination could stage but never advance (an epoch or
    generation at 2^64-1), or whose times overflow when a TTL or interval is added, is
    refused here with what was wrong."""
    snapshot = message.object
    limits.check_migration_id(message.migration_id)
    limits.check_id(message.object_id, what="object id")
    limits.check_id(message.source_host, what="source host id")
    limits.check_id(message.destination_host, what="destination host id")
    limits.check_text(snapshot.tenant, limit=limits.MAX_TENANT_CHARS, what="tenant")
    limits.check_text(
        snapshot.content_type, limit=limits.MAX_CONTENT_TYPE_CHARS, what="content type"
    )
    limits.check_inline_data(len(snapshot.data), what=f"transfer {message.migration_id}")
    if snapshot.data_size > MAX_BLOB_BYTES:
        raise EnvelopeTooLargeError(
            f"object data of {snapshot.data_size} bytes announced; at most {MAX_BLOB_BYTES}",
            hint="the object is too large for any gateway to take",
        )
    limits.check_counter(message.epoch, what=f"epoch of {message.object_id}")
    limits.check_counter(snapshot.cycle.generation, what=f"generation of {message.object_id}")
    if snapshot.cycle.interval_ms:
        limits.interval_from_millis(
            snapshot.cycle.interval_ms, what=f"cycle interval of {message.object_id}"
        )
    _check_stamp(message.issued_at, "issued-at time")
    _check_stamp(message.expires_at, "expiry time")
    if snapshot.cycle.HasField("next_due"):
        _check_stamp(snapshot.cycle.next_due, f"next due time of {message.object_id}")


def transfer_epoch(payload: bytes) -> int:
    """The epoch of a transfer payload this host sealed itself (its own journal), read
    without decoding the object and its lineage (which :func:`decode_transfer` does,
    at a cost that grows with the lineage)."""
    return int(_parse(object_pb2.Transfer(), payload, "transfer", canonical=False).epoch)


def _shape(
    descriptor: Any,
    *,
    most: Mapping[str, int] = {},
    nested: Mapping[str, _wire_counts.Shape] = {},
    min_bytes: Mapping[str, int] = {},
) -> _wire_counts.Shape:
    """The :class:`~gateway._wire_counts.Shape` of a message type, from its descriptor:
    singular fields once, each repeated field as often as ``most`` says (a repeated
    field without a bound is a mistake here, refused at import)."""
    fields: dict[int, tuple[str, int]] = {}
    for f in descriptor.fields:
        repeated = f.is_repeated
        if repeated and f.name not in most:
            raise AssertionError(f"{descriptor.name}.{f.name} is repeated and has no bound")
        fields[f.number] = (f.name, most[f.name] if repeated else 1)
    by_name = {f.name: f.number for f in descriptor.fields}
    return _wire_counts.Shape(
        fields,
        nested={by_name[name]: shape for name, shape in nested.items()},
        min_bytes={by_name[name]: size for name, size in min_bytes.items()},
    )


#: Fewer bytes than any lineage entry takes: its canonical JSON names ten fields, a time
#: and a 64-digit data digest (at least 222 bytes); an entry shorter than this would be
#: refused when decoded, and bounds how many entries a transfer can make protobuf build.
MIN_ENTRY_BYTES = 128
_LINEAGE_SHAPE = _shape(
    object_pb2.Lineage.DESCRIPTOR,
    most={
        "entries": MAX_ENVELOPE_BYTES // MIN_ENTRY_BYTES,
        "checkpoints": limits.MAX_HANDOFFS,
        "arrivals": limits.MAX_HANDOFFS,
    },
    min_bytes={"entries": MIN_ENTRY_BYTES},
)
#: What a transfer may hold, counted in its bytes before protobuf parses them (see
#: gateway._wire_counts): the bounds the decoded values are checked against later.
_TRANSFER_SHAPE = _shape(
    object_pb2.Transfer.DESCRIPTOR,
    most={"credentials": MAX_CHAIN},
    nested={
        "object": _shape(
            object_pb2.ObjectSnapshot.DESCRIPTOR,
            most={"rules": MAX_RULES, "subscriptions": MAX_SUBSCRIPTIONS, "answers": MAX_ANSWERS},
        ),
        "lineage": _LINEAGE_SHAPE,
    },
)

_ENVELOPE_SHAPE = _shape(envelope_pb2.Envelope.DESCRIPTOR, most={"signatures": dsse.MAX_SIGNATURES})


class ParsedTransfer:
    """A *verified* transfer payload parsed and bounded, its object and lineage not yet
    decoded: what a destination refuses a transfer for first (its tenant, who sends it,
    to whom) is read here for the cost of the protobuf parse, and :meth:`decoded` does
    the work that grows with the lineage (about 13 us an entry) only for a transfer
    that passed those checks."""

    __slots__ = ("_message", "_payload")

    def __init__(self, payload: bytes) -> None:
        _wire_counts.check_counts(payload, _TRANSFER_SHAPE, "transfer")
        message = _parse(object_pb2.Transfer(), payload, "transfer", canonical=True)
        # Absent submessages would decode as defaults (the epoch for a time) and re-encode
        # as present ones: a second byte form of the same transfer.
        _require_present(message, ("issued_at", "expires_at", "object", "lineage"), "transfer")
        _require_present(message.object, ("cycle",), "transfer object")
        _check_transfer_bounds(message)
        if message.object.object_id != message.object_id:
            raise PayloadDecodeError(
                f"transfer names object {message.object_id} but carries {message.object.object_id}"
            )
        if len(message.nonce) != NONCE_BYTES:
            raise PayloadDecodeError(
                f"transfer nonce is {len(message.nonce)} bytes, not {NONCE_BYTES}"
            )
        self._message = message
        self._payload = payload

    @property
    def migration_id(self) -> str:
        return str(self._message.migration_id)

    @property
    def object_id(self) -> str:
        return str(self._message.object_id)

    @property
    def tenant(self) -> str:
        return str(self._message.object.tenant)

    @property
    def source_host(self) -> str:
        return str(self._message.source_host)

    @property
    def destination_host(self) -> str:
        return str(self._message.destination_host)

    @property
    def expires_at(self) -> datetime:
        return _peer_dt(self._message.expires_at, "transfer expiry")

    @property
    def streamed(self) -> bool:
        """Whether the object's data follows the transfer as a stream (PrepareStream)."""
        return bool(self._message.object.data_streamed)

    def decoded(self) -> Transfer:
        """The transfer with its object as a STAGED candidate and its lineage decoded."""
        message = self._message
        obj = _object_from_snapshot(
            message.object,
            message.credentials[:],  # a list, as list() made it, without its IndexError
            message.lineage,
            exact=True,
            epoch=message.epoch,
            state=LifecycleState.STAGED,
            migration_id=message.migration_id,
            last_transfer_digest=digest(self._payload),
        )
        for entry in obj.lineage.entries:
            # Lineage counters are copied into the entries this host appends; keep them
            # encodable as well.
            if entry.epoch > limits.MAX_COUNTER or entry.generation > limits.MAX_COUNTER:
                raise LimitExceededError(
                    f"lineage entry {entry.seq} of {message.object_id} has a counter above "
                    f"{limits.MAX_COUNTER}"
                )
            limits.check_time(entry.time, what=f"time of lineage entry {entry.seq}")
        return Transfer(
            migration_id=message.migration_id,
            epoch=message.epoch,
            source_host=message.source_host,
            destination_host=message.destination_host,
            issued_at=_peer_dt(message.issued_at, "transfer issue time"),
            expires_at=self.expires_at,
            nonce=message.nonce,
            object=obj,
            previous_transfer_digest=message.previous_transfer_digest,
        )


def decode_transfer(payload: bytes) -> Transfer:
    """Parse a *verified* transfer payload into a STAGED object candidate."""
    return ParsedTransfer(payload).decoded()


def encode_receipt(receipt: Receipt) -> bytes:
    return object_pb2.Receipt(
        migration_id=receipt.migration_id,
        object_id=receipt.object_id,
        epoch=receipt.epoch,
        host=receipt.host,
        source_host=receipt.source_host,
        transfer_digest=receipt.transfer_digest,
        issued_at=_ts(receipt.issued_at),
    ).SerializeToString(deterministic=True)


def decode_receipt(payload: bytes, kind: ReceiptKind) -> Receipt:
    message = _parse(object_pb2.Receipt(), payload, f"{kind.name.lower()} receipt", canonical=True)
    limits.check_migration_id(message.migration_id)
    limits.check_id(message.object_id, what="object id")
    limits.check_id(message.host, what="host id")
    limits.check_id(message.source_host, what="source host id")
    _require_present(message, ("issued_at",), f"{kind.name.lower()} receipt")
    return Receipt(
        kind=kind,
        migration_id=message.migration_id,
        object_id=message.object_id,
        epoch=message.epoch,
        host=message.host,
        source_host=message.source_host,
        transfer_digest=message.transfer_digest,
        issued_at=_peer_dt(message.issued_at, "receipt issue time"),
    )


# --- journal records ----------------------------------------------------------------


def _step(steps: Mapping[Any, T], value: int, *, what: str) -> T:
    """A journal step this version knows, or a decode error (never a bare KeyError that
    would stop recovery, e.g. during a rolling upgrade)."""
    if value not in steps:
        raise PayloadDecodeError(f"{what} has step {value}, unknown to this gateway version")
    return steps[value]


_SOURCE_STEPS = {
    SourceStep.FROZEN: journal_pb2.SOURCE_STEP_FROZEN,
    SourceStep.COMMITTED: journal_pb2.SOURCE_STEP_COMMITTED,
    SourceStep.DONE: journal_pb2.SOURCE_STEP_DONE,
    SourceStep.ABORTED: journal_pb2.SOURCE_STEP_ABORTED,
}
_DESTINATION_STEPS = {
    DestinationStep.STAGED: journal_pb2.DESTINATION_STEP_STAGED,
    DestinationStep.ACTIVATED: journal_pb2.DESTINATION_STEP_ACTIVATED,
    DestinationStep.ABORTED: journal_pb2.DESTINATION_STEP_ABORTED,
}
_SOURCE_STEPS_FROM_PB = {v: k for k, v in _SOURCE_STEPS.items()}
#: Fields 1-4 of SourceRecord and DestinationRecord (strings: migration id, object,
#: tenant, the other host).
_HEAD_TEXT_TAGS = (b"\x0a", b"\x12", b"\x1a", b"\x22")
#: SourceRecord.step (field 5, a varint), tag and value, by the step's value.
_SOURCE_STEP_FIELDS = {step._value_: bytes((0x28, value)) for step, value in _SOURCE_STEPS.items()}
#: DestinationRecord.step (field 5), the same way.
_DESTINATION_STEP_FIELDS = {
    step._value_: bytes((0x28, value)) for step, value in _DESTINATION_STEPS.items()
}
_DESTINATION_STEPS_FROM_PB = {v: k for k, v in _DESTINATION_STEPS.items()}


def _source_record_pb(record: SourceRecord) -> bytes:
    """The record's bytes, serialized deterministically by protobuf."""
    return journal_pb2.SourceRecord(
        migration_id=record.migration_id,
        object_id=record.object_id,
        tenant=record.tenant,
        destination_host=record.destination_host,
        step=_SOURCE_STEPS[record.step],
        transfer=record.transfer,
        staged_receipt=record.staged_receipt,
        activation_receipt=record.activation_receipt,
        created_at=_ts(record.created_at),
        updated_at=_ts(record.updated_at),
        reason=record.reason,
        transfer_digest=record.transfer_digest,
        epoch=record.epoch,
    ).SerializeToString(deterministic=True)


def encode_source_record(record: SourceRecord) -> bytes:
    """:func:`_source_record_pb`, written out field by field (the source writes three
    records a migration; tests/test_p2wire_s41.py holds the two together): fields in
    number order, a proto3 default left out, both times always written (a set
    submessage, empty at the epoch). A migration's three records share their first four
    fields and their creation time, remembered (:func:`_head_texts`,
    :func:`_utc_stamp_field`). Values only protobuf's path may take (a time not in UTC,
    an epoch outside a uint64, a string that is not UTF-8, a value of another type, an
    unknown step) take it, and so raise or convert as they always did."""
    step, created, updated = record.step, record.created_at, record.updated_at
    migration_id, object_id, tenant = record.migration_id, record.object_id, record.tenant
    host, reason, epoch = record.destination_host, record.reason, record.epoch
    transfer, staged, activation = record.transfer, record.staged_receipt, record.activation_receipt
    digest = record.transfer_digest
    if not (
        type(step) is SourceStep
        and type(created) is type(updated) is datetime
        and created.tzinfo is updated.tzinfo is UTC
        and type(migration_id) is type(object_id) is type(tenant) is type(host) is str
        and type(reason) is str
        and type(transfer) is type(staged) is type(activation) is type(digest) is bytes
        and type(epoch) is int
        and 0 <= epoch < _UINT64
    ):
        return _source_record_pb(record)
    try:
        # The step by its value: Enum's hash is Python code (about 1,100 Ir).
        parts = [
            _head_texts(migration_id, object_id, tenant, host),
            _SOURCE_STEP_FIELDS[step._value_],
        ]
        reason_utf8 = reason.encode()
    except UnicodeEncodeError:
        return _source_record_pb(record)
    if transfer:
        size = len(transfer)
        parts += (b"\x32", _SHORT_VARINTS[size] if size < 0x80 else _varint(size), transfer)
    if staged:
        size = len(staged)
        parts += (b"\x3a", _SHORT_VARINTS[size] if size < 0x80 else _varint(size), staged)
    if activation:
        size = len(activation)
        parts += (b"\x42", _SHORT_VARINTS[size] if size < 0x80 else _varint(size), activation)
    parts += (b"\x4a", _utc_stamp_field(created), b"\x52", _utc_stamp_field(updated))
    if reason_utf8:
        size = len(reason_utf8)
        parts += (b"\x5a", _SHORT_VARINTS[size] if size < 0x80 else _varint(size), reason_utf8)
    if digest:
        size = len(digest)
        parts += (b"\x62", _SHORT_VARINTS[size] if size < 0x80 else _varint(size), digest)
    if epoch:
        parts += (b"\x68", _SHORT_VARINTS[epoch] if epoch < 0x80 else _varint(epoch))
    return b"".join(parts)


@functools.lru_cache(maxsize=256)
def _head_texts(migration_id: str, object_id: str, tenant: str, host: str) -> bytes:
    """Fields 1-4 (strings) of a journal record, the same in a migration's every record:
    a UnicodeEncodeError for a string that is not UTF-8 (never remembered)."""
    parts: list[bytes] = []
    for tag, text in zip(_HEAD_TEXT_TAGS, (migration_id, object_id, tenant, host), strict=True):
        if text:
            value = text.encode()
            size = len(value)
            parts += (tag, _SHORT_VARINTS[size] if size < 0x80 else _varint(size), value)
    return b"".join(parts)


@functools.lru_cache(maxsize=64)
def _utc_stamp_field(moment: datetime) -> bytes:
    """A Timestamp submessage's length and bytes for a time in UTC (equal such times
    are the same instant): a migration's records share their creation time."""
    stamp = _stamp_wire(moment)
    return _SHORT_VARINTS[len(stamp)] + stamp  # at most 17 bytes


def decode_source_record(raw: bytes) -> SourceRecord:
    message = _parse(journal_pb2.SourceRecord(), raw, "source journal record", canonical=False)
    return SourceRecord(
        migration_id=message.migration_id,
        object_id=message.object_id,
        tenant=message.tenant,
        destination_host=message.destination_host,
        step=_step(_SOURCE_STEPS_FROM_PB, message.step, what="journal record"),
        transfer=message.transfer,
        staged_receipt=message.staged_receipt,
        activation_receipt=message.activation_receipt,
        created_at=_dt(message.created_at, "journal record creation time"),
        updated_at=_dt(message.updated_at, "journal record update time"),
        reason=message.reason,
        transfer_digest=message.transfer_digest,
        epoch=message.epoch,
    )


#: DestinationRecord.staged (field 9, length-delimited).
_STAGED_TAG = b"\x4a"


def _destination_record_pb(record: DestinationRecord) -> bytes:
    """The record's bytes, serialized deterministically. A staged copy is written as
    :func:`encode_object`'s bytes between fields 1-8 and 10-12 (a message's encoding is
    its fields' in number order): the same bytes as setting the submessage, without
    building the object's protobuf messages, and its parts are remembered for the
    Commit's live object (:func:`_unchanged_parts`)."""
    head = journal_pb2.DestinationRecord(
        migration_id=record.migration_id,
        object_id=record.object_id,
        tenant=record.tenant,
        source_host=record.source_host,
        step=_DESTINATION_STEPS[record.step],
        transfer_digest=record.transfer_digest,
        staged_receipt=record.staged_receipt,
        activation_receipt=record.activation_receipt,
    ).SerializeToString(deterministic=True)
    tail = journal_pb2.DestinationRecord(
        created_at=_ts(record.created_at),
        updated_at=_ts(record.updated_at),
        reason=record.reason,
    ).SerializeToString(deterministic=True)
    if record.staged is None:
        return head + tail
    staged = encode_object(record.staged)
    return b"".join((head, _STAGED_TAG, _varint(len(staged)), staged, tail))


def encode_destination_record(record: DestinationRecord) -> bytes:
    """:func:`_destination_record_pb`, its fields other than the staged copy written out
    as :func:`encode_source_record` writes a source record's (tests/test_p2wire_s41.py
    holds the two together); values only protobuf's path may take take it."""
    step, created, updated = record.step, record.created_at, record.updated_at
    migration_id, object_id, tenant = record.migration_id, record.object_id, record.tenant
    host, reason, staged_copy = record.source_host, record.reason, record.staged
    digest, staged, activation = (
        record.transfer_digest,
        record.staged_receipt,
        record.activation_receipt,
    )
    if not (
        type(step) is DestinationStep
        and type(created) is type(updated) is datetime
        and created.tzinfo is updated.tzinfo is UTC
        and type(migration_id) is type(object_id) is type(tenant) is type(host) is str
        and type(reason) is str
        and type(digest) is type(staged) is type(activation) is bytes
    ):
        return _destination_record_pb(record)
    try:
        parts = [
            _head_texts(migration_id, object_id, tenant, host),
            _DESTINATION_STEP_FIELDS[step._value_],
        ]
        reason_utf8 = reason.encode()
    except UnicodeEncodeError:
        return _destination_record_pb(record)
    if digest:
        size = len(digest)
        parts += (b"\x32", _SHORT_VARINTS[size] if size < 0x80 else _varint(size), digest)
    if staged:
        size = len(staged)
        parts += (b"\x3a", _SHORT_VARINTS[size] if size < 0x80 else _varint(size), staged)
    if activation:
        size = len(activation)
        parts += (b"\x42", _SHORT_VARINTS[size] if size < 0x80 else _varint(size), activation)
    if staged_copy is not None:
        copy = encode_object(staged_copy)
        parts += (_STAGED_TAG, _varint(len(copy)), copy)
    parts += (b"\x52", _utc_stamp_field(created), b"\x5a", _utc_stamp_field(updated))
    if reason_utf8:
        size = len(reason_utf8)
        parts += (b"\x62", _SHORT_VARINTS[size] if size < 0x80 else _varint(size), reason_utf8)
    return b"".join(parts)


def decode_destination_record(raw: bytes) -> DestinationRecord:
    message = _parse(
        journal_pb2.DestinationRecord(), raw, "destination journal record", canonical=False
    )
    return DestinationRecord(
        migration_id=message.migration_id,
        object_id=message.object_id,
        tenant=message.tenant,
        source_host=message.source_host,
        step=_step(_DESTINATION_STEPS_FROM_PB, message.step, what="journal record"),
        transfer_digest=message.transfer_digest,
        staged_receipt=message.staged_receipt,
        activation_receipt=message.activation_receipt,
        # Decoded whole: a staged copy is a peer's object, read by the few steps of its
        # handoff, which is no reason to defer refusing a damaged entry.
        staged=_stored_from_pb(message.staged, lazy=False) if message.HasField("staged") else None,
        created_at=_dt(message.created_at, "journal record creation time"),
        updated_at=_dt(message.updated_at, "journal record update time"),
        reason=message.reason,
    )


# --- dry runs -----------------------------------------------------------------------


def encode_evaluation(evaluation: Evaluation) -> gateway_pb2.EvaluateResponse:
    return gateway_pb2.EvaluateResponse(
        admitted=evaluation.admitted,
        refusal=evaluation.refusal,
        decisions=[
            gateway_pb2.CapabilityDecision(
                capability=d.capability, outcome=d.outcome, reason=d.reason
            )
            for d in evaluation.decisions
        ],
        authority=encode_authority(evaluation.authority) if evaluation.authority else b"",
    )


#: The most a destination's answer to Evaluate may be. It is not signed, and every
#: decision in it becomes an object: gRPC's 32 MiB message cap let one answer of empty
#: decisions cost the asking process 22 s of CPU and 2.4 GB. An honest answer holds one
#: decision per capability of a grant chain (grants are at most 16 KiB each).
MAX_EVALUATION_BYTES = 1 << 20
#: Fewer bytes than any honest decision takes: it names a capability (``state:x read``)
#: and an outcome (``denied``), each with a two-byte key and length.
MIN_DECISION_BYTES = 16

_EVALUATION_SHAPE = _shape(
    gateway_pb2.EvaluateResponse.DESCRIPTOR,
    most={"decisions": MAX_EVALUATION_BYTES // MIN_DECISION_BYTES},
    min_bytes={"decisions": MIN_DECISION_BYTES},
)


def read_evaluation(host: str, raw: bytes) -> Evaluation:
    """``host``'s answer to Evaluate, as received: bounded in size and counted before it
    is parsed (see :data:`MAX_EVALUATION_BYTES`)."""
    if len(raw) > MAX_EVALUATION_BYTES:
        raise LimitExceededError(
            f"{host}'s answer to Evaluate is {len(raw)} bytes; at most {MAX_EVALUATION_BYTES}",
            hint="the peer runs an incompatible or misbehaving gateway",
        )
    _wire_counts.check_counts(raw, _EVALUATION_SHAPE, f"{host}'s evaluation", walk_above=0)
    try:
        message = gateway_pb2.EvaluateResponse.FromString(raw)
    except DecodeError as exc:
        raise PayloadDecodeError(
            f"{host}'s answer to Evaluate does not decode: {exc}",
            hint="the peer runs an incompatible or misbehaving gateway",
        ) from exc
    return decode_evaluation(host, message)


def decode_evaluation(host: str, message: gateway_pb2.EvaluateResponse) -> Evaluation:
    return Evaluation(
        host=host,
        admitted=message.admitted,
        refusal=message.refusal,
        decisions=tuple(
            Decision(capability=d.capability, outcome=d.outcome, reason=d.reason)
            for d in message.decisions
        ),
        authority=decode_authority(message.authority) if message.authority else None,
    )
