"""Lineage compaction: a signed base stands for a prefix that moves to an archive.

A long-lived object records a few entries per cycle; without compaction its lineage
grows until the envelope cap stops it from ever moving. Here a holder moves the oldest
entries to an *archive segment* and keeps a signed :class:`~gateway.lineage.Base` in
their place (ADR 0007). What the receiver checks today it still checks from the object
alone, because compaction removes only entries: every departure and every arrival (the
signatures of *other* hosts) stays in the object, and the base's spine rebuilds the
tree head each archived departure's sender signed.

Invariants:

* **Only the holder compacts**, only an object it holds (the caller's duty: ACTIVE
  here), and only entries: checkpoints and arrivals are never archived.
* **Archive first.** :func:`compact` returns the segment and the compacted lineage; the
  caller writes the segment durably *before* it stores the compacted object, so a crash
  leaves at worst a spare segment for entries the object still carries. Segments are
  named by their first sequence number and length, so a spare never overwrites the
  segment of a compaction that committed; :func:`verify_archived` chooses among them.
* **Repeats are counted, not copied**: :func:`fold_repeats` folds a cycle that records
  exactly the events of the cycle before it into that cycle's entries
  (:meth:`~gateway.lineage.Lineage.repeated`), only in the holder's unsigned tail.
* **Offline verification** (:func:`verify_archived`) rebuilds the whole history from
  the segments and the object and runs the receiver's own verifiers over it, plus the
  base's root over the archived entries. Segments carry no signature of their own:
  they are authenticated by the signed roots in the object. It holds one segment at a
  time and 32 bytes per archived entry, never the archive decoded (see verify_archived).

No I/O except :class:`ArchiveDir`, which reads and writes segment files.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from gateway import _custody_chain as custody_chain
from gateway import envelope as dsse
from gateway import merkle
from gateway._decode import load_json
from gateway.errors import ConfigError, CustodyError, GatewayError, LineageError
from gateway.keys import Signer
from gateway.limits import (
    DEFAULT_CUSTODY_KEEP,
    MAX_HANDOFFS,
    MAX_HOPS,
    MAX_ID_BYTES,
    MIN_CARRIED_HANDOFFS,
)
from gateway.lineage import (
    BASE_PAYLOAD_TYPE,
    MAX_ENTRY_BYTES,
    Base,
    Checkpoint,
    EntryKind,
    Lineage,
    LineageEntry,
    VerifiedLineage,
    _open_signed,
    _other_creator,
    archived_before,
    check_creator,
    check_departure,
    verify_lineage,
)
from gateway.model import GovernedObject
from gateway.trust import TrustStore, canonical_json

#: Entries one archive segment may hold (a compaction archives at most this many).
MAX_SEGMENT_ENTRIES = 1 << 16
#: Segments one verification reads, and one host keeps per object (at the default policy,
#: about 100 entries each: a history of more than a million entries).
MAX_SEGMENTS = 1 << 14
#: Largest segment file read.
MAX_SEGMENT_BYTES = MAX_SEGMENT_ENTRIES * (MAX_ENTRY_BYTES // 8)
#: Bytes of segment files one verification reads in all. Each file is bounded by
#: MAX_SEGMENT_BYTES, but their sum was not (MAX_SEGMENTS files of that size: 2 TiB),
#: and a verification holds them all decoded, peaking at about 12 times the bytes read
#: (20,000 entries, 11 MB of segments: 134 MB). 512 MiB is a history of about a
#: million entries at their typical 340 bytes (460 in a segment, base64 and quoted).
MAX_ARCHIVE_BYTES = 512 << 20


#: Default carried-lineage bytes above which an object is compacted. The carried lineage
#: is paid for on every cycle (the record is decoded and re-encoded) and every migration,
#: the archive once: kept small, the record stays within the journal's decode cache
#: (gateway.handoff.journal.DECODED_CACHE_MAX_BYTES, 256 KiB) with room for data and
#: grants, and far below the 16 MiB envelope cap. About 100 entries of a typical cycle.
#: Lowered from 192 KiB / 512 entries after the 10-minute soak (issue 13, point 7): 200
#: objects carrying 128-512 entries each (about 64k) overflowed the entry memo
#: (gateway.lineage.ENTRY_MEMO_SIZE) and the records neared the 256 KiB cache limit with
#: the custody evidence beside them, so every hop and cycle decoded more, and slower, as
#: the soak went on; at 32-128 the same objects carry about 16k.
DEFAULT_MAX_BYTES = 48 << 10


@dataclass(frozen=True, slots=True, kw_only=True)
class CompactionPolicy:
    """When a holder compacts its objects' lineages (host config ``lineage.compaction``).

    The object is compacted when it carries more than ``keep_entries`` entries and any
    limit is passed: more than ``max_entries`` entries, more than ``max_bytes`` bytes of
    entries, or an oldest carried entry older than ``max_age``; it then keeps its newest
    ``keep_entries`` (at least one: the entry the next one links to). ``None`` switches
    a limit off; ``enabled=False`` switches compaction off (the object then grows until
    the envelope cap stops it from moving). It is also due when it carries more than
    ``custody_keep`` + MIN_CARRIED_HANDOFFS handoffs (ADR 0010 step 2)."""

    enabled: bool = True
    max_entries: int = 128
    keep_entries: int = 32
    max_bytes: int | None = DEFAULT_MAX_BYTES
    max_age: timedelta | None = timedelta(days=1)
    #: handoffs (departure + arrival) kept carried when compacting; older ones go to a
    #: custody segment (ADR 0010 step 2, ``lineage.custody_keep``)
    custody_keep: int = DEFAULT_CUSTODY_KEEP

    def __post_init__(self) -> None:
        if not MIN_CARRIED_HANDOFFS <= self.custody_keep <= MAX_HANDOFFS:
            # Below the receivers' floor every compacted object would be refused.
            raise ConfigError(
                f"lineage.custody_keep is {self.custody_keep}; it must be between "
                f"{MIN_CARRIED_HANDOFFS} (what receivers require) and {MAX_HANDOFFS}",
                hint=f"set lineage.custody_keep to {DEFAULT_CUSTODY_KEEP} (the default) or "
                "leave it out",
            )
        if not 1 <= self.keep_entries < self.max_entries <= MAX_SEGMENT_ENTRIES:
            raise ConfigError(
                f"lineage compaction keeps {self.keep_entries} of at most {self.max_entries} "
                "entries; need 1 <= keep_entries < max_entries <= "
                f"{MAX_SEGMENT_ENTRIES}",
                hint="set lineage.compaction.keep_entries below max_entries",
            )
        if self.max_bytes is not None and self.max_bytes < MIN_MAX_BYTES:
            raise ConfigError(
                f"lineage compaction at {self.max_bytes} bytes would compact on every cycle; "
                f"max_bytes must be at least {MIN_MAX_BYTES}",
                hint=f"set lineage.compaction.max_bytes to {DEFAULT_MAX_BYTES} (the default) "
                "or leave it out",
            )

    def due(self, lineage: Lineage, *, now: datetime, stored_bytes: int | None = None) -> bool:
        """Whether to compact ``lineage`` now. O(1) unless the bytes limit may be passed:
        ``stored_bytes`` is the size of the object's stored record (an upper bound of its
        entries' bytes); only when it exceeds ``max_bytes`` are the entries measured.
        Without it the bytes limit is not checked (entries and age still are)."""
        carried = len(lineage.entries)
        if not self.enabled:
            return False
        if carried > 1 and len(lineage.checkpoints) > self.custody_keep + MIN_CARRIED_HANDOFFS:
            # ADR 0010 step 2: handoffs are archived only by a compaction, so one is due
            # when they pass K + the receivers' floor (an object moving every few cycles
            # may never pass the entry limits); compact_custody then keeps K.
            return True
        if carried <= self.keep_entries:
            return False
        if carried > self.max_entries:
            return True
        if self.max_age is not None and now - lineage.entries[0].time > self.max_age:
            return True
        return (
            self.max_bytes is not None
            and stored_bytes is not None
            and stored_bytes > self.max_bytes
            and _carried_over(lineage, self.max_bytes)
        )

    def keep(self, lineage: Lineage) -> int:
        """How many entries a compaction of ``lineage`` keeps: ``keep_entries``, or more
        when the rest would not fit one segment."""
        carried = len(lineage.entries)
        # Below keep_entries only when due for its handoffs (ADR 0010): keep all but one.
        return min(max(self.keep_entries, carried - MAX_SEGMENT_ENTRIES), max(carried - 1, 1))


#: The smallest bytes limit accepted: a few entries' worth, so compaction cannot thrash.
MIN_MAX_BYTES = 16 * 1024


def carried_bytes(lineage: Lineage) -> int:
    """Bytes of the entries ``lineage`` carries, as encoded (each entry caches its bytes)."""
    return sum(len(entry.encode()) for entry in lineage.entries)


def _carried_over(lineage: Lineage, limit: int) -> bool:
    """``carried_bytes(lineage) > limit``, read off the encoding of the entries that
    lineage's log keeps (gateway.wire) when it covers them: a cycle has just written
    them, and once a record passes the bytes limit every cycle asked this, summing every
    entry's length. There each entry's field is its bytes after a tag (1 byte) and its
    length (1 to 3 bytes: an entry is at most MAX_ENTRY_BYTES), so the sum lies within
    two bytes an entry of the encoding's length; only a limit inside that band measures
    the entries."""
    count = len(lineage.entries)
    ends = lineage._log.wire_ends
    if count and len(ends) >= count:
        encoded = ends[count - 1]
        if encoded - 2 * count <= limit:
            return False
        if encoded - 4 * count > limit:
            return True
    return carried_bytes(lineage) > limit


@dataclass(frozen=True, slots=True, kw_only=True)
class Segment:
    """Entries ``[start, start + len(entries))`` of one object's history, as archived."""

    object_id: str
    start: int
    entries: tuple[bytes, ...]

    def digest(self) -> bytes:
        return archived_digest(self.entries)

    def encode(self) -> bytes:
        return canonical_json(
            {
                "format": 1,
                "object_id": self.object_id,
                "start": self.start,
                "entries": [base64.b64encode(e).decode("ascii") for e in self.entries],
            }
        )

    @classmethod
    def decode(cls, raw: bytes, *, checked: bool = False) -> Segment:
        """The segment in ``raw``. ``checked``: these very bytes passed ``decode`` before
        (a file read again, its digest compared), so the strict JSON reader's scans for
        what it refuses (about half the cost of decoding) are not repeated."""
        what = "archive segment"
        if len(raw) > MAX_SEGMENT_BYTES:
            raise LineageError(f"{what} is {len(raw)} bytes; at most {MAX_SEGMENT_BYTES}")
        if checked:
            try:
                document = json.loads(raw)
            except ValueError as exc:
                raise LineageError(f"{what} is not JSON: {exc}") from exc
        else:
            document = load_json(raw, error=LineageError, what=what)
        if not isinstance(document, dict) or set(document) != {
            "format",
            "object_id",
            "start",
            "entries",
        }:
            raise LineageError(f"{what} must have exactly format, object_id, start, entries")
        entries, start = document["entries"], document["start"]
        if (
            document["format"] != 1
            or not _is_id(document["object_id"])
            or type(start) is not int
            or start < 0
            or not isinstance(entries, list)
            or len(entries) > MAX_SEGMENT_ENTRIES
            or not all(isinstance(e, str) for e in entries)
        ):
            raise LineageError(f"{what} has a field of the wrong type or size")
        try:
            decoded = tuple(base64.b64decode(e, validate=True) for e in entries)
        except (ValueError, binascii.Error) as exc:
            raise LineageError(f"{what}: an entry is not base64") from exc
        return cls(object_id=document["object_id"], start=start, entries=decoded)


def _is_id(value: object) -> bool:
    """Whether a segment's ``object_id`` could be an object id: text no longer than one
    (a segment of another object is named in the error that refuses it, so the name is
    bounded like the id it stands for)."""
    return isinstance(value, str) and len(value) <= MAX_ID_BYTES


def segment_file_name(segment: Segment) -> str:
    """``<first entry, 20 digits>+<entries>.seg``: unique per segment, sorted by start."""
    return f"{segment.start:020d}+{len(segment.entries)}.seg"


def custody_file_name(segment: CustodySegment) -> str:
    """``custody-<first hop, 20 digits>+<handoffs>.cus``, beside the entry segments."""
    return f"custody-{segment.first:020d}+{len(segment.departures)}.cus"


def archived_digest(entries: Sequence[bytes]) -> bytes:
    """SHA-256 over the archived entries, each length-prefixed (what a base names)."""
    hasher = hashlib.sha256()
    for raw in entries:
        hasher.update(len(raw).to_bytes(4, "big"))
        hasher.update(raw)
    return hasher.digest()


def compaction_cut(
    lineage: Lineage,
    *,
    host: str,
    keep: int,
    departures: Sequence[Checkpoint] | None = None,
) -> int | None:
    """Where ``host`` may cut: the size of the prefix it archives, or ``None``.

    ``lineage.size - keep`` when ``host`` held the object at that point; a base is
    signed by the holder at its size (verify_lineage), so a cut falling in another
    host's stay (an object that came back) moves forward to where ``host``'s current
    stay began, keeping fewer than ``keep`` entries. ``None`` when nothing is left to
    archive that way (at least one entry must stay carried)."""
    if departures is None:
        departures = [Checkpoint.decode(c.payload) for c in lineage.checkpoints]
    size = lineage.size - keep
    # Before the oldest carried departure the holder is the creator, or with handoffs
    # archived (ADR 0010 step 2) that departure's sender (verify_lineage's rule; the
    # base's creator held the object before the archived ones, not necessarily here).
    first = departures[0].host if departures and archived_before(departures[0]) else ""

    def holder(at: int) -> str:
        covered = [d for d in departures if d.size <= at]
        return covered[-1].to if covered else first or lineage.creator()

    if holder(size) != host and departures:
        size = departures[-1].size
    if holder(size) != host or not lineage.start < size < lineage.size:
        return None
    return size


@dataclass(frozen=True, slots=True, kw_only=True)
class CustodySegment:
    """Handoffs ``[first, first + len(departures))`` of one object, as archived (ADR 0010
    step 2): each departure checkpoint and its arrival receipt, the exact signed
    envelopes (DSSE JSON), so that `gateway verify --archive` can check every original
    signature and that they digest to the oldest carried departure's ``custody``."""

    object_id: str
    first: int
    departures: tuple[bytes, ...]
    arrivals: tuple[bytes, ...]

    def encode(self) -> bytes:
        return canonical_json(
            {
                "format": 1,
                "object_id": self.object_id,
                "first": self.first,
                "departures": [base64.b64encode(e).decode("ascii") for e in self.departures],
                "arrivals": [base64.b64encode(e).decode("ascii") for e in self.arrivals],
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> CustodySegment:
        what = "custody segment"
        if len(raw) > MAX_SEGMENT_BYTES:
            raise LineageError(f"{what} is {len(raw)} bytes; at most {MAX_SEGMENT_BYTES}")
        document = load_json(raw, error=LineageError, what=what)
        fields = {"format", "object_id", "first", "departures", "arrivals"}
        if not isinstance(document, dict) or set(document) != fields:
            raise LineageError(f"{what} must have exactly {', '.join(sorted(fields))}")
        first, departures, arrivals = (
            document["first"],
            document["departures"],
            document["arrivals"],
        )
        if (
            document["format"] != 1
            or not _is_id(document["object_id"])
            or type(first) is not int
            or not 0 <= first <= MAX_HOPS
            or not isinstance(departures, list)
            or not isinstance(arrivals, list)
            or len(departures) != len(arrivals)
            or len(departures) > MAX_HANDOFFS
            or not all(isinstance(e, str) for e in (*departures, *arrivals))
        ):
            raise LineageError(f"{what} has a field of the wrong type or size")
        try:
            return cls(
                object_id=document["object_id"],
                first=first,
                departures=tuple(base64.b64decode(e, validate=True) for e in departures),
                arrivals=tuple(base64.b64decode(e, validate=True) for e in arrivals),
            )
        except (ValueError, binascii.Error) as exc:
            raise LineageError(f"{what}: a handoff is not base64") from exc


def compact(
    lineage: Lineage,
    *,
    object_id: str,
    host: str,
    at: datetime,
    signer: Signer,
    keep: int,
) -> tuple[Lineage, Segment]:
    """Move all but the newest ``keep`` carried entries to a segment; sign a base by
    ``host`` (which must hold the object) for them. Pure: nothing is written. Carries
    every handoff (see :func:`compact_custody` for archiving the older ones)."""
    lineage, segment, _custody = compact_custody(
        lineage, object_id=object_id, host=host, at=at, signer=signer, keep=keep, custody_keep=0
    )
    return lineage, segment


def _archivable_handoffs(
    departures: Sequence[Checkpoint], arrivals: int, size: int, custody_keep: int
) -> int:
    """How many of the oldest carried handoffs a compaction to ``size`` entries may archive
    keeping ``custody_keep`` (0: none): only completed ones whose departure lies in the
    archived entries (the base's spine then runs through them), and only if the oldest
    departure left carried commits to the custody before it (ADR 0010: otherwise a
    receiver could not continue the chain from it)."""
    if not custody_keep:
        return 0
    drop = min(len(departures) - custody_keep, arrivals)
    while drop > 0 and (departures[drop - 1].size > size or not departures[drop].custody):
        drop -= 1
    return max(drop, 0)


def compact_custody(
    lineage: Lineage,
    *,
    object_id: str,
    host: str,
    at: datetime,
    signer: Signer,
    keep: int,
    custody_keep: int,
) -> tuple[Lineage, Segment, CustodySegment | None]:
    """:func:`compact`, also moving handoffs older than the newest ``custody_keep`` to a
    custody segment where that is allowed (:func:`_archivable_handoffs`); the base is
    then cut only at the carried departures, its first range running from entry 0."""
    carried = len(lineage.entries)
    if not 1 <= keep < carried:
        raise ValueError(f"cannot keep {keep} of {carried} entries")
    departures = [Checkpoint.decode(c.payload) for c in lineage.checkpoints]
    cut = compaction_cut(lineage, host=host, keep=keep, departures=departures)
    if cut is None:
        raise ValueError(f"{host} holds no stretch of the lineage it could archive")
    start, size = lineage.start, cut
    old = lineage.base_claim()
    cuts = [d.size for d in departures if d.size <= size]
    # The spine: the old base's ranges up to its last cut stay as they are; the range
    # after it grows through the newly archived entries, cut at each departure in them.
    spine: list[tuple[bytes, ...]] = list(old.spine[:-1]) if old is not None else []
    old_cuts = len(old.cuts) if old is not None else 0
    last_cut = old.cuts[-1] if old is not None and old.cuts else 0
    current = (
        merkle.CompactRange(last_cut, start, old.spine[-1])
        if old is not None
        else merkle.CompactRange()
    )
    pending = iter(cuts[old_cuts:])
    next_cut = next(pending, None)
    archived = lineage.entries[: size - start]
    for entry in archived:
        current.append(entry.leaf_hash())
        if current.end == next_cut:
            spine.append(tuple(current.hashes))
            current = merkle.CompactRange(current.end)
            next_cut = next(pending, None)
    spine.append(tuple(current.hashes))
    frontier = lineage._log.frontier_at(size - start)
    last = archived[-1]
    raws = tuple(e.encode() for e in archived)
    base = Base(
        object_id=object_id,
        host=host,
        epoch=last.epoch,
        size=size,
        root=frontier.root(),
        head=last.leaf_hash(),
        issued_at=at,
        creator=lineage.creator(),
        cuts=tuple(cuts),
        spine=tuple(spine),
        archived=archived_digest(raws),
    )
    drop = _archivable_handoffs(departures, len(lineage.arrivals), size, custody_keep)
    custody: CustodySegment | None = None
    if drop:
        # The first range becomes [0, first carried cut): folded from the ranges before.
        folded = base.frontiers()[drop]
        base = replace(
            base,
            cuts=base.cuts[drop:],
            spine=(tuple(folded.hashes), *base.spine[drop + 1 :]),
        )
        first = archived_before(departures[0])
        custody = CustodySegment(
            object_id=object_id,
            first=first,
            departures=tuple(dsse.to_json(e) for e in lineage.checkpoints[:drop]),
            arrivals=tuple(dsse.to_json(e) for e in lineage.arrivals[:drop]),
        )
    envelope = dsse.seal(base.encode(), BASE_PAYLOAD_TYPE, [signer])
    compacted = Lineage(
        entries=lineage.entries[size - start :],
        checkpoints=lineage.checkpoints[drop:],
        arrivals=lineage.arrivals[drop:],
        base=envelope,
    )
    return compacted, Segment(object_id=object_id, start=start, entries=raws), custody


def fold_repeats(before: GovernedObject, after: GovernedObject) -> GovernedObject:
    """``after`` (``before`` plus one cycle's entries) with that cycle folded into the
    identical cycle before it, when it is one (see Lineage.repeated)."""
    if after.lineage.start != before.lineage.start:
        return after
    group = after.lineage.entries[len(before.lineage.entries) :]
    folded = before.lineage.repeated(group)
    return after if folded is None else replace(after, lineage=folded)


# --- archive files ---------------------------------------------------------------------


class ArchiveDir:
    """One directory per object under ``root``: a file per segment, named by its first
    sequence number and length, written atomically (temp file, fsync, rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def directory(self, tenant: str, object_id: str) -> Path:
        name = hashlib.sha256(object_id.encode()).hexdigest()[:32]
        return self.root / tenant / name

    def write(self, tenant: str, segment: Segment) -> Path:
        return self._write(tenant, segment.object_id, segment_file_name(segment), segment.encode())

    def write_custody(self, tenant: str, segment: CustodySegment) -> Path:
        """Archived handoffs as ``custody-<first hop>+<count>.cus`` beside the entry
        segments (read_segments reads only ``.seg``)."""
        return self._write(tenant, segment.object_id, custody_file_name(segment), segment.encode())

    def _write(self, tenant: str, object_id: str, name: str, data: bytes) -> Path:
        folder = self.directory(tenant, object_id)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        temporary = path.with_suffix(".tmp")
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        return path


def read_segments(path: Path) -> list[Segment]:
    """The entry segments in an archive directory (or one segment file), oldest first."""
    return [s.load() for s in read_archives([path]) if isinstance(s, SegmentFile)]


def read_custody(path: Path) -> list[CustodySegment]:
    """The custody segments (archived handoffs, ADR 0010 step 2) in an archive directory."""
    return [s for s in read_archives([path]) if isinstance(s, CustodySegment)]


@dataclass(frozen=True, slots=True, kw_only=True)
class SegmentFile:
    """An entry segment file, read and checked once, of which only what it holds is kept
    (where its entries start, how many, a digest of its bytes): :func:`verify_archived`
    reads it again when it needs the entries and holds one segment at a time, so memory
    does not grow with the archive (held decoded together, segments took about 12 times
    the bytes read)."""

    path: Path
    object_id: str
    start: int
    count: int
    #: SHA-256 of the file's bytes when it was first read
    digest: bytes
    #: its entries' leaf hashes and links, taken when it was first read
    index: _Indexed

    def load(self) -> Segment:
        """The segment, read again; refused if the file changed since it was first read
        (a verification never mixes two versions of one file)."""
        raw = _read_segment_file(self.path)
        if hashlib.sha256(raw).digest() != self.digest:
            raise ConfigError(
                f"{self.path} changed while the archive was verified",
                hint="verify a copy of the archive that nothing else writes to",
            )
        return Segment.decode(raw, checked=True)


#: An entry segment as :func:`verify_archived` takes it: decoded, or a file read on demand.
EntrySegment = Segment | SegmentFile


def _loaded(segment: EntrySegment) -> Segment:
    return segment if isinstance(segment, Segment) else segment.load()


def _length(segment: EntrySegment) -> int:
    return len(segment.entries) if isinstance(segment, Segment) else segment.count


#: Largest custody segment file read: a custody segment holds handoffs an object carried
#: (their exact envelopes), so it is never larger than an object could be
#: (gateway.wire.MAX_ENVELOPE_BYTES, 16 MiB) in base64 (4/3) with its JSON around it.
#: Entry segments' MAX_SEGMENT_BYTES (128 MiB) applied before.
MAX_CUSTODY_SEGMENT_BYTES = (16 << 20) * 4 // 3 + (64 << 10)
#: Bytes of custody segment files one verification reads in all. They are held decoded
#: together (every envelope parsed, every signature checked over the whole history): 64 MiB
#: is about 40,000 archived handoffs of 1.6 KiB (two envelopes in base64, as in tests).
#: Held as :class:`CustodySegment` (the envelopes' bytes), not as the file's bytes decoded
#: on use: those are 1.27 times larger (base64 in JSON), and each segment is used once
#: (session 37: 193 handoffs, file 418,133 B, held 330 KB, parsed 388 KB, traced peak of
#: the whole verify 2.24 MB). Re-reading the file on use instead (as SegmentFile does)
#: would save the 330 KB (15 % of that peak) for a second decode (16 ms, 13 % of the CPU)
#: or for refusing a malformed file only once verification started.
MAX_CUSTODY_ARCHIVE_BYTES = 64 << 20


def read_archives(paths: Sequence[Path]) -> list[SegmentFile | CustodySegment]:
    """The segments in several archive directories (or segment files), oldest first:
    each file is read and decoded once here, to refuse a bad one at once; entry segments
    are returned as :class:`SegmentFile` (read again, one at a time, when verified),
    custody segments decoded.

    After migrations an object's archive is spread over the hosts that compacted it (each
    keeps its own segments); the directories exported from each are read together here.
    Two segments with the same start (a spare left by a compaction that did not commit,
    and the one that did) are both kept: :func:`verify_archived` picks the chain."""
    # Directories come from other hosts: the bytes their files would give are added up
    # before any is read, and counted again as read (a file may grow after its stat).
    files: list[Path] = []
    announced = custody = 0
    for path in paths:
        found = sorted([*path.glob("*.seg"), *path.glob("*.cus")]) if path.is_dir() else [path]
        files.extend(found)
        if len(files) > MAX_SEGMENTS:
            raise ConfigError(
                f"{path} brings the archive to {len(files)} segments; at most {MAX_SEGMENTS}",
                hint="verify an object's own archive directories only",
            )
        for file in found:
            size = _size_of(file)
            announced += min(size, _limit(file) + 1)
            if file.suffix == ".cus":
                _check_custody_size(file, size)
                custody += size
                if custody > MAX_CUSTODY_ARCHIVE_BYTES:
                    raise _too_many_custody_bytes(file, custody)
        if announced > MAX_ARCHIVE_BYTES:
            raise _too_many_bytes(path, announced)
    segments: list[SegmentFile] = []
    handoffs: list[CustodySegment] = []
    read = custody = 0
    for file in files:
        raw = _read_segment_file(file, _limit(file))
        read += len(raw)
        if read > MAX_ARCHIVE_BYTES:
            raise _too_many_bytes(file, read)
        if file.suffix == ".cus":
            _check_custody_size(file, len(raw))
            custody += len(raw)
            if custody > MAX_CUSTODY_ARCHIVE_BYTES:
                raise _too_many_custody_bytes(file, custody)
            handoffs.append(CustodySegment.decode(raw))
        else:
            segment = Segment.decode(raw)
            segments.append(
                SegmentFile(
                    path=file,
                    object_id=segment.object_id,
                    start=segment.start,
                    count=len(segment.entries),
                    digest=hashlib.sha256(raw).digest(),
                    index=_index(segment, len(segment.entries)),
                )
            )
            del segment, raw  # one segment held at a time
    return [*sorted(segments, key=lambda s: (s.start, -s.count)), *handoffs]


def _limit(file: Path) -> int:
    """The largest file of ``file``'s kind that is read (one more byte is read, to see)."""
    return MAX_CUSTODY_SEGMENT_BYTES if file.suffix == ".cus" else MAX_SEGMENT_BYTES


def _size_of(file: Path) -> int:
    """The bytes of a segment file as the file system says (0 when it cannot say: reading
    it then names the problem); what is read is bounded and counted all the same."""
    try:
        return file.stat().st_size
    except OSError:
        return 0


def _check_custody_size(file: Path, size: int) -> None:
    if size > MAX_CUSTODY_SEGMENT_BYTES:
        raise ConfigError(
            f"{file} is {size} bytes; a custody segment is at most "
            f"{MAX_CUSTODY_SEGMENT_BYTES} bytes (the handoffs one object could carry)",
            hint="this file was not written by `gateway object archive`; leave it out of the "
            "archive directory",
        )


def _too_many_bytes(where: Path, size: int) -> ConfigError:
    return ConfigError(
        f"{where} brings the archive to {size} bytes; at most {MAX_ARCHIVE_BYTES} bytes",
        hint="verify an object's own archive directories only",
    )


def _too_many_custody_bytes(where: Path, size: int) -> ConfigError:
    return ConfigError(
        f"{where} brings the archive to {size} bytes of custody segments; at most "
        f"{MAX_CUSTODY_ARCHIVE_BYTES} bytes of custody segments",
        hint="verify an object's own archive directories only",
    )


def _read_segment_file(file: Path, limit: int = MAX_SEGMENT_BYTES) -> bytes:
    """A segment file's bytes, at most one more than ``limit`` (decode refuses that):
    directories come from other hosts, and reading a whole file first let one huge file,
    or a name linked to ``/dev/zero``, take all memory. Only regular files are read (a
    FIFO would block the verification for good)."""
    try:
        if not file.is_file():
            raise ConfigError(
                f"{file} is not a regular file",
                hint="an archive directory holds only the segment files `gateway object "
                "archive` wrote",
            )
        with open(file, "rb") as handle:
            # read(limit + 1) allocates all of it at once (128 MiB for every segment, most
            # of a verification's memory): read what the file holds, then on to the limit
            # should it have grown.
            chunks = [handle.read(min(os.fstat(handle.fileno()).st_size, limit) + 1)]
            read = len(chunks[0])
            while chunks[-1] and read <= limit:
                chunks.append(handle.read(min(1 << 20, limit + 1 - read)))
                read += len(chunks[-1])
            return b"".join(chunks)
    except OSError as exc:
        raise ConfigError(f"cannot read {file}: {exc.strerror}") from exc


#: Chains of segments tried against the base's root before giving up (they differ only
#: where spares of compactions that never committed start where committed ones do).
MAX_CHAINS_TRIED = 64

S = TypeVar("S")


def _chains(
    segments: Sequence[S],
    size: int,
    reach: list[int],
    *,
    start: Callable[[S], int],
    length: Callable[[S], int],
) -> Iterator[list[S]]:
    """Chains of segments contiguous from 0 up to at least ``size`` (entries, or hops of
    archived handoffs), longest segments first where several start at the same place;
    ``reach[0]`` is set to how far contiguous segments reach (for the error when there
    is no chain). Segments come from outside (other hosts' archives, unsigned): each
    position from which no chain reaches ``size`` is explored once, so overlapping
    segments cost time linear in their number, never the number of their combinations."""
    by_start: dict[int, list[S]] = {}
    for segment in segments:
        if start(segment) < size and length(segment):
            by_start.setdefault(start(segment), []).append(segment)
    for group in by_start.values():
        group.sort(key=lambda s: -length(s))
    dead: set[int] = set()  # positions from which no chain reaches ``size``
    # Depth first, without recursion (a chain may be thousands of segments long). A frame
    # is [position, next candidate, whether a chain was found below it]; ``path`` holds
    # the segments leading to the top frame.
    frames: list[list[Any]] = [[0, 0, False]]
    path: list[S] = []

    def leave(found: bool) -> None:
        frames.pop()
        if frames:
            path.pop()
            if found:
                frames[-1][2] = True

    while frames:
        frame = frames[-1]
        position, index, found = frame
        reach[0] = max(reach[0], position)
        if position >= size:
            yield list(path)
            leave(True)
            continue
        candidates = by_start.get(position, [])
        while index < len(candidates) and position + length(candidates[index]) in dead:
            index += 1
        if index == len(candidates):
            if not found:
                dead.add(position)
            leave(found)
            continue
        frame[1] = index + 1
        segment = candidates[index]
        path.append(segment)
        frames.append([position + length(segment), 0, False])


@dataclass(frozen=True, slots=True)
class _Handoff:
    """One archived handoff, parsed once: its envelopes, the commitment its departure
    states (``C_k``; empty for a departure of a format that commits to nothing) and the
    commitment after it computed from that (``C_{k+1}``; empty likewise)."""

    departure: dsse.Envelope
    arrival: dsse.Envelope
    claimed: bytes
    after: bytes


def _parsed_handoffs(segment: CustodySegment) -> list[_Handoff]:
    """``segment``'s handoffs, each envelope parsed and each commitment hashed once; none
    when one does not parse (unsigned bytes: the segment is passed over)."""
    handoffs = []
    try:
        for raw_departure, raw_arrival in zip(segment.departures, segment.arrivals, strict=True):
            departure = dsse.from_json(raw_departure, max_size=MAX_CUSTODY_SEGMENT_BYTES)
            arrival = dsse.from_json(raw_arrival, max_size=MAX_CUSTODY_SEGMENT_BYTES)
            claimed = Checkpoint.decode(departure.payload).custody
            after = (
                custody_chain.step(claimed, departure.payload, arrival.payload) if claimed else b""
            )
            handoffs.append(_Handoff(departure, arrival, claimed, after))
    except GatewayError:
        return []
    return handoffs


def archived_custody(
    segments: Sequence[CustodySegment], lineage: Lineage, *, object_id: str
) -> tuple[tuple[dsse.Envelope, ...], tuple[dsse.Envelope, ...]]:
    """The handoffs archived before the oldest carried departure of ``lineage`` (ADR 0010
    step 2), from ``segments`` (several hosts' archives, spares included): a contiguous
    run from hop 0 that digests to that departure's ``custody``. Only the digest is
    checked here; the signatures and ADR 0004's rules are checked over the reassembled
    history by :func:`verify_archived`. ((), ()) when nothing is archived.

    The segments are unsigned and any number may start at one place. Trying runs of them
    from hop 0 hashed each run's commitment whole (up to MAX_CHAINS_TRIED: a decoy beside
    each of the first six handoffs made 64 runs). Here the run is followed back from the
    commitment the oldest carried departure signed: each departure states the commitment
    before it (``C_k``), so each handoff is hashed once, from that, and only a handoff
    whose ``C_{k+1}`` is the one needed can stand at ``k`` (SHA-256); among segments
    holding it, the one linking furthest back is taken, as for entries. Departures of a
    format that commits to nothing come first (no downgrade, ADR 0010 rule 5): those
    (and only those) are searched from hop 0 as before (:func:`_uncommitted_run`)."""
    if not lineage.checkpoints:
        return (), ()
    oldest = Checkpoint.decode(lineage.checkpoints[0].payload)
    count = archived_before(oldest)
    if not count:
        return (), ()
    for segment in segments:
        if segment.object_id != object_id:
            raise LineageError(
                f"a custody segment is of {segment.object_id}, not {object_id}",
                hint="give only the archive directories of the object verified",
            )
    # Whether contiguous segments reach the count at all (linear in their number, however
    # they overlap: see _chains), to say a segment is missing rather than altered.
    reach = [0]
    fitting = [s for s in segments if s.first + len(s.departures) <= count]
    runs = _chains(
        fitting, count, reach, start=lambda s: s.first, length=lambda s: len(s.departures)
    )
    if next(runs, None) is None:
        raise LineageError(
            f"the archive holds handoffs 0 to {reach[0] - 1} contiguously; the object's oldest "
            f"carried departure follows {count} archived handoffs",
            hint="a custody segment is missing; export the archive of every host that held "
            "the object and pass each with --archive",
        )
    parsed = [_parsed_handoffs(segment) for segment in fitting]
    # (hop, commitment after it) -> (where its segment's links run back to, segment, index)
    linked: dict[tuple[int, bytes], tuple[int, int, int]] = {}
    for number, handoffs in enumerate(parsed):
        first, low = fitting[number].first, 0
        for index, handoff in enumerate(handoffs):
            if not handoff.claimed:
                continue
            if not index or handoff.claimed != handoffs[index - 1].after:
                low = index
            key = (first + index, handoff.after)
            known = linked.get(key)
            if known is None or first + low < known[0]:
                linked[key] = (first + low, number, index)
    pieces: list[list[_Handoff]] = []
    position, need = count, oldest.custody
    while position > 0:
        found = linked.get((position - 1, need))
        if found is None:
            break
        low, number, index = found
        piece = parsed[number][low - fitting[number].first : index + 1]
        pieces.append(piece)
        position, need = low, piece[0].claimed
    if position == 0:
        prefix: list[_Handoff] | None = [] if need == custody_chain.genesis(object_id) else None
    else:
        prefix = _uncommitted_run(fitting, parsed, position, need, object_id)
    if prefix is None:
        raise LineageError(
            f"the {count} archived handoffs do not digest to the custody the oldest carried "
            f"departure (by {oldest.host}) commits to",
            hint="the archive is not this object's, or a handoff in it was hidden, reordered, "
            "altered or invented",
        )
    run = [*prefix, *(handoff for piece in reversed(pieces) for handoff in piece)]
    return tuple(h.departure for h in run), tuple(h.arrival for h in run)


@dataclass(frozen=True, slots=True)
class _Uncommitted:
    """The leading handoffs of a custody segment whose departures commit to nothing."""

    number: int
    first: int
    length: int


def _uncommitted_run(
    segments: Sequence[CustodySegment],
    parsed: Sequence[list[_Handoff]],
    size: int,
    target: bytes,
    object_id: str,
) -> list[_Handoff] | None:
    """Handoffs 0 to ``size - 1``, all of departures that commit to nothing (so the run
    cannot be followed back), that digest from ``C_0`` to ``target``; None if no run does.
    Runs are tried from hop 0, at most MAX_CHAINS_TRIED, and each segment's part is hashed
    once per commitment it is reached with (a run shares the work of its prefix): at worst
    MAX_CHAINS_TRIED times these handoffs' bytes, and only objects older than ADR 0010
    have them."""
    views = []
    for number, handoffs in enumerate(parsed):
        first = segments[number].first
        if not handoffs or first >= size:
            continue
        length = 0
        while length < min(len(handoffs), size - first) and not handoffs[length].claimed:
            length += 1
        if length:
            views.append(_Uncommitted(number, first, length))
    runs = _chains(views, size, [0], start=lambda v: v.first, length=lambda v: v.length)
    after: dict[tuple[int, bytes], bytes] = {}
    for tried, run in enumerate(runs):
        if tried == MAX_CHAINS_TRIED:
            break
        value = custody_chain.genesis(object_id)
        for view in run:
            key = (view.number, value)
            if key not in after:
                for handoff in parsed[view.number][: view.length]:
                    value = custody_chain.step(
                        value, handoff.departure.payload, handoff.arrival.payload
                    )
                after[key] = value
            value = after[key]
        if value == target:
            return [h for v in run for h in parsed[v.number][: v.length]]
    return None


@dataclass(frozen=True, slots=True)
class _Indexed:
    """What verification keeps of one entry segment while it looks for the run: the leaf
    hash of each entry below the base's size (32 bytes each, joined), where the entries
    stop linking to the one before (``breaks``, 0 first) and the ``prev`` each of those
    names. Never the entries themselves: those are read again, one segment at a time."""

    start: int
    leaves: bytes
    breaks: list[int]
    links: list[bytes]
    #: index of the first entry that names no ``prev`` (the index stops there), or None
    unreadable: int | None

    def below(self, size: int) -> _Indexed:
        """The index of the entries before entry ``size`` (the base's size)."""
        count = max(size - self.start, 0)
        if count * _HASH >= len(self.leaves) and (
            self.unreadable is None or self.unreadable < count
        ):
            return self
        kept = bisect.bisect_left(self.breaks, count)
        return _Indexed(
            self.start,
            self.leaves[: count * _HASH],
            self.breaks[:kept],
            self.links[:kept],
            self.unreadable if self.unreadable is not None and self.unreadable < count else None,
        )

    @property
    def end(self) -> int:
        return self.start + len(self.leaves) // _HASH

    def leaf(self, position: int) -> bytes:
        at = (position - self.start) * _HASH
        return self.leaves[at : at + _HASH]


_HASH = 32
_PREV = b'"prev":"'


def _named_prev(raw: bytes) -> bytes | None:
    """The ``prev`` an entry's bytes name, read without decoding the entry (its canonical
    form puts ``prev`` after every string field that could hold the same text, so the last
    occurrence is the field); None when there is none. Used only to choose the run: every
    entry of the run chosen is decoded and checked in full afterwards."""
    at = raw.rfind(_PREV)
    end = raw.find(b'"', at + len(_PREV)) if at >= 0 else -1
    if end - at - len(_PREV) not in (0, 2 * _HASH):
        return None
    try:
        return bytes.fromhex(raw[at + len(_PREV) : end].decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return None


def _index(segment: Segment, count: int) -> _Indexed:
    """``segment``'s first ``count`` entries indexed (see :class:`_Indexed`); an entry
    that names no ``prev`` (unsigned bytes) ends the index."""
    leaves: list[bytes] = []
    breaks: list[int] = []
    links: list[bytes] = []
    previous: bytes | None = None
    unreadable = None
    for index, raw in enumerate(segment.entries[: max(count, 0)]):
        prev = _named_prev(raw)
        if prev is None:
            unreadable = index
            break
        if prev != previous:
            breaks.append(index)
            links.append(prev)
        previous = merkle.leaf_hash(raw)
        leaves.append(previous)
    return _Indexed(segment.start, b"".join(leaves), breaks, links, unreadable)


def _archived_run(
    segments: Sequence[EntrySegment], base: Base
) -> tuple[list[tuple[int, int, int]], list[_Indexed]]:
    """Where entries 0 to ``base.size - 1`` are in ``segments`` (several hosts' archives,
    spares included): the run that ends in the entry the base names (its ``head``) and
    links back, entry by entry, to entry 0 through each entry's ``prev`` (the leaf hash of
    the one before), as pieces (segment number, first index, end index), oldest first;
    and the segments indexed. The root is checked by :func:`_check_archived`.

    The segments are unsigned, so any number may start at one place. Each is read once
    here, one at a time, and each entry hashed once (trying chains of segments decoded
    and hashed each chain whole: up to 64 times the work). The run is followed back from
    the head: only the entry whose leaf hash the next one names can stand before it
    (SHA-256), so at each position at most one candidate links, and among the segments
    holding it the one whose entries keep linking furthest back is taken (what they hold
    in common is the same entries). Linear in the entries the segments hold, for each
    position reached times the segments overlapping it."""
    indexed: list[_Indexed] = []
    problem = ""
    for segment in segments:
        if isinstance(segment, SegmentFile):  # indexed as read_archives read it
            held = segment.index.below(base.size)
        else:
            held = _index(segment, base.size - segment.start)
        indexed.append(held)
        if held.unreadable is not None and not problem:
            problem = f"archived entry {held.start + held.unreadable} is not a lineage entry"
    # Segments join the candidates as the walk, going back, reaches their last entry, and
    # leave once it passes their first.
    by_end = sorted(range(len(indexed)), key=lambda n: -indexed[n].end)
    joined = 0
    candidates: set[int] = set()
    pieces: list[tuple[int, int, int]] = []
    position, need = base.size, base.head
    while position > 0:
        at = position - 1
        while joined < len(by_end) and indexed[by_end[joined]].end > at:
            candidates.add(by_end[joined])
            joined += 1
        best: tuple[int, int, int] | None = None  # (low, segment, which break)
        for number in list(candidates):
            held = indexed[number]
            if held.start > at:
                candidates.discard(number)
            elif held.leaf(at) == need:
                which = bisect.bisect_right(held.breaks, at - held.start) - 1
                low = held.start + held.breaks[which]
                if best is None or low < best[0]:
                    best = (low, number, which)
        if best is None:
            break
        low, number, which = best
        held = indexed[number]
        pieces.append((number, low - held.start, position - held.start))
        position, need = low, held.links[which]
    if position > 0:
        covered = any(s.start < position <= s.start + _length(s) for s in segments)
        if covered or problem:
            because = f" ({problem})" if problem else ""
            raise LineageError(
                f"the archived entries do not match the root the object's base signed: no "
                f"archived entry {position - 1} is the one entry {position} links to{because}",
                hint="the archive is not this object's, or was altered",
            )
        raise LineageError(
            f"the archive holds no entry {position - 1}; the object's base covers entries 0 "
            f"to {base.size - 1}",
            hint="an archive segment is missing; export the archive of every host that held "
            "the object and pass each with --archive",
        )
    pieces.reverse()
    return pieces, indexed


def _issued_at(checkpoint: Checkpoint, _payload: bytes) -> datetime:
    return checkpoint.issued_at


def _archived_departures(
    departures: Sequence[dsse.Envelope], *, object_id: str, trust: TrustStore, size: int
) -> list[Checkpoint]:
    """The archived departures, each signature checked as verify_lineage checks a
    checkpoint's (by the host it names, whose recording of the entries it covers
    :func:`_check_archived` checks), each covering more entries than the one before and
    none past the base's ``size``."""
    checkpoints: list[Checkpoint] = []
    covered = 0
    for index, envelope in enumerate(departures):
        # Decoded once: the host it names picks the keys, and the signature is then
        # checked over these very bytes (the envelope's payload), so the decoded value
        # is the signed one.
        checkpoint = Checkpoint.decode(envelope.payload)
        host = checkpoint.host
        _open_signed(
            envelope,
            host=host,
            payload_type=dsse.PayloadType.CHECKPOINT,
            trust=trust,
            what=f"checkpoint {index} by {host} of {object_id}",
            signed_at=functools.partial(_issued_at, checkpoint),
        )
        if checkpoint.object_id != object_id:
            raise LineageError(f"checkpoint {index} is for {checkpoint.object_id}, not {object_id}")
        if not covered < checkpoint.size <= size:
            raise LineageError(
                f"checkpoint {index} covers {checkpoint.size} entries; expected more than "
                f"{covered} and at most {size} (the archived ones)"
            )
        check_departure(checkpoint, index)
        covered = checkpoint.size
        checkpoints.append(checkpoint)
    return checkpoints


def _check_archived(
    segments: Sequence[EntrySegment],
    pieces: Sequence[tuple[int, int, int]],
    indexed: Sequence[_Indexed],
    base: Base,
    checkpoints: list[Checkpoint],
    *,
    object_id: str,
    following: int,
) -> str:
    """What verify_lineage (and, for the first ``following`` departures, verify_custody's
    entry after each departure) checks of the archived entries as part of the whole
    history, one segment at a time: sequence numbers, links, epochs, the creation first;
    that the entries each checkpoint covers were recorded by its host, end at its epoch
    and grants, and rebuild its root; and that they rebuild the base's root and head.
    ``checkpoints``: all of them, archived and carried, oldest first (a first-format one's
    grants are filled in from its last entry, as verify_lineage does). Returns the
    creator (the host of entry 0)."""
    frontier = merkle.CompactRange()
    stops = {c.size: i for i, c in enumerate(checkpoints) if c.size <= base.size}
    after = {c.size: i for i, c in enumerate(checkpoints[:following]) if c.size < base.size}
    position, previous, epoch, cursor, creator = 0, b"", 0, 0, ""
    for number, low, high in pieces:
        segment = _loaded(segments[number])  # its digest is the one indexed (SegmentFile)
        held = indexed[number]
        leaves = [held.leaf(held.start + index) for index in range(low, high)]
        for raw, leaf in zip(segment.entries[low:high], leaves, strict=True):
            # Not through the entry memo: archived entries are read once, and 16,384 of
            # them held there would be most of this verification's memory.
            entry = LineageEntry._decode(raw)
            if entry.seq != position:
                raise LineageError(f"entry {position} has sequence number {entry.seq}")
            if entry.prev != previous:
                raise LineageError(f"entry {position} does not link to entry {position - 1}")
            if position == 0:
                if entry.kind is not EntryKind.CREATED or entry.epoch != 0:
                    raise LineageError(
                        "the lineage does not start with the object's creation at epoch 0"
                    )
                creator = entry.host
            elif entry.epoch != epoch + (entry.kind is EntryKind.FROZEN):
                raise LineageError(
                    f"entry {position} ({entry.kind.value}) is at epoch {entry.epoch} after "
                    f"epoch {epoch}; only a freeze raises the epoch, by one"
                )
            while cursor < len(checkpoints) and checkpoints[cursor].size <= position:
                cursor += 1
            if cursor < len(checkpoints):
                _check_covered(checkpoints, cursor, entry)
            if position in after:
                _check_taken_in(checkpoints[after[position]], after[position], entry, object_id)
            previous, epoch, position = leaf, entry.epoch, position + 1
        for size, head in frontier.append_leaves(leaves, stops).items():
            checkpoint = checkpoints[stops[size]]
            if head != checkpoint.root:
                raise LineageError(
                    f"checkpoint {stops[size]} by {checkpoint.host} does not match the entries "
                    "it covers"
                )
        del segment, leaves  # one segment held at a time
    if position != base.size or previous != base.head or frontier.root() != base.root:
        raise LineageError(
            "the archived entries do not match the root the object's base signed",
            hint="the archive is not this object's, or was altered",
        )
    if epoch != base.epoch:
        raise LineageError(
            f"the last archived entry is at epoch {epoch}; the object's base says {base.epoch}"
        )
    return creator


def _check_covered(checkpoints: list[Checkpoint], index: int, entry: LineageEntry) -> None:
    """Entry ``entry`` lies in checkpoint ``index``'s range: recorded by its host, and if it
    is the last one, at its epoch with its grants."""
    checkpoint = checkpoints[index]
    if entry.host != checkpoint.host:
        raise LineageError(
            f"entry {entry.seq} is recorded by {entry.host} but vouched for by {checkpoint.host}",
            hint="each host signs only what it recorded",
        )
    if entry.seq != checkpoint.size - 1:
        return
    if not checkpoint.credentials_digest:
        # First-format checkpoint: its grants are its last entry's (as verify_lineage).
        checkpoint = replace(checkpoint, credentials_digest=entry.credentials_digest)
        checkpoints[index] = checkpoint
    if checkpoint.epoch != entry.epoch:
        raise LineageError(
            f"checkpoint {index} by {checkpoint.host} is for epoch {checkpoint.epoch}, but the "
            f"last entry it covers is at epoch {entry.epoch}"
        )
    if checkpoint.credentials_digest != entry.credentials_digest:
        raise LineageError(
            f"checkpoint {index} by {checkpoint.host} records other grants than the last entry "
            "it covers"
        )


def _check_taken_in(departure: Checkpoint, index: int, entry: LineageEntry, object_id: str) -> None:
    """The entry right after departure ``index`` is its receiver's REHOSTED entry
    (gateway.custody rule 2, for a departure whose next entry is archived)."""
    if (
        entry.kind is not EntryKind.REHOSTED
        or entry.host != departure.to
        or entry.epoch != departure.epoch
    ):
        raise CustodyError(
            f"the lineage does not record {departure.to} taking {object_id} in right after "
            f"departure {index}",
            hint="refuse the object; an entry of its history was dropped or moved",
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedHistory:
    """What :func:`verify_history` verified: the whole history, and the archived handoffs
    it put back in front of the carried ones (so a caller that shows them, such as the
    audit's custody story, need not find and parse them again)."""

    lineage: VerifiedLineage
    #: The archived handoffs put back, hop 0 first: each departure's envelope, and at
    #: the same index its receiver's signed arrival. () when no handoff is archived.
    departures: tuple[dsse.Envelope, ...] = ()
    arrivals: tuple[dsse.Envelope, ...] = ()


def verify_archived(
    segments: Sequence[Segment | SegmentFile | CustodySegment],
    lineage: Lineage,
    *,
    object_id: str,
    trust: TrustStore,
    sealed: bool,
) -> VerifiedLineage:
    """The whole history from ``segments`` and a compacted ``lineage``, verified (see
    :func:`verify_history`, which also returns the archived handoffs it put back)."""
    return verify_history(
        segments, lineage, object_id=object_id, trust=trust, sealed=sealed
    ).lineage


def verify_history(
    segments: Sequence[Segment | SegmentFile | CustodySegment],
    lineage: Lineage,
    *,
    object_id: str,
    trust: TrustStore,
    sealed: bool,
) -> VerifiedHistory:
    """The whole history from ``segments`` and a compacted ``lineage``: the archived
    entries rebuild the base's root and link to the carried ones, and the history passes
    every check the receiver's verify_lineage makes, as if it had never been compacted.

    ``segments`` may come from several hosts' archives and include spares (segments of a
    compaction that never committed): the chain used is contiguous from entry 0 to the
    base, and must rebuild the root the base signed.

    Handoffs archived too (ADR 0010 step 2, :class:`CustodySegment`) are put back in
    front of the carried ones once they digest to the oldest carried departure's
    commitment (:func:`archived_custody`); the whole history then passes verify_lineage's
    checks (every original departure signature) and the custody rules of ADR 0004/0010
    from the first handoff (every arrival signature, the chain of holders, every
    commitment).

    Bounded in memory by the largest segment plus 32 bytes per archived entry: the
    carried lineage is verified by verify_lineage, the archived entries segment by
    segment (:func:`_archived_run`, then :func:`_check_archived`), never all decoded at
    once (that peaked at about 12 times the bytes read). Custody segments are held
    decoded (bounded by MAX_CUSTODY_ARCHIVE_BYTES).

    Returns the verified history and the archived handoffs put back (their departures
    and arrivals, as verified: the run :func:`archived_custody` chose).

    Raises :class:`LineageError` (or a signature's verification / custody error)."""
    verified = verify_lineage(lineage, object_id=object_id, trust=trust, sealed=sealed)
    base = lineage.base_claim()
    if base is None:
        return VerifiedHistory(lineage=verified)
    handoffs = [s for s in segments if isinstance(s, CustodySegment)]
    entries_archived = [s for s in segments if not isinstance(s, CustodySegment)]
    departures, arrivals = archived_custody(handoffs, lineage, object_id=object_id)
    for segment in entries_archived:
        if segment.object_id != object_id:
            raise LineageError(
                f"an archive segment is of {segment.object_id}, not {object_id}",
                hint="give only the archive directories of the object verified",
            )
    pieces, indexed = _archived_run(entries_archived, base)
    archived = _archived_departures(departures, object_id=object_id, trust=trust, size=base.size)
    if archived and verified.checkpoints and verified.checkpoints[0].size <= archived[-1].size:
        raise LineageError(
            f"checkpoint {len(archived)} covers {verified.checkpoints[0].size} entries; "
            f"expected more than {archived[-1].size}"
        )
    checkpoints = [*archived, *verified.checkpoints]
    in_transit = len(checkpoints) > len(arrivals) + len(lineage.arrivals)
    creator = _check_archived(
        entries_archived,
        pieces,
        indexed,
        base,
        checkpoints,
        object_id=object_id,
        # verify_custody checks the entry after each completed departure, where carried
        following=len(checkpoints) - in_transit if departures else 0,
    )
    del pieces, indexed
    check_creator(creator, object_id)
    if creator != base.creator:
        # The receiver compares the base's creator with the first departure's sender
        # where it carries that departure; with handoffs archived nothing carried stands
        # for entry 0, and only this check sees a base naming another host of the domain.
        raise _other_creator(base.creator, object_id, f"entry 0 was recorded by {creator}")
    result = replace(
        verified,
        hosts=(*(c.host for c in archived), *verified.hosts),
        checkpoints=tuple(checkpoints),
        base=None,
        creator=creator,
    )
    if departures:
        from gateway.custody import verify_custody  # custody imports the lineage module

        # The object with its archived handoffs put back: verify_custody checks what its
        # entries show where they are carried; _check_archived did where they are not.
        restored = Lineage(
            entries=lineage.entries,
            checkpoints=(*departures, *lineage.checkpoints),
            arrivals=(*arrivals, *lineage.arrivals),
            base=lineage.base,
        )
        verify_custody(
            restored,
            result.checkpoints,
            object_id=object_id,
            trust=trust,
            in_transit=in_transit,
            from_archive=len(departures),
        )
    return VerifiedHistory(lineage=result, departures=departures, arrivals=arrivals)
