"""Recovery: moving every open migration on this host towards a final state.

Run at start-up and periodically by ``gateway serve``; safe to run anywhere, any number of
times, concurrently with the protocol itself, because every step it takes is one of the
protocol's own idempotent, ETag-conditional steps:

* source COMMITTED → re-send Commit until the destination confirms (DONE), or signs that
  it no longer knows the migration once its retention can have pruned it (DONE without
  an activation receipt, gateway.handoff.pruning). While the destination says it does
  not know the migration and the source cannot settle on that yet (too early, or
  unsigned), Commit is re-sent after a growing pause (:data:`FORGOTTEN_FIRST_PAUSE`,
  doubled each time up to :data:`FORGOTTEN_MAX_PAUSE`), not on every pass;
* source FROZEN whose transfer can no longer be accepted anywhere (past its signed
  expiry plus twice the clock skew) → abort: presumed abort, journal first;
* destination STAGED for longer than ``stage_timeout`` → ask the source for its
  decision (Decision) and follow it. A source that never committed answers ABORTED,
  and can never commit afterwards;
* settled history past its retention is pruned (gateway.handoff.pruning).

Only migrations marked open are looked at (``open/…`` markers, kept in the same
transactions as the journal), so a pass costs what is open, not all history.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway import wire
from gateway.errors import GatewayError, MigrationNotFoundError, PeerUnavailableError
from gateway.handoff.context import HostContext
from gateway.handoff.destination import Destination
from gateway.handoff.journal import OPEN_DESTINATION_PREFIX, OPEN_SOURCE_PREFIX
from gateway.handoff.messages import Outcome
from gateway.handoff.peers import Peers
from gateway.handoff.pruning import Pruner
from gateway.handoff.records import (
    DestinationRecord,
    DestinationStep,
    SourceRecord,
    SourceStep,
)
from gateway.handoff.source import Source, open_decision

log = logging.getLogger(__name__)

#: After the destination first says it does not know a committed migration (and the
#: source cannot settle on that yet), Commit is sent again this much later, then after
#: twice as long each time, never more than FORGOTTEN_MAX_PAUSE apart: the answer will
#: not change within seconds (it is about a retention of days), and the source must not
#: spend a call per pass for ever on each such migration.
FORGOTTEN_FIRST_PAUSE = timedelta(minutes=1)
FORGOTTEN_MAX_PAUSE = timedelta(hours=1)
#: Migrations whose pause is remembered (in memory: a restart asks each once again);
#: past it the oldest entry goes, and that migration is asked on the next pass.
FORGOTTEN_REMEMBERED = 4096


@dataclass(frozen=True, slots=True)
class _Pause:
    until: datetime
    length: timedelta


class Recovery:
    def __init__(
        self, context: HostContext, source: Source, destination: Destination, peers: Peers
    ) -> None:
        self.ctx = context
        self.source = source
        self.destination = destination
        self.peers = peers
        #: Settled history past its retention (gateway.handoff.pruning); run by
        #: gateway.host.Host.recover, and by a serving host on its own task.
        self.pruner = Pruner(context, retention=context.timing.settled_retention)
        #: Committed migrations whose destination said it does not know them: when to
        #: send Commit next (see FORGOTTEN_FIRST_PAUSE).
        self._forgotten: OrderedDict[str, _Pause] = OrderedDict()

    async def run_once(self) -> int:
        """One pass; returns how many migrations were moved forward."""
        return await self.recover_sources() + await self.recover_destinations()

    async def recover_sources(self) -> int:
        ctx = self.ctx
        timing = ctx.timing
        progressed = 0
        for key in await ctx.journal.store.list(OPEN_SOURCE_PREFIX):
            migration_id = key.removeprefix(OPEN_SOURCE_PREFIX)
            loaded = await ctx.journal.source(migration_id)
            if loaded is None:
                continue
            record = loaded.value
            try:
                if record.step is SourceStep.COMMITTED:
                    if self._paused(migration_id):
                        continue
                    result = await self.source.resume(migration_id)
                    if result.step is not SourceStep.COMMITTED:
                        self._forgotten.pop(migration_id, None)
                    progressed += 1
                elif (
                    record.step is SourceStep.FROZEN
                    and ctx.clock.now() > _expiry(record) + 2 * timing.clock_skew
                ):
                    # By the transfer's own signed expiry, not the configured TTL: an
                    # offline transfer file may be valid for days (gateway.handoff.offline).
                    await self.source.abort(migration_id, reason="transfer expired before commit")
                    progressed += 1
            except MigrationNotFoundError as exc:
                # The destination does not know it (its unsigned error, or a signed answer
                # too early to settle on): keep asking, less and less often.
                pause = self._pause(migration_id)
                log.warning(
                    "source recovery of %s: %s; Commit again in %s",
                    migration_id,
                    exc,
                    pause.length,
                )
            except GatewayError as exc:
                log.info("source recovery of %s: %s", migration_id, exc)
        return progressed

    def _paused(self, migration_id: str) -> bool:
        """Whether Commit of ``migration_id`` waits out a pause now."""
        pause = self._forgotten.get(migration_id)
        return pause is not None and self.ctx.clock.now() < pause.until

    def _pause(self, migration_id: str) -> _Pause:
        """The next, longer pause of ``migration_id`` (remembered, a bounded number)."""
        last = self._forgotten.pop(migration_id, None)
        length = (
            FORGOTTEN_FIRST_PAUSE if last is None else min(last.length * 2, FORGOTTEN_MAX_PAUSE)
        )
        pause = self._forgotten[migration_id] = _Pause(self.ctx.clock.now() + length, length)
        while len(self._forgotten) > FORGOTTEN_REMEMBERED:
            self._forgotten.popitem(last=False)
        return pause

    async def recover_destinations(self) -> int:
        """Settle the copies staged here past ``stage_timeout``, asking each one's source.

        A source that does not answer is asked no more in this pass: how many copies it
        left staged is its own doing, and each question to it costs retry_attempts x
        rpc_timeout, while other peers' copies (committed at their source, live nowhere
        until settled here) wait their turn in the same pass."""
        ctx = self.ctx
        progressed = 0
        unreachable: set[str] = set()
        for key in await ctx.journal.store.list(OPEN_DESTINATION_PREFIX):
            migration_id = key.removeprefix(OPEN_DESTINATION_PREFIX)
            loaded = await ctx.journal.destination(migration_id)
            if loaded is None or loaded.value.step is not DestinationStep.STAGED:
                continue
            staged = loaded.value
            if ctx.clock.now() - staged.updated_at < ctx.timing.stage_timeout:
                continue
            if staged.source_host in unreachable:
                continue
            try:
                try:
                    answer = await self.peers.client(staged.source_host).decision(migration_id)
                except PeerUnavailableError:
                    unreachable.add(staged.source_host)
                    raise
                await self._follow_decision(staged, answer)
                progressed += 1
            except GatewayError as exc:
                log.info("destination recovery of %s: %s", migration_id, exc)
        await self.destination.prune_nonces()
        await self.destination.collect_uploads()
        return progressed

    async def settle_destination(self, staged: DestinationRecord) -> Outcome:
        """Ask the source of a STAGED copy what it decided, and follow it (now, whatever
        ``stage_timeout`` says: ``gateway migration resume`` and a draining serve)."""
        answer = await self.peers.client(staged.source_host).decision(staged.migration_id)
        return await self._follow_decision(staged, answer)

    async def _follow_decision(self, staged: DestinationRecord, answer: bytes) -> Outcome:
        """Commit or discard a STAGED copy as its source's signed ``answer`` says."""
        migration_id = staged.migration_id
        outcome = open_decision(
            self.ctx, answer, source=staged.source_host, migration_id=migration_id
        )
        if outcome is Outcome.COMMITTED:
            await self.destination.commit(migration_id, peer=staged.source_host)
        else:
            await self.destination.abort(
                migration_id, peer=staged.source_host, reason="the source decided to abort"
            )
        return outcome


def _expiry(record: SourceRecord) -> datetime:
    """When the transfer a FROZEN record journaled stops being accepted anywhere (read
    from the parsed transfer: its lineage is not decoded for this)."""
    return wire.ParsedTransfer(wire.decode_envelope(record.transfer).payload).expires_at
