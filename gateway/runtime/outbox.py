"""The durable outbox: every admitted publish, invoke and binding is written in the same
store transaction that commits the evaluation, then carried out by a dispatcher.

Why an outbox: an evaluation and its effects must happen together or not at all, and a
store transaction cannot include a network call. Writing the effect as a record in the
evaluation's own transaction makes it exactly-once *decided*; delivery is then
at-least-once, with the record key as idempotency key, so a receiver can de-duplicate.

Key layout: ``events/<tenant>/<object id>/<generation>/<n>`` holds each event (its
status is updated on delivery); ``pending/…`` with the same suffix marks what is still
to deliver, so the dispatcher never scans delivered history.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from gateway._crash import crash_point
from gateway._decode import load_json
from gateway._slots import builder
from gateway._time import Clock, format_time, parse_time
from gateway.errors import ConcurrencyError, GatewayError, StoreError
from gateway.handoff.lifecycle import LifecycleEvent
from gateway.rules import canonical_tree
from gateway.stores import Delete, Expect, PrefixWalk, Put, StateStore

log = logging.getLogger(__name__)

EVENTS = "events/"
PENDING = "pending/"
MAX_ATTEMPTS = 8
#: Pending events looked at per dispatcher pass.
DISPATCH_BATCH = 1000


class DeliveryError(GatewayError):
    """An executor could not carry out an action (it will be retried)."""


#: What ``json.dumps(..., sort_keys=True, separators=(",", ":"))`` builds on every call,
#: built once (an encoder keeps no state between calls): every cycle that publishes
#: encodes an event.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))
#: How that encoder writes a string (it escapes to ASCII).
_string = json.encoder.encode_basestring_ascii


#: Two- and three-digit numbers as a time's and a key's fields write them ("07", "042"):
#: a subscript, where a format spec costs int.__format__'s parse of the spec each time.
_TWO = tuple(f"{n:02d}" for n in range(100))
_THREE = tuple(f"{n:03d}" for n in range(1000))
#: 10**12: a number below it, added to it, is written as "1" and its twelve-digit form.
_TWELVE = 10**12

#: The last UTC time an event was encoded with and its text (one slot, holding the very
#: time it answers for, so an ``is`` test cannot be fooled by a reused id).
_last_time: tuple[datetime | None, str] = (None, "")


def _utc_text(at: datetime) -> str:
    """``format_time(at)`` for a UTC time. The same time object as the last call's is
    answered from one slot: a cycle's events, and every cycle of a batch, are created at
    the runner's one ``now``. Any other is written from its fields through tables, not
    through ``isoformat(timespec=...)``, whose keyword parsing and UTC offset cost most
    of the 13k instructions a lifecycle event's distinct time took (session 40)."""
    global _last_time
    last = _last_time  # one read: another thread may replace the slot meanwhile
    if last[0] is at:
        return last[1]
    year = at.year
    if year < 1000:  # format_time pads the year to four digits
        return format_time(at)
    text = (
        f"{year}-{_TWO[at.month]}-{_TWO[at.day]}T{_TWO[at.hour]}:{_TWO[at.minute]}:"
        f"{_TWO[at.second]}.{_THREE[at.microsecond // 1000]}Z"
    )
    _last_time = (at, text)
    return text


def _plain(text: str) -> bool:
    """Whether the canonical encoder writes ``text`` as it is between quotes: printable
    ASCII (space to ``~``) without a quote or a backslash, the characters
    ``encode_basestring_ascii`` leaves alone. ``isascii`` reads a flag; ``isprintable``
    is false for ASCII's control characters and DEL. (One escape call on the text, or a
    regular expression, each cost more: 19.3k and 20.5k Ir an event against 18.3k.)"""
    return text.isascii() and text.isprintable() and '"' not in text and "\\" not in text


#: Strings (exact ``str``) :func:`_plain` found the encoder writes as they are, up to
#: :data:`KNOWN_PLAIN_STRINGS` of at most :data:`KNOWN_PLAIN_LENGTH` characters each
#: (emptied when full): an object's events carry its tenant and id and its rules' names,
#: verbs and resources again every cycle, and looking a string up (its hash kept in the
#: string) costs a tenth of joining and checking the seven again (about 3.5k
#: instructions an event). Whether a string needs an escape depends on it alone, so a
#: string remembered by any thread is plain for all.
_KNOWN_PLAIN: set[str] = set()
KNOWN_PLAIN_STRINGS = 16384
KNOWN_PLAIN_LENGTH = 256


def _learned_plain(*texts: str) -> bool:
    """Whether the encoder writes each of ``texts`` (exact ``str``) as it is: if so,
    the short ones are remembered in :data:`_KNOWN_PLAIN`."""
    if not _plain("".join(texts)):  # plain together is each plain: a test per character
        return False
    known = _KNOWN_PLAIN
    if len(known) > KNOWN_PLAIN_STRINGS - len(texts):
        known.clear()
    known.update(text for text in texts if len(text) <= KNOWN_PLAIN_LENGTH)
    return True


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    key: str  #: suffix shared by events/ and pending/; also the idempotency key
    tenant: str
    object_id: str
    generation: int
    rule: str
    verb: str  #: publish or invoke
    resource: str  #: pubsub:<topic>, invoke:<app>/<method> or binding:<name>/<operation>
    payload: Any
    created_at: datetime
    status: str = "pending"  #: pending, published, delivered or failed
    attempts: int = 0
    last_error: str = ""

    @property
    def target(self) -> str:
        return self.resource.split(":", 1)[1]

    def encode(self) -> bytes:
        """The event's canonical JSON (sorted keys, no spaces, ASCII): written out field
        by field when every field is of the type it is declared with (what
        :meth:`document` through the canonical encoder gives, byte for byte:
        tests/test_outbox_encoding.py holds the two together), else through the encoder.
        Every cycle that publishes encodes its events, and the encoder's sort and the
        time's formatting were most of such a cycle's outbox work."""
        created = self.created_at
        if (
            type(self.generation) is int
            and type(self.attempts) is int
            and created.tzinfo is UTC
            and type(self.tenant) is str
            and type(self.object_id) is str
            and type(self.rule) is str
            and type(self.verb) is str
            and type(self.resource) is str
            and type(self.status) is str
            and type(self.last_error) is str
        ):
            tenant, object_id, rule, verb = self.tenant, self.object_id, self.rule, self.verb
            resource, status, last_error = self.resource, self.status, self.last_error
            # Keys in sorted order; the time as format_time writes a UTC time. The seven
            # strings, when together they need no escape (a cycle's always do), are
            # written as they are: known so (an object's cycles publish with the same
            # strings), or one check of their join, where an escape call each cost about
            # 570 instructions (session 40); else each as the encoder does.
            known = _KNOWN_PLAIN
            if (
                tenant in known
                and object_id in known
                and rule in known
                and verb in known
                and resource in known
                and status in known
                and last_error in known
            ) or _learned_plain(tenant, object_id, rule, verb, resource, status, last_error):
                return (
                    f'{{"attempts":{self.attempts},"created_at":"{_utc_text(created)}",'
                    f'"generation":{self.generation},"last_error":"{last_error}",'
                    f'"object_id":"{object_id}","payload":{canonical_tree(self.payload)},'
                    f'"resource":"{resource}","rule":"{rule}","status":"{status}",'
                    f'"tenant":"{tenant}","verb":"{verb}"}}'
                ).encode("ascii")
            return (
                f'{{"attempts":{self.attempts},'
                f'"created_at":"{_utc_text(created)}",'
                f'"generation":{self.generation},'
                f'"last_error":{_string(last_error)},'
                f'"object_id":{_string(object_id)},'
                f'"payload":{canonical_tree(self.payload)},'
                f'"resource":{_string(resource)},"rule":{_string(rule)},'
                f'"status":{_string(status)},"tenant":{_string(tenant)},'
                f'"verb":{_string(verb)}}}'
            ).encode("ascii")
        return _CANONICAL.encode(self.document()).encode("utf-8")

    def document(self) -> dict[str, Any]:
        """The event as a JSON document (what :meth:`encode` writes)."""
        return {
            "tenant": self.tenant,
            "object_id": self.object_id,
            "generation": self.generation,
            "rule": self.rule,
            "verb": self.verb,
            "resource": self.resource,
            "payload": self.payload,
            "created_at": format_time(self.created_at),
            "status": self.status,
            "attempts": self.attempts,
            "last_error": self.last_error,
        }

    @classmethod
    def decode(cls, key: str, raw: bytes) -> Event:
        document = load_json(raw, error=StoreError, what=f"outbox event {key}")
        try:
            return cls._from_document(key, document)
        except (KeyError, TypeError, ValueError) as exc:  # a damaged record, not a crash
            raise StoreError(f"outbox event {key} is damaged: {exc!r:.200}") from exc

    @classmethod
    def _from_document(cls, key: str, document: Any) -> Event:
        return cls(
            key=key,
            tenant=document["tenant"],
            object_id=document["object_id"],
            generation=document["generation"],
            rule=document["rule"],
            verb=document["verb"],
            resource=document["resource"],
            payload=document["payload"],
            created_at=parse_time(document["created_at"]),
            status=document["status"],
            attempts=document["attempts"],
            last_error=document["last_error"],
        )


def event_key(tenant: str, object_id: str, generation: int, index: int) -> str:
    """``f"{tenant}/{object_id}/{generation:012d}/{index:03d}"``: for the numbers every
    cycle has, without the format specs (about 6.6k instructions a key, session 40). A
    number below 10**12 added to it is written "1" and its own twelve digits."""
    twelve = _twelve_digits(generation)  # first: a bad generation is refused first, as before
    three = _THREE[index] if type(index) is int and 0 <= index < 1000 else f"{index:03d}"
    return f"{tenant}/{object_id}/{twelve}/{three}"


def _twelve_digits(number: int) -> str:
    """``f"{number:012d}"``, without the format spec for a number that has twelve digits
    or fewer (added to 10**12 it is written "1" and its own twelve digits); anything
    else through the spec, which refuses what it refused."""
    if type(number) is int and 0 <= number < _TWELVE:
        return str(number + _TWELVE)[1:]
    return f"{number:012d}"


def lifecycle_event(
    verb: str,
    *,
    tenant: str,
    object_id: str,
    epoch: int,
    generation: int,
    payload: Any,
    at: datetime,
    status: str = "pending",
) -> Event:
    """A gateway event about an object (``object.rehosted``, ``migration.committed``): one
    per object and epoch, so it is written once even if its transaction is retried.
    ``status``: ``published`` for one recorded as delivered already (no event sink)."""
    topic = verb.split(".", 1)[0] + "s"  # object.rehosted -> objects, migration.… -> migrations
    return _event(
        f"{tenant}/{object_id}/epoch-{_twelve_digits(epoch)}-{verb}",
        tenant,
        object_id,
        generation,
        "",  # rule
        verb,
        f"gateway:{topic}",
        payload,
        at,  # created_at
        status,
        0,  # attempts
        "",  # last_error
    )


def outbox_puts(event: Event) -> list[Put]:
    """The writes that record a new event, for the evaluation's own transaction."""
    puts = [_put(EVENTS + event.key, event.encode(), _ABSENT)]
    if event.status == "pending":
        puts.append(_put(PENDING + event.key, b"", _ABSENT))
    return puts


# Every cycle that publishes makes an Event and two Puts (gateway/_slots.py).
_put = builder(Put, "key", "value", "etag")
_event = builder(Event, *Event.__slots__)
#: Enum members read on every cycle that publishes, bound once: in Python 3.11 ``EnumType`` defines
#: ``__getattr__``, so each ``Kind.MEMBER`` read goes through the class's attribute hook
#: (about 420 instructions against about 40 for a module global; session 37).
_ABSENT = Expect.ABSENT


def pending_event(
    *,
    key: str,
    tenant: str,
    object_id: str,
    generation: int,
    rule: str,
    verb: str,
    resource: str,
    payload: Any,
    created_at: datetime,
) -> Event:
    """``Event(...)`` of these fields, pending, never attempted (what a cycle records)."""
    return _event(
        key, tenant, object_id, generation, rule, verb, resource, payload, created_at, *_PENDING
    )


#: status, attempts and last_error of a new event.
_PENDING = ("pending", 0, "")


class OutboxLifecycle:
    """The handoff layer's :class:`~gateway.handoff.lifecycle.LifecycleRecorder`: a
    lifecycle event becomes an outbox record, delivered like any published event.

    ``sink``: whether the host has an event sink. Without one, the dispatcher's whole
    delivery of a lifecycle event (a ``gateway:`` resource, never an invoke or binding)
    is to mark it ``published``; the event is then recorded ``published`` in its step's
    own transaction instead, which spares every migration a read, a decode and a
    durable commit of its own on each side. What is recorded is the same (a host's sink
    is fixed for its lifetime: a reload never adds one)."""

    def __init__(self, *, sink: bool = True) -> None:
        self.sink = sink

    def writes(self, event: LifecycleEvent) -> list[Put]:
        recorded = lifecycle_event(
            event.verb,
            tenant=event.tenant,
            object_id=event.object_id,
            epoch=event.epoch,
            generation=event.generation,
            payload=event.payload,
            at=event.at,
            # Built so at once, not built pending and copied (a dataclasses.replace each).
            status="pending" if self.sink else "published",
        )
        return outbox_puts(recorded)


async def list_events(
    store: StateStore, *, tenant: str | None = None, limit: int | None = None
) -> list[Event]:
    keys = await store.list(EVENTS + (f"{tenant}/" if tenant else ""), limit=limit)
    items = await store.get_many(keys)
    return [Event.decode(k.removeprefix(EVENTS), items[k].value) for k in keys if k in items]


class EventSink(Protocol):
    """Where published events go beyond the outbox (Dapr pub/sub, in Dapr mode)."""

    async def publish(self, event: Event) -> None: ...


class Invoker(Protocol):
    """Carries out ``invoke:<app>/<method>`` actions."""

    async def invoke(self, event: Event) -> None: ...


class BindingInvoker(Protocol):
    """Carries out ``binding:<name>/<operation>`` actions (Dapr output bindings)."""

    async def invoke(self, event: Event) -> None: ...


class HttpInvoker:
    """POSTs the payload as JSON to ``<base url of app>/<method>`` with the event key as
    ``Idempotency-Key``. Apps without a configured URL cannot be invoked."""

    def __init__(
        self, targets: Mapping[str, str], *, timeout: timedelta = timedelta(seconds=10)
    ) -> None:
        self.targets = dict(targets)
        self.timeout = timeout

    async def invoke(self, event: Event) -> None:
        import aiohttp

        app, _, method = event.target.partition("/")
        base = self.targets.get(app)
        if base is None:
            raise DeliveryError(
                f"no endpoint configured for app {app!r}", hint="add it under 'invoke:'"
            )
        url = f"{base.rstrip('/')}/{method}"
        try:
            async with (
                aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=self.timeout.total_seconds())
                ) as session,
                session.post(
                    url, json=event.payload, headers={"Idempotency-Key": event.key}
                ) as response,
            ):
                if response.status >= 300:
                    raise DeliveryError(f"{url} answered HTTP {response.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DeliveryError(f"{url}: {type(exc).__name__}: {exc}") from exc


class Dispatcher:
    """Delivers pending events; one slow target never holds up the others."""

    def __init__(
        self,
        store: StateStore,
        *,
        invoker: Invoker,
        sink: EventSink | None,
        clock: Clock,
        bindings: BindingInvoker | None = None,
        interval: float = 0.2,
        concurrency: int = 16,
    ) -> None:
        self.store = store
        self.invoker = invoker
        self.sink = sink
        self.bindings = bindings
        self.clock = clock
        self.interval = interval
        self._slots = asyncio.Semaphore(concurrency)
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._not_before: dict[str, datetime] = {}
        self._pending = PrefixWalk(PENDING)

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    await self.dispatch_once()
                except GatewayError as exc:
                    log.warning("outbox pass failed: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.interval)
        finally:
            for task in self._inflight.values():
                task.cancel()
            await asyncio.gather(*self._inflight.values(), return_exceptions=True)

    async def dispatch_once(self) -> int:
        """Start delivery of the next DISPATCH_BATCH pending events not already under way;
        returns how many. Passes go round pending/: events in flight to a target that does
        not answer, or waiting out their backoff, stay pending for a while, and a pass that
        always started from the first marker would leave every event after a batch of
        those waiting (for good under a steady stream of them)."""
        now = self.clock.now()
        started = 0
        # A backoff that has passed only allows what a missing one does: forget it, or
        # an event another replica settled would keep its entry here for good.
        self._not_before = {k: t for k, t in self._not_before.items() if t > now}
        for pending in await self._pending.next_page(self.store, limit=DISPATCH_BATCH):
            key = pending.removeprefix(PENDING)
            if key in self._inflight or self._not_before.get(key, now) > now:
                continue
            task = asyncio.create_task(self._deliver(key))
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._forget, key))
            started += 1
        return started

    def _forget(self, key: str, _task: asyncio.Task[None]) -> None:
        self._inflight.pop(key, None)

    async def _deliver(self, key: str) -> None:
        async with self._slots:
            found = await self.store.get_many([EVENTS + key, PENDING + key])
            item, marker = found.get(EVENTS + key), found.get(PENDING + key)
            if item is None or marker is None:
                return
            event = Event.decode(key, item.value)
            kind = event.resource.partition(":")[0]
            try:
                if kind == "binding":
                    if self.bindings is None:
                        # Admission refuses bindings here; this is an event written while
                        # the host had a sidecar, left over after it lost it.
                        raise DeliveryError(
                            "this host has no Dapr sidecar to carry out output bindings",
                            hint="configure 'dapr:' or 'store: {dapr: ...}' again",
                        )
                    await self.bindings.invoke(event)
                    status = "delivered"
                elif kind == "invoke":
                    await self.invoker.invoke(event)
                    status = "delivered"
                elif self.sink is not None:
                    await self.sink.publish(event)
                    status = "delivered"
                else:
                    status = "published"
                # Delivered, not yet marked: a crash here delivers again, with the same key.
                crash_point("outbox.after-deliver")
                done = replace(event, status=status, attempts=event.attempts + 1, last_error="")
                operations: list[Put | Delete] = [
                    Put(key=EVENTS + key, value=done.encode(), etag=item.etag),
                    Delete(key=PENDING + key, etag=marker.etag),
                ]
            except DeliveryError as exc:
                attempts = event.attempts + 1
                failed = attempts >= MAX_ATTEMPTS
                retry = replace(
                    event,
                    attempts=attempts,
                    last_error=exc.reason,
                    status="failed" if failed else "pending",
                )
                operations = [Put(key=EVENTS + key, value=retry.encode(), etag=item.etag)]
                if failed:
                    operations.append(Delete(key=PENDING + key, etag=marker.etag))
                    log.warning("giving up on %s after %d attempts: %s", key, attempts, exc.reason)
                self._not_before[key] = self.clock.now() + timedelta(
                    seconds=min(30.0, 0.2 * 2**attempts)
                )
            try:
                await self.store.transact(operations)
            except ConcurrencyError:
                return  # another dispatcher (another replica) handled it
            if operations[-1].key.startswith(PENDING):  # delivered or given up
                self._not_before.pop(key, None)
