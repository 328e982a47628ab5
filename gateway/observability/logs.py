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
from typing import Any

from gateway.errors import ConfigError
from gateway.observability import HANDOFF, HANDOFF_FIELDS

FORMATS = ("text", "json")
#: Environment variable giving the log format when no flag does.
LOG_FORMAT_ENV = "GATEWAY_LOG_FORMAT"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(handoff)s"


class HandoffFields(logging.Filter):
    """Copies the bound handoff fields (and the current trace ids) onto each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = HANDOFF.get()
        for name in HANDOFF_FIELDS:
            setattr(record, name, fields.get(name))
        trace_id, span_id = _trace_ids()
        record.trace_id = trace_id
        record.span_id = span_id
        record.handoff = "".join(
            f" {name}={fields[name]}" for name in HANDOFF_FIELDS if fields.get(name)
        )
        return True


def _trace_ids() -> tuple[str | None, str | None]:
    from gateway.observability import _state

    if not _state.tracing:
        return None, None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None, None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def _json_formatter() -> logging.Formatter:
    from pythonjsonlogger.json import JsonFormatter

    class Formatter(JsonFormatter):
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
    """Send log records at ``level`` and above to standard error in ``fmt``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(HandoffFields())
    handler.setFormatter(_json_formatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
