"""Fault injection for in-process hosts: a network that loses, repeats and delays chosen
calls, and a clock that can be skewed.

:class:`FaultyPeers` sits between a host's handoff code (its Source, Destination and
Recovery) and the real gRPC peers. Every call still goes over real mTLS to a real peer;
a fault only decides, per call, whether it is delivered, delivered twice, delivered late,
or whether its reply is lost. Rules are matched in the order they were added, each for a
bounded number of calls (``times``), so that recovery (which uses the same network) gets
through once the faults are used up — the way a real outage ends.

Invariant: a call no rule matches is passed through unchanged, and every call that some
rule changed is in :attr:`FaultyPeers.log`, so a test can say which faults actually fired.

:class:`SettableClock` is the machine's clock plus an offset that a test can change while
the host runs (``Host.open(config, clock=...)``), or frozen at a moment.

Nothing here imports pytest.
"""

from __future__ import annotations

import asyncio
import enum
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, TypeVar

from gateway._time import SystemClock, truncate
from gateway.errors import ConfigError, PeerUnavailableError
from gateway.handoff.messages import Evaluation
from gateway.handoff.peers import PeerClient, Peers

if TYPE_CHECKING:
    from gateway.host import Host

T = TypeVar("T")

#: The calls a host makes to a peer (``prepare_stream`` counts as ``prepare``).
RPCS = frozenset({"prepare", "commit", "abort", "decision", "claim", "evaluate"})

#: The most calls one rule may affect: a rule is a bounded outage, not a partition
#: (for that, leave the peer out of the world or stop it).
MAX_FAULT_TIMES = 1000
#: The longest a message may be held back, so that a typo cannot hang a CI job.
MAX_DELAY = timedelta(seconds=60)


class Fault(enum.Enum):
    DROP = "drop"  #: lost before reaching the peer; the caller sees the peer unavailable
    LOSE_REPLY = "lose-reply"  #: the peer acted; its reply is lost on the way back
    DUPLICATE = "duplicate"  #: delivered twice; the caller gets the first reply
    DELAY = "delay"  #: delivered after a pause


@dataclass(slots=True, kw_only=True)
class Rule:
    fault: Fault
    rpc: str
    to: str | None  #: the peer host id it applies to; None: any peer
    remaining: int
    delay: float = 0.0

    def matches(self, rpc: str, to: str) -> bool:
        return self.remaining > 0 and self.rpc == rpc and self.to in (None, to)


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """One call a rule changed, and what became of it."""

    fault: Fault
    rpc: str
    to: str
    #: DUPLICATE: the outcome of the second delivery (its reply, or the error's type name)
    repeated: object = None


class FaultyPeers:
    """The real peers of one host, with faults applied to chosen outgoing calls.

    Thread-safe for adding rules: a test thread may add them while the host's event loop
    (another thread) makes calls.
    """

    def __init__(self, real: Peers, *, sender: str = "") -> None:
        self.real = real
        self.sender = sender
        self._rules: list[Rule] = []
        self._lock = threading.Lock()
        self.log: list[Delivery] = []

    # --- arranging faults ---------------------------------------------------------------

    def _add(self, fault: Fault, rpc: str, to: str | None, times: int, delay: float = 0.0) -> None:
        if rpc not in RPCS:
            raise ConfigError(
                f"no call named {rpc!r}", hint=f"use one of {', '.join(sorted(RPCS))}"
            )
        if not 1 <= times <= MAX_FAULT_TIMES:
            raise ConfigError(
                f"times={times}: a fault applies to 1..{MAX_FAULT_TIMES} calls",
                hint="to cut a peer off entirely, stop it (or leave it out of the world)",
            )
        with self._lock:
            self._rules.append(Rule(fault=fault, rpc=rpc, to=to, remaining=times, delay=delay))

    def drop(self, rpc: str, *, to: str | None = None, times: int = 1) -> None:
        """The next ``times`` ``rpc`` calls (to ``to``, or any peer) never reach the peer."""
        self._add(Fault.DROP, rpc, to, times)

    def lose_reply(self, rpc: str, *, to: str | None = None, times: int = 1) -> None:
        """The peer handles the next ``times`` ``rpc`` calls; their replies are lost."""
        self._add(Fault.LOSE_REPLY, rpc, to, times)

    def duplicate(self, rpc: str, *, to: str | None = None, times: int = 1) -> None:
        """The next ``times`` ``rpc`` calls reach the peer twice, one after the other."""
        self._add(Fault.DUPLICATE, rpc, to, times)

    def delay(self, rpc: str, *, seconds: float, to: str | None = None, times: int = 1) -> None:
        """The next ``times`` ``rpc`` calls wait ``seconds`` before they are sent."""
        if not 0 <= seconds <= MAX_DELAY.total_seconds():
            raise ConfigError(
                f"delay of {seconds} s: at most {MAX_DELAY.total_seconds():.0f} s",
                hint="a longer outage is a dropped call; use drop()",
            )
        self._add(Fault.DELAY, rpc, to, times, delay=seconds)

    def clear(self) -> None:
        """Forget the rules not yet used up (the log stays)."""
        with self._lock:
            self._rules.clear()

    @property
    def pending(self) -> int:
        """How many more calls the rules will still change."""
        with self._lock:
            return sum(rule.remaining for rule in self._rules)

    def _take(self, rpc: str, to: str) -> Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.matches(rpc, to):
                    rule.remaining -= 1
                    return rule
        return None

    # --- the Peers protocol --------------------------------------------------------------

    def client(self, host_id: str) -> PeerClient:
        return _FaultyClient(self, host_id, self.real.client(host_id))

    async def close(self) -> None:
        close: Callable[[], Awaitable[None]] | None = getattr(self.real, "close", None)
        if close is not None:
            await close()

    async def _call(self, rpc: str, to: str, send: Callable[[], Awaitable[T]]) -> T:
        rule = self._take(rpc, to)
        if rule is None:
            return await send()
        where = f"{self.sender or 'this host'} → {to}"
        if rule.fault is Fault.DROP:
            self.log.append(Delivery(fault=rule.fault, rpc=rpc, to=to))
            raise PeerUnavailableError(
                f"{rpc} lost before reaching {to} (injected fault, {where})",
                hint="the test's FaultyPeers dropped it",
            )
        if rule.fault is Fault.DELAY:
            self.log.append(Delivery(fault=rule.fault, rpc=rpc, to=to))
            await asyncio.sleep(rule.delay)
            return await send()
        result = await send()
        if rule.fault is Fault.LOSE_REPLY:
            self.log.append(Delivery(fault=rule.fault, rpc=rpc, to=to))
            raise PeerUnavailableError(
                f"reply to {rpc} lost on the way back from {to} (injected fault, {where})",
                hint="the test's FaultyPeers lost it",
            )
        # DUPLICATE: the copy arrives after the original was answered; nobody waits for
        # its reply, but the test may want to see that it was the same (idempotence).
        repeated: object
        try:
            repeated = await send()
        except Exception as exc:  # the peer's answer to the copy, whatever it is
            repeated = type(exc).__name__
        self.log.append(Delivery(fault=rule.fault, rpc=rpc, to=to, repeated=repeated))
        return result


class _FaultyClient:
    def __init__(self, network: FaultyPeers, to: str, real: PeerClient) -> None:
        self.network, self.to, self.real = network, to, real

    async def prepare(self, transfer: bytes) -> bytes:
        return await self.network._call("prepare", self.to, lambda: self.real.prepare(transfer))

    async def prepare_stream(
        self, transfer: bytes, data: Callable[[], AsyncIterator[bytes | memoryview]], *, size: int
    ) -> bytes:
        return await self.network._call(
            "prepare", self.to, lambda: self.real.prepare_stream(transfer, data, size=size)
        )

    async def commit(self, migration_id: str) -> bytes:
        return await self.network._call("commit", self.to, lambda: self.real.commit(migration_id))

    async def abort(self, migration_id: str, reason: str) -> None:
        await self.network._call("abort", self.to, lambda: self.real.abort(migration_id, reason))

    async def decision(self, migration_id: str) -> bytes:
        return await self.network._call(
            "decision", self.to, lambda: self.real.decision(migration_id)
        )

    async def claim(self, departure: bytes, decision: bytes) -> bytes:
        return await self.network._call(
            "claim", self.to, lambda: self.real.claim(departure, decision)
        )

    async def evaluate(self, proposal: bytes) -> Evaluation:
        return await self.network._call("evaluate", self.to, lambda: self.real.evaluate(proposal))


def install_network(host: Host) -> FaultyPeers:
    """Route every outgoing call of ``host`` (its source, destination, recovery, and
    ``host.peers`` as a test uses it) through a :class:`FaultyPeers` with no rules yet.

    Call it before the host serves. The handoff objects keep their peers in a public
    ``peers`` attribute; all of them are rerouted, so that a fault hits recovery's calls
    too (a lost Commit stays lost until a rule is used up, whoever re-sends it).
    """
    network = FaultyPeers(host.peers, sender=host.host_id)
    host.peers = network  # type: ignore[assignment]  # close() is delegated
    host.source.peers = network
    host.destination.peers = network
    host.recovery.peers = network
    return network


class SettableClock:
    """The machine's clock shifted by :attr:`offset`, or frozen at a moment.

    A host opened with it (``Host.open(config, clock=clock)``) reads every time through
    it: what it signs, when transfers expire, when recovery gives up. Start with no
    offset: the host's keys and certificates became valid at the real time.
    """

    def __init__(self) -> None:
        self._system = SystemClock()
        self.offset = timedelta(0)
        self._frozen: datetime | None = None

    def now(self) -> datetime:
        if self._frozen is not None:
            return self._frozen
        return truncate(self._system.now() + self.offset)

    def skew(self, by: timedelta | float) -> None:
        """Move this clock ``by`` (seconds, or a timedelta; negative: back)."""
        step = by if isinstance(by, timedelta) else timedelta(seconds=by)
        if self._frozen is not None:
            self._frozen = truncate(self._frozen + step)
        else:
            self.offset += step

    def freeze(self) -> None:
        """Stop this clock where it is (``skew`` still moves it)."""
        self._frozen = self.now()

    def thaw(self) -> None:
        """Run again: the machine's clock plus the offset (it jumps over the frozen time)."""
        self._frozen = None
