"""The custody commitment chain (ADR 0010): what each departure commits to.

    C_0     = SHA-256(lp("gateway.custody.v1", object_id))
    C_{k+1} = SHA-256(lp(C_k, departure_k.payload, arrival_k.payload))

Departure *k* signs ``custody = C_k`` and ``hops = k + 1``: in its sender's signature it
commits to every earlier departure and arrival, in order, and to its own hop number.
``lp`` length-prefixes each part, so no two sequences of parts hash alike. Payloads are the
exact signed DSSE payload bytes (not the envelopes), so re-encoding a signature cannot
change a commitment. Pure: hashing only, no I/O, no decoding.

Invariant: the value is a function of the object id and the ordered handoff payloads
alone; anything that changes, hides, reorders or invents a handoff before departure *k*
changes ``C_k``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

#: Domain separation: a commitment is never mistaken for another digest of the project.
_LABEL = b"gateway.custody.v1"


def _digest(*parts: bytes) -> bytes:
    hasher = hashlib.sha256(len(parts).to_bytes(4, "big"))
    for part in parts:
        hasher.update(len(part).to_bytes(8, "big"))
        hasher.update(part)
    return hasher.digest()


def genesis(object_id: str) -> bytes:
    """``C_0``: what the first departure of ``object_id`` commits to."""
    return _digest(_LABEL, object_id.encode("utf-8"))


def step(previous: bytes, departure_payload: bytes, arrival_payload: bytes) -> bytes:
    """``C_{k+1}`` from ``C_k`` and handoff *k* (its departure's and arrival's signed
    payloads)."""
    return _digest(previous, departure_payload, arrival_payload)


def commitment(object_id: str, departures: Sequence[bytes], arrivals: Sequence[bytes]) -> bytes:
    """``C_n`` for ``n = len(departures)`` completed handoffs (``arrivals`` index-aligned;
    a missing arrival hashes as empty, which no verified history matches)."""
    value = genesis(object_id)
    for index, departure in enumerate(departures):
        value = step(value, departure, arrivals[index] if index < len(arrivals) else b"")
    return value
