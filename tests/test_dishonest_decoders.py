"""A dishonest peer's hostile values, through a real ``gateway serve`` process.

Host A's keys and certificates are real; the test process plays A (its config opened
in-process, never served) and sends B's server signed transfers whose payload holds
values that once crashed a decoder: a lineage entry with a 5000-digit integer, a grant
with ``exp`` 10**20 or a 5000-digit ``nbf`` (each re-signed with A's real grant key),
a lone surrogate in a lineage entry, a transfer that expires in year 9999.

Each must be refused with the decoder's own GatewayError, carried back as its gRPC
status (gateway/transport/status.py), never INTERNAL ("failed inside the gateway");
nothing may be written for it on B; and B's server must stay up: a real migration
afterwards, by the ``gateway`` CLI, still moves the object.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway import wire
from gateway.config import load_config
from gateway.errors import (
    GatewayError,
    GrantFormatError,
    LimitExceededError,
    LineageError,
)
from gateway.handoff.journal import Journal
from gateway.host import Host
from gateway.keys import SignatureEncoding, Signer
from gateway.model import GovernedObject, LifecycleState
from gateway.objectspec import parse_spec
from gateway.stores import StateStore
from gateway.testing import (
    HostSpec,
    ServerProcess,
    build_world,
    read_store,
    run_cli,
    sealed_transfer,
    sign_transfer,
)
from gateway.v1 import object_pb2
from tests.conftest import HOST_A, HOST_B
from tests.fuzz_targets import Raw, dump

pytestmark = pytest.mark.slow

OBJECT = "obj://org-a.example/billing/invoice-9"
SPEC = {
    "data": {"invoice": 9},
    "grant": {
        "audience": "spiffe://org-b.example",
        "capabilities": [{"resource": "pubsub:alerts/overdue", "actions": ["publish"]}],
    },
}
HANDOFF = {"rpc_timeout_seconds": 5, "retry_attempts": 1}

Mutation = Callable[[object_pb2.Transfer], None]  #: a change to the transfer's protobuf form
Rewrite = Callable[[GovernedObject], GovernedObject]  #: a change to the object before freezing


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _resigned_grant(
    compact: str, signer: Signer, change: Callable[[dict[str, object]], str]
) -> str:
    """The grant with its claims rewritten by ``change`` (as JSON text) and signed again
    with the real grant key: the signature is valid, the content is hostile."""
    header, payload, _ = compact.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    signing_input = f"{header}.{_b64(change(claims).encode())}"
    signature = signer.sign(signing_input.encode(), encoding=SignatureEncoding.P1363)
    return f"{signing_input}.{_b64(signature)}"


def _with_claim(name: str, value: object) -> Callable[[dict[str, object]], str]:
    return lambda claims: dump({**claims, name: value}, canonical=False)


def _hostile_entry(raw: bytes, name: str, value: object) -> bytes:
    document = json.loads(raw)
    return dump({**document, name: value}).encode("utf-8")


async def _send(
    host: Host, obj: GovernedObject, rewrite: Rewrite | None, mutate: Mutation
) -> tuple[str, GatewayError]:
    """A transfer sealed as A's source would, then changed by ``mutate`` in its protobuf
    form and signed by A's real envelope key; returns B's refusal."""
    obj = rewrite(obj) if rewrite is not None else obj
    transfer = sealed_transfer(host, obj, HOST_B, ttl=host.config.handoff.transfer_ttl)
    migration_id = transfer.migration_id
    message = object_pb2.Transfer()
    message.ParseFromString(wire.encode_transfer(transfer))
    mutate(message)
    payload = message.SerializeToString(deterministic=True)
    raw = sign_transfer(host, payload)
    try:
        await host.peers.client(HOST_B).prepare(raw)
    except GatewayError as exc:
        return migration_id, exc
    raise AssertionError("B accepted a hostile transfer")


def _unchanged(message: object_pb2.Transfer) -> None:
    del message


def _cases(host: Host) -> dict[str, tuple[Rewrite | None, Mutation, type[GatewayError]]]:
    grant_signer = host.context.grant_signer

    def entry(name: str, value: object) -> Mutation:
        def mutate(message: object_pb2.Transfer) -> None:
            message.lineage.entries[0] = _hostile_entry(message.lineage.entries[0], name, value)

        return mutate

    def grant(name: str, value: object) -> Rewrite:
        # The object carries the hostile grant before it is frozen, so the freeze entry
        # the dishonest host records (and signs) names it: every check before the grant
        # parser passes, as it would for a peer that plans the attack.
        def rewrite(obj: GovernedObject) -> GovernedObject:
            hostile = _resigned_grant(obj.grants[0], grant_signer, _with_claim(name, value))
            return replace(obj, grants=(hostile,))

        return rewrite

    def expires_in_year_9999(message: object_pb2.Transfer) -> None:
        message.expires_at.FromDatetime(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC))

    return {
        "lineage entry with a 5000-digit integer": (
            None,
            entry("epoch", Raw("1" * 5000)),
            LineageError,
        ),
        "lineage entry with a lone surrogate": (
            None,
            entry("detail", Raw('"\\ud800"')),
            LineageError,
        ),
        "lineage entry in year 0000": (
            None,
            entry("time", "0000-01-01T00:00:00.000Z"),
            LineageError,
        ),
        "grant with exp 10**20": (grant("exp", 10**20), _unchanged, GrantFormatError),
        "grant with a 5000-digit nbf": (
            grant("nbf", Raw("9" * 5000)),
            _unchanged,
            GrantFormatError,
        ),
        "transfer expiring in year 9999": (None, expires_in_year_9999, LimitExceededError),
    }


def test_hostile_values_in_signed_transfers_are_refused_and_the_server_stays_up(
    tmp_path: Path,
) -> None:
    world = build_world(
        tmp_path,
        [HostSpec(host_id=HOST_A, handoff=HANDOFF), HostSpec(host_id=HOST_B, handoff=HANDOFF)],
    )
    config_a, config_b = world.config(HOST_A), world.config(HOST_B)

    async def dishonest_a() -> dict[str, tuple[str, GatewayError, type[GatewayError]]]:
        host = await Host.open(load_config(config_a))
        try:
            spec = parse_spec(SPEC, source="test")
            obj = await host.create_object(
                OBJECT,
                tenant="default",
                data=spec.data,
                content_type=spec.content_type,
                grant=spec.grant,
            )
            refusals = {}
            for name, (rewrite, mutate, expected) in _cases(host).items():
                migration_id, error = await _send(host, obj, rewrite, mutate)
                refusals[name] = (migration_id, error, expected)
            return refusals
        finally:
            await host.close()

    with ExitStack() as stack:
        server_b = stack.enter_context(ServerProcess(config_b))
        refusals = asyncio.run(dishonest_a())
        # The decoder's own error type crossed the wire (gateway-error metadata); an
        # unexpected exception would have come back as INTERNAL with a generic text.
        wrong = [
            f"{name}: {type(error).__name__}: {error}"
            for name, (_, error, expected) in refusals.items()
            if not isinstance(error, expected) or "failed inside the gateway" in str(error)
        ]
        assert not wrong, "\n".join(wrong)
        assert server_b.process.poll() is None, "B's server died"

        # B is still up and still works: an honest migration by the operator's CLI.
        stack.enter_context(ServerProcess(config_a))
        moved = run_cli("migrate", OBJECT, "--to", HOST_B, config=config_a)
        assert moved.returncode == 0, moved.stderr

    async def on_b(store: StateStore) -> tuple[GovernedObject | None, list[bool]]:
        journal = Journal(store)
        loaded = await journal.object("default", OBJECT)
        absent = [await journal.destination(mid) is None for mid, _, _ in refusals.values()]
        return (loaded.value if loaded else None, absent)

    arrived, nothing_recorded = read_store(config_b, on_b)
    assert all(nothing_recorded), "B journaled a refused transfer"
    assert arrived is not None and arrived.state is LifecycleState.ACTIVE
