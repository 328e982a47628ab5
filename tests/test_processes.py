"""End to end across OS processes: two `gateway serve` servers, the `gateway` CLI as the
operator, real mTLS sockets on loopback, and the stores read back afterwards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.handoff.journal import Journal
from gateway.handoff.records import DestinationStep, SourceStep
from gateway.lineage import EntryKind, verify_lineage
from gateway.model import GovernedObject, LifecycleState
from gateway.stores import StateStore
from gateway.testing import HostSpec, read_store, run_cli, trust_of
from gateway.testing.plugin import WorldFactory
from tests.conftest import HOST_A, HOST_B

pytestmark = pytest.mark.slow

OBJECT = "obj://org-a.example/billing/invoice-7"


def object_and_journals(
    config: Path, object_id: str
) -> tuple[GovernedObject | None, list[str], list[str]]:
    """The object record and the journal keys, straight from the host's SQLite file."""

    async def read(store: StateStore) -> tuple[GovernedObject | None, list[str], list[str]]:
        loaded = await Journal(store).object("default", object_id)
        return (
            loaded.value if loaded else None,
            await store.list("journal/source/"),
            await store.list("journal/destination/"),
        )

    return read_store(config, read)


def test_cli_migration_between_two_server_processes(gateway_world: WorldFactory) -> None:
    world = gateway_world([HostSpec(host_id=HOST_A), HostSpec(host_id=HOST_B)], mode="process")
    config_a, config_b = world.config(HOST_A), world.config(HOST_B)
    data = json.dumps({"invoice": 7, "amount": 99})
    created = world.cli(HOST_A, "object", "create", OBJECT, "--data", data)
    assert created.returncode == 0, created.stderr
    moved = world.migrate(OBJECT, source=HOST_A, to=HOST_B)
    assert moved.returncode == 0, moved.stderr
    assert "moved to" in moved.stdout
    lineage = world.cli(HOST_B, "lineage", OBJECT)
    assert lineage.returncode == 0, lineage.stderr
    assert "lineage verified: 3 entries" in lineage.stdout
    assert "custody verified: 1 handoff(s)" in lineage.stdout
    assert "org-a.example/cluster/east/gateway → org-b.example/cluster/west/gateway" in (
        lineage.stdout
    )
    # One live copy, no widening, lineage and custody verify, read from both stores.
    assert world.wait_settled(OBJECT) == HOST_B
    world.assert_invariants(OBJECT)
    world.close()

    # Servers are stopped; read each host's own SQLite file.
    source, source_journal, _ = object_and_journals(config_a, OBJECT)
    destination, _, destination_journal = object_and_journals(config_b, OBJECT)
    assert source is not None and destination is not None
    assert source.state is LifecycleState.MOVED and source.moved_to == HOST_B
    assert destination.state is LifecycleState.ACTIVE and destination.epoch == 1
    assert destination.data == data.encode()
    assert [e.kind for e in destination.lineage.entries] == [
        EntryKind.CREATED,
        EntryKind.FROZEN,
        EntryKind.REHOSTED,
    ]
    rehosted = destination.lineage.entries[-1]
    assert rehosted.host == HOST_B and HOST_A in rehosted.detail
    verified = verify_lineage(
        destination.lineage, object_id=OBJECT, trust=trust_of(config_b), sealed=False
    )
    assert verified.hosts == (HOST_A,)
    assert len(source_journal) == 1 and len(destination_journal) == 1

    migration = source_journal[0].removeprefix("journal/source/")
    src = read_store(config_a, lambda store: Journal(store).source(migration))
    dst = read_store(config_b, lambda store: Journal(store).destination(migration))
    assert src is not None and dst is not None
    assert (src.value.step, dst.value.step) == (SourceStep.DONE, DestinationStep.ACTIVATED)


def test_demo_runs_and_shows_a_live_object_moving(tmp_path: Path) -> None:
    # Piped with no COLUMNS, as `gateway demo > file` on a fresh machine.
    result = run_cli("demo", "--dir", str(tmp_path / "demo"), env={"COLUMNS": None})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "would admit the object" in out  # the dry run before the move
    assert "host A: MOVED → spiffe://org-b.example/cluster/west/gateway" in out
    assert "host B: ACTIVE, epoch 1" in out
    assert "escalate: publish pubsub:alerts/escalations: denied" in out
    assert "attenuated: grant" in out
    assert "lineage verified:" in out
    assert "1 signed checkpoint(s)" in out
    # Piped output is not wrapped at 80 columns: the first step is one line.
    first = next(line for line in out.splitlines() if line.startswith("1. two trust domains"))
    assert first.endswith("dev CAs, host certificates, signing keys"), first
