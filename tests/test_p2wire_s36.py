"""A stored object and a transfer's staged copy are built once when decoded, with their
placement fields given to the constructor (gateway.wire._object_from_snapshot), not built
and then copied by ``replace``: these tests hold the decoded values to what was encoded,
over seeded random objects, at rest and in transit (the staged copy's fields), and a
blob's at-rest location over the snapshot's digest-only form."""

from __future__ import annotations

import random
from dataclasses import fields, replace
from datetime import timedelta

import pytest

from gateway import wire
from gateway.blobs import BlobRef
from gateway.errors import PayloadDecodeError
from gateway.handoff.messages import Transfer
from gateway.handoff.records import DestinationRecord, DestinationStep
from gateway.lineage import EntryKind
from gateway.model import (
    Answer,
    CycleState,
    GovernedObject,
    LifecycleState,
    Publish,
    Rule,
    WriteState,
)
from gateway.v1 import object_pb2
from tests.test_compaction import created, depart
from tests.test_lineage import HOST_A, HOST_B, T0
from tests.test_record_encoding import whole


def _random_object(seed: int) -> GovernedObject:
    rng = random.Random(seed)
    obj = created()
    for step in range(rng.randrange(6)):
        at = T0 + timedelta(seconds=step + 1)
        obj = obj.record(EntryKind.EVALUATED, host=HOST_A, at=at, detail="d" * rng.randrange(300))
    data = b'{"x":"' + b"y" * rng.choice([0, 10, 200, 70_000]) + b'"}'
    streamed = rng.random() < 0.3
    obj = replace(
        obj,
        grants=tuple(f"grant.{i}.token" for i in range(rng.randrange(3))),
        rules=tuple(
            Rule(name=f"w{i}", when="true", action=WriteState(patch='{"a": 1}'))
            if rng.random() < 0.5
            else Rule(
                name=f"p{i}", when="false", action=Publish(topic="t", payload="{}"), on="message"
            )
            for i in range(rng.randrange(4))
        ),
        subscriptions=tuple(f"topic/{i}" for i in range(rng.randrange(3))),
        answers=tuple(
            Answer(method=f"m{i}", reply="data", when="true") for i in range(rng.randrange(3))
        ),
        data=b"" if streamed else data,
        blob=BlobRef(digest=bytes(range(32)), size=len(data), location="blobs/x", chunks=2)
        if streamed
        else None,
        cycle=CycleState(generation=rng.randrange(300), interval=timedelta(seconds=5), next_due=T0),
        authority_expires=rng.choice([None, T0 + timedelta(days=30)]),
        last_transfer_digest=rng.choice([b"", bytes(32)]),
    )
    if rng.random() < 0.5:
        gone = depart(obj, host=HOST_A, to=HOST_B, migration="mig-1")
        obj = replace(gone, moved_to=HOST_B, receipt=gone.lineage.checkpoints[0])
    return obj


def _same(decoded: GovernedObject, obj: GovernedObject) -> None:
    for f in fields(GovernedObject):
        assert getattr(decoded, f.name) == getattr(obj, f.name), f.name


@pytest.mark.parametrize("seed", range(30))
def test_a_stored_object_decodes_to_every_field_it_was_written_with(seed: int) -> None:
    obj = _random_object(seed)
    _same(wire.decode_object(wire.encode_object(obj)), obj)


@pytest.mark.parametrize("seed", range(30))
def test_a_transfer_decodes_to_its_staged_copy(seed: int) -> None:
    obj = _random_object(seed)
    payload = wire.encode_transfer(
        Transfer(
            migration_id="mig-2",
            epoch=obj.epoch + 1,
            source_host=HOST_A,
            destination_host=HOST_B,
            issued_at=T0 + timedelta(days=1),
            expires_at=T0 + timedelta(days=1, minutes=5),
            nonce=bytes(range(16)),
            object=obj,
        )
    )
    staged = wire.decode_transfer(payload).object
    # In transit: no placement, the blob by digest and size only, this host's authority
    # not decided yet; the transfer's epoch and migration, STAGED.
    blob = obj.blob and BlobRef(digest=obj.blob.digest, size=obj.blob.size)
    expected = replace(
        obj,
        blob=blob,
        epoch=obj.epoch + 1,
        state=LifecycleState.STAGED,
        migration_id="mig-2",
        moved_to="",
        receipt=None,
        last_transfer_digest=wire.digest(payload),
        authority=GovernedObject(object_id="x", tenant="t", data=b"", content_type="").authority,
        authority_expires=None,
    )
    _same(staged, expected)


def test_a_stored_object_with_an_unknown_state_is_refused_by_name() -> None:
    message = object_pb2.StoredObject()
    message.ParseFromString(wire.encode_object(_random_object(0)))
    message.state = 99  # type: ignore[assignment]
    with pytest.raises(PayloadDecodeError, match=r"obj://.* has unknown state 99"):
        wire.decode_object(message.SerializeToString())


def _plain(obj: GovernedObject) -> bytes:
    return bytes(wire._stored_to_pb(obj).SerializeToString(deterministic=True))


@pytest.mark.parametrize("seed", range(30))
def test_a_staged_copy_and_its_live_object_encode_as_the_whole_message(seed: int) -> None:
    """A decoded staged copy's encodings (its journal record, the live object after
    more entries) are the bytes of serializing the whole message."""
    obj = _random_object(seed)
    payload = wire.encode_transfer(
        Transfer(
            migration_id="mig-2",
            epoch=obj.epoch + 1,
            source_host=HOST_A,
            destination_host=HOST_B,
            issued_at=T0 + timedelta(days=1),
            expires_at=T0 + timedelta(days=1, minutes=5),
            nonce=bytes(range(16)),
            object=obj,
        )
    )
    staged = replace(wire.decode_transfer(payload).object, authority_expires=T0)
    record = DestinationRecord(
        migration_id="mig-2",
        object_id=staged.object_id,
        tenant=staged.tenant,
        source_host=HOST_A,
        step=DestinationStep.STAGED,
        transfer_digest=bytes(32),
        staged_receipt=b"r" * 200,
        staged=staged,
        created_at=T0,
        updated_at=T0,
    )
    assert wire.encode_destination_record(record) == whole(record)
    live = replace(staged, state=LifecycleState.ACTIVE, migration_id="").record(
        EntryKind.REHOSTED, host=HOST_B, at=T0 + timedelta(days=2)
    )
    assert wire.encode_object(live) == _plain(live)
    assert wire.encode_object(staged) == _plain(staged)


def _with_rules(rules: tuple[Rule, ...]) -> bytes:
    return wire.encode_object(replace(created(), rules=rules))


_RULE_SETS = [
    (Rule(name="w", when="true", action=WriteState(patch='{"a": 1}')),),
    (Rule(name="w", when="true", action=WriteState(patch='{"a": 2}')),),
    (Rule(name="w", when="false", action=WriteState(patch='{"a": 1}')),),
    (Rule(name="w", when="true", action=WriteState(patch='{"a": 1}'), on="message"),),
    (Rule(name="w", when="true", action=Publish(topic="t", payload='{"a": 1}')),),
    (
        Rule(name="w", when="true", action=WriteState(patch='{"a": 1}')),
        Rule(name="p", when="true", action=Publish(topic="t", payload="{}"), on="message"),
    ),
]


def test_rule_sets_differing_in_any_field_decode_apart() -> None:
    """The memo of decoded rules tells every field apart: each set decodes to itself,
    however the sets before it were remembered."""
    for _ in range(2):
        for rules in _RULE_SETS:
            assert wire.decode_object(_with_rules(rules)).rules == rules


def test_a_rule_set_decoded_again_is_the_one_remembered() -> None:
    raw = _with_rules(_RULE_SETS[5])
    assert wire.decode_object(raw).rules is wire.decode_object(raw).rules


def test_a_refused_rule_is_refused_every_time() -> None:
    message = object_pb2.StoredObject()
    message.ParseFromString(_with_rules(_RULE_SETS[0]))
    message.snapshot.rules[0].trigger = "sunrise"
    raw = message.SerializeToString()
    for _ in range(2):
        with pytest.raises(PayloadDecodeError, match="sunrise"):
            wire.decode_object(raw)


def test_the_rules_memo_is_bounded_in_bytes() -> None:
    big = "x" * (wire.RULES_MEMO_BYTES // 8)
    for index in range(8):
        rules = (Rule(name=f"r{index}", when="true", action=WriteState(patch=big)),)
        assert wire.decode_object(_with_rules(rules)).rules == rules
    assert wire._RULES.weight() <= wire.RULES_MEMO_BYTES
