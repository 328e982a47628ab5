"""Request-driven calls: a caller asks an object something and its answers reply.

An object's spec lists the methods it answers (``answers: {method: {when, reply,
write}}``, see docs/events-and-calls.md). A call names the object, the method and a JSON
request; the host holding the object evaluates that answer's CEL over the object's data
and ``request`` (``{"method", "caller", "data"}``) and replies with the value of
``reply``. The same path serves the gateway's ``Call`` RPC (caller: the mTLS peer's host
id) and Dapr service invocation of the gateway app (caller: the invoking app id).

Invariants this module keeps:

* **The caller is authority.** A call is answered only if the object's effective
  authority here holds ``call:<method>/<caller>`` with action ``call``, where the caller
  is ``<trust domain>/<host path>`` for a gateway host (from its certificate, never from
  the request) or ``<trust domain of this host>/dapr/<app id>`` for a Dapr app. The grant
  chain and this host's policy both bound it, as for any action.
* **Every call is recorded.** An answered call appends a ``called`` lineage entry in the
  same conditional write as any data it changes; a refused call appends a
  ``call-denied`` entry with the reason. Repeated identical refusals (same caller,
  method and reason) are *counted* in a host-local record and written to the lineage at
  most once per :data:`DENIAL_RECORD_INTERVAL`, with the count since the last entry, so
  a caller hammering a refusal cannot grow the lineage without limit. Nor can one varying
  the method name (each a different refusal): at most
  :data:`MAX_DENIALS_RECORDED_PER_CALLER` refusals of one caller reach an object's lineage
  per interval; the others are counted and reported with the next one recorded.
* **Bounded.** Request and reply are at most :data:`~gateway.limits.MAX_CALL_REQUEST_BYTES`
  / :data:`~gateway.limits.MAX_CALL_REPLY_BYTES` of JSON, checked before any evaluation;
  the request's data obeys the same collection and depth bounds as object data.
* **A moved object says where it went** (:class:`~gateway.errors.ObjectMovedError` with
  the new host); **a frozen one is waited for** up to the caller's wait (at most
  :data:`~gateway.limits.MAX_CALL_WAIT`), then :class:`~gateway.errors.ObjectBusyError`.
* **Answers never run actions.** A reply is computed, a write (admitted against
  ``state:self`` write) may change the data; nothing is published or invoked.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from gateway._decode import load_json
from gateway._time import format_time, parse_time
from gateway.errors import (
    CallDeniedError,
    ConcurrencyError,
    ConfigError,
    GatewayError,
    LimitExceededError,
    NotFoundError,
    ObjectBusyError,
    ObjectMovedError,
    RuleError,
    StoreError,
)
from gateway.handoff.context import HostContext
from gateway.handoff.journal import put_object
from gateway.identity import HostId
from gateway.limits import (
    MAX_CALL_REPLY_BYTES,
    MAX_CALL_REQUEST_BYTES,
    MAX_CALL_WAIT,
    MAX_DATA_BYTES,
    MAX_TENANT_CHARS,
    check_id,
    check_text,
)
from gateway.lineage import EntryKind
from gateway.model import Answer, GovernedObject, LifecycleState
from gateway.rules import (
    CompiledAnswer,
    activation_of,
    check_data,
    check_patch,
    compile_answers,
    dump_data,
    give_answer,
    load_data,
)
from gateway.runtime.compaction import Compaction
from gateway.runtime.events import why_withheld
from gateway.stores import Expect, PrefixWalk, Put, delete_unchanged

log = logging.getLogger(__name__)

#: Host-local counters of repeated refusals (``<tenant>/<object id>/<digest>``).
DENIALS = "calls/denied/"
#: A repeated identical refusal reaches the lineage at most once per this interval.
DENIAL_RECORD_INTERVAL = timedelta(seconds=60)
#: Refusals of one caller written to an object's lineage per DENIAL_RECORD_INTERVAL, over
#: all methods and reasons; more are only counted. A caller needs no grant to be refused,
#: and each method name is a different refusal: without this, one call per name would be
#: one lineage entry each.
MAX_DENIALS_RECORDED_PER_CALLER = 8
#: Refusal counters untouched for this long are pruned.
DENIAL_RETENTION = timedelta(days=1)
#: Refusal counters looked at per prune pass.
DENIAL_PRUNE_BATCH = 1000
#: Seconds to the next prune pass after one that found at least half a page expired: a
#: page a minute would never catch up with a caller refused faster than that (each
#: distinct method name is a counter), as for the events' records
#: (events.PRUNE_CATCH_UP_SECONDS).
DENIAL_CATCH_UP_SECONDS = 1.0
#: How long a call waits for a frozen object when the caller gives no wait.
DEFAULT_CALL_WAIT = timedelta(seconds=10)
#: Conditional writes tried when a cycle or another call changed the object meanwhile.
COMMIT_ATTEMPTS = 8
#: Seconds between two looks at an object frozen by a migration.
FROZEN_POLL = 0.1

_METHOD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_APP_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def caller_of_host(host_id: str) -> str:
    """The caller text of a gateway host: ``spiffe://org-b.example/cluster/east/gateway``
    is ``org-b.example/cluster/east/gateway``."""
    host = HostId.parse(host_id)
    return f"{host.trust_domain}/{host.path.strip('/')}"


def caller_of_dapr_app(trust_domain: str, app_id: str) -> str:
    """The caller text of a Dapr app invoking the gateway app through its own sidecar:
    ``<this host's trust domain>/dapr/<app id>`` (an app id is only meaningful inside the
    Dapr deployment of the host it calls)."""
    if not _APP_ID.fullmatch(app_id):
        raise CallDeniedError(
            f"the calling Dapr app id {app_id[:80]!r} is not a plain name",
            hint="Dapr app ids are letters, digits, '.', '_' and '-'",
        )
    return f"{trust_domain}/dapr/{app_id}"


@dataclass(frozen=True, slots=True, kw_only=True)
class CallResult:
    reply: Any  #: the reply as a JSON value
    encoded: bytes  #: the reply as compact JSON
    host: str  #: the host that answered


def _request_data(raw: bytes) -> Any:
    if len(raw) > MAX_CALL_REQUEST_BYTES:
        raise LimitExceededError(
            f"the request is {len(raw)} bytes; at most {MAX_CALL_REQUEST_BYTES}",
            hint="send less; a call carries a small JSON request",
        )
    if not raw.strip():
        return None
    value = load_json(raw, error=ConfigError, what="the request data")
    try:
        check_data(value)
    except RuleError as exc:
        raise LimitExceededError(f"the request data: {exc.reason}", hint=exc.hint) from exc
    return value


def check_method(method: str) -> str:
    if not _METHOD.fullmatch(method):
        raise ConfigError(
            f"method {method[:80]!r} is not a name",
            hint="letters, digits, '_', '.', '-'; at most 64 characters",
        )
    return method


class Calls:
    """Answers calls to the objects of one host."""

    def __init__(self, context: HostContext, *, cache_size: int = 256) -> None:
        self.ctx = context
        self._compile = functools.lru_cache(maxsize=cache_size)(_compile_answers)
        #: The host's lineage compaction (set by Host.rebind): every answered call and
        #: recorded refusal appends an entry, and an object that is only called (no
        #: cycle, no message) would otherwise grow, and cost more to write, per call.
        self.compaction: Compaction | None = None
        # Where pruning of the refusal counters is: each pass resumes after the last
        # counter the previous one looked at (see PrefixWalk).
        self._pruning = PrefixWalk(DENIALS)

    async def call(
        self,
        *,
        tenant: str,
        object_id: str,
        method: str,
        data: bytes,
        caller: str,
        wait: timedelta | None = None,
    ) -> CallResult:
        """Answer one call, or raise why not (a refusal is recorded first)."""
        ctx = self.ctx
        check_text(tenant, limit=MAX_TENANT_CHARS, what="tenant")
        check_id(object_id, what="object id")
        check_method(method)
        request_data = _request_data(data)
        if tenant not in ctx.tenants:
            raise NotFoundError(
                f"{ctx.host} hosts no tenant {tenant!r}", hint="name the object's tenant"
            )
        wait = min(
            wait if wait is not None and wait > timedelta(0) else DEFAULT_CALL_WAIT, MAX_CALL_WAIT
        )
        deadline = asyncio.get_running_loop().time() + wait.total_seconds()
        request = {"method": method, "caller": caller, "data": request_data}
        for _attempt in range(COMMIT_ATTEMPTS):
            loaded = await self._live(tenant, object_id, deadline=deadline, wait=wait)
            obj = loaded.value
            now = ctx.clock.now()
            try:
                answered, result = self._answer(obj, method, request, caller, now)
            except CallDeniedError as exc:
                await self._record_denial(tenant, object_id, method, caller, exc.reason, now)
                raise
            stored = put_object(tenant, answered, loaded.etag)
            try:
                await ctx.journal.store.transact([stored])
            except ConcurrencyError:
                continue  # a cycle or another call wrote first: answer from the new state
            await self._compact(tenant, answered, len(stored.value), now)
            return result
        raise ObjectBusyError(
            f"{object_id} changed {COMMIT_ATTEMPTS} times while the call was answered",
            hint="retry; the object is being written very often",
        )

    async def _live(self, tenant: str, object_id: str, *, deadline: float, wait: timedelta) -> Any:
        """The ACTIVE object, waiting while a migration has it frozen (or staged here)."""
        loop = asyncio.get_running_loop()
        while True:
            loaded = await self.ctx.journal.object(tenant, object_id)
            obj = loaded.value if loaded is not None else None
            if obj is not None and obj.state is LifecycleState.ACTIVE:
                return loaded
            if obj is not None and obj.state is LifecycleState.MOVED:
                raise ObjectMovedError(
                    f"{object_id} moved to {obj.moved_to} (migration {obj.migration_id})",
                    moved_to=obj.moved_to,
                    hint=f"call it there: gateway call {object_id} ... --at {obj.moved_to}",
                )
            waiting = obj is not None or await self.ctx.journal.held(tenant, object_id)
            if not waiting:
                raise NotFoundError(
                    f"{object_id} is not on {self.ctx.host} (tenant {tenant})",
                    hint="check the object id and tenant, or ask the host that holds it",
                )
            if loop.time() >= deadline:
                doing = (
                    f"frozen by migration {obj.migration_id}"
                    if obj is not None
                    else "arriving (staged by a migration not settled yet)"
                )
                raise ObjectBusyError(
                    f"{object_id} is still {doing} after {wait.total_seconds():g} s",
                    hint="retry once the migration settles; it then answers here or says where it went",
                )
            await asyncio.sleep(min(FROZEN_POLL, max(0.0, deadline - loop.time())))

    def _answer(
        self,
        obj: GovernedObject,
        method: str,
        request: Mapping[str, Any],
        caller: str,
        now: datetime,
    ) -> tuple[GovernedObject, CallResult]:
        ctx = self.ctx
        resource = f"call:{method}/{caller}"
        authority = obj.authority_at(now)
        if not authority.permits(resource, "call"):
            raise CallDeniedError(
                f"{caller} may not call {method} on {obj.object_id}: "
                f"{why_withheld(ctx, obj, resource, 'call', now)}",
                hint=f"its grants (and this host's policy) must hold {resource} [call]",
            )
        try:
            answers = self._compile(obj.answers)
            data = load_data(obj.data, obj.content_type)
        except RuleError as exc:
            raise CallDeniedError(f"{obj.object_id} cannot answer: {exc.reason}") from exc
        compiled = answers.get(method)
        if compiled is None:
            known = ", ".join(sorted(answers)) or "none"
            raise CallDeniedError(
                f"{obj.object_id} answers no method {method} (it answers: {known})",
                hint="see the object's spec, answers:",
            )
        activation = activation_of(
            data=data,
            generation=obj.cycle.generation,
            epoch=obj.epoch,
            now=now,
            host=ctx.host,
            request=request,
        )
        reply = give_answer(compiled, activation)
        if reply.refusal:
            raise CallDeniedError(f"{obj.object_id} did not answer {method}: {reply.refusal}")
        encoded = json.dumps(reply.value, sort_keys=True, separators=(",", ":")).encode()
        if len(encoded) > MAX_CALL_REPLY_BYTES:
            raise CallDeniedError(
                f"the reply to {method} would be {len(encoded)} bytes; at most {MAX_CALL_REPLY_BYTES}",
                hint="make the answer's reply smaller",
            )
        answered = obj
        detail = f"call {method} from {caller}: answered"
        if reply.patch is not None:
            if not authority.permits("state:self", "write"):
                raise CallDeniedError(
                    f"answer {method} of {obj.object_id} writes its data, but it may not "
                    "write state:self here"
                )
            merged = {**data, **reply.patch}
            try:
                # The data was checked whole when the object was created or arrived, and
                # each write since checked what it added: so does this one.
                check_patch(merged, reply.patch)
            except RuleError as exc:
                raise CallDeniedError(f"answer {method}: the write {exc.reason}") from exc
            written = dump_data(merged)
            if len(written) > MAX_DATA_BYTES:
                raise CallDeniedError(f"answer {method}: the write makes the data too large")
            answered = replace(obj, data=written)
            detail += ", data written"
        answered = answered.record(EntryKind.CALLED, host=ctx.host, at=now, detail=detail)
        return answered, CallResult(reply=reply.value, encoded=encoded, host=ctx.host)

    async def _record_denial(
        self, tenant: str, object_id: str, method: str, caller: str, reason: str, now: datetime
    ) -> None:
        """Write the refusal to the lineage, or count it if an identical one was written
        less than :data:`DENIAL_RECORD_INTERVAL` ago. Best effort: the caller gets its
        refusal even if the object cannot be written just now."""
        store = self.ctx.journal.store
        key = DENIALS + _denial_key(tenant, object_id, caller, method, reason)
        for _attempt in range(COMMIT_ATTEMPTS):
            try:
                counter = await store.get(key)
                count, recorded = _decode_counter(counter.value if counter else None)
                etag = counter.etag if counter is not None else Expect.ABSENT
                if recorded is not None and now - recorded < DENIAL_RECORD_INTERVAL:
                    await store.put(key, _encode_counter(count + 1, recorded, now), etag=etag)
                    return
                loaded = await self.ctx.journal.object(tenant, object_id)
                if loaded is None or loaded.value.state is not LifecycleState.ACTIVE:
                    # Not found or moved; or frozen, whose lineage left with its transfer
                    # and must stay a prefix of what comes back: nothing is appended.
                    return
                budget_key = DENIALS + _caller_key(tenant, object_id, caller)
                budget = await store.get(budget_key)
                budget_etag = budget.etag if budget is not None else Expect.ABSENT
                window, written, unrecorded = _decode_budget(budget.value if budget else None)
                if window is None or now - window >= DENIAL_RECORD_INTERVAL:
                    window, written = now, 0
                if written >= MAX_DENIALS_RECORDED_PER_CALLER:
                    value = _encode_budget(window, written, unrecorded + 1, now)
                    await store.put(budget_key, value, etag=budget_etag)
                    return
                detail = f"call {method} from {caller}: denied, {reason}"
                if count:
                    detail += (
                        f" (and {count} more times since {format_time(recorded)})"
                        if recorded
                        else ""
                    )
                if unrecorded:
                    detail = f"({unrecorded} other refusals of this caller not recorded) {detail}"
                obj = loaded.value.record(
                    EntryKind.CALL_DENIED, host=self.ctx.host, at=now, detail=detail[:1000]
                )
                stored = put_object(tenant, obj, loaded.etag)
                await store.transact(
                    [
                        stored,
                        Put(key=key, value=_encode_counter(0, now, now), etag=etag),
                        Put(
                            key=budget_key,
                            value=_encode_budget(window, written + 1, 0, now),
                            etag=budget_etag,
                        ),
                    ]
                )
                await self._compact(tenant, obj, len(stored.value), now)
                return
            except ConcurrencyError:
                continue
            except StoreError as exc:
                log.warning("could not record a refused call to %s: %s", object_id, exc)
                return

    async def _compact(
        self, tenant: str, obj: GovernedObject, stored_bytes: int, now: datetime
    ) -> None:
        """Compact the object's lineage if the policy says it is due (never raises)."""
        if self.compaction is not None:
            await self.compaction.after_cycle(tenant, obj, stored_bytes=stored_bytes, now=now)

    async def prune_denials(self, *, limit: int | None = None) -> int:
        """One pass of :meth:`prune_denials_pass`; returns how many counters went."""
        return (await self.prune_denials_pass(limit=limit)).deleted

    async def prune_denials_pass(self, *, limit: int | None = None) -> DenialPrunePass:
        """Delete refusal counters untouched for :data:`DENIAL_RETENTION` among the next
        ``limit`` (default :data:`DENIAL_PRUNE_BATCH`) of them, and say whether the pass
        found a backlog. Passes go round the prefix: counters of callers refused every
        day, sorting first, would otherwise hide the rest for good."""
        limit = DENIAL_PRUNE_BATCH if limit is None else limit
        store = self.ctx.journal.store
        now = self.ctx.clock.now()
        keys = await self._pruning.next_page(store, limit=limit)
        items = await store.get_many(keys)
        expired = []
        for item in items.values():
            try:
                touched = _decode_touched(item.value)
            except GatewayError:
                touched = None
            if touched is None or now - touched >= DENIAL_RETENTION:
                expired.append(item)
        deleted = await delete_unchanged(store, expired)
        # At least half a page expired: more are likely behind it (the walk looks at one
        # page a pass), so the next pass should come soon, not at the usual pace.
        behind = len(expired) >= max(1, limit // 2)
        return DenialPrunePass(
            deleted=deleted, catch_up_in=DENIAL_CATCH_UP_SECONDS if behind else None
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class DenialPrunePass:
    """What one pass over the refusal counters did."""

    deleted: int
    #: Seconds to the next pass when this one found a backlog (at least half a page
    #: expired): :data:`DENIAL_CATCH_UP_SECONDS`; None when the usual pace keeps up.
    catch_up_in: float | None


def _compile_answers(answers: tuple[Answer, ...]) -> dict[str, CompiledAnswer]:
    return compile_answers(answers)


def _denial_key(tenant: str, object_id: str, caller: str, method: str, reason: str) -> str:
    digest = hashlib.sha256("\0".join((caller, method, reason)).encode()).hexdigest()[:32]
    return f"{tenant}/{object_id}/{digest}"


def _caller_key(tenant: str, object_id: str, caller: str) -> str:
    digest = hashlib.sha256(caller.encode()).hexdigest()[:32]
    return f"{tenant}/{object_id}/caller-{digest}"


def _encode_budget(window: datetime, written: int, unrecorded: int, touched: datetime) -> bytes:
    return json.dumps(
        {
            "window": format_time(window),
            "written": written,
            "unrecorded": unrecorded,
            "touched": format_time(touched),
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()


def _decode_budget(raw: bytes | None) -> tuple[datetime | None, int, int]:
    """(window start, refusals written in it, refusals not written since the last one)."""
    if raw is None:
        return None, 0, 0
    try:
        document = load_json(raw, error=StoreError, what="a caller's refusal record")
        return parse_time(document["window"]), int(document["written"]), int(document["unrecorded"])
    except (KeyError, TypeError, ValueError, GatewayError):
        return None, 0, 0  # damaged: the window starts again


def _encode_counter(count: int, recorded: datetime, touched: datetime) -> bytes:
    return json.dumps(
        {"count": count, "recorded": format_time(recorded), "touched": format_time(touched)},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()


def _decode_counter(raw: bytes | None) -> tuple[int, datetime | None]:
    if raw is None:
        return 0, None
    document = load_json(raw, error=StoreError, what="a refused-call counter")
    try:
        return int(document["count"]), parse_time(document["recorded"])
    except (KeyError, TypeError, ValueError, GatewayError):
        return 0, None  # a damaged counter only costs one more lineage entry


def _decode_touched(raw: bytes) -> datetime | None:
    document = load_json(raw, error=StoreError, what="a refused-call counter")
    try:
        return parse_time(document["touched"])
    except (KeyError, TypeError, ValueError, GatewayError):
        return None
