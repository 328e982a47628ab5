"""Session 41's shortcuts on the source's DONE settle (issue 13, P2) give exactly what
the plain path gives. Seeded: every run checks the same cases.

* The DONE record is built by a positional replacer of the four fields DONE changes
  (``source._done_record``): the value ``dataclasses.replace`` gives, field by field and
  by identity.
"""

from __future__ import annotations

import random
from dataclasses import replace

from gateway.handoff import source
from gateway.handoff.records import SourceStep
from tests.test_p2src_s37 import SEED, _random_record, _same


def test_done_record_is_dataclasses_replace() -> None:
    rng = random.Random(SEED + 41)
    for _ in range(500):
        record, other = _random_record(rng), _random_record(rng)
        receipt = rng.randbytes(rng.randrange(600))
        reason = rng.choice(("", "settled without an activation receipt: …", "x" * 300))
        got = source._done_record(record, SourceStep.DONE, receipt, other.updated_at, reason)
        want = replace(
            record,
            step=SourceStep.DONE,
            activation_receipt=receipt,
            updated_at=other.updated_at,
            reason=reason,
        )
        _same(got, want)
