"""Compaction run by hosts (issue 13 point 1, ADR 0007): the ``lineage:`` config (on by
default), repeats folded by the cycle, compaction after a committed cycle into the host's
store (archive first, conditional on the ETag), the operator's export, and offline
verification of a history spread over the archives of several hosts.

The last two tests run real ``gateway serve`` processes: an object cycles on A until it has
compacted several times, moves to B, compacts there, and its whole history verifies from
the exported archives and object with nothing but the trust bundles; and a host killed
between writing a segment and storing the compacted object loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.archive import CompactionPolicy, Segment, compact, read_archives, verify_archived
from gateway.config import EXAMPLE, load_config, parse_config
from gateway.errors import ConfigError, LineageError
from gateway.handoff.journal import Journal
from gateway.host import Host
from gateway.lineage import EntryKind
from gateway.model import GovernedObject
from gateway.objectspec import parse_spec
from gateway.runtime.compaction import Compaction, StoreArchive, index_key, segment_key
from gateway.runtime.cycle import CycleResult, CycleRunner
from gateway.stores import StateStore, listable
from gateway.testing import (
    HostSpec,
    ServerProcess,
    World,
    build_world,
    create_from_spec,
    read_store,
    run_cli,
    trust_of,
)
from gateway.testing.faults import SettableClock
from tests.conftest import FAST_HANDOFF, HOST_A, HOST_B

OBJECT = "obj://org-a.example/billing/ticker"
OFFERS = {"offers": [{"resource": "state:self", "actions": ["read", "write"]}]}
#: A small policy, so a few dozen cycles compact several times.
SMALL: dict[str, Any] = {"max_entries": 24, "keep_entries": 6, "max_age_seconds": None}
SMALL_POLICY: dict[str, Any] = {"max_entries": 24, "keep_entries": 6, "max_age": None}


def spec(rules: list[dict[str, Any]], *, interval: float = 0.05) -> Any:
    return parse_spec(
        {
            "data": {"n": 0},
            "grant": {
                "audience": "spiffe://org-b.example",
                "capabilities": [{"resource": "state:self", "actions": ["read", "write"]}],
                "constraints": {"hosts": ["spiffe://org-a.example/*", "spiffe://org-b.example/*"]},
            },
            "cycle": {"interval_seconds": interval},
            "rules": rules,
        },
        source="test",
    )


#: Changes the data every cycle: no two cycles are the same event, nothing folds.
TICK = [{"name": "tick", "when": "true", "write": "{'n': data.n + 1}"}]
#: Denied every cycle (publish is not offered): every cycle is the same event.
DENIED = [{"name": "p", "when": "true", "publish": {"topic": "alerts/x", "payload": "data.n"}}]


def world_with(tmp_path: Path, lineage: dict[str, Any] | None, hosts: tuple[str, ...]) -> World:
    world = build_world(
        tmp_path, [HostSpec(host_id=h, handoff=FAST_HANDOFF, policy=OFFERS) for h in hosts]
    )
    if lineage is not None:
        for host in hosts:
            path = world.config(host)
            document = yaml.safe_load(path.read_text())
            document["lineage"] = lineage
            path.write_text(yaml.safe_dump(document))
    return world


def in_host(world: World, host_id: str, scenario: Callable[[Host], Awaitable[None]]) -> None:
    async def main() -> None:
        host = await Host.open(load_config(world.config(host_id)), clock=SettableClock())
        try:
            await scenario(host)
        finally:
            await host.close()

    asyncio.run(main())


async def cycles(host: Host, n: int) -> None:
    clock = host.clock
    assert isinstance(clock, SettableClock)
    for _ in range(n):
        clock.skew(1)
        report = await host.cycles.run("default", OBJECT)
        assert report.result is CycleResult.EVALUATED


# --- config --------------------------------------------------------------------------


def parsed(lineage: Any) -> Any:
    document = yaml.safe_load(EXAMPLE)
    if lineage is not None:
        document["lineage"] = lineage
    return parse_config(document, source=Path("/etc/gateway/host.yaml")).lineage


def test_compaction_is_on_by_default_and_can_be_turned_off_or_tuned() -> None:
    default = parsed(None)
    assert default.compaction == CompactionPolicy() and default.compaction.enabled
    assert default.fold_repeats and default.archive_dir is None
    assert default.compaction.max_bytes == 48 << 10 and default.compaction.max_entries == 128
    off = parsed({"compaction": False, "fold_repeats": False})
    assert not off.compaction.enabled and not off.fold_repeats
    tuned = parsed(
        {
            "compaction": {
                "max_entries": 100,
                "keep_entries": 10,
                "max_bytes": None,
                "max_age_seconds": 60,
                "archive_dir": "archive",
            }
        }
    )
    assert tuned.compaction == CompactionPolicy(
        max_entries=100, keep_entries=10, max_bytes=None, max_age=timedelta(seconds=60)
    )
    assert tuned.archive_dir == Path("/etc/gateway/archive")


@pytest.mark.parametrize(
    ("lineage", "message"),
    [
        ({"compaction": {"keep_entries": 4096}}, "lineage.compaction: lineage compaction keeps"),
        ({"compaction": {"max_bytes": 100}}, "would compact on every cycle"),
        ({"compaction": {"max_entries": 0}}, "lineage.compaction.max_entries: expected a whole"),
        ({"compaction": {"max_age_seconds": -1}}, "lineage.compaction.max_age_seconds"),
        ({"compaction": {"max_entrys": 10}}, "did you mean 'max_entries'"),
        ({"compaction": "yes"}, "lineage.compaction: expected a mapping"),
        ({"fold_repeats": "no"}, "lineage.fold_repeats: expected true or false"),
        ([], "lineage: expected a mapping"),
    ],
)
def test_a_bad_lineage_setting_is_one_clear_error(lineage: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parsed(lineage)
    assert message in str(caught.value) and caught.value.hint


def test_the_policy_counts_entries_age_and_bytes() -> None:
    from tests.test_compaction import created

    policy = CompactionPolicy(max_entries=50, keep_entries=5, max_bytes=16384, max_age=None)
    obj = created()
    t0 = obj.lineage.entries[0].time
    for n in range(20):
        obj = obj.record(EntryKind.EVALUATED, host=HOST_A, at=t0, detail=f"{n} " + "x" * 1000)
    # 21 entries of about 1.3 KB: under max_entries, over max_bytes when the record says so.
    assert not policy.due(obj.lineage, now=t0)
    assert not policy.due(obj.lineage, now=t0, stored_bytes=10_000)
    assert policy.due(obj.lineage, now=t0, stored_bytes=40_000)
    aged = CompactionPolicy(max_entries=50, keep_entries=5, max_age=timedelta(hours=1))
    assert not aged.due(obj.lineage, now=t0 + timedelta(minutes=59))
    assert aged.due(obj.lineage, now=t0 + timedelta(minutes=61))
    assert not CompactionPolicy(enabled=False, max_entries=6, keep_entries=5).due(
        obj.lineage, now=t0
    )


def test_archive_keys_are_unlisted() -> None:
    """Segments cost no listing index on Dapr; they are found through the object's index."""
    assert not listable(segment_key("default", OBJECT, 0, 100))
    assert not listable(index_key("default", OBJECT))


# --- the cycle folds and compacts ------------------------------------------------------


def test_a_host_folds_repeats_and_compacts_into_its_store(tmp_path: Path) -> None:
    world = world_with(tmp_path, {"compaction": SMALL}, (HOST_A,))

    async def scenario(host: Host) -> None:
        await create_from_spec(host, OBJECT, spec(DENIED))
        await cycles(host, 40)
        folded = await host.get_object(OBJECT, tenant="default")
        # Forty denied cycles are one (denied, evaluated) pair with 39 repeats.
        assert [(e.kind, e.repeats) for e in folded.lineage.entries[-2:]] == [
            (EntryKind.ACTION_DENIED, 39),
            (EntryKind.EVALUATED, 39),
        ]
        assert folded.lineage.start == 0 and len(folded.lineage.entries) <= 4

    in_host(world, HOST_A, scenario)

    world2 = world_with(tmp_path / "ticking", {"compaction": SMALL}, (HOST_A,))

    async def ticking(host: Host) -> None:
        await create_from_spec(host, OBJECT, spec(TICK))
        peak = 0
        for _ in range(60):
            await cycles(host, 1)
            obj = await host.get_object(OBJECT, tenant="default")
            peak = max(peak, len(obj.lineage.entries))
        assert peak <= SMALL["max_entries"] + 2  # one cycle's entries over the limit at most
        assert obj.lineage.start > 3 * 18  # compacted several times (120 entries recorded)
        segments = await StoreArchive(host.store).segments("default", OBJECT)
        assert segments[0].start == 0 and len(segments) >= 4
        whole = verify_archived(
            segments, obj.lineage, object_id=OBJECT, trust=host.trust, sealed=False
        )
        assert whole.size == obj.lineage.size and whole.root == obj.lineage.root()

    in_host(world2, HOST_A, ticking)


def test_compaction_can_be_turned_off(tmp_path: Path) -> None:
    world = world_with(tmp_path, {"compaction": False, "fold_repeats": False}, (HOST_A,))

    async def scenario(host: Host) -> None:
        await create_from_spec(host, OBJECT, spec(DENIED))
        await cycles(host, 10)
        obj = await host.get_object(OBJECT, tenant="default")
        assert obj.lineage.start == 0 and len(obj.lineage.entries) == 21  # created + 10 x 2
        assert await StoreArchive(host.store).segments("default", OBJECT) == []

    in_host(world, HOST_A, scenario)


def test_a_compaction_that_loses_the_race_leaves_a_spare_segment_and_nothing_else(
    tmp_path: Path,
) -> None:
    """Archive first: the segment is written, then the object is stored only if nobody
    wrote it since it was read. A writer in between (a cycle, a departure) wins; the
    segment is a spare the next compaction of the same start replaces."""
    world = world_with(tmp_path, {"compaction": False}, (HOST_A,))

    async def scenario(host: Host) -> None:
        await create_from_spec(host, OBJECT, spec(TICK))
        await cycles(host, 15)  # 31 entries, compaction off
        compaction = host.compaction
        compaction.policy = CompactionPolicy(**SMALL_POLICY)
        archive = compaction.archive
        assert isinstance(archive, StoreArchive)

        class Racing(StoreArchive):
            """Writes the segment, then lets a cycle commit before the object is stored."""

            async def write(self, tenant: str, segment: Segment) -> None:
                await super().write(tenant, segment)
                compaction.archive = archive  # the cycle itself compacts normally later
                compaction.policy = CompactionPolicy(enabled=False)
                await cycles(host, 1)
                compaction.policy = CompactionPolicy(**SMALL_POLICY)

        compaction.archive = Racing(host.store)
        before = await host.get_object(OBJECT, tenant="default")
        assert await compaction.compact("default", OBJECT) is False
        after = await host.get_object(OBJECT, tenant="default")
        assert after.lineage.start == 0 and after.lineage.size == before.lineage.size + 2
        (spare,) = await archive.segments("default", OBJECT)
        assert spare.start == 0 and len(spare.entries) == before.lineage.size - 6
        # The next compaction starts at the same entry; its segment is kept beside the
        # spare (its key names its length too), and verification takes the right one.
        assert await compaction.compact("default", OBJECT) is True
        compacted = await host.get_object(OBJECT, tenant="default")
        held = await archive.segments("default", OBJECT)
        assert [(s.start, len(s.entries)) for s in held] == [
            (0, len(spare.entries)),
            (0, compacted.lineage.start),
        ]
        verify_archived(held, compacted.lineage, object_id=OBJECT, trust=host.trust, sealed=False)

    in_host(world, HOST_A, scenario)


def test_verify_picks_the_chain_among_several_hosts_archives_and_spares(tmp_path: Path) -> None:
    """Archives of several hosts are read together; a spare (a compaction that never
    committed) that starts where a committed segment starts does not hide it; a missing
    segment is named."""
    from tests.test_compaction import SIGNERS, TRUST, created

    obj = created()
    t0 = obj.lineage.entries[0].time
    segments: list[Segment] = []
    spare: Segment | None = None
    for n in range(90):
        obj = obj.record(EntryKind.EVALUATED, host=HOST_A, at=t0, detail=f"cycle {n}")
        if len(obj.lineage.entries) > 30:
            lineage, segment = compact(
                obj.lineage, object_id=OBJECT, host=HOST_A, at=t0, signer=SIGNERS[HOST_A], keep=5
            )
            segments.append(segment)
            obj = replace(obj, lineage=lineage)
        elif len(segments) == 1 and spare is None and len(obj.lineage.entries) == 20:
            _lost, spare = compact(
                obj.lineage, object_id=OBJECT, host=HOST_A, at=t0, signer=SIGNERS[HOST_A], keep=5
            )
    assert spare is not None and spare.start == segments[1].start
    assert len(spare.entries) < len(segments[1].entries) and len(segments) == 3
    first, second = tmp_path / "a", tmp_path / "b"
    for directory, chosen in ((first, [segments[0], spare]), (second, segments[1:])):
        directory.mkdir()
        for s in chosen:
            (directory / f"{s.start:020d}+{len(s.entries)}.seg").write_bytes(s.encode())
    merged = read_archives([first, second])
    assert len(merged) == 4
    whole = verify_archived(merged, obj.lineage, object_id=OBJECT, trust=TRUST, sealed=False)
    assert whole.size == obj.lineage.size == 91
    with pytest.raises(LineageError, match="missing"):
        verify_archived(
            read_archives([second]), obj.lineage, object_id=OBJECT, trust=TRUST, sealed=False
        )
    # A segment of the same start and length but other entries (another object's history
    # of the same shape) is tried and passed over: the chain that rebuilds the root wins.
    other = replace(created(), object_id=OBJECT)
    for n in range(90):
        other = other.record(EntryKind.EVALUATED, host=HOST_A, at=t0, detail=f"forged {n}")
        if len(other.lineage.entries) > 30:
            lineage, forged = compact(
                other.lineage, object_id=OBJECT, host=HOST_A, at=t0, signer=SIGNERS[HOST_A], keep=5
            )
            other = replace(other, lineage=lineage)
            if forged.start == segments[1].start:
                break
    assert (forged.start, len(forged.entries)) == (segments[1].start, len(segments[1].entries))
    for order in ([forged, segments[1]], [segments[1], forged]):
        chosen = verify_archived(
            [segments[0], *order, segments[2]],
            obj.lineage,
            object_id=OBJECT,
            trust=TRUST,
            sealed=False,
        )
        assert chosen.root == obj.lineage.root()
    with pytest.raises(LineageError, match="do not match the root"):
        verify_archived(
            [segments[0], forged, segments[2]],
            obj.lineage,
            object_id=OBJECT,
            trust=TRUST,
            sealed=False,
        )
    # A spare alone where the committed segment belongs does not reach the base.
    with pytest.raises(LineageError, match="missing"):
        verify_archived(
            [segments[0], spare, segments[2]],
            obj.lineage,
            object_id=OBJECT,
            trust=TRUST,
            sealed=False,
        )


# --- real processes --------------------------------------------------------------------


def wait_for(what: str, check: Callable[[], bool], *, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def archived_starts(world: World, host: str) -> list[int]:
    async def read(store: StateStore) -> list[int]:
        item = await store.get(index_key("default", OBJECT))
        return [] if item is None else [start for start, _count in json.loads(item.value)]

    return read_store(world.config(host), read)


def stored(world: World, host: str) -> GovernedObject:
    async def read(store: StateStore) -> GovernedObject:
        from gateway.handoff.journal import Journal

        loaded = await Journal(store).object("default", OBJECT)
        assert loaded is not None
        return loaded.value

    return read_store(world.config(host), read)


def create(world: World, host: str, rules: list[dict[str, Any]]) -> None:
    async def main() -> None:
        opened = await Host.open(load_config(world.config(host)))
        try:
            await create_from_spec(opened, OBJECT, spec(rules))
        finally:
            await opened.close()

    asyncio.run(main())


def cli(world: World, host: str, *args: str | Path) -> str:
    done = run_cli(*args, config=world.config(host), cwd=world.directory)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
def test_an_object_compacted_on_two_hosts_verifies_offline_from_both_archives(
    tmp_path: Path,
) -> None:
    world = world_with(tmp_path, {"compaction": SMALL}, (HOST_A, HOST_B))
    create(world, HOST_A, TICK)
    with ServerProcess(world.config(HOST_A)):
        wait_for("three compactions on A", lambda: len(archived_starts(world, HOST_A)) >= 3)
    # A is stopped before the migration: the CLI then drives it from A's store with no
    # 50 ms cycles racing its freeze (served, a loaded machine could lose every freeze
    # attempt to them; what this test checks is the archives, not that race).
    with ServerProcess(world.config(HOST_B)):
        cli(world, HOST_A, "migrate", OBJECT, "--to", HOST_B)
        wait_for("two compactions on B", lambda: len(archived_starts(world, HOST_B)) >= 2)
    on_b = stored(world, HOST_B)
    assert len(on_b.lineage.entries) <= SMALL["max_entries"] + 2  # carried stays bounded
    assert len(on_b.lineage.checkpoints) == 1  # the departure from A is still carried
    # The operator exports each host's archive, and the object from its holder.
    exported = json.loads(
        cli(world, HOST_A, "object", "archive", OBJECT, tmp_path / "arch-a", "-o", "json")
    )
    assert exported["host"] == HOST_A and len(exported["segments"]) >= 3
    object_file = tmp_path / "object.json"
    shown = cli(
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
    assert "segment(s)" in shown
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
    assert str(on_b.lineage.size) in checks["archived history"]["detail"]
    # Without A's archive the history is incomplete: exit 1, naming what is missing.
    partial = run_cli(
        "verify", object_file, "--archive", tmp_path / "arch-b", *bundles, cwd=tmp_path
    )
    assert partial.returncode == 1 and "archive segment is missing" in partial.stderr


@pytest.mark.slow
def test_a_host_killed_between_archive_and_store_loses_nothing(tmp_path: Path) -> None:
    world = world_with(tmp_path, {"compaction": SMALL}, (HOST_A,))
    create(world, HOST_A, TICK)
    crashing = ServerProcess(
        world.config(HOST_A), env={"GATEWAY_TEST_CRASH_AT": "compaction.after-archive"}
    ).start()
    try:
        wait_for("the crash", lambda: crashing.process.poll() is not None)
    finally:
        crashing.stop()
    # The segment is durable, the object still carries every entry (nothing was lost).
    assert archived_starts(world, HOST_A) == [0]
    assert stored(world, HOST_A).lineage.start == 0
    with ServerProcess(world.config(HOST_A)):
        wait_for("two compactions", lambda: len(archived_starts(world, HOST_A)) >= 2)
    obj = stored(world, HOST_A)

    async def read(store: StateStore) -> list[Segment]:
        return await StoreArchive(store).segments("default", OBJECT)

    segments = read_store(world.config(HOST_A), read)
    assert segments[0].start == 0 and obj.lineage.start > 0
    verify_archived(
        segments, obj.lineage, object_id=OBJECT, trust=trust_of(world.config(HOST_A)), sealed=False
    )


def test_segments_round_trip_through_a_dapr_store_with_no_listing(tmp_path: Path) -> None:
    """A Dapr host keeps its archive in its state store (no shared filesystem there): the
    segments and the index are written and read by exact key, a spare and the committed
    segment from the same start are both kept, and nothing of it is listable."""
    from tests.stores.test_dapr_store import dapr_store
    from tests.test_compaction import SIGNERS, created

    obj = created()
    t0 = obj.lineage.entries[0].time
    for n in range(40):
        obj = obj.record(EntryKind.EVALUATED, host=HOST_A, at=t0, detail=f"cycle {n}")
    _lost, spare = compact(
        obj.lineage, object_id=OBJECT, host=HOST_A, at=t0, signer=SIGNERS[HOST_A], keep=30
    )
    lineage, first = compact(
        obj.lineage, object_id=OBJECT, host=HOST_A, at=t0, signer=SIGNERS[HOST_A], keep=5
    )
    obj = replace(obj, lineage=lineage)
    for n in range(40):
        obj = obj.record(EntryKind.EVALUATED, host=HOST_A, at=t0, detail=f"again {n}")
    _lineage, second = compact(
        obj.lineage, object_id=OBJECT, host=HOST_A, at=t0, signer=SIGNERS[HOST_A], keep=5
    )

    async def main() -> None:
        async with dapr_store(tmp_path / "daprd.db") as store:
            archive = StoreArchive(store)
            for segment in (spare, first, second):
                await archive.write("default", segment)
            held = await archive.segments("default", OBJECT)
            assert [(s.start, len(s.entries)) for s in held] == [(0, 11), (0, 36), (36, 40)]
            assert held == [spare, first, second]
            assert not [k for k in await store.list("t/") if "/archive/" in k]

    asyncio.run(main())


def test_an_object_woken_only_by_messages_is_compacted_too(tmp_path: Path) -> None:
    world = build_world(
        tmp_path,
        [
            HostSpec(
                host_id=HOST_A,
                policy={
                    "offers": [
                        {"resource": "state:self", "actions": ["read", "write"]},
                        {"resource": "pubsub:*", "actions": ["subscribe"]},
                    ]
                },
            )
        ],
    )
    path = world.config(HOST_A)
    document = yaml.safe_load(path.read_text())
    document["lineage"] = {"compaction": SMALL}
    path.write_text(yaml.safe_dump(document))
    topic = "orders/changed"
    woken_spec = parse_spec(
        {
            "data": {"n": 0},
            "grant": {
                "audience": "spiffe://org-b.example",
                "capabilities": [
                    {"resource": "state:self", "actions": ["read", "write"]},
                    {"resource": f"pubsub:{topic}", "actions": ["subscribe"]},
                ],
                "constraints": {"hosts": ["spiffe://org-a.example/*"]},
            },
            "subscribe": [topic],
            "rules": [
                {"name": "m", "on": "message", "when": "true", "write": "{'n': event.data.n}"}
            ],
        },
        source="test",
    )

    async def scenario(host: Host) -> None:
        await create_from_spec(host, OBJECT, woken_spec)
        await host.events.take_up("default", OBJECT)  # what serving does on activation
        for n in range(40):
            await host.events.publish(topic, data={"n": n + 1})
            assert await host.events.deliver_once() == 1
        obj = await host.get_object(OBJECT, tenant="default")
        assert obj.cycle.interval is None and obj.lineage.start > 0
        assert len(obj.lineage.entries) <= SMALL["max_entries"] + 2
        segments = await StoreArchive(host.store).segments("default", OBJECT)
        whole = verify_archived(
            segments, obj.lineage, object_id=OBJECT, trust=host.trust, sealed=False
        )
        assert whole.size == obj.lineage.size > 80

    in_host(world, HOST_A, scenario)


def test_an_archive_directory_is_used_when_configured_and_a_failing_one_never_fails_a_cycle(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from gateway.runtime.compaction import DirArchive

    world = world_with(
        tmp_path / "world",
        {"compaction": {**SMALL, "archive_dir": str(tmp_path / "arch")}},
        (HOST_A,),
    )

    async def scenario(host: Host) -> None:
        await create_from_spec(host, OBJECT, spec(TICK))
        await cycles(host, 30)
        obj = await host.get_object(OBJECT, tenant="default")
        assert obj.lineage.start > 0
        assert await StoreArchive(host.store).segments("default", OBJECT) == []  # not the store
        folders = list((tmp_path / "arch" / "default").iterdir())
        assert len(folders) == 1
        segments = read_archives([folders[0]])
        verify_archived(segments, obj.lineage, object_id=OBJECT, trust=host.trust, sealed=False)
        # An archive that cannot be written: the cycles still commit, nothing is compacted.
        blocked = tmp_path / "not-a-directory"
        blocked.write_text("")
        host.compaction.archive = DirArchive(blocked)
        start = obj.lineage.start
        await cycles(host, 30)  # each asserts the cycle was EVALUATED
        after = await host.get_object(OBJECT, tenant="default")
        assert after.lineage.start == start and after.cycle.generation == obj.cycle.generation + 30
        assert "lineage compaction of" in caplog.text and "cannot write" in caplog.text

    in_host(world, HOST_A, scenario)


class _Overlap:
    """A store that notes how many archive writes are in flight at once. Each write waits
    (at most ``patience`` seconds) until ``joiners`` writes are in flight together: writes
    issued one after another never overlap, writes issued side by side all do, whatever
    the machine's speed. (Waiting for a second one only let a fast store finish the first
    two before the last joined: 3 of 4 seen together once in CI, session 41.)"""

    def __init__(self, store: StateStore, *, joiners: int = 2, patience: float = 2.0) -> None:
        self._store = store
        self._joiners = joiners
        self._patience = patience
        self._pending = 0
        self._joined = asyncio.Event()
        self.most = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def transact(self, ops: Any) -> Any:
        if not any("/archive/" in op.key for op in ops):
            return await self._store.transact(ops)
        self._pending += 1
        self.most = max(self.most, self._pending)
        if self._pending >= self._joiners:
            self._joined.set()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._joined.wait(), self._patience)
            return await self._store.transact(ops)
        finally:
            self._pending -= 1


def test_the_compactions_a_batch_of_cycles_makes_due_are_committed_side_by_side(
    tmp_path: Path,
) -> None:
    """Objects created together come due for compaction together (session 32: quick P5's
    1,000 objects trimmed in lockstep). Each compaction writes its archive segment and
    its object in commits of its own; one after another, a batch of 128 paid 256
    sequential commits before its next cycle. Side by side, the store groups them."""
    world = world_with(tmp_path, {"compaction": SMALL}, (HOST_A,))
    ids = [f"{OBJECT}-{n}" for n in range(4)]

    async def scenario(host: Host) -> None:
        for object_id in ids:
            await create_from_spec(host, object_id, spec(TICK))
        overlap = _Overlap(host.store, joiners=len(ids))
        context = replace(host.context, journal=Journal(overlap))
        runner = CycleRunner(
            context, compaction=Compaction(context, policy=CompactionPolicy(**SMALL_POLICY))
        )
        clock = host.clock
        assert isinstance(clock, SettableClock)
        for generation in range(SMALL["max_entries"]):
            clock.skew(1)
            answers = await runner.run_many("default", [(i, generation) for i in ids])
            assert {getattr(a, "result", a) for a in answers.values()} == {CycleResult.EVALUATED}
        for object_id in ids:
            obj = await host.get_object(object_id, tenant="default")
            assert obj.lineage.start > 0, object_id  # each compacted at least once
        assert overlap.most == len(ids)

    in_host(world, HOST_A, scenario)
