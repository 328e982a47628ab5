"""The decoded-entry memo in gateway.lineage: a hit is what decoding returns, refusals
are never remembered, and what a peer can make it hold is bounded."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway import lineage as lineage_module
from gateway.errors import LineageError
from gateway.lineage import ENTRY_MEMO_MAX_BYTES, ENTRY_MEMO_SIZE, Lineage, LineageEntry
from tests.test_lineage import HOST_A as A
from tests.test_lineage import grow


@pytest.fixture(autouse=True)
def cold() -> Iterator[None]:
    lineage_module.forget_decoded_entries()
    yield
    lineage_module.forget_decoded_entries()


def test_the_same_bytes_decode_once_to_the_same_entry() -> None:
    raw = grow(Lineage(), A, 1).entries[0].encode()
    first = LineageEntry.decode(raw)
    again = LineageEntry.decode(bytes(raw))  # equal bytes, another object
    assert again is first
    assert first.encode() == raw
    assert lineage_module._remembered_entry.cache_info().hits == 1


def test_refused_bytes_are_refused_every_time_and_never_remembered() -> None:
    raw = grow(Lineage(), A, 1).entries[0].encode()
    spaced = raw.replace(b",", b", ", 1)  # not canonical
    for _ in range(2):
        with pytest.raises(LineageError, match="canonical"):
            LineageEntry.decode(spaced)
    assert lineage_module._remembered_entry.cache_info().currsize == 0


def test_large_entries_are_decoded_afresh_and_the_memo_is_bounded() -> None:
    raw = grow(Lineage(), A, 1, detail="x" * ENTRY_MEMO_MAX_BYTES).entries[0].encode()
    assert len(raw) > ENTRY_MEMO_MAX_BYTES
    assert LineageEntry.decode(raw) is not LineageEntry.decode(raw)
    assert lineage_module._remembered_entry.cache_info().maxsize == ENTRY_MEMO_SIZE
    # Worst case a peer can make the memo hold: its size times the largest entry kept.
    assert ENTRY_MEMO_SIZE * ENTRY_MEMO_MAX_BYTES <= 16 << 20
