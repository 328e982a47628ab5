"""An object that comes back to a host it left more than K handoffs ago (ADR 0010 step 2).

The host kept a MOVED tombstone: the history it saw when it let the object go. Fork
evidence compares the arriving lineage with it (gateway.lineage.verify_extends). Once
the object carries only its last K handoffs and its entries were compacted past that
point, the arriving base has no cut at the old departure to compare with. Before this
test, such an honest return was refused as a fork ("archived in this copy"): an object
moving A -> A2 -> A, then 22 hops between A and B, could never go back to A2. Now the
return is accepted with what can still be checked (the arriving copy counts the old
departure among its archived handoffs; its oldest carried departure lies after the
entries seen), and every comparison that can be made is still made.

Real hosts in this process: their own CAs, mTLS, SQLite stores, settable clocks; the
cycles that compact are run by hand.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.errors import LineageError
from gateway.lineage import Checkpoint, Lineage, handoffs_archived, verify_extends
from gateway.model import GovernedObject, LifecycleState
from gateway.testing import create_from_spec
from gateway.testing.harness import InProcessWorld
from tests.conftest import HOST_A, HOST_A2, HOST_B
from tests.test_compaction_runtime import SMALL, TICK, spec, world_with

OBJECT = "obj://org-a.example/billing/far-traveller"
HOSTS = (HOST_A, HOST_A2, HOST_B)
KEEP = 8
AWAY = 22  #: hops between A and B while A2 waits: more than KEEP + MIN_CARRIED_HANDOFFS


@dataclass
class Journey:
    world: InProcessWorld
    holder: str

    def cycles(self, host: str, n: int = 30) -> None:
        for _ in range(n):
            for h in HOSTS:
                self.world.clock(h).skew(1)
            self.world.run(self.world.hosts[host].cycles.run("default", OBJECT))

    def move(self, to: str) -> None:
        self.cycles(self.holder)  # the holder compacts, archiving older custody
        self.world.migrate(OBJECT, source=self.holder, to=to)
        self.holder = to

    def get(self, host: str) -> GovernedObject:
        return self.world.run(self.world.hosts[host].get_object(OBJECT, tenant="default"))


@pytest.fixture
def journey(tmp_path: Path) -> Journey:
    """A creates the object; A -> A2 -> A; then AWAY hops between A and B, ending on A."""
    world = InProcessWorld(world_with(tmp_path, {"compaction": SMALL, "custody_keep": KEEP}, HOSTS))
    world.run(create_from_spec(world.hosts[HOST_A], OBJECT, spec(TICK, interval=1)))
    trip = Journey(world, HOST_A)
    trip.move(HOST_A2)
    trip.move(HOST_A)
    for _ in range(AWAY):
        trip.move(HOST_B if trip.holder == HOST_A else HOST_A)
    trip.cycles(trip.holder)
    with contextlib.closing(world):
        yield trip


def _departures(lineage: Lineage) -> int:
    return handoffs_archived(lineage) + len(lineage.checkpoints)


def test_an_honest_object_returning_after_more_than_k_hops_is_accepted(
    journey: Journey, caplog: pytest.LogCaptureFixture
) -> None:
    tombstone = journey.get(HOST_A2)
    assert tombstone.state is LifecycleState.MOVED
    # The tombstone is the history up to A2's freeze: the departure A2 then signed (hop 2)
    # is the one after those it carries.
    assert _departures(tombstone.lineage) + 1 == 2
    leaving = journey.get(journey.holder)
    # The situation under test: A2's departure is archived in the copy, and so are the
    # entries it saw, so the base has no cut there.
    assert handoffs_archived(leaving.lineage) >= 2
    assert leaving.lineage.start > len(tombstone.lineage)
    with caplog.at_level(logging.INFO, logger="gateway.handoff.destination"):
        journey.move(HOST_A2)
    back = journey.get(HOST_A2)
    assert back.state is LifecycleState.ACTIVE
    newest = Checkpoint.decode(back.lineage.checkpoints[-1].payload)
    assert newest.hops == 2 + AWAY + 1, "every hop counted, archived ones too"
    assert journey.get(HOST_A).state is LifecycleState.MOVED
    assert journey.get(HOST_B).state is LifecycleState.MOVED
    assert "comes back after more hops than it carries" in caplog.text


def test_what_can_still_be_compared_is_compared(journey: Journey) -> None:
    """verify_extends on the arriving lineage against views it cannot contain."""
    tombstone = journey.get(HOST_A2).lineage
    arriving = journey.get(journey.holder).lineage
    seen = {"seen_size": len(tombstone), "seen_root": tombstone.root()}
    assert verify_extends(arriving, **seen, seen_departures=2) is False
    # A view whose departure this copy does not count as archived needs a cut: refused.
    with pytest.raises(LineageError, match="archived in this copy"):
        verify_extends(arriving, **seen, seen_departures=handoffs_archived(arriving) + 1)
    # Without knowing its departures (0: an old tombstone), nothing is assumed: refused.
    with pytest.raises(LineageError, match="archived in this copy"):
        verify_extends(arriving, **seen)
    # A view claiming more entries than the oldest carried departure covers: refused.
    oldest = Checkpoint.decode(arriving.checkpoints[0].payload)
    past = oldest.size + 1
    base = arriving.base_claim()
    assert base is not None and past < arriving.start and past not in base.cuts
    with pytest.raises(LineageError, match="oldest departure this copy carries"):
        verify_extends(arriving, seen_size=past, seen_root=tombstone.root(), seen_departures=2)
    # A view inside the carried entries is still compared root for root.
    inside = arriving.start + 1
    with pytest.raises(LineageError, match="a fork or a rewrite"):
        verify_extends(arriving, seen_size=inside, seen_root=b"\x00" * 32, seen_departures=2)
