"""A dishonest peer against real `gateway serve` processes (issue 10, points 1–4).

Each organization has its own CA, keys and SQLite file; every host is a real process on
loopback with mTLS. The dishonest host holds valid keys and certificates and lies only
about what it writes itself: it rewrites its own lineage entries, strips grants, or
keeps an old copy and sends it on. The receivers must refuse from what they can verify,
and nothing may be staged or go live.

What each attack did on the code before these defences (db71f6b): hops were counted
from REHOSTED entries, which a sender writes itself (dropping its own made a third hop
pass a max_hops of 2); the grants presented were checked only as a chain (a host could
drop a child grant that narrowed the object); any host got the chain's capabilities
whatever the audience; and a stale copy sent to a new host went live beside the real one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.credentials import issue_grant, verify_chain
from gateway.errors import GatewayError
from gateway.handoff.home import custody_key
from gateway.handoff.journal import Journal, object_key
from gateway.host import Host
from gateway.lineage import Checkpoint, Lineage, LineageEntry, credentials_digest
from gateway.model import GovernedObject, LifecycleState
from gateway.stores import Expect, StateStore
from gateway.testing import (
    HostSpec,
    ServerProcess,
    World,
    build_world,
    read_store,
    rewrite_own_entries,
    run_cli,
    sealed_transfer,
    sign_transfer,
    stored_keys,
)
from gateway.wire import encode_object
from tests.conftest import FAST_HANDOFF, HOST_A, HOST_A2, HOST_B

pytestmark = pytest.mark.slow

HOST_C = "spiffe://org-c.example/cluster/one/gateway"
HOST_D = "spiffe://org-d.example/cluster/one/gateway"
OBJECT = "obj://org-a.example/billing/invoice-99"
ALERTS = {"resource": "pubsub:alerts/*", "actions": ["publish"]}
OVERDUE = {"resource": "pubsub:alerts/overdue", "actions": ["publish"]}


def world_of(tmp_path: Path, *hosts: str, narrowing: str = "") -> World:
    """One organization per host (own CA and keys), all peers of each other; ``narrowing``
    offers only pubsub:alerts/overdue and attenuates arriving objects to what it offers."""
    specs = []
    for host in hosts:
        offers = (
            [OVERDUE] if host == narrowing else [{"resource": "pubsub:*", "actions": ["publish"]}]
        )
        specs.append(
            HostSpec(
                host_id=host,
                handoff={**FAST_HANDOFF, "attenuate_on_rehost": host == narrowing},
                policy={"offers": offers},
            )
        )
    return build_world(tmp_path, specs)


def create(
    world: World,
    tmp_path: Path,
    *,
    max_hops: int = 8,
    home: str = "",
    audience: list[str] | None = None,
) -> None:
    grant: dict[str, object] = {
        "audience": audience
        or ["spiffe://org-b.example", "spiffe://org-c.example", "spiffe://org-d.example"],
        "valid_for_days": 1,
        "capabilities": [ALERTS],
        "constraints": {"max_hops": max_hops},
    }
    if home:
        grant["home"] = home
    spec = tmp_path / "object.yaml"
    spec.write_text(json.dumps({"data": {"invoice": 99}, "grant": grant}))
    created = run_cli("object", "create", OBJECT, "--spec", spec, config=world.config(HOST_A))
    assert created.returncode == 0, created.stderr


def migrate(world: World, source: str, destination: str) -> None:
    moved = run_cli("migrate", OBJECT, "--to", destination, config=world.config(source))
    assert moved.returncode == 0, moved.stderr


def stored(world: World, host: str) -> GovernedObject | None:
    async def read(store: StateStore) -> GovernedObject | None:
        loaded = await Journal(store).object("default", OBJECT)
        return loaded.value if loaded else None

    return read_store(world.config(host), read)


def keys_of(world: World, host: str) -> list[str]:
    """Every key in the host's SQLite file, the unlisted ones (fences, holds, custody)
    included: an attack must not have written any of them either."""
    return stored_keys(world.config(host))


def rewrite_own(obj: GovernedObject, keep: Callable[[LineageEntry], bool]) -> GovernedObject:
    """The holder re-records only the own entries ``keep`` likes (see rewrite_own_entries)."""
    return rewrite_own_entries(obj, lambda entries: [e for e in entries if keep(e)])


def send_as(
    world: World, sender: str, receiver: str, tamper: Callable[[GovernedObject], GovernedObject]
) -> GatewayError:
    """The dishonest ``sender`` (not serving; its keys, its certificate, its store) seals
    its tampered copy exactly as the source does and sends Prepare to ``receiver``'s
    real process; returns the receiver's refusal."""

    async def attack() -> GatewayError:
        host = await Host.open(load_config(world.config(sender)))
        try:
            obj = tamper(await host.get_object(OBJECT, tenant="default"))
            raw = sign_transfer(host, sealed_transfer(host, obj, receiver))
            with pytest.raises(GatewayError) as refused:
                await host.peers.client(receiver).prepare(raw)
            return refused.value
        finally:
            await host.close()

    return asyncio.run(attack())


def assert_nothing_staged(world: World, host: str, before: list[str]) -> None:
    """No staging key was added or removed. The tenant's release markers
    (``t/<tenant>/released/``) are left out: the receiver's own background pass folds the
    markers of objects that left it (a moment ago, in these tests) into its quota counter
    whenever it runs, so whether one is still there varied from run to run."""

    def staging(keys: list[str]) -> list[str]:
        return [
            k
            for k in keys
            if k.startswith(("journal/destination/", "open/", "t/")) and "/released/" not in k
        ]

    assert staging(keys_of(world, host)) == staging(before)


# --- 1. hop limits cannot be reset -----------------------------------------------------


def test_a_sender_cannot_lower_the_hop_count_by_rewriting_its_own_entries(tmp_path: Path) -> None:
    world = world_of(tmp_path, HOST_A, HOST_B, HOST_C, HOST_D)
    with ExitStack() as stack:
        servers = {
            h: stack.enter_context(ServerProcess(world.config(h)))
            for h in (HOST_A, HOST_B, HOST_C, HOST_D)
        }
        create(world, tmp_path, max_hops=2)
        migrate(world, HOST_A, HOST_B)
        migrate(world, HOST_B, HOST_C)  # two hops done; a third is over the limit
        servers[HOST_C].stop()  # C turns dishonest: it works on its own store
        before = keys_of(world, HOST_D)

        attacks = {
            "drops its own REHOSTED entry": lambda o: rewrite_own(
                o, lambda e: e.kind.value != "rehosted"
            ),
            "drops its own entries and its arrival": lambda o: replace(
                rewrite_own(o, lambda e: False),
                lineage=replace(
                    rewrite_own(o, lambda e: False).lineage, arrivals=o.lineage.arrivals[:-1]
                ),
            ),
            "drops B's departure and arrival": lambda o: replace(
                o,
                lineage=Lineage(
                    entries=o.lineage.entries,
                    checkpoints=o.lineage.checkpoints[:1],
                    arrivals=o.lineage.arrivals[:1],
                ),
            ),
            "reorders its entries": lambda o: rewrite_own(
                replace(
                    o,
                    lineage=replace(
                        o.lineage,
                        entries=(
                            *o.lineage.entries[:-2],
                            o.lineage.entries[-1],
                            o.lineage.entries[-2],
                        ),
                    ),
                ),
                lambda e: True,
            ),
            "tells the truth": lambda o: o,
        }
        reasons = {}
        for name, tamper in attacks.items():
            reasons[name] = str(send_as(world, HOST_C, HOST_D, tamper))
        assert_nothing_staged(world, HOST_D, before)

    expected = {
        "drops its own REHOSTED entry": "does not record spiffe://org-c.example/cluster/one/gateway taking",
        "drops its own entries and its arrival": "3 departures and 1 arrivals",
        "drops B's departure and arrival": "checkpoint 1 by spiffe://org-b.example",
        "reorders its entries": "has sequence number",
        "tells the truth": "hops",
    }
    for name, words in expected.items():
        assert words in reasons[name], (name, reasons[name])


# --- 2. attenuations stick -------------------------------------------------------------


@pytest.mark.parametrize("receiver", [HOST_B, HOST_D], ids=["back-to-B", "on-to-D"])
def test_a_narrowing_cannot_be_stripped_on_the_way(tmp_path: Path, receiver: str) -> None:
    world = world_of(tmp_path, HOST_A, HOST_B, HOST_C, HOST_D, narrowing=HOST_B)
    with ExitStack() as stack:
        servers = {
            h: stack.enter_context(ServerProcess(world.config(h)))
            for h in (HOST_A, HOST_B, HOST_C, HOST_D)
        }
        create(world, tmp_path)
        migrate(world, HOST_A, HOST_B)
        on_b = stored(world, HOST_B)
        assert on_b is not None and len(on_b.grants) == 2, "B narrowed with a child grant"
        migrate(world, HOST_B, HOST_C)
        servers[HOST_C].stop()
        before = keys_of(world, receiver)

        stripped = str(send_as(world, HOST_C, receiver, lambda o: replace(o, grants=o.grants[:1])))
        assert "do not extend the grants recorded" in stripped, stripped
        assert HOST_B in stripped
        assert_nothing_staged(world, receiver, before)

        # A renewal by the owner that names the replaced chain is the one way to replace it.
        at_c = stored(world, HOST_C)
        assert at_c is not None
        recorded = at_c.lineage.entries[
            Checkpoint.decode(at_c.lineage.checkpoints[-1].payload).size - 1
        ]

        async def renew(host: Host, obj: GovernedObject, *, names: bytes) -> GovernedObject:
            owner = await Host.open(load_config(world.config(HOST_A)))
            try:
                root = verify_chain(
                    obj.grants, object_id=OBJECT, trust=owner.trust, at=owner.clock.now()
                ).grants[0]
                renewal = issue_grant(
                    signer=owner.context.grant_signer,
                    issuer=HOST_A,
                    subject=OBJECT,
                    audience=root.audiences,
                    capabilities=verify_chain(
                        obj.grants, object_id=OBJECT, trust=owner.trust, at=owner.clock.now()
                    ).capabilities,
                    constraints=root.constraints,
                    not_before=root.not_before,
                    expires_at=root.expires_at,
                    at=owner.clock.now(),
                    replaces=names,
                )
            finally:
                await owner.close()
            return replace(obj, grants=(renewal.compact,))

        def renewed(names: bytes) -> Callable[[GovernedObject], GovernedObject]:
            return lambda o: asyncio.run(renew(None, o, names=names))  # type: ignore[arg-type]

        # An old root, renewed but naming an older chain (the root alone), is refused too.
        older = credentials_digest(at_c.grants[:1])
        refused = str(send_as_in_thread(world, HOST_C, receiver, renewed(older)))
        assert "do not extend the grants recorded" in refused, refused
        assert recorded.credentials_digest == credentials_digest(at_c.grants)
        accepted = accept_as(world, HOST_C, receiver, renewed(recorded.credentials_digest))
        assert accepted


def send_as_in_thread(
    world: World, sender: str, receiver: str, tamper: Callable[[GovernedObject], GovernedObject]
) -> GatewayError:
    """send_as, with a tamper function that runs its own event loop (a renewal by the
    owner): the tampering is done first, outside the attack's loop."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(
            send_as, world, sender, receiver, _precomputed(world, sender, tamper)
        ).result()


def _precomputed(
    world: World, sender: str, tamper: Callable[[GovernedObject], GovernedObject]
) -> Callable[[GovernedObject], GovernedObject]:
    obj = stored(world, sender)
    assert obj is not None
    result = tamper(obj)
    return lambda _o: result


def accept_as(
    world: World, sender: str, receiver: str, tamper: Callable[[GovernedObject], GovernedObject]
) -> bool:
    """The sender's renewed copy is staged by the receiver (Prepare answers a receipt)."""
    fixed = _precomputed(world, sender, tamper)

    async def send() -> bool:
        host = await Host.open(load_config(world.config(sender)))
        try:
            obj = fixed(await host.get_object(OBJECT, tenant="default"))
            raw = sign_transfer(host, sealed_transfer(host, obj, receiver))
            return bool(await host.peers.client(receiver).prepare(raw))
        finally:
            await host.close()

    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, send()).result()


# --- 3. aud limits who may hold the authority ------------------------------------------


def test_a_host_outside_the_audience_holds_the_object_but_no_capability(tmp_path: Path) -> None:
    world = world_of(tmp_path, HOST_A, HOST_B)
    with ExitStack() as stack:
        for h in (HOST_A, HOST_B):
            stack.enter_context(ServerProcess(world.config(h)))
        create(world, tmp_path, audience=["spiffe://org-c.example"])  # B is not an audience
        dry = run_cli("migrate", OBJECT, "--to", HOST_B, "--dry-run", config=world.config(HOST_A))
        assert dry.returncode == 0, dry.stderr
        assert "not an audience of the last grant" in dry.stdout, dry.stdout
        migrate(world, HOST_A, HOST_B)
    on_b = stored(world, HOST_B)
    assert on_b is not None and on_b.state is LifecycleState.ACTIVE
    assert not on_b.authority.permits("pubsub:alerts/overdue", "publish")
    assert on_b.authority.allow.capabilities == ()


def test_an_empty_or_malformed_audience_is_neither_issued_nor_verified(tmp_path: Path) -> None:
    world = world_of(tmp_path, HOST_A)
    spec = tmp_path / "bad.yaml"
    for audience in ("", "spiffe://", "org-b.example", "spiffe://org-b.example/", "spiffe://Org B"):
        spec.write_text(
            json.dumps({"data": {}, "grant": {"audience": audience, "capabilities": [ALERTS]}})
        )
        created = run_cli("object", "create", OBJECT, "--spec", spec, config=world.config(HOST_A))
        assert created.returncode == 2, (audience, created.stdout, created.stderr)
        assert "grant.audience" in created.stderr and "Traceback" not in created.stderr


# --- 4. no stale-copy fork -------------------------------------------------------------


def keep_old_copy(world: World, host: str) -> GovernedObject:
    got = stored(world, host)
    assert got is not None and got.state is LifecycleState.ACTIVE
    return got


def restore(world: World, host: str, copy: GovernedObject) -> None:
    """The dishonest former holder puts its kept copy back in its own store."""

    async def write(store: StateStore) -> None:
        item = await store.get(object_key("default", OBJECT))
        assert item is not None
        await store.put(object_key("default", OBJECT), encode_object(copy), etag=item.etag)
        # Its outbox still holds the events of the real handoff at the next epoch; the
        # forger clears them so its own software commits the fork.
        for key in await store.list(""):
            if f"epoch-{copy.epoch + 1:012d}" in key:
                await store.delete(key, etag=Expect.ANY)

    read_store(world.config(host), write)


def test_without_a_home_a_stale_copy_is_the_stated_limit_and_the_fork_is_caught_later(
    tmp_path: Path,
) -> None:
    world = world_of(tmp_path, HOST_A, HOST_B, HOST_C, HOST_D)
    with ExitStack() as stack:
        servers = {
            h: stack.enter_context(ServerProcess(world.config(h)))
            for h in (HOST_A, HOST_B, HOST_C, HOST_D)
        }
        create(world, tmp_path)
        migrate(world, HOST_A, HOST_B)
        servers[HOST_B].stop()
        old = keep_old_copy(world, HOST_B)
        servers[HOST_B] = stack.enter_context(ServerProcess(world.config(HOST_B)))
        migrate(world, HOST_B, HOST_C)
        servers[HOST_B].stop()
        restore(world, HOST_B, old)
        servers[HOST_B] = stack.enter_context(ServerProcess(world.config(HOST_B)))
        # The limit without a home: D never saw the object and cannot tell the copy is stale.
        migrate(world, HOST_B, HOST_D)
        # The real copy reaches D: the histories diverge; D refuses it and keeps evidence.
        refused = run_cli("migrate", OBJECT, "--to", HOST_D, config=world.config(HOST_C))
        assert refused.returncode != 0
        assert "diverges" in refused.stderr, refused.stderr
        forks = run_cli("forks", "-o", "json", config=world.config(HOST_D))
        assert forks.returncode == 0, forks.stderr
    listed = json.loads(forks.stdout)
    assert [(f["object_id"], f["sender"]) for f in listed] == [(OBJECT, HOST_C)]
    on_c = stored(world, HOST_C)
    assert on_c is not None and on_c.state is LifecycleState.ACTIVE, (
        "the refused copy is kept live where it was"
    )
    events = read_store(world.config(HOST_D), lambda s: s.list("events/"))
    assert any("object.forked" in k for k in events), events


def test_with_a_home_a_stale_copy_never_goes_live(tmp_path: Path) -> None:
    world = world_of(tmp_path, HOST_A, HOST_A2, HOST_B, HOST_C, HOST_D)
    with ExitStack() as stack:
        servers = {
            h: stack.enter_context(ServerProcess(world.config(h)))
            for h in (HOST_A, HOST_A2, HOST_B, HOST_C, HOST_D)
        }
        create(world, tmp_path, home=HOST_A2)
        migrate(world, HOST_A, HOST_B)
        servers[HOST_B].stop()
        old = keep_old_copy(world, HOST_B)
        servers[HOST_B] = stack.enter_context(ServerProcess(world.config(HOST_B)))
        migrate(world, HOST_B, HOST_C)
        # The home survives a restart with its records.
        servers[HOST_A2].stop()
        servers[HOST_A2] = stack.enter_context(ServerProcess(world.config(HOST_A2)))
        servers[HOST_B].stop()
        restore(world, HOST_B, old)
        servers[HOST_B] = stack.enter_context(ServerProcess(world.config(HOST_B)))
        forked = run_cli("migrate", OBJECT, "--to", HOST_D, config=world.config(HOST_B))
        assert forked.returncode != 0, forked.stdout
        assert "held by" in forked.stderr and HOST_C in forked.stderr, forked.stderr
        forks = run_cli("forks", "-o", "json", config=world.config(HOST_D))
        assert forks.returncode == 0, forks.stderr
    # D discarded the staged copy (so recovery does not ask the home forever) and kept its
    # history as evidence.
    assert [(f["object_id"], f["sender"]) for f in json.loads(forks.stdout)] == [(OBJECT, HOST_B)]
    assert read_store(world.config(HOST_D), lambda s: s.list("open/")) == []
    on_d = stored(world, HOST_D)
    assert on_d is None or on_d.state is not LifecycleState.ACTIVE
    on_c = stored(world, HOST_C)
    assert on_c is not None and on_c.state is LifecycleState.ACTIVE
    record = read_store(world.config(HOST_A2), lambda s: s.get(custody_key(OBJECT)))
    assert record is not None and HOST_C.encode() in record.value


@pytest.mark.parametrize("point", ["home.before-claim", "home.after-claim"])
def test_a_home_killed_mid_claim_recovers_to_one_live_copy(tmp_path: Path, point: str) -> None:
    world = world_of(tmp_path, HOST_A, HOST_A2, HOST_B)
    with ExitStack() as stack:
        stack.enter_context(ServerProcess(world.config(HOST_A)))
        stack.enter_context(ServerProcess(world.config(HOST_B)))
        home = ServerProcess(world.config(HOST_A2), env={"GATEWAY_TEST_CRASH_AT": point})
        stack.enter_context(home)
        create(world, tmp_path, home=HOST_A2)
        run_cli("migrate", OBJECT, "--to", HOST_B, config=world.config(HOST_A))
        home.process.wait(timeout=30)  # type: ignore[union-attr]
        assert home.process.returncode == -9  # type: ignore[union-attr]
        _nothing_live_without_the_home(world, point)
        stack.enter_context(ServerProcess(world.config(HOST_A2)))
        deadline = asyncio.run(_wait_active(world))
        assert deadline, "B activates once the home answers again"
    on_a = stored(world, HOST_A)
    assert on_a is not None and on_a.state is LifecycleState.MOVED
    record = read_store(world.config(HOST_A2), lambda s: s.get(custody_key(OBJECT)))
    assert record is not None and HOST_B.encode() in record.value


def _nothing_live_without_the_home(world: World, point: str) -> None:
    """With the home killed mid-claim, B holds a staged copy at most, unless the home
    durably granted it custody before dying. That can happen at ``home.after-claim``
    only: B's Commit retried (or its recovery pass) sends the same claim while the first
    is writing; the second finds the record the first wrote and is answered with its
    receipt before the first reaches the crash point (seen once in a fresh-clone run at
    load ~4). B is then live on a grant the home keeps, and A is not live."""
    on_b = stored(world, HOST_B)
    if on_b is None:
        return
    assert point == "home.after-claim", "nothing live without the home's grant"
    record = read_store(world.config(HOST_A2), lambda s: s.get(custody_key(OBJECT)))
    assert record is not None and HOST_B.encode() in record.value, "live on no grant"
    on_a = stored(world, HOST_A)
    assert on_a is None or on_a.state is not LifecycleState.ACTIVE, "live twice"


async def _wait_active(world: World) -> bool:
    for _ in range(120):
        on_b = await asyncio.to_thread(stored, world, HOST_B)
        if on_b is not None and on_b.state is LifecycleState.ACTIVE:
            return True
        await asyncio.sleep(0.25)
    return False
