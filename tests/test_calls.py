"""Request-driven calls (issue 12 point 2): the Call RPC and `gateway call`, through real
`gateway serve` processes with mTLS.

An object answers ``status`` and ``approve``; org-b's hosts may call both, org-a's own
host may not. A call from B is answered and recorded; a call from A is denied with the
reason and recorded once however often it is repeated (the rest are counted); after the
object moves to B, a call to A says where it went, and ``--follow`` gets the answer there.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml

from gateway.handoff.journal import Journal
from gateway.lineage import EntryKind
from gateway.objectspec import parse_spec
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

OBJECT = "obj://org-a.example/orders/order-7"
POLICY = {
    "offers": [
        {"resource": "state:self", "actions": ["read", "write"]},
        {"resource": "call:*", "actions": ["call"]},
        {"resource": "pubsub:*", "actions": ["publish", "subscribe"]},
    ]
}
SPEC = {
    "data": {"order": 7, "status": "open"},
    "grant": {
        "audience": "spiffe://org-b.example",
        "capabilities": [
            {"resource": "state:self", "actions": ["read", "write"]},
            {"resource": "call:status/org-b.example/*", "actions": ["call"]},
            {"resource": "call:approve/org-b.example/*", "actions": ["call"]},
            # Allowed, but not among its answers: refused as an unknown method.
            {"resource": "call:refund/org-b.example/*", "actions": ["call"]},
        ],
        "constraints": {"hosts": ["spiffe://org-a.example/*", "spiffe://org-b.example/*"]},
    },
    "answers": {
        "status": {
            "reply": '{"order": data.order, "status": data.status, "asked": request.data}',
        },
        "approve": {
            "when": 'data.status == "open"',
            "reply": '"approved by " + request.caller',
            "write": '{"status": "approved"}',
        },
    },
}


def lineage_of(config: Path, object_id: str) -> list[tuple[EntryKind, str]]:
    """(kind, detail) of every lineage entry of the object, read from the host's store."""

    async def read(store: StateStore) -> list[tuple[EntryKind, str]]:
        loaded = await Journal(store).object("default", object_id)
        assert loaded is not None
        return [(e.kind, e.detail) for e in loaded.value.lineage.entries]

    return read_store(config, read)


def _world(tmp_path: Path) -> World:
    return build_world(
        tmp_path / "world",
        [HostSpec(host_id=HOST_A, policy=POLICY), HostSpec(host_id=HOST_B, policy=POLICY)],
    )


def test_answers_are_parsed_checked_and_travel_in_the_spec() -> None:
    spec = parse_spec(SPEC, source="test")
    assert [a.method for a in spec.answers] == ["status", "approve"]
    with pytest.raises(Exception, match="unknown key"):
        parse_spec({**SPEC, "answers": {"x": {"reply": "1", "then": "2"}}}, source="test")


@pytest.mark.slow
def test_calls_admitted_denied_counted_and_moved_through_processes(tmp_path: Path) -> None:
    world = _world(tmp_path)
    spec_file = tmp_path / "order.yaml"
    spec_file.write_text(yaml.safe_dump(SPEC))
    config_a, config_b = world.config(HOST_A), world.config(HOST_B)
    with ExitStack() as stack:
        start_all(stack, ServerProcess(config_a), ServerProcess(config_b))
        created = run_cli("object", "create", OBJECT, "--spec", spec_file, config=config_a)
        assert created.returncode == 0, created.stderr

        # Admitted: B's host certificate is allowed by call:status/org-b.example/*.
        asked = run_cli(
            "call",
            OBJECT,
            "status",
            "--data",
            '{"n": 1}',
            "--at",
            HOST_A,
            "-o",
            "json",
            config=config_b,
        )
        assert asked.returncode == 0, asked.stderr
        answer = json.loads(asked.stdout)
        assert answer["host"] == HOST_A
        assert answer["reply"] == {"order": 7, "status": "open", "asked": {"n": 1}}

        # Denied: A's own host is not an allowed caller; the reason says so. Repeated
        # identical denials reach the lineage once (the rest are counted).
        for _ in range(4):
            denied = run_cli("call", OBJECT, "status", config=config_a)
            assert denied.returncode == 1
            assert "may not call status" in denied.stderr, denied.stderr
            assert "org-a.example/cluster/east/gateway" in denied.stderr
        # No such method: a readable refusal naming what it answers.
        unknown = run_cli("call", OBJECT, "refund", "--at", HOST_A, config=config_b)
        assert unknown.returncode == 1 and "answers no method refund" in unknown.stderr

        # A call that writes: approve changes the status, once (its condition then fails).
        approved = run_cli("call", OBJECT, "approve", "--at", HOST_A, config=config_b)
        assert approved.returncode == 0, approved.stderr
        assert json.loads(approved.stdout) == "approved by org-b.example/cluster/west/gateway"
        again = run_cli("call", OBJECT, "approve", "--at", HOST_A, config=config_b)
        assert again.returncode == 1 and "is false" in again.stderr

        entries = lineage_of(config_a, OBJECT)
        answered = [d for k, d in entries if k is EntryKind.CALLED]
        assert len(answered) == 2  # status and approve
        assert "data written" in answered[1]
        denials = [d for k, d in entries if k is EntryKind.CALL_DENIED]
        assert sum("may not call status" in d for d in denials) == 1, denials
        assert sum("answers no method refund" in d for d in denials) == 1
        assert sum("is false" in d for d in denials) == 1

        # Moved: A answers where it went; --follow asks B, which now holds it.
        migrated = run_cli("migrate", OBJECT, "--to", HOST_B, config=config_a)
        assert migrated.returncode == 0, migrated.stderr
        moved = run_cli("call", OBJECT, "status", "--at", HOST_A, config=config_b)
        assert moved.returncode == 1
        assert f"moved to {HOST_B}" in moved.stderr and f"--at {HOST_B}" in moved.stderr
        followed = run_cli(
            "call", OBJECT, "status", "--at", HOST_A, "--follow", "-o", "json", config=config_b
        )
        assert followed.returncode == 0, followed.stderr
        assert json.loads(followed.stdout)["host"] == HOST_B
        assert json.loads(followed.stdout)["reply"]["status"] == "approved"


@pytest.mark.slow
def test_a_call_during_the_blackout_waits_then_fails_clearly(tmp_path: Path) -> None:
    """While a migration holds the object FROZEN (the destination is down, so the source
    keeps retrying Prepare), a call waits up to its --wait and then fails with a status
    that names the migration; nothing is answered from a frozen copy."""
    world = build_world(
        tmp_path / "world",
        [
            HostSpec(
                host_id=HOST_A,
                policy=POLICY,
                handoff={"rpc_timeout_seconds": 2, "retry_attempts": 30},
            ),
            HostSpec(host_id=HOST_B, policy=POLICY),
        ],
    )
    spec = parse_spec(SPEC, source="test")

    async def main() -> None:
        async with serving(world, [HOST_A]) as hosts:
            host = hosts[HOST_A]
            await create_from_spec(host, OBJECT, spec)
            # B is not running: the migration freezes the object and retries Prepare.
            migration = asyncio.create_task(
                host.migrate(OBJECT, tenant="default", destination=HOST_B)
            )
            for _ in range(400):
                if (await host.get_object(OBJECT, tenant="default")).state.value == "frozen":
                    break
                await asyncio.sleep(0.05)
            outcome = await asyncio.to_thread(
                run_cli,
                "call",
                OBJECT,
                "status",
                "--at",
                HOST_A,
                "--wait",
                "1",
                config=world.config(HOST_B),
            )
            assert outcome.returncode == 1
            assert "still frozen by migration" in outcome.stderr, outcome.stderr
            migration.cancel()
            await asyncio.gather(migration, return_exceptions=True)

    asyncio.run(main())
