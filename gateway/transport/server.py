"""The gateway's gRPC service: thin adapters from RPCs to the handoff's two sides.

Every call first establishes who the peer is from its mTLS certificate, then checks
the sizes of what the peer sent (migration ids, reasons: :mod:`gateway.limits`) before
any work; the handoff code then checks that this peer is the one the migration names. Errors leave through
one table (:mod:`gateway.transport.status`); anything unexpected is logged here and
answered as INTERNAL without internals.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TypeVar

import grpc

from gateway import wire
from gateway.errors import ConfigError, GatewayError, TransferStreamError
from gateway.handoff.destination import Destination
from gateway.handoff.messages import Evaluation
from gateway.handoff.source import Source
from gateway.limits import MAX_REASON_CHARS, check_migration_id, check_text
from gateway.transport.status import ERROR_TYPE_KEY, status_of
from gateway.transport.tls import CHANNEL_OPTIONS, authenticated_peer
from gateway.v1 import gateway_pb2, gateway_pb2_grpc
from gateway.versions import AGREED_KEY, Capabilities, negotiate

log = logging.getLogger(__name__)

R = TypeVar("R")


class GatewayService(gateway_pb2_grpc.GatewayServicer):
    def __init__(
        self,
        *,
        source: Source,
        destination: Destination,
        authorities: Mapping[str, tuple[bytes, ...]],
    ) -> None:
        self.source = source
        self.destination = destination
        self.authorities = authorities

    async def _answer(
        self, context: grpc.aio.ServicerContext, rpc: str, handler: Callable[[str], Awaitable[R]]
    ) -> R:
        try:
            peer = authenticated_peer(context.auth_context(), self.authorities)
            # The caller's capabilities ride on every call: agree on a protocol version
            # (said back in the trailing metadata) or refuse, naming both sides' versions.
            version = negotiate(
                Capabilities.from_metadata(context.invocation_metadata() or ()),
                host=self.destination.ctx.host,
                peer_name=peer,
            )
            context.set_trailing_metadata(((AGREED_KEY, str(version)),))
            return await handler(peer)
        except GatewayError as exc:
            log.info("%s refused: %s", rpc, exc)
            context.set_trailing_metadata(((ERROR_TYPE_KEY, type(exc).__name__),))
            await context.abort(status_of(exc), str(exc))
        except Exception:
            log.exception("%s failed", rpc)
            await context.abort(
                grpc.StatusCode.INTERNAL, f"{rpc} failed inside the gateway; see its log"
            )
        raise AssertionError("context.abort returns only by raising")

    async def Prepare(
        self, request: gateway_pb2.PrepareRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.PrepareResponse:
        async def handle(peer: str) -> gateway_pb2.PrepareResponse:
            return gateway_pb2.PrepareResponse(
                receipt=await self.destination.prepare(request.transfer, peer=peer)
            )

        return await self._answer(context, "Prepare", handle)

    async def PrepareStream(
        self,
        request_iterator: AsyncIterator[gateway_pb2.PrepareChunk],
        context: grpc.aio.ServicerContext,
    ) -> gateway_pb2.PrepareResponse:
        async def handle(peer: str) -> gateway_pb2.PrepareResponse:
            first = await anext(aiter(request_iterator), None)
            if first is None or first.WhichOneof("part") != "transfer":
                raise TransferStreamError("a PrepareStream must start with the transfer")

            async def data() -> AsyncIterator[bytes]:
                async for chunk in request_iterator:
                    if chunk.WhichOneof("part") != "data":
                        raise TransferStreamError(
                            "a PrepareStream carries one transfer, then only data"
                        )
                    yield chunk.data

            receipt = await self.destination.prepare_stream(first.transfer, data(), peer=peer)
            return gateway_pb2.PrepareResponse(receipt=receipt)

        return await self._answer(context, "PrepareStream", handle)

    async def Commit(
        self, request: gateway_pb2.CommitRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.CommitResponse:
        async def handle(peer: str) -> gateway_pb2.CommitResponse:
            check_migration_id(request.migration_id)
            return gateway_pb2.CommitResponse(
                receipt=await self.destination.commit(request.migration_id, peer=peer)
            )

        return await self._answer(context, "Commit", handle)

    async def Abort(
        self, request: gateway_pb2.AbortRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.AbortResponse:
        async def handle(peer: str) -> gateway_pb2.AbortResponse:
            check_migration_id(request.migration_id)
            check_text(request.reason, limit=MAX_REASON_CHARS, what="abort reason")
            await self.destination.abort(request.migration_id, peer=peer, reason=request.reason)
            return gateway_pb2.AbortResponse()

        return await self._answer(context, "Abort", handle)

    async def Decision(
        self, request: gateway_pb2.DecisionRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.DecisionResponse:
        async def handle(peer: str) -> gateway_pb2.DecisionResponse:
            check_migration_id(request.migration_id)
            return gateway_pb2.DecisionResponse(
                decision=await self.source.decide(request.migration_id, peer=peer)
            )

        return await self._answer(context, "Decision", handle)

    async def Claim(
        self, request: gateway_pb2.ClaimRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ClaimResponse:
        async def handle(peer: str) -> gateway_pb2.ClaimResponse:
            receipt = await self.destination.home.claim(
                request.departure, request.decision, peer=peer
            )
            return gateway_pb2.ClaimResponse(receipt=receipt)

        return await self._answer(context, "Claim", handle)

    async def Evaluate(
        self, request: gateway_pb2.EvaluateRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.EvaluateResponse:
        async def handle(peer: str) -> gateway_pb2.EvaluateResponse:
            # A dry run answers refusals as data ("would refuse because ..."), so that an
            # operator sees the same reason Prepare would give, without anything staged.
            try:
                admission = await self.destination.evaluate(request.proposal, peer=peer)
            except GatewayError as exc:
                return wire.encode_evaluation(Evaluation.refused(self.destination.ctx.host, exc))
            return wire.encode_evaluation(Evaluation.of(self.destination.ctx.host, admission))

        return await self._answer(context, "Evaluate", handle)


async def start_server(
    service: GatewayService, *, listen: str, credentials: grpc.ServerCredentials
) -> tuple[grpc.aio.Server, int]:
    """Start serving on ``listen`` (port 0 picks a free port); returns the server and port."""
    # SO_REUSEPORT off: with it (gRPC's default on Linux) a second `gateway serve` on the
    # same port starts "successfully" and the kernel splits connections between the two.
    server = grpc.aio.server(options=(*CHANNEL_OPTIONS, ("grpc.so_reuseport", 0)))
    gateway_pb2_grpc.add_GatewayServicer_to_server(service, server)
    try:
        port = server.add_secure_port(listen, credentials)
    except RuntimeError as exc:  # gRPC's only signal that it could not bind
        raise ConfigError(
            f"cannot listen on {listen}: the address is in use or not this machine's",
            hint="stop the other process on that port, or set another 'listen' in the config",
        ) from exc
    await server.start()
    return server, port
