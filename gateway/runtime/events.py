"""Event-triggered wake: messages on the topics an object subscribes to wake its
``on: message`` rules, which see the message as a CloudEvent (``event`` in CEL).

The host's bus is durable and lives in the host's own store; messages come in from the
in-process publish path (``gateway publish``, :meth:`Events.publish`) on the embedded
default, or from Dapr pub/sub through the app callback (gateway/runtime/appcallback.py),
and both go through :meth:`Events.ingest`. Store layout (host-local, never transferred)::

    bus/<topic digest>/<message digest>              the message, kept BUS_RETENTION
    busat/<topic digest>/<ms>-<message digest>       the same message by time (value: its
                                                     bus key), written with it: an
                                                     arrival's replay lists from its freeze
    subs/<topic digest>/<tenant>/<object digest>     who here subscribes (value: object id)
    inbox/<tenant>/<object digest>/<ms>-<msg digest> a wake to deliver (value: its bus key)
    seen/<tenant>/<object digest>/<message digest>   a message this object evaluated
    fanout/<topic digest>/<message digest>           a message with more subscribers here
                                                     than one page: the message and the
                                                     last subscriber queued (the cursor)

Invariants this module keeps:

* **At most once per message id.** A message is identified by its CloudEvents
  ``(source, id)``. Its wake commits the object, the ``seen`` record (written only if
  absent) and the removal of the inbox entry in one conditional transaction, so a
  redelivered message (the same id again, at-least-once) finds the record and is dropped:
  its rules are evaluated at most once on this host. An arrival also skips the messages
  its lineage already records as woken (on the host it came from). ``seen`` records are
  kept :data:`SEEN_RETENTION`, longer than the bus keeps messages (:data:`BUS_RETENTION`),
  and pruned after that, so the record is bounded by time and message rate.
* **Admission first.** A subscription is the authority ``pubsub:<topic>`` ``subscribe``,
  checked against the object's effective authority here (its grant chain within this
  host's policy) when the object becomes active, and recorded in the lineage as admitted
  or denied; a denied subscription is not indexed, so its messages never wake the object.
  Each wake is checked again (grants expire).
* **Subscriptions follow the object.** When an object becomes ACTIVE here (created,
  arrived, resumed after an aborted migration) its subscriptions are taken up: indexed,
  and, after an arrival, every message this host's bus received since the object froze
  at its previous host (less the clock skew) is queued for it. From its freeze on, the
  object no longer wakes at the source: wakes arriving there wait (in case the migration
  aborts and it resumes), and are dropped, with its subscription, once it has moved. So a
  message published during the blackout is delivered after activation at the
  destination, provided it reached the destination's bus (on Dapr every host subscribing
  to the topic gets it; on the embedded bus, publish at the destination).
* **Every subscriber is woken, a page at a time.** A message's wakes are queued
  :data:`SUBSCRIBERS_PER_PAGE` subscribers a transaction: the first page with the message
  itself; if the page was full, a ``fanout/`` record (the message and the last subscriber
  queued) goes in the same transaction, and each pass of the events loop queues the next
  page and advances the record (or deletes it after a short page) in one conditional
  transaction. A crash between pages resumes after the last committed one: no subscriber
  is skipped, none is queued twice, and two processes advancing the same record cannot
  both commit a page. (The subscriber index is per host across tenants, so a cap on
  subscribers would let one tenant's objects refuse another's subscription: ADR 0005.)
* **Bounded.** Message data is at most :data:`~gateway.limits.MAX_MESSAGE_BYTES` of
  JSON, ids, sources, types and topics at most
  :data:`~gateway.limits.MAX_MESSAGE_FIELD_CHARS`; every listing has a limit, and every
  transaction queues at most one page of wakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

from gateway import wire
from gateway._crash import crash_point
from gateway._decode import load_json
from gateway._time import Clock, format_time, parse_time
from gateway.errors import (
    BusFullError,
    ConcurrencyError,
    ConfigError,
    GatewayError,
    LimitExceededError,
    RuleError,
    StoreError,
)
from gateway.handoff.context import HostContext
from gateway.handoff.journal import put_object
from gateway.limits import MAX_MESSAGE_BYTES, MAX_MESSAGE_FIELD_CHARS
from gateway.lineage import EntryKind
from gateway.model import GovernedObject, LifecycleState
from gateway.rules import check_data
from gateway.runtime.cycle import CycleRunner, Wake
from gateway.runtime.outbox import outbox_puts
from gateway.stores import (
    DELETE_CHUNK,
    Delete,
    Expect,
    Operation,
    PrefixWalk,
    Put,
    StateStore,
    delete_unchanged,
)

log = logging.getLogger(__name__)

_T = TypeVar("_T")

BUS = "bus/"
SUBS = "subs/"
INBOX = "inbox/"
SEEN = "seen/"
FAN_OUT = "fanout/"
BUS_AT = "busat/"

#: How long the bus keeps a message for objects that arrive later (the longest
#: migration blackout whose messages are still delivered after it).
BUS_RETENTION = timedelta(hours=1)
#: What the bus takes of one topic per BUS_RETENTION, in messages and in bytes, and of
#: all topics together (BUS_MESSAGES, BUS_BYTES): token buckets, full at start and
#: refilled evenly over the retention (:class:`_Allowance`). The bus keeps an hour of
#: messages for objects that arrive later, so without these its size was set by the
#: publishers' rate alone (an hour of whatever the store could ingest, up to 64 KiB a
#: message). A new message over them is refused as "retry later" (BusFullError): Dapr's
#: app callback answers RETRY, and the broker holds the message meanwhile. A topic then
#: holds at most about twice its allowance (a full bucket and an hour's refill), the bus
#: about twice its own, per process.
BUS_MESSAGES_PER_TOPIC = 20_000
BUS_BYTES_PER_TOPIC = 256 << 20
BUS_MESSAGES = 100_000
BUS_BYTES = 1 << 30
#: Topic buckets held before the full ones are forgotten (then again at twice as many).
ALLOWANCE_SWEEP = 1024
#: How long a message id is remembered per object; longer than BUS_RETENTION, so a
#: message replayed from the bus is always recognised.
SEEN_RETENTION = timedelta(hours=24)
#: Subscribers one transaction queues a message's wakes for. A message with more
#: subscribers here is queued a page at a time (Events.fan_out_once): it used to be
#: queued for the first 1000 only, and the others never heard of it.
SUBSCRIBERS_PER_PAGE = 1000
#: Messages whose queuing a fan-out pass advances, by one page each.
FAN_OUT_BATCH = 8
#: Wakes delivered per pass, and records looked at per prune pass (and per page of a
#: replay).
DELIVERY_BATCH = 256
PRUNE_BATCH = 1000
#: Most wakes an arrival's replay queues per topic: they go into one transaction, with
#: the subscriptions it takes up.
MAX_REPLAYED_PER_TOPIC = 1000
#: Most pages of PRUNE_BATCH bus messages an arrival's replay reads per topic: the bus
#: keeps an hour of each topic, and a take-up runs on every arrival and, at start, for
#: every arrived object, so its reads must not grow with how busy a topic is. Ten pages
#: cover a topic's hour up to about 2.8 messages a second; past that the replay says
#: what it did not read.
MAX_REPLAY_PAGES = 10
#: Attempts at one wake's conditional write while cycles or calls write the object.
WAKE_ATTEMPTS = 8
#: Seconds before a wake held for a frozen or staged object is looked at again.
HELD_RETRY = 0.5
#: Prune passes per sweep of the bus's values for messages with no time index entry
#: (damaged, or put by a replica of an earlier version): every other pass reads only
#: the index and the messages it deletes.
ORPHAN_SWEEP_EVERY = 10
#: Seconds between prune passes.
RECONCILE_SECONDS = 60.0
#: Seconds to the next prune pass after one that found at least half a page expired:
#: a page a minute would never catch up with a prefix that gains more than that.
PRUNE_CATCH_UP_SECONDS = 1.0
#: Seconds after an activation before its subscriptions are taken up once more.
RECHECK_SECONDS = 5.0

_TOPIC = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)+")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _object_digest(object_id: str) -> str:
    # Object ids contain '/': a digest keeps one object's keys from prefixing another's.
    return _digest(object_id)


def check_topic(topic: str) -> str:
    if len(topic) > MAX_MESSAGE_FIELD_CHARS or not _TOPIC.fullmatch(topic):
        raise ConfigError(
            f"topic {topic[:80]!r} is not of the form <name>/<name>",
            hint="e.g. orders/cancelled",
        )
    return topic


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """One message on a topic, as the CloudEvent rules see."""

    topic: str
    id: str
    source: str
    type: str
    data: Any  #: JSON value
    time: datetime  #: when it was sent (CloudEvents ``time``; else when received)
    received: datetime  #: when this host's bus took it
    subject: str = ""

    @property
    def digest(self) -> str:
        """Identity for de-duplication: CloudEvents says (source, id) is unique."""
        return _digest(f"{self.source}\0{self.id}")

    def cloudevent(self) -> dict[str, Any]:
        event = {
            "specversion": "1.0",
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "topic": self.topic,
            "time": format_time(self.time),
            "datacontenttype": "application/json",
            "data": self.data,
        }
        if self.subject:
            event["subject"] = self.subject
        return event

    def encode(self) -> bytes:
        document = {**self.cloudevent(), "received": format_time(self.received)}
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes, *, what: str) -> Message:
        document = load_json(raw, error=StoreError, what=what)
        try:
            return cls(
                topic=document["topic"],
                id=document["id"],
                source=document["source"],
                type=document["type"],
                data=document["data"],
                time=parse_time(document["time"]),
                received=parse_time(document["received"]),
                subject=document.get("subject", ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{what} is damaged: {exc!r:.200}") from exc


def new_message(
    topic: str,
    *,
    data: Any,
    message_id: str | None,
    source: str,
    kind: str,
    received: datetime,
    sent: datetime | None = None,
    subject: str = "",
) -> Message:
    """A message checked against the bounds, from outside (a CLI, Dapr)."""
    check_topic(topic)
    message_id = message_id or uuid.uuid4().hex
    for value, what in (
        (message_id, "id"),
        (source, "source"),
        (kind, "type"),
        (subject, "subject"),
    ):
        if len(value) > MAX_MESSAGE_FIELD_CHARS or (what != "subject" and not value):
            raise LimitExceededError(
                f"the message {what} is {len(value)} characters; 1 to {MAX_MESSAGE_FIELD_CHARS}",
                hint="CloudEvents ids, sources and types are short strings",
            )
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            # A lone surrogate (argv bytes that were not UTF-8): the bus record written
            # with it would not decode again, so the message would be dropped unseen.
            raise ConfigError(
                f"the message {what} is not Unicode text (a lone surrogate at {exc.start})",
                hint="CloudEvents ids, sources and types are UTF-8 text",
            ) from exc
    try:
        # allow_nan=False: NaN and Infinity are not JSON; the bus record holding them
        # would not decode again (gateway._decode), and the message would be dropped.
        size = len(json.dumps(data, separators=(",", ":"), allow_nan=False))
    except (TypeError, ValueError, RecursionError) as exc:
        raise ConfigError(
            f"the message data is not JSON: {exc!s:.200}",
            hint="send JSON values (no NaN or Infinity)",
        ) from exc
    if size > MAX_MESSAGE_BYTES:
        raise LimitExceededError(
            f"the message data is {size} bytes of JSON; at most {MAX_MESSAGE_BYTES}",
            hint="send a reference to large content, not the content",
        )
    try:
        check_data(data)
    except RuleError as exc:
        raise LimitExceededError(f"the message data: {exc.reason}", hint=exc.hint) from exc
    return Message(
        topic=topic,
        id=message_id,
        source=source,
        type=kind,
        data=data,
        time=sent or received,
        received=received,
        subject=subject,
    )


def _subs_prefix(topic: str) -> str:
    return f"{SUBS}{_digest(topic)}/"


def _subs_key(topic: str, tenant: str, object_id: str) -> str:
    return f"{_subs_prefix(topic)}{tenant}/{_object_digest(object_id)}"


def _inbox_prefix(tenant: str, object_id: str) -> str:
    return f"{INBOX}{tenant}/{_object_digest(object_id)}/"


def _inbox_key(tenant: str, object_id: str, message: Message) -> str:
    millis = int(message.received.timestamp() * 1000)
    return _inbox_key_at(tenant, object_id, millis, message.digest)


def _inbox_key_at(tenant: str, object_id: str, millis: int, digest: str) -> str:
    return f"{_inbox_prefix(tenant, object_id)}{millis:013d}-{digest}"


def _seen_key(tenant: str, object_id: str, message: Message) -> str:
    return _seen_key_of(tenant, object_id, message.digest)


def _seen_key_of(tenant: str, object_id: str, digest: str) -> str:
    return f"{SEEN}{tenant}/{_object_digest(object_id)}/{digest}"


def _bus_key(message: Message) -> str:
    return f"{BUS}{_digest(message.topic)}/{message.digest}"


def _bus_at_key(message: Message) -> str:
    millis = int(message.received.timestamp() * 1000)
    return f"{BUS_AT}{_digest(message.topic)}/{millis:013d}-{message.digest}"


def _bus_puts(message: Message) -> list[Operation]:
    """The message on the bus (once: a redelivery fails the transaction) and in the
    bus's time index."""
    bus = _bus_key(message)
    return [
        Put(key=bus, value=message.encode(), etag=Expect.ABSENT),
        Put(key=_bus_at_key(message), value=bus.encode(), etag=Expect.ANY),
    ]


def _timed(key: str) -> tuple[int, str] | None:
    """The milliseconds and message digest a ``busat/`` key names (None if damaged)."""
    millis, _, digest = key.rpartition("/")[2].partition("-")
    if len(millis) != 13 or not millis.isdigit() or len(digest) != 32:
        return None
    return int(millis), digest


def _bus_key_of(at_key: str) -> str | None:
    """The bus key a ``busat/`` key's message lives under (None if the key is damaged)."""
    topic, _, timed = at_key.removeprefix(BUS_AT).partition("/")
    digest = timed.partition("-")[2]
    if not topic or len(digest) != 32:
        return None
    return f"{BUS}{topic}/{digest}"


def _expired(key: str, value: bytes, field: str, retention: timedelta, now: datetime) -> bool:
    """Whether a stored record whose JSON names its time in ``field`` is older than
    ``retention`` (a damaged one is: there is nothing to keep it for)."""
    try:
        document = load_json(value, error=StoreError, what=key)
        at = parse_time(document[field])
    except (GatewayError, KeyError, TypeError, ValueError):
        return True
    return now - at >= retention


def _fan_out_key(message: Message) -> str:
    return f"{FAN_OUT}{_digest(message.topic)}/{message.digest}"


def _encode_fan_out(message: Message, after: str) -> bytes:
    return json.dumps(
        {"message": message.encode().decode(), "after": after}, separators=(",", ":")
    ).encode()


def _decode_fan_out(raw: bytes, key: str) -> tuple[Message, str]:
    """The message of a fan-out record and the last subscriber key queued for it."""
    document = load_json(raw, error=StoreError, what=f"fan-out record {key}")
    try:
        message = Message.decode(document["message"].encode(), what=f"fan-out record {key}")
        after = document["after"]
    except (KeyError, TypeError, AttributeError) as exc:
        raise StoreError(f"fan-out record {key} is damaged: {exc!r:.200}") from exc
    if not isinstance(after, str) or not after.startswith(_subs_prefix(message.topic)):
        raise StoreError(f"fan-out record {key} is damaged: its cursor is not a subscriber")
    return message, after


def _wrap(tenant: str, object_id: str, message: Message) -> bytes:
    """A wake: whom it wakes, and where the bus keeps its message. Not a copy of the
    message: a page of 1,000 wakes of a 64 KiB message carrying copies was a 64 MB
    transaction (more than a Dapr sidecar accepts in one), and an arrival's replay the
    same. The bus entry is written with the first page, and kept BUS_RETENTION."""
    return _wake_value(tenant, object_id, _bus_key(message))


def _wake_value(tenant: str, object_id: str, bus_key: str) -> bytes:
    return json.dumps(
        {"tenant": tenant, "object_id": object_id, "bus": bus_key}, separators=(",", ":")
    ).encode()


def _unwrap(raw: bytes, key: str) -> tuple[str, str, Message | str]:
    """A wake's tenant, object id, and its message's bus key (or, in a wake written by
    an earlier version, the message itself)."""
    document = load_json(raw, error=StoreError, what=f"inbox entry {key}")
    try:
        tenant, object_id = document["tenant"], document["object_id"]
        if not isinstance(tenant, str) or not isinstance(object_id, str):
            raise TypeError("its tenant and object id are not text")
        if "bus" not in document:
            message = Message.decode(document["message"].encode(), what=f"inbox entry {key}")
            return tenant, object_id, message
        bus = document["bus"]
    except (KeyError, TypeError, AttributeError) as exc:
        raise StoreError(f"inbox entry {key} is damaged: {exc!r:.200}") from exc
    # The wake's key ends with its message's digest, and so does the message's bus key.
    if (
        not isinstance(bus, str)
        or not bus.startswith(BUS)
        or not key.endswith("-" + bus.rpartition("/")[2])
    ):
        raise StoreError(f"inbox entry {key} is damaged: its bus key is not its message's")
    return tenant, object_id, bus


class _Allowance:
    """What the bus may still take now, per topic and in all: token buckets of messages
    and bytes, refilled evenly over BUS_RETENTION (see :data:`BUS_MESSAGES_PER_TOPIC`).
    A topic's bucket is forgotten once full again (it then says nothing a new one would
    not), so the buckets held are those of topics that published within the retention."""

    __slots__ = ("_bus", "_sweep_at", "_topics")

    def __init__(self) -> None:
        #: topic -> [messages left, bytes left, as of (POSIX seconds)]
        self._topics: dict[str, list[float]] = {}
        self._bus: list[float] | None = None
        self._sweep_at = ALLOWANCE_SWEEP

    @staticmethod
    def _level(bucket: list[float] | None, at: float, messages: int, size: int) -> list[float]:
        if bucket is None:
            return [float(messages), float(size), at]
        share = max(0.0, at - bucket[2]) / BUS_RETENTION.total_seconds()
        return [
            min(float(messages), bucket[0] + share * messages),
            min(float(size), bucket[1] + share * size),
            at,
        ]

    def _buckets(self, topic: str, at: float) -> list[tuple[str, list[float], int, int]]:
        """(what it bounds, its level now, its messages, its bytes): the topic's, the bus's."""
        per_topic = (BUS_MESSAGES_PER_TOPIC, BUS_BYTES_PER_TOPIC)
        in_all = (BUS_MESSAGES, BUS_BYTES)
        return [
            (f"topic {topic}", self._level(self._topics.get(topic), at, *per_topic), *per_topic),
            ("this host's bus", self._level(self._bus, at, *in_all), *in_all),
        ]

    def refusal(self, topic: str, size: int, at: float) -> str | None:
        """Why a new message of ``size`` bytes on ``topic`` is refused now, or None."""
        per = f"per {BUS_RETENTION.total_seconds() / 60:.0f} minutes"
        for name, level, messages, most in self._buckets(topic, at):
            if level[0] < 1:
                return f"{name} took its {messages} messages {per}"
            if level[1] < size:
                return f"{name} took its {most} bytes {per}"
        return None

    def give_back(self, topic: str, size: int, at: float) -> None:
        """What :meth:`take` took for a message that was not kept after all (no level
        rises past its bucket's size)."""
        (_, mine, messages, most), (_, everyone, all_messages, all_most) = self._buckets(topic, at)
        for level, top, bytes_top in ((mine, messages, most), (everyone, all_messages, all_most)):
            level[0] = min(float(top), level[0] + 1)
            level[1] = min(float(bytes_top), level[1] + size)
        self._topics[topic] = mine
        self._bus = everyone

    def take(self, topic: str, size: int, at: float) -> None:
        """A new message of ``size`` bytes on ``topic`` is being kept."""
        (_, mine, _, _), (_, everyone, _, _) = self._buckets(topic, at)
        for level in (mine, everyone):
            level[0] -= 1
            level[1] -= size
        self._topics[topic] = mine
        self._bus = everyone
        if len(self._topics) >= self._sweep_at:
            full = [
                name
                for name, bucket in self._topics.items()
                if self._level(bucket, at, BUS_MESSAGES_PER_TOPIC, BUS_BYTES_PER_TOPIC)
                == [BUS_MESSAGES_PER_TOPIC, BUS_BYTES_PER_TOPIC, at]
            ]
            for name in full:
                del self._topics[name]
            self._sweep_at = max(ALLOWANCE_SWEEP, 2 * len(self._topics))


class WakeResult:
    EVALUATED = "evaluated"
    DUPLICATE = "duplicate"  #: this message id was evaluated already
    HELD = "held"  #: the object is frozen or staged here: delivered once it is active
    DROPPED = "dropped"  #: the object moved away, left, or no longer subscribes


class Events:
    """The bus of one host and the wakes it delivers."""

    def __init__(self, context: HostContext, runner: CycleRunner, *, clock: Clock) -> None:
        self.ctx = context
        self.runner = runner
        self.clock = clock
        self._held_until: dict[str, float] = {}
        self._recheck: dict[tuple[str, str], float] = {}
        self._wakeup = asyncio.Event()
        # Each pass looks at a bounded page; the walks make successive passes reach every
        # record, not only the first ones of each prefix (see PrefixWalk).
        self._pruning = {prefix: PrefixWalk(prefix) for prefix in (BUS, SEEN, BUS_AT)}
        self._delivering = PrefixWalk(INBOX)
        self._prune_passes = 0
        self._allowance = _Allowance()

    @property
    def store(self) -> StateStore:
        return self.ctx.journal.store

    # --- in ----------------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        *,
        data: Any,
        message_id: str | None = None,
        source: str | None = None,
        kind: str = "gateway.message",
    ) -> Message:
        """The in-process publish path: put a message on this host's bus."""
        now = self.clock.now()
        message = new_message(
            topic,
            data=data,
            message_id=message_id,
            source=source or self.ctx.host,
            kind=kind,
            received=now,
        )
        await self.ingest(message)
        return message

    async def ingest(self, message: Message) -> bool:
        """Keep ``message`` on the bus and queue a wake for the first page of subscribers
        here, in one transaction, with a ``fanout/`` record when the page was full (the
        events loop queues the rest, see :meth:`fan_out_once`). False if the bus holds
        it already (a redelivery). :class:`BusFullError` if the bus took its allowance
        (see :data:`BUS_MESSAGES_PER_TOPIC`): nothing is kept; retry later."""
        operations = _bus_puts(message)
        size = len(cast(Put, operations[0]).value)
        at = self.clock.now().timestamp()
        refusal = self._allowance.refusal(message.topic, size, at)
        if refusal is not None:
            if await self.store.get(_bus_key(message)) is not None:
                return False  # a redelivery costs no allowance
            raise BusFullError(f"message {message.id[:64]!r}: {refusal}; retry later")
        # Taken before the first store call, so that deliveries arriving together see
        # each other's share (checked before and taken after the calls, six messages
        # handed over at once by a real daprd were all kept with an allowance of 3);
        # given back below when the message is not kept after all.
        self._allowance.take(message.topic, size, at)
        kept = False
        try:
            keys = await self.store.list(_subs_prefix(message.topic), limit=SUBSCRIBERS_PER_PAGE)
            operations.extend(await self._wakes(message, keys))
            if len(keys) >= SUBSCRIBERS_PER_PAGE:
                operations.append(
                    Put(
                        key=_fan_out_key(message),
                        value=_encode_fan_out(message, keys[-1]),
                        etag=Expect.ABSENT,
                    )
                )
            try:
                await self.store.transact(operations)
            except ConcurrencyError:
                log.info("message %s on %s: already on the bus", message.id, message.topic)
                return False
            kept = True
        finally:
            if not kept:
                self._allowance.give_back(message.topic, size, at)
        self._wakeup.set()
        return True

    async def _wakes(self, message: Message, keys: list[str]) -> list[Operation]:
        """The inbox entries that queue ``message`` for the subscribers at ``keys`` (one
        page of the topic's subscriber index; a key gone meanwhile is skipped). Putting
        one again is harmless: same key, same value, and ``seen`` stops a second
        evaluation."""
        subscribers = await self.store.get_many(keys)
        prefix = _subs_prefix(message.topic)
        operations: list[Operation] = []
        for key in keys:
            item = subscribers.get(key)
            if item is None:
                continue
            tenant = key.removeprefix(prefix).split("/", 1)[0]
            object_id = item.value.decode("utf-8", "replace")
            operations.append(
                Put(
                    key=_inbox_key(tenant, object_id, message),
                    value=_wrap(tenant, object_id, message),
                    etag=Expect.ANY,
                )
            )
        return operations

    async def fan_out_once(self) -> int:
        """Queue the next page of wakes of up to :data:`FAN_OUT_BATCH` messages that have
        more subscribers here than one page; returns how many wakes were queued.

        Each page goes in one transaction with the record's advance to its last
        subscriber (or the record's deletion, after a short page: the last one),
        conditional on the record's ETag: a crash leaves the cursor at the last page
        committed, and of two processes reading the same cursor only one commits."""
        queued = 0
        more = False
        listed = await self.store.list(FAN_OUT, limit=FAN_OUT_BATCH)
        records = await self.store.get_many(listed) if listed else {}
        for key in listed:
            item = records.get(key)
            if item is None:
                continue
            try:
                message, after = _decode_fan_out(item.value, key)
            except StoreError as exc:
                log.warning("dropping %s; its remaining subscribers are not woken", exc)
                with contextlib.suppress(ConcurrencyError):
                    await self.store.delete(key, etag=item.etag)
                continue
            keys = await self.store.list(
                _subs_prefix(message.topic), limit=SUBSCRIBERS_PER_PAGE, start_after=after
            )
            operations = await self._wakes(message, keys)
            wakes = len(operations)
            if len(keys) >= SUBSCRIBERS_PER_PAGE:
                value = _encode_fan_out(message, keys[-1])
                operations.append(Put(key=key, value=value, etag=item.etag))
            else:
                operations.append(Delete(key=key, etag=item.etag))
            try:
                await self.store.transact(operations)
            except ConcurrencyError:
                continue  # another process queued this page: the next pass reads it again
            queued += wakes
            more = more or len(keys) >= SUBSCRIBERS_PER_PAGE
        if queued or more:
            self._wakeup.set()  # deliver them, and come back for the pages left at once
        return queued

    # --- subscriptions follow the object -----------------------------------------------

    async def take_up(self, tenant: str, object_id: str) -> None:
        """An object became ACTIVE here: admit and index its subscriptions, record that,
        and queue what the bus received since it froze at its previous host."""
        loaded = await self.ctx.journal.object(tenant, object_id)
        if loaded is None or loaded.value.state is not LifecycleState.ACTIVE:
            return
        obj = loaded.value
        now = self.clock.now()
        authority = obj.authority_at(now)
        recorded = _subscription_entries_since_activation(obj)
        changed = obj
        operations: list[Operation] = []
        admitted: list[str] = []
        for topic in obj.subscriptions:
            resource = f"pubsub:{topic}"
            key = _subs_key(topic, tenant, object_id)
            if authority.permits(resource, "subscribe"):
                admitted.append(topic)
                operations.append(Put(key=key, value=object_id.encode(), etag=Expect.ANY))
                detail = f"subscribe {resource}"
                if detail not in recorded:
                    changed = changed.record(
                        EntryKind.ACTION_ADMITTED, host=self.ctx.host, at=now, detail=detail
                    )
            else:
                operations.append(Delete(key=key, etag=Expect.ANY))
                detail = f"subscribe {resource}: denied, {why_withheld(self.ctx, obj, resource, 'subscribe', now)}"
                if not any(r.startswith(f"subscribe {resource}:") for r in recorded):
                    changed = changed.record(
                        EntryKind.ACTION_DENIED, host=self.ctx.host, at=now, detail=detail
                    )
        operations.extend(await self._replay(obj, admitted))
        if changed is not obj:
            operations.append(put_object(tenant, changed, loaded.etag))
        if not operations:
            return
        try:
            await self.store.transact(operations)
        except ConcurrencyError:
            # The object changed meanwhile (a cycle): the next reconciliation does this again.
            log.info("subscriptions of %s: the object changed; taken up later", object_id)
            return
        self._wakeup.set()

    async def _replay(self, obj: GovernedObject, topics: list[str]) -> list[Operation]:
        """Wakes for the messages an arrived object missed during its blackout.

        The bus's time index (``busat/``) is listed from the freeze (less the clock
        skew), so a replay reads the blackout's keys only, and no message: the keys name
        each message's time and digest, which is all a wake needs. (It used to read every
        message the bus kept on the topic, up to 10,000 of up to 64 KiB, on every
        arrival, to find the blackout's by their time.) At most MAX_REPLAY_PAGES pages of
        PRUNE_BATCH keys and MAX_REPLAYED_PER_TOPIC wakes per topic; a warning names what
        was left out."""
        since = _last_departure(obj)
        if since is None or not topics:
            return []
        since -= self.ctx.timing.clock_skew
        # Older than the bus keeps: pruned, or about to be (its wake would find nothing).
        since = max(since, self.clock.now() - BUS_RETENTION)
        already = _woken_digests(obj)
        tenant, object_id = obj.tenant, obj.object_id
        operations: list[Operation] = []
        for topic in topics:
            prefix = f"{BUS_AT}{_digest(topic)}/"
            queued = left_out = 0
            after = f"{prefix}{max(int(since.timestamp() * 1000), 0):013d}"
            keys: list[str] = []
            for _page in range(MAX_REPLAY_PAGES):
                keys = await self.store.list(prefix, limit=PRUNE_BATCH, start_after=after)
                missed = [
                    timed
                    for timed in map(_timed, keys)
                    if timed is not None and timed[1] not in already
                ]
                # Which of them this object evaluated already: one read for the page.
                seen_keys = [_seen_key_of(tenant, object_id, digest) for _, digest in missed]
                seen = await self.store.get_many(seen_keys) if missed else {}
                for (millis, digest), seen_key in zip(missed, seen_keys, strict=True):
                    if queued >= MAX_REPLAYED_PER_TOPIC:
                        left_out += 1
                        continue
                    if seen_key in seen:
                        continue
                    operations.append(
                        Put(
                            key=_inbox_key_at(tenant, object_id, millis, digest),
                            value=_wake_value(tenant, object_id, f"{BUS}{_digest(topic)}/{digest}"),
                            etag=Expect.ANY,
                        )
                    )
                    queued += 1
                if len(keys) < PRUNE_BATCH:
                    break
                after = keys[-1]
                if left_out:
                    break  # the wakes are full; the pages left would only be counted
            else:
                log.warning(
                    "%s arrived: the bus holds at least %d messages on %s since %s; any "
                    "after them were not looked at (at most %d pages a replay)",
                    obj.object_id,
                    MAX_REPLAY_PAGES * PRUNE_BATCH,
                    topic,
                    format_time(since),
                    MAX_REPLAY_PAGES,
                )
            if left_out:
                log.warning(
                    "%s arrived: %s%d more messages on %s since %s not replayed (at most %d)",
                    obj.object_id,
                    "" if len(keys) < PRUNE_BATCH else "at least ",
                    left_out,
                    topic,
                    format_time(since),
                    MAX_REPLAYED_PER_TOPIC,
                )
        return operations

    async def reconcile(self, tenants: tuple[str, ...]) -> None:
        """Take up the subscriptions of every ACTIVE subscribing object (idempotent): the
        process that activated one may have died before it did. Run at start only; it
        reads every object held, a page at a time, but decodes in full only the ones it
        takes up (the others' state and subscriptions are read from the stored record,
        as the scheduler reads due times): at 10,000 residents subscribing to nothing,
        decoding them all cost about 1 s of CPU while the host already served."""
        for tenant in tenants:
            async for object_id, raw in self.ctx.journal.object_records(tenant):
                try:
                    head = wire.decode_head(raw)
                    if head.state is LifecycleState.ACTIVE and head.subscribing:
                        await self.take_up(tenant, object_id)
                except GatewayError as exc:
                    # One unreadable object must not keep the others' wakes away.
                    log.warning("subscriptions of %s not taken up: %s", object_id, exc)

    # --- out: wakes --------------------------------------------------------------------

    async def deliver_once(self) -> int:
        """Deliver the next DELIVERY_BATCH queued wakes, oldest first per object; returns
        how many were settled. Passes go round the inbox: wakes held for a frozen or staged
        object stay in it, and a pass that always started from the first entry would,
        once a batch of those sorted first, never reach any other object's wakes."""
        keys = await self._delivering.next_page(self.store, limit=DELIVERY_BATCH)
        loop = asyncio.get_running_loop()
        # A hold past its time only says "look again", which this pass does anyway; so
        # forget it, or a key settled elsewhere (another replica) would stay for good.
        self._held_until = {k: t for k, t in self._held_until.items() if t > loop.time()}
        settled = 0
        on_bus: dict[str, Message | None] = {}  # this pass's reads of the bus, by key
        # One read for the page (a round trip each, through a Dapr sidecar). A wake read
        # here and delivered meanwhile by another process fails its conditional commit.
        due = [key for key in sorted(keys) if self._held_until.get(key, 0.0) <= loop.time()]
        items = await self.store.get_many(due) if due else {}
        for key in due:
            item = items.get(key)
            if item is None:
                continue
            try:
                tenant, object_id, found = _unwrap(item.value, key)
                message = (
                    found if isinstance(found, Message) else await self._read_bus(found, on_bus)
                )
            except StoreError as exc:
                log.warning("dropping %s", exc)
                await self.store.delete(key, etag=Expect.ANY)
                continue
            if message is None:
                log.warning(
                    "dropping the wake %s: its message left the bus before it could be "
                    "delivered (the bus keeps messages %s, the longest blackout whose "
                    "messages are delivered after it)",
                    key,
                    BUS_RETENTION,
                )
                with contextlib.suppress(ConcurrencyError):
                    await self.store.delete(key, etag=item.etag)
                continue
            result = await self.wake(tenant, object_id, message, inbox=(key, item.etag))
            if result == WakeResult.HELD:
                self._held_until[key] = loop.time() + HELD_RETRY
            else:
                self._held_until.pop(key, None)
                settled += 1
        return settled

    async def _read_bus(self, key: str, read: dict[str, Message | None]) -> Message | None:
        """The message the bus keeps at ``key`` (None once pruned), read once a pass: a
        page of wakes mostly shares a few messages."""
        if key not in read:
            item = await self.store.get(key)
            read[key] = (
                None if item is None else Message.decode(item.value, what=f"bus entry {key}")
            )
        return read[key]

    async def wake(
        self, tenant: str, object_id: str, message: Message, *, inbox: tuple[str, str]
    ) -> str:
        """Wake the object with ``message`` at most once; settles its inbox entry."""
        inbox_key, inbox_etag = inbox
        seen_key = _seen_key(tenant, object_id, message)
        for _attempt in range(WAKE_ATTEMPTS):
            loaded = await self.ctx.journal.object(tenant, object_id)
            obj = loaded.value if loaded is not None else None
            if obj is None:
                if await self.ctx.journal.held(tenant, object_id):
                    return WakeResult.HELD  # staged here by a migration not settled yet
                await self._drop(inbox_key, inbox_etag, message.topic, tenant, object_id)
                return WakeResult.DROPPED
            if obj.state in (LifecycleState.FROZEN, LifecycleState.STAGED):
                return WakeResult.HELD
            assert loaded is not None
            if obj.state is LifecycleState.MOVED or message.topic not in obj.subscriptions:
                # The subscription left with the object (its new host takes it up).
                await self._drop(inbox_key, inbox_etag, message.topic, tenant, object_id)
                return WakeResult.DROPPED
            if await self.store.get(seen_key) is not None:
                await self.store.transact([Delete(key=inbox_key, etag=inbox_etag)])
                return WakeResult.DUPLICATE
            now = self.clock.now()
            resource = f"pubsub:{message.topic}"
            label = (
                f"message {message.digest} on {message.topic} "
                f"(id {message.id[:64]}, from {message.source[:64]})"
            )
            if obj.authority_at(now).permits(resource, "subscribe"):
                wake = Wake(
                    event=message.cloudevent(),
                    label=label,
                    key_prefix=f"{tenant}/{object_id}/wake-{message.digest}",
                )
                woken, events, _admitted, _denied = self.runner.evaluate(obj, now=now, wake=wake)
            else:
                woken, events = (
                    obj.record(
                        EntryKind.ACTION_DENIED,
                        host=self.ctx.host,
                        at=now,
                        detail=f"{label}: not delivered, subscribe {resource} denied, "
                        f"{why_withheld(self.ctx, obj, resource, 'subscribe', now)}",
                    ),
                    [],
                )
            stored = put_object(tenant, woken, loaded.etag)
            operations: list[Operation] = [
                stored,
                Put(
                    key=seen_key,
                    value=json.dumps({"at": format_time(now)}).encode(),
                    etag=Expect.ABSENT,
                ),
                Delete(key=inbox_key, etag=inbox_etag),
            ]
            for event in events:
                operations.extend(outbox_puts(event))
            try:
                await self.store.transact(operations)
            except ConcurrencyError:
                current = await self.store.get(inbox_key)
                if current is None:
                    return WakeResult.DUPLICATE  # another process delivered it
                inbox_etag = current.etag
                continue  # the object changed (a cycle, a call): evaluate again
            # An object woken only by messages grows too: compact it as a cycle would.
            await self.runner.compaction.after_cycle(
                tenant, woken, stored_bytes=len(stored.value), now=now
            )
            return WakeResult.EVALUATED
        return WakeResult.HELD  # kept writing under us: try again at the next pass

    async def _drop(
        self, inbox_key: str, inbox_etag: str, topic: str, tenant: str, object_id: str
    ) -> None:
        with contextlib.suppress(ConcurrencyError):
            await self.store.transact(
                [
                    Delete(key=inbox_key, etag=inbox_etag),
                    Delete(key=_subs_key(topic, tenant, object_id), etag=Expect.ANY),
                ]
            )

    # --- pruning -----------------------------------------------------------------------

    async def prune(self) -> int:
        """Forget bus messages older than BUS_RETENTION and message ids older than
        SEEN_RETENTION (one bounded batch of each); returns how many were deleted.

        Each pass looks at the PRUNE_BATCH records after those the previous pass looked
        at, going round each prefix: the keys are hash-ordered, not time-ordered, so a
        pass that always started from the first key would look at the same young records
        for good once PRUNE_BATCH of them lived, and the rest would never be pruned.

        The bus is pruned from its time index (each key names its time): an expired
        entry goes with the message it names, and only those messages are read. Messages
        with no index entry (damaged, or put by a replica of an earlier version) are
        found by a sweep that reads a page of values once every ORPHAN_SWEEP_EVERY
        passes, starting with the first."""
        now = self.clock.now()
        pruned = await self._prune_bus_index(now)
        sweep_bus = self._prune_passes % ORPHAN_SWEEP_EVERY == 0
        self._prune_passes += 1
        for prefix, retention, field in (
            (BUS, BUS_RETENTION, "received"),
            (SEEN, SEEN_RETENTION, "at"),
        ):
            if prefix == BUS and not sweep_bus:
                continue
            keys = await self._pruning[prefix].next_page(self.store, limit=PRUNE_BATCH)
            items = await self.store.get_many(keys)
            expired = [
                item
                for item in items.values()
                if _expired(item.key, item.value, field, retention, now)
            ]
            pruned += await delete_unchanged(self.store, expired)
        return pruned

    async def _prune_bus_index(self, now: datetime) -> int:
        """One page of the bus's time index: the expired entries and their messages."""
        keys = await self._pruning[BUS_AT].next_page(self.store, limit=PRUNE_BATCH)
        cutoff = int((now - BUS_RETENTION).timestamp() * 1000)
        gone = [key for key in keys if (timed := _timed(key)) is None or timed[0] <= cutoff]
        if not gone:
            return 0
        # A message is deleted only if it is still as read and expired itself: the same
        # message redelivered after a prune is put again under the same bus key, with an
        # index entry of its own, and a stale entry must not take it.
        named = [bus for key in gone if (bus := _bus_key_of(key)) is not None]
        items = await self.store.get_many(named)
        pruned = await delete_unchanged(
            self.store,
            [
                item
                for item in items.values()
                if _expired(item.key, item.value, "received", BUS_RETENTION, now)
            ],
        )
        for start in range(0, len(gone), DELETE_CHUNK):
            chunk = gone[start : start + DELETE_CHUNK]
            await self.store.transact([Delete(key=key, etag=Expect.ANY) for key in chunk])
            pruned += len(chunk)
        return pruned

    async def index_bus(self) -> int:
        """Give the bus's messages that have no time index entry one (messages an
        earlier version put on the bus, which indexed none): an arrival's replay reads
        the index only. Runs at start when the bus holds messages and the index none,
        and reads the bus once (an hour of messages at most); returns how many."""
        if not await self.store.list(BUS, limit=1) or await self.store.list(BUS_AT, limit=1):
            return 0
        indexed = 0
        after: str | None = None
        while True:
            keys = await self.store.list(BUS, limit=PRUNE_BATCH, start_after=after)
            items = await self.store.get_many(keys)
            operations: list[Operation] = []
            for key, item in items.items():
                try:
                    message = Message.decode(item.value, what=f"bus entry {key}")
                except StoreError:
                    continue  # damaged: the prune drops it
                operations.append(
                    Put(key=_bus_at_key(message), value=key.encode(), etag=Expect.ANY)
                )
            for start in range(0, len(operations), DELETE_CHUNK):
                await self.store.transact(operations[start : start + DELETE_CHUNK])
            indexed += len(operations)
            if len(keys) < PRUNE_BATCH:
                return indexed
            after = keys[-1]

    # --- running -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, *, tenants: tuple[str, ...]) -> None:
        """Queue the pages of wakes that messages' first transactions left (a page of
        each of a few messages a pass, the next pass at once while pages are left) and
        deliver wakes until ``stop``; take up every subscription once at start (the
        process that activated an object may have died first), again shortly after each
        activation seen here (a message may have reached the bus between the replay's
        listing and the index), and prune once a minute, or once a second while passes
        find a backlog of expired records."""
        loop = asyncio.get_running_loop()
        await self._guarded(self.index_bus())
        await self._guarded(self.reconcile(tenants))
        next_prune = 0.0
        while not stop.is_set():
            if loop.time() >= next_prune:
                pruned = await self._guarded(self.prune())
                behind = pruned is not None and pruned >= PRUNE_BATCH // 2
                next_prune = loop.time() + (PRUNE_CATCH_UP_SECONDS if behind else RECONCILE_SECONDS)
            due = [target for target, at in self._recheck.items() if at <= loop.time()]
            for target in due:
                del self._recheck[target]
                await self._guarded(self.take_up(*target))
            self._wakeup.clear()
            await self._guarded(self.fan_out_once())
            await self._guarded(self.deliver_once())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=0.2)

    async def _guarded(self, work: Awaitable[_T]) -> _T | None:
        """What ``work`` returns, or None if it failed (logged)."""
        try:
            return await work
        except GatewayError as exc:
            log.warning("event delivery pass failed: %s", exc)
        except Exception:
            log.exception("event delivery pass failed")
        return None

    def activated(self, tenant: str, object_id: str) -> None:
        """An object became active in this process: take its subscriptions up again in a
        moment, to catch a message that raced the first take-up."""
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to recheck
            self._recheck[(tenant, object_id)] = asyncio.get_running_loop().time() + RECHECK_SECONDS

    def notice(self) -> None:
        self._wakeup.set()


def why_withheld(
    ctx: HostContext, obj: GovernedObject, resource: str, verb: str, now: datetime
) -> str:
    """Why the object may not ``verb`` ``resource`` here, for a person to read."""
    expires = obj.authority_expires
    if expires is not None and now >= expires:
        return f"its grants expired at {format_time(expires)}"
    try:
        chain = ctx.chain_of(obj, at=now)
    except GatewayError as exc:
        return f"its grants do not verify here: {exc.reason}"
    if chain is None or not chain.capabilities.permits(resource, verb):
        return f"its grants do not hold {resource} [{verb}]"
    return f"this host's policy (offers, ceilings, deny) withholds {resource} [{verb}]"


_ACTIVATIONS = (EntryKind.CREATED, EntryKind.REHOSTED, EntryKind.ABORTED)


def _subscription_entries_since_activation(obj: GovernedObject) -> set[str]:
    """Details of the subscription entries recorded since the object last became active
    here, so that taking them up again (reconciliation) records nothing twice."""
    found: set[str] = set()
    for entry in reversed(obj.lineage.entries):
        if entry.kind in _ACTIVATIONS:
            break
        if entry.kind in (EntryKind.ACTION_ADMITTED, EntryKind.ACTION_DENIED) and (
            entry.detail.startswith("subscribe pubsub:")
        ):
            found.add(entry.detail)
    return found


def _last_departure(obj: GovernedObject) -> datetime | None:
    """When the object froze at its previous host, if it arrived here (its last
    activation is a REHOSTED entry); None for one created or resumed here."""
    for entry in reversed(obj.lineage.entries):
        if entry.kind in (EntryKind.CREATED, EntryKind.ABORTED):
            return None
        if entry.kind is EntryKind.FROZEN:
            return entry.time
    return None


_WOKEN_DIGEST = re.compile(r"message ([0-9a-f]{32}) on ")


def _woken_digests(obj: GovernedObject) -> set[str]:
    """Messages the lineage records as woken (on any host): not to be evaluated again."""
    found: set[str] = set()
    for entry in obj.lineage.entries:
        if entry.kind in (EntryKind.WOKEN, EntryKind.ACTION_DENIED):
            match = _WOKEN_DIGEST.match(entry.detail)
            if match:
                found.add(match.group(1))
    return found


def parse_event_data(raw: bytes, content_type: str) -> Any:
    """Message data from Dapr: JSON when it is JSON, else the text."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise LimitExceededError(
            f"the message data is {len(raw)} bytes; at most {MAX_MESSAGE_BYTES}"
        )
    if not raw:
        return None
    if "json" in content_type or not content_type:
        try:
            return load_json(raw, error=ConfigError, what="the message data")
        except ConfigError:
            pass
    return raw.decode("utf-8", "replace")


def crash_after_ingest() -> None:
    crash_point("events.after-ingest")
