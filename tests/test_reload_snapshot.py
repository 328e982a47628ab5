"""A reload swaps the whole snapshot (gateway.reload, Host.rebind): no part of a running
host is left on the old one, the configured ``lineage:`` settings survive it, and a
change to a setting that is built once at start (``lineage:``, ``observability:``) is
refused, not silently ignored.

Found by reading the docs against the code (session 28): a reload built its cycle runner
with the default compaction (a host with ``compaction: false`` compacted again after any
reload), and left the message runner (events), calls, the sweep and the recovery's
tombstone guard on the old snapshot, so that after a key rotation a message-triggered
compaction still signed with the retired key.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path
from typing import Any

import pytest

from gateway.config import load_config
from gateway.handoff.context import HostContext
from gateway.host import Host
from gateway.reload import Reloader
from gateway.testing import HostSpec, World, build_world

HOST = "spiffe://org-a.example/cluster/east/gateway"

LINEAGE = """lineage:
  fold_repeats: false
  compaction: false
  custody_keep: 12
"""


def _world(tmp_path: Path, extra: str = "") -> World:
    world = build_world(tmp_path, [HostSpec(host_id=HOST)])
    path = world.config(HOST)
    path.write_text(path.read_text() + extra)
    return world


def _edit(world: World, old: str, new: str) -> None:
    path = world.config(HOST)
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def _set_region(world: World, region: str) -> None:
    _edit(world, f"  id: {HOST}\n", f"  id: {HOST}\n  region: {region}\n")


def _contexts_reachable(root: object) -> list[HostContext]:
    """Every HostContext reachable from ``root`` through the attributes of the gateway's
    own objects, containers, bound methods and closures (not into a context itself)."""
    found: list[HostContext] = []
    seen: set[int] = set()
    stack: list[Any] = [root]
    while stack:
        value = stack.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, HostContext):
            found.append(value)
            continue
        if isinstance(value, dict):
            stack.extend(value.values())
            continue
        if isinstance(value, list | tuple | set | frozenset):
            stack.extend(value)
            continue
        self_of = getattr(value, "__self__", None)
        if self_of is not None and callable(value):  # a bound method
            stack.append(self_of)
            continue
        closure = getattr(value, "__closure__", None)
        if closure:
            stack.extend(cell.cell_contents for cell in closure)
            continue
        if not type(value).__module__.startswith("gateway."):
            continue
        if dataclasses.is_dataclass(value):
            stack.extend(getattr(value, f.name) for f in dataclasses.fields(value))
        for name in getattr(type(value), "__slots__", ()):
            if hasattr(value, name):
                stack.append(getattr(value, name))
        stack.extend(getattr(value, "__dict__", {}).values())
    return found


def test_no_part_of_the_host_keeps_the_old_snapshot(tmp_path: Path) -> None:
    world = _world(tmp_path)

    async def main() -> None:
        host = await Host.open(load_config(world.config(HOST)))
        try:
            before = host.context
            assert {id(c) for c in _contexts_reachable(host)} == {id(before)}
            _set_region(world, "eu-west")
            reloaded = await Reloader(host).reload(why="test")
            assert reloaded is not None and reloaded.changes == ("region",)
            assert host.context is not before and host.context.region == "eu-west"
            reachable = _contexts_reachable(host)
            assert {id(c) for c in reachable} == {id(host.context)}, [c.region for c in reachable]
            # The long-lived parts, by name (what the walk above would find):
            assert host.events.ctx is host.context and host.events.runner is host.cycles
            assert host.calls.ctx is host.context
            assert host.sweep.ctx is host.context
            assert host.scheduler.runner is host.cycles
            assert host.cycles.compaction is host.compaction
            assert host.compaction.ctx is host.context
        finally:
            await host.close()

    asyncio.run(main())


def test_a_reload_keeps_the_configured_lineage_settings(tmp_path: Path) -> None:
    world = _world(tmp_path, LINEAGE)

    async def main() -> None:
        host = await Host.open(load_config(world.config(HOST)))
        try:
            for compaction in (host.compaction, host.events.runner.compaction):
                assert not compaction.policy.enabled and not compaction.fold
                assert compaction.policy.custody_keep == 12
            _set_region(world, "eu-west")
            assert await Reloader(host).reload(why="test") is not None
            for compaction in (
                host.compaction,
                host.cycles.compaction,
                host.events.runner.compaction,
            ):
                assert not compaction.policy.enabled, "compaction switched back on by a reload"
                assert not compaction.fold, "repeat folding switched back on by a reload"
                assert compaction.policy.custody_keep == 12
        finally:
            await host.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("section", "text"),
    [
        ("lineage", LINEAGE),
        ("observability", "observability:\n  log_format: json\n"),
    ],
)
def test_a_change_to_a_start_only_section_is_refused_whole(
    tmp_path: Path, section: str, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Changing ``lineage:`` or ``observability:`` (with a region change beside it) is
    refused as a whole: nothing of the file is applied, and the log says to restart."""
    world = _world(tmp_path)

    async def main() -> None:
        host = await Host.open(load_config(world.config(HOST)))
        try:
            before = host.context
            path = world.config(HOST)
            path.write_text(path.read_text() + text)
            _set_region(world, "eu-west")
            with caplog.at_level(logging.ERROR, logger="gateway.reload"):
                assert await Reloader(host).reload(why="test") is None
            assert host.context is before and host.config.region == ""
            assert f"{section} changed; a running server cannot change it" in caplog.text
            assert "restart `gateway serve`" in caplog.text
        finally:
            await host.close()

    asyncio.run(main())
