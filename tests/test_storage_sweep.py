"""The storage sweep (gateway.runtime.sweep, issue 13 point 5, ADR 0009): a ``.blob`` file
no record names is deleted once old enough; a file an upload, a staged copy or an object
still names, or one just written, never is.

The crash test kills the real ``gateway migrate`` process between the source's commit
(the tombstone no longer names its file) and the unlink, lets A's server settle the
migration, then restarts both servers: the orphan goes at start, every live object's
file stays and reads back. Files are backdated (``os.utime``) past the age guard, so
what keeps a live file is that a record names it, not its age.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from gateway.blobs import (
    CHUNK_BYTES,
    BlobRef,
    blob_directory,
    blob_file_name,
    read_blob,
    write_blob,
)
from gateway.handoff.destination import UPLOAD_MARKERS
from gateway.handoff.journal import Journal, encode_counter
from gateway.host import Host
from gateway.model import LifecycleState
from gateway.runtime.sweep import ORPHAN_BLOB_AGE_S, sweep_orphan_blobs
from gateway.stores import Expect, StateStore
from gateway.stores.sqlite import SqliteStore
from gateway.testing import (
    HostSpec,
    ServerProcess,
    build_world,
    read_store,
    run_cli,
    sealed_transfer,
    sign_transfer,
    start_all,
)
from gateway.testing.harness import InProcessWorld
from tests.conftest import HOST_A, HOST_B
from tests.test_crash_recovery import SIGKILLED, command, environment, make_world, wait_for

MOVING = "obj://org-a.example/billing/invoice-7"
STAYING = "obj://org-a.example/billing/invoice-8"
OLD = ORPHAN_BLOB_AGE_S + 600  #: seconds a file is backdated by: past the age guard


def _backdate(directory: Path, *names: str) -> None:
    then = time.time() - OLD
    for name in names:
        os.utime(directory / name, (then, then))


async def _files(store: StateStore) -> list[str]:
    directory = blob_directory(store)
    assert directory is not None
    return sorted(p.name for p in directory.glob("*.blob")) if directory.is_dir() else []


async def _object_blob(store: StateStore, object_id: str) -> tuple[LifecycleState, BlobRef | None]:
    loaded = await Journal(store).object("default", object_id)
    assert loaded is not None, object_id
    return loaded.value.state, loaded.value.blob


async def _content(store: StateStore, ref: BlobRef) -> bytes:
    return b"".join([chunk async for chunk in read_blob(store, ref)])


def _directory(config: Path) -> Path:
    async def find(store: StateStore) -> Path:
        directory = blob_directory(store)
        assert directory is not None
        return directory

    return read_store(config, find)


def create_with_data(config: Path, object_id: str, data_file: Path) -> None:
    """``gateway object create`` of an octet-stream object from ``data_file``."""
    created = run_cli(
        "object",
        "create",
        object_id,
        "--data-file",
        str(data_file),
        "--content-type",
        "application/octet-stream",
        "--tenant",
        "default",
        config=config,
        timeout=60,
    )
    assert created.returncode == 0, created.stderr


@pytest.mark.slow
def test_an_orphan_left_by_a_crash_before_the_unlink_is_swept_at_start(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    config_a, config_b = world.config(HOST_A), world.config(HOST_B)
    data = {MOVING: os.urandom(2 * CHUNK_BYTES + 11), STAYING: os.urandom(CHUNK_BYTES + 5)}
    for object_id, content in data.items():
        data_file = tmp_path / f"{hashlib.sha256(object_id.encode()).hexdigest()}.bin"
        data_file.write_bytes(content)
        create_with_data(config_a, object_id, data_file)
    _state, moving_ref = read_store(config_a, lambda s: _object_blob(s, MOVING))
    _state, staying_ref = read_store(config_a, lambda s: _object_blob(s, STAYING))
    assert moving_ref is not None and staying_ref is not None
    orphan, staying_file = blob_file_name(moving_ref.location), blob_file_name(staying_ref.location)
    assert read_store(config_a, _files) == sorted([orphan, staying_file])

    with ExitStack() as stack:
        server_a, server_b = ServerProcess(config_a), ServerProcess(config_b)
        start_all(stack, server_a, server_b)
        # The migrating CLI dies after COMMITTED + tombstone, before deleting A's file.
        migrate = subprocess.run(
            command("migrate", MOVING, "--to", HOST_B, config=config_a, tenant="default"),
            env=environment(("source.after-commit-journal",)),
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert migrate.returncode == SIGKILLED, migrate.stderr
        # A's server finishes the migration from its journal (Commit, then DONE).
        wait_for(
            "B to hold the object ACTIVE",
            lambda: _active_on(config_b, MOVING),
        )
        state, _ref = read_store(config_a, lambda s: _object_blob(s, MOVING))
        assert state is LifecycleState.MOVED
        # What the crash left: A's file of the object that left, named by no record.
        assert orphan in read_store(config_a, _files)
        _state, on_b = read_store(config_b, lambda s: _object_blob(s, MOVING))
        assert on_b is not None
        b_file = blob_file_name(on_b.location)
        # B gets an orphan too (as a crash of B between a delete and an unlink leaves).
        planted = blob_file_name("blob/planted-orphan/")
        (_directory(config_b) / planted).write_bytes(b"left by a crash")

        server_a.stop()
        server_b.stop()
        _backdate(_directory(config_a), orphan, staying_file)
        _backdate(_directory(config_b), b_file, planted)
        server_a, server_b = ServerProcess(config_a), ServerProcess(config_b)
        start_all(stack, server_a, server_b)
        wait_for("A's sweep at start", lambda: read_store(config_a, _files) == [staying_file])
        wait_for("B's sweep at start", lambda: read_store(config_b, _files) == [b_file])

    state, ref = read_store(config_a, lambda s: _object_blob(s, STAYING))
    assert state is LifecycleState.ACTIVE and ref is not None
    assert read_store(config_a, lambda s: _content(s, ref)) == data[STAYING]
    assert read_store(config_b, lambda s: _content(s, on_b)) == data[MOVING]


@pytest.mark.slow
def test_a_server_killed_after_discarding_a_stage_leaves_an_orphan_the_sweep_removes(
    tmp_path: Path,
) -> None:
    """B's ``gateway serve`` is SIGKILLed right after journaling the abort of a staged
    copy, before unlinking its file (``destination.after-discard``). Restarted, B's sweep
    removes the file; A still holds the object and its data."""
    world = make_world(tmp_path)
    config_a, config_b = world.config(HOST_A), world.config(HOST_B)
    content = os.urandom(2 * CHUNK_BYTES + 3)
    data_file = tmp_path / "big.bin"
    data_file.write_bytes(content)
    create_with_data(config_a, MOVING, data_file)
    with ExitStack() as stack:
        server_a = ServerProcess(config_a)
        server_b = ServerProcess(config_b, env=environment(("destination.after-discard",)))
        start_all(stack, server_a, server_b)
        # The CLI dies once B staged the copy; A's server aborts, B discards and dies.
        migrate = subprocess.run(
            command("migrate", MOVING, "--to", HOST_B, config=config_a, tenant="default"),
            env=environment(("source.after-prepare",)),
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert migrate.returncode == SIGKILLED, migrate.stderr
        armed = server_b.process
        assert armed is not None
        wait_for("B to die at destination.after-discard", lambda: armed.poll() is not None)
        assert armed.returncode == SIGKILLED
        orphans = read_store(config_b, _files)
        assert len(orphans) == 1, "the discarded copy's file, named by no record"
        server_a.stop()
        _backdate(_directory(config_b), *orphans)
        a_files = read_store(config_a, _files)
        _backdate(_directory(config_a), *a_files)
        server_a, server_b = ServerProcess(config_a), ServerProcess(config_b)
        start_all(stack, server_a, server_b)
        wait_for("B's sweep at start", lambda: read_store(config_b, _files) == [])
        wait_for("A to hold the object ACTIVE", lambda: _active_on(config_a, MOVING))
        assert read_store(config_a, _files) == a_files

    state, ref = read_store(config_a, lambda s: _object_blob(s, MOVING))
    assert state is LifecycleState.ACTIVE and ref is not None
    assert read_store(config_a, lambda s: _content(s, ref)) == content


def _active_on(config: Path, object_id: str) -> bool:
    async def read(store: StateStore) -> bool:
        loaded = await Journal(store).object("default", object_id)
        return loaded is not None and loaded.value.state is LifecycleState.ACTIVE

    return read_store(config, read)


async def _parts(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 300_000):
        yield data[start : start + 300_000]


def test_an_upload_in_flight_a_staged_copy_and_a_new_file_survive_the_sweep(
    tmp_path: Path,
) -> None:
    """On B: an upload whose stream is complete but whose stage has not committed (its
    marker names it), a copy STAGED by a migration whose source never heard back, and a
    file just written (a create between its file and its record) all stay; an old file
    nothing names goes. On A, the object's own file stays."""
    world = InProcessWorld(
        build_world(tmp_path, [HostSpec(host_id=HOST_A), HostSpec(host_id=HOST_B)])
    )
    content = os.urandom(CHUNK_BYTES + 99)
    with contextlib.closing(world):
        host_a, host_b = world.hosts[HOST_A], world.hosts[HOST_B]
        world.run(
            host_a.create_object(
                MOVING,
                tenant="default",
                data=b"",
                content_type="application/octet-stream",
                data_stream=_parts(content),
            )
        )
        # A's signed transfer reaches B, which stages it; no Commit follows (yet).
        obj = world.run(host_a.journal.require_object("default", MOVING, host=HOST_A)).value
        transfer = sign_transfer(host_a, sealed_transfer(host_a, obj, HOST_B))
        world.run(host_b.destination.prepare_stream(transfer, _parts(content), peer=HOST_A))
        staged = world.run(host_b.journal.destination(_only(world.run(_destinations(host_b)))))
        assert staged is not None and staged.value.staged is not None
        store_b = host_b.store

        async def on_b() -> tuple[list[str], list[str]]:
            before = await _files(store_b)
            # An upload in flight: its marker, then its complete file (as _upload does).
            suffix = "peer-tag/migration-in-flight/0123456789abcdef"
            await store_b.put(UPLOAD_MARKERS + suffix, encode_counter(2**62), etag=Expect.ABSENT)
            await write_blob(store_b, f"upload/{suffix}/", _parts(content))
            # Nothing names these two; one was written just now, one long ago.
            await write_blob(store_b, "blob/just-created/", _parts(b"new"))
            await write_blob(store_b, "blob/long-orphaned/", _parts(b"old"))
            directory = blob_directory(store_b)
            assert directory is not None
            young = blob_file_name("blob/just-created/")
            _backdate(directory, *[n for n in await _files(store_b) if n != young])
            removed = await sweep_orphan_blobs(store_b)
            return before, [p.name for p in removed]

        before, removed = world.run(on_b())
        assert staged.value.staged.blob is not None
        assert before == [blob_file_name(staged.value.staged.blob.location)]
        assert removed == [blob_file_name("blob/long-orphaned/")]
        left = world.run(_files(store_b))
        assert sorted(left) == sorted(
            [
                *before,
                blob_file_name("upload/peer-tag/migration-in-flight/0123456789abcdef/"),
                blob_file_name("blob/just-created/"),
            ]
        )
        directory_a = blob_directory(host_a.store)
        assert directory_a is not None
        files_a = world.run(_files(host_a.store))
        _backdate(directory_a, *files_a)
        assert world.run(sweep_orphan_blobs(host_a.store)) == []
        _state, ref = world.run(_object_blob(host_a.store, MOVING))
        assert ref is not None and world.run(_content(host_a.store, ref)) == content


async def _destinations(host: Host) -> list[str]:
    return await host.store.list("journal/destination/")


def _only(keys: list[str]) -> str:
    assert len(keys) == 1, keys
    return keys[0].removeprefix("journal/destination/")


def test_an_unreadable_record_stops_the_sweep(tmp_path: Path) -> None:
    """A record the sweep cannot parse might name a file: nothing is deleted."""

    async def main() -> tuple[int, int]:
        async with SqliteStore.open(tmp_path / "s.db", create=True) as store:
            await write_blob(store, "blob/orphan/", _parts(b"x" * 10))
            directory = blob_directory(store)
            assert directory is not None
            _backdate(directory, blob_file_name("blob/orphan/"))
            await store.put(
                "t/default/objects/broken", b"\xff\xff not protobuf", etag=Expect.ABSENT
            )
            kept = len(await sweep_orphan_blobs(store))
            await store.delete("t/default/objects/broken", etag=Expect.ANY)
            return kept, len(await sweep_orphan_blobs(store))

    assert asyncio.run(main()) == (0, 1)


def test_gateway_sweep_lists_then_deletes_only_the_orphan_and_names_an_unreadable_record(
    tmp_path: Path,
) -> None:
    """``gateway sweep``: ``--dry-run`` names the file no record names and deletes
    nothing; the sweep deletes exactly it (the object's own file, as old, stays and reads
    back); a record it cannot read is one error line, exit 1, and nothing deleted."""
    world = make_world(tmp_path)
    config = world.config(HOST_A)
    content = os.urandom(CHUNK_BYTES + 3)
    data_file = tmp_path / "data.bin"
    data_file.write_bytes(content)
    create_with_data(config, STAYING, data_file)

    async def orphan(store: StateStore) -> str:
        await write_blob(store, "blob/long-orphaned/", _parts(b"old" * 100))
        directory = blob_directory(store)
        assert directory is not None
        _backdate(directory, *await _files(store))
        return blob_file_name("blob/long-orphaned/")

    orphaned = read_store(config, orphan)
    _state, ref = read_store(config, lambda s: _object_blob(s, STAYING))
    assert ref is not None
    named = blob_file_name(ref.location)

    listed = run_cli("sweep", "--dry-run", "-o", "json", config=config)
    assert listed.returncode == 0, listed.stderr
    report = json.loads(listed.stdout)
    assert report["dry_run"] is True
    assert [Path(f["path"]).name for f in report["blob_files"]["files"]] == [orphaned]
    assert report["blob_files"]["files"][0]["bytes"] == 300
    assert report["archive"] == {"retention_s": None, "objects": []}
    assert read_store(config, _files) == sorted([orphaned, named]), "a dry run deletes nothing"

    swept = run_cli("sweep", config=config)
    assert swept.returncode == 0, swept.stderr
    assert "deleted 1 blob file(s) no record names, 300 bytes" in swept.stdout
    assert orphaned in swept.stdout
    assert "archive segments: all kept" in swept.stdout
    assert read_store(config, _files) == [named]
    assert read_store(config, lambda s: _content(s, ref)) == content

    async def break_a_record(store: StateStore) -> None:
        await write_blob(store, "blob/another/", _parts(b"x" * 10))
        directory = blob_directory(store)
        assert directory is not None
        _backdate(directory, blob_file_name("blob/another/"))
        await store.put("t/default/objects/broken", b"\xff\xff not protobuf", etag=Expect.ABSENT)

    read_store(config, break_a_record)
    refused = run_cli("sweep", config=config)
    assert refused.returncode == 1, refused.stdout
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "t/default/objects/broken" in lines[0], refused.stderr
    assert "unreadable" in lines[0]
    assert blob_file_name("blob/another/") in read_store(config, _files)
