"""Object migration gateway: moves live, governed objects between hosts and organizations.

The public surface is what this module lists; everything else is internal.
"""

from gateway.envelope import Envelope, PayloadType, open_envelope, pae, seal
from gateway.errors import GatewayError
from gateway.identity import HostId, ObjectId
from gateway.keys import Algorithm, KeyRecord, Purpose, Signer
from gateway.lineage import EntryKind, Lineage, LineageEntry, verify_lineage
from gateway.model import CycleState, GovernedObject, LifecycleState, Rule
from gateway.trust import TrustBundle, TrustStore

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
