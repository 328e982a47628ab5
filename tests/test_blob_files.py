"""Blob files beside a SQLite store (ADR 0009): a blob is complete, verified and durable
before anything can name it, and what a failure or a crash leaves behind is found and
removed by the upload markers and the sweep of ``.part`` files.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from gateway.blobs import (
    CHUNK_BYTES,
    FILE_LOCATION,
    delete_blob,
    delete_location,
    read_blob,
    read_blob_views,
    stored_files,
    sweep_partial_files,
    write_blob,
)
from gateway.errors import TransferStreamError
from gateway.handoff.destination import UPLOAD_MARKERS
from gateway.lineage import digest
from gateway.model import LifecycleState
from gateway.stores.sqlite import SqliteStore
from gateway.testing import ServerProcess, read_store, start_all
from tests.conftest import HOST_A, HOST_B
from tests.test_crash_recovery import (
    SIGKILLED,
    command,
    environment,
    host_state,
    make_world,
    wait_for,
)
from tests.test_storage_sweep import create_with_data

DATA = os.urandom(3 * CHUNK_BYTES + 777)


async def parts(data: bytes, size: int = 300_000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def run(tmp_path: Path, scenario) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        async with SqliteStore.open(tmp_path / "s.db", create=True) as store:
            await scenario(store)

    asyncio.run(main())


def test_a_blob_is_one_file_that_reads_back_and_is_deleted_with_its_ref(tmp_path: Path) -> None:
    async def scenario(store: SqliteStore) -> None:
        ref = await write_blob(
            store,
            "blob/a/",
            parts(DATA),
            expected_digest=hashlib.sha256(DATA).digest(),
            expected_size=len(DATA),
        )
        assert ref.location == FILE_LOCATION + "blob/a/" and ref.size == len(DATA)
        assert ref.chunks == 4  # CHUNK_BYTES reads, as a chunked blob would have
        (file,) = stored_files(store)
        assert file.suffix == ".blob" and file.read_bytes() == DATA
        assert await store.list("blob/") == []  # no row holds the bytes
        chunks = [c async for c in read_blob(store, ref)]
        assert [len(c) for c in chunks] == [CHUNK_BYTES] * 3 + [777]
        assert b"".join(chunks) == DATA
        await delete_blob(store, ref)
        assert stored_files(store) == []

    run(tmp_path, scenario)


def test_a_blob_file_read_as_views_gives_its_bytes_from_a_few_reused_buffers(
    tmp_path: Path,
) -> None:
    """read_blob_views (the source's stream) reads into a few buffers used over and over:
    each piece, copied before the next is asked for, is the file's bytes in order, and
    the pieces share a bounded set of buffers instead of a fresh one each."""

    async def scenario(store: SqliteStore) -> None:
        data = os.urandom(10 * CHUNK_BYTES + 123)
        ref = await write_blob(store, "blob/v/", parts(data), expected_size=len(data))
        copies: list[bytes] = []
        buffers: set[int] = set()
        async for piece in read_blob_views(store, ref, piece_bytes=CHUNK_BYTES):
            assert isinstance(piece, memoryview)
            buffers.add(id(piece.obj))
            copies.append(bytes(piece))  # what gRPC's serializer does before the next
        assert b"".join(copies) == data
        assert [len(c) for c in copies] == [CHUNK_BYTES] * 10 + [123]
        assert len(buffers) <= 5 < len(copies)  # the read-ahead window + 1, reused

    run(tmp_path, scenario)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (DATA[:-1], "truncated"),
        (DATA + b"x", "longer than"),
        (DATA[:5] + bytes([DATA[5] ^ 1]) + DATA[6:], "does not hash"),
    ],
    ids=["truncated", "too-long", "digest-mismatch"],
)
def test_a_bad_stream_leaves_no_file(tmp_path: Path, data: bytes, reason: str) -> None:
    async def scenario(store: SqliteStore) -> None:
        with pytest.raises(TransferStreamError, match=reason):
            await write_blob(
                store,
                "upload/x/",
                parts(data),
                expected_digest=hashlib.sha256(DATA).digest(),
                expected_size=len(DATA),
            )
        assert stored_files(store) == []
        # The location is free again: the same upload, honest this time, goes through.
        ref = await write_blob(store, "upload/x/", parts(DATA), expected_size=len(DATA))
        assert b"".join([c async for c in read_blob(store, ref)]) == DATA

    run(tmp_path, scenario)


def test_a_dishonest_size_is_refused_before_it_is_written(tmp_path: Path) -> None:
    """The announced size caps what is written, part by part: a sender claiming 10 bytes
    and sending a chunk of a MiB gets nothing on disk."""

    async def scenario(store: SqliteStore) -> None:
        with pytest.raises(TransferStreamError, match="longer than the 10 bytes"):
            await write_blob(store, "upload/y/", parts(DATA, CHUNK_BYTES), expected_size=10)
        assert stored_files(store) == []

    run(tmp_path, scenario)


def test_a_write_never_goes_through_another_writes_file(tmp_path: Path) -> None:
    """A location is written by one writer: one that finds a ``.part`` file there (an
    unfinished write) is refused rather than writing into it."""

    async def scenario(store: SqliteStore) -> None:
        await write_blob(store, "blob/once/", parts(DATA))
        (first,) = stored_files(store)
        with pytest.raises(TransferStreamError, match="cannot write"):
            await write_blob(store, "blob/once/", parts(b"other"))
        assert first.read_bytes() == DATA and stored_files(store) == [first]
        first.with_suffix(".part").write_bytes(b"")
        with pytest.raises(TransferStreamError, match="cannot create"):
            await write_blob(store, "blob/once/", parts(b"other"))
        assert first.read_bytes() == DATA

    run(tmp_path, scenario)


def test_a_truncated_file_is_reported_not_read_short(tmp_path: Path) -> None:
    async def scenario(store: SqliteStore) -> None:
        ref = await write_blob(store, "blob/t/", parts(DATA))
        (file,) = stored_files(store)
        os.truncate(file, CHUNK_BYTES + 5)
        with pytest.raises(TransferStreamError, match="shorter than"):
            _ = [c async for c in read_blob(store, ref)]

    run(tmp_path, scenario)


def test_leftovers_of_a_location_and_stale_part_files_are_removed(tmp_path: Path) -> None:
    async def scenario(store: SqliteStore) -> None:
        await write_blob(store, "upload/p/m/a/", parts(DATA))
        directory = store.blob_directory
        stale = directory / ("0" * 64 + ".part")
        fresh = directory / ("1" * 64 + ".part")
        stale.write_bytes(b"half")
        fresh.write_bytes(b"half")
        old = time.time() - 2 * 3600
        os.utime(stale, (old, old))
        assert sweep_partial_files(store) == 1  # a write still going on is left alone
        assert not stale.exists() and fresh.exists()
        await delete_location(store, "upload/p/m/a/")
        assert stored_files(store) == [fresh]

    run(tmp_path, scenario)


# --- through real processes ----------------------------------------------------------


@pytest.mark.slow
def test_a_destination_killed_after_writing_the_file_keeps_no_orphan(tmp_path: Path) -> None:
    """B is SIGKILLed after the whole blob file is written and fsynced, before its stage
    commits. The migration aborts, A keeps the object and its data, and restarted B's
    recovery removes the file no record names once the transfer could no longer be
    staged (its upload marker expired)."""
    world = make_world(tmp_path)
    config_a, config_b = world.config(HOST_A), world.config(HOST_B)
    object_id = "obj://org-a.example/billing/invoice-7"  # the crash tests' object name
    data_file = tmp_path / "big.bin"
    data_file.write_bytes(DATA)
    create_with_data(config_a, object_id, data_file)

    def files(config: Path) -> list[str]:
        return read_store(config, lambda store: _names(store))

    assert len(files(config_a)) == 1
    with ExitStack() as stack:
        server_a = ServerProcess(config_a)
        server_b = ServerProcess(config_b, env=environment(("destination.before-stage",)))
        start_all(stack, server_a, server_b)
        migrate = stack.enter_context(
            _popen(command("migrate", object_id, "--to", HOST_B, config=config_a, tenant="default"))
        )
        assert migrate.wait(timeout=60) == 1
        armed = server_b.process
        assert armed is not None
        wait_for("B to die at its crash point", lambda: armed.poll() is not None)
        assert armed.returncode == SIGKILLED
        # What the crash left: the complete file and its marker, named by no record.
        assert len(files(config_b)) == 1
        assert read_store(config_b, lambda store: store.list(UPLOAD_MARKERS))
        server_b.stop()
        server_b = ServerProcess(config_b)
        start_all(stack, server_b)
        # The collector deletes the file, then its marker, in two steps: wait for both
        # (asserting the marker right after the file went was a race under load).
        wait_for(
            "B to collect the orphaned upload",
            lambda: (
                files(config_b) == []
                and read_store(config_b, lambda store: store.list(UPLOAD_MARKERS)) == []
            ),
            30,
        )

    a = host_state(config_a, "default").obj
    assert a is not None and a.state is LifecycleState.ACTIVE and a.blob is not None
    assert a.blob.digest == digest(DATA) == hashlib.sha256(DATA).digest()
    assert host_state(config_b, "default").obj is None

    async def content(store: SqliteStore) -> bytes:
        assert a.blob is not None
        return b"".join([c async for c in read_blob(store, a.blob)])

    assert read_store(config_a, content) == DATA


async def _names(store: SqliteStore) -> list[str]:
    return [path.name for path in stored_files(store)]


def _popen(argv: list[str]):  # type: ignore[no-untyped-def]
    import subprocess

    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.parametrize(
    "length",
    [0, 1, 127, 128, 255, 16_383, 16_384, 300_000, CHUNK_BYTES, 2_097_151, 2_097_152],
)
def test_a_framed_data_chunk_is_the_message_protobuf_would_send(length: int) -> None:
    """transport/framing.py writes PrepareChunk(data=...) without the message object; the
    bytes must be exactly the library's, at every varint length boundary."""
    from gateway.transport.framing import encode_part
    from gateway.v1 import gateway_pb2

    data = os.urandom(length)
    expected = gateway_pb2.PrepareChunk(data=data).SerializeToString()
    assert encode_part(data) == expected
    assert encode_part(memoryview(data)) == expected
    assert gateway_pb2.PrepareChunk.FromString(encode_part(data)).data == data
    transfer = gateway_pb2.PrepareChunk(transfer=data[:50])
    assert encode_part(transfer) == transfer.SerializeToString()
    # What the client's serializer sends: frames (built by its request generator) as
    # they are, messages serialized.
    from gateway.transport.framing import as_sent

    assert as_sent(encode_part(data)) == expected
    assert as_sent(transfer) == transfer.SerializeToString()


@pytest.mark.parametrize(
    "length", [0, 1, 127, 128, 16_383, 16_384, 300_000, CHUNK_BYTES, 2_097_152]
)
def test_a_received_data_chunk_decodes_as_protobuf_would(length: int) -> None:
    """framing.decode_part reads the one-field form as a view of the received bytes (no
    message, no copy); its data must be what the library's parser gives, and anything
    else goes to that parser."""
    from gateway.transport.framing import data_of, decode_part, encode_part
    from gateway.v1 import gateway_pb2

    data = os.urandom(length)
    raw = encode_part(data)
    part = decode_part(raw)
    assert isinstance(part, memoryview)
    assert bytes(data_of(part)) == gateway_pb2.PrepareChunk.FromString(raw).data == data
    # A transfer, and data followed by another field (the last one set wins the oneof):
    # both go through the parser and mean what protobuf says.
    transfer = gateway_pb2.PrepareChunk(transfer=data[:50]).SerializeToString()
    for odd in (transfer, raw + transfer):
        decoded = decode_part(odd)
        assert isinstance(decoded, gateway_pb2.PrepareChunk)
        assert decoded == gateway_pb2.PrepareChunk.FromString(odd)
        with pytest.raises(TransferStreamError, match="only data"):
            data_of(decoded)
    # Two data fields: protobuf keeps the last; so must the decoding.
    twice = encode_part(b"first") + raw
    assert bytes(data_of(decode_part(twice))) == data


def test_a_data_chunk_with_a_padded_length_decodes_as_protobuf_would() -> None:
    """A varint may be padded with 0x80 bytes (protobuf accepts up to 10); a peer's odd
    but valid encoding means the same data, and a varint too long is the parser's to refuse."""
    from google.protobuf.message import DecodeError

    from gateway.transport.framing import data_of, decode_part
    from gateway.v1 import gateway_pb2

    padded = b"\x12\x83\x80\x00abc"  # length 3 written in three bytes
    assert bytes(data_of(decode_part(padded))) == gateway_pb2.PrepareChunk.FromString(padded).data
    too_long = b"\x12" + b"\x80" * 10 + b"\x00abc"
    with pytest.raises(DecodeError):
        gateway_pb2.PrepareChunk.FromString(too_long)
    with pytest.raises(TransferStreamError, match="does not decode"):
        decode_part(too_long)  # the peer's error, named (tests/test_peer_review_s28.py)
