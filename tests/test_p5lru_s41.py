"""Session 41, P5's memos (branch p5lru-s41): gateway._lru.IdleLru's one-call lookup
(:meth:`IdleLru.get`) and batch membership (:meth:`IdleLru.held`), held to what the
calls they replace (``peek`` then ``touch``; ``in`` key by key) leave behind; an outbox
event's strings remembered as needing no escape, held to the canonical encoder."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from gateway._lru import IdleLru
from gateway.runtime import outbox
from gateway.runtime.outbox import Event
from tests.test_outbox_encoding import _reference


def _state(memo: IdleLru[str, int]) -> list[tuple[str, int, int, float]]:
    """Everything the memo keeps, in its order: key, value, size, last use."""
    return [(key, slot.value, slot.size, slot.used) for key, slot in memo._entries.items()]


def _plain_get(memo: IdleLru[str, int], key: str) -> int | None:
    value = memo.peek(key)
    if value is not None:
        memo.touch(key)
    return value


@pytest.mark.parametrize("seed", range(40))
def test_get_and_held_leave_what_peek_touch_and_in_leave(seed: int) -> None:
    """Seeded runs of puts, forgets, lookups and membership over a small key space on
    two memos, one looked up with ``get`` and ``held``, the other with ``peek`` +
    ``touch`` and ``in``: the same answers, and the same entries in the same order
    with the same sizes and times, at every step (refusals included: newcomers not
    kept because everything held is in use, values heavier than the whole memo)."""
    rng = random.Random(seed)
    clock = [0.0]
    total = rng.choice((100, 250, 600))
    fast: IdleLru[str, int] = IdleLru(total, idle_seconds=5.0, clock=lambda: clock[0])
    plain: IdleLru[str, int] = IdleLru(total, idle_seconds=5.0, clock=lambda: clock[0])
    keys = [f"k{n}" for n in range(rng.randint(3, 12))]
    refused = 0
    for _step in range(400):
        clock[0] += rng.choice((0.0, 0.5, 1.0, 3.0, 7.0))
        op = rng.random()
        key = rng.choice(keys)
        if op < 0.35:
            value, size = rng.randint(0, 9), rng.choice((0, 10, 40, 90, 120, total + 1))
            fast.put(key, value, size)
            plain.put(key, value, size)
            refused += key not in plain
        elif op < 0.45:
            fast.forget(key)
            plain.forget(key)
        elif op < 0.8:
            assert fast.get(key) == _plain_get(plain, key)
        else:
            asked = rng.sample(keys, rng.randint(0, len(keys)))
            assert fast.held(asked) == [k for k in asked if k in plain]
        assert _state(fast) == _state(plain)
        assert fast._size == plain._size <= total
    assert refused  # the runs reach the memo's refusals


def test_get_counts_a_use_and_held_keeps_the_order_asked() -> None:
    clock = [0.0]
    memo: IdleLru[str, str] = IdleLru(200, idle_seconds=10.0, clock=lambda: clock[0])
    memo.put("a", "A", 100)
    memo.put("b", "B", 100)
    clock[0] = 11.0
    assert memo.get("a") == "A" and memo.get("c") is None
    assert memo.held(["c", "b", "a", "b"]) == ["b", "a", "b"]
    # a was used at 11: b (idle since 0) is the one that gives way.
    memo.put("c", "C", 100)
    assert list(memo._entries) == ["a", "c"]


# --- an outbox event's strings known to need no escape ---------------------------------

_PIECES = (
    "org-a.example",
    "obj://org-a.example/bench/cycle/00042",
    "overdue",
    "publish",
    "pubsub:alerts/overdue",
    "pending",
    "",
    'a "quoted" name',
    "back\\slash",
    "tab\there",
    "del\x7f",
    "caf\xe9",
    "\u2028",
    "~ !#$%&'()*+,-./:;<=>?@[]^_`{|}",
)


def _event(rng: random.Random, pieces: list[str]) -> Event:
    fields = [rng.choice(pieces) for _ in range(7)]
    return Event(
        key="k",
        tenant=fields[0],
        object_id=fields[1],
        rule=fields[2],
        verb=fields[3],
        resource=fields[4],
        status=fields[5],
        last_error=fields[6],
        generation=rng.randint(0, 10**6),
        payload={"invoice": rng.choice(pieces)},
        created_at=datetime(2026, 12, 7, 18, 0, rng.randint(0, 59), 123000, tzinfo=UTC),
    )


@pytest.mark.parametrize("seed", range(20))
def test_events_encode_as_the_canonical_encoder_does_with_strings_remembered(seed: int) -> None:
    """Seeded events whose seven strings are drawn from plain ones and ones the encoder
    escapes (quotes, backslashes, control characters, DEL, non-ASCII), each encoded
    twice (the second time its plain strings are remembered), among strings made anew
    each time (equal, not the same objects) and strings longer than what is kept: each
    encoding is the canonical encoder's, byte for byte; only plain strings are kept."""
    rng = random.Random(seed)
    outbox._KNOWN_PLAIN.clear()
    pieces = [*_PIECES, "x" * (outbox.KNOWN_PLAIN_LENGTH + 1), 'y"' * 200]
    for _ in range(300):
        made = [("" + piece + "z")[:-1] if rng.random() < 0.3 else piece for piece in pieces]
        event = _event(rng, made)
        assert event.encode() == _reference(event)
        assert event.encode() == _reference(event)
    assert outbox._KNOWN_PLAIN
    assert all(outbox._plain(text) for text in outbox._KNOWN_PLAIN)
    assert all(len(text) <= outbox.KNOWN_PLAIN_LENGTH for text in outbox._KNOWN_PLAIN)


def test_plain_strings_of_an_event_are_remembered_within_a_bound() -> None:
    outbox._KNOWN_PLAIN.clear()
    rng = random.Random(7)
    event = _event(rng, ["org-a.example"])
    event.encode()
    assert {"org-a.example"} == outbox._KNOWN_PLAIN
    quoted = replace(event, rule='a "rule"')
    assert quoted.encode() == _reference(quoted)
    assert 'a "rule"' not in outbox._KNOWN_PLAIN
    for n in range(outbox.KNOWN_PLAIN_STRINGS + 5):
        replace(event, object_id=f"obj://x/{n}").encode()
        assert len(outbox._KNOWN_PLAIN) <= outbox.KNOWN_PLAIN_STRINGS
