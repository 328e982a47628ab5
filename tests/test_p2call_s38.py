"""Session 38: the per-call machinery of a migration (issue 13, P2), cut where it did work
nobody needed, with what each side does unchanged.

* The server registers no methods with gRPC: every service (the gateway's, health,
  reflection) is served through its generic handler. grpc.aio's accept loop keeps one
  future per registered method and waits on all of them (``asyncio.wait``) for every
  call that arrives; the calls are answered as before.
* A destination's caller waiting for its stage behind the tenant's writer awaits the
  stage's own future, not a shield of it (a future and two loop turns less per stage on
  a busy host): a caller cancelled meanwhile still leaves its stage to the writer, which
  writes it, and the stages beside it are answered as before.
* The server's gate counts a peer's handoff bytes in flight with a small context manager
  class, not a generator-based one: the same counts, refusals and releases as the
  generator it replaces (kept here as the reference) on seeded sequences.
* Two empty requests of one peer in flight at once no longer leave the gate with a
  ``KeyError`` (the second to finish found its peer's entry gone): an empty request
  holds nothing.
* A destination names a peer's ``staged-by/`` and upload keys by a tag of the peer's id
  hashed once per peer, not three times per migration: the same tag for every id.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.errors import PeerUnavailableError
from gateway.handoff import destination as destination_module
from gateway.handoff.records import DestinationStep
from gateway.host import Host
from gateway.lineage import digest
from gateway.observability.health import Readiness
from gateway.testing import HostSpec, build_world, sealed_transfer, serving, sign_transfer
from gateway.transport.server import PEER_IN_FLIGHT_BYTES, Gate, GatewayService, start_server
from gateway.transport.status import ERROR_TYPE_KEY
from gateway.v1 import gateway_pb2, gateway_pb2_grpc
from tests.conftest import HOST_A, HOST_B

TENANT = "default"


def test_the_server_registers_no_methods_and_still_answers_each_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registered: list[str] = []
    original = grpc.aio._server.Server.add_registered_method_handlers

    def recording(self: Any, service: str, handlers: dict[str, Any]) -> None:
        registered.append(service)
        original(self, service, handlers)

    monkeypatch.setattr(grpc.aio._server.Server, "add_registered_method_handlers", recording)

    async def scenario() -> None:
        service = GatewayService(source=None, destination=None, authorities={})  # type: ignore[arg-type]
        server, port = await start_server(
            service,
            listen="127.0.0.1:0",
            credentials=grpc.local_server_credentials(grpc.LocalConnectionType.LOCAL_TCP),
            readiness=Readiness(),
        )
        try:
            async with grpc.aio.secure_channel(
                f"127.0.0.1:{port}",
                grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP),
            ) as channel:
                # Health, served through its generic handler: NOT_SERVING until ready.
                answer = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service="")
                )
                assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
                # The gateway's own handler answers (here: no client certificate).
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await gateway_pb2_grpc.GatewayStub(channel).Commit(
                        gateway_pb2.CommitRequest(migration_id="mig-1")
                    )
                trailers = dict(refused.value.trailing_metadata() or ())
                assert trailers.get(ERROR_TYPE_KEY) == "PeerMismatchError"
                # Reflection, served by its asyncio servicer.
                from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

                stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")])
                )
                names = [s.name async for r in stream for s in r.list_services_response.service]
                assert "gateway.v1.Gateway" in names
                # A method nobody serves is still unimplemented.
                unknown = channel.unary_unary("/gateway.v1.Gateway/Nothing")
                with pytest.raises(grpc.aio.AioRpcError) as missing:
                    await unknown(b"")
                assert missing.value.code() is grpc.StatusCode.UNIMPLEMENTED
        finally:
            await server.stop(None)

    asyncio.run(scenario())
    assert registered == []


async def _transfers(a: Host, count: int) -> list[bytes]:
    """``count`` signed transfers from ``a`` to B, of objects created on ``a``."""
    raws = []
    for index in range(count):
        object_id = f"obj://org-a.example/s38/{index}"
        await a.create_object(
            object_id, tenant=TENANT, data=b'{"n": %d}' % index, content_type="application/json"
        )
        loaded = await a.journal.object(TENANT, object_id)
        assert loaded is not None
        raws.append(sign_transfer(a, sealed_transfer(a, loaded.value, HOST_B)))
    return raws


def test_a_cancelled_caller_leaves_its_queued_stage_to_the_writer(tmp_path: Path) -> None:
    """Three Prepares at once: the first is written by its own call, holding the tenant's
    lock; the other two queue for the tenant's writer. The third's caller is cancelled
    while it waits: it sees the cancellation, its stage is written all the same (as a
    cancelled transaction may still commit), the second is answered as if nothing
    happened, and the third sent again gets the receipt its stage was written with."""
    world = build_world(tmp_path, [HostSpec(host_id=HOST_A), HostSpec(host_id=HOST_B)])

    async def main() -> None:
        async with serving(world) as hosts:
            a, b = hosts[HOST_A], hosts[HOST_B]
            raws = await _transfers(a, 3)
            destination = b.destination
            calls = [asyncio.create_task(destination.prepare(raw, peer=HOST_A)) for raw in raws]
            for _turn in range(10_000):  # until both later stages wait for the writer
                if len(destination._stages.get(TENANT, ())) == 2:
                    break
                await asyncio.sleep(0)
            assert len(destination._stages[TENANT]) == 2
            writer = destination._stage_writers[TENANT]
            calls[2].cancel()
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            assert isinstance(outcomes[0], bytes) and isinstance(outcomes[1], bytes)
            assert isinstance(outcomes[2], asyncio.CancelledError)
            await asyncio.wait([writer])
            assert writer.exception() is None  # the batch was answered without a hitch
            staged = [await b.journal.destination(_migration_of(b, raw)) for raw in raws]
            assert [s.value.step if s else None for s in staged] == [DestinationStep.STAGED] * 3
            assert staged[1] is not None and staged[1].value.staged_receipt == outcomes[1]
            assert staged[2] is not None
            again = await destination.prepare(raws[2], peer=HOST_A)
            assert again == staged[2].value.staged_receipt
            assert (await b.journal.usage(TENANT)).value.objects == 3
            assert destination._handling == 0

    asyncio.run(main())


def _migration_of(host: Host, raw: bytes) -> str:
    from gateway import wire

    return wire.ParsedTransfer(wire.decode_envelope(raw).payload).migration_id


def test_a_peer_tag_is_the_digest_of_its_id_however_often_asked() -> None:
    rng = random.Random(38)
    alphabet = "abcxyz0123-./:é漢\U0001f600"
    peers = [HOST_A, HOST_B, ""] + [
        "spiffe://" + "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 60)))
        for _ in range(3 * destination_module.PEER_TAGS_REMEMBERED)
    ]
    for _round in range(2):  # each asked again after many others (some forgotten)
        for peer in [*peers, *rng.sample(peers, 100)]:
            assert destination_module._peer_tag(peer) == digest(peer.encode()).hex()[:16]
    assert destination_module._peer_tag.cache_info().maxsize == (
        destination_module.PEER_TAGS_REMEMBERED
    )


class _ReferenceGate(Gate):
    """The gate with ``holding`` as it was written before (a generator)."""

    @contextlib.contextmanager
    def holding(self, peer: str, size: int, host: str) -> Iterator[None]:  # type: ignore[override]
        held = self.held.get(peer, 0)
        if held and held + size > PEER_IN_FLIGHT_BYTES:
            raise PeerUnavailableError(
                f"{host} holds {held} bytes of handoffs from {peer} in flight; a peer may "
                f"have at most {PEER_IN_FLIGHT_BYTES} at once",
                hint="the sender retries once those are answered",
            )
        self.held[peer] = held + size
        try:
            yield
        finally:
            left = self.held[peer] - size
            if left:
                self.held[peer] = left
            else:
                del self.held[peer]


class _Failed(Exception):
    pass


def _run_holds(gate: Gate, rng: random.Random, depth: int, trace: list[object]) -> None:
    """Nested holds of random peers and sizes, some failing inside; every step's
    outcome and the gate's counts go into ``trace``."""
    peer = rng.choice(("p1", "p2", "p3"))
    size = rng.choice((1, 4458, PEER_IN_FLIGHT_BYTES // 2, PEER_IN_FLIGHT_BYTES, 3 << 20))
    try:
        with gate.holding(peer, size, "host-b"):
            trace.append(("in", peer, size, dict(gate.held)))
            for _ in range(rng.randrange(0, 3) if depth < 4 else 0):
                _run_holds(gate, rng, depth + 1, trace)
            if rng.random() < 0.2:
                raise _Failed
    except PeerUnavailableError as exc:
        trace.append(("refused", peer, size, str(exc), exc.hint, dict(gate.held)))
    except _Failed:
        trace.append(("failed", peer, size))
    trace.append(("out", dict(gate.held)))


def test_the_gate_holds_and_refuses_as_its_generator_did() -> None:
    for seed in range(300):
        traces = []
        for gate in (_ReferenceGate(), Gate()):
            trace: list[object] = []
            _run_holds(gate, random.Random(seed), 0, trace)
            assert gate.held == {}
            traces.append(trace)
        assert traces[0] == traces[1], seed


def test_overlapping_empty_requests_of_one_peer_hold_nothing() -> None:
    """Two empty Prepares from one peer in flight at once (a misbehaving peer can send
    them): the second to finish raised KeyError in the gate (an INTERNAL answer and a
    logged traceback instead of the request's refusal). An empty request holds nothing."""
    gate = Gate()
    with gate.holding("p1", 0, "host-b"):
        with gate.holding("p1", 0, "host-b"):
            assert gate.held == {}
        with gate.holding("p1", 10, "host-b"):
            assert gate.held == {"p1": 10}
        assert gate.held == {}
    assert gate.held == {}
