"""Archive retention (issue 13 point 5, docs/lineage.md "Retention"): segments a host
archived in its store for an object that left are pruned once
``lineage.compaction.archive_retention_seconds`` passed since the departure, first
exported as files with ``archive_export_dir``; unset (the default), they are kept
forever. Segments of an object that lives here are never pruned.

Real SQLite stores, hosts served in-process with settable clocks; cycles are run by hand
so each compacts exactly when the policy says.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.archive import ArchiveDir, CustodySegment, read_custody, read_segments, verify_archived
from gateway.config import ConfigError
from gateway.host import Host
from gateway.runtime.compaction import StoreArchive, index_key, segment_key
from gateway.stores import Delete, Expect
from gateway.testing import create_from_spec
from gateway.testing.faults import SettableClock
from gateway.testing.harness import InProcessWorld
from tests.conftest import HOST_A, HOST_B
from tests.test_compaction_runtime import SMALL, TICK, parsed, spec, world_with

LEAVING = "obj://org-a.example/billing/ticker"
STAYING = "obj://org-a.example/billing/stays"
DAY = 86400


async def _cycle(host: Host, clock: SettableClock, object_id: str, n: int) -> None:
    """``n`` cycles due one after the other. The serving scheduler may run one first, or
    at the same time (this one is then not due, or loses the race): what counts is the
    archive the cycles leave, checked by the caller."""
    for _ in range(n):
        clock.skew(1)
        await host.cycles.run("default", object_id)


async def _held(host: Host, object_id: str) -> int:
    pairs, _etag = await StoreArchive(host.store).held("default", object_id)
    return len(pairs)


def _compacted_world(tmp_path: Path, compaction: dict[str, Any]) -> InProcessWorld:
    world = InProcessWorld(world_with(tmp_path, {"compaction": compaction}, (HOST_A, HOST_B)))
    host_a = world.hosts[HOST_A]
    for object_id in (LEAVING, STAYING):
        world.run(create_from_spec(host_a, object_id, spec(TICK, interval=1)))
        world.run(_cycle(host_a, world.clock(HOST_A), object_id, 40))
        assert world.run(_held(host_a, object_id)) >= 2
    world.clock(HOST_B).skew(80)  # as far as A's clock went: the transfer is not early
    world.migrate(LEAVING, source=HOST_A, to=HOST_B)
    return world


def test_segments_of_an_object_that_left_are_exported_then_pruned_after_the_retention(
    tmp_path: Path,
) -> None:
    export = tmp_path / "exported"
    world = _compacted_world(
        tmp_path / "w",
        {**SMALL, "archive_retention_seconds": DAY, "archive_export_dir": str(export)},
    )
    with contextlib.closing(world):
        host_a, host_b = world.hosts[HOST_A], world.hosts[HOST_B]
        held = world.run(_held(host_a, LEAVING))
        staying = world.run(_held(host_a, STAYING))
        assert world.run(host_a.sweep.run_once()) == (0, 0), "nothing before the retention"
        assert world.run(_held(host_a, LEAVING)) == held
        world.clock(HOST_A).skew(DAY + 60)
        _files, pruned = world.run(host_a.sweep.run_once())
        assert pruned == held
        assert world.run(_held(host_a, LEAVING)) == 0
        assert world.run(StoreArchive(host_a.store).segments("default", LEAVING)) == []
        assert world.run(_held(host_a, STAYING)) == staying, "it lives here: its history"
        # The export keeps the whole history verifiable: A's exported segments, B's own.
        folder = ArchiveDir(export).directory("default", LEAVING)
        exported = read_segments(folder)
        assert len(exported) == held
        on_b = world.run(host_b.get_object(LEAVING, tenant="default"))
        segments = [*exported, *world.run(StoreArchive(host_b.store).segments("default", LEAVING))]
        whole = verify_archived(
            segments, on_b.lineage, object_id=LEAVING, trust=host_b.trust, sealed=False
        )
        assert whole.size == on_b.lineage.size and whole.root == on_b.lineage.root()


def test_by_default_no_segment_is_ever_pruned(tmp_path: Path) -> None:
    world = _compacted_world(tmp_path, SMALL)
    with contextlib.closing(world):
        host_a = world.hosts[HOST_A]
        held = world.run(_held(host_a, LEAVING))
        world.clock(HOST_A).skew(365 * DAY)
        assert world.run(host_a.sweep.run_once()) == (0, 0)
        world.recover(HOST_A)
        assert world.run(_held(host_a, LEAVING)) == held


def test_the_retention_settings_parse_and_a_bad_one_names_its_key() -> None:
    default = parsed(None)
    assert default.archive_retention is None and default.archive_export_dir is None
    tuned = parsed(
        {"compaction": {"archive_retention_seconds": 30 * DAY, "archive_export_dir": "old"}}
    )
    assert tuned.archive_retention == timedelta(days=30)
    assert tuned.archive_export_dir == Path("/etc/gateway/old")
    for bad, key in (
        ({"archive_retention_seconds": -5}, "lineage.compaction.archive_retention_seconds"),
        ({"archive_retention_seconds": "a week"}, "lineage.compaction.archive_retention_seconds"),
        ({"archive_export_dir": "old"}, "lineage.compaction.archive_export_dir"),
    ):
        with pytest.raises(ConfigError) as raised:
            parsed({"compaction": bad})
        assert str(raised.value).startswith(f"/etc/gateway/host.yaml: {key}: "), raised.value
        assert "\n" not in str(raised.value)


def test_a_segment_that_cannot_be_exported_is_not_pruned(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the export directory should be")
    world = _compacted_world(
        tmp_path / "w",
        {**SMALL, "archive_retention_seconds": DAY, "archive_export_dir": str(blocked)},
    )
    with contextlib.closing(world):
        host_a = world.hosts[HOST_A]
        held = world.run(_held(host_a, LEAVING))
        world.clock(HOST_A).skew(DAY + 60)
        assert world.run(host_a.sweep.run_once()) == (0, 0)
        assert world.run(_held(host_a, LEAVING)) == held
        assert len(world.run(StoreArchive(host_a.store).segments("default", LEAVING))) == held


def test_gateway_sweep_names_the_segments_it_would_prune_then_prunes_them(
    tmp_path: Path,
) -> None:
    """What ``gateway sweep`` runs: a dry run names the departed object and its segment
    count and deletes nothing; the sweep then prunes exactly those; the object that
    lives here keeps its segments."""
    from gateway._cli_sweep import describe, sweep

    world = _compacted_world(tmp_path, {**SMALL, "archive_retention_seconds": DAY})
    with contextlib.closing(world):
        host_a = world.hosts[HOST_A]
        held = world.run(_held(host_a, LEAVING))
        staying = world.run(_held(host_a, STAYING))
        early = world.run(sweep(host_a, dry_run=True))
        assert early["archive"] == {"retention_s": DAY, "objects": []}
        world.clock(HOST_A).skew(DAY + 60)
        listed = world.run(sweep(host_a, dry_run=True))
        assert [(o["object_id"], o["segments"]) for o in listed["archive"]["objects"]] == [
            (LEAVING, held)
        ]
        assert f"would prune {held} archive segment(s) of 1 object(s)" in "\n".join(
            describe(listed)
        )
        assert world.run(_held(host_a, LEAVING)) == held, "a dry run deletes nothing"
        pruned = world.run(sweep(host_a, dry_run=False))
        assert [(o["object_id"], o["segments"]) for o in pruned["archive"]["objects"]] == [
            (LEAVING, held)
        ]
        assert world.run(_held(host_a, LEAVING)) == 0
        assert world.run(_held(host_a, STAYING)) == staying
        again = world.run(sweep(host_a, dry_run=True))
        assert again["archive"]["objects"] == []


def _custody(object_id: str, first: int, count: int) -> CustodySegment:
    """A custody segment as compaction archives one (ADR 0010 step 2). The pruner treats
    its handoffs as opaque bytes: it moves and deletes them, it does not verify them."""
    return CustodySegment(
        object_id=object_id,
        first=first,
        departures=tuple(f"departure {first + i}".encode() for i in range(count)),
        arrivals=tuple(f"arrival {first + i}".encode() for i in range(count)),
    )


async def _custody_held(host: Host, object_id: str) -> int:
    pairs, _etag = await StoreArchive(host.store).held_custody("default", object_id)
    return len(pairs)


def test_custody_segments_of_an_object_that_left_are_exported_then_pruned_too(
    tmp_path: Path,
) -> None:
    """Archived handoffs (ADR 0010 step 2) follow the same retention as entry segments:
    kept while the object lives here, kept before the retention, exported as ``.cus``
    files then pruned after it; the tombstone may go only once both kinds are gone."""
    export = tmp_path / "exported"
    world = _compacted_world(
        tmp_path / "w",
        {**SMALL, "archive_retention_seconds": DAY, "archive_export_dir": str(export)},
    )
    with contextlib.closing(world):
        host_a = world.hosts[HOST_A]
        archive = StoreArchive(host_a.store)
        for object_id in (LEAVING, STAYING):
            for first in (0, 3):
                world.run(archive.write_custody("default", _custody(object_id, first, 3)))
        held = world.run(_held(host_a, LEAVING))
        pruner = host_a.sweep.archives
        assert pruner is not None
        due = world.run(pruner.due())
        assert due == [], "nothing before the retention"
        world.clock(HOST_A).skew(DAY + 60)
        assert [(d.object_id, d.segments) for d in world.run(pruner.due())] == [(LEAVING, held + 2)]
        _files, pruned = world.run(host_a.sweep.run_once())
        assert pruned == held + 2
        assert world.run(_custody_held(host_a, LEAVING)) == 0
        assert world.run(archive.custody_segments("default", LEAVING)) == []
        assert world.run(_custody_held(host_a, STAYING)) == 2, "it lives here: its history"
        assert world.run(pruner.tombstone_may_go("default", LEAVING))
        exported = read_custody(ArchiveDir(export).directory("default", LEAVING))
        assert exported == [_custody(LEAVING, 0, 3), _custody(LEAVING, 3, 3)]


def test_a_tombstone_whose_custody_segments_remain_may_not_go(tmp_path: Path) -> None:
    """The tombstone is the only way to find an object's archive keys: while custody
    segments are held (here the only kind left, before the retention), the handoff
    pruner must keep it; once the retention passed, asking prunes them and it may go."""
    world = _compacted_world(tmp_path, {**SMALL, "archive_retention_seconds": DAY})
    with contextlib.closing(world):
        host_a = world.hosts[HOST_A]
        archive = StoreArchive(host_a.store)
        pairs, etag = world.run(archive.held("default", LEAVING))
        world.run(
            host_a.store.transact(
                [
                    *(
                        Delete(key=segment_key("default", LEAVING, s, n), etag=Expect.ANY)
                        for s, n in pairs
                    ),
                    Delete(key=index_key("default", LEAVING), etag=etag),
                ]
            )
        )
        world.run(archive.write_custody("default", _custody(LEAVING, 0, 4)))
        pruner = host_a.sweep.archives
        assert pruner is not None
        assert world.run(_held(host_a, LEAVING)) == 0
        assert not world.run(pruner.tombstone_may_go("default", LEAVING))
        assert world.run(_custody_held(host_a, LEAVING)) == 1
        world.clock(HOST_A).skew(DAY + 60)
        assert world.run(pruner.tombstone_may_go("default", LEAVING))
        assert world.run(_custody_held(host_a, LEAVING)) == 0
