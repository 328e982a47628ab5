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
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import envelope as dsse
from gateway import wire
from gateway.config import load_config
from gateway.errors import (
    AdmissionDeniedError,
    QuotaExceededError,
    TenantBindingError,
)
from gateway.handoff.journal import Journal
from gateway.handoff.records import DestinationRecord
from gateway.host import Host
from gateway.model import GovernedObject, LifecycleState, new_object
from gateway.stores import StateStore
from gateway.tenancy import Usage
from gateway.testing import (
    HostSpec,
    ServerProcess,
    build_world,
    read_store,
    run_cli,
    sealed_transfer,
    sign_transfer,
    start_all,
    stored_keys,
)
from tests.conftest import HOST_A, HOST_B

pytestmark = pytest.mark.slow

HOST_C = "spiffe://org-c.example/dc/gateway"


# --- the dishonest peer's tools -------------------------------------------------------


def forge(host: Host, obj: GovernedObject, destination: str, *, proposal: bool = False) -> bytes:
    """``obj`` frozen and sealed by ``host``'s real keys, as its source would; nothing of
    ``host``'s store is read or written."""
    kind = dsse.PayloadType.PROPOSAL if proposal else dsse.PayloadType.TRANSFER
    return sign_transfer(host, sealed_transfer(host, obj, destination), payload_type=kind)


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


def destination_records(config: Path) -> list[DestinationRecord]:
    async def read(store: StateStore) -> list[DestinationRecord]:
        journal = Journal(store)
        found = []
        for key in await store.list("journal/destination/"):
            loaded = await journal.destination(key.removeprefix("journal/destination/"))
            assert loaded is not None
            found.append(loaded.value)
        return found

    return read_store(config, read)


def keys(config: Path, prefix: str) -> list[str]:
    """Every key under ``prefix`` in the host's file, fences and holds included."""
    return stored_keys(config, prefix)


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


# --- peers deliver only into the tenants they are bound to -------------------------------


def test_a_peer_bound_to_one_tenant_cannot_deliver_into_another(tmp_path: Path) -> None:
    """A is bound to tenant "a" on B. Playing A, the test sends B objects for tenant "b":
    as a Prepare, as a dry-run proposal, and through A's own `gateway migrate`. Every one
    is refused naming the binding, and B writes nothing; the same peer delivering into "a"
    is accepted (the refusal is about the tenant, not the peer)."""
    world = build_world(
        tmp_path,
        [
            HostSpec(host_id=HOST_A, tenants=("a", "b")),
            HostSpec(host_id=HOST_B, tenants=("a", "b"), peer_tenants={HOST_A: ("a",)}),
        ],
    )
    a, b = world.config(HOST_A), world.config(HOST_B)
    intruder = "obj://org-a.example/intrude/into-b"
    allowed = "obj://org-a.example/intrude/into-a"
    with ExitStack() as stack:
        start_all(stack, ServerProcess(b))

        async def intrude(host: Host) -> tuple[str, str, str]:
            client = host.peers.client(HOST_B)
            obj = crafted(host, intruder, tenant="b")
            with pytest.raises(TenantBindingError) as prepared:
                await client.prepare(forge(host, obj, HOST_B))
            evaluation = await client.evaluate(forge(host, obj, HOST_B, proposal=True))
            assert not evaluation.admitted
            # Control: into its own tenant the same peer is accepted, then aborts.
            raw = forge(host, crafted(host, allowed, tenant="a"), HOST_B)
            await client.prepare(raw)
            await client.abort(
                wire.decode_transfer(wire.decode_envelope(raw).payload).migration_id, "test"
            )
            return prepared.value.reason, evaluation.refusal, prepared.value.hint or ""

        reason, refusal, hint = as_peer(a, intrude)
        assert "refusing delivery into tenant 'b'" in reason
        assert f"{HOST_A} may deliver only into a on {HOST_B}" in reason
        assert "peers:" in hint
        assert refusal.startswith("TenantBindingError: refusing delivery into tenant 'b'")

        cli_ok("object", "create", intruder, "--tenant", "b", "--data", "{}", config=a)
        moved = run_cli("migrate", intruder, "--tenant", "b", "--to", HOST_B, config=a)
        assert moved.returncode == 1
        assert "refusing delivery into tenant 'b'" in moved.stderr

    # Nothing of tenant "b" was written on B: no journal record, no fence, no charge.
    assert keys(b, "t/b/") == []
    # Destination records: only the control delivery into "a" (aborted). The abort A sent
    # after B refused its migration concerns a migration B never staged: it writes nothing
    # (a peer must not fill a store with aborts of random ids).
    records = destination_records(b)
    assert sorted((r.tenant, r.step.value, r.staged is None) for r in records) == [
        ("a", "aborted", True),
    ]
    assert keys(b, "t/a/held/") == [] and usage(b, "a") == Usage()
    back = stored(a, "b", intruder)
    assert back is not None and back.state is LifecycleState.ACTIVE  # A's own copy resumed


# --- a tenant whose ceiling allows nothing ----------------------------------------------

GRANTED_SPEC = {
    "data": {"invoice": 1},
    "grant": {
        "audience": "spiffe://org-b.example",
        "valid_for_days": 1,
        "capabilities": [{"resource": "pubsub:alerts/overdue", "actions": ["publish"]}],
    },
}


def test_a_tenant_whose_ceiling_allows_nothing_grants_nothing_or_refuses(tmp_path: Path) -> None:
    """B offers pubsub publishing, but its ceilings allow tenants "open" and "strict"
    nothing at all (``allow: []`` is "nothing", not "no ceiling"); "strict" also requires
    authority. The dry run shows each case; the object into "open" arrives with no
    capability, the one into "strict" is refused and nothing of it is written — also
    when the test, playing A, sends it directly."""
    world = build_world(
        tmp_path,
        [
            HostSpec(host_id=HOST_A, tenants=("free", "open", "strict")),
            HostSpec(
                host_id=HOST_B,
                tenants=("free", "open", "strict"),
                tenant_settings=({"name": "strict", "require_authority": True},),
                policy={
                    "offers": [{"resource": "pubsub:*", "actions": ["publish"]}],
                    "ceilings": [
                        {"tenant": "open", "allow": []},
                        {"tenant": "strict", "allow": []},
                    ],
                },
            ),
        ],
    )
    a, b = world.config(HOST_A), world.config(HOST_B)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(GRANTED_SPEC), encoding="utf-8")
    ids = {tenant: f"obj://org-a.example/ceiling/{tenant}" for tenant in ("free", "open", "strict")}
    with ExitStack() as stack:
        start_all(stack, ServerProcess(a), ServerProcess(b))
        for tenant, object_id in ids.items():
            cli_ok("object", "create", object_id, "--tenant", tenant, "--spec", str(spec), config=a)

        def dry_run(tenant: str) -> Any:
            return run_cli(
                "migrate", ids[tenant], "--tenant", tenant, "--to", HOST_B, "--dry-run", config=a
            )

        free, open_, strict = dry_run("free"), dry_run("open"), dry_run("strict")
        assert free.returncode == 0 and "pubsub:alerts/overdue publish  granted" in free.stdout
        assert open_.returncode == 0, open_.stderr
        assert "the ceiling for tenant open allows no publish" in open_.stdout
        assert "effective: (nothing)" in open_.stdout
        assert strict.returncode == 1
        assert "would refuse the object" in strict.stdout
        assert "tenant 'strict' requires authority" in strict.stdout

        cli_ok("migrate", ids["open"], "--tenant", "open", "--to", HOST_B, config=a)
        refused = run_cli("migrate", ids["strict"], "--tenant", "strict", "--to", HOST_B, config=a)
        assert refused.returncode == 1
        assert "tenant 'strict' requires authority" in refused.stderr

        async def insist(host: Host) -> None:
            obj = await host.get_object(ids["strict"], tenant="strict")
            with pytest.raises(AdmissionDeniedError, match="requires authority"):
                await host.peers.client(HOST_B).prepare(forge(host, obj, HOST_B))

        as_peer(a, insist)

    arrived = stored(b, "open", ids["open"])
    assert arrived is not None and arrived.state is LifecycleState.ACTIVE
    assert arrived.grants  # it carries its grant, which grants nothing here
    assert not arrived.authority.allow.capabilities
    assert not arrived.authority.permits("pubsub:alerts/overdue", "publish")
    assert keys(b, "t/strict/") == []
    assert all(r.tenant != "strict" for r in destination_records(b))


# --- quotas ------------------------------------------------------------------------------


def test_tenant_quotas_hold_on_create_and_on_arrival(tmp_path: Path) -> None:
    """B's tenant "q" holds at most 2 objects, "small" at most 32 bytes, "staged" at most
    one object — staged copies included. The object over a quota is refused with the
    quota named: created through the CLI, migrated by A, or sent by the test playing A
    while an earlier staged copy still counts. On A, tenant "one" holds one object: once
    it left, another may be created."""
    world = build_world(
        tmp_path,
        [
            HostSpec(
                host_id=HOST_A,
                tenants=("q", "one", "staged"),
                tenant_settings=({"name": "one", "max_objects": 1},),
            ),
            HostSpec(
                host_id=HOST_B,
                tenants=("q", "small", "staged", "one"),
                tenant_settings=(
                    {"name": "q", "max_objects": 2},
                    {"name": "small", "max_bytes": 32},
                    {"name": "staged", "max_objects": 1},
                ),
            ),
        ],
    )
    a, b = world.config(HOST_A), world.config(HOST_B)
    with ExitStack() as stack:
        start_all(stack, ServerProcess(a), ServerProcess(b))
        # On create, through the CLI.
        for n in (1, 2):
            cli_ok("object", "create", f"obj://org-b.example/q/{n}", "--tenant", "q", config=b)
        third = run_cli("object", "create", "obj://org-b.example/q/3", "--tenant", "q", config=b)
        assert third.returncode == 1
        assert "tenant 'q' quota max_objects=2 is reached" in third.stderr
        big = json.dumps({"padding": "x" * 40})
        too_big = run_cli(
            "object",
            "create",
            "obj://org-b.example/small/1",
            "--tenant",
            "small",
            "--data",
            big,
            config=b,
        )
        assert too_big.returncode == 1
        assert "tenant 'small' quota max_bytes=32 would be exceeded" in too_big.stderr

        # On arrival, from A's own `gateway migrate`.
        arriving = "obj://org-a.example/q/arriving"
        cli_ok("object", "create", arriving, "--tenant", "q", config=a)
        moved = run_cli("migrate", arriving, "--tenant", "q", "--to", HOST_B, config=a)
        assert moved.returncode == 1
        assert "tenant 'q' quota max_objects=2 is reached (2 held)" in moved.stderr

        # Staged copies count: the test, playing A, stages one and does not commit.
        async def flood(host: Host) -> str:
            client = host.peers.client(HOST_B)
            first = forge(
                host, crafted(host, "obj://org-a.example/staged/1", tenant="staged"), HOST_B
            )
            await client.prepare(first)
            with pytest.raises(QuotaExceededError) as refused:
                await client.prepare(
                    forge(
                        host, crafted(host, "obj://org-a.example/staged/2", tenant="staged"), HOST_B
                    )
                )
            # Once the staged copy is discarded, the tenant has room again.
            await client.abort(
                wire.decode_transfer(wire.decode_envelope(first).payload).migration_id, "test"
            )
            third = forge(
                host, crafted(host, "obj://org-a.example/staged/3", tenant="staged"), HOST_B
            )
            await client.prepare(third)
            await client.commit(
                wire.decode_transfer(wire.decode_envelope(third).payload).migration_id
            )
            return refused.value.reason

        reason = as_peer(a, flood)
        assert "tenant 'staged' quota max_objects=1 is reached (1 held)" in reason

        # A tenant's quota gets its room back when an object leaves.
        cli_ok("object", "create", "obj://org-a.example/one/1", "--tenant", "one", config=a)
        full = run_cli("object", "create", "obj://org-a.example/one/2", "--tenant", "one", config=a)
        assert full.returncode == 1 and "max_objects=1" in full.stderr
        cli_ok("migrate", "obj://org-a.example/one/1", "--tenant", "one", "--to", HOST_B, config=a)
        cli_ok("object", "create", "obj://org-a.example/one/2", "--tenant", "one", config=a)

    assert usage(b, "q") == Usage(objects=2, size=4)  # two objects of "{}"
    assert stored(b, "q", "obj://org-b.example/q/3") is None
    assert stored(b, "q", "obj://org-a.example/q/arriving") is None
    assert keys(b, "t/q/fence/") == []  # the refused arrival raised no fence
    back = stored(a, "q", "obj://org-a.example/q/arriving")
    assert back is not None and back.state is LifecycleState.ACTIVE
    assert keys(b, "t/small/") == []
    assert keys(b, "t/staged/held/") == ["t/staged/held/obj://org-a.example/staged/3"]
    assert usage(b, "staged").objects == 1
    assert usage(a, "one").objects == 1
