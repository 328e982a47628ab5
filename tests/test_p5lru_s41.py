"""Session 41, P5's memos (branch p5lru-s41): gateway._lru.IdleLru's one-call lookup
(:meth:`IdleLru.get`) and batch membership (:meth:`IdleLru.held`), held to what the
calls they replace (``peek`` then ``touch``; ``in`` key by key) leave behind."""

from __future__ import annotations

import random

import pytest

from gateway._lru import IdleLru


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
