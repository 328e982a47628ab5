"""Operations hooks: log context, Prometheus metrics and OpenTelemetry traces.

The handoff, runtime and stores call the small functions here at the moments an
operator cares about (a migration bound to a task, a transfer staged or activated, a
cycle evaluated, bytes streamed, a store call). This module decides what each call
does, so the call sites stay one line each.

Invariants:

* **Off costs nothing.** With metrics and tracing off (the default), every hook is
  one global lookup and a return: ``prometheus_client`` and ``opentelemetry`` are
  not even imported. They are imported only by :func:`enable_metrics` and
  :func:`gateway.observability.tracing.configure_tracing`, which ``gateway serve``
  (and commands that move objects) call when an operator asked for them.
* **Bounded labels.** No metric label takes a value chosen by a peer or a user
  without a bound: tenants come from the configuration, peers are the configured
  peers (any other authenticated host is counted as ``other``), error labels are
  the names of our own exception classes. Migration and object ids are never labels;
  they go to log lines and span attributes, which have no cardinality cost.
* **Hooks never fail the caller.** Observing is not worth a failed migration: the
  hooks only touch in-memory counters and context variables.
* **Lower layers only.** This package imports nothing from the handoff, runtime,
  transport or CLI; they import it (arrows point down).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextvars import ContextVar
from datetime import datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, ParamSpec, TypeVar

if TYPE_CHECKING:
    from gateway.model import GovernedObject
    from gateway.observability.metrics import Metrics

P = ParamSpec("P")
R = TypeVar("R")

#: The handoff a task is working on: ``migration_id``, ``object_id``, ``peer``, ``tenant``.
#: Each gRPC call and each asyncio task runs in its own copy of the context, so a
#: binding made while serving one migration never leaks into another one's lines.
#: (The default is an immutable empty mapping: a ContextVar default is shared by all.)
HANDOFF: ContextVar[Mapping[str, str]] = ContextVar("gateway_handoff", default=MappingProxyType({}))

#: Field names a handoff binding carries, in the order log lines show them.
HANDOFF_FIELDS = ("migration_id", "object_id", "peer", "tenant")


class _State:
    metrics: Metrics | None = None
    tracing: bool = False


_state = _State()


def current_metrics() -> Metrics | None:
    """The live metrics, or None when metrics are off."""
    return _state.metrics


def enable_metrics(*, tenants: tuple[str, ...], peers: tuple[str, ...]) -> Metrics:
    """Create this process's metrics (idempotent); tenants and peers bound the labels."""
    if _state.metrics is None:
        from gateway.observability.metrics import Metrics

        _state.metrics = Metrics(tenants=tenants, peers=peers)
        for cls in _metered:
            _state.metrics.time_store_methods(cls)
    return _state.metrics


def _tracing_enabled(on: bool) -> None:
    _state.tracing = on


# --- handoff context ---------------------------------------------------------------------


def bind(
    *,
    migration_id: str | None = None,
    object_id: str | None = None,
    peer: str | None = None,
    tenant: str | None = None,
) -> None:
    """Say which handoff the current task works on (fields given replace earlier ones).

    Every log line written afterwards in this task carries them (see
    :mod:`gateway.observability.logs`), and so does the current trace span.
    """
    if migration_id and object_id and peer and tenant:
        # All four (every migration's source and destination bind them so): the same dict
        # as below, without the generator and its tuples.
        given = {
            "migration_id": migration_id,
            "object_id": object_id,
            "peer": peer,
            "tenant": tenant,
        }
    else:
        given = {
            name: value
            for name, value in (
                ("migration_id", migration_id),
                ("object_id", object_id),
                ("peer", peer),
                ("tenant", tenant),
            )
            if value
        }
    HANDOFF.set({**HANDOFF.get(), **given})
    if _state.tracing:
        from gateway.observability.tracing import annotate

        annotate(given)


def traced(name: str) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Run an async function in its own span ``name`` (a no-op wrapper with tracing off).

    A migration started here is the root of one trace: the Prepare/Commit calls it
    makes are child spans, and their W3C ``traceparent`` carries the trace to the
    destination gateway and to Dapr sidecars.
    """

    def wrap(function: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(function)
        async def run(*args: P.args, **kwargs: P.kwargs) -> R:
            if not _state.tracing:
                return await function(*args, **kwargs)
            from gateway.observability.tracing import span

            with span(name):
                return await function(*args, **kwargs)

        return run

    return wrap


# --- metrics hooks -----------------------------------------------------------------------


def migration_settled(
    role: str, outcome: str, *, tenant: str, started: datetime | None, at: datetime
) -> None:
    """A migration reached a final step on this side (``role``: source or destination);
    ``started``: when this side first journaled it, for the duration histogram."""
    if _state.metrics is not None:
        _state.metrics.migration_settled(role, outcome, tenant=tenant, started=started, at=at)


def migration_refused(rpc: str, *, tenant: str = "") -> None:
    """A Prepare was refused here: the destination side's ``refused`` outcome."""
    if _state.metrics is not None and rpc in ("Prepare", "PrepareStream"):
        _state.metrics.migration_settled("destination", "refused", tenant=tenant, started=None)


def arrived(staged: GovernedObject, *, tenant: str, started: datetime, at: datetime) -> None:
    """An object became live here at ``at``: the destination's ``activated`` outcome,
    and its blackout, from the source's FROZEN lineage entry (the source's clock, within
    the configured clock skew of ours) until now."""
    observed = _state.metrics
    if observed is None:
        return
    from gateway.lineage import EntryKind  # here: the CLI imports this package for every command

    observed.migration_settled("destination", "activated", tenant=tenant, started=started, at=at)
    for entry in reversed(staged.lineage.entries):
        if entry.kind is EntryKind.FROZEN:
            observed.blackout.observe(max(0.0, (at - entry.time).total_seconds()))
            break


def peer_error(peer: str, rpc: str, error: str, *, direction: str) -> None:
    """A call with ``peer`` failed with ``error`` (one of our error class names, or a gRPC
    status name); ``direction``: in = it called us, out = we called it."""
    if _state.metrics is not None:
        _state.metrics.peer_error(peer, rpc, error, direction=direction)


def cycle_evaluated(tenant: str, *, lag: float, rules: int, admitted: int, denied: int) -> None:
    """One evaluation cycle ran ``lag`` seconds after it was due."""
    if _state.metrics is not None:
        _state.metrics.cycle_evaluated(
            tenant, lag=lag, rules=rules, admitted=admitted, denied=denied
        )


#: What a stream carries: bytes, or views of received messages (transport/framing.py).
B = TypeVar("B", bound=bytes | memoryview)


def streamed(chunks: AsyncIterator[B], direction: str) -> AsyncIterator[B]:
    """``chunks`` as they are, counted into the bytes-streamed counter when metrics are on."""
    if _state.metrics is None:
        return chunks
    return _state.metrics.counted(chunks, direction)


_metered: list[type] = []

C = TypeVar("C", bound=type)


def metered_store(cls: C) -> C:
    """Class decorator for a :class:`~gateway.stores.StateStore` implementation: its
    methods are timed once metrics are enabled. They are wrapped only then (see
    :func:`enable_metrics`), so with metrics off a store call pays nothing at all."""
    _metered.append(cls)
    if _state.metrics is not None:
        _state.metrics.time_store_methods(cls)
    return cls


def since(moment: datetime, now: datetime) -> float:
    return (now - moment).total_seconds()


__all__ = [
    "HANDOFF",
    "HANDOFF_FIELDS",
    "arrived",
    "bind",
    "current_metrics",
    "cycle_evaluated",
    "enable_metrics",
    "metered_store",
    "migration_refused",
    "migration_settled",
    "peer_error",
    "since",
    "streamed",
    "traced",
]
