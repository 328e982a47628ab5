"""One-run latency of the Dapr adapter: a state transaction, and a full migration of a
small object between two gateways, each on its own sidecar and state store.

    python -m tests.dapr_latency                  # two stand-ins (tests/daprd)
    DAPR_GRPC_ENDPOINT=... DAPR_HTTP_ENDPOINT=... \\
    DAPR_PEER_GRPC_ENDPOINT=... DAPR_PEER_HTTP_ENDPOINT=... python -m tests.dapr_latency

With the variables set, gateway A keeps its state in the first sidecar's ``statestore``
and gateway B in the second's: point them at throwaway stores (the run writes an object
and its journal there). docs/dapr.md has the numbers of one run and the ratio.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from gateway.objectspec import parse_spec
from gateway.stores import Expect, Put
from gateway.stores.dapr import DaprStore
from gateway.testing import HostSpec, World, build_world, create_from_spec, serving
from tests.conftest import HOST_A, HOST_B
from tests.daprd.components import state_store
from tests.daprd.runner import DaprdThread

SPEC = {
    "data": {"invoice": 1, "amount": 10},
    "grant": {
        "audience": "spiffe://org-b.example",
        "capabilities": [{"resource": "state:self", "actions": ["read", "write"]}],
        "constraints": {"hosts": ["spiffe://org-a.example/*", "spiffe://org-b.example/*"]},
    },
}
POLICY = {"offers": [{"resource": "state:self", "actions": ["read", "write"]}]}
ROUNDS = 20
MIGRATIONS = 5


def _sections(stack: ExitStack, root: Path) -> tuple[dict[str, Any], dict[str, Any], str]:
    real = os.environ.get("DAPR_GRPC_ENDPOINT")
    if real:
        peer = os.environ["DAPR_PEER_GRPC_ENDPOINT"]
        a = {"grpc_endpoint": real, "http_endpoint": os.environ["DAPR_HTTP_ENDPOINT"]}
        b = {"grpc_endpoint": peer, "http_endpoint": os.environ["DAPR_PEER_HTTP_ENDPOINT"]}
        return (
            {"dapr": {"state_store": "statestore", **a}},
            {"dapr": {"state_store": "statestore", **b}},
            "real daprd",
        )
    sidecars = [
        stack.enter_context(
            DaprdThread(app_id=name, db=root / f"{name}.db", components=[state_store("statestore")])
        )
        for name in ("east", "west")
    ]
    return sidecars[0].store_section(), sidecars[1].store_section(), "stand-in"


async def clear(section: dict[str, Any]) -> None:
    """Start from an empty store, as a new gateway does (earlier runs left a world)."""
    store = await _connect(section)
    try:
        for key in await store.list(""):
            await store.delete(key, etag=Expect.ANY)
    finally:
        await store.close()


async def _connect(section: dict[str, Any]) -> DaprStore:
    endpoints = {k: v for k, v in section["dapr"].items() if k != "state_store"}
    return await DaprStore.connect("statestore", **endpoints)


async def transactions(section: dict[str, Any]) -> list[float]:
    """A create (first write) then an update with the ETag read: one transaction each."""
    store = await _connect(section)
    times = []
    try:
        for _ in range(ROUNDS):
            key = f"latency/{uuid.uuid4().hex}"
            started = time.perf_counter()
            await store.transact([Put(key=key, value=b"x" * 256, etag=Expect.ABSENT)])
            times.append(time.perf_counter() - started)
            await store.delete(key, etag=Expect.ANY)
    finally:
        await store.close()
    return times


async def migrations(world: World) -> list[float]:
    spec = parse_spec(SPEC, source="latency")
    times = []
    async with serving(world) as hosts:
        for _ in range(MIGRATIONS):
            object_id = f"obj://org-a.example/latency/{uuid.uuid4().hex[:12]}"
            await create_from_spec(hosts[HOST_A], object_id, spec)
            started = time.perf_counter()
            await hosts[HOST_A].migrate(object_id, tenant="default", destination=HOST_B)
            times.append(time.perf_counter() - started)
    return times


def main() -> None:
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        a, b, kind = _sections(stack, root)
        for section in (a, b):
            asyncio.run(clear(section))
        tx = asyncio.run(transactions(a))
        world = build_world(
            root / "world",
            [
                HostSpec(host_id=HOST_A, policy=POLICY, store=a),
                HostSpec(host_id=HOST_B, policy=POLICY, store=b),
            ],
        )
        moved = asyncio.run(migrations(world))
    print(
        f"{kind}: state transaction median {statistics.median(tx) * 1000:.2f} ms "
        f"({ROUNDS} runs); migration median {statistics.median(moved) * 1000:.0f} ms "
        f"({MIGRATIONS} runs)"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
