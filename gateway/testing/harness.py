"""Running worlds: N real hosts started for a test, with helpers to move objects between
them, inject faults, and check the invariants from their stores.

Two modes, the same hosts (each organization with its own CA, keys, tenants and policy,
built by :func:`gateway.testing.build_world`):

* :class:`InProcessWorld` serves every host in this process, on an event loop of its own
  (a background thread), over real mTLS on loopback. A test can reach into a host
  (``world.hosts[H]``), run coroutines on that loop (``world.run(...)``), drop, duplicate
  or delay messages (``world.network(H)``) and skew a host's clock (``world.clock(H)``).
* :class:`ProcessWorld` runs every host as a ``gateway serve`` process and drives it as an
  operator does, with the ``gateway`` CLI. A test can SIGKILL a side at a named crash
  point (``world.migrate(..., crash_at=...)`` for the source, ``world.restart(H,
  crash_at=...)`` for a destination) and restart it.

Both read the outcome from the hosts' stores (:mod:`gateway.testing.invariants`). The
waiting helpers check "never two live copies" at every look, not only at the end.
Nothing here imports pytest; :mod:`gateway.testing.plugin` wraps these as fixtures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import Future
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from gateway._crash import CRASH_POINTS
from gateway._time import SystemClock
from gateway.config import load_config
from gateway.errors import ConfigError, GatewayError
from gateway.handoff.source import MigrationResult
from gateway.host import Host, load_trust, open_store
from gateway.keyring import load_keyring
from gateway.model import GovernedObject
from gateway.objectspec import ObjectSpec, parse_spec
from gateway.testing import (
    HostSpec,
    ServerProcess,
    World,
    build_world,
    create_from_spec,
    run_cli,
    start_all,
)
from gateway.testing.faults import FaultyPeers, SettableClock, install_network
from gateway.testing.invariants import (
    Snapshot,
    assert_at_most_one_live,
    assert_history_verifies,
    assert_no_widening,
    assert_one_live_copy,
    settled,
    snapshot,
)
from gateway.trust import TrustStore

T = TypeVar("T")

#: How long the waiting helpers wait by default before they fail the test.
SETTLE_TIMEOUT_S = 30.0
#: How often they look at the stores.
POLL_S = 0.1
#: How many double collects the waiting helpers try for a view that held at one instant.
CONSISTENT_ATTEMPTS = 20
#: The longest any one call into the in-process hosts' event loop may take.
CALL_TIMEOUT_S = 120.0

ObjectData = bytes | str | Mapping[str, Any]


def _data_bytes(data: ObjectData) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode()
    return json.dumps(data, sort_keys=True).encode()


def _spec_of(spec: ObjectSpec | Mapping[str, Any] | None, data: ObjectData) -> ObjectSpec:
    if isinstance(spec, ObjectSpec):
        return spec
    document = dict(spec) if spec is not None else {"data": json.loads(_data_bytes(data))}
    return parse_spec(document, source="the test's object spec")


def _check_points(points: Sequence[str]) -> str:
    unknown = sorted(set(points) - set(CRASH_POINTS))
    if unknown:
        raise ConfigError(
            f"unknown crash points {unknown}",
            hint=f"choose from gateway._crash.CRASH_POINTS: {', '.join(CRASH_POINTS)}",
        )
    return ",".join(points)


def _versions(found: Mapping[str, Snapshot]) -> dict[str, tuple[object, ...] | None]:
    """Each host's record version: what changes at every write of an object record."""
    return {
        host: None
        if s.object is None
        else (s.object.state, s.object.epoch, s.object.generation, s.object.migration_id)
        for host, s in found.items()
    }


class RunningWorld:
    """What both modes offer: hosts by id, their configs, handoffs, and invariants."""

    def __init__(self, world: World) -> None:
        self.world = world

    @property
    def host_ids(self) -> tuple[str, ...]:
        return tuple(self.world.configs)

    def config(self, host_id: str) -> Path:
        """The host's gateway.yaml."""
        return self.world.config(host_id)

    # --- what each mode provides ---------------------------------------------------------

    def snapshots(self, object_id: str, *, tenant: str = "default") -> dict[str, Snapshot]:
        """Every host's record of ``object_id`` and its journal records, from the stores."""
        raise NotImplementedError

    def trust(self, host_id: str) -> TrustStore:
        """What ``host_id`` trusts (its own domain and the bundles it imported)."""
        raise NotImplementedError

    def create(
        self,
        host_id: str,
        object_id: str,
        *,
        data: ObjectData = b"{}",
        spec: ObjectSpec | Mapping[str, Any] | None = None,
        tenant: str = "default",
    ) -> GovernedObject:
        """Create ``object_id`` on ``host_id``: from ``spec`` (an object spec as
        ``gateway object create --spec`` reads it: data, grant, cycle, rules), or with
        JSON ``data`` and no grants."""
        raise NotImplementedError

    def _attempt(self, object_id: str, *, source: str, to: str, tenant: str) -> None:
        """Start a migration; its failure is not an error (the handoff settles anyway)."""
        raise NotImplementedError

    def now(self, host_id: str) -> datetime:
        return SystemClock().now()

    # --- shared helpers --------------------------------------------------------------------

    def placement(self, object_id: str, *, tenant: str = "default") -> dict[str, GovernedObject]:
        """Every host's record of the object (ACTIVE, FROZEN or MOVED), by host id."""
        return {
            h: s.object
            for h, s in self.snapshots(object_id, tenant=tenant).items()
            if s.object is not None
        }

    def wait_settled(
        self, object_id: str, *, tenant: str = "default", timeout: float = SETTLE_TIMEOUT_S
    ) -> str:
        """Wait until no migration of the object is open anywhere; returns the one host
        that holds it ACTIVE. Every look also asserts that at most one copy is live."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.snapshots(object_id, tenant=tenant)
            if sum(s.live for s in found.values()) > 1:
                # Hosts are read one after another, so a migration that commits between
                # two reads can look like two live copies (the source read FROZEN just
                # before, the destination ACTIVE just after). Only a view that held at
                # one instant is evidence.
                consistent = self._consistent_snapshots(object_id, tenant=tenant)
                if consistent is None:
                    time.sleep(POLL_S)
                    continue
                found = consistent
            assert_at_most_one_live(found)
            if settled(found):
                return assert_one_live_copy(found)
            if time.monotonic() > deadline:
                open_on = sorted(h for h, s in found.items() if s.open or s.live)
                raise AssertionError(
                    f"{object_id} did not settle within {timeout} s (still open on {open_on})"
                )
            time.sleep(POLL_S)

    def _consistent_snapshots(
        self, object_id: str, *, tenant: str, attempts: int = CONSISTENT_ATTEMPTS
    ) -> dict[str, Snapshot] | None:
        """Every host's record as it was at one instant, by double collect: two reads of
        all hosts in a row that found every record at the same version mean each held
        that version from its first read to its second, so all of them at once between
        the two passes (versions never repeat: each cycle raises the generation, each
        freeze the epoch). ``None`` when the records kept moving for ``attempts`` passes."""
        before = self.snapshots(object_id, tenant=tenant)
        for _ in range(attempts):
            after = self.snapshots(object_id, tenant=tenant)
            if _versions(after) == _versions(before):
                return after
            before = after
        return None

    def handoff(
        self,
        object_id: str,
        *,
        source: str,
        to: str,
        tenant: str = "default",
        timeout: float = SETTLE_TIMEOUT_S,
    ) -> str:
        """Migrate ``object_id`` from ``source`` to ``to`` and wait until the handoff
        settled (committed and activated, or aborted and resumed); returns where the
        object lives now. A refused or failed migration is not an error here: assert on
        the returned host."""
        self._attempt(object_id, source=source, to=to, tenant=tenant)
        return self.wait_settled(object_id, tenant=tenant, timeout=timeout)

    def live_copy(self, object_id: str, *, tenant: str = "default") -> tuple[str, GovernedObject]:
        """The host that holds the object ACTIVE, and its record (asserting one live copy)."""
        found = self.snapshots(object_id, tenant=tenant)
        owner = assert_one_live_copy(found)
        obj = found[owner].object
        assert obj is not None
        return owner, obj

    def assert_one_live_copy(self, object_id: str, *, tenant: str = "default") -> str:
        """Exactly one host holds the object ACTIVE, the others a MOVED tombstone at most."""
        return self.live_copy(object_id, tenant=tenant)[0]

    def assert_no_widening(self, object_id: str, *, tenant: str = "default") -> None:
        """Where it lives, the object's authority is within its (verified) grant chain."""
        owner, obj = self.live_copy(object_id, tenant=tenant)
        assert_no_widening(obj, trust=self.trust(owner), at=self.now(owner))

    def assert_history_verifies(self, object_id: str, *, tenant: str = "default") -> None:
        """The lineage verifies and custody agrees with it, with the holder's trust."""
        owner, obj = self.live_copy(object_id, tenant=tenant)
        assert_history_verifies(obj, trust=self.trust(owner))

    def assert_invariants(self, object_id: str, *, tenant: str = "default") -> GovernedObject:
        """All three: one live copy, no widening, history verifies. Returns the live copy."""
        owner, obj = self.live_copy(object_id, tenant=tenant)
        trust = self.trust(owner)
        assert_no_widening(obj, trust=trust, at=self.now(owner))
        assert_history_verifies(obj, trust=trust)
        return obj

    def close(self) -> None:
        """Stop every host; the fixture does it when the test ends, a test may before
        reading the stores of stopped hosts."""
        raise NotImplementedError


class InProcessWorld(RunningWorld):
    """Every host served in this process, on an event loop in a background thread."""

    def __init__(self, world: World, *, running: Sequence[str] | None = None) -> None:
        super().__init__(world)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="gateway-world", daemon=True
        )
        self._thread.start()
        self.hosts: dict[str, Host] = {}
        self._clocks = {h: SettableClock() for h in world.configs}
        self._networks: dict[str, FaultyPeers] = {}
        self._serving: dict[str, tuple[asyncio.Event, asyncio.Task[None]]] = {}
        try:
            for host_id in running if running is not None else world.configs:
                self.start(host_id)
        except BaseException:
            self.close()
            raise

    def run(self, work: Coroutine[Any, Any, T], *, timeout: float = CALL_TIMEOUT_S) -> T:
        """Run ``work`` on the hosts' event loop and return its result (or raise its error)."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(work, self._loop)
        return future.result(timeout)

    def network(self, host_id: str) -> FaultyPeers:
        """The outgoing calls of ``host_id``: add drop/lose_reply/duplicate/delay rules."""
        return self._networks[host_id]

    def clock(self, host_id: str) -> SettableClock:
        """The clock ``host_id`` reads; ``skew`` it to put the host ahead or behind."""
        return self._clocks[host_id]

    def now(self, host_id: str) -> datetime:
        return self._clocks[host_id].now()

    # --- lifecycle -----------------------------------------------------------------------

    def start(self, host_id: str) -> Host:
        """Open ``host_id`` from its store and serve it (its clock keeps its skew; its
        network starts without faults)."""
        if host_id in self.hosts:
            raise ConfigError(f"{host_id} is already running", hint="stop() it first")

        async def open_and_serve() -> Host:
            host = await Host.open(
                load_config(self.world.config(host_id)), clock=self._clocks[host_id]
            )
            self._networks[host_id] = install_network(host)
            stop = asyncio.Event()
            ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            task = asyncio.create_task(host.serve(ready=ready, stop=stop))
            try:
                await asyncio.wait_for(ready, timeout=30)
            except BaseException:
                stop.set()
                await asyncio.gather(task, return_exceptions=True)
                await host.close()
                raise
            self._serving[host_id] = (stop, task)
            return host

        self.hosts[host_id] = self.run(open_and_serve())
        return self.hosts[host_id]

    def stop(self, host_id: str) -> None:
        """Stop serving ``host_id`` and close it (its store keeps everything journaled)."""
        host = self.hosts.pop(host_id)
        stop, task = self._serving.pop(host_id)

        async def shut() -> None:
            stop.set()
            await asyncio.gather(task, return_exceptions=True)
            await host.close()

        self.run(shut())

    def restart(self, host_id: str) -> Host:
        """Stop and start ``host_id``: what is not in its store is forgotten."""
        self.stop(host_id)
        return self.start(host_id)

    def close(self) -> None:
        """Stop every host and the event loop (again: nothing more happens)."""
        if self._loop.is_closed():
            return
        try:
            for host_id in list(self.hosts):
                with contextlib.suppress(Exception):
                    self.stop(host_id)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            self._loop.close()

    # --- acting --------------------------------------------------------------------------

    def create(
        self,
        host_id: str,
        object_id: str,
        *,
        data: ObjectData = b"{}",
        spec: ObjectSpec | Mapping[str, Any] | None = None,
        tenant: str = "default",
    ) -> GovernedObject:
        parsed = _spec_of(spec, data)
        return self.run(create_from_spec(self.hosts[host_id], object_id, parsed, tenant=tenant))

    def migrate(
        self, object_id: str, *, source: str, to: str, tenant: str = "default"
    ) -> MigrationResult:
        """``source`` migrates the object to ``to``; raises the GatewayError it failed with.
        Returns once the source's journal says so too (a migration answers DONE before its
        DONE record is written, see gateway.handoff.settles): tests read it next."""

        async def migrate() -> MigrationResult:
            host = self.hosts[source]
            result = await host.migrate(object_id, tenant=tenant, destination=to)
            await host.settled()
            return result

        return self.run(migrate())

    def _attempt(self, object_id: str, *, source: str, to: str, tenant: str) -> None:
        with contextlib.suppress(GatewayError):
            self.migrate(object_id, source=source, to=to, tenant=tenant)

    def recover(self, host_id: str) -> int:
        """One recovery pass on ``host_id`` now (serving hosts also run one every second)."""
        return self.run(self.hosts[host_id].recover())

    # --- reading -------------------------------------------------------------------------

    def snapshots(self, object_id: str, *, tenant: str = "default") -> dict[str, Snapshot]:
        async def read_all() -> dict[str, Snapshot]:
            found = {}
            for host_id in self.world.configs:
                host = self.hosts.get(host_id)
                if host is not None:
                    found[host_id] = await snapshot(
                        host.store, host=host_id, tenant=tenant, object_id=object_id
                    )
                    continue
                found[host_id] = await _snapshot_at(
                    self.world.config(host_id), host=host_id, tenant=tenant, object_id=object_id
                )
            return found

        return self.run(read_all())

    def trust(self, host_id: str) -> TrustStore:
        host = self.hosts.get(host_id)
        if host is not None:
            return host.trust
        return _trust_from_store(self.world.config(host_id), self.run)


def _trust_from_store(
    config_path: Path, run: Callable[[Coroutine[Any, Any, TrustStore]], TrustStore]
) -> TrustStore:
    config = load_config(config_path)
    own = load_keyring(config.keys).bundle

    async def read() -> TrustStore:
        store = await open_store(config)
        try:
            return await load_trust(store, own)
        finally:
            await store.close()

    return run(read())


class ProcessWorld(RunningWorld):
    """Every host a ``gateway serve`` process; the test drives them with the CLI."""

    def __init__(self, world: World, *, running: Sequence[str] | None = None) -> None:
        super().__init__(world)
        self._stack = contextlib.ExitStack()
        self.servers: dict[str, ServerProcess] = {}
        try:
            names = list(running if running is not None else world.configs)
            first = [ServerProcess(self.config(h)) for h in names]
            start_all(self._stack, *first)
            self.servers = dict(zip(names, first, strict=True))
        except BaseException:
            self._stack.close()
            raise

    def start(self, host_id: str, *, crash_at: Sequence[str] = ()) -> ServerProcess:
        """Start ``host_id``'s server, armed to SIGKILL itself at ``crash_at``."""
        env = {"GATEWAY_TEST_CRASH_AT": _check_points(crash_at)} if crash_at else {}
        server = ServerProcess(self.config(host_id), env=env)
        self._stack.callback(server.stop)
        self.servers[host_id] = server.start()
        return server

    def stop(self, host_id: str) -> None:
        """Stop ``host_id``'s server gracefully."""
        self.servers[host_id].stop()

    def kill(self, host_id: str) -> None:
        """SIGKILL ``host_id``'s server: no cleanup, like a power cut."""
        self.servers[host_id].kill()

    def restart(self, host_id: str, *, crash_at: Sequence[str] = ()) -> ServerProcess:
        """Stop (if still running) and start ``host_id`` again, armed at ``crash_at``."""
        self.servers[host_id].stop()
        return self.start(host_id, crash_at=crash_at)

    def wait_exited(self, host_id: str, *, timeout: float = SETTLE_TIMEOUT_S) -> int:
        """Wait for ``host_id``'s server to exit (e.g. at its crash point); its return code
        (``-signal.SIGKILL`` when it killed itself)."""
        process = self.servers[host_id].process
        assert process is not None
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{host_id} still runs after {timeout} s") from None

    def close(self) -> None:
        """Stop every server (again: nothing more happens)."""
        self._stack.close()

    # --- acting --------------------------------------------------------------------------

    def create(
        self,
        host_id: str,
        object_id: str,
        *,
        data: ObjectData = b"{}",
        spec: ObjectSpec | Mapping[str, Any] | None = None,
        tenant: str = "default",
    ) -> GovernedObject:
        # Beside the running server, on the same store, exactly as `gateway object create`.
        parsed = _spec_of(spec, data)

        async def create() -> GovernedObject:
            host = await Host.open(load_config(self.config(host_id)))
            try:
                return await create_from_spec(host, object_id, parsed, tenant=tenant)
            finally:
                await host.close()

        return asyncio.run(create())

    def cli(self, host_id: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """``gateway ARGS --config <host's config>``, with extra environment variables."""
        return run_cli(*args, config=self.config(host_id), env=env)

    def migrate(
        self,
        object_id: str,
        *,
        source: str,
        to: str,
        tenant: str = "default",
        crash_at: Sequence[str] = (),
    ) -> subprocess.CompletedProcess[str]:
        """``gateway migrate`` on ``source``: the CLI process coordinates the migration, so
        ``crash_at`` (``source.*`` points) kills it there; ``source``'s server recovers."""
        env = {"GATEWAY_TEST_CRASH_AT": _check_points(crash_at)} if crash_at else {}
        return run_cli(
            "migrate",
            object_id,
            "--to",
            to,
            "--tenant",
            tenant,
            config=self.config(source),
            env=env,
        )

    def _attempt(self, object_id: str, *, source: str, to: str, tenant: str) -> None:
        self.migrate(object_id, source=source, to=to, tenant=tenant)

    # --- reading -------------------------------------------------------------------------

    def snapshots(self, object_id: str, *, tenant: str = "default") -> dict[str, Snapshot]:
        async def read_all() -> dict[str, Snapshot]:
            found = {}
            for host_id in self.world.configs:
                found[host_id] = await _snapshot_at(
                    self.config(host_id), host=host_id, tenant=tenant, object_id=object_id
                )
            return found

        return asyncio.run(read_all())

    def trust(self, host_id: str) -> TrustStore:
        return _trust_from_store(self.config(host_id), asyncio.run)


def open_world(
    directory: Path,
    hosts: Sequence[HostSpec] | World,
    *,
    mode: str = "inprocess",
    running: Sequence[str] | None = None,
) -> InProcessWorld | ProcessWorld:
    """Build the hosts (or take an already built world) and start them; ``running``
    limits which are started (the others stay configured peers that do not answer)."""
    world = hosts if isinstance(hosts, World) else build_world(directory, hosts)
    if mode == "inprocess":
        return InProcessWorld(world, running=running)
    if mode == "process":
        return ProcessWorld(world, running=running)
    raise ConfigError(f"mode {mode!r}", hint='use mode="inprocess" or mode="process"')


async def _snapshot_at(config: Path, *, host: str, tenant: str, object_id: str) -> Snapshot:
    """A snapshot read straight from the store ``config`` names (the host is not open here)."""
    store = await open_store(load_config(config))
    try:
        return await snapshot(store, host=host, tenant=tenant, object_id=object_id)
    finally:
        await store.close()
