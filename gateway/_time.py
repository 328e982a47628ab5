"""Time as the gateway writes and reads it: timezone-aware UTC, millisecond precision.

Everything signed carries times in one textual form (RFC 3339, UTC, milliseconds,
``Z``), so that re-encoding a parsed time gives back the same bytes.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Protocol

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RFC3339_MS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


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
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_time(text: str) -> datetime:
    """The inverse of :func:`format_time`; only that exact form is accepted."""
    if not _RFC3339_MS.fullmatch(text):
        raise ValueError(f"time {text!r} is not of the form 2026-11-21T20:52:45.123Z")
    return datetime.strptime(text[:-1], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC)


def to_millis(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)
