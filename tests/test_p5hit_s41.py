"""Session 41's shortcuts on the cycle path with every memo hitting (issue 13, P5) give
exactly what the plain path gives. Seeded: every run checks the same cases."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.rules import _effect_value, _NotJSONError, _plain, _RefusedEffectError

SEED = 41


def _plain_effect(verb: str, raw: Any) -> Any:
    """:func:`gateway.rules._effect_value` as it was before its fast path (session 40)."""
    if verb == "write" and (not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw)):
        raise _RefusedEffectError("patch is not a map with string keys")
    try:
        return _plain(raw)
    except _NotJSONError as exc:
        raise _RefusedEffectError(f"action failed: {exc}") from exc


class _Text(str):
    """A str that is not exactly a str."""


class _Number(int):
    """An int that is not exactly an int."""


def _leaf(rng: random.Random) -> Any:
    return rng.choice(
        [
            None,
            True,
            False,
            rng.randrange(-(2**70), 2**70),
            "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(6))),
            rng.random(),
            math.nan,
            math.inf,
            -math.inf,
            _Text("t"),
            _Number(7),
            b"\x00\xff",
            bytearray(b"ab"),
            datetime(2026, 12, 7, 1, 2, 3, tzinfo=UTC) + timedelta(seconds=rng.randrange(99)),
            timedelta(seconds=rng.randrange(99)),
            [1, "x", None],
            {"nested": rng.randrange(9)},
        ]
    )


def _key(rng: random.Random) -> Any:
    # Mostly string keys (the common patch), now and then what a CEL map may also have.
    return rng.choice(["amount", "status", "checked", "k", "", _Text("s"), 1, True, False])


def _effect(rng: random.Random) -> Any:
    if rng.random() < 0.1:
        return _leaf(rng)  # not a map at all
    size = rng.randrange(5)
    # Half the maps hold plain leaves only (the fast path's case), half anything.
    plain_only = rng.random() < 0.5
    effect: dict[Any, Any] = {}
    for _ in range(size):
        key = rng.choice(["amount", "status", "checked", "invoice"]) if plain_only else _key(rng)
        value = (
            rng.choice([None, True, 0, -3, 2**65, "open", "INV-000001"])
            if plain_only
            else _leaf(rng)
        )
        effect[key] = value
    return effect


def _outcome(verb: str, raw: Any, effect: Any) -> tuple[str, Any]:
    try:
        return "value", effect(verb, raw)
    except _RefusedEffectError as exc:
        return "refused", str(exc)


def _exactly(got: Any, want: Any) -> None:
    """Equal, and of the same types all the way down (True is not 1, a str subclass is
    not a str)."""
    assert type(got) is type(want), (got, want)
    if isinstance(want, dict):
        assert list(got) == list(want)
        for key in want:
            assert type(key) is type(next(k for k in got if k == key))
            _exactly(got[key], want[key])
    elif isinstance(want, list):
        assert len(got) == len(want)
        for one, other in zip(got, want, strict=True):
            _exactly(one, other)
    elif isinstance(want, float) and math.isnan(want):
        assert math.isnan(got)
    else:
        assert got == want


def test_an_effects_value_is_what_the_plain_path_gives() -> None:
    """_effect_value's fast path (a map of plain leaves given back as it is) answers what
    the write check and _plain answer, value or refusal, over seeded effects: maps with
    str, int and bool keys, str and int subclasses, floats (NaN and the infinities
    refused), bytes, times, nested values, and effects that are not maps."""
    rng = random.Random(SEED)
    fast = refused = 0
    for _ in range(4000):
        verb = rng.choice(["write", "publish", "invoke"])
        raw = _effect(rng)
        want = _outcome(verb, raw, _plain_effect)
        got = _outcome(verb, raw, _effect_value)
        assert got[0] == want[0], (verb, raw)
        if want[0] == "refused":
            assert got[1] == want[1]
            refused += 1
            continue
        _exactly(got[1], want[1])
        fast += got[1] is raw
    assert fast > 1000 and refused > 300  # both paths and refusals were exercised
