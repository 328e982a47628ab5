"""Migrations and cycles at scale, each beside a floor measured in the same run.

Run from the project directory::

    python bench/bench_scale.py --quick            # about 2-3 minutes on a busy 2-core VM
    python bench/bench_scale.py                    # the issue's sizes (10k residents, 1,000 moves)
    python bench/bench_scale.py --only P1 P1b --json out.json

Figures (issue 13), ratios are *ours / floor* for times and *ours / floor* for rates:

P1   p50 of one small migration A -> B (sequential), against the floor: the same work
     done the simplest correct way in the same process layout -- two mTLS unary round
     trips carrying the same bytes (the transfer envelope out, a receipt back; a commit
     out, a receipt back) + as many Ed25519 signs and verifies as the protocol made +
     as many durable SQLite commits (WAL, synchronous=FULL) as the protocol made, each
     of the object's size. Lower is better; 1.0 is the floor.
P1b  p50 of a migration into a host (C) holding ``--residents`` cycling objects, over
     the p50 into a host (D) of the same kind holding none, the two timed in
     ``--p1b-samples`` pairs (one into each, the order within a pair seeded) over the
     same minutes of the same run. 1.0 is flat.
P2   throughput of ``--moves`` migrations with 8 in flight, over the floor operation run
     with 8 in flight (its commits on one writer thread per side, as one connection per
     file would), in 4 alternating rounds of each. Higher is better. In the process
     layout each side's CPU per migration is in the JSON, ours and the floor's, whole
     (``source_cpu_ms``, ...) and its event-loop thread's alone (``source_loop_cpu_ms``,
     ...): the rest is the side's other threads (the SQLite writer, gRPC's own).
     ``source_loop_over_floor`` and ``destination_loop_over_floor``, each side's loop
     thread over the floor's in the same run, are the readings to pair across runs.
P5   committed cycles/s of ``--cycle-objects`` objects x 3 rules driven by the host's
     Scheduler (the real path: due times, concurrency, one commit per cycle), over bare
     CEL evaluation of the same rules on the same objects (cel-expr-python, compiled
     once, activation per object). Higher is better. Also prints the CPU per cycle of the
     event loop's thread (``loop_cpu_us_per_cycle``) and of the SQLite writer threads
     (``writer_cpu_us_per_cycle``).

Every host is real (gateway.testing.build_world: CAs, keys, mTLS on 127.0.0.1, SQLite
files). P3 (a large object, streamed) is bench_stream.py.

Process layout (``--layout``, P1/P1b/P2; issue 13 point 8: each figure beside its floor
in the same process layout):

``processes`` (default, as deployed) -- B, C and D each run ``gateway serve`` as their
     own OS process (gateway.testing.ServerProcess); A drives the migrations from this
     process as ``gateway migrate`` does (its store opened with Host.open, not served).
     The floor is split the same way: its gRPC server (B's certificate, A's CA, mTLS) is
     this script re-run with ``--floor-server`` as its own process, doing the
     destination's share of the signs, verifies and durable commits (its own SQLite
     file, one writer thread) in its Transfer and Commit handlers; this process does
     the source's share around the two calls, on its own file and writer thread.
``one-process`` (the old layout, for comparison) -- A, B, C and D served with Host.serve
     on this process's one event loop, and the floor's server and both its sides here
     too. Then P2 puts both sides' Python CPU on one core, which a deployment never does.

Counting the floor's work. Only a process that sees both sides can count both, so the
counts are always taken with A and B served in this process (both layouts begin so):
one warm-up migration, then one counted migration during which a profile hook counts
Ed25519/ECDSA ``sign``/``verify`` calls and a wrapper counts the handoff's own store
transactions (callers in gateway/handoff/), each put on the destination's side when a
frame of gateway/handoff/destination.py or gateway/transport/server.py is on its stack,
else on the source's. In the process layout B then stops and restarts as a process on
the same store; the counts are in the JSON under ``floor_counts`` (today: 2+2 signs,
2+3 verifies, 3+2 commits, source+destination).

P1b compares two destinations at the same time, not one destination at two times: the
empty half measured minutes before the full one (C empty, then C stopped, filled and
restarted) saw a different load on the shared machine, and its quick ratio swung
0.6x-2.6x between runs while careful runs found C's CPU per arrival flat. Now C and D
are the same kind of host (the same policy and config, each its own trust domain and
SQLite file) and differ only in C's residents: C is filled through its own Host served
in this process (so the residents' first cycles and outbox events run and settle) and
closed, D served and closed beside it (the same store history), and then C and D start
together (as processes in the process layout; in the one-process layout both are served
here from the start). Three untimed migrations into each warm A's connections, and each
host's start-up work is over (its process quiet) before the timed pairs: "holding" is
the steady state. The ratio is C's p50 over D's (``pair_ratio``, the median of each
pair's C over D, cross-checks it); in the process layout ``cpu_ratio`` is C's process
CPU over D's across the pairs (each the same number of arrivals), steadier than the p50s
(``cpu_ms_full``/``cpu_ms_empty`` per arrival).

Runs: ``bench/run.py`` runs ``--quick --only P1 P1b P2 P5 --json F``. To compare
layouts, alternate invocations (processes, one-process, processes, ...) and take the
median [min-max] of each layout's ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.config import load_config
from gateway.host import Host
from gateway.objectspec import parse_spec
from gateway.rules import RuleSet, load_data
from gateway.testing import HostSpec, ServerProcess, World, build_world, create_from_spec

HOST_A = "spiffe://org-a.example/cluster/east/gateway"
HOST_B = "spiffe://org-b.example/cluster/west/gateway"
HOST_C = "spiffe://org-c.example/cluster/north/gateway"
#: P1b's second destination: the same kind of host as C (its own trust domain, the same
#: policy, config and SQLite store) that never holds the residents.
HOST_D = "spiffe://org-d.example/cluster/south/gateway"
TENANT = "default"
POLICY = {
    "offers": [
        {"resource": "pubsub:*", "actions": ["publish"]},
        {"resource": "state:self", "actions": ["read", "write"]},
        {"resource": "invoke:*", "actions": ["invoke"]},
    ],
    "ceilings": [
        {
            "allow": [
                {"resource": "pubsub:*", "actions": ["publish"]},
                {"resource": "state:self", "actions": ["read", "write"]},
                {"resource": "invoke:*", "actions": ["invoke"]},
            ],
        }
    ],
}
GRANTED = [
    {"resource": "pubsub:alerts/*", "actions": ["publish"]},
    {"resource": "state:self", "actions": ["read", "write"]},
]
RULES = [
    {
        "name": "overdue",
        "when": 'data.amount > 1000 && data.status == "open"',
        "publish": {"topic": "alerts/overdue", "payload": '{"invoice": data.invoice}'},
    },
    {
        "name": "checked",
        "when": "generation % 2 == 0",
        "write": '{"checked": generation}',
    },
    {"name": "small", "when": "data.amount < 100", "publish": {"topic": "alerts/small"}},
]


def spec(index: int, *, interval: float, audiences: tuple[str, ...] = ()) -> Any:
    return parse_spec(
        {
            "data": {
                "invoice": f"INV-{index:06d}",
                "amount": (index * 37) % 2000,
                "status": "open" if index % 3 else "paid",
            },
            "grant": {
                "capabilities": GRANTED,
                "audience": list(audiences),
                "constraints": {"max_hops": 1000},
            },
            "cycle": {"interval_seconds": interval},
            "rules": RULES,
        },
        source="bench",
    )


#: P2 runs ours and the floor in this many alternating rounds (each a share of --moves,
#: 8 in flight within a round).
P2_ROUNDS = 4

#: P1b's untimed migrations into each of C and D once both serve, before the timed ones.
P1B_WARM = 3

#: Seeds the order within each of P1b's pairs, so that a run can be repeated.
P1B_SEED = 13


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# --- the floor ------------------------------------------------------------------------


def _floor_channel(tls_a: Path, tls_b: Path, port: int) -> grpc.aio.Channel:
    """A's mTLS channel to the floor's server, which presents B's certificate."""
    return grpc.aio.secure_channel(
        f"127.0.0.1:{port}",
        grpc.ssl_channel_credentials(
            (tls_b / "ca.crt").read_bytes(),
            (tls_a / "host.key").read_bytes(),
            (tls_a / "host.crt").read_bytes(),
        ),
        options=[("grpc.ssl_target_name_override", "localhost")],
    )


def _identity(raw: bytes) -> bytes:
    return raw


class Floor:
    """The simplest correct way to do a migration's work: 2 mTLS unary round trips of the
    same bytes, the protocol's signs and verifies, its durable commits."""

    def __init__(
        self,
        directory: Path,
        world: World,
        *,
        transfer_bytes: int,
        reply_bytes: int,
        signs: int,
        verifies: int,
        commits: tuple[int, int],
        object_bytes: int,
    ) -> None:
        self.directory = directory
        self.world = world
        self.transfer = os.urandom(transfer_bytes)
        self.commit_message = os.urandom(120)
        self.reply = os.urandom(reply_bytes)
        self.signs = signs
        self.verifies = verifies
        self.commits = commits
        self.value = os.urandom(object_bytes)
        self.key = Ed25519PrivateKey.generate()
        self.public = self.key.public_key()
        self.message = os.urandom(200)
        self.signature = self.key.sign(self.message)
        self._server: grpc.aio.Server | None = None
        self._channel: grpc.aio.Channel | None = None
        self._call: Any = None
        # One writer thread and connection per side, like one connection per file.
        self._writers = [ThreadPoolExecutor(max_workers=1) for _ in range(2)]
        self._connections: list[sqlite3.Connection] = []
        self._counter = 0

    async def start(self) -> None:
        tls_b = self.world.host_directory(HOST_B) / "tls"
        tls_a = self.world.host_directory(HOST_A) / "tls"

        async def unary(request: bytes, context: Any) -> bytes:
            return self.reply

        handler = grpc.method_handlers_generic_handler(
            "floor.Raw", {"Call": grpc.unary_unary_rpc_method_handler(unary, _identity, _identity)}
        )
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", 32 << 20)])
        server.add_generic_rpc_handlers((handler,))
        creds = grpc.ssl_server_credentials(
            [((tls_b / "host.key").read_bytes(), (tls_b / "host.crt").read_bytes())],
            root_certificates=(tls_a / "ca.crt").read_bytes(),
            require_client_auth=True,
        )
        port = server.add_secure_port("127.0.0.1:0", creds)
        await server.start()
        self._server = server
        self._channel = _floor_channel(tls_a, tls_b, port)
        self._call = self._channel.unary_unary(
            "/floor.Raw/Call", request_serializer=_identity, response_deserializer=_identity
        )
        loop = asyncio.get_running_loop()
        for side, writer in enumerate(self._writers):
            path = self.directory / f"floor-{side}.db"
            self._connections.append(
                await loop.run_in_executor(writer, functools_partial(_floor_db, path))
            )

    async def stop(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        if self._server is not None:
            await self._server.stop(None)
        loop = asyncio.get_running_loop()
        for writer, connection in zip(self._writers, self._connections, strict=True):
            await loop.run_in_executor(writer, connection.close)
            writer.shutdown()

    def _commit(self, side: int, key: str) -> None:
        connection = self._connections[side]
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, self.value))
        connection.execute("COMMIT")

    async def _commits(self, side: int, count: int, tag: str) -> None:
        loop = asyncio.get_running_loop()
        for index in range(count):
            await loop.run_in_executor(
                self._writers[side], self._commit, side, f"{tag}/{index % 4}"
            )

    def _crypto(self, signs: int, verifies: int) -> None:
        for _ in range(signs):
            self.key.sign(self.message)
        for _ in range(verifies):
            self.public.verify(self.signature, self.message)

    async def once(self) -> float:
        """One migration's worth of floor work; returns its latency."""
        self._counter += 1
        tag = f"m{self._counter}"
        source_commits, destination_commits = self.commits
        half_signs, half_verifies = self.signs // 2, self.verifies // 2
        began = time.perf_counter()
        # Source: freeze (commit), seal (signs); destination: verify, stage (commit),
        # sign the receipt; source: verify it, commit; then the same for Commit.
        await self._commits(0, (source_commits + 1) // 2, tag)
        self._crypto(half_signs, 0)
        await self._call(self.transfer)
        self._crypto(0, half_verifies)
        await self._commits(1, (destination_commits + 1) // 2, tag)
        await self._call(self.commit_message)
        self._crypto(self.signs - half_signs, self.verifies - half_verifies)
        await self._commits(1, destination_commits // 2, tag)
        await self._commits(0, source_commits // 2, tag)
        return time.perf_counter() - began


class ProcessFloor(Floor):
    """The floor in the process layout: its gRPC server is its own OS process (this
    script with ``--floor-server``) doing the destination's share of the signs, verifies
    and durable commits on each call; this process does the source's share around its
    two calls, as our source host does around Transfer and Commit."""

    def __init__(self, *args: Any, destination: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.destination = destination
        self._process: subprocess.Popen[bytes] | None = None
        self._transfer: Any = None

    async def start(self) -> None:
        tls_b = self.world.host_directory(HOST_B) / "tls"
        tls_a = self.world.host_directory(HOST_A) / "tls"
        settings = {
            "key": str(tls_b / "host.key"),
            "crt": str(tls_b / "host.crt"),
            "client_ca": str(tls_a / "ca.crt"),
            "db": str(self.directory / "floor-server.db"),
            "object_bytes": len(self.value),
            "reply_bytes": len(self.reply),
            **self.destination,
        }
        self._process = spawn_floor_server(settings, self.directory / "floor-server.log")
        assert self._process.stdout is not None
        line = await asyncio.get_running_loop().run_in_executor(None, self._process.stdout.readline)
        if not line.startswith(b"floor: serving "):
            raise RuntimeError(f"floor server did not start: {line!r}")
        port = int(line.split()[-1])
        self._channel = _floor_channel(tls_a, tls_b, port)
        self._transfer = self._channel.unary_unary(
            "/floor.Raw/Transfer", request_serializer=_identity, response_deserializer=_identity
        )
        self._call = self._channel.unary_unary(
            "/floor.Raw/Commit", request_serializer=_identity, response_deserializer=_identity
        )
        loop = asyncio.get_running_loop()
        path = self.directory / "floor-0.db"
        self._connections.append(
            await loop.run_in_executor(self._writers[0], functools_partial(_floor_db, path))
        )

    @property
    def server_pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def stop(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        loop = asyncio.get_running_loop()
        for connection in self._connections:
            await loop.run_in_executor(self._writers[0], connection.close)
        for writer in self._writers:
            writer.shutdown()
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=30)

    async def once(self) -> float:
        """The source's share of one migration here, the destination's in the server."""
        self._counter += 1
        tag = f"m{self._counter}"
        source_commits = self.commits[0]
        signs, verifies = self.signs, self.verifies
        began = time.perf_counter()
        await self._commits(0, (source_commits + 1) // 2, tag)
        self._crypto((signs + 1) // 2, 0)
        await self._transfer(self.transfer)
        self._crypto(0, (verifies + 1) // 2)
        await self._call(self.commit_message)
        self._crypto(signs // 2, verifies // 2)
        await self._commits(0, source_commits // 2, tag)
        return time.perf_counter() - began


def spawn_floor_server(settings: dict[str, Any], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--floor-server", json.dumps(settings)],
            stdout=subprocess.PIPE,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def floor_server(settings: dict[str, Any]) -> None:
    """The floor's destination as its own process: on Transfer, the first half of the
    destination's verifies, signs and commits; on Commit, the rest; one writer thread
    with one connection for the commits, as one connection per file would."""

    identity = [(Path(settings["key"]).read_bytes(), Path(settings["crt"]).read_bytes())]
    client_ca = Path(settings["client_ca"]).read_bytes()

    async def run() -> None:
        key = Ed25519PrivateKey.generate()
        public = key.public_key()
        message = os.urandom(200)
        signature = key.sign(message)
        value = os.urandom(settings["object_bytes"])
        reply = os.urandom(settings["reply_bytes"])
        writer = ThreadPoolExecutor(max_workers=1)
        loop = asyncio.get_running_loop()
        connection = await loop.run_in_executor(
            writer, functools_partial(_floor_db, Path(settings["db"]))
        )
        counter = [0]

        def commit(name: str) -> None:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (name, value))
            connection.execute("COMMIT")

        async def work(signs: int, verifies: int, commits: int) -> bytes:
            counter[0] += 1
            for _ in range(verifies):
                public.verify(signature, message)
            for index in range(commits):
                await loop.run_in_executor(writer, commit, f"m{counter[0]}/{index % 4}")
            for _ in range(signs):
                key.sign(message)
            return reply

        signs, verifies, commits = settings["signs"], settings["verifies"], settings["commits"]

        async def transfer(request: bytes, context: Any) -> bytes:
            return await work((signs + 1) // 2, (verifies + 1) // 2, (commits + 1) // 2)

        async def finish(request: bytes, context: Any) -> bytes:
            return await work(signs // 2, verifies // 2, commits // 2)

        handler = grpc.method_handlers_generic_handler(
            "floor.Raw",
            {
                "Transfer": grpc.unary_unary_rpc_method_handler(transfer, _identity, _identity),
                "Commit": grpc.unary_unary_rpc_method_handler(finish, _identity, _identity),
            },
        )
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", 32 << 20)])
        server.add_generic_rpc_handlers((handler,))
        creds = grpc.ssl_server_credentials(
            identity,
            root_certificates=client_ca,
            require_client_auth=True,
        )
        port = server.add_secure_port("127.0.0.1:0", creds)
        await server.start()
        print(f"floor: serving {port}", flush=True)
        stop = asyncio.Event()
        import signal

        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.stop(None)
        await loop.run_in_executor(writer, connection.close)
        writer.shutdown()

    asyncio.run(run())


def functools_partial(function: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    return lambda: function(*args)


def _floor_db(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = FULL")
    connection.execute("CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v BLOB)")
    return connection


# --- measuring the protocol --------------------------------------------------------------


#: Frames from these files belong to the destination's side of a migration (B's server
#: handling Transfer/Commit); every other frame of a migration belongs to the source.
DESTINATION_MARKERS = (
    f"{os.sep}handoff{os.sep}destination.py",
    f"{os.sep}transport{os.sep}server.py",
)


def _side(frame: Any) -> int:
    """0 for the source, 1 for the destination: whether a destination frame is on the
    stack. Awaiting coroutines chain their frames, so a handler's frame is an ancestor of
    whatever it calls while it runs."""
    while frame is not None:
        name = frame.f_code.co_filename
        if any(marker in name for marker in DESTINATION_MARKERS):
            return 1
        frame = frame.f_back
    return 0


class ProtocolWork:
    """Counts, per side, the store transactions the handoff protocol itself makes
    (callers in gateway/handoff/) and the Ed25519/ECDSA signs and verifies, while
    installed, with both hosts served in this process (the one-process layout): each is
    put on the destination's side when a destination frame is on its stack, else on the
    source's. Counting only the handoff's own transactions matters: every host shares
    this process, and counting every transaction also counted whatever else committed in
    the window (first cycles of fresh objects, outbox deliveries of earlier migrations),
    which once inflated the floor from 5 commits to 20. The split lets the process
    layout's floor do each side's share in that side's process."""

    def __init__(self) -> None:
        self.commits = [0, 0]
        self.signs = [0, 0]
        self.verifies = [0, 0]
        #: the largest transfer envelope a source journal record held while counting
        #: (the FROZEN record: a settled record keeps only its digest, so reading the
        #: journal afterwards would size the floor's transfer at 0 bytes)
        self.transfer_bytes = 0
        self._real: Any = None
        self._profile: Any = None

    def _hook(self, frame: Any, event: str, arg: Any) -> None:
        if event != "c_call":
            return
        name = getattr(arg, "__name__", "")
        if name not in ("sign", "verify"):
            return
        owner = type(getattr(arg, "__self__", None)).__name__
        if "Ed25519" not in owner and "EllipticCurve" not in owner:
            return
        (self.signs if name == "sign" else self.verifies)[_side(frame)] += 1

    def __enter__(self) -> ProtocolWork:
        from gateway.stores.sqlite import SqliteStore

        real = self._real = SqliteStore.transact
        counter = self

        async def transact(store: Any, operations: Any) -> None:
            caller = sys._getframe(1)
            if f"{os.sep}gateway{os.sep}handoff{os.sep}" in caller.f_code.co_filename:
                counter.commits[_side(caller)] += 1
            counter.note_transfers(operations)
            await real(store, operations)

        SqliteStore.transact = transact  # type: ignore[method-assign,assignment]
        self._profile = sys.getprofile()
        sys.setprofile(self._hook)
        return self

    def note_transfers(self, operations: Any) -> None:
        from gateway import wire
        from gateway.stores import Put

        for operation in operations:
            if isinstance(operation, Put) and operation.key.startswith("journal/source/"):
                record = wire.decode_source_record(operation.value)
                self.transfer_bytes = max(self.transfer_bytes, len(record.transfer))

    def __exit__(self, *_exc: object) -> None:
        from gateway.stores.sqlite import SqliteStore

        sys.setprofile(self._profile)
        SqliteStore.transact = self._real  # type: ignore[method-assign]


async def serve(world: World, host_ids: list[str]) -> tuple[dict[str, Host], list[Any]]:
    hosts: dict[str, Host] = {}
    running: list[Any] = []
    for host_id in host_ids:
        host = await Host.open(load_config(world.config(host_id)))
        stop = asyncio.Event()
        ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(host.serve(ready=ready, stop=stop))
        await asyncio.wait_for(ready, timeout=60)
        hosts[host_id] = host
        running.append((host, stop, task))
    return hosts, running


async def shut(running: list[Any]) -> None:
    for host, stop, task in running:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        await host.close()


async def create_many(
    host: Host,
    prefix: str,
    count: int,
    *,
    interval: float,
    in_flight: int = 16,
    audiences: tuple[str, ...] = (HOST_B, HOST_C),
) -> list[str]:
    ids = [f"obj://{prefix}-{index}" for index in range(count)]
    slots = asyncio.Semaphore(in_flight)

    async def one(index: int, object_id: str) -> None:
        async with slots:
            await create_from_spec(
                host, object_id, spec(index, interval=interval, audiences=audiences), tenant=TENANT
            )

    await asyncio.gather(*(one(i, oid) for i, oid in enumerate(ids)))
    return ids


async def migrate_one(source: Host, object_id: str, to: str) -> float:
    began = time.perf_counter()
    await source.migrate(object_id, tenant=TENANT, destination=to)
    return time.perf_counter() - began


async def migrate_sequential(source: Host, ids: list[str], to: str) -> list[float]:
    latencies = []
    for object_id in ids:
        began = time.perf_counter()
        await source.migrate(object_id, tenant=TENANT, destination=to)
        latencies.append(time.perf_counter() - began)
    return latencies


async def migrate_concurrent(source: Host, ids: list[str], to: str, in_flight: int) -> float:
    slots = asyncio.Semaphore(in_flight)

    async def one(object_id: str) -> None:
        async with slots:
            await source.migrate(object_id, tenant=TENANT, destination=to)

    began = time.perf_counter()
    await asyncio.gather(*(one(oid) for oid in ids))
    return time.perf_counter() - began


async def floor_concurrent(floor: Floor, count: int, in_flight: int) -> float:
    slots = asyncio.Semaphore(in_flight)

    async def one() -> None:
        async with slots:
            await floor.once()

    began = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    return time.perf_counter() - began


async def settle(host: Host, residents: int, *, limit: float = 600.0) -> int:
    """Waits (at most ``limit`` s) until ``host``'s scheduler has evaluated ``residents``
    cycles and evaluates no more for a second, then until its outbox has nothing pending;
    returns how many cycles it evaluated."""
    stats = host.scheduler.stats
    deadline = time.perf_counter() + limit
    last, still = -1, 0
    while time.perf_counter() < deadline:
        count = stats.evaluated + stats.conflicts + stats.failures + stats.timeouts
        still = still + 1 if count == last else 0
        if count >= residents and still >= 4:
            break
        last = count
        await asyncio.sleep(0.25)
    # Their outbox events (publishes, lifecycle) are delivered in the background too:
    # also part of the fill, not of holding. Wait for the pending markers to go.
    while time.perf_counter() < deadline:
        if not await host.journal.store.list("pending/", limit=1):
            break
        await asyncio.sleep(0.25)
    return stats.evaluated


def rss_mib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def quiet(pid: int, *, limit: float = 60.0) -> None:
    """Until process ``pid`` has used at most one clock tick of CPU in each of two
    quarter-seconds in a row (or ``limit`` seconds passed)."""
    tick = 1 / os.sysconf("SC_CLK_TCK")
    deadline = time.monotonic() + limit
    last, calm = process_cpu(pid), 0
    while calm < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        now = process_cpu(pid)
        calm = calm + 1 if now - last <= tick + 1e-9 else 0
        last = now


def process_cpu(pid: int | None) -> float:
    """User + system CPU seconds of process ``pid`` (this one if None), all its threads."""
    if pid is None:
        return time.process_time()  # nanoseconds, where /proc counts clock ticks
    return _stat_cpu(f"/proc/{pid}/stat")


def loop_cpu(pid: int | None) -> float:
    """User + system CPU seconds of process ``pid``'s main thread (this thread if None),
    where every process here runs its event loop (``gateway serve``, the floor's server,
    this script): a side's CPU less this is its other threads' (the SQLite writer's,
    gRPC's own)."""
    if pid is None:
        return time.thread_time()
    return _stat_cpu(f"/proc/{pid}/task/{pid}/stat")


def _stat_cpu(path: str) -> float:
    with open(path) as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the figures ---------------------------------------------------------------------------


#: A P2 reading of both processes of a side pair: (this process's CPU, its loop
#: thread's, the server process's CPU, its loop thread's); the server's are 0 with none.
_SideCpu = tuple[float, float, float, float]


def _side_cpu(server: int | None) -> _SideCpu:
    """This process's CPU and its loop thread's (the source's side, ours or the floor's),
    then ``server``'s and its loop thread's (the destination's side)."""
    here = process_cpu(None), loop_cpu(None)
    if server is None:
        return (*here, 0.0, 0.0)
    return (*here, process_cpu(server), loop_cpu(server))


def _add_side_cpu(
    cpu: dict[str, float], loop: dict[str, float], prefix: str, began: _SideCpu, ended: _SideCpu
) -> None:
    """Add one round's CPU (``ended`` less ``began``) to ``prefix``'s source and
    destination, whole (``cpu``) and on the event-loop threads (``loop``)."""
    cpu[f"{prefix}source"] += ended[0] - began[0]
    loop[f"{prefix}source"] += ended[1] - began[1]
    cpu[f"{prefix}destination"] += ended[2] - began[2]
    loop[f"{prefix}destination"] += ended[3] - began[3]


def p2_cpu_figures(cpu: dict[str, float], loop: dict[str, float], moves: int) -> dict[str, float]:
    """P2's CPU figures from its rounds' totals (seconds, by side, see :func:`_add_side_cpu`):
    each side's CPU per migration in ms, whole and on its loop thread, ours and the
    floor's; both sides' CPU over the floor's (``cpu_ratio``); and each side's loop
    thread over the floor's same side (``source_loop_over_floor``,
    ``destination_loop_over_floor``). The last two are the readings to pair before and
    after a change: the floor's rounds alternate with ours in the same run, so load on
    the shared machine, which moves a side's milliseconds by 15-25 % between runs,
    moves both of a ratio's terms."""
    figures: dict[str, float] = {}
    for side, seconds in cpu.items():
        figures[f"{side}_cpu_ms"] = seconds / moves * 1e3
        figures[f"{side}_loop_cpu_ms"] = loop[side] / moves * 1e3
    figures["cpu_ratio"] = (cpu["source"] + cpu["destination"]) / (
        cpu["floor_source"] + cpu["floor_destination"]
    )
    for side in ("source", "destination"):
        figures[f"{side}_loop_over_floor"] = loop[side] / loop[f"floor_{side}"]
    return figures


async def count_protocol(
    host_a: Host, host_b: Host, warm: list[str], *, to: str = HOST_B
) -> dict[str, Any]:
    """What one migration A -> ``to`` costs, counted with both hosts served in this
    process (the only layout where one process sees both sides): per side, the handoff's
    commits and the signs and verifies; and the transfer envelope's and object's bytes."""
    from gateway import credentials, keys, wire

    await host_a.migrate(warm[0], tenant=TENANT, destination=to)
    with ProtocolWork() as work:
        await host_a.migrate(warm[1], tenant=TENANT, destination=to)
    if not work.transfer_bytes:
        raise RuntimeError("no source journal record held a transfer while counting")
    # The destination's verifies as its own process makes them. Here A verified the
    # object's grant when it made it, and the memos of verified signatures and grants
    # are per process, so B's half skipped it: undercounted by one verify per migration
    # (the served process verifies 3 per arrival: the transfer, the departure and the
    # grant). One more migration with both memos empty counts B's share; the originals
    # are put back after, so nothing timed later sees the difference.
    held = keys.VERIFIED_SIGNATURES, credentials.VERIFIED_GRANTS
    # Empty memos the size of one migration's work (a few entries).
    keys.VERIFIED_SIGNATURES = type(held[0])(capacity=64)
    credentials.VERIFIED_GRANTS = type(held[1])(capacity=64)
    try:
        with ProtocolWork() as unremembered:
            await host_a.migrate(warm[-1], tenant=TENANT, destination=to)
    finally:
        keys.VERIFIED_SIGNATURES, credentials.VERIFIED_GRANTS = held
    verifies = [work.verifies[0], max(work.verifies[1], unremembered.verifies[1])]

    obj = await host_b.get_object(warm[1], tenant=TENANT)
    counts = {
        "signs": sum(work.signs),
        "verifies": sum(verifies),
        "commits_source": work.commits[0],
        "commits_destination": work.commits[1],
        "signs_source": work.signs[0],
        "signs_destination": work.signs[1],
        "verifies_source": verifies[0],
        "verifies_destination": verifies[1],
        "verifies_destination_with_shared_memos": work.verifies[1],
        "transfer_bytes": work.transfer_bytes,
        "object_bytes": len(wire.encode_object(obj)),
    }
    say(f"one migration: {counts}")
    return counts


async def migration_figures(
    world: World, directory: Path, arguments: argparse.Namespace, results: dict[str, Any]
) -> None:
    wanted = set(arguments.only)
    processes = arguments.layout == "processes"
    results["layout"] = arguments.layout
    hosts, running = await serve(
        world, [HOST_A, HOST_B] if processes else [HOST_A, HOST_B, HOST_C, HOST_D]
    )
    host_a, host_b = hosts[HOST_A], hosts[HOST_B]
    floor: Floor | None = None
    servers: dict[str, ServerProcess] = {}
    opened: Host | None = None
    try:
        samples = arguments.samples
        # P1b's objects: its warm-ups and a pair (one into C, one into D) per sample; D
        # must be in their grant's audience.
        p1b_count = 2 * (P1B_WARM + arguments.p1b_samples) if "P1b" in wanted else 0
        p2_count = arguments.moves if "P2" in wanted else 0
        say(f"creating {6 + samples + p1b_count + p2_count} objects on A")
        warm = await create_many(host_a, "org-a.example/bench/warm", 6, interval=3600)
        p1_ids = await create_many(host_a, "org-a.example/bench/p1", samples, interval=3600)
        p1b_ids = await create_many(
            host_a,
            "org-a.example/bench/p1b",
            p1b_count,
            interval=3600,
            audiences=(HOST_B, HOST_C, HOST_D),
        )
        p2_ids = (
            await create_many(host_a, "org-a.example/bench/p2", arguments.moves, interval=3600)
            if "P2" in wanted
            else []
        )
        counts = await count_protocol(host_a, host_b, warm)
        results["floor_counts"] = counts
        if processes:
            # B becomes a `gateway serve` process (C and D too, for P1b, once C is
            # filled); A drives migrations from this process as `gateway migrate` does:
            # its store opened, not served.
            await shut(running)
            running = []
            servers[HOST_B] = ServerProcess(world.config(HOST_B)).start(timeout=60)
            opened = host_a = await Host.open(load_config(world.config(HOST_A)))
            floor = ProcessFloor(
                directory,
                world,
                transfer_bytes=counts["transfer_bytes"],
                reply_bytes=400,
                signs=counts["signs_source"],
                verifies=counts["verifies_source"],
                commits=(counts["commits_source"], counts["commits_destination"]),
                object_bytes=counts["object_bytes"],
                destination={
                    "signs": counts["signs_destination"],
                    "verifies": counts["verifies_destination"],
                    "commits": counts["commits_destination"],
                },
            )
        else:
            floor = Floor(
                directory,
                world,
                transfer_bytes=counts["transfer_bytes"],
                reply_bytes=400,
                signs=counts["signs"],
                verifies=counts["verifies"],
                commits=(counts["commits_source"], counts["commits_destination"]),
                object_bytes=counts["object_bytes"],
            )
        await floor.start()
        # Warm both paths (connections, a fresh server process's caches) in this layout.
        for object_id in warm[2:5]:
            await host_a.migrate(object_id, tenant=TENANT, destination=HOST_B)
        for _ in range(3):
            await floor.once()
        if "P1" in wanted or "P1b" in wanted:
            # Interleave ours and the floor so that load on the machine hits both alike.
            ours: list[float] = []
            floors: list[float] = []
            # CPU of our migrations per side (process layout): this process (the source)
            # around each of ours only, B's server process over the loop (only ours reach
            # it). Steadier than wall clock on a shared machine.
            # The floor's the same way: this process around each floor operation, its
            # server process over the loop.
            source_cpu = floor_source_cpu = 0.0
            destination = servers[HOST_B].pid if HOST_B in servers else None
            destination_before = process_cpu(destination) if destination else 0.0
            floor_server = floor.server_pid if isinstance(floor, ProcessFloor) else None
            floor_server_before = process_cpu(floor_server) if floor_server else 0.0
            for object_id in p1_ids:
                began_cpu = process_cpu(None)
                ours.extend(await migrate_sequential(host_a, [object_id], HOST_B))
                source_cpu += process_cpu(None) - began_cpu
                began_cpu = process_cpu(None)
                floors.append(await floor.once())
                floor_source_cpu += process_cpu(None) - began_cpu
            p50, floor_p50 = statistics.median(ours), statistics.median(floors)
            results["P1"] = {
                "ratio": p50 / floor_p50,
                "p50_ms": p50 * 1e3,
                "p99_ms": percentile(ours, 0.99) * 1e3,
                "floor_p50_ms": floor_p50 * 1e3,
                "source_cpu_ms": source_cpu / len(p1_ids) * 1e3,
            }
            results["P1"]["floor_source_cpu_ms"] = floor_source_cpu / len(p1_ids) * 1e3
            if destination and floor_server:
                p1 = results["P1"]
                p1["destination_cpu_ms"] = (
                    (process_cpu(destination) - destination_before) / len(p1_ids) * 1e3
                )
                p1["floor_destination_cpu_ms"] = (
                    (process_cpu(floor_server) - floor_server_before) / len(p1_ids) * 1e3
                )
                # Both sides' CPU, ours over the floor's: steadier than the wall-clock
                # ratio on a shared machine (not the issue's figure, which is P1's ratio).
                p1["cpu_ratio"] = (p1["source_cpu_ms"] + p1["destination_cpu_ms"]) / (
                    p1["floor_source_cpu_ms"] + p1["floor_destination_cpu_ms"]
                )
            say(
                f"P1  p50 {p50 * 1e3:.1f} ms, floor {floor_p50 * 1e3:.1f} ms: "
                f"{results['P1']['ratio']:.2f}x; CPU per migration: source "
                f"{results['P1']['source_cpu_ms']:.2f} ms, destination "
                f"{results['P1'].get('destination_cpu_ms', float('nan')):.2f} ms, over the "
                f"floor's {results['P1'].get('cpu_ratio', float('nan')):.2f}x"
            )
        if "P1b" in wanted:
            await holding_figure(
                world, host_a, hosts, servers, p1b_ids, arguments, results, processes=processes
            )
        if "P2" in wanted:
            # Interleaved in rounds (ours, floor, ours, floor...) as P1 is.
            ours_seconds = floor_seconds = 0.0
            # CPU per migration of each side, ours and the floor's, as P1's (each side's
            # process over its own rounds only): steadier than the rates on a shared
            # machine, and where a change to either side shows (not the figure).
            cpu = {"source": 0.0, "destination": 0.0, "floor_source": 0.0, "floor_destination": 0.0}
            # The same, of each side's event-loop thread only: where a side spends more
            # than the floor's, on the loop or in its other threads (issue 13's P2).
            loop = dict.fromkeys(cpu, 0.0)
            destination = servers[HOST_B].pid if HOST_B in servers else None
            floor_server = floor.server_pid if isinstance(floor, ProcessFloor) else None
            rounds = P2_ROUNDS
            for index in range(rounds):
                batch = p2_ids[index::rounds]
                began = _side_cpu(destination)
                ours_seconds += await migrate_concurrent(host_a, batch, HOST_B, arguments.in_flight)
                _add_side_cpu(cpu, loop, "", began, _side_cpu(destination))
                began = _side_cpu(floor_server)
                floor_seconds += await floor_concurrent(floor, len(batch), arguments.in_flight)
                _add_side_cpu(cpu, loop, "floor_", began, _side_cpu(floor_server))
            rate, floor_rate = len(p2_ids) / ours_seconds, len(p2_ids) / floor_seconds
            results["P2"] = {
                "ratio": rate / floor_rate,
                "per_second": rate,
                "floor_per_second": floor_rate,
                "moves": len(p2_ids),
            }
            text = (
                f"P2  {len(p2_ids)} moves, {arguments.in_flight} in flight: {rate:.1f}/s, "
                f"floor {floor_rate:.1f}/s: {results['P2']['ratio']:.2f}x"
            )
            if destination and floor_server:
                p2 = results["P2"]
                p2.update(p2_cpu_figures(cpu, loop, len(p2_ids)))
                text += (
                    f"; CPU per migration: source {p2['source_cpu_ms']:.2f} ms, destination "
                    f"{p2['destination_cpu_ms']:.2f} ms, over the floor's {p2['cpu_ratio']:.2f}x"
                    f" (event-loop threads: source {p2['source_loop_cpu_ms']:.2f}, destination "
                    f"{p2['destination_loop_cpu_ms']:.2f}; the floor's "
                    f"{p2['floor_source_loop_cpu_ms']:.2f}, "
                    f"{p2['floor_destination_loop_cpu_ms']:.2f} ms; ours over the floor's: "
                    f"{p2['source_loop_over_floor']:.2f}x, "
                    f"{p2['destination_loop_over_floor']:.2f}x)"
                )
            say(text)
    finally:
        if floor is not None:
            await floor.stop()
        await shut(running)
        if opened is not None:
            await opened.close()
        for server in servers.values():
            server.stop()


async def holding_figure(
    world: World,
    host_a: Host,
    hosts: dict[str, Host],
    servers: dict[str, ServerProcess],
    ids: list[str],
    arguments: argparse.Namespace,
    results: dict[str, Any],
    *,
    processes: bool,
) -> None:
    """P1b: migrations A -> C, C holding the residents, over migrations A -> D, the same
    kind of host holding none, timed in pairs (one into each, in a seeded order) so that
    whatever else loads the machine hits both halves alike. Measuring C empty and then C
    full minutes apart measured the machine's drift between the halves, not the
    residents."""
    began = time.perf_counter()
    if processes:
        # C's residents are created through C's own Host (its store is not shared across
        # processes while served): C is filled and settled here, closed, then C and D
        # start together as processes. The residents' interval is an hour: held, not due.
        # D is served and closed beside C, so that both stores have the same history
        # (whatever a first serve writes once) and differ only in the residents.
        filled, filling = await serve(world, [HOST_C, HOST_D])
        await fill(filled[HOST_C], arguments.residents, began)
        await shut(filling)
        # Both start at once (each start blocks on the child's first line): it keeps the
        # two alike in age and saves a start's seconds. Both are in ``servers`` first, so
        # the caller stops whichever started even if the other failed.
        for host_id in (HOST_C, HOST_D):
            servers[host_id] = ServerProcess(world.config(host_id))
        started = await asyncio.gather(
            *(asyncio.to_thread(servers[h].start, 120) for h in (HOST_C, HOST_D)),
            return_exceptions=True,
        )
        for outcome in started:
            if isinstance(outcome, BaseException):
                raise outcome
    else:
        await fill(hosts[HOST_C], arguments.residents, began)
    warm, ids = ids[: 2 * P1B_WARM], ids[2 * P1B_WARM :]
    for index, object_id in enumerate(warm):
        await host_a.migrate(object_id, tenant=TENANT, destination=(HOST_C, HOST_D)[index % 2])
    await asyncio.sleep(1.5)
    pids = {host_id: servers[host_id].pid for host_id in (HOST_C, HOST_D)} if processes else {}
    # "Holding" is the steady state: each host's start-up work (the scheduler's first read
    # of due times, over the residents on C; the pruner's first passes) is over before the
    # timed pairs.
    await asyncio.gather(*(quiet(pid) for pid in pids.values()))
    say(f"  C and D serving and quiet after {time.perf_counter() - began:.0f} s")
    latencies: dict[str, list[float]] = {HOST_C: [], HOST_D: []}
    cpu = {host_id: -process_cpu(pid) for host_id, pid in pids.items()}
    order = random.Random(P1B_SEED)
    for first in range(0, len(ids) - 1, 2):
        pair = [HOST_C, HOST_D]
        order.shuffle(pair)
        for host_id, object_id in zip(pair, ids[first : first + 2], strict=True):
            latencies[host_id].append(await migrate_one(host_a, object_id, host_id))
    for host_id, pid in pids.items():
        cpu[host_id] += process_cpu(pid)
    full, empty = statistics.median(latencies[HOST_C]), statistics.median(latencies[HOST_D])
    arrivals = len(latencies[HOST_C])
    figure: dict[str, Any] = {
        "ratio": full / empty,
        "p50_full_ms": full * 1e3,
        "p50_empty_ms": empty * 1e3,
        "residents": arguments.residents,
        "arrivals": arrivals,
        # The median of each pair's C over D: the two migrations of a pair ran back to
        # back, so even drift within the run cancels (a cross-check, not the issue's
        # figure).
        "pair_ratio": statistics.median(
            c / d for c, d in zip(latencies[HOST_C], latencies[HOST_D], strict=True)
        ),
    }
    results["P1b"] = figure
    text = (
        f"P1b {arrivals} pairs: into C holding {arguments.residents} residents p50 "
        f"{full * 1e3:.1f} ms, into D empty {empty * 1e3:.1f} ms: {figure['ratio']:.2f}x "
        f"(median pair {figure['pair_ratio']:.2f}x)"
    )
    if pids:
        # Each host's CPU per arrival (its whole process over the pairs: handlers, writer
        # thread, and whatever holding the residents costs meanwhile), C over D: steadier
        # than the p50s on a shared machine (not the figure, which is the ratio of
        # the p50s).
        figure["cpu_ms_full"] = cpu[HOST_C] / arrivals * 1e3
        figure["cpu_ms_empty"] = cpu[HOST_D] / arrivals * 1e3
        figure["cpu_ratio"] = cpu[HOST_C] / cpu[HOST_D]
        text += (
            f"; CPU per arrival {figure['cpu_ms_full']:.2f} ms against "
            f"{figure['cpu_ms_empty']:.2f} ms: {figure['cpu_ratio']:.2f}x"
        )
    say(text)


async def fill(host_c: Host, residents: int, began: float) -> None:
    say(f"filling C with {residents} cycling objects")
    await create_many(host_c, "org-c.example/bench/resident", residents, interval=3600)
    say(f"  filled in {time.perf_counter() - began:.0f} s")
    # "Holding" objects is the steady state, not the burst right after creating them:
    # wait until each resident has cycled once and the cycle count has stopped moving.
    cycled = await settle(host_c, residents)
    pending = len(await host_c.journal.store.list("pending/", limit=100_000))
    say(
        f"  {cycled} first cycles done, {pending} outbox events pending, "
        f"after {time.perf_counter() - began:.0f} s"
    )


async def cycle_figure(
    world: World, arguments: argparse.Namespace, results: dict[str, Any]
) -> None:
    """P5: committed cycles/s through the Scheduler over bare CEL of the same rules."""
    from gateway import _gc
    from gateway.runtime.cycle import CycleRunner

    host = await Host.open(load_config(world.config(HOST_A)))
    # What `gateway serve` does once its host is open (gateway/_gc.py), so P5 measures
    # the collector settings a served host runs with.
    _gc.tune()
    try:
        count = arguments.cycle_objects
        say(f"creating {count} cycling objects on A")
        # A 1 ms interval: every object is due again as soon as its cycle committed, so the
        # rate is bounded by the cycle path, not by the schedule.
        ids = await create_many(host, "org-a.example/bench/cycle", count, interval=0.001)
        objects = await host.list_objects(tenant=TENANT)
        objects = [o for o in objects if o.object_id in set(ids)]
        runner = CycleRunner(host.context)
        ruleset: RuleSet = runner.ruleset(objects[0])
        datas = [(obj.generation, load_data(obj.data, obj.content_type)) for obj in objects]
        bare = bare_rate(ruleset, objects, datas, seconds=arguments.seconds)
        scheduler = host.scheduler
        stop = asyncio.Event()
        await scheduler.scan()
        before = scheduler.stats.evaluated
        task = asyncio.create_task(scheduler.run(stop))
        began = time.perf_counter()
        # CPU of this (the event loop's) thread: steadier than the rate on a shared
        # machine, and what the cycle path's own cost is (the SQLite writer thread adds
        # its part on another core).
        cpu_began = time.thread_time()
        writers = store_writers()
        writers_began = sum(time.clock_gettime(clock) for clock in writers)
        await asyncio.sleep(arguments.seconds)
        evaluated = scheduler.stats.evaluated - before
        elapsed = time.perf_counter() - began
        cpu = time.thread_time() - cpu_began
        writer_cpu = sum(time.clock_gettime(clock) for clock in writers) - writers_began
        stop.set()
        await task
        rate = evaluated / elapsed
        results["P5"] = {
            "ratio": rate / bare,
            "cycles_per_second": rate,
            "bare_per_second": bare,
            "objects": count,
            "loop_cpu_us_per_cycle": cpu / max(evaluated, 1) * 1e6,
            "writer_cpu_us_per_cycle": writer_cpu / max(evaluated, 1) * 1e6,
        }
        say(
            f"P5  {count} objects x {len(RULES)} rules: {rate:.0f} committed cycles/s, bare CEL "
            f"{bare:.0f}/s: {results['P5']['ratio']:.3f}x; event-loop CPU "
            f"{results['P5']['loop_cpu_us_per_cycle']:.0f} us per cycle, SQLite writer CPU "
            f"{results['P5']['writer_cpu_us_per_cycle']:.0f} us"
        )
    finally:
        await host.close()


def store_writers() -> list[int]:
    """CPU clocks of this process's SQLite writer threads (gateway/stores/sqlite.py names
    them ``sqlite-store:FILE``): with the event loop's, the other half of a cycle's CPU.
    On a shared machine both threads wait for a core about half of the wall time (their
    run-queue delay in /proc, session 36), so CPU per cycle is the steadier reading."""
    return [
        time.pthread_getcpuclockid(thread.ident)
        for thread in threading.enumerate()
        if thread.name.startswith("sqlite-store:") and thread.ident is not None
    ]


def bare_rate(ruleset: RuleSet, objects: list[Any], datas: list[Any], *, seconds: float) -> float:
    """Bare cel-expr-python over the same objects (as bench_cycle.py's bare CEL row)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_cycle import bare_cel_batch

    batch = bare_cel_batch(ruleset, objects)
    done = 0
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        done += batch()
    return done / (time.perf_counter() - began)


def say(text: str) -> None:
    print(text, flush=True)


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a few minutes)")
    parser.add_argument("--samples", type=int, help="sequential migrations for P1")
    parser.add_argument(
        "--p1b-samples", type=int, help="P1b's pairs: migrations into each of C and D (250)"
    )
    parser.add_argument("--residents", type=int, help="objects held by C for P1b (10,000)")
    parser.add_argument("--moves", type=int, help="migrations for P2 (1,000)")
    parser.add_argument("--in-flight", type=int, default=8, help="P2 concurrency (8)")
    parser.add_argument("--cycle-objects", type=int, help="objects for P5 (10,000)")
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds for P5")
    parser.add_argument(
        "--only",
        nargs="+",
        default=["P1", "P1b", "P2", "P5"],
        choices=["P1", "P1b", "P2", "P5"],
        help="figures to run (default all)",
    )
    parser.add_argument("--json", type=Path, help="write the figures as JSON to this file")
    parser.add_argument(
        "--layout",
        choices=["processes", "one-process"],
        default="processes",
        help="P1/P1b/P2: B and C as `gateway serve` processes and the floor's server in "
        "its own process (default), or every host and the floor in this process",
    )
    parser.add_argument("--floor-server", help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    quick = arguments.quick
    arguments.samples = arguments.samples or (30 if quick else 100)
    arguments.p1b_samples = arguments.p1b_samples or (100 if quick else 250)
    arguments.residents = arguments.residents or (2000 if quick else 10_000)
    arguments.moves = arguments.moves or (200 if quick else 1000)
    arguments.cycle_objects = arguments.cycle_objects or (1000 if quick else 10_000)
    if quick:
        arguments.seconds = min(arguments.seconds, 5.0)
    return arguments


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    if arguments.floor_server:
        floor_server(json.loads(arguments.floor_server))
        return 0
    results: dict[str, Any] = {"quick": arguments.quick}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as name:
        directory = Path(name)
        peers: dict[str, tuple[str, ...]] = {
            HOST_A: ("default",),
            HOST_B: ("default",),
            HOST_C: ("default",),
            HOST_D: ("default",),
        }
        world = build_world(
            directory,
            [
                HostSpec(host_id=h, policy=POLICY, peer_tenants=peers)
                for h in (HOST_A, HOST_B, HOST_C, HOST_D)
            ],
        )
        if {"P1", "P1b", "P2"} & set(arguments.only):
            asyncio.run(migration_figures(world, directory, arguments, results))
        if "P5" in arguments.only:
            asyncio.run(cycle_figure(world, arguments, results))
    results["seconds"] = time.perf_counter() - started
    results["rss_mib"] = rss_mib()
    say(json.dumps({k: v for k, v in results.items() if k.startswith("P")}, indent=1))
    if arguments.json is not None:
        arguments.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    threading.stack_size(0)
    raise SystemExit(main())
