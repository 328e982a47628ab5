"""A workflow as a governed object: a two-approval settlement that starts at org-a,
migrates mid-flight to org-b, and finishes there with the authority org-b allows it.

Run: python examples/settlement_flow.py [--dir DIR]

The flow is examples/workflow/settlement.yaml: a state machine in the object's data,
rules and answers; durable timers as due times in its data, checked by its evaluation
cycle; approvals as requests (`gateway call ... approve`); cancellation as an event
(`gateway publish settlements/cancel`). Two instances run through it:

* settlement 1001: org-a approves (1 of 2), the object migrates to org-b, org-b narrows
  its authority on arrival (no more org-a approvals, no audit trail), org-b approves
  (2 of 2), the cooling-off timer fires on org-b and it settles there;
* settlement 1002: org-a approves, it migrates, and a cancellation message published at
  org-b cancels it before its second approval.

Everything an operator would type is a `gateway` command against two `gateway serve`
processes talking mTLS; the walkthrough is examples/workflow/README.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from gateway.testing import HostSpec, ServerProcess, World, build_world, run_cli, start_all

ORG_A = "spiffe://org-a.example/cluster/east/gateway"
ORG_B = "spiffe://org-b.example/cluster/west/gateway"
SPEC = Path(__file__).resolve().parent / "workflow" / "settlement.yaml"
FLOW = {
    1001: "obj://org-a.example/settlements/s-1001",
    1002: "obj://org-a.example/settlements/s-1002",
}

#: org-a offers everything the flow needs.
POLICY_A = {
    "offers": [
        {"resource": "state:self", "actions": ["read", "write"]},
        {"resource": "pubsub:*", "actions": ["publish", "subscribe"]},
        {"resource": "call:*", "actions": ["call"]},
    ]
}
#: org-b offers settlements topics and calls by its own approvers only, and narrows every
#: arriving object to that with a child grant (handoff.attenuate_on_rehost).
POLICY_B = {
    "offers": [
        {"resource": "state:self", "actions": ["read", "write"]},
        {"resource": "pubsub:settlements/*", "actions": ["publish", "subscribe"]},
        {"resource": "call:approve/org-b.example/*", "actions": ["call"]},
        {"resource": "call:status/*", "actions": ["call"]},
    ]
}


def gateway(world: World, host: str, *args: str | Path, refused: bool = False) -> str:
    """One `gateway` command as the operator of ``host`` types it. Stops on failure, or
    (``refused``) on success: some steps show a refusal."""
    result = run_cli(*args, config=world.config(host))
    if refused:
        if result.returncode != 1:
            raise SystemExit(f"gateway {' '.join(map(str, args))} was not refused")
        return result.stderr.strip()
    if result.returncode != 0:
        raise SystemExit(f"gateway {' '.join(map(str, args))} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def say(title: str, text: str = "") -> None:
    print(f"\n== {title}")
    if text:
        print(text)


def status(world: World, host: str, settlement: int) -> dict[str, Any]:
    reply = json.loads(gateway(world, host, "call", FLOW[settlement], "status", "-o", "json"))
    result: dict[str, Any] = reply["reply"]
    return result


def wait_for_state(world: World, host: str, settlement: int, state: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        now = status(world, host, settlement)
        if now["state"] == state:
            return now
        if time.monotonic() > deadline:
            raise SystemExit(f"settlement {settlement} stayed {now['state']!r}, not {state!r}")
        time.sleep(0.5)


def flow_lines(world: World, host: str, settlement: int) -> str:
    """The object's lineage without its per-cycle `evaluated` lines: what happened."""
    lineage = gateway(world, host, "lineage", FLOW[settlement])
    return "\n".join(line for line in lineage.splitlines() if " evaluated " not in line)


def run(directory: Path) -> None:
    world = build_world(
        directory / "world",
        [
            HostSpec(host_id=ORG_A, policy=POLICY_A),
            HostSpec(host_id=ORG_B, policy=POLICY_B, handoff={"attenuate_on_rehost": True}),
        ],
    )
    deadline = (datetime.now(UTC) + timedelta(minutes=10)).isoformat().replace("+00:00", "Z")
    specs = {}
    for settlement in FLOW:
        spec = yaml.safe_load(SPEC.read_text())
        spec["data"].update(settlement=settlement, deadline=deadline)
        specs[settlement] = directory / f"settlement-{settlement}.yaml"
        specs[settlement].write_text(yaml.safe_dump(spec))

    with ExitStack() as stack:
        start_all(stack, ServerProcess(world.config(ORG_A)), ServerProcess(world.config(ORG_B)))
        for settlement, object_id in FLOW.items():
            gateway(world, ORG_A, "object", "create", object_id, "--spec", specs[settlement])
        say(
            "org-a starts two settlements",
            "\n".join(json.dumps(status(world, ORG_A, s)) for s in FLOW),
        )
        for settlement, object_id in FLOW.items():
            say(
                f"org-a approves {settlement} (a request)",
                gateway(world, ORG_A, "call", object_id, "approve", "-o", "json"),
            )
        say("authority on org-a", gateway(world, ORG_A, "object", "show", FLOW[1001]))

        for object_id in FLOW.values():
            gateway(world, ORG_A, "migrate", object_id, "--to", ORG_B)
        say(
            "mid-flight to org-b: narrowed on arrival",
            gateway(world, ORG_B, "object", "show", FLOW[1001]),
        )
        say(
            "org-a may no longer approve on org-b",
            gateway(world, ORG_A, "call", FLOW[1001], "approve", "--at", ORG_B, refused=True),
        )
        say(
            "org-b approves 1001 (2 of 2): the cooling-off timer starts",
            gateway(world, ORG_B, "call", FLOW[1001], "approve", "-o", "json"),
        )
        say(
            "org-b cancels 1002 (an event)",
            gateway(
                world,
                ORG_B,
                "publish",
                "settlements/cancel",
                "--type",
                "settlement.cancel",
                "--data",
                json.dumps({"settlement": 1002}),
            ),
        )
        cancelled = wait_for_state(world, ORG_B, 1002, "cancelled")
        settled = wait_for_state(world, ORG_B, 1001, "settled")
        say("1002 on org-b", json.dumps(cancelled))
        say("1001 on org-b, after its timer", json.dumps(settled))
        say("1001: what happened, from its lineage", flow_lines(world, ORG_B, 1001))
        say("1002: what happened, from its lineage", flow_lines(world, ORG_B, 1002))
        say("org-b's outbox", gateway(world, ORG_B, "events"))
        print(f"\ndone: 1001 {settled['state']} on org-b, 1002 {cancelled['state']} on org-b")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dir", help="keep everything in this directory (default: a temporary one)"
    )
    args = parser.parse_args()
    if args.dir:
        directory = Path(args.dir)
        directory.mkdir(parents=True, exist_ok=True)
        run(directory)
    else:
        with tempfile.TemporaryDirectory() as scratch:
            run(Path(scratch))


if __name__ == "__main__":
    main()
