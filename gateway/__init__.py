"""Object migration gateway: moves live, governed objects between hosts and organizations.

The public surface is what this module lists; everything else is internal.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.envelope import Envelope, PayloadType, open_envelope, pae, seal
    from gateway.errors import GatewayError
    from gateway.identity import HostId, ObjectId
    from gateway.keys import Algorithm, KeyRecord, Purpose, Signer
    from gateway.lineage import EntryKind, Lineage, LineageEntry, verify_lineage
    from gateway.model import CycleState, GovernedObject, LifecycleState, Rule
    from gateway.trust import TrustBundle, TrustStore

#: Where each public name is defined. Imported on first use (PEP 562), not with the
#: package: every ``gateway`` command imports this package first, and a command that
#: needs none of these (``gateway --help``) should not pay for cryptography and CEL.
_HOMES = {
    "Envelope": "gateway.envelope",
    "PayloadType": "gateway.envelope",
    "open_envelope": "gateway.envelope",
    "pae": "gateway.envelope",
    "seal": "gateway.envelope",
    "GatewayError": "gateway.errors",
    "HostId": "gateway.identity",
    "ObjectId": "gateway.identity",
    "Algorithm": "gateway.keys",
    "KeyRecord": "gateway.keys",
    "Purpose": "gateway.keys",
    "Signer": "gateway.keys",
    "EntryKind": "gateway.lineage",
    "Lineage": "gateway.lineage",
    "LineageEntry": "gateway.lineage",
    "verify_lineage": "gateway.lineage",
    "CycleState": "gateway.model",
    "GovernedObject": "gateway.model",
    "LifecycleState": "gateway.model",
    "Rule": "gateway.model",
    "TrustBundle": "gateway.trust",
    "TrustStore": "gateway.trust",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'gateway' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip this function
    return value


__all__ = [
    "Algorithm",
    "CycleState",
    "EntryKind",
    "Envelope",
    "GatewayError",
    "GovernedObject",
    "HostId",
    "KeyRecord",
    "LifecycleState",
    "Lineage",
    "LineageEntry",
    "ObjectId",
    "PayloadType",
    "Purpose",
    "Rule",
    "Signer",
    "TrustBundle",
    "TrustStore",
    "open_envelope",
    "pae",
    "seal",
    "verify_lineage",
]

__version__ = "0.1.0"
