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
import itertools
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway._time import parse_time
from gateway.config import load_config
from gateway.handoff.journal import Journal
from gateway.handoff.records import DestinationStep, SourceStep
from gateway.lineage import EntryKind
from gateway.model import GovernedObject, LifecycleState
from gateway.objectspec import parse_spec
from gateway.runtime.dapr import job_name
from gateway.scaffold import free_port, write_config
from gateway.stores import StateStore
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
from tests.real_dapr import RUN
from tests.real_dapr import RealSidecar as _RealSidecar
from tests.real_dapr import clear as _clear

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


def read(
    config: Path, object_id: str = OBJECT
) -> tuple[GovernedObject | None, list[Any], list[Any]]:
    async def main(store: StateStore) -> tuple[GovernedObject | None, list[Any], list[Any]]:
        journal = Journal(store)
        loaded = await journal.object("default", object_id)
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
        # A's server (whose recovery would send B the Commit at once, racing the read
        # of B's staged copy below) starts only after B's sidecar was restarted.
        start_all(stack, ServerProcess(world.config(HOST_B)))
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
        start_all(stack, ServerProcess(world.config(HOST_A)))  # its recovery commits

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
    # B may already have run a cycle of its own after the rehost.
    kinds = [e.kind for e in live.lineage.entries]
    frozen = len(kinds) - 1 - kinds[::-1].index(EntryKind.FROZEN)
    assert kinds[frozen : frozen + 2] == [EntryKind.FROZEN, EntryKind.REHOSTED]
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
    object_id = f"{OBJECT}-{RUN}"
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
            "object", "create", object_id, "--spec", str(spec_file), config=world.config(HOST_A)
        )
        assert created.returncode == 0, created.stderr
        migrate = run_cli(
            "migrate",
            object_id,
            "--to",
            HOST_B,
            config=world.config(HOST_A),
            env={"GATEWAY_TEST_CRASH_AT": "source.after-commit-journal"},
            timeout=None,
        )
        assert migrate.returncode == -9, migrate.stderr  # died between Prepare and Commit
        b.kill()  # B's gateway dies too, with the object only staged on its sidecar
        staged, _, destinations = read(world.config(HOST_B), object_id)
        assert staged is None
        assert [d.value.step for d in destinations] == [DestinationStep.STAGED]  # type: ignore[union-attr]
        b.start()

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            _, sources, _ = read(world.config(HOST_A), object_id)
            live, _, _ = read(world.config(HOST_B), object_id)
            if (
                live is not None
                and live.state is LifecycleState.ACTIVE
                and [s.value.step for s in sources] == [SourceStep.DONE]  # type: ignore[union-attr]
            ):
                break
            time.sleep(0.5)
    moved, sources, _ = read(world.config(HOST_A), object_id)
    live, _, destinations = read(world.config(HOST_B), object_id)
    assert live is not None and live.state is LifecycleState.ACTIVE
    assert moved is not None and moved.state is LifecycleState.MOVED
    assert json.loads(live.data)["invoice"] == 9
    assert [e.kind for e in live.lineage.entries][-2:] == [EntryKind.FROZEN, EntryKind.REHOSTED]
    assert [d.value.step for d in destinations] == [DestinationStep.ACTIVATED]  # type: ignore[union-attr]
    assert [s.value.step for s in sources] == [SourceStep.DONE]  # type: ignore[union-attr]


# --- scale-out: two replicas of one logical host -----------------------------------------

REPLICA = os.environ.get("DAPR_REPLICA_GRPC_ENDPOINT")
CYCLE_SECONDS = 1.0
COUNTING = {
    **SPEC,
    "cycle": {"interval_seconds": CYCLE_SECONDS},
    "rules": [{"name": "count", "when": "true", "write": '{"checks": generation + 1}'}],
}
_EVALUATED_LINE = re.compile(
    r"^(\S+ \S+) INFO gateway\.runtime\.dapr: cycle evaluated: (\S+) (\S+) generation (\d+)"
    r" next due (\S+)$"
)


class _Balancer:
    """A TCP balancer in front of the replicas' peer ports, as a Kubernetes Service is:
    each new connection goes to the preferred replica if it accepts, else to the other.
    mTLS passes through untouched. Counts connections per replica."""

    def __init__(self, backends: list[str]) -> None:
        self.backends = [(a.rsplit(":", 1)[0], int(a.rsplit(":", 1)[1])) for a in backends]
        self.prefer = 0
        self.connections = [0] * len(backends)
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Balancer:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", self.port)
        )
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        order = [self.prefer, *(n for n in range(len(self.backends)) if n != self.prefer)]
        for index in order:
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.backends[index])
            except OSError:
                continue  # that replica is down: the next one
            self.connections[index] += 1
            await asyncio.gather(
                _pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True
            )
            return
        writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    finally:
        writer.close()


def _evaluations(log: Path) -> list[tuple[str, int, float]]:
    """(object id, generation reached, next due time) of every cycle a replica's log says
    it evaluated."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        match = _EVALUATED_LINE.match(line)
        if match:
            due = parse_time(match.group(5)).timestamp()
            found.append((match.group(3), int(match.group(4)), due))
    return found


def _objects(config: Path, object_ids: list[str]) -> dict[str, GovernedObject | None]:
    async def main(store: StateStore) -> dict[str, GovernedObject | None]:
        journal = Journal(store)
        found: dict[str, GovernedObject | None] = {}
        for object_id in object_ids:
            loaded = await journal.object("default", object_id)
            found[object_id] = loaded.value if loaded else None
        return found

    return read_store(config, main)


def _wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


@pytest.mark.skipif(
    not (REAL_A and REPLICA and REAL_B),
    reason="needs three real daprd sidecars: two of one app id on one state store (replica 1: "
    "DAPR_GRPC_ENDPOINT/DAPR_HTTP_ENDPOINT/DAPR_APP_PORT; replica 2: "
    "DAPR_REPLICA_GRPC_ENDPOINT/DAPR_REPLICA_HTTP_ENDPOINT/DAPR_REPLICA_APP_PORT) and "
    "one for the peer host with its own store (DAPR_PEER_GRPC_ENDPOINT/"
    "DAPR_PEER_HTTP_ENDPOINT); docs/dapr.md shows how",
)
def test_two_replicas_of_one_host_share_cycles_and_arrivals_on_real_daprd(
    tmp_path: Path,
) -> None:
    """Host A runs as two gateway replicas (one app id, a daprd each, one state store);
    host B reaches A through a balancer. Replica 2 is SIGKILLed in the middle of a cycle
    (evaluated, not written) and again in the middle of an arriving migration (Prepare
    taken, Commit received, nothing written). Afterwards every object on A has each
    generation evaluated exactly once, by one replica or the other, never two cycles
    closer than the interval; both replicas evaluated cycles and took arrivals; every
    migrated object is live exactly once, on A."""
    sections = [
        _RealSidecar(REAL_A, os.environ["DAPR_HTTP_ENDPOINT"]).store_section(),  # type: ignore[arg-type]
        _RealSidecar(REPLICA, os.environ["DAPR_REPLICA_HTTP_ENDPOINT"]).store_section(),  # type: ignore[arg-type]
    ]
    peer = _RealSidecar(REAL_B, os.environ["DAPR_PEER_HTTP_ENDPOINT"]).store_section()  # type: ignore[arg-type]
    app_ports = [int(os.environ["DAPR_APP_PORT"]), int(os.environ["DAPR_REPLICA_APP_PORT"])]
    _clear(sections[0])  # the replicas' one store
    _clear(peer)
    fast = {
        "transfer_ttl_seconds": 5,
        "clock_skew_seconds": 1,
        "rpc_timeout_seconds": 2,
        "retry_attempts": 4,
        "stage_timeout_seconds": 2,
    }
    world = build_world(
        tmp_path / "world",
        [
            HostSpec(
                host_id=HOST_A,
                policy=POLICY,
                handoff=fast,
                store=sections[0],
                dapr={"app_port": app_ports[0], "jobs": True},
            ),
            HostSpec(host_id=HOST_B, policy=POLICY, handoff=fast, store=peer),
        ],
    )
    # Replica 2: the same host, keys, certificates and store, its own sidecar, app port
    # and peer port.
    first = yaml.safe_load(world.config(HOST_A).read_text())
    second = {
        **first,
        "listen": f"127.0.0.1:{free_port()}",
        "store": sections[1],
        "dapr": {**first["dapr"], "app_port": app_ports[1]},
    }
    configs = [world.config(HOST_A), world.config(HOST_A).with_name("replica-2.yaml")]
    write_config(configs[1], second)
    logs = [tmp_path / "replica-1.log", tmp_path / "replica-2.log"]
    spec_file = tmp_path / "object.json"
    spec_file.write_text(json.dumps(COUNTING))
    inbound_spec = tmp_path / "inbound.json"  # B's objects, granted to org-a
    inbound_spec.write_text(
        json.dumps({**COUNTING, "grant": {**SPEC["grant"], "audience": "spiffe://org-a.example"}})
    )
    created = [f"{OBJECT}-{RUN}-c{n}" for n in range(4)]
    arriving = [f"obj://org-b.example/billing/inbound-{RUN}-{n}" for n in range(3)]

    with ExitStack() as stack:
        balancer = stack.enter_context(_Balancer([first["listen"], second["listen"]]))
        b_doc = yaml.safe_load(world.config(HOST_B).read_text())
        for entry in b_doc["peers"]:
            if entry["id"] == HOST_A:
                entry["address"] = f"127.0.0.1:{balancer.port}"
        write_config(world.config(HOST_B), b_doc)

        replicas = [
            ServerProcess(configs[0], log=logs[0]),
            ServerProcess(
                configs[1], log=logs[1], env={"GATEWAY_TEST_CRASH_AT": "cycle.before-commit"}
            ),
        ]
        b = ServerProcess(world.config(HOST_B))
        start_all(stack, *replicas, b)
        started = time.time()
        for object_id in created:
            done = run_cli(
                "object", "create", object_id, "--spec", str(spec_file), config=configs[0]
            )
            assert done.returncode == 0, done.stderr
        for object_id in arriving:
            done = run_cli(
                "object",
                "create",
                object_id,
                "--spec",
                str(inbound_spec),
                config=world.config(HOST_B),
            )
            assert done.returncode == 0, done.stderr

        # 1. Replica 2 dies in the middle of its first cycle.
        # daprd reaches an app port whose app went away (an earlier run's) only after gRPC's
        # reconnect backoff, up to 120 s: until then that replica gets no triggers (and
        # the ones its sidecar is given fail). Both must be taking triggers first.
        _wait_for(lambda: _evaluations(logs[0]), 180, "replica 1's first cycle")
        _wait_for(lambda: replicas[1].process.poll() is not None, 180, "replica 2's cycle")  # type: ignore[union-attr]
        assert replicas[1].process.returncode == -9  # type: ignore[union-attr]
        killed_mid_cycle = time.time()
        replicas[1] = ServerProcess(
            configs[1], log=logs[1], env={"GATEWAY_TEST_CRASH_AT": "destination.before-activate"}
        )
        stack.enter_context(replicas[1])

        # 2. A migration arrives at replica 2, which dies on Commit before writing; the
        # re-sent Commit reaches replica 1 through the balancer.
        balancer.prefer = 1
        before = list(balancer.connections)
        migrated = run_cli("migrate", arriving[0], "--to", HOST_A, config=world.config(HOST_B))
        assert replicas[1].process.poll() == -9, migrated.stderr  # type: ignore[union-attr]
        assert balancer.connections[1] > before[1] and balancer.connections[0] > before[0]
        killed_mid_handoff = time.time()
        replicas[1] = ServerProcess(configs[1], log=logs[1])
        stack.enter_context(replicas[1])

        # 3. One arrival on each replica, nothing killed.
        for index, object_id in ((1, arriving[1]), (0, arriving[2])):
            balancer.prefer = index
            before = list(balancer.connections)
            done = run_cli("migrate", object_id, "--to", HOST_A, config=world.config(HOST_B))
            assert done.returncode == 0, done.stderr
            assert balancer.connections[index] > before[index]

        _wait_for(
            lambda: all(
                o is not None and o.state is LifecycleState.ACTIVE
                for o in _objects(configs[0], arriving).values()
            ),
            60,
            "the arrivals to be live on A",
        )
        time.sleep(20)  # both replicas cycling everything
        stopped = time.time()

    async def forget_jobs() -> None:  # the scheduler would keep calling replicas now gone
        from dapr.aio.clients import DaprClient

        async with DaprClient(address=REAL_A) as client:
            for object_id in [*created, *arriving]:
                await client.delete_job(job_name("default", object_id))

    asyncio.run(forget_jobs())

    on_a = _objects(configs[0], [*created, *arriving])
    on_b = _objects(world.config(HOST_B), arriving)
    for object_id in arriving:  # live exactly once, on A
        assert on_a[object_id] is not None and on_a[object_id].state is LifecycleState.ACTIVE  # type: ignore[union-attr]
        assert on_b[object_id] is not None and on_b[object_id].state is LifecycleState.MOVED  # type: ignore[union-attr]

    by_replica = [_evaluations(log) for log in logs]
    report: dict[str, Any] = {"seconds": round(stopped - started, 1), "objects": {}}
    checks = {}
    logged_by: dict[str, list[tuple[int, float, int]]] = {}
    for object_id, obj in on_a.items():
        assert obj is not None
        lineage = [
            e for e in obj.lineage.entries if e.kind is EntryKind.EVALUATED and e.host == HOST_A
        ]
        logged = sorted(
            (generation, at, replica)
            for replica, found in enumerate(by_replica, start=1)
            for oid, generation, at in found
            if oid == object_id
        )
        times = [e.time.timestamp() for e in lineage]
        span = times[-1] - times[0] if times else 0.0
        report["objects"][object_id] = {
            "cycles": len(lineage),
            "due times in that span": int(span // CYCLE_SECONDS) + 1,
            "replica 1": sum(1 for _g, _a, r in logged if r == 1),
            "replica 2": sum(1 for _g, _a, r in logged if r == 2),
            "longest gap s": round(
                max((b - a for a, b in itertools.pairwise(times)), default=0.0), 1
            ),
        }
        checks[object_id] = (obj, lineage, [g for g, _a, _r in logged])
        logged_by[object_id] = logged
    totals = [len(found) for found in by_replica]
    report["replicas"] = totals
    report["killed mid-cycle at s"] = round(killed_mid_cycle - started, 1)
    report["killed mid-handoff at s"] = round(killed_mid_handoff - started, 1)
    report["balancer connections"] = list(balancer.connections)
    print(json.dumps(report, indent=1))

    for object_id, (obj, lineage, generations) in checks.items():
        # Exactly once per generation: what the replicas say they evaluated is what the
        # object's lineage holds, one cycle each, no generation skipped or repeated.
        assert len(generations) == len(set(generations)) == len(lineage) > 0, object_id
        assert generations == list(range(generations[0], generations[0] + len(generations)))
        assert generations[-1] == obj.cycle.generation
        # One cycle per due time: each cycle ran no earlier than the due time the cycle
        # before it set (logged with it), and each set a later one.
        due_after = {g: due for g, due, _r in sorted(logged_by[object_id])}
        for entry in lineage:
            due = due_after.get(entry.generation)  # the due time this evaluation was for
            if due is not None:
                assert entry.time.timestamp() >= due, (object_id, entry.generation, due)
        dues = [due for _g, due in sorted(due_after.items())]
        assert dues == sorted(set(dues)), object_id
    assert all(totals), f"each replica should have evaluated cycles: {totals}"
