"""Messages and calls on Dapr (issue 12 points 1-2), through real `gateway serve`
processes, each with its own sidecar: two stand-in sidecars (tests/daprd, as real
processes) sharing one broker and state file, as two sidecars share one Redis or
PostgreSQL; or, with the variables of tests/real_dapr.py set, two real daprd sidecars
with their own state stores and one pubsub.redis, and a third daprd of another app that
invokes the gateway app:

* subscriptions are served through the app callback (ListTopicSubscriptions) and messages
  arrive through OnTopicEvent; a message redelivered by the sidecar — the gateway kept it
  and was killed before acknowledging it — and a message published twice with the same
  id are each evaluated once;
* the subscription follows a migration: a message published during the blackout wakes
  the object on its new host after activation;
* calls through the Call RPC and through Dapr service invocation (AppCallback.OnInvoke,
  the caller being the invoking app id) are admitted or denied by the object's grants;
  a call to the old host after the move says where it went.

What shows the redelivery, on both: the restarted gateway's log line for a message its
bus already holds (the sidecar retried the delivery the killed gateway never answered,
under the inbound retry policy deploy/ sets); on the stand-in also its broker, where
every delivery ended acknowledged as done.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
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
from tests.real_dapr import RUN, app_id_of, clear, invoke_app, missing, sidecar

pytestmark = pytest.mark.slow

OBJECT = "obj://org-a.example/orders/order-9"
#: Named per run: on a real broker, messages an earlier run (or anyone) left on a fixed
#: topic are delivered to this run's gateways too, and woke the object after its arrival
#: (the real-daprd re-run of session 33, docs/dapr.md).
TOPIC = f"orders/cancelled-{RUN}"
POLICY: dict[str, Any] = {
    "offers": [
        {"resource": "state:self", "actions": ["read", "write"]},
        {"resource": "pubsub:*", "actions": ["publish", "subscribe"]},
        {"resource": "call:*", "actions": ["call"]},
    ]
}
#: The variables naming the real sidecars (tests/real_dapr.py); without them the real
#: variant is skipped.
REAL = (
    "DAPR_GRPC_ENDPOINT",
    "DAPR_HTTP_ENDPOINT",
    "DAPR_APP_PORT",
    "DAPR_PEER_GRPC_ENDPOINT",
    "DAPR_PEER_HTTP_ENDPOINT",
    "DAPR_PEER_APP_PORT",
    "DAPR_CALLER_HTTP_ENDPOINT",
)


def spec(order: int, caller_app: str) -> dict[str, Any]:
    return {
        "data": {"order": order, "status": "open"},
        "grant": {
            "audience": "spiffe://org-b.example",
            "capabilities": [
                {"resource": "state:self", "actions": ["read", "write"]},
                {"resource": f"pubsub:{TOPIC}", "actions": ["subscribe"]},
                {"resource": "call:status/org-b.example/*", "actions": ["call"]},
                # The Dapr app beside org-a's gateway ("billing") may ask too.
                {"resource": f"call:status/org-a.example/dapr/{caller_app}", "actions": ["call"]},
            ],
            "constraints": {"hosts": ["spiffe://org-a.example/*", "spiffe://org-b.example/*"]},
        },
        "subscribe": [TOPIC],
        "rules": [
            {
                "name": "cancel",
                "on": "message",
                "when": "event.data.order == data.order",
                "write": '{"status": "cancelled", "cancels": ("cancels" in data ? data.cancels'
                ' : 0) + 1, "last": event.id}',
            }
        ],
        "answers": {"status": {"reply": '{"status": data.status, "host": host}'}},
    }


#: The sidecars' Resiliency: deliveries to the gateway are retried, as deploy/ sets.
INBOUND_RETRY: dict[str, Any] = {
    "apiVersion": "dapr.io/v1alpha1",
    "kind": "Resiliency",
    "metadata": {"name": "gateway"},
    "spec": {
        "policies": {
            "retries": {"deliver": {"policy": "constant", "duration": "1s", "maxRetries": 10}}
        },
        "targets": {"components": {"pubsub": {"inbound": {"retry": "deliver"}}}},
    },
}

#: A call through Dapr service invocation of the gateway app: (gRPC code, reply or reason).
Invoke = Callable[[dict[str, Any]], tuple[grpc.StatusCode, str]]


@dataclass(frozen=True)
class Setup:
    """Where the two gateways run and how the test reaches them."""

    stores: dict[str, dict[str, Any]]  #: host -> its config's store section
    app_ports: dict[str, int]
    object_id: str
    order: int  #: the order number the messages carry
    run: str  #: suffix of the message ids
    caller_app: str  #: the Dapr app id allowed to call
    intruder: str  #: a Dapr app id that may not
    allowed: Invoke  #: service invocation as ``caller_app``
    denied: Invoke  #: service invocation as ``intruder``
    broker: Path | None = None  #: the stand-in's broker file
    #: Returns once the sidecars reach the gateway apps (real daprd: after its backoff).
    reached: Callable[[], None] = lambda: None


@pytest.fixture
def sidecars(tmp_path: Path) -> Iterator[tuple[dict[str, DaprdProcess], dict[str, int], Path]]:
    components = tmp_path / "components"
    components.mkdir()
    for name, kind in (("statestore", "state.sqlite"),):
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
    pubsub_metadata = [
        {"name": "processingTimeout", "value": "2s"},
        {"name": "redeliverInterval", "value": "1s"},
    ]
    (components / "pubsub.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "dapr.io/v1alpha1",
                "kind": "Component",
                "metadata": {"name": "pubsub"},
                "spec": {"type": "pubsub.redis", "version": "v1", "metadata": pubsub_metadata},
            }
        )
    )
    # As deployed (deploy/): without it a delivery that failed is acknowledged and lost.
    (components / "resiliency.yaml").write_text(yaml.safe_dump(INBOUND_RETRY))
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


def read_object(config: Path, object_id: str) -> tuple[GovernedObject | None, int]:
    async def read(store: StateStore) -> tuple[GovernedObject | None, int]:
        loaded = await Journal(store).object("default", object_id)
        return (loaded.value if loaded else None), len(await store.list(INBOX))

    return read_store(config, read)


def wait_for(config: Path, object_id: str, check: Any, *, timeout: float = 60.0) -> GovernedObject:
    deadline = time.monotonic() + timeout
    while True:
        obj, waiting = read_object(config, object_id)
        if obj is not None and check(obj, waiting):
            return obj
        assert time.monotonic() < deadline, (obj.state if obj else None, waiting)
        time.sleep(0.3)


def wait_for_log(log: Path, line: str, *, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while line not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"{line!r} not in {log}"
        time.sleep(0.3)


def woken(obj: GovernedObject) -> list[str]:
    return [e.detail for e in obj.lineage.entries if e.kind is EntryKind.WOKEN]


def on_invoke(app_port: int, caller: str) -> Invoke:
    """AppCallback.OnInvoke as daprd calls it for service invocation of the gateway app
    (the stand-in does not invoke other apps: the test is the sidecar here)."""

    def call(body: dict[str, Any]) -> tuple[grpc.StatusCode, str]:
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

    return call


#: What daprd's HTTP API answers for each gRPC code of the app's OnInvoke
#: (``pkg/messaging/v1/util.go`` HTTPStatusFromCode), for the codes the calls give.
HTTP_OF = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.NOT_FOUND: 404,
}


#: daprd's refusal while the app's health probe has not passed yet.
UNHEALTHY = b"app is not in a healthy state"
#: daprd's refusal (HTTP 503, gRPC code 14) while it has not yet found its app's port: it
#: looks every 100 ms, and an invocation that comes sooner is refused, not held (session
#: 34's real-daprd run, docs/dapr.md).
NOT_ATTACHED = b"Error while dialing"
#: How long a real daprd may take to reach an app that (re)started: its connection to
#: the app port retries with gRPC's default backoff, which grows to 120 s while the port
#: stays closed (docs/dapr.md); the probe passes on the first attempt after the backoff.
APP_CHANNEL_BACKOFF = 150.0


def through_sidecar(http_endpoint: str, gateway_app: str) -> Invoke:
    """Dapr service invocation of the gateway app through a real sidecar of another app
    (``POST /v1.0/invoke/<gateway app>/method/call``). A refusal by the app comes back as
    the HTTP status of its gRPC code, with ``{"code", "message"}`` as the body."""

    def call(body: dict[str, Any]) -> tuple[grpc.StatusCode, str]:
        deadline = time.monotonic() + APP_CHANNEL_BACKOFF
        while True:
            status, answer = invoke_app(http_endpoint, gateway_app, "call", body)
            # Until it has found the app's port and its health probe has passed, the
            # sidecar refuses to call the app; a caller tries again.
            waiting = UNHEALTHY in answer or (status == 503 and NOT_ATTACHED in answer)
            if not waiting or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if status == 200:
            return grpc.StatusCode.OK, answer.decode()
        refusal = json.loads(answer)
        assert "code" in refusal, (status, refusal)
        code = next(c for c in grpc.StatusCode if c.value[0] == refusal["code"])
        assert HTTP_OF.get(code) == status, (status, refusal)
        return code, str(refusal["message"])

    return call


def reached(caller: str, apps: list[str]) -> None:
    """Once each gateway app answers an invocation through ``caller``'s sidecar (a call
    of an object it does not hold), its sidecar reaches it: pub/sub included."""
    for app in apps:
        code, reason = through_sidecar(caller, app)({"object": f"{OBJECT}-none", "method": "m"})
        assert code is grpc.StatusCode.NOT_FOUND, (app, code, reason)


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
    scenario(
        tmp_path,
        Setup(
            stores={h: p.addresses.store_section() for h, p in processes.items()},  # type: ignore[union-attr]
            app_ports=app_ports,
            object_id=OBJECT,
            order=9,
            run="",
            caller_app="billing",
            intruder="intruder",
            allowed=on_invoke(app_ports[HOST_A], "billing"),
            denied=on_invoke(app_ports[HOST_A], "intruder"),
            broker=broker,
        ),
    )


@pytest.mark.skipif(
    bool(missing(*REAL)),
    reason=f"needs real daprd sidecars: set {', '.join(REAL)} (tests/real_dapr.py, "
    "docs/dapr.md 'Messages, calls and actions on real daprd')",
)
def test_messages_and_calls_follow_the_object_on_real_daprd(tmp_path: Path) -> None:
    """The same on real sidecars: A's and B's gateways on their own daprd and state
    store, one pubsub.redis; the gateway app is invoked through a third daprd (the
    allowed caller's app) and through B's (an app the object does not allow)."""
    a, b = sidecar("DAPR"), sidecar("DAPR_PEER")
    assert a is not None and b is not None
    caller = os.environ["DAPR_CALLER_HTTP_ENDPOINT"]
    for section in (a.store_section(), b.store_section()):
        clear(section)
    gateway_app = app_id_of(a.http_endpoint)
    scenario(
        tmp_path,
        Setup(
            stores={HOST_A: a.store_section(), HOST_B: b.store_section()},
            app_ports={
                HOST_A: int(os.environ["DAPR_APP_PORT"]),
                HOST_B: int(os.environ["DAPR_PEER_APP_PORT"]),
            },
            object_id=f"{OBJECT}-{RUN}",
            # The streams outlive the run: its messages must not wake another run's object.
            order=int(RUN, 16) % 1_000_000_000,
            run=f"-{RUN}",
            caller_app=app_id_of(caller),
            intruder=app_id_of(b.http_endpoint),
            allowed=through_sidecar(caller, gateway_app),
            denied=through_sidecar(b.http_endpoint, gateway_app),
            reached=lambda: reached(caller, [gateway_app, app_id_of(b.http_endpoint)]),
        ),
    )


def scenario(tmp_path: Path, setup: Setup) -> None:
    object_id = setup.object_id
    world: World = build_world(
        tmp_path / "world",
        [
            HostSpec(
                host_id=host,
                policy=POLICY,
                store=setup.stores[host],
                dapr={"pubsub": "pubsub", "app_port": setup.app_ports[host], "subscribe": [TOPIC]},
            )
            for host in (HOST_A, HOST_B)
        ],
    )
    config_a, config_b = world.config(HOST_A), world.config(HOST_B)
    log_a = tmp_path / "serve-a.log"
    spec_file = tmp_path / "order.yaml"
    spec_file.write_text(yaml.safe_dump(spec(setup.order, setup.caller_app)))
    message = json.dumps({"order": setup.order})
    m1, m2, m3 = (f"m-{n}{setup.run}" for n in (1, 2, 3))
    server_a, server_b = ServerProcess(config_a, log=log_a), ServerProcess(config_b)
    with ExitStack() as stack:
        stack.callback(server_a.stop)
        stack.callback(server_b.stop)
        server_a.start()
        server_b.start()
        setup.reached()
        created = run_cli("object", "create", object_id, "--spec", spec_file, config=config_a)
        assert created.returncode == 0, created.stderr

        # Calls: the Call RPC from B's host, and Dapr service invocation by app ids.
        asked = run_cli("call", object_id, "status", "--at", HOST_A, "-o", "json", config=config_b)
        assert asked.returncode == 0, asked.stderr
        assert json.loads(asked.stdout)["reply"] == {"status": "open", "host": HOST_A}
        body = {"object": object_id, "method": "status", "tenant": "default"}
        code, reply = setup.allowed(body)
        assert code is grpc.StatusCode.OK and json.loads(reply)["status"] == "open", reply
        code, reason = setup.denied(body)
        assert code is grpc.StatusCode.PERMISSION_DENIED, reason
        assert f"org-a.example/dapr/{setup.intruder} may not call status" in reason

        # The same id published twice through Dapr pub/sub: evaluated once.
        for _ in range(2):
            sent = run_cli("publish", TOPIC, "--data", message, "--id", m1, config=config_a)
            assert sent.returncode == 0, sent.stderr
        wait_for_log(log_a, f"message {m1} on {TOPIC}: already on the bus")
        obj = wait_for(config_a, object_id, lambda o, waiting: len(woken(o)) >= 1 and waiting == 0)

        # Redelivery by the sidecar: the gateway keeps m-2 and dies before answering.
        server_a.stop()
        crashing = ServerProcess(
            config_a, log=log_a, env={"GATEWAY_TEST_CRASH_AT": "events.after-ingest"}
        )
        stack.callback(crashing.stop)
        crashing.start()
        sent = run_cli("publish", TOPIC, "--data", message, "--id", m2, config=config_a)
        assert sent.returncode == 0, sent.stderr
        assert crashing.process is not None
        assert crashing.process.wait(timeout=30) == -9  # killed at events.after-ingest
        server_a.start()
        # The sidecar delivered m-2 again to the restarted gateway, which had kept it.
        wait_for_log(log_a, f"message {m2} on {TOPIC}: already on the bus")
        obj = wait_for(
            config_a,
            object_id,
            lambda o, waiting: (
                len(woken(o)) >= 2
                and waiting == 0
                and (
                    setup.broker is None
                    or all(s == "done" for s, _ in deliveries(setup.broker, "east"))
                )
            ),
        )
        data = json.loads(obj.data)
        assert data["cancels"] == 2 and data["last"] == m2, data
        assert len(woken(obj)) == 2

        # The subscription follows a migration; m-3 is published during the blackout.
        server_a.stop()
        migrate = run_cli(
            "migrate",
            object_id,
            "--to",
            HOST_B,
            config=config_a,
            env={"GATEWAY_TEST_CRASH_AT": "source.after-commit-journal"},
        )
        assert migrate.returncode == -9, migrate.stderr
        sent = run_cli("publish", TOPIC, "--data", message, "--id", m3, config=config_b)
        assert sent.returncode == 0, sent.stderr
        time.sleep(1.0)  # delivered to both apps' buses while the object is in the blackout
        staged, _ = read_object(config_b, object_id)
        assert staged is None
        server_a.start()  # recovery commits; B activates and takes the subscription up
        live = wait_for(
            config_b,
            object_id,
            lambda o, waiting: o.state is LifecycleState.ACTIVE and len(woken(o)) >= 3,
        )
        data = json.loads(live.data)
        assert data["cancels"] == 3 and data["last"] == m3, data
        entries = list(live.lineage.entries)
        arrival = max(i for i, e in enumerate(entries) if e.kind is EntryKind.REHOSTED)
        assert [e.detail for e in entries[arrival:] if e.kind is EntryKind.WOKEN] == [
            woken(live)[-1]
        ]

        # A call to the old host says where the object went, on both call paths.
        moved = run_cli("call", object_id, "status", "--at", HOST_A, config=config_b)
        assert moved.returncode == 1 and f"moved to {HOST_B}" in moved.stderr, moved.stderr
        code, reason = setup.allowed(body)
        assert code is grpc.StatusCode.FAILED_PRECONDITION and f"moved to {HOST_B}" in reason
        answered = run_cli("call", object_id, "status", "-o", "json", config=config_b)
        assert answered.returncode == 0, answered.stderr
        assert json.loads(answered.stdout)["reply"] == {"status": "cancelled", "host": HOST_B}
