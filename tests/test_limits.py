"""gateway.limits at creation: a host never creates what a peer (or itself later) would
have to refuse, and an increment at the limit is refused instead of overflowing."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from gateway import limits
from gateway.errors import EnvelopeTooLargeError, LimitExceededError
from gateway.model import CycleState, new_object

HOST = "spiffe://org-a.example/cluster/east/gateway"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("cycle", "reason"),
    [
        (CycleState(generation=limits.MAX_COUNTER, interval=timedelta(seconds=1)), "generation"),
        (CycleState(interval=timedelta(days=400)), "interval"),
        (CycleState(interval=timedelta(microseconds=10)), "interval"),
        (
            CycleState(interval=timedelta(days=1), next_due=datetime(9999, 12, 31, tzinfo=UTC)),
            "next due",
        ),
    ],
    ids=["generation-at-limit", "interval-too-long", "interval-below-wire-resolution", "year-9999"],
)
def test_objects_beyond_a_limit_are_refused_at_creation(cycle: CycleState, reason: str) -> None:
    with pytest.raises(LimitExceededError, match=reason) as caught:
        new_object(
            "obj://org-a.example/x",
            tenant="default",
            data=b"{}",
            content_type="application/json",
            host=HOST,
            at=NOW,
            cycle=cycle,
        )
    assert caught.value.hint


def test_freezing_at_the_last_epoch_is_refused() -> None:
    obj = new_object(
        "obj://org-a.example/x", tenant="default", data=b"{}", content_type="a/b", host=HOST, at=NOW
    )
    last = dataclasses.replace(obj, epoch=limits.MAX_COUNTER)
    with pytest.raises(LimitExceededError, match="epoch"):
        last.freeze("mig-1", destination=HOST, host=HOST, at=NOW)
    assert (
        dataclasses.replace(obj, epoch=limits.MAX_COUNTER - 1)
        .freeze("mig-1", destination=HOST, host=HOST, at=NOW)
        .epoch
        == limits.MAX_COUNTER
    )


@pytest.mark.parametrize(
    "migration_id", ["", "a/b", "../x", "m" * (limits.MAX_MIGRATION_ID_CHARS + 1), "mig é"]
)
def test_migration_ids_are_plain_and_short(migration_id: str) -> None:
    with pytest.raises((LimitExceededError, EnvelopeTooLargeError)):
        limits.check_migration_id(migration_id)


def test_cycle_backoff_doubles_up_to_its_cap() -> None:
    delays = [limits.cycle_backoff(n) for n in range(1, 12)]
    assert delays[0] == limits.CYCLE_BACKOFF_FIRST and delays[1] == 2 * delays[0]
    assert max(delays) == limits.CYCLE_BACKOFF_MAX == delays[-1]


def test_a_lineage_with_more_handoffs_than_allowed_is_refused_before_any_is_verified() -> None:
    """Each departure and arrival is a signature to verify: their number is bounded when
    the lineage is decoded, before one of them is checked."""
    from gateway import wire
    from gateway.errors import LimitExceededError
    from gateway.limits import MAX_HANDOFFS
    from gateway.v1 import object_pb2

    for field in ("checkpoints", "arrivals"):
        message = object_pb2.Lineage(**{field: [b"x"] * (MAX_HANDOFFS + 1)})
        with pytest.raises(LimitExceededError, match=f"{MAX_HANDOFFS + 1} {field}"):
            wire._lineage_from_pb(message)
