"""Retiring and revoking signing keys, across real `gateway serve` processes.

Three organizations (A, B, C), each with its own CA and keys, real mTLS and SQLite
files. An object created on A moves to B, so A's signing key signs its lineage
checkpoint and its root grant. Then A's operator replaces that key:

* **retire** (`gateway keys retire`): the key signs nothing from then on, but what it
  signed before stands. B and C import A's new bundle and restart; the object moves on
  from B to C and verifies there, A signs new objects with its new key, and a dishonest
  A that still signs with the retired key is refused by C.
* **revoke** (`gateway keys revoke`): everything the key signed is distrusted. The
  command lists the object it strands; after B and C import the bundle, C refuses the
  object with an error naming the key and what to do. A host left without a usable key
  is told to add one, and starts again once it has.
"""

from __future__ import annotations

import asyncio
import json
import re
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import pytest

from gateway._time import SystemClock
from gateway.config import load_config
from gateway.errors import RetiredKeyError
from gateway.handoff.journal import Journal
from gateway.handoff.source import Source
from gateway.host import Host
from gateway.keyring import load_keyring
from gateway.keys import Purpose
from gateway.lineage import verify_lineage
from gateway.model import GovernedObject, LifecycleState
from gateway.stores import StateStore
from gateway.testing import (
    HostSpec,
    ServerProcess,
    World,
    build_world,
    read_store,
    run_cli,
    start_all,
    trust_of,
)
from tests.conftest import FAST_HANDOFF, HOST_A, HOST_B

pytestmark = pytest.mark.slow

HOST_C = "spiffe://org-c.example/cluster/north/gateway"
OBJECT = "obj://org-a.example/billing/invoice-1"
SECOND = "obj://org-a.example/billing/invoice-2"
FORGED = "obj://org-a.example/billing/invoice-3"
SPEC = {
    "data": {"invoice": 1, "amount": 10},
    "grant": {
        "audience": "spiffe://org-b.example",
        "valid_for_days": 1,
        "capabilities": [{"resource": "state:self", "actions": ["read"]}],
        "constraints": {
            "hosts": [
                "spiffe://org-a.example/*",
                "spiffe://org-b.example/*",
                "spiffe://org-c.example/*",
            ],
            "max_hops": 4,
        },
    },
}


def _world(tmp_path: Path) -> World:
    return build_world(
        tmp_path,
        [HostSpec(host_id=h, handoff=FAST_HANDOFF) for h in (HOST_A, HOST_B, HOST_C)],
    )


def _ok(*args: str | Path, config: Path) -> str:
    result = run_cli(*args, config=config)
    assert result.returncode == 0, f"gateway {' '.join(map(str, args))}: {result.stderr}"
    return result.stdout


def _stored(config: Path, object_id: str) -> GovernedObject | None:
    async def read(store: StateStore) -> GovernedObject | None:
        loaded = await Journal(store).object("default", object_id)
        return loaded.value if loaded else None

    return read_store(config, read)


def _signing_key(world: World) -> str:
    """The key A signs with now (shared by org-a's keys directory)."""
    keyring = load_keyring(load_config(world.config(HOST_A)).keys)
    return keyring.signer_for(Purpose.ENVELOPE, host=HOST_A, at=SystemClock().now()).key_id


def _create_and_move_to_b(world: World, tmp_path: Path) -> None:
    """OBJECT is created on A (root grant by A's key) and moved to B (checkpoint by it)."""
    spec = tmp_path / "invoice.yaml"
    spec.write_text(json.dumps(SPEC))
    _ok("object", "create", OBJECT, "--spec", spec, config=world.config(HOST_A))
    with ExitStack() as stack:
        start_all(stack, ServerProcess(world.config(HOST_A)), ServerProcess(world.config(HOST_B)))
        assert "moved to" in _ok("migrate", OBJECT, "--to", HOST_B, config=world.config(HOST_A))


def _publish_a_bundle(world: World, tmp_path: Path) -> None:
    """A exports its bundle; B and C import it (their servers restart afterwards)."""
    exported = tmp_path / "org-a-bundle.json"
    _ok("trust", "export", "--out", exported, config=world.config(HOST_A))
    for peer in (HOST_B, HOST_C):
        assert "updated org-a.example" in _ok(
            "trust", "import", exported, config=world.config(peer)
        )


def test_a_retired_key_keeps_what_it_signed_and_signs_nothing_new(tmp_path: Path) -> None:
    world = _world(tmp_path)
    config_a, config_b, config_c = (world.config(h) for h in (HOST_A, HOST_B, HOST_C))
    _create_and_move_to_b(world, tmp_path)
    old_key = _signing_key(world)
    moved = _stored(config_b, OBJECT)
    assert moved is not None and moved.lineage.checkpoints[0].signatures[0].keyid == old_key

    # A's operator rotates: a new key, then the old one retired.
    added = _ok("keys", "add", config=config_a)
    new_key = re.search(r"added key ([0-9a-f]{64})", added)
    assert new_key is not None
    retired = _ok("keys", "retire", old_key[:16], config=config_a)
    assert f"retired key {old_key[:16]}" in retired
    assert f"signs with key {new_key.group(1)[:16]}" in retired
    _publish_a_bundle(world, tmp_path)
    record = trust_of(config_c).bundle("org-a.example").key(old_key)
    assert record is not None and record.retired_at is not None and not record.revoked

    with ExitStack() as stack:
        start_all(stack, *(ServerProcess(world.config(h)) for h in (HOST_A, HOST_B, HOST_C)))
        # What the retired key signed before its retirement still verifies: on B, and on
        # C, which receives the object from B with A's checkpoint and grant in it.
        assert "lineage verified" in _ok("lineage", OBJECT, config=config_b)
        assert "moved to" in _ok("migrate", OBJECT, "--to", HOST_C, config=config_b)
        # New signatures are by the new key only.
        _ok("object", "create", SECOND, config=config_a)
        assert "moved to" in _ok("migrate", SECOND, "--to", HOST_C, config=config_a)

        # A dishonest A that keeps signing with the retired key (it still has the file)
        # is refused by C's server: the key signs nothing after its retirement.
        async def forge() -> None:
            host = await Host.open(load_config(config_a))
            try:
                await host.create_object(
                    FORGED, tenant="default", data=b"{}", content_type="application/json"
                )
                retired_signer = host.keyring.signers[old_key]
                dishonest = Source(replace(host.context, signer=retired_signer), host.peers)
                with pytest.raises(RetiredKeyError, match=old_key[:16]):
                    await dishonest.migrate(FORGED, tenant="default", destination=HOST_C)
            finally:
                await host.close()

        asyncio.run(forge())

    arrived = _stored(config_c, OBJECT)
    assert arrived is not None and arrived.state is LifecycleState.ACTIVE
    assert arrived.lineage.checkpoints[0].signatures[0].keyid == old_key  # A's, retired
    verified = verify_lineage(
        arrived.lineage, object_id=OBJECT, trust=trust_of(config_c), sealed=False
    )
    assert verified.hosts == (HOST_A, HOST_B)
    second = _stored(config_c, SECOND)
    assert second is not None and second.state is LifecycleState.ACTIVE
    assert {s.keyid for s in second.lineage.checkpoints[0].signatures} == {new_key.group(1)}
    assert _stored(config_c, FORGED) is None  # nothing written for the forgery
    forged = _stored(config_a, FORGED)
    assert forged is not None and forged.state is LifecycleState.ACTIVE  # still A's


def test_a_revoked_key_strands_what_it_signed_and_says_so(tmp_path: Path) -> None:
    world = _world(tmp_path)
    config_a, config_b, config_c = (world.config(h) for h in (HOST_A, HOST_B, HOST_C))
    _create_and_move_to_b(world, tmp_path)
    old_key = _signing_key(world)

    # A dry run changes nothing and lists what a revocation would strand.
    dry = _ok("keys", "revoke", "--dry-run", old_key[:16], config=config_a)
    assert "nothing changed" in dry and OBJECT in dry
    revoked = _ok("keys", "revoke", old_key[:16], config=config_a)
    assert f"revoked key {old_key[:16]}" in revoked
    # A holds the moved object's record, with the root grant its key signed.
    assert f"{OBJECT} (default, moved to {HOST_B}): grant 0" in revoked
    assert "gateway keys retire" in revoked  # what to do next time
    assert "no usable envelope key" in revoked and "gateway keys add" in revoked

    # A's only signing key is gone: it says what to do instead of crashing, then recovers.
    # Commands that open the host need a signing key; local reads (`object list`) do not.
    listed = run_cli("object", "list", config=config_a)
    assert listed.returncode == 0 and OBJECT in listed.stdout, listed.stderr
    for command in (("migration", "list"), ("serve",)):
        refused = run_cli(*command, config=config_a, timeout=60)
        assert refused.returncode == 2, refused.stderr
        assert "no usable envelope key" in refused.stderr
        assert f"{old_key[:16]} revoked" in refused.stderr
        assert "gateway keys add" in refused.stderr
    _ok("keys", "add", config=config_a)
    _publish_a_bundle(world, tmp_path)

    with ExitStack() as stack:
        start_all(stack, *(ServerProcess(world.config(h)) for h in (HOST_A, HOST_B, HOST_C)))
        refused = run_cli("migrate", OBJECT, "--to", HOST_C, config=config_b)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        error = refused.stderr
        assert old_key[:16] in error and "revoked" in error, error
        assert "checkpoint 0" in error and OBJECT in error, error  # what the key signed
        assert "gateway keys retire" in error and "re-issue" in error, error  # what to do
        assert "ACTIVE here again" in error  # and the object is not lost
        # A itself serves again, with its new key.
        _ok("object", "create", SECOND, config=config_a)
        assert "moved to" in _ok("migrate", SECOND, "--to", HOST_C, config=config_a)

    assert _stored(config_c, OBJECT) is None
    kept = _stored(config_b, OBJECT)
    assert kept is not None and kept.state is LifecycleState.ACTIVE
