"""One peer's handoff requests in flight are bounded in bytes (a real server, real mTLS).

A transfer or a proposal (up to 16 MiB) is held whole while it is verified and staged,
with its parse and copies. Nothing bounded how many one authenticated peer could have
in flight at once: its concurrent calls decided how much memory the receiver used (the
session 31 review). Now the gate counts each peer's request bytes in flight and answers
UNAVAILABLE past ``PEER_IN_FLIGHT_BYTES`` (the sender's client retries with backoff); a
request is always let in when its peer has nothing else in flight, and small objects
pass by the hundred.

B's ``prepare`` is held open here (it waits on an event), so that the calls overlap.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway.testing import HostSpec, build_world
from gateway.testing.harness import InProcessWorld
from gateway.transport import server
from gateway.v1 import gateway_pb2
from tests.conftest import HOST_A, HOST_B

BIG = 12 << 20  #: bytes of each large request: 5 fit in 64 MiB, the 6th does not
SMALL = 100 << 10


@pytest.fixture
def world(tmp_path: Path) -> Any:
    built = build_world(tmp_path, [HostSpec(host_id=HOST_A), HostSpec(host_id=HOST_B)])
    running = InProcessWorld(built)
    try:
        yield running
    finally:
        running.close()


def _hold_prepares(world: InProcessWorld, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list[int]]:
    """B's prepare waits for the returned event; the list records B's peak held bytes."""
    host_b = world.hosts[HOST_B]
    gate = host_b.service.gate
    release = asyncio.Event()
    peaks: list[int] = []

    async def held(transfer: bytes, *, peer: str) -> bytes:
        peaks.append(getattr(gate, "held", {}).get(peer, 0))
        await release.wait()
        return b"receipt"

    monkeypatch.setattr(host_b.destination, "prepare", held)
    return release, peaks


async def _send(
    world: InProcessWorld, sizes: list[int], release: asyncio.Event, peaks: list[int]
) -> list[Any]:
    stub = world.hosts[HOST_A].peers.client(HOST_B).real.stub  # past the fault injector

    async def one(size: int) -> Any:
        try:
            return await stub.Prepare(gateway_pb2.PrepareRequest(transfer=b"x" * size))
        except grpc.aio.AioRpcError as exc:
            return exc.code()

    calls = [asyncio.create_task(one(size)) for size in sizes]
    # Until every call reached B: refused (finished) or admitted (waiting in prepare).
    for _ in range(800):  # a bound, not a timing assertion
        await asyncio.sleep(0.025)
        if sum(task.done() for task in calls) + len(peaks) >= len(sizes):
            break
    release.set()
    return await asyncio.gather(*calls)


def test_a_peers_requests_in_flight_are_bounded_in_bytes(
    world: InProcessWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    release, peaks = _hold_prepares(world, monkeypatch)
    answers = world.run(_send(world, [BIG] * 8, release, peaks))
    admitted = [a for a in answers if isinstance(a, gateway_pb2.PrepareResponse)]
    refused = [a for a in answers if a == grpc.StatusCode.UNAVAILABLE]
    assert (len(admitted), len(refused)) == (5, 3), answers
    assert max(peaks) <= server.PEER_IN_FLIGHT_BYTES
    assert world.hosts[HOST_B].service.gate.held == {}  # all given back


def test_one_request_is_let_in_whatever_its_size_and_small_ones_by_the_hundred(
    world: InProcessWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "PEER_IN_FLIGHT_BYTES", 1 << 20)
    release, peaks = _hold_prepares(world, monkeypatch)
    answers = world.run(_send(world, [2 << 20], release, peaks))
    assert isinstance(answers[0], gateway_pb2.PrepareResponse), answers

    monkeypatch.setattr(server, "PEER_IN_FLIGHT_BYTES", 64 << 20)
    release, peaks = _hold_prepares(world, monkeypatch)
    answers = world.run(_send(world, [SMALL] * 64, release, peaks))
    assert all(isinstance(a, gateway_pb2.PrepareResponse) for a in answers), answers


def test_an_oversized_answer_to_prepare_is_refused_before_its_signature_and_aborts(
    world: InProcessWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A destination's signed answers (receipts, decisions) hold a few ids and a
    signature: one over ``MAX_RECEIPT_BYTES`` is refused before anything hashes it, and
    the migration aborts with the object live where it was."""
    from gateway import envelope as dsse
    from gateway import wire
    from gateway.errors import EnvelopeTooLargeError
    from gateway.model import LifecycleState

    object_id = "obj://org-a.example/bounds/answer"
    world.create(HOST_A, object_id)

    async def real_client() -> Any:  # made on the world's loop (it opens a channel)
        return world.hosts[HOST_A].peers.client(HOST_B).real

    client = world.run(real_client())
    real_prepare = client.prepare
    signed: list[int] = []

    async def oversized(transfer: bytes) -> bytes:
        receipt = await real_prepare(transfer)
        envelope = wire.decode_envelope(receipt)
        signed.append(len(receipt))
        padded = dsse.Envelope(
            payload=envelope.payload + b" " * wire.MAX_RECEIPT_BYTES,
            payload_type=envelope.payload_type,
            signatures=envelope.signatures,
        )
        return wire.encode_envelope(padded)

    monkeypatch.setattr(client, "prepare", oversized)
    with pytest.raises(EnvelopeTooLargeError, match="at most 65536"):
        world.migrate(object_id, source=HOST_A, to=HOST_B)
    assert signed and signed[0] < 4096  # an honest receipt is small
    assert world.wait_settled(object_id) == HOST_A
    assert world.placement(object_id)[HOST_A].state is LifecycleState.ACTIVE
