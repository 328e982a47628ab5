"""Third-party verification: what an auditor checks with two files and nothing else.

Run: python examples/verify_example.py            (in a temporary directory)
     python examples/verify_example.py --write examples/verify   (regenerate the shipped files)

org-a creates an invoice whose root grant lets org-b hold it, migrates it to org-b,
which narrows it on arrival. Then, with the same commands an operator uses:

* each organization exports its signed trust bundle (``gateway trust export``);
* org-b exports the object's signed archive (``gateway object show --export``);
* ``gateway verify`` checks the archive with only the two bundles, in an empty
  directory: no store, no configuration, no running gateway.

The files in examples/verify/ were made by this script; verify them yourself with
``gateway verify examples/verify/invoice-42.archive.json --trust
examples/verify/org-a.bundle.json --trust examples/verify/org-b.bundle.json``.
No private key is written there (bundles hold public keys only).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

from gateway.authority import CapabilitySet, Constraints
from gateway.objectspec import GrantSpec
from gateway.testing import HostSpec, World, build_world, run_cli, serving

ORG_A = "spiffe://org-a.example/cluster/east/gateway"
ORG_B = "spiffe://org-b.example/cluster/west/gateway"
INVOICE = "obj://org-a.example/billing/invoice-42"
FILES = ("org-a.bundle.json", "org-b.bundle.json", "invoice-42.archive.json")


async def migrate(world: World) -> None:
    async with serving(world) as hosts:
        await hosts[ORG_A].create_object(
            INVOICE,
            tenant="default",
            data=json.dumps({"amount": 1250, "currency": "EUR"}).encode(),
            content_type="application/json",
            grant=GrantSpec(
                audience="spiffe://org-b.example",
                valid_for=timedelta(days=30),
                capabilities=CapabilitySet.from_config(
                    [{"resource": "pubsub:billing/*", "actions": ["publish"]}], "example"
                ),
                constraints=Constraints.from_claim({"max_hops": 3}),
            ),
        )
        await hosts[ORG_A].migrate(INVOICE, tenant="default", destination=ORG_B)


def _cli(*args: str | Path, config: Path | None = None, cwd: Path | None = None) -> str:
    result = run_cli(*args, config=config, cwd=cwd)
    if result.returncode != 0:
        raise SystemExit(f"gateway {args[0]} failed: {result.stderr.strip()}")
    return result.stdout


def export(world: World, out: Path) -> None:
    """The files partners and auditors exchange, written by the real commands."""
    out.mkdir(parents=True, exist_ok=True)
    for host, name in ((ORG_A, FILES[0]), (ORG_B, FILES[1])):
        _cli("trust", "export", "--out", out / name, config=world.config(host))
    _cli("object", "show", INVOICE, "--export", out / FILES[2], config=world.config(ORG_B))


def verify(files: Path) -> int:
    """``gateway verify`` with nothing but the files, from an empty directory."""
    with tempfile.TemporaryDirectory() as empty:
        args = [str(files / FILES[2])]
        for bundle in FILES[:2]:
            args += ["--trust", str(files / bundle)]
        result = run_cli("verify", *args, cwd=Path(empty), env={"GATEWAY_CONFIG": None})
    print(result.stdout, end="")
    print(result.stderr, end="", file=sys.stderr)
    return result.returncode


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as directory:
        world = build_world(
            Path(directory),
            [
                HostSpec(host_id=ORG_A),
                # org-b offers less than the root grants, and narrows the grant to it.
                HostSpec(
                    host_id=ORG_B,
                    handoff={"attenuate_on_rehost": True},
                    policy={
                        "offers": [{"resource": "pubsub:billing/paid", "actions": ["publish"]}]
                    },
                ),
            ],
        )
        # build_world runs its own event loop, so it comes before asyncio.run.
        asyncio.run(migrate(world))
        target = Path(argv[1]) if argv[:1] == ["--write"] and len(argv) > 1 else None
        files = (target or Path(directory) / "exchanged").resolve()
        export(world, files)
        return verify(files)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
