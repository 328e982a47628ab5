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


def test_the_memo_keeps_a_few_values_per_owner_so_superseded_bases_go() -> None:
    """Each compaction makes a new base for its object and the old one is dead once the
    object moved on: bounded by the bytes alone, the memo filled with them for as long
    as the soak ran (memory paced by history). With an owner it holds at most
    ``per_owner`` per owner, newest kept, other owners untouched."""
    memo = lineage_module._BytesMemo(
        max_bytes=1 << 20, max_item_bytes=1 << 10, owner=lambda v: v.split(b":")[0].decode()
    )
    for version in range(100):
        memo.get(f"obj-1:{version}".encode(), bytes)
        memo.get(f"obj-2:{version}".encode(), bytes)
    assert memo.size()[0] == 4
    decoded: list[bytes] = []

    def decode(raw: bytes) -> bytes:
        decoded.append(raw)
        return raw

    for kept in (b"obj-1:98", b"obj-1:99", b"obj-2:98", b"obj-2:99"):
        assert memo.get(kept, decode) == kept
    assert decoded == [], "the newest two of each owner are hits"
    memo.get(b"obj-1:3", decode)
    assert decoded == [b"obj-1:3"], "a superseded one was let go"
    # The byte bound still holds with owners; evicting by bytes updates the owners.
    small = lineage_module._BytesMemo(max_bytes=8, max_item_bytes=8, owner=lambda v: v[:1].decode())
    for raw in (b"a111", b"b222", b"c333", b"a444"):
        small.get(raw, bytes)
    assert small.size() == (2, 8)
    small.clear()
    assert small.size() == (0, 0)


def test_the_base_memo_is_bounded_per_object() -> None:
    """Real bases: five compactions of one object (bases differing in their time) leave
    its newest two remembered; another object's base stays."""
    from datetime import timedelta

    forget_decoded_entries()
    base = Base.decode(compacted_payload())
    other = replace(base, object_id=base.object_id + "-other").encode()
    Base.decode(other)
    versions = [
        replace(base, issued_at=base.issued_at + timedelta(seconds=n)).encode() for n in range(5)
    ]
    newest = [Base.decode(raw) for raw in versions][-2:]
    assert lineage_module._BASE_MEMO.size()[0] == 3
    assert [Base.decode(raw) for raw in versions[-2:]] == newest
    assert all(Base.decode(raw) is n for raw, n in zip(versions[-2:], newest, strict=True))
    assert lineage_module._BASE_MEMO.hits >= 2
    assert Base.decode(other).object_id.endswith("-other")
    assert lineage_module._BASE_MEMO.size()[0] == 3
