"""PrepareStream's data messages, encoded and decoded without a protobuf message per chunk.

A ``PrepareChunk`` holding ``data`` (field 2, bytes) is, in protobuf's wire format, the
tag byte ``0x12``, the length as a varint, then the bytes. Building the message and
serializing it copied each 1 MiB chunk twice (into the message, then out of it); this
writes the same bytes with one copy. The receiver parses them with the generated code
as before: nothing about the wire changes. The receiver reads a message that is exactly
one ``data`` field (what :func:`encode_part` writes) as a view of the received bytes:
parsing it into a message and reading ``.data`` back out copied each chunk twice more,
on the event loop, for the same bytes.

The client frames data in its request generator (so that one frame is alive while the
next is built: see gateway/transport/client.py) and sends with :func:`as_sent`.

Invariants: :func:`encode_part` returns exactly ``PrepareChunk(data=x).SerializeToString()``
for bytes ``x`` and ``message.SerializeToString()`` for a message; :func:`as_sent` of
either is the same bytes; :func:`decode_part`
gives the same ``data`` (or the same message) as ``PrepareChunk.FromString``, and hands
anything but the one-field form to that parser, so a peer's odd encodings mean what
protobuf says they mean (tests/test_blob_files.py checks both against the library);
what that parser refuses is a :class:`~gateway.errors.TransferStreamError`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar

from google.protobuf.message import DecodeError

from gateway.errors import TransferStreamError
from gateway.v1 import gateway_pb2

#: What a peer may have in flight towards this server on one stream (HTTP/2 flow-control
#: window), fixed: gRPC's default sizes it from a bandwidth-delay estimate (at least
#: 4 MiB, 2 x BDP), which on a loaded host (pings answered late) grew until a
#: destination held 209 MiB of a 1 GiB upload that its disk pipeline had not taken yet
#: (bench_stream.py, RSS rise budget 64 MiB). Fixed at 8 MiB (the same as
#: blobs.FILE_WINDOW_BYTES): 1 GiB uploads rose 44-48 MiB, at the same rate (4 MiB: 35-42
#: MiB); a stream over a 50 ms round trip is then capped at about 160 MiB/s. Only what
#: this server *receives* is concerned (large data arrives only on PrepareStream). The
#: floor of bench/bench_stream.py keeps gRPC's defaults.
RECEIVE_WINDOW_BYTES = 8 << 20
#: Server options that fix the receive window (see :data:`RECEIVE_WINDOW_BYTES`).
RECEIVE_WINDOW_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", RECEIVE_WINDOW_BYTES),
)

#: The slowest a PrepareStream's data may arrive, on average: a sender's deadline for the
#: whole stream is its ``rpc_timeout`` plus its size at this rate (client.py), and a
#: receiver waits no longer than the same for the data it was sent (:class:`Paced`).
STREAM_BYTES_PER_SECOND = 8 << 20

#: Field 2 (``data``), wire type 2 (length-delimited): (2 << 3) | 2.
_DATA_TAG = b"\x12"


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


#: Field 1, wire type 2 (length-delimited): (1 << 3) | 2.
_FIELD_ONE_TAG = b"\x0a"


def encode_field_one(value: bytes) -> bytes:
    """The serialized message whose one field, number 1, is the bytes (or the UTF-8 of
    the string) ``value``: exactly ``PrepareRequest(transfer=value).SerializeToString()``
    and ``CommitRequest(migration_id=text).SerializeToString()`` for ``value`` of
    ``text.encode()`` (proto3 leaves an empty field out). The client sends its Prepare
    and Commit requests so, without building a message to serialize."""
    if not value:
        return b""
    return b"".join((_FIELD_ONE_TAG, _varint(len(value)), value))


def encode_part(part: gateway_pb2.PrepareChunk | bytes | bytearray | memoryview) -> bytes:
    """The serialized ``PrepareChunk``: a message as it is, bytes as its ``data``."""
    if isinstance(part, gateway_pb2.PrepareChunk):
        return part.SerializeToString()
    return b"".join((_DATA_TAG, _varint(memoryview(part).nbytes), part))


def as_sent(part: gateway_pb2.PrepareChunk | bytes) -> bytes:
    """PrepareStream's request serializer: a message serialized, bytes as they are
    (already framed by :func:`encode_part` in the request generator)."""
    if isinstance(part, bytes):
        return part
    return part.SerializeToString()


#: A varint is at most 10 bytes long (protobuf's own limit).
_MAX_VARINT_BYTES = 10


def decode_part(raw: bytes) -> gateway_pb2.PrepareChunk | memoryview:
    """A received ``PrepareChunk``: its ``data`` as a view of ``raw`` when ``raw`` is
    exactly one ``data`` field (no copy, no message), otherwise the parsed message."""
    if raw[:1] == _DATA_TAG:
        length = shift = 0
        for index in range(1, min(len(raw), 1 + _MAX_VARINT_BYTES)):
            byte = raw[index]
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                start = index + 1
                if start + length == len(raw):
                    return memoryview(raw)[start:]
                break
    try:
        return gateway_pb2.PrepareChunk.FromString(raw)
    except (DecodeError, RuntimeError, ValueError) as exc:
        # Raised into PrepareStream's handler as it reads the stream: a peer's bytes that
        # do not parse are its error to be told, not this server's (INTERNAL, logged).
        raise TransferStreamError(
            f"a PrepareStream message of {len(raw)} bytes does not decode: {exc}",
            hint="the sender runs an incompatible or misbehaving gateway",
        ) from exc


def data_of(part: gateway_pb2.PrepareChunk | memoryview) -> memoryview | bytes:
    """The data a decoded part carries; any other part is refused (after the transfer,
    a PrepareStream carries only data)."""
    if isinstance(part, memoryview):
        return part
    if part.WhichOneof("part") != "data":
        raise TransferStreamError("a PrepareStream carries one transfer, then only data")
    return part.data


M = TypeVar("M")


class Paced(Generic[M]):
    """A PrepareStream's messages as the server reads them, with the time spent waiting
    for the *peer* bounded (the time this host takes with each message is not counted):

    * any one message must arrive within ``patience`` seconds of being asked for: a peer
      that opens a stream and goes quiet holds its upload slot that long, not for as long
      as the deadline it chose for its own call;
    * all of them within ``patience`` plus the time the data received so far takes at
      :data:`STREAM_BYTES_PER_SECOND`: a peer that trickles the smallest parts allowed,
      each just within ``patience``, cannot stretch an object's upload beyond what an
      honest sender's own deadline allows for its size (which the signed size bounds).

    Either is a :class:`~gateway.errors.TransferStreamError` naming how long was waited.
    ``size_of`` gives the bytes of data a message carries."""

    def __init__(
        self,
        messages: AsyncIterator[M],
        *,
        patience: float,
        size_of: Callable[[M], int],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._messages = messages
        self._patience = patience
        self._size_of = size_of
        self._clock = clock
        self.received = 0  #: bytes of data received so far
        self.waited = 0.0  #: seconds spent waiting for the peer so far

    async def next(self) -> M | None:
        """The next message, or None at the end of the stream."""
        allowed = self._patience + self.received / STREAM_BYTES_PER_SECOND - self.waited
        wait = max(min(self._patience, allowed), 0.0)
        started = self._clock()
        try:
            async with asyncio.timeout(wait):
                message = await anext(self._messages, None)
        except TimeoutError as exc:
            self.waited += self._clock() - started
            raise TransferStreamError(
                self._overdue(stalled=wait >= self._patience),
                hint="the sender's connection or its store stalled; migrate again once "
                "it sends at a steady pace",
            ) from exc
        self.waited += self._clock() - started
        if message is not None:
            self.received += self._size_of(message)
        return message

    def _overdue(self, *, stalled: bool) -> str:
        if stalled:
            return (
                f"the PrepareStream's next message did not come within {self._patience:g} s "
                f"(after {self.received} bytes of data)"
            )
        return (
            f"the PrepareStream's data came slower than {STREAM_BYTES_PER_SECOND} bytes/s: "
            f"{self.received} bytes in {self.waited:.2f} s of waiting for the sender, where "
            f"at most {self._patience:g} s more than that rate takes is allowed"
        )

    async def __aiter__(self) -> AsyncIterator[M]:
        while (message := await self.next()) is not None:
            yield message
