"""Chain of custody: what limits an object's authority, counted from what others signed.

A dishonest host holds valid keys and may rewrite, drop or reorder every lineage entry it
recorded itself. So nothing that limits an object (its hop count, the grants it must keep)
is read from the presenting sender's own words. It is read from:

* **departures** — the checkpoint each host signs when the object leaves it, naming the
  receiver and the migration (``Checkpoint.to`` / ``.migration``), covering the lineage
  (and so the credentials digest of its FROZEN entry) by Merkle root;
* **arrivals** — the receiver's signed activation receipt for that same migration,
  carried in ``Lineage.arrivals``.

Rules (:func:`verify_custody`):

1. Departures form one unbroken chain: departure *k+1* is signed by the host departure
   *k* named as receiver; the first is by the creator (``verify_lineage`` already ties
   each checkpoint to the host that recorded the entries it covers).
2. Every departure but the one in transit has exactly one arrival, signed by its
   receiver, for the same migration, epoch and sender; and the first entry after the
   departure is that receiver's REHOSTED entry. A departure without its arrival, or an
   arrival without its departure, is a gap and is refused.
3. Hops = departures. To lower it a sender would have to remove a departure signed by
   another host, which breaks rule 1 or 2.
4. The credentials presented extend the credentials recorded at every departure (each
   recorded chain is a prefix of the next and of the one presented). A narrowing made
   anywhere on the way is therefore kept; the only way to shed one is a *renewal*: a root
   by the object's owner whose ``rpl`` names the digest of the chain recorded at the last
   departure before it.
5. (ADR 0010) A departure that commits to the custody before it (``Checkpoint.custody``,
   ``.hops``) commits to exactly the carried departures and arrivals before it, in order
   (gateway._custody_chain), and to its own index + 1; once one departure commits, every
   later one must (no downgrade). Checkpoints of earlier formats commit to nothing and are
   checked by rules 1-4 alone, as before.
6. (ADR 0010 step 2) Handoffs older than the last K may be archived: the object then
   carries departures from the oldest carried one, whose ``hops - 1`` is how many were
   archived and whose ``custody`` is where the commitment chain continues from. Rules
   1-5 hold over the carried ones (hop numbers offset by the archived count); the
   receiver refuses fewer than ``MIN_CARRIED_HANDOFFS`` carried departures (its own
   constant, never the sender's setting), so the archived custody is pinned by the
   signatures of several later senders, not the presenter's alone. An oldest carried
   departure without a commitment archives nothing: full evidence, checked as before.

What this cannot see (DESIGN.md §6): a former holder that kept a stale copy and sends it,
with a history that ends at its own earlier stay, to a host that never saw the object.
That is a fork; a custody home (gateway.handoff.home) closes it, and without one a host
that later sees both copies refuses the second and keeps the evidence.

No I/O.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from gateway import _custody_chain as custody_chain
from gateway import envelope as dsse
from gateway import wire
from gateway.credentials import VerifiedChain
from gateway.errors import ConfigError, CustodyError, ExpiredError, VerificationError
from gateway.handoff.messages import ReceiptKind
from gateway.keys import Purpose
from gateway.limits import MAX_HANDOFFS, MIN_CARRIED_HANDOFFS
from gateway.lineage import (
    Checkpoint,
    EntryKind,
    Lineage,
    archived_before,
)
from gateway.model import remembered_credentials_digest
from gateway.trust import TrustStore

#: Most departures an object may record (the wire decoder refuses more before verifying).
MAX_DEPARTURES = MAX_HANDOFFS


@dataclass(frozen=True, slots=True, kw_only=True)
class Custody:
    """What the receiver established from signatures that are not the presenter's."""

    hops: int  #: departures, including the one in transit (archived ones too)
    #: every host that held the object, in order: creator first, or with handoffs
    #: archived, the sender of the oldest carried departure first
    holders: tuple[str, ...]
    archived: int = 0  #: handoffs archived before the oldest carried departure (rule 6)


def verify_custody(
    lineage: Lineage,
    checkpoints: Sequence[Checkpoint],
    *,
    object_id: str,
    trust: TrustStore,
    in_transit: bool,
    from_archive: int = 0,
) -> Custody:
    """Check departures against arrivals (rules 1–3 above) and return the hop count.

    ``checkpoints`` are the decoded checkpoints that :func:`gateway.lineage.verify_lineage`
    verified for ``lineage``. With ``in_transit`` the last departure is the one being
    received now and has no arrival yet. ``from_archive``: how many of the first were
    put back from an archive (:func:`gateway.archive.verify_archived`); only the others,
    the ones an object carries, are held to :data:`MAX_DEPARTURES` (rule 6: archived
    handoffs are bounded by the archive's bytes, gateway.archive.MAX_CUSTODY_ARCHIVE_BYTES).
    """
    if len(checkpoints) - from_archive > MAX_DEPARTURES:
        raise CustodyError(
            f"{object_id} records {len(checkpoints) - from_archive} departures; at most "
            f"{MAX_DEPARTURES}"
        )
    archived = archived_before(checkpoints[0]) if checkpoints else 0
    if archived and len(checkpoints) < MIN_CARRIED_HANDOFFS:
        raise CustodyError(
            f"{object_id} carries {len(checkpoints)} departures and archived the {archived} "
            f"before them; a receiver accepts archiving only with at least "
            f"{MIN_CARRIED_HANDOFFS} carried",
            hint="refuse the object; its sender must carry more handoffs (lineage.custody_keep)",
        )
    for index in range(1, len(checkpoints)):
        before, after = checkpoints[index - 1], checkpoints[index]
        if after.host != before.to:
            raise CustodyError(
                f"departure {index} is by {after.host}, but departure {index - 1} handed "
                f"{object_id} to {before.to}: a handoff is missing from its history",
                hint="refuse the object; its sender dropped or rewrote part of its custody",
            )
    completed = len(checkpoints) - (1 if in_transit and checkpoints else 0)
    if len(lineage.arrivals) != completed:
        raise CustodyError(
            f"{object_id} records {len(checkpoints)} departures and {len(lineage.arrivals)} "
            f"arrivals; expected {completed} arrivals",
            hint="every completed handoff needs its receiver's signed activation receipt",
        )
    # Arrivals this process checked before, against the same departures and entries, are
    # not opened again (VerifiedArrivals): an object that comes back carries them all.
    # The same bytes fix the custody commitments of those departures (rule 5), which were
    # checked then; the memory gives the commitment after them to continue from.
    done, chain, running = VERIFIED_ARRIVALS.find(
        lineage,
        checkpoints,
        object_id,
        trust,
        completed,
        # Rule 6: with handoffs archived the chain continues from the oldest carried
        # departure's own commitment (pinned by every later carried one).
        start=checkpoints[0].custody if archived else custody_chain.genesis(object_id),
    )
    for index in range(done, len(checkpoints)):
        _check_commitment(checkpoints, index, running, object_id, archived)
        if index >= completed:
            break  # the departure in transit: no arrival yet, nothing after it
        _check_arrival(
            lineage, checkpoints[index], lineage.arrivals[index], index, object_id, trust
        )
        chain = _link(chain, lineage, checkpoints[index].size, index)
        running = custody_chain.step(
            running, lineage.checkpoints[index].payload, lineage.arrivals[index].payload
        )
    if completed > done:
        VERIFIED_ARRIVALS.remember(object_id, trust, completed, chain, running)
    creator = checkpoints[0].host if archived else lineage.creator()
    holders = [creator] if creator else []
    holders.extend(c.to for c in checkpoints[:completed])
    return Custody(hops=archived + len(checkpoints), holders=tuple(holders), archived=archived)


def _check_commitment(
    checkpoints: Sequence[Checkpoint],
    index: int,
    expected: bytes,
    object_id: str,
    archived: int = 0,
) -> None:
    """Rule 5 for carried departure ``index`` (hop ``archived + index + 1``); ``expected``
    is its commitment recomputed from what the object carries (gateway._custody_chain)."""
    departure = checkpoints[index]
    if not departure.custody:
        if index and checkpoints[index - 1].custody:
            raise CustodyError(
                f"departure {index} of {object_id} (by {departure.host}) commits to no "
                f"custody, but departure {index - 1} does: a downgraded checkpoint",
                hint="refuse the object; its sender wrote a departure of an earlier format",
            )
        return
    if departure.hops != archived + index + 1:
        raise CustodyError(
            f"departure {index} of {object_id} (by {departure.host}) counts "
            f"{departure.hops} hops; it is hop {archived + index + 1}",
            hint="refuse the object; its sender hid, invented or miscounted a handoff",
        )
    if departure.custody != expected:
        raise CustodyError(
            f"departure {index} of {object_id} (by {departure.host}) commits to custody "
            f"{departure.custody.hex()[:16]}, but the departures and arrivals before it "
            f"digest to {expected.hex()[:16]}",
            hint="refuse the object; a handoff before it was hidden, reordered, altered "
            "or invented",
        )


def _link(chain: bytes, lineage: Lineage, size: int, index: int) -> bytes:
    """``chain`` extended by everything arrival ``index``'s check reads: the departure's
    signed payload, the arrival envelope's bytes, and the entry after the departure (its
    leaf hash) or that it is archived."""
    arrival = lineage.arrivals[index]
    following = lineage.entry(size)
    if size < lineage.start:
        after = b"archived"
    elif following is None:
        after = b"missing"
    else:
        after = following.leaf_hash()
    parts = [
        chain,
        lineage.checkpoints[index].payload,
        arrival.payload,
        arrival.payload_type.encode(),
        after,
    ]
    for signature in arrival.signatures:
        parts += (signature.keyid.encode(), signature.sig)
    hasher = hashlib.sha256(len(parts).to_bytes(4, "big"))
    for part in parts:
        hasher.update(len(part).to_bytes(8, "big"))
        hasher.update(part)
    return hasher.digest()


class VerifiedArrivals:
    """How many of each object's arrival receipts this process checked, and a digest of
    everything those checks read (:func:`_link`, chained from the first).

    Why: arrivals stay in the object (ADR 0007), one per past hop; checking each again on
    every arrival made a migration's cost grow with the object's hops (the soak, issue 13
    point 7). Exact: the remembered count is used only when the trust store is the very
    one the checks ran under (a reload or revocation makes a new one) and the arriving
    lineage's departures, arrivals and following entries for those indices digest to the
    same value (SHA-256; a different byte anywhere is a miss), so every input of those
    checks is the same. What remains per arrival is hashing its bytes, not opening its
    signature, decoding its receipt and judging its key. A first visit checks all.

    Bounded: ``capacity`` (object, trust store) pairs, least recently used first out,
    each a count and 32 bytes (about 200 bytes with the key).
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        #: (object id, id of the trust store) -> (trust store, arrivals checked, digest,
        #: custody commitment after them). The store is held so that its id is not reused
        #: while the entry lives.
        self._seen: OrderedDict[tuple[str, int], tuple[TrustStore, int, bytes, bytes]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()
        self.hits = 0

    def find(
        self,
        lineage: Lineage,
        checkpoints: Sequence[Checkpoint],
        object_id: str,
        trust: TrustStore,
        completed: int,
        *,
        start: bytes,
    ) -> tuple[int, bytes, bytes]:
        """(arrivals already checked, their chained digest, the custody commitment after
        them); (0, b"", ``start``) on a miss (C_0, or the oldest carried departure's
        commitment when older handoffs are archived). ``checkpoints``: the departures verify_lineage
        decoded from ``lineage``. The commitment is a function of the object id and the
        departure and arrival payloads the digest covers, so it is exact on a hit."""
        key = (object_id, id(trust))
        with self._lock:
            found = self._seen.get(key)
            if found is not None:
                self._seen.move_to_end(key)
        miss = (0, b"", start)
        if found is None or found[0] is not trust or found[1] > completed:
            return miss
        count, remembered, commitment = found[1], found[2], found[3]
        chain = b""
        for index in range(count):
            chain = _link(chain, lineage, checkpoints[index].size, index)
        if chain != remembered:
            return miss
        self.hits += 1
        return count, chain, commitment

    def remember(
        self, object_id: str, trust: TrustStore, count: int, chain: bytes, commitment: bytes
    ) -> None:
        key = (object_id, id(trust))
        with self._lock:
            self._seen[key] = (trust, count, chain, commitment)
            self._seen.move_to_end(key)
            while len(self._seen) > self._capacity:
                self._seen.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()
            self.hits = 0

    def __len__(self) -> int:
        return len(self._seen)


#: Arrivals checked by this process (see :class:`VerifiedArrivals`).
VERIFIED_ARRIVALS = VerifiedArrivals(capacity=4096)


def forget_verified_arrivals() -> None:
    """Empty the verified-arrival memory (benchmarks timing a cold check; tests)."""
    VERIFIED_ARRIVALS.clear()


def _check_arrival(
    lineage: Lineage,
    departure: Checkpoint,
    raw: dsse.Envelope,
    index: int,
    object_id: str,
    trust: TrustStore,
) -> None:
    receiver = departure.to
    try:
        keys = trust.keys_for_host(receiver, purpose=Purpose.ENVELOPE, at=None)
    except ConfigError as exc:
        raise CustodyError(f"departure {index} names {receiver!r}, which is not a host id") from exc
    try:
        opened = dsse.open_envelope(
            raw,
            payload_type=ReceiptKind.ACTIVATED.payload_type,
            keys=keys,
            threshold=keys.bundle.envelope_threshold,
        )
    except VerificationError as exc:
        raise type(exc)(f"arrival {index} at {receiver}: {exc.reason}", hint=exc.hint) from exc
    receipt = wire.decode_receipt(opened.payload, ReceiptKind.ACTIVATED)
    # As for checkpoints: an arrival is good if its key was valid, and not yet retired,
    # when the receipt says it was signed (retiring a key strands nothing it signed).
    for key_id in opened.key_ids:
        record = keys.resolve(key_id)
        if not record.valid_at(receipt.issued_at):
            raise ExpiredError(
                f"arrival {index} at {receiver} was signed outside the validity of key {key_id[:16]}"
            )
        keys.check_not_retired(record, receipt.issued_at, what=f"arrival {index} at {receiver}")
    if (
        receipt.object_id != object_id
        or receipt.migration_id != departure.migration
        or receipt.epoch != departure.epoch
        or receipt.host != receiver
        or receipt.source_host != departure.host
    ):
        raise CustodyError(
            f"arrival {index} (signed by {receiver}) acknowledges migration "
            f"{receipt.migration_id} from {receipt.source_host} at epoch {receipt.epoch}, "
            f"not departure {index} ({departure.migration} from {departure.host} at epoch "
            f"{departure.epoch})",
            hint="refuse the object; its custody records do not match",
        )
    if departure.size < lineage.start:
        # Archived by compaction (ADR 0007): the receiver's own first entry lies in its own
        # stay, which the receiver's next departure signed; what another host signed, the
        # arrival receipt just checked, stays in the object.
        return
    following = lineage.entry(departure.size)
    if (
        following is None
        or following.kind is not EntryKind.REHOSTED
        or following.host != receiver
        or following.epoch != departure.epoch
    ):
        raise CustodyError(
            f"the lineage does not record {receiver} taking {object_id} in right after "
            f"departure {index}",
            hint="refuse the object; an entry of its history was dropped or moved",
        )


def require_extends_departures(
    lineage: Lineage,
    checkpoints: Sequence[Checkpoint],
    grants: Sequence[str],
    chain: VerifiedChain | None,
    *,
    object_id: str,
) -> None:
    """Rule 4: the credentials ``grants`` extend what every departure recorded, unless a
    renewal root names the chain recorded at the last departure it does not extend."""
    # Remembered digests (the destination's lineage check asked for the whole chain's
    # already): a pure function of the grants' text, so a hit is the same answer.
    prefixes = {remembered_credentials_digest(tuple(grants[:n])): n for n in range(len(grants) + 1)}
    longest = len(grants)
    for index in range(len(checkpoints) - 1, -1, -1):
        departure = checkpoints[index]
        # The departure's signed record of the grants it left with (verify_lineage checks it
        # equals its last entry's wherever that entry is carried, not archived).
        recorded = departure.credentials_digest
        length = prefixes.get(recorded)
        if length is not None and length <= longest:
            longest = length
            continue
        renewal = chain.grants[0].replaces if chain is not None else ""
        if renewal and renewal == recorded.hex():
            return  # the owner renewed the chain recorded here; older records are superseded
        where = f"when {object_id} left {departure.host} (departure {index})"
        raise CustodyError(
            f"the grants presented do not extend the grants recorded {where}: "
            "a narrowing made on the way was dropped",
            hint="refuse the object; only a renewal by the owner that names the replaced "
            "chain (rpl) may replace its grants",
        )
