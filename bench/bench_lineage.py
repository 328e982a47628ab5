"""P4: verify a lineage of 10k entries / 100 checkpoints, against a floor measured in the
same run (10k SHA-256 of the same entry bytes + 100 signature verifies with the same key
type); and the compaction figure: an object cycling through many generations keeps its
carried lineage under a fixed size.

    python bench/bench_lineage.py [--entries 10000] [--checkpoints 100] [--generations 1000000]

Each figure is the median [min-max] over --runs runs; the lineage is decoded afresh from
its wire bytes for every verify (no cached hashes), outside the timed part.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway import envelope as dsse
from gateway import wire
from gateway.archive import CompactionPolicy, compact, fold_repeats
from gateway.identity import HostId
from gateway.keys import Algorithm, Purpose, Signer
from gateway.lineage import EntryKind, Lineage, digest, verify_lineage
from gateway.model import new_object
from gateway.trust import TrustStore, new_bundle

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
A = "spiffe://org-a.example/cluster/east/gateway"
B = "spiffe://org-b.example/cluster/west/gateway"
OBJECT = "obj://org-a.example/billing/invoice-42"
SIGNERS = {A: Signer.generate(Algorithm.ED25519), B: Signer.generate(Algorithm.ED25519)}
TRUST = TrustStore.of(
    new_bundle(
        HostId.parse(host).trust_domain,
        [s.record(purposes=[Purpose.ENVELOPE], hosts=[host], valid_from=T0 - timedelta(days=1))],
        issued_at=T0 - timedelta(days=1),
    )
    for host, s in SIGNERS.items()
)


def build(entries: int, checkpoints: int) -> Lineage:
    lineage = Lineage()
    per = entries // checkpoints
    epoch = 0
    for hop in range(checkpoints):
        host, to = (A, B) if hop % 2 == 0 else (B, A)
        for index in range(per):
            n = lineage.size
            freezing = index == per - 1
            kind = (
                EntryKind.CREATED if n == 0 else EntryKind.FROZEN if freezing else EntryKind.UPDATED
            )
            epoch += freezing
            lineage = lineage.append(
                kind,
                host=host,
                at=T0 + timedelta(milliseconds=n),
                epoch=epoch,
                generation=n,
                data_digest=digest(f"data {n}".encode()),
                credentials_digest=digest(b"grants"),
                detail=f"generation {n}: 1 of 3 rules fired",
            )
        lineage = lineage.sealed(
            object_id=OBJECT,
            host=host,
            epoch=epoch,
            at=T0 + timedelta(minutes=1),
            signer=SIGNERS[host],
            to=to,
            migration=f"mig-{hop}",
        )
    return lineage


def p4(entries: int, checkpoints: int, runs: int) -> dict[str, object]:
    raw = wire.encode_lineage(build(entries, checkpoints))
    ratios, ours, floors = [], [], []
    for _ in range(runs):
        lineage = wire.decode_lineage(raw)  # fresh: no hash is cached
        envelopes = lineage.checkpoints
        keys = TRUST.keys_for_host(A, purpose=Purpose.ENVELOPE, at=None)
        keys_b = TRUST.keys_for_host(B, purpose=Purpose.ENVELOPE, at=None)
        leaves = [e.encode() for e in lineage.entries]
        started = time.perf_counter()
        for leaf in leaves:
            hashlib.sha256(b"\x00" + leaf).digest()
        for index, envelope in enumerate(envelopes):
            dsse.open_envelope(
                envelope,
                payload_type=dsse.PayloadType.CHECKPOINT,
                keys=keys if index % 2 == 0 else keys_b,
                threshold=1,
            )
        floor = time.perf_counter() - started
        started = time.perf_counter()
        verify_lineage(lineage, object_id=OBJECT, trust=TRUST, sealed=True)
        mine = time.perf_counter() - started
        ours.append(mine)
        floors.append(floor)
        ratios.append(mine / floor)
    return {
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "verify_s": statistics.median(ours),
        "floor_s": statistics.median(floors),
    }


def cycling(generations: int, every: int) -> dict[str, object]:
    """An object denied the same action every cycle, a new denial every ``every`` cycles,
    compacted by the default policy; the largest encoded lineage seen, per tenth."""
    policy = CompactionPolicy()
    obj = new_object(OBJECT, tenant="t", data=b"{}", content_type="application/json", host=A, at=T0)
    peaks = [0] * 10
    archived = 0
    started = time.perf_counter()
    for generation in range(generations):
        at = T0 + timedelta(seconds=5 * generation)
        detail = f"publish: denied ({generation // every})"
        after = obj.record(EntryKind.ACTION_DENIED, host=A, at=at, detail=detail)
        after = after.record(EntryKind.EVALUATED, host=A, at=at, detail="1 of 1 rules fired")
        obj = fold_repeats(obj, after)
        if policy.due(obj.lineage, now=at):
            lineage, segment = compact(
                obj.lineage,
                object_id=OBJECT,
                host=A,
                at=at,
                signer=SIGNERS[A],
                keep=policy.keep_entries,
            )
            archived += len(segment.entries)
            obj = replace(obj, lineage=lineage)
        if generation % max(generations // 100, 1) == 0 or generation == generations - 1:
            tenth = generation * 10 // generations
            peaks[tenth] = max(peaks[tenth], len(wire.encode_lineage(obj.lineage)))
    return {
        "generations": generations,
        "history_entries": obj.lineage.size,
        "archived_entries": archived,
        "carried_entries": len(obj.lineage.entries),
        "peak_bytes_per_tenth": peaks,
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000, help="lineage entries for P4")
    parser.add_argument("--checkpoints", type=int, default=100, help="checkpoints for P4")
    parser.add_argument("--runs", type=int, default=7, help="runs per figure")
    parser.add_argument("--generations", type=int, default=1_000_000, help="cycles for compaction")
    parser.add_argument("--every", type=int, default=10, help="cycles per distinct denial")
    args = parser.parse_args()
    result = p4(args.entries, args.checkpoints, args.runs)
    print(
        f"P4 verify {args.entries} entries / {args.checkpoints} checkpoints: "
        f"{result['ratio']:.2f}x [{result['ratio_min']:.2f}-{result['ratio_max']:.2f}] of the floor "
        f"({result['verify_s'] * 1000:.1f} ms vs {result['floor_s'] * 1000:.1f} ms)"
    )
    if args.generations:
        figure = cycling(args.generations, args.every)
        print(f"compaction: {figure}")


if __name__ == "__main__":
    main()
