"""Session 41's cuts of a log line's cost (issue 13, P2: the destination's activation
line): the handoff fields rendered by one f-string when all four are bound, and the
text format written by one f-string. Each line is checked, byte for byte, against the
plain path (the filter as it was before, ``logging.Formatter`` and the JSON formatter
over the plain filter's record) on seeded records: levels, ``%`` arguments, mappings,
exceptions with tracebacks, stacks, non-ASCII, characters JSON escapes, handoff fields
absent, partial, changed and mutated in place between records, and refusals."""

from __future__ import annotations

import io
import logging
import random
import sys
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

import pytest

from gateway import observability
from gateway.observability import HANDOFF, HANDOFF_FIELDS
from gateway.observability.logs import (
    TEXT_FORMAT,
    HandoffFields,
    _json_formatter,
    _TextLines,
    configure_logging,
)

SEED = 41


class _PlainHandoff(logging.Filter):
    """``HandoffFields.filter`` as it was before session 41: the plain path."""

    def filter(self, record: logging.LogRecord) -> bool:
        values = tuple(map(HANDOFF.get().get, HANDOFF_FIELDS))
        record.migration_id, record.object_id, record.peer, record.tenant = values
        record.trace_id = record.span_id = None
        record.handoff = "".join(
            f" {name}={value}" for name, value in zip(HANDOFF_FIELDS, values, strict=True) if value
        )
        return True


LEVELS = (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL, 25, 5)
VALUES = (
    "mig-0123456789abcdef0123456789abcdef",
    "obj://org-a.example/h/p2-1",
    "spiffe://org-a.example/cluster/east/gateway",
    "default",
    "héllo wörld ✓ 日本",
    'quote " back\\slash',
    "new\nline\ttab\x00\x1f",
    "with spaces = signs",
    "",
)


class _Shown:
    """An argument whose text is its ``__str__``."""

    def __str__(self) -> str:
        return "shown ✓"


def _message(rng: random.Random) -> tuple[Any, tuple[Any, ...] | Mapping[str, Any]]:
    kind = rng.randrange(8)
    if kind == 0:
        return "activated %s from %s", (rng.choice(VALUES), rng.choice(VALUES))
    if kind == 1:
        return "%(object)s moved %(count)d times", {"object": rng.choice(VALUES), "count": 3}
    if kind == 2:
        return "100%% done: %s", (_Shown(),)
    if kind == 3:
        return "no arguments, a stray %s stays", ()
    if kind == 4:
        return ValueError(rng.choice(VALUES)), ()
    if kind == 5:
        return rng.choice(VALUES) + " %r", (rng.choice(VALUES),)
    if kind == 6:
        return 42, ()
    return 'json: "quoted" \\ </script> \u2028 \x7f', ()


def _exc_info(rng: random.Random) -> Any:
    try:
        raise KeyError(rng.choice(VALUES))
    except KeyError:
        return sys.exc_info()


def _bindings(rng: random.Random, count: int) -> Iterator[Mapping[str, str]]:
    """Handoff bindings as records see them: none, all four, some, one dict changed in
    place between two records, and empty values."""
    held: dict[str, str] = {}
    for index in range(count):
        kind = rng.randrange(6)
        if kind == 0:
            yield MappingProxyType({})
        elif kind in (1, 2):
            yield {name: f"{rng.choice(VALUES)}-{index}" for name in HANDOFF_FIELDS}
        elif kind == 3:
            yield {name: rng.choice(VALUES) for name in HANDOFF_FIELDS if rng.random() < 0.6}
        else:
            # The same dict, bound again after a change in place (or none): a memo keyed
            # by the dict's identity would go stale here.
            if rng.random() < 0.7:
                held[rng.choice(HANDOFF_FIELDS)] = rng.choice(VALUES)
            if rng.random() < 0.2 and held:
                del held[rng.choice(sorted(held))]
            yield held


def _records(count: int) -> Iterator[tuple[logging.LogRecord, Mapping[str, str]]]:
    rng = random.Random(SEED)
    start = 1_796_000_000.0
    for index, fields in enumerate(_bindings(rng, count)):
        msg, args = _message(rng)
        record = logging.LogRecord(
            rng.choice(("gateway.handoff.destination", "gateway.ünïcode", "root")),
            rng.choice(LEVELS),
            "(unknown file)",
            0,
            msg,
            args,  # type: ignore[arg-type]
            _exc_info(rng) if rng.random() < 0.15 else None,
            stack_info="Stack (most recent call last):\n  here" if rng.random() < 0.05 else None,
        )
        record.created = start + index // 3 + rng.choice((0.0, 0.0005, 0.9995, rng.random()))
        record.msecs = int((record.created - int(record.created)) * 1000) + 0.0
        yield record, fields


def _copy(record: logging.LogRecord) -> logging.LogRecord:
    return logging.makeLogRecord(dict(record.__dict__))


def _filtered(record: logging.LogRecord, fields: Mapping[str, str], check: logging.Filter) -> Any:
    token = HANDOFF.set(fields)
    try:
        assert check.filter(record)
    finally:
        HANDOFF.reset(token)
    return record


def test_text_and_json_lines_are_the_plain_paths_lines() -> None:
    fast_text, plain_text = _TextLines(), logging.Formatter(TEXT_FORMAT)
    fast_json, plain_json = _json_formatter(), _json_formatter()
    fast_filter, plain_filter = HandoffFields(), _PlainHandoff()
    all_four = 0
    for record, fields in _records(3000):
        mine = _filtered(_copy(record), fields, fast_filter)
        theirs = _filtered(_copy(record), fields, plain_filter)
        assert mine.__dict__ == theirs.__dict__
        all_four += all(mine.__dict__[name] for name in HANDOFF_FIELDS)
        mine_json, theirs_json = _copy(mine), _copy(theirs)
        assert fast_text.format(mine) == plain_text.format(theirs)
        assert mine.__dict__ == theirs.__dict__
        assert fast_json.format(mine_json) == plain_json.format(theirs_json)
    assert all_four > 500  # the f-string's case is among them, and often


def test_configured_handler_writes_the_plain_handlers_lines(
    restored_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for fmt in ("text", "json"):
        mine = io.StringIO()
        monkeypatch.setattr(sys, "stderr", mine)
        configure_logging(fmt, level=logging.DEBUG)
        handler = logging.getLogger().handlers[0]
        theirs = io.StringIO()
        plain = logging.StreamHandler(theirs)
        plain.addFilter(_PlainHandoff())
        plain.setFormatter(logging.Formatter(TEXT_FORMAT) if fmt == "text" else _json_formatter())
        for record, fields in _records(600):
            token = HANDOFF.set(fields)
            try:
                handler.handle(_copy(record))
                plain.handle(_copy(record))
            finally:
                HANDOFF.reset(token)
        assert mine.getvalue() == theirs.getvalue()
        assert mine.getvalue().count("\n") >= 600


def test_refusals_are_the_plain_formatters_refusals() -> None:
    # Arguments that do not fit the message, and a record no HandoffFields has seen.
    unfit = logging.LogRecord("gateway.x", logging.INFO, "(unknown file)", 0, "%d", ("x",), None)
    unfit.handoff = ""
    with pytest.raises(TypeError) as fast:
        _TextLines().format(_copy(unfit))
    with pytest.raises(TypeError) as plain:
        logging.Formatter(TEXT_FORMAT).format(_copy(unfit))
    assert str(fast.value) == str(plain.value)
    bare = logging.LogRecord("gateway.x", logging.INFO, "(unknown file)", 0, "line", (), None)
    with pytest.raises(ValueError, match="handoff") as fast:
        _TextLines().format(_copy(bare))
    with pytest.raises(ValueError, match="handoff") as plain:
        logging.Formatter(TEXT_FORMAT).format(_copy(bare))
    assert str(fast.value) == str(plain.value)


def test_configured_text_lines_are_written_without_percent_of_the_record(
    restored_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The text format is one f-string: ``%`` over the record's dict (the style object)
    is not on a line's way."""
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    configure_logging("text", level=logging.INFO)

    def refused(self: logging.PercentStyle, record: logging.LogRecord) -> str:
        raise AssertionError("formatted by % over the record")

    monkeypatch.setattr(logging.PercentStyle, "_format", refused)
    token = HANDOFF.set(HANDOFF.get())
    try:
        observability.bind(migration_id="m-1", object_id="obj://a.example/x", peer="p", tenant="t")
        logging.getLogger("gateway.tests.s41").info(
            "activated %s from %s", "obj://a.example/x", "p"
        )
    finally:
        HANDOFF.reset(token)
    line = out.getvalue()
    assert line.endswith(
        " INFO gateway.tests.s41: activated obj://a.example/x from p"
        " migration_id=m-1 object_id=obj://a.example/x peer=p tenant=t\n"
    )
    assert line.count("\n") == 1


class _Recording(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append("write")
        return super().write(text)

    def flush(self) -> None:
        self.calls.append("flush")
        super().flush()


def test_configured_handler_flushes_each_line_without_its_flush_method(
    restored_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each line is written, then its stream flushed, once; not through
    ``StreamHandler.flush`` (which takes the lock ``handle`` already holds)."""
    out = _Recording()
    monkeypatch.setattr(sys, "stderr", out)
    configure_logging("text", level=logging.INFO)
    flushes: list[object] = []
    monkeypatch.setattr(logging.StreamHandler, "flush", lambda self: flushes.append(self))
    for index in range(3):
        logging.getLogger("gateway.tests.s41").info("line %d", index)
    assert out.calls == ["write", "flush"] * 3
    assert flushes == []
    assert out.getvalue().count("\n") == 3


def test_configured_handler_hands_a_refused_line_to_handle_error(
    restored_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = _Recording()
    monkeypatch.setattr(sys, "stderr", out)
    configure_logging("text", level=logging.INFO)
    refused: list[logging.LogRecord] = []
    handler = logging.getLogger().handlers[0]
    monkeypatch.setattr(handler, "handleError", refused.append)
    logging.getLogger("gateway.tests.s41").info("count %d", "not a number")
    assert [record.msg for record in refused] == ["count %d"]
    assert out.calls == []
