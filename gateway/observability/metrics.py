"""Prometheus metrics of one gateway process (imported only when metrics are on).

Every metric lives in this process's own registry (not prometheus_client's global
one), so two hosts in one test process never mix their numbers, and the endpoint
shows only gateway metrics plus the standard process and Python collectors.

Names and labels are documented in docs/observability.md; label values are bounded
(see :mod:`gateway.observability`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)

B = TypeVar("B", bound=bytes | memoryview)

log = logging.getLogger(__name__)

#: Seconds a migration or a blackout may take: sub-second on a LAN, minutes when a
#: peer is slow or a commit waits for recovery.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
#: A cycle due now runs within milliseconds; seconds mean the scheduler falls behind.
LAG_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300)
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)
#: Seconds between two counts of objects by tenant and state (each reads every object
#: record of the host's tenants).
OBJECTS_REFRESH_S = 15.0
#: Seconds at least between two counts: a settled migration brings the next count
#: forward, but not sooner than this after the last one (migrations settling every few
#: milliseconds made the counts run back to back).
OBJECTS_MIN_GAP_S = 1.0
#: The label given to a peer that is not configured here (bounds the label set).
OTHER = "other"


#: The StateStore methods whose latency is measured (gateway.stores.StateStore).
STORE_OPERATIONS = ("get", "get_many", "get_etags", "transact", "put", "delete", "list")


class Metrics:
    def __init__(self, *, tenants: tuple[str, ...], peers: tuple[str, ...]) -> None:
        self.tenants = frozenset(tenants)
        self.peers = frozenset(peers)
        # No *_created series: they double the lines scraped and few dashboards use them.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.migrations = Counter(
            "gateway_migrations",
            "Migrations that reached a final step on this host, by role and outcome",
            ["role", "outcome", "tenant"],
            registry=registry,
        )
        self.migration_seconds = Histogram(
            "gateway_migration_duration_seconds",
            "From this side's first journal record of a migration to its final step",
            ["role"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.blackout = Histogram(
            "gateway_migration_blackout_seconds",
            "How long an arriving object was live nowhere: from its FROZEN lineage entry "
            "(the source's clock) until active here",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.bytes = Counter(
            "gateway_streamed_bytes",
            "Object data streamed to (sent) or from (received) peers",
            ["direction"],
            registry=registry,
        )
        self.objects = Gauge(
            "gateway_objects",
            f"Object records on this host by tenant and state (counted every {OBJECTS_REFRESH_S:g} s)",
            ["tenant", "state"],
            registry=registry,
        )
        self.cycle_lag = Histogram(
            "gateway_cycle_lag_seconds",
            "How late an evaluation cycle ran after its due time",
            ["tenant"],
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.cycles = Counter(
            "gateway_cycles", "Evaluation cycles run", ["tenant"], registry=registry
        )
        self.rule_evaluations = Counter(
            "gateway_rule_evaluations",
            "Rules evaluated (one per rule per cycle)",
            ["tenant"],
            registry=registry,
        )
        self.actions = Counter(
            "gateway_rule_actions",
            "Actions proposed by rules, by admission decision (admitted or denied)",
            ["tenant", "decision"],
            registry=registry,
        )
        self.store_seconds = Histogram(
            "gateway_store_operation_seconds",
            "Latency of state store calls",
            ["operation"],
            buckets=STORE_BUCKETS,
            registry=registry,
        )
        self.peer_errors = Counter(
            "gateway_peer_errors",
            "Failed calls with a peer, by peer, RPC, error type and direction (in: it "
            "called us; out: we called it)",
            ["peer", "rpc", "error", "direction"],
            registry=registry,
        )
        self._timed: set[type] = set()
        #: set when a migration settles here, so that the objects gauge is counted again
        self._objects_changed: asyncio.Event | None = None

    # --- label bounds ----------------------------------------------------------------

    def _tenant(self, tenant: str) -> str:
        return tenant if tenant in self.tenants else OTHER

    def _peer(self, peer: str) -> str:
        return peer if peer in self.peers else OTHER

    # --- recording -------------------------------------------------------------------

    def migration_settled(
        self,
        role: str,
        outcome: str,
        *,
        tenant: str,
        started: datetime | None,
        at: datetime | None = None,
    ) -> None:
        self.migrations.labels(role, outcome, self._tenant(tenant) if tenant else "").inc()
        if self._objects_changed is not None:
            self._objects_changed.set()
        if started is not None and at is not None:
            self.migration_seconds.labels(role).observe(max(0.0, (at - started).total_seconds()))

    def peer_error(self, peer: str, rpc: str, error: str, *, direction: str) -> None:
        self.peer_errors.labels(self._peer(peer), rpc, error, direction).inc()

    def cycle_evaluated(
        self, tenant: str, *, lag: float, rules: int, admitted: int, denied: int
    ) -> None:
        tenant = self._tenant(tenant)
        self.cycles.labels(tenant).inc()
        self.cycle_lag.labels(tenant).observe(max(0.0, lag))
        self.rule_evaluations.labels(tenant).inc(rules)
        if admitted:
            self.actions.labels(tenant, "admitted").inc(admitted)
        if denied:
            self.actions.labels(tenant, "denied").inc(denied)

    async def counted(self, chunks: AsyncIterator[B], direction: str) -> AsyncIterator[B]:
        counter = self.bytes.labels(direction)
        async for chunk in chunks:
            counter.inc(len(chunk))
            yield chunk

    def time_store_methods(self, cls: type) -> None:
        """Wrap ``cls``'s store methods with a timer (once per class)."""
        if cls in self._timed:
            return
        self._timed.add(cls)
        for name in STORE_OPERATIONS:
            method = cls.__dict__.get(name)
            if method is not None:
                setattr(cls, name, self._timer(name, method))

    def _timer(
        self, name: str, method: Callable[..., Awaitable[Any]]
    ) -> Callable[..., Awaitable[Any]]:
        histogram = self.store_seconds.labels(name)

        @functools.wraps(method)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await method(*args, **kwargs)
            finally:
                histogram.observe(time.perf_counter() - start)

        return timed

    def set_objects(self, counts: Iterable[tuple[str, str, int]]) -> None:
        """Replace the object counts with ``(tenant, state, count)`` rows."""
        self.objects.clear()
        for tenant, state, count in counts:
            self.objects.labels(self._tenant(tenant), state).set(count)

    # --- exposition ------------------------------------------------------------------

    def serve(self, listen: str) -> int:
        """Serve ``/metrics`` over HTTP on ``listen`` (HOST:PORT; port 0 picks one);
        returns the port. Runs in a daemon thread of prometheus_client."""
        host, _, port = listen.rpartition(":")
        server, _thread = start_http_server(
            int(port), addr=host.strip("[]"), registry=self.registry
        )
        return int(server.server_address[1])

    async def count_objects(
        self, count: Callable[[], Awaitable[list[tuple[str, str, int]]]], stop: asyncio.Event
    ) -> None:
        """Refresh the objects gauge from ``count`` every :data:`OBJECTS_REFRESH_S` until
        ``stop``; sooner after a migration settled, but never within
        :data:`OBJECTS_MIN_GAP_S` of the last count."""
        changed = self._objects_changed = asyncio.Event()
        while not stop.is_set():
            changed.clear()
            try:
                self.set_objects(await count())
            except Exception:
                log.exception("counting objects for metrics failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=OBJECTS_MIN_GAP_S)
            if stop.is_set():
                return
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(changed.wait())]
            try:
                await asyncio.wait(waits, timeout=OBJECTS_REFRESH_S, return_when="FIRST_COMPLETED")
            finally:
                for waiting in waits:
                    waiting.cancel()
