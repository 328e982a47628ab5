"""What the handoff needs from the network: one client per peer host.

The gRPC implementation is in :mod:`gateway.transport.client`. A client raises the
same :class:`~gateway.errors.GatewayError` types the peer raised, and
:class:`~gateway.errors.PeerUnavailableError` once its retries are used up.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Protocol

from gateway.handoff.messages import Evaluation


class PeerClient(Protocol):
    async def prepare(self, transfer: bytes) -> bytes:
        """Send a serialized transfer envelope; returns the serialized staged receipt."""
        ...

    async def prepare_stream(
        self, transfer: bytes, data: Callable[[], AsyncIterator[bytes | memoryview]], *, size: int
    ) -> bytes:
        """Prepare for a large object; ``data`` makes a fresh iterator of its bytes (one
        per attempt; a piece may be a view valid only until the next is asked for, so
        copy what is kept); ``size`` sets the deadline."""
        ...

    async def commit(self, migration_id: str) -> bytes:
        """Returns the serialized activation receipt."""
        ...

    async def abort(self, migration_id: str, reason: str) -> None: ...

    async def decision(self, migration_id: str) -> bytes:
        """The source's signed answer (see gateway.handoff.source.open_decision)."""
        ...

    async def claim(self, departure: bytes, decision: bytes) -> bytes:
        """Claim custody at a custody home; returns its signed custody receipt."""
        ...

    async def evaluate(self, proposal: bytes) -> Evaluation:
        """The peer's dry-run answer for a serialized proposal envelope."""
        ...


class Peers(Protocol):
    def client(self, host_id: str) -> PeerClient:
        """The client for a configured peer; raises UnknownPeerError otherwise."""
        ...
