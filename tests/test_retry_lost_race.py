"""``lost_race``: the first try runs without tenacity's state, and the policy is still
the one its docstring names -- only a lost race (``ConcurrencyError``, or what the call
site adds) is tried again, at most ``attempts`` tries in all, pauses of 5, 10, 15 ms ...
(at most 50 ms) plus up to 5 ms, anything else and the last lost race re-raised."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway import _retry
from gateway._retry import lost_race
from gateway.errors import ConcurrencyError, StoreUnavailableError


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The pauses between tries, recorded instead of slept (tenacity's asyncio sleep
    looks ``asyncio.sleep`` up when it runs, so both paths are caught)."""
    waited: list[float] = []

    async def sleep(seconds: float, *_args: Any) -> None:
        waited.append(seconds)

    monkeypatch.setattr(_retry.asyncio, "sleep", sleep)
    return waited


def test_a_first_try_that_wins_is_one_try_and_no_pause(sleeps: list[float]) -> None:
    tries = 0

    async def block() -> None:
        nonlocal tries
        async for attempt in lost_race(8):
            with attempt:
                tries += 1

    asyncio.run(block())
    assert tries == 1
    assert sleeps == []


def test_lost_races_are_tried_again_with_growing_pauses(sleeps: list[float]) -> None:
    failures: list[BaseException] = [ConcurrencyError("lost")] * 4
    result = asyncio.run(_tries(failures, attempts=8))
    assert result == (5, "won")
    assert len(sleeps) == 4
    for waited, base in zip(sleeps, (0.005, 0.010, 0.015, 0.020), strict=True):
        assert base <= waited <= base + 0.005


@pytest.mark.parametrize("attempts", [1, 2, 5])
def test_the_last_lost_race_is_reraised_after_exactly_the_attempts(
    sleeps: list[float], attempts: int
) -> None:
    failures: list[BaseException] = [ConcurrencyError(f"lost {i}") for i in range(10)]
    with pytest.raises(ConcurrencyError, match=f"lost {attempts - 1}"):
        asyncio.run(_tries(failures, attempts=attempts))
    assert len(failures) == 10 - attempts
    assert len(sleeps) == attempts - 1


@pytest.mark.parametrize("lost_first", [False, True])
def test_anything_else_goes_through_at_once(sleeps: list[float], lost_first: bool) -> None:
    other = StoreUnavailableError("store down")
    failures: list[BaseException] = [ConcurrencyError("lost"), other] if lost_first else [other]
    with pytest.raises(StoreUnavailableError):
        asyncio.run(_tries(failures, attempts=8))
    assert failures == []


def test_what_the_call_site_adds_is_retried_too(sleeps: list[float]) -> None:
    failures: list[BaseException] = [StoreUnavailableError("busy"), ConcurrencyError("lost")]
    assert asyncio.run(_tries(failures, attempts=8, also=(StoreUnavailableError,))) == (3, "won")


async def _tries(
    failures: list[BaseException], *, attempts: int, also: tuple[type[BaseException], ...] = ()
) -> tuple[int, str]:
    tries = 0
    async for attempt in lost_race(attempts, also=also):
        with attempt:
            tries += 1
            if failures:
                raise failures.pop(0)
            return tries, "won"
    return tries, "loop ended without a result"
