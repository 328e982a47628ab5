"""Session 38: the per-call machinery of a migration (issue 13, P2), cut where it did work
nobody needed, with what each side does unchanged.

* The server registers no methods with gRPC: every service (the gateway's, health,
  reflection) is served through its generic handler. grpc.aio's accept loop keeps one
  future per registered method and waits on all of them (``asyncio.wait``) for every
  call that arrives; the calls are answered as before.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.observability.health import Readiness
from gateway.transport.server import GatewayService, start_server
from gateway.transport.status import ERROR_TYPE_KEY
from gateway.v1 import gateway_pb2, gateway_pb2_grpc


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
