"""``python -m tests.daprd``: the stand-in sidecar as its own OS process.

    python -m tests.daprd --app-id gateway-a --db /tmp/dapr.db --components ./components \\
        --grpc-port 0 --http-port 0 --app-port 50051 --ready-file /tmp/ready.json

Ports 0 pick free ones; once both servers listen, the ready file is written (atomically)
with ``{"grpc_port": ..., "http_port": ..., "pid": ..., "app_id": ...}``. SIGTERM and
SIGINT stop it gracefully; SIGKILL loses nothing that a call had returned for.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
from pathlib import Path

from tests.daprd.components import load_components
from tests.daprd.server import Daprd


def _arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.daprd", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--app-id", required=True)
    parser.add_argument(
        "--db", required=True, type=Path, help="the SQLite file (created if absent)"
    )
    parser.add_argument(
        "--components",
        action="append",
        default=[],
        type=Path,
        help="a Component YAML file or a directory of them (repeatable)",
    )
    parser.add_argument("--grpc-port", type=int, default=0)
    parser.add_argument("--http-port", type=int, default=0)
    parser.add_argument(
        "--app-port", type=int, default=None, help="the app's gRPC port, for job triggers"
    )
    parser.add_argument("--ready-file", type=Path, default=None)
    parser.add_argument("--max-body-size", type=int, default=4 << 20, help="bytes, like daprd's")
    parser.add_argument("--log-level", default="WARNING")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    daprd = Daprd(
        app_id=args.app_id,
        db=args.db,
        components=load_components(args.components, args.app_id),
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        app_port=args.app_port,
        max_body_bytes=args.max_body_size,
    )
    await daprd.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.ready_file is not None:
        ready = {
            "grpc_port": daprd.grpc_port,
            "http_port": daprd.http_port,
            "pid": os.getpid(),
            "app_id": args.app_id,
        }
        partial = args.ready_file.with_name(args.ready_file.name + ".tmp")
        partial.write_text(json.dumps(ready))
        partial.replace(args.ready_file)
    try:
        await stop.wait()
    finally:
        await daprd.stop(0.5)


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    logging.basicConfig(level=args.log_level.upper(), format="daprd %(levelname)s %(message)s")
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
