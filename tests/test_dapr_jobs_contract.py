"""The jobs contract: the gateway's cycle jobs (gateway.runtime.dapr.DaprJobs) as Dapr's
scheduler runs them.

By default the sidecar is the stand-in (tests/daprd), one for the module, calling back
an app port the test picks. With ``DAPR_GRPC_ENDPOINT`` and ``DAPR_HTTP_ENDPOINT`` set,
the same tests run against that real sidecar, which must have been started with
``--app-protocol grpc --app-port $DAPR_APP_PORT`` (the port the tests serve the
callback on) and ``--scheduler-host-address`` of a running scheduler; docs/dapr.md shows
the commands. Each test uses object ids of its own and deletes its jobs at the end.

Checked: a trigger arrives through the stable ``AppCallback.OnJobEvent`` with the
object's tenant and id; making sure a job exists (what the gateway's periodic
reconciliation does) never resets it, so an interval longer than the reconciliation
period still fires; a changed interval replaces the job; a trigger for an object that is
no longer cycling here deletes the job; and a scheduler that does not answer costs
:data:`~gateway.runtime.dapr.JOB_CALL_TIMEOUT` at most, as SchedulerUnavailableError.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import grpc
import pytest
from dapr.aio.clients import DaprClient

from gateway.runtime.cycle import CycleReport, CycleResult
from gateway.runtime.dapr import (
    TRIGGER_RETRIES,
    TRIGGER_RETRY_SECONDS,
    DaprJobs,
    SchedulerUnavailableError,
    job_name,
)
from gateway.scaffold import free_port
from tests.daprd.components import state_store
from tests.daprd.runner import DaprdThread

REAL_SIDECAR = os.environ.get("DAPR_GRPC_ENDPOINT")
if REAL_SIDECAR and not os.environ.get("DAPR_APP_PORT"):
    raise RuntimeError("DAPR_GRPC_ENDPOINT is set: set DAPR_APP_PORT to daprd's --app-port too")


class Runner:
    """Stands in for the CycleRunner: records triggers; objects in ``leaving`` answer as
    objects that are no longer cycling here."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, float]] = []
        self.leaving: set[str] = set()

    async def run(self, tenant: str, object_id: str) -> CycleReport:
        self.calls.append((tenant, object_id, time.monotonic()))
        if object_id in self.leaving:
            return CycleReport(result=CycleResult.SKIPPED)
        return CycleReport(result=CycleResult.NOT_DUE)

    def of(self, object_id: str) -> list[float]:
        return [at for _tenant, oid, at in self.calls if oid == object_id]


class App:
    """The app side: a DaprJobs callback server on the app port, on a thread of its own
    for the whole module, as a gateway's is for its whole life. daprd keeps one
    connection to its app: an app that came and went per test would leave it failing
    triggers with UNAVAILABLE while its gRPC reconnect backs off."""

    def __init__(self, endpoint: str, app_port: int) -> None:
        self.endpoint, self.app_port = endpoint, app_port
        self.runner = Runner()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._stop: asyncio.Event | None = None
        self._done: concurrent.futures.Future[None] | None = None

    def start(self) -> None:
        self._thread.start()
        started: concurrent.futures.Future[None] = concurrent.futures.Future()

        async def serve() -> None:
            self._stop = asyncio.Event()
            async with DaprClient(address=self.endpoint) as client:
                jobs = DaprJobs(client, self.runner, app_port=self.app_port)  # type: ignore[arg-type]
                await jobs.start()
                started.set_result(None)
                try:
                    await self._stop.wait()
                finally:
                    await jobs.stop()

        self._done = asyncio.run_coroutine_threadsafe(serve(), self._loop)
        started.result(timeout=30)

    def stop(self) -> None:
        if self._stop is not None and self._done is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._done.result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """The app, serving, once the sidecar has shown it triggers it (a fresh daprd starts
    its job streams only after it found the app listening)."""
    with contextlib.ExitStack() as stack:
        if REAL_SIDECAR:
            endpoint, app_port = REAL_SIDECAR, int(os.environ["DAPR_APP_PORT"])
        else:
            app_port = free_port()
            addresses = stack.enter_context(
                DaprdThread(
                    app_id="jobs-contract",
                    db=tmp_path_factory.mktemp("jobs") / "daprd.db",
                    components=[state_store("statestore")],
                    app_port=app_port,
                )
            )
            patch = stack.enter_context(pytest.MonkeyPatch.context())
            for name, value in addresses.env().items():
                patch.setenv(name, value)
            endpoint = addresses.grpc_endpoint
        served = App(endpoint, app_port)
        served.start()
        stack.callback(served.stop)
        probe = new_object()

        async def warm_up() -> None:
            async with jobs_client(served) as jobs:
                await jobs.schedule("default", probe, timedelta(seconds=1))
                try:
                    await wait_until(lambda: bool(served.runner.of(probe)), within=60)
                finally:
                    await jobs.unschedule("default", probe)

        run(warm_up)
        yield served


@asynccontextmanager
async def jobs_client(app: App) -> AsyncIterator[DaprJobs]:
    """A DaprJobs for calls to the Jobs API (its own server is not started)."""
    async with DaprClient(address=app.endpoint) as client:
        yield DaprJobs(client, app.runner, app_port=app.app_port)  # type: ignore[arg-type]


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def new_object() -> str:
    return f"obj://org-a.example/jobs/{uuid.uuid4().hex[:12]}"


async def wait_until(condition: Callable[[], bool], within: float) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"not within {within} s"
        await asyncio.sleep(0.05)


def test_a_job_triggers_the_stable_callback_with_the_object(app: App) -> None:
    runner, object_id = app.runner, new_object()

    async def scenario() -> None:
        async with jobs_client(app) as jobs:
            try:
                await jobs.schedule("default", object_id, timedelta(seconds=1))
                await wait_until(lambda: len(runner.of(object_id)) >= 2, within=10)
            finally:
                await jobs.unschedule("default", object_id)
        assert {(t, o) for t, o, _ in runner.calls if o == object_id} == {("default", object_id)}

    run(scenario)


def test_making_sure_of_a_job_does_not_reset_it(app: App) -> None:
    """The gateway reconciles its jobs periodically. Were that an overwrite, an ``@every``
    schedule would restart each time and an interval longer than the reconciliation
    period would never fire. Here the job is made sure of every 0.5 s and still fires
    every 3 s."""
    runner, object_id = app.runner, new_object()

    async def scenario() -> None:
        async with jobs_client(app) as jobs:
            try:
                started = time.monotonic()
                await jobs.schedule("default", object_id, timedelta(seconds=3))
                while len(runner.of(object_id)) < 2 and time.monotonic() - started < 12:
                    await asyncio.sleep(0.5)
                    await jobs.schedule("default", object_id, timedelta(seconds=3))
            finally:
                await jobs.unschedule("default", object_id)
            fired = runner.of(object_id)
            assert len(fired) >= 2, f"fired {len(fired)} times in 12 s"
            # First trigger one interval after creation, not after the last reconciliation.
            assert 2.0 <= fired[0] - started <= 5.0
            assert 2.0 <= fired[1] - fired[0] <= 4.5

    run(scenario)


def test_a_changed_interval_replaces_the_job(app: App) -> None:
    runner, object_id = app.runner, new_object()

    async def scenario() -> None:
        async with jobs_client(app) as jobs:
            try:
                await jobs.schedule("default", object_id, timedelta(hours=1))
                assert (await jobs.client.get_job(job_name("default", object_id))).schedule == (
                    "@every 3600000ms"
                )
                await jobs.schedule("default", object_id, timedelta(seconds=1))
                assert (await jobs.client.get_job(job_name("default", object_id))).schedule == (
                    "@every 1000ms"
                )
                await wait_until(lambda: len(runner.of(object_id)) >= 1, within=10)
            finally:
                await jobs.unschedule("default", object_id)

    run(scenario)


def test_a_trigger_for_an_object_no_longer_cycling_here_deletes_its_job(
    app: App,
) -> None:
    runner, object_id = app.runner, new_object()
    runner.leaving.add(object_id)

    async def scenario() -> None:
        async with jobs_client(app) as jobs:
            await jobs.schedule("default", object_id, timedelta(seconds=1))
            await wait_until(lambda: len(runner.of(object_id)) >= 1, within=10)
            name = job_name("default", object_id)
            deadline = time.monotonic() + 5
            while (gone := await lookup(jobs, name)) is None:
                assert time.monotonic() < deadline, "the job was not deleted"
                await asyncio.sleep(0.1)
            # daprd wraps the scheduler's NotFound as INTERNAL "job not found".
            assert "not found" in str(gone).lower(), gone

    run(scenario)


async def lookup(jobs: DaprJobs, name: str) -> Exception | None:
    """None while the job exists; the sidecar's error once it does not."""
    try:
        await jobs.client.get_job(name)
    except Exception as exc:
        return exc
    return None


class _Hanging:
    """A client whose Jobs calls never answer, as daprd's do for up to 30 s while it
    cannot reach its scheduler (pkg/api/universal/jobs.go)."""

    async def schedule_job(self, job: Any, overwrite: bool = False) -> None:
        await asyncio.Event().wait()


def test_a_scheduler_that_does_not_answer_costs_the_call_timeout_at_most() -> None:
    async def scenario() -> None:
        jobs = DaprJobs(_Hanging(), Runner(), app_port=free_port(), call_timeout=0.3)  # type: ignore[arg-type]
        started = time.monotonic()
        with pytest.raises(SchedulerUnavailableError) as refused:
            await jobs.schedule("default", new_object(), timedelta(seconds=5))
        assert time.monotonic() - started < 2
        assert "scheduler did not answer" in str(refused.value)
        assert "--scheduler-host-address" in str(refused.value)
        assert not await jobs.schedule_or_log("default", new_object(), timedelta(seconds=5))

    run(scenario)


def test_a_job_carries_the_gateways_failure_policy(app: App) -> None:
    """A failed trigger is retried TRIGGER_RETRIES times, TRIGGER_RETRY_SECONDS apart,
    whatever the scheduler's default: the job as stored says so."""
    object_id = new_object()

    async def scenario() -> None:
        async with jobs_client(app) as jobs:
            try:
                await jobs.schedule("default", object_id, timedelta(seconds=30))
                stored = await jobs.client.get_job(job_name("default", object_id))
            finally:
                await jobs.unschedule("default", object_id)
        policy = stored.failure_policy
        assert policy is not None
        assert (policy.max_retries, policy.interval_seconds) == (
            TRIGGER_RETRIES,
            TRIGGER_RETRY_SECONDS,
        )

    run(scenario)


def test_the_app_answers_daprs_health_probe_until_it_drains(app: App) -> None:
    """daprd (with --enable-app-health-check) calls AppCallbackHealthCheck.HealthCheck on
    the app port and, while it fails, takes no job triggers for this replica: the serving
    app answers; one that stopped accepting answers UNAVAILABLE."""
    from dapr.proto.runtime.v1 import appcallback_pb2_grpc
    from google.protobuf.empty_pb2 import Empty

    async def probe(port: int) -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = appcallback_pb2_grpc.AppCallbackHealthCheckStub(channel)  # type: ignore[no-untyped-call]
            try:
                await stub.HealthCheck(Empty(), timeout=5)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

    async def scenario() -> None:
        assert await probe(app.app_port) is grpc.StatusCode.OK
        # A second replica's callback server (not the module's, which the sidecar uses).
        draining = DaprJobs(None, app.runner, app_port=free_port())
        port = await draining.start()
        try:
            assert await probe(port) is grpc.StatusCode.OK
            draining.stop_accepting()
            assert await probe(port) is grpc.StatusCode.UNAVAILABLE
        finally:
            await draining.stop()

    run(scenario)
