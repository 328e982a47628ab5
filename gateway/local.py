"""A host's own state, read without serving it: its store, keys and trust.

Local read commands (``gateway trust list``, ``gateway object list``, ``gateway lineage``,
``gateway events``) need the store and the trust bundles, not the transport, scheduler
and handoff machinery that :class:`gateway.host.Host` wires together. Opening only this
keeps them quick: no gRPC, and no Dapr SDK unless the store is Dapr's.

Invariants: opening never creates anything (a missing SQLite store is a
:class:`~gateway.errors.ConfigError`; only ``gateway init`` creates one), and the bundles
read here are decoded and checked exactly as :class:`~gateway.host.Host` does, by the same
functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from gateway.config import Config
from gateway.errors import ConfigError
from gateway.keyring import Keyring, load_keyring
from gateway.model import GovernedObject
from gateway.stores import StateStore
from gateway.trust import TrustBundle, TrustStore, decode_bundle

if TYPE_CHECKING:
    from gateway.handoff.journal import Journal

#: Store keys of the trust bundles imported into a host.
TRUST_PREFIX = "trust/"


async def open_store(config: Config) -> StateStore:
    """The store ``config`` names: its Dapr sidecar's state store, else its SQLite file
    (which must exist)."""
    if config.dapr_store is not None:
        from gateway.stores.dapr import DaprStore  # the Dapr SDK only where it is used

        return await DaprStore.connect(
            config.dapr_store.state_store,
            grpc_endpoint=config.dapr_store.grpc_endpoint,
            http_endpoint=config.dapr_store.http_endpoint,
        )
    assert config.sqlite is not None
    from gateway.stores.sqlite import SqliteStore

    return SqliteStore.open(config.sqlite)


async def load_trust(store: StateStore, own: TrustBundle) -> TrustStore:
    """This host's trust: its own domain's bundle and the bundles imported into ``store``."""
    keys = await store.list(TRUST_PREFIX)
    items = await store.get_many(keys)
    return TrustStore.of([own, *(decode_bundle(items[k].value) for k in keys if k in items)])


def read_file(path: Path, what: str) -> bytes:
    """A file the configuration names, or a ConfigError naming it and why."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what}: {exc.strerror}") from exc


def own_keyring(config: Config) -> Keyring:
    """The keys of this host's trust domain; refuses a keys directory of another domain."""
    keyring = load_keyring(config.keys)
    if keyring.bundle.trust_domain != config.host.trust_domain:
        raise ConfigError(
            f"{config.source}: keys: the bundle in {config.keys} is for "
            f"{keyring.bundle.trust_domain}, but host.id is in {config.host.trust_domain}",
            hint="point 'keys' at this trust domain's keys directory",
        )
    return keyring


@dataclass(slots=True, kw_only=True)
class LocalHost:
    """A host's store and trust, opened for reading; use ``async with``."""

    config: Config
    store: StateStore
    keyring: Keyring
    trust: TrustStore

    @classmethod
    async def open(cls, config: Config) -> LocalHost:
        keyring = own_keyring(config)
        store = await open_store(config)
        try:
            trust = await load_trust(store, keyring.bundle)
        except BaseException:
            await store.close()
            raise
        return cls(config=config, store=store, keyring=keyring, trust=trust)

    @property
    def host_id(self) -> str:
        return str(self.config.host)

    @property
    def journal(self) -> Journal:
        from gateway.handoff.journal import Journal  # the wire codecs only for objects

        return Journal(self.store)

    def tenant(self, tenant: str) -> str:
        """``tenant`` if this host hosts it; else a ConfigError saying where to add it."""
        if tenant not in self.config.tenants:
            raise ConfigError(
                f"tenant {tenant!r} is not hosted on {self.host_id} "
                f"(tenants: {', '.join(self.config.tenants)})",
                hint=f"add it under 'tenants:' in {self.config.source}",
            )
        return tenant

    async def get_object(self, object_id: str, *, tenant: str) -> GovernedObject:
        """The object as stored here (in any state); NotFoundError naming this host."""
        loaded = await self.journal.require_object(
            self.tenant(tenant), object_id, host=self.host_id
        )
        return loaded.value

    async def list_objects(self, *, tenant: str) -> list[GovernedObject]:
        return await self.journal.objects(self.tenant(tenant))

    async def __aenter__(self) -> LocalHost:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.store.close()
