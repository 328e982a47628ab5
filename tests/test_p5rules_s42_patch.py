"""Session 42: :func:`gateway.rules.check_patch`'s plain leaves under ASCII keys are
passed without a call; held to the check as it was (kept here) over seeded patches:
the same refusals, with the same error and message, and the same passes."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from gateway import rules
from gateway.errors import GatewayError


def _reference(merged: Mapping[str, Any], patch: Mapping[str, Any]) -> None:
    """check_patch before session 42."""
    if len(merged) > rules.COLLECTION_BOUND:
        raise rules.RuleCostError(
            f"object data holds a collection of {len(merged)} elements; at most "
            f"{rules.COLLECTION_BOUND}",
            hint="keep large collections out of an object with rules",
        )
    for key, value in patch.items():
        if isinstance(key, str):
            rules._check_text(key)
        rules.check_data(value, depth=1)


class _Str(str):
    pass


class _Int(int):
    pass


LEAVES: list[Any] = [
    0,
    -7,
    2**70,
    True,
    False,
    None,
    1.5,
    "",
    "plain",
    "caf\u00e9",
    "\ud800",  # a lone surrogate: refused
    "a\udfffb",
    _Str("sub"),
    _Int(3),
    b"bytes",
]
KEYS: list[Any] = ["checked", "k\u00e9", "\udc80", "", _Str("sk"), 1, None]


def _value(pick: random.Random, depth: int) -> Any:
    roll = pick.random()
    if roll < 0.6 or depth > 3:
        return pick.choice(LEAVES)
    if roll < 0.8:
        return [_value(pick, depth + 1) for _ in range(pick.randrange(3))]
    return {pick.choice(KEYS): _value(pick, depth + 1) for _ in range(pick.randrange(3))}


def _outcome(check: Any, merged: Mapping[str, Any], patch: Mapping[str, Any]) -> Any:
    try:
        check(merged, patch)
    except GatewayError as exc:
        return type(exc), str(exc)
    return None


def test_check_patch_refuses_and_passes_what_it_did() -> None:
    pick = random.Random(4242)
    refused = passed = 0
    for _ in range(4000):
        patch = {pick.choice(KEYS): _value(pick, 1) for _ in range(pick.randrange(1, 4))}
        merged = {"amount": 1, **patch}
        if pick.random() < 0.02:
            merged.update({f"k{i}": i for i in range(rules.COLLECTION_BOUND)})
        expected = _outcome(_reference, merged, patch)
        assert _outcome(rules.check_patch, merged, patch) == expected, patch
        refused += expected is not None
        passed += expected is None
    assert refused > 500 and passed > 1500, (refused, passed)
