"""The jobs contract: the gateway's cycle jobs (gateway.runtime.dapr.DaprJobs) as Dapr's
scheduler runs them.

By default the sidecar is the stand-in (tests/daprd), a fresh one per test, calling back
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
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from dapr.aio.clients import DaprClient

from gateway.runtime.cycle import CycleReport, CycleResult
from gateway.runtime.dapr import DaprJobs, SchedulerUnavailableError, job_name
from gateway.scaffold import free_port
from tests.daprd.components import state_store
from tests.daprd.runner import DaprdThread

REAL_SIDECAR = os.environ.get("DAPR_GRPC_ENDPOINT")
if REAL_SIDECAR and not os.environ.get("DAPR_APP_PORT"):
    raise RuntimeError("DAPR_GRPC_ENDPOINT is set: set DAPR_APP_PORT to daprd's --app-port too")


class Runner:
    """Stands in for the CycleRunner: records triggers, answers as told."""

    def __init__(self, cycling: bool = True) -> None:
        self.calls: list[tuple[str, str, float]] = []
        self.cycling = cycling

    async def run(self, tenant: str, object_id: str) -> CycleReport:
        self.calls.append((tenant, object_id, time.monotonic()))
        if not self.cycling:
            return CycleReport(result=CycleResult.SKIPPED)
        return CycleReport(result=CycleResult.NOT_DUE)

    def of(self, object_id: str) -> list[float]:
        return [at for _tenant, oid, at in self.calls if oid == object_id]


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """(gRPC endpoint, app port) of the sidecar; the environment points the SDK at it."""
    if REAL_SIDECAR:
        yield REAL_SIDECAR, int(os.environ["DAPR_APP_PORT"])
        return
    app_port = free_port()
    with (
        DaprdThread(
            app_id="jobs-contract",
            db=tmp_path / "daprd.db",
            components=[state_store("statestore")],
            app_port=app_port,
        ) as addresses,
        pytest.MonkeyPatch.context() as patch,
    ):
        for name, value in addresses.env().items():
            patch.setenv(name, value)
        yield addresses.grpc_endpoint, app_port


@asynccontextmanager
async def serving_jobs(endpoint: str, app_port: int, runner: Runner) -> AsyncIterator[DaprJobs]:
    async with DaprClient(address=endpoint) as client:
        jobs = DaprJobs(client, runner, app_port=app_port)  # type: ignore[arg-type]
        await jobs.start()
        try:
            yield jobs
        finally:
            await jobs.stop()


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


def new_object() -> str:
    return f"obj://org-a.example/jobs/{uuid.uuid4().hex[:12]}"


async def wait_until(condition: Callable[[], bool], within: float) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"not within {within} s"
        await asyncio.sleep(0.05)


def test_a_job_triggers_the_stable_callback_with_the_object(sidecar: tuple[str, int]) -> None:
    endpoint, app_port = sidecar
    runner, object_id = Runner(), new_object()

    async def scenario() -> None:
        async with serving_jobs(endpoint, app_port, runner) as jobs:
            try:
                await jobs.schedule("default", object_id, timedelta(seconds=1))
                await wait_until(lambda: len(runner.of(object_id)) >= 2, within=10)
            finally:
                await jobs.unschedule("default", object_id)
        assert {(t, o) for t, o, _ in runner.calls if o == object_id} == {("default", object_id)}

    run(scenario)


def test_making_sure_of_a_job_does_not_reset_it(sidecar: tuple[str, int]) -> None:
    """The gateway reconciles its jobs periodically. Were that an overwrite, an ``@every``
    schedule would restart each time and an interval longer than the reconciliation
    period would never fire. Here the job is made sure of every 0.5 s and still fires
    every 3 s."""
    endpoint, app_port = sidecar
    runner, object_id = Runner(), new_object()

    async def scenario() -> None:
        async with serving_jobs(endpoint, app_port, runner) as jobs:
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


def test_a_changed_interval_replaces_the_job(sidecar: tuple[str, int]) -> None:
    endpoint, app_port = sidecar
    runner, object_id = Runner(), new_object()

    async def scenario() -> None:
        async with serving_jobs(endpoint, app_port, runner) as jobs:
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
    sidecar: tuple[str, int],
) -> None:
    endpoint, app_port = sidecar
    runner, object_id = Runner(cycling=False), new_object()

    async def scenario() -> None:
        async with serving_jobs(endpoint, app_port, runner) as jobs:
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
