"""The object encoding's memo of unchanged parts (gateway.wire._unchanged_parts): an
object rebuilt from the same values (as a cycle does) is encoded from remembered parts
plus its new cycle state and entries, and must give exactly the bytes of serializing
the whole message; any field changed to a new value must not be served from the memo;
the memo stays within its byte bound. An object's log keeps its last parts too (found
first, whatever the shared memo evicted since)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from gateway import wire
from gateway.authority import Capability, CapabilitySet, EffectiveAuthority
from gateway.lineage import EntryKind
from gateway.model import CycleState, GovernedObject, LifecycleState
from tests.test_compaction import created, cycle, depart
from tests.test_lineage import HOST_A, HOST_B, T0
from tests.test_object_encoding import whole


@pytest.fixture
def bodies(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The object ids whose body (every part) was encoded anew: not served from the log's
    slot nor from the shared memo."""
    encoded: list[str] = []
    encode_body = wire._encode_body

    def counted(obj: GovernedObject) -> tuple[bytes, bytes, bytes, bytes, bytes, bytes]:
        encoded.append(obj.object_id)
        return encode_body(obj)

    monkeypatch.setattr(wire, "_encode_body", counted)
    return encoded


def test_cycles_encoded_from_remembered_parts_are_the_whole_message(bodies: list[str]) -> None:
    obj = replace(created(), cycle=CycleState(generation=0, interval=timedelta(seconds=5)))
    wire.encode_object(obj)
    assert len(bodies) == 1
    for generation in range(20):
        after = cycle(obj, generation, host=HOST_A, denial="publish: denied")
        # A rule's write every other cycle: new data (and size), the rest unchanged.
        data = obj.data if generation % 2 else b'{"checked":%d}' % generation
        obj = replace(
            after,
            data=data,
            cycle=CycleState(
                generation=generation + 1,
                interval=timedelta(seconds=5),
                next_due=T0 + timedelta(seconds=5 * generation),
            ),
        )
        assert wire.encode_object(obj) == whole(obj)
    assert len(bodies) == 1  # the parts did come from the memo


def test_an_objects_log_keeps_its_parts_when_the_shared_memo_forgot_them(
    bodies: list[str],
) -> None:
    """A host cycling more objects than the shared memo holds (LRU, visited in turn)
    finds each object's parts in its own log; exactly the whole message's bytes still."""
    obj = replace(created(), cycle=CycleState(generation=0, interval=timedelta(seconds=5)))
    wire.encode_object(obj)
    for generation in range(4):
        wire._OBJECT_PARTS.clear()  # as if thousands of other objects were encoded since
        after = cycle(obj, generation, host=HOST_A, denial="publish: denied")
        data = obj.data if generation % 2 else b'{"checked":%d}' % generation
        obj = replace(after, data=data, cycle=replace(obj.cycle, generation=generation + 1))
        assert wire.encode_object(obj) == whole(obj)
    assert bodies == [obj.object_id]  # only the first encoding built the body
    # A value that differs from what the slot holds is never served from it.
    for changed in (replace(obj, grants=("a.b.c",)), replace(obj, rules=())):
        assert changed.lineage._log is obj.lineage._log
        assert wire.encode_object(changed) == whole(changed)
    assert len(bodies) == 3


def test_a_changed_field_is_never_served_from_the_memo() -> None:
    obj = created()
    first = wire.encode_object(obj)
    assert wire.encode_object(obj) == first
    gone = depart(obj, host=HOST_A, to=HOST_B, migration="mig-1")
    changes = [
        replace(obj, state=LifecycleState.FROZEN, migration_id="mig-1"),
        replace(obj, state=LifecycleState.MOVED, moved_to=HOST_B, migration_id="mig-1"),
        replace(obj, epoch=obj.epoch + 1),
        replace(
            obj,
            authority=EffectiveAuthority(
                allow=CapabilitySet(capabilities=(Capability.of("pubsub:alerts/*", "publish"),))
            ),
        ),
        replace(obj, grants=("a.b.c",)),
        replace(obj, subscriptions=("orders/new",)),
        replace(obj, data=b'{"x":1}'),
        replace(obj, authority_expires=T0 + timedelta(days=1)),
        replace(obj, last_transfer_digest=bytes(32)),
        gone,
        obj.record(EntryKind.EVALUATED, host=HOST_A, at=T0 + timedelta(seconds=1)),
    ]
    for changed in changes:
        encoded = wire.encode_object(changed)
        assert encoded == whole(changed)
        assert encoded != first
    assert wire.encode_object(obj) == first  # and the original is still its own bytes


def test_the_memo_stays_within_its_bytes() -> None:
    big = b'{"pad":"' + b"x" * 60_000 + b'"}'
    for index in range(2 * wire.OBJECT_PARTS_MEMO_BYTES // (2 * len(big)) + 8):
        obj = replace(created(), object_id=f"obj-{index}", data=big)
        wire.encode_object(obj)
        assert wire._OBJECT_PARTS._weight <= wire.OBJECT_PARTS_MEMO_BYTES
    assert len(wire._OBJECT_PARTS._entries) < 2 * wire.OBJECT_PARTS_MEMO_BYTES // (2 * len(big))


def test_a_handoffs_objects_take_their_body_from_the_memo(bodies: list[str]) -> None:
    """A freeze, a tombstone and an abort change only the object's state, epoch and
    placement (and add entries): the rest of their encoding (data, rules, grants, the
    lineage's envelopes) comes from the memo, only their tail is encoded again (on main
    each missed it whole), and every encoding is still exactly the whole message's."""
    obj = created()
    wire.encode_object(obj)
    frozen = obj.freeze("mig-1", destination=HOST_B, host=HOST_A, at=T0 + timedelta(days=1))
    receipt = depart(obj, host=HOST_A, to=HOST_B, migration="mig-1").lineage.checkpoints[-1]
    handoffs = [
        frozen,
        frozen.tombstone("mig-1", moved_to=HOST_B, receipt=receipt, transfer_digest=bytes(32)),
        frozen.thaw("mig-1", host=HOST_A, at=T0 + timedelta(days=1), reason="refused"),
    ]
    for changed in handoffs:
        assert wire.encode_object(changed) == whole(changed)
    assert len(bodies) == 1  # only the first
    # A changed body is never served from it.
    for changed in (replace(frozen, data=b'{"x":2}'), replace(frozen, grants=("a.b.c",))):
        assert wire.encode_object(changed) == whole(changed)


def test_an_arrival_takes_its_body_from_the_staged_copys_parts(bodies: list[str]) -> None:
    """A destination writes the staged copy at Prepare and the live one at Commit: the
    live one differs in its tail, its entries and its lineage's envelopes (the arrival's
    receipt) only, so its data, rules and grants come from the staged copy's entry and
    only its envelopes and tail are encoded again. Any envelope changed to a new value is
    still encoded anew: every encoding is exactly the whole message's."""
    gone = depart(created(), host=HOST_A, to=HOST_B, migration="mig-1")
    staged = replace(gone, state=LifecycleState.STAGED)
    assert wire.encode_object(staged) == whole(staged)
    encoded = len(bodies)
    receipt = gone.lineage.checkpoints[-1]
    live = staged.rehost(host=HOST_B, source=HOST_A, at=T0 + timedelta(days=1), arrival=receipt)
    assert live.lineage.arrivals != staged.lineage.arrivals
    assert wire.encode_object(live) == whole(live)
    assert len(bodies) == encoded  # the body was remembered
    again = depart(live, host=HOST_B, to=HOST_A, migration="mig-2")
    for changed in (
        again,  # one checkpoint more
        replace(live, lineage=replace(live.lineage, arrivals=())),
        replace(staged, lineage=replace(staged.lineage, checkpoints=())),
    ):
        assert wire.encode_object(changed) == whole(changed)
