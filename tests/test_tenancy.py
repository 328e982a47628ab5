"""Tenancy through real `gateway serve` processes: objects are named by (tenant, id), a
peer delivers only into the tenants it is bound to, a tenant may refuse objects without
authority, and quotas hold on create and on arrival.

The dishonest peer is this test process: it opens a peer's configuration (its real keys
and certificates) without serving it, crafts transfers, and sends them over real mTLS to
the receiver's server process; afterwards the receiver's SQLite file is read back.
"""

from __future__ import annotations

import asyncio
import json
import os
from contextlib import ExitStack
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import envelope as dsse
from gateway import wire
from gateway.config import load_config
from gateway.errors import (
    AdmissionDeniedError,
    ConfigError,
    QuotaExceededError,
    TenantBindingError,
)
from gateway.handoff.journal import Journal
from gateway.handoff.messages import Transfer
from gateway.handoff.source import new_migration_id
from gateway.host import Host
from gateway.model import GovernedObject, LifecycleState, new_object
from gateway.stores import StateStore
from gateway.tenancy import Usage
from gateway.testing import HostSpec, ServerProcess, build_world, read_store, run_cli, start_all
from tests.conftest import HOST_A, HOST_B

pytestmark = pytest.mark.slow

HOST_C = "spiffe://org-c.example/dc/gateway"


# --- the dishonest peer's tools -------------------------------------------------------


def forge(host: Host, obj: GovernedObject, destination: str, *, proposal: bool = False) -> bytes:
    """``obj`` frozen and sealed by ``host``'s real keys, as its source would; nothing of
    ``host``'s store is read or written."""
    now = host.clock.now()
    migration_id = new_migration_id()
    frozen = obj.freeze(migration_id, destination=destination, host=host.host_id, at=now)
    sealed = frozen.lineage.sealed(
        object_id=obj.object_id,
        host=host.host_id,
        epoch=frozen.epoch,
        at=now,
        signer=host.context.signer,
    )
    transfer = Transfer(
        migration_id=migration_id,
        epoch=frozen.epoch,
        source_host=host.host_id,
        destination_host=destination,
        issued_at=now,
        expires_at=now + timedelta(seconds=60),
        nonce=os.urandom(16),
        object=replace(frozen, lineage=sealed),
        previous_transfer_digest=b"",
    )
    kind = dsse.PayloadType.PROPOSAL if proposal else dsse.PayloadType.TRANSFER
    return wire.encode_envelope(host.context.seal(wire.encode_transfer(transfer), kind))


def crafted(
    host: Host, object_id: str, *, tenant: str, data: bytes = b"{}", epoch: int = 0
) -> GovernedObject:
    """An object as ``host`` would hold it, made in memory only."""
    obj = new_object(
        object_id,
        tenant=tenant,
        data=data,
        content_type="application/json",
        host=host.host_id,
        at=host.clock.now(),
    )
    return replace(obj, epoch=epoch)


def as_peer(config: Path, act: Any) -> Any:
    """Run ``act(host)`` with ``config``'s host opened (keys, store, peers) but not served."""

    async def main() -> Any:
        host = await Host.open(load_config(config))
        try:
            return await act(host)
        finally:
            await host.close()

    return asyncio.run(main())


def stored(config: Path, tenant: str, object_id: str) -> GovernedObject | None:
    async def read(store: StateStore) -> GovernedObject | None:
        loaded = await Journal(store).object(tenant, object_id)
        return loaded.value if loaded else None

    return read_store(config, read)


def usage(config: Path, tenant: str) -> Usage:
    async def read(store: StateStore) -> Usage:
        return (await Journal(store).usage(tenant)).value

    return read_store(config, read)


def keys(config: Path, prefix: str) -> list[str]:
    async def read(store: StateStore) -> list[str]:
        return await store.list(prefix)

    return read_store(config, read)


# --- same id, two tenants --------------------------------------------------------------

SHARED = "obj://org-b.example/shared/x"


def cli_ok(*args: str, config: Path) -> str:
    result = run_cli(*args, config=config)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_another_tenant_with_the_same_id_neither_blocks_nor_is_touched(tmp_path: Path) -> None:
    """t1's object X leaves B for A. While it is away, tenant t2 on B creates its own X and
    sends it on a round trip B → C → B, which raises B's epoch fence for X in t2 to 2.
    Then t1's X comes home from A, also at epoch 2: it is t1's X, so neither t2's record
    nor t2's fence may stop it, and t2's X must come out untouched."""
    world = build_world(
        tmp_path,
        [
            HostSpec(host_id=HOST_A, tenants=("t1",)),
            HostSpec(
                host_id=HOST_B,
                tenants=("t1", "t2"),
                peer_tenants={HOST_A: ("t1",), HOST_C: ("t2",)},
            ),
            HostSpec(host_id=HOST_C, tenants=("t2",)),
        ],
    )
    a, b, c = world.config(HOST_A), world.config(HOST_B), world.config(HOST_C)
    with ExitStack() as stack:
        start_all(stack, ServerProcess(a), ServerProcess(b), ServerProcess(c))
        cli_ok("object", "create", SHARED, "--tenant", "t1", "--data", '{"owner": "t1"}', config=b)
        cli_ok("migrate", SHARED, "--tenant", "t1", "--to", HOST_A, config=b)
        cli_ok("object", "create", SHARED, "--tenant", "t2", "--data", '{"owner": "t2"}', config=b)
        cli_ok("migrate", SHARED, "--tenant", "t2", "--to", HOST_C, config=b)
        cli_ok("migrate", SHARED, "--tenant", "t2", "--to", HOST_B, config=c)
        home = cli_ok("migrate", SHARED, "--tenant", "t1", "--to", HOST_B, config=a)
        assert "moved to" in home

    mine, theirs = stored(b, "t1", SHARED), stored(b, "t2", SHARED)
    assert mine is not None and theirs is not None
    assert (mine.state, mine.tenant, mine.epoch, mine.data) == (
        LifecycleState.ACTIVE,
        "t1",
        2,
        b'{"owner": "t1"}',
    )
    assert (theirs.state, theirs.tenant, theirs.epoch, theirs.data) == (
        LifecycleState.ACTIVE,
        "t2",
        2,
        b'{"owner": "t2"}',
    )
    assert [e.host for e in mine.lineage.entries if e.kind.value == "rehosted"] == [HOST_A, HOST_B]
    assert [e.host for e in theirs.lineage.entries if e.kind.value == "rehosted"] == [
        HOST_C,
        HOST_B,
    ]
    left = stored(a, "t1", SHARED)
    assert left is not None and left.state is LifecycleState.MOVED
    # One id, two tenants: two independent fences and quota charges on B.
    assert keys(b, "t/t1/fence/") == [f"t/t1/fence/{SHARED}"]
    assert keys(b, "t/t2/fence/") == [f"t/t2/fence/{SHARED}"]
    assert usage(b, "t1") == Usage(objects=1, size=len(b'{"owner": "t1"}'))
    assert usage(b, "t2") == Usage(objects=1, size=len(b'{"owner": "t2"}'))
    assert usage(a, "t1") == Usage()  # it left A: A holds nothing any more
