"""The at-rest encoding of an object is assembled from parts (gateway.wire.encode_object)
and its lineage's entries from the encoding their log keeps; these tests hold it to the
bytes of serializing the whole message at once, through everything that changes a
lineage: appends, older values appended from again, folded repeats, compaction,
departures, and objects with an empty lineage."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from gateway import wire
from gateway.archive import compact
from gateway.blobs import BlobRef
from gateway.lineage import EntryKind, Lineage
from gateway.model import (
    Answer,
    CycleState,
    GovernedObject,
    LifecycleState,
    Publish,
    Rule,
    WriteState,
)
from tests.test_compaction import POLICY, created, cycle, depart
from tests.test_lineage import HOST_A, HOST_B, OBJECT, SIGNERS, T0


def whole(obj: GovernedObject) -> bytes:
    """The reference: the whole StoredObject message serialized at once."""
    return bytes(wire._stored_to_pb(obj).SerializeToString(deterministic=True))


def check(obj: GovernedObject) -> None:
    encoded = wire.encode_object(obj)
    assert encoded == whole(obj)
    assert wire.encode_object(wire.decode_object(encoded)) == encoded


def test_each_append_encodes_as_the_whole_message() -> None:
    obj = created()
    check(obj)
    for generation in range(40):
        # A different detail each time: nothing folds, the log only grows.
        at = T0 + timedelta(seconds=generation + 1)
        obj = obj.record(EntryKind.EVALUATED, host=HOST_A, at=at, detail=f"run {generation}")
        check(obj)
    assert len(obj.lineage.entries) == 41


def test_an_older_value_appended_from_again_encodes_its_own_entries() -> None:
    obj = created()
    for generation in range(5):
        at = T0 + timedelta(seconds=generation + 1)
        obj = obj.record(EntryKind.EVALUATED, host=HOST_A, at=at, detail=f"run {generation}")
    older = obj
    newer = older.record(EntryKind.EVALUATED, host=HOST_A, at=T0 + timedelta(hours=1))
    check(newer)  # the shared log's encoding now covers one entry more than ``older`` sees
    check(older)
    branch = older.record(EntryKind.WOKEN, host=HOST_A, at=T0 + timedelta(hours=2), detail="b")
    check(branch)  # a copy of the log, sharing the encoding of the common prefix
    check(newer)
    assert branch.lineage.entries[-1] != newer.lineage.entries[-1]


def test_folded_repeats_and_compaction_encode_as_the_whole_message() -> None:
    obj = created()
    for generation in range(30):
        obj = cycle(obj, generation, host=HOST_A, denial="publish: denied")
        check(obj)  # folded: the last group is rewritten, the prefix kept
        obj = cycle(obj, generation, host=HOST_A, denial=f"publish: denied ({generation})")
        check(obj)
    lineage, _segment = compact(
        obj.lineage,
        object_id=OBJECT,
        host=HOST_A,
        at=T0 + timedelta(days=1),
        signer=SIGNERS[HOST_A],
        keep=POLICY.keep_entries,
    )
    compacted = replace(obj, lineage=lineage)
    assert compacted.lineage.base is not None
    check(compacted)
    gone = depart(compacted, host=HOST_A, to=HOST_B, migration="mig-1")
    assert gone.lineage.checkpoints
    check(gone)


def test_an_empty_lineage_encodes_as_the_whole_message() -> None:
    check(replace(created(), lineage=Lineage()))


def test_every_field_of_an_object_encodes_as_the_whole_message() -> None:
    """Rules, grants, subscriptions, answers, a streamed blob, a receipt, an expiry and a
    placement: each part assembled apart still gives the whole message's bytes."""
    obj = created()
    gone = depart(obj, host=HOST_A, to=HOST_B, migration="mig-1")
    full = replace(
        obj,
        grants=("header.claims.signature", "second.grant.token"),
        rules=(
            Rule(name="w", when="true", action=WriteState(patch='{"a": 1}')),
            Rule(name="p", when="false", action=Publish(topic="t", payload="{}"), on="message"),
        ),
        subscriptions=("orders/new", "orders/old"),
        answers=(Answer(method="status", reply="data", when="true", write='{"b": 2}'),),
        blob=BlobRef(digest=bytes(range(32)), size=1 << 30, location="blobs/x", chunks=3),
        data=b"",
        cycle=CycleState(generation=7, interval=timedelta(seconds=5), next_due=T0),
        epoch=3,
        state=LifecycleState.MOVED,
        migration_id="mig-1",
        moved_to=HOST_B,
        receipt=gone.lineage.checkpoints[0],
        last_transfer_digest=bytes(32),
        authority_expires=T0 + timedelta(days=30),
    )
    check(full)
