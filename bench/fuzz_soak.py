"""Long fuzzing of every decoder of peer- or file-supplied bytes.

    .venv/bin/python bench/fuzz_soak.py --seconds 60            # all decoders, 60 s each
    .venv/bin/python bench/fuzz_soak.py --iterations 20000 --only grant transfer
    .venv/bin/python bench/fuzz_soak.py --seconds 30 --save tests/data/fuzz-regressions

The property is the one tests/test_fuzz_decoders.py checks for a few seconds in CI: a
decoder returns a value or raises a GatewayError, never anything else. Each input that
breaks it is printed (and, with --save, written to DIR/<decoder>/<sha256>.bin, where
tests/test_fuzz_decoders.py replays it forever after). The run is seeded (--seed), so
a crash found here is found again by the same command.

Prints, per decoder: iterations, inputs refused (GatewayError), inputs accepted, crashes.
Exits 1 if anything crashed.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.errors import GatewayError
from tests.fuzz_targets import TARGETS, TARGETS_BY_NAME, mutant


def _kind(exc: BaseException) -> str:
    """A crash's type and where in gateway/ it was raised: one saved input per kind."""
    where = "?"
    for frame in traceback.extract_tb(exc.__traceback__):
        if "/gateway/" in frame.filename:
            where = f"{Path(frame.filename).name}:{frame.lineno}"
    return f"{type(exc).__name__} at {where}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=None, help="time per decoder")
    parser.add_argument("--iterations", type=int, default=None, help="inputs per decoder")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated inputs (1)")
    parser.add_argument(
        "--only",
        nargs="*",
        choices=sorted(TARGETS_BY_NAME),
        default=None,
        help="fuzz only these decoders (default: all)",
    )
    parser.add_argument("--save", type=Path, default=None, help="write crashing inputs here")
    args = parser.parse_args()
    if args.seconds is None and args.iterations is None:
        args.seconds = 10.0
    targets = [TARGETS_BY_NAME[n] for n in args.only] if args.only else list(TARGETS)
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 1000))
    crashed = 0
    print(f"{'decoder':<20} {'iterations':>10} {'refused':>9} {'accepted':>9} {'crashes':>8}")
    for target in targets:
        rng = random.Random(f"{args.seed}:{target.name}")
        counts: Counter[str] = Counter()
        kinds: Counter[str] = Counter()
        deadline = time.monotonic() + args.seconds if args.seconds is not None else None
        while True:
            if args.iterations is not None and counts["iterations"] >= args.iterations:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            raw = mutant(target, rng)
            counts["iterations"] += 1
            try:
                target.check(raw)
            except GatewayError:
                counts["refused"] += 1
                continue
            except Exception as exc:  # the very thing being looked for
                counts["crashes"] += 1
                kind = _kind(exc)
                if kinds[kind] == 0:
                    print(f"  {target.name}: {kind}: {str(exc)[:80]}", file=sys.stderr)
                    if args.save is not None:
                        folder = args.save / target.name
                        folder.mkdir(parents=True, exist_ok=True)
                        name = hashlib.sha256(raw).hexdigest()[:16]
                        (folder / f"{name}.bin").write_bytes(raw)
                kinds[kind] += 1
                continue
            counts["accepted"] += 1
        crashed += counts["crashes"]
        print(
            f"{target.name:<20} {counts['iterations']:>10} {counts['refused']:>9} "
            f"{counts['accepted']:>9} {counts['crashes']:>8}",
            flush=True,
        )
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
