"""Reloading a running host: trust bundles, keys, peers, TLS files and policy, without a restart.

``gateway serve`` reloads on SIGHUP and when what it loaded changes (its configuration
file, its keys directory, its TLS files, the trust bundles imported into its store),
found by polling their digests every ``--reload-interval`` seconds (see
:class:`Watcher`; polling rather than inotify because trust bundles live in the store,
not in files, and Kubernetes swaps mounted files by symlink; a few KiB read every two
seconds costs nothing).

Invariants:

* **Whole or not at all.** A reload reads and checks everything first (configuration,
  keyring, trust, TLS files, a signing key usable now); any failure keeps the running
  snapshot and logs one line naming the file and the fix. Settings that cannot change
  under a running server (host id, listen address, store, Dapr, the tenant list, invoke
  targets, ``lineage``, ``observability``) are refused the same way: the line says to
  restart.
* **Immutable snapshots, swapped at once.** A snapshot is a new frozen
  :class:`~gateway.handoff.context.HostContext` and new handoff objects built on it
  (Source, Destination, Recovery, Compaction, CycleRunner, peer clients:
  ``gateway.host.snapshot_parts``), and every long-lived part (scheduler, jobs, events,
  calls, sweep, the RPC service) is pointed at them (``Host.rebind``); the swap is a handful of
  attribute assignments between two awaits of the event loop, so no step sees half of
  it. Nothing in an old snapshot is mutated.
* **The unit of consistency is one protocol step.** Each RPC and each recovery or
  cycle step runs entirely on the snapshot current when it began (the service picks
  its Source/Destination once per call). A handoff that spans a reload goes on under
  the new snapshot at its next step, which re-verifies what it needs from the journal
  (receipts and decisions under the new trust): a step refused by the new trust fails
  like any refusal, and presumed abort keeps the object in exactly one live place.
  Peer channels of an old snapshot are closed only after the longest step could have
  used them (RPC timeout × attempts).
* **Narrowing takes effect at once.** After a reload every ACTIVE object here is
  admitted again (its chain ∩ the new policy ∩ the ceiling for the peer it came from);
  where its effective authority changes, the new one is written with an ``updated``
  lineage entry saying so, in one conditional write (a cycle racing it loses and runs
  again on the new authority). An object staged under the old policy is admitted again
  when it is activated. A grant that no longer verifies (a revoked key) leaves the
  object with no authority.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.config import Config, load_config
from gateway.errors import ConcurrencyError, ConfigError, GatewayError
from gateway.handoff.journal import put_object
from gateway.keyring import Keyring
from gateway.keys import Purpose
from gateway.lineage import Checkpoint, EntryKind
from gateway.local import own_keyring, read_file
from gateway.model import NO_AUTHORITY, GovernedObject, LifecycleState
from gateway.transport.client import GrpcPeers
from gateway.trust import TrustStore

if TYPE_CHECKING:
    from gateway.host import Host

log = logging.getLogger(__name__)

#: Default seconds between two looks at the files and bundles a host loaded.
DEFAULT_RELOAD_INTERVAL = 2.0
#: A keys directory holds a few keys; anything much larger is not one (bounded reads).
MAX_WATCHED_FILES = 256
MAX_WATCHED_FILE_BYTES = 1 << 20
#: Tries of one object's re-admission when a cycle commits under it.
READMIT_ATTEMPTS = 8
#: Configuration a running server cannot change: (what, how to read it off a Config).
RESTART_ONLY: tuple[tuple[str, Callable[[Config], object]], ...] = (
    ("host.id", lambda c: c.host),
    ("listen", lambda c: c.listen),
    ("store", lambda c: (c.sqlite, c.dapr_store)),
    ("dapr", lambda c: c.dapr),
    ("tenants (the list)", lambda c: c.tenants),
    ("invoke", lambda c: dict(c.invoke)),
    # Compaction, archives and their retention, and logs, metrics and tracing are set up
    # once at start; a reload refuses a change to them rather than ignore it.
    ("lineage", lambda c: c.lineage),
    ("observability", lambda c: c.observability),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Loaded:
    """Everything a snapshot is built from, read and checked."""

    config: Config
    keyring: Keyring
    trust: TrustStore
    certificate: bytes
    private_key: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Reloaded:
    changes: tuple[str, ...]  #: what changed, for the log line
    readmitted: int = 0  #: objects whose effective authority changed


async def load(host: Host) -> Loaded:
    """Read and check what a reload of ``host`` would apply; raises, changing nothing."""
    from gateway.host import load_trust

    config = load_config(host.config.source)
    for name, read in RESTART_ONLY:
        if read(config) != read(host.config):
            raise ConfigError(
                f"{config.source}: {name} changed; a running server cannot change it",
                hint="restart `gateway serve` for that change (everything else reloads)",
            )
    keyring = own_keyring(config)
    now = host.clock.now()
    # A keyring with no key usable now would leave the host unable to sign anything.
    keyring.signer_for(Purpose.ENVELOPE, host=str(config.host), at=now)
    keyring.signer_for(Purpose.GRANT, host=str(config.host), at=now)
    trust = await load_trust(host.store, keyring.bundle)
    return Loaded(
        config=config,
        keyring=keyring,
        trust=trust,
        certificate=read_file(config.tls.certificate, "TLS certificate"),
        private_key=read_file(config.tls.private_key, "TLS private key"),
    )


def _differences(host: Host, new: Loaded) -> list[str]:
    old = host.config
    changes = [
        name
        for name, before, after in (
            ("peers", old.peers, new.config.peers),
            ("policy", old.policy, new.config.policy),
            ("handoff", old.handoff, new.config.handoff),
            ("tenant limits", dict(old.tenant_limits), dict(new.config.tenant_limits)),
            ("region", old.region, new.config.region),
        )
        if before != after
    ]
    if host.keyring.bundle != new.keyring.bundle or set(host.keyring.signers) != set(
        new.keyring.signers
    ):
        changes.append(f"keys (bundle sequence {new.keyring.bundle.sequence})")
    before = {d: b.fingerprint() for d, b in host.trust.bundles.items()}
    after = {d: b.fingerprint() for d, b in new.trust.bundles.items()}
    for domain in sorted(set(before) | set(after)):
        if before.get(domain) != after.get(domain):
            bundle = new.trust.bundles.get(domain)
            changes.append(
                f"trust {domain} "
                + (f"(sequence {bundle.sequence})" if bundle is not None else "(removed)")
            )
    if (host.certificate, host.private_key) != (new.certificate, new.private_key):
        changes.append("TLS certificate")
    return changes


def apply(host: Host, new: Loaded, *, retire: Callable[[GrpcPeers], None]) -> None:
    """Swap ``host`` to a snapshot built from ``new`` (no await: atomic on the loop).

    ``retire`` gets the old peer clients, to close once no step can still use them."""
    config = new.config
    now = host.clock.now()
    hostname = str(config.host)
    old_destination = host.destination

    def became_active(obj: GovernedObject) -> None:
        host._object_became_active(obj)
        # Staged under an older snapshot, maybe a wider policy: admitted again now.
        task = asyncio.get_running_loop().create_task(readmit_one(host, obj.tenant, obj.object_id))
        host._background.add(task)
        task.add_done_callback(host._background.discard)

    context = replace(
        host.context,
        region=config.region,
        trust=new.trust,
        signer=new.keyring.signer_for(Purpose.ENVELOPE, host=hostname, at=now),
        grant_signer=new.keyring.signer_for(Purpose.GRANT, host=hostname, at=now),
        timing=config.handoff,
        policy=config.policy,
        attenuate_on_rehost=config.handoff.attenuate_on_rehost,
        tenancy=config.tenancy,
        on_active=became_active,
    )
    peers = GrpcPeers(
        config.peers,
        certificate=new.certificate,
        private_key=new.private_key,
        roots_for=host._roots_for,
        timing=config.handoff,
        unknown=host._unknown_peer,
    )
    from gateway.host import snapshot_parts

    # ``lineage:`` is restart-only (RESTART_ONLY), so compaction keeps the running one's.
    source, destination, recovery, compaction, cycles = snapshot_parts(config, context, peers)
    # Uploads in flight are bounded per peer across snapshots, not per snapshot, and the
    # new snapshot's recovery never collects one the old snapshot is still streaming.
    destination._uploads = old_destination._uploads
    destination._uploading = old_destination._uploading
    old_peers = host.peers
    # --- the swap: no await from here to the end ---
    host.config = config
    host.keyring = new.keyring
    host.trust = new.trust
    host.certificate = new.certificate
    host.private_key = new.private_key
    host.context = context
    host.peers = peers
    host.source = source
    host.destination = destination
    host.recovery = recovery
    host.compaction = compaction
    host.cycles = cycles
    # The scheduler, jobs, events, calls, sweep and the RPC service onto the new snapshot.
    host.rebind()
    retire(old_peers)


def _came_from(obj: GovernedObject, host: str) -> str:
    """The host whose ceiling bounds the object here: the sender of its last arrival, or
    this host for an object created here (DESIGN.md §5)."""
    if obj.lineage.checkpoints:
        checkpoint = Checkpoint.decode(obj.lineage.checkpoints[-1].payload)
        if checkpoint.to == host:
            return checkpoint.host
    return host


async def readmit_one(host: Host, tenant: str, object_id: str) -> str | None:
    """Admit one ACTIVE object again under the current snapshot; write (and record) the
    new effective authority if it changed. Returns the lineage detail written, if any."""
    for _attempt in range(READMIT_ATTEMPTS):
        ctx = host.context
        loaded = await ctx.journal.object(tenant, object_id)
        if loaded is None or loaded.value.state is not LifecycleState.ACTIVE:
            return None
        obj = loaded.value
        now = ctx.clock.now()
        try:
            # Hops 0: the constraints on hops were checked at arrival and cannot have
            # changed; what a reload changes is policy, trust, region and ceilings.
            authority = ctx.admit(obj, peer=_came_from(obj, ctx.host), hops=0, at=now).authority
            why = "re-admitted under this host's reloaded configuration"
        except GatewayError as exc:
            authority = NO_AUTHORITY
            why = f"authority withdrawn on reload: {exc.reason}"
        if authority == obj.authority:
            return None
        detail = f"{why}: {obj.authority.allow or 'nothing'} → {authority.allow or 'nothing'}"
        if authority.deny.capabilities:
            detail += f" except {authority.deny}"
        updated = replace(obj, authority=authority).record(
            EntryKind.UPDATED, host=ctx.host, at=now, detail=detail
        )
        try:
            await ctx.journal.store.transact([put_object(tenant, updated, loaded.etag)])
        except ConcurrencyError:
            continue  # a cycle committed meanwhile: admit the fresh record
        log.info("%s (tenant %s): %s", object_id, tenant, detail)
        return detail
    log.warning("%s (tenant %s): kept changing; re-admitted at the next reload", object_id, tenant)
    return None


async def readmit_all(host: Host) -> int:
    """:func:`readmit_one` for every ACTIVE object here; returns how many changed."""
    changed = 0
    for tenant in host.config.tenants:
        for obj in await host.journal.objects(tenant):
            if obj.state is LifecycleState.ACTIVE and await readmit_one(
                host, tenant, obj.object_id
            ):
                changed += 1
    return changed


# --- watching ------------------------------------------------------------------------------


def _digest_file(digest: hashlib._Hash, path: Path) -> None:
    digest.update(str(path).encode() + b"\0")
    try:
        with path.open("rb") as handle:
            digest.update(handle.read(MAX_WATCHED_FILE_BYTES))
    except OSError as exc:
        digest.update(f"unreadable: {exc.strerror}".encode())


async def fingerprint(host: Host) -> bytes:
    """A digest of everything a reload reads: the configuration file, the keys
    directory, the TLS files and the trust bundles in the store."""
    from gateway.host import TRUST_PREFIX

    config = host.config
    digest = hashlib.sha256()

    def files() -> None:
        _digest_file(digest, config.source)
        try:
            entries = sorted(config.keys.iterdir())[:MAX_WATCHED_FILES]
        except OSError:
            entries = []
        for entry in entries:
            if entry.is_file():
                _digest_file(digest, entry)
        for path in (config.tls.certificate, config.tls.private_key, config.tls.authority):
            _digest_file(digest, path)

    await asyncio.to_thread(files)
    keys = await host.store.list(TRUST_PREFIX)
    items = await host.store.get_many(keys)
    for key in keys:
        if key in items:
            digest.update(key.encode() + b"\0" + hashlib.sha256(items[key].value).digest())
    return digest.digest()


class Reloader:
    """Reloads one serving host: on request (SIGHUP) and when :func:`fingerprint` moves."""

    def __init__(self, host: Host, *, interval: float = DEFAULT_RELOAD_INTERVAL) -> None:
        self.host = host
        self.interval = interval
        self.reloads = 0  #: applied reloads
        self._requested = asyncio.Event()
        self._lock = asyncio.Lock()
        self._seen = b""
        self._retired: set[asyncio.Task[None]] = set()

    def request(self) -> None:
        """Ask for a reload now (the SIGHUP handler)."""
        self._requested.set()

    def install_signal(self) -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.request)

    def _retire(self, peers: GrpcPeers) -> None:
        timing = self.host.config.handoff
        delay = timing.rpc_timeout.total_seconds() * (timing.retry_attempts + 1)

        async def later() -> None:
            try:
                await asyncio.sleep(delay)
            finally:
                await peers.close()

        task = asyncio.get_running_loop().create_task(later())
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    async def reload(self, *, why: str) -> Reloaded | None:
        """One reload; None (and one log line) if it failed and the old snapshot stays."""
        async with self._lock:
            try:
                self._seen = await fingerprint(self.host)
                loaded = await load(self.host)
                changes = _differences(self.host, loaded)
                if not changes:
                    log.info("reload (%s): nothing changed", why)
                    return Reloaded(changes=())
                apply(self.host, loaded, retire=self._retire)
            except GatewayError as exc:
                log.error(
                    "reload (%s) failed; still running the previous configuration: %s",
                    why,
                    " ".join(str(exc).split()),
                )
                return None
            self.reloads += 1
            log.info("reloaded (%s): %s", why, ", ".join(changes))
            readmitted = await readmit_all(self.host)
            if readmitted:
                log.info("reload: %d object(s) admitted again with a changed authority", readmitted)
            return Reloaded(changes=tuple(changes), readmitted=readmitted)

    async def run(self, stop: asyncio.Event) -> None:
        """Reload on request, and when the watched files or bundles change."""
        self._seen = await fingerprint(self.host)
        while not stop.is_set():
            timeout = self.interval if self.interval > 0 else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._requested.wait(), timeout=timeout)
            if stop.is_set():
                break
            try:
                if self._requested.is_set():
                    self._requested.clear()
                    await self.reload(why="SIGHUP")
                    continue
                now = await fingerprint(self.host)
                if now == self._seen:
                    continue
                # Let a writer finish (an editor writes in pieces): the same digest twice.
                await asyncio.sleep(min(0.25, self.interval))
                if await fingerprint(self.host) != now:
                    continue
                await self.reload(why="files changed")
            except Exception:
                log.exception("reload watcher failed; it goes on")

    async def close(self) -> None:
        for task in list(self._retired):
            task.cancel()
        await asyncio.gather(*self._retired, return_exceptions=True)


__all__ = [
    "DEFAULT_RELOAD_INTERVAL",
    "Loaded",
    "Reloaded",
    "Reloader",
    "apply",
    "fingerprint",
    "load",
    "readmit_all",
    "readmit_one",
]
