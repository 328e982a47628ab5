"""Build and run multi-host, multi-domain gateway setups on one machine.

For tests, CI pipelines that simulate partner handoffs, and ``gateway demo``. Nothing is
faked: every host gets real dev certificates from its domain's CA, real signing keys, a
real SQLite file and a real mTLS gRPC server on 127.0.0.1; trust bundles are exchanged
with the same code as ``gateway trust export/import``.

Layout of a world directory::

    DIR/<trust domain>/ca/          the domain's dev CA
    DIR/<trust domain>/keys/        the domain's keys and bundle (shared by its hosts)
    DIR/<trust domain>/<host name>/ one host: gateway.yaml, tls/, state.db
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any, TypeVar

from gateway import envelope as dsse
from gateway import wire
from gateway._time import SystemClock
from gateway.config import load_config
from gateway.errors import GatewayError
from gateway.handoff.messages import NONCE_BYTES, Transfer
from gateway.handoff.source import new_migration_id
from gateway.host import Host, load_trust, open_store
from gateway.identity import HostId
from gateway.keyring import add_key, init_keys, load_keyring
from gateway.keys import Algorithm, Signer
from gateway.lineage import Checkpoint, LineageEntry
from gateway.model import GovernedObject
from gateway.objectspec import ObjectSpec
from gateway.scaffold import (
    PeerEntry,
    config_document,
    create_ca,
    create_store,
    free_port,
    issue_host_certificate,
    load_ca,
    write_config,
)
from gateway.stores import StateStore
from gateway.trust import TrustStore

T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class HostSpec:
    host_id: str
    tenants: tuple[str, ...] = ("default",)
    region: str = ""
    algorithm: Algorithm = Algorithm.ED25519
    handoff: dict[str, Any] = field(default_factory=dict)  #: extra ``handoff:`` settings
    policy: dict[str, Any] | None = None  #: the ``policy:`` section (offers, ceilings, deny)
    store: dict[str, Any] | None = None  #: the ``store:`` section (default: its own SQLite file)
    dapr: dict[str, Any] | None = None  #: the ``dapr:`` section (pub/sub, jobs)
    #: ``tenants:`` entries with limits (``{name, max_objects, ...}``) replacing plain names
    tenant_settings: tuple[dict[str, Any], ...] = ()
    #: peer host id -> the tenants of this host it may deliver into (default: all of them)
    peer_tenants: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class World:
    directory: Path
    configs: dict[str, Path]  #: host id -> its gateway.yaml

    def config(self, host_id: str) -> Path:
        return self.configs[host_id]

    def host_directory(self, host_id: str) -> Path:
        return self.configs[host_id].parent


def _host_name(host: HostId) -> str:
    return host.path.strip("/").replace("/", "-")


def build_world(directory: Path, specs: Sequence[HostSpec], *, at: datetime | None = None) -> World:
    """Create every host, let every host trust every other domain, and list all as peers,
    each bound to every tenant of the host listing it unless ``HostSpec.peer_tenants``
    says otherwise (a test world is one where every host may deliver everywhere).

    Runs its own event loop: call it outside one (e.g. before ``asyncio.run``).
    """
    at = at or SystemClock().now()
    hosts = [(spec, HostId.parse(spec.host_id)) for spec in specs]
    ports = {spec.host_id: free_port() for spec in specs}
    domains: dict[str, Path] = {}
    configs: dict[str, Path] = {}
    for spec, host in hosts:
        domain_dir = directory / host.trust_domain
        if host.trust_domain not in domains:
            ca = create_ca(domain_dir / "ca", host.trust_domain, at=at)
            init_keys(
                domain_dir / "keys",
                trust_domain=host.trust_domain,
                host=str(host),
                ca_certificate=ca.cert_pem,
                at=at,
                algorithm=spec.algorithm,
            )
            domains[host.trust_domain] = domain_dir
        else:
            ca = load_ca(domain_dir / "ca")
            add_key(domain_dir / "keys", host=str(host), at=at, algorithm=spec.algorithm)
        host_dir = domain_dir / _host_name(host)
        issue_host_certificate(ca, host, host_dir / "tls", at=at)
        configs[spec.host_id] = host_dir / "gateway.yaml"
    for spec, _host in hosts:
        peers = [
            PeerEntry(
                id=other.host_id,
                address=f"127.0.0.1:{ports[other.host_id]}",
                tenants=spec.peer_tenants.get(other.host_id, spec.tenants),
            )
            for other in specs
            if other.host_id != spec.host_id
        ]
        document = config_document(
            host=spec.host_id,
            listen=f"127.0.0.1:{ports[spec.host_id]}",
            region=spec.region,
            tenants=spec.tenants,
            peers=peers,
        )
        document["keys"] = "../keys"
        if spec.tenant_settings:
            by_name = {entry["name"]: entry for entry in spec.tenant_settings}
            document["tenants"] = [by_name.get(name, name) for name in spec.tenants]
        if spec.handoff:
            document["handoff"] = dict(spec.handoff)
        if spec.policy is not None:
            document["policy"] = spec.policy
        if spec.store is not None:
            document["store"] = spec.store
        if spec.dapr is not None:
            document["dapr"] = spec.dapr
        write_config(configs[spec.host_id], document)
        create_store(configs[spec.host_id])  # as `gateway init` does: hosts never create it
    bundles = {domain: load_keyring(path / "keys").export(at) for domain, path in domains.items()}

    async def exchange() -> None:
        for spec, host in hosts:
            opened = await Host.open(load_config(configs[spec.host_id]))
            try:
                for domain, signed in bundles.items():
                    if domain != host.trust_domain:
                        await opened.import_bundle(signed, at=at)
            finally:
                await opened.close()

    asyncio.run(exchange())
    return World(directory=directory, configs=configs)


@contextlib.asynccontextmanager
async def serving(
    world: World, host_ids: Sequence[str] | None = None
) -> AsyncIterator[dict[str, Host]]:
    """Open and serve the given hosts in this event loop; yields them by host id."""
    opened: dict[str, Host] = {}
    stops: list[asyncio.Event] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        for host_id in host_ids or list(world.configs):
            host = await Host.open(load_config(world.config(host_id)))
            opened[host_id] = host
            stop = asyncio.Event()
            ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            tasks.append(asyncio.create_task(host.serve(ready=ready, stop=stop)))
            stops.append(stop)
            await asyncio.wait_for(ready, timeout=30)
        yield opened
    finally:
        for stop in stops:
            stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for host in opened.values():
            await host.close()


async def create_from_spec(
    host: Host, object_id: str, spec: ObjectSpec, *, tenant: str = "default"
) -> GovernedObject:
    """Create ``object_id`` on ``host`` from a parsed object spec (see :func:`parse_spec`)."""
    return await host.create_object(
        object_id,
        tenant=tenant,
        data=spec.data,
        content_type=spec.content_type,
        grant=spec.grant,
        rules=spec.rules,
        cycle=spec.cycle,
        subscriptions=spec.subscriptions,
        answers=spec.answers,
    )


def sqlite_keys(path: Path, prefix: str = "") -> list[str]:
    """Every key under ``prefix`` in a SQLite store file, ascending, the unlisted ones
    (gateway.stores.UNLISTED: custody, fences, holds, usage) included: what a test checks
    was or was not written, read beside the store rather than through its listing."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        rows = db.execute(
            "SELECT key FROM items WHERE substr(key, 1, ?) = ? ORDER BY key",
            (len(prefix), prefix),
        )
        return [key for (key,) in rows]


def stored_keys(config_path: Path, prefix: str = "") -> list[str]:
    """:func:`sqlite_keys` of the SQLite store a host's config names."""
    path = load_config(config_path).sqlite
    if path is None:
        raise ValueError(f"{config_path} names no SQLite store")
    return sqlite_keys(path, prefix)


def read_store(config_path: Path, read: Callable[[StateStore], Awaitable[T]]) -> T:
    """Run ``read(store)`` on the store a host's config names (SQLite file or Dapr
    sidecar, opened as :meth:`Host.open` opens it), outside any running host; closes it.

    Runs its own event loop: call it outside one.
    """
    config = load_config(config_path)

    async def main() -> T:
        store = await open_store(config)
        try:
            return await read(store)
        finally:
            await store.close()

    return asyncio.run(main())


def trust_of(config_path: Path) -> TrustStore:
    """What a host trusts: its own domain's bundle and the ones it imported (read from
    its store)."""
    own = load_keyring(load_config(config_path).keys).bundle

    async def read(store: StateStore) -> TrustStore:
        return await load_trust(store, own)

    return read_store(config_path, read)


def run_cli(
    *args: str | os.PathLike[str],
    config: Path | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str | None] | None = None,
    columns: int | None = 200,
    timeout: float | None = 120,
) -> subprocess.CompletedProcess[str]:
    """``python -m gateway ARGS [--config CONFIG]`` as a subprocess, output captured as text;
    a non-zero exit is returned, not raised.

    Its environment is this process's with ``COLUMNS=columns`` (left as it is if
    ``None``), then ``env`` applied on top: a ``None`` value removes that variable.
    """
    argv = [sys.executable, "-m", "gateway", *(os.fspath(arg) for arg in args)]
    if config is not None:
        argv += ["--config", str(config)]
    environment = dict(os.environ)
    if columns is not None:
        environment["COLUMNS"] = str(columns)
    for name, value in (env or {}).items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    return subprocess.run(
        argv,
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class ServerProcess:
    """``gateway serve`` as a separate OS process, for crash and end-to-end tests."""

    def __init__(
        self,
        config: Path,
        *,
        log: Path | None = None,
        env: dict[str, str] | None = None,
        args: Sequence[str] = (),
    ) -> None:
        self.config = config
        self.args = tuple(args)  #: more ``gateway serve`` arguments (--grace, ...)
        self.log_path = log or config.parent / "serve.log"
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.address = ""

    def start(self, timeout: float = 30.0) -> ServerProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(self.config), *self.args],
            stdout=subprocess.PIPE,
            stderr=self._log,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline().decode("utf-8", "replace").strip()
            if line.startswith("gateway: serving"):
                self.address = line.rsplit(" ", 1)[-1]
                return self
            if not line and self.process.poll() is not None:
                break
        self.stop()
        raise GatewayError(
            f"gateway serve --config {self.config} did not start (see {self.log_path}): "
            + self.log_path.read_text(errors="replace")[-2000:]
        )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self, signum: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_all(stack: contextlib.ExitStack, *servers: ServerProcess) -> None:
    """Start servers side by side (each start waits for a Python interpreter to boot);
    returns once all are serving. ``stack`` stops them on exit, even if a start failed."""
    for server in servers:
        stack.callback(server.stop)
    with ThreadPoolExecutor(len(servers)) as pool:
        for started in pool.map(ServerProcess.start, servers):
            assert started.address


# --- a dishonest peer's tools ----------------------------------------------------------
#
# A dishonest peer holds real keys and runs modified software: these build what it can
# build (anything it signs itself) with the host's real keys, without touching its store.


def sealed_transfer(
    host: Host,
    obj: GovernedObject,
    destination: str,
    *,
    epoch: int | None = None,
    issued_at: datetime | None = None,
    ttl: timedelta = timedelta(seconds=60),
    source_host: str | None = None,
) -> Transfer:
    """``obj`` frozen and checkpointed by ``host`` for ``destination``, as its source would
    (``epoch`` overrides the epoch it is frozen at); nothing is read from or written to
    ``host``'s store."""
    now = issued_at or host.clock.now()
    migration_id = new_migration_id()
    base = replace(obj, epoch=epoch - 1) if epoch is not None else obj
    frozen = base.freeze(migration_id, destination=destination, host=host.host_id, at=now)
    sealed = frozen.lineage.sealed(
        object_id=obj.object_id,
        host=host.host_id,
        epoch=frozen.epoch,
        at=now,
        signer=host.context.signer,
        to=destination,
        migration=migration_id,
    )
    return Transfer(
        migration_id=migration_id,
        epoch=frozen.epoch,
        source_host=source_host or host.host_id,
        destination_host=destination,
        issued_at=now,
        expires_at=now + ttl,
        nonce=os.urandom(NONCE_BYTES),
        object=replace(frozen, lineage=sealed),
    )


def sign_transfer(
    host: Host,
    transfer: Transfer | bytes,
    *,
    signer: Signer | None = None,
    payload_type: str = dsse.PayloadType.TRANSFER,
) -> bytes:
    """The serialized envelope of ``transfer`` (or of an already encoded payload), signed
    by ``host``'s envelope key or ``signer``."""
    payload = wire.encode_transfer(transfer) if isinstance(transfer, Transfer) else transfer
    envelope = dsse.seal(payload, payload_type, [signer or host.context.signer])
    return wire.encode_envelope(envelope)


def rewrite_own_entries(
    obj: GovernedObject, order: Callable[[list[LineageEntry]], Sequence[LineageEntry]]
) -> GovernedObject:
    """The holder's best forgery of its own history: the entries after the last departure
    another host signed, chosen and ordered by ``order``, re-recorded with fresh links so
    the hash chain is intact (its own next checkpoint would cover them)."""
    cut = Checkpoint.decode(obj.lineage.checkpoints[-1].payload).size
    lineage = replace(obj.lineage, entries=obj.lineage.entries[:cut])
    for e in order(list(obj.lineage.entries[cut:])):
        lineage = lineage.append(
            e.kind,
            host=e.host,
            at=e.time,
            epoch=e.epoch,
            generation=e.generation,
            data_digest=e.data_digest,
            credentials_digest=e.credentials_digest,
            detail=e.detail,
        )
    return replace(obj, lineage=lineage)
