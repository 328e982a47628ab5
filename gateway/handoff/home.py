"""The custody home: one durable compare-and-set per change of holder.

Fencing by epoch is per host: a former holder that kept its copy can freeze it again and
send it to a host that never saw the object, and that host has nothing to compare with.
An object whose root grant names a ``home`` (a gateway of its owner's domain) closes
this: before a receiver makes the object live it *claims* custody at the home, and
activates only with the home's signed custody receipt for that epoch.

Invariants the home keeps (key ``custody/<object id>``, one record per object):

* **One holder per epoch, only forward.** A claim is granted only if the sender is the
  holder the home has on record and the claimed epoch is above the recorded one; the
  record is replaced with a compare-and-set on its ETag, so of two racing claims one wins.
* **Only a committed handoff moves custody.** A claim carries the sender's signed
  departure (its checkpoint, naming the claimant and the migration) and the sender's
  signed COMMITTED decision for that migration. A source never aborts after it
  committed, so the home never records a holder whose source still holds a live copy;
  and a claimant cannot invent a handoff its sender did not sign.
* **Idempotent.** The same claim again (same migration, same claimant) gets the same
  receipt, so a claimant retries freely across crashes of either side; a different
  claim for an epoch already claimed is a fork and is refused.
* **Bounded.** A claim writes one fixed-size record per object of the home's own
  domain; claims for other domains' objects are refused before anything is read.

Aborted handoff attempts raise an object's epoch without moving it; they never create a
second copy, so they need no claim. Without a home the limit is stated in DESIGN.md §6
and docs/threat-model.md: a host that sees two diverging copies refuses the later one
and keeps the evidence (gateway.handoff.evidence).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from gateway import envelope as dsse
from gateway import wire
from gateway._crash import crash_point
from gateway._decode import load_json
from gateway._time import format_time, parse_time
from gateway.errors import (
    BadSignatureError,
    ConcurrencyError,
    ConfigError,
    CustodyError,
    ForkError,
    PayloadDecodeError,
)
from gateway.handoff.context import HostContext
from gateway.handoff.messages import DecisionAnswer, Outcome
from gateway.identity import HostId, ObjectId
from gateway.keys import Purpose
from gateway.limits import check_counter, check_migration_id
from gateway.lineage import Checkpoint
from gateway.stores import Expect
from gateway.trust import canonical_json

CUSTODY_PREFIX = "custody/"
_FIELDS = frozenset(
    {"object_id", "epoch", "holder", "sender", "migration", "issued_at", "handoffs"}
)


def custody_key(object_id: str) -> str:
    return CUSTODY_PREFIX + object_id


@dataclass(frozen=True, slots=True, kw_only=True)
class CustodyRecord:
    """The home's word: ``holder`` holds ``object_id`` from ``epoch`` on (it received it
    from ``sender`` in ``migration``). Stored as is and signed as the custody receipt."""

    object_id: str
    epoch: int
    holder: str
    sender: str
    migration: str
    issued_at: datetime
    #: Handoffs granted for the object so far, this one included: a receiver compares it
    #: with the departures the history shows, so a sender that hid a round trip through
    #: itself (which no other signature reveals) is caught here.
    handoffs: int

    def encode(self) -> bytes:
        return canonical_json(
            {
                "object_id": self.object_id,
                "epoch": self.epoch,
                "holder": self.holder,
                "sender": self.sender,
                "migration": self.migration,
                "issued_at": format_time(self.issued_at),
                "handoffs": self.handoffs,
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> CustodyRecord:
        # The one parser for outside bytes (a home's signed receipt is one): json.loads let
        # a lone surrogate through, and re-encoding it below raised UnicodeEncodeError.
        document = load_json(raw, error=PayloadDecodeError, what="custody record")
        try:
            if not isinstance(document, dict) or set(document) != _FIELDS:
                raise ValueError(f"fields must be {sorted(_FIELDS)}")
            epoch, handoffs = document["epoch"], document["handoffs"]
            for number in (epoch, handoffs):
                if not isinstance(number, int) or isinstance(number, bool):
                    raise ValueError("epoch and handoffs must be integers")
                if not 0 <= number < 1 << 64:
                    raise ValueError("epoch and handoffs must fit in 64 bits")
            texts = [document[k] for k in ("object_id", "holder", "sender", "migration")]
            if not all(isinstance(t, str) for t in texts):
                raise ValueError("ids must be strings")
            record = cls(
                object_id=document["object_id"],
                epoch=epoch,
                holder=document["holder"],
                sender=document["sender"],
                migration=document["migration"],
                issued_at=parse_time(document["issued_at"]),
                handoffs=handoffs,
            )
        except (ValueError, TypeError, RecursionError, UnicodeError) as exc:
            raise PayloadDecodeError(f"custody record does not parse: {exc}") from exc
        if record.encode() != raw:
            raise PayloadDecodeError("custody record is not in canonical form")
        return record


class CustodyHome:
    """The home side: answers claims for objects of this host's own domain."""

    def __init__(self, context: HostContext) -> None:
        self.ctx = context

    async def claim(self, departure_raw: bytes, decision_raw: bytes, *, peer: str) -> bytes:
        """Grant ``peer`` custody for the epoch its sender handed over; returns the signed
        custody receipt, or raises ForkError (a second claim) or a verification error."""
        ctx = self.ctx
        now = ctx.clock.now()
        departure = self._departure(departure_raw, peer=peer, now=now)
        self._committed(decision_raw, departure, peer=peer, now=now)
        for _attempt in range(3):
            stored = await ctx.journal.store.get(custody_key(departure.object_id))
            current = CustodyRecord.decode(stored.value) if stored is not None else None
            if current is not None and (current.migration, current.holder) == (
                departure.migration,
                peer,
            ):
                return self._receipt(current)  # the same claim again: the same answer
            self._check_claim(current, departure)
            granted = CustodyRecord(
                object_id=departure.object_id,
                epoch=departure.epoch,
                holder=peer,
                sender=departure.host,
                migration=departure.migration,
                issued_at=now,
                handoffs=(current.handoffs if current is not None else 0) + 1,
            )
            crash_point("home.before-claim")
            try:
                await ctx.journal.store.put(
                    custody_key(departure.object_id),
                    granted.encode(),
                    etag=stored.etag if stored is not None else Expect.ABSENT,
                )
            except ConcurrencyError:
                continue  # another claim won the race: judge this one against it
            crash_point("home.after-claim")
            return self._receipt(granted)
        # Not a ForkError: every claim that won was judged above and let this one go on
        # (a fork would have been refused there). A receiver discards a copy refused as a
        # fork, whose source has committed; contention must leave it staged, to claim again.
        raise CustodyError(
            f"custody of {departure.object_id} keeps changing under this claim",
            hint="claim again; the staged copy stays staged until custody is granted",
        )

    def _departure(self, raw: bytes, *, peer: str, now: datetime) -> Checkpoint:
        """The sender's signed departure to ``peer``, for an object of this domain."""
        # A checkpoint is well under a kilobyte: held to the bound of every signed answer,
        # not to a transfer's 16 MiB (parsed before it was refused, ~95 ms of CPU each).
        envelope = wire.decode_envelope(raw, max_size=wire.MAX_RECEIPT_BYTES)
        # The payload names its signer; it is parsed strictly (canonical JSON, exact
        # fields) only to choose whose keys must have signed it, and then verified.
        unverified = Checkpoint.decode(envelope.payload)
        try:
            owner = ObjectId.parse(unverified.object_id).trust_domain
        except ConfigError as exc:
            raise CustodyError(f"the departure names no object id: {exc.reason}") from exc
        if owner != self.ctx.trust_domain:
            raise CustodyError(
                f"{self.ctx.host} is not the custody home of {unverified.object_id} "
                f"(it belongs to {owner})",
                hint="claim custody at the home its root grant names",
            )
        # The epoch and migration id are written into the custody record: bounded as
        # CustodyRecord.decode reads them back (an epoch of 2**64 was granted, and then
        # every later claim of the object failed to read the record).
        check_counter(unverified.epoch, what=f"epoch of the departure of {unverified.object_id}")
        check_migration_id(unverified.migration)
        try:
            keys = self.ctx.trust.keys_for_host(unverified.host, purpose=Purpose.ENVELOPE, at=None)
        except ConfigError as exc:
            raise CustodyError(f"the departure names {unverified.host!r}, not a host id") from exc
        opened = dsse.open_envelope(
            envelope,
            payload_type=dsse.PayloadType.CHECKPOINT,
            keys=keys,
            threshold=keys.bundle.envelope_threshold,
        )
        for key_id in opened.key_ids:  # judged at its signed time, as in verify_lineage
            keys.check_not_retired(keys.resolve(key_id), unverified.issued_at, what="the departure")
        if unverified.to != peer:
            raise CustodyError(
                f"the departure hands {unverified.object_id} to {unverified.to}, not to {peer}",
                hint="only the receiver a departure names may claim custody",
            )
        return unverified

    def _committed(self, raw: bytes, departure: Checkpoint, *, peer: str, now: datetime) -> None:
        payload = self.ctx.open_from(
            departure.host,
            wire.decode_envelope(raw, max_size=wire.MAX_RECEIPT_BYTES),
            dsse.PayloadType.DECISION,
            at=now,
        )
        decision = DecisionAnswer.decode(payload)
        if (decision.migration_id, decision.source, decision.destination, decision.outcome) != (
            departure.migration,
            departure.host,
            peer,
            Outcome.COMMITTED,
        ):
            raise BadSignatureError(
                f"the decision {departure.host} signed does not commit migration "
                f"{departure.migration} to {peer}",
                hint="custody moves only with the sender's signed COMMITTED decision",
            )

    def _check_claim(self, current: CustodyRecord | None, departure: Checkpoint) -> None:
        if current is None:
            # Nothing recorded yet: the object has never changed holder under this home,
            # so the only possible sender is a host of its owner's domain (its creator's).
            sender_domain = HostId.parse(departure.host).trust_domain
            if sender_domain != self.ctx.trust_domain:
                raise ForkError(
                    f"no custody of {departure.object_id} is recorded here, and its first "
                    f"handoff must come from {self.ctx.trust_domain}, not {departure.host}"
                )
            return
        if current.holder != departure.host or departure.epoch <= current.epoch:
            raise ForkError(
                f"{departure.object_id} is held by {current.holder} since epoch "
                f"{current.epoch}; {departure.host} cannot hand over epoch {departure.epoch}: "
                "this is a stale or second copy",
                hint="refuse the copy and find out how its sender came to hold it",
            )

    def _receipt(self, record: CustodyRecord) -> bytes:
        return wire.encode_envelope(
            self.ctx.seal(record.encode(), dsse.PayloadType.CUSTODY_RECEIPT)
        )


def open_custody_receipt(
    ctx: HostContext, raw: bytes, *, home: str, object_id: str, epoch: int, migration: str
) -> CustodyRecord:
    """The home's receipt granting this host ``object_id`` at ``epoch`` in ``migration``;
    raises if it is not exactly that, signed by ``home``."""
    payload = ctx.open_from(
        home, wire.decode_envelope(raw), dsse.PayloadType.CUSTODY_RECEIPT, at=ctx.clock.now()
    )
    record = CustodyRecord.decode(payload)
    if (record.object_id, record.epoch, record.holder, record.migration) != (
        object_id,
        epoch,
        ctx.host,
        migration,
    ):
        raise BadSignatureError(
            f"the custody receipt {home} signed is for another object, epoch or holder",
            hint="claim again; a custody receipt is valid for one handoff only",
        )
    return record
