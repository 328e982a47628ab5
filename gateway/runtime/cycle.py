"""One evaluation cycle of one object: evaluate its rules, admit each proposed action,
and commit the result — data, lineage, next due time, outbox events — in one transaction.

Invariants this module keeps:

* **Idempotent per generation.** A cycle runs for the generation the object is at and
  leaves it at the next one. The commit is conditional on the object's ETag, so two
  triggers for the same generation (or a trigger racing a freeze) commit at most once;
  the loser changes nothing, because its effects existed only in its transaction.
* **Admission before action.** Every proposal is checked against the object's effective
  authority on this host; admitted and denied proposals are both recorded in the lineage,
  with the reason.
* **No gap, no repeat.** Each committed cycle records one ``evaluated`` entry carrying
  the generation it ran for; generations in the lineage are consecutive across hosts,
  because the generation travels with the object and a frozen object never commits a
  cycle.
* **A batch is as safe as its members.** :meth:`CycleRunner.run_many` reads several
  objects in one call and commits them in one transaction, each put under its own ETag;
  if any condition fails the transaction wrote nothing and each object is committed on
  its own, so a lost race costs only the object that lost it, and each object's failure
  is its own answer. The crash points ``cycle.before-commit`` / ``cycle.after-commit``
  stay on either side of the commit.
* **A remembered object is exactly the stored one.** The journal remembers the bytes a
  cycle wrote for an object and that object (one memo of objects per host, shared with
  migrations, see :class:`gateway.handoff.journal._Objects`), and serves a read from it
  only when the store holds exactly those bytes (encoding is exact).
* **Shortcuts are exact.** What a cycle remembers between cycles (compiled rules, decoded
  data, permitted admissions) is keyed by the identity of the immutable value it was
  computed from, held by the memo so the identity cannot be reused; a hit is what
  computing it again would give, and a refusal (data rules cannot read, an admission
  denied) is never remembered. The data a write merged is handed to the next cycle
  (keyed by the written bytes) only where decoding those bytes gives exactly it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, NamedTuple

from gateway import observability
from gateway._crash import crash_point
from gateway._gc import drop_traceback
from gateway._lru import IdentityLru, IdleLru
from gateway._slots import builder, replacing, tuple_builder
from gateway._time import format_time
from gateway.authority import EffectiveAuthority
from gateway.errors import (
    ActionUnavailableError,
    AdmissionDeniedError,
    ConcurrencyError,
    LimitExceededError,
    RuleError,
)
from gateway.handoff.context import HostContext
from gateway.handoff.journal import object_key
from gateway.limits import MAX_COUNTER, next_counter
from gateway.lineage import EntryKind, Lineage, digest
from gateway.model import MAX_DATA_BYTES, CycleState, GovernedObject, LifecycleState
from gateway.rules import RuleSet, check_patch, compiled, dump_tree, load_data
from gateway.runtime.compaction import Compaction
from gateway.runtime.outbox import Event, event_key, outbox_puts, pending_event
from gateway.stores import Operation

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Wake:
    """A message waking an object (gateway/runtime/events.py)."""

    event: Mapping[str, Any]  #: the CloudEvent the rules see as ``event``
    label: str  #: how the lineage names it: "message <digest> on <topic> ..."
    key_prefix: str  #: outbox keys of what its rules publish: ``<prefix>/<n>``


#: Why a binding action is refused on a host without a sidecar (the embedded default).
NO_BINDINGS = (
    "this host has no Dapr sidecar, and output bindings are carried out only through one "
    "(run the object on a Dapr host, or use an invoke action)"
)


class CycleResult(enum.Enum):
    EVALUATED = "evaluated"
    NOT_DUE = "not-due"
    SKIPPED = "skipped"  #: not ACTIVE here, not cycling, or already past that generation
    CONFLICT = "conflict"  #: somebody else wrote the object first; nothing happened


@dataclass(frozen=True, slots=True, kw_only=True)
class CycleReport:
    result: CycleResult
    #: the object's cycle state afterwards; None when it is not cycling here or unknown
    cycle: CycleState | None = None
    admitted: int = 0
    denied: int = 0


class _Current(NamedTuple):
    """An object as stored now: the object, the ETag it is stored under, its store key
    and what this runner derived from it before (if it did). (This and :class:`_Prepared`
    are made once per cycle and never leave this module: an immutable tuple costs half
    of a frozen dataclass's field-by-field construction.)"""

    key: str
    obj: GovernedObject
    etag: str
    derived: _Derived | None


class _Prepared(NamedTuple):
    """One object's evaluated cycle, not committed yet."""

    key: str  #: the object's store key
    derived: _Derived  #: what the cycle derived from the object (kept for its next cycle)
    evaluated: GovernedObject
    operations: list[Operation]
    stored: bytes  #: the object's encoded bytes (written by ``operations``)
    now: datetime
    admitted: int
    denied: int


# Each made once per cycle (gateway/_slots.py), from all their fields in order.
_current = tuple_builder(_Current)
_prepared = tuple_builder(_Prepared)


class CycleRunner:
    def __init__(
        self, context: HostContext, *, cache_size: int = 1024, compaction: Compaction | None = None
    ) -> None:
        self.ctx = context
        #: folds repeats into the cycle and compacts after it (on by default, ADR 0007)
        self.compaction = compaction if compaction is not None else Compaction(context)
        # The module-wide cache (gateway.rules.compiled) is shared with arrivals, which
        # compile an object's rules to check them; cache_size is kept for callers.
        del cache_size
        self._data = IdentityLru[bytes, dict[str, Any]](DATA_MEMO_ENTRIES)
        self._held = _Held()
        #: Admissions each authority permitted, shared by the objects holding that very
        #: authority (a host's objects mostly hold one of a few: gateway.wire decodes
        #: equal stored authorities to one value): an object's first cycle here asks
        #: none of what another object's cycle already found permitted.
        self._permitted = IdentityLru[EffectiveAuthority, set[tuple[str, str]]](
            PERMITTED_AUTHORITIES
        )

    def ruleset(self, obj: GovernedObject) -> RuleSet:
        """Compiled rules, cached by their content (objects share rule sets often)."""
        return compiled(obj.rules)

    async def run(
        self, tenant: str, object_id: str, *, generation: int | None = None
    ) -> CycleReport:
        """Evaluate the object once if it is due (and still at ``generation``, if given)."""
        ctx = self.ctx
        loaded = (await self._load(tenant, [object_id])).get(object_id)
        if loaded is None:
            return CycleReport(result=CycleResult.SKIPPED)
        if isinstance(loaded, Exception):
            raise loaded
        prepared = self._prepare(tenant, loaded, generation, ctx.clock.now())
        if isinstance(prepared, CycleReport):
            return prepared
        crash_point("cycle.before-commit")
        try:
            etags = await ctx.journal.store.transact(prepared.operations)
        except ConcurrencyError as exc:
            drop_traceback(exc)  # answered as CONFLICT: its frames are garbage
            self._held.forget(prepared.key)
            return CycleReport(result=CycleResult.CONFLICT)
        self._hold(prepared, etags)
        return await self._committed(tenant, prepared)

    async def run_many(
        self, tenant: str, due: Sequence[tuple[str, int]]
    ) -> dict[str, CycleReport | Exception]:
        """:meth:`run` for several objects of one tenant (each at the generation given),
        read in one store call and committed in one transaction.

        Each object keeps its own ETag condition, and what one object raises is its own
        answer (the others go on). If any condition fails the transaction wrote nothing;
        each object's cycle is then committed on its own (the store groups those commits),
        so a lost race costs only the object that lost it. A failure of the store itself
        is raised: it is the host's, not any object's."""
        ctx = self.ctx
        loaded = await self._load(tenant, [object_id for object_id, _ in due])
        now = ctx.clock.now()
        answers: dict[str, CycleReport | Exception] = {}
        ready: list[tuple[str, _Prepared]] = []
        for index, (object_id, generation) in enumerate(due):
            if index and not index % PREPARE_SLICE:
                await asyncio.sleep(0)  # let the loop serve others between slices
            current = loaded.get(object_id)
            if current is None:
                answers[object_id] = CycleReport(result=CycleResult.SKIPPED)
                continue
            if isinstance(current, Exception):
                answers[object_id] = current
                continue
            try:
                prepared = self._prepare(tenant, current, generation, now)
            except Exception as exc:  # the object's own failure, reported as its answer
                answers[object_id] = exc
                continue
            if isinstance(prepared, CycleReport):
                answers[object_id] = prepared
            else:
                ready.append((object_id, prepared))
        if not ready:
            return answers
        for _ in ready:
            crash_point("cycle.before-commit")
        committed = ready
        try:
            etags = await ctx.journal.store.transact(
                [operation for _, prepared in ready for operation in prepared.operations]
            )
        except ConcurrencyError as exc:
            drop_traceback(exc)  # answered below: its frames would hold the batch
            committed = []  # the transaction wrote nothing
        else:
            for _, prepared in ready:
                self._hold(prepared, etags)
        if not committed and len(ready) == 1:
            self._held.forget(ready[0][1].key)
            answers[ready[0][0]] = CycleReport(result=CycleResult.CONFLICT)
        elif not committed:
            outcomes = await asyncio.gather(
                *(ctx.journal.store.transact(p.operations) for _, p in ready),
                return_exceptions=True,
            )
            for (object_id, prepared), outcome in zip(ready, outcomes, strict=True):
                if isinstance(outcome, ConcurrencyError):
                    drop_traceback(outcome)
                    self._held.forget(prepared.key)
                    answers[object_id] = CycleReport(result=CycleResult.CONFLICT)
                elif isinstance(outcome, Exception):
                    answers[object_id] = outcome
                elif isinstance(outcome, BaseException):
                    raise outcome  # cancelled: the whole batch is
                else:
                    self._hold(prepared, outcome)
                    committed.append((object_id, prepared))
        # A compaction due after its cycle writes its archive segment and its object in
        # commits of its own, and objects created together come due together: those run
        # side by side, so the store groups their commits (one per batch, not one per
        # object). The rest answer at once: for them :meth:`_committed` is its crash point
        # and its report (its after_cycle asks the policy this very question again, with
        # the same object, size and time, and does nothing), so no coroutine is made.
        compacting: list[tuple[str, _Prepared]] = []
        for object_id, prepared in committed:
            if self.compaction.due(prepared.evaluated, prepared.stored, now=prepared.now):
                compacting.append((object_id, prepared))
                continue
            crash_point("cycle.after-commit")
            answers[object_id] = _evaluated_report(prepared)
        reports = await asyncio.gather(
            *(self._committed(tenant, prepared) for _, prepared in compacting),
            return_exceptions=True,
        )
        for (object_id, _), report in zip(compacting, reports, strict=True):
            if isinstance(report, Exception | CycleReport):
                answers[object_id] = report
            else:
                raise report  # cancelled: the whole batch is
        return answers

    async def _load(
        self, tenant: str, object_ids: Sequence[str]
    ) -> dict[str, _Current | Exception]:
        """The current version of each of these objects that exists, or why it cannot be
        read. An object this runner committed last, and nobody has written since, is
        taken from its memo after a read of the ETags alone (an ETag is never reused for
        a key: the same ETag is the same bytes); the others are read, in one call, and
        decoded (through the journal's memo of objects)."""
        store = self.ctx.journal.store
        keys = {object_id: object_key(tenant, object_id) for object_id in object_ids}
        held = self._held
        found: dict[str, _Current | Exception] = {}
        unknown = list(keys)
        # Only when something may be in the memo: a store that returns no ETags from its
        # writes (Dapr) never fills it, and its ETag read reads the values anyway.
        remembered = held.held(keys.values())
        if remembered:
            etags = await store.get_etags(remembered)
            unknown = []
            for object_id, key in keys.items():
                hit = held.get(key, etags.get(key))
                if hit is not None:
                    found[object_id] = hit
                else:
                    unknown.append(object_id)  # not remembered, written since, or gone
        if not unknown:
            return found
        items = await store.get_many([keys[object_id] for object_id in unknown])
        journal = self.ctx.journal
        for object_id in unknown:
            key = keys[object_id]
            item = items.get(key)
            if item is None:
                continue
            try:
                obj = journal.decode_object(key, item.value, item.entry_ids)
            except Exception as exc:  # the object's own failure, reported as its answer
                found[object_id] = exc
                continue
            found[object_id] = _current((key, obj, item.etag, held.derived(key)))
        return found

    def _hold(self, prepared: _Prepared, etags: Mapping[str, str] | None) -> None:
        """Remember the object a committed cycle wrote, under the ETag the store gave
        its write (a store that tells none leaves it to be read again)."""
        etag = None if etags is None else etags.get(prepared.key)
        if etag is None:
            self._held.forget(prepared.key)
        else:
            self._held.put(
                prepared.key, etag, prepared.evaluated, len(prepared.stored), prepared.derived
            )

    def _prepare(
        self,
        tenant: str,
        current: _Current,
        generation: int | None,
        now: datetime,
    ) -> CycleReport | _Prepared:
        """The object's cycle as operations to commit, or why it does not run now."""
        obj = current.obj
        if obj.state is not _ACTIVE or obj.cycle.interval is None:
            return CycleReport(result=CycleResult.SKIPPED)
        if generation is not None and obj.cycle.generation != generation:
            return CycleReport(result=CycleResult.SKIPPED, cycle=obj.cycle)
        if obj.cycle.next_due is not None and obj.cycle.next_due > now:
            return CycleReport(result=CycleResult.NOT_DUE, cycle=obj.cycle)
        derived = current.derived if current.derived is not None else _Derived(self._permitted)
        evaluated, events, admitted, denied = self._evaluate(obj, now, None, derived)
        evaluated = self.compaction.folded(obj, evaluated)
        metrics = observability.current_metrics()
        # What observability.cycle_evaluated does, its lag computed only when counted.
        if metrics is not None:
            metrics.cycle_evaluated(
                tenant,
                lag=observability.since(obj.cycle.next_due or now, now),
                rules=len(obj.rules),
                admitted=admitted,
                denied=denied,
            )
        stored = self.ctx.journal.put_object(tenant, evaluated, current.etag)
        operations: list[Operation] = [stored]
        for event in events:
            operations.extend(outbox_puts(event))
        return _prepared(
            (current.key, derived, evaluated, operations, stored.value, now, admitted, denied)
        )

    async def _committed(self, tenant: str, prepared: _Prepared) -> CycleReport:
        crash_point("cycle.after-commit")
        evaluated = prepared.evaluated
        await self.compaction.after_cycle(
            tenant, evaluated, stored_bytes=len(prepared.stored), now=prepared.now
        )
        return _evaluated_report(prepared)

    def evaluate(
        self,
        obj: GovernedObject,
        *,
        now: datetime,
        wake: Wake | None = None,
    ) -> tuple[GovernedObject, list[Event], int, int]:
        """The object after one evaluation at ``now``, its new events, and the admission counts.

        Without ``wake`` this is a cycle: the ``on: cycle`` rules run and the generation
        advances. With ``wake`` (a message, gateway/runtime/events.py) the ``on: message``
        rules run with the message as ``event``; the generation stays, the wake is recorded
        as ``woken``, and its events are keyed by the wake, never by the generation (which
        a cycle's events use)."""
        derived = self._held.derived(object_key(obj.tenant, obj.object_id)) or _Derived(
            self._permitted
        )
        return self._evaluate(obj, now, wake, derived)

    def _evaluate(
        self, obj: GovernedObject, now: datetime, wake: Wake | None, derived: _Derived
    ) -> tuple[GovernedObject, list[Event], int, int]:
        ctx = self.ctx
        generation = obj.cycle.generation
        entries = _Entries(obj, host=ctx.host, at=now, derived=derived)
        events: list[Event] = []
        admitted = denied = 0
        try:
            ruleset = derived.ruleset_of(obj)
            # The runner's memo serves an object's first cycle here (an arrival decoded
            # its data a moment ago); after that the object keeps its own, and new bytes
            # are its own write's (or another writer's), which the memo never held.
            data = derived.data_of(obj, self._loaded if derived.raw is None else _decoded)
            outcome = ruleset.evaluate(
                data=data,
                generation=generation,
                epoch=obj.epoch,
                now=now,
                host=ctx.host,
                trigger="cycle" if wake is None else "message",
                event=None if wake is None else wake.event,
            )
        except RuleError as exc:
            # Rules were checked when the object arrived; this only happens if data was
            # changed to something rules cannot read. Record it and move on.
            if wake is not None:
                detail = f"{wake.label}: not evaluated: {exc.reason}"
                return (
                    obj.record(EntryKind.WOKEN, host=ctx.host, at=now, detail=detail),
                    [],
                    0,
                    0,
                )
            detail = f"not evaluated: {exc.reason}"
            return (
                self._advance(
                    obj.record(EntryKind.EVALUATED, host=ctx.host, at=now, detail=detail), now
                ),
                [],
                0,
                0,
            )
        for proposal in outcome.proposals:
            try:
                if proposal.resource.startswith("binding:") and not ctx.output_bindings:
                    raise ActionUnavailableError(NO_BINDINGS)
                derived.require(obj.authority_at(now), proposal.resource, proposal.verb)
                if proposal.verb == "write":
                    merged = {**data, **proposal.value}
                    # The data was checked whole when the object was created or arrived,
                    # and each write since checked what it added: so does this one.
                    check_patch(merged, proposal.value)
                    encoded = dump_tree(merged)  # dump_data: JSON merged with CEL's values
                    if len(encoded) > MAX_DATA_BYTES:
                        raise AdmissionDeniedError(
                            f"the write would make the data {len(encoded)} bytes"
                        )
                    derived.wrote(obj, data, merged, proposal.value, encoded)
                    data = merged
                    entries.write(encoded)
                else:
                    events.append(
                        pending_event(
                            key=event_key(obj.tenant, obj.object_id, generation, len(events))
                            if wake is None
                            else f"{wake.key_prefix}/{len(events):03d}",
                            tenant=obj.tenant,
                            object_id=obj.object_id,
                            generation=generation,
                            rule=proposal.rule,
                            verb=proposal.verb,
                            resource=proposal.resource,
                            payload=proposal.value,
                            created_at=now,
                        )
                    )
            except (AdmissionDeniedError, RuleError) as exc:
                denied += 1
                why = _why_denied(obj, proposal.resource, proposal.verb, exc, now)
                entries.record(EntryKind.ACTION_DENIED, f"{proposal.describe()}: denied, {why}")
                continue
            admitted += 1
            entries.record(_ADMITTED, proposal.describe())
        if wake is not None:
            summary = (
                f"{wake.label}: {len(outcome.proposals)} of {ruleset.woken_by('message')} "
                "message rules fired"
            )
            if outcome.errors:
                summary += "; " + "; ".join(outcome.errors)
            entries.record(EntryKind.WOKEN, summary)
            return entries.result(), events, admitted, denied
        # The entry carries the generation; leaving it out of the text lets identical
        # cycles fold into one entry (repeats, ADR 0007).
        fired = ruleset.cycle_summaries
        count = len(outcome.proposals)
        summary = (
            fired[count]
            if count < len(fired)
            else f"{count} of {ruleset.woken_by('cycle')} rules fired"
        )
        if outcome.errors:
            summary += "; " + "; ".join(outcome.errors)
        entries.record(_EVALUATED_ENTRY, summary)
        return entries.result(cycle=self._next_cycle(obj, now)), events, admitted, denied

    def _loaded(self, obj: GovernedObject) -> dict[str, Any]:
        """``load_data(obj.data, obj.content_type)``, remembered by the data's bytes object:
        a cycle that wrote nothing leaves its object the very same bytes, and the next
        cycle then decodes nothing. Nobody mutates the result (rules see a copy, a write
        merges into a new dict), so handing out the same dict again is what decoding the
        same bytes again would give."""
        raw = obj.data
        if len(raw) > DATA_MEMO_MAX_BYTES:
            return load_data(raw, obj.content_type)
        data = self._data.get(raw)
        if data is None:
            data = load_data(raw, obj.content_type)
            if obj.content_type.startswith("application/json"):  # else {} (no JSON read)
                self._data.put(raw, data)
        return data

    @staticmethod
    def _advance(obj: GovernedObject, now: datetime) -> GovernedObject:
        return replace(obj, cycle=CycleRunner._next_cycle(obj, now))

    @staticmethod
    def _next_cycle(obj: GovernedObject, now: datetime) -> CycleState:
        """Next generation; the next due time keeps the rhythm but never bursts to catch up."""
        interval = obj.cycle.interval
        assert interval is not None
        # Arrival and creation keep counters and times within gateway.limits; an object
        # stored before those checks existed fails here with a GatewayError (and is
        # backed off, then quarantined by the scheduler) instead of an OverflowError.
        current = obj.cycle.generation
        # next_counter's answer, its message written only when it raises.
        generation = (
            current + 1
            if type(current) is int and 0 <= current < MAX_COUNTER
            else next_counter(current, what=f"the generation of {obj.object_id}")
        )
        try:
            scheduled = (obj.cycle.next_due or now) + interval
            next_due = scheduled if scheduled > now else now + interval
        except OverflowError as exc:
            raise LimitExceededError(
                f"the next due time of {obj.object_id} is beyond the last representable time",
                hint="recreate the object with a sane cycle interval",
            ) from exc
        return _cycle_state(generation, interval, next_due)


# Every committed cycle makes a CycleState and a CycleReport (gateway/_slots.py).
_cycle_state = builder(CycleState, "generation", "interval", "next_due")
_report = builder(CycleReport, "result", "cycle", "admitted", "denied")

#: Enum members read on every cycle, bound once: in Python 3.11 ``EnumType`` defines
#: ``__getattr__``, so each ``Kind.MEMBER`` read goes through the class's attribute hook
#: (about 420 instructions against about 40 for a module global; session 37).
_ACTIVE = LifecycleState.ACTIVE
_ADMITTED = EntryKind.ACTION_ADMITTED
_EVALUATED_ENTRY = EntryKind.EVALUATED
_EVALUATED = CycleResult.EVALUATED


def _evaluated_report(prepared: _Prepared) -> CycleReport:
    """The report of a committed cycle."""
    return _report(_EVALUATED, prepared.evaluated.cycle, prepared.admitted, prepared.denied)


def _decoded(obj: GovernedObject) -> dict[str, Any]:
    """``load_data(obj.data, obj.content_type)``, not remembered by the runner."""
    return load_data(obj.data, obj.content_type)


#: Objects a batch (:meth:`CycleRunner.run_many`) evaluates before it lets the event loop
#: run other tasks: about 5 ms of evaluations at a time, whatever the batch's size.
PREPARE_SLICE = 32

#: Decoded data remembered per runner, and the largest data remembered: bounded so
#: that the memo holds at most a few MiB of bytes beside the objects that own them. A
#: hit comes soon after the put (an arrival decoded, then its first cycles; a cycling
#: object keeps its own in :class:`_Derived`), so a thousand entries do.
DATA_MEMO_ENTRIES = 1024
DATA_MEMO_MAX_BYTES = 1024
#: Admissions remembered per authority (see :class:`_Derived`): an object's rules propose
#: a handful of distinct actions; the bound only keeps a dishonest rule set's many
#: resources from growing the memo (past it, admissions are asked every time).
ADMISSIONS_PER_OBJECT = 64
#: Authorities whose admissions a runner remembers (shared by the objects holding each).
PERMITTED_AUTHORITIES = 256
#: Committed objects a runner remembers (see :class:`_Held`): their encoded bytes in
#: all, and how long one must have gone unused before a newcomer may take its place.
#: The same budget as the journal's memo of objects, which mostly holds the same ones
#: (each cycle's write is remembered there too), so the two share the decoded objects.
#: 64 MiB holds P5's 10,000 objects (4-6 KB each encoded after a few cycles): an
#: object held takes about 2.6 times its encoded bytes (10 KB at 7 entries), so a full
#: memo is about 165 MiB of objects; 24 MiB at 4.3 times (the journal kept a copy of
#: the bytes and each log one of its entries') was about 103 MiB and held about half
#: of them, each miss a decode (docs/benchmarks.md, session 42).
HELD_BYTES = 64 << 20
HELD_IDLE_SECONDS = 60.0


class _Derived:
    """What a cycle computes from an object's immutable parts, kept per object for its
    next cycle: its compiled rules, its decoded data, the digest of its data and of its
    grants, and the admissions its authority permitted. Each is held with the value it
    was computed from and reused only while the object still carries that very value
    (``is``: the memo holds it, so its identity cannot be reused); a cycle rebuilds its
    object from the same values, so an object that cycles on here computes each of them
    once. Only permissions are remembered: a refusal is asked again, so it raises with
    its own reason every time. The admissions are those of the authority, not the object's: given
    ``permitted`` (the runner's, by authority identity), objects holding the very same
    authority share one set. Expiry is not this memo's business: the caller passes
    ``authority_at(now)``, which is NO_AUTHORITY once the grants expired."""

    __slots__ = (
        "authority",
        "canonical",
        "credentials",
        "data",
        "data_digest",
        "digested",
        "grants",
        "permitted",
        "raw",
        "rules",
        "ruleset",
        "shared",
        "written",
    )

    def __init__(
        self, permitted: IdentityLru[EffectiveAuthority, set[tuple[str, str]]] | None = None
    ) -> None:
        self.shared = permitted
        self.rules: object = None
        self.ruleset: RuleSet | None = None
        self.raw: bytes | None = None
        self.data: dict[str, Any] | None = None
        #: The last bytes a write of this object's cycles encoded (dump_data's), and a
        #: decoded data known to be what decoding its own dump gives (see :meth:`wrote`).
        self.written: bytes | None = None
        self.canonical: dict[str, Any] | None = None
        self.digested: bytes | None = None
        self.data_digest = b""
        self.grants: object = None
        self.credentials = b""
        self.authority: EffectiveAuthority | None = None
        self.permitted: set[tuple[str, str]] = set()

    def ruleset_of(self, obj: GovernedObject) -> RuleSet:
        """``compiled(obj.rules)``."""
        if self.rules is not obj.rules or self.ruleset is None:
            self.ruleset = compiled(obj.rules)
            self.rules = obj.rules
        return self.ruleset

    def data_of(
        self, obj: GovernedObject, load: Callable[[GovernedObject], dict[str, Any]]
    ) -> dict[str, Any]:
        """``load(obj)``, the object's decoded data (nobody mutates it: rules see a copy,
        a write merges into a new dict)."""
        if self.raw is not obj.data or self.data is None:
            self.data = load(obj)
            self.raw = obj.data
            # Bytes dump_data wrote (sorted keys at every level, all of them strings)
            # decode to a dict whose own dump is those bytes again.
            self.canonical = self.data if obj.data is self.written else None
        return self.data

    def wrote(
        self,
        obj: GovernedObject,
        before: dict[str, Any],
        merged: dict[str, Any],
        patch: Mapping[str, Any],
        encoded: bytes,
    ) -> None:
        """A write of ``obj``'s cycle merged ``patch`` into ``before`` (its data so far
        this cycle) and encoded the result (``encoded``, ``dump_data(merged)``).

        When decoding ``encoded`` would give ``merged`` itself, with its keys in the same
        order and values of the same types, ``merged`` is remembered as the decoding of
        ``encoded`` (the next cycle's data), and the next cycle decodes nothing. That
        holds when ``before`` is such a dict (decoded from bytes dump_data wrote, or
        remembered so) and the patch replaces values of keys it has with plain strings,
        integers, booleans or nulls: the keys keep their sorted places, nested values
        are those of ``before``, and each new value reads back as itself. Anything else
        (a new key, a nested or float value, data rules do not read as JSON) is decoded
        at the next cycle, as before."""
        if obj.blob is not None or not obj.content_type.startswith("application/json"):
            return
        self.written = encoded
        if before is not self.canonical or before is None:
            return
        for key, value in patch.items():
            if type(value) not in _PLAIN_LEAVES or key not in before:
                return
        self.raw, self.data, self.canonical = encoded, merged, merged

    def digest_of(self, data: bytes) -> bytes:
        """``digest(data)``: the data a cycle wrote is its object's data at the next
        cycle, whose entries record its digest again."""
        if self.digested is not data:
            self.data_digest = digest(data)
            self.digested = data
        return self.data_digest

    def credentials_of(self, obj: GovernedObject) -> bytes:
        """``obj.credentials_digest()``."""
        if self.grants is not obj.grants:
            self.credentials = obj.credentials_digest()
            self.grants = obj.grants
        return self.credentials

    def require(self, authority: EffectiveAuthority, resource: str, verb: str) -> None:
        """``authority.require(resource, verb)``, permissions remembered."""
        if self.authority is not authority:
            shared = self.shared
            permitted = None if shared is None else shared.get(authority)
            if permitted is None:
                permitted = set()
                if shared is not None:
                    shared.put(authority, permitted)
            self.permitted = permitted
            self.authority = authority
        if (resource, verb) in self.permitted:
            return
        authority.require(resource, verb)  # raises AdmissionDeniedError if refused
        if len(self.permitted) < ADMISSIONS_PER_OBJECT:
            self.permitted.add((resource, verb))


#: Values that JSON writes and reads back as the very same value and type.
_PLAIN_LEAVES = frozenset((str, int, bool, type(None)))


class _HeldObject(NamedTuple):
    """(A tuple: one is made per committed cycle, see :class:`_Current`.)"""

    etag: str
    obj: GovernedObject
    derived: _Derived


_held_object = tuple_builder(_HeldObject)  #: _HeldObject(etag, obj, derived)


class _Held:
    """The objects this runner's cycles committed, by store key, each with the ETag the
    store gave that write: while the key still has that ETag (nobody wrote it since), a
    cycle takes the object from here after reading the ETag alone, and neither reads
    nor compares nor decodes its bytes. An ETag is never reused for a key, so a hit is
    exactly the stored object. Also keeps each object's :class:`_Derived`, which stays
    usable after somebody else wrote the object (it checks what it was computed from).

    Bounded by the objects' encoded bytes, as the journal's memo of objects is
    (gateway.handoff.journal._Objects), and for the same reason evicts only an entry
    unused for :data:`HELD_IDLE_SECONDS`: a host cycling more objects than it holds
    visits them in turn, and plain LRU would evict each just before its next cycle."""

    __slots__ = ("_held",)

    def __init__(
        self,
        total_bytes: int = HELD_BYTES,
        *,
        idle_seconds: float = HELD_IDLE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._held: IdleLru[str, _HeldObject] = IdleLru(
            total_bytes, idle_seconds=idle_seconds, clock=clock
        )

    def __contains__(self, key: str) -> bool:
        return key in self._held

    def held(self, keys: Iterable[str]) -> list[str]:
        """Those of ``keys`` remembered, in the order given."""
        return self._held.held(keys)

    def get(self, key: str, etag: str | None) -> _Current | None:
        """The object stored under ``key`` if it is the one remembered (same ETag).

        Any lookup of a key held counts as its use, a hit or not: after another ETag
        (somebody else wrote it) the cycle goes on with the entry's :class:`_Derived`
        and its commit replaces the entry."""
        held = self._held.get(key)
        if held is None or held.etag != etag:
            return None
        return _current((key, held.obj, etag, held.derived))

    def derived(self, key: str) -> _Derived | None:
        held = self._held.peek(key)
        return None if held is None else held.derived

    def put(self, key: str, etag: str, obj: GovernedObject, size: int, derived: _Derived) -> None:
        """``obj`` (``size`` bytes encoded) is stored under ``key`` with ``etag``."""
        self._held.put(key, _held_object((etag, obj, derived)), size)

    def forget(self, key: str) -> None:
        self._held.forget(key)


class _Entries:
    """The lineage entries of one evaluation, recorded as they happen and appended at
    the end, with the object rebuilt once (one new lineage and object per evaluation
    instead of one per entry and per write, and the digests computed once per state).
    Each entry records what :meth:`GovernedObject.record` would: the object's epoch and
    generation, and the digests of its data and credentials as they are when the entry
    is made (after a write that preceded it)."""

    __slots__ = (
        "_at",
        "_credentials",
        "_data_digest",
        "_derived",
        "_host",
        "_obj",
        "_records",
        "data",
    )

    def __init__(self, obj: GovernedObject, *, host: str, at: datetime, derived: _Derived) -> None:
        self._obj = obj
        self._host = host
        self._at = at
        self._derived = derived
        self._credentials = derived.credentials_of(obj)  #: obj.credentials_digest()
        self._data_digest: bytes | None = None
        self._records: list[tuple[EntryKind, bytes, str]] = []
        self.data = obj.data

    def write(self, data: bytes) -> None:
        self.data = data
        self._data_digest = None

    def record(self, kind: EntryKind, detail: str) -> None:
        obj = self._obj
        if self._data_digest is None:
            self._data_digest = (
                obj.blob.digest if obj.blob is not None else self._derived.digest_of(self.data)
            )
        self._records.append((kind, self._data_digest, detail))

    def result(self, *, cycle: CycleState | None = None) -> GovernedObject:
        obj = self._obj
        lineage = obj.lineage.append_all(
            self._records,
            host=self._host,
            at=self._at,
            epoch=obj.epoch,
            generation=obj.cycle.generation,
            credentials_digest=self._credentials,
        )
        return _rebuilt(obj, self.data, lineage, obj.cycle if cycle is None else cycle)


#: ``replace(obj, data=data, lineage=lineage, cycle=cycle)`` at a fraction of the cost
#: (one per cycle): the other fields copied slot by slot (gateway/_slots.py, which
#: refuses a class with a ``__post_init__``: nothing would re-run it).
_rebuilt: Callable[[GovernedObject, bytes, Lineage, CycleState], GovernedObject] = replacing(
    GovernedObject, "data", "lineage", "cycle"
)


def _why_denied(
    obj: GovernedObject, resource: str, verb: str, error: Exception, now: datetime
) -> str:
    if isinstance(error, ActionUnavailableError):
        return error.reason  # whatever its grants say, this host cannot do it
    expires = obj.authority_expires
    if obj.authority.permits(resource, verb):
        if expires is not None and now >= expires:
            return f"its grants expired at {format_time(expires)}"
        return getattr(error, "reason", str(error))  # granted, and refused for its own cause
    if obj.authority.allow.permits(resource, verb):
        return "this host's configuration denies it"
    return "not in the object's effective authority here (its grants or this host's policy)"
