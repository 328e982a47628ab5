"""Running a stand-in sidecar: in a background thread of this process, or as an OS process.

Why a thread and not the caller's event loop: ``dapr.aio.clients.DaprClient()`` calls
the *synchronous* ``dapr.clients.health.DaprHealth.wait_for_sidecar`` (urllib) from its
constructor, which blocks the calling event loop until ``/v1.0/healthz/outbound``
answers. A sidecar served by that same loop could never answer. So the in-process
sidecar runs its own event loop on its own thread, exactly like a separate daprd.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.daprd.components import Component, load_components
from tests.daprd.server import Daprd

__all__ = ["DaprdAddresses", "DaprdProcess", "DaprdThread", "running_daprd"]

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, slots=True)
class DaprdAddresses:
    """Where a running stand-in listens (always 127.0.0.1)."""

    grpc_port: int
    http_port: int

    @property
    def grpc_endpoint(self) -> str:
        """For ``DaprClient(address=...)`` or ``DAPR_GRPC_ENDPOINT``."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        """For ``DAPR_HTTP_ENDPOINT`` (what the SDK's health wait polls)."""
        return f"http://127.0.0.1:{self.http_port}"

    def env(self) -> dict[str, str]:
        """The environment that points the Dapr SDK at this sidecar. The SDK (1.19)
        reads these at call time, so setting them in ``os.environ`` (or with pytest's
        ``monkeypatch.setenv``) is enough; the endpoints win over host and ports."""
        return {
            "DAPR_GRPC_ENDPOINT": self.grpc_endpoint,
            "DAPR_HTTP_ENDPOINT": self.http_endpoint,
            "DAPR_RUNTIME_HOST": "127.0.0.1",
            "DAPR_GRPC_PORT": str(self.grpc_port),
            "DAPR_HTTP_PORT": str(self.http_port),
        }

    def store_section(self, name: str = "statestore") -> dict[str, Any]:
        """A gateway config's ``store:`` section keeping state in component ``name`` here."""
        return {
            "dapr": {
                "state_store": name,
                "grpc_endpoint": self.grpc_endpoint,
                "http_endpoint": self.http_endpoint,
            }
        }


class DaprdThread:
    """A stand-in served by its own event loop on a daemon thread (a context manager)."""

    def __init__(
        self,
        *,
        app_id: str,
        db: Path,
        components: Sequence[Component] = (),
        components_paths: Iterable[Path] = (),
        **options: Any,
    ) -> None:
        loaded = load_components(list(components_paths), app_id, components)
        self._daprd_args = {"app_id": app_id, "db": db, "components": loaded, **options}
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name=f"daprd-{app_id}", daemon=True)
        self.addresses: DaprdAddresses | None = None

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            daprd = Daprd(**self._daprd_args)
            try:
                await daprd.start()
                self.addresses = DaprdAddresses(daprd.grpc_port, daprd.http_port)
            except BaseException as exc:
                self._error = exc
                self._ready.set()
                await daprd.stop(0)
                return
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await daprd.stop(0.2)

        asyncio.run(main())

    def start(self, timeout: float = 10.0) -> DaprdAddresses:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the stand-in daprd did not start")
        if self._error is not None:
            raise RuntimeError("the stand-in daprd failed to start") from self._error
        assert self.addresses is not None
        return self.addresses

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    def __enter__(self) -> DaprdAddresses:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextlib.asynccontextmanager
async def running_daprd(
    *,
    app_id: str,
    db: Path,
    components: Sequence[Component] = (),
    components_paths: Iterable[Path] = (),
    **options: Any,
) -> AsyncIterator[DaprdAddresses]:
    """``async with running_daprd(app_id=..., db=..., components=[...]) as addresses``.

    Options are :class:`~tests.daprd.server.Daprd`'s: ``grpc_port``, ``http_port``,
    ``app_port`` (where job triggers are sent; None: jobs wait), ``max_body_bytes``."""
    sidecar = DaprdThread(
        app_id=app_id, db=db, components=components, components_paths=components_paths, **options
    )
    addresses = await asyncio.to_thread(sidecar.start)
    try:
        yield addresses
    finally:
        await asyncio.to_thread(sidecar.stop)


class DaprdProcess:
    """``python -m tests.daprd`` as a child process, for SIGKILL and restart tests."""

    def __init__(
        self,
        *,
        app_id: str,
        db: Path,
        components_dir: Path,
        ready_file: Path,
        grpc_port: int = 0,
        http_port: int = 0,
        app_port: int | None = None,
    ) -> None:
        self.ready_file = ready_file
        self.argv = [
            sys.executable,
            "-m",
            "tests.daprd",
            "--app-id",
            app_id,
            "--db",
            str(db),
            "--components",
            str(components_dir),
            "--grpc-port",
            str(grpc_port),
            "--http-port",
            str(http_port),
            "--ready-file",
            str(ready_file),
        ]
        if app_port is not None:
            self.argv += ["--app-port", str(app_port)]
        self.process: subprocess.Popen[bytes] | None = None
        self.addresses: DaprdAddresses | None = None

    def restart(self, timeout: float = 20.0) -> DaprdAddresses:
        """SIGKILL, then start again on the same file *and the same ports*, the way a
        sidecar container comes back (so an SDK client can reconnect)."""
        assert self.addresses is not None, "start() first"
        self.kill()
        self._set_port("--grpc-port", self.addresses.grpc_port)
        self._set_port("--http-port", self.addresses.http_port)
        return self.start(timeout)

    def _set_port(self, flag: str, port: int) -> None:
        self.argv[self.argv.index(flag) + 1] = str(port)

    def start(self, timeout: float = 20.0) -> DaprdAddresses:
        self.ready_file.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            self.argv, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"stand-in daprd exited with {self.process.returncode}")
            if self.ready_file.exists():
                ready = json.loads(self.ready_file.read_text())
                self.addresses = DaprdAddresses(ready["grpc_port"], ready["http_port"])
                return self.addresses
            time.sleep(0.05)
        self.kill()
        raise TimeoutError("stand-in daprd did not become ready")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as when a node dies."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def terminate(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(10)
