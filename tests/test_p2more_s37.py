"""Session 37's last cuts of P2's CPU per migration (issue 13): each shortcut gives exactly
what the plain path gives, on seeded cases.

* The journal writes a source record in its settled form once (``put_source`` used to
  settle it twice): the same ``Put`` as settling it and writing it the plain way.
* A release marker's key ends in 128 random bits written as hex, not a ``uuid4``: the
  same shape, and no two alike.
* The object's copies at the freeze, its lineage entries, the tombstone and the rehosted
  copy are built slot by slot (``gateway._slots.replacing``): the value
  ``dataclasses.replace`` gives, field by field and by identity.
* A key's refusals name it as before, the name now made only when refusing.
* A lifecycle event is built in its status at once (``published`` with no event sink),
  not built ``pending`` and copied: the same event and the same writes.
"""

from __future__ import annotations

import dataclasses
import random
import re
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway._slots import replacing
from gateway.errors import GatewayError
from gateway.handoff import journal as journal_module
from gateway.handoff.journal import Journal, Versioned, settled_form, source_key
from gateway.handoff.lifecycle import LifecycleEvent
from gateway.handoff.records import SourceRecord, SourceStep
from gateway.keys import Purpose, Signer
from gateway.lineage import EntryKind
from gateway.model import GovernedObject, LifecycleState
from gateway.runtime.outbox import Event, OutboxLifecycle, lifecycle_event, outbox_puts
from gateway.stores import Delete, Expect, Put, StateStore
from gateway.trust import DomainKeys, new_bundle
from gateway.wire import encode_source_record
from tests.test_p2src_s37 import _random_record
from tests.test_p2wire_s36 import _random_object

SEED = 37
NOW = datetime(2026, 12, 7, 6, 0, tzinfo=UTC)
HOST = "spiffe://org-a.example/cluster/east/gateway"
DAY = timedelta(days=1)


def _same(got: object, want: object, fresh: tuple[str, ...] = ()) -> None:
    """Equal, of the same class, and every field the very same value (those in ``fresh``,
    made afresh by each path, only equal)."""
    assert type(got) is type(want)
    assert got == want
    for field in dataclasses.fields(want):  # type: ignore[arg-type]
        if field.name not in fresh:
            assert getattr(got, field.name) is getattr(want, field.name), field.name


def _outcome(write: Any, record: SourceRecord, etag: Any) -> Put | type[BaseException]:
    try:
        return write(record, etag)  # type: ignore[no-any-return]
    except Exception as exc:  # an old record's transfer that is no envelope: both refuse
        return type(exc)


def _plain_put_source(record: SourceRecord, etag: Any) -> Put:
    settled = settled_form(record)
    return Put(key=source_key(settled.migration_id), value=encode_source_record(settled), etag=etag)


# --- journal --------------------------------------------------------------------------


def test_put_source_is_settle_then_put() -> None:
    """Every step, with and without the transfer, its digest and its epoch kept; both the
    module's op and the journal's (which remembers the settled record it wrote)."""
    rng = random.Random(SEED)
    journal = Journal(cast(StateStore, None))  # put_source reads and writes nothing
    for _ in range(600):
        record = _random_record(rng)
        if rng.random() < 0.3:
            record = dataclasses.replace(record, transfer=b"")
        etag = rng.choice((Expect.ABSENT, f"etag-{rng.randrange(99)}"))
        want = _outcome(_plain_put_source, record, etag)
        for write in (journal_module.put_source, journal.put_source):
            got = _outcome(write, record, etag)
            if isinstance(want, Put):
                assert isinstance(got, Put)
                assert (got.key, got.value, got.etag) == (want.key, want.value, want.etag)
            else:
                assert got is want, record
    settled = [r for r in (_random_record(rng) for _ in range(50)) if r.step in {SourceStep.DONE}]
    for record in settled:
        record = dataclasses.replace(record, transfer=b"")
        put = journal.put_source(record, Expect.ABSENT)
        assert journal._decoded.get(journal_module.wire.decode_source_record, put.value) == record


def test_release_markers_are_unique_keys_of_one_shape() -> None:
    journal = Journal(cast(StateStore, None))
    held = Versioned(3, "etag-1")
    keys = set()
    for _ in range(2000):
        delete, put = journal.release_held("t2", "obj://org-a.example/x/1", held)
        assert delete == Delete(key="t/t2/held/obj://org-a.example/x/1", etag="etag-1")
        assert isinstance(put, Put)
        assert re.fullmatch(r"t/t2/released/[0-9a-f]{32}", put.key), put.key
        assert put.value == journal_module.encode_counter(3)
        assert put.etag is Expect.ABSENT
        keys.add(put.key)
    assert len(keys) == 2000
    assert journal.release_held("t2", "obj://org-a.example/x/1", None) == []


# --- model: the object's copies -------------------------------------------------------


def test_object_copies_are_dataclasses_replace() -> None:
    rng = random.Random(SEED)
    names = [field.name for field in dataclasses.fields(GovernedObject)]
    for seed in range(60):
        obj = _random_object(seed)
        donor = _random_object(seed + 1000)
        for _ in range(5):
            changed = rng.sample(names, rng.randrange(1, 5))
            values = [getattr(donor, name) for name in changed]
            got = replacing(GovernedObject, *changed)(obj, *values)
            _same(got, dataclasses.replace(obj, **dict(zip(changed, values, strict=True))))
    with pytest.raises(ValueError, match="not in tuple"):
        replacing(GovernedObject, "colour")


def test_freeze_and_tombstone_are_the_plain_copies() -> None:
    for seed in range(40):
        obj = _random_object(seed)
        if obj.state is not LifecycleState.ACTIVE:
            continue
        frozen = obj.freeze("mig-1", destination="B", host=HOST, at=NOW)
        plain = dataclasses.replace(
            obj, state=LifecycleState.FROZEN, epoch=obj.epoch + 1, migration_id="mig-1"
        )
        plain = dataclasses.replace(
            plain,
            lineage=plain.lineage.append(
                EntryKind.FROZEN,
                host=HOST,
                at=NOW,
                epoch=plain.epoch,
                generation=plain.cycle.generation,
                data_digest=plain.data_digest(),
                credentials_digest=plain.credentials_digest(),
                detail="migration mig-1 to B",
            ),
        )
        _same(frozen, plain, fresh=("lineage", "epoch"))
        receipt = obj.receipt  # any envelope or None: tombstone does not look at it
        moved = frozen.tombstone("mig-1", moved_to="B", receipt=receipt, transfer_digest=b"d")
        _same(
            moved,
            dataclasses.replace(
                frozen,
                state=LifecycleState.MOVED,
                blob=(
                    None
                    if frozen.blob is None
                    else dataclasses.replace(frozen.blob, location="", chunks=0)
                ),
                moved_to="B",
                receipt=receipt,
                migration_id="mig-1",
                last_transfer_digest=b"d",
            ),
            fresh=("blob",),
        )


# --- outbox: the lifecycle event ------------------------------------------------------


@pytest.mark.parametrize("sink", [True, False])
def test_lifecycle_event_is_the_plain_event(sink: bool) -> None:
    rng = random.Random(SEED)
    for index in range(200):
        event = LifecycleEvent(
            verb=rng.choice(("migration.committed", "object.rehosted", "object.forked")),
            tenant=rng.choice(("default", "t2")),
            object_id=f"obj://org-a.example/x/{index}",
            epoch=rng.randrange(10**6),
            generation=rng.randrange(10**6),
            payload={"to": "B", "n": rng.randrange(9)},
            at=NOW + timedelta(milliseconds=rng.randrange(10**9)),
        )
        topic = event.verb.split(".", 1)[0] + "s"
        plain = Event(
            key=f"{event.tenant}/{event.object_id}/epoch-{event.epoch:012d}-{event.verb}",
            tenant=event.tenant,
            object_id=event.object_id,
            generation=event.generation,
            rule="",
            verb=event.verb,
            resource=f"gateway:{topic}",
            payload=event.payload,
            created_at=event.at,
        )
        if not sink:
            plain = dataclasses.replace(plain, status="published")
        got = lifecycle_event(
            event.verb,
            tenant=event.tenant,
            object_id=event.object_id,
            epoch=event.epoch,
            generation=event.generation,
            payload=event.payload,
            at=event.at,
            status=plain.status,
        )
        assert type(got) is Event
        assert got == plain  # the key and resource are made afresh by each
        writes = OutboxLifecycle(sink=sink).writes(event)
        assert [(p.key, p.value, p.etag) for p in writes] == [
            (p.key, p.value, p.etag) for p in outbox_puts(plain)
        ]


# --- trust: a refusal names its key ---------------------------------------------------


def test_key_refusals_name_the_key_as_before() -> None:
    """The key's name is made only when refusing now: each refusal's words as before."""
    signer = Signer(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
    domain, kid = "org-a.example", signer.key_id[:16]
    good = signer.record(
        purposes=[Purpose.ENVELOPE], hosts=[HOST], valid_from=NOW, valid_until=NOW + DAY
    )
    cases = [
        (dataclasses.replace(good, revoked=True), HOST, NOW, f"key {kid} of {domain} is revoked"),
        (good, HOST, NOW, ""),
        (good, "spiffe://other", NOW, f"key {kid} of {domain} may not sign for host"),
        (good, HOST, NOW + 2 * DAY, f"key {kid} of {domain} is valid from"),
    ]
    for record, host, at, said in cases:
        keys = DomainKeys(new_bundle(domain, [record], issued_at=NOW), Purpose.ENVELOPE, host, at)
        if not said:
            assert keys.resolve(signer.key_id) == record
            continue
        with pytest.raises(GatewayError) as caught:
            keys.resolve(signer.key_id)
        assert str(caught.value).startswith(said), str(caught.value)
    other = DomainKeys(new_bundle(domain, [good], issued_at=NOW), Purpose.GRANT, HOST, NOW)
    with pytest.raises(GatewayError, match=f"^key {kid} of {re.escape(domain)} may sign"):
        other.resolve(signer.key_id)
