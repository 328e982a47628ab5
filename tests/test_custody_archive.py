"""ADR 0010 step 2: the object carries its last K handoffs; older ones are archived.

A history made by real hosts (in this process, real mTLS and SQLite): A creates the
object and it moves A -> B -> A ... for HOPS hops, ending on A. A (the presenter, which
holds valid keys and may sign anything as itself) compacts it, archiving all but the
last K handoffs (gateway.archive.compact_custody), and departs for B. The receiver's
checks, as Prepare runs them (verify_lineage then verify_custody), accept the honest
result and refuse every way A could use archiving to rewrite custody: carrying fewer
than MIN_CARRIED_HANDOFFS, a false commitment or hop number in its own departure, and
an oldest carried departure (its own) re-signed to commit to an archive with a handoff
hidden, reordered, altered or invented, or to fewer hops. B's later signatures pin it.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from gateway import _custody_chain as custody_chain
from gateway import envelope as dsse
from gateway.archive import (
    CompactionPolicy,
    CustodySegment,
    Segment,
    _archivable_handoffs,
    compact_custody,
    compaction_cut,
    verify_archived,
)
from gateway.custody import verify_custody
from gateway.errors import ConfigError, CustodyError, LineageError
from gateway.host import Host
from gateway.keys import Signer
from gateway.limits import MIN_CARRIED_HANDOFFS
from gateway.lineage import Checkpoint, EntryKind, Lineage, verify_lineage
from gateway.model import GovernedObject
from gateway.testing import HostSpec, build_world, serving
from gateway.trust import TrustStore
from tests.conftest import FAST_HANDOFF, HOST_A, HOST_B

OBJECT = "obj://org-a.example/billing/invoice-7"
HOPS = 20  #: more than K + MIN_CARRIED_HANDOFFS with K = 8
KEEP = 8


@dataclass(frozen=True)
class History:
    at_a: GovernedObject  #: the object back on A after HOPS hops
    trust: TrustStore
    signer: Signer  #: A's envelope key
    at: datetime


async def _ping_pong(hosts: dict[str, Host]) -> History:
    await hosts[HOST_A].create_object(
        OBJECT,
        tenant="default",
        data=json.dumps({"n": 1}).encode(),
        content_type="application/json",
    )
    for hop in range(HOPS):
        source, destination = (HOST_A, HOST_B) if hop % 2 == 0 else (HOST_B, HOST_A)
        await hosts[source].migrate(OBJECT, tenant="default", destination=destination)
    at_a = await hosts[HOST_A].get_object(OBJECT, tenant="default")
    return History(
        at_a=at_a,
        trust=hosts[HOST_B].trust,
        signer=hosts[HOST_A].context.signer,
        at=at_a.lineage.entries[-1].time + timedelta(seconds=1),
    )


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    directory = tmp_path_factory.mktemp("custody-archive")
    specs = [HostSpec(host_id=h, handoff=FAST_HANDOFF) for h in (HOST_A, HOST_B)]
    world = build_world(directory, specs)

    async def run() -> History:
        async with serving(world) as hosts:
            return await _ping_pong(hosts)

    return asyncio.run(run())


def compacted(history: History, custody_keep: int) -> tuple[Lineage, CustodySegment | None]:
    lineage = history.at_a.lineage
    keep = next(
        k for k in range(1, len(lineage.entries)) if compaction_cut(lineage, host=HOST_A, keep=k)
    )
    out, _segment, custody = compact_custody(
        lineage,
        object_id=OBJECT,
        host=HOST_A,
        at=history.at,
        signer=history.signer,
        keep=keep,
        custody_keep=custody_keep,
    )
    return out, custody


def depart(history: History, lineage: Lineage) -> Lineage:
    """A freezes the object for B and signs its departure as the source does."""
    obj = replace(history.at_a, lineage=lineage)
    frozen = obj.freeze("mig-next", destination=HOST_B, host=HOST_A, at=history.at)
    return frozen.lineage.sealed(
        object_id=OBJECT,
        host=HOST_A,
        epoch=frozen.epoch,
        at=history.at,
        signer=history.signer,
        to=HOST_B,
        migration="mig-next",
    )


def receive(lineage: Lineage, history: History) -> tuple[int, int]:
    """What B establishes: verify_lineage then verify_custody, as Prepare runs them."""
    verified = verify_lineage(lineage, object_id=OBJECT, trust=history.trust, sealed=True)
    found = verify_custody(
        lineage, verified.checkpoints, object_id=OBJECT, trust=history.trust, in_transit=True
    )
    return found.hops, found.archived


def resign(history: History, lineage: Lineage, index: int, **changes: object) -> Lineage:
    """``lineage`` with carried departure ``index`` (one A signed) re-signed by A with
    ``changes``: what a dishonest presenter can do to its own departures."""
    genuine = Checkpoint.decode(lineage.checkpoints[index].payload)
    assert genuine.host == HOST_A
    forged = replace(genuine, **changes)  # type: ignore[arg-type]
    signed = dsse.seal(forged.encode(), dsse.PayloadType.CHECKPOINT, [history.signer])
    checkpoints = list(lineage.checkpoints)
    checkpoints[index] = signed
    return Lineage(
        entries=lineage.entries,
        checkpoints=tuple(checkpoints),
        arrivals=lineage.arrivals,
        base=lineage.base,
    )


def test_honest_archiving_is_accepted_with_the_full_hop_count(history: History) -> None:
    full = history.at_a.lineage
    assert len(full.checkpoints) == HOPS
    lineage, custody = compacted(history, KEEP)
    assert custody is not None
    assert len(lineage.checkpoints) == KEEP
    assert len(lineage.arrivals) == KEEP
    assert custody.first == 0 and len(custody.departures) == HOPS - KEEP
    # The archived handoffs digest to the oldest carried departure's commitment.
    oldest = Checkpoint.decode(lineage.checkpoints[0].payload)
    assert oldest.hops == HOPS - KEEP + 1
    archived = [dsse.from_json(raw, max_size=1 << 20) for raw in custody.departures]
    arrivals = [dsse.from_json(raw, max_size=1 << 20) for raw in custody.arrivals]
    assert oldest.custody == custody_chain.commitment(
        OBJECT, [e.payload for e in archived], [e.payload for e in arrivals]
    )
    # The next departure continues the chain and counts every hop, archived ones too.
    assert receive(depart(history, lineage), history) == (HOPS + 1, HOPS - KEEP)
    # The full history is accepted as before (nothing archived).
    assert receive(depart(history, full), history) == (HOPS + 1, 0)


def test_archiving_a_second_time_keeps_k_and_the_chain(history: History) -> None:
    lineage, _custody = compacted(history, 12)
    assert len(lineage.checkpoints) == 12
    last = lineage.entries[-1]
    for _ in range(3):  # A's cycles after the first compaction
        lineage = lineage.append(
            EntryKind.EVALUATED,
            host=HOST_A,
            at=history.at,
            epoch=last.epoch,
            generation=last.generation,
            data_digest=last.data_digest,
            credentials_digest=last.credentials_digest,
        )
    again, _segment, custody = compact_custody(
        lineage,
        object_id=OBJECT,
        host=HOST_A,
        at=history.at,
        signer=history.signer,
        keep=1,
        custody_keep=KEEP,
    )
    assert custody is not None and custody.first == HOPS - 12
    assert len(again.checkpoints) == KEEP
    assert receive(depart(history, again), history) == (HOPS + 1, HOPS - KEEP)


def test_too_few_carried_handoffs_are_refused(history: History) -> None:
    lineage, _custody = compacted(history, 2)  # a presenter ignoring the floor
    assert len(lineage.checkpoints) + 1 < MIN_CARRIED_HANDOFFS
    with pytest.raises(CustodyError, match="at least 8 carried"):
        receive(depart(history, lineage), history)


def test_a_false_hop_count_in_the_presenters_departure_is_refused(history: History) -> None:
    lineage = depart(history, compacted(history, KEEP)[0])
    last = len(lineage.checkpoints) - 1
    for hops in (KEEP + 1, HOPS):  # as if nothing were archived; one hop hidden
        with pytest.raises(CustodyError, match="hops"):
            receive(resign(history, lineage, last, hops=hops), history)


def test_a_false_commitment_in_the_presenters_departure_is_refused(history: History) -> None:
    lineage = depart(history, compacted(history, KEEP)[0])
    last = len(lineage.checkpoints) - 1
    with pytest.raises(CustodyError, match="commits to custody"):
        receive(resign(history, lineage, last, custody=custody_chain.genesis(OBJECT)), history)


def _archive(custody: CustodySegment) -> tuple[list[bytes], list[bytes]]:
    load = [dsse.from_json(raw, max_size=1 << 20) for raw in custody.departures]
    back = [dsse.from_json(raw, max_size=1 << 20) for raw in custody.arrivals]
    return [e.payload for e in load], [e.payload for e in back]


def _rewrites(custody: CustodySegment) -> dict[str, tuple[bytes, int]]:
    departures, arrivals = _archive(custody)
    count = len(departures)
    changed = departures[0].replace(HOST_B.encode(), b"spiffe://org-z.example/cluster/one/gateway")
    assert changed != departures[0]
    c = custody_chain.commitment
    return {
        "hidden": (c(OBJECT, departures[2:], arrivals[2:]), count - 1),
        "reordered": (c(OBJECT, departures[::-1], arrivals[::-1]), count + 1),
        "altered": (c(OBJECT, [changed, *departures[1:]], arrivals), count + 1),
        "invented": (
            c(OBJECT, [*departures, departures[-1]], [*arrivals, arrivals[-1]]),
            count + 2,
        ),
        "hops lowered": (c(OBJECT, departures, arrivals), 2),
    }


@pytest.mark.parametrize("rewrite", ["hidden", "reordered", "altered", "invented", "hops lowered"])
def test_rewriting_the_archived_custody_is_refused(history: History, rewrite: str) -> None:
    """A archives so that the oldest carried departure is its own, then re-signs that
    departure to commit to a rewritten archive: B's next departure, which committed to
    the original payload, no longer matches."""
    lineage, custody = compacted(history, KEEP)
    assert custody is not None
    oldest = Checkpoint.decode(lineage.checkpoints[0].payload)
    assert oldest.host == HOST_A  # HOPS - KEEP is even: departure 12 left A
    commitment, hops = _rewrites(custody)[rewrite]
    forged = resign(history, lineage, 0, custody=commitment, hops=hops)
    with pytest.raises(CustodyError, match=r"commits to custody|hops"):
        receive(depart(history, forged), history)


def test_a_downgraded_oldest_carried_departure_is_refused(history: History) -> None:
    """The presenter strips the commitment from the oldest carried departure (its own) to
    have the receiver treat the carried handoffs as the whole history."""
    lineage, _custody = compacted(history, KEEP)
    forged = resign(history, lineage, 0, custody=b"", hops=0)
    with pytest.raises((CustodyError, LineageError)):
        receive(depart(history, forged), history)


def test_archiving_waits_for_a_committing_oldest_departure(history: History) -> None:
    departures = [Checkpoint.decode(c.payload) for c in history.at_a.lineage.checkpoints]
    size = departures[-1].size
    assert _archivable_handoffs(departures, len(departures), size, KEEP) == HOPS - KEEP
    # The departure that would become the oldest carried is of the earlier format.
    old_format = list(departures)
    old_format[HOPS - KEEP] = replace(departures[HOPS - KEEP], custody=b"", hops=0)
    assert _archivable_handoffs(old_format, len(departures), size, KEEP) < HOPS - KEEP
    assert _archivable_handoffs(departures, len(departures), size, 0) == 0
    # Only handoffs whose departure lies in the archived entries.
    assert _archivable_handoffs(departures, len(departures), departures[3].size, KEEP) == 4


@pytest.mark.parametrize("keep", [0, MIN_CARRIED_HANDOFFS - 1, 1025])
def test_custody_keep_is_bounded(keep: int) -> None:
    with pytest.raises(ConfigError, match="custody_keep"):
        CompactionPolicy(custody_keep=keep)


def test_custody_segment_round_trips_and_refuses_bad_shapes(history: History) -> None:
    _lineage, custody = compacted(history, KEEP)
    assert custody is not None
    assert CustodySegment.decode(custody.encode()) == custody
    broken = replace(custody, arrivals=custody.arrivals[:-1]).encode()
    with pytest.raises(LineageError, match="custody segment"):
        CustodySegment.decode(broken)


def test_config_key_reaches_the_policy(tmp_path: Path) -> None:
    from gateway.config import load_config

    world = build_world(tmp_path, [HostSpec(host_id=HOST_A)])
    path = world.config(HOST_A)
    text = path.read_text()
    path.write_text(text + "\nlineage:\n  custody_keep: 24\n")
    assert load_config(path).lineage.compaction.custody_keep == 24
    path.write_text(text + "\nlineage:\n  custody_keep: 3\n")
    with pytest.raises(ConfigError, match="custody_keep"):
        load_config(path)
    # Its own key is named as the place of the fault, also beside a compaction mapping
    # (whose own faults are named lineage.compaction).
    for compaction in ("", "  compaction: true\n", "  compaction:\n    keep_entries: 16\n"):
        path.write_text(text + "\nlineage:\n  custody_keep: 3\n" + compaction)
        with pytest.raises(ConfigError, match=r"gateway\.yaml: lineage\.custody_keep: "):
            load_config(path)
    path.write_text(text + "\nlineage:\n  compaction:\n    keep_entries: 200\n")
    with pytest.raises(ConfigError, match=r"gateway\.yaml: lineage\.compaction: "):
        load_config(path)


def _offline(history: History) -> tuple[Lineage, list[Segment | CustodySegment]]:
    lineage = history.at_a.lineage
    keep = next(
        k for k in range(1, len(lineage.entries)) if compaction_cut(lineage, host=HOST_A, keep=k)
    )
    out, segment, custody = compact_custody(
        lineage,
        object_id=OBJECT,
        host=HOST_A,
        at=history.at,
        signer=history.signer,
        keep=keep,
        custody_keep=KEEP,
    )
    assert custody is not None
    return out, [segment, custody]


def test_offline_verify_replays_the_archived_handoffs(history: History) -> None:
    lineage, archive = _offline(history)
    whole = verify_archived(archive, lineage, object_id=OBJECT, trust=history.trust, sealed=False)
    assert len(whole.checkpoints) == HOPS  # every original departure, archived ones too
    assert [c.hops for c in whole.checkpoints] == list(range(1, HOPS + 1))
    # Without the custody segment the history cannot be reassembled.
    with pytest.raises(LineageError, match="custody segment is missing"):
        verify_archived(archive[:1], lineage, object_id=OBJECT, trust=history.trust, sealed=False)


def _forged_archive(custody: CustodySegment, how: str) -> CustodySegment:
    departures, arrivals = list(custody.departures), list(custody.arrivals)
    if how == "hidden":
        del departures[3], arrivals[3]
        departures.append(departures[-1])
        arrivals.append(arrivals[-1])
    elif how == "reordered":
        departures[2], departures[3] = departures[3], departures[2]
        arrivals[2], arrivals[3] = arrivals[3], arrivals[2]
    elif how == "altered":
        # A different but validly signed arrival: the next one's, at this index.
        arrivals[0] = arrivals[1]
    return replace(custody, departures=tuple(departures), arrivals=tuple(arrivals))


@pytest.mark.parametrize("how", ["hidden", "reordered", "altered"])
def test_offline_verify_refuses_an_archive_that_does_not_digest(history: History, how: str) -> None:
    lineage, archive = _offline(history)
    custody = archive[1]
    assert isinstance(custody, CustodySegment)
    forged = [archive[0], _forged_archive(custody, how)]
    with pytest.raises(LineageError, match="do not digest to the custody"):
        verify_archived(forged, lineage, object_id=OBJECT, trust=history.trust, sealed=False)


def test_compaction_is_due_for_handoffs_alone(history: History) -> None:
    """An object moving every few cycles may never pass the entry limits; its handoffs
    make a compaction due once they pass K + MIN_CARRIED_HANDOFFS."""
    lineage = history.at_a.lineage
    assert len(lineage.entries) < 128 and len(lineage.checkpoints) == HOPS
    quiet = {"max_bytes": None, "max_age": None}
    assert CompactionPolicy(custody_keep=KEEP, **quiet).due(lineage, now=history.at)  # type: ignore[arg-type]
    assert not CompactionPolicy(custody_keep=16, **quiet).due(lineage, now=history.at)  # type: ignore[arg-type]
