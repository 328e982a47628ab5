"""Fault injection across real processes: a gateway is SIGKILLed at every named crash point
of the handoff (gateway/_crash.py), restarted, and the stores are read back until the
migration settles.

The invariant (DESIGN.md §6): at every moment at most one host holds the object live
(ACTIVE, or FROZEN with the right to resume); once settled exactly one holds it ACTIVE,
with the data, grants and lineage it had before, and both journals agree on the outcome.

Who dies where. ``source.*`` points run in whoever coordinates the migration: the
``gateway migrate`` CLI process, armed through its environment, while both servers keep
running and A's server recovers from the journal the CLI left behind. ``destination.*``
points run in B's server, which is started armed and restarted unarmed after it died
(and only after the CLI has given up, so that which path is taken does not depend on
timing). :data:`CASES` says, per point, what is armed and which path reaches it.
"""

from __future__ import annotations

import enum
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

import gateway
from gateway._crash import CRASH_POINTS
from gateway.credentials import verify_chain
from gateway.handoff.journal import (
    DESTINATION_PREFIX,
    OPEN_DESTINATION_PREFIX,
    OPEN_SOURCE_PREFIX,
    SOURCE_PREFIX,
    Journal,
)
from gateway.handoff.records import (
    DestinationRecord,
    DestinationStep,
    SourceRecord,
    SourceStep,
)
from gateway.lineage import EntryKind, verify_lineage
from gateway.model import GovernedObject, LifecycleState
from gateway.stores import StateStore
from gateway.testing import (
    HostSpec,
    ServerProcess,
    World,
    build_world,
    read_store,
    run_cli,
    start_all,
    trust_of,
)
from gateway.trust import TrustStore
from tests.conftest import HOST_A, HOST_B

pytestmark = pytest.mark.slow

OBJECT = "obj://org-a.example/billing/invoice-7"

#: Fast enough that every recovery path settles within seconds: A aborts a FROZEN
#: migration 2 + 2 × 0.5 = 3 s after freezing it, B asks about a copy staged over 1 s
#: ago, and both run a recovery pass every max(1, 1/3) = 1 s.
HANDOFF = {
    "transfer_ttl_seconds": 2,
    "clock_skew_seconds": 0.5,
    "rpc_timeout_seconds": 2,
    "retry_attempts": 3,
    "stage_timeout_seconds": 1,
}
POLICY = {
    "offers": [
        {"resource": "pubsub:*", "actions": ["publish"]},
        {"resource": "state:self", "actions": ["read", "write"]},
    ]
}
DATA = {"invoice": 7, "amount": 1250, "status": "open"}
SPEC = {
    "data": DATA,
    "grant": {
        "audience": "spiffe://org-b.example",
        "valid_for_days": 1,
        "capabilities": [
            {"resource": "pubsub:alerts/overdue", "actions": ["publish"]},
            {"resource": "state:self", "actions": ["read", "write"]},
        ],
        "constraints": {
            "hosts": ["spiffe://org-a.example/*", "spiffe://org-b.example/*"],
            "max_hops": 3,
        },
    },
    # One generation runs as soon as A's server starts; the next would be due long after
    # the case ends, so no cycle races the freeze and the final data is exactly known.
    "cycle": {"interval_seconds": 60},
    "rules": [
        {
            "name": "overdue",
            "when": "data.amount > 1000",
            "publish": {"topic": "alerts/overdue", "payload": "generation"},
        },
        {"name": "count", "when": "true", "write": '{"checks": generation + 1}'},
    ],
}
#: Hosted on A only: B refuses a transfer of an object in this tenant (admission).
A_ONLY_TENANT = "a-only"

WAIT_S = 30.0
POLL_S = 0.2


class Resolution(enum.Enum):
    MOVED = "moved"  #: ACTIVE on B; A keeps a MOVED tombstone; DONE ↔ ACTIVATED
    ABORTED = "aborted"  #: ACTIVE on A again; ABORTED on both sides (or B never knew)


@dataclass(frozen=True, slots=True, kw_only=True)
class Case:
    point: str  #: the crash point this case reaches
    cli_crash: tuple[str, ...] = ()  #: GATEWAY_TEST_CRASH_AT of the `gateway migrate` CLI
    b_crash: tuple[str, ...] = ()  #: GATEWAY_TEST_CRASH_AT of B's first server process
    tenant: str = "default"
    cli_exit: int  #: the CLI's return code (-9: it was SIGKILLed)
    resolution: Resolution  #: how the migration settles
    staged: bool  #: whether B ever held a staged copy (so it must end with a record of it)
    reason: str  #: the path that reaches the point, and how recovery finishes it


SIGKILLED = -signal.SIGKILL

CASES = (
    Case(
        point="source.after-freeze",
        cli_crash=("source.after-freeze",),
        cli_exit=SIGKILLED,
        resolution=Resolution.ABORTED,
        staged=False,
        reason="CLI dies with FROZEN journaled and nothing sent; once the transfer can no "
        "longer be accepted anywhere, A's server aborts (presumed abort) and tells B",
    ),
    Case(
        point="source.after-prepare",
        cli_crash=("source.after-prepare",),
        cli_exit=SIGKILLED,
        resolution=Resolution.ABORTED,
        staged=True,
        reason="CLI dies holding B's staged receipt, before COMMITTED; B asks for the "
        "decision of its stale staged copy, A journals ABORTED before answering, B discards",
    ),
    Case(
        point="source.after-commit-journal",
        cli_crash=("source.after-commit-journal",),
        cli_exit=SIGKILLED,
        resolution=Resolution.MOVED,
        staged=True,
        reason="CLI dies after COMMITTED + tombstone, before Commit; A's server re-sends "
        "Commit (or B asks and hears COMMITTED), B activates, A journals DONE",
    ),
    Case(
        point="source.after-activation",
        cli_crash=("source.after-activation",),
        cli_exit=SIGKILLED,
        resolution=Resolution.MOVED,
        staged=True,
        reason="CLI dies with B's activation receipt in hand, before DONE; A's server "
        "re-sends Commit, B answers the same receipt again, A journals DONE",
    ),
    Case(
        point="source.after-answer",
        cli_crash=("source.after-answer",),
        cli_exit=SIGKILLED,
        resolution=Resolution.MOVED,
        staged=True,
        reason="CLI has answered (activation confirmed) and dies closing, before its "
        "background DONE write; the record is still COMMITTED and open, so A's server "
        "re-sends Commit, B answers the same receipt again, A journals DONE",
    ),
    Case(
        point="source.after-abort-journal",
        cli_crash=("source.after-abort-journal",),
        tenant=A_ONLY_TENANT,
        cli_exit=SIGKILLED,
        resolution=Resolution.ABORTED,
        staged=False,
        reason="B refuses the object (its tenant is not hosted there); the CLI journals "
        "ABORTED, resuming the object on A, and dies before telling B, which staged nothing",
    ),
    Case(
        point="destination.before-stage",
        b_crash=("destination.before-stage",),
        cli_exit=1,
        resolution=Resolution.ABORTED,
        staged=False,
        reason="B dies after verifying the transfer, before writing; the CLI's Prepare "
        "retries find nobody, it aborts and fails; B, restarted after that, holds nothing",
    ),
    Case(
        point="destination.after-stage",
        b_crash=("destination.after-stage",),
        cli_exit=1,
        resolution=Resolution.ABORTED,
        staged=True,
        reason="B stages and dies before answering; the CLI aborts and fails without "
        "reaching B; restarted B asks for the decision of its staged copy, hears ABORTED",
    ),
    Case(
        point="destination.before-activate",
        b_crash=("destination.before-activate",),
        cli_exit=0,
        resolution=Resolution.MOVED,
        staged=True,
        reason="A commits; B dies on Commit before writing; the CLI reports the activation "
        "as pending; restarted B is activated by A's re-sent Commit (or by asking)",
    ),
    Case(
        point="destination.after-activate",
        b_crash=("destination.after-activate",),
        cli_exit=0,
        resolution=Resolution.MOVED,
        staged=True,
        reason="B writes ACTIVE and dies before answering; the CLI reports the activation "
        "as pending; restarted B answers A's re-sent Commit with its stored receipt",
    ),
    Case(
        point="destination.after-discard",
        cli_crash=("source.after-prepare",),
        b_crash=("destination.after-discard",),
        cli_exit=SIGKILLED,
        resolution=Resolution.ABORTED,
        staged=True,
        reason="CLI dies at source.after-prepare leaving B a staged copy; B asks for the "
        "decision, A aborts and tells B; B dies right after writing ABORTED; restarted, "
        "it is already settled",
    ),
)


# --- the list of cases is the list of crash points --------------------------------------


def test_every_crash_point_has_exactly_one_case() -> None:
    # The custody home's points are covered by tests/test_custody_home.py, the cycle's
    # by tests/test_dapr_gateway.py (two replicas of one host), the events' by
    # tests/test_dapr_events_calls.py (a message redelivered by the sidecar), the outbox's
    # by tests/test_dapr_actions.py (an action delivered again with the same key), the
    # compaction's by tests/test_compaction_runtime.py (a spare segment, then a clean one).
    assert sorted(c.point for c in CASES) == sorted(
        p
        for p in CRASH_POINTS
        if not p.startswith(("home.", "cycle.", "events.", "outbox.", "compaction."))
    )


def test_every_crash_point_is_in_the_code_and_every_call_is_listed() -> None:
    root = Path(gateway.__file__).parent
    called = {
        match.group(1)
        for path in root.rglob("*.py")
        for match in re.finditer(r"""crash_point\(\s*["']([^"']+)["']\s*\)""", path.read_text())
    }
    assert called == set(CRASH_POINTS)


# --- reading the stores ------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class HostState:
    obj: GovernedObject | None
    sources: dict[str, SourceRecord]
    destinations: dict[str, DestinationRecord]
    open_migrations: list[str]  #: keys of the markers of migrations recovery still looks at


def host_state(config: Path, tenant: str) -> HostState:
    """The object and every journal record of one host, straight from its SQLite file
    (opened beside the running server, and closed again)."""

    async def read(store: StateStore) -> HostState:
        journal = Journal(store)
        loaded = await journal.object(tenant, OBJECT)
        sources: dict[str, SourceRecord] = {}
        for key in await store.list(SOURCE_PREFIX):
            record = await journal.source(key.removeprefix(SOURCE_PREFIX))
            assert record is not None
            sources[record.value.migration_id] = record.value
        destinations: dict[str, DestinationRecord] = {}
        for key in await store.list(DESTINATION_PREFIX):
            staged = await journal.destination(key.removeprefix(DESTINATION_PREFIX))
            assert staged is not None
            destinations[staged.value.migration_id] = staged.value
        return HostState(
            obj=loaded.value if loaded else None,
            sources=sources,
            destinations=destinations,
            open_migrations=await store.list(OPEN_SOURCE_PREFIX)
            + await store.list(OPEN_DESTINATION_PREFIX),
        )

    return read_store(config, read)


def live(obj: GovernedObject | None) -> bool:
    return obj is not None and obj.live


def settled(a: HostState, b: HostState) -> bool:
    """Both sides reached a final step: source DONE or ABORTED, and the destination
    ACTIVATED, ABORTED or never told."""
    if len(a.sources) != 1:
        return False
    ((migration_id, source),) = a.sources.items()
    destination = b.destinations.get(migration_id)
    return source.step in (SourceStep.DONE, SourceStep.ABORTED) and (
        destination is None or destination.step is not DestinationStep.STAGED
    )


# --- driving the processes ---------------------------------------------------------------


def command(*args: str, config: Path, tenant: str) -> list[str]:
    """The argv of one `gateway` CLI invocation on the host configured in ``config``."""
    return [sys.executable, "-m", "gateway", *args, "--tenant", tenant, "--config", str(config)]


def environment(crash_at: tuple[str, ...] = ()) -> dict[str, str]:
    """The environment of a gateway process, armed to SIGKILL itself at ``crash_at``."""
    armed = {"GATEWAY_TEST_CRASH_AT": ",".join(crash_at)} if crash_at else {}
    return {**os.environ, "COLUMNS": "200", **armed}


def wait_for(what: str, condition: Callable[[], bool], timeout: float = WAIT_S) -> None:
    """Poll ``condition`` every 0.2 s; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(POLL_S)


def make_world(tmp_path: Path) -> World:
    """A (org-a) and B (org-b), trusting each other, with the same offers; only A hosts
    the tenant that B refuses."""
    return build_world(
        tmp_path,
        [
            HostSpec(
                host_id=HOST_A,
                tenants=("default", A_ONLY_TENANT),
                handoff=HANDOFF,
                policy=POLICY,
            ),
            HostSpec(host_id=HOST_B, tenants=("default",), handoff=HANDOFF, policy=POLICY),
        ],
    )


@pytest.mark.parametrize("case", CASES, ids=[c.point for c in CASES])
def test_a_crash_at_every_point_recovers_to_exactly_one_live_copy(
    tmp_path: Path, case: Case
) -> None:
    world = make_world(tmp_path)
    config_a, config_b = world.config(HOST_A), world.config(HOST_B)
    spec_file = tmp_path / "invoice.yaml"
    spec_file.write_text(json.dumps(SPEC))
    created = run_cli(
        "object",
        "create",
        OBJECT,
        "--spec",
        str(spec_file),
        "--tenant",
        case.tenant,
        config=config_a,
        timeout=60,
    )
    assert created.returncode == 0, created.stderr

    with ExitStack() as stack:
        server_a = ServerProcess(config_a)
        server_b = ServerProcess(config_b, env=environment(case.b_crash))
        start_all(stack, server_a, server_b)

        # The first generation runs as A's server starts; migrate only after it, so that
        # no cycle changes the object under the freeze.
        def evaluated_once() -> bool:
            obj = host_state(config_a, case.tenant).obj
            return obj is not None and obj.generation >= 1

        wait_for("the first cycle on A", evaluated_once, 15)
        before = host_state(config_a, case.tenant).obj
        assert before is not None and before.state is LifecycleState.ACTIVE

        # From here on every look at the stores also checks: never two live copies.
        seen: list[tuple[HostState, HostState]] = []

        def watching(done: Callable[[], bool]) -> Callable[[], bool]:
            def look() -> bool:
                # B (the destination) first: the two reads are moments apart, and A's
                # FROZEN record read just before the commit and B's activation read just
                # after it would look like two live copies that never coexisted. B read
                # ACTIVE means A's MOVED tombstone was durable before, so A, read after,
                # shows it (or a real second live copy, which this must catch).
                b = host_state(config_b, case.tenant)
                a = host_state(config_a, case.tenant)
                assert not (live(a.obj) and live(b.obj)), f"two live copies: {a.obj}, {b.obj}"
                assert len(a.sources) <= 1 and not b.sources, "one migration, started by A"
                seen.append((a, b))
                return done()

            return look

        output = stack.enter_context((tmp_path / "migrate.out").open("w+"))
        migrate = subprocess.Popen(
            command("migrate", OBJECT, "--to", HOST_B, config=config_a, tenant=case.tenant),
            stdout=output,
            stderr=subprocess.STDOUT,
            env=environment(case.cli_crash),
        )
        stack.callback(migrate.kill)  # a no-op once it exited
        wait_for("the migrate CLI to exit", watching(lambda: migrate.poll() is not None))
        output.seek(0)
        assert migrate.returncode == case.cli_exit, output.read()

        if case.b_crash:
            armed_b = server_b.process
            assert armed_b is not None
            wait_for("B to reach its crash point", watching(lambda: armed_b.poll() is not None))
            assert armed_b.returncode == SIGKILLED, f"B exited with {armed_b.returncode}"
            server_b.stop()  # closes what the dead process left open
            server_b = ServerProcess(config_b)  # unarmed
            start_all(stack, server_b)

        wait_for("the migration to settle", watching(lambda: settled(*seen[-1])))
        # The servers kept running (A throughout, B since its last start).
        assert server_a.process is not None and server_a.process.poll() is None
        assert server_b.process is not None and server_b.process.poll() is None
        a, b = seen[-1]

    check_outcome(case, before, a, b, trust_of(config_b))


def check_outcome(
    case: Case, before: GovernedObject, a: HostState, b: HostState, trust: TrustStore
) -> None:
    ((migration_id, source),) = a.sources.items()
    assert b.sources == {}
    assert a.open_migrations == b.open_migrations == []  # recovery has nothing left to do
    assert set(b.destinations) <= {migration_id}
    destination = b.destinations.get(migration_id)
    if case.staged:
        assert destination is not None and destination.transfer_digest
        assert destination.staged is None  # the staged copy is gone once settled
    else:  # B never staged: it has no record, or only the record of an abort it was told
        assert destination is None or (
            destination.step is DestinationStep.ABORTED and not destination.transfer_digest
        )

    if case.resolution is Resolution.MOVED:
        assert source.step is SourceStep.DONE
        assert destination is not None and destination.step is DestinationStep.ACTIVATED
        tombstone, final = a.obj, b.obj
        assert tombstone is not None and tombstone.state is LifecycleState.MOVED
        assert tombstone.moved_to == HOST_B and tombstone.migration_id == migration_id
        assert final is not None
        # B's lineage continues A's: everything A recorded, then B's REHOSTED.
        assert final.lineage.entries[: len(tombstone.lineage)] == tombstone.lineage.entries
        tail = [EntryKind.FROZEN, EntryKind.REHOSTED]
        assert final.epoch == before.epoch + 1
    else:
        assert source.step is SourceStep.ABORTED
        assert destination is None or destination.step is DestinationStep.ABORTED
        final = a.obj
        assert b.obj is None  # never activated on B, so never written there
        assert final is not None
        tail = [EntryKind.FROZEN, EntryKind.ABORTED]
        assert migration_id in final.lineage.entries[-1].detail
        assert final.epoch == before.epoch + 1  # the raised epoch fences the aborted transfer

    assert final.state is LifecycleState.ACTIVE
    # Data, grants and authority as before the move (no cycle ran since).
    assert json.loads(final.data) == {**DATA, "checks": 1}
    assert final.data == before.data and final.generation == before.generation == 1
    assert final.grants == before.grants and len(final.grants) == 1
    verify_chain(final.grants, object_id=OBJECT, trust=trust, at=source.updated_at)
    assert final.authority == before.authority
    assert final.authority.permits("pubsub:alerts/overdue", "publish")
    # Lineage: what it was, then the handoff's entries; it verifies against both domains.
    assert final.lineage.entries[: len(before.lineage)] == before.lineage.entries
    assert [e.kind for e in final.lineage.entries[len(before.lineage) :]] == tail
    assert migration_id in final.lineage.entries[len(before.lineage)].detail
    verified = verify_lineage(final.lineage, object_id=OBJECT, trust=trust, sealed=False)
    assert verified.hosts == ((HOST_A,) if case.resolution is Resolution.MOVED else ())
