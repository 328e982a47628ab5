"""Tenants on one host: who may deliver into them, how much they may hold, what they refuse.

On a host an object is named by the pair (tenant, object id): two tenants may hold
objects with the same id, and nothing that happens to one reaches the other.

Invariants this module (with :mod:`gateway.handoff.journal`) keeps, and why:

* **Every per-object key is a tenant's key.** Object records, epoch fences and quota
  charges live under ``t/<tenant>/``; events and Dapr job names carry the tenant in
  their name. A tenant name cannot contain ``/``, so no key of one tenant is ever a key
  of another: a tenant that picks another tenant's object id can neither block that
  object (a fence, an "id already known here") nor touch it.
* **A peer delivers only into the tenants it is bound to** (``peers[].tenants`` in the
  host configuration). A peer with no binding — or a host that is not a configured
  peer at all — delivers into no tenant. There is no implicit binding, not even on a
  host with a single tenant, so adding a tenant never opens it to the peers already
  configured, and a trusted peer cannot relabel an object into a tenant it was not
  given. Checked at Prepare and Evaluate before anything is written or streamed.
* **Quotas count what a tenant holds**: objects ACTIVE, FROZEN or STAGED here (a
  MOVED tombstone is not held) and the size of their data as it was when they were
  created or arrived. The count is a per-tenant counter changed in the same store
  transaction as the change it counts, with the counter's ETag as a precondition, so
  concurrent arrivals cannot together overshoot a quota, and a check never rescans the
  tenant's objects. Data an object later writes to itself (``state:self``) is not
  counted; it is bounded by :data:`gateway.model.MAX_DATA_BYTES` per object.
* **A tenant may refuse objects without authority** (``require_authority``): an
  object whose effective authority in the tenant is empty — its grants grant nothing
  that survives this host's offers, ceilings and denials, or it has no grants — is not
  placed in it, neither created nor staged.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from gateway.authority import Admission
from gateway.errors import (
    AdmissionDeniedError,
    QuotaExceededError,
    StoreError,
    TenantBindingError,
)

#: The largest quota a configuration may set (objects or bytes); larger is refused, so a
#: counter can never overflow its 64 bits.
MAX_QUOTA = 1 << 62

_USAGE = struct.Struct(">QQ")


@dataclass(frozen=True, slots=True, kw_only=True)
class TenantLimits:
    """What one tenant may hold here; ``None`` is no limit."""

    max_objects: int | None = None
    max_bytes: int | None = None
    #: refuse objects whose effective authority in this tenant is empty
    require_authority: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """What a tenant holds here now: objects ACTIVE, FROZEN or STAGED, and their bytes."""

    objects: int = 0
    size: int = 0  #: bytes of data

    def plus(self, size: int) -> Usage:
        return Usage(objects=self.objects + 1, size=self.size + size)

    def minus(self, size: int) -> Usage:
        # Never below zero, whatever a store written by an older version holds.
        return Usage(objects=max(0, self.objects - 1), size=max(0, self.size - size))

    def encode(self) -> bytes:
        return _USAGE.pack(min(self.objects, MAX_QUOTA), min(self.size, MAX_QUOTA))

    @classmethod
    def decode(cls, raw: bytes) -> Usage:
        try:
            objects, size = _USAGE.unpack(raw)
        except struct.error as exc:
            raise StoreError(
                f"a tenant usage counter holds {len(raw)} bytes, not {_USAGE.size}",
                hint="the store was written by something else; restore it from a backup",
            ) from exc
        return cls(objects=int(objects), size=int(size))


@dataclass(frozen=True, slots=True, kw_only=True)
class Tenancy:
    """The tenant part of a host's configuration, as the handoff and the host use it."""

    #: hosted tenant -> its limits (a hosted tenant missing here has no limits)
    limits: Mapping[str, TenantLimits] = field(default_factory=lambda: MappingProxyType({}))
    #: peer host id -> the tenants it may deliver into
    bindings: Mapping[str, frozenset[str]] = field(default_factory=lambda: MappingProxyType({}))
    #: where an operator changes this (the configuration file), for hints
    source: str = "the host configuration"

    def limits_of(self, tenant: str) -> TenantLimits:
        return self.limits.get(tenant, TenantLimits())

    def require_bound(self, peer: str, tenant: str, *, host: str) -> None:
        """Raise TenantBindingError unless ``peer`` may deliver into ``tenant``."""
        bound = self.bindings.get(peer)
        if bound is not None and tenant in bound:
            return
        if bound is None:
            why = f"{peer} is bound to no tenant on {host}"
        elif not bound:
            why = f"{peer} may deliver into no tenant on {host} (peers[].tenants is empty)"
        else:
            why = f"{peer} may deliver only into {', '.join(sorted(bound))} on {host}"
        raise TenantBindingError(
            f"refusing delivery into tenant {tenant!r}: {why}",
            hint=f"the operator of {host} binds peers to tenants with 'tenants: [...]' "
            f"under the peer's entry in 'peers:' of {self.source}",
        )

    def require_room(self, tenant: str, usage: Usage, *, size: int, object_id: str) -> None:
        """Raise QuotaExceededError if one more object of ``size`` bytes would not fit."""
        limits = self.limits_of(tenant)
        if limits.max_objects is not None and usage.objects + 1 > limits.max_objects:
            raise QuotaExceededError(
                f"tenant {tenant!r} quota max_objects={limits.max_objects} is reached "
                f"({usage.objects} held); refusing {object_id}",
                hint=f"move objects out of the tenant, or raise max_objects of {tenant} in {self.source}",
            )
        if limits.max_bytes is not None and usage.size + size > limits.max_bytes:
            raise QuotaExceededError(
                f"tenant {tenant!r} quota max_bytes={limits.max_bytes} would be exceeded: "
                f"{usage.size} bytes held, {object_id} has {size}",
                hint=f"move objects out of the tenant, or raise max_bytes of {tenant} in {self.source}",
            )

    def require_placement(self, tenant: str, admission: Admission, *, object_id: str) -> None:
        """Raise AdmissionDeniedError if ``tenant`` refuses an object admitted so."""
        if not self.limits_of(tenant).require_authority:
            return
        if admission.authority.allow.capabilities:
            return
        raise AdmissionDeniedError(
            f"tenant {tenant!r} requires authority, and {object_id} would hold none in it",
            hint="see the dry run (`gateway admit --dry-run`) for what each grant becomes here; "
            f"the tenant's ceilings and require_authority are in {self.source}",
        )
