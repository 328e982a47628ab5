"""The journal's memo of objects holds an object it wrote without a copy of its bytes
(gateway.handoff.journal._Objects.remember_encoded): a read is served from it exactly
when serving it from the bytes would be, and answers what decoding the bytes answers."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from gateway import wire
from gateway.errors import GatewayError
from gateway.handoff import journal as journal_module
from gateway.lineage import EntryKind, LineageEntry
from gateway.model import GovernedObject
from tests.test_lineage import HOST_A, T0
from tests.test_object_encoding import _cycled, every_field, whole


class _KeepingBytes(journal_module._Objects):
    """The memo as it was: every object held with the bytes it was remembered with."""

    def remember_encoded(self, key: str, raw: bytes, obj: GovernedObject) -> None:
        self.remember(key, raw, obj)


def _journal() -> journal_module.Journal:
    return journal_module.Journal(store=None)  # type: ignore[arg-type]  # no reads here


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    decoded: list[bytes] = []
    real = wire.decode_object

    def counting(raw: bytes, *, entry_ids: bytes = b"") -> Any:
        decoded.append(raw)
        return real(raw, entry_ids=entry_ids)

    monkeypatch.setattr(wire, "decode_object", counting)
    return decoded


def test_an_object_written_is_held_without_its_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """After put_object the memo holds the object, not the record's bytes; reading those
    very bytes back is a hit (no decode), bytes differing in one byte are decoded."""
    journal = _journal()
    obj = _cycled(6)
    put = journal.put_object("default", obj, "etag-0")
    held = journal._objects._held.peek(put.key)
    assert held is not None
    assert held[0] is None
    assert held[1] is obj
    decoded = _counting(monkeypatch)
    assert journal.decode_object(put.key, put.value) is obj
    assert decoded == []
    # A read keeps the bytes it found for the next read (a migration reads its object
    # at each step); the object's next write drops them again.
    assert journal._objects._held.peek(put.key) == (put.value, obj)
    assert journal.decode_object(put.key, put.value) is obj
    assert decoded == []
    journal.put_object("default", obj, "etag-1")
    assert journal._objects._held.peek(put.key) == (None, obj)
    other = wire.encode_object(obj.record(EntryKind.EVALUATED, host=HOST_A, at=T0))
    assert wire.encode_object(journal.decode_object(put.key, other)) == other
    assert decoded == [other]


def _objects(rng: random.Random) -> GovernedObject:
    kind = rng.randrange(3)
    if kind == 0:
        return _cycled(rng.randrange(0, 20))
    if kind == 1:
        return every_field()  # a blob: its parts are built by encoding, not cut
    return replace(
        _cycled(rng.randrange(1, 5)), data=b'{"d": "' + b"x" * rng.randrange(900) + b'"}'
    )


def _next(obj: GovernedObject, rng: random.Random, step: int) -> GovernedObject:
    at = T0 + timedelta(seconds=step + 1)
    if obj.blob is None and rng.random() < 0.3:
        obj = replace(obj, data=b'{"n": %d}' % rng.randrange(1000))
    detail = f"run {rng.randrange(3)}"  # repeats fold now and then
    return obj.record(EntryKind.EVALUATED, host=HOST_A, at=at, detail=detail)


def _tampered(raw: bytes, rng: random.Random) -> bytes:
    # The ends too: a check reading only part of the bytes misses a flip there.
    at = rng.choice((0, len(raw) - 1, rng.randrange(len(raw))))
    return raw[:at] + bytes([raw[at] ^ (1 << rng.randrange(8))]) + raw[at + 1 :]


def _answer(memo: journal_module._Objects, key: str, raw: bytes) -> tuple[tuple[str, object], bool]:
    """What the memo answers for ``raw`` under ``key``, and whether it was the object
    it held (a hit: no decode)."""
    held = memo._held.peek(key)
    try:
        obj = memo.get(key, raw)
    except GatewayError as exc:
        return ("refused", (type(exc), str(exc))), False
    return ("object", wire.encode_object(obj)), held is not None and obj is held[1]


@pytest.mark.parametrize("seed", range(24))
def test_reads_answer_as_with_the_bytes_kept(seed: int) -> None:
    """Seeded runs of writes and reads (the bytes last written, an older version's, a
    tampered copy, another key's): the memo without bytes answers every read as the memo
    keeping them does and as decoding does, and hits for exactly the same reads."""
    rng = random.Random(seed)
    now = [0.0]
    size = rng.choice((1 << 12, 1 << 20))  # tight: entries refused and evicted; or roomy
    memos = [
        cls(total_bytes=size, idle_seconds=5.0, clock=lambda: now[0])
        for cls in (journal_module._Objects, _KeepingBytes)
    ]
    keys = [f"objects/default/o{i}" for i in range(4)]
    current = {key: _objects(rng) for key in keys}
    written: dict[str, list[bytes]] = {key: [] for key in keys}
    for step in range(60):
        now[0] += rng.random() * 3
        key = rng.choice(keys)
        if rng.random() < 0.5:
            current[key] = _next(current[key], rng, step)
            raw = wire.encode_object(current[key])
            assert raw == whole(current[key])
            written[key].append(raw)
            for memo in memos:
                memo.remember_encoded(key, raw, current[key])
            continue
        history = written[key] or [wire.encode_object(current[key])]
        choice = rng.randrange(4)
        if choice == 0:
            raw = history[-1]
        elif choice == 1:
            raw = rng.choice(history)
        elif choice == 2:
            raw = _tampered(history[-1], rng)
        else:
            raw = wire.encode_object(current[rng.choice(keys)])
        answers, hits = zip(*(_answer(memo, key, raw) for memo in memos), strict=True)
        assert answers[0] == answers[1], (seed, step, choice)
        assert hits[0] == hits[1], (seed, step, choice)
        if answers[0][0] == "object":
            assert answers[0][1] == wire.encode_object(wire.decode_object(raw))


# A log's entries' encoding is kept as pieces referencing each entry's own bytes
# (gateway.lineage._Log.wire), not as a copy of them.


def _fold_group(obj: GovernedObject) -> tuple[LineageEntry, ...]:
    last = obj.lineage.entries[-1]
    return (replace(last, time=last.time + timedelta(seconds=1), generation=last.generation + 1),)


def _check_encoding(obj: GovernedObject) -> None:
    """The object's encoding is the whole message's, its entries lie where
    encode_object_entries says, and they reference the entries' own bytes."""
    value, at, ends, ids = wire.encode_object_entries(obj)
    assert value == whole(obj)
    entries = obj.lineage.entries
    assert len(ends) == len(entries)
    start = at
    for entry, end in zip(entries, ends, strict=True):
        raw = entry.encode()
        field = value[start : at + end]
        assert field.endswith(raw) and field[:1] == b"\x0a"
        start = at + end
    assert ids == b"".join(entry.leaf_hash() for entry in entries)
    log = obj.lineage._log
    count = len(entries)
    assert all(
        piece is entry.encode()
        for piece, entry in zip(log.wire[1 : 2 * count : 2], entries, strict=True)
    )


@pytest.mark.parametrize("seed", range(30))
def test_entries_encode_as_the_whole_message_through_appends_forks_folds_and_reads(
    seed: int,
) -> None:
    """Seeded runs over an object's values: appends to the newest value, appends to an
    older one (its log is copied), folds of a repeat, the record read back (its log cut
    from the stored bytes) and written again: every value, old ones included after the
    log grew, encodes exactly as the whole message serialized at once."""
    rng = random.Random(seed)
    values = [_objects(rng)]
    values[0] = replace(values[0], blob=None, data=b'{"n": 0}') if rng.random() < 0.5 else values[0]
    for step in range(40):
        op = rng.randrange(5)
        base = values[-1] if op != 1 else rng.choice(values)
        if op in (0, 1):
            value = _next(base, rng, step)
        elif op == 2 and len(base.lineage.entries) > 1:
            folded = base.lineage.repeated(_fold_group(base))
            value = base if folded is None else replace(base, lineage=folded)
        elif op == 3:
            value = wire.decode_object(wire.encode_object(base))
        else:
            value = _next(base, rng, step)
            value = wire.decode_object(wire.encode_object(value))
        values.append(value)
        for checked in [*rng.sample(values, min(3, len(values))), value]:
            _check_encoding(checked)
