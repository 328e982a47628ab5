"""The peer client's retries: the first attempt is a plain call (no tenacity state), and
the whole policy is still what the module docstring promises -- only UNAVAILABLE-like
statuses are repeated, at most ``retry_attempts`` calls in all, a refusal is final and
comes back as the peer's error type, and running out is a PeerUnavailableError."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from gateway.config import HandoffConfig, PeerConfig
from gateway.errors import GatewayError, PeerUnavailableError, RollbackError
from gateway.identity import HostId
from gateway.transport import client as client_module
from gateway.transport.client import GrpcPeerClient
from gateway.transport.status import ERROR_TYPE_KEY

PEER = "spiffe://org-b.example/cluster/west/gateway"


def error(code: grpc.StatusCode, *, type_name: str | None = None) -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata(*(((ERROR_TYPE_KEY, type_name),) if type_name else ()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details="scripted")


class Script:
    """An RPC whose attempts fail as scripted, then answer ``"ok"``."""

    def __init__(self, failures: list[grpc.aio.AioRpcError]) -> None:
        self.failures = list(failures)
        self.calls = 0

    async def __call__(self, deadline: float) -> Any:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits between attempts, recorded instead of slept."""
    waited: list[float] = []

    async def sleep(seconds: float, *_args: Any) -> None:
        waited.append(seconds)

    monkeypatch.setattr(client_module.asyncio, "sleep", sleep)
    return waited


async def attempts(script: Script, *, retry_attempts: int, rpc: str = "Prepare") -> Any:
    peer = PeerConfig(id=HostId.parse(PEER), address="127.0.0.1:9", server_name="localhost")
    client = GrpcPeerClient(
        peer,
        credentials=grpc.ssl_channel_credentials(),
        timing=HandoffConfig(retry_attempts=retry_attempts),
    )
    try:
        return await client._attempts(rpc, script, deadline=1.0)
    finally:
        await client.close()


def test_an_answer_at_the_first_attempt_is_one_call(sleeps: list[float]) -> None:
    script = Script([])
    assert asyncio.run(attempts(script, retry_attempts=5)) == "ok"
    assert script.calls == 1
    assert sleeps == []


def test_unavailable_is_repeated_with_growing_waits(sleeps: list[float]) -> None:
    script = Script([error(grpc.StatusCode.UNAVAILABLE)] * 3)
    assert asyncio.run(attempts(script, retry_attempts=5)) == "ok"
    assert script.calls == 4
    assert len(sleeps) == 3
    # 0.05, 0.1, 0.2 s, each plus up to 0.05 s of jitter: the same as one tenacity loop.
    for waited, base in zip(sleeps, (0.05, 0.1, 0.2), strict=True):
        assert base <= waited <= base + 0.05


@pytest.mark.parametrize("retry_attempts", [1, 2, 4])
def test_running_out_is_peer_unavailable_after_exactly_the_attempts(
    sleeps: list[float], retry_attempts: int
) -> None:
    script = Script([error(grpc.StatusCode.DEADLINE_EXCEEDED)] * 10)
    with pytest.raises(PeerUnavailableError, match=f"after {retry_attempts} attempts"):
        asyncio.run(attempts(script, retry_attempts=retry_attempts))
    assert script.calls == retry_attempts
    assert len(sleeps) == retry_attempts - 1


@pytest.mark.parametrize("first", [True, False])
def test_a_refusal_is_final_and_keeps_its_type(sleeps: list[float], first: bool) -> None:
    refusal = error(grpc.StatusCode.FAILED_PRECONDITION, type_name="RollbackError")
    failures = [refusal] if first else [error(grpc.StatusCode.UNAVAILABLE), refusal]
    script = Script(failures)
    with pytest.raises(RollbackError):
        asyncio.run(attempts(script, retry_attempts=5))
    assert script.calls == len(failures)


def lost_status() -> grpc.aio.AioRpcError:
    """What grpc.aio reports when a peer ended a client stream early and a write of ours
    raced its status (grpc/grpc#36066)."""
    return grpc.aio.AioRpcError(
        grpc.StatusCode.INTERNAL,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details="Internal error from Core",
    )


def test_a_stream_status_lost_by_grpc_is_asked_again(sleeps: list[float]) -> None:
    """The peer's real answer comes with the repeat (here: the call then succeeds)."""
    script = Script([lost_status()])
    assert asyncio.run(attempts(script, retry_attempts=3, rpc="PrepareStream")) == "ok"
    assert script.calls == 2


def test_a_stream_status_lost_every_time_says_so(sleeps: list[float]) -> None:
    script = Script([lost_status()] * 3)
    with pytest.raises(PeerUnavailableError, match="grpc/grpc#36066") as raised:
        asyncio.run(attempts(script, retry_attempts=3, rpc="PrepareStream"))
    assert script.calls == 3
    assert "peer's log" in (raised.value.hint or "")


def test_the_same_status_on_a_unary_call_is_a_refusal(sleeps: list[float]) -> None:
    """Only client-streaming calls have the race; elsewhere INTERNAL is the peer's."""
    script = Script([lost_status()])
    with pytest.raises(GatewayError) as raised:
        asyncio.run(attempts(script, retry_attempts=3))
    assert not isinstance(raised.value, PeerUnavailableError)
    assert script.calls == 1
