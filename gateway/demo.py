"""``gateway demo``: two hosts of two organizations on loopback, one migration, end to end.

Nothing is simulated: each host is a separate ``gateway serve`` process with its own
dev CA, signing keys, trust bundle and SQLite file; they talk gRPC over mTLS on
127.0.0.1 with ports the OS chose; the bundles are exchanged with the same code as
``gateway trust export/import``; the migration is driven by host A's own code against
host B's server, and B answers A's Decision requests through A's server.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

from rich.console import Console

from gateway._time import SystemClock
from gateway.cli import describe_object, lineage_table, verify_and_describe_lineage
from gateway.config import load_config
from gateway.errors import GatewayError
from gateway.host import Host
from gateway.keyring import load_keyring
from gateway.scaffold import PeerEntry, config_document, free_port, init_host, write_config

HOST_A = "spiffe://org-a.example/cluster/east/gateway"
HOST_B = "spiffe://org-b.example/cluster/west/gateway"
OBJECT = "obj://org-a.example/billing/invoice-42"
DATA = {"invoice": 42, "amount": 1250, "currency": "EUR", "status": "open"}

console = Console(highlight=False)


def _serve(config: Path, log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=log,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _wait_serving(process: subprocess.Popen[bytes], name: str, timeout: float = 30.0) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline().decode("utf-8", "replace").strip()
        if line.startswith("gateway: serving"):
            return line
        if not line and process.poll() is not None:
            raise GatewayError(f"host {name} exited with code {process.returncode} before serving")
    raise GatewayError(f"host {name} did not start serving within {timeout:.0f} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def prepare_hosts(work: Path) -> tuple[Path, Path]:
    """Two host directories that trust each other; returns their config paths."""
    now = SystemClock().now()
    port_a, port_b = free_port(), free_port()
    config_a = init_host(
        work / "org-a", host_id=HOST_A, listen=f"127.0.0.1:{port_a}", at=now, region="eu-west"
    )
    config_b = init_host(
        work / "org-b", host_id=HOST_B, listen=f"127.0.0.1:{port_b}", at=now, region="eu-central"
    )
    write_config(
        config_a,
        config_document(
            host=HOST_A,
            listen=f"127.0.0.1:{port_a}",
            region="eu-west",
            peers=[PeerEntry(id=HOST_B, address=f"127.0.0.1:{port_b}")],
        ),
    )
    write_config(
        config_b,
        config_document(
            host=HOST_B,
            listen=f"127.0.0.1:{port_b}",
            region="eu-central",
            peers=[PeerEntry(id=HOST_A, address=f"127.0.0.1:{port_a}")],
        ),
    )
    bundle_a = load_keyring(work / "org-a" / "keys").export(now)
    bundle_b = load_keyring(work / "org-b" / "keys").export(now)
    (work / "org-a.bundle.json").write_bytes(bundle_a)
    (work / "org-b.bundle.json").write_bytes(bundle_b)

    async def exchange() -> None:
        for config, bundle in ((config_a, bundle_b), (config_b, bundle_a)):
            host = await Host.open(load_config(config))
            try:
                await host.import_bundle(bundle)
            finally:
                await host.close()

    asyncio.run(exchange())
    return config_a, config_b


async def _migrate_and_report(config_a: Path, config_b: Path) -> None:
    host_a = await Host.open(load_config(config_a))
    try:
        obj = await host_a.create_object(
            OBJECT,
            tenant="default",
            data=json.dumps(DATA).encode(),
            content_type="application/json",
        )
        console.print(f"[bold]3.[/] created {obj.object_id} on host A")
        console.print(describe_object(obj))
        started = time.perf_counter()
        result = await host_a.migrate(OBJECT, tenant="default", destination=HOST_B)
        elapsed = (time.perf_counter() - started) * 1000
        console.print(
            f"[bold]4.[/] migrated to host B: {result.step.value}, epoch {result.epoch}, "
            f"{result.migration_id} ({elapsed:.0f} ms)"
        )
        left = await host_a.get_object(OBJECT, tenant="default")
    finally:
        await host_a.close()
    host_b = await Host.open(load_config(config_b))
    try:
        arrived = await host_b.get_object(OBJECT, tenant="default")
        console.print("[bold]5.[/] where it lives now, read from each host's own store:")
        console.print(f"   host A ({HOST_A}): {left.state.value.upper()} → {left.moved_to}")
        console.print(f"   host B ({HOST_B}): {arrived.state.value.upper()}, epoch {arrived.epoch}")
        console.print(lineage_table(arrived))
        console.print(verify_and_describe_lineage(host_b, arrived))
    finally:
        await host_b.close()


def run_demo(work: Path | None = None, *, keep: bool = False) -> int:
    temporary = work is None
    work = Path(tempfile.mkdtemp(prefix="gateway-demo-")) if work is None else work
    work.mkdir(parents=True, exist_ok=True)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        console.print(
            f"[bold]1.[/] two trust domains in {work}: dev CAs, host certificates, signing keys"
        )
        config_a, config_b = prepare_hosts(work)
        console.print("   exchanged signed trust bundles (org-a ↔ org-b)")
        with open(work / "host-a.log", "wb") as log_a, open(work / "host-b.log", "wb") as log_b:
            processes = [_serve(config_a, log_a), _serve(config_b, log_b)]
            for process, name in zip(processes, ("A", "B"), strict=True):
                console.print(
                    f"[bold]2.[/] host {name}: {_wait_serving(process, name).removeprefix('gateway: ')}"
                )
            asyncio.run(_migrate_and_report(config_a, config_b))
    finally:
        for process in processes:
            _stop(process)
        if temporary and not keep:
            shutil.rmtree(work, ignore_errors=True)
        elif keep or not temporary:
            console.print(f"work directory kept: {work}")
    return 0
