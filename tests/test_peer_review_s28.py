"""Findings of a dishonest-peer review of what a destination (and a custody home) accepts.

Each test shows one thing a peer holding valid keys and certificates could send, and what
the receiver must do instead of what it did: refuse with a GatewayError naming what was
wrong, before anything is written, and stay able to serve the honest peers after it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from gateway import blobs, versions, wire
from gateway import envelope as dsse
from gateway.blobs import read_blob
from gateway.config import load_config
from gateway.errors import (
    GatewayError,
    LimitExceededError,
    TransferStreamError,
    VersionError,
)
from gateway.handoff.destination import UPLOAD_MARKERS, Destination
from gateway.handoff.home import CustodyRecord, custody_key
from gateway.host import Host
from gateway.reload import Reloader
from gateway.testing import (
    HostSpec,
    World,
    build_world,
    sealed_transfer,
    serving,
    sign_transfer,
)
from gateway.transport.framing import encode_part
from gateway.transport.status import ERROR_TYPE_KEY
from gateway.v1 import gateway_pb2
from tests.conftest import HOST_A, HOST_A2, HOST_B
from tests.test_custody_home import HOST_C, HOST_D, OBJECT, claim, record, with_hosts

# --- the capabilities a caller announces (every RPC, gateway/transport/server.py) -------


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("²", "superscript two: str.isdigit() holds, int() raises ValueError"),
        ("1,³", "a valid version beside a superscript three"),
        ("٣", "Arabic-Indic three: int() reads it as 3, a second spelling of a version"),
    ],
)
def test_a_peer_announcing_digits_that_are_not_ascii_gets_a_version_error(
    value: str, why: str
) -> None:
    """The server negotiates from the caller's metadata before anything else; a value
    int() refuses escaped as a ValueError (answered INTERNAL, logged with a traceback
    per call) instead of the VersionError every other malformed list gets."""
    for key in (versions.PROTOCOL_KEY, versions.FORMAT_KEY):
        metadata = [(versions.PROTOCOL_KEY, "1"), (key, value)]
        with pytest.raises(VersionError, match="is not a list of version numbers"):
            versions.Capabilities.from_metadata(metadata)


# --- the custody home's Claim (gateway/handoff/home.py) ---------------------------------


def test_a_claim_with_an_epoch_beyond_64_bits_is_refused_and_custody_can_still_move(
    tmp_path: Path,
) -> None:
    """The holder of an object (a host of another domain, with valid keys) signs its own
    departure to itself at epoch 2**64, and its own COMMITTED decision. The home granted
    it and wrote a custody record that CustodyRecord.decode refuses ("must fit in 64
    bits"): from then on every claim of the object, the holder's honest ones included,
    failed with PayloadDecodeError, and the object could never move again."""
    world = build_world(
        tmp_path, [HostSpec(host_id=h) for h in (HOST_A, HOST_A2, HOST_B, HOST_C, HOST_D)]
    )

    async def body(hosts: dict[str, Host]) -> None:
        await claim(hosts, HOST_A, HOST_B, 1, "mig-1")  # B holds the object from epoch 1
        home = hosts[HOST_A2]
        before = await home.store.get(custody_key(OBJECT))
        assert before is not None
        with pytest.raises(LimitExceededError, match="epoch of the departure"):
            await claim(hosts, HOST_B, HOST_B, 2**64, "mig-2")
        with pytest.raises(GatewayError, match="migration id"):
            await claim(hosts, HOST_B, HOST_B, 2, "m" * 1000)
        after = await home.store.get(custody_key(OBJECT))
        assert after is not None and after.value == before.value  # nothing written
        CustodyRecord.decode(after.value)  # and what is there still reads
        # The holder hands the object on as usual.
        assert record(await claim(hosts, HOST_B, HOST_C, 2, "mig-3")).holder == HOST_C

    with_hosts(world, body)


# --- a streamed upload that outlives its transfer (gateway/handoff/destination.py) ------


class _Shifted:
    """A clock ``offset`` ahead of the real one (moved by the test)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


async def _pieces(data: bytes, size: int = 256 << 10) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize("collector", ["this process", "another process"])
def test_an_upload_still_streaming_when_its_marker_expires_is_never_staged_broken(
    any_store_world: World, monkeypatch: pytest.MonkeyPatch, collector: str
) -> None:
    """A peer streams slowly: its upload is still running when the transfer's marker
    expires (expiry + 2 x clock skew) and recovery's collect_uploads, in this process or
    in another one on the same store, deletes what the upload had stored so far. The
    upload went on and staged an object whose first chunks were gone (on Commit: a live
    object without its data, the source's copy MOVED). Now this process never collects
    an upload it is still streaming, and an upload whose marker another process
    collected is refused, nothing staged. (On blob files the collection unlinked the
    ``.part`` file and the upload failed, safely but saying "check the free space".)"""
    world = any_store_world
    # Chunks in a store go in transactions of two: the stand-in sidecar takes messages
    # of at most 4 MiB, and a transaction of four 1 MiB chunks (or a delete of them,
    # which reads what it deletes) is more.
    monkeypatch.setattr(blobs, "BATCH", 2)
    monkeypatch.setattr(blobs, "DELETE_BATCH", 2)
    payload = bytes(range(256)) * (40 << 10)  # 10 MiB: two batches of chunks, then more

    async def main() -> None:
        a = await Host.open(load_config(world.config(HOST_A)))
        b = await Host.open(load_config(world.config(HOST_B)))
        try:
            obj = await a.create_object(
                "obj://org-a.example/bounds/slow",
                tenant="default",
                data=b"",
                content_type="application/octet-stream",
                data_stream=_pieces(payload),
            )
            transfer = sealed_transfer(a, obj, HOST_B)
            clock = _Shifted()
            object.__setattr__(b.context, "clock", clock)
            collecting = b.destination if collector == "this process" else Destination(b.context)

            async def slow() -> AsyncIterator[bytes]:
                yield payload[: 8 << 20]
                await asyncio.sleep(0.2)  # the first chunks reach B's store
                # Time passes (the peer trickles): the marker is past its expiry, and
                # recovery runs while the upload still streams.
                skew = b.context.timing.clock_skew
                clock.offset = (transfer.expires_at - clock.now()) + 3 * skew
                await collecting.collect_uploads()
                yield payload[8 << 20 :]

            sending = b.destination.prepare_stream(sign_transfer(a, transfer), slow(), peer=HOST_A)
            if collector == "another process":
                with pytest.raises(TransferStreamError):
                    await sending
                assert await b.journal.destination(transfer.migration_id) is None
                assert await b.store.list("upload") == []  # no marker, no chunks left
                return
            await sending
            staged = await b.journal.destination(transfer.migration_id)
            assert staged is not None and staged.value.staged is not None
            blob = staged.value.staged.blob
            assert blob is not None
            try:
                stored = b"".join([bytes(c) async for c in read_blob(b.store, blob)])
            except GatewayError as exc:
                raise AssertionError(f"the staged object's data is gone: {exc}") from exc
            assert stored == payload, "the staged object's data is damaged"
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


# --- PrepareStream's messages (gateway/transport/framing.py) ----------------------------


def test_a_prepare_stream_message_that_does_not_decode_is_the_peers_error(
    world: World,
) -> None:
    """framing.decode_part (PrepareStream's request deserializer) let protobuf's
    DecodeError out into the handler: the peer was answered INTERNAL ("failed inside the
    gateway; see its log") and this host logged a traceback per message. Now it is a
    TransferStreamError, answered as such, and an upload it breaks off leaves nothing."""
    payload = bytes(range(256)) * (8 << 10)  # 2 MiB

    async def main() -> None:
        async with serving(world, [HOST_A, HOST_B]) as hosts:
            a, b = hosts[HOST_A], hosts[HOST_B]
            obj = await a.create_object(
                "obj://org-a.example/bounds/corrupt",
                tenant="default",
                data=b"",
                content_type="application/octet-stream",
                data_stream=_pieces(payload),
            )
            transfer = sign_transfer(a, sealed_transfer(a, obj, HOST_B))
            call = a.peers.client(HOST_B).channel.stream_unary(
                "/gateway.v1.Gateway/PrepareStream",
                request_serializer=lambda raw: raw,
                response_deserializer=gateway_pb2.PrepareResponse.FromString,
            )
            corrupt = b"\x12" + b"\x80" * 10 + b"\x00abc"  # a varint longer than 10 bytes
            streams = {
                "corrupt first message": [corrupt],
                "corrupt data after the transfer": [
                    encode_part(gateway_pb2.PrepareChunk(transfer=transfer)),
                    encode_part(payload[: 1 << 20]),
                    corrupt,
                ],
            }
            for name, messages in streams.items():

                async def send(messages: list[bytes] = messages) -> AsyncIterator[bytes]:
                    # The request stream ends with the corrupt message: a refusal while
                    # the client still writes can lose its status to grpc.aio's own
                    # INTERNAL (grpc/grpc#36066, see tests/test_peer_bounds.py).
                    for index, message in enumerate(messages):
                        if index:
                            await asyncio.sleep(0.05)
                        yield message

                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call(send(), metadata=tuple(versions.ours().metadata()), timeout=30)
                error = refused.value
                assert error.code() is not grpc.StatusCode.INTERNAL, (name, error.details())
                assert (ERROR_TYPE_KEY, "TransferStreamError") in tuple(
                    error.trailing_metadata() or ()
                ), name
                assert "does not decode" in (error.details() or ""), name
            for _ in range(50):  # B removes a broken-off upload as the call ends
                if not await b.store.list("upload"):
                    break
                await asyncio.sleep(0.1)
            assert await b.store.list("upload") == []

    asyncio.run(main())


# --- unary requests (gateway/transport/server.py) ---------------------------------------

UNARY_RPCS = ("Prepare", "Commit", "Abort", "Decision", "Evaluate", "Claim", "Call")


def test_a_unary_request_that_does_not_decode_is_the_peers_error(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """The generated deserializers ran inside gRPC: protobuf's DecodeError was answered
    UNKNOWN with protobuf's own text and logged at ERROR with a traceback, per request
    and before the peer was known. Now every RPC refuses it as PayloadDecodeError
    (INVALID_ARGUMENT, named in the gateway-error trailer) and logs one INFO line."""
    corrupt = b"\x12" + b"\x80" * 10  # a varint longer than protobuf's 10 bytes

    async def main() -> None:
        async with serving(world, [HOST_A, HOST_B]) as hosts:
            channel = hosts[HOST_A].peers.client(HOST_B).channel
            for rpc in UNARY_RPCS:
                call = channel.unary_unary(
                    f"/gateway.v1.Gateway/{rpc}",
                    request_serializer=lambda raw: raw,
                    response_deserializer=lambda raw: raw,
                )
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call(corrupt, metadata=tuple(versions.ours().metadata()), timeout=30)
                error = refused.value
                assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (rpc, error.details())
                assert (ERROR_TYPE_KEY, "PayloadDecodeError") in tuple(
                    error.trailing_metadata() or ()
                ), rpc
                assert f"the {rpc} request does not decode" in (error.details() or ""), rpc
            # And the service still answers a well-formed request as before (a Commit
            # for an id it never staged: its signed unknown-migration answer).
            answer = await hosts[HOST_A].peers.client(HOST_B).commit("mig-unknown")
            unknown = wire.decode_envelope(answer)
            assert unknown.payload_type == dsse.PayloadType.UNKNOWN_MIGRATION

    with caplog.at_level(logging.INFO):
        asyncio.run(main())
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


def test_a_reload_never_lets_the_new_snapshot_collect_an_upload_the_old_one_streams(
    tmp_path: Path,
) -> None:
    """A config reload replaces the Destination (gateway.reload); a PrepareStream that
    started before it goes on under the old one. The new snapshot's recovery must know
    that upload's marker is in flight, as the old one did (and as the per-peer count of
    uploads in flight is carried over)."""
    world = build_world(tmp_path, [HostSpec(host_id=HOST_B)])

    async def main() -> None:
        b = await Host.open(load_config(world.config(HOST_B)))
        try:
            old = b.destination
            marker = f"{UPLOAD_MARKERS}peer/mig-1/attempt"
            old._uploading.add(marker)  # what _upload does as a stream starts
            path = world.config(HOST_B)
            path.write_text(
                path.read_text().replace(f"  id: {HOST_B}\n", f"  id: {HOST_B}\n  region: x\n")
            )
            assert await Reloader(b).reload(why="test") is not None
            assert b.destination is not old
            assert marker in b.destination._uploading
        finally:
            await b.close()

    asyncio.run(main())
