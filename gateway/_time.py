"""Time as the gateway writes and reads it: timezone-aware UTC, millisecond precision.

Everything signed carries times in one textual form (RFC 3339, UTC, milliseconds,
``Z``, a four-digit zero-padded year), so that re-encoding a parsed time gives back the
same bytes. :func:`parse_time` accepts only text that :func:`format_time` gives back
unchanged: a time with two spellings would give one signed value two hashes.

Years 0001-9999 are the ones :class:`datetime` holds; text outside them (``0000``, or
a date that does not exist) is refused with a :class:`ValueError` that every decoder
turns into its own :class:`~gateway.errors.GatewayError` naming the field.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Protocol

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RFC3339_MS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z", re.ASCII)


class Clock(Protocol):
    """Where the current time comes from; tests pass a fixed or stepping clock."""

    def now(self) -> datetime: ...


class SystemClock:
    """The machine's clock, in UTC, truncated to milliseconds."""

    def now(self) -> datetime:
        return truncate(datetime.now(UTC))


def truncate(moment: datetime) -> datetime:
    """Drop sub-millisecond precision so that a time survives a format/parse round trip."""
    return moment.replace(microsecond=moment.microsecond - moment.microsecond % 1000)


def format_time(moment: datetime) -> str:
    """``2026-11-21T20:52:45.123Z``; refuses naive datetimes, which have no zone to trust."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: every time the gateway handles is timezone-aware UTC")
    try:
        moment = moment.astimezone(UTC)
    except OverflowError as exc:  # 9999-12-31T23:00-02:00 is after the last UTC year
        raise ValueError(f"{moment.isoformat()} is outside the years 0001-9999 in UTC") from exc
    # Not strftime("%Y"): on glibc it writes year 26 as "26", which parse_time (rightly)
    # does not read back, so a time before year 1000 would not round-trip.
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T"
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}."
        f"{moment.microsecond // 1000:03d}Z"
    )


def parse_time(text: str) -> datetime:
    """The inverse of :func:`format_time`; only that exact form is accepted."""
    if not isinstance(text, str) or not _RFC3339_MS.fullmatch(text):
        raise ValueError(f"time {text!r:.64} is not of the form 2026-11-21T20:52:45.123Z")
    try:
        moment = datetime(
            int(text[0:4]),
            int(text[5:7]),
            int(text[8:10]),
            int(text[11:13]),
            int(text[14:16]),
            int(text[17:19]),
            int(text[20:23]) * 1000,
            tzinfo=UTC,
        )
    except ValueError as exc:  # year 0000, month 13, February 30th, second 60 ...
        raise ValueError(f"time {text!r} is not a date and time in 0001-9999: {exc}") from exc
    # Kept as a check, not a consequence: the signed bytes are only ever what
    # format_time writes, whatever parsing above learns to accept.
    if format_time(moment) != text:
        raise ValueError(f"time {text!r} is not in canonical form ({format_time(moment)})")
    return moment


def to_millis(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)
