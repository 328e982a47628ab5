"""A source whose Commit reply was lost comes back after its destination pruned the
migration (gateway.handoff.pruning, "A source away past the retention").

The destination answers the re-sent Commit with a signed unknown-migration answer; the
source settles DONE on it only when it is signed by the destination, names exactly the
migration, and the commit is old enough on the source's own clock for an honest
destination's retention to have pruned it. Everything else (an unsigned error, an answer
signed by someone else or about something else, an answer too early, a destination
still holding the record) leaves the source COMMITTED, asking again less and less often.
The object is live at the destination only, whatever the source decides.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from gateway import envelope as dsse
from gateway import wire
from gateway.errors import MigrationNotFoundError, PayloadDecodeError
from gateway.handoff import recovery as recovery_module
from gateway.handoff.messages import UnknownMigrationAnswer
from gateway.handoff.pruning import earliest_forgotten
from gateway.handoff.records import DestinationStep, SourceRecord, SourceStep
from gateway.migrations import view_source
from gateway.stores import Delete, Expect
from gateway.testing import HostSpec, build_world
from gateway.testing.harness import InProcessWorld
from tests.conftest import HOST_A, HOST_A2, HOST_B

OBJECT = "obj://org-a.example/review/forgotten"
#: Past any retention a destination can have (the default and minimum is about 8 days).
AWAY = timedelta(days=9)


@dataclass
class Lost:
    """A migration committed at A and activated at B, whose Commit reply A never got."""

    world: InProcessWorld
    migration_id: str

    def source(self) -> SourceRecord:
        loaded = self.world.run(self.world.hosts[HOST_A].journal.source(self.migration_id))
        assert loaded is not None
        return loaded.value

    def prune_at_b(self) -> None:
        """B's clock and pruner past the retention: B forgets the migration."""
        b = self.world.hosts[HOST_B]
        self.world.clock(HOST_B).skew(b.recovery.pruner.retention + timedelta(days=1))
        self.world.run(b.recovery.pruner.run_once(paced=False))
        assert self.world.run(b.journal.destination(self.migration_id)) is None

    def commits_seen(self, monkeypatch: pytest.MonkeyPatch) -> list[str]:
        """Counts the Commits B's server answers from now on."""
        b = self.world.hosts[HOST_B]
        answer = b.destination.answer_commit
        seen: list[str] = []

        async def counted(migration_id: str, *, peer: str) -> bytes:
            seen.append(migration_id)
            return await answer(migration_id, peer=peer)

        monkeypatch.setattr(b.destination, "answer_commit", counted)
        return seen


@pytest.fixture
def lost(tmp_path: Path) -> Iterator[Lost]:
    world = InProcessWorld(
        build_world(
            tmp_path,
            [HostSpec(host_id=HOST_A), HostSpec(host_id=HOST_A2), HostSpec(host_id=HOST_B)],
        )
    )
    with contextlib.closing(world):
        world.create(HOST_A, OBJECT, data={"n": 1})
        world.network(HOST_A).lose_reply("commit", to=HOST_B, times=1000)
        result = world.migrate(OBJECT, source=HOST_A, to=HOST_B)
        assert result.step is SourceStep.COMMITTED
        world.network(HOST_A).clear()
        yield Lost(world, result.migration_id)


def test_the_source_settles_on_the_signed_answer_and_says_so(
    lost: Lost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The way the story should end: DONE, with B's signed answer kept as evidence, the
    reason in the record (and so in `gateway migration show`), no Commit sent again."""
    world = lost.world
    lost.prune_at_b()
    world.clock(HOST_A).skew(AWAY)
    seen = lost.commits_seen(monkeypatch)
    world.recover(HOST_A)
    done = lost.source()
    assert done.step is SourceStep.DONE
    evidence = wire.decode_envelope(done.activation_receipt)
    assert evidence.payload_type == dsse.PayloadType.UNKNOWN_MIGRATION
    answer = UnknownMigrationAnswer.decode(
        world.hosts[HOST_A].context.open_from(
            HOST_B, evidence, dsse.PayloadType.UNKNOWN_MIGRATION, at=world.now(HOST_A)
        )
    )
    assert (answer.migration_id, answer.source, answer.destination) == (
        lost.migration_id,
        HOST_A,
        HOST_B,
    )
    view = view_source(done)
    assert not view.open and "without an activation receipt" in view.reason
    # It says what A knows: B may have activated the object or aborted it (a refusal at
    # Commit) before pruning; the reason claims neither.
    assert "whether it activated the object there" in view.reason
    assert f"ask {HOST_B}'s operator" in view.reason
    assert seen == [lost.migration_id]
    world.recover(HOST_A)
    world.clock(HOST_A).skew(timedelta(hours=2))
    world.recover(HOST_A)
    assert seen == [lost.migration_id], "a settled source sent Commit again"
    assert world.assert_one_live_copy(OBJECT) == HOST_B
    world.assert_invariants(OBJECT)


def test_nothing_settles_without_a_receipt_while_the_destination_has_the_record(
    lost: Lost,
) -> None:
    """A away as long, but B kept its ACTIVATED record (its clock did not move): A gets
    the real activation receipt, never an unknown-migration answer."""
    world = lost.world
    world.clock(HOST_A).skew(AWAY)
    activated = world.run(world.hosts[HOST_B].journal.destination(lost.migration_id))
    assert activated is not None and activated.value.step is DestinationStep.ACTIVATED
    world.recover(HOST_A)
    done = lost.source()
    assert done.step is SourceStep.DONE and not done.reason
    assert wire.decode_envelope(done.activation_receipt).payload_type == (
        dsse.PayloadType.ACTIVATION_RECEIPT
    )


def test_a_destination_that_says_not_found_while_it_holds_the_record_settles_nothing(
    lost: Lost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B's Commit path says "not found" by mistake while the record is there: B does not
    sign it (it reads the record again), A gets the bare error and settles nothing,
    however long it was away; it then asks less often, not on every pass."""
    world = lost.world
    world.clock(HOST_A).skew(AWAY)
    b = world.hosts[HOST_B]

    async def mistaken(migration_id: str, *, peer: str, decision: bytes = b"") -> bytes:
        raise MigrationNotFoundError(f"no migration {migration_id} was staged here")

    monkeypatch.setattr(b.destination, "commit", mistaken)
    seen = lost.commits_seen(monkeypatch)
    world.recover(HOST_A)
    assert lost.source().step is SourceStep.COMMITTED
    assert seen == [lost.migration_id]
    world.recover(HOST_A)
    assert seen == [lost.migration_id], "Commit re-sent on the very next pass"


@pytest.mark.parametrize(
    ("case", "make"),
    [
        pytest.param(
            "signed by another host",
            lambda lost, now: sealed(lost, HOST_A2, lost.migration_id, HOST_A, HOST_B, now),
            id="other-signer",
        ),
        pytest.param(
            "about another migration",
            lambda lost, now: sealed(
                lost, HOST_B, "mig-" + os.urandom(16).hex(), HOST_A, HOST_B, now
            ),
            id="other-migration",
        ),
        pytest.param(
            "for another source",
            lambda lost, now: sealed(lost, HOST_B, lost.migration_id, HOST_A2, HOST_B, now),
            id="other-source",
        ),
        pytest.param(
            "naming another destination",
            lambda lost, now: sealed(lost, HOST_B, lost.migration_id, HOST_A, HOST_A2, now),
            id="other-destination",
        ),
        pytest.param(
            "issued before the commit",
            lambda lost, now: sealed(
                lost, HOST_B, lost.migration_id, HOST_A, HOST_B, now - AWAY - timedelta(days=1)
            ),
            id="before-commit",
        ),
        pytest.param(
            "not signed at all",
            lambda lost, now: wire.encode_envelope(
                dsse.Envelope(
                    payload=UnknownMigrationAnswer(
                        migration_id=lost.migration_id,
                        source=HOST_A,
                        destination=HOST_B,
                        issued_at=now,
                    ).encode(),
                    payload_type=dsse.PayloadType.UNKNOWN_MIGRATION,
                    signatures=(dsse.Signature(keyid="forged", sig=b"\x00" * 64),),
                )
            ),
            id="unsigned",
        ),
    ],
)
def test_a_lying_destination_cannot_settle_the_source(
    lost: Lost,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    make: Callable[[Lost, datetime], bytes],
) -> None:
    """B (or whoever answers for it) hands A an unknown-migration answer that is not B's
    word about exactly this migration: A stays COMMITTED, the object stays B's."""
    world = lost.world
    world.clock(HOST_A).skew(AWAY)
    forged = make(lost, world.now(HOST_B))

    async def lying(migration_id: str, *, peer: str) -> bytes:
        return forged

    monkeypatch.setattr(world.hosts[HOST_B].destination, "answer_commit", lying)
    world.recover(HOST_A)
    assert lost.source().step is SourceStep.COMMITTED, case
    assert world.assert_one_live_copy(OBJECT) == HOST_B


def sealed(
    lost: Lost, signer: str, migration_id: str, source: str, destination: str, at: datetime
) -> bytes:
    answer = UnknownMigrationAnswer(
        migration_id=migration_id, source=source, destination=destination, issued_at=at
    )
    context = lost.world.hosts[signer].context
    return wire.encode_envelope(context.seal(answer.encode(), dsse.PayloadType.UNKNOWN_MIGRATION))


def test_a_signed_answer_too_soon_after_the_commit_settles_nothing_and_backs_off(
    lost: Lost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B lost its record early (a store it should not be running on, or a lie), and signs
    that it does not know the migration a day after the commit: no honest retention
    prunes that soon, so A keeps the migration COMMITTED and asks again after a pause
    that doubles up to an hour, then hourly; once its own clock passes the earliest
    time B could have pruned, the same signed answer settles it."""
    world = lost.world
    b = world.hosts[HOST_B]
    loaded = world.run(b.journal.destination(lost.migration_id))
    assert loaded is not None
    world.run(
        b.journal.store.transact(
            [Delete(key=f"journal/destination/{lost.migration_id}", etag=Expect.ANY)]
        )
    )
    assert world.run(b.journal.destination(lost.migration_id)) is None
    world.clock(HOST_A).skew(timedelta(days=1))
    seen = lost.commits_seen(monkeypatch)
    pauses = []
    recovery = world.hosts[HOST_A].recovery
    for _ in range(9):
        world.recover(HOST_A)
        world.recover(HOST_A)  # the next pass, at once: paused
        pauses.append(recovery._forgotten[lost.migration_id].length)
        world.clock(HOST_A).skew(pauses[-1])
    assert lost.source().step is SourceStep.COMMITTED
    assert len(seen) == 9, "one Commit per pause, none on the passes in between"
    first, most = recovery_module.FORGOTTEN_FIRST_PAUSE, recovery_module.FORGOTTEN_MAX_PAUSE
    assert pauses == [min(first * 2**i, most) for i in range(9)]
    assert pauses[-1] == most
    # A's clock reaches the earliest time B's retention could have pruned it.
    commit_time = lost.source().updated_at
    world.clock(HOST_A).skew(
        commit_time
        + earliest_forgotten(world.hosts[HOST_A].context.timing.clock_skew)
        - world.now(HOST_A)
    )
    world.recover(HOST_A)
    assert lost.source().step is SourceStep.DONE
    assert lost.migration_id not in recovery._forgotten


def test_the_destination_unreachable_keeps_the_source_asking(lost: Lost) -> None:
    """B is down past the retention: A cannot settle on anything and keeps sending Commit
    on its passes (the transport's own retries pace each), then settles once B is back."""
    world = lost.world
    lost.prune_at_b()
    world.clock(HOST_A).skew(AWAY)
    world.network(HOST_A).drop("commit", to=HOST_B, times=3)
    for _ in range(3):
        world.recover(HOST_A)
        assert lost.source().step is SourceStep.COMMITTED
    assert world.network(HOST_A).pending == 0, "every pass sent Commit"
    world.recover(HOST_A)
    assert lost.source().step is SourceStep.DONE


def test_commit_for_unknown_ids_writes_nothing_at_the_destination(lost: Lost) -> None:
    """A peer asking about random ids gets a signed answer each and grows nothing."""
    world = lost.world
    b = world.hosts[HOST_B]
    before = world.run(b.journal.store.list(""))

    async def ask(migration_id: str) -> bytes:
        return await world.hosts[HOST_A].peers.client(HOST_B).commit(migration_id)

    for _ in range(20):
        raw = world.run(ask("mig-" + os.urandom(16).hex()))
        assert wire.decode_envelope(raw).payload_type == dsse.PayloadType.UNKNOWN_MIGRATION
    assert world.run(b.journal.store.list("")) == before


ANSWER = UnknownMigrationAnswer(
    migration_id="mig-" + "ab" * 16,
    source=HOST_A,
    destination=HOST_B,
    issued_at=datetime.fromisoformat("2026-12-06T05:00:00+00:00"),
)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (ANSWER.encode().replace(b'{"', b'{ "', 1), "not canonical (a space)"),
        (ANSWER.encode()[:-1] + b',"extra":"x"}', "an extra field"),
        (
            json.dumps({**json.loads(ANSWER.encode()), "source": 1}, sort_keys=True).encode(),
            "a number for a text",
        ),
        (b"[]", "not an object"),
        (b"\xff", "not UTF-8"),
        (b"[" * 10_000, "nested too deep"),
        (
            ANSWER.encode().replace(b"2026-12-06T05:00:00", b"2026-13-06T05:00:00"),
            "not a time",
        ),
    ],
)
def test_an_unknown_migration_answer_that_does_not_parse_is_refused(
    raw: bytes, reason: str
) -> None:
    with pytest.raises(PayloadDecodeError):
        UnknownMigrationAnswer.decode(raw)


def test_an_unknown_migration_answer_round_trips() -> None:
    assert UnknownMigrationAnswer.decode(ANSWER.encode()) == ANSWER
