"""Event-triggered wake on the embedded default (issue 12 point 1), through real
`gateway serve` processes: messages published with `gateway publish` wake an object's
`on: message` rules, which see the CloudEvent; a redelivered message (the same id again)
is evaluated once; the subscription follows the object through a migration, and a
message published during the blackout is delivered after activation; a host whose
policy denies the subscription records the denial and never wakes the object.
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.handoff.journal import Journal
from gateway.lineage import EntryKind
from gateway.model import GovernedObject, LifecycleState
from gateway.objectspec import parse_spec
from gateway.runtime.events import INBOX
from gateway.stores import StateStore
from gateway.testing import (
    HostSpec,
    ServerProcess,
    World,
    build_world,
    read_store,
    run_cli,
    start_all,
)
from tests.conftest import HOST_A, HOST_B

OBJECT = "obj://org-a.example/orders/order-7"
TOPIC = "orders/cancelled"
POLICY: dict[str, Any] = {
    "offers": [
        {"resource": "state:self", "actions": ["read", "write"]},
        {"resource": "pubsub:*", "actions": ["publish", "subscribe"]},
        {"resource": "call:*", "actions": ["call"]},
    ]
}
SPEC: dict[str, Any] = {
    "data": {"order": 7, "status": "open"},
    "grant": {
        "audience": "spiffe://org-b.example",
        "capabilities": [
            {"resource": "state:self", "actions": ["read", "write"]},
            {"resource": f"pubsub:{TOPIC}", "actions": ["subscribe"]},
        ],
        "constraints": {"hosts": ["spiffe://org-a.example/*", "spiffe://org-b.example/*"]},
    },
    "subscribe": [TOPIC],
    "rules": [
        {
            "name": "cancel",
            "on": "message",
            "when": f'event.topic == "{TOPIC}" && event.data.order == data.order',
            "write": '{"status": "cancelled", "cancels": ("cancels" in data ? data.cancels : 0) + 1,'
            ' "last": event.id, "by": event.source}',
        },
    ],
}


def read_object(config: Path) -> tuple[GovernedObject | None, int]:
    """The object on that host, and how many wakes wait in its inbox."""

    async def read(store: StateStore) -> tuple[GovernedObject | None, int]:
        loaded = await Journal(store).object("default", OBJECT)
        return (loaded.value if loaded else None), len(await store.list(INBOX))

    return read_store(config, read)


def wait_for(config: Path, check: Any, *, timeout: float = 30.0) -> GovernedObject:
    deadline = time.monotonic() + timeout
    while True:
        obj, waiting = read_object(config)
        if obj is not None and check(obj, waiting):
            return obj
        assert time.monotonic() < deadline, (obj.state if obj else None, waiting)
        time.sleep(0.2)


def woken(obj: GovernedObject) -> list[str]:
    return [e.detail for e in obj.lineage.entries if e.kind is EntryKind.WOKEN]


def _spec_file(tmp_path: Path, spec: dict[str, Any]) -> Path:
    path = tmp_path / "order.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_subscriptions_and_message_rules_are_parsed() -> None:
    spec = parse_spec(SPEC, source="test")
    assert spec.subscriptions == (TOPIC,)
    assert spec.rules[0].on == "message"
    with pytest.raises(Exception, match="not a trigger"):
        parse_spec({**SPEC, "rules": [{**SPEC["rules"][0], "on": "timer"}]}, source="test")


@pytest.mark.slow
def test_a_message_wakes_the_object_once_and_follows_it_through_a_migration(
    tmp_path: Path,
) -> None:
    world: World = build_world(
        tmp_path / "world",
        [HostSpec(host_id=HOST_A, policy=POLICY), HostSpec(host_id=HOST_B, policy=POLICY)],
    )
    config_a, config_b = world.config(HOST_A), world.config(HOST_B)
    server_a = ServerProcess(config_a)
    with ExitStack() as stack:
        start_all(stack, server_a, ServerProcess(config_b))
        created = run_cli(
            "object", "create", OBJECT, "--spec", _spec_file(tmp_path, SPEC), config=config_a
        )
        assert created.returncode == 0, created.stderr

        # The same message id twice (at-least-once redelivery), then another message.
        for message_id in ("m-1", "m-1", "m-2"):
            sent = run_cli(
                "publish",
                TOPIC,
                "--data",
                '{"order": 7}',
                "--id",
                message_id,
                "-o",
                "json",
                config=config_a,
            )
            assert sent.returncode == 0, sent.stderr
            assert json.loads(sent.stdout)["id"] == message_id
        obj = wait_for(config_a, lambda o, waiting: len(woken(o)) >= 2 and waiting == 0)
        data = json.loads(obj.data)
        assert data["status"] == "cancelled" and data["cancels"] == 2, data  # m-1 once
        assert data["last"] == "m-2" and data["by"] == HOST_A
        assert len(woken(obj)) == 2 and all("1 of 1 message rules fired" in w for w in woken(obj))
        admitted = [e.detail for e in obj.lineage.entries if e.kind is EntryKind.ACTION_ADMITTED]
        assert f"subscribe pubsub:{TOPIC}" in admitted
        assert "rule cancel: write state:self" in admitted

        # Blackout: A freezes the object and dies before telling B to commit (and A's
        # server is down, so nothing finishes the migration yet). Messages published now
        # must wake it on B after the migration settles, not be lost.
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
        staged, _ = read_object(config_b)
        assert staged is None  # only staged on B
        for message_id in ("m-3", "m-3"):  # redelivered during the blackout too
            sent = run_cli(
                "publish", TOPIC, "--data", '{"order": 7}', "--id", message_id, config=config_b
            )
            assert sent.returncode == 0, sent.stderr
        # Published at A too, during the blackout: held there, dropped once it moved.
        sent = run_cli(
            "publish", TOPIC, "--data", '{"order": 7}', "--id", "m-at-a", config=config_a
        )
        assert sent.returncode == 0, sent.stderr

        server_a.start()  # A's recovery finishes the migration
        live = wait_for(
            config_b,
            lambda o, waiting: (
                o.state is LifecycleState.ACTIVE and len(woken(o)) >= 3 and waiting == 0
            ),
        )
        data = json.loads(live.data)
        assert data["cancels"] == 3 and data["last"] == "m-3", data
        # The blackout's message woke it after the arrival, once.
        entries = list(live.lineage.entries)
        arrival = max(i for i, e in enumerate(entries) if e.kind is EntryKind.REHOSTED)
        late = [e.detail for e in entries[arrival:] if e.kind is EntryKind.WOKEN]
        assert len(late) == 1 and "(id m-3," in late[0], late
        details = [e.detail for e in live.lineage.entries if e.kind is EntryKind.ACTION_ADMITTED]
        assert details.count(f"subscribe pubsub:{TOPIC}") == 2  # on A, then on B

        # After the migration a message at B wakes it there; at A it is no longer subscribed.
        sent = run_cli("publish", TOPIC, "--data", '{"order": 7}', "--id", "m-4", config=config_b)
        assert sent.returncode == 0
        live = wait_for(config_b, lambda o, waiting: len(woken(o)) >= 4 and waiting == 0)
        assert json.loads(live.data)["cancels"] == 4
        moved = wait_for(
            config_a, lambda o, waiting: o.state is LifecycleState.MOVED and waiting == 0
        )
        assert "m-at-a" not in " ".join(woken(moved))


@pytest.mark.slow
def test_a_host_policy_denying_the_subscription_is_recorded_and_never_wakes(
    tmp_path: Path,
) -> None:
    denying = {**POLICY, "deny": [{"resource": f"pubsub:{TOPIC}", "actions": ["subscribe"]}]}
    world = build_world(tmp_path / "world", [HostSpec(host_id=HOST_A, policy=denying)])
    config = world.config(HOST_A)
    with ExitStack() as stack:
        start_all(stack, ServerProcess(config))
        created = run_cli(
            "object", "create", OBJECT, "--spec", _spec_file(tmp_path, SPEC), config=config
        )
        assert created.returncode == 0, created.stderr
        sent = run_cli("publish", TOPIC, "--data", '{"order": 7}', config=config)
        assert sent.returncode == 0, sent.stderr
        obj = wait_for(
            config,
            lambda o, waiting: any(e.kind is EntryKind.ACTION_DENIED for e in o.lineage.entries),
        )
        # The bus kept the message but queued no wake: nobody here may subscribe.
        time.sleep(1.0)
        obj, waiting = read_object(config)
        assert obj is not None and waiting == 0 and woken(obj) == []
        denied = [e.detail for e in obj.lineage.entries if e.kind is EntryKind.ACTION_DENIED]
        assert denied == [
            f"subscribe pubsub:{TOPIC}: denied, this host's policy (offers, ceilings, deny) withholds pubsub:{TOPIC} [subscribe]"
        ]
        assert json.loads(obj.data)["status"] == "open"
