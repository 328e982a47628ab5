"""Every bound on what a peer may send or make this host do, in one place.

A partner host holds valid keys and certificates and may still lie about everything it
writes. So each size, count, number and time that comes from outside is bounded by a
constant named here, and checked *before* any work is done on it (before a transfer is
verified further, before anything is written, before a cycle runs). The same bounds
apply to objects created here, so a host never makes an object that a peer (or this
host, later) would have to refuse. The table is in docs/limits.md.

Invariants this module keeps:

* **Counters can always advance.** An object's epoch goes up by one at every freeze and
  its generation by one at every cycle; both travel as protobuf ``uint64`` and are kept
  in 8-byte big-endian counters (``struct '>Q'``). An object is accepted only while both
  are below :data:`MAX_COUNTER`, so the next increment still fits; at the limit the
  increment itself is refused with :class:`~gateway.errors.LimitExceededError`, never
  left to overflow somewhere deeper (an ``OverflowError`` in a cycle would be retried
  forever). Lineage sequence numbers equal the entry's index (checked by
  :func:`gateway.lineage.verify_chain`), so they are bounded by the lineage's length,
  which the envelope size bounds far below 2^64.
* **Times leave room for arithmetic.** Every time a peer sends (issued/expires at, next
  due, lineage times) lies in [:data:`EARLIEST_TIME`, :data:`LATEST_TIME`]; intervals,
  TTLs and skews added to them are at most a few years, so no addition overflows
  ``datetime`` (year 9999) and no millisecond count is negative in a ``>Q`` counter.
* **Cycles have a sane rhythm.** A cycle interval is between :data:`MIN_CYCLE_INTERVAL`
  (the wire's resolution: less would travel as 0, "does not cycle") and
  :data:`MAX_CYCLE_INTERVAL`; an ``interval_ms`` of 2^63 or anything beyond a
  ``timedelta`` is refused before it is turned into one.
* **Strings are short and plain.** Migration ids are also store-key segments, so they
  are limited to ``[A-Za-z0-9._-]``: an id containing ``/`` could otherwise make one
  upload's key prefix a prefix of another's.

No I/O.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Final

from gateway.errors import EnvelopeTooLargeError, LimitExceededError

# --- counters ---------------------------------------------------------------------

#: Largest value of a wire ``uint64`` / a ``>Q`` store counter.
MAX_COUNTER: Final = 2**64 - 1

# --- times ------------------------------------------------------------------------

#: No time before this comes from an honest host (millisecond counters are unsigned).
EARLIEST_TIME: Final = datetime(1970, 1, 1, tzinfo=UTC)
#: No time after this: leaves ~1000 years of room before ``datetime.max`` for additions.
LATEST_TIME: Final = datetime(9000, 1, 1, tzinfo=UTC)
#: The wire carries intervals in whole milliseconds.
MIN_CYCLE_INTERVAL: Final = timedelta(milliseconds=1)
MAX_CYCLE_INTERVAL: Final = timedelta(days=366)
#: The longest a transfer may live: an offline transfer file, carried by hand, may take
#: days (gateway.handoff.offline). The settled-history retention is built on it
#: (gateway.handoff.pruning.minimum_retention).
MAX_OFFLINE_LIFETIME: Final = timedelta(days=7)

# --- sizes of peer-supplied strings and data ----------------------------------------

#: Object data carried inside a transfer envelope; larger data streams as a blob.
MAX_DATA_BYTES: Final = 4 << 20
#: ``mig-`` + 32 hex digits is what this gateway makes; room for other versions.
MAX_MIGRATION_ID_CHARS: Final = 128
#: SPIFFE ids and object ids (the same bound as :mod:`gateway.identity`).
MAX_ID_BYTES: Final = 2048
#: Tenant names are 1-63 characters (:func:`gateway.identity.validate_tenant`).
MAX_TENANT_CHARS: Final = 63
#: The reason given with an Abort, stored in the journal.
MAX_REASON_CHARS: Final = 1024
MAX_CONTENT_TYPE_CHARS: Final = 255

# --- per-peer state ---------------------------------------------------------------

#: Streamed uploads one peer may have open here at once (each holds a marker and
#: chunks in the store until it is staged or refused).
MAX_OPEN_UPLOADS_PER_PEER: Final = 4
#: The least a streamed upload's data message carries, but for its last one (none may be
#: empty): the signed size bounds the bytes, this bounds the messages, each of which costs
#: the receiver a decode and a trip to its hashing thread whatever its size. Senders send
#: 1 MiB (gateway.blobs.STREAM_PIECE_BYTES).
MIN_STREAM_PART_BYTES: Final = 64 << 10
#: Most handoffs an object may record (departures, and as many arrivals). Each costs the
#: receiver signature checks, so the count is refused before any is verified.
MAX_HANDOFFS: Final = 1024
#: Most hops a departure may count (ADR 0010 step 2): once older handoffs are archived
#: the object carries at most MAX_HANDOFFS of them, but its hop number keeps growing
#: (2**40 hops of 5 s is far beyond any deployment). Bounds a decoded integer only.
MAX_HOPS: Final = 2**40
#: Fewest handoffs (departures) a receiver accepts an object carrying once any older one
#: is archived (ADR 0010 step 2). A receiver rule, never the sender's configuration: with
#: at least two carried departures at least one is by another host, so the archived
#: custody is pinned by more than the presenter's own signature.
MIN_CARRIED_HANDOFFS: Final = 8
#: Default and bounds of ``lineage.custody_keep`` (handoffs a holder keeps carrying when
#: it compacts): twice the receivers' floor, so normal compaction never trips it.
DEFAULT_CUSTODY_KEEP: Final = 16

# --- the evaluation cycle -----------------------------------------------------------

#: Consecutive failed cycles after which an object is quarantined (no longer scheduled
#: until an operator releases it), so one bad object never costs a host a core.
CYCLE_FAILURES_BEFORE_QUARANTINE: Final = 5
#: Backoff after the first failed cycle; doubles at every further failure ...
CYCLE_BACKOFF_FIRST: Final = timedelta(milliseconds=500)
#: ... up to this.
CYCLE_BACKOFF_MAX: Final = timedelta(seconds=30)

# --- events and calls (gateway/runtime/events.py, gateway/runtime/calls.py) ----------

#: Topics one object may subscribe to (each is an index entry and a log replay here).
MAX_SUBSCRIPTIONS: Final = 16
#: Methods one object may answer.
MAX_ANSWERS: Final = 32
#: A message's data as JSON, on the in-process bus or from Dapr pub/sub.
MAX_MESSAGE_BYTES: Final = 64 << 10
#: A message id or source (CloudEvents ``id``/``source``), a type, a topic.
MAX_MESSAGE_FIELD_CHARS: Final = 256
#: A call's request data and its reply, as JSON.
MAX_CALL_REQUEST_BYTES: Final = 64 << 10
MAX_CALL_REPLY_BYTES: Final = 64 << 10
#: The longest a call waits for an object frozen by a migration.
MAX_CALL_WAIT: Final = timedelta(seconds=30)

_MIGRATION_ID = re.compile(r"[A-Za-z0-9._-]+")


def _shown(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:64] + "…")


def check_migration_id(migration_id: str) -> str:
    """A migration id a peer sent: 1..MAX chars of ``[A-Za-z0-9._-]``; raises otherwise."""
    if len(migration_id) > MAX_MIGRATION_ID_CHARS:
        raise EnvelopeTooLargeError(
            f"migration id is {len(migration_id)} characters; at most {MAX_MIGRATION_ID_CHARS}",
            hint="the peer runs an incompatible or misbehaving gateway",
        )
    if not _MIGRATION_ID.fullmatch(migration_id):
        raise LimitExceededError(
            f"migration id {_shown(migration_id)} is empty or has characters "
            "other than [A-Za-z0-9._-]",
            hint="the peer runs an incompatible or misbehaving gateway",
        )
    return migration_id


def check_text(value: str, *, limit: int, what: str) -> str:
    """``value`` if it has at most ``limit`` characters, else EnvelopeTooLargeError."""
    if len(value) > limit:
        raise EnvelopeTooLargeError(
            f"{what} is {len(value)} characters; at most {limit} accepted",
            hint="the sender runs an incompatible or misbehaving gateway",
        )
    return value


def check_id(value: str, *, what: str) -> str:
    """A host or object id: at most :data:`MAX_ID_BYTES` bytes (its syntax is checked
    where it is parsed)."""
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_ID_BYTES:
        raise EnvelopeTooLargeError(
            f"{what} is {size} bytes; at most {MAX_ID_BYTES} accepted",
            hint="the sender runs an incompatible or misbehaving gateway",
        )
    return value


def check_counter(value: int, *, what: str) -> int:
    """A counter that will be incremented later: it must be below :data:`MAX_COUNTER`."""
    if not 0 <= value < MAX_COUNTER:
        raise LimitExceededError(
            f"{what} is {value}; it must be below {MAX_COUNTER} so that it can still advance",
            hint="the object has reached a counter limit; recreate it under a new id",
        )
    return value


def next_counter(value: int, *, what: str) -> int:
    """``value + 1``, or LimitExceededError if that does not fit a ``uint64``."""
    if not 0 <= value < MAX_COUNTER:
        raise LimitExceededError(
            f"{what} is {value} and cannot be incremented (at most {MAX_COUNTER})",
            hint="the object has reached a counter limit; recreate it under a new id",
        )
    return value + 1


def check_time(moment: datetime, *, what: str) -> datetime:
    """A time within [:data:`EARLIEST_TIME`, :data:`LATEST_TIME`]."""
    if not EARLIEST_TIME <= moment <= LATEST_TIME:
        raise LimitExceededError(
            f"{what} is {moment.isoformat()}; times must lie between "
            f"{EARLIEST_TIME.year} and {LATEST_TIME.year}",
            hint="check the sender's clock; no honest gateway writes such a time",
        )
    return moment


def interval_from_millis(millis: int, *, what: str = "cycle interval") -> timedelta:
    """A wire interval (ms) as a timedelta, checked *before* the conversion (a huge value
    would overflow ``timedelta`` with an OverflowError)."""
    limit = MAX_CYCLE_INTERVAL // MIN_CYCLE_INTERVAL
    if not 0 < millis <= limit:
        raise LimitExceededError(
            f"{what} is {millis} ms; it must be 1..{limit} ms ({MAX_CYCLE_INTERVAL.days} days)",
            hint="give the object a cycle interval within the limit",
        )
    return timedelta(milliseconds=millis)


def check_interval(interval: timedelta, *, what: str = "cycle interval") -> timedelta:
    if not MIN_CYCLE_INTERVAL <= interval <= MAX_CYCLE_INTERVAL:
        raise LimitExceededError(
            f"{what} is {interval.total_seconds()} s; it must be between "
            f"{MIN_CYCLE_INTERVAL.total_seconds()} s and {MAX_CYCLE_INTERVAL.days} days",
            hint="give the object a cycle interval within the limit",
        )
    return interval


def check_inline_data(size: int, *, what: str) -> int:
    if size > MAX_DATA_BYTES:
        raise EnvelopeTooLargeError(
            f"{what} carries {size} bytes of inline data; at most {MAX_DATA_BYTES}",
            hint="larger data must be streamed as a blob (PrepareStream)",
        )
    return size


def cycle_backoff(failures: int) -> timedelta:
    """How long an object waits after its ``failures``-th consecutive failed cycle."""
    exponent = min(max(failures, 1) - 1, 16)
    delay: timedelta = CYCLE_BACKOFF_FIRST * (1 << exponent)
    return min(CYCLE_BACKOFF_MAX, delay)
