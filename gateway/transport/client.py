"""gRPC clients for peer gateways, with retries that only repeat what is safe to repeat.

Every handoff RPC is idempotent by migration id, so a call whose outcome is unknown
(UNAVAILABLE, DEADLINE_EXCEEDED) is simply sent again, with exponential backoff and
jitter, up to ``handoff.retry_attempts`` times. So is a PrepareStream whose status
grpc.aio replaced by its own INTERNAL "Internal error from Core" (grpc/grpc#36066: the
peer refused the upload early and one of our writes raced its answer). A refusal (any
other status) is final and comes back as the peer's own error type.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from gateway import observability, versions
from gateway.config import HandoffConfig, PeerConfig
from gateway.errors import (
    ConfigError,
    EnvelopeTooLargeError,
    GatewayError,
    HandoffError,
    LimitExceededError,
    ObjectMovedError,
    PayloadDecodeError,
    PeerUnavailableError,
)
from gateway.handoff.messages import Evaluation
from gateway.identity import HostId
from gateway.limits import MAX_CALL_REPLY_BYTES, MAX_CALL_WAIT, MAX_ID_BYTES, check_id
from gateway.transport.framing import (
    STREAM_BYTES_PER_SECOND,
    as_sent,
    encode_field_one,
    encode_part,
)
from gateway.transport.status import (
    ERROR_TYPE_KEY,
    MOVED_TO_KEY,
    RETRYABLE,
    error_from_status,
    peer_text,
)
from gateway.transport.tls import CHANNEL_OPTIONS, channel_credentials
from gateway.v1 import gateway_pb2, gateway_pb2_grpc
from gateway.wire import MAX_ENVELOPE_BYTES, MAX_EVALUATION_BYTES, read_evaluation

R = TypeVar("R", bound=Message)


#: What this host speaks, sent with every call (gateway/versions.py): the server agrees
#: on a protocol version or refuses naming both sides' versions.
CAPABILITIES = versions.ours().metadata()


class _SentMetadata:
    """:data:`CAPABILITIES` as the ``grpc.aio.Metadata`` grpc.aio makes of a tuple on every
    call (an ABC ``isinstance`` check against ``Sequence``, then an ``OrderedDict`` of
    the pairs), made once per value of
    ``CAPABILITIES`` (one slot: a test that swaps it gets its own). grpc.aio only reads
    what it is given (``tuple(metadata)`` as the call is made), and nothing here changes
    it, so one value serves every call."""

    __slots__ = ("_metadata", "_of")

    def __init__(self) -> None:
        self._of: object = None
        self._metadata = grpc.aio.Metadata()

    def get(self) -> grpc.aio.Metadata:
        pairs = CAPABILITIES
        if pairs is not self._of:
            self._metadata = grpc.aio.Metadata(*pairs)
            self._of = pairs
        return self._metadata


_SENT_METADATA = _SentMetadata()


class _Unavailable(Exception):
    def __init__(self, error: grpc.aio.AioRpcError) -> None:
        super().__init__(error.details())
        self.error = error


#: The wait before the second attempt of a peer call, and before each later one
#: (tenacity numbers the later attempts from 1, hence the doubled multiplier: the
#: sequence is 0.05, 0.1, 0.2, ... s, at most 2 s, each plus up to 0.05 s of jitter).
_FIRST_WAIT = wait_exponential_jitter(multiplier=0.05, max=2.0, jitter=0.05)
_LATER_WAITS = wait_exponential_jitter(multiplier=0.1, max=2.0, jitter=0.05)


#: The largest answer a peer gives the handoff client: a dry run's evaluation. Every
#: other answer is a signed receipt or decision (wire.MAX_RECEIPT_BYTES, 64 KiB). The
#: channel receives no more: a larger answer is refused by gRPC as it arrives, not held
#: whole (up to the 32 MiB a channel takes by default here) and copied before anything
#: looks at it, for every migration in flight.
MAX_PEER_ANSWER_BYTES = MAX_EVALUATION_BYTES
_RECEIVE_LIMIT = "grpc.max_receive_message_length"


def _receiving(limit: int) -> tuple[tuple[str, int], ...]:
    """CHANNEL_OPTIONS with the receive limit ``limit`` (in its place: with two, gRPC
    takes the first)."""
    return tuple(
        (name, limit if name == _RECEIVE_LIMIT else value) for name, value in CHANNEL_OPTIONS
    )


#: gRPC's words for a message over the receive limit: "Received message larger than max
#: (SIZE vs. LIMIT)", at times after "Stream removed (CLIENT: ".
_OVER_LIMIT = re.compile(r"Received message larger than max \((\d+) vs\. \d+\)")


def _over_receive_limit(error: grpc.aio.AioRpcError) -> bool:
    """Whether ``error`` is this channel's own refusal of a message over its receive
    limit (no gateway answers RESOURCE_EXHAUSTED: see transport.status)."""
    return error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and bool(
        _OVER_LIMIT.search(error.details() or "")
    )


def _too_large(peer: str, rpc: str, error: grpc.aio.AioRpcError, limit: int) -> LimitExceededError:
    """The refusal of ``peer``'s answer to ``rpc`` over ``limit``, with its size."""
    found = _OVER_LIMIT.search(error.details() or "")
    size = f"{found.group(1)} bytes" if found else "larger"
    return LimitExceededError(
        f"{peer}'s answer to {rpc} is {size}; at most {limit} accepted",
        hint="the peer runs an incompatible or misbehaving gateway",
    )


def _check_envelope_size(raw: bytes, what: str) -> None:
    """Refuse to send a transfer or proposal no host accepts (over MAX_ENVELOPE_BYTES).
    A peer refuses one a little over with this same error; one over its receive limit
    (transport.server.MAX_REQUEST_BYTES) its gRPC refuses as "Received message larger
    than max", which this client would take for its own limit on the peer's answer."""
    if len(raw) > MAX_ENVELOPE_BYTES:
        raise EnvelopeTooLargeError(
            f"the {what} is {len(raw)} bytes; at most {MAX_ENVELOPE_BYTES} accepted",
            hint="an object's lineage is what grows: keep lineage compaction on in the host "
            "config (lineage.compaction), let it compact the object, then migrate again",
        )


class GrpcPeerClient:
    """A :class:`~gateway.handoff.peers.PeerClient` over one mTLS channel."""

    def __init__(
        self, peer: PeerConfig, *, credentials: grpc.ChannelCredentials, timing: HandoffConfig
    ) -> None:
        self.peer = peer
        self.timing = timing
        self.channel = grpc.aio.secure_channel(
            peer.address,
            credentials,
            options=(
                *_receiving(MAX_PEER_ANSWER_BYTES),
                ("grpc.ssl_target_name_override", peer.server_name),
            ),
        )
        self.stub = gateway_pb2_grpc.GatewayStub(self.channel)
        # PrepareStream with data chunks framed as they are (transport/framing.py), by
        # the request generator (prepare_stream), not here.
        self._prepare_stream = self.channel.stream_unary(
            "/gateway.v1.Gateway/PrepareStream",
            request_serializer=as_sent,
            response_deserializer=gateway_pb2.PrepareResponse.FromString,
        )
        # Prepare and Commit with their requests' bytes written here (framing.encode_field_one:
        # the bytes the generated messages serialize to), not built as messages and
        # serialized again: a copy of the transfer less, and no message object per call.
        self._prepare = self.channel.unary_unary(
            "/gateway.v1.Gateway/Prepare",
            request_serializer=None,
            response_deserializer=gateway_pb2.PrepareResponse.FromString,
            _registered_method=True,
        )
        self._commit = self.channel.unary_unary(
            "/gateway.v1.Gateway/Commit",
            request_serializer=None,
            response_deserializer=gateway_pb2.CommitResponse.FromString,
            _registered_method=True,
        )
        # Evaluate's answer as received: bounded and counted before protobuf parses it
        # (wire.read_evaluation), not parsed whole by the stub first.
        self._evaluate = self.channel.unary_unary(
            "/gateway.v1.Gateway/Evaluate",
            request_serializer=gateway_pb2.EvaluateRequest.SerializeToString,
            response_deserializer=bytes,
        )

    def _call(self, rpc: str, method: Callable[..., Awaitable[R]], request: Any) -> Awaitable[R]:
        """Call with retries. ``request`` is a message (or its bytes, for a method that
        sends bytes as they are), or (for client streams) a function making a fresh
        request iterator for every attempt. Not a coroutine itself: the caller awaits
        :meth:`_attempts` directly, one frame less on every resume of the call."""
        return self._attempts(
            rpc,
            lambda timeout: method(
                request() if callable(request) else request,
                timeout=timeout,
                metadata=_SENT_METADATA.get(),
            ),
            deadline=self.timing.rpc_timeout.total_seconds(),
        )

    async def _attempts(
        self, rpc: str, invoke: Callable[[float], Awaitable[R]], *, deadline: float
    ) -> R:
        """The first attempt is a plain call, awaited here (not through :meth:`_attempt`:
        one coroutine less per call): tenacity's retry state is built only once an
        attempt has failed in a way worth repeating (it cost about 5 % of a small
        migration's loop time when built for every call). The attempts, what is retried
        and the waits between them are the same as with one tenacity loop: at most
        ``retry_attempts`` calls, only ``RETRYABLE`` statuses repeated, waits of
        0.05 s, 0.1 s, 0.2 s ... (at most 2 s) plus up to 0.05 s of jitter."""
        attempts = self.timing.retry_attempts
        try:
            return self._parsed(rpc, await invoke(deadline))
        except grpc.aio.AioRpcError as exc:
            first = self._failed(rpc, exc)  # the peer's refusal is raised from here
        if attempts <= 1:
            raise self._unavailable(rpc, first) from first
        # Attempts 2..n: tenacity counts them from 1, so its waits start one step later.
        retrying = AsyncRetrying(
            stop=stop_after_attempt(attempts - 1),
            wait=_LATER_WAITS,
            retry=retry_if_exception_type(_Unavailable),
            reraise=True,
        )
        await asyncio.sleep(_FIRST_WAIT(RetryCallState(retrying, None, (), {})))  # attempt 1's
        try:
            async for attempt in retrying:
                with attempt:
                    return self._parsed(rpc, await self._attempt(rpc, invoke, deadline))
        except _Unavailable as exc:
            raise self._unavailable(rpc, exc) from exc
        raise AssertionError("tenacity returns or raises")

    async def _attempt(
        self, rpc: str, invoke: Callable[[float], Awaitable[R]], deadline: float
    ) -> R:
        """One call: its answer, ``_Unavailable`` (worth repeating) or the peer's refusal."""
        try:
            return await invoke(deadline)
        except grpc.aio.AioRpcError as exc:
            raise self._failed(rpc, exc) from exc

    def _parsed(self, rpc: str, answer: R | None) -> R:
        """``answer``, which grpc.aio gives as ``None`` when the response deserializer
        refused the peer's bytes (it logs that and answers ``None``: grpc._common)."""
        if answer is None:
            raise PayloadDecodeError(
                f"{self.peer.id}'s answer to {rpc} does not parse as its response message",
                hint="the peer runs an incompatible or misbehaving gateway",
            )
        return answer

    def _failed(self, rpc: str, exc: grpc.aio.AioRpcError) -> _Unavailable:
        """What a failed attempt means: ``_Unavailable`` (worth repeating, caused by
        ``exc``) is returned; the peer's refusal (or an answer over the receive limit)
        is raised from ``exc``."""
        if _over_receive_limit(exc):  # checked first: its code is RESOURCE_EXHAUSTED
            raise _too_large(str(self.peer.id), rpc, exc, MAX_PEER_ANSWER_BYTES) from exc
        if exc.code() in RETRYABLE or _status_lost(rpc, exc):
            unavailable = _Unavailable(exc)
            unavailable.__cause__ = exc
            return unavailable
        refusal = self._refusal(exc)
        observability.peer_error(str(self.peer.id), rpc, type(refusal).__name__, direction="out")
        raise refusal from exc

    def _unavailable(self, rpc: str, exc: _Unavailable) -> PeerUnavailableError:
        observability.peer_error(str(self.peer.id), rpc, exc.error.code().name, direction="out")
        if _status_lost(rpc, exc.error):
            return PeerUnavailableError(
                f"{self.peer.id} ended {rpc} before the data was sent in full, at each of "
                f"{self.timing.retry_attempts} attempts, and gRPC lost its answer "
                "(INTERNAL: Internal error from Core, grpc/grpc#36066)",
                hint="the peer's log names why it refused the upload; fix that and retry",
            )
        return PeerUnavailableError(
            f"{self.peer.id} at {self.peer.address} did not answer {rpc} after "
            f"{self.timing.retry_attempts} attempts ({exc.error.code().name}: "
            f"{peer_text(exc.error.details() or '')})",
            hint="check that the peer runs and that its address in the configuration is right",
        )

    def _refusal(self, exc: grpc.aio.AioRpcError) -> Exception:
        trailing: Mapping[str, str | bytes] = dict(exc.trailing_metadata() or ())
        type_name = trailing.get(ERROR_TYPE_KEY)
        return error_from_status(
            exc.code(),
            exc.details() or "",
            type_name if isinstance(type_name, str) else None,
            peer=str(self.peer.id),
        )

    async def prepare(self, transfer: bytes) -> bytes:
        _check_envelope_size(transfer, "transfer")
        response: gateway_pb2.PrepareResponse = await self._call(
            "Prepare", self._prepare, encode_field_one(transfer)
        )
        return response.receipt

    async def prepare_stream(
        self, transfer: bytes, data: Callable[[], AsyncIterator[bytes | memoryview]], *, size: int
    ) -> bytes:
        """Prepare for a large object: the transfer, then its data, as one client stream.
        The deadline grows with the size (at least STREAM_BYTES_PER_SECOND must get
        through; the peer waits no longer for the data either)."""
        _check_envelope_size(transfer, "transfer")

        async def requests() -> AsyncIterator[gateway_pb2.PrepareChunk | bytes]:
            yield gateway_pb2.PrepareChunk(transfer=transfer)
            framed = b""
            async for chunk in data():
                # Framed (copied) here, before the next chunk is asked for: a chunk may
                # be a view of a reused buffer. Here and not in the serializer, so that
                # the frame sent last is freed only once the next one is built: glibc
                # then reuses its MiB for the one after, where freeing both of a
                # message's buffers (ours, gRPC's copy) in a row let it trim the heap
                # and fault the same MiB in again per message (ADR 0009: 1.9 page faults
                # per 4 KiB sent, most of the source's CPU; 0.05 with this).
                framed = encode_part(chunk)
                yield framed

        timeout = self.timing.rpc_timeout.total_seconds() + size / STREAM_BYTES_PER_SECOND
        response: gateway_pb2.PrepareResponse = await self._attempts(
            "PrepareStream",
            lambda t: self._prepare_stream(requests(), timeout=t, metadata=_SENT_METADATA.get()),
            deadline=timeout,
        )
        return response.receipt

    async def commit(self, migration_id: str) -> bytes:
        response: gateway_pb2.CommitResponse = await self._call(
            "Commit", self._commit, encode_field_one(migration_id.encode("utf-8"))
        )
        return response.receipt

    async def abort(self, migration_id: str, reason: str) -> None:
        await self._call(
            "Abort",
            self.stub.Abort,
            gateway_pb2.AbortRequest(migration_id=migration_id, reason=reason),
        )

    async def decision(self, migration_id: str) -> bytes:
        response: gateway_pb2.DecisionResponse = await self._call(
            "Decision", self.stub.Decision, gateway_pb2.DecisionRequest(migration_id=migration_id)
        )
        if not response.decision:
            raise HandoffError(f"{self.peer.id} gave no signed decision for {migration_id}")
        return response.decision

    async def claim(self, departure: bytes, decision: bytes) -> bytes:
        response: gateway_pb2.ClaimResponse = await self._call(
            "Claim",
            self.stub.Claim,
            gateway_pb2.ClaimRequest(departure=departure, decision=decision),
        )
        if not response.receipt:
            raise HandoffError(f"{self.peer.id} gave no custody receipt")
        return response.receipt

    async def evaluate(self, proposal: bytes) -> Evaluation:
        _check_envelope_size(proposal, "proposal")
        answer: bytes = await self._call(
            "Evaluate", self._evaluate, gateway_pb2.EvaluateRequest(proposal=proposal)
        )
        return read_evaluation(str(self.peer.id), answer)

    async def close(self) -> None:
        await self.channel.close()


#: Client-streaming RPCs: a peer may answer one before the client has sent everything.
_CLIENT_STREAMING = frozenset({"PrepareStream"})
#: What grpc.aio's client reports instead of the peer's status when the peer ended a
#: client-streaming call early (a refusal before reading the data) and a write of ours
#: was already under way: the failed write overwrites the status the peer sent
#: (grpc/grpc#36066; the fix, grpc/grpc#43486, is not in a release). Seen here once in
#: a full test run (tests/test_peer_bounds.py's refused upload).
_LOST_STATUS_DETAILS = "Internal error from Core"


def _status_lost(rpc: str, error: grpc.aio.AioRpcError) -> bool:
    """Whether ``error`` is that stand-in for a client-streaming call's real status. The
    call is then repeated like an unavailable one (PrepareStream is already repeated on
    UNAVAILABLE at any point of the stream, so a repeat is safe): the peer answers the
    repeat, normally before our writes race its answer again."""
    return (
        rpc in _CLIENT_STREAMING
        and error.code() is grpc.StatusCode.INTERNAL
        and error.details() == _LOST_STATUS_DETAILS
    )


class GrpcPeers:
    """One client per configured peer, created on first use; TLS roots per peer domain."""

    def __init__(
        self,
        peers: tuple[PeerConfig, ...],
        *,
        certificate: bytes,
        private_key: bytes,
        roots_for: Callable[[str], bytes],
        timing: HandoffConfig,
        unknown: Callable[[str], Exception],
    ) -> None:
        self._peers = {str(p.id): p for p in peers}
        self._certificate = certificate
        self._private_key = private_key
        self._roots_for = roots_for
        self._timing = timing
        self._unknown = unknown
        self._clients: dict[str, GrpcPeerClient] = {}

    def client(self, host_id: str) -> GrpcPeerClient:
        found = self._clients.get(host_id)
        if found is not None:
            return found
        peer = self._peers.get(host_id)
        if peer is None:
            raise self._unknown(host_id)
        credentials = channel_credentials(
            roots=self._roots_for(peer.id.trust_domain),
            certificate=self._certificate,
            private_key=self._private_key,
        )
        client = GrpcPeerClient(peer, credentials=credentials, timing=self._timing)
        self._clients[host_id] = client
        return client

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()


#: Seconds a Call may take beyond the wait for a frozen object (evaluation, network).
CALL_MARGIN_SECONDS = 20.0
#: The largest answer to a Call an honest host sends: its reply (at most
#: MAX_CALL_REPLY_BYTES of JSON), its own id, and the two fields' tags and lengths. The
#: call's channel receives no more: a larger answer is refused by gRPC as it arrives, not
#: held (up to the 32 MiB of a peer channel) and printed by `gateway call`.
MAX_CALL_ANSWER_BYTES = MAX_CALL_REPLY_BYTES + MAX_ID_BYTES + 16


@dataclass(frozen=True, slots=True, kw_only=True)
class CallAnswer:
    reply: bytes  #: the reply as JSON
    host: str  #: the host that answered


async def call_object(
    *,
    address: str,
    server_name: str,
    host_id: str,
    credentials: grpc.ChannelCredentials,
    tenant: str,
    object_id: str,
    method: str,
    data: bytes,
    wait: float,
) -> CallAnswer:
    """One ``Call`` RPC to the gateway at ``address`` (``host_id``), not retried: a call
    may change the object, and only its caller knows whether asking again is safe.

    A refusal comes back as the gateway's own error type; an object that moved as
    :class:`~gateway.errors.ObjectMovedError` naming the host that holds it now."""
    longest = MAX_CALL_WAIT.total_seconds()
    # Not NaN, infinite or beyond what the host waits: it becomes the RPC's deadline
    # (1e300 overflowed it: refused at once as a peer that "did not answer").
    if not 0 <= wait <= longest:
        raise ConfigError(
            f"--wait is {wait} seconds; it must be between 0 and {longest:g}",
            hint=f"a host waits at most {longest:g} s for an object frozen by a migration",
        )
    async with grpc.aio.secure_channel(
        address,
        credentials,
        options=(
            *_receiving(MAX_CALL_ANSWER_BYTES),
            ("grpc.ssl_target_name_override", server_name),
        ),
    ) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        try:
            response: gateway_pb2.CallResponse = await stub.Call(
                gateway_pb2.CallRequest(
                    tenant=tenant,
                    object_id=object_id,
                    method=method,
                    data=data,
                    wait_ms=max(0, min(int(wait * 1000), 2**32 - 1)),
                ),
                # The host waits up to ``wait`` for a frozen object, then answers.
                timeout=wait + CALL_MARGIN_SECONDS,
            )
        except grpc.aio.AioRpcError as exc:
            trailing: Mapping[str, str | bytes] = dict(exc.trailing_metadata() or ())
            moved_to = trailing.get(MOVED_TO_KEY)
            type_name = trailing.get(ERROR_TYPE_KEY)
            error = error_from_status(
                exc.code(),
                exc.details() or "",
                type_name if isinstance(type_name, str) else None,
                peer=host_id,
            )
            if isinstance(moved_to, str) and moved_to:
                raise ObjectMovedError(
                    error.reason, moved_to=_host_named(host_id, moved_to), hint=error.hint
                ) from exc
            if _over_receive_limit(exc) and type_name is None:
                raise _too_large(host_id, "the call", exc, MAX_CALL_ANSWER_BYTES) from exc
            if exc.code() in RETRYABLE and type_name is None:
                raise PeerUnavailableError(
                    f"{host_id} at {address} did not answer the call "
                    f"({exc.code().name}: {peer_text(exc.details() or '')})",
                    hint="check that its gateway runs (gateway serve) and the address is right",
                ) from exc
            raise error from exc
    if len(response.reply) > MAX_CALL_REPLY_BYTES:
        raise _answer_too_large(host_id, f"a reply of {len(response.reply)} bytes")
    if len(response.host.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        raise _answer_too_large(host_id, f"a host id of {len(response.host)} characters")
    return CallAnswer(reply=response.reply, host=response.host)


def _host_named(host_id: str, moved_to: str) -> str:
    """Where ``host_id`` says the called object moved: a host id (`gateway call
    --follow` calls it next, and names it when it is not a configured peer)."""
    try:
        return str(HostId.parse(check_id(moved_to, what="the host it moved to")))
    except GatewayError as exc:
        raise PayloadDecodeError(
            f"{host_id} says the object moved, to {peer_text(moved_to, 80)!r}: "
            f"not a host id ({peer_text(exc.reason, 200)})",
            hint="the called host runs an incompatible or misbehaving gateway",
        ) from exc


def _answer_too_large(host_id: str, what: str) -> LimitExceededError:
    return LimitExceededError(
        f"{host_id}'s answer to the call is too large ({what}); a reply is at most "
        f"{MAX_CALL_REPLY_BYTES} bytes of JSON and a host id at most {MAX_ID_BYTES} bytes",
        hint="the called host runs an incompatible or misbehaving gateway",
    )
