"""`gateway verify --archive` of an object whose oldest handoffs are archived (ADR 0010
step 2): the archived custody is parsed once, the custody story is the one the object
showed before it was compacted, and the checks name each departure and arrival by its
hop (its handoff number over the whole history), not by its place among the carried ones.

An honest object ping-pongs between A and B, then B compacts it keeping only the newest
CUSTODY_KEEP handoffs; its signed archive (compacted and not), the archive directory and
both trust bundles are written to files, and the CLI is run on them.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway import envelope as dsse
from gateway._time import SystemClock
from gateway.archive import ArchiveDir, CustodySegment, compact_custody, compaction_cut
from gateway.audit import ARCHIVE_PAYLOAD_TYPE, archive_of
from gateway.authority import CapabilitySet, Constraints
from gateway.cli import main
from gateway.keyring import load_keyring
from gateway.lineage import Checkpoint, Lineage, handoffs_archived
from gateway.model import GovernedObject
from gateway.objectspec import GrantSpec
from gateway.testing import HostSpec, build_world, serving
from tests.conftest import FAST_HANDOFF, HOST_A, HOST_B

OBJECT = "obj://org-a.example/billing/invoice-37"
HOPS = 21  #: odd: the object ends on B
CUSTODY_KEEP = 8  #: gateway.limits.MIN_CARRIED_HANDOFFS
ARCHIVED = HOPS - CUSTODY_KEEP
DOMAINS = ("org-a.example", "org-b.example")


@dataclass(frozen=True)
class Files:
    compacted: Path  #: B's signed archive of the object after compaction
    whole: Path  #: B's signed archive of it uncompacted
    archive: Path  #: the directory of the segments the compaction wrote
    custody: CustodySegment  #: the archived handoffs
    trust: tuple[str, ...]  #: --trust arguments for both domains
    departures: tuple[Checkpoint, ...]  #: every departure, hop 0 first


def _signed_archive(obj: GovernedObject, lineage: Lineage, signer: object) -> bytes:
    payload = archive_of(
        object_id=OBJECT,
        tenant=obj.tenant,
        holder=HOST_B,
        state=obj.state.value,
        epoch=obj.epoch,
        exported_at=lineage.entries[-1].time + timedelta(seconds=1),
        grants=obj.grants,
        lineage=lineage,
    )
    return dsse.to_json(dsse.seal(payload, ARCHIVE_PAYLOAD_TYPE, [signer]))  # type: ignore[list-item]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    directory = tmp_path_factory.mktemp("audit-s37")
    world = build_world(
        directory / "world", [HostSpec(host_id=h, handoff=FAST_HANDOFF) for h in (HOST_A, HOST_B)]
    )

    async def run() -> tuple[GovernedObject, object]:
        async with serving(world) as hosts:
            await hosts[HOST_A].create_object(
                OBJECT,
                tenant="default",
                data=b'{"n": 1}',
                content_type="application/json",
                # A grant, so that "authority at departure N" checks are made too.
                grant=GrantSpec(
                    audience=tuple(f"spiffe://{d}" for d in DOMAINS),
                    valid_for=timedelta(days=1),
                    capabilities=CapabilitySet.from_config(
                        [{"resource": "pubsub:alerts/*", "actions": ["publish"]}], "test"
                    ),
                    constraints=Constraints.from_claim({}),
                ),
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
    keep = next(
        k for k in range(1, len(lineage.entries)) if compaction_cut(lineage, host=HOST_B, keep=k)
    )
    compacted, segment, custody = compact_custody(
        lineage,
        object_id=OBJECT,
        host=HOST_B,
        at=lineage.entries[-1].time + timedelta(seconds=1),
        signer=signer,  # type: ignore[arg-type]
        keep=keep,
        custody_keep=CUSTODY_KEEP,
    )
    assert custody is not None and handoffs_archived(compacted) == ARCHIVED
    archive = ArchiveDir(directory / "archive")
    archive.write("default", segment)
    where = archive.write_custody("default", custody).parent
    (directory / "compacted.json").write_bytes(_signed_archive(at_b, compacted, signer))
    (directory / "whole.json").write_bytes(_signed_archive(at_b, lineage, signer))
    now = SystemClock().now()
    trust: list[str] = []
    for domain in DOMAINS:
        bundle = directory / f"{domain}.json"
        bundle.write_bytes(load_keyring(directory / "world" / domain / "keys").export(now))
        trust += ["--trust", str(bundle)]
    return Files(
        compacted=directory / "compacted.json",
        whole=directory / "whole.json",
        archive=where,
        custody=custody,
        trust=tuple(trust),
        departures=tuple(Checkpoint.decode(c.payload) for c in lineage.checkpoints),
    )


def _verify(
    files: Files, file: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["verify", str(file), *files.trust, *extra])
    return code, capsys.readouterr().out


def _json(
    files: Files, file: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> dict[str, Any]:
    code, out = _verify(files, file, capsys, *extra, "-o", "json")
    assert code == 0, out
    document: dict[str, Any] = json.loads(out)
    return document


# --- one read of the archived custody ------------------------------------------------


def test_verify_archive_parses_each_archived_handoff_once(
    files: Files, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, verify_archived found the run of archived handoffs (every envelope parsed,
    every commitment hashed) and the audit then found it again, for its arrivals: about
    8 % of `gateway verify --archive`'s CPU. Counted by the envelopes parsed, whatever
    function parses them."""
    archived = {*files.custody.departures, *files.custody.arrivals}
    parsed: Counter[bytes] = Counter()
    from_json = dsse.from_json

    def counting(raw: bytes, *args: object, **kwargs: object) -> dsse.Envelope:
        if raw in archived:
            parsed[raw] += 1
        return from_json(raw, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(dsse, "from_json", counting)
    for output in ("text", "json"):
        parsed.clear()
        code, out = _verify(
            files, files.compacted, capsys, "--archive", str(files.archive), "-o", output
        )
        assert code == 0, out
        assert set(parsed) == archived  # every archived handoff was read...
        assert set(parsed.values()) == {1}, output  # ...once


# --- the custody story is the uncompacted object's ---------------------------------


def _custody_rows(text: str) -> list[list[str]]:
    """The custody table's rows, cell by cell (between its title and the next table)."""
    lines = text.splitlines()
    start = lines.index("custody: who held it, where and when")
    rows = []
    for line in lines[start + 1 :]:
        if not line.startswith(("│", "┃", "┏", "┡", "└")):
            break
        if line.startswith("│"):
            rows.append([cell.strip() for cell in line.split("│")])
    return rows


def test_the_custody_story_with_the_archive_is_the_uncompacted_objects(
    files: Files, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Byte for byte, table and JSON, but for the one value the compaction took away: the
    creation time (entry 0's, archived with the entries, not the custody)."""
    monkeypatch.setenv("COLUMNS", "400")
    restored = _json(files, files.compacted, capsys, "--archive", str(files.archive))
    whole = _json(files, files.whole, capsys)
    assert restored["custody"][0]["arrived_at"] is None
    assert whole["custody"][0]["arrived_at"] is not None
    restored["custody"][0]["arrived_at"] = whole["custody"][0]["arrived_at"]
    for key in ("custody", "hops", "handoffs_archived"):
        assert json.dumps(restored[key]) == json.dumps(whole[key]), key
    assert len(restored["custody"]) == HOPS + 1
    code, text = _verify(files, files.compacted, capsys, "--archive", str(files.archive))
    assert code == 0, text
    code, original = _verify(files, files.whole, capsys)
    assert code == 0, original
    rows, want = _custody_rows(text), _custody_rows(original)
    assert len(rows) == len(want) == 2 * (HOPS + 1)  # each stay: its times, its migrations
    assert rows[0][4] == "-" and want[0][4] != "-"  # arrived: the creation time
    rows[0][4] = want[0][4]
    assert rows == want


# --- checks named by hop -----------------------------------------------------------


def _check_names(document: dict[str, Any]) -> list[str]:
    return [c["name"] for c in document["checks"]]


@pytest.mark.parametrize("with_archive", [False, True], ids=["carried only", "--archive"])
def test_departures_and_arrivals_are_named_by_their_hop(
    files: Files, capsys: pytest.CaptureFixture[str], with_archive: bool
) -> None:
    """Before, the first carried departure was "departure 0" although ARCHIVED handoffs
    came before it (its signed hop count says so), and its arrival "arrival 0"."""
    extra = ("--archive", str(files.archive)) if with_archive else ()
    names = _check_names(_json(files, files.compacted, capsys, *extra))
    carried = files.departures[ARCHIVED:]
    departures = [n for n in names if n.startswith("departure ")]
    arrivals = [n for n in names if n.startswith("arrival ")]
    assert departures == [f"departure {ARCHIVED + k} by {c.host}" for k, c in enumerate(carried)]
    assert arrivals == [f"arrival {ARCHIVED + k} at {c.to}" for k, c in enumerate(carried)]
    # The grant chain recorded at every departure: checked at the first and the last.
    assert [n for n in names if n.startswith("authority at departure ")] == [
        f"authority at departure {ARCHIVED}",
        f"authority at departure {HOPS - 1}",
    ]


def test_an_uncompacted_object_numbers_its_hops_from_zero_as_before(
    files: Files, capsys: pytest.CaptureFixture[str]
) -> None:
    names = _check_names(_json(files, files.whole, capsys))
    assert [n for n in names if n.startswith("departure ")] == [
        f"departure {k} by {c.host}" for k, c in enumerate(files.departures)
    ]
    assert [n for n in names if n.startswith("arrival ")] == [
        f"arrival {k} at {c.to}" for k, c in enumerate(files.departures)
    ]
    assert [n for n in names if n.startswith("authority at departure ")] == [
        "authority at departure 0",
        f"authority at departure {HOPS - 1}",
    ]


def test_the_table_names_checks_by_hop_too(
    files: Files, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")
    code, text = _verify(files, files.compacted, capsys)
    assert code == 0, text
    first = files.departures[ARCHIVED]
    assert f"departure {ARCHIVED} by {first.host}" in text
    assert f"arrival {ARCHIVED} at {first.to}" in text
    assert "departure 0 by" not in text and "arrival 0 at" not in text
