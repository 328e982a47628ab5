"""Refused-call counters (``calls/denied/``) are pruned by the serving host's pruning
loop. It ran one bounded page of them per PRUNE_CHECK_SECONDS (a minute), with no
catch-up: a dishonest peer whose refusals made counters faster than a page a minute grew
the prefix without bound. A pass that finds a backlog now asks for the next one after
calls.DENIAL_CATCH_UP_SECONDS, as the events' pruning does."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from gateway.runtime import calls
from gateway.stores import Expect, Put
from tests.test_events_bounds import _open

#: More expired counters than one page of the real batch (1000) holds.
BACKLOG = 2500


def test_a_backlog_of_refusal_counters_is_cleared_in_quick_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # raising=False: the constant is new with the catch-up; the page is the real one.
    monkeypatch.setattr(calls, "DENIAL_CATCH_UP_SECONDS", 0.05, raising=False)

    async def main() -> None:
        host, clock = await _open(tmp_path)
        stop = asyncio.Event()
        try:
            store = host.store
            now = clock.now()
            old = now - calls.DENIAL_RETENTION - timedelta(minutes=1)
            young = [f"{calls.DENIALS}default/young/{n:04d}" for n in range(3)]
            expired = [f"{calls.DENIALS}default/old/{n:04d}" for n in range(BACKLOG)]
            records = [(key, now) for key in young] + [(key, old) for key in expired]
            for start in range(0, len(records), 500):
                await store.transact(
                    [
                        Put(key=key, value=calls._encode_counter(1, at, at), etag=Expect.ABSENT)
                        for key, at in records[start : start + 500]
                    ]
                )
            passes = 0
            prune = host.calls.prune_denials_pass

            async def counted() -> calls.DenialPrunePass:
                nonlocal passes
                passes += 1
                return await prune()

            monkeypatch.setattr(host.calls, "prune_denials_pass", counted, raising=False)
            pruning = asyncio.create_task(host._prune_forever(stop))
            # PRUNE_CHECK_SECONDS (60 s) is untouched: without the catch-up only the
            # first page would go within this bound.
            for _ in range(300):  # a bound, not a timing assertion
                if await store.list(calls.DENIALS) == young:
                    break
                await asyncio.sleep(0.05)
            stop.set()
            await pruning
            assert await store.list(calls.DENIALS) == young
            # Pages of 1000 over 2503 counters: three that find a backlog at most, and
            # the one that finds it gone.
            assert passes <= 4, passes
        finally:
            stop.set()
            await host.close()

    asyncio.run(main())


def test_a_pass_says_whether_it_left_a_backlog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At least half a page expired means more are likely behind it; fewer means the
    walk is keeping up and the usual pace will do."""

    async def main() -> None:
        host, clock = await _open(tmp_path)
        try:
            now = clock.now()
            old = now - calls.DENIAL_RETENTION - timedelta(minutes=1)
            await host.store.transact(
                [
                    Put(
                        key=f"{calls.DENIALS}default/old/{n:02d}",
                        value=calls._encode_counter(1, old, old),
                        etag=Expect.ABSENT,
                    )
                    for n in range(13)
                ]
            )
            first = await host.calls.prune_denials_pass(limit=10)
            assert (first.deleted, first.catch_up_in) == (10, calls.DENIAL_CATCH_UP_SECONDS)
            second = await host.calls.prune_denials_pass(limit=10)
            assert (second.deleted, second.catch_up_in) == (3, None)
            assert await host.calls.prune_denials(limit=10) == 0
            assert await host.store.list(calls.DENIALS) == []
        finally:
            await host.close()

    asyncio.run(main())
