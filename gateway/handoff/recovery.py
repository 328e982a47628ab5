"""Recovery: moving every open migration on this host towards a final state.

Run at start-up and periodically by ``gateway serve``; safe to run anywhere, any number of
times, concurrently with the protocol itself, because every step it takes is one of the
protocol's own idempotent, ETag-conditional steps:

* source COMMITTED → re-send Commit until the destination confirms (DONE);
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
from datetime import datetime

from gateway import wire
from gateway.errors import GatewayError
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
                    await self.source.resume(migration_id)
                    progressed += 1
                elif (
                    record.step is SourceStep.FROZEN
                    and ctx.clock.now() > _expiry(record) + 2 * timing.clock_skew
                ):
                    # By the transfer's own signed expiry, not the configured TTL: an
                    # offline transfer file may be valid for days (gateway.handoff.offline).
                    await self.source.abort(migration_id, reason="transfer expired before commit")
                    progressed += 1
            except GatewayError as exc:
                log.info("source recovery of %s: %s", migration_id, exc)
        return progressed

    async def recover_destinations(self) -> int:
        ctx = self.ctx
        progressed = 0
        for key in await ctx.journal.store.list(OPEN_DESTINATION_PREFIX):
            migration_id = key.removeprefix(OPEN_DESTINATION_PREFIX)
            loaded = await ctx.journal.destination(migration_id)
            if loaded is None or loaded.value.step is not DestinationStep.STAGED:
                continue
            staged = loaded.value
            if ctx.clock.now() - staged.updated_at < ctx.timing.stage_timeout:
                continue
            try:
                await self.settle_destination(staged)
                progressed += 1
            except GatewayError as exc:
                log.info("destination recovery of %s: %s", migration_id, exc)
        await self.destination.prune_nonces()
        await self.destination.collect_uploads()
        return progressed

    async def settle_destination(self, staged: DestinationRecord) -> Outcome:
        """Ask the source of a STAGED copy what it decided, and follow it (now, whatever
        ``stage_timeout`` says: ``gateway migration resume`` and a draining serve)."""
        migration_id = staged.migration_id
        answer = await self.peers.client(staged.source_host).decision(migration_id)
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
    """When the transfer a FROZEN record journaled stops being accepted anywhere."""
    return wire.decode_transfer(wire.decode_envelope(record.transfer).payload).expires_at
