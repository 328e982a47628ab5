"""The gateway's gRPC service: thin adapters from RPCs to the handoff's two sides.

Every call first establishes who the peer is from its mTLS certificate, then checks
the sizes of what the peer sent (migration ids, reasons: :mod:`gateway.limits`) before
any work; the handoff code then checks that this peer is the one the migration names.
Nothing a peer does holds a slot here for a time of its choosing: a PrepareStream is
broken off when its messages stop or trickle (:class:`~gateway.transport.framing.Paced`),
and a peer's handoff bytes and Calls in flight are bounded (:class:`Gate`). Errors leave
through one table (:mod:`gateway.transport.status`); anything unexpected is logged here
and answered as INTERNAL without internals.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from datetime import timedelta
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError

from gateway import observability, wire
from gateway.errors import (
    ConfigError,
    GatewayError,
    ObjectMovedError,
    ObjectStateError,
    PayloadDecodeError,
    PeerUnavailableError,
    TransferStreamError,
)
from gateway.handoff.destination import Destination
from gateway.handoff.messages import Evaluation
from gateway.handoff.source import Source
from gateway.limits import MAX_REASON_CHARS, check_migration_id, check_text
from gateway.observability.health import Readiness
from gateway.runtime.calls import Calls, caller_of_host
from gateway.transport.framing import RECEIVE_WINDOW_OPTIONS, Paced, data_of, decode_part
from gateway.transport.status import ERROR_TYPE_KEY, MOVED_TO_KEY, status_of
from gateway.transport.tls import CHANNEL_OPTIONS, authenticated_peer
from gateway.v1 import gateway_pb2, gateway_pb2_grpc
from gateway.versions import AGREED_KEY, Capabilities, negotiate

log = logging.getLogger(__name__)

R = TypeVar("R")


#: RPCs that start a handoff (or a dry run of one): refused while the server drains.
ADMITTING_RPCS = frozenset({"Prepare", "PrepareStream", "Evaluate"})


#: The invocation metadata of the RPC this task serves, as grpc.aio converted it to find
#: the RPC's handler: :meth:`_Replacing.service` receives it and keeps it here. grpc.aio
#: serves each RPC in a task of its own and looks its handler up in that task, just
#: before running it (``_handle_rpc``), so what is kept here is this RPC's and no
#: other's (tests/test_p2dst_s41.py holds that against a real server, many calls at
#: once). Asking the context again converted the same metadata a second time (a
#: namedtuple per entry: about 25-50k instructions a call). ``None`` where no lookup
#: kept it: the context is asked.
_CALL_METADATA: contextvars.ContextVar[tuple[tuple[str, str | bytes], ...] | None] = (
    contextvars.ContextVar("gateway_call_metadata", default=None)
)


def _call_metadata(context: grpc.aio.ServicerContext) -> tuple[tuple[str, str | bytes], ...]:
    """The calling RPC's invocation metadata (see :data:`_CALL_METADATA`)."""
    kept = _CALL_METADATA.get()
    return kept if kept is not None else tuple(context.invocation_metadata() or ())


#: Protocol versions agreed, by the exact metadata a call carried (a client sends the
#: same on every call of a channel). A pure function of those bytes and of this build's
#: versions; refusals are never kept. Bounded: a peer varying its metadata only evicts.
_AGREED: dict[tuple[tuple[str, str | bytes], ...], int] = {}
AGREED_REMEMBERED = 256


def _negotiated(metadata: tuple[tuple[str, str | bytes], ...], *, host: str, peer: str) -> int:
    """:func:`~gateway.versions.negotiate` for a call's metadata, remembered."""
    try:
        known, kept = _AGREED.get(metadata), True
    except TypeError:  # an unhashable value: never expected from gRPC, just not kept
        known, kept = None, False
    if known is not None:
        return known
    version = negotiate(Capabilities.from_metadata(metadata), host=host, peer_name=peer)
    if kept:
        if len(_AGREED) >= AGREED_REMEMBERED:
            _AGREED.pop(next(iter(_AGREED)))
        _AGREED[metadata] = version
    return version


#: Bytes of handoff requests (a transfer or a proposal, up to 16 MiB each) one peer may
#: have in flight here at once. Each is held whole while it is verified and staged,
#: with its parse and copies (three to four times its size), so without a bound one
#: authenticated peer sending many at once decides how much memory this host uses. A
#: request is always let in when its peer has nothing else in flight (any size the
#: limits allow can pass); small objects pass by the hundred (64 of 100 KiB are 6.4 MiB).
PEER_IN_FLIGHT_BYTES = 64 << 20
#: Streams (RPCs) one connection may have running here at once, HTTP/2's
#: MAX_CONCURRENT_STREAMS: a peer's further streams wait at the peer, queued by its gRPC,
#: until one ends. Without it one connection ran any number of handlers at once (the
#: review found 1,797 health Watch streams, which never end by themselves). A host's own
#: client has a few handoffs in flight per peer (8 under load, bench P2), far below; so
#: is a burst of 200 Calls (tests/test_peer_review_s33.py), which at a limit of 100 saw a
#: stream or two refused outright (RST_STREAM REFUSED_STREAM, UNAVAILABLE to the caller)
#: when the two sides' counts of open streams crossed.
MAX_STREAMS_PER_CONNECTION = 256
#: Calls one peer may have in flight here at once. A Call for an object frozen by a
#: migration, or staged here by one, waits for it (up to MAX_CALL_WAIT, 30 s) and reads
#: it from the store every 0.1 s, before its permissions are checked, and a peer can stage
#: such an object itself: without a bound, its Calls at once decided how many reads a
#: second this host made (200 waiting Calls: 2,000 a second). An operator's `gateway
#: call` is one at a time.
MAX_CALLS_IN_FLIGHT_PER_PEER = 32
#: The largest request this server receives. The largest any RPC legitimately needs is
#: one envelope (wire.MAX_ENVELOPE_BYTES, 16 MiB: Prepare's transfer, PrepareStream's
#: first message, Evaluate's proposal) in one bytes field, behind protobuf's tag and
#: length (5 bytes at that size); every other request is far smaller (a Claim: two
#: receipts of wire.MAX_RECEIPT_BYTES; a Call: limits.MAX_CALL_REQUEST_BYTES of data; a
#: PrepareStream data part: blobs.STREAM_PIECE_BYTES, 1 MiB). The margin, 4 KiB, leaves
#: room for a small field a later version adds beside the envelope. gRPC refuses a larger
#: request as it arrives (RESOURCE_EXHAUSTED), before it is held whole and copied: at the
#: channels' 32 MiB (tls.MAX_MESSAGE_BYTES) each request in flight could hold twice
#: what any honest one does.
REQUEST_MARGIN_BYTES = 4 << 10
MAX_REQUEST_BYTES = wire.MAX_ENVELOPE_BYTES + REQUEST_MARGIN_BYTES
_RECEIVE_LIMIT = "grpc.max_receive_message_length"


class Gate:
    """Counts the RPCs in flight and, once :meth:`close` is called (SIGTERM), refuses
    those that would start a new handoff; Commit, Abort, Decision and Claim are still
    answered, so that handoffs in flight can finish (gateway.serving). Holds each peer's
    handoff requests in flight to :data:`PEER_IN_FLIGHT_BYTES` (:meth:`holding`), and its
    Calls to :data:`MAX_CALLS_IN_FLIGHT_PER_PEER` (:meth:`calling`)."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.closed = False
        #: Bytes of handoff requests in flight, by peer; a peer with none has no entry.
        self.held: dict[str, int] = {}
        #: Calls in flight, by peer; a peer with none has no entry.
        self.calls: dict[str, int] = {}

    def close(self) -> None:
        self.closed = True

    def enter(self, rpc: str, host: str) -> None:
        if self.closed and rpc in ADMITTING_RPCS:
            raise PeerUnavailableError(
                f"{host} is shutting down and takes no new handoffs",
                hint="migrate to it once it is back, or to another host",
            )
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1

    def holding(self, peer: str, size: int, host: str) -> _Holding:
        """Count ``size`` bytes against ``peer``'s budget while the block runs; refused
        (UNAVAILABLE: the sender's client retries with backoff) when the peer's requests
        in flight would then hold more than :data:`PEER_IN_FLIGHT_BYTES`."""
        return _Holding(self.held, peer, size, host)

    @contextlib.contextmanager
    def calling(self, peer: str, host: str) -> Iterator[None]:
        """Count one Call of ``peer`` while the block runs; refused (UNAVAILABLE) when the
        peer has :data:`MAX_CALLS_IN_FLIGHT_PER_PEER` in flight already."""
        calls = self.calls.get(peer, 0)
        if calls >= MAX_CALLS_IN_FLIGHT_PER_PEER:
            raise PeerUnavailableError(
                f"{host} is answering {calls} calls from {peer}; a peer may have at most "
                f"{MAX_CALLS_IN_FLIGHT_PER_PEER} in flight at once",
                hint="call again once those are answered",
            )
        self.calls[peer] = calls + 1
        try:
            yield
        finally:
            left = self.calls[peer] - 1
            if left:
                self.calls[peer] = left
            else:
                del self.calls[peer]


class _Holding:
    """:meth:`Gate.holding`'s block: a class, not a ``contextlib`` generator (its context
    object, generator and two steps: 12.9 k instructions a Prepare against 7.8 k, with
    the call around it)."""

    __slots__ = ("_held", "_host", "_peer", "_size")

    def __init__(self, held: dict[str, int], peer: str, size: int, host: str) -> None:
        self._held, self._peer, self._size, self._host = held, peer, size, host

    def __enter__(self) -> None:
        peer, size = self._peer, self._size
        held = self._held.get(peer, 0)
        if held and held + size > PEER_IN_FLIGHT_BYTES:
            raise PeerUnavailableError(
                f"{self._host} holds {held} bytes of handoffs from {peer} in flight; a peer "
                f"may have at most {PEER_IN_FLIGHT_BYTES} at once",
                hint="the sender retries once those are answered",
            )
        # An empty request holds nothing. Counted, it made an entry of 0, which the first
        # of two such requests to finish deleted under the second (KeyError).
        if size:
            self._held[peer] = held + size

    def __exit__(self, *_exc: object) -> None:
        if not self._size:
            return
        left = self._held[self._peer] - self._size
        if left:
            self._held[self._peer] = left
        else:
            del self._held[self._peer]


class GatewayService(gateway_pb2_grpc.GatewayServicer):
    """The RPC adapters. ``source``, ``destination`` and ``authorities`` are replaced
    whole when the host reloads (gateway.reload); each call reads them once, as it
    starts, so one call runs on one snapshot."""

    def __init__(
        self,
        *,
        source: Source,
        destination: Destination,
        authorities: Mapping[str, tuple[bytes, ...]],
        gate: Gate | None = None,
        calls: Calls | None = None,
    ) -> None:
        self.source = source
        self.destination = destination
        self.authorities = authorities
        self.gate = gate or Gate()
        self.calls = calls

    async def _answer(
        self, context: grpc.aio.ServicerContext, rpc: str, handler: Callable[[str], Awaitable[R]]
    ) -> R:
        entered = False
        peer = ""
        try:
            peer = authenticated_peer(context.auth_context(), self.authorities)
            # The caller's capabilities ride on every call: agree on a protocol version
            # (said back in the trailing metadata) or refuse, naming both sides' versions.
            version = _negotiated(
                _call_metadata(context),
                host=self.destination.ctx.host,
                peer=peer,
            )
            context.set_trailing_metadata(((AGREED_KEY, str(version)),))
            self.gate.enter(rpc, self.destination.ctx.host)
            entered = True
            return await handler(peer)
        except GatewayError as exc:
            log.info("%s refused: %s", rpc, exc)
            observability.peer_error(
                peer or "unauthenticated", rpc, type(exc).__name__, direction="in"
            )
            observability.migration_refused(rpc)
            trailers = [(ERROR_TYPE_KEY, type(exc).__name__)]
            if isinstance(exc, ObjectMovedError):  # where it went, for the caller to follow
                trailers.append((MOVED_TO_KEY, exc.moved_to))
            context.set_trailing_metadata(tuple(trailers))
            await context.abort(status_of(exc), str(exc))
        except Exception:
            log.exception("%s failed", rpc)
            await context.abort(
                grpc.StatusCode.INTERNAL, f"{rpc} failed inside the gateway; see its log"
            )
        finally:
            if entered:
                self.gate.leave()
        raise AssertionError("context.abort returns only by raising")

    async def Prepare(
        self, request: gateway_pb2.PrepareRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.PrepareResponse:
        async def handle(peer: str) -> gateway_pb2.PrepareResponse:
            with self.gate.holding(peer, len(request.transfer), self.destination.ctx.host):
                receipt = await self.destination.prepare(request.transfer, peer=peer)
            return gateway_pb2.PrepareResponse(receipt=receipt)

        return await self._answer(context, "Prepare", handle)

    async def PrepareStream(
        self,
        request_iterator: AsyncIterator[gateway_pb2.PrepareChunk | memoryview],
        context: grpc.aio.ServicerContext,
    ) -> gateway_pb2.PrepareResponse:
        async def handle(peer: str) -> gateway_pb2.PrepareResponse:
            # The peer's pace is bounded by this host's rpc_timeout, not by the deadline
            # the peer chose for its call: until the stream ends, its upload slot, its
            # bytes in the gate and its staging marker are held (framing.Paced).
            messages = Paced(
                aiter(request_iterator),
                patience=self.destination.ctx.timing.rpc_timeout.total_seconds(),
                size_of=_data_bytes,
            )
            first = await messages.next()
            if (
                not isinstance(first, gateway_pb2.PrepareChunk)
                or first.WhichOneof("part") != "transfer"
            ):
                raise TransferStreamError("a PrepareStream must start with the transfer")

            async def data() -> AsyncIterator[bytes | memoryview]:
                async for chunk in messages:
                    yield data_of(chunk)  # decoded by framing.decode_part: no copy

            # The data streams through a bounded window; the transfer is held whole.
            with self.gate.holding(peer, len(first.transfer), self.destination.ctx.host):
                receipt = await self.destination.prepare_stream(first.transfer, data(), peer=peer)
            return gateway_pb2.PrepareResponse(receipt=receipt)

        return await self._answer(context, "PrepareStream", handle)

    async def Commit(
        self, request: gateway_pb2.CommitRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.CommitResponse:
        async def handle(peer: str) -> gateway_pb2.CommitResponse:
            check_migration_id(request.migration_id)
            return gateway_pb2.CommitResponse(
                receipt=await self.destination.answer_commit(request.migration_id, peer=peer)
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
            # Busy (the peer's budget) is an error the sender retries, not a verdict.
            with self.gate.holding(peer, len(request.proposal), self.destination.ctx.host):
                try:
                    admission = await self.destination.evaluate(request.proposal, peer=peer)
                except GatewayError as exc:
                    return wire.encode_evaluation(
                        Evaluation.refused(self.destination.ctx.host, exc)
                    )
            return wire.encode_evaluation(Evaluation.of(self.destination.ctx.host, admission))

        return await self._answer(context, "Evaluate", handle)

    async def Call(
        self, request: gateway_pb2.CallRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.CallResponse:
        async def handle(peer: str) -> gateway_pb2.CallResponse:
            if self.calls is None:
                raise ObjectStateError("this gateway answers no calls")
            with self.gate.calling(peer, self.destination.ctx.host):
                result = await self.calls.call(
                    tenant=request.tenant or "default",
                    object_id=request.object_id,
                    method=request.method,
                    data=request.data,
                    # Who calls is the authenticated certificate's word, never the request's.
                    caller=caller_of_host(peer),
                    wait=timedelta(milliseconds=request.wait_ms) if request.wait_ms else None,
                )
            return gateway_pb2.CallResponse(reply=result.encoded, host=result.host)

        return await self._answer(context, "Call", handle)

    async def refuse_undecodable(
        self, rpc: str, request: _Undecodable, context: grpc.aio.ServicerContext
    ) -> None:
        """A request whose bytes do not parse, refused as the peer's error, after the
        peer is established like any other call's (see :func:`_decoding`)."""

        async def handle(peer: str) -> None:
            raise PayloadDecodeError(
                f"the {rpc} request does not decode: {request.error}",
                hint="the peer runs an incompatible or misbehaving gateway",
            )

        await self._answer(context, rpc, handle)


def _data_bytes(part: gateway_pb2.PrepareChunk | memoryview) -> int:
    """Bytes of data a PrepareStream message carries (none for the transfer)."""
    if isinstance(part, memoryview):
        return part.nbytes
    return len(part.data)


class _Undecodable:
    """A request whose bytes did not parse: handed to its RPC to be refused there."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


def _lenient(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(raw: bytes) -> Any:
        try:
            return parse(raw)
        except (DecodeError, RuntimeError, ValueError) as exc:
            return _Undecodable(exc)

    return deserialize


def _decoding(
    service: GatewayService, rpc: str, handler: grpc.RpcMethodHandler
) -> grpc.RpcMethodHandler:
    """A unary RPC's handler whose request deserializer cannot raise: a request that does
    not parse reaches the RPC as :class:`_Undecodable` and is refused there. Raised
    inside gRPC, protobuf's DecodeError was answered UNKNOWN with protobuf's text, and
    logged as an error with a traceback per request, before the peer was even known."""
    if handler.request_streaming or handler.response_streaming:
        return handler
    behaviour = handler.unary_unary

    async def answer(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, _Undecodable):
            return await service.refuse_undecodable(rpc, request, context)
        return await behaviour(request, context)

    return grpc.unary_unary_rpc_method_handler(
        answer,
        request_deserializer=_lenient(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )


_PREPARE_STREAM = "/gateway.v1.Gateway/PrepareStream"


class _StreamDecoding:
    """The server as the generated ``add_GatewayServicer_to_server`` sees it, with
    PrepareStream's messages decoded by :func:`~gateway.transport.framing.decode_part`
    (a data chunk as a view of the received bytes, not parsed into a message and copied
    out again), and every unary method's request decoded by :func:`_decoding` (a request
    that does not parse is refused by its RPC, as the peer's error). All of them served
    through the generic handler, none registered by method (see :class:`_GenericOnly`)."""

    def __init__(self, server: grpc.aio.Server, service: GatewayService) -> None:
        self._server = server
        self._service = service
        self._handler = grpc.stream_unary_rpc_method_handler(
            service.PrepareStream,
            request_deserializer=decode_part,
            response_serializer=gateway_pb2.PrepareResponse.SerializeToString,
        )

    def add_generic_rpc_handlers(self, handlers: tuple[grpc.GenericRpcHandler, ...]) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_Replacing(handler, self._handler, self._service) for handler in handlers)
        )

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        """Nothing: the same handlers came as the generic handler (see :class:`_GenericOnly`)."""


@grpc.aio.Server.register  # grpc_reflection serves an aio server with its aio servicer
class _GenericOnly:
    """``server`` as a service's generated ``add_*_to_server`` sees it: the service is
    served through the generic handler that function adds first, and not also registered
    by method. grpc.aio's accept loop keeps one future per registered method (one more for
    the rest) and waits on all of them with ``asyncio.wait`` for every call that arrives:
    with the gateway's, health's and reflection's methods registered, that was 13 done
    callbacks added and removed, and 13 type checks, per RPC (two per migration on a
    destination); with none, one. Finding the handler is then a lookup in the generic
    handlers, the gateway's first (:class:`_Replacing`, one dict lookup)."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: tuple[grpc.GenericRpcHandler, ...]) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        """Nothing: the same handlers came as the generic handler."""


class _Replacing(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(
        self, inner: grpc.GenericRpcHandler, handler: grpc.RpcMethodHandler, service: GatewayService
    ) -> None:
        self._inner, self._handler, self._service = inner, handler, service
        #: the inner handlers as _decoding wraps them, by method (wrapped once each)
        self._decoding: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        # In the RPC's own task, just before its handler runs (see _CALL_METADATA).
        _CALL_METADATA.set(tuple(details.invocation_metadata or ()))
        if details.method == _PREPARE_STREAM:
            return self._handler
        known = self._decoding.get(details.method)
        if known is not None:
            return known
        inner = self._inner.service(details)
        if inner is None:  # not one of the service's methods: nothing kept for it
            return None
        wrapped = _decoding(self._service, details.method.rsplit("/", 1)[-1], inner)
        self._decoding[details.method] = wrapped
        return wrapped


async def start_server(
    service: GatewayService,
    *,
    listen: str,
    credentials: grpc.ServerCredentials,
    readiness: Readiness | None = None,
    reflection: bool = True,
) -> tuple[grpc.aio.Server, int]:
    """Start serving on ``listen`` (port 0 picks a free port); returns the server and port.

    With ``readiness``, the same port also serves grpc.health.v1 (and, unless
    ``reflection`` is False, server reflection): see gateway.observability.health."""
    # SO_REUSEPORT off: with it (gRPC's default on Linux) a second `gateway serve` on the
    # same port starts "successfully" and the kernel splits connections between the two.
    server = grpc.aio.server(
        options=(
            # CHANNEL_OPTIONS with the receive limit replaced (with two, gRPC takes the first)
            *((n, MAX_REQUEST_BYTES if n == _RECEIVE_LIMIT else v) for n, v in CHANNEL_OPTIONS),
            ("grpc.so_reuseport", 0),
            ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
            *RECEIVE_WINDOW_OPTIONS,
        )
    )
    gateway_pb2_grpc.add_GatewayServicer_to_server(service, _StreamDecoding(server, service))
    if readiness is not None:
        await readiness.attach(_GenericOnly(server), reflection=reflection)
    try:
        port = server.add_secure_port(listen, credentials)
    except RuntimeError as exc:  # gRPC's only signal that it could not bind
        raise ConfigError(
            f"cannot listen on {listen}: the address is in use or not this machine's",
            hint="stop the other process on that port, or set another 'listen' in the config",
        ) from exc
    await server.start()
    return server, port
