"""Bounded CPU and state per peer, against a dishonest peer and real `gateway serve` processes.

The dishonest peer is this test process holding host A's real keys and certificate (its
host opened, never served): it crafts transfers whose counters, times and sizes sit at or
beyond gateway.limits, aborts and asks about migrations B never took part in, and breaks
off streamed uploads. Host B runs as its own OS process with its own SQLite file; after
it stopped, its store is read back to check that nothing was written.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway import envelope as dsse
from gateway import limits, wire
from gateway._time import to_millis
from gateway.config import load_config
from gateway.errors import (
    EnvelopeTooLargeError,
    GatewayError,
    LimitExceededError,
    TransferStreamError,
)
from gateway.handoff.journal import Journal, encode_counter, put_object
from gateway.host import Host
from gateway.lineage import EntryKind, Lineage
from gateway.model import CycleState, GovernedObject, new_object
from gateway.runtime.outbox import list_events
from gateway.runtime.scheduler import load_quarantine
from gateway.stores import Expect, StateStore
from gateway.testing import HostSpec, ServerProcess, World, build_world, read_store, run_cli
from gateway.v1 import object_pb2
from tests.conftest import HOST_A, HOST_B

pytestmark = pytest.mark.slow

OBJECT = "obj://org-a.example/bounds/thing"
FAST = {"retry_attempts": 1, "rpc_timeout_seconds": 5}
MAX = limits.MAX_COUNTER


def all_keys(config: Path) -> list[str]:
    async def read(store: StateStore) -> list[str]:
        return await store.list("")

    return read_store(config, read)


def settled_keys(config: Path, expected: list[str], *, seconds: float) -> list[str]:
    """The host's keys once they equal ``expected``, or as they are after ``seconds``."""
    deadline = time.monotonic() + seconds
    keys = all_keys(config)
    while keys != expected and time.monotonic() < deadline:
        time.sleep(0.2)
        keys = all_keys(config)
    return keys


def two_hosts(tmp_path: Path) -> World:
    return build_world(
        tmp_path, [HostSpec(host_id=HOST_A, handoff=FAST), HostSpec(host_id=HOST_B, handoff=FAST)]
    )


async def as_peer(world: World, act: Callable[[Host], object]) -> None:
    """Run ``act`` as host A (opened with its real keys, not served)."""
    host = await Host.open(load_config(world.config(HOST_A)))
    try:
        result = act(host)
        if asyncio.iscoroutine(result):
            await result
    finally:
        await host.close()


def base_object(host: Host, **cycle: object) -> GovernedObject:
    return new_object(
        OBJECT,
        tenant="default",
        data=b'{"n": 1}',
        content_type="application/json",
        host=host.host_id,
        at=host.clock.now(),
        cycle=CycleState(interval=timedelta(seconds=1), **cycle),  # type: ignore[arg-type]
    )


def at_epoch(host: Host, epoch: int) -> GovernedObject:
    """An object whose whole history is at ``epoch`` (so its lineage is consistent and
    freezing it sends ``epoch + 1``)."""
    fresh = dataclasses.replace(base_object(host), epoch=epoch, lineage=Lineage())
    return fresh.record(EntryKind.CREATED, host=host.host_id, at=host.clock.now())


def sealed(
    host: Host,
    obj: GovernedObject,
    *,
    payload_type: str = dsse.PayloadType.TRANSFER,
    mutate: Callable[[object_pb2.Transfer], None] | None = None,
) -> bytes:
    """A's real transfer of ``obj`` to B (frozen and sealed in memory, nothing written),
    optionally rewritten at the protobuf level and re-signed with A's key."""
    mid = f"mig-{uuid.uuid4().hex}"
    _frozen, raw, _digest, _epoch = host.source._seal(
        obj, HOST_B, mid, payload_type, host.clock.now()
    )
    if mutate is None:
        return raw
    message = object_pb2.Transfer()
    message.ParseFromString(wire.decode_envelope(raw).payload)
    mutate(message)
    payload = message.SerializeToString(deterministic=True)
    return wire.encode_envelope(host.context.seal(payload, payload_type))


def _far_expiry(message: object_pb2.Transfer) -> None:
    message.expires_at.FromDatetime(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC))


def _huge_interval(message: object_pb2.Transfer) -> None:
    message.object.cycle.interval_ms = 2**63


# (case id, how the object is made to sit at a limit, what the refusal names)
AT_LIMIT: list[tuple[str, Callable[[Host], bytes], str]] = [
    (
        "epoch-at-2^64-1",
        lambda h: sealed(h, at_epoch(h, MAX - 1)),
        "epoch",
    ),
    (
        "generation-at-2^64-1",
        lambda h: sealed(
            h,
            dataclasses.replace(
                base_object(h), cycle=CycleState(generation=MAX, interval=timedelta(seconds=1))
            ),
        ),
        "generation",
    ),
    (
        "next-due-in-year-9999",
        lambda h: sealed(
            h,
            dataclasses.replace(
                base_object(h),
                cycle=CycleState(
                    interval=timedelta(days=300),
                    next_due=datetime(9999, 12, 31, 23, 0, tzinfo=UTC),
                ),
            ),
        ),
        "next due time",
    ),
    ("interval-2^63-ms", lambda h: sealed(h, base_object(h), mutate=_huge_interval), "interval"),
    ("expiry-in-year-9999", lambda h: sealed(h, base_object(h), mutate=_far_expiry), "expiry"),
]


def test_objects_at_their_counter_and_time_limits_are_refused_on_arrival(tmp_path: Path) -> None:
    world = two_hosts(tmp_path)
    config_b = world.config(HOST_B)
    before = all_keys(config_b)
    refusals: dict[str, GatewayError] = {}
    evaluations: dict[str, str] = {}

    async def attack(host: Host) -> None:
        client = host.peers.client(HOST_B)
        for case, make, _named in AT_LIMIT:
            try:
                await client.prepare(make(host))
            except GatewayError as exc:
                refusals[case] = exc
        # The dry run refuses the same objects, as data, with the same reason.
        proposal = sealed(
            host,
            at_epoch(host, MAX - 1),
            payload_type=dsse.PayloadType.PROPOSAL,
        )
        evaluation = await client.evaluate(proposal)
        evaluations["epoch"] = "" if evaluation.admitted else evaluation.refusal

    with ServerProcess(config_b):
        asyncio.run(as_peer(world, attack))

    for case, _make, named in AT_LIMIT:
        assert isinstance(refusals.get(case), LimitExceededError), (case, refusals.get(case))
        assert named in refusals[case].reason, (case, refusals[case].reason)
        assert refusals[case].hint, case
    assert "LimitExceededError" in evaluations["epoch"] and "epoch" in evaluations["epoch"]
    assert all_keys(config_b) == before  # nothing staged, no fence, no nonce, no journal


def test_inline_data_above_its_limit_is_refused_before_anything_is_staged(
    tmp_path: Path,
) -> None:
    """5 MiB inline (the envelope allows 16 MiB) used to be staged as it came."""
    world = two_hosts(tmp_path)
    config_b = world.config(HOST_B)
    before = all_keys(config_b)
    refused: list[GatewayError] = []

    async def attack(host: Host) -> None:
        obj = dataclasses.replace(
            base_object(host), data=os.urandom(5 << 20), content_type="application/octet-stream"
        )
        try:
            await host.peers.client(HOST_B).prepare(sealed(host, obj))
        except GatewayError as exc:
            refused.append(exc)

    with ServerProcess(config_b):
        asyncio.run(as_peer(world, attack))
    assert len(refused) == 1 and isinstance(refused[0], EnvelopeTooLargeError), refused
    assert str(limits.MAX_DATA_BYTES) in refused[0].reason
    assert all_keys(config_b) == before


def test_abort_and_decision_about_unknown_migrations_write_nothing(tmp_path: Path) -> None:
    world = two_hosts(tmp_path)
    config_b = world.config(HOST_B)
    before = all_keys(config_b)
    answers: list[bytes] = []
    oversized: list[GatewayError] = []

    async def attack(host: Host) -> None:
        client = host.peers.client(HOST_B)
        for _ in range(200):
            await client.abort(f"mig-{uuid.uuid4().hex}", "made up")
            answers.append(await client.decision(f"mig-{uuid.uuid4().hex}"))
        # Sizes are checked before any work: an id or reason beyond its limit is refused.
        for call in (
            lambda: client.abort("m" * (limits.MAX_MIGRATION_ID_CHARS + 1), "x"),
            lambda: client.abort("mig-1", "x" * (limits.MAX_REASON_CHARS + 1)),
            lambda: client.decision("m" * 100_000),
            lambda: client.commit("../../fence/x"),
        ):
            try:
                await call()
            except GatewayError as exc:
                oversized.append(exc)

    with ServerProcess(config_b):
        asyncio.run(as_peer(world, attack))
    assert len(answers) == 200 and all(answers)  # presumed abort: signed answers, no records
    assert [type(e) for e in oversized] == [
        EnvelopeTooLargeError,
        EnvelopeTooLargeError,
        EnvelopeTooLargeError,
        LimitExceededError,
    ]
    assert all_keys(config_b) == before


SIZE = 3 << 20
PAYLOAD = os.urandom(SIZE)


async def pieces(data: bytes, size: int = 256 << 10) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def vanishes(data: bytes) -> AsyncIterator[bytes]:
    yield data[: 2 << 20]
    await asyncio.sleep(0.3)  # the chunks reach B's store
    raise ConnectionError("the peer vanished mid-stream")


def test_an_upload_refused_mid_stream_leaves_no_marker_and_no_chunks(tmp_path: Path) -> None:
    world = two_hosts(tmp_path)
    config_b = world.config(HOST_B)
    before = all_keys(config_b)
    outcomes: dict[str, BaseException] = {}
    streams: dict[str, Callable[[], AsyncIterator[bytes]]] = {
        "digest-mismatch": lambda: pieces(bytes([PAYLOAD[0] ^ 1]) + PAYLOAD[1:]),
        "too-long": lambda: pieces(PAYLOAD + b"more"),
        "truncated": lambda: pieces(PAYLOAD[:-1]),
        "peer-disconnects": lambda: vanishes(PAYLOAD),
    }

    async def attack(host: Host) -> None:
        obj = await host.create_object(
            OBJECT,
            tenant="default",
            data=b"",
            content_type="application/octet-stream",
            data_stream=pieces(PAYLOAD),
        )
        client = host.peers.client(HOST_B)
        for case, stream in streams.items():
            try:
                await client.prepare_stream(sealed(host, obj), stream, size=SIZE)
            except (GatewayError, ConnectionError, asyncio.CancelledError) as exc:
                # A request stream that fails cancels the call on the client side.
                outcomes[case] = exc

    with ServerProcess(config_b):
        asyncio.run(as_peer(world, attack))
        # B cleans up a cancelled call on its own time (removing the marker and the
        # blob file it had begun): wait for it, on a loaded machine too, but not forever.
        after = settled_keys(config_b, before, seconds=30.0)
    assert set(outcomes) == set(streams)
    for case in ("digest-mismatch", "too-long", "truncated"):
        assert isinstance(outcomes[case], TransferStreamError), (case, outcomes[case])
    assert [k for k in after if k.startswith(("upload-open/", "upload/"))] == []
    assert after == before


def test_open_uploads_per_peer_are_bounded(tmp_path: Path) -> None:
    """Markers left behind (by crashes) count against their peer: beyond the bound, a new
    upload is refused before anything is written.

    B refuses at the stream's first message while A is still writing, the race in which
    grpc.aio can replace B's status with its own INTERNAL (grpc/grpc#36066, fixed in no
    release yet): seen once in a CI-like run with one attempt. A sending client repeats a
    PrepareStream whose status was lost (gateway/transport/client.py), so A gets the
    attempts a configured host has: each is refused alike and writes nothing."""
    world = build_world(
        tmp_path,
        [
            HostSpec(host_id=HOST_A, handoff={**FAST, "retry_attempts": 4}),
            HostSpec(host_id=HOST_B, handoff=FAST),
        ],
    )
    config_b = world.config(HOST_B)
    from gateway.handoff.destination import _peer_tag

    # Not expired yet (recovery collects only markers whose transfer expired).
    expiry = encode_counter(to_millis(datetime.now(UTC) + timedelta(hours=1)))

    async def leave_markers(store: StateStore) -> None:
        for n in range(limits.MAX_OPEN_UPLOADS_PER_PEER):
            await store.put(
                f"upload-open/{_peer_tag(HOST_A)}/mig-{n}/x", expiry, etag=Expect.ABSENT
            )

    read_store(config_b, leave_markers)
    before = all_keys(config_b)
    refused: list[GatewayError] = []

    async def attack(host: Host) -> None:
        obj = await host.create_object(
            OBJECT,
            tenant="default",
            data=b"",
            content_type="application/octet-stream",
            data_stream=pieces(PAYLOAD),
        )
        try:
            await host.peers.client(HOST_B).prepare_stream(
                sealed(host, obj), lambda: pieces(PAYLOAD), size=SIZE
            )
        except GatewayError as exc:
            refused.append(exc)

    with ServerProcess(config_b):
        asyncio.run(as_peer(world, attack))
    assert len(refused) == 1 and isinstance(refused[0], TransferStreamError), refused
    assert "uploads open" in refused[0].reason
    assert [k for k in all_keys(config_b) if k.startswith("upload/")] == []
    assert len([k for k in before if k.startswith("upload-open/")]) == 4


# --- the scheduler isolates a failing object ---------------------------------------------

HEALTHY = "obj://org-a.example/bounds/healthy"
FAILING = "obj://org-a.example/bounds/failing"


def test_an_object_that_fails_every_cycle_is_quarantined_after_bounded_attempts(
    tmp_path: Path,
) -> None:
    world = build_world(tmp_path, [HostSpec(host_id=HOST_A)])
    config = world.config(HOST_A)

    async def seed() -> None:
        host = await Host.open(load_config(config))
        try:
            cycle = CycleState(interval=timedelta(milliseconds=200))
            await host.create_object(
                HEALTHY, tenant="default", data=b"{}", content_type="application/json", cycle=cycle
            )
            created = await host.create_object(
                FAILING, tenant="default", data=b"{}", content_type="application/json", cycle=cycle
            )
            # As stored by a version without the limits: its generation cannot advance, so
            # every cycle of it fails.
            stuck = dataclasses.replace(created, cycle=dataclasses.replace(cycle, generation=MAX))
            loaded = await host.journal.object("default", FAILING)
            assert loaded is not None
            await host.store.transact([put_object("default", stuck, loaded.etag)])
        finally:
            await host.close()

    asyncio.run(seed())

    def quarantine_and_healthy(store: StateStore) -> object:
        async def read() -> tuple[object, int]:
            record = await load_quarantine(store, "default", FAILING)
            healthy = await Journal(store).object("default", HEALTHY)
            assert healthy is not None
            return record, healthy.value.generation

        return read()

    server = ServerProcess(config)
    with server:
        deadline = time.monotonic() + 25
        record = None
        while time.monotonic() < deadline:
            record, _ = read_store(config, quarantine_and_healthy)  # type: ignore[misc]
            if record is not None:
                break
            time.sleep(0.5)
        assert record is not None, "the failing object was never quarantined"
        _, healthy_then = read_store(config, quarantine_and_healthy)  # type: ignore[misc]
        time.sleep(3)  # well past the next backoff: a quarantined object is not tried again
        _, healthy_later = read_store(config, quarantine_and_healthy)  # type: ignore[misc]
        shown = run_cli("object", "show", FAILING, config=config)
    log = server.log_path.read_text()
    attempts = re.findall(rf"cycle of {re.escape(FAILING)} failed", log)
    assert record.attempts == limits.CYCLE_FAILURES_BEFORE_QUARANTINE  # type: ignore[attr-defined]
    assert len(attempts) == limits.CYCLE_FAILURES_BEFORE_QUARANTINE, log[-3000:]
    assert "generation" in record.reason  # type: ignore[attr-defined]
    assert healthy_later > healthy_then > 0  # the healthy object kept cycling meanwhile
    assert shown.returncode == 0, shown.stderr
    assert "QUARANTINED" in shown.stdout and "gateway object release" in shown.stdout

    async def events(store: StateStore) -> list[str]:
        return [e.verb for e in await list_events(store, tenant="default")]

    assert read_store(config, events).count("object.quarantined") == 1
    released = run_cli("object", "release", FAILING, config=config)
    assert released.returncode == 0 and "released" in released.stdout, released.stderr
    assert read_store(config, lambda s: load_quarantine(s, "default", FAILING)) is None
