"""Log lines as text or JSON, each carrying the handoff the task is working on.

``--log-format json`` (or ``GATEWAY_LOG_FORMAT=json``, or ``observability.log_format``
in the host configuration) writes one JSON object per line to standard error:
``time``, ``level``, ``logger``, ``message``, and on every line written while a
handoff is bound (:func:`gateway.observability.bind`) its ``migration_id``,
``object_id``, ``peer`` and ``tenant``; with tracing on, also ``trace_id`` and
``span_id``, so a line leads to its trace. Text lines carry the same fields as
``key=value`` after the message.

The fields come from a context variable, not from each call site: the handoff code
logs as it always did, and every line of one migration is tagged, including those of
libraries it calls.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from gateway.errors import ConfigError
from gateway.observability import HANDOFF, HANDOFF_FIELDS, _state

FORMATS = ("text", "json")
#: Environment variable giving the log format when no flag does.
LOG_FORMAT_ENV = "GATEWAY_LOG_FORMAT"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(handoff)s"


class HandoffFields(logging.Filter):
    """Copies the bound handoff fields (and the current trace ids) onto each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = HANDOFF.get().get
        migration, obj, peer, tenant = values = (
            fields("migration_id"),
            fields("object_id"),
            fields("peer"),
            fields("tenant"),
        )
        record.migration_id, record.object_id, record.peer, record.tenant = values
        if _state.tracing:
            record.trace_id, record.span_id = _trace_ids()
        else:
            record.trace_id = record.span_id = None
        if migration and obj and peer and tenant:
            # A migration's lines have all four: one f-string, not a generator joined
            # (the same text; the generator was half of the filter's cost).
            record.handoff = (
                f" migration_id={migration} object_id={obj} peer={peer} tenant={tenant}"
            )
        else:
            record.handoff = "".join(
                f" {name}={value}"
                for name, value in zip(HANDOFF_FIELDS, values, strict=True)
                if value
            )
        return True


class _SecondTimes(logging.Formatter):
    """``formatTime`` that formats each second's date and time once.

    The base class's ``asctime`` is ``time.strftime`` of ``converter(created)``, which
    depends on the whole second only (``converter`` rounds ``created`` down, and no
    ``strftime`` field is finer), then the milliseconds when no ``datefmt`` is given.
    The same, with the strftime of the last (second, datefmt) remembered: the lines of
    one busy second share it (strftime and localtime were a tenth of a line's cost)."""

    #: ((second, datefmt), its strftime), replaced whole (never half of it seen).
    _last_time: tuple[tuple[int, str | None], str] | None = None

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        key = (int(record.created), datefmt)
        last = self._last_time
        if last is None or last[0] != key:
            when = self.converter(record.created)
            last = self._last_time = (key, time.strftime(datefmt or self.default_time_format, when))
        if datefmt or not self.default_msec_format:
            return last[1]
        return self.default_msec_format % (last[1], record.msecs)


class _TextLines(_SecondTimes):
    """The text format, :data:`TEXT_FORMAT`, written by one f-string over the five fields
    it names rather than by ``%`` over the record's whole ``__dict__`` (through the
    style object, after asking it whether the format uses the time: it does). ``%s`` and
    ``!s`` both give ``str(value)``, so a line is the same text. A record without the
    fields (no :class:`HandoffFields` on the handler) goes the base class's way, which
    refuses it as it always did."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def usesTime(self) -> bool:
        return True

    def formatMessage(self, record: logging.LogRecord) -> str:
        try:
            return (
                f"{record.asctime!s} {record.levelname!s} {record.name!s}: "
                f"{record.message!s}{record.handoff!s}"  # type: ignore[attr-defined]
            )
        except AttributeError:
            return super().formatMessage(record)


class _Lines(logging.StreamHandler):  # type: ignore[type-arg]
    """``StreamHandler`` whose ``emit`` flushes its stream itself: the base class calls
    ``self.flush()``, which takes the handler's lock again (``handle`` already holds it
    around ``emit``) and asks ``hasattr(stream, "flush")`` for every line; a tenth of a
    text line's cost. The same write, then the same flush, with errors handled as the
    base class handles them (a stream without ``flush`` is one such error)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = self.stream
            stream.write(self.format(record) + self.terminator)
            stream.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def _trace_ids() -> tuple[str | None, str | None]:
    if not _state.tracing:
        return None, None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None, None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def _json_formatter() -> logging.Formatter:
    from pythonjsonlogger.json import JsonFormatter

    class Formatter(_SecondTimes, JsonFormatter):
        def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
            # Absent ids are left out rather than written as null: a line outside a
            # handoff simply has none.
            # ("handoff" is the text format's rendering of the same fields.)
            return {k: v for k, v in log_data.items() if v is not None and k != "handoff"}

    return Formatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s "
        "%(migration_id)s %(object_id)s %(peer)s %(tenant)s %(trace_id)s %(span_id)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        datefmt="%Y-%m-%dT%H:%M:%S%z",
    )


def log_format(flag: str | None, configured: str | None = None) -> str:
    """The format to use: the flag, else $GATEWAY_LOG_FORMAT, else the config, else text."""
    chosen = flag or os.environ.get(LOG_FORMAT_ENV) or configured or "text"
    if chosen not in FORMATS:
        raise ConfigError(
            f"log format {chosen!r} is not one of {', '.join(FORMATS)}"
            + ("" if flag else f" (from ${LOG_FORMAT_ENV} or the configuration)"),
            hint="use --log-format text or --log-format json",
        )
    return chosen


def configure_logging(fmt: str, *, level: int) -> None:
    """Send log records at ``level`` and above to standard error in ``fmt``.

    Neither format shows where a line was logged from, nor its thread or process: a
    record then looks none of them up (walking the caller's frames, naming the thread
    and the process were a third of a line's cost; the logging HOWTO's "Optimization").
    A line carries the same text as before."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = _Lines(sys.stderr)
    handler.addFilter(HandoffFields())
    handler.setFormatter(_json_formatter() if fmt == "json" else _TextLines())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
