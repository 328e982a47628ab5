"""Gateways on Dapr: state through the sidecar, cycles driven by Dapr jobs, events on Dapr
pub/sub as CloudEvents, and a migration between two gateway processes whose sidecars
(the stand-in, as real processes) are restarted between Prepare and Commit.

With ``DAPR_GRPC_ENDPOINT`` set, tests/stores/test_dapr_store.py and
tests/test_dapr_events_contract.py run the store and events contracts against a real
sidecar; the first two tests here need sidecars they can kill and whose app port they
choose, so they always use the stand-in (tests/daprd). The last one runs only against
two real sidecars (``DAPR_GRPC_ENDPOINT`` and ``DAPR_PEER_GRPC_ENDPOINT``), killing the
gateways instead.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.config import load_config
from gateway.handoff.journal import Journal
from gateway.handoff.records import DestinationStep, SourceStep
from gateway.lineage import EntryKind
from gateway.model import GovernedObject, LifecycleState
from gateway.objectspec import parse_spec
from gateway.runtime.dapr import job_name
from gateway.scaffold import free_port
from gateway.stores import Expect, StateStore
from gateway.stores.dapr import DaprStore
from gateway.testing import (
    HostSpec,
    ServerProcess,
    World,
    build_world,
    create_from_spec,
    read_store,
    run_cli,
    serving,
    start_all,
)
from tests.conftest import HOST_A, HOST_B
from tests.daprd.components import pubsub, state_store
from tests.daprd.runner import DaprdProcess, DaprdThread

pytestmark = pytest.mark.slow

OBJECT = "obj://org-a.example/billing/invoice-9"
POLICY = {
    "offers": [
        {"resource": "pubsub:*", "actions": ["publish"]},
        {"resource": "state:self", "actions": ["read", "write"]},
    ]
}
SPEC = {
    "data": {"invoice": 9, "amount": 2000},
    "grant": {
        "audience": "spiffe://org-b.example",
        "capabilities": [
            {"resource": "pubsub:alerts/overdue", "actions": ["publish"]},
            {"resource": "state:self", "actions": ["read", "write"]},
        ],
        "constraints": {"hosts": ["spiffe://org-a.example/*", "spiffe://org-b.example/*"]},
    },
    "cycle": {"interval_seconds": 0.3},
    "rules": [
        {
            "name": "overdue",
            "when": "data.amount > 1000",
            "publish": {"topic": "alerts/overdue", "payload": "generation"},
        },
        {"name": "count", "when": "true", "write": '{"checks": generation + 1}'},
    ],
}


REAL_A = os.environ.get("DAPR_GRPC_ENDPOINT")
REAL_B = os.environ.get("DAPR_PEER_GRPC_ENDPOINT")


def _clear(section: dict[str, Any]) -> None:
    """Empty a real sidecar's store: the test's world must be the only one there."""

    async def main() -> None:
        dapr = section["dapr"]
        store = await DaprStore.connect(
            dapr["state_store"],
            grpc_endpoint=dapr["grpc_endpoint"],
            http_endpoint=dapr["http_endpoint"],
        )
        try:
            for key in await store.list(""):
                await store.delete(key, etag=Expect.ANY)
        finally:
            await store.close()

    asyncio.run(main())


@dataclass(frozen=True)
class _RealSidecar:
    grpc_endpoint: str
    http_endpoint: str

    def store_section(self, name: str = "statestore") -> dict[str, Any]:
        return {
            "dapr": {
                "state_store": name,
                "grpc_endpoint": self.grpc_endpoint,
                "http_endpoint": self.http_endpoint,
            }
        }


def test_cycles_run_as_dapr_jobs_and_events_go_to_dapr_pubsub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One gateway on Dapr: its object's cycle is triggered by the sidecar's job scheduler
    (not the in-process scheduler), and what it publishes arrives as our CloudEvents.

    With ``DAPR_GRPC_ENDPOINT``, ``DAPR_HTTP_ENDPOINT`` and ``DAPR_APP_PORT`` set, the
    gateway runs on that real sidecar (its ``statestore``, emptied first, its ``pubsub``
    and its scheduler), serving the job callback on the sidecar's app port."""
    sidecar = None
    # On a real broker the topic outlives the test: an object of its own keeps other
    # runs' events apart.
    object_id = f"{OBJECT}-{uuid.uuid4().hex[:8]}" if REAL_A else OBJECT
    if REAL_A:
        app_port = int(os.environ["DAPR_APP_PORT"])
        addresses = _RealSidecar(REAL_A, os.environ["DAPR_HTTP_ENDPOINT"])
        _clear(addresses.store_section())
    else:
        app_port = free_port()
        sidecar = DaprdThread(
            app_id="east",
            db=tmp_path / "daprd.db",
            components=[state_store("statestore"), pubsub("pubsub")],
            app_port=app_port,
        )
        addresses = sidecar.start()  # type: ignore[assignment]
        for name, value in addresses.env().items():  # for the test's own subscriber client
            monkeypatch.setenv(name, value)
    try:
        world = build_world(
            tmp_path / "world",
            [
                HostSpec(
                    host_id=HOST_A,
                    policy=POLICY,
                    store=addresses.store_section(),
                    dapr={"pubsub": "pubsub", "app_port": app_port, "jobs": True},
                )
            ],
        )
        spec = parse_spec(SPEC, source="test")

        async def main() -> None:
            from dapr.aio.clients import DaprClient

            async with serving(world) as hosts:
                host = hosts[HOST_A]
                assert host.jobs is not None  # cycles are the sidecar's jobs here
                async with DaprClient(address=addresses.grpc_endpoint) as client:
                    subscription = await client.subscribe("pubsub", "alerts.overdue")
                    await create_from_spec(host, object_id, spec)
                    received = []
                    deadline = time.monotonic() + 15
                    while len(received) < 3 and time.monotonic() < deadline:
                        message = await asyncio.wait_for(subscription.next_message(), 10)
                        await subscription.respond_success(message)
                        if message.extensions().get("subject") == object_id:
                            received.append(message)
                    await subscription.close()
                    if REAL_A:  # the scheduler would keep calling an app that is gone
                        await client.delete_job(job_name("default", object_id))
                assert len(received) >= 3
                for message in received:
                    assert message.type() == "gateway.action.published"
                    assert message.source() == HOST_A
                    assert message.id().startswith(f"default/{object_id}/")  # the outbox key
                    assert message.extensions().get("subject") == object_id
                generations = [m.data()["payload"] for m in received]  # our CloudEvent's data
                assert generations == sorted(generations)
                obj = await host.get_object(object_id, tenant="default")
                assert obj.generation >= 3
                assert host.scheduler.stats.evaluated == 0, "the in-process scheduler must be idle"

        asyncio.run(main())
    finally:
        if sidecar is not None:
            sidecar.stop()


@pytest.fixture
def sidecars(tmp_path: Path) -> Iterator[dict[str, DaprdProcess]]:
    components = tmp_path / "components"
    components.mkdir()
    (components / "statestore.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: statestore\n"
        "spec:\n  type: state.sqlite\n  version: v1\n  metadata: []\n"
    )
    started = {
        host: DaprdProcess(
            app_id=name,
            db=tmp_path / f"{name}.db",
            components_dir=components,
            ready_file=tmp_path / f"{name}.ready",
        )
        for host, name in ((HOST_A, "east"), (HOST_B, "west"))
    }
    for process in started.values():
        process.start()
    try:
        yield started
    finally:
        for process in started.values():
            process.kill()


def read(config: Path) -> tuple[GovernedObject | None, list[Any], list[Any]]:
    async def main(store: StateStore) -> tuple[GovernedObject | None, list[Any], list[Any]]:
        journal = Journal(store)
        loaded = await journal.object("default", OBJECT)
        sources = [
            await journal.source(k.rsplit("/", 1)[-1]) for k in await store.list("journal/source/")
        ]
        destinations = [
            await journal.destination(k.rsplit("/", 1)[-1])
            for k in await store.list("journal/destination/")
        ]
        return loaded.value if loaded else None, sources, destinations

    assert load_config(config).dapr_store is not None  # the sidecar's store
    return read_store(config, main)


def test_migration_between_two_dapr_gateways_survives_a_sidecar_restart(
    tmp_path: Path, sidecars: dict[str, DaprdProcess]
) -> None:
    """Both gateways keep their state in their own sidecar. The coordinator dies right after
    COMMITTED; B's sidecar is SIGKILLed and restarted while the object is only staged on B;
    then recovery finishes the migration through the restarted sidecar."""
    assert all(p.addresses for p in sidecars.values())
    fast = {
        "transfer_ttl_seconds": 3,
        "clock_skew_seconds": 1,
        "rpc_timeout_seconds": 2,
        "retry_attempts": 3,
        "stage_timeout_seconds": 1,
    }
    world: World = build_world(
        tmp_path / "world",
        [
            HostSpec(
                host_id=host,
                policy=POLICY,
                handoff=fast,
                store=sidecars[host].addresses.store_section(),  # type: ignore[union-attr]
            )
            for host in (HOST_A, HOST_B)
        ],
    )
    spec_file = tmp_path / "object.json"
    spec_file.write_text(json.dumps({**SPEC, "cycle": {"interval_seconds": 60}}))
    with ExitStack() as stack:
        start_all(stack, ServerProcess(world.config(HOST_A)), ServerProcess(world.config(HOST_B)))
        created = run_cli(
            "object",
            "create",
            OBJECT,
            "--spec",
            str(spec_file),
            config=world.config(HOST_A),
            timeout=None,
        )
        assert created.returncode == 0, created.stderr
        migrate = run_cli(
            "migrate",
            OBJECT,
            "--to",
            HOST_B,
            config=world.config(HOST_A),
            env={"GATEWAY_TEST_CRASH_AT": "source.after-commit-journal"},
            timeout=None,
        )
        assert migrate.returncode == -9, migrate.stderr  # died between Prepare and Commit
        staged, _, destinations = read(world.config(HOST_B))
        assert staged is None  # not live on B: only staged
        assert [d.value.step for d in destinations] == [DestinationStep.STAGED]  # type: ignore[union-attr]

        sidecars[HOST_B].restart()  # SIGKILL the stand-in, start it on the same file

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            live, _, destinations = read(world.config(HOST_B))
            if live is not None and live.state is LifecycleState.ACTIVE:
                break
            time.sleep(0.3)
        # A's recovery journals DONE once B's activation receipt is in: wait for it while
        # A still runs.
        while time.monotonic() < deadline:
            _, sources, _ = read(world.config(HOST_A))
            if [s.value.step for s in sources] == [SourceStep.DONE]:  # type: ignore[union-attr]
                break
            time.sleep(0.3)
    moved, sources, _ = read(world.config(HOST_A))
    live, _, destinations = read(world.config(HOST_B))
    assert live is not None and live.state is LifecycleState.ACTIVE
    assert moved is not None and moved.state is LifecycleState.MOVED
    assert json.loads(live.data)["invoice"] == 9
    assert [e.kind for e in live.lineage.entries][-2:] == [EntryKind.FROZEN, EntryKind.REHOSTED]
    assert [d.value.step for d in destinations] == [DestinationStep.ACTIVATED]  # type: ignore[union-attr]
    assert [s.value.step for s in sources] == [SourceStep.DONE]  # type: ignore[union-attr]


@pytest.mark.skipif(
    not (REAL_A and REAL_B),
    reason="needs two real daprd sidecars, each with its own state store 'statestore': "
    "set DAPR_GRPC_ENDPOINT/DAPR_HTTP_ENDPOINT (gateway A) and "
    "DAPR_PEER_GRPC_ENDPOINT/DAPR_PEER_HTTP_ENDPOINT (gateway B); docs/dapr.md shows how",
)
def test_migration_between_gateways_on_two_real_sidecars_survives_killed_sides(
    tmp_path: Path,
) -> None:
    """Two clusters: each gateway on its own real daprd and its own state store. The
    coordinator (A's migrate) is killed right after it journaled COMMITTED, and B's
    gateway process is SIGKILLed while the object is only staged there; B restarts on
    the same sidecar, and recovery finishes the migration through the real sidecars."""
    sections = {
        HOST_A: {
            "dapr": {
                "state_store": "statestore",
                "grpc_endpoint": REAL_A,
                "http_endpoint": os.environ["DAPR_HTTP_ENDPOINT"],
            }
        },
        HOST_B: {
            "dapr": {
                "state_store": "statestore",
                "grpc_endpoint": REAL_B,
                "http_endpoint": os.environ["DAPR_PEER_HTTP_ENDPOINT"],
            }
        },
    }
    for section in sections.values():
        _clear(section)
    fast = {
        "transfer_ttl_seconds": 3,
        "clock_skew_seconds": 1,
        "rpc_timeout_seconds": 2,
        "retry_attempts": 3,
        "stage_timeout_seconds": 1,
    }
    world: World = build_world(
        tmp_path / "world",
        [
            HostSpec(host_id=host, policy=POLICY, handoff=fast, store=sections[host])
            for host in (HOST_A, HOST_B)
        ],
    )
    spec_file = tmp_path / "object.json"
    spec_file.write_text(json.dumps({**SPEC, "cycle": {"interval_seconds": 60}}))
    with ExitStack() as stack:
        a, b = ServerProcess(world.config(HOST_A)), ServerProcess(world.config(HOST_B))
        start_all(stack, a, b)
        created = run_cli(
            "object", "create", OBJECT, "--spec", str(spec_file), config=world.config(HOST_A)
        )
        assert created.returncode == 0, created.stderr
        migrate = run_cli(
            "migrate",
            OBJECT,
            "--to",
            HOST_B,
            config=world.config(HOST_A),
            env={"GATEWAY_TEST_CRASH_AT": "source.after-commit-journal"},
            timeout=None,
        )
        assert migrate.returncode == -9, migrate.stderr  # died between Prepare and Commit
        b.kill()  # B's gateway dies too, with the object only staged on its sidecar
        staged, _, destinations = read(world.config(HOST_B))
        assert staged is None
        assert [d.value.step for d in destinations] == [DestinationStep.STAGED]  # type: ignore[union-attr]
        b.start()

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            _, sources, _ = read(world.config(HOST_A))
            live, _, _ = read(world.config(HOST_B))
            if (
                live is not None
                and live.state is LifecycleState.ACTIVE
                and [s.value.step for s in sources] == [SourceStep.DONE]  # type: ignore[union-attr]
            ):
                break
            time.sleep(0.5)
    moved, sources, _ = read(world.config(HOST_A))
    live, _, destinations = read(world.config(HOST_B))
    assert live is not None and live.state is LifecycleState.ACTIVE
    assert moved is not None and moved.state is LifecycleState.MOVED
    assert json.loads(live.data)["invoice"] == 9
    assert [e.kind for e in live.lineage.entries][-2:] == [EntryKind.FROZEN, EntryKind.REHOSTED]
    assert [d.value.step for d in destinations] == [DestinationStep.ACTIVATED]  # type: ignore[union-attr]
    assert [s.value.step for s in sources] == [SourceStep.DONE]  # type: ignore[union-attr]
