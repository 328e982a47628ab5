"""Actions through Dapr (issue 12 point 3): an object's ``invoke`` action goes through
Dapr service invocation and its ``binding`` action through a Dapr output binding, each
admitted against its grants and the host's policy, recorded in its lineage, and delivered
from the durable outbox with the outbox key as ``Idempotency-Key``.

Through real processes: a `gateway serve` on a stand-in sidecar process (tests/daprd),
and an HTTP receiver (an ``HTTPEndpoint`` for invocation, a ``bindings.http`` url for the
binding) that performs each effect once per idempotency key. The gateway is killed between
recording the actions and delivering them (``cycle.after-commit``), and between
delivering one and marking it delivered (``outbox.after-deliver``): after a restart every
action has had its effect exactly once, and the one delivered twice came with the same key.

On the embedded default, a binding action is refused at admission with the reason.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.handoff.journal import Journal
from gateway.host import Host
from gateway.lineage import EntryKind
from gateway.model import GovernedObject
from gateway.objectspec import parse_spec
from gateway.runtime.cycle import NO_BINDINGS, CycleResult
from gateway.runtime.outbox import Event, list_events
from gateway.scaffold import free_port
from gateway.stores import StateStore
from gateway.testing import (
    HostSpec,
    ServerProcess,
    build_world,
    create_from_spec,
    read_store,
    run_cli,
)
from tests.conftest import HOST_A
from tests.daprd.runner import DaprdProcess
from tests.real_dapr import RUN, clear, missing
from tests.real_dapr import sidecar as sidecar_named

OBJECT = "obj://org-a.example/orders/order-7"
POLICY: dict[str, Any] = {
    "offers": [
        {"resource": "state:self", "actions": ["read", "write"]},
        {"resource": "invoke:*", "actions": ["invoke"]},
        {"resource": "binding:*", "actions": ["invoke"]},
    ],
    # The host will not let any object write to its audit binding, whatever it was granted.
    "deny": [{"resource": "binding:audit/*", "actions": ["invoke"]}],
}
GRANTED = [
    {"resource": "state:self", "actions": ["read", "write"]},
    {"resource": "invoke:payments/charge", "actions": ["invoke"]},
    {"resource": "binding:notify/create", "actions": ["invoke"]},
    {"resource": "binding:audit/create", "actions": ["invoke"]},
]
RULES = [
    {
        "name": "charge",
        "when": "data.step == 0",
        "invoke": {"target": "payments/charge", "payload": '{"order": data.order}'},
    },
    {
        "name": "notify",
        "when": "data.step == 0",
        "binding": {"target": "notify/create", "payload": '{"order": data.order, "paid": true}'},
    },
    {"name": "audit", "when": "data.step == 0", "binding": {"target": "audit/create"}},
    {"name": "advance", "when": "data.step == 0", "write": '{"step": 1}'},
]
SPEC: dict[str, Any] = {
    "data": {"order": 7, "step": 0},
    "grant": {
        "capabilities": GRANTED,
        "constraints": {"hosts": ["spiffe://org-a.example/*"]},
    },
    "cycle": {"interval_seconds": 0.3},
    "rules": RULES,
}


class Receiver:
    """The receiving side: performs each request's effect once per ``Idempotency-Key``
    (what the key is for), and remembers every delivery, duplicates included."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.deliveries: list[tuple[str, str, dict[str, Any]]] = []  #: (path, key, body)
        self.effects: Counter[str] = Counter()  #: path -> effects performed
        self._done: set[str] = set()
        self._lock = threading.Lock()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _handle(self, request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key", "")
        body = json.loads(await request.read() or b"null")
        with self._lock:
            self.deliveries.append((request.path, key, body))
            if key and key not in self._done:
                self._done.add(key)
                self.effects[request.path] += 1
        return web.json_response({"ok": True})

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            app = web.Application()
            app.router.add_post("/{tail:.*}", self._handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            self._ready.set()
            await self._stop.wait()
            await runner.cleanup()

        asyncio.run(main())

    def __enter__(self) -> Receiver:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def snapshot(self) -> tuple[list[tuple[str, str, dict[str, Any]]], Counter[str]]:
        with self._lock:
            return list(self.deliveries), Counter(self.effects)


def resources(tmp_path: Path, receiver: Receiver) -> Path:
    """The sidecar's resources: a state store, the payments app as an HTTPEndpoint, and
    the notify and audit bindings (bindings.http)."""
    folder = tmp_path / "components"
    folder.mkdir()
    base = f"http://127.0.0.1:{receiver.port}"
    documents: list[dict[str, Any]] = [
        {
            "apiVersion": "dapr.io/v1alpha1",
            "kind": "Component",
            "metadata": {"name": "statestore"},
            "spec": {"type": "state.sqlite", "version": "v1", "metadata": []},
        },
        {
            "apiVersion": "dapr.io/v1alpha1",
            "kind": "HTTPEndpoint",
            "metadata": {"name": "payments"},
            "spec": {"baseUrl": f"{base}/payments"},
        },
    ]
    for name in ("notify", "audit"):
        documents.append(
            {
                "apiVersion": "dapr.io/v1alpha1",
                "kind": "Component",
                "metadata": {"name": name},
                "spec": {
                    "type": "bindings.http",
                    "version": "v1",
                    "metadata": [{"name": "url", "value": f"{base}/{name}"}],
                },
            }
        )
    (folder / "resources.yaml").write_text(yaml.safe_dump_all(documents))
    return folder


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


@pytest.fixture
def sidecar(tmp_path: Path, receiver: Receiver) -> Iterator[DaprdProcess]:
    process = DaprdProcess(
        app_id="orders",
        db=tmp_path / "dapr.db",
        components_dir=resources(tmp_path, receiver),
        ready_file=tmp_path / "daprd.ready",
    )
    try:
        process.start()
        yield process
    finally:
        process.kill()


def read(config: Path, object_id: str = OBJECT) -> tuple[GovernedObject | None, list[Event]]:
    async def go(store: StateStore) -> tuple[GovernedObject | None, list[Event]]:
        loaded = await Journal(store).object("default", object_id)
        return (loaded.value if loaded else None), await list_events(store)

    return read_store(config, go)


def actions(obj: GovernedObject, kind: EntryKind) -> list[str]:
    return [e.detail for e in obj.lineage.entries if e.kind is kind]


CRASH_POINTS = ["cycle.after-commit", "outbox.after-deliver"]
#: The variables naming gateway A's real sidecar and the receiver its resources name
#: (tests/real_dapr.py); without them the real variant is skipped.
REAL = ("DAPR_GRPC_ENDPOINT", "DAPR_HTTP_ENDPOINT", "DAPR_APP_PORT", "DAPR_RECEIVER_PORT")


@pytest.mark.slow
@pytest.mark.parametrize("crash_at", CRASH_POINTS)
def test_invoke_and_binding_through_dapr_take_effect_once_across_a_crash(
    tmp_path: Path, receiver: Receiver, sidecar: DaprdProcess, crash_at: str
) -> None:
    assert sidecar.addresses is not None
    take_effect_once(tmp_path, receiver, sidecar.addresses.store_section(), None, OBJECT, crash_at)


@pytest.mark.slow
@pytest.mark.skipif(
    bool(missing(*REAL)),
    reason=f"needs a real daprd sidecar: set {', '.join(REAL)} (tests/real_dapr.py, "
    "docs/dapr.md 'Messages, calls and actions on real daprd')",
)
@pytest.mark.parametrize("crash_at", CRASH_POINTS)
def test_invoke_and_binding_take_effect_once_on_real_daprd(tmp_path: Path, crash_at: str) -> None:
    """The same through a real sidecar, whose resources declare the HTTPEndpoint
    ``payments`` and the ``bindings.http`` components ``notify`` and ``audit`` at
    ``http://127.0.0.1:$DAPR_RECEIVER_PORT``. The gateway serves the sidecar's app port
    (as deployed), so that the sidecar's app health probe passes."""
    real = sidecar_named("DAPR")
    assert real is not None
    clear(real.store_section())
    with Receiver(int(os.environ["DAPR_RECEIVER_PORT"])) as receiver:
        take_effect_once(
            tmp_path,
            receiver,
            real.store_section(),
            {"app_port": int(os.environ["DAPR_APP_PORT"])},
            f"{OBJECT}-{RUN}-{crash_at.split('.')[0]}",
            crash_at,
        )


def take_effect_once(
    tmp_path: Path,
    receiver: Receiver,
    store: dict[str, Any],
    dapr: dict[str, Any] | None,
    object_id: str,
    crash_at: str,
) -> None:
    world = build_world(
        tmp_path / "world", [HostSpec(host_id=HOST_A, policy=POLICY, store=store, dapr=dapr)]
    )
    config = world.config(HOST_A)
    spec_file = tmp_path / "order.yaml"
    spec_file.write_text(yaml.safe_dump(SPEC))
    crashing = ServerProcess(config, env={"GATEWAY_TEST_CRASH_AT": crash_at})
    server = ServerProcess(config)
    with ExitStack() as stack:
        stack.callback(crashing.stop)
        stack.callback(server.stop)
        crashing.start()
        created = run_cli("object", "create", object_id, "--spec", spec_file, config=config)
        assert created.returncode == 0, created.stderr
        assert crashing.process is not None
        assert crashing.process.wait(timeout=60) == -9, f"not killed at {crash_at}"
        before, _ = receiver.snapshot()
        if crash_at == "cycle.after-commit":
            assert before == []  # recorded, not delivered
        else:
            assert len(before) >= 1  # at least one delivered, none marked delivered

        server.start()
        deadline = time.monotonic() + 60
        while True:
            obj, events = read(config, object_id)
            if events and all(e.status == "delivered" for e in events):
                break
            assert time.monotonic() < deadline, [(e.resource, e.status) for e in events]
            time.sleep(0.3)

    deliveries, effects = receiver.snapshot()
    # Each action took effect once, at the receiver named by Dapr's resources.
    assert effects == Counter({"/payments/charge": 1, "/notify": 1}), deliveries
    assert {p for p, _, _ in deliveries} == {"/payments/charge", "/notify"}  # audit: never
    by_resource = {e.resource: e for e in events}
    assert set(by_resource) == {"invoke:payments/charge", "binding:notify/create"}
    keys = {e.key for e in events}
    assert {k for _, k, _ in deliveries} == keys  # every delivery carried its event's key
    bodies = {p: b for p, _, b in deliveries}
    assert bodies == {"/payments/charge": {"order": 7}, "/notify": {"order": 7, "paid": True}}
    if crash_at == "outbox.after-deliver":
        # The delivery cut short by the crash came again after the restart, with the same
        # key: the receiver saw it twice and acted once.
        assert len(deliveries) > len(keys)
        assert max(Counter(k for _, k, _ in deliveries).values()) == 2
    else:
        assert len(deliveries) == len(keys)

    # Admitted and denied, and why, in the lineage; the generation ran once.
    assert obj is not None
    assert json.loads(obj.data)["step"] == 1
    admitted = actions(obj, EntryKind.ACTION_ADMITTED)
    assert "rule charge: invoke invoke:payments/charge" in admitted
    assert "rule notify: invoke binding:notify/create" in admitted
    (denied,) = actions(obj, EntryKind.ACTION_DENIED)
    # The chain grants it; the host's deny list takes it out of the effective authority.
    assert denied == (
        "rule audit: invoke binding:audit/create: denied, not in the object's effective "
        "authority here (its grants or this host's policy)"
    )
    first = next(e for e in obj.lineage.entries if e.kind is EntryKind.EVALUATED)
    assert first.generation == 0 and first.detail.startswith("4 of 4 rules fired")


def test_a_binding_is_refused_at_admission_on_the_embedded_default(tmp_path: Path) -> None:
    world = build_world(tmp_path, [HostSpec(host_id=HOST_A, policy=POLICY)])

    async def main() -> None:
        host = await Host.open(load_config(world.config(HOST_A)))
        try:
            spec = parse_spec({**SPEC, "rules": RULES[1:2]}, source="test")
            await create_from_spec(host, OBJECT, spec)
            report = await host.cycles.run("default", OBJECT)
            assert report.result is CycleResult.EVALUATED
            assert (report.admitted, report.denied) == (0, 1)
            obj = await host.get_object(OBJECT, tenant="default")
            assert actions(obj, EntryKind.ACTION_DENIED) == [
                f"rule notify: invoke binding:notify/create: denied, {NO_BINDINGS}"
            ]
            assert await list_events(host.store) == []  # nothing left for the outbox
        finally:
            await host.close()

    asyncio.run(main())


def test_invoke_urls_are_refused_on_a_dapr_host(tmp_path: Path) -> None:
    world = build_world(tmp_path, [HostSpec(host_id=HOST_A)])
    config = world.config(HOST_A)
    embedded = config.read_text() + "invoke:\n  payments: http://127.0.0.1:9000\n"
    config.write_text(embedded)
    assert load_config(config).invoke == {"payments": "http://127.0.0.1:9000"}
    config.write_text(embedded + "dapr:\n  pubsub: pubsub\n")  # a sidecar beside it
    with pytest.raises(ConfigError, match="go through Dapr service invocation") as refused:
        load_config(config)
    assert refused.value.hint is not None and "HTTPEndpoint" in refused.value.hint


def test_binding_rules_parse_compile_and_travel() -> None:
    from gateway import wire
    from gateway.errors import RuleError
    from gateway.model import Binding
    from gateway.rules import compile_rule, rule_from_mapping

    rule = rule_from_mapping(
        {"name": "n", "binding": {"target": "notify/create", "payload": "data"}}, "rules[0]"
    )
    assert rule.action == Binding(target="notify/create", payload="data")
    compiled = compile_rule(rule)
    assert (compiled.resource, compiled.verb) == ("binding:notify/create", "invoke")
    for target in ("notify", "notify/create/more", "no tify/create"):
        with pytest.raises(RuleError, match="<binding>/<operation>"):
            compile_rule(rule_from_mapping({"name": "n", "binding": {"target": target}}, "r"))
    with pytest.raises(RuleError, match="exactly one of write, publish, invoke, binding"):
        rule_from_mapping({"name": "n", "write": "{}", "binding": {"target": "a/b"}}, "rules[0]")
    # The action travels with the object (proto Rule.binding) and comes back the same.
    spec = parse_spec({**SPEC, "rules": RULES[1:2]}, source="test")
    world_rule = spec.rules[0]
    assert wire._rule_from_pb(wire._rule_to_pb(world_rule)) == world_rule


def test_refusals_by_the_sidecar_or_the_callee_are_readable_delivery_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `gateway events` shows as an action's last error when Dapr or the receiver
    refuses it: the callee's status and (cut) body, daprd's error code and message."""
    from datetime import UTC, datetime

    from dapr.aio.clients import DaprClient

    from gateway.runtime.dapr_actions import DaprBindings, DaprInvoker, sidecar_api_url
    from gateway.runtime.outbox import DeliveryError
    from tests.daprd import DaprdThread
    from tests.daprd.components import http_binding, http_endpoint

    port = free_port()

    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=409, text="already paid " + "x" * 100_000)

    def event(resource: str) -> Event:
        return Event(
            key="default/obj/000000000001/000",
            tenant="default",
            object_id=OBJECT,
            generation=1,
            rule="r",
            verb="invoke",
            resource=resource,
            payload={"order": 7},
            created_at=datetime.now(UTC),
        )

    components = (
        http_endpoint("payments", f"http://127.0.0.1:{port}"),
        http_binding("notify", f"http://127.0.0.1:{port}"),
    )
    reasons: list[str] = []
    with DaprdThread(app_id="orders", db=tmp_path / "d.db", components=components) as sidecar:
        for key, value in sidecar.env().items():
            monkeypatch.setenv(key, value)

        async def main() -> None:
            app = web.Application()
            app.router.add_post("/{tail:.*}", refuse)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            invoker = DaprInvoker(sidecar_api_url(sidecar.http_endpoint))
            async with DaprClient() as client:
                bindings = DaprBindings(client)
                for deliver, resource in (
                    (invoker.invoke, "invoke:payments/charge"),
                    (invoker.invoke, "invoke:ghost/charge"),
                    (bindings.invoke, "binding:notify/create"),
                    (bindings.invoke, "binding:ghost/create"),
                ):
                    with pytest.raises(DeliveryError) as refused:
                        await deliver(event(resource))
                    reasons.append(refused.value.reason)
            await runner.cleanup()

        asyncio.run(main())
    callee, unknown_app, binding, unknown_binding = reasons
    assert callee.startswith("Dapr service invocation of payments/charge answered HTTP 409: ")
    assert "already paid" in callee and len(callee) < 500  # the body is cut, not copied
    assert unknown_app == (
        "Dapr service invocation of ghost/charge answered HTTP 500 ERR_DIRECT_INVOKE: "
        "failed to invoke, id: ghost, err: couldn't find service: ghost"
    )
    assert binding.startswith("Dapr output binding 'notify' refused 'create': ")
    assert "received status code 409" in binding
    assert "couldn't find output binding ghost" in unknown_binding
