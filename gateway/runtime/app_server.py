"""The gateway's app port: the server daprd calls on 127.0.0.1 without TLS (only the local
sidecar reaches it), with the app callback and daprd's app health probe.

Shared by the Dapr jobs (gateway.runtime.dapr, which adds OnJobEvent) and by a gateway
that serves only messages and calls (gateway.runtime.appcallback).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc


def serve_app_health(server: grpc.aio.Server, accepting: Callable[[], bool]) -> None:
    """Answer daprd's app health probe on the app-callback server.

    With ``--enable-app-health-check`` (which deploy/ sets), daprd calls
    ``AppCallbackHealthCheck.HealthCheck``; while it fails, the sidecar detaches from the
    scheduler's job stream and stops its subscriptions, so the scheduler gives this app
    id's triggers to the replicas whose app answers instead of failing them here (runs in
    docs/dapr.md). An app that did not serve it would count as unhealthy for good.
    """
    from dapr.proto.runtime.v1 import appcallback_pb2, appcallback_pb2_grpc

    class Health(appcallback_pb2_grpc.AppCallbackHealthCheckServicer):
        async def HealthCheck(
            self, request: Any, context: grpc.aio.ServicerContext
        ) -> appcallback_pb2.HealthCheckResponse:
            if not accepting():
                await context.abort(grpc.StatusCode.UNAVAILABLE, "the gateway is draining")
            return appcallback_pb2.HealthCheckResponse()

    appcallback_pb2_grpc.add_AppCallbackHealthCheckServicer_to_server(Health(), server)  # type: ignore[no-untyped-call]


class AppServer:
    """The gRPC server on the app port; :meth:`stop_accepting` fails the health probe."""

    def __init__(self, *, app_port: int) -> None:
        self.app_port = app_port
        #: What daprd's app health probe answers; :meth:`stop_accepting` turns it off.
        self.accepting = True
        self._server: grpc.aio.Server | None = None

    def stop_accepting(self) -> None:
        """Fail daprd's app health probe from now on: the sidecar stops taking job
        triggers and messages for this replica (a draining replica hands them on)."""
        self.accepting = False

    async def start(self, servicer: Any) -> int:
        """Serve ``servicer`` (an AppCallback servicer) and the health probe; the port."""
        from dapr.proto.runtime.v1 import appcallback_pb2_grpc

        server = grpc.aio.server()
        appcallback_pb2_grpc.add_AppCallbackServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
        serve_app_health(server, lambda: self.accepting)
        port = server.add_insecure_port(f"127.0.0.1:{self.app_port}")
        await server.start()
        self._server = server
        return int(port)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=1.0)
            self._server = None
