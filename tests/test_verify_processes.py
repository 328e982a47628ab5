"""`gateway verify` end to end: two organizations' real `gateway serve` processes (one CA
each, real mTLS, real SQLite files) migrate an object A -> B (which narrows its grant on
arrival) -> A; the files partners exchange
are written by the real commands (`gateway trust export`, `gateway object show
--export`, `gateway export`); then `gateway verify` runs as a subprocess in an empty
directory holding only those files, with no configuration, store or server to reach.

A then plays the dishonest exporter: it signs, with its real key, an archive of its copy
with its own arrival dropped, and one with its root alone (B's narrowing stripped, which
B's signed departure recorded). Both exit 1 with the failing check named. `gateway verify` did not exist before issue 15:
on db71f6b every call here exits 2 (argparse: invalid choice 'verify').
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from gateway import envelope as dsse
from gateway.audit import ARCHIVE_PAYLOAD_TYPE, Archive
from gateway.config import load_config
from gateway.host import Host
from gateway.testing import HostSpec, ServerProcess, build_world, run_cli, start_all
from tests.conftest import FAST_HANDOFF, HOST_A, HOST_B

OBJECT = "obj://org-a.example/billing/invoice-9"
SPEC = """\
data: {invoice: 9, amount: 1250}
grant:
  audience: spiffe://org-b.example
  valid_for_days: 30
  capabilities:
    - resource: pubsub:billing/*
      actions: [publish]
  constraints:
    max_hops: 4
"""

pytestmark = pytest.mark.slow


def _ok(result: object) -> None:
    assert getattr(result, "returncode", None) == 0, getattr(result, "stderr", result)


def _verify(empty: Path, file: str, *extra: str) -> tuple[int, dict[str, object] | None, str]:
    result = run_cli(
        "verify",
        file,
        "--trust",
        "a.bundle.json",
        "--trust",
        "b.bundle.json",
        "-o",
        "json",
        *extra,
        cwd=empty,
        env={"GATEWAY_CONFIG": None},
    )
    document = json.loads(result.stdout) if result.stdout.strip() else None
    return result.returncode, document, result.stderr


def _rewritten(config: Path, signed: bytes, **changes: object) -> bytes:
    """An archive, changed and signed again with the host's real key (without serving it)."""

    async def main() -> bytes:
        host = await Host.open(load_config(config))
        try:
            archive = Archive.decode(dsse.from_json(signed, max_size=1 << 24).payload)
            payload = replace(archive, **changes).encode()  # type: ignore[arg-type]
            return dsse.to_json(host.context.seal(payload, ARCHIVE_PAYLOAD_TYPE))
        finally:
            await host.close()

    return asyncio.run(main())


def test_an_auditor_verifies_a_migration_with_only_the_exported_files(tmp_path: Path) -> None:
    world = build_world(
        tmp_path / "world",
        [
            HostSpec(host_id=HOST_A, handoff=FAST_HANDOFF),
            HostSpec(
                host_id=HOST_B,
                handoff={**FAST_HANDOFF, "attenuate_on_rehost": True},
                policy={"offers": [{"resource": "pubsub:billing/paid", "actions": ["publish"]}]},
            ),
        ],
    )
    a, b = world.config(HOST_A), world.config(HOST_B)
    spec = tmp_path / "invoice.yaml"
    spec.write_text(SPEC)
    exchanged = tmp_path / "exchanged"
    exchanged.mkdir()
    with contextlib.ExitStack() as stack:
        start_all(stack, ServerProcess(a), ServerProcess(b))
        _ok(run_cli("object", "create", OBJECT, "--spec", spec, config=a))
        _ok(run_cli("migrate", OBJECT, "--to", HOST_B, config=a))
        _ok(run_cli("migrate", OBJECT, "--to", HOST_A, config=b))
        _ok(run_cli("trust", "export", "--out", exchanged / "a.bundle.json", config=a))
        _ok(run_cli("trust", "export", "--out", exchanged / "b.bundle.json", config=b))
        _ok(run_cli("object", "show", OBJECT, "--export", exchanged / "held-by-a.json", config=a))
        # B's copy left: B holds nothing to vouch for (its history goes on at A).
        left = run_cli("object", "show", OBJECT, "--export", exchanged / "left-b.json", config=b)
        assert left.returncode == 1 and "MOVED" in left.stderr and HOST_A in left.stderr
        _ok(
            run_cli(
                "export",
                OBJECT,
                "--to",
                HOST_B,
                "--dry-run",
                "--out",
                exchanged / "a-to-b.json",
                config=a,
            )
        )
    honest = (exchanged / "held-by-a.json").read_bytes()
    archive = Archive.decode(dsse.from_json(honest, max_size=1 << 24).payload)
    assert len(archive.lineage.arrivals) == 2 and len(archive.grants) == 2
    (exchanged / "no-arrival.json").write_bytes(
        _rewritten(
            a, honest, lineage=replace(archive.lineage, arrivals=archive.lineage.arrivals[:1])
        )
    )
    (exchanged / "stripped.json").write_bytes(_rewritten(a, honest, grants=archive.grants[:1]))

    # The auditor's directory: the exported files and nothing else.
    empty = tmp_path / "auditor"
    shutil.copytree(exchanged, empty)
    assert sorted(p.name for p in empty.iterdir()) == [
        "a-to-b.json",
        "a.bundle.json",
        "b.bundle.json",
        "held-by-a.json",
        "no-arrival.json",
        "stripped.json",
    ]

    status, report, stderr = _verify(empty, "held-by-a.json")
    assert status == 0, stderr
    assert report is not None and report["verified"] is True and report["kind"] == "archive"
    custody = report["custody"]
    assert isinstance(custody, list)
    assert [s["holder"] for s in custody] == [HOST_A, HOST_B, HOST_A]
    assert [s["departed_to"] for s in custody] == [HOST_B, HOST_A, ""]
    assert [s["received_from"] for s in custody] == ["", HOST_A, HOST_B]
    for before, after in itertools.pairwise(custody):
        assert before["departure_migration"] == after["arrival_migration"]
        assert before["departure_epoch"] == after["arrival_epoch"]
        assert before["departed_at"] <= after["arrived_at"]
    assert report["hops"] == 2
    # B narrowed on arrival to what it offers; it holds its authority from that grant.
    grants = report["grants"]
    assert isinstance(grants, list) and len(grants) == 2
    assert grants[0]["issuer"] == HOST_A and grants[1]["issuer"] == HOST_B
    assert grants[1]["capabilities"] == [{"res": "pubsub:billing/paid", "act": ["publish"]}]
    assert [s["authority_from"] for s in custody] == [0, 1, 1]
    assert {b["trust_domain"] for b in report["trust_bundles"]} == {  # type: ignore[union-attr]
        "org-a.example",
        "org-b.example",
    }
    assert all(c["status"] == "ok" for c in report["checks"])  # type: ignore[union-attr]

    status, report, stderr = _verify(empty, "a-to-b.json")
    assert status == 0, stderr
    assert report is not None and report["kind"] == "proposal"
    assert report["destination"] == HOST_B and report["hops"] == 3

    for name, check, words in (
        ("no-arrival.json", {"custody"}, "2 departures and 1 arrivals"),
        ("stripped.json", {"archive grants", "narrowings kept"}, "narrowing made on the way"),
    ):
        status, report, stderr = _verify(empty, name)
        assert status == 1, (name, stderr)
        assert report is not None and report["verified"] is False
        failed = {c["name"]: c["detail"] for c in report["checks"] if c["status"] == "failed"}  # type: ignore[union-attr]
        assert set(failed) == check, (name, failed)
        assert any(words in detail for detail in failed.values()), failed
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("gateway: error:")
        assert any(name in lines[0] for name in check)

    # Only org-a's bundle: everything org-b signed is unverifiable, so exit 1.
    result = run_cli(
        "verify",
        "held-by-a.json",
        "--trust",
        "a.bundle.json",
        cwd=empty,
        env={"GATEWAY_CONFIG": None},
    )
    assert result.returncode == 1 and "no trust bundle for org-b.example" in result.stderr
    # A bundle given as the file to verify is bad input: exit 2.
    result = run_cli("verify", "a.bundle.json", "--trust", "a.bundle.json", cwd=empty)
    assert result.returncode == 2 and result.stderr.startswith("gateway: error:")
