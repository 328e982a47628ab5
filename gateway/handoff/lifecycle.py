"""Lifecycle events of a handoff, as the handoff layer sees them.

A handoff step (commit on the source, activation on the destination, a refused fork)
must announce itself in the *same* store transaction that records the step, so that the
announcement is exactly-once decided. How it is announced (today: an outbox record that
the runtime's dispatcher delivers) belongs to the runtime, which sits above this layer.
So this module defines what a lifecycle event is and the one thing the handoff needs
from whoever delivers it: the store writes that record it. The host plugs the runtime's
outbox in (:class:`gateway.runtime.outbox.OutboxLifecycle`); the handoff never imports
the runtime.

Invariant: :meth:`LifecycleRecorder.writes` returns writes only, performs no I/O and
is deterministic for one event, so a retried transaction records the same event once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from gateway.stores import Operation


@dataclass(frozen=True, slots=True, kw_only=True)
class LifecycleEvent:
    """Something that happened to an object: ``migration.committed``,
    ``object.rehosted``, ``object.forked``. One per object, epoch and verb."""

    verb: str
    tenant: str
    object_id: str
    epoch: int
    generation: int
    payload: Any
    at: datetime


class LifecycleRecorder(Protocol):
    """Turns a lifecycle event into the store writes that record it, to be added to the
    transaction of the step it announces."""

    def writes(self, event: LifecycleEvent) -> Sequence[Operation]: ...
