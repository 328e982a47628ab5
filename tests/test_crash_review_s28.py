"""Crash- and retry-safety review of the migration path (session 28): one test per finding.

Each test drives real hosts (in-process, over real mTLS) into the window it names and
checks the one-live-copy invariant, or the protocol rule whose breach leads there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway import wire
from gateway.errors import ConcurrencyError, GatewayError
from gateway.handoff import offline
from gateway.handoff.messages import Outcome, ReceiptKind
from gateway.handoff.records import DestinationRecord, DestinationStep, SourceRecord, SourceStep
from gateway.handoff.source import open_decision
from gateway.stores import Operation
from gateway.testing import HostSpec, build_world
from gateway.testing.harness import InProcessWorld
from tests.conftest import HOST_A, HOST_A2, HOST_B

OBJECT = "obj://org-a.example/review/s28"


def _a_and_b(tmp_path: Path) -> InProcessWorld:
    """Hosts A and B, in one process."""
    return InProcessWorld(
        build_world(tmp_path, [HostSpec(host_id=HOST_A), HostSpec(host_id=HOST_B)])
    )


def _frozen_at_a(world: InProcessWorld) -> tuple[str, SourceRecord]:
    """OBJECT created on A and frozen for B: its migration id and A's FROZEN record."""
    world.create(HOST_A, OBJECT, data={"n": 1})
    a = world.hosts[HOST_A]
    migration_id = world.run(a.source.freeze(OBJECT, tenant="default", destination=HOST_B))
    loaded = world.run(a.journal.source(migration_id))
    assert loaded is not None
    return migration_id, loaded.value


def test_a_decision_is_never_aborted_while_the_source_can_still_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """source.py ``_decide``: a destination asks for the decision of a migration its source
    holds FROZEN, with the staged receipt in hand and about to commit. The source aborts
    first (presumed abort); but if that abort cannot be journaled (it lost its
    conditional write three times: store contention, the ``keeps changing under abort``
    ObjectStateError), ``_decide`` used to answer ABORTED anyway, with the record still
    FROZEN. The coordinator then commits (tombstone) and the destination discards its
    copy on the signed ABORTED: no live copy anywhere. An answer of ABORTED must only
    ever follow an ABORTED journal; otherwise the source must not answer at all."""
    world = _a_and_b(tmp_path)
    with contextlib.closing(world):
        a, b = world.hosts[HOST_A], world.hosts[HOST_B]
        migration_id, record = _frozen_at_a(world)

        # The coordinator's Prepare: B stages, A holds the staged receipt.
        async def prepare() -> bytes:
            return await a.peers.client(HOST_B).prepare(record.transfer)

        receipt = world.run(prepare())

        # A's store refuses the next three conditional writes (contention): exactly the
        # three attempts of the abort that the Decision below starts.
        store = a.journal.store
        assert a.context.journal is a.journal

        class Contended:
            """The store, but its next three transactions lose their ETag race."""

            refused = 0

            def __getattr__(self, name: str) -> object:
                return getattr(store, name)

            async def transact(self, operations: Sequence[Operation]) -> dict[str, str] | None:
                if self.refused < 3:
                    self.refused += 1
                    raise ConcurrencyError("contended")
                return await store.transact(operations)

        contended = Contended()
        monkeypatch.setattr(a.journal, "store", contended)
        try:

            async def ask() -> bytes:
                return await b.peers.client(HOST_A).decision(migration_id)

            answer = world.run(ask())
            outcome: Outcome | None = open_decision(
                b.context, answer, source=HOST_A, migration_id=migration_id
            )
        except GatewayError:
            outcome = None  # no answer now: B asks again on its next pass
        assert contended.refused == 3, "the abort's writes were the ones refused"
        monkeypatch.setattr(a.journal, "store", store)

        journaled = world.run(a.journal.source(migration_id))
        assert journaled is not None
        if outcome is Outcome.ABORTED:
            assert journaled.value.step is SourceStep.ABORTED, (
                "A signed ABORTED while its record is still "
                f"{journaled.value.step.value}: it can still commit"
            )
            world.run(b.destination.abort(migration_id, peer=HOST_A, reason="source said so"))

        # The coordinator, receipt in hand, commits (if it still can), then B settles.
        world.run(a.source._commit(migration_id, receipt, transfer_digest=record.transfer_digest))
        staged = world.run(b.destination._record_for(migration_id, HOST_A))
        if staged.value.step is DestinationStep.STAGED:
            world.run(b.recovery.settle_destination(staged.value))
        world.assert_one_live_copy(OBJECT)
        world.assert_invariants(OBJECT)


HOMED = "obj://org-a.example/review/s28-homed"


def test_contention_at_the_custody_home_is_not_a_fork(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """home.py ``claim``: three lost compare-and-sets on the custody record (contention,
    no other claim standing in the way) ended in ForkError. A ForkError tells the
    destination that another host holds the object: it records a fork and discards its
    staged copy, although the source committed (a claim carries the source's signed
    COMMITTED decision, and its object is a tombstone already): no live copy anywhere.
    Contention must leave the copy staged, for the Commit to be re-sent."""
    world = InProcessWorld(
        build_world(
            tmp_path,
            [HostSpec(host_id=HOST_A), HostSpec(host_id=HOST_A2), HostSpec(host_id=HOST_B)],
        )
    )
    with contextlib.closing(world):
        world.create(HOST_A, HOMED, spec={"data": {"n": 1}, "grant": {"home": HOST_A2}})
        home = world.hosts[HOST_A2]
        store = home.journal.store

        class Contended:
            """The home's store, but its next three writes lose their ETag race."""

            refused = 0

            def __getattr__(self, name: str) -> object:
                return getattr(store, name)

            async def put(self, key: str, value: bytes, *, etag: object) -> str | None:
                if self.refused < 3:
                    self.refused += 1
                    raise ConcurrencyError("contended")
                return await store.put(key, value, etag=etag)  # type: ignore[arg-type]

        contended = Contended()
        monkeypatch.setattr(home.journal, "store", contended)
        # The activation fails for now (the migration is committed at A).
        with contextlib.suppress(GatewayError):
            world.migrate(HOMED, source=HOST_A, to=HOST_B)
        assert contended.refused == 3, "the claim's writes were the ones refused"
        monkeypatch.setattr(home.journal, "store", store)
        # The contention is over: A's recovery re-sends Commit, B claims again.
        world.recover(HOST_A)
        assert world.assert_one_live_copy(HOMED) == HOST_B
        world.wait_settled(HOMED)
        world.assert_invariants(HOMED)


@pytest.mark.parametrize("abort_first", [True, False], ids=["aborted", "frozen"])
def test_an_activation_receipt_never_settles_a_migration_the_source_did_not_commit(
    tmp_path: Path, abort_first: bool
) -> None:
    """source.py ``done`` (reached by ``gateway export --complete`` with an activation
    receipt, gateway.handoff.offline.complete): it journaled DONE over whatever the
    record was. A destination that signs an activation receipt for a migration its
    source aborted (or never committed) turned the source's ABORTED into DONE, and the
    source then signed COMMITTED for it (``decide``): with the object ACTIVE at the
    source again, that COMMITTED lets a staged copy go live (and claim custody) too.
    A decision, once ABORTED, never changes; DONE only ever follows COMMITTED."""
    world = _a_and_b(tmp_path)
    with contextlib.closing(world):
        a, b = world.hosts[HOST_A], world.hosts[HOST_B]
        migration_id, record = _frozen_at_a(world)
        world.run(b.destination.prepare(record.transfer, peer=HOST_A))
        if abort_first:
            world.run(a.source.abort(migration_id, reason="operator", tell=False))
        # B signs an activation receipt it has no COMMITTED decision for.
        forged, _envelope = b.destination._receipt(
            ReceiptKind.ACTIVATED,
            migration_id=migration_id,
            object_id=OBJECT,
            epoch=record.epoch,
            peer=HOST_A,
            transfer_digest=record.transfer_digest,
            now=world.now(HOST_B),
        )
        with pytest.raises(GatewayError):
            world.run(offline.complete(a.source, wire.decode_envelope(forged)))
        after = world.run(a.journal.source(migration_id))
        assert after is not None
        assert after.value.step is (SourceStep.ABORTED if abort_first else SourceStep.FROZEN)

        async def ask() -> bytes:
            return await b.peers.client(HOST_A).decision(migration_id)

        answer = world.run(ask())
        assert open_decision(b.context, answer, source=HOST_A, migration_id=migration_id) is (
            Outcome.ABORTED
        )
        world.run(b.recovery.settle_destination(record_at(world, migration_id)))
        assert world.assert_one_live_copy(OBJECT) == HOST_A
        world.assert_invariants(OBJECT)


def record_at(world: InProcessWorld, migration_id: str) -> DestinationRecord:
    loaded = world.run(world.hosts[HOST_B].journal.destination(migration_id))
    assert loaded is not None
    return loaded.value


def test_an_offline_completion_that_lost_to_an_abort_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """offline.py ``complete``: the staged receipt comes back while A's recovery aborts the
    expired transfer. ``complete`` checked ABORTED before committing, but its commit then
    found the record aborted (a lost race, answered by returning the record) and it
    reported "committed: ... hand it the commit file" with an ABORTED decision in hand,
    the object ACTIVE on A again. The operator must be told it aborted."""
    world = _a_and_b(tmp_path)
    with contextlib.closing(world):
        a, b = world.hosts[HOST_A], world.hosts[HOST_B]
        migration_id, record = _frozen_at_a(world)
        receipt = world.run(b.destination.prepare(record.transfer, peer=HOST_A))
        commit = a.source._commit

        async def aborted_first(*args: Any, **kwargs: Any) -> Any:
            # Recovery's abort of the expired transfer lands just before the commit.
            await a.source.abort(migration_id, reason="transfer expired before commit")
            return await commit(*args, **kwargs)

        monkeypatch.setattr(a.source, "_commit", aborted_first)
        with pytest.raises(GatewayError, match="aborted"):
            world.run(offline.complete(a.source, wire.decode_envelope(receipt)))
        monkeypatch.setattr(a.source, "_commit", commit)
        world.run(b.recovery.settle_destination(record_at(world, migration_id)))
        assert world.assert_one_live_copy(OBJECT) == HOST_A


def test_a_source_whose_activation_receipt_was_lost_past_the_retention_still_settles(
    tmp_path: Path,
) -> None:
    """The Commit's reply is lost; A stays COMMITTED (B ACTIVATED) and is then away for
    longer than the retention; B prunes its settled record meanwhile. A re-sent Commit
    used to get "no migration ... was staged here" for ever; B now answers it with its
    signed unknown-migration answer, on which A settles (pruning.py, "A source away past
    the retention"): see tests/test_forgotten_commit.py for what A refuses to settle on."""
    world = _a_and_b(tmp_path)
    with contextlib.closing(world):
        world.create(HOST_A, OBJECT, data={"n": 1})
        world.network(HOST_A).lose_reply("commit", to=HOST_B, times=1000)
        result = world.migrate(OBJECT, source=HOST_A, to=HOST_B)
        assert result.step is SourceStep.COMMITTED
        b = world.hosts[HOST_B]
        activated = world.run(b.journal.destination(result.migration_id))
        assert activated is not None and activated.value.step is DestinationStep.ACTIVATED
        pruner = b.recovery.pruner
        world.clock(HOST_B).skew(pruner.retention + timedelta(days=1))
        world.run(pruner.run_once(paced=False))
        assert world.run(b.journal.destination(result.migration_id)) is None, "pruned"
        world.network(HOST_A).clear()
        # A was away as long: its clock moved on too (A settles on B's word only once
        # its own clock says B's retention can have passed).
        world.clock(HOST_A).skew(pruner.retention + timedelta(days=1))
        world.recover(HOST_A)
        settled = world.run(world.hosts[HOST_A].journal.source(result.migration_id))
        assert settled is not None
        assert settled.value.step is SourceStep.DONE, "A's migration never settles"
