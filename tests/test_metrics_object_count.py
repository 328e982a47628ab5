"""The objects gauge (``--metrics-listen``) costs what the records are, not what the
objects decode to, and is recounted at most once per OBJECTS_MIN_GAP_S.

``Host.count_objects`` decoded every object held in full (lineage and all) to read its
state, and ``Metrics.count_objects`` counted again as soon as any migration settled: on
a host with metrics on and migrations flowing it counted back to back, each count at
10,000 residents about a second of CPU. The state is now read from the stored record
(a protobuf parse, as the scheduler reads due times), and a settled migration brings the
next count forward to no sooner than OBJECTS_MIN_GAP_S after the last.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.handoff import journal
from gateway.objectspec import parse_spec
from gateway.observability import metrics as metrics_module
from gateway.observability.metrics import Metrics
from gateway.stores import Expect
from gateway.testing import create_from_spec
from tests.conftest import HOST_B
from tests.test_events_bounds import _open
from tests.test_events_reconcile_start import _count_decodes

OBJECTS = 20


def test_counting_objects_decodes_none_in_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        host, _clock = await _open(tmp_path)  # holds one object already
        try:
            spec = parse_spec({"data": {"n": 1}}, source="test")
            for n in range(OBJECTS):
                await create_from_spec(host, f"obj://org-a.example/counted/{n}", spec)
            await host.store.put(
                "t/default/objects/obj://org-a.example/damaged", b"\xff\x00", etag=Expect.ANY
            )
            host.journal._objects = journal._Objects()  # nothing remembered
            decoded = _count_decodes(monkeypatch)
            counts = await host.count_objects()
            assert decoded == []
            assert ("default", "active", OBJECTS + 1) in counts
            assert ("default", "unreadable", 1) in counts
        finally:
            await host.close()

    asyncio.run(main())


def test_settled_migrations_bring_a_count_no_sooner_than_the_gap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics_module, "OBJECTS_MIN_GAP_S", 0.2)
    metrics = Metrics(tenants=("default",), peers=(HOST_B,))
    counted = 0

    async def count() -> list[tuple[str, str, int]]:
        nonlocal counted
        counted += 1
        return [("default", "active", counted)]

    async def main() -> None:
        stop = asyncio.Event()
        counting = asyncio.create_task(metrics.count_objects(count, stop))
        loop = asyncio.get_running_loop()
        until = loop.time() + 0.5
        while loop.time() < until:  # a migration settles every millisecond
            metrics.migration_settled("destination", "activated", tenant="default", started=None)
            await asyncio.sleep(0.001)
        stop.set()
        await counting

    asyncio.run(main())
    # The first count at once, then at most one per 0.2 s over 0.5 s.
    assert 2 <= counted <= 5, counted
