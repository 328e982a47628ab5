"""grpc.health.v1 readiness and server reflection on the gateway's own mTLS port.

Readiness follows the host's life, for the whole server (service ``""``) and for
``gateway.v1.Gateway`` alike:

* ``NOT_SERVING`` from the moment the port is open until the host is ready: its store
  is open and its trust loaded (both happen before the server starts) and its first
  recovery pass over open migrations has finished (:meth:`Readiness.recovered`). A
  host still settling migrations left by a crash should not be sent new ones.
* ``SERVING`` afterwards.
* ``NOT_SERVING`` again, for good, once it drains (:meth:`Readiness.set_draining`, for
  SIGTERM handling, and always when the server stops): a balancer or kubelet stops
  sending it work while in-flight handoffs finish.

Health and reflection share the mTLS port: a client needs a certificate this host
trusts, exactly as a peer does. Kubernetes probes therefore run ``gateway health``
inside the pod (an exec probe with the host's own certificate), see
docs/observability.md for why not a plaintext port.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)

#: The gateway's gRPC service, as health clients name it.
GATEWAY_SERVICE = "gateway.v1.Gateway"
#: Services whose status follows readiness: the whole server, and the gateway service.
SERVICES = ("", GATEWAY_SERVICE)


class Readiness:
    """The health status a host reports; attach it to a server to serve grpc.health.v1."""

    def __init__(self) -> None:
        self._servicer: Any = None
        self.ready = False
        self.draining = False
        self._pending: set[asyncio.Task[None]] = set()

    async def attach(self, server: Any, *, reflection: bool) -> None:
        """Add the health service (NOT_SERVING until ready) and, if asked, reflection."""
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc

        servicer = health.aio.HealthServicer()
        # Before the server starts, so that no client ever sees SERVING too early.
        for service in SERVICES:
            await servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        self._servicer = servicer
        if reflection:
            from grpc_reflection.v1alpha import reflection as grpc_reflection

            from gateway.v1 import gateway_pb2

            names = (
                gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                grpc_reflection.SERVICE_NAME,
            )
            grpc_reflection.enable_server_reflection(names, server)

    async def recovered(self) -> None:
        """The first recovery pass finished: SERVING, unless draining already."""
        if self.ready or self.draining:
            return
        self.ready = True
        await self._set_all("SERVING")
        log.info("ready: health status SERVING")

    def set_draining(self) -> None:
        """Report NOT_SERVING from now on (safe from a signal handler on the loop)."""
        if self.draining:
            return
        self.draining = True
        log.info("draining: health status NOT_SERVING")
        if self._servicer is not None:
            task = asyncio.get_running_loop().create_task(self._servicer.enter_graceful_shutdown())
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def drain(self) -> None:
        """:meth:`set_draining`, awaiting until watchers were told."""
        self.set_draining()
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def _set_all(self, status: str) -> None:
        if self._servicer is None:
            return
        from grpc_health.v1 import health_pb2

        value = health_pb2.HealthCheckResponse.ServingStatus.Value(status)
        for service in SERVICES:
            await self._servicer.set(service, value)
