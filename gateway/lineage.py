"""Lineage: the hash-chained, host-signed record of everything that happened to an object.

Invariants this module keeps:

* **Exact bytes.** An entry is hashed as its canonical JSON bytes; :meth:`LineageEntry.decode`
  accepts only bytes that re-encode to themselves, so every entry has one hash.
* **Chained.** Entry *n* holds the leaf hash of entry *n-1* (RFC 9162 leaf hash
  ``SHA-256(0x00 || entry)``), and its sequence number is *n*. Editing, dropping,
  inserting or reordering an entry breaks the chain at that point.
* **Signed by who recorded it.** Each host that lets an object go signs a checkpoint:
  the Merkle tree head (RFC 9162) over every entry so far. The entries after the
  previous checkpoint must all be recorded by the host that signs the next one, and
  the checkpoint must be signed by a key trusted for that host. Verification costs one
  hash per entry and one signature per hop, not one signature per entry.
* **Compactable without losing a signature.** A host may move a prefix of the history
  to an archive and carry a signed base instead (:class:`Base`, ADR 0007): every
  departure and arrival stays in the object, and the base's spine rebuilds the root each
  archived departure's sender signed, so compaction cannot alter what another host
  signed. Sizes, sequence numbers and tree heads are always those of the whole history.
* **Linear.** Appending is amortised O(1) (values share one append-only log); an entry
  decodes in time linear in its bytes (bounded by :data:`MAX_ENTRY_BYTES`); verification
  costs one leaf and about one node hash per entry plus one signature per checkpoint.
* **Only extended.** A host that saw an object before checks that the lineage it
  receives now starts with exactly the entries it saw (:func:`verify_extends`), so a
  fork, a truncation or a rewrite of history is detected.

No I/O.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import functools
import hashlib
import itertools
import json
import operator
import re
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, SupportsIndex, cast, overload

from gateway import _custody_chain as custody_chain
from gateway import envelope as dsse
from gateway import merkle
from gateway._decode import MAX_JSON_INT_DIGITS, load_json, scan_json
from gateway._slots import builder
from gateway._time import format_time, parse_time
from gateway.errors import (
    ConfigError,
    ExpiredError,
    GatewayError,
    LineageError,
    MerkleProofError,
    VerificationError,
)
from gateway.identity import HostId, ObjectId
from gateway.keys import Purpose, Signer
from gateway.limits import MAX_HANDOFFS, MAX_HOPS, check_migration_id
from gateway.trust import TrustStore, canonical_json

MAX_DETAIL = 1024
#: The most bytes one encoded entry may have: a detail of MAX_DETAIL characters, each
#: escaped at worst as \\uXXXX, two host ids at their limit, and the fixed fields. Checked
#: before an entry is parsed, so no entry costs more than this to decode.
MAX_ENTRY_BYTES = 16 << 10
#: Base payload type: the signed checkpoint a host writes when it compacts a lineage.
BASE_PAYLOAD_TYPE = "application/vnd.gateway.lineage-base.v1+json"
_ENTRY_FIELDS = frozenset(
    {
        "seq",
        "prev",
        "time",
        "host",
        "kind",
        "epoch",
        "generation",
        "data_digest",
        "credentials_digest",
        "detail",
    }
)
#: An entry that stands for the same event recorded several times in a row carries
#: ``repeats`` (>= 1); entries recorded once leave it out, so their bytes are unchanged.
_REPEATED_ENTRY_FIELDS = _ENTRY_FIELDS | {"repeats"}
_CHECKPOINT_FIELDS = frozenset(
    {
        "object_id",
        "host",
        "epoch",
        "size",
        "root",
        "issued_at",
        "to",
        "migration",
        "credentials_digest",
    }
)
#: Checkpoints written before the grants record (format 1 as released): still read, and
#: their grants are those of the last entry they cover, which must then be carried.
_CHECKPOINT_FIELDS_V1 = _CHECKPOINT_FIELDS - {"credentials_digest"}
#: Checkpoints that commit to the custody before them (ADR 0010, gateway._custody_chain).
_CHECKPOINT_FIELDS_V3 = _CHECKPOINT_FIELDS | {"custody", "hops"}
_BASE_FIELDS = frozenset(
    {
        "object_id",
        "host",
        "epoch",
        "size",
        "root",
        "head",
        "issued_at",
        "creator",
        "cuts",
        "spine",
        "archived",
    }
)
_INT_FIELDS = frozenset({"seq", "epoch", "generation", "repeats"})
#: Integers below this have at most load_json's digit limit (its hooks refuse longer ones).
_INT_LIMIT = 10**MAX_JSON_INT_DIGITS
_encode_string = json.encoder.encode_basestring  # json.dumps(ensure_ascii=False) for a str
#: NaN and Infinity parse as with json.loads and fail the field type checks.
_scan_json = scan_json


class EntryKind(enum.Enum):
    CREATED = "created"
    UPDATED = "updated"
    EVALUATED = "evaluated"
    ACTION_ADMITTED = "action-admitted"
    ACTION_DENIED = "action-denied"
    ATTENUATED = "attenuated"
    FROZEN = "frozen"
    ABORTED = "aborted"
    REHOSTED = "rehosted"
    WOKEN = "woken"  #: a message on a subscribed topic woke the object (runtime/events.py)
    CALLED = "called"  #: a call was answered (runtime/calls.py)
    CALL_DENIED = "call-denied"  #: a call was refused; repeats are counted (runtime/calls.py)


_KINDS = {kind.value: kind for kind in EntryKind}


def _strict_json(raw: bytes, fields: frozenset[str], what: str) -> dict[str, Any]:
    return _strict_document(load_json(raw, error=LineageError, what=what), raw, fields, what)


def _strict_document(
    document: Any, raw: bytes, fields: frozenset[str], what: str
) -> dict[str, Any]:
    """``document`` (parsed from ``raw`` by load_json) if it has exactly ``fields`` and
    ``raw`` is its canonical form."""
    if not isinstance(document, dict) or set(document) != fields:
        raise LineageError(f"{what} must be an object with exactly the fields {sorted(fields)}")
    if canonical_json(document) != raw:
        raise LineageError(f"{what} is not in canonical form (sorted keys, no spaces)")
    return document


def _field(document: dict[str, Any], name: str, kind: type, what: str) -> Any:
    value = document[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise LineageError(f"{what}: {name} must be {kind.__name__}")
    if isinstance(value, int) and value < 0:
        raise LineageError(f"{what}: {name} must not be negative")
    return value


def _hex(document: dict[str, Any], name: str, what: str, *, empty_ok: bool = False) -> bytes:
    text = _field(document, name, str, what)
    return _from_hex(text, name, what, empty_ok=empty_ok)


def _from_hex(text: str, name: str, what: str, *, empty_ok: bool = False) -> bytes:
    if empty_ok and text == "":
        return b""
    try:
        value = bytes.fromhex(text)
    except ValueError as exc:
        raise LineageError(f"{what}: {name} is not hex") from exc
    if len(value) != 32 or value.hex() != text:
        raise LineageError(f"{what}: {name} must be 64 lowercase hex digits")
    return value


#: The last time formatted and its text (one slot, replaced whole, so a thread never
#: sees a time with another's text): a cycle's entries, and a batch of cycles, share
#: one ``now``, so most entries encode the same time object as the entry before.
_LAST_FORMATTED: tuple[datetime | None, str] = (None, "")
#: The one text _format_utc writes for a UTC time (ASCII digits: \d would take others).
_CANONICAL_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z"
).fullmatch


def _format_utc(moment: datetime) -> str:
    """format_time, without the conversion when the time is already in UTC (decoded and
    recorded times are); the same time object as last time is not formatted again
    (datetimes are immutable, and the slot holds it, so its id is not reused)."""
    global _LAST_FORMATTED
    last = _LAST_FORMATTED
    if last[0] is moment:
        return last[1]
    text = _format_utc_now(moment)
    _LAST_FORMATTED = (moment, text)
    return text


def _format_utc_now(moment: datetime) -> str:
    if moment.tzinfo is not UTC:
        return format_time(moment)
    # datetime's C isoformat (4-digit year, milliseconds truncated like format_time) ends
    # in "+00:00" for UTC; format_time writes "Z". One C call instead of seven fields
    # formatted in Python: every entry decoded is re-encoded once.
    return moment.isoformat(timespec="milliseconds")[:-6] + "Z"


def _shared_text(
    host: str, at: datetime, epoch: int, generation: int, credentials_digest: bytes
) -> tuple[str, str, str] | None:
    """The parts of :meth:`LineageEntry._encode` that the entries of one append share:
    the text before ``data_digest``, between ``detail`` and ``kind`` and after ``seq``;
    None if one of them cannot be written (each entry's own encode then raises).

    The host's text and the last part are those of the last call when its host and
    time are the same objects (a batch of cycles shares its host and ``now``; the slot
    holds both, so their ids are not reused while it does)."""
    global _LAST_SHARED
    last = _LAST_SHARED
    if last[0] is host and last[1] is at:
        host_text, end = last[2], last[3]
    else:
        try:
            time = _format_utc(at)
            host_text = _encode_string(host)
            host_text.encode()  # a lone surrogate raises here, as the entry's encode would
        except (ValueError, UnicodeEncodeError):
            return None
        end = f'"time":"{time}"}}'
        _LAST_SHARED = (host, at, host_text, end)
    return (
        f'{{"credentials_digest":"{credentials_digest.hex()}",',
        f'"epoch":{epoch},"generation":{generation},"host":{host_text},',
        end,
    )


#: The host, time, host's text and last part of the last :func:`_shared_text` (one
#: slot, replaced whole, so a thread never sees one call's text with another's values).
_LAST_SHARED: tuple[str | None, datetime | None, str, str] = (None, None, "", "")


def _decode_fast(raw: bytes) -> LineageEntry | None:
    """The entry, or None if ``raw`` (exact ``bytes``) is not exactly a canonical entry."""
    try:
        # The C scanner json.loads ends in, called directly: the whole text must be one
        # value (no whitespace around it either, which the re-encode below refuses anyway).
        text = raw.decode("utf-8")
        document, end = _scan_json(text, 0)
    except (ValueError, RecursionError, StopIteration):  # also UnicodeDecodeError
        return None
    if end != len(text) or type(document) is not dict:
        return None
    keys = document.keys()
    if keys != _ENTRY_FIELDS and keys != _REPEATED_ENTRY_FIELDS:
        return None
    repeats = document.get("repeats", 0)
    seq, epoch, generation = document["seq"], document["epoch"], document["generation"]
    # Spelled out rather than any() over generators: this runs once per entry received.
    if not (
        type(seq) is int
        and type(epoch) is int
        and type(generation) is int
        and type(repeats) is int
        and seq >= 0
        and epoch >= 0
        and generation >= 0
        and repeats >= 0
        and type(document["prev"]) is str
        and type(document["time"]) is str
        and type(document["host"]) is str
        and type(document["kind"]) is str
        and type(document["detail"]) is str
        and type(document["data_digest"]) is str
        and type(document["credentials_digest"]) is str
    ):
        return None
    kind = _KINDS.get(document["kind"])
    if kind is None or ("repeats" in document and repeats < 1):
        return None
    try:
        moment = datetime.fromisoformat(document["time"])
        prev = bytes.fromhex(document["prev"])
        data_digest = bytes.fromhex(document["data_digest"])
        credentials = bytes.fromhex(document["credentials_digest"])
    except ValueError:
        return None
    if len(prev) not in (0, 32) or len(data_digest) != 32 or len(credentials) != 32:
        return None
    text = document["time"]
    if moment.tzinfo is UTC and _CANONICAL_TIME(text) is not None:
        # The re-encode below would format the time again (datetime's isoformat: about
        # 13k instructions, a seventh of a decode) only to compare it with this text.
        # A text of this shape that fromisoformat read is exactly what _format_utc
        # writes for the time read (fixed-width fields, milliseconds, "Z": one text per
        # time), so it is handed to the re-encode through _format_utc's slot. Any other
        # text is formatted and compared as before.
        global _LAST_FORMATTED
        _LAST_FORMATTED = (moment, text)
    # Built by the builder append_all uses (gateway/_slots.py): the frozen dataclass's
    # keyword __init__ sets each field through object.__setattr__ (about 18k
    # instructions an entry, a sixth of its decode), and each slot's own setter called
    # in turn about 3k more than the builder's stores. The values are those checked
    # above; __init__ checks nothing. Its bytes are ``raw`` itself (kept only if they
    # are what the entry encodes to), its leaf hash not computed yet.
    entry = _new_entry(
        seq,
        prev,
        moment,
        sys.intern(document["host"]),  # a few hosts record every entry
        kind,
        epoch,
        generation,
        data_digest,
        credentials,
        document["detail"],
        repeats,
        raw,
        None,
    )
    try:
        again = entry._encode()
    except (ValueError, UnicodeEncodeError):  # a naive or far time, a lone surrogate
        return None
    return entry if again == raw else None


def _explain_refusal(raw: bytes) -> None:
    """Raise the precise LineageError for bytes the fast path refused (the strict parser
    of every other decoder: hostile JSON, wrong types, non-canonical forms)."""
    what = "lineage entry"
    document = load_json(raw, error=LineageError, what=what)
    fields = (
        _REPEATED_ENTRY_FIELDS
        if isinstance(document, dict) and "repeats" in document
        else _ENTRY_FIELDS
    )
    document = _strict_json(raw, fields, what)
    for name in sorted(document):
        _field(document, name, int if name in _INT_FIELDS else str, what)
    try:
        EntryKind(document["kind"])
        parse_time(document["time"])
    except ValueError as exc:
        raise LineageError(f"{what}: {exc}") from exc
    for name in ("data_digest", "credentials_digest"):
        _hex(document, name, what)
    _hex(document, "prev", what, empty_ok=True)
    if "repeats" in document and document["repeats"] < 1:
        raise LineageError(f"{what}: repeats must be at least 1 when present")


_set = object.__setattr__


class _EncodedOnce:
    """Holds an entry's canonical bytes and leaf hash once computed; not fields. None
    (set by appending and decoding) or unset (an entry built by its constructor) until
    computed: reading an unset slot raises, and an exception per entry was a tenth of
    an append."""

    __slots__ = ("_leaf", "_raw")
    _raw: bytes | None
    _leaf: bytes | None


@dataclass(frozen=True, slots=True, kw_only=True)
class LineageEntry(_EncodedOnce):
    seq: int
    prev: bytes  #: leaf hash of the previous entry; empty for the first
    time: datetime
    host: str
    kind: EntryKind
    epoch: int
    generation: int
    data_digest: bytes
    credentials_digest: bytes
    detail: str = ""
    #: How many more times this same event happened in consecutive cycles before ``time``
    #: and ``generation`` (the last occurrence): repeats are counted, not copied.
    repeats: int = 0

    def encode(self) -> bytes:
        # Entries are immutable, so their bytes are computed once: appends and wire
        # encoding would otherwise re-encode the whole history every time.
        try:
            raw = self._raw
        except AttributeError:
            raw = None
        if raw is None:
            raw = self._encode()
            object.__setattr__(self, "_raw", raw)
        return raw

    def _encode(self) -> bytes:
        # The canonical JSON of the entry (sorted keys, no spaces, UTF-8), written out
        # field by field: the same bytes as canonical_json(document) (a test holds the two
        # together), at a fraction of the cost, since every decode re-encodes to check.
        repeats = f'"repeats":{self.repeats},' if self.repeats else ""
        return (
            f'{{"credentials_digest":"{self.credentials_digest.hex()}",'
            f'"data_digest":"{self.data_digest.hex()}",'
            f'"detail":{_encode_string(self.detail)},"epoch":{self.epoch},'
            f'"generation":{self.generation},"host":{_encode_string(self.host)},'
            f'"kind":"{self.kind._value_}","prev":"{self.prev.hex()}",{repeats}'
            f'"seq":{self.seq},"time":"{_format_utc(self.time)}"}}'
        ).encode()

    def document(self) -> dict[str, Any]:
        """The entry as a JSON document (for people and tests; :meth:`encode` is the form)."""
        document: dict[str, Any] = {
            "seq": self.seq,
            "prev": self.prev.hex(),
            "time": format_time(self.time),
            "host": self.host,
            "kind": self.kind.value,
            "epoch": self.epoch,
            "generation": self.generation,
            "data_digest": self.data_digest.hex(),
            "credentials_digest": self.credentials_digest.hex(),
            "detail": self.detail,
        }
        if self.repeats:
            document["repeats"] = self.repeats
        return document

    @classmethod
    def decode(cls, raw: bytes) -> LineageEntry:
        """The entry in ``raw``, which must be exactly its canonical form.

        Linear in ``len(raw)``, which is bounded first: one C-level JSON parse, type checks
        per field, and one re-encode compared with ``raw`` (which refuses repeated or
        unknown members, escapes written another way, non-canonical numbers and times,
        lone surrogates: everything that would give one entry two hashes). Bytes the fast
        path refuses go through the strict parser, only to say precisely what is wrong."""
        if type(raw) is bytes and len(raw) <= ENTRY_MEMO_MAX_BYTES:
            return _remembered_entry(raw)
        return cls._decode(raw)

    @classmethod
    def stored(cls, raw: bytes) -> LineageEntry:
        """The entry in ``raw``, read from this host's own store, decoded when one of its
        fields is first read (:meth:`decode` then, which raises LineageError for bytes
        that are not a canonical entry).

        Only for bytes this host wrote after decoding them strictly (an object it created,
        a transfer it verified and stored): a stored object is decoded at every read that
        its memos miss, and its history is most of it, while a cycle needs none of the
        old entries' fields: their bytes (the object's encoding), the last one's leaf
        hash (what the next entry links to), their count (the next ``seq``). Encoding and
        hashing use the bytes as they are, so a lazily decoded entry encodes and hashes
        exactly as a decoded one; once decoded it is a LineageEntry equal to it field by
        field (:class:`_StoredEntry`). Bytes a peer sent go through :meth:`decode`
        (bounded, refused at the edge)."""
        if type(raw) is not bytes or len(raw) > MAX_ENTRY_BYTES:
            return cls.decode(raw)
        return _new_stored(raw)

    @classmethod
    def _decode(cls, raw: bytes) -> LineageEntry:
        what = "lineage entry"
        if len(raw) > MAX_ENTRY_BYTES:
            raise LineageError(f"{what} is {len(raw)} bytes; at most {MAX_ENTRY_BYTES}")
        entry = _decode_fast(raw if type(raw) is bytes else bytes(raw))
        if entry is None:
            _explain_refusal(raw)
            raise LineageError(f"{what} is not in canonical form (sorted keys, no spaces)")
        return entry

    def leaf_hash(self) -> bytes:
        try:
            leaf = self._leaf
        except AttributeError:
            leaf = None
        if leaf is None:
            leaf = merkle.leaf_hash(self.encode())
            object.__setattr__(self, "_leaf", leaf)
        return leaf

    def same_event(self, other: LineageEntry) -> bool:
        """The same thing recorded again: everything but time, generation and position.

        The fields that differ from one cycle's last entry to the next (the data's
        digest after a write, the summary) are compared first: every cycle asks this of
        its last entry and the one before (Compaction.folded)."""
        return (
            self.data_digest == other.data_digest
            and self.detail == other.detail
            and self.kind is other.kind
            and self.host == other.host
            and self.epoch == other.epoch
            and self.credentials_digest == other.credentials_digest
        )


class _StoredEntry(LineageEntry):
    """An entry made by :meth:`LineageEntry.stored`: its bytes, its fields unset until
    one is first read. That read (or ==, hash, repr, a copy) decodes the bytes, sets
    every field and makes the entry a plain LineageEntry, so that it is then one in
    every way (dataclass equality asks for the same class) and later reads are slot
    reads. The hook is on this class only: on LineageEntry every attribute read went
    through it (about 300 instructions, and CPython cannot specialize such a read),
    decoded and appended entries' reads included."""

    __slots__ = ()

    if not TYPE_CHECKING:  # mypy keeps checking attribute names on entries

        def __getattr__(self, name: str) -> Any:
            # Called only for a slot that is not set: the fields, until decoded.
            if name not in _FIELD_NAMES:
                raise AttributeError(name)
            return getattr(self._decoded(), name)

    def _decoded(self) -> LineageEntry:
        """This entry, decoded (LineageError for bytes that are not a canonical entry)."""
        if type(self) is not _StoredEntry:  # decoded by another reader meanwhile
            return self
        decoded = LineageEntry.decode(cast(bytes, self._raw))  # stored() always sets it
        for field in _FIELD_NAMES:
            _set(self, field, getattr(decoded, field))
        _set(self, "__class__", LineageEntry)  # last: every field is set by then
        return self

    def same_event(self, other: LineageEntry) -> bool:
        """:meth:`LineageEntry.same_event`, from the two encodings when ``other``'s is
        known (an appended entry's is, from its append): each cycle whose object was
        read from the store asks this of its last entry, and decoding it (a JSON parse
        and a re-encode) was the one entry decode such a cycle made. Both are canonical
        (this host wrote these bytes, after a strict decode: see :meth:`stored`), whose
        keys are sorted, so the fields compared are two spans of each: the text before
        ``"generation"`` (credentials and data digests, detail, epoch) and the text from
        ``"host"`` to ``"prev"`` (host, kind). A quote inside a string is escaped, so
        the first such key in the text is the field's own; equal texts are equal values
        and, the encoding being a function of the values, only they."""
        mine = self._raw
        theirs = getattr(other, "_raw", None) if type(other) is LineageEntry else None
        if type(mine) is not bytes or type(theirs) is not bytes:
            return self._decoded().same_event(other)
        return _event_spans(mine) == _event_spans(theirs)

    def __eq__(self, other: object) -> bool:
        return self._decoded() == other

    def __hash__(self) -> int:
        return hash(self._decoded())

    def __repr__(self) -> str:
        return repr(self._decoded())

    def __reduce_ex__(self, protocol: SupportsIndex) -> Any:
        return self._decoded().__reduce_ex__(protocol)


class _StoredDraft(_EncodedOnce):
    """The twin of :class:`_StoredEntry` with no frozen ``__setattr__`` (the same base and
    slots, so the same layout): a stored entry is made as one, its two slots set by plain
    stores, then given its class, as gateway/_slots.py builds values (through
    ``object.__setattr__`` each entry cost about 2k instructions more, and a record read
    back from the store makes one per entry it carries)."""

    __slots__ = LineageEntry.__slots__


def _new_stored(raw: bytes) -> LineageEntry:
    """``LineageEntry.stored(raw)``."""
    if type(raw) is not bytes or len(raw) > MAX_ENTRY_BYTES:
        return LineageEntry.stored(raw)
    entry = _new(_StoredDraft)
    entry._raw = raw
    entry._leaf = None
    entry.__class__ = _StoredEntry  # type: ignore[assignment]
    return entry  # type: ignore[return-value]


_new = object.__new__


def stored_entries(raws: Sequence[bytes]) -> list[LineageEntry]:
    """``list(map(LineageEntry.stored, raws))`` (a record read back from the store)."""
    return list(map(_new_stored, raws))


def stored_lineage(
    entries: list[LineageEntry],
    *,
    checkpoints: tuple[dsse.Envelope, ...],
    arrivals: tuple[dsse.Envelope, ...],
    base: dsse.Envelope | None,
) -> Lineage:
    """``Lineage(entries=tuple(entries), checkpoints=..., arrivals=..., base=...)`` for
    the fresh list ``entries`` (:func:`stored_entries`: a record this host stored), its
    log and value built as ``__post_init__`` builds them (the list becomes the log's),
    without the dataclass's keyword ``__init__``."""
    payload = base.payload if base is not None else b""
    log = _Log(Base.decode(payload) if base is not None else None, payload)
    log.entries = entries
    return _built_lineage(Entries(log, len(entries)), checkpoints, arrivals, base)


def _event_spans(raw: bytes) -> tuple[bytes, bytes]:
    """The spans of an entry's canonical encoding that :meth:`LineageEntry.same_event`
    compares (see :meth:`_StoredEntry.same_event`): up to ``,"generation":``, and from
    ``,"host":`` to ``,"prev":``."""
    host = raw.find(b',"host":')
    return raw[: raw.find(b',"generation":')], raw[host : raw.find(b',"prev":', host)]


#: Decoded entries remembered by their exact bytes, and the largest entry remembered.
#: An object that comes back, or a record read back after it was written, carries
#: entries decoded here before: each costs a dict lookup instead of a JSON parse and
#: re-encode (about 13 us), which the soak showed growing with every hop. Entries are
#: immutable and decoding is a pure function of the bytes, so a hit is exactly what
#: decoding would return; refusals are never remembered. Worst case about 16 MiB of
#: bytes plus their decoded values; typical entries are 250-470 bytes. At the default
#: compaction policy (32-128 carried entries) the soak's 200 objects carry 6-26k entries
#: (measured: 42 per object on average after 10 minutes), which this holds; at the old
#: 128-512 they carried about 64k and the hit rate fell to 62-69% (an LRU cycled through
#: by a larger working set hits nothing).
ENTRY_MEMO_SIZE = 16384
ENTRY_MEMO_MAX_BYTES = 1024


#: An entry's fields (what :meth:`LineageEntry.stored` leaves unset until one is read).
_FIELD_NAMES = tuple(field.name for field in dataclasses.fields(LineageEntry))

#: Field readers for verify_chain's whole-list checks (C calls, mapped over the entries).
_raw_of = operator.attrgetter("_raw")
_seq_of = operator.attrgetter("seq")
_prev_of = operator.attrgetter("prev")
_epoch_of = operator.attrgetter("epoch")
_kind_of = operator.attrgetter("kind")
_host_of = operator.attrgetter("host")
#: Sets an entry's remembered leaf hash: the slot's own descriptor, as object.__setattr__
#: does (a frozen dataclass's __setattr__ refuses), callable by map() with no frame.
_remember_leaf: Callable[[LineageEntry, bytes], None] = vars(_EncodedOnce)["_leaf"].__set__


@functools.lru_cache(maxsize=ENTRY_MEMO_SIZE)
def _remembered_entry(raw: bytes) -> LineageEntry:
    return LineageEntry._decode(raw)


def forget_decoded_entries() -> None:
    """Empty the entry and base memos (benchmarks timing a cold decode and verify; tests)."""
    _remembered_entry.cache_clear()
    _BASE_MEMO.clear()


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkpoint:
    """What a host vouches for when an object leaves it: the first ``size`` entries, and
    that it hands the object to ``to`` in ``migration`` (the signed record of a departure,
    which the next receiver counts hops from: the sender cannot unsay it later).

    ``credentials_digest`` repeats what the last entry covered records (the grants the
    object left with), so that the narrowing rule (gateway.custody) can still be checked
    once compaction has moved that entry to an archive."""

    object_id: str
    host: str
    epoch: int
    size: int
    root: bytes
    issued_at: datetime
    to: str
    migration: str
    credentials_digest: bytes = b""
    #: ADR 0010: the custody commitment C_k of the handoffs before this departure, and
    #: this departure's hop number (k + 1); empty / 0 in checkpoints of earlier formats.
    custody: bytes = b""
    hops: int = 0

    def encode(self) -> bytes:
        document = {
            "object_id": self.object_id,
            "host": self.host,
            "epoch": self.epoch,
            "size": self.size,
            "root": self.root.hex(),
            "issued_at": format_time(self.issued_at),
            "to": self.to,
            "migration": self.migration,
            "credentials_digest": self.credentials_digest.hex(),
        }
        if not self.credentials_digest:
            del document["credentials_digest"]  # a checkpoint of the first format, as signed
        if self.custody:
            document["custody"] = self.custody.hex()
            document["hops"] = self.hops
        return canonical_json(document)

    @classmethod
    def decode(cls, raw: bytes) -> Checkpoint:
        what = "checkpoint"
        fast = _decode_checkpoint_fast(cls, raw)
        if fast is not None:
            return fast
        # Refused by the fast path: the strict parse says precisely why (or, for bytes the
        # fast path does not know, accepts them as it always did).
        probe = load_json(raw, error=LineageError, what=what)
        legacy = isinstance(probe, dict) and set(probe) == _CHECKPOINT_FIELDS_V1
        committed = isinstance(probe, dict) and set(probe) == _CHECKPOINT_FIELDS_V3
        # Parsed once (a receiver decodes one checkpoint per hop of every object).
        fields = (
            _CHECKPOINT_FIELDS_V1
            if legacy
            else _CHECKPOINT_FIELDS_V3
            if committed
            else _CHECKPOINT_FIELDS
        )
        document = _strict_document(probe, raw, fields, what)
        return cls._from_document(document, what, legacy=legacy)

    @classmethod
    def _from_document(cls, document: dict[str, Any], what: str, *, legacy: bool) -> Checkpoint:
        try:
            issued_at = parse_time(_field(document, "issued_at", str, what))
        except ValueError as exc:
            raise LineageError(f"{what}: {exc}") from exc
        if "hops" in document and not 1 <= _field(document, "hops", int, what) <= MAX_HOPS:
            # A hop number is a departure's index + 1 (ADR 0010); archived handoffs (step 2)
            # no longer count against MAX_HANDOFFS, so it has a bound of its own.
            raise LineageError(f"{what}: hops must be between 1 and {MAX_HOPS}")
        # The receiver and the migration are the signer's words, shown to operators and
        # matched against arrivals: held to what an id is before anything reads them.
        to = _field(document, "to", str, what)
        migration = _field(document, "migration", str, what)
        try:
            HostId.parse(to)
            check_migration_id(migration)
        except GatewayError as exc:
            raise LineageError(f"{what}: {exc.reason}") from exc
        # Interned: an object's checkpoints name the same few hosts and one object id,
        # and verified checkpoints are kept (VerifiedPrefixes).
        return cls(
            object_id=sys.intern(_field(document, "object_id", str, what)),
            host=sys.intern(_field(document, "host", str, what)),
            epoch=_field(document, "epoch", int, what),
            size=_field(document, "size", int, what),
            root=_hex(document, "root", what),
            issued_at=issued_at,
            to=sys.intern(to),
            migration=migration,
            credentials_digest=b""
            if legacy
            else _hex(document, "credentials_digest", what, empty_ok=True),
            custody=_hex(document, "custody", what) if "custody" in document else b"",
            hops=_field(document, "hops", int, what) if "hops" in document else 0,
        )


def _decode_checkpoint_fast(cls: type[Checkpoint], raw: bytes) -> Checkpoint | None:
    """The checkpoint in ``raw`` if it is exactly a canonical checkpoint of one of the
    three formats, else None (then the strict parser decodes it, for its message).

    A receiver decodes one checkpoint per departure (bench_lineage.py, P4). This is
    Checkpoint._from_document's checks on the C scanner's document, field by field,
    and one re-encoding by :func:`_checkpoint_bytes` compared with ``raw`` instead of
    canonical_json: those bytes are canonical_json of the document when the field types
    are right (a test holds the two together), and the hex fields and the time are
    written from their decoded values, so the comparison also refuses what _from_hex
    (upper case, spaces) and parse_time (any other spelling of the time) refuse. What
    load_json's hooks refuse cannot pass either: a repeated member or any other
    spelling does not re-encode to ``raw``, a lone surrogate does not encode, and
    numbers are held to its digit limit below."""
    try:
        text = raw.decode("utf-8")
        document, end = _scan_json(text, 0)
    except (ValueError, RecursionError, StopIteration):  # Unicode errors too
        return None
    if end != len(text) or type(document) is not dict:
        return None
    keys = document.keys()
    committed = keys == _CHECKPOINT_FIELDS_V3
    legacy = not committed and keys == _CHECKPOINT_FIELDS_V1
    if not (committed or legacy or keys == _CHECKPOINT_FIELDS):
        return None
    epoch, size, hops = document["epoch"], document["size"], document.get("hops", 1)
    credentials = "" if legacy else document["credentials_digest"]
    custody = document["custody"] if committed else ""
    object_id, host, to = document["object_id"], document["host"], document["to"]
    migration, issued_at, root = document["migration"], document["issued_at"], document["root"]
    # Spelled out rather than any() over generators: this runs once per checkpoint.
    if not (
        type(epoch) is int
        and type(size) is int
        and type(hops) is int
        and 0 <= epoch < _INT_LIMIT
        and 0 <= size < _INT_LIMIT
        and 1 <= hops <= MAX_HOPS
        and type(object_id) is str
        and type(host) is str
        and type(to) is str
        and type(migration) is str
        and type(issued_at) is str
        and type(root) is str
        and type(credentials) is str
        and type(custody) is str
    ):
        return None
    try:
        HostId.parse(to)
        check_migration_id(migration)
        checkpoint = cls(
            object_id=sys.intern(object_id),
            host=sys.intern(host),
            epoch=epoch,
            size=size,
            root=bytes.fromhex(root),
            issued_at=datetime.fromisoformat(issued_at),
            to=sys.intern(to),
            migration=migration,
            credentials_digest=bytes.fromhex(credentials),
            custody=bytes.fromhex(custody),
            hops=hops if committed else 0,
        )
    except (GatewayError, ValueError):
        return None
    if (
        len(checkpoint.root) != 32
        or len(checkpoint.credentials_digest) not in ((0, 32) if not legacy else (0,))
        or len(checkpoint.custody) != (32 if committed else 0)
    ):
        return None
    try:
        again = _checkpoint_bytes(checkpoint, legacy=legacy, committed=committed)
    except (ValueError, UnicodeEncodeError):  # a naive or far time, a lone surrogate
        return None
    return checkpoint if again == raw else None


def _checkpoint_bytes(checkpoint: Checkpoint, *, legacy: bool, committed: bool) -> bytes:
    """canonical_json of the document of ``checkpoint`` in its format (``legacy``: the
    first, with no grants recorded; ``committed``: with the custody commitment; else the
    second, whose recorded grants may be empty), written out field by field in sorted
    key order."""
    c = checkpoint
    credentials = "" if legacy else f'"credentials_digest":"{c.credentials_digest.hex()}",'
    custody = f'"custody":"{c.custody.hex()}",' if committed else ""
    hops = f'"hops":{c.hops},' if committed else ""
    return (
        f'{{{credentials}{custody}"epoch":{c.epoch},{hops}"host":{_encode_string(c.host)},'
        f'"issued_at":"{_format_utc(c.issued_at)}","migration":{_encode_string(c.migration)},'
        f'"object_id":{_encode_string(c.object_id)},"root":"{c.root.hex()}",'
        f'"size":{c.size},"to":{_encode_string(c.to)}}}'
    ).encode()


class _FoldedOnce:
    """Holds a base's folded compact ranges once computed; not a field."""

    __slots__ = ("_frontiers",)
    _frontiers: tuple[merkle.CompactRange, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Base(_FoldedOnce):
    """The signed checkpoint a host writes when it compacts: the first ``size`` entries
    moved to an archive, and what the object keeps instead (ADR 0007).

    * ``root``/``size``: the tree head of the archived prefix; the archive is checked
      against it, and every later checkpoint's root is computed from ``spine`` and the
      entries the object still carries.
    * ``spine``: compact ranges (gateway.merkle) cutting the prefix at every archived
      departure: range *k* covers the leaves from departure *k-1* (or 0) to departure
      *k*, the last one from the last archived departure to ``size``. Folding them
      rebuilds each departure's tree head, which must equal the root that departure's
      sender signed: the compacting host cannot alter anything another host signed.
    * ``head``/``epoch``: the leaf hash and epoch of entry ``size - 1``, which the first
      carried entry links to.
    * ``creator``: the host that created the object (entry 0's host), which must have
      signed the first departure, or be the compacting host if there is none yet.
    * ``cuts``: the sizes of the archived departures (where the spine is cut).
    * ``archived``: SHA-256 of the archived entries, as the archive stores them.
    """

    object_id: str
    host: str
    epoch: int
    size: int
    root: bytes
    head: bytes
    issued_at: datetime
    creator: str
    cuts: tuple[int, ...]
    spine: tuple[tuple[bytes, ...], ...]
    archived: bytes

    def encode(self) -> bytes:
        return canonical_json(
            {
                "object_id": self.object_id,
                "host": self.host,
                "epoch": self.epoch,
                "size": self.size,
                "root": self.root.hex(),
                "head": self.head.hex(),
                "issued_at": format_time(self.issued_at),
                "creator": self.creator,
                "cuts": list(self.cuts),
                "spine": [[h.hex() for h in part] for part in self.spine],
                "archived": self.archived.hex(),
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> Base:
        """The base in ``raw`` (strict JSON, every range's shape checked). Remembered by
        its exact bytes (:data:`BASE_MEMO_BYTES`): a base is decoded from the same bytes
        each time its lineage is read, sent or verified until the next compaction, and
        its cost grows with the departures it cuts at (measured at hop 100: a third of a
        migration's CPU, four decodes of 2-10 ms). A hit is exactly what decoding would
        return (pure function of the bytes, immutable result); refusals are never
        remembered."""
        if type(raw) is bytes:
            base: Base = _BASE_MEMO.get(raw, cls._decode)
            return base
        return cls._decode(raw)

    @classmethod
    def _decode(cls, raw: bytes) -> Base:
        what = "lineage base"
        document = _strict_json(raw, _BASE_FIELDS, what)
        try:
            issued_at = parse_time(_field(document, "issued_at", str, what))
        except ValueError as exc:
            raise LineageError(f"{what}: {exc}") from exc
        spine = _field(document, "spine", list, what)
        cuts = _field(document, "cuts", list, what)
        size = _field(document, "size", int, what)
        # One range per archived departure plus the last; each at most two hashes per
        # level of a 2**64 tree. Bounded before anything is converted.
        if len(cuts) > MAX_HANDOFFS or len(spine) != len(cuts) + 1:
            raise LineageError(
                f"{what} cuts its prefix {len(cuts)} times into {len(spine)} ranges; "
                f"expected one range more than cuts, at most {MAX_HANDOFFS} cuts"
            )
        previous = 0
        for cut in cuts:
            if type(cut) is not int or not previous < cut <= size:
                raise LineageError(f"{what}: cuts must increase, between 1 and its size")
            previous = cut
        parts: list[tuple[bytes, ...]] = []
        for part in spine:
            if not isinstance(part, list) or len(part) > 128:
                raise LineageError(f"{what}: each spine range is a list of at most 128 hashes")
            parts.append(
                tuple(_from_hex(h if isinstance(h, str) else "", "spine", what) for h in part)
            )
        if size < 1:
            raise LineageError(f"{what} covers no entries")
        base = cls(
            object_id=_field(document, "object_id", str, what),
            host=_field(document, "host", str, what),
            epoch=_field(document, "epoch", int, what),
            size=size,
            root=_hex(document, "root", what),
            head=_hex(document, "head", what),
            issued_at=issued_at,
            creator=_field(document, "creator", str, what),
            cuts=tuple(cuts),
            spine=tuple(parts),
            archived=_hex(document, "archived", what),
        )
        base.frontiers()  # the shape of every range, checked once here
        return base

    def frontiers(self) -> tuple[merkle.CompactRange, ...]:
        """The compact range of leaves [0, cut) at every cut, then [0, size): the tree
        heads they give are compared with signed ones by verify_lineage (only the shape
        of each range is checked here). Folded once per base (the base is immutable);
        callers copy a range before extending it."""
        try:
            return self._frontiers
        except AttributeError:
            pass
        folded = merkle.CompactRange()
        out: list[merkle.CompactRange] = []
        for end, part in zip((*self.cuts, self.size), self.spine, strict=True):
            try:
                folded.extend(merkle.CompactRange(folded.end, end, part))
            except MerkleProofError as exc:
                raise LineageError(f"lineage base: {exc.reason}") from exc
            out.append(folded.copy())
        frontiers = tuple(out)
        object.__setattr__(self, "_frontiers", frontiers)
        return frontiers

    def frontier(self) -> merkle.CompactRange:
        return self.frontiers()[-1]


class _BytesMemo:
    """Values decoded from bytes, remembered by those exact bytes, least recently used
    first out, bounded by the bytes remembered (not a count: a base's size grows with the
    departures it cuts at, up to :data:`MAX_HANDOFFS` of them) and, with ``owner``, by
    ``per_owner`` values per owner (the object a base belongs to): each compaction makes
    a new base and the old one is dead once the object moved on, so without this bound
    the memo filled with superseded bases, paced by history, not by the objects held
    (the soak, docs/benchmarks.md "RSS under the soak"). Thread-safe (decoding runs on
    the event loop and in store worker threads)."""

    def __init__(
        self,
        *,
        max_bytes: int,
        max_item_bytes: int,
        owner: Callable[[Any], str] | None = None,
        per_owner: int = 2,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_item_bytes = max_item_bytes
        self._owner = owner
        self._per_owner = per_owner
        self._items: OrderedDict[bytes, Any] = OrderedDict()
        #: owner -> its remembered bytes, oldest first (a few per owner)
        self._owned: dict[str, list[bytes]] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, raw: bytes, decode: Callable[[bytes], Any]) -> Any:
        with self._lock:
            value = self._items.get(raw)
            if value is not None:
                self._items.move_to_end(raw)
                self.hits += 1
                return value
            self.misses += 1
        value = decode(raw)  # raises for refused bytes: nothing is remembered
        if len(raw) > self.max_item_bytes:
            return value
        with self._lock:
            if raw not in self._items:
                self._items[raw] = value
                self._bytes += len(raw)
                if self._owner is not None:
                    owned = self._owned.setdefault(self._owner(value), [])
                    owned.append(raw)
                    while len(owned) > self._per_owner:
                        self._forget(owned[0])
                while self._bytes > self.max_bytes:
                    self._forget(next(iter(self._items)))
        return value

    def _forget(self, raw: bytes) -> None:
        value = self._items.pop(raw)
        self._bytes -= len(raw)
        if self._owner is not None:
            owner = self._owner(value)
            owned = self._owned[owner]
            owned.remove(raw)
            if not owned:
                del self._owned[owner]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._owned.clear()
            self._bytes = 0

    def size(self) -> tuple[int, int]:
        """(values, bytes) remembered."""
        with self._lock:
            return len(self._items), self._bytes


#: Decoded bases remembered, by the bytes of their payloads: at most this many payload
#: bytes (the decoded values hold the same hashes as bytes, about as much again), and
#: no payload over :data:`BASE_MEMO_MAX_ITEM_BYTES`. 8 MiB holds the bases of a few
#: hundred well-travelled objects (a base cut at 100 departures is about 30 KB).
BASE_MEMO_BYTES = 8 << 20
BASE_MEMO_MAX_ITEM_BYTES = 1 << 20
#: Bases remembered per object: its newest (what its lineage carries now) and the one
#: before (a copy still being sent or verified while the holder compacts). Older ones
#: are superseded: a compaction replaces the base, and no live copy carries them.
BASE_MEMO_PER_OBJECT = 2
_BASE_MEMO = _BytesMemo(
    max_bytes=BASE_MEMO_BYTES,
    max_item_bytes=BASE_MEMO_MAX_ITEM_BYTES,
    owner=lambda base: base.object_id,
    per_owner=BASE_MEMO_PER_OBJECT,
)


#: The compact range of no leaves, the start of every log without a base (copied, never
#: changed).
_NO_LEAVES = merkle.CompactRange()


class _Log:
    """The entries of a lineage, shared by the successive values that appending makes.

    A :class:`Lineage` sees the first ``count`` entries of its log. Appending to the
    newest value appends in place (the older values still see only their prefix), so an
    object recording one entry per cycle costs O(1) per entry, not a copy of its history.
    ``frontier`` is the compact range of leaves [0, start + len(entries)), kept up to date
    with the appends, so the tree head of the newest value is O(log n), not O(n).
    """

    __slots__ = (
        "base",
        "base_payload",
        "entries",
        "frontier",
        "heads",
        "parts",
        "start",
        "start_frontier",
        "wire",
        "wire_ends",
        "wire_ids",
    )

    def __init__(self, base: Base | None, base_payload: bytes) -> None:
        self.base = base
        self.base_payload = base_payload
        self.start = base.size if base is not None else 0
        # Only ever copied, never changed: a log with no base shares one empty range.
        self.start_frontier = base.frontier() if base is not None else _NO_LEAVES
        self.entries: list[LineageEntry] = []
        #: A copy of ``start_frontier`` extended by the entries hashed so far, made when
        #: a tree head is first asked for (most logs never are: a cycle's values, a
        #: record read back from the store).
        self.frontier: merkle.CompactRange | None = None
        #: The entries' at-rest encoding as the pieces it joins, grown as they are
        #: encoded (gateway.wire fills it): two an entry, its field's tag and length
        #: and the entry's own bytes (the very object the entry holds, not a copy: the
        #: log held each entry's bytes twice), so ``b"".join(wire[: 2 * (i + 1)])`` is
        #: ``wire_ends[i]`` bytes and encodes entries [0, i]. Entries are only ever
        #: appended to a log, so a prefix once encoded never changes and an object
        #: written every cycle encodes only its new entries.
        self.wire: list[bytes] = []
        self.wire_ends: list[int] = []
        #: The entries' ids (their leaf hashes, gateway.stores.PutEntries), joined, grown
        #: as the log's encoding is (gateway.wire fills it): ``wire_ids[: 32 * i]`` are
        #: those of entries [0, i), so a cycle's put joins only its new entries' ids.
        self.wire_ids = bytearray()
        #: Tree heads over the first n entries of the whole history (archived ones
        #: included) by n, as verify_lineage computed them from the entries: the entries
        #: of a log never change, so neither do these.
        self.heads: dict[int, bytes] = {}
        #: The encoding parts of the object this log is the history of, as gateway.wire
        #: last built them, with the values they were built from (it checks those by
        #: identity before using them): an object's successive values share its log, so
        #: the object's next write finds them here whatever else was encoded since.
        self.parts: Any = None

    def add(self, entry: LineageEntry) -> None:
        # Hashing waits until a tree head is asked for (frontier_at): decoding a lineage
        # only to read or re-encode it costs no hashes.
        self.entries.append(entry)

    def frontier_at(self, count: int) -> merkle.CompactRange:
        """The compact range of leaves [0, start + count)."""
        frontier = self.frontier
        # append_leaves, not append per leaf: a freshly decoded lineage (every source
        # sealing a departure) builds its whole tree here, level by level.
        if count == len(self.entries):
            if frontier is None:
                frontier = self.frontier = self.start_frontier.copy()
            frontier.append_leaves(
                [entry.leaf_hash() for entry in self.entries[frontier.end - self.start :]]
            )
            return frontier
        built = self.start_frontier.copy()
        built.append_leaves([entry.leaf_hash() for entry in self.entries[:count]])
        return built


#: ``LineageEntry(...)`` with its encoding and leaf hash (None: not computed yet), by
#: position, for the entries every append builds (gateway/_slots.py).
_new_entry = builder(
    LineageEntry,
    "seq",
    "prev",
    "time",
    "host",
    "kind",
    "epoch",
    "generation",
    "data_digest",
    "credentials_digest",
    "detail",
    "repeats",
    "_raw",
    "_leaf",
)

#: The bytes of an entry's leaf hash (SHA-256), its id in :attr:`_Log.wire_ids`.
LEAF_HASH_BYTES = 32


def _share_wire(source: _Log, target: _Log, count: int) -> None:
    """Give ``target`` (a new log holding the first ``count`` entries of ``source``) the
    encoding of those entries that ``source`` already has, and their ids: a fold
    rewrites only the last group, so the rest of the history is not encoded again."""
    target.parts = source.parts  # checked value by value by whoever uses them
    ends = source.wire_ends[:count]
    if ends:
        target.wire = source.wire[: 2 * len(ends)]
        target.wire_ends = ends
    ids = source.wire_ids
    if ids:
        target.wire_ids = ids[: LEAF_HASH_BYTES * count]


class Entries(Sequence[LineageEntry]):
    """The entries a lineage carries, oldest first (a read-only view on its log)."""

    __slots__ = ("_count", "_log")

    def __init__(self, log: _Log, count: int) -> None:
        self._log = log
        self._count = count

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> LineageEntry: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[LineageEntry, ...]: ...

    def __getitem__(self, index: int | slice) -> LineageEntry | tuple[LineageEntry, ...]:
        if isinstance(index, slice):
            # Slice the log directly: copying the visible prefix first made every slice
            # O(history) (verify_lineage takes one per checkpoint).
            return tuple(self._log.entries[slice(*index.indices(self._count))])
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError("lineage entry index out of range")
        return self._log.entries[index]

    def __iter__(self) -> Iterator[LineageEntry]:
        entries = self._log.entries
        if self._count == len(entries):
            return iter(entries)
        return itertools.islice(entries, self._count)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str | bytes):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"Entries({self._count} from seq {self._log.start})"


@dataclass(frozen=True, slots=True, kw_only=True)
class Lineage:
    """An object's history. Without a ``base`` it carries every entry from the creation
    on; with one (after compaction) it carries the entries from ``base.size`` on, and the
    signed base stands for the archived prefix (ADR 0007). Sequence numbers, sizes and
    tree heads are always those of the whole history."""

    entries: Sequence[LineageEntry] = ()
    #: One per departure, oldest first, each signed by the host the object left.
    checkpoints: tuple[dsse.Envelope, ...] = ()
    #: One per completed arrival, oldest first: the receiver's signed activation receipt
    #: for the departure of the same index (see gateway.custody).
    arrivals: tuple[dsse.Envelope, ...] = ()
    #: The signed base after compaction (payload :data:`BASE_PAYLOAD_TYPE`), or None.
    base: dsse.Envelope | None = None

    def __post_init__(self) -> None:
        payload = self.base.payload if self.base is not None else b""
        entries = self.entries
        if isinstance(entries, Entries) and entries._log.base_payload == payload:
            return  # the same base: share the log (appends stay O(1))
        log = _Log(Base.decode(payload) if self.base is not None else None, payload)
        log.entries.extend(entries)  # what log.add does per entry, in one call
        object.__setattr__(self, "entries", Entries(log, len(log.entries)))

    def base_claim(self) -> Base | None:
        """The base as the lineage states it, before its signature is checked (for the
        shape of the lineage only; verify_lineage checks it)."""
        return self._log.base

    @property
    def _log(self) -> _Log:
        entries = self.entries
        assert isinstance(entries, Entries)
        return entries._log

    @property
    def start(self) -> int:
        """Sequence number of the first entry carried (0 unless compacted)."""
        return self._log.start

    @property
    def size(self) -> int:
        """Entries in the whole history, archived ones included."""
        return self._log.start + len(self.entries)

    def __len__(self) -> int:
        return self.size

    def entry(self, seq: int) -> LineageEntry | None:
        """Entry ``seq`` if this lineage carries it; None if it is archived."""
        index = seq - self._log.start
        if 0 <= index < len(self.entries):
            return self.entries[index]
        return None

    def leaf_hashes(self) -> list[bytes]:
        """Leaf hashes of the entries carried."""
        return [e.leaf_hash() for e in self.entries]

    def root(self) -> bytes:
        """The tree head over the whole history (archived entries included)."""
        return self._log.frontier_at(len(self.entries)).root()

    def head(self) -> bytes:
        """Leaf hash of the last entry: what the next entry links to."""
        if self.entries:
            return self.entries[-1].leaf_hash()
        base = self.base_claim()
        return base.head if base is not None else b""

    def creator(self) -> str:
        """The host that created the object (as the lineage states it)."""
        if self.start == 0:
            return self.entries[0].host if self.entries else ""
        base = self.base_claim()
        return base.creator if base is not None else ""

    def _epoch(self) -> int:
        if self.entries:
            return self.entries[-1].epoch
        base = self.base_claim()
        return base.epoch if base is not None else 0

    def _with_entries(self, entries: Entries) -> Lineage:
        return Lineage(
            entries=entries, checkpoints=self.checkpoints, arrivals=self.arrivals, base=self.base
        )

    def _appendable(self) -> _Log:
        """The log to append to: this one if this value sees all of it, else a copy."""
        entries = self.entries
        assert isinstance(entries, Entries)  # __post_init__ makes it one
        # Its slots read, not the ``_log`` property and ``__len__``: every cycle appends.
        log, count = entries._log, entries._count
        if count == len(log.entries):
            return log
        copy = _Log(log.base, log.base_payload)
        for entry in log.entries[:count]:
            copy.add(entry)
        _share_wire(log, copy, count)
        return copy

    def append(
        self,
        kind: EntryKind,
        *,
        host: str,
        at: datetime,
        epoch: int,
        generation: int,
        data_digest: bytes,
        credentials_digest: bytes,
        detail: str = "",
    ) -> Lineage:
        return self.append_all(
            ((kind, data_digest, detail),),
            host=host,
            at=at,
            epoch=epoch,
            generation=generation,
            credentials_digest=credentials_digest,
        )

    def append_all(
        self,
        records: Sequence[tuple[EntryKind, bytes, str]],
        *,
        host: str,
        at: datetime,
        epoch: int,
        generation: int,
        credentials_digest: bytes,
    ) -> Lineage:
        """This lineage with one entry per ``(kind, data digest, detail)`` record, in
        order: what appending each in turn gives, as one new value (a cycle records two
        or more entries at once)."""
        log = self._appendable()
        # What LineageEntry(...), the lineage's size and head and log.add do, written
        # out: every cycle appends one entry or more, and this was a tenth of it.
        added, base = log.entries, log.base
        # Each entry's bytes are asked for in the same cycle (the object's encoding, then
        # the next entry's link): written here, with the parts its records share (their
        # credentials, host, epoch, generation and time) written once for all of them.
        # The same text as LineageEntry._encode (tests/test_p5_s36.py holds the two
        # together); fields it cannot write (a naive time, a lone surrogate) are left
        # to it, to raise where they always did.
        shared = _shared_text(host, at, epoch, generation, credentials_digest)
        leaf: bytes | None = None  # the leaf hash of the entry added last, if computed
        for kind, data_digest, detail in records:
            if len(detail) > MAX_DETAIL:
                detail = detail[: MAX_DETAIL - 1] + "…"
            if leaf is not None:
                prev = leaf  # the entry this loop just added
            else:
                prev = added[-1].leaf_hash() if added else (base.head if base is not None else b"")
            seq = log.start + len(added)
            raw = leaf = None
            if shared is not None:
                try:
                    raw = (
                        f'{shared[0]}"data_digest":"{data_digest.hex()}",'
                        f'"detail":{_encode_string(detail)},{shared[1]}'
                        f'"kind":"{kind._value_}","prev":"{prev.hex()}",'
                        f'"seq":{seq},{shared[2]}'
                    ).encode()
                except UnicodeEncodeError:
                    raw = None
                else:
                    # Its leaf hash too: the next entry (this append's, or the next
                    # cycle's first) links to it.
                    leaf = merkle.leaf_hash(raw)
            # raw None: computed when first asked for (encode, leaf_hash)
            added.append(  # log.add
                _new_entry(
                    seq,
                    prev,
                    at,
                    host,
                    kind,
                    epoch,
                    generation,
                    data_digest,
                    credentials_digest,
                    detail,
                    0,
                    raw,
                    leaf,
                )
            )
        return self._on(log)

    def _on(self, log: _Log) -> Lineage:
        """This lineage's value seeing all of ``log`` (appended to from this value): the
        same base, whose log it is, so __post_init__ has nothing to do. Built slot by
        slot (:func:`_built_lineage`, and the view on the log by two stores: Entries is no
        dataclass, its ``__init__`` a Python call), as every cycle appends."""
        entries = _new(Entries)
        entries._log = log
        entries._count = len(log.entries)
        return _built_lineage(entries, self.checkpoints, self.arrivals, self.base)

    def signed_size(self) -> int:
        """Entries covered by a signature (the last checkpoint or the base): entries after
        it are the holder's own and not yet vouched for to anyone."""
        last = Checkpoint.decode(self.checkpoints[-1].payload).size if self.checkpoints else 0
        return max(last, self.start)

    def repeated(self, group: Sequence[LineageEntry]) -> Lineage | None:
        """This lineage with ``group`` (the entries one cycle would append) folded into the
        same group recorded just before, or None if it cannot be.

        Folding rewrites only entries no signature covers yet (the holder's own tail),
        never more than the last group, and only when every entry is the same event
        (:meth:`LineageEntry.same_event`): the last occurrence's time and generation
        replace the previous ones and ``repeats`` goes up by one. The entry before the
        folded group must end an earlier group (or be any non-cycle entry), so a fold
        never joins events from two different kinds of cycle."""
        width = len(group)
        carried = len(self.entries)
        if not width or carried - width < 1:
            return None
        # The cheap refusal first (most cycles differ from the one before: a write, a
        # different rule firing): the signed size decodes the last checkpoint. And first
        # of all the last entries (a cycle's summary), without slicing the group.
        if not self.entries[carried - 1].same_event(group[-1]):
            return None
        previous = self.entries[carried - width :]
        if not all(old.same_event(new) for old, new in zip(previous, group, strict=True)):
            return None
        if self.size - width < self.signed_size() + 1:
            return None
        before = self.entries[carried - width - 1]
        if before.kind in (EntryKind.ACTION_ADMITTED, EntryKind.ACTION_DENIED):
            return None
        log = _Log(self._log.base, self._log.base_payload)
        for entry in self.entries[: carried - width]:
            log.add(entry)
        _share_wire(self._log, log, carried - width)
        for old, new in zip(previous, group, strict=True):
            log.add(
                LineageEntry(
                    seq=log.start + len(log.entries),
                    prev=log.entries[-1].leaf_hash() if log.entries else b"",
                    time=new.time,
                    host=new.host,
                    kind=new.kind,
                    epoch=new.epoch,
                    generation=new.generation,
                    data_digest=new.data_digest,
                    credentials_digest=new.credentials_digest,
                    detail=new.detail,
                    repeats=old.repeats + 1,
                )
            )
        return self._with_entries(Entries(log, len(log.entries)))

    def sealed(
        self,
        *,
        object_id: str,
        host: str,
        epoch: int,
        at: datetime,
        signer: Signer,
        to: str,
        migration: str,
    ) -> Lineage:
        """This lineage with a checkpoint by ``host`` over every entry so far, recording
        its departure to ``to`` in ``migration``, committing to the custody before it
        (ADR 0010)."""
        custody, hops = self._custody_commitment(object_id)
        checkpoint = Checkpoint(
            object_id=object_id,
            host=host,
            epoch=epoch,
            size=self.size,
            root=self.root(),
            issued_at=at,
            to=to,
            migration=migration,
            credentials_digest=self.entries[-1].credentials_digest if self.entries else b"",
            custody=custody,
            hops=hops,
        )
        signed = dsse.seal(checkpoint.encode(), dsse.PayloadType.CHECKPOINT, [signer])
        return Lineage(
            entries=self.entries,
            checkpoints=(*self.checkpoints, signed),
            arrivals=self.arrivals,
            base=self.base,
        )

    def _custody_commitment(self, object_id: str) -> tuple[bytes, int]:
        """(C_k, k + 1) for the next departure k (gateway._custody_chain). From the last
        departure's own commitment when it has one (the holder verified it on arrival:
        O(1) per hop); else recomputed from the first departure."""
        count = len(self.checkpoints)
        if count and len(self.arrivals) >= count:
            previous = Checkpoint.decode(self.checkpoints[-1].payload)
            # hops, not the carried count: older handoffs may be archived (ADR 0010 step 2)
            if previous.custody and previous.hops >= count:
                value = custody_chain.step(
                    previous.custody,
                    self.checkpoints[-1].payload,
                    self.arrivals[count - 1].payload,
                )
                return value, previous.hops + 1
        value = custody_chain.commitment(
            object_id,
            [c.payload for c in self.checkpoints],
            [a.payload for a in self.arrivals],
        )
        return value, count + 1

    def arrived(self, receipt: dsse.Envelope) -> Lineage:
        """This lineage with the receiver's signed activation receipt for its last departure."""
        return Lineage(
            entries=self.entries,
            checkpoints=self.checkpoints,
            arrivals=(*self.arrivals, receipt),
            base=self.base,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedLineage:
    size: int
    root: bytes
    hosts: tuple[str, ...]  #: hosts that signed checkpoints, oldest first
    checkpoints: tuple[Checkpoint, ...]
    base: Base | None = None  #: the verified base, when the lineage is compacted
    creator: str = ""  #: the host that created the object


#: ``Lineage(entries=..., checkpoints=..., arrivals=..., base=...)`` by position and
#: slot by slot, without ``__post_init__``: for values whose entries are already an
#: :class:`Entries` on a log of the same base, which is what __post_init__ makes
#: (:meth:`Lineage._on`, and :func:`stored_lineage` for a record this host stored).
_built_lineage = builder(Lineage, "entries", "checkpoints", "arrivals", "base", post_init_done=True)


def verify_chain(
    entries: Sequence[LineageEntry], *, start: int = 0, head: bytes = b"", epoch: int = 0
) -> list[bytes]:
    """Check sequence numbers, hash links and epochs; return the leaf hashes.

    ``start``/``head``/``epoch``: where the entries continue a compacted history (the
    base's size, last leaf hash and epoch); the defaults are a history from its creation.
    """
    # Every entry of every lineage received passes here, so the checks run first as
    # whole-list comparisons, each list built by map() over an attrgetter (C loops, no
    # interpreter frame per entry; bench_lineage.py, P4); any mismatch falls through to
    # the entry-by-entry loop below, which checks the same things and names the first
    # entry that fails.
    sha256 = hashlib.sha256
    listed = list(entries)
    count = len(listed)
    try:  # decoded entries hold their bytes; skip encode()'s call where all of them do
        held: list[bytes | None] = list(map(_raw_of, listed))
    except AttributeError:  # built by the constructor and never encoded
        held = [None]
    # None: appended here and not encoded yet (an encoding is never empty, so all() is
    # "no None", without comparing each one with None)
    raws = cast("list[bytes]", held) if all(held) else [entry.encode() for entry in listed]
    leaves = [sha256(b"\x00" + raw).digest() for raw in raws]
    # Epochs: entry i must be at epoch + (freezes among entries 0..i), the running sum
    # of "is a freeze"; the same as "each entry raises the epoch before it by exactly
    # its own freeze" (by induction on i), with no list of differences built.
    freezes = map(operator.is_, map(_kind_of, listed), itertools.repeat(EntryKind.FROZEN))
    raised = list(itertools.accumulate(freezes, initial=epoch))
    del raised[0]
    if (
        list(map(_seq_of, listed)) == list(range(start, start + count))
        and list(map(_prev_of, listed)) == [head, *leaves[:-1]]
        and list(map(_epoch_of, listed)) == raised
        and (
            start != 0
            or not listed
            or (listed[0].kind is EntryKind.CREATED and listed[0].epoch == 0)
        )
    ):
        # What leaf_hash() would remember, through the slot itself (a frozen dataclass
        # refuses setattr; object.__setattr__ per entry was a tenth of this function).
        collections.deque(map(_remember_leaf, listed, leaves), maxlen=0)
        return leaves
    hashes: list[bytes] = []
    previous_hash = head
    previous_epoch = epoch
    seq = start
    for entry in entries:
        if entry.seq != seq:
            raise LineageError(f"entry {seq} has sequence number {entry.seq}")
        if entry.prev != previous_hash:
            raise LineageError(
                f"entry {seq} does not link to entry {seq - 1}: the lineage was edited, "
                "reordered or has an entry missing",
                hint="refuse the object; ask its previous host for the original",
            )
        # The epoch is the fencing token: it starts at 0 and only a freeze raises it, by
        # exactly one. A history that jumps (to poison a receiver's fence) or stalls
        # (to reuse an epoch) is not one the protocol can produce.
        if seq == 0:
            if entry.kind is not EntryKind.CREATED or entry.epoch != 0:
                raise LineageError(
                    "the lineage does not start with the object's creation at epoch 0"
                )
        elif entry.epoch != previous_epoch + (entry.kind is EntryKind.FROZEN):
            raise LineageError(
                f"entry {seq} ({entry.kind.value}) is at epoch {entry.epoch} after epoch "
                f"{previous_epoch}; only a freeze raises the epoch, by one"
            )
        previous_epoch = entry.epoch
        previous_hash = entry.leaf_hash()
        hashes.append(previous_hash)
        seq += 1
    return hashes


def _open_signed(
    envelope: dsse.Envelope,
    *,
    host: str,
    payload_type: str,
    trust: TrustStore,
    what: str,
    signed_at: Callable[[bytes], datetime],
) -> bytes:
    """The payload of ``envelope`` signed by keys trusted for ``host``, each valid (and not
    retired) at the time the payload says it was signed."""
    try:
        keys = trust.keys_for_host(host, purpose=Purpose.ENVELOPE, at=None)
    except ConfigError as exc:
        # The host is data from the wire, not configuration: a malformed one is a
        # broken lineage.
        raise LineageError(f"{what} names {host!r}, which is not a host id: {exc.reason}") from exc
    except VerificationError as exc:
        raise type(exc)(f"{what}: {exc.reason}", hint=exc.hint) from exc
    try:
        # The domain's envelope threshold holds for checkpoints as for every envelope.
        verified = dsse.open_envelope(
            envelope, payload_type=payload_type, keys=keys, threshold=keys.bundle.envelope_threshold
        )
    except VerificationError as exc:
        raise type(exc)(f"{what}: {exc.reason}", hint=exc.hint) from exc
    moment = signed_at(verified.payload)
    # Keys rotate: a checkpoint is good if its key was valid, and not yet retired, when
    # it was signed (its signed issued_at), so retiring a key strands nothing it
    # vouched for. Revoked keys were refused when resolving above: revocation
    # distrusts the past too.
    for key_id in verified.key_ids:
        record = keys.resolve(key_id)
        if not record.valid_at(moment):
            raise ExpiredError(
                f"{what} was signed at {format_time(moment)}, outside the validity of key "
                f"{key_id[:16]}"
            )
        keys.check_not_retired(record, moment, what=what)
    return verified.payload


def _envelopes_digest(envelopes: Sequence[dsse.Envelope]) -> bytes:
    """SHA-256 over every byte of ``envelopes`` that verification reads (payload, payload
    type, key ids and signatures), each part length-prefixed: equal digests, equal
    envelopes."""
    hasher = hashlib.sha256()
    update = hasher.update
    for envelope in envelopes:
        parts = [envelope.payload, envelope.payload_type.encode()]
        for signature in envelope.signatures:
            parts += (signature.keyid.encode(), signature.sig)
        update(len(parts).to_bytes(4, "big"))
        for part in parts:
            update(len(part).to_bytes(8, "big"))
            update(part)
    return hasher.digest()


@dataclass(frozen=True, slots=True, kw_only=True)
class _Prefix:
    """A lineage prefix that verify_lineage verified: its first ``len(checkpoints)``
    checkpoints (whose envelopes digest to ``envelopes``) over its first ``size`` entries
    (entry ``size - 1`` has leaf hash ``head``), behind the base whose payload digests to
    ``base``, under ``trust``."""

    trust: TrustStore
    base: bytes
    checkpoints: tuple[Checkpoint, ...]
    envelopes: bytes
    size: int
    head: bytes
    frontier: merkle.CompactRange  #: leaves [0, size): the tree the checkpoints sign


class VerifiedPrefixes:
    """What this process verified of each object's lineage, the last time it saw it.

    Why: departures and arrivals stay in the object (ADR 0007), so an object that moves
    back and forth carries one more checkpoint per hop, and opening every one again on
    every arrival made a migration's cost grow with the object's past hops (the soak,
    issue 13 point 7). A host that verified a prefix before checks only that the
    arriving lineage starts with exactly it, then verifies what follows as always.

    Why it is exact (no trust is extended): a prefix is used only when (1) the trust store
    is the very object it was verified under (a reload, a revocation, a retirement makes
    a new one: a miss); (2) the base's payload is the same bytes; (3) the first
    checkpoints are the same bytes, signatures included (SHA-256 over them); (4) the
    arriving entry at the prefix's size has the same leaf hash, and verify_chain has
    checked every carried entry's link, so every entry before it is the same bytes too
    (a different one would be a SHA-256 collision). Everything verify_lineage checked of
    those checkpoints depends only on these: their signatures and signing times, the
    entries they cover and the tree heads of those entries. A miss costs what
    verification always cost. A first visit pays for the whole history.

    Bounded: at most ``objects`` states and ``checkpoints`` decoded checkpoints in all
    (one state per object and trust store, the newest; successive states share their
    checkpoints), least recently used first out.
    """

    def __init__(self, *, objects: int, checkpoints: int) -> None:
        self._objects = objects
        self._checkpoints = checkpoints
        self._held = 0
        #: by (object id, id of the trust store): the state holds the store, so its id
        #: is not reused while the state lives.
        self._states: OrderedDict[tuple[str, int], _Prefix] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def find(
        self,
        object_id: str,
        trust: TrustStore,
        base: bytes,
        envelopes: Sequence[dsse.Envelope],
        *,
        start: int,
        total: int,
        hashes: Sequence[bytes],
    ) -> _Prefix | None:
        """The remembered prefix that ``envelopes`` and the carried entries (first at
        ``start``, of ``total``, with leaf hashes ``hashes`` whose links are checked)
        start with exactly, or None."""
        key = (object_id, id(trust))
        with self._lock:
            state = self._states.get(key)
            if state is not None:
                self._states.move_to_end(key)
        count = len(state.checkpoints) if state is not None else 0
        if (
            state is None
            or state.trust is not trust
            or state.base != base
            or len(envelopes) < count
            or not start < state.size <= total
            or hashes[state.size - start - 1] != state.head
            or _envelopes_digest(envelopes[:count]) != state.envelopes
        ):
            self.misses += 1
            return None
        self.hits += 1
        return state

    def remember(self, object_id: str, state: _Prefix) -> None:
        if len(state.checkpoints) > self._checkpoints:
            return
        key = (object_id, id(state.trust))
        with self._lock:
            old = self._states.pop(key, None)
            if old is not None:
                self._held -= len(old.checkpoints)
            self._states[key] = state
            self._held += len(state.checkpoints)
            while len(self._states) > self._objects or self._held > self._checkpoints:
                _oldest, evicted = self._states.popitem(last=False)
                self._held -= len(evicted.checkpoints)

    def clear(self) -> None:
        with self._lock:
            self._states.clear()
            self._held = 0
            self.hits = self.misses = 0

    def sizes(self) -> tuple[int, int]:
        """(objects, checkpoints) held now."""
        return len(self._states), self._held


#: Verified lineage prefixes of this process (see :class:`VerifiedPrefixes`): 4096
#: states, 65536 decoded checkpoints in all (measured about 340 bytes each with the
#: hosts and object ids shared: at most about 22 MiB). An LRU smaller than what cycles
#: through it hits nothing, so it is sized for the soak's 200 objects at 300 hops.
VERIFIED_PREFIXES = VerifiedPrefixes(objects=4096, checkpoints=65536)


def forget_verified_prefixes() -> None:
    """Empty the verified-prefix memory (benchmarks timing a cold verify; tests)."""
    VERIFIED_PREFIXES.clear()


def check_creator(creator: str, object_id: str) -> None:
    """Only the domain that owns an object id creates objects under it (the object's
    first host signs the first checkpoint, so this cannot be forged by a peer); also
    gateway.archive's rule for an archived history's first entry."""
    owner = ObjectId.parse(object_id).trust_domain
    try:
        created_in = HostId.parse(creator).trust_domain
    except ConfigError as exc:
        raise LineageError(f"the first entry names {creator!r}, which is not a host id") from exc
    if created_in != owner:
        raise LineageError(
            f"{object_id} was created by {creator}, outside {owner}, the domain that owns it"
        )


def _other_creator(creator: str, object_id: str, because: str) -> LineageError:
    return LineageError(
        f"the lineage base names {creator} as the creator of {object_id}, but {because}",
        hint="refuse the object; its base was rewritten (entry 0's host created it)",
    )


def check_departure(checkpoint: Checkpoint, index: int) -> None:
    """A departure hands the object to another host: one naming its own host as receiver
    is no handoff (the source refuses to migrate to itself), and would let a holder count
    hops and arrivals it never made. Also gateway.archive's rule for archived ones."""
    if checkpoint.to == checkpoint.host:
        raise LineageError(
            f"checkpoint {index} of {checkpoint.object_id} hands it from "
            f"{checkpoint.host} to its own host",
            hint="refuse the object; a departure names another host as receiver",
        )


def verify_lineage(
    lineage: Lineage,
    *,
    object_id: str,
    trust: TrustStore,
    sealed: bool,
) -> VerifiedLineage:
    """Verify links and every checkpoint; with ``sealed``, the last checkpoint must
    cover every entry (an object in transit carries nothing its host did not sign).

    A compacted lineage is verified as far as the object alone allows (ADR 0007): the
    base's signature by the host that held the object when it compacted; every archived
    departure's signed root against the base's spine; the carried entries against the
    base's head. Cost: one leaf hash and about one node hash per carried entry, and one
    signature per checkpoint, never a tree per checkpoint.

    Raises :class:`LineageError`, or the verification error of a signature.
    """
    entries = lineage.entries
    start = lineage.start
    total = lineage.size
    base: Base | None = None
    if lineage.base is not None:
        claimed = Base.decode(lineage.base.payload)
        # Checked before its signature: the host it names picks the keys.
        payload = _open_signed(
            lineage.base,
            host=claimed.host,
            payload_type=BASE_PAYLOAD_TYPE,
            trust=trust,
            what=f"lineage base by {claimed.host}",
            signed_at=lambda raw: Base.decode(raw).issued_at,
        )
        base = Base.decode(payload)
        if base.object_id != object_id:
            raise LineageError(f"the lineage base is for {base.object_id}, not {object_id}")
    # Links and epochs first: an edited entry is refused as such, before any signature.
    hashes = verify_chain(
        entries,
        start=start,
        head=base.head if base is not None else b"",
        epoch=base.epoch if base is not None else 0,
    )
    creator = base.creator if base is not None else (entries[0].host if entries else "")
    if creator:
        check_creator(creator, object_id)
    covered = 0
    holder = creator
    recorders = list(map(_host_of, entries))  # sliced per checkpoint below
    hosts: list[str] = []
    checkpoints: list[Checkpoint] = []
    base_digest = digest(lineage.base.payload) if lineage.base is not None else b""
    # An object that comes back carries, verbatim, the history this process verified when
    # it last saw it: those checkpoints are not opened again (see VerifiedPrefixes).
    prefix = VERIFIED_PREFIXES.find(
        object_id, trust, base_digest, lineage.checkpoints, start=start, total=total, hashes=hashes
    )
    skip = 0
    if prefix is not None:
        skip = len(prefix.checkpoints)
        checkpoints.extend(prefix.checkpoints)
        hosts.extend(c.host for c in prefix.checkpoints)
        covered = prefix.size
        holder = prefix.checkpoints[-1].to
    for index, envelope in enumerate(lineage.checkpoints[skip:], start=skip):
        if covered >= total:
            raise LineageError(f"checkpoint {index} covers no new entries")
        # The host that must have signed is the one that recorded the next entries (or,
        # where those are archived, the one the previous departure named); keys are
        # looked up for it before the checkpoint payload is parsed.
        first = lineage.entry(covered)
        host = first.host if first is not None else holder
        if index == 0 and first is None:
            # Handoffs before this departure may be archived (ADR 0010 step 2): then its
            # sender is whoever signed it, pinned by the commitments of every later
            # departure (gateway.custody checks them and the receiver's floor), and
            # nothing carried stands for entry 0 (its creator's domain alone is checked).
            # Otherwise it is the first departure, which the creator signs.
            oldest = Checkpoint.decode(envelope.payload)
            if archived_before(oldest):
                host = oldest.host
            elif oldest.host != creator:
                raise _other_creator(creator, object_id, f"its first departure is by {oldest.host}")
        opened: list[Checkpoint] = []  # the payload decoded once, for its time and here

        def signed_at(raw: bytes, opened: list[Checkpoint] = opened) -> datetime:
            opened.append(Checkpoint.decode(raw))
            return opened[-1].issued_at

        payload = _open_signed(
            envelope,
            host=host,
            payload_type=dsse.PayloadType.CHECKPOINT,
            trust=trust,
            what=f"checkpoint {index} by {host} of {object_id}",
            signed_at=signed_at,
        )
        checkpoint = opened[-1]
        if checkpoint.object_id != object_id:
            raise LineageError(f"checkpoint {index} is for {checkpoint.object_id}, not {object_id}")
        if checkpoint.host != host:
            raise LineageError(
                f"checkpoint {index} names {checkpoint.host}, but {host} recorded its entries"
            )
        check_departure(checkpoint, index)
        if not covered < checkpoint.size <= total:
            raise LineageError(
                f"checkpoint {index} covers {checkpoint.size} entries; expected more than "
                f"{covered} and at most {total}"
            )
        low, high = max(covered - start, 0), max(checkpoint.size - start, 0)
        if recorders[low:high].count(host) != len(recorders[low:high]):
            entry = next(e for e in entries[low:high] if e.host != host)
            raise LineageError(
                f"entry {entry.seq} is recorded by {entry.host} but vouched for by {host}",
                hint="each host signs only what it recorded",
            )
        last = lineage.entry(checkpoint.size - 1)
        if not checkpoint.credentials_digest:
            # First-format checkpoint: its grants are its last entry's, which must be here.
            if last is None:
                raise LineageError(
                    f"checkpoint {index} by {host} records no grants and the entry it ends "
                    "on was archived",
                    hint="a lineage may be compacted only past checkpoints that record "
                    "their grants (written by this release or later)",
                )
            checkpoint = dataclasses.replace(checkpoint, credentials_digest=last.credentials_digest)
        if last is not None:
            if checkpoint.epoch != last.epoch:
                raise LineageError(
                    f"checkpoint {index} by {host} is for epoch {checkpoint.epoch}, but the "
                    f"last entry it covers is at epoch {last.epoch}"
                )
            if checkpoint.credentials_digest != last.credentials_digest:
                raise LineageError(
                    f"checkpoint {index} by {host} records other grants than the last entry "
                    "it covers"
                )
        covered = checkpoint.size
        holder = checkpoint.to
        hosts.append(host)
        checkpoints.append(checkpoint)
    if base is not None and prefix is None:
        # With a remembered prefix the base and every archived departure are as checked
        # then (same base bytes; archived departures end at or before its size).
        _check_base(
            base,
            checkpoints,
            creator,
            handoffs_archived=archived_before(checkpoints[0]) if checkpoints else 0,
        )
    # The tree heads of the checkpoints that end among the carried entries, from one
    # compact range grown leaf by leaf (never a tree per checkpoint); from a remembered
    # prefix, only over the entries after it.
    if prefix is not None:
        frontier = prefix.frontier.copy()
        floor = prefix.size
    else:
        frontier = lineage._log.start_frontier.copy()
        floor = start
    targets = {c.size: (i, c) for i, c in enumerate(checkpoints) if c.size > floor}
    split = max(covered, floor) - start
    heads = frontier.append_leaves(hashes[floor - start : split], targets)
    at_covered = frontier.copy() if covered > max(floor, start) else None
    heads.update(frontier.append_leaves(hashes[split:], targets))
    for size, (index, checkpoint) in sorted(targets.items()):
        if heads[size] != checkpoint.root:
            raise LineageError(
                f"checkpoint {index} by {checkpoint.host} does not match the entries it covers"
            )
    # The true tree heads of these entries, for verify_extends (a remembered prefix's
    # checkpoints matched them when it was verified, and its entries are these).
    known = lineage._log.heads
    known.update(heads)
    if prefix is not None:
        known.update((c.size, c.root) for c in prefix.checkpoints if c.size > start)
    if sealed and covered != total:
        raise LineageError(
            f"{total - covered} lineage entries are not covered by a signed checkpoint",
            hint="the sending host must checkpoint the lineage before the object leaves",
        )
    if at_covered is not None:
        VERIFIED_PREFIXES.remember(
            object_id,
            _Prefix(
                trust=trust,
                base=base_digest,
                checkpoints=tuple(checkpoints),
                envelopes=_envelopes_digest(lineage.checkpoints),
                size=covered,
                head=hashes[covered - start - 1],
                frontier=at_covered,
            ),
        )
    return VerifiedLineage(
        size=total,
        root=frontier.root(),
        hosts=tuple(hosts),
        checkpoints=tuple(checkpoints),
        base=base,
        creator=creator,
    )


def archived_before(first: Checkpoint) -> int:
    """Handoffs archived before ``first``, the oldest carried departure (ADR 0010 step 2):
    its ``hops - 1`` when it commits to the custody before it, else 0 (full evidence)."""
    return first.hops - 1 if first.custody and first.hops > 1 else 0


def handoffs_archived(lineage: Lineage) -> int:
    """Handoffs archived before the oldest departure ``lineage`` carries (ADR 0010 step
    2); 0 with full evidence. Read from that departure's signed ``hops``: a count for
    display and for comparing with a custody home, meaningful on a lineage that passed
    gateway.custody.verify_custody (which pins it)."""
    if not lineage.checkpoints:
        return 0
    return archived_before(Checkpoint.decode(lineage.checkpoints[0].payload))


def departures_counted(lineage: Lineage) -> int:
    """Departures ``lineage`` counts: those archived before its oldest carried one (ADR
    0010 step 2) and those it carries."""
    return handoffs_archived(lineage) + len(lineage.checkpoints)


def _check_base(
    base: Base, checkpoints: Sequence[Checkpoint], creator: str, *, handoffs_archived: int = 0
) -> None:
    """The base against the carried departures: its cuts are exactly the carried
    departures it covers, each range of its spine rebuilds the root that departure's
    sender signed (the first range runs from entry 0, through any departures whose
    handoffs were archived: ``handoffs_archived`` of them), and it is signed by the host that
    held the object at its size."""
    archived = [c for c in checkpoints if c.size <= base.size]
    if tuple(c.size for c in archived) != base.cuts:
        raise LineageError(
            f"the lineage base by {base.host} is cut at {list(base.cuts)}, but the departures "
            f"it covers end at {[c.size for c in archived]}",
            hint="refuse the object; its compaction dropped or invented a departure",
        )
    frontiers = base.frontiers()
    for index, (checkpoint, frontier) in enumerate(zip(archived, frontiers, strict=False)):
        if frontier.root() != checkpoint.root:
            raise LineageError(
                f"the archived entries up to departure {index} (by {checkpoint.host}) do not "
                "match the root that departure signed",
                hint="refuse the object; its compaction rewrote history another host signed",
            )
    if frontiers[-1].root() != base.root:
        raise LineageError(f"the lineage base by {base.host} does not match its own tree head")
    # With handoffs archived and no carried departure in the base, the oldest carried
    # departure's sender held the object there.
    holder = archived[-1].to if archived else checkpoints[0].host if handoffs_archived else creator
    if not archived and not handoffs_archived and base.creator != base.host:
        # No departure before the base: its signer held the object from entry 0.
        raise _other_creator(
            base.creator, base.object_id, f"{base.host} held it from entry 0 and compacted it"
        )
    if base.host != holder:
        raise LineageError(
            f"the lineage base is signed by {base.host}, but {holder} held the object after "
            f"entry {base.size - 1}",
            hint="only the holder compacts its object's lineage",
        )


def verify_extends(
    lineage: Lineage, *, seen_size: int, seen_root: bytes, seen_departures: int = 0
) -> bool:
    """The lineage must start with exactly the ``seen_size`` entries seen before; True
    once that is compared, False when it cannot be (below).

    Where those entries are archived in this copy, the history seen must end at one of
    the archived departures (a host sees an object's history when it lets it go), whose
    tree head the base's spine rebuilds (verify_lineage checked it against the
    departure's signature).

    ``seen_departures`` is how many departures the history seen counts (its last one the
    seeing host's own). When that departure is older than every departure this copy
    carries (ADR 0010 step 2 archived it with the custody of its hop), the base has no
    cut there to compare: an honest object that comes back after more than K hops looks
    exactly so. Then only what is left is checked (this copy's archived handoffs count
    that departure, and its oldest carried departure lies after the entries seen), and
    False says the comparison itself rests on the signers of the carried departures
    (ADR 0010's residual risk) and on the archive, as for the older custody."""
    if lineage.size < seen_size:
        raise LineageError(
            f"lineage has {lineage.size} entries, fewer than the {seen_size} seen here before",
            hint="history was truncated; refuse the object",
        )
    if seen_size == 0:
        root = merkle.EMPTY_ROOT
    elif seen_size >= lineage.start:
        known = lineage._log.heads.get(seen_size)  # verify_lineage computed it already
        root = (
            known
            if known is not None
            else lineage._log.frontier_at(seen_size - lineage.start).root()
        )
    else:
        base = lineage.base_claim()
        assert base is not None
        if seen_size not in base.cuts:
            oldest = (
                Checkpoint.decode(lineage.checkpoints[0].payload)
                if seen_departures and lineage.checkpoints
                else None
            )
            if oldest is not None and seen_departures <= archived_before(oldest):
                if oldest.size <= seen_size:
                    raise LineageError(
                        f"the oldest departure this copy carries ends at entry {oldest.size}, "
                        f"not after the {seen_size} entries seen here at an older departure",
                        hint="refuse the object and compare both histories with `gateway lineage`",
                    )
                return False
            raise LineageError(
                f"the {seen_size} entries seen here are archived in this copy, and it records "
                "no departure there to compare",
                hint="refuse the object and compare both histories with `gateway lineage`",
            )
        root = base.frontiers()[base.cuts.index(seen_size)].root()
    if root != seen_root:
        raise LineageError(
            "lineage does not extend the history seen here before (a fork or a rewrite)",
            hint="refuse the object and compare both histories with `gateway lineage`",
        )
    return True


def digest(data: bytes) -> bytes:
    """SHA-256 of ``data``. The very same bytes object as the last one digested (of at
    most :data:`DIGEST_MEMO_MAX_BYTES`) is answered from one slot: a cycle's write
    digests its new data for its entries, and the object's encoding digests it again.
    Bytes are immutable and the slot holds them, so the identity is not reused."""
    last = _LAST_DIGEST  # one read: the slot is replaced whole, never changed
    if last[0] is data:
        return last[1]
    value = hashlib.sha256(data).digest()
    if type(data) is bytes and len(data) <= DIGEST_MEMO_MAX_BYTES:
        _remember_digest(data, value)
    return value


#: The largest bytes whose digest :func:`digest` remembers (the slot keeps them alive).
DIGEST_MEMO_MAX_BYTES = 16 * 1024
_LAST_DIGEST: tuple[bytes | None, bytes] = (None, b"")


def _remember_digest(data: bytes, value: bytes) -> None:
    global _LAST_DIGEST
    _LAST_DIGEST = (data, value)


def credentials_digest(grants: Sequence[str]) -> bytes:
    """SHA-256 of the grants as a canonical JSON array (order matters: root first)."""
    # Grants are JWTs (base64url and dots): when no grant holds a character JSON would
    # escape, the array is the grants between quotes and commas, with no encoder built
    # (every cycle of an object whose digest is not remembered computes this; the
    # encoder's path was a tenth of such a cycle). Anything else takes json.dumps.
    if grants and all(type(g) is str and _plain_json_string(g) for g in grants):
        return digest(b'["' + '","'.join(grants).encode("ascii") + b'"]')
    return digest(json.dumps(list(grants), separators=(",", ":")).encode("ascii"))


def _plain_json_string(text: str) -> bool:
    """Whether json.dumps (ensure_ascii) writes ``text`` as it is between quotes:
    printable ASCII (0x20-0x7E) without a quote or a backslash. Read as bytes with
    those deleted (one table lookup a byte): str.isprintable looks every character up
    in the Unicode database, about 27k instructions for a 1 KB grant, and an object
    whose grants' digest is not remembered asks this of each of them every cycle."""
    return text.isascii() and not text.encode("ascii").translate(None, _PLAIN_JSON_BYTES)


#: The bytes json.dumps writes as they are inside a string.
_PLAIN_JSON_BYTES = bytes(c for c in range(0x20, 0x7F) if c not in b'"\\')
