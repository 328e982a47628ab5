"""Everything one side of a handoff needs from its host, passed explicitly."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from gateway import envelope as dsse
from gateway._lru import BoundedLru
from gateway._time import Clock
from gateway.authority import Admission, CapabilitySet, HostPolicy, effective_authority
from gateway.config import HandoffConfig
from gateway.credentials import VerifiedChain, audience_admits, verify_chain
from gateway.errors import RuleError
from gateway.handoff.journal import Journal
from gateway.handoff.lifecycle import LifecycleRecorder
from gateway.handoff.settles import PendingSettles
from gateway.identity import HostId
from gateway.keys import Purpose, Signer
from gateway.model import GovernedObject
from gateway.rules import (
    check_data,
    check_subscriptions,
    compile_answers,
    compiled,
    load_data,
)
from gateway.tenancy import Tenancy
from gateway.trust import TrustStore

#: Distinct (capabilities, tenant, peer) admissions a context remembers.
ADMISSIONS_REMEMBERED = 1024
#: The capabilities of an object without grants: one value, so that its admissions are
#: remembered by identity too (values are immutable).
_NO_CAPABILITIES = CapabilitySet()


class _Verify(enum.Enum):
    """Marks "verify the chain here" where a caller may pass one it verified already."""

    NOW = "now"


@dataclass(frozen=True, slots=True, kw_only=True)
class HostContext:
    host: str  #: this host's id (spiffe://...)
    region: str
    tenants: frozenset[str]
    journal: Journal
    trust: TrustStore
    signer: Signer  #: this host's envelope key
    grant_signer: Signer  #: this host's grant key (attenuation)
    clock: Clock
    timing: HandoffConfig
    policy: HostPolicy
    #: records lifecycle events in a step's own transaction (the host plugs its outbox in)
    lifecycle: LifecycleRecorder
    attenuate_on_rehost: bool = False
    #: per-tenant limits and which peer may deliver into which tenant (none by default)
    tenancy: Tenancy = field(default_factory=Tenancy)
    #: whether this host carries out ``binding:`` actions (it has a Dapr sidecar); where it
    #: does not, they are refused at admission, not left to fail in the outbox
    output_bindings: bool = False
    #: called when an object becomes ACTIVE here, so its cycle starts without delay
    on_active: Callable[[GovernedObject], None] = field(default=lambda _obj: None)
    #: DONE writes that follow a migration's answer (gateway.handoff.settles). One per
    #: host: a reload's ``replace()`` keeps it, so closing waits for every snapshot's.
    settles: PendingSettles = field(default_factory=PendingSettles, repr=False, compare=False)
    #: effective_authority's answers by (chain's capabilities, tenant, peer host): a pure
    #: function of those and of this context's fixed policy, the same for every object
    #: of a kind (computing it was about a tenth of an arrival's CPU). Refusals raise and
    #: are not kept. Per context: a reload makes a new context, with its new policy.
    _admissions: dict[tuple[CapabilitySet, str, str], Admission] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    #: The same answers by the capabilities' identity (the value held beside the answer,
    #: so that the id stays its own), per (tenant, peer): a chain's
    #: capabilities are its leaf grant's, one value per claim text
    #: (gateway.credentials.PARSED_AUTHORITY), and hashing them for the key above walks
    #: every capability's fields in Python (the lookup cost 7,500 instructions for two
    #: capabilities, 1,200 by identity; once an arrival). A value not held is looked up
    #: by value as before.
    _admitted: BoundedLru[tuple[int, str, str], tuple[CapabilitySet, Admission]] = field(
        default_factory=lambda: BoundedLru(ADMISSIONS_REMEMBERED),
        init=False,
        repr=False,
        compare=False,
    )

    @property
    def trust_domain(self) -> str:
        return HostId.parse(self.host).trust_domain

    def chain_of(self, obj: GovernedObject, *, at: datetime) -> VerifiedChain | None:
        """The object's verified credential chain; ``None`` for an object without grants."""
        if not obj.grants:
            return None
        return verify_chain(
            obj.grants,
            object_id=obj.object_id,
            trust=self.trust,
            at=at,
            leeway=self.timing.clock_skew,
        )

    def check_rules(self, obj: GovernedObject) -> None:
        """An object's rules must compile, type-check and stay within budget, and its data
        must be what they can read; checked on creation and on arrival, never mid-cycle.
        Answers and subscriptions are checked with them."""
        check_subscriptions(obj.subscriptions)
        if not obj.rules and not obj.answers:
            return
        if obj.blob is not None:
            raise RuleError(
                f"{obj.object_id} has {obj.size} bytes of streamed data, which rules cannot read",
                hint="keep rules for objects with small JSON data",
            )
        compiled(obj.rules)
        compile_answers(obj.answers)
        check_data(load_data(obj.data, obj.content_type))

    def authorize(
        self,
        obj: GovernedObject,
        *,
        peer: str,
        hops: int,
        at: datetime,
        chain: VerifiedChain | _Verify | None = _Verify.NOW,
    ) -> tuple[Admission, datetime | None]:
        """:meth:`admit`, and when the authority it grants ends (the chain's expiry); raises
        if the object's tenant refuses objects admitted so (``require_authority``).

        ``chain``: the object's chain as :meth:`chain_of` verified it a moment ago at
        ``at`` (an arrival verifies it once and passes it on); verified here otherwise."""
        if isinstance(chain, _Verify):
            chain = self.chain_of(obj, at=at)
        admission = self.admit(obj, peer=peer, hops=hops, at=at, chain=chain)
        self.tenancy.require_placement(obj.tenant, admission, object_id=obj.object_id)
        expires = (
            min((g.expires_at for g in chain.grants), default=None) if chain is not None else None
        )
        return admission, expires

    def admit(
        self,
        obj: GovernedObject,
        *,
        peer: str,
        hops: int,
        at: datetime,
        chain: VerifiedChain | _Verify | None = _Verify.NOW,
    ) -> Admission:
        """Effective authority of ``obj`` here: chain ∩ ceilings for ``peer``'s domain ∩ offers,
        minus denials; raises if its credentials are bad or its constraints exclude this host.

        An object without grants may live anywhere and do nothing. ``chain`` as for
        :meth:`authorize`.
        """
        if isinstance(chain, _Verify):
            chain = self.chain_of(obj, at=at)
        capabilities = _NO_CAPABILITIES
        if chain is not None:
            chain.constraints.admit(self.host, self.region, hops)
            capabilities = chain.capabilities
        held = self._admitted.get((id(capabilities), obj.tenant, peer))
        if held is not None and held[0] is capabilities:
            admission = held[1]
        else:
            admission = self._admission(capabilities, obj.tenant, peer)
            self._admitted.put((id(capabilities), obj.tenant, peer), (capabilities, admission))
        if chain is not None and not audience_admits(chain.leaf.audiences, self.host):
            # ``aud`` says who may *hold* the authority: a host outside it may keep the
            # object (its constraints allowed that) but gets no capability from it.
            return admission.withheld(
                f"denied — {self.host} is not an audience of the last grant "
                f"(aud {chain.leaf.audience})"
            )
        return admission

    def _admission(self, capabilities: CapabilitySet, tenant: str, peer: str) -> Admission:
        """effective_authority's answer, remembered by value (see :attr:`_admissions`)."""
        key = (capabilities, tenant, peer)
        admission = self._admissions.get(key)
        if admission is None:
            admission = effective_authority(
                capabilities, self.policy, tenant=tenant, peer=HostId.parse(peer).trust_domain
            )
            if len(self._admissions) >= ADMISSIONS_REMEMBERED:
                self._admissions.pop(next(iter(self._admissions)))
            self._admissions[key] = admission
        return admission

    def seal(self, payload: bytes, payload_type: str) -> dsse.Envelope:
        return dsse.seal(payload, payload_type, [self.signer])

    def open_from(
        self, host_id: str, envelope: dsse.Envelope, payload_type: str, *, at: datetime
    ) -> bytes:
        """The payload of an envelope that ``host_id`` must have signed, verified now."""
        keys = self.trust.keys_for_host(host_id, purpose=Purpose.ENVELOPE, at=at)
        threshold = keys.bundle.envelope_threshold
        return dsse.open_envelope(
            envelope, payload_type=payload_type, keys=keys, threshold=threshold
        ).payload
