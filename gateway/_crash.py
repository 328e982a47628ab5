"""Named crash points for fault-injection tests. Never set in production.

``GATEWAY_TEST_CRASH_AT=point[,point...]`` makes the process SIGKILL itself when it reaches
a named point: no cleanup, no flush, exactly like a power cut or an OOM kill. The tests in
``tests/test_crash_recovery.py`` kill a real gateway process at every point in
:data:`CRASH_POINTS` and check from the stores that the handoff recovers.

The check is one frozenset lookup; with the variable unset the set is empty.
"""

from __future__ import annotations

import os
import signal

#: Every crash point, on both sides of the handoff, in protocol order.
CRASH_POINTS: tuple[str, ...] = (
    "source.after-freeze",  # FROZEN journaled, Prepare not sent
    "source.after-prepare",  # staged receipt in hand, COMMITTED not journaled
    "source.after-commit-journal",  # COMMITTED + tombstone written, Commit not sent
    "source.after-activation",  # activation receipt in hand, DONE not journaled
    "source.after-answer",  # migrate answered (activation confirmed), DONE not journaled
    "source.after-abort-journal",  # ABORTED journaled, destination not told
    "destination.before-stage",  # transfer verified, nothing written
    "destination.after-stage",  # STAGED written, receipt not sent
    "destination.before-activate",  # Commit received, nothing written
    "destination.after-activate",  # ACTIVE written, activation receipt not sent
    "destination.after-discard",  # ABORTED written, Abort not answered
    "home.before-claim",  # custody claim verified, nothing written
    "home.after-claim",  # custody record written, receipt not sent
    "cycle.before-commit",  # object evaluated, nothing written
    "cycle.after-commit",  # evaluation written, the trigger not answered
    "compaction.after-archive",  # archive segment written, compacted object not stored
    "events.after-ingest",  # a Dapr message kept on the bus, not yet acknowledged
    "outbox.after-deliver",  # an action carried out, its outbox record not marked delivered
)

_ARMED = frozenset(p for p in os.environ.get("GATEWAY_TEST_CRASH_AT", "").split(",") if p)
_UNKNOWN = _ARMED - set(CRASH_POINTS)
if _UNKNOWN:
    raise RuntimeError(f"GATEWAY_TEST_CRASH_AT names unknown crash points: {sorted(_UNKNOWN)}")


def crash_point(name: str) -> None:
    """Die here, now, if this point is armed."""
    if name in _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
