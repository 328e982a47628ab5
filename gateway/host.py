"""A gateway host: the composition root that wires configuration, keys, trust, store,
handoff and transport together. Commands and the server both work through a :class:`Host`.

Several processes may open the same host at once (``gateway serve`` and a ``gateway
migrate`` beside it): every state change is a conditional store transaction, so they
coordinate through the store's ETags, never through memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from gateway import envelope as dsse
from gateway import observability, wire
from gateway._retry import lost_race
from gateway._time import Clock, SystemClock
from gateway.blobs import delete_blob, write_blob
from gateway.config import Config
from gateway.credentials import issue_grant
from gateway.errors import (
    ConcurrencyError,
    ConfigError,
    GatewayError,
    ObjectStateError,
    StoreUnavailableError,
    TrustError,
    UnknownPeerError,
)
from gateway.handoff.context import HostContext
from gateway.handoff.destination import Destination
from gateway.handoff.journal import MAX_FOLDED_RELEASES, Journal
from gateway.handoff.messages import Evaluation
from gateway.handoff.recovery import Recovery
from gateway.handoff.source import MigrationResult, Source
from gateway.identity import HostId
from gateway.keyring import Keyring
from gateway.keys import Purpose

# Re-exported: callers that read a host's store without serving it import them from here.
from gateway.local import TRUST_PREFIX as TRUST_PREFIX
from gateway.local import load_trust as load_trust
from gateway.local import open_store as open_store
from gateway.local import own_keyring, read_file
from gateway.model import Answer, CycleState, GovernedObject, LifecycleState, Rule, new_object
from gateway.objectspec import GrantSpec
from gateway.observability.health import Readiness
from gateway.runtime.appcallback import AppCallbackServer, dapr_topic, servicer_base
from gateway.runtime.calls import Calls
from gateway.runtime.compaction import Compaction, compaction_for
from gateway.runtime.cycle import CycleRunner
from gateway.runtime.dapr import CLOUDEVENT, DaprEventSink, DaprJobs
from gateway.runtime.dapr_actions import DaprBindings, DaprInvoker, sidecar_api_url
from gateway.runtime.events import Events, Message, new_message
from gateway.runtime.outbox import Dispatcher, HttpInvoker, Invoker, OutboxLifecycle
from gateway.runtime.scheduler import (
    Quarantine,
    Scheduler,
    load_quarantine,
    release_quarantine,
    request_wake,
)
from gateway.runtime.sweep import StorageSweep
from gateway.stores import Expect, StateStore
from gateway.stores.dapr import DaprStore, connect_client
from gateway.transport.client import CallAnswer, GrpcPeers, call_object
from gateway.transport.server import Gate, GatewayService, start_server
from gateway.transport.tls import channel_credentials, reloadable_server_credentials
from gateway.trust import TrustBundle, TrustStore, accept_bundle, decode_bundle, encode_bundle
from gateway.wire import (
    MAX_ENVELOPE_BYTES,
    ParsedTransfer,
    decode_envelope,
    encode_envelope,
)

log = logging.getLogger(__name__)

#: Recovery passes between two reconciliations of Dapr cycle jobs.
JOB_RECONCILE_PASSES = 30
#: Create transactions tried when only the tenant's usage counter moved under them.
CREATE_ATTEMPTS = 8
#: Transactions of releases folded into a tenant's quota counter per recovery pass.
FOLD_ROUNDS = 16
#: Seconds :meth:`Host.close` waits for DONE records still being journaled (each is
#: one store transaction; one left over is finished by the next recovery pass).
SETTLE_WAIT_SECONDS = 10.0
#: How often a serving host asks whether a pruning pass is due (one runs once per tenth
#: of the retention: gateway.handoff.pruning.Pruner.maybe_run).
PRUNE_CHECK_SECONDS = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportedBundle:
    bundle: TrustBundle
    first_use: bool  #: no earlier bundle of this domain was trusted here
    changed: bool


class _Exists(Exception):
    """Creating an object lost to an object of that id: not a race to retry."""

    def __init__(self, conflict: ConcurrencyError) -> None:
        super().__init__(str(conflict))
        self.conflict = conflict


def invoker_for(config: Config, dapr_client: Any) -> Invoker:
    """How ``invoke:`` actions are carried out: through Dapr service invocation on a host
    with a sidecar, else by HTTP POST to the URLs under ``invoke:`` (the embedded default)."""
    if dapr_client is None:
        return HttpInvoker(config.invoke)
    http = config.dapr_store.http_endpoint if config.dapr_store is not None else None
    return DaprInvoker(sidecar_api_url(http))


def snapshot_parts(
    config: Config, context: HostContext, peers: GrpcPeers
) -> tuple[Source, Destination, Recovery, Compaction, CycleRunner]:
    """The handoff and cycle objects built on one :class:`HostContext`: what a host
    builds at start and gateway.reload builds again on each new snapshot (one place, so
    the two cannot drift apart). Compaction follows ``config.lineage``."""
    source = Source(context, peers)
    destination = Destination(context, peers)
    recovery = Recovery(context, source, destination, peers)
    compaction = compaction_for(config, context)
    return source, destination, recovery, compaction, CycleRunner(context, compaction=compaction)


class Host:
    def __init__(
        self,
        config: Config,
        *,
        store: StateStore,
        keyring: Keyring,
        trust: TrustStore,
        clock: Clock,
        dapr_client: Any = None,
    ) -> None:
        self.config = config
        self.store = store
        self.keyring = keyring
        self.trust = trust
        self.clock = clock
        self.journal = Journal(store)
        host = str(config.host)
        self.certificate = read_file(config.tls.certificate, "TLS certificate")
        self.private_key = read_file(config.tls.private_key, "TLS private key")
        sink = (
            DaprEventSink(dapr_client, config.dapr.pubsub, source=host)
            if config.dapr is not None
            and config.dapr.pubsub is not None
            and dapr_client is not None
            else None
        )
        self.context = HostContext(
            host=host,
            region=config.region,
            tenants=frozenset(config.tenants),
            journal=self.journal,
            trust=trust,
            signer=keyring.signer_for(Purpose.ENVELOPE, host=host, at=clock.now()),
            grant_signer=keyring.signer_for(Purpose.GRANT, host=host, at=clock.now()),
            clock=clock,
            timing=config.handoff,
            policy=config.policy,
            lifecycle=OutboxLifecycle(sink=sink is not None),
            attenuate_on_rehost=config.handoff.attenuate_on_rehost,
            tenancy=config.tenancy,
            on_active=self._object_became_active,
            output_bindings=dapr_client is not None,
        )
        self.peers = GrpcPeers(
            config.peers,
            certificate=self.certificate,
            private_key=self.private_key,
            roots_for=self._roots_for,
            timing=config.handoff,
            unknown=self._unknown_peer,
        )
        self.source, self.destination, self.recovery, self.compaction, self.cycles = snapshot_parts(
            config, self.context, self.peers
        )
        #: orphan blob files and departed objects' segments (first pass at start)
        self.sweep = StorageSweep(
            self.context,
            archive_retention=config.lineage.archive_retention,
            archive_export_dir=config.lineage.archive_export_dir,
        )
        self.calls = Calls(self.context)
        self.events = Events(self.context, self.cycles, clock=clock)
        self.scheduler = Scheduler(self.cycles, self.journal, config.tenants, clock=clock)
        self.dapr_client = dapr_client
        dapr = config.dapr
        self.jobs = (
            DaprJobs(dapr_client, self.cycles, app_port=dapr.app_port)
            if dapr is not None
            and dapr.jobs
            and dapr.app_port is not None
            and dapr_client is not None
            else None
        )
        self.dispatcher = Dispatcher(
            store, invoker=invoker_for(config, dapr_client), sink=sink, clock=clock
        )
        if dapr_client is not None:
            # Output bindings exist only through a sidecar (gateway/runtime/dapr_actions.py).
            self.dispatcher.bindings = DaprBindings(dapr_client)
        self._background: set[asyncio.Task[object]] = set()
        self.readiness = Readiness()  #: grpc.health.v1 status; set_draining() on SIGTERM
        #: The RPC service while serving; gateway.reload swaps its snapshot objects.
        self.service: GatewayService | None = None
        #: Whether this process runs the scheduler (``serve``), so it can be told directly.
        self._scheduling = False
        # Messages and calls through the sidecar's app callback (gateway/runtime/appcallback.py).
        self.app_callback: AppCallbackServer | None = None
        if dapr is not None and dapr.app_port is not None and dapr_client is not None:
            servicer = servicer_base(
                dapr=dapr,
                events=self.events,
                calls=self.calls,
                trust_domain=config.host.trust_domain,
            )
            if self.jobs is not None:
                self.jobs.servicer_base = servicer
            else:
                self.app_callback = AppCallbackServer(servicer, app_port=dapr.app_port)
        self.rebind()

    def rebind(self) -> None:
        """Point every long-lived part of the host at the current snapshot (``context``,
        ``cycles``, ``source``, ``destination``, ``recovery``, ``trust``). Called once
        built, and by gateway.reload right after it swapped those (no await between, so
        no step sees a mix): a part left on an old snapshot would go on signing with a
        retired key, under an old policy and trust, or compacting by defaults instead of
        ``lineage:``. Invariant (tests/test_reload_snapshot.py): after it, no part
        reachable from the host holds another :class:`HostContext`."""
        context, cycles = self.context, self.cycles
        self.scheduler.runner = cycles
        if self.jobs is not None:
            self.jobs.runner = cycles
        self.events.ctx = context
        self.events.runner = cycles
        self.calls.ctx = context
        self.calls.compaction = cycles.compaction
        self.sweep.ctx = context
        if self.sweep.archives is not None:
            self.sweep.archives.ctx = context
            # A tombstone is the only way to find its segments: it goes after them.
            self.recovery.pruner.tombstone_guard = self.sweep.archives.tombstone_may_go
        if self.service is not None:
            self.service.source = self.source
            self.service.destination = self.destination
            self.service.authorities = self._authorities()

    def _authorities(self) -> dict[str, tuple[bytes, ...]]:
        """The CA certificates of each trusted domain, by domain (who may call us)."""
        return {domain: bundle.x509_authorities for domain, bundle in self.trust.bundles.items()}

    def _object_became_active(self, obj: GovernedObject) -> None:
        """A new or arrived object starts cycling here: at once, not at the next scan
        (through the store when the scheduler runs in another process); its
        subscriptions are taken up here (gateway/runtime/events.py)."""
        if obj.subscriptions:
            self._in_background(self.events.take_up(obj.tenant, obj.object_id))
            self.events.activated(obj.tenant, obj.object_id)
        if obj.cycle.interval is None and self.cycles.compaction.policy.due(
            obj.lineage, now=self.context.clock.now()
        ):
            # Nothing else would compact an object that does not cycle here: each hop
            # adds its entries and a departure checkpoint (Compaction.after_arrival).
            self._in_background(self.cycles.compaction.after_arrival(obj.tenant, obj))
        if self.jobs is None and self._scheduling:
            self.scheduler.notice(obj)
        elif self.jobs is None:
            self._in_background(request_wake(self.store, obj.tenant, obj.object_id))
        elif obj.cycle.interval is not None:
            task = asyncio.create_task(
                self.jobs.schedule_or_log(obj.tenant, obj.object_id, obj.cycle.interval)
            )
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _in_background(self, work: Coroutine[Any, Any, object]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @classmethod
    async def open(cls, config: Config, *, clock: Clock | None = None) -> Host:
        clock = clock or SystemClock()
        keyring = own_keyring(config)
        own = keyring.bundle
        store = await open_store(config)
        dapr_client = None
        if isinstance(store, DaprStore):
            dapr_client = store.client
        elif config.dapr is not None:
            dapr_client = await connect_client()
        try:
            trust = await load_trust(store, own)
            return cls(
                config,
                store=store,
                keyring=keyring,
                trust=trust,
                clock=clock,
                dapr_client=dapr_client,
            )
        except BaseException:
            await store.close()
            if dapr_client is not None and config.dapr_store is None:
                await dapr_client.close()  # connected on its own, for pub/sub and jobs
            raise

    async def settled(self) -> None:
        """Wait until the DONE records of the migrations this host answered have been
        journaled (``migrate`` answers DONE once activation is confirmed and journals DONE
        right after, see gateway.handoff.settles). For callers that read the journal right
        after a migration; nothing else needs it: a DONE never written is finished by
        recovery. Bound it with ``asyncio.timeout`` if need be."""
        await self.context.settles.wait()

    async def close(self) -> None:
        # DONE records of migrations answered a moment ago: written before the store goes
        # (one that is not is left COMMITTED and open, and recovery finishes it).
        try:
            async with asyncio.timeout(SETTLE_WAIT_SECONDS):
                await self.settled()
        except TimeoutError:
            log.warning(
                "closing with %d DONE records not journaled yet; recovery finishes them",
                len(self.context.settles),
            )
        if self._background:
            # e.g. scheduling the job of an object just created: finish it, briefly.
            await asyncio.wait(self._background, timeout=10)
        await self.peers.close()
        await self.store.close()
        if self.dapr_client is not None and self.config.dapr_store is None:
            await self.dapr_client.close()

    @property
    def host_id(self) -> str:
        return str(self.config.host)

    def _roots_for(self, trust_domain: str) -> bytes:
        authorities = self.trust.bundle(trust_domain).x509_authorities
        if not authorities:
            raise TrustError(f"the trust bundle of {trust_domain} carries no CA certificate")
        return b"".join(authorities)

    def _unknown_peer(self, host_id: str) -> Exception:
        try:
            self.config.peer(host_id)
        except UnknownPeerError as exc:
            return exc
        return UnknownPeerError(f"{host_id} is not a peer")

    def tenant(self, tenant: str) -> str:
        if tenant not in self.config.tenants:
            raise ConfigError(
                f"tenant {tenant!r} is not hosted on {self.host_id} (tenants: {', '.join(self.config.tenants)})",
                hint=f"add it under 'tenants:' in {self.config.source}",
            )
        return tenant

    # --- objects ------------------------------------------------------------------------

    async def create_object(
        self,
        object_id: str,
        *,
        tenant: str,
        data: bytes,
        content_type: str,
        grant: GrantSpec | None = None,
        rules: tuple[Rule, ...] = (),
        cycle: CycleState | None = None,
        data_stream: AsyncIterator[bytes] | None = None,
        subscriptions: tuple[str, ...] = (),
        answers: tuple[Answer, ...] = (),
    ) -> GovernedObject:
        """Create an ACTIVE object; with ``grant``, this host issues its root grant.

        Large data comes as ``data_stream`` (with ``data`` empty): it is stored as a blob
        chunk by chunk, never held in memory whole.

        The object's effective authority here is computed as for an arriving object (its
        chain within this host's policy for its own domain), and its constraints must
        admit this host.
        """
        now = self.clock.now()
        grants: tuple[str, ...] = ()
        if grant is not None:
            root = issue_grant(
                signer=self.context.grant_signer,
                issuer=self.host_id,
                subject=object_id,
                # The creating host holds the object first, so it is always an audience
                # of the root it issues (aud limits who may hold the authority).
                audience=(self.host_id, *(a for a in grant.audiences if a != self.host_id)),
                home=grant.home,
                capabilities=grant.capabilities,
                constraints=grant.constraints,
                not_before=now,
                expires_at=now + grant.valid_for,
                at=now,
            )
            grants = (root.compact,)
        blob = None
        if data_stream is not None:
            blob = await write_blob(self.store, f"blob/{uuid.uuid4().hex}/", data_stream)
        try:
            obj = new_object(
                object_id,
                tenant=self.tenant(tenant),
                data=data,
                blob=blob,
                content_type=content_type,
                host=self.host_id,
                at=now,
                grants=grants,
                rules=rules,
                cycle=cycle or CycleState(),
                subscriptions=subscriptions,
                answers=answers,
            )
            self.context.check_rules(obj)
            admission, expires = self.context.authorize(obj, peer=self.host_id, hops=0, at=now)
            obj = replace(obj, authority=admission.authority, authority_expires=expires)
            await self._store_new(obj)
        except BaseException:
            # A write cancelled or timed out may still have committed: delete the chunks
            # only if no object record points at them.
            if blob is not None:
                stored = await self.journal.object(tenant, object_id)
                if (
                    stored is None
                    or stored.value.blob is None
                    or stored.value.blob.location != blob.location
                ):
                    await delete_blob(self.store, blob)
            raise
        self._object_became_active(obj)
        return obj

    async def _store_new(self, obj: GovernedObject) -> None:
        """Write a new object and count it against its tenant's quota, in one transaction."""
        tenant, object_id = obj.tenant, obj.object_id
        try:
            async for attempt in lost_race(CREATE_ATTEMPTS):
                with attempt:
                    try:
                        async with self.journal.charging(tenant):
                            charge = await self.journal.charge(
                                tenant,
                                object_id,
                                obj.size,
                                check=lambda usage: self.context.tenancy.require_room(
                                    tenant, usage, size=obj.size, object_id=object_id
                                ),
                            )
                            # Through the journal: its memo then holds the new object,
                            # and the first cycle reads it back without decoding it.
                            await self.store.transact(
                                [self.journal.put_object(tenant, obj, Expect.ABSENT), *charge]
                            )
                    except ConcurrencyError as conflict:
                        if await self.journal.object(tenant, object_id) is not None:
                            # As before quotas: creating it again fails (not retried).
                            raise _Exists(conflict) from conflict
                        if await self.journal.held(tenant, object_id):
                            # Staged here by a migration not settled yet: creating it now would
                            # leave that migration a second live copy to refuse after its commit.
                            raise ObjectStateError(
                                f"{object_id} is arriving in tenant {tenant} on {self.host_id} (staged)",
                                hint="wait until that migration settles; `gateway object show` then shows it",
                            ) from None
                        # Only the tenant's usage counter moved (another object was counted):
                        # again, after the policy's short random pause.
                        raise
            return
        except _Exists as exists:
            raise exists.conflict from None
        except ConcurrencyError as exc:
            raise ObjectStateError(
                f"tenant {tenant} kept changing while {object_id} was being created",
                hint="retry; many objects are being created or are arriving in this tenant",
            ) from exc

    async def get_object(self, object_id: str, *, tenant: str) -> GovernedObject:
        loaded = await self.journal.require_object(
            self.tenant(tenant), object_id, host=self.host_id
        )
        return loaded.value

    async def quarantine_of(self, object_id: str, *, tenant: str) -> Quarantine | None:
        """Why the object is no longer scheduled here, if it was quarantined."""
        return await load_quarantine(self.store, self.tenant(tenant), object_id)

    async def release_object(self, object_id: str, *, tenant: str) -> bool:
        """Schedule a quarantined object again; False if it was not quarantined."""
        return await release_quarantine(self.store, self.tenant(tenant), object_id)

    async def list_objects(self, *, tenant: str) -> list[GovernedObject]:
        return await self.journal.objects(self.tenant(tenant))

    async def migrate(self, object_id: str, *, tenant: str, destination: str) -> MigrationResult:
        self.config.peer(destination)
        return await self.source.migrate(
            object_id, tenant=self.tenant(tenant), destination=destination
        )

    async def evaluate_remote(self, object_id: str, *, tenant: str, destination: str) -> Evaluation:
        """Ask ``destination`` what it would grant this object (its Evaluate RPC)."""
        self.config.peer(destination)
        proposal = await self.source.propose(
            object_id, tenant=self.tenant(tenant), destination=destination
        )
        return await self.peers.client(destination).evaluate(proposal)

    async def export_proposal(self, object_id: str, *, tenant: str, destination: str) -> bytes:
        """A signed proposal (DSSE JSON) for the destination's operator to dry-run offline."""
        proposal = await self.source.propose(
            object_id, tenant=self.tenant(tenant), destination=destination
        )
        return dsse.to_json(decode_envelope(proposal))

    async def evaluate_proposal(self, signed_json: bytes) -> Evaluation:
        """``gateway admit --dry-run``: what this host would grant, from a proposal file."""
        envelope = dsse.from_json(signed_json, max_size=MAX_ENVELOPE_BYTES)
        # The payload names its source; that only picks whose keys must have signed it.
        source = ParsedTransfer(envelope.payload).source_host
        try:
            admission = await self.destination.evaluate(encode_envelope(envelope), peer=source)
        except GatewayError as exc:
            return Evaluation.refused(self.host_id, exc)
        return Evaluation.of(self.host_id, admission)

    # --- calls --------------------------------------------------------------------------

    async def call(
        self,
        object_id: str,
        method: str,
        *,
        tenant: str,
        data: bytes = b"",
        at: str | None = None,
        wait: float = 10.0,
    ) -> CallAnswer:
        """Ask ``object_id`` on host ``at`` (a configured peer; default: this host's own
        ``gateway serve``) through the ``Call`` RPC, as this host (its certificate)."""
        target = at or self.host_id
        if target == self.host_id:
            address = self.config.listen
            name = address.rsplit(":", 1)[0]
            server_name = "localhost" if name in ("0.0.0.0", "::", "[::]") else name  # noqa: S104
            if address.endswith(":0"):
                raise ConfigError(
                    f"{self.config.source}: listen: port 0 gives no address to call",
                    hint="give --at HOST, or listen on a fixed port",
                )
        else:
            peer = self.config.peer(target)
            address, server_name = peer.address, peer.server_name
        credentials = channel_credentials(
            roots=self._roots_for(HostId.parse(target).trust_domain),
            certificate=self.certificate,
            private_key=self.private_key,
        )
        return await call_object(
            address=address,
            server_name=server_name,
            host_id=target,
            credentials=credentials,
            tenant=tenant,
            object_id=object_id,
            method=method,
            data=data,
            wait=wait,
        )

    # --- messages -----------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        *,
        data: Any,
        message_id: str | None = None,
        source: str | None = None,
        kind: str = "gateway.message",
    ) -> Message:
        """Send a message on ``topic``: through this host's Dapr pub/sub when it has one
        (every subscribing host's sidecar delivers it), else onto this host's own bus."""
        dapr = self.config.dapr
        if dapr is None or dapr.pubsub is None or self.dapr_client is None:
            return await self.events.publish(
                topic, data=data, message_id=message_id, source=source, kind=kind
            )
        message = new_message(
            topic,
            data=data,
            message_id=message_id,
            source=source or self.host_id,
            kind=kind,
            received=self.clock.now(),
        )
        # Our own CloudEvent: daprd keeps its id, so a subscriber de-duplicates by it.
        body = json.dumps(message.cloudevent(), separators=(",", ":"))
        try:
            await self.dapr_client.publish_event(
                pubsub_name=dapr.pubsub,
                topic_name=dapr_topic(topic),
                data=body,
                data_content_type=CLOUDEVENT,
            )
        except Exception as exc:
            raise StoreUnavailableError(
                f"Dapr pub/sub {dapr.pubsub!r} refused the message: {str(exc)[:200]}",
                hint="check the sidecar and its pub/sub component",
            ) from exc
        return message

    # --- trust --------------------------------------------------------------------------

    async def import_bundle(self, signed: bytes, *, at: datetime | None = None) -> ImportedBundle:
        """Trust a peer domain's signed bundle, or move to its newer one."""
        at = at or self.clock.now()
        try:
            claimed = decode_bundle(dsse.from_json(signed, max_size=1 << 20).payload).trust_domain
        except GatewayError as exc:
            raise TrustError(
                f"not a signed trust bundle: {exc.reason}",
                hint="export one with `gateway trust export`",
            ) from exc
        if claimed == self.config.host.trust_domain:
            raise TrustError(
                f"{claimed} is this host's own trust domain; its bundle comes from {self.config.keys}",
                hint="import bundles of peer domains only",
            )
        key = TRUST_PREFIX + claimed
        item = await self.store.get(key)
        current = decode_bundle(item.value) if item else None
        accepted = accept_bundle(current, signed, at=at, trust_domain=claimed)
        changed = current is None or accepted.sequence != current.sequence
        if changed:
            await self.store.put(
                key, encode_bundle(accepted), etag=item.etag if item else Expect.ABSENT
            )
        return ImportedBundle(bundle=accepted, first_use=current is None, changed=changed)

    # --- serving ------------------------------------------------------------------------

    async def serve(
        self,
        *,
        ready: asyncio.Future[int] | None = None,
        stop: asyncio.Event | None = None,
        gate: Gate | None = None,
    ) -> None:
        """Serve peers until ``stop`` is set (or forever); recover open migrations meanwhile.

        TLS follows the host's current certificate and trust (gateway.reload swaps them);
        ``gate`` counts RPCs in flight and refuses new handoffs while draining."""
        credentials = reloadable_server_credentials(
            lambda: (self.certificate, self.private_key, b"".join(self.trust.x509_authorities()))
        )
        service = GatewayService(
            source=self.source,
            destination=self.destination,
            authorities=self._authorities(),
            gate=gate,
            calls=self.calls,
        )
        self.service = service
        try:
            server, port = await start_server(
                service,
                listen=self.config.listen,
                credentials=credentials,
                readiness=self.readiness,
                reflection=self.config.observability.reflection,
            )
        except Exception as exc:
            if ready is not None:
                ready.set_exception(exc)  # whoever waits for the port hears why, at once
            raise
        log.info("%s listening on port %d", self.host_id, port)
        stop = stop or asyncio.Event()
        workers: list[asyncio.Task[None]] = []
        try:
            if self.app_callback is not None:
                await self.app_callback.start()
            if self.jobs is not None:
                await self.jobs.start()
                await self._schedule_all_jobs()
            else:
                self._scheduling = True
                workers.append(asyncio.create_task(self.scheduler.run(stop)))
            workers.append(
                asyncio.create_task(self.events.run(stop, tenants=tuple(self.config.tenants)))
            )
            workers.append(asyncio.create_task(self._recover_forever(stop)))
            workers.append(asyncio.create_task(self._prune_forever(stop)))
            workers.append(asyncio.create_task(self.dispatcher.run(stop)))
            if (observed := observability.current_metrics()) is not None:
                workers.append(
                    asyncio.create_task(observed.count_objects(self.count_objects, stop))
                )
            if ready is not None:
                ready.set_result(port)
            await stop.wait()
        finally:
            stop.set()
            await self.readiness.drain()  # NOT_SERVING while the server stops
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, *self._background, return_exceptions=True)
            if self.jobs is not None:
                await self.jobs.stop()
            if self.app_callback is not None:
                await self.app_callback.stop()
            await server.stop(grace=2.0)

    async def _schedule_all_jobs(self) -> None:
        """Make sure every ACTIVE cycling object here has its cycle job (idempotent: a job
        that exists keeps its next due time). With the scheduler unreachable, one line
        says so and the pass ends; the next one tries again.

        Each state and interval is read from the stored record, a page at a time, without
        decoding the object (its lineage is most of it): decoding every object cost
        seconds of CPU per pass at 10,000, at start and every JOB_RECONCILE_PASSES."""
        assert self.jobs is not None
        for tenant in self.config.tenants:
            async with contextlib.aclosing(self.journal.object_records(tenant)) as records:
                async for object_id, raw in records:
                    try:
                        head = wire.decode_head(raw)
                    except GatewayError as exc:
                        # One unreadable record must not keep the others' cycles away.
                        log.warning("the cycle of %s is not scheduled: %s", object_id, exc)
                        continue
                    if head.state is not LifecycleState.ACTIVE or head.interval is None:
                        continue
                    if not await self.jobs.schedule_or_log(tenant, object_id, head.interval):
                        return

    async def _recover_forever(self, stop: asyncio.Event) -> None:
        interval = max(1.0, self.config.handoff.stage_timeout.total_seconds() / 3)
        passes = 0
        while not stop.is_set():
            try:
                # Pruning runs on its own task (_prune_forever): a pass over a large
                # retention window is paced, and must not hold recovery up meanwhile.
                await self.recover(prune=False)
                await self.readiness.recovered()  # the first finished pass makes it ready
                if self.jobs is not None and passes % JOB_RECONCILE_PASSES == 0:
                    await self._schedule_all_jobs()  # a job lost or deleted is re-created
            except Exception:
                # Recovery must outlive any one bad record (or a store hiccup): log it
                # and try again at the next pass.
                log.exception("recovery pass failed")
            passes += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)

    async def count_objects(self) -> list[tuple[str, str, int]]:
        """(tenant, state, how many) of the object records here, for the metrics; a record
        that does not decode counts as ``unreadable``. Each state is read from the stored
        record, a page at a time, without decoding the object (its lineage is most of
        it): decoding every object cost about a second of CPU per count at 10,000."""
        counts: dict[tuple[str, str], int] = {}
        for tenant in self.config.tenants:
            async for _object_id, raw in self.journal.object_records(tenant):
                try:
                    state = wire.decode_head(raw).state.value
                except GatewayError:
                    state = "unreadable"
                counts[tenant, state] = counts.get((tenant, state), 0) + 1
        return [(tenant, state, n) for (tenant, state), n in sorted(counts.items())]

    async def recover(self, *, prune: bool = True) -> int:
        """One recovery pass over open migrations (see gateway.handoff.recovery), then
        the releases of each tenant's quota folded into its counter, then (``prune``)
        the pruning of settled history if it is due (gateway.handoff.pruning; a serving
        host runs that on its own task). The storage sweep goes first: it prunes a
        departed object's segments before the pruner may delete the tombstone that is
        the only way to find them (gateway.runtime.sweep)."""
        await self.sweep.maybe_run()
        progressed = await self.recovery.run_once()
        for tenant in self.config.tenants:
            for _round in range(FOLD_ROUNDS):
                if await self.journal.fold_releases(tenant) < MAX_FOLDED_RELEASES:
                    break
        if prune:
            await self.recovery.pruner.maybe_run()
        return progressed

    async def _prune_forever(self, stop: asyncio.Event) -> None:
        """The pruning of settled history, asked every :data:`PRUNE_CHECK_SECONDS` (a
        pass runs once per tenth of the retention, see Pruner.maybe_run), and of the
        refused-call counters (calls.DENIAL_RETENTION), one bounded page at the same pace,
        or sooner while a pass finds a backlog (a caller refused faster than a page a
        minute): then the next page comes after calls.DENIAL_CATCH_UP_SECONDS."""
        loop = asyncio.get_running_loop()
        next_history = 0.0
        while not stop.is_set():
            if loop.time() >= next_history:
                try:
                    await self.recovery.pruner.maybe_run()
                except Exception:
                    log.exception("pruning pass failed")
                next_history = loop.time() + PRUNE_CHECK_SECONDS
            catch_up: float | None = None
            try:
                catch_up = (await self.calls.prune_denials_pass()).catch_up_in
            except Exception:
                log.exception("pruning refused-call counters failed")
            wait = catch_up if catch_up is not None else next_history - loop.time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, wait))
