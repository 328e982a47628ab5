"""Session 37's shortcuts on the source's path (issue 13, P2) give exactly what the plain
path gives. Seeded: every run checks the same cases.

* The peer client writes Prepare's and Commit's request bytes itself
  (:func:`~gateway.transport.framing.encode_field_one`): the bytes the generated messages
  serialize to, for every length around the varint steps and for any text.
* It hands grpc.aio the capabilities as one ``Metadata`` made per value of
  ``CAPABILITIES``: the pairs grpc.aio makes of the tuple itself, swapped with it.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import grpc
import pytest

from gateway.config import HandoffConfig, PeerConfig
from gateway.identity import HostId
from gateway.transport import client as client_module
from gateway.transport.client import GrpcPeerClient
from gateway.transport.framing import encode_field_one
from gateway.v1 import gateway_pb2

SEED = 37
PEER = "spiffe://org-b.example/cluster/west/gateway"
#: Lengths where the varint of a length changes size, and their neighbours.
EDGES = (0, 1, 2, 126, 127, 128, 129, 255, 256, 16382, 16383, 16384, 16385, 70_000)


def _lengths(rng: random.Random) -> list[int]:
    return [*EDGES, *(rng.randrange(0, 20_000) for _ in range(40))]


def test_field_one_is_what_prepare_request_serializes_to() -> None:
    rng = random.Random(SEED)
    for length in _lengths(rng):
        transfer = rng.randbytes(length)
        want = gateway_pb2.PrepareRequest(transfer=transfer).SerializeToString()
        assert encode_field_one(transfer) == want, length
        assert gateway_pb2.PrepareRequest.FromString(want).transfer == transfer


def test_field_one_is_what_commit_request_serializes_to() -> None:
    rng = random.Random(SEED)
    alphabet = "abcdef0123456789-é漢\U0001f600"
    for length in _lengths(rng)[:30]:
        text = "".join(rng.choice(alphabet) for _ in range(length))
        want = gateway_pb2.CommitRequest(migration_id=text).SerializeToString()
        assert encode_field_one(text.encode("utf-8")) == want, length


def _client() -> GrpcPeerClient:
    peer = PeerConfig(id=HostId.parse(PEER), address="127.0.0.1:9", server_name="localhost")
    return GrpcPeerClient(
        peer, credentials=grpc.ssl_channel_credentials(), timing=HandoffConfig(retry_attempts=1)
    )


class Recorder:
    """A unary multicallable that records what it was called with and answers ``answer``."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.calls: list[tuple[Any, dict[str, Any]]] = []

    def __call__(self, request: Any, **kwargs: Any) -> Any:
        self.calls.append((request, kwargs))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(self.answer)
        return future


def test_prepare_and_commit_send_the_messages_bytes_with_the_capabilities() -> None:
    """What reaches gRPC is the serialized request the stub would have sent (the stub's
    serializer applied to its message), with the same metadata pairs and deadline."""

    async def run() -> None:
        client = _client()
        try:
            prepared = Recorder(gateway_pb2.PrepareResponse(receipt=b"staged"))
            committed = Recorder(gateway_pb2.CommitResponse(receipt=b"live"))
            client._prepare, client._commit = prepared, committed  # type: ignore[assignment]
            assert await client.prepare(b"\x01" * 300) == b"staged"
            assert await client.commit("mig-é1") == b"live"
        finally:
            await client.close()
        for recorder, message in (
            (prepared, gateway_pb2.PrepareRequest(transfer=b"\x01" * 300)),
            (committed, gateway_pb2.CommitRequest(migration_id="mig-é1")),
        ):
            [(request, kwargs)] = recorder.calls
            assert request == message.SerializeToString()
            assert tuple(kwargs["metadata"]) == client_module.CAPABILITIES
            assert kwargs["timeout"] == HandoffConfig().rpc_timeout.total_seconds()

    asyncio.run(run())


def test_sent_metadata_is_the_capabilities_and_follows_a_swap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent = client_module._SentMetadata()
    first = sent.get()
    assert first == grpc.aio.Metadata(*client_module.CAPABILITIES)
    assert tuple(first) == client_module.CAPABILITIES
    assert sent.get() is first  # made once per value
    other = (("gateway-protocol", "2"),)
    monkeypatch.setattr(client_module, "CAPABILITIES", other)
    assert tuple(sent.get()) == other
