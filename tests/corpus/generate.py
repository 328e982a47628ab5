"""Write the compatibility corpus of this release: ``python -m tests.corpus.generate``.

What it writes under ``tests/corpus/v<FORMAT>/`` (committed; tests/test_compatibility.py
reads every file with the current code, which must keep reading them, or refuse them
with the clear version error, in every later release):

  bundle-org-a.json, bundle-org-b.json   signed trust bundles (`gateway trust export`)
  proposal.json                          a dry-run proposal (`gateway export --dry-run`)
  archive.json                           an object archive (`gateway object show --export`)
  transfer.gwt                           an offline transfer file (`gateway export`)
  staged-receipt.json                    the receiver's signed answer (`gateway import`)
  lineage.bin                            the object's lineage as the wire encodes it
  MANIFEST.json                          each file's kind and SHA-256, and the release

Everything is produced by the `gateway` command of this checkout on a world built by
gateway.testing, as an operator would; keys and times are fresh at each run, so a second
run writes other bytes of the same kinds. Run it only to add the corpus of a new format
version: an existing version's files are history and must not be rewritten.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import tempfile
from pathlib import Path

from gateway import wire
from gateway.config import load_config
from gateway.local import LocalHost
from gateway.testing import HostSpec, build_world, run_cli
from gateway.versions import FORMAT_VERSIONS, PROTOCOL_VERSIONS

HOST_A = "spiffe://org-a.example/cluster/east/gateway"
HOST_B = "spiffe://org-b.example/cluster/west/gateway"
OBJECT = "obj://org-a.example/billing/invoice-corpus"
SPEC = """\
data: {invoice: 7, amount: 1250, status: open}
grant:
  audience: spiffe://org-b.example
  valid_for_days: 3650
  capabilities:
    - {resource: "pubsub:alerts/overdue", actions: [publish]}
    - {resource: "state:self", actions: [read, write]}
  constraints: {hosts: ["spiffe://org-a.example/*", "spiffe://org-b.example/*"], max_hops: 3}
rules:
  - name: overdue
    when: data.amount > 1000
    publish: {topic: alerts/overdue, payload: '{"invoice": data.invoice}'}
"""
POLICY = {
    "offers": [
        {"resource": "pubsub:*", "actions": ["publish"]},
        {"resource": "state:self", "actions": ["read", "write"]},
    ]
}


def _cli(*args: object, config: Path, cwd: Path) -> None:
    done = run_cli(*map(str, args), config=config, cwd=cwd)
    if done.returncode != 0:
        raise SystemExit(f"gateway {' '.join(map(str, args))} failed: {done.stderr}")


def generate(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        world = build_world(
            work, [HostSpec(host_id=HOST_A, policy=POLICY), HostSpec(host_id=HOST_B, policy=POLICY)]
        )
        a, b = world.config(HOST_A), world.config(HOST_B)
        spec = work / "spec.yaml"
        spec.write_text(SPEC, encoding="utf-8")
        _cli("object", "create", OBJECT, "--spec", spec, config=a, cwd=work)
        _cli("trust", "export", "--out", out / "bundle-org-a.json", config=a, cwd=work)
        _cli("trust", "export", "--out", out / "bundle-org-b.json", config=b, cwd=work)
        _cli(
            "export",
            OBJECT,
            "--to",
            HOST_B,
            "--dry-run",
            "-o",
            out / "proposal.json",
            config=a,
            cwd=work,
        )
        _cli("object", "show", OBJECT, "--export", out / "archive.json", config=a, cwd=work)

        async def lineage() -> bytes:
            async with await LocalHost.open(load_config(a)) as host:
                obj = await host.get_object(OBJECT, tenant="default")
                return wire.encode_lineage(obj.lineage)

        (out / "lineage.bin").write_bytes(asyncio.run(lineage()))
        _cli("export", OBJECT, "--to", HOST_B, "-o", out / "transfer.gwt", config=a, cwd=work)
        _cli("import", out / "transfer.gwt", "-o", out / "staged-receipt.json", config=b, cwd=work)
    kinds = {
        "bundle-org-a.json": "trust-bundle",
        "bundle-org-b.json": "trust-bundle",
        "proposal.json": "proposal",
        "archive.json": "archive",
        "transfer.gwt": "transfer-file",
        "staged-receipt.json": "staged-receipt",
        "lineage.bin": "lineage",
    }
    manifest = {
        "object_id": OBJECT,
        "source": HOST_A,
        "destination": HOST_B,
        "protocol_versions": list(PROTOCOL_VERSIONS),
        "format_versions": list(FORMAT_VERSIONS),
        "files": {
            name: {"kind": kind, "sha256": hashlib.sha256((out / name).read_bytes()).hexdigest()}
            for name, kind in kinds.items()
        },
    }
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    target = (
        Path(sys.argv[1])
        if len(sys.argv) > 1
        else Path(__file__).parent / f"v{max(FORMAT_VERSIONS)}"
    )
    generate(target)
    print(f"wrote {target}")
