"""Migrating a large object: peak memory of both sides, and throughput against raw gRPC.

    python bench/bench_stream.py            # 1 GiB, 3 runs (needs ~4 GiB free in --dir)
    python bench/bench_stream.py --size-mib 256 --runs 3 --json out.json

What it does, all on loopback with real processes and mTLS:

1. builds two hosts (org-a, org-b), writes a file of random bytes, and creates an object
   from it on A with ``gateway object create --data-file`` (streamed into A's store);
2. starts B as ``gateway serve``; runs the migration in a separate source process that
   reports its own resident memory before and its peak during the migration (Linux
   VmHWM, reset just before); B's peak is reset and read the same way from outside;
3. streams the same file over a bare gRPC stream (same mTLS certificates, same message
   size as the gateway's stream, ``blobs.STREAM_PIECE_BYTES``; the receiver only
   hashes) between two fresh processes: the floor. Its server keeps gRPC's default
   flow control; the gateway's server fixes its receive window at 8 MiB
   (``transport.framing.RECEIVE_WINDOW_BYTES``, to bound the destination's memory;
   measured at 1 GiB, the gateway's rate is the same either way);
4. repeats 1-3 ``--runs`` times in fresh worlds (ours, floor, ours, floor, …: load on
   the shared machine hits both), then prints the median [min-max] of the rates and of
   the per-run ratios gateway/raw, and each side's largest peak RSS rise over the runs
   against issue 13's 64 MiB budget (each run's line also gives each side's CPU, kernel
   time and minor page faults); ``--json FILE`` writes the same as
   ``{"P3": {"ratio", "rss_rise_mib", "rss_rise_a_mib", "rss_rise_b_mib", "mib_per_s",
   "floor_mib_per_s", ...}}`` (ratio and rates are medians; RSS the largest rise).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from gateway.blobs import STREAM_PIECE_BYTES
from gateway.testing import HostSpec, ServerProcess, World, build_world

HOST_A = "spiffe://org-a.example/cluster/east/gateway"
HOST_B = "spiffe://org-b.example/cluster/west/gateway"
OBJECT = "obj://org-a.example/archive/big"
BUDGET_MIB = 64  # issue 13, P3: per side
MIB = 1 << 20
console = Console()


def vm(pid: int | str, field: str) -> int:
    """A /proc/<pid>/status field in bytes (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def cpu_seconds(pid: int | str, *, system_only: bool = False) -> float:
    """User + system (or only system) CPU time of a process and its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[12]) if system_only else int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def minor_faults(pid: int | str) -> int:
    """Minor page faults of a process so far (/proc/<pid>/stat, field 10)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


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
    import asyncio, json, os, resource, sys, time
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
            cpu0, sys0 = sum(os.times()[:2]), os.times()[1]
            faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            started = time.perf_counter()
            result = await host.migrate(sys.argv[2], tenant="default", destination=sys.argv[3])
            elapsed = time.perf_counter() - started
            cpu, kernel = sum(os.times()[:2]), os.times()[1]
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
            print(json.dumps({"baseline": baseline, "peak": vm("VmHWM"), "seconds": elapsed, "step": result.step.value,
                              "cpu": cpu - cpu0, "sys": kernel - sys0, "faults": faults}))
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

    async def send(cert, key, ca, port, path, piece):
        piece = int(piece)
        creds = grpc.ssl_channel_credentials(open(ca, "rb").read(), open(key, "rb").read(), open(cert, "rb").read())
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds,
                                           options=[("grpc.ssl_target_name_override", "localhost")]) as channel:
            upload = channel.stream_unary("/raw.Stream/Upload", request_serializer=identity, response_deserializer=identity)

            async def chunks():
                with open(path, "rb") as handle:
                    while block := handle.read(piece):
                        yield block

            started = time.perf_counter()
            digest = await upload(chunks())
            print(json.dumps({"seconds": time.perf_counter() - started, "digest": digest.hex()}))

    if sys.argv[1] == "serve":
        asyncio.run(serve(*sys.argv[2:6]))
    else:
        asyncio.run(send(*sys.argv[2:8]))
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
                str(STREAM_PIECE_BYTES),  # the same message size as the gateway's stream
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(client.stdout)  # type: ignore[no-any-return]
    finally:
        server.wait(timeout=30)


def migrate_once(world: World, data: Path, expected: str) -> dict[str, float]:
    """One migration of the file's bytes from A to B in a fresh ``world``: seconds and
    each side's peak RSS rise; checks that B's copy hashes to the file."""
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
    with ServerProcess(world.config(HOST_B)) as server_b:
        baseline_b = vm(server_b.pid, "VmRSS")
        reset_peak(server_b.pid)
        cpu_b = cpu_seconds(server_b.pid)
        sys_b = cpu_seconds(server_b.pid, system_only=True)
        faults_b = minor_faults(server_b.pid)
        source = subprocess.run(
            [sys.executable, "-c", SOURCE_SCRIPT, str(world.config(HOST_A)), OBJECT, HOST_B],
            capture_output=True,
            text=True,
            check=True,
        )
        peak_b = vm(server_b.pid, "VmHWM")
        cpu_b = cpu_seconds(server_b.pid) - cpu_b
        sys_b = cpu_seconds(server_b.pid, system_only=True) - sys_b
        faults_b = minor_faults(server_b.pid) - faults_b
    measured = json.loads(source.stdout.strip().splitlines()[-1])
    if measured["step"] != "done":
        raise SystemExit(f"the migration ended {measured['step']}, not done")

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

    if asyncio.run(check()) != expected:
        raise SystemExit("the object on B does not match the file")
    return {
        "seconds": measured["seconds"],
        "rise_a": (measured["peak"] - measured["baseline"]) / MIB,
        "rise_b": (peak_b - baseline_b) / MIB,
        "cpu_a": measured["cpu"],
        "sys_a": measured["sys"],
        "faults_a": measured["faults"],
        "cpu_b": cpu_b,
        "sys_b": sys_b,
        "faults_b": faults_b,
    }


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--size-mib", type=int, default=1024, help="object size in MiB (default 1024)"
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=3,
        help="migrations, each followed by a floor run (interleaved); figures are the "
        "median [min-max] over them (default 3)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        metavar="FILE",
        help='write {"P3": {"ratio", "rss_rise_mib", ...}} to FILE (bench/run.py reads it)',
    )
    parser.add_argument(
        "--dir", type=Path, help="work directory on a disk with room (default: a temp dir)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if args.size_mib < 1 or args.runs < 1:
        parser.error("--size-mib and --runs must be at least 1")
    size = args.size_mib * MIB
    work = Path(tempfile.mkdtemp(prefix="bench-stream-", dir=args.dir))
    try:
        data = work / "object.bin"
        expected = write_random_file(data, size)
        console.print(f"wrote {args.size_mib} MiB of random data")
        ours: list[dict[str, float]] = []
        floors: list[float] = []
        for run in range(args.runs):
            run_dir = work / f"run-{run}"
            world = build_world(run_dir, [HostSpec(host_id=HOST_A), HostSpec(host_id=HOST_B)])
            with console.status(f"run {run + 1}/{args.runs}: migrating A → B…"):
                ours.append(migrate_once(world, data, expected))
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            with console.status(f"run {run + 1}/{args.runs}: raw gRPC stream…"):
                raw = run_raw(
                    run_dir,
                    world.host_directory(HOST_B) / "tls",
                    world.host_directory(HOST_A) / "tls",
                    data,
                )
            if raw["digest"] != expected:
                raise SystemExit("the raw stream's receiver hashed other bytes")
            floors.append(float(raw["seconds"]))
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            # Both floor processes, start-up included (an upper bound of its stream's CPU).
            floor_cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
            floor_faults = after.ru_minflt - children.ru_minflt
            # Each run's world holds a copy on each side: keep the disk use bounded.
            if not args.keep:
                shutil.rmtree(run_dir, ignore_errors=True)
            console.print(
                f"run {run + 1}: gateway {ours[-1]['seconds']:.2f} s, raw {floors[-1]:.2f} s, "
                f"RSS rise A {ours[-1]['rise_a']:.1f} MiB, B {ours[-1]['rise_b']:.1f} MiB, "
                f"CPU A {ours[-1]['cpu_a']:.2f} s ({ours[-1]['sys_a']:.2f} in the kernel, "
                f"{ours[-1]['faults_a']:.0f} page faults), B {ours[-1]['cpu_b']:.2f} s "
                f"({ours[-1]['sys_b']:.2f} in the kernel, {ours[-1]['faults_b']:.0f} page faults), "
                f"floor's two processes {floor_cpu:.2f} s ({floor_faults} page faults; "
                "both figures with their start-up)"
            )

        rates = [args.size_mib / o["seconds"] for o in ours]
        floor_rates = [args.size_mib / f for f in floors]
        ratios = [r / f for r, f in zip(rates, floor_rates, strict=True)]
        rise_a = max(o["rise_a"] for o in ours)
        rise_b = max(o["rise_b"] for o in ours)
        table = Table(
            title=f"migrating a {args.size_mib} MiB object, {args.runs} runs: median [min-max]"
        )
        for column in ("", "MiB/s", "÷ raw gRPC"):
            table.add_column(column, justify="right")
        table.add_row(
            "gateway migration (mTLS, verify, store both sides)", spread(rates), spread(ratios)
        )
        table.add_row("raw gRPC client stream (mTLS, hash only)", spread(floor_rates), "1.00")
        console.print(table)
        memory = Table(
            title=f"peak RSS rise during a migration, largest of the runs (budget {BUDGET_MIB} MiB)"
        )
        for column in ("process", "rise MiB", "within budget"):
            memory.add_column(column, justify="right")
        for name, rise in (("source (A)", rise_a), ("destination (B, gateway serve)", rise_b)):
            memory.add_row(name, f"{rise:.1f}", "yes" if rise <= BUDGET_MIB else "NO")
        console.print(memory)
        if args.json is not None:
            figure = {
                "ratio": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
                "rss_rise_mib": max(rise_a, rise_b),
                "rss_rise_a_mib": rise_a,
                "rss_rise_b_mib": rise_b,
                "mib_per_s": statistics.median(rates),
                "floor_mib_per_s": statistics.median(floor_rates),
                "runs": args.runs,
                "size_mib": args.size_mib,
            }
            args.json.write_text(json.dumps({"P3": figure}, indent=2) + "\n")
            console.print(f"wrote {args.json}")
    finally:
        if args.keep:
            console.print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
