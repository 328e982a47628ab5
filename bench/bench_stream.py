"""Migrating a large object: peak memory of both sides, and throughput against raw gRPC.

    python bench/bench_stream.py            # 1 GiB (needs ~5 GiB free disk in --dir)
    python bench/bench_stream.py --size-mib 256

What it does, all on loopback with real processes and mTLS:

1. builds two hosts (org-a, org-b), writes a file of random bytes, and creates an object
   from it on A with ``gateway object create --data-file`` (streamed into A's store);
2. starts B as ``gateway serve``; runs the migration in a separate source process that
   reports its own resident memory before and its peak during the migration (Linux
   VmHWM, reset just before); B's peak is reset and read the same way from outside;
3. streams the same file over a bare gRPC stream (same mTLS certificates, same 1 MiB
   messages, the receiver only hashes) between two fresh processes: the baseline;
4. prints a table: time, MiB/s, the ratio gateway/raw, and each side's peak RSS increase
   against the 128 MiB budget (issue #5).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from gateway.testing import HostSpec, ServerProcess, build_world

HOST_A = "spiffe://org-a.example/cluster/east/gateway"
HOST_B = "spiffe://org-b.example/cluster/west/gateway"
OBJECT = "obj://org-a.example/archive/big"
BUDGET_MIB = 128
MIB = 1 << 20
console = Console()


def vm(pid: int | str, field: str) -> int:
    """A /proc/<pid>/status field in bytes (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak(pid: int | str) -> None:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0: write 5 to clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def write_random_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as handle, console.status("writing random data…") as status:
        for done in range(0, size, MIB):
            block = os.urandom(min(MIB, size - done))
            digest.update(block)
            handle.write(block)
            if done % (64 * MIB) == 0:
                status.update(f"writing random data… {done // MIB} / {size // MIB} MiB")
    return digest.hexdigest()


SOURCE_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from pathlib import Path
    from gateway.config import load_config
    from gateway.host import Host

    def vm(field):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

    async def main():
        host = await Host.open(load_config(sys.argv[1]))
        try:
            baseline = vm("VmRSS")
            Path("/proc/self/clear_refs").write_text("5")
            started = time.perf_counter()
            result = await host.migrate(sys.argv[2], tenant="default", destination=sys.argv[3])
            elapsed = time.perf_counter() - started
            print(json.dumps({"baseline": baseline, "peak": vm("VmHWM"), "seconds": elapsed, "step": result.step.value}))
        finally:
            await host.close()

    asyncio.run(main())
    """
)

RAW_SCRIPT = textwrap.dedent(
    """
    import asyncio, hashlib, json, sys, time
    import grpc

    def identity(b):
        return b

    async def serve(cert, key, ca, port_file):
        done = asyncio.Event()
        digest = hashlib.sha256()

        async def upload(requests, context):
            async for chunk in requests:
                digest.update(chunk)
            done.set()
            return digest.digest()

        handler = grpc.method_handlers_generic_handler(
            "raw.Stream", {"Upload": grpc.stream_unary_rpc_method_handler(upload, identity, identity)}
        )
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", 32 << 20)])
        server.add_generic_rpc_handlers((handler,))
        creds = grpc.ssl_server_credentials([(open(key, "rb").read(), open(cert, "rb").read())],
                                            root_certificates=open(ca, "rb").read(), require_client_auth=True)
        port = server.add_secure_port("127.0.0.1:0", creds)
        await server.start()
        open(port_file, "w").write(str(port))
        await done.wait()
        await server.stop(1)

    async def send(cert, key, ca, port, path):
        creds = grpc.ssl_channel_credentials(open(ca, "rb").read(), open(key, "rb").read(), open(cert, "rb").read())
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds,
                                           options=[("grpc.ssl_target_name_override", "localhost")]) as channel:
            upload = channel.stream_unary("/raw.Stream/Upload", request_serializer=identity, response_deserializer=identity)

            async def chunks():
                with open(path, "rb") as handle:
                    while block := handle.read(1 << 20):
                        yield block

            started = time.perf_counter()
            digest = await upload(chunks())
            print(json.dumps({"seconds": time.perf_counter() - started, "digest": digest.hex()}))

    if sys.argv[1] == "serve":
        asyncio.run(serve(*sys.argv[2:6]))
    else:
        asyncio.run(send(*sys.argv[2:7]))
    """
)


def run_raw(
    world_dir: Path, server_tls: Path, client_tls: Path, data: Path
) -> dict[str, float | str]:
    port_file = world_dir / "raw.port"
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            RAW_SCRIPT,
            "serve",
            str(server_tls / "host.crt"),
            str(server_tls / "host.key"),
            str(client_tls / "ca.crt"),
            str(port_file),
        ]
    )
    try:
        for _ in range(300):
            if port_file.exists() and port_file.read_text():
                break
            time.sleep(0.05)
        client = subprocess.run(
            [
                sys.executable,
                "-c",
                RAW_SCRIPT,
                "send",
                str(client_tls / "host.crt"),
                str(client_tls / "host.key"),
                str(server_tls / "ca.crt"),
                port_file.read_text(),
                str(data),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(client.stdout)  # type: ignore[no-any-return]
    finally:
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size-mib", type=int, default=1024, help="object size in MiB (default 1024)"
    )
    parser.add_argument(
        "--dir", type=Path, help="work directory on a disk with room (default: a temp dir)"
    )
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    size = args.size_mib * MIB
    work = Path(tempfile.mkdtemp(prefix="bench-stream-", dir=args.dir))
    try:
        world = build_world(work, [HostSpec(host_id=HOST_A), HostSpec(host_id=HOST_B)])
        data = work / "object.bin"
        expected = write_random_file(data, size)
        console.print(f"1. wrote {args.size_mib} MiB of random data")
        started = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway",
                "object",
                "create",
                OBJECT,
                "--data-file",
                str(data),
                "--content-type",
                "application/octet-stream",
                "--config",
                str(world.config(HOST_A)),
            ],
            check=True,
            capture_output=True,
        )
        console.print(
            f"2. created the object on A from the file ({time.perf_counter() - started:.1f} s)"
        )

        with ServerProcess(world.config(HOST_B)) as server_b:
            baseline_b = vm(server_b.pid, "VmRSS")
            reset_peak(server_b.pid)
            with console.status("3. migrating A → B…"):
                source = subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        SOURCE_SCRIPT,
                        str(world.config(HOST_A)),
                        OBJECT,
                        HOST_B,
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
            peak_b = vm(server_b.pid, "VmHWM")
        measured = json.loads(source.stdout.strip().splitlines()[-1])
        console.print(f"3. migrated: {measured['step']} in {measured['seconds']:.1f} s")

        async def check() -> str:
            from gateway.blobs import read_blob
            from gateway.config import load_config
            from gateway.host import Host

            host = await Host.open(load_config(world.config(HOST_B)))
            try:
                obj = await host.get_object(OBJECT, tenant="default")
                assert obj.blob is not None
                digest = hashlib.sha256()
                async for chunk in read_blob(host.store, obj.blob):
                    digest.update(chunk)
                return digest.hexdigest()
            finally:
                await host.close()

        assert asyncio.run(check()) == expected, "the object on B does not match the file"
        console.print("4. B's copy hashes to the file's SHA-256")
        with console.status("5. raw gRPC stream of the same bytes…"):
            raw = run_raw(
                work,
                world.host_directory(HOST_B) / "tls",
                world.host_directory(HOST_A) / "tls",
                data,
            )
        assert raw["digest"] == expected

        gateway_rate = size / MIB / measured["seconds"]
        raw_rate = size / MIB / float(raw["seconds"])
        table = Table(title=f"migrating a {args.size_mib} MiB object (2 cores, shared machine)")
        for column in ("", "seconds", "MiB/s", "÷ raw gRPC"):
            table.add_column(column, justify="right")
        table.add_row(
            "gateway migration (mTLS, verify, store both sides)",
            f"{measured['seconds']:.1f}",
            f"{gateway_rate:.1f}",
            f"{gateway_rate / raw_rate:.2f}",
        )
        table.add_row(
            "raw gRPC client stream (mTLS, hash only)",
            f"{float(raw['seconds']):.1f}",
            f"{raw_rate:.1f}",
            "1.00",
        )
        console.print(table)
        memory = Table(title=f"peak RSS increase during the migration (budget {BUDGET_MIB} MiB)")
        for column in ("process", "baseline MiB", "peak MiB", "increase MiB", "within budget"):
            memory.add_column(column, justify="right")
        for name, baseline, peak in (
            ("source (A)", measured["baseline"], measured["peak"]),
            ("destination (B, gateway serve)", baseline_b, peak_b),
        ):
            increase = (peak - baseline) / MIB
            memory.add_row(
                name,
                f"{baseline / MIB:.0f}",
                f"{peak / MIB:.0f}",
                f"{increase:.1f}",
                "yes" if increase < BUDGET_MIB else "NO",
            )
        console.print(memory)
    finally:
        if args.keep:
            console.print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
