"""The memory of decoded lineage bases (gateway.lineage._BASE_MEMO, issue 13 point 7): a
base read again from the same bytes is the value decoding gave, refused bytes are never
remembered, and what is remembered is bounded by bytes, least recently used first out.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from gateway import envelope as dsse
from gateway import lineage as lineage_module
from gateway.archive import Segment
from gateway.errors import LineageError
from gateway.lineage import (
    BASE_MEMO_BYTES,
    BASE_MEMO_MAX_ITEM_BYTES,
    BASE_PAYLOAD_TYPE,
    Base,
    forget_decoded_entries,
    verify_lineage,
)
from tests.test_compaction import created, run
from tests.test_lineage import HOST_A, OBJECT, SIGNERS, TRUST


def compacted_payload() -> bytes:
    segments: list[Segment] = []
    obj = run(created(), range(100), host=HOST_A, segments=segments, vary=1)
    assert obj.lineage.base is not None
    return obj.lineage.base.payload


def test_a_base_decoded_again_is_the_remembered_value_and_its_ranges_fold_once() -> None:
    forget_decoded_entries()
    payload = compacted_payload()
    first = Base.decode(payload)
    assert Base.decode(bytes(payload)) is first  # equal bytes, not the same object
    assert first.frontiers() is first.frontiers()  # folded once per base
    assert first.frontier().root() == first.root
    # The memory holds exactly what decoding afresh gives.
    forget_decoded_entries()
    assert lineage_module._BASE_MEMO.size() == (0, 0)
    fresh = Base.decode(payload)
    assert fresh is not first and fresh == first
    assert lineage_module._BASE_MEMO.size() == (1, len(payload))
    assert Base.decode(payload) is fresh


def test_refused_bases_are_not_remembered_and_a_forged_one_is_still_refused() -> None:
    forget_decoded_entries()
    payload = compacted_payload()
    base = Base.decode(payload)
    held = lineage_module._BASE_MEMO.size()
    bad = payload.replace(b'"size":', b'"size": ', 1)  # not canonical JSON
    for _ in range(2):
        with pytest.raises(LineageError):
            Base.decode(bad)
    assert lineage_module._BASE_MEMO.size() == held
    # A forged base whose bytes differ is decoded and checked on its own: remembering
    # the honest one changes nothing about it.
    forged = replace(base, spine=((bytes(32), *base.spine[0][1:]), *base.spine[1:]))
    envelope = dsse.seal(forged.encode(), BASE_PAYLOAD_TYPE, [SIGNERS[HOST_A]])
    segments: list[Segment] = []
    obj = run(created(), range(100), host=HOST_A, segments=segments, vary=1)
    with pytest.raises(LineageError):
        verify_lineage(
            replace(obj.lineage, base=envelope), object_id=OBJECT, trust=TRUST, sealed=False
        )
    verify_lineage(obj.lineage, object_id=OBJECT, trust=TRUST, sealed=False)


def test_the_memo_is_bounded_by_bytes_least_recently_used_first_out() -> None:
    memo = lineage_module._BytesMemo(max_bytes=10, max_item_bytes=6)
    decoded: list[bytes] = []

    def decode(raw: bytes) -> bytes:
        decoded.append(raw)
        return raw.upper()

    assert memo.get(b"aaaa", decode) == b"AAAA"
    assert memo.get(b"bbbb", decode) == b"BBBB"
    assert memo.get(b"aaaa", decode) == b"AAAA"  # a hit: "bbbb" is now the oldest
    assert decoded == [b"aaaa", b"bbbb"]
    memo.get(b"cccc", decode)  # 12 bytes > 10: the least recently used goes
    assert memo.size() == (2, 8)
    memo.get(b"bbbb", decode)
    assert decoded[-1] == b"bbbb"  # evicted, so decoded again
    memo.get(b"toolong", decode)  # over the item limit: decoded, never kept
    memo.get(b"toolong", decode)
    assert decoded[-2:] == [b"toolong", b"toolong"]
    assert memo.size()[1] <= 10
    assert BASE_MEMO_MAX_ITEM_BYTES <= BASE_MEMO_BYTES
