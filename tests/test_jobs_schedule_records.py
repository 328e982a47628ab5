"""The reconciliation of Dapr cycle jobs reads two fields of each record, not the object.

``Host._schedule_all_jobs`` runs when a host in Dapr-jobs mode starts serving and every
JOB_RECONCILE_PASSES recovery passes after. It decoded every object held in full
(lineage and all) to find the ACTIVE ones with a cycle interval: at 10,000 residents
seconds of CPU on the event loop, again and again. It now reads each record's state and
interval from the stored bytes (a protobuf parse, no lineage decode), a page at a time;
a record that does not parse is logged and skipped, and the others are still scheduled.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from gateway import wire
from gateway.errors import PayloadDecodeError
from gateway.handoff import journal
from gateway.host import Host
from gateway.limits import MAX_CYCLE_INTERVAL
from gateway.model import LifecycleState
from gateway.objectspec import parse_spec
from gateway.stores import Expect
from gateway.testing import create_from_spec
from gateway.v1 import object_pb2
from tests.test_events_bounds import _open
from tests.test_events_reconcile_start import _count_decodes

CYCLING = 12  #: objects with a cycle, each due to be scheduled
QUIET = 5  #: objects without a cycle
INTERVAL = timedelta(seconds=5)
DAMAGED = "obj://org-a.example/damaged"
FROZEN = "obj://org-a.example/frozen"


class _Jobs:
    """Records what would be scheduled; refuses (as an unreachable scheduler does, through
    ``DaprJobs.schedule_or_log``) from call ``refuse_from`` on."""

    def __init__(self, *, refuse_from: int | None = None) -> None:
        self.calls: list[tuple[str, str, timedelta]] = []
        self.refuse_from = refuse_from

    async def schedule_or_log(self, tenant: str, object_id: str, interval: timedelta) -> bool:
        self.calls.append((tenant, object_id, interval))
        return self.refuse_from is None or len(self.calls) < self.refuse_from


def _cycling(n: int) -> str:
    return f"obj://org-a.example/cycling/{n}"


async def _populate(host: Host, *, damaged: bool = False) -> None:
    """CYCLING objects with a cycle, QUIET without and one FROZEN with a cycle, beside
    the object _open made (no cycle), and (``damaged``) a record that does not parse;
    nothing remembered."""
    cycling = parse_spec(
        {"data": {"n": 1}, "cycle": {"interval_seconds": INTERVAL.total_seconds()}},
        source="test",
    )
    quiet = parse_spec({"data": {"n": 1}}, source="test")
    for n in range(CYCLING):
        await create_from_spec(host, _cycling(n), cycling)
    for n in range(QUIET):
        await create_from_spec(host, f"obj://org-a.example/quiet/{n}", quiet)
    frozen = await create_from_spec(host, FROZEN, cycling)
    key = f"t/default/objects/{FROZEN}"
    record = wire.encode_object(replace(frozen, state=LifecycleState.FROZEN))
    await host.store.put(key, record, etag=Expect.ANY)
    if damaged:
        await host.store.put(f"t/default/objects/{DAMAGED}", b"\xff\x00", etag=Expect.ANY)
    host.journal._objects = journal._Objects()  # a fresh start: nothing decoded yet


def test_scheduling_every_job_decodes_no_object_in_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        host, _clock = await _open(tmp_path)
        try:
            await _populate(host)
            jobs = _Jobs()
            host.jobs = jobs  # type: ignore[assignment]
            decoded = _count_decodes(monkeypatch)
            await host._schedule_all_jobs()
            assert decoded == [], f"{len(decoded)} objects decoded in full"
            # Every ACTIVE cycling object, with its interval; not the frozen one, nor the
            # ones without a cycle.
            assert sorted(jobs.calls) == sorted(
                ("default", _cycling(n), INTERVAL) for n in range(CYCLING)
            )
        finally:
            await host.close()

    asyncio.run(main())


def test_a_damaged_record_is_logged_and_the_others_scheduled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        host, _clock = await _open(tmp_path)
        try:
            await _populate(host, damaged=True)
            jobs = _Jobs()
            host.jobs = jobs  # type: ignore[assignment]
            with caplog.at_level(logging.WARNING, logger="gateway.host"):
                await host._schedule_all_jobs()
            assert len(jobs.calls) == CYCLING
            assert [r for r in caplog.records if DAMAGED in r.getMessage()]
        finally:
            await host.close()

    asyncio.run(main())


def test_scheduling_stops_at_the_first_refusal(tmp_path: Path) -> None:
    async def main() -> None:
        host, _clock = await _open(tmp_path)
        try:
            await _populate(host)
            jobs = _Jobs(refuse_from=3)
            host.jobs = jobs  # type: ignore[assignment]
            await host._schedule_all_jobs()
            assert len(jobs.calls) == 3  # the scheduler is unreachable: the pass ends
            jobs = _Jobs()
            host.jobs = jobs  # type: ignore[assignment]
            await host._schedule_all_jobs()  # the next pass tries them all again
            assert len(jobs.calls) == CYCLING
        finally:
            await host.close()

    asyncio.run(main())


#: Records that parse but that the full decode refuses, by what is wrong with them: every
#: pass over the records counts and logs them as unreadable too, as it would if it
#: decoded them in full (the gauge counted the second by its state).
REFUSED = (
    ("a lifecycle state this version does not know", "unknown-state", "state", 99),
    (
        "an evaluation interval beyond MAX_CYCLE_INTERVAL",
        "endless-interval",
        "interval_ms",
        MAX_CYCLE_INTERVAL // timedelta(milliseconds=1) + 1,
    ),
)


async def _put_refused(host: Host) -> list[str]:
    """The REFUSED records, each made from a good cycling record of ``host``; their ids."""
    good = (await host.store.get(f"t/default/objects/{_cycling(0)}")).value
    ids = []
    for _reason, name, field, value in REFUSED:
        message = object_pb2.StoredObject.FromString(good)
        setattr(message if field == "state" else message.snapshot.cycle, field, value)
        raw = message.SerializeToString(deterministic=True)
        with pytest.raises(PayloadDecodeError):
            wire.decode_object(raw)
        object_id = f"obj://org-a.example/{name}"
        await host.store.put(f"t/default/objects/{object_id}", raw, etag=Expect.ANY)
        ids.append(object_id)
    return ids


def test_records_the_full_decode_refuses_are_unreadable_to_every_pass(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        host, _clock = await _open(tmp_path)
        try:
            await _populate(host)
            refused = await _put_refused(host)
            counts = await host.count_objects()
            assert ("default", "unreadable", len(REFUSED)) in counts, counts
            assert ("default", "active", 1 + CYCLING + QUIET) in counts, counts
            jobs = _Jobs()
            host.jobs = jobs  # type: ignore[assignment]
            with caplog.at_level(logging.WARNING):
                await host._schedule_all_jobs()
                await host.events.reconcile(("default",))
            assert len(jobs.calls) == CYCLING
            for (reason, *_), object_id in zip(REFUSED, refused, strict=True):
                for logger in ("gateway.host", "gateway.runtime.events"):
                    logged = [
                        r
                        for r in caplog.records
                        if r.name == logger and object_id in r.getMessage()
                    ]
                    assert logged, f"{reason}: not logged by {logger}"
        finally:
            await host.close()

    asyncio.run(main())
