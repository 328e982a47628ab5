"""Times read from protobuf Timestamps (gateway.wire._dt) are what protobuf's own
conversion gives, truncated to milliseconds: the same value and the same zone object,
for every Timestamp the gateway accepts, and the same refusal outside them."""

from __future__ import annotations

from datetime import UTC

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from gateway import wire
from gateway._time import truncate
from gateway.errors import PayloadDecodeError

_EDGES = [
    (0, 0, "the epoch"),
    (-1, 999_999_999, "just before the epoch: negative seconds, positive nanos"),
    (-62_135_596_800, 0, "the first instant of year 1"),
    (253_402_300_799, 999_999_999, "the last nanosecond of year 9999"),
    (1_780_000_000, 123_456_789, "sub-millisecond nanos are dropped"),
    (1_780_000_000, 999_000, "under a millisecond: none"),
]


def protobufs(stamp: Timestamp) -> object:
    return truncate(stamp.ToDatetime(tzinfo=UTC))


def same(stamp: Timestamp) -> None:
    ours, theirs = wire._dt(stamp), protobufs(stamp)
    assert ours == theirs
    assert ours.tzinfo is theirs.tzinfo  # type: ignore[attr-defined]
    assert repr(ours) == repr(theirs)


@pytest.mark.parametrize(("seconds", "nanos"), [c[:2] for c in _EDGES], ids=[c[2] for c in _EDGES])
def test_an_edge_time_reads_as_protobuf_converts_it(seconds: int, nanos: int) -> None:
    same(Timestamp(seconds=seconds, nanos=nanos))


@given(
    st.integers(min_value=-62_135_596_800, max_value=253_402_300_799),
    st.integers(min_value=0, max_value=999_999_999),
)
def test_any_accepted_time_reads_as_protobuf_converts_it(seconds: int, nanos: int) -> None:
    same(Timestamp(seconds=seconds, nanos=nanos))


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [(-62_135_596_801, 0), (253_402_300_800, 0), (0, -1), (0, 1_000_000_000)],
    ids=["before year 1", "after year 9999", "negative nanos", "a whole second of nanos"],
)
def test_a_time_outside_the_years_is_refused(seconds: int, nanos: int) -> None:
    with pytest.raises(PayloadDecodeError):
        wire._dt(Timestamp(seconds=seconds, nanos=nanos))
