"""Session 37: a lineage entry's fields are read as plain slots (issue 13). An entry
decoded lazily from stored bytes (LineageEntry.stored) is indistinguishable from one
decoded at once: every field, equality both ways, hash, repr, copies; bytes that are not
a canonical entry are refused at the first use that needs a field, every time. Seeded:
every run checks the same cases."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway import lineage as lineage_module
from gateway.errors import LineageError
from gateway.lineage import _FIELD_NAMES, EntryKind, LineageEntry
from tests.test_lineage import BAD_ENCODINGS

SEED = 37
HOSTS = ["org-a.example/h1", "h2", "ĥost-ü", 'quote"d\\host']
DETAILS = ["", "2 of 3 rules fired", "é" * 40, "tab\there", "\u2028 line", "x" * 300]


def _entries(count: int) -> list[LineageEntry]:
    rng = random.Random(SEED)
    t0 = datetime(2026, 12, 7, tzinfo=UTC)
    entries = []
    for index in range(count):
        entries.append(
            LineageEntry(
                seq=rng.choice([0, 1, index, 10**12]),
                prev=rng.choice([b"", rng.randbytes(32)]),
                time=t0 + timedelta(milliseconds=rng.randrange(10**10)),
                host=rng.choice(HOSTS),
                kind=rng.choice(list(EntryKind)),
                epoch=rng.randrange(5),
                generation=rng.randrange(10**6),
                data_digest=rng.randbytes(32),
                credentials_digest=rng.randbytes(32),
                detail=rng.choice(DETAILS),
                repeats=rng.choice([0, 0, 1, 7]),
            )
        )
    return entries


def _fields(entry: LineageEntry) -> tuple[Any, ...]:
    return tuple(getattr(entry, name) for name in _FIELD_NAMES)


#: The first thing done with a stored entry: each must decode it as a field read does.
FIRST_USES: list[tuple[str, Callable[[LineageEntry, LineageEntry], Any]]] = [
    ("field", lambda stored, plain: getattr(stored, random.Random(SEED).choice(_FIELD_NAMES))),
    ("eq", lambda stored, plain: stored == plain),
    ("eq-reflected", lambda stored, plain: plain == stored),
    ("ne", lambda stored, plain: stored != plain),
    ("eq-stored", lambda stored, plain: stored == LineageEntry.stored(plain.encode())),
    ("hash", lambda stored, plain: hash(stored)),
    ("repr", lambda stored, plain: repr(stored)),
    ("pickle", lambda stored, plain: pickle.loads(pickle.dumps(stored))),
    ("copy", lambda stored, plain: copy.copy(stored)),
    ("replace", lambda stored, plain: dataclasses.replace(stored, seq=1)),
    ("asdict", lambda stored, plain: dataclasses.asdict(stored)),
    ("same_event", lambda stored, plain: stored.same_event(plain)),
]


def test_an_entry_reads_its_fields_without_an_attribute_hook() -> None:
    """Decoded and appended entries are plain LineageEntry values, whose class has no
    __getattr__: with one, every attribute read went through the class's hook."""
    plain = _entries(1)[0]
    for entry in (plain, LineageEntry.decode(plain.encode())):
        assert type(entry) is LineageEntry
        assert not hasattr(type(entry), "__getattr__")
    stored = LineageEntry.stored(plain.encode())
    assert stored.seq == plain.seq
    assert type(stored) is LineageEntry


@pytest.mark.parametrize(("use", "first"), FIRST_USES, ids=[name for name, _ in FIRST_USES])
def test_a_stored_entry_is_a_decoded_one_whatever_is_done_first(
    use: str, first: Callable[[LineageEntry, LineageEntry], Any]
) -> None:
    for plain in _entries(150):
        raw = plain.encode()
        stored = LineageEntry.stored(raw)
        assert stored.encode() is raw and stored.leaf_hash() == plain.leaf_hash()
        assert first(stored, plain) == first(LineageEntry.decode(raw), plain)
        # same_event answers from the two encodings and leaves the entry stored (a
        # cycle's question of its last entry: tests/test_miss_s39.py); every other first
        # use decodes it.
        assert (type(stored) is LineageEntry) is (use != "same_event")
        assert _fields(stored) == _fields(plain)
        assert stored == plain and plain == stored
        assert (stored != plain) is False
        assert hash(stored) == hash(plain) and repr(stored) == repr(plain)
        assert stored.encode() is raw and stored.leaf_hash() == plain.leaf_hash()
        assert pickle.loads(pickle.dumps(stored)) == plain
        with pytest.raises(dataclasses.FrozenInstanceError):
            stored.seq = 1  # type: ignore[misc]


@pytest.mark.parametrize(("use", "first"), FIRST_USES, ids=[name for name, _ in FIRST_USES])
def test_stored_bytes_not_an_entry_are_refused_at_the_first_use(
    use: str, first: Callable[[LineageEntry, LineageEntry], Any]
) -> None:
    """As LineageEntry.decode refuses them, at the first use that needs a field and at
    every one after; encoding and hashing the bytes as they are still answer."""
    plain = _entries(1)[0]
    for case in BAD_ENCODINGS:
        stored = LineageEntry.stored(case.raw)
        with pytest.raises(LineageError):
            LineageEntry.decode(case.raw)
        for _ in range(2):
            with pytest.raises(LineageError):
                first(stored, plain)
            with pytest.raises(LineageError):
                stored.time  # noqa: B018  (the read is the test)
        assert stored.encode() == case.raw
        assert type(stored) is not LineageEntry  # never left half decoded


def test_a_decoded_entry_is_the_one_its_constructor_builds() -> None:
    """_decode_fast sets the slots one by one instead of calling the frozen dataclass's
    __init__: the same fields, the same value in every way."""
    for plain in _entries(400):
        raw = plain.encode()
        decoded = LineageEntry._decode(raw)  # not the memo: the decode itself
        rebuilt = LineageEntry(**{name: getattr(decoded, name) for name in _FIELD_NAMES})
        assert type(decoded) is LineageEntry
        assert _fields(decoded) == _fields(plain) == _fields(rebuilt)
        assert decoded == plain == rebuilt and hash(decoded) == hash(rebuilt)
        assert repr(decoded) == repr(rebuilt)
        assert decoded.encode() == raw == rebuilt.encode()


def _time_texts(rng: random.Random) -> list[str]:
    """Canonical entry times and near misses: other forms fromisoformat reads, digits
    that are not ASCII, fields out of range."""
    texts = []
    for _ in range(300):
        moment = datetime(1, 1, 1, tzinfo=UTC) + timedelta(
            milliseconds=rng.randrange(315_537_897_600_000)
        )
        canonical = moment.isoformat(timespec="milliseconds")[:-6] + "Z"
        at = rng.randrange(len(canonical))
        texts += [
            canonical,
            canonical[:-1] + "+00:00",
            canonical[:-1] + "z",
            canonical[:-5] + "Z",
            canonical[:-1] + "000Z",
            canonical[:-1] + "+01:00",
            canonical.replace("T", " "),
            canonical[:at] + "\uff11\u0661"[rng.randrange(2)] + canonical[at + 1 :],
            canonical[:at] + str(rng.randrange(10)) + canonical[at + 1 :],
        ]
    return [
        *texts,
        "0000-01-01T00:00:00.000Z",
        "2026-01-01T24:00:00.000Z",
        "2026-02-29T00:00:00.000Z",
    ]


def test_a_time_read_is_written_again_only_when_its_text_is_not_canonical() -> None:
    """_decode_fast hands a canonical time text to the re-encode instead of formatting
    the time again: the decode accepts exactly the texts that formatting gives back,
    and _format_utc's slot only ever holds a time with its own text."""
    rng = random.Random(SEED)
    plain = _entries(1)[0]
    raw = plain.encode()
    written = lineage_module._format_utc_now(plain.time)
    for text in _time_texts(rng):
        changed = raw.replace(f'"time":"{written}"'.encode(), f'"time":"{text}"'.encode())
        try:
            moment = datetime.fromisoformat(text)
            canonical = lineage_module._format_utc_now(moment) == text
        except ValueError:
            canonical = False
        if canonical:
            entry = LineageEntry._decode(changed)
            assert entry.time == moment and entry.encode() == changed
        else:
            with pytest.raises(LineageError):
                LineageEntry._decode(changed)
        held, held_text = lineage_module._LAST_FORMATTED
        assert held is not None and lineage_module._format_utc_now(held) == held_text
