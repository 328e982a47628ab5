"""The pytest plugin (gateway.testing.plugin): it is registered by its entry point, its
worlds are real, each fault it injects happens (and only then), and each invariant it
asserts fails on a world that breaks it."""

from __future__ import annotations

import signal
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.authority import CapabilitySet, EffectiveAuthority
from gateway.errors import ConfigError, ExpiredError, PeerUnavailableError
from gateway.handoff.records import DestinationStep, SourceStep
from gateway.model import LifecycleState
from gateway.testing import HostSpec
from gateway.testing.faults import Fault
from gateway.testing.harness import InProcessWorld
from gateway.testing.invariants import (
    assert_at_most_one_live,
    assert_history_verifies,
    assert_no_widening,
    assert_one_live_copy,
)
from gateway.testing.plugin import WorldFactory
from tests.conftest import FAST_HANDOFF, HOST_A, HOST_B

pytest_plugins = ["pytester"]

OBJECT = "obj://org-a.example/billing/invoice-9"
#: A grants its object two capabilities; B offers only one of them (a narrowing).
SPEC: dict[str, Any] = {
    "data": {"invoice": 9, "amount": 1250},
    "grant": {
        "audience": "spiffe://org-b.example",
        "valid_for_days": 1,
        "capabilities": [
            {"resource": "pubsub:alerts/overdue", "actions": ["publish"]},
            {"resource": "state:self", "actions": ["read", "write"]},
        ],
        "constraints": {"hosts": ["spiffe://org-a.example/*", "spiffe://org-b.example/*"]},
    },
}
B_OFFERS = {"offers": [{"resource": "pubsub:*", "actions": ["publish"]}]}


def two_orgs(**b: Any) -> list[HostSpec]:
    return [
        HostSpec(host_id=HOST_A, handoff=FAST_HANDOFF),
        HostSpec(host_id=HOST_B, handoff=FAST_HANDOFF, policy=B_OFFERS, **b),
    ]


@pytest.fixture
def pair(gateway_world: WorldFactory) -> InProcessWorld:
    world = gateway_world(two_orgs())
    world.create(HOST_A, OBJECT, spec=SPEC)
    return world


# --- registration ------------------------------------------------------------------------

USER_TEST = f"""
from gateway.testing import HostSpec

A = "{HOST_A}"
B = "{HOST_B}"

def test_handoff(gateway_world):
    world = gateway_world([HostSpec(host_id=A), HostSpec(host_id=B)])
    world.create(A, "obj://org-a.example/x/1", data={{"n": 1}})
    assert world.handoff("obj://org-a.example/x/1", source=A, to=B) == B
    world.assert_invariants("obj://org-a.example/x/1")
"""


def test_the_entry_point_registers_the_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TEST)
    pytester.runpytest("-q").assert_outcomes(passed=1)
    # Without the plugin the fixture is unknown: the entry point is what provides it.
    without = pytester.runpytest("-q", "-p", "no:gateway")
    without.assert_outcomes(errors=1)
    without.stdout.fnmatch_lines(["*fixture 'gateway_world' not found*"])


# --- the handoff helper and invariants on a healthy world --------------------------------


def test_handoff_narrows_on_arrival_and_keeps_every_invariant(pair: InProcessWorld) -> None:
    assert pair.handoff(OBJECT, source=HOST_A, to=HOST_B) == HOST_B
    moved = pair.assert_invariants(OBJECT)
    assert moved.epoch == 1 and moved.state is LifecycleState.ACTIVE
    assert moved.authority.permits("pubsub:alerts/overdue", "publish")
    assert not moved.authority.permits("state:self", "write")  # B does not offer it
    assert pair.placement(OBJECT)[HOST_A].state is LifecycleState.MOVED
    assert pair.handoff(OBJECT, source=HOST_B, to=HOST_A) == HOST_A
    assert pair.assert_invariants(OBJECT).epoch == 2


def test_a_refused_handoff_settles_where_it_started(gateway_world: WorldFactory) -> None:
    world = gateway_world(two_orgs(tenants=("other",)))  # B hosts no "default" tenant
    world.create(HOST_A, OBJECT, spec=SPEC)
    assert world.handoff(OBJECT, source=HOST_A, to=HOST_B) == HOST_A
    assert world.assert_invariants(OBJECT).epoch == 1


# --- message faults ----------------------------------------------------------------------


def test_dropped_commit_is_finished_by_recovery(pair: InProcessWorld) -> None:
    pair.network(HOST_A).drop("commit", to=HOST_B)
    result = pair.migrate(OBJECT, source=HOST_A, to=HOST_B)
    assert result.step is SourceStep.COMMITTED  # Commit never reached B
    assert [(d.fault, d.rpc) for d in pair.network(HOST_A).log] == [(Fault.DROP, "commit")]
    assert pair.wait_settled(OBJECT) == HOST_B  # B asks, or A re-sends
    pair.assert_invariants(OBJECT)


def test_lost_prepare_reply_aborts_on_both_sides(pair: InProcessWorld) -> None:
    pair.network(HOST_A).lose_reply("prepare")
    with pytest.raises(PeerUnavailableError, match="injected fault"):
        pair.migrate(OBJECT, source=HOST_A, to=HOST_B)
    assert pair.wait_settled(OBJECT) == HOST_A
    (staged,) = pair.snapshots(OBJECT)[HOST_B].destinations
    assert staged.step is DestinationStep.ABORTED  # B did stage: the reply was lost
    pair.assert_invariants(OBJECT)


def test_duplicated_calls_get_the_same_answer(pair: InProcessWorld) -> None:
    network = pair.network(HOST_A)
    network.duplicate("prepare")
    network.duplicate("commit")
    assert pair.handoff(OBJECT, source=HOST_A, to=HOST_B) == HOST_B
    assert network.pending == 0
    source = pair.snapshots(OBJECT)[HOST_A].sources[0]
    repeated = {d.rpc: d.repeated for d in network.log}
    assert repeated == {"prepare": source.staged_receipt, "commit": source.activation_receipt}
    pair.assert_invariants(OBJECT)


def test_delayed_prepare_arrives_late(pair: InProcessWorld) -> None:
    pair.network(HOST_A).delay("prepare", seconds=0.5)
    started = time.monotonic()
    assert pair.migrate(OBJECT, source=HOST_A, to=HOST_B).step is SourceStep.DONE
    assert time.monotonic() - started >= 0.5
    assert [d.fault for d in pair.network(HOST_A).log] == [Fault.DELAY]
    pair.assert_invariants(OBJECT)


def test_a_source_clock_ahead_of_the_skew_allowance_is_refused(pair: InProcessWorld) -> None:
    pair.clock(HOST_A).skew(timedelta(minutes=10))
    with pytest.raises(ExpiredError):
        pair.migrate(OBJECT, source=HOST_A, to=HOST_B)
    pair.clock(HOST_A).skew(timedelta(minutes=-10))
    assert pair.wait_settled(OBJECT) == HOST_A
    assert pair.handoff(OBJECT, source=HOST_A, to=HOST_B) == HOST_B  # in step again
    pair.assert_invariants(OBJECT)


def test_fault_rules_are_bounded() -> None:
    from gateway.testing.faults import FaultyPeers

    network = FaultyPeers(real=None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no call named"):
        network.drop("prepare_stream")
    with pytest.raises(ConfigError, match=r"1\.\.1000"):
        network.drop("commit", times=0)
    with pytest.raises(ConfigError, match="at most 60"):
        network.delay("commit", seconds=61)


# --- each invariant fails on a world that breaks it --------------------------------------


def test_the_invariants_catch_what_they_promise(pair: InProcessWorld) -> None:
    assert pair.handoff(OBJECT, source=HOST_A, to=HOST_B) == HOST_B
    found = pair.snapshots(OBJECT)
    obj = found[HOST_B].object
    assert obj is not None
    trust, now = pair.trust(HOST_B), pair.now(HOST_B)
    assert assert_one_live_copy(found) == HOST_B
    assert_no_widening(obj, trust=trust, at=now)
    assert_history_verifies(obj, trust=trust)

    resumed = replace(found[HOST_A], object=replace(obj, state=LifecycleState.FROZEN))
    with pytest.raises(AssertionError, match="2 live copies"):
        assert_at_most_one_live({**found, HOST_A: resumed})
    nowhere = {h: replace(s, object=None) for h, s in found.items()}
    with pytest.raises(AssertionError, match="exactly one ACTIVE"):
        assert_one_live_copy(nowhere)

    # B narrowed the object to publishing; state:self was granted but not offered here.
    widened = EffectiveAuthority(allow=CapabilitySet.from_config([{"resource": "pubsub:*", "actions": ["publish"]}], "test"))  # fmt: skip
    with pytest.raises(AssertionError, match="wider authority"):
        assert_no_widening(replace(obj, authority=widened), trust=trust, at=now)
    with pytest.raises(AssertionError, match="no grants"):
        assert_no_widening(replace(obj, grants=()), trust=trust, at=now)
    with pytest.raises(AssertionError, match="does not verify"):
        assert_no_widening(obj, trust=trust, at=now + timedelta(days=2))  # grants expired

    entries = list(obj.lineage.entries)
    entries[0] = replace(entries[0], detail="rewritten")  # covered by A's checkpoint
    forged = replace(obj, lineage=replace(obj.lineage, entries=tuple(entries)))
    with pytest.raises(AssertionError, match="history does not verify"):
        assert_history_verifies(forged, trust=trust)


# --- processes: a side killed at a named crash point -------------------------------------

#: Recovery settles within seconds (see tests/test_crash_recovery.py for the arithmetic).
CRASH_HANDOFF = {
    "transfer_ttl_seconds": 2,
    "clock_skew_seconds": 0.5,
    "rpc_timeout_seconds": 2,
    "retry_attempts": 3,
    "stage_timeout_seconds": 1,
}


def crash_pair() -> list[HostSpec]:
    return [HostSpec(host_id=h, handoff=CRASH_HANDOFF) for h in (HOST_A, HOST_B)]


@pytest.mark.slow
def test_destination_killed_after_staging_recovers_to_one_copy(
    gateway_world: WorldFactory,
) -> None:
    world = gateway_world(crash_pair(), mode="process")
    world.create(HOST_A, OBJECT, spec=SPEC)
    world.restart(HOST_B, crash_at=["destination.after-stage"])
    moved = world.migrate(OBJECT, source=HOST_A, to=HOST_B)
    assert moved.returncode == 1, moved.stdout  # B died before its receipt went out
    assert world.wait_exited(HOST_B) == -signal.SIGKILL
    world.restart(HOST_B)
    assert world.wait_settled(OBJECT) == HOST_A
    (staged,) = world.snapshots(OBJECT)[HOST_B].destinations
    assert staged.step is DestinationStep.ABORTED  # it asked, and heard "aborted"
    world.assert_invariants(OBJECT)


@pytest.mark.slow
def test_source_killed_after_committing_recovers_to_one_copy(
    gateway_world: WorldFactory, tmp_path: Path
) -> None:
    world = gateway_world(crash_pair(), mode="process")
    world.create(HOST_A, OBJECT, spec=SPEC)
    moved = world.migrate(
        OBJECT, source=HOST_A, to=HOST_B, crash_at=["source.after-commit-journal"]
    )
    assert moved.returncode == -signal.SIGKILL
    assert world.wait_settled(OBJECT) == HOST_B  # A's server re-sends Commit
    assert world.assert_invariants(OBJECT).epoch == 1
    with pytest.raises(ConfigError, match="unknown crash points"):
        world.restart(HOST_B, crash_at=["nowhere"])
