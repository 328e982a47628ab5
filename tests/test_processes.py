"""End to end across OS processes: two `gateway serve` servers, the `gateway` CLI as the
operator, real mTLS sockets on loopback, and the stores read back afterwards."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.handoff.journal import Journal
from gateway.handoff.records import DestinationStep, SourceStep
from gateway.keyring import load_keyring
from gateway.lineage import EntryKind, verify_lineage
from gateway.model import GovernedObject, LifecycleState
from gateway.stores.sqlite import SqliteStore
from gateway.testing import HostSpec, ServerProcess, World, build_world
from gateway.trust import TrustStore, decode_bundle
from tests.conftest import HOST_A, HOST_B

pytestmark = pytest.mark.slow

OBJECT = "obj://org-a.example/billing/invoice-7"


def gateway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )


def read_store(config: Path, object_id: str) -> tuple[GovernedObject | None, list[str], list[str]]:
    """The object record and the journal keys, straight from the host's SQLite file."""

    async def read() -> tuple[GovernedObject | None, list[str], list[str]]:
        store = SqliteStore.open(load_config(config).sqlite)
        try:
            journal = Journal(store)
            loaded = await journal.object("default", object_id)
            return (
                loaded.value if loaded else None,
                await store.list("journal/source/"),
                await store.list("journal/destination/"),
            )
        finally:
            await store.close()

    return asyncio.run(read())


def trust_of(world: World, config: Path) -> TrustStore:
    """What a host trusts: its own bundle and the ones it imported (read from its store)."""

    async def read() -> TrustStore:
        store = SqliteStore.open(load_config(config).sqlite)
        try:
            bundles = [load_keyring(load_config(config).keys).bundle]
            for key in await store.list("trust/"):
                item = await store.get(key)
                assert item is not None
                bundles.append(decode_bundle(item.value))
            return TrustStore.of(bundles)
        finally:
            await store.close()

    return asyncio.run(read())


def test_cli_migration_between_two_server_processes(tmp_path: Path) -> None:
    world = build_world(tmp_path, [HostSpec(host_id=HOST_A), HostSpec(host_id=HOST_B)])
    config_a, config_b = world.config(HOST_A), world.config(HOST_B)
    data = json.dumps({"invoice": 7, "amount": 99})
    with ServerProcess(config_a), ServerProcess(config_b):
        created = gateway("object", "create", OBJECT, "--data", data, "--config", str(config_a))
        assert created.returncode == 0, created.stderr
        moved = gateway("migrate", OBJECT, "--to", HOST_B, "--config", str(config_a))
        assert moved.returncode == 0, moved.stderr
        assert "moved to" in moved.stdout
        lineage = gateway("lineage", OBJECT, "--config", str(config_b))
        assert lineage.returncode == 0, lineage.stderr
        assert "lineage verified: 3 entries" in lineage.stdout

    # Servers are stopped; read each host's own SQLite file.
    source, source_journal, _ = read_store(config_a, OBJECT)
    destination, _, destination_journal = read_store(config_b, OBJECT)
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
        destination.lineage, object_id=OBJECT, trust=trust_of(world, config_b), sealed=False
    )
    assert verified.hosts == (HOST_A,)
    assert len(source_journal) == 1 and len(destination_journal) == 1

    async def steps() -> tuple[SourceStep, DestinationStep]:
        stores = [SqliteStore.open(load_config(c).sqlite) for c in (config_a, config_b)]
        try:
            migration = source_journal[0].removeprefix("journal/source/")
            src = await Journal(stores[0]).source(migration)
            dst = await Journal(stores[1]).destination(migration)
            assert src is not None and dst is not None
            return src.value.step, dst.value.step
        finally:
            for store in stores:
                await store.close()

    assert asyncio.run(steps()) == (SourceStep.DONE, DestinationStep.ACTIVATED)


def test_demo_runs_and_shows_a_live_object_moving(tmp_path: Path) -> None:
    result = gateway("demo", "--dir", str(tmp_path / "demo"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "would admit the object" in out  # the dry run before the move
    assert "host A: MOVED → spiffe://org-b.example/cluster/west/gateway" in out
    assert "host B: ACTIVE, epoch 1" in out
    assert "escalate: publish pubsub:alerts/escalations: denied" in out
    assert "attenuated: grant" in out
    assert "lineage verified:" in out
    assert "1 signed checkpoint(s)" in out
