"""Offline verification of an archive a dishonest partner hands over (session 35): what it
costs in memory and hashing, and the bounds on custody segment files.

Each test here failed on main for the reason its docstring gives."""

from __future__ import annotations

import tracemalloc
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

import gateway.archive
from gateway import _custody_chain as custody_chain
from gateway import envelope as dsse
from gateway.archive import (
    CustodySegment,
    Segment,
    archived_custody,
    compact,
    custody_file_name,
    read_archives,
    segment_file_name,
    verify_archived,
)
from gateway.errors import ConfigError, LineageError
from gateway.lineage import Checkpoint, EntryKind, Lineage
from tests.test_compaction import created
from tests.test_custody_archive import OBJECT as CUSTODY_OBJECT
from tests.test_custody_archive import History, _offline, history  # noqa: F401 (fixture)
from tests.test_lineage import HOST_A, OBJECT, SIGNERS, T0, TRUST


def _history(segments: int, per_segment: int) -> tuple[Lineage, list[Segment]]:
    """An object compacted ``segments`` times, ``per_segment`` entries each time (keeping
    one carried): its lineage and its archive, oldest segment first."""
    obj = created()
    archive: list[Segment] = []
    for s in range(segments):
        for n in range(per_segment):
            obj = obj.record(EntryKind.EVALUATED, host=HOST_A, at=T0, detail=f"cycle {s}.{n}")
        lineage, segment = compact(
            obj.lineage, object_id=OBJECT, host=HOST_A, at=T0, signer=SIGNERS[HOST_A], keep=1
        )
        obj = replace(obj, lineage=lineage)
        archive.append(segment)
    return obj.lineage, archive


def _write(directory: Path, segments: Sequence[Segment | CustodySegment]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for segment in segments:
        name = (
            custody_file_name(segment)
            if isinstance(segment, CustodySegment)
            else segment_file_name(segment)
        )
        (directory / name).write_bytes(segment.encode())
        paths.append(directory / name)
    return paths


def test_verification_holds_one_segment_at_a_time(tmp_path: Path) -> None:
    """On main verify_archived held every segment decoded at once, peaking at about 12
    times the bytes read (20,000 entries, 11 MB: 134 MB), so MAX_ARCHIVE_BYTES (512 MiB)
    allowed about 6 GiB. Now the segments are walked one at a time and only 32 bytes per
    entry (its leaf hash) stay: the peak is a multiple of the largest segment plus that,
    whatever the number of segments (here 120 of 50 entries, 3.3 MB). On main each file
    was also read with read(MAX_SEGMENT_BYTES + 1), which allocates 128 MiB at once
    (traced: 134 MB here, whatever the file's size); now a file is read to its size."""
    lineage, archive = _history(120, 50)
    files = _write(tmp_path / "archive", archive)
    largest = max(path.stat().st_size for path in files)
    entries = sum(len(s.entries) for s in archive)
    verify_archived(archive, lineage, object_id=OBJECT, trust=TRUST, sealed=False)  # warm
    tracemalloc.start()
    try:
        read = read_archives([tmp_path / "archive"])
        whole = verify_archived(read, lineage, object_id=OBJECT, trust=TRUST, sealed=False)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert whole.size == lineage.size == entries + 1
    bound = 16 * largest + 128 * entries + (1 << 20)
    assert peak < bound, (peak, bound, sum(p.stat().st_size for p in files))


def test_streamed_verification_still_refuses_a_file_changed_between_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Segments are read again when verified (only one is held at a time): a file that
    changes after it was read first (another process, a partner's mount) is refused as
    such, never verified half from one version and half from the other. (On main every
    file was held whole from its one read: nothing to refuse, and nothing bounded.)"""
    lineage, archive = _history(3, 20)
    _write(tmp_path / "archive", archive)
    read = read_archives([tmp_path / "archive"])
    middle = tmp_path / "archive" / segment_file_name(archive[1])
    other = replace(archive[1], entries=archive[1].entries[:-1] + archive[0].entries[:1])
    middle.write_bytes(other.encode())
    with pytest.raises(ConfigError, match="changed"):
        verify_archived(read, lineage, object_id=OBJECT, trust=TRUST, sealed=False)


def test_a_custody_segment_file_is_bounded_by_what_an_object_can_carry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A custody segment holds handoffs an object carried, so it is never larger than an
    object could be (base64 and JSON around it); on main a .cus file was read up to
    MAX_SEGMENT_BYTES (128 MiB), an entry segment's bound, and decoded whole. Now its
    size is checked before it is read: over MAX_CUSTODY_SEGMENT_BYTES is a ConfigError
    naming the file, its size and the limit (the limit is lowered here)."""
    folder = tmp_path / "archive"
    folder.mkdir()
    big = folder / f"custody-{0:020d}+1.cus"
    big.write_bytes(b"{" + b" " * 4000 + b"}")
    monkeypatch.setattr(gateway.archive, "MAX_CUSTODY_SEGMENT_BYTES", 1000, raising=False)
    read = 0
    reading = gateway.archive._read_segment_file

    def counting(file: Path, limit: int = 0) -> bytes:
        nonlocal read
        read += 1
        return reading(file, limit) if limit else reading(file)

    monkeypatch.setattr(gateway.archive, "_read_segment_file", counting)
    with pytest.raises(ConfigError, match="at most 1000 bytes") as refused:
        read_archives([folder])
    assert str(big) in str(refused.value) and "4002" in str(refused.value)
    assert read == 0


def test_custody_segments_are_bounded_in_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The custody segments of one verification are held decoded together (their
    envelopes are parsed and every signature checked): on main only the archive's
    512 MiB bounded their sum. Now MAX_CUSTODY_ARCHIVE_BYTES does, from the files' sizes
    before any is read."""
    folder = tmp_path / "archive"
    folder.mkdir()
    for first in range(3):
        (folder / f"custody-{first:020d}+1.cus").write_bytes(b"{" + b" " * 998 + b"}")
    monkeypatch.setattr(gateway.archive, "MAX_CUSTODY_ARCHIVE_BYTES", 2500, raising=False)
    with pytest.raises(ConfigError, match="at most 2500 bytes of custody segments"):
        read_archives([folder])


def test_decoy_custody_segments_cost_one_hash_of_each_handoff(
    history: History,  # noqa: F811 (the fixture)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Custody segments are unsigned: a partner adds one-handoff segments that start where
    real ones do. On main archived_custody hashed the commitment of every run it tried
    from the first handoff, up to MAX_CHAINS_TRIED (64): a decoy beside each of the first
    six handoffs made 64 runs, the real one last, each hashed whole. Now the run is found
    from the oldest carried departure's commitment back, each handoff hashed once with
    the commitment its own departure claims: the bytes hashed are at most those of the
    handoffs the segments hold (main: about 40 times as many)."""
    lineage, archive = _offline(history)
    entries, custody = archive
    assert isinstance(custody, CustodySegment) and custody.first == 0
    count = len(custody.departures)
    assert count > 6

    def one(position: int, source: int) -> CustodySegment:
        return replace(
            custody,
            first=position,
            departures=custody.departures[source : source + 1],
            arrivals=custody.arrivals[source : source + 1],
        )

    decoys: list[Segment | CustodySegment] = [entries]
    for position in range(6):
        decoys += [one(position, position + 1), one(position, position)]  # the decoy first
    decoys.append(
        replace(custody, first=6, departures=custody.departures[6:], arrivals=custody.arrivals[6:])
    )
    held = sum(
        len(raw)
        for s in decoys
        if isinstance(s, CustodySegment)
        for raw in (*s.departures, *s.arrivals)
    )
    hashed = 0
    digest = custody_chain._digest

    def counting(*parts: bytes) -> bytes:
        nonlocal hashed
        hashed += sum(len(part) for part in parts)
        return digest(*parts)

    monkeypatch.setattr(custody_chain, "_digest", counting)
    whole = verify_archived(
        decoys, lineage, object_id=CUSTODY_OBJECT, trust=history.trust, sealed=False
    )
    assert len(whole.checkpoints) == len(lineage.checkpoints) + count
    # The envelopes' payloads are hashed, not the envelopes: at most what the segments
    # hold, plus verify_custody's own pass over the run found (once more).
    assert hashed <= 2 * held, (hashed, held)


def test_a_decoy_custody_segment_is_still_refused_alone(
    history: History,  # noqa: F811 (the fixture)
) -> None:
    """The search from the commitment back finds only a run whose every handoff hashes to
    the commitment the next one claims, down to the object's first: a decoy in place of
    a real handoff is refused as before."""
    lineage, archive = _offline(history)
    entries, custody = archive
    assert isinstance(custody, CustodySegment)
    forged = replace(
        custody,
        departures=(custody.departures[1], *custody.departures[1:]),
        arrivals=(custody.arrivals[1], *custody.arrivals[1:]),
    )
    with pytest.raises(LineageError, match="do not digest to the custody"):
        verify_archived(
            [entries, forged], lineage, object_id=CUSTODY_OBJECT, trust=history.trust, sealed=False
        )


def test_an_archived_history_is_held_to_the_receivers_rules_segment_by_segment() -> None:
    """The archived entries are no longer run through verify_lineage as one reassembled
    history (that held them all decoded): their checks run segment by segment. A holder
    signs a base over any prefix it likes; one whose epoch jumps without a freeze
    (the fencing token, which only a freeze raises, by one) is still refused, though the
    base's root and head match the archive. Passes on main too: it guards the rewrite."""
    obj = created()
    lineage = obj.lineage
    last = lineage.entries[-1]
    for n in range(3):
        lineage = lineage.append(
            EntryKind.EVALUATED,
            host=HOST_A,
            at=T0,
            epoch=last.epoch + (2 if n == 1 else 0) + (2 if n == 2 else 0),
            generation=last.generation + n + 1,
            data_digest=last.data_digest,
            credentials_digest=last.credentials_digest,
            detail=f"cycle {n}",
        )
    compacted, segment = compact(
        lineage, object_id=OBJECT, host=HOST_A, at=T0, signer=SIGNERS[HOST_A], keep=1
    )
    with pytest.raises(LineageError, match="only a freeze raises the epoch"):
        verify_archived([segment], compacted, object_id=OBJECT, trust=TRUST, sealed=False)


# --- the custody run, from made-up handoffs (archived_custody checks digests only) --------

_B = "spiffe://org-b.example/cluster/east/gateway"


def _envelope(payload: bytes, payload_type: str) -> dsse.Envelope:
    return dsse.Envelope(
        payload=payload,
        payload_type=payload_type,
        signatures=(dsse.Signature(keyid="k", sig=b"x"),),
    )


def _handoffs(committing_from: int, count: int) -> tuple[list[bytes], list[bytes], bytes]:
    """``count`` handoffs whose departures from ``committing_from`` on commit to the
    custody before them (the earlier ones are of the format that commits to nothing):
    their departures' and arrivals' JSON, and the commitment after the last."""
    value = custody_chain.genesis(CUSTODY_OBJECT)
    departures, arrivals = [], []
    for k in range(count):
        checkpoint = Checkpoint(
            object_id=CUSTODY_OBJECT,
            host=_B,
            epoch=k,
            size=k + 1,
            root=bytes(32),
            issued_at=T0,
            to=HOST_A,
            migration=f"mig-{k}",
            credentials_digest=bytes(32),
            custody=value if k >= committing_from else b"",
            hops=k + 1 if k >= committing_from else 0,
        )
        departure = _envelope(checkpoint.encode(), dsse.PayloadType.CHECKPOINT)
        arrival = _envelope(f'{{"arrival":{k}}}'.encode(), "application/vnd.test")
        value = custody_chain.step(value, departure.payload, arrival.payload)
        departures.append(dsse.to_json(departure))
        arrivals.append(dsse.to_json(arrival))
    return departures, arrivals, value


def _oldest_carried(custody: bytes, hops: int) -> Lineage:
    checkpoint = Checkpoint(
        object_id=CUSTODY_OBJECT,
        host=_B,
        epoch=hops,
        size=hops + 1,
        root=bytes(32),
        issued_at=T0,
        to=HOST_A,
        migration="mig-carried",
        credentials_digest=bytes(32),
        custody=custody,
        hops=hops,
    )
    return Lineage(checkpoints=(_envelope(checkpoint.encode(), dsse.PayloadType.CHECKPOINT),))


@pytest.mark.parametrize(
    ("committing_from", "reason"),
    [
        (0, "every archived departure commits: followed back alone"),
        (3, "the first three commit to nothing (before ADR 0010): searched forward"),
        (8, "none commits: searched forward from hop 0 alone"),
    ],
)
def test_the_custody_run_is_found_back_from_the_commitment_among_decoys(
    committing_from: int, reason: str
) -> None:
    """Decoys (one-handoff segments of other handoffs) beside every position; the run
    that digests to the oldest carried departure's commitment is the one returned,
    whichever of its departures commit to the custody before them."""
    departures, arrivals, after = _handoffs(committing_from, 8)
    lineage = _oldest_carried(after, 9)
    segments = [
        CustodySegment(
            object_id=CUSTODY_OBJECT,
            first=k,
            departures=(departures[(k + 1) % 8],),
            arrivals=(arrivals[(k + 1) % 8],),
        )
        for k in range(8)
    ]
    segments += [
        CustodySegment(
            object_id=CUSTODY_OBJECT,
            first=first,
            departures=tuple(departures[first:end]),
            arrivals=tuple(arrivals[first:end]),
        )
        for first, end in ((0, 2), (2, 5), (5, 8))
    ]
    found, acknowledged = archived_custody(segments, lineage, object_id=CUSTODY_OBJECT)
    assert [dsse.to_json(e) for e in found] == departures, reason
    assert [dsse.to_json(e) for e in acknowledged] == arrivals, reason
    # One handoff altered: nothing digests to the commitment any more.
    altered = [*segments[:-1], replace(segments[-1], arrivals=(arrivals[6], *arrivals[6:]))]
    with pytest.raises(LineageError, match="do not digest to the custody"):
        archived_custody(altered, lineage, object_id=CUSTODY_OBJECT)


def test_spare_segments_cost_one_decode_of_each_entry_of_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Session 34's decoys (a forged and a real one-entry segment at each of the first six
    positions), counted where every decode ends (LineageEntry._decode, which the entry
    memo calls too): the archived entries now bypass the memo (read once, they would
    evict a host's working set and hold 16,384 entries of memory), so counting
    LineageEntry.decode alone, as session 34's test does, no longer sees them. Each entry
    of the run is decoded once; the decoys are indexed from their bytes, never decoded.
    (Passes on main too, which decoded each entry once through the memo.)"""
    from gateway.lineage import LineageEntry, forget_decoded_entries
    from tests.test_peer_review_s34 import _compacted

    lineage, honest = _compacted(300)
    other = created().record(EntryKind.EVALUATED, host=HOST_A, at=T0, detail="other")
    forged = other.lineage.entries[-1].encode()
    segments = []
    for position in range(6):
        segments.append(Segment(object_id=OBJECT, start=position, entries=(forged,)))
        segments.append(
            Segment(object_id=OBJECT, start=position, entries=(honest.entries[position],))
        )
    segments.append(Segment(object_id=OBJECT, start=6, entries=honest.entries[6:]))
    forget_decoded_entries()
    decoded = 0
    decode = LineageEntry._decode

    def counting(raw: bytes) -> LineageEntry:
        nonlocal decoded
        decoded += 1
        return decode(raw)

    monkeypatch.setattr(LineageEntry, "_decode", staticmethod(counting))
    whole = verify_archived(segments, lineage, object_id=OBJECT, trust=TRUST, sealed=False)
    assert whole.size == lineage.size
    assert len(honest.entries) <= decoded <= len(honest.entries) + len(lineage.entries), decoded
