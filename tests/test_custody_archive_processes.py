"""ADR 0010 step 2 through real processes: two organizations' `gateway serve` (own CAs,
real mTLS, SQLite) move an object back and forth more than K + MIN_CARRIED_HANDOFFS
times with ``lineage.custody_keep: 8`` and a small compaction policy. The handoffs the
object carries stay bounded (compaction archives the older ones in custody segments),
it keeps migrating (each receiver accepts the carried-only evidence), exactly one live
copy exists, and `gateway verify --archive`, run offline with only the exported files,
replays the whole history from both hosts' archives and the object.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.handoff.journal import Journal
from gateway.lineage import Checkpoint
from gateway.stores import StateStore
from gateway.testing import ServerProcess, World, read_store, run_cli
from gateway.testing.invariants import Snapshot, assert_one_live_copy, snapshot
from tests.conftest import HOST_A, HOST_B
from tests.test_compaction_runtime import OBJECT, SMALL, TICK, cli, create, wait_for, world_with

pytestmark = pytest.mark.slow

KEEP = 8
HOPS = 18  #: more than KEEP + MIN_CARRIED_HANDOFFS (16)


def carried(world: World, host: str) -> tuple[int, int]:
    """(departures carried, hops of the newest departure) of the copy on ``host``."""

    async def read(store: StateStore) -> tuple[int, int]:
        loaded = await Journal(store).object("default", OBJECT)
        assert loaded is not None
        lineage = loaded.value.lineage
        newest = Checkpoint.decode(lineage.checkpoints[-1].payload) if lineage.checkpoints else None
        return len(lineage.checkpoints), newest.hops if newest else 0

    return read_store(world.config(host), read)


def test_an_object_moving_back_and_forth_carries_k_handoffs_and_verifies_offline(
    tmp_path: Path,
) -> None:
    world = world_with(tmp_path, {"compaction": SMALL, "custody_keep": KEEP}, (HOST_A, HOST_B))
    create(world, HOST_A, TICK)
    most_carried = 0
    with ServerProcess(world.config(HOST_A)), ServerProcess(world.config(HOST_B)):
        for hop in range(HOPS):
            source, destination = (HOST_A, HOST_B) if hop % 2 == 0 else (HOST_B, HOST_A)
            cli(world, source, "migrate", OBJECT, "--to", destination)
            departures, hops = carried(world, destination)
            assert hops == hop + 1  # the newest departure counts every hop, archived too
            most_carried = max(most_carried, departures)
        # The holder (A) compacts after its cycles; the carried handoffs fall to K.
        wait_for("custody archived on A", lambda: carried(world, HOST_A)[0] <= KEEP)
        # Bounded: never more than K + the handoffs of one compaction interval.
        assert most_carried < HOPS
        # And it still moves: B accepts the carried-only evidence.
        cli(world, HOST_A, "migrate", OBJECT, "--to", HOST_B)
        assert carried(world, HOST_B)[1] == HOPS + 1

        async def snap(store: StateStore, host: str) -> Snapshot:
            return await snapshot(store, host=host, tenant="default", object_id=OBJECT)

        snapshots = {
            h: read_store(world.config(h), lambda s, h=h: snap(s, h)) for h in (HOST_A, HOST_B)
        }
        assert assert_one_live_copy(snapshots) == HOST_B
        exported = json.loads(
            cli(world, HOST_A, "object", "archive", OBJECT, tmp_path / "arch-a", "-o", "json")
        )
        assert exported["segments"]
        written = sorted((tmp_path / "arch-a").glob("custody-*.cus"))
        assert written
        # The JSON names each archived-handoff file it wrote, with its hop range.
        assert sorted(Path(c["file"]) for c in exported["custody"]) == written
        assert all(c["handoffs"] >= 1 for c in exported["custody"])
        object_file = tmp_path / "object.json"
        cli(
            world,
            HOST_B,
            "object",
            "show",
            OBJECT,
            "--export",
            object_file,
            "--archive-out",
            tmp_path / "arch-b",
        )
        bundles: list[str | Path] = []
        for host in (HOST_A, HOST_B):
            bundle = tmp_path / f"{host.split('/')[2]}.bundle"
            cli(world, host, "trust", "export", "--out", bundle)
            bundles += ["--trust", bundle]
    archives = ["--archive", tmp_path / "arch-a", "--archive", tmp_path / "arch-b"]
    verified = run_cli("verify", object_file, *archives, *bundles, "-o", "json", cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    report = json.loads(verified.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert report["verified"] is True and checks["archived history"]["status"] == "ok"
    # Without the custody segments the archived handoffs cannot be replayed: exit 1.
    for folder in (tmp_path / "arch-a", tmp_path / "arch-b"):
        for custody in folder.glob("custody-*.cus"):
            custody.unlink()
    partial = run_cli("verify", object_file, *archives, *bundles, cwd=tmp_path)
    assert partial.returncode == 1 and "custody segment is missing" in partial.stderr
    assert len(partial.stderr.strip().splitlines()) == 1
