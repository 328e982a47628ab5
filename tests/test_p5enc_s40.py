"""Session 40 (p5enc): the outbox's event texts built without the general formatters.

Each fast path is held, over many seeded cases, to what was written before it: an
event's bytes to its document through the canonical encoder, a time's text to
``format_time``, an event key and a lifecycle event's key to their format specs. The
cases include the values that must take the plain path (escaped characters, non-ASCII
text, years before 1000, numbers past twelve digits, negative numbers, wrong types),
so a fast path that takes them, or that is broken, fails here."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from gateway._time import format_time
from gateway.handoff.lifecycle import LifecycleEvent
from gateway.runtime import outbox
from gateway.runtime.outbox import Event, OutboxLifecycle, event_key, lifecycle_event
from tests.test_outbox_encoding import _reference

_CASES = 3000

#: Characters the fast paths must tell apart: plain ASCII, what JSON escapes (quote,
#: backslash, control characters, DEL), non-ASCII, a lone surrogate.
_ALPHABET = (
    "abcXYZ019 -_./:~!#{}[]",
    '"',
    "\\",
    "\n\t\x00\x1f",
    "\x7f",
    "é€😀",
    "\ud800",
)


def _text(rng: random.Random) -> str:
    if rng.random() < 0.6:  # most fields are plain, as they are in a cycle
        return "".join(rng.choice(_ALPHABET[0]) for _ in range(rng.randrange(0, 40)))
    return "".join(rng.choice(rng.choice(_ALPHABET)) for _ in range(rng.randrange(0, 12)))


def _time(rng: random.Random) -> datetime:
    year = rng.choice((1, 9, 999, 1000, 1970, 2026, 9999))
    at = datetime(year, 1, 1, tzinfo=UTC) + timedelta(
        days=rng.randrange(0, 364), microseconds=rng.randrange(0, 86_400_000_000)
    )
    if rng.random() < 0.1:  # another zone: the plain path converts it
        return at.astimezone(timezone(timedelta(hours=rng.choice((-5, 1)))))
    return at


def _number(rng: random.Random) -> Any:
    return rng.choice(
        (
            rng.randrange(0, 1000),
            999,
            1000,
            rng.randrange(1000, 10**5),
            rng.randrange(0, 10**12),
            10**12 - 1,
            10**12,
            rng.randrange(10**12, 10**20),
            -rng.randrange(1, 10**6),
            0,
            True,
        )
    )


def _payload(rng: random.Random) -> Any:
    return rng.choice((None, {"n": rng.randrange(100)}, [_text(rng)], {"from": _text(rng)}))


def _event(rng: random.Random) -> Event:
    texts = [_text(rng) for _ in range(7)]
    return Event(
        key="k",
        tenant=texts[0],
        object_id=texts[1],
        generation=abs(_number(rng)),
        rule=texts[2],
        verb=texts[3],
        resource=texts[4],
        payload=_payload(rng),
        created_at=_time(rng),
        status=texts[5],
        attempts=rng.randrange(0, 10),
        last_error=texts[6],
    )


def test_event_bytes_are_the_canonical_encoders() -> None:
    rng = random.Random(4013)
    for _ in range(_CASES):
        event = _event(rng)
        assert event.encode() == _reference(event), event


def test_a_time_is_written_as_format_time_writes_it() -> None:
    rng = random.Random(4014)
    for _ in range(_CASES):
        at = _time(rng)
        if at.tzinfo is not UTC:  # Event.encode sends only UTC times here
            continue
        # A fresh copy each time: the one-slot memory answers only for the same object.
        assert outbox._utc_text(at) == format_time(at), at


def test_an_event_key_is_its_format_specs() -> None:
    rng = random.Random(4015)
    for _ in range(_CASES):
        tenant, object_id = _text(rng), _text(rng)
        generation, index = _number(rng), _number(rng)
        try:
            expected = f"{tenant}/{object_id}/{generation:012d}/{index:03d}"
        except (ValueError, TypeError) as exc:
            with pytest.raises(type(exc)):
                event_key(tenant, object_id, generation, index)
            continue
        assert event_key(tenant, object_id, generation, index) == expected


@pytest.mark.parametrize("generation", [1.0, "7", None])
def test_an_event_key_refuses_what_the_format_spec_refuses(generation: Any) -> None:
    with pytest.raises((ValueError, TypeError)):
        f"{generation:012d}"
    with pytest.raises((ValueError, TypeError)):
        event_key("t", "o", generation, 0)


def test_a_lifecycle_event_is_recorded_as_before() -> None:
    rng = random.Random(4016)
    for _ in range(_CASES):
        verb = rng.choice(("migration.committed", "object.rehosted", "object.forked"))
        epoch, generation = abs(_number(rng)), abs(_number(rng))
        tenant, object_id = _text(rng), _text(rng)
        payload = {"from": _text(rng), "to": _text(rng), "migration": _text(rng)}
        at = _time(rng)
        event = lifecycle_event(
            verb,
            tenant=tenant,
            object_id=object_id,
            epoch=epoch,
            generation=generation,
            payload=payload,
            at=at,
            status="published",
        )
        assert event.key == f"{tenant}/{object_id}/epoch-{epoch:012d}-{verb}"
        assert event.resource == "gateway:" + verb.split(".", 1)[0] + "s"
        puts = OutboxLifecycle(sink=False).writes(
            LifecycleEvent(
                verb=verb,
                tenant=tenant,
                object_id=object_id,
                epoch=epoch,
                generation=generation,
                payload=payload,
                at=at,
            )
        )
        assert [p.key for p in puts] == ["events/" + event.key]
        assert puts[0].value == _reference(event)
