"""Session 37's cuts of the destination's CPU per migration (issue 13, P2): each fast path
gives exactly what the plain path gives, checked on seeded cases against the plain path."""

from __future__ import annotations

import io
import json
import logging
import random
from collections.abc import Iterator

import pytest

from gateway import observability
from gateway.observability import HANDOFF_FIELDS
from gateway.observability.logs import (
    TEXT_FORMAT,
    HandoffFields,
    _json_formatter,
    _SecondTimes,
    configure_logging,
)

SEED = 37


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """configure_logging changes the root logger and logging's module switches: put back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    switches = (
        logging._srcfile,
        logging.logThreads,
        logging.logProcesses,
        logging.logMultiprocessing,
    )
    try:
        yield
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        (
            logging._srcfile,
            logging.logThreads,
            logging.logProcesses,
            logging.logMultiprocessing,
        ) = switches


def _plain_handoff(record: logging.LogRecord) -> None:
    """The filter as it was written before session 37: the plain path."""
    fields = observability.HANDOFF.get()
    for name in HANDOFF_FIELDS:
        setattr(record, name, fields.get(name))
    record.trace_id = record.span_id = None
    record.handoff = "".join(
        f" {name}={fields[name]}" for name in HANDOFF_FIELDS if fields.get(name)
    )


def _records(count: int) -> list[tuple[logging.LogRecord, dict[str, str]]]:
    """Seeded records: times within and across seconds (and near their edges), some
    handoff fields bound and some not."""
    rng = random.Random(SEED)
    start = 1_796_000_000.0
    cases = []
    for index in range(count):
        created = start + rng.choice((0.0, 0.0005, 0.9995, rng.random())) + rng.randrange(4)
        record = logging.LogRecord(
            "gateway.handoff.destination", logging.INFO, __file__, 1, "line %d", (index,), None
        )
        record.created = created
        record.msecs = int((created - int(created)) * 1000) + 0.0
        fields = {
            name: f"{name}-{rng.randrange(1000)}" for name in HANDOFF_FIELDS if rng.random() < 0.7
        }
        cases.append((record, fields))
    return cases


def _bound(fields: dict[str, str]) -> object:
    return observability.HANDOFF.set(dict(fields))


def test_text_lines_are_the_plain_formatters_lines() -> None:
    fast, plain = _SecondTimes(TEXT_FORMAT), logging.Formatter(TEXT_FORMAT)
    handoff = HandoffFields()
    for record, fields in _records(400):
        token = _bound(fields)
        try:
            mine = logging.makeLogRecord(record.__dict__)
            theirs = logging.makeLogRecord(record.__dict__)
            assert handoff.filter(mine)
            _plain_handoff(theirs)
        finally:
            observability.HANDOFF.reset(token)  # type: ignore[arg-type]
        assert fast.format(mine) == plain.format(theirs)
        assert mine.__dict__ == theirs.__dict__


def test_json_lines_are_the_plain_formatters_lines() -> None:
    from pythonjsonlogger.json import JsonFormatter

    fast = _json_formatter()
    plain = JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        datefmt="%Y-%m-%dT%H:%M:%S%z",
    )
    for record, _fields in _records(200):
        mine = json.loads(fast.format(logging.makeLogRecord(record.__dict__)))
        theirs = json.loads(plain.format(logging.makeLogRecord(record.__dict__)))
        assert mine["time"] == theirs["time"]
        assert mine == {key: value for key, value in theirs.items() if value is not None}


def test_configured_lines_skip_the_callers_frames(
    restored_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No format shows the caller's file, thread or process: no record looks them up,
    and the line reads as before."""
    configure_logging("text", level=logging.INFO)
    stream = io.StringIO()
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)

    def walked(*_args: object, **_kwargs: object) -> object:
        raise AssertionError("findCaller was called")

    monkeypatch.setattr(logging.Logger, "findCaller", walked)
    token = _bound({"migration_id": "mig-1", "peer": "spiffe://a.example/h"})
    try:
        logging.getLogger("gateway.tests.s37").info("activated %s", "obj://a.example/x")
    finally:
        observability.HANDOFF.reset(token)  # type: ignore[arg-type]
    line = stream.getvalue()
    assert line.endswith(
        " INFO gateway.tests.s37: activated obj://a.example/x"
        " migration_id=mig-1 peer=spiffe://a.example/h\n"
    )


def _plain_b64url_decode(segment: str) -> bytes | None:
    """The plain path: decode, then refuse unless encoding the bytes again gives the
    segment (None: refused)."""
    import base64
    import re

    if not re.fullmatch(r"[A-Za-z0-9_-]*", segment) or len(segment) % 4 == 1:
        return None
    raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    return raw if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() == segment else None


def test_grant_segments_are_canonical_exactly_when_they_encode_back() -> None:
    import base64

    from gateway.credentials import _b64url_decode
    from gateway.errors import GrantFormatError

    rng = random.Random(SEED)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    segments = ["", "A", "AA", "AB", "AAA", "AAB"]
    for _ in range(3000):
        raw = rng.randbytes(rng.randrange(0, 40))
        encoded = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        segments.append(encoded)
        if encoded:  # the same segment with its last character changed: maybe canonical
            segments.append(encoded[:-1] + rng.choice(alphabet))
        segments.append("".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12))))
    refused = 0
    for segment in segments:
        expected = _plain_b64url_decode(segment)
        try:
            got: bytes | None = _b64url_decode(segment, "payload")
        except GrantFormatError:
            got = None
        assert got == expected, segment
        refused += expected is None
    assert 1000 < refused < len(segments) - 1000  # both outcomes well represented
