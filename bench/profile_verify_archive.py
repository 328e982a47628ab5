"""The CPU of `gateway verify --archive` on an object with many archived handoffs
(ADR 0010 step 2), in counts that do not depend on the machine's load.

Run from the project directory::

    python bench/profile_verify_archive.py --hops 201 --dir /tmp/va    # build, then profile
    python bench/profile_verify_archive.py --dir /tmp/va --runs 3      # profile what is built

An object ping-pongs between two hosts ``--hops`` times (over real mTLS, in process),
then its holder compacts it keeping the newest 8 handoffs and every entry it may archive;
the signed object archive, the archive directory and both trust bundles are written to
``--dir``. Then ``gateway verify FILE --trust ... --archive DIR -o json`` is run in this
process: once under cProfile (total function calls, and the calls of the functions that
parse or check archived handoffs), then ``--runs`` times timed by thread CPU time.

For instruction counts, run the verify alone under callgrind with ``--only-verify``
(``--runs 1`` and ``--runs 3``: the difference over two is one verification's)::

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python bench/profile_verify_archive.py --dir /tmp/va --only-verify --runs 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import pstats
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway import envelope as dsse
from gateway._time import SystemClock
from gateway.archive import ArchiveDir, compact_custody, compaction_cut
from gateway.audit import ARCHIVE_PAYLOAD_TYPE, archive_of
from gateway.cli import main
from gateway.custody import forget_verified_arrivals
from gateway.keyring import load_keyring
from gateway.keys import forget_verified_signatures
from gateway.lineage import forget_decoded_entries, forget_verified_prefixes
from gateway.testing import HostSpec, build_world, serving

HOST_A = "spiffe://org-a.example/cluster/east/gateway"
HOST_B = "spiffe://org-b.example/cluster/west/gateway"
OBJECT = "obj://org-a.example/billing/verify-archive"
FAST = {"retry_attempts": 2, "rpc_timeout_seconds": 5, "stage_timeout_seconds": 1}
#: Functions whose calls are reported (file suffix, name).
WATCHED = [
    ("gateway/archive.py", "_parsed_handoffs"),
    ("gateway/archive.py", "archived_custody"),
    ("gateway/envelope.py", "from_json"),
    ("gateway/_custody_chain.py", "step"),
    ("gateway/wire.py", "decode_receipt"),
    ("gateway/custody.py", "verify_custody"),
]


def build(directory: Path, hops: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    world = build_world(
        directory / "world", [HostSpec(host_id=h, handoff=FAST) for h in (HOST_A, HOST_B)]
    )

    async def run() -> tuple[object, object, str]:
        async with serving(world) as hosts:
            await hosts[HOST_A].create_object(
                OBJECT, tenant="default", data=b'{"n": 1}', content_type="application/json"
            )
            for hop in range(hops):
                source, destination = (HOST_A, HOST_B) if hop % 2 == 0 else (HOST_B, HOST_A)
                await hosts[source].migrate(OBJECT, tenant="default", destination=destination)
            holder = HOST_B if hops % 2 else HOST_A
            return (
                await hosts[holder].get_object(OBJECT, tenant="default"),
                hosts[holder].context.signer,
                holder,
            )

    obj, signer, holder = asyncio.run(run())
    lineage = obj.lineage  # type: ignore[attr-defined]
    at = lineage.entries[-1].time + timedelta(seconds=1)
    keep = next(
        k for k in range(1, len(lineage.entries)) if compaction_cut(lineage, host=holder, keep=k)
    )
    compacted, segment, custody = compact_custody(
        lineage, object_id=OBJECT, host=holder, at=at, signer=signer, keep=keep, custody_keep=8
    )
    assert custody is not None
    archive = ArchiveDir(directory / "archive")
    archive.write("default", segment)
    archive.write_custody("default", custody)
    payload = archive_of(
        object_id=OBJECT,
        tenant="default",
        holder=holder,
        state=obj.state.value,  # type: ignore[attr-defined]
        epoch=obj.epoch,  # type: ignore[attr-defined]
        exported_at=at,
        grants=obj.grants,  # type: ignore[attr-defined]
        lineage=compacted,
    )
    (directory / "object.json").write_bytes(
        dsse.to_json(dsse.seal(payload, ARCHIVE_PAYLOAD_TYPE, [signer]))  # type: ignore[list-item]
    )
    now = SystemClock().now()
    for domain in ("org-a.example", "org-b.example"):
        bundle = load_keyring(directory / "world" / domain / "keys").export(now)
        (directory / f"{domain}.trust.json").write_bytes(bundle)
    print(f"built {hops} hops, {len(custody.departures)} archived handoffs in {directory}")


def command(directory: Path) -> list[str]:
    archive = next((directory / "archive").rglob("*.cus")).parent
    trusts = [a for t in sorted(directory.glob("*.trust.json")) for a in ("--trust", str(t))]
    return ["verify", str(directory / "object.json"), *trusts, "--archive", str(archive)]


def verify_once(argv: list[str]) -> None:
    """One verification as a fresh `gateway verify` process makes it: no memos."""
    forget_verified_signatures()
    forget_verified_arrivals()
    forget_decoded_entries()
    forget_verified_prefixes()
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([*argv, "-o", "json"]) == 0


def main_(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dir", type=Path, required=True, help="where the object, archive and bundles are (or go)"
    )
    parser.add_argument("--hops", type=int, default=0, help="build first (odd: ends on B)")
    parser.add_argument("--runs", type=int, default=5, help="timed verifications (5)")
    parser.add_argument("--only-verify", action="store_true", help="no profile, no timing")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.hops:
        build(args.dir, args.hops)
    cli = command(args.dir)
    if args.only_verify:
        for _ in range(args.runs):
            verify_once(cli)
        return
    verify_once(cli)  # warm: imports and lazy set-up are not counted
    profile = cProfile.Profile()
    profile.enable()
    verify_once(cli)
    profile.disable()
    stats = pstats.Stats(profile)
    calls = {
        name: sum(
            v[1]
            for (file, _line, func), v in stats.stats.items()  # type: ignore[attr-defined]
            if file.endswith(suffix) and func == name
        )
        for suffix, name in WATCHED
    }
    cpu = []
    for _ in range(args.runs):
        start = time.thread_time()
        verify_once(cli)
        cpu.append(time.thread_time() - start)
    result = {
        "total_calls": stats.total_calls,  # type: ignore[attr-defined]
        "calls": calls,
        "thread_cpu_ms": sorted(round(c * 1000, 1) for c in cpu),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main_()
