"""Shared fixtures: where the public test vectors are, and ready-made multi-host worlds."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.testing import HostSpec, World, build_world

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT.parent / "shared" / "vectors"

HOST_A = "spiffe://org-a.example/cluster/east/gateway"
HOST_A2 = "spiffe://org-a.example/cluster/west/gateway"
HOST_B = "spiffe://org-b.example/cluster/west/gateway"

#: Fast failure detection for tests: a peer that does not answer is given up quickly.
FAST_HANDOFF = {"retry_attempts": 2, "rpc_timeout_seconds": 2, "stage_timeout_seconds": 0.2}


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    """../shared/vectors; its absence is a failure, never a skip."""
    if not VECTORS.is_dir() or not any(VECTORS.iterdir()):
        pytest.fail(
            f"public test vectors not found at {VECTORS}: check out shared/ beside the project"
        )
    return VECTORS


@pytest.fixture
def world(tmp_path: Path) -> World:
    """Host A (org-a, east), host A2 (org-a, west) and host B (org-b); all trust each other."""
    return build_world(
        tmp_path,
        [
            HostSpec(host_id=HOST_A, region="eu-west", handoff=FAST_HANDOFF),
            HostSpec(host_id=HOST_A2, region="eu-west", handoff=FAST_HANDOFF),
            HostSpec(
                host_id=HOST_B,
                region="eu-central",
                tenants=("default", "billing"),
                handoff=FAST_HANDOFF,
            ),
        ],
    )
