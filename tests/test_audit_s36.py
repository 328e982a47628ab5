"""`gateway verify` of an object whose oldest handoffs are archived (ADR 0010 step 2).

An honest object ping-pongs between A and B, then B compacts it keeping only the newest
handoffs. Its custody story must start where the evidence it carries starts (the oldest
carried departure's sender, received from an unknown host at an unknown time) and say how
many handoffs came before; given the archive, it must run from the creator through every
archived handoff, as if nothing had been compacted.
"""

from __future__ import annotations

import asyncio
import io
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from rich.console import Console

from gateway import envelope as dsse
from gateway._time import SystemClock
from gateway.archive import (
    ArchiveDir,
    CustodySegment,
    Segment,
    compact_custody,
    compaction_cut,
)
from gateway.audit import ARCHIVE_PAYLOAD_TYPE, Report, Status, archive_of, audit
from gateway.cli import main
from gateway.keyring import load_keyring
from gateway.lineage import Checkpoint, handoffs_archived
from gateway.model import GovernedObject
from gateway.present import UNKNOWN_ARRIVAL, custody_parts
from gateway.testing import HostSpec, build_world, serving
from tests.conftest import FAST_HANDOFF, HOST_A, HOST_B

OBJECT = "obj://org-a.example/billing/invoice-36"
HOPS = 21  #: odd: the object ends on B, and the oldest carried departure is B's
CUSTODY_KEEP = 8  #: gateway.limits.MIN_CARRIED_HANDOFFS
ARCHIVED = HOPS - CUSTODY_KEEP
DOMAINS = ("org-a.example", "org-b.example")


@dataclass(frozen=True)
class History:
    at_b: GovernedObject  #: the object on B after HOPS hops, uncompacted
    file: bytes  #: B's signed archive of it after compaction (DSSE JSON)
    full: bytes  #: B's signed archive of it uncompacted
    segments: tuple[Segment | CustodySegment, ...]  #: what the compaction archived
    bundles: dict[str, bytes]


def _archive_file(obj: GovernedObject, lineage: object, signer: object, at: datetime) -> bytes:
    payload = archive_of(
        object_id=OBJECT,
        tenant=obj.tenant,
        holder=HOST_B,
        state=obj.state.value,
        epoch=obj.epoch,
        exported_at=at,
        grants=obj.grants,
        lineage=lineage,  # type: ignore[arg-type]
    )
    return dsse.to_json(dsse.seal(payload, ARCHIVE_PAYLOAD_TYPE, [signer]))  # type: ignore[list-item]


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    directory = tmp_path_factory.mktemp("audit-s36")
    world = build_world(
        directory, [HostSpec(host_id=h, handoff=FAST_HANDOFF) for h in (HOST_A, HOST_B)]
    )

    async def run() -> tuple[GovernedObject, object]:
        async with serving(world) as hosts:
            await hosts[HOST_A].create_object(
                OBJECT,
                tenant="default",
                data=json.dumps({"n": 1}).encode(),
                content_type="application/json",
            )
            for hop in range(HOPS):
                source, destination = (HOST_A, HOST_B) if hop % 2 == 0 else (HOST_B, HOST_A)
                await hosts[source].migrate(OBJECT, tenant="default", destination=destination)
            return (
                await hosts[HOST_B].get_object(OBJECT, tenant="default"),
                hosts[HOST_B].context.signer,
            )

    at_b, signer = asyncio.run(run())
    lineage = at_b.lineage
    at = lineage.entries[-1].time + timedelta(seconds=1)
    keep = next(
        k for k in range(1, len(lineage.entries)) if compaction_cut(lineage, host=HOST_B, keep=k)
    )
    compacted, segment, custody = compact_custody(
        lineage,
        object_id=OBJECT,
        host=HOST_B,
        at=at,
        signer=signer,  # type: ignore[arg-type]
        keep=keep,
        custody_keep=CUSTODY_KEEP,
    )
    assert custody is not None and handoffs_archived(compacted) == ARCHIVED
    now = SystemClock().now()
    return History(
        at_b=at_b,
        file=_archive_file(at_b, compacted, signer, at),
        full=_archive_file(at_b, lineage, signer, at),
        segments=(segment, custody),
        bundles={d: load_keyring(directory / d / "keys").export(now) for d in DOMAINS},
    )


def run(history: History, file: bytes, archive: object = None) -> Report:
    return audit(
        file,
        [(f"{d}.json", raw) for d, raw in history.bundles.items()],
        now=SystemClock().now(),
        archive=archive,  # type: ignore[arg-type]
    )


def failed(report: Report) -> dict[str, str]:
    return {c.name: c.detail for c in report.checks if c.status is Status.FAILED}


def _departures(obj: GovernedObject) -> list[Checkpoint]:
    return [Checkpoint.decode(c.payload) for c in obj.lineage.checkpoints]


def test_without_the_archive_the_first_stay_is_the_oldest_carried_senders(
    history: History,
) -> None:
    report = run(history, history.file)
    assert report.ok, failed(report)
    oldest = _departures(history.at_b)[ARCHIVED]
    first = report.stays[0]
    assert first.holder == oldest.host == HOST_B  # not the creator, A
    assert first.received_from is None  # unknown: its arrival is archived, not "the creator"
    assert first.arrived_at is None and first.arrival_migration == ""
    assert first.first_entry is None  # where its stay began is archived too
    assert (first.departed_to, first.last_entry) == (HOST_A, oldest.size - 1)
    assert report.handoffs_archived == ARCHIVED
    assert len(report.stays) == CUSTODY_KEEP + 1  # each carried departure's sender, and B
    assert [s.holder for s in report.stays[1:]] == [
        c.to for c in _departures(history.at_b)[ARCHIVED:]
    ]
    assert report.stays[1].received_from == HOST_B
    document = report.to_json()
    assert document["handoffs_archived"] == ARCHIVED
    assert document["custody"][0]["received_from"] is None
    assert document["custody"][0]["entries"] == [None, oldest.size - 1]
    custody = next(c for c in report.checks if c.name == "custody")
    assert f"{ARCHIVED} archived" in custody.detail


def test_with_the_archive_the_story_runs_from_the_creator(history: History) -> None:
    report = run(history, history.file, history.segments)
    assert report.ok, failed(report)
    # The same custody as the uncompacted object shows, stay for stay.
    whole = run(history, history.full)
    assert whole.ok, failed(whole)
    assert report.handoffs_archived == 0 == whole.handoffs_archived
    assert len(report.stays) == HOPS + 1
    first = report.stays[0]
    assert (first.holder, first.received_from, first.first_entry) == (HOST_A, "", 0)
    for got, want in zip(report.stays, whole.stays, strict=True):
        assert got.to_json() | {"arrived_at": None} == want.to_json() | {"arrived_at": None}
    # Arrival times are those of the archived arrival receipts (only the creation time,
    # entry 0's, is archived with the entries).
    assert [s.arrived_at for s in report.stays[1:]] == [s.arrived_at for s in whole.stays[1:]]


def test_an_archive_that_does_not_verify_leaves_the_honest_partial_story(
    history: History,
) -> None:
    segment, _custody = history.segments
    report = run(history, history.file, [segment])  # the custody segment is missing
    assert "archived history" in failed(report)
    assert report.handoffs_archived == ARCHIVED
    assert report.stays[0].holder == HOST_B and report.stays[0].received_from is None


def test_the_cli_json_marks_the_unknown_arrival_and_restores_it_from_the_archive(
    history: History, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "object.json"
    file.write_bytes(history.file)
    trusts: list[str] = []
    for domain, raw in history.bundles.items():
        path = tmp_path / f"{domain}.json"
        path.write_bytes(raw)
        trusts += ["--trust", str(path)]
    assert main(["verify", str(file), *trusts, "-o", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["custody"][0]["received_from"] is None
    assert document["handoffs_archived"] == ARCHIVED
    archive = ArchiveDir(tmp_path / "archive")
    segment, custody = history.segments
    assert isinstance(segment, Segment) and isinstance(custody, CustodySegment)
    archive.write("default", segment)
    where = archive.write_custody("default", custody).parent
    assert main(["verify", str(file), *trusts, "--archive", str(where), "-o", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert len(document["custody"]) == HOPS + 1
    assert document["custody"][0]["received_from"] == ""
    assert document["handoffs_archived"] == 0


def _rendered(report: Report) -> str:
    console = Console(width=400, record=True, file=io.StringIO())
    for part in custody_parts(report):
        console.print(part)
    return console.export_text()


def test_the_custody_table_marks_the_unknown_arrival_and_counts_the_archived(
    history: History,
) -> None:
    text = _rendered(run(history, history.file))
    rows = [line for line in text.splitlines() if "org-" in line and "│" in line]
    first = [cell.strip() for cell in rows[0].split("│")]
    assert first[1:4] == ["0", "org-b.example/cluster/west/gateway", UNKNOWN_ARRIVAL]
    assert "(created it)" not in text
    assert f"?–{_departures(history.at_b)[ARCHIVED].size - 1}" in text
    assert f"archived: {ARCHIVED} earlier handoff(s)" in text
    restored = _rendered(run(history, history.file, history.segments))
    assert "(created it)" in restored and UNKNOWN_ARRIVAL not in restored
    assert "earlier handoff(s)" not in restored


def test_the_cli_table_marks_the_unknown_arrival_instead_of_a_creation(
    history: History, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "object.json"
    file.write_bytes(history.file)
    trusts: list[str] = []
    for domain, raw in history.bundles.items():
        path = tmp_path / f"{domain}.json"
        path.write_bytes(raw)
        trusts += ["--trust", str(path)]
    assert main(["verify", str(file), *trusts]) == 0
    text = capsys.readouterr().out
    assert UNKNOWN_ARRIVAL in text and "(created it)" not in text
    assert f"archived: {ARCHIVED} earlier handoff(s)" in text
