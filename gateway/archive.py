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
  they are authenticated by the signed roots in the object.

No I/O except :class:`ArchiveDir`, which reads and writes segment files.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
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
from gateway.errors import ConfigError, GatewayError, LineageError
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
    Lineage,
    LineageEntry,
    VerifiedLineage,
    archived_before,
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
            and carried_bytes(lineage) > self.max_bytes
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
    def decode(cls, raw: bytes) -> Segment:
        what = "archive segment"
        if len(raw) > MAX_SEGMENT_BYTES:
            raise LineageError(f"{what} is {len(raw)} bytes; at most {MAX_SEGMENT_BYTES}")
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

    def holder(at: int) -> str:
        covered = [d for d in departures if d.size <= at]
        return covered[-1].to if covered else lineage.creator()

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
    return [s for s in read_archives([path]) if isinstance(s, Segment)]


def read_custody(path: Path) -> list[CustodySegment]:
    """The custody segments (archived handoffs, ADR 0010 step 2) in an archive directory."""
    return [s for s in read_archives([path]) if isinstance(s, CustodySegment)]


def read_archives(paths: Sequence[Path]) -> list[Segment | CustodySegment]:
    """The segments in several archive directories (or segment files), oldest first.

    After migrations an object's archive is spread over the hosts that compacted it (each
    keeps its own segments); the directories exported from each are read together here.
    Two segments with the same start (a spare left by a compaction that did not commit,
    and the one that did) are both kept: :func:`verify_archived` picks the chain."""
    # Directories come from other hosts: the bytes their files would give are added up
    # before any is read, and counted again as read (a file may grow after its stat).
    files: list[Path] = []
    announced = 0
    for path in paths:
        found = sorted([*path.glob("*.seg"), *path.glob("*.cus")]) if path.is_dir() else [path]
        files.extend(found)
        if len(files) > MAX_SEGMENTS:
            raise ConfigError(
                f"{path} brings the archive to {len(files)} segments; at most {MAX_SEGMENTS}",
                hint="verify an object's own archive directories only",
            )
        announced += sum(_size_of(file) for file in found)
        if announced > MAX_ARCHIVE_BYTES:
            raise _too_many_bytes(path, announced)
    segments: list[Segment] = []
    handoffs: list[CustodySegment] = []
    read = 0
    for file in files:
        raw = _read_segment_file(file)
        read += len(raw)
        if read > MAX_ARCHIVE_BYTES:
            raise _too_many_bytes(file, read)
        if file.suffix == ".cus":
            handoffs.append(CustodySegment.decode(raw))
        else:
            segments.append(Segment.decode(raw))
    return [*sorted(segments, key=lambda s: (s.start, -len(s.entries))), *handoffs]


S = TypeVar("S", Segment, CustodySegment)


def _size_of(file: Path) -> int:
    """The bytes of a segment file that would be read (its size as the file system says,
    up to one over :data:`MAX_SEGMENT_BYTES`; 0 when it cannot say: reading it then
    names the problem); what is read is bounded and counted all the same."""
    try:
        return min(file.stat().st_size, MAX_SEGMENT_BYTES + 1)
    except OSError:
        return 0


def _too_many_bytes(where: Path, size: int) -> ConfigError:
    return ConfigError(
        f"{where} brings the archive to {size} bytes; at most {MAX_ARCHIVE_BYTES} bytes",
        hint="verify an object's own archive directories only",
    )


def _read_segment_file(file: Path) -> bytes:
    """A segment file's bytes, at most one more than :data:`MAX_SEGMENT_BYTES` (decode
    refuses that): directories come from other hosts, and reading a whole file first
    let one huge file, or a name linked to ``/dev/zero``, take all memory. Only regular
    files are read (a FIFO would block the verification for good)."""
    try:
        if not file.is_file():
            raise ConfigError(
                f"{file} is not a regular file",
                hint="an archive directory holds only the segment files `gateway object "
                "archive` wrote",
            )
        with open(file, "rb") as handle:
            return handle.read(MAX_SEGMENT_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {file}: {exc.strerror}") from exc


#: Chains of segments tried against the base's root before giving up (they differ only
#: where spares of compactions that never committed start where committed ones do).
MAX_CHAINS_TRIED = 64


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


def archived_custody(
    segments: Sequence[CustodySegment], lineage: Lineage, *, object_id: str
) -> tuple[tuple[dsse.Envelope, ...], tuple[dsse.Envelope, ...]]:
    """The handoffs archived before the oldest carried departure of ``lineage`` (ADR 0010
    step 2), from ``segments`` (several hosts' archives, spares included): a contiguous
    run from hop 0 that digests to that departure's ``custody``. Only the digest is
    checked here; the signatures and ADR 0004's rules are checked over the reassembled
    history by :func:`verify_archived`. ((), ()) when nothing is archived."""
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
    # Runs of segments that continue where the run ends (spares of compactions that did
    # not commit may overlap), none past the count; bounded by MAX_CHAINS_TRIED runs. The
    # segments are unsigned and the count is the presenter's: a recursive search over
    # every combination took exponential time (and overflowed the stack on a long run).
    reach = [0]
    fitting = [s for s in segments if s.first + len(s.departures) <= count]
    runs = _chains(
        fitting, count, reach, start=lambda s: s.first, length=lambda s: len(s.departures)
    )
    # Each segment's envelopes are parsed once (None: one does not parse), whatever number
    # of runs it is in: a run then costs only the hashing of its commitment.
    parsed: dict[int, tuple[list[dsse.Envelope], list[dsse.Envelope]] | None] = {}

    def envelopes(
        segment: CustodySegment,
    ) -> tuple[list[dsse.Envelope], list[dsse.Envelope]] | None:
        if id(segment) not in parsed:
            try:
                parsed[id(segment)] = (
                    [dsse.from_json(raw, max_size=MAX_SEGMENT_BYTES) for raw in segment.departures],
                    [dsse.from_json(raw, max_size=MAX_SEGMENT_BYTES) for raw in segment.arrivals],
                )
            except GatewayError:
                parsed[id(segment)] = None
        return parsed[id(segment)]

    found_any = False
    for tried, run in enumerate(runs):
        if tried == MAX_CHAINS_TRIED:
            break
        found_any = True
        pieces = [envelopes(segment) for segment in run]
        if any(piece is None for piece in pieces):
            continue
        opened = [e for piece in pieces if piece is not None for e in piece[0]]
        acks = [e for piece in pieces if piece is not None for e in piece[1]]
        value = custody_chain.commitment(
            object_id, [e.payload for e in opened], [e.payload for e in acks]
        )
        if value == oldest.custody:
            return tuple(opened), tuple(acks)
    if not found_any:
        raise LineageError(
            f"the archive holds handoffs 0 to {reach[0] - 1} contiguously; the object's oldest "
            f"carried departure follows {count} archived handoffs",
            hint="a custody segment is missing; export the archive of every host that held "
            "the object and pass each with --archive",
        )
    raise LineageError(
        f"the {count} archived handoffs do not digest to the custody the oldest carried "
        f"departure (by {oldest.host}) commits to",
        hint="the archive is not this object's, or a handoff in it was hidden, reordered, "
        "altered or invented",
    )


def _archived_entries(segments: Sequence[Segment], base: Base) -> list[LineageEntry]:
    """Entries 0 to ``base.size - 1`` from ``segments`` (several hosts' archives, spares
    included): the run that ends in the entry the base names (its ``head``) and links
    back, entry by entry, to entry 0 through each entry's ``prev`` (the leaf hash of the
    one before), and that rebuilds the root the base signed.

    The segments are unsigned, so any number may start at one place. A search over their
    chains decoded and hashed every chain it tried whole (up to 64: six positions of two
    one-entry segments each made an honest verification's work 40 times over). Here each
    entry is decoded and hashed once, and the run is followed back from the head: only
    the entry whose leaf hash the next one names can stand before it (SHA-256), so at
    each position at most one candidate links, and among the segments holding it the one
    whose entries keep linking furthest back is taken (what they hold in common is the
    same entries). Linear in the entries the segments hold."""
    # (position, leaf hash) -> (where its segment's links run back to, segment, index)
    linked: dict[tuple[int, bytes], tuple[int, int, int]] = {}
    decoded: list[list[LineageEntry]] = []
    unreadable: GatewayError | None = None
    for number, segment in enumerate(segments):
        held = segment.entries[: max(base.size - segment.start, 0)]
        try:
            entries = [LineageEntry.decode(raw) for raw in held]
        except GatewayError as exc:  # unsigned bytes: passed over, named if nothing fits
            unreadable = unreadable or exc
            entries = []
        decoded.append(entries)
        low = 0
        for index, entry in enumerate(entries):
            leaf = entry.leaf_hash()
            if index and entry.prev != entries[index - 1].leaf_hash():
                low = index
            key = (segment.start + index, leaf)
            known = linked.get(key)
            if known is None or segment.start + low < known[0]:
                linked[key] = (segment.start + low, number, index)
    run: list[list[LineageEntry]] = []
    position, need = base.size, base.head
    while position > 0:
        found = linked.get((position - 1, need))
        if found is None:
            break
        low, number, index = found
        start = segments[number].start
        piece = decoded[number][low - start : index + 1]
        run.append(piece)
        position, need = low, piece[0].prev
    if position > 0:
        covered = any(s.start < position <= s.start + len(s.entries) for s in segments)
        if covered or unreadable is not None:
            problem = f" ({unreadable.reason})" if unreadable is not None else ""
            raise LineageError(
                f"the archived entries do not match the root the object's base signed: no "
                f"archived entry {position - 1} is the one entry {position} links to{problem}",
                hint="the archive is not this object's, or was altered",
            )
        raise LineageError(
            f"the archive holds no entry {position - 1}; the object's base covers entries 0 "
            f"to {base.size - 1}",
            hint="an archive segment is missing; export the archive of every host that held "
            "the object and pass each with --archive",
        )
    archived = [entry for piece in reversed(run) for entry in piece]
    if merkle.root([e.leaf_hash() for e in archived]) != base.root:
        raise LineageError(
            "the archived entries do not match the root the object's base signed",
            hint="the archive is not this object's, or was altered",
        )
    return archived


def verify_archived(
    segments: Sequence[Segment | CustodySegment],
    lineage: Lineage,
    *,
    object_id: str,
    trust: TrustStore,
    sealed: bool,
) -> VerifiedLineage:
    """The whole history from ``segments`` and a compacted ``lineage``: the archived
    entries rebuild the base's root and link to the carried ones, and the reassembled
    history passes the receiver's verify_lineage as if it had never been compacted.

    ``segments`` may come from several hosts' archives and include spares (segments of a
    compaction that never committed): the chain used is contiguous from entry 0 to the
    base, and must rebuild the root the base signed.

    Handoffs archived too (ADR 0010 step 2, :class:`CustodySegment`) are put back in
    front of the carried ones once they digest to the oldest carried departure's
    commitment (:func:`archived_custody`); the whole history then passes verify_lineage
    (every original departure signature) and the custody rules of ADR 0004/0010 from the
    first handoff (every arrival signature, the chain of holders, every commitment).

    Raises :class:`LineageError` (or a signature's verification / custody error)."""
    verified = verify_lineage(lineage, object_id=object_id, trust=trust, sealed=sealed)
    base = lineage.base_claim()
    if base is None:
        return verified
    handoffs = [s for s in segments if isinstance(s, CustodySegment)]
    entries_archived = [s for s in segments if isinstance(s, Segment)]
    departures, arrivals = archived_custody(handoffs, lineage, object_id=object_id)
    for segment in entries_archived:
        if segment.object_id != object_id:
            raise LineageError(
                f"an archive segment is of {segment.object_id}, not {object_id}",
                hint="give only the archive directories of the object verified",
            )
    archived = _archived_entries(entries_archived, base)
    whole = Lineage(
        entries=(*archived, *lineage.entries),
        checkpoints=(*departures, *lineage.checkpoints),
        arrivals=(*arrivals, *lineage.arrivals),
    )
    result = verify_lineage(whole, object_id=object_id, trust=trust, sealed=sealed)
    if departures:
        from gateway.custody import verify_custody  # custody imports the lineage module

        verify_custody(
            whole,
            result.checkpoints,
            object_id=object_id,
            trust=trust,
            in_transit=len(whole.checkpoints) > len(whole.arrivals),
            from_archive=len(departures),
        )
    return result
