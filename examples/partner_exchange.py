"""A partner exchange, end to end: two organizations, a narrowing on arrival, a return
trip, and an offline leg through files.

Run: python examples/partner_exchange.py [--dir DIR]

org-a creates an invoice whose root grant lets it publish to pubsub:alerts/*. org-b
offers only pubsub:alerts/overdue and narrows every arriving object to what it offers,
with a child grant recorded in the lineage. The invoice goes to org-b over mTLS (both
`gateway serve` processes), comes back to org-a (still narrowed: a narrowing sticks),
and then goes to org-b again with no network at all: the operators carry files. At the
end org-b shows the verified lineage and chain of custody, and an auditor holding only the
two trust bundles verifies the object's archive with `gateway verify`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from contextlib import ExitStack
from pathlib import Path

from gateway.testing import HostSpec, ServerProcess, World, build_world, run_cli, start_all

ORG_A = "spiffe://org-a.example/cluster/east/gateway"
ORG_B = "spiffe://org-b.example/cluster/west/gateway"
INVOICE = "obj://org-a.example/billing/invoice-42"

SPEC = {
    "data": {"invoice": 42, "amount": 1250, "status": "open"},
    "grant": {
        "audience": "spiffe://org-b.example",
        "valid_for_days": 30,
        "capabilities": [{"resource": "pubsub:alerts/*", "actions": ["publish"]}],
        "constraints": {"max_hops": 5},
    },
}


def gateway(world: World, host: str, *args: str | Path) -> str:
    """One `gateway` command as the operator of ``host`` types it; stops on failure."""
    result = run_cli(*args, config=world.config(host))
    if result.returncode != 0:
        raise SystemExit(f"gateway {' '.join(map(str, args))} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def say(title: str, text: str = "") -> None:
    print(f"\n== {title}")
    if text:
        print(text)


def exchange(directory: Path) -> None:
    world = build_world(
        directory / "world",
        [
            HostSpec(
                host_id=ORG_A,
                policy={"offers": [{"resource": "pubsub:*", "actions": ["publish"]}]},
            ),
            HostSpec(
                host_id=ORG_B,
                handoff={"attenuate_on_rehost": True},
                policy={"offers": [{"resource": "pubsub:alerts/overdue", "actions": ["publish"]}]},
            ),
        ],
    )
    spec = directory / "invoice.json"
    spec.write_text(json.dumps(SPEC))

    with ExitStack() as stack:
        start_all(stack, ServerProcess(world.config(ORG_A)), ServerProcess(world.config(ORG_B)))
        say(
            "org-a creates the invoice",
            gateway(world, ORG_A, "object", "create", INVOICE, "--spec", spec),
        )
        say(
            "org-b's answer to a dry run",
            gateway(world, ORG_A, "migrate", INVOICE, "--to", ORG_B, "--dry-run"),
        )
        say("to org-b over mTLS", gateway(world, ORG_A, "migrate", INVOICE, "--to", ORG_B))
        say("on org-b: narrowed on arrival", gateway(world, ORG_B, "object", "show", INVOICE))
        say("back to org-a", gateway(world, ORG_B, "migrate", INVOICE, "--to", ORG_A))
        say("on org-a: the narrowing stuck", gateway(world, ORG_A, "object", "show", INVOICE))

    # No server runs from here on: the two hosts share no network, only files.
    transfer, staged = directory / "invoice.gwx", directory / "staged-receipt.json"
    commit, activated = directory / "commit.json", directory / "activation-receipt.json"
    say(
        "offline: org-a exports",
        gateway(world, ORG_A, "export", INVOICE, "--to", ORG_B, "-o", transfer),
    )
    say("offline: org-b imports", gateway(world, ORG_B, "import", transfer, "-o", staged))
    say(
        "offline: org-a commits",
        gateway(world, ORG_A, "export", "--complete", staged, "-o", commit),
    )
    say("offline: org-b activates", gateway(world, ORG_B, "import", commit, "-o", activated))
    say("offline: org-a finishes", gateway(world, ORG_A, "export", "--complete", activated))
    say("org-b: lineage and custody", gateway(world, ORG_B, "lineage", INVOICE))

    # An auditor with nothing but the two organizations' trust bundles checks the history.
    bundles = [directory / "org-a.bundle.json", directory / "org-b.bundle.json"]
    gateway(world, ORG_A, "trust", "export", "--out", bundles[0])
    gateway(world, ORG_B, "trust", "export", "--out", bundles[1])
    archive = directory / "invoice-archive.json"
    gateway(world, ORG_B, "object", "show", INVOICE, "--export", archive)
    verified = run_cli("verify", archive, "--trust", bundles[0], "--trust", bundles[1])
    if verified.returncode != 0:
        raise SystemExit(f"gateway verify failed: {verified.stderr.strip()}")
    say("an auditor: gateway verify invoice-archive.json --trust ...", verified.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dir", help="keep everything in this directory (default: a temporary one)"
    )
    args = parser.parse_args()
    if args.dir:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
        exchange(Path(args.dir))
        return
    with tempfile.TemporaryDirectory() as directory:
        exchange(Path(directory))


if __name__ == "__main__":
    main()
