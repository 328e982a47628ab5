"""A cycle whose object missed every memo (read from the store and decoded) costs
little more than one whose object was held: the decode keeps what encoding the object
again would build (gateway.wire._keep_wire), and the bytes stay those of serializing
the whole message at once."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import pytest

from gateway import archive, lineage, rules, wire
from gateway.errors import RuleError
from gateway.lineage import EntryKind, LineageEntry
from gateway.model import GovernedObject
from tests.test_lineage import HOST_A, T0
from tests.test_object_encoding import _cycled, _fields_unset, every_field, whole


def _inline(obj: GovernedObject) -> GovernedObject:
    """``obj`` with its data inline (the parts are kept only then)."""
    return replace(obj, blob=None, data=b'{"n": 1}')


#: (object, reason)
_OBJECTS = [
    (_cycled(0), "no entries"),
    (_cycled(12), "a cycled object"),
    (_inline(every_field()), "every field but a blob: rules, grants, receipt, expiry"),
]


@pytest.mark.parametrize(("obj", "reason"), _OBJECTS, ids=[r for _, r in _OBJECTS])
def test_a_decoded_object_encodes_again_without_building_its_parts(
    obj: GovernedObject, reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Encoding a freshly decoded object (of small data), and its next cycle's value,
    builds none of its unchanged parts: each is cut from the stored bytes, and equal to
    what it builds."""
    encoded = wire.encode_object(obj)
    decoded = wire.decode_object(encoded)
    cut = decoded.lineage._log.parts[4]
    # What the parts would be, built from the decoded values (no memo to answer).
    decoded.lineage._log.parts = None
    wire._OBJECT_PARTS.clear()
    assert wire._unchanged_parts(decoded) == cut, reason

    decoded = wire.decode_object(encoded)
    for name in ("_encode_body", "_tail", "_head", "_after", "_envelopes_wire"):
        monkeypatch.setattr(wire, name, _refuse)
    assert wire.encode_object(decoded) == encoded
    after = decoded.record(EntryKind.EVALUATED, host=HOST_A, at=T0 + timedelta(days=1))
    monkeypatch.undo()
    assert wire.encode_object(after) == whole(after)


def test_a_decoded_object_holds_one_copy_of_its_data() -> None:
    """Past KEPT_HEAD_MAX_DATA_BYTES the parts a decode keeps leave out the head: an
    object only read carries its data once (the object's own bytes), not again inside
    a part; its encoding builds the head, the same bytes."""
    data = b'{"payload": "' + b"d" * 4000 + b'"}'
    obj = replace(_cycled(2), data=data)
    encoded = wire.encode_object(obj)
    decoded = wire.decode_object(encoded)
    assert decoded.data == data
    held = decoded.lineage._log.parts
    assert held[3] is None
    assert not any(b"d" * 4000 in part for part in held[4])
    assert wire.encode_object(decoded) == encoded == whole(decoded)


def _refuse(*_args: object) -> bytes:
    raise AssertionError("a part was built again")


def test_a_stored_blob_object_builds_its_parts_as_before() -> None:
    """A blob's placement is written from the host's record of it: its parts are not
    cut from the record, and its encoding is still the whole message's."""
    obj = every_field()
    decoded = wire.decode_object(wire.encode_object(obj))
    assert decoded.lineage._log.parts is None
    assert wire.encode_object(decoded) == whole(decoded) == wire.encode_object(obj)


_BASE = _cycled(3).lineage.entries[-1]
#: (changes to the stored entry's next entry, reason)
_EVENTS = [
    ({}, "the same entry"),
    ({"seq": 9, "generation": 4, "time": T0 + timedelta(days=3)}, "only what a cycle moves"),
    ({"repeats": 3}, "counted repeats: still the same event"),
    ({"prev": bytes(32)}, "another link: not compared"),
    ({"detail": "run 2!"}, "another summary"),
    ({"detail": 'run 2","generation":0,"host":"x'}, "a summary spelling out keys (escaped)"),
    ({"data_digest": bytes(32)}, "a write"),
    ({"credentials_digest": bytes(32)}, "other grants"),
    ({"epoch": 1}, "another epoch"),
    ({"host": HOST_A + "x"}, "another host"),
    ({"kind": EntryKind.WOKEN}, "another kind"),
]


@pytest.mark.parametrize(("changes", "reason"), _EVENTS, ids=[r for _, r in _EVENTS])
def test_a_stored_entry_tells_the_same_event_without_decoding(
    changes: dict[str, object], reason: str
) -> None:
    """A stored entry (read from this host's store, not decoded yet) answers same_event
    from the two encodings, as the decoded entry does, and stays undecoded."""
    other = replace(_BASE, **changes)  # type: ignore[arg-type]
    other.encode()  # an appended entry's encoding is known
    stored = LineageEntry.stored(_BASE.encode())
    assert stored.same_event(other) is _BASE.same_event(other), reason
    assert _fields_unset(stored)
    # The other way round, and with an entry whose encoding is not known yet: decoded.
    fresh = replace(_BASE, **changes)  # type: ignore[arg-type]
    assert LineageEntry.stored(_BASE.encode()).same_event(fresh) is _BASE.same_event(fresh)


@pytest.mark.parametrize("margin", [-4000, -300, -1, 0, 1, 300, 4000])
def test_the_bytes_limit_is_read_off_the_logs_encoding(
    margin: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CompactionPolicy.due compares the carried entries' bytes with its limit as
    measuring them would, and measures none when the encoding its log keeps (written
    by the cycle that asks) puts the answer outside two bytes an entry."""
    obj = _cycled(60)
    wire.encode_object(obj)  # the log's encoding now covers every entry
    measured = archive.carried_bytes(obj.lineage)
    limit = measured + margin
    assert limit >= archive.MIN_MAX_BYTES  # 60 entries of about 400 bytes
    policy = archive.CompactionPolicy(
        keep_entries=1, max_entries=1000, max_age=None, max_bytes=limit
    )
    expected = measured > limit
    if abs(margin) > 4 * len(obj.lineage.entries):
        monkeypatch.setattr(archive, "carried_bytes", _refuse)
    assert policy.due(obj.lineage, now=T0, stored_bytes=limit + 1) is expected


#: (data, reason): each decodes as json.loads does, or is refused as it is
_DATA = [
    (b"{}", "empty"),
    (b'{"a": [1, 2.5, "x\\u00e9"], "b": {"c": null}}', "nested"),
    ('{"é": "ü"}'.encode(), "UTF-8 text"),
    (b' {"a": 1}\n', "whitespace around"),
    (b'{"a": 1} {"b": 2}', "extra data"),
    (b'{"a": 1', "cut short"),
    ('{"a": 1}'.encode("utf-16-le"), "UTF-16 (json.loads detects it)"),
    ('{"a": 1}'.encode("utf-8-sig"), "a byte order mark"),
    (b'{"a": "\\ud800"}', "an escaped lone surrogate"),
    (b"[1]", "not an object"),
    (b"\xff{", "not text"),
]


@pytest.mark.parametrize(("data", "reason"), _DATA, ids=[r for _, r in _DATA])
def test_data_loads_as_json_loads_reads_it(data: bytes, reason: str) -> None:
    try:
        expected: object = json.loads(data)
    except ValueError as exc:
        expected = exc
    if not isinstance(expected, dict):
        with pytest.raises(RuleError):
            rules.load_data(data, "application/json")
        return
    assert rules.load_data(data, "application/json") == expected, reason


def test_data_in_canonical_form_takes_no_encoding_detection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Data a write stored (a JSON object, UTF-8, nothing around it) is read by the
    scanner json.loads ends in, without its encoding detection and whitespace scans."""
    monkeypatch.setattr(json, "detect_encoding", _refuse)
    assert rules.load_data(b'{"a": 1}', "application/json") == {"a": 1}


@pytest.mark.parametrize("code", range(0x100))
def test_a_plain_json_string_is_what_json_dumps_writes_as_it_is(code: int) -> None:
    """Each character, alone and inside a grant-like text, is plain exactly when
    json.dumps writes it unescaped (the grants' digest is then built without it)."""
    for text in (chr(code), f"eyJh.{chr(code)}.sig", chr(code) * 3 + "é"):
        plain = json.dumps(text) == f'"{text}"'
        assert lineage._plain_json_string(text) is plain, repr(text)
