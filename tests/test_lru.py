"""gateway._lru.BoundedLru: bounded by a count and, given a weight, by the weight held."""

from __future__ import annotations

import pytest

from gateway import envelope as dsse
from gateway import wire
from gateway._lru import BoundedLru
from gateway.lineage import BASE_PAYLOAD_TYPE


def test_the_count_bound_evicts_the_least_recently_used() -> None:
    memo: BoundedLru[int, str] = BoundedLru(3)
    for n in range(3):
        memo.put(n, str(n))
    assert memo.get(0) == "0"  # 0 is now the most recently used
    memo.put(3, "3")
    assert len(memo) == 3
    assert 1 not in memo and memo.get(0) == "0" and memo.get(3) == "3"


def test_the_weight_bound_holds_whatever_is_put() -> None:
    memo: BoundedLru[int, bytes] = BoundedLru(1000, max_weight=100, weigh=len)
    for n, size in enumerate([30, 50, 10, 40, 90, 5, 60, 1, 99, 20] * 20):
        memo.put(n, bytes(size))
        assert memo.weight() <= 100
        assert memo.weight() == sum(len(memo.get(k) or b"") for k in list(memo._entries))
    assert len(memo) < 1000  # the weight, not the count, is what bound it


def test_a_value_heavier_than_the_bound_is_not_kept_and_replaces_nothing() -> None:
    memo: BoundedLru[str, bytes] = BoundedLru(10, max_weight=100, weigh=len)
    memo.put("small", bytes(40))
    memo.put("huge", bytes(101))
    assert "huge" not in memo and memo.get("small") == bytes(40)
    assert memo.weight() == 40
    memo.put("small", bytes(200))  # a heavier value under the same key: the old one goes
    assert "small" not in memo and memo.weight() == 0


def test_replacing_a_value_counts_its_weight_once() -> None:
    memo: BoundedLru[str, bytes] = BoundedLru(10, max_weight=100, weigh=len)
    for _ in range(5):
        memo.put("k", bytes(60))
    assert memo.weight() == 60 and len(memo) == 1
    memo.clear()
    assert memo.weight() == 0 and len(memo) == 0


def test_a_weight_bound_needs_its_weigher() -> None:
    with pytest.raises(ValueError, match="go together"):
        BoundedLru(10, max_weight=100)


def test_encoded_bases_stay_within_their_byte_bound() -> None:
    # Bases grow with the departures they cut at; the memo of their encodings is bounded
    # by bytes, so 64 bases of 128 KiB (8 MiB) leave at most BASE_BYTES_MEMO_BYTES.
    wire._BASE_BYTES.clear()
    for n in range(64):
        base = dsse.Envelope(
            payload=n.to_bytes(4, "big") * (32 << 10),
            payload_type=BASE_PAYLOAD_TYPE,
            signatures=(dsse.Signature(keyid="k", sig=b"s"),),
        )
        assert wire._base_bytes(base) == wire.encode_envelope(base)
        assert wire._BASE_BYTES.weight() <= wire.BASE_BYTES_MEMO_BYTES
    assert 0 < len(wire._BASE_BYTES) < 64
    assert wire._base_bytes(base) is wire._base_bytes(base)  # the newest is remembered
    wire._BASE_BYTES.clear()


def test_memo_stats_report_each_live_memo_by_where_it_was_made() -> None:
    from gateway._lru import IdleLru, memo_stats

    def here(memo: object) -> str:
        (made_at,) = {s.made_at for s in memo_stats()} - before
        return made_at

    before = {s.made_at for s in memo_stats()}
    counted: BoundedLru[int, bytes] = BoundedLru(8, max_weight=100, weigh=len)
    made_at = here(counted)
    assert made_at.startswith(f"{__name__}:")
    counted.put(1, bytes(30))
    counted.put(2, bytes(20))
    assert counted.get(1) is not None and counted.get(3) is None and 2 in counted
    (stats,) = [s for s in memo_stats() if s.made_at == made_at]
    assert (stats.memos, stats.entries, stats.weight, stats.capacity) == (1, 2, 50, 8)
    assert (stats.hits, stats.misses) == (2, 1)

    clock = [0.0]
    idle: IdleLru[str, bytes] = IdleLru(1000, idle_seconds=1.0, clock=lambda: clock[0])
    idle.put("a", b"x", 300)
    (idle_stats,) = [s for s in memo_stats() if s.made_at not in before | {made_at}]
    assert (idle_stats.entries, idle_stats.weight, idle_stats.capacity) == (1, 300, 1000)

    del counted, idle  # registered weakly: a memo gone is no longer reported
    assert {s.made_at for s in memo_stats()} == before


def test_memos_made_at_one_place_are_summed() -> None:
    from gateway._lru import memo_stats

    memos = [BoundedLru[int, int](4) for _ in range(3)]
    for n, memo in enumerate(memos):
        for k in range(n + 1):
            memo.put(k, k)
    (stats,) = [s for s in memo_stats() if s.made_at.startswith(f"{__name__}:")]
    assert (stats.memos, stats.entries, stats.capacity) == (3, 1 + 2 + 3, 12)


def test_an_idle_memo_replacing_a_value_keeps_its_size_and_order() -> None:
    """A new value for a key held takes the old one's place as the most recently used,
    its size counted once; one that no longer fits beside values in use is dropped, as
    a newcomer would be."""
    from gateway._lru import IdleLru

    clock = [0.0]
    memo: IdleLru[str, str] = IdleLru(300, idle_seconds=10.0, clock=lambda: clock[0])
    for key in ("a", "b", "c"):
        memo.put(key, key, 100)
    clock[0] = 1.0
    memo.put("a", "a2", 90)  # replaced: now the most recently used
    assert memo.peek("a") == "a2" and memo._size == 290
    assert list(memo._entries) == ["b", "c", "a"]
    clock[0] = 10.5  # b and c idle long enough, a not
    memo.put("d", "d", 100)  # makes room by evicting the least recently used: b
    assert list(memo._entries) == ["c", "a", "d"] and memo._size == 290
    memo.put("a", "a3", 130)  # 100 + 100 + 130 > 300: c is idle, so it gives way
    assert list(memo._entries) == ["d", "a"] and memo._size == 230
    memo.put("d", "d2", 250)  # only a (in use) could give way: d is dropped
    assert memo.peek("d") is None and memo.peek("a") == "a3" and memo._size == 130
