"""Messages and calls on Dapr (issue 12 points 1-2), through real `gateway serve`
processes, each with its own stand-in sidecar (tests/daprd, as real processes) sharing one
broker and state file, as two sidecars share one Redis or PostgreSQL:

* subscriptions are served through the app callback (ListTopicSubscriptions) and messages
  arrive through OnTopicEvent; a message redelivered by the sidecar — the gateway kept it
  and was killed before acknowledging it — and a message published twice with the same
  id are each evaluated once;
* the subscription follows a migration: a message published during the blackout wakes
  the object on its new host after activation;
* calls through the Call RPC and through Dapr service invocation (AppCallback.OnInvoke,
  the caller being the invoking app id) are admitted or denied by the object's grants;
  a call to the old host after the move says where it went.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from dapr.proto.common.v1 import common_pb2
from dapr.proto.runtime.v1 import appcallback_pb2_grpc
from google.protobuf.any_pb2 import Any as AnyMessage

from gateway.handoff.journal import Journal
from gateway.lineage import EntryKind
from gateway.model import GovernedObject, LifecycleState
from gateway.runtime.events import INBOX
from gateway.scaffold import free_port
from gateway.stores import StateStore
from gateway.testing import HostSpec, ServerProcess, World, build_world, read_store, run_cli
from tests.conftest import HOST_A, HOST_B
from tests.daprd.runner import DaprdProcess

pytestmark = pytest.mark.slow

OBJECT = "obj://org-a.example/orders/order-9"
TOPIC = "orders/cancelled"
POLICY: dict[str, Any] = {
    "offers": [
        {"resource": "state:self", "actions": ["read", "write"]},
        {"resource": "pubsub:*", "actions": ["publish", "subscribe"]},
        {"resource": "call:*", "actions": ["call"]},
    ]
}
SPEC: dict[str, Any] = {
    "data": {"order": 9, "status": "open"},
    "grant": {
        "audience": "spiffe://org-b.example",
        "capabilities": [
            {"resource": "state:self", "actions": ["read", "write"]},
            {"resource": f"pubsub:{TOPIC}", "actions": ["subscribe"]},
            {"resource": "call:status/org-b.example/*", "actions": ["call"]},
            # The Dapr app "billing" beside org-a's gateway may ask too.
            {"resource": "call:status/org-a.example/dapr/billing", "actions": ["call"]},
        ],
        "constraints": {"hosts": ["spiffe://org-a.example/*", "spiffe://org-b.example/*"]},
    },
    "subscribe": [TOPIC],
    "rules": [
        {
            "name": "cancel",
            "on": "message",
            "when": "event.data.order == data.order",
            "write": '{"status": "cancelled", "cancels": ("cancels" in data ? data.cancels : 0)'
            ' + 1, "last": event.id}',
        }
    ],
    "answers": {"status": {"reply": '{"status": data.status, "host": host}'}},
}


@pytest.fixture
def sidecars(tmp_path: Path) -> Iterator[tuple[dict[str, DaprdProcess], dict[str, int], Path]]:
    components = tmp_path / "components"
    components.mkdir()
    for name, kind in (("statestore", "state.sqlite"), ("pubsub", "pubsub.redis")):
        (components / f"{name}.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "dapr.io/v1alpha1",
                    "kind": "Component",
                    "metadata": {"name": name},
                    "spec": {"type": kind, "version": "v1", "metadata": []},
                }
            )
        )
    broker = tmp_path / "broker.db"  # one file: the shared broker and state store
    app_ports = {HOST_A: free_port(), HOST_B: free_port()}
    started = {
        host: DaprdProcess(
            app_id=name,
            db=broker,
            components_dir=components,
            ready_file=tmp_path / f"{name}.ready",
            app_port=app_ports[host],
        )
        for host, name in ((HOST_A, "east"), (HOST_B, "west"))
    }
    try:
        for process in started.values():
            process.start()
        yield started, app_ports, broker
    finally:
        for process in started.values():
            process.kill()


def read_object(config: Path) -> tuple[GovernedObject | None, int]:
    async def read(store: StateStore) -> tuple[GovernedObject | None, int]:
        loaded = await Journal(store).object("default", OBJECT)
        return (loaded.value if loaded else None), len(await store.list(INBOX))

    return read_store(config, read)


def wait_for(config: Path, check: Any, *, timeout: float = 40.0) -> GovernedObject:
    deadline = time.monotonic() + timeout
    while True:
        obj, waiting = read_object(config)
        if obj is not None and check(obj, waiting):
            return obj
        assert time.monotonic() < deadline, (obj.state if obj else None, waiting)
        time.sleep(0.3)


def woken(obj: GovernedObject) -> list[str]:
    return [e.detail for e in obj.lineage.entries if e.kind is EntryKind.WOKEN]


def invoke(app_port: int, caller: str, body: dict[str, Any]) -> tuple[grpc.StatusCode, str]:
    """AppCallback.OnInvoke as daprd calls it for service invocation of the gateway app."""

    async def main() -> tuple[grpc.StatusCode, str]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app_port}") as channel:
            stub = appcallback_pb2_grpc.AppCallbackStub(channel)
            try:
                response = await stub.OnInvoke(
                    common_pb2.InvokeRequest(
                        method="call",
                        data=AnyMessage(value=json.dumps(body).encode()),
                        content_type="application/json",
                    ),
                    metadata=(("dapr-caller-app-id", caller),),
                    timeout=20,
                )
            except grpc.aio.AioRpcError as exc:
                return exc.code(), exc.details() or ""
            return grpc.StatusCode.OK, response.data.value.decode()

    return asyncio.run(main())


def deliveries(broker: Path, group: str) -> list[tuple[str, int]]:
    """(status, attempts) of every delivery of the topic to a consumer group."""
    with sqlite3.connect(broker) as db:
        return db.execute(
            "SELECT status, attempts FROM deliveries WHERE grp = ? AND topic = ? ORDER BY seq",
            (group, TOPIC.replace("/", ".")),
        ).fetchall()


def test_messages_and_calls_on_dapr_follow_the_object(
    tmp_path: Path, sidecars: tuple[dict[str, DaprdProcess], dict[str, int], Path]
) -> None:
    processes, app_ports, broker = sidecars
    world: World = build_world(
        tmp_path / "world",
        [
            HostSpec(
                host_id=host,
                policy=POLICY,
                store=processes[host].addresses.store_section(),  # type: ignore[union-attr]
                dapr={"pubsub": "pubsub", "app_port": app_ports[host], "subscribe": [TOPIC]},
            )
            for host in (HOST_A, HOST_B)
        ],
    )
    config_a, config_b = world.config(HOST_A), world.config(HOST_B)
    spec_file = tmp_path / "order.yaml"
    spec_file.write_text(yaml.safe_dump(SPEC))
    server_a, server_b = ServerProcess(config_a), ServerProcess(config_b)
    with ExitStack() as stack:
        stack.callback(server_a.stop)
        stack.callback(server_b.stop)
        server_a.start()
        server_b.start()
        created = run_cli("object", "create", OBJECT, "--spec", spec_file, config=config_a)
        assert created.returncode == 0, created.stderr

        # Calls: the Call RPC from B's host, and Dapr service invocation by app ids.
        asked = run_cli("call", OBJECT, "status", "--at", HOST_A, "-o", "json", config=config_b)
        assert asked.returncode == 0, asked.stderr
        assert json.loads(asked.stdout)["reply"] == {"status": "open", "host": HOST_A}
        body = {"object": OBJECT, "method": "status", "tenant": "default"}
        code, reply = invoke(app_ports[HOST_A], "billing", body)
        assert code is grpc.StatusCode.OK and json.loads(reply)["status"] == "open"
        code, reason = invoke(app_ports[HOST_A], "intruder", body)
        assert code is grpc.StatusCode.PERMISSION_DENIED
        assert "org-a.example/dapr/intruder may not call status" in reason

        # The same id published twice through Dapr pub/sub: evaluated once.
        for _ in range(2):
            sent = run_cli(
                "publish", TOPIC, "--data", '{"order": 9}', "--id", "m-1", config=config_a
            )
            assert sent.returncode == 0, sent.stderr
        obj = wait_for(config_a, lambda o, waiting: len(woken(o)) >= 1 and waiting == 0)

        # Redelivery by the sidecar: the gateway keeps m-2 and dies before answering.
        server_a.stop()
        crashing = ServerProcess(config_a, env={"GATEWAY_TEST_CRASH_AT": "events.after-ingest"})
        stack.callback(crashing.stop)
        crashing.start()
        sent = run_cli("publish", TOPIC, "--data", '{"order": 9}', "--id", "m-2", config=config_a)
        assert sent.returncode == 0, sent.stderr
        assert crashing.process is not None
        assert crashing.process.wait(timeout=30) == -9  # killed at events.after-ingest
        server_a.start()
        obj = wait_for(
            config_a,
            lambda o, waiting: (
                len(woken(o)) >= 2
                and waiting == 0
                and all(s == "done" for s, _ in deliveries(broker, "east"))
            ),
        )
        data = json.loads(obj.data)
        assert data["cancels"] == 2 and data["last"] == "m-2", data
        assert len(woken(obj)) == 2
        # East's sidecar delivered m-2 more than once (the first answer never came).
        assert max(attempts for _, attempts in deliveries(broker, "east")) >= 2

        # The subscription follows a migration; m-3 is published during the blackout.
        server_a.stop()
        migrate = run_cli(
            "migrate",
            OBJECT,
            "--to",
            HOST_B,
            config=config_a,
            env={"GATEWAY_TEST_CRASH_AT": "source.after-commit-journal"},
        )
        assert migrate.returncode == -9, migrate.stderr
        sent = run_cli("publish", TOPIC, "--data", '{"order": 9}', "--id", "m-3", config=config_b)
        assert sent.returncode == 0, sent.stderr
        time.sleep(1.0)  # delivered to both apps' buses while the object is in the blackout
        staged, _ = read_object(config_b)
        assert staged is None
        server_a.start()  # recovery commits; B activates and takes the subscription up
        live = wait_for(
            config_b,
            lambda o, waiting: o.state is LifecycleState.ACTIVE and len(woken(o)) >= 3,
        )
        data = json.loads(live.data)
        assert data["cancels"] == 3 and data["last"] == "m-3", data
        entries = list(live.lineage.entries)
        arrival = max(i for i, e in enumerate(entries) if e.kind is EntryKind.REHOSTED)
        assert [e.detail for e in entries[arrival:] if e.kind is EntryKind.WOKEN] == [
            woken(live)[-1]
        ]

        # A call to the old host says where the object went, on both call paths.
        moved = run_cli("call", OBJECT, "status", "--at", HOST_A, config=config_b)
        assert moved.returncode == 1 and f"moved to {HOST_B}" in moved.stderr, moved.stderr
        code, reason = invoke(app_ports[HOST_A], "billing", body)
        assert code is grpc.StatusCode.FAILED_PRECONDITION and f"moved to {HOST_B}" in reason
        answered = run_cli("call", OBJECT, "status", "-o", "json", config=config_b)
        assert answered.returncode == 0, answered.stderr
        assert json.loads(answered.stdout)["reply"] == {"status": "cancelled", "host": HOST_B}
