"""Lineage compaction (ADR 0007): an object that cycles for ever stays under a fixed size,
still leaves its host with a history the receiver verifies from the object alone, and its
whole history verifies from archive + object. A compaction that would hide or alter what
another host signed is refused.

Real keys and trust bundles (from tests/test_lineage.py); the object is driven through the
model (record, freeze, seal) as the cycle and the handoff do.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from gateway import envelope as dsse
from gateway import wire
from gateway.archive import (
    CompactionPolicy,
    Segment,
    compact,
    compaction_cut,
    fold_repeats,
    verify_archived,
)
from gateway.custody import require_extends_departures, verify_custody
from gateway.errors import LineageError
from gateway.lineage import (
    BASE_PAYLOAD_TYPE,
    Base,
    EntryKind,
    Lineage,
    verify_extends,
    verify_lineage,
)
from gateway.model import GovernedObject, LifecycleState, new_object
from tests.test_lineage import HOST_A, HOST_B, OBJECT, SIGNERS, T0, TRUST

POLICY = CompactionPolicy(max_entries=64, keep_entries=8, max_age=None)


def created() -> GovernedObject:
    return new_object(
        OBJECT, tenant="billing", data=b"{}", content_type="application/json", host=HOST_A, at=T0
    )


def cycle(obj: GovernedObject, generation: int, *, host: str, denial: str) -> GovernedObject:
    """One evaluation that is denied the same action every time (the common repeat)."""
    at = T0 + timedelta(seconds=5 * (generation + 1))
    after = obj.record(EntryKind.ACTION_DENIED, host=host, at=at, detail=denial)
    after = after.record(EntryKind.EVALUATED, host=host, at=at, detail="1 of 1 rules fired")
    return fold_repeats(obj, after)


def run(
    obj: GovernedObject, generations: range, *, host: str, segments: list[Segment], vary: int = 0
) -> GovernedObject:
    for generation in generations:
        # ``vary``: every vary-th cycle is a different event, so it is not folded.
        denial = f"publish: denied (run {generation // vary})" if vary else "publish: denied"
        obj = cycle(obj, generation, host=host, denial=denial)
        if POLICY.due(obj.lineage, now=T0):
            lineage, segment = compact(
                obj.lineage,
                object_id=OBJECT,
                host=host,
                at=T0 + timedelta(seconds=5 * generation),
                signer=SIGNERS[host],
                keep=POLICY.keep_entries,
            )
            segments.append(segment)  # written before the object is stored
            obj = replace(obj, lineage=lineage)
    return obj


def depart(obj: GovernedObject, *, host: str, to: str, migration: str) -> GovernedObject:
    frozen = obj.freeze(migration, destination=to, host=host, at=T0 + timedelta(days=1))
    return replace(
        frozen,
        lineage=frozen.lineage.sealed(
            object_id=OBJECT,
            host=host,
            epoch=frozen.epoch,
            at=T0 + timedelta(days=1),
            signer=SIGNERS[host],
            to=to,
            migration=migration,
        ),
    )


def receive(obj: GovernedObject) -> int:
    """What a destination checks (gateway.handoff.destination), from the object alone."""
    verified = verify_lineage(obj.lineage, object_id=OBJECT, trust=TRUST, sealed=True)
    custody = verify_custody(
        obj.lineage, verified.checkpoints, object_id=OBJECT, trust=TRUST, in_transit=True
    )
    require_extends_departures(
        obj.lineage, verified.checkpoints, obj.grants, None, object_id=OBJECT
    )
    return custody.hops


def test_repeated_events_are_counted_not_copied() -> None:
    obj = created()
    for generation in range(50):
        obj = cycle(obj, generation, host=HOST_A, denial="publish: denied")
    # CREATED, then one (denied, evaluated) pair standing for 50 cycles.
    assert [e.kind for e in obj.lineage.entries] == [
        EntryKind.CREATED,
        EntryKind.ACTION_DENIED,
        EntryKind.EVALUATED,
    ]
    assert [e.repeats for e in obj.lineage.entries] == [0, 49, 49]
    assert obj.lineage.entries[-1].time == T0 + timedelta(seconds=250)
    verify_lineage(obj.lineage, object_id=OBJECT, trust=TRUST, sealed=False)
    # A signed entry is never rewritten: after a departure the next cycle appends.
    gone = depart(obj, host=HOST_A, to=HOST_B, migration="mig-1")
    assert gone.lineage.repeated(gone.lineage.entries[-2:]) is None


def test_an_object_cycling_for_ever_stays_under_a_fixed_size_and_still_migrates() -> None:
    segments: list[Segment] = []
    obj = created()
    peaks = []  # the largest encoded lineage in each block of 1000 cycles
    for block in range(6):
        peak = 0
        for start in range(block * 1000, (block + 1) * 1000, 50):
            obj = run(obj, range(start, start + 50), host=HOST_A, segments=segments, vary=3)
            peak = max(peak, len(wire.encode_lineage(obj.lineage)))
        peaks.append(peak)
    # Flat: the carried lineage rises to the policy's bound and no further, however many
    # generations go by (the sawtooth between keep_entries and max_entries repeats).
    assert len(obj.lineage.entries) <= POLICY.max_entries
    assert max(peaks[1:]) <= peaks[0] + 512, peaks
    assert obj.lineage.size > 2000  # the history itself kept growing (in the archive)
    moving = depart(obj, host=HOST_A, to=HOST_B, migration="mig-1")
    assert receive(moving) == 1
    whole = verify_archived(segments, moving.lineage, object_id=OBJECT, trust=TRUST, sealed=True)
    assert whole.size == moving.lineage.size
    assert whole.root == moving.lineage.root()


def test_departures_survive_compaction_and_a_rewrite_of_them_is_refused() -> None:
    segments: list[Segment] = []
    obj = run(created(), range(100), host=HOST_A, segments=segments, vary=1)
    at_b = depart(obj, host=HOST_A, to=HOST_B, migration="mig-1")
    seen = at_b.lineage  # what A keeps (its tombstone) and will compare with later
    # B holds it now (arrival receipts are covered by test_custody; here the lineage).
    at_b = replace(at_b, state=LifecycleState.ACTIVE, migration_id="").record(
        EntryKind.REHOSTED, host=HOST_B, at=T0 + timedelta(days=2), detail=""
    )
    at_b = run(at_b, range(200, 300), host=HOST_B, segments=segments, vary=1)
    assert at_b.lineage.start > seen.size  # A's departure is archived by B's compaction
    base = Base.decode(at_b.lineage.base.payload)  # type: ignore[union-attr]
    assert base.cuts == (seen.size,) and base.host == HOST_B
    moving = depart(at_b, host=HOST_B, to=HOST_A, migration="mig-2")
    verified = verify_lineage(moving.lineage, object_id=OBJECT, trust=TRUST, sealed=True)
    custody = verify_custody(
        moving.lineage, verified.checkpoints[:1], object_id=OBJECT, trust=TRUST, in_transit=True
    )
    assert custody.hops == 1
    # A compares with what it saw, though those entries are archived in this copy.
    verify_extends(moving.lineage, seen_size=seen.size, seen_root=seen.root())
    with pytest.raises(LineageError):
        verify_extends(moving.lineage, seen_size=seen.size, seen_root=b"\x00" * 32)
    verify_archived(segments, moving.lineage, object_id=OBJECT, trust=TRUST, sealed=True)

    def resigned(change: dict[str, object]) -> Lineage:
        forged = replace(base, **change)  # type: ignore[arg-type]
        envelope = dsse.seal(forged.encode(), BASE_PAYLOAD_TYPE, [SIGNERS[HOST_B]])
        return replace(moving.lineage, base=envelope)

    first = base.spine[0]
    tampered = {
        "hides A's departure": {"cuts": (), "spine": (base.spine[0] + base.spine[1][:0],)},
        "alters entries A signed": {"spine": ((bytes(32), *first[1:]), *base.spine[1:])},
        "claims another creator": {"creator": HOST_B},
    }
    for reason, change in tampered.items():
        with pytest.raises(LineageError):  # each: ``reason``
            verify_lineage(resigned(change), object_id=OBJECT, trust=TRUST, sealed=True)
        assert reason
    # A base by a host that did not hold the object then is refused (signed by A here).
    by_a = dsse.seal(replace(base, host=HOST_A).encode(), BASE_PAYLOAD_TYPE, [SIGNERS[HOST_A]])
    with pytest.raises(LineageError):
        verify_lineage(
            replace(moving.lineage, base=by_a), object_id=OBJECT, trust=TRUST, sealed=True
        )


def test_an_archive_that_is_altered_or_incomplete_does_not_verify() -> None:
    segments: list[Segment] = []
    obj = run(created(), range(200), host=HOST_A, segments=segments, vary=1)
    assert len(segments) >= 2
    verify_archived(segments, obj.lineage, object_id=OBJECT, trust=TRUST, sealed=False)
    with pytest.raises(LineageError):
        verify_archived(segments[1:], obj.lineage, object_id=OBJECT, trust=TRUST, sealed=False)
    first = segments[0]
    edited = first.entries[1].replace(b"publish", b"publisH")
    altered = [
        replace(first, entries=(first.entries[0], edited, *first.entries[2:])),
        *segments[1:],
    ]
    with pytest.raises(LineageError):
        verify_archived(altered, obj.lineage, object_id=OBJECT, trust=TRUST, sealed=False)


def test_a_compacted_lineage_round_trips_the_wire() -> None:
    segments: list[Segment] = []
    obj = run(created(), range(100), host=HOST_A, segments=segments, vary=1)
    decoded = wire.decode_lineage(wire.encode_lineage(obj.lineage))
    assert decoded == obj.lineage
    assert decoded.root() == obj.lineage.root() and decoded.start == obj.lineage.start


def test_a_holder_whose_cut_would_fall_in_another_hosts_stay_archives_only_its_own() -> None:
    """Found by the 10-minute soak: an object came back to A soon after leaving it, A's
    policy cut at ``size - keep``, inside B's stay, and A signed a base that every
    receiver refused ("only the holder compacts"). The cut now moves to where A's
    current stay began, and the compacted object moves again."""
    segments: list[Segment] = []
    obj = run(created(), range(10), host=HOST_A, segments=segments, vary=1)
    at_b = depart(obj, host=HOST_A, to=HOST_B, migration="mig-1")
    at_b = replace(at_b, state=LifecycleState.ACTIVE, migration_id="").record(
        EntryKind.REHOSTED, host=HOST_B, at=T0 + timedelta(days=2), detail=""
    )
    at_b = run(at_b, range(100, 130), host=HOST_B, segments=segments, vary=1)
    back = depart(at_b, host=HOST_B, to=HOST_A, migration="mig-2")
    back_size = back.lineage.size
    at_a = replace(back, state=LifecycleState.ACTIVE, migration_id="").record(
        EntryKind.REHOSTED, host=HOST_A, at=T0 + timedelta(days=3), detail=""
    )
    at_a = run(at_a, range(200, 203), host=HOST_A, segments=[], vary=1)
    keep = 20  # size - keep lies in B's stay
    assert at_a.lineage.size - keep < back_size
    assert compaction_cut(at_a.lineage, host=HOST_A, keep=keep) == back_size
    # Without the move the base would be refused, as in the soak.
    unmoved_size = at_a.lineage.size - keep
    assert unmoved_size > at_a.lineage.start

    lineage, segment = compact(
        at_a.lineage,
        object_id=OBJECT,
        host=HOST_A,
        at=T0 + timedelta(days=4),
        signer=SIGNERS[HOST_A],
        keep=keep,
    )
    segments.append(segment)
    compacted = replace(at_a, lineage=lineage)
    assert compacted.lineage.start == back_size
    moving = depart(compacted, host=HOST_A, to=HOST_B, migration="mig-3")
    # What refused the object in the soak (arrival receipts are test_custody's subject).
    verify_lineage(moving.lineage, object_id=OBJECT, trust=TRUST, sealed=True)
    verify_archived(segments, compacted.lineage, object_id=OBJECT, trust=TRUST, sealed=False)
