"""``gateway serve`` as a process: signals, reloads and a graceful stop.

* **SIGHUP** (and a change of the files or bundles the host loaded) reloads it without
  a restart (gateway.reload).
* **SIGTERM** (or the first Ctrl-C) drains: the server stops admitting new handoffs
  (Prepare and Evaluate are answered UNAVAILABLE, so a source aborts and keeps its
  object), keeps answering Commit, Abort, Decision and Claim so handoffs in flight can
  finish, and waits for them for up to half the grace period. It then settles the copies
  still staged here with the protocol's own step (each asks its source's decision and
  follows it: live here if committed, discarded if not), for the rest of the grace
  period, and exits 0. (A departure already committed is decided; confirming it is
  left to whichever side runs next, as recovery always does.) Whatever
  could not settle in time (a peer unreachable) stays in the journal, safe under
  presumed abort, and the next start finishes it; one line names each.
* A second Ctrl-C or SIGTERM stops at once (still exit 0 after closing the store).

``Serving.on_draining`` holds callbacks run as the drain begins (before anything is
refused), e.g. to turn the gRPC health status to NOT_SERVING so that load balancers
stop sending new work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.config import Config
from gateway.errors import GatewayError
from gateway.handoff.journal import OPEN_DESTINATION_PREFIX
from gateway.handoff.records import DestinationStep
from gateway.reload import DEFAULT_RELOAD_INTERVAL, Reloader
from gateway.transport.server import Gate

if TYPE_CHECKING:
    from gateway.host import Host

log = logging.getLogger(__name__)

#: Default seconds a SIGTERM leaves handoffs in flight to finish.
DEFAULT_GRACE = 10.0
MAX_GRACE = 3600.0
#: How often the drain looks at what is still in flight.
DRAIN_POLL = 0.1


class Serving:
    """One running ``gateway serve``: the host, its reloader and its drain."""

    def __init__(
        self,
        host: Host,
        *,
        grace: float = DEFAULT_GRACE,
        reload_interval: float = DEFAULT_RELOAD_INTERVAL,
    ) -> None:
        self.host = host
        self.grace = grace
        self.gate = Gate()
        self.reloader = Reloader(host, interval=reload_interval)
        #: Called (no arguments) when a drain begins; the health service's
        #: ``set_draining`` belongs here.
        self.on_draining: list[Callable[[], object]] = [host.readiness.set_draining]
        # Fail daprd's app health probe: the sidecar stops taking this replica's job
        # triggers and messages, and the scheduler gives them to the replicas that stay.
        if host.jobs is not None:
            self.on_draining.append(host.jobs.stop_accepting)
        if host.app_callback is not None:
            self.on_draining.append(host.app_callback.stop_accepting)
        self._terminate = asyncio.Event()
        self._signals = 0

    def _signalled(self) -> None:
        self._signals += 1
        self._terminate.set()

    async def run(self, announce: Callable[[int], None]) -> int:
        """Serve until SIGTERM/SIGINT, then drain; returns the exit status (0)."""
        host = self.host
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._signalled)
        self.reloader.install_signal()
        stop = asyncio.Event()
        ready: asyncio.Future[int] = loop.create_future()
        server = asyncio.create_task(host.serve(ready=ready, stop=stop, gate=self.gate))
        watcher: asyncio.Task[None] | None = None
        try:
            port = await asyncio.wait_for(asyncio.shield(ready), timeout=30)
            announce(port)
            watcher = asyncio.create_task(self.reloader.run(stop))
            terminate = asyncio.create_task(self._terminate.wait())
            await asyncio.wait({server, terminate}, return_when=asyncio.FIRST_COMPLETED)
            terminate.cancel()
            if server.done():
                await server  # it failed: raise why
            else:
                await self.drain()
        finally:
            stop.set()
            if watcher is not None:
                watcher.cancel()
            await asyncio.gather(server, *([watcher] if watcher else []), return_exceptions=True)
            await self.reloader.close()
            await host.close()
        return 0

    async def drain(self) -> None:
        """Stop admitting, let handoffs in flight finish, settle the rest, all within
        the grace period (see the module docstring)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        log.info("draining: no new handoffs; up to %.1f s for those in flight", self.grace)
        for callback in self.on_draining:
            try:
                callback()
            except Exception:
                log.exception("a draining callback failed")
        self.gate.close()
        deadline = start + self.grace
        settle_from = start + self.grace / 2
        settled = False
        while loop.time() < settle_from and self._signals < 2:
            if self.gate.in_flight == 0 and not await self._open():
                settled = True
                break
            await self._pause(DRAIN_POLL)
        if not settled and self._signals < 2:
            remaining = deadline - loop.time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settle(), timeout=max(0.0, remaining))
            while self.gate.in_flight and loop.time() < deadline and self._signals < 2:
                await self._pause(DRAIN_POLL)
        left = await self._open()
        for migration_id, what in left:
            log.warning(
                "draining: migration %s left open (%s); the next start finishes it",
                migration_id,
                what,
            )
        log.info(
            "drained in %.1f s: %d RPC(s) still in flight, %d migration(s) left open",
            loop.time() - start,
            self.gate.in_flight,
            len(left),
        )

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once on a second signal (stop now)."""
        self._terminate.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._terminate.wait(), timeout=seconds)

    async def _open(self) -> list[tuple[str, str]]:
        """Handoffs this server is in the middle of: copies staged here, waiting for
        their source's Commit or Abort. (A FROZEN departure is driven by the `gateway
        migrate` that froze it; a COMMITTED one is decided, its object the destination's,
        and whichever side comes back first confirms it: neither holds up a stop.)"""
        journal = self.host.journal
        found: list[tuple[str, str]] = []
        for key in await journal.store.list(OPEN_DESTINATION_PREFIX):
            migration_id = key.removeprefix(OPEN_DESTINATION_PREFIX)
            record = await journal.destination(migration_id)
            if record is not None and record.value.step is DestinationStep.STAGED:
                found.append(
                    (
                        migration_id,
                        f"{record.value.object_id} staged from {record.value.source_host}",
                    )
                )
        return found

    async def _settle(self) -> None:
        """Settle each copy staged here now: it follows its source's decision."""
        host = self.host
        for key in await host.store.list(OPEN_DESTINATION_PREFIX):
            migration_id = key.removeprefix(OPEN_DESTINATION_PREFIX)
            record = await host.journal.destination(migration_id)
            if record is None or record.value.step is not DestinationStep.STAGED:
                continue
            try:
                outcome = await host.recovery.settle_destination(record.value)
                log.info("draining: %s %s", migration_id, outcome.value)
            except GatewayError as exc:
                log.info("draining: %s not settled: %s", migration_id, exc)


def serve(config: Config, *, grace: float, reload_interval: float) -> int:
    """Run ``gateway serve`` for ``config`` until SIGTERM; the exit status."""

    async def run() -> int:
        from gateway import _gc, _malloc
        from gateway.host import Host

        host = await Host.open(config)
        serving = Serving(host, grace=grace, reload_interval=reload_interval)
        _gc.tune()  # start-up state is built: freeze it, collect less often (gateway/_gc.py)

        def announce(port: int) -> None:
            bind = config.listen.rsplit(":", 1)[0]
            print(f"gateway: serving {config.host} on {bind}:{port}", flush=True)

        # Freed heap back to the kernel now and then (gateway/_malloc.py: glibc held 1-10
        # MiB free between trims under the soak, docs/benchmarks.md "RSS under the soak").
        trimmer = _malloc.Trimmer().start()
        # Cyclic garbage (grpc.aio's, one cycle per RPC) freed every few seconds, not
        # once per GEN0_THRESHOLD allocations (gateway/_gc.py, Sweeper).
        sweeper = _gc.Sweeper().start()
        try:
            return await serving.run(announce)
        finally:
            await _gc.Sweeper.stop(sweeper)
            await _malloc.Trimmer.stop(trimmer)

    return asyncio.run(run())
