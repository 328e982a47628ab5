"""The stand-in daprd (tests/daprd) behaves like daprd, driven by the official Dapr SDK.

Every check here is a daprd behaviour the gateway's Dapr adapter relies on; the package
docstring of tests/daprd says where each one is documented or implemented upstream.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sqlite3
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from dapr.aio.clients import DaprClient
from dapr.clients.exceptions import DaprGrpcError, DaprInternalError
from dapr.clients.grpc._jobs import ConstantFailurePolicy, Job
from dapr.clients.grpc._request import TransactionalStateOperation, TransactionOperationType
from dapr.clients.grpc._state import Concurrency, StateOptions
from dapr.proto.runtime.v1 import (
    appcallback_pb2,
    appcallback_pb2_grpc,
    dapr_pb2_grpc,
    jobs_pb2,
    secret_pb2,
)
from google.protobuf import any_pb2, wrappers_pb2

from tests.daprd import (
    Component,
    DaprdAddresses,
    DaprdProcess,
    DaprdThread,
    pubsub,
    running_daprd,
    state_store,
)
from tests.daprd.cloudevents import go_json
from tests.daprd.components import ComponentError, load_components
from tests.daprd.schedule import ScheduleError, parse_go_duration, parse_schedule

_T = TypeVar("_T")

APP = "app-a"
COMPONENTS: tuple[Component, ...] = (
    state_store("store"),
    state_store("other"),
    state_store("plain", keyPrefix="none"),
    state_store("named", keyPrefix="name"),
    state_store("shared", keyPrefix="tenant-x"),
    Component(name="pg2", type="state.postgresql", version="v2"),
    Component(name="pg1", type="state.postgresql", version="v1"),
    Component(name="redis", type="state.redis"),
    pubsub("bus", redeliverInterval="50ms"),
)

UPSERT = TransactionOperationType.upsert
DELETE = TransactionOperationType.delete
FIRST_WRITE = StateOptions(concurrency=Concurrency.first_write)


def run(coroutine: Awaitable[_T]) -> _T:
    return asyncio.run(asyncio.wait_for(coroutine, 20))  # type: ignore[arg-type]


@pytest.fixture
def sidecar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DaprdAddresses]:
    """A stand-in for APP in this process; the SDK finds it through the environment."""
    with DaprdThread(app_id=APP, db=tmp_path / "dapr.db", components=COMPONENTS) as addresses:
        for name, value in addresses.env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("DAPR_HEALTH_TIMEOUT", "5")
        yield addresses


def grpc_code(error: BaseException) -> grpc.StatusCode:
    """The status code behind an SDK error: save_state raises DaprInternalError (which
    keeps only the text) from the AioRpcError, the other calls raise DaprGrpcError."""
    if isinstance(error, DaprGrpcError):
        return error.code()
    cause = error.__cause__
    assert isinstance(cause, grpc.aio.AioRpcError), error
    return cause.code()


async def fails_with(call: Awaitable[Any]) -> BaseException:
    with pytest.raises((DaprGrpcError, DaprInternalError)) as caught:
        await call
    return caught.value


def stored_keys(db: Path, store: str) -> list[str]:
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT key FROM state WHERE store = ? ORDER BY key", (store,))
        return [row[0] for row in rows]


# --- state: ETags ---------------------------------------------------------------------


def test_a_missing_key_reads_as_empty_data_and_empty_etag(sidecar: DaprdAddresses) -> None:
    async def scenario() -> None:
        async with DaprClient() as client:
            missing = await client.get_state("store", "nothing-here")
            assert (missing.data, missing.etag) == (b"", "")

    run(scenario())


def test_etags_are_server_generated_checked_and_never_reused(sidecar: DaprdAddresses) -> None:
    async def scenario() -> None:
        async with DaprClient() as client:
            await client.save_state("store", "k", b"v1")
            first = (await client.get_state("store", "k")).etag
            assert first

            await client.save_state("store", "k", b"v2", etag=first)
            second = (await client.get_state("store", "k")).etag
            assert second != first

            stale = await fails_with(client.save_state("store", "k", b"v3", etag=first))
            assert grpc_code(stale) == grpc.StatusCode.ABORTED
            assert "possible etag mismatch" in str(stale)
            stale_delete = await fails_with(client.delete_state("store", "k", etag=first))
            assert grpc_code(stale_delete) == grpc.StatusCode.ABORTED
            assert (await client.get_state("store", "k")).data == b"v2"

            await client.delete_state("store", "k", etag=second)
            assert (await client.get_state("store", "k")).data == b""
            # An ETag on an absent key cannot match.
            absent = await fails_with(client.save_state("store", "k", b"v4", etag=second))
            assert grpc_code(absent) == grpc.StatusCode.ABORTED

            await client.save_state("store", "k", b"v5")
            third = (await client.get_state("store", "k")).etag
            assert third not in (first, second)

    run(scenario())


@pytest.mark.parametrize("etag", ["not-an-etag", "-1", "1.5", "99999999999999999999999"])
@pytest.mark.parametrize(
    ("store", "code"),
    [
        # UUID ETags, compared as text: anything else is a mismatch (seen on daprd d0fd828)
        ("store", grpc.StatusCode.ABORTED),  # state.sqlite
        ("pg2", grpc.StatusCode.ABORTED),  # state.postgresql v2
        # integer ETags (xmin, version): one that does not parse is invalid
        ("pg1", grpc.StatusCode.INVALID_ARGUMENT),
        ("redis", grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_an_etag_the_store_cannot_have_issued_is_refused_as_the_component_does(
    sidecar: DaprdAddresses, etag: str, store: str, code: grpc.StatusCode
) -> None:
    async def scenario() -> None:
        async with DaprClient() as client:
            await client.save_state(store, "k", b"v")
            saved = await fails_with(client.save_state(store, "k", b"w", etag=etag))
            assert grpc_code(saved) == code
            expected = (
                "invalid etag value"
                if code is grpc.StatusCode.INVALID_ARGUMENT
                else ("possible etag mismatch")
            )
            assert expected in str(saved)
            deleted = await fails_with(client.delete_state(store, "k", etag=etag))
            assert grpc_code(deleted) == code
            in_transaction = await fails_with(
                client.execute_state_transaction(
                    store, [TransactionalStateOperation(key="k", data=b"t", etag=etag)]
                )
            )
            assert grpc_code(in_transaction) == grpc.StatusCode.INTERNAL
            assert expected in str(in_transaction)
            assert (await client.get_state(store, "k")).data == b"v"

    run(scenario())


@pytest.mark.parametrize(
    ("store", "code", "words"),
    [
        ("store", grpc.StatusCode.ABORTED, "possible etag mismatch"),  # state.sqlite
        ("pg1", grpc.StatusCode.ABORTED, "possible etag mismatch"),
        # state.postgresql v2: its upsert touched no row (seen on daprd d0fd828)
        ("pg2", grpc.StatusCode.INTERNAL, "no item was updated"),
        ("redis", grpc.StatusCode.INTERNAL, "failed to set key"),  # its Lua script's error
    ],
)
def test_a_lost_first_write_is_reported_as_the_component_does(
    sidecar: DaprdAddresses, store: str, code: grpc.StatusCode, words: str
) -> None:
    async def scenario() -> None:
        async with DaprClient() as client:
            await client.save_state(store, "k", b"first", options=FIRST_WRITE)
            lost = await fails_with(client.save_state(store, "k", b"second", options=FIRST_WRITE))
            assert grpc_code(lost) == code
            assert f"failed saving state in state store {store}: {words}" in str(lost)
            assert (await client.get_state(store, "k")).data == b"first"

    run(scenario())


def test_an_empty_etag_means_no_etag(sidecar: DaprdAddresses) -> None:
    async def scenario() -> None:
        async with DaprClient() as client:
            await client.save_state("store", "k", b"v1", etag="")
            await client.save_state("store", "k", b"v2", etag="")
            assert (await client.get_state("store", "k")).data == b"v2"

    run(scenario())


def test_first_write_without_etag_inserts_only_if_absent(sidecar: DaprdAddresses) -> None:
    async def scenario() -> None:
        async with DaprClient() as client:
            await client.save_state("store", "k", b"first", options=FIRST_WRITE)
            again = await fails_with(
                client.save_state("store", "k", b"second", options=FIRST_WRITE)
            )
            assert grpc_code(again) == grpc.StatusCode.ABORTED
            current = await client.get_state("store", "k")
            assert current.data == b"first"
            # With the current ETag, first-write is an ordinary conditional update ...
            await client.save_state("store", "k", b"third", etag=current.etag, options=FIRST_WRITE)
            # ... and without options, a write without ETag is last-write-wins.
            await client.save_state("store", "k", b"fourth")
            assert (await client.get_state("store", "k")).data == b"fourth"
            # Deleted means absent again.
            await client.delete_state("store", "k")
            await client.save_state("store", "k", b"fifth", options=FIRST_WRITE)

    run(scenario())


# --- state: transactions ----------------------------------------------------------------


def test_a_transaction_is_all_or_nothing(sidecar: DaprdAddresses) -> None:
    async def scenario() -> None:
        async with DaprClient() as client:
            await client.save_state("store", "b", b"b0")
            await client.save_state("store", "c", b"c0")
            stale = (await client.get_state("store", "c")).etag
            await client.save_state("store", "c", b"c1")

            failed = await fails_with(
                client.execute_state_transaction(
                    "store",
                    [
                        TransactionalStateOperation(key="a", data=b"a1"),
                        TransactionalStateOperation(operation_type=DELETE, key="b"),
                        TransactionalStateOperation(key="c", data=b"c2", etag=stale),
                    ],
                )
            )
            # daprd reports every store error of a transaction as INTERNAL, ETag
            # mismatches included (pkg/api/grpc/grpc.go ExecuteStateTransaction).
            assert isinstance(failed, DaprGrpcError)
            assert failed.code() == grpc.StatusCode.INTERNAL
            assert failed.error_code() == "ERR_STATE_TRANSACTION"
            assert "possible etag mismatch" in failed.details()
            items = await client.get_bulk_state("store", ["a", "b", "c"])
            assert [(i.key, i.data) for i in items.items] == [
                ("a", b""),
                ("b", b"b0"),
                ("c", b"c1"),
            ]

            fresh = (await client.get_state("store", "c")).etag
            await client.execute_state_transaction(
                "store",
                [
                    TransactionalStateOperation(key="a", data=b"a1"),
                    TransactionalStateOperation(operation_type=DELETE, key="b"),
                    TransactionalStateOperation(key="c", data=b"c2", etag=fresh),
                ],
            )
            items = await client.get_bulk_state("store", ["a", "b", "c"])
            assert [(i.key, i.data) for i in items.items] == [
                ("a", b"a1"),
                ("b", b""),
                ("c", b"c2"),
            ]
            assert all(i.error == "" for i in items.items)

    run(scenario())


def test_a_transaction_with_a_malformed_etag_fails_whole(sidecar: DaprdAddresses) -> None:
    async def scenario() -> None:
        async with DaprClient() as client:
            failed = await fails_with(
                client.execute_state_transaction(
                    "store",
                    [
                        TransactionalStateOperation(key="a", data=b"a1"),
                        TransactionalStateOperation(key="b", data=b"b1", etag="bogus"),
                    ],
                )
            )
            assert grpc_code(failed) == grpc.StatusCode.INTERNAL
            assert "possible etag mismatch" in str(failed)  # state.sqlite: any ETag compares
            assert (await client.get_state("store", "a")).data == b""

    run(scenario())


# --- state: keys and stores ------------------------------------------------------------


def test_keys_are_stored_with_the_component_key_prefix(
    sidecar: DaprdAddresses, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with DaprClient() as client:
            for store in ("store", "plain", "named", "shared"):
                await client.save_state(store, "k", store.encode())
            bulk = await client.get_bulk_state("store", ["k", "missing"])
            assert [(i.key, i.data, bool(i.etag)) for i in bulk.items] == [
                ("k", b"store", True),
                ("missing", b"", False),
            ]

    run(scenario())
    db = tmp_path / "dapr.db"
    assert stored_keys(db, "store") == [f"{APP}||k"]  # keyPrefix appid, the default
    assert stored_keys(db, "plain") == ["k"]  # keyPrefix none
    assert stored_keys(db, "named") == ["named||k"]  # keyPrefix name
    assert stored_keys(db, "shared") == ["tenant-x||k"]  # a custom prefix


def test_key_and_store_errors_are_daprds(sidecar: DaprdAddresses) -> None:
    async def scenario() -> None:
        async with DaprClient() as client:
            illegal = await fails_with(client.get_state("store", "a||b"))
            assert isinstance(illegal, DaprGrpcError)
            assert illegal.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert illegal.error_code() == "DAPR_STATE_ILLEGAL_KEY"
            assert illegal.details() == "input key/keyPrefix 'a||b' can't contain '||'"

            unknown = await fails_with(client.get_state("no-such-store", "k"))
            assert isinstance(unknown, DaprGrpcError)
            assert unknown.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert unknown.details() == "state store no-such-store is not found"
            assert unknown.error_code() == "DAPR_STATE_NOT_FOUND"

            empty = await fails_with(client.save_state("store", "", b"v"))
            assert grpc_code(empty) == grpc.StatusCode.INVALID_ARGUMENT

    run(scenario())


def test_stores_and_apps_are_kept_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "dapr.db"  # one "database" behind two sidecars, like a shared Redis

    async def write_and_read(addresses: DaprdAddresses, value: bytes) -> tuple[bytes, bytes]:
        async with DaprClient(address=addresses.grpc_endpoint) as client:
            await client.save_state("store", "k", value)
            await client.save_state("other", "k", value + b"-other")
            await asyncio.sleep(0)
            return (await client.get_state("store", "k")).data, (
                await client.get_state("other", "k")
            ).data

    with (
        DaprdThread(app_id="app-a", db=db, components=COMPONENTS) as a,
        DaprdThread(app_id="app-b", db=db, components=COMPONENTS) as b,
    ):
        monkeypatch.setenv("DAPR_HTTP_ENDPOINT", a.http_endpoint)
        assert run(write_and_read(a, b"from-a")) == (b"from-a", b"from-a-other")
        monkeypatch.setenv("DAPR_HTTP_ENDPOINT", b.http_endpoint)
        assert run(write_and_read(b, b"from-b")) == (b"from-b", b"from-b-other")
        monkeypatch.setenv("DAPR_HTTP_ENDPOINT", a.http_endpoint)

        async def read_a() -> bytes:
            async with DaprClient(address=a.grpc_endpoint) as client:
                return (await client.get_state("store", "k")).data

        assert run(read_a()) == b"from-a"
    assert stored_keys(db, "store") == ["app-a||k", "app-b||k"]


# --- pub/sub ---------------------------------------------------------------------------


def test_published_events_arrive_as_daprd_cloudevents(sidecar: DaprdAddresses) -> None:
    async def scenario() -> None:
        async with DaprClient() as client:
            subscription = await client.subscribe("bus", "orders")
            passthrough = {
                "specversion": "1.0",
                "id": "evt-1",
                "source": "urn:partner",
                "type": "com.example.moved",
                "datacontenttype": "application/json",
                "data": {"n": 1},
                "custom": "kept",
            }
            await client.publish_event(
                "bus",
                "orders",
                '{"z": 1.0, "a": "<&>", "big": 1e21}',
                data_content_type="application/json",
            )
            await client.publish_event("bus", "orders", "hello")
            await client.publish_event(
                "bus", "orders", b"\x08\x01", data_content_type="application/x-custom"
            )
            await client.publish_event(
                "bus", "orders", b"\x00\xff", data_content_type="application/octet-stream"
            )
            await client.publish_event(
                "bus",
                "orders",
                json.dumps(passthrough),
                data_content_type="application/cloudevents+json",
            )
            received = []
            for _ in range(5):
                message = await asyncio.wait_for(subscription.next_message(), 5)
                received.append(message)
                await subscription.respond_success(message)
            await subscription.close()

            as_json, as_text, as_custom, as_bytes, as_event = received
            for message in (as_json, as_text, as_bytes):
                uuid.UUID(message.id())
                assert message.source() == APP
                assert message.type() == "com.dapr.event.sent"
                assert message.spec_version() == "1.0"
                assert message.topic() == "orders"
                assert message.pubsub_name() == "bus"
                extensions = message.extensions()
                assert extensions["topic"] == "orders"
                assert extensions["pubsubname"] == "bus"
                assert extensions["traceid"] == extensions["traceparent"]
                assert extensions["traceparent"].startswith("00-")
                dt.datetime.fromisoformat(extensions["time"].replace("Z", "+00:00"))
            # JSON data reaches the subscriber re-marshalled by Go: keys sorted,
            # numbers through float64, <>& escaped.
            assert as_json.data_content_type() == "application/json"
            assert as_json.raw_data() == b'{"a":"\\u003c\\u0026\\u003e","big":1e+21,"z":1}'
            assert (as_text.data_content_type(), as_text.raw_data()) == ("text/plain", b"hello")
            # Neither text nor JSON nor octet-stream: daprd delivers no data at all.
            assert (as_custom.data_content_type(), as_custom.raw_data()) == (
                "application/x-custom",
                b"",
            )
            assert as_bytes.data_content_type() == "application/octet-stream"
            assert as_bytes.raw_data() == b"\x00\xff"
            # A CloudEvent is passed through: its own id, source and type stay.
            assert (as_event.id(), as_event.source(), as_event.type()) == (
                "evt-1",
                "urn:partner",
                "com.example.moved",
            )
            assert as_event.data() == {"n": 1}
            assert as_event.extensions()["custom"] == "kept"
            assert as_event.topic() == "orders"

            not_json = await fails_with(
                client.publish_event(
                    "bus", "orders", "{", data_content_type="application/cloudevents+json"
                )
            )
            assert isinstance(not_json, DaprGrpcError)
            assert not_json.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert not_json.details() == "cannot create cloudevent"
            unknown = await fails_with(client.publish_event("no-bus", "orders", "x"))
            assert isinstance(unknown, DaprGrpcError)
            assert (unknown.code(), unknown.details()) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                "pubsub no-bus is not found",
            )

    run(scenario())


def test_retry_redelivers_drop_dead_letters_and_unanswered_messages_return(
    sidecar: DaprdAddresses,
) -> None:
    async def scenario() -> None:
        async with DaprClient() as client:
            # Published before anyone subscribed: kept for the app's consumer group.
            await client.publish_event("bus", "jobs", "one")
            await client.publish_event("bus", "jobs", "two")
            subscription = await client.subscribe("bus", "jobs", dead_letter_topic="jobs-dead")
            first = await asyncio.wait_for(subscription.next_message(), 5)
            assert first.raw_data() == b"one"
            await subscription.respond_retry(first)
            second = await asyncio.wait_for(subscription.next_message(), 5)
            assert second.raw_data() == b"two"
            await subscription.respond_drop(second)
            again = await asyncio.wait_for(subscription.next_message(), 5)
            assert (again.id(), again.raw_data()) == (first.id(), b"one")
            # Not answered: given back when the stream closes, redelivered to the next.
            await subscription.close()

            dead = await client.subscribe("bus", "jobs-dead")
            dropped = await asyncio.wait_for(dead.next_message(), 5)
            assert (dropped.id(), dropped.raw_data()) == (second.id(), b"two")
            await dead.respond_success(dropped)
            await dead.close()

            resumed = await client.subscribe("bus", "jobs")
            redelivered = await asyncio.wait_for(resumed.next_message(), 5)
            assert (redelivered.id(), redelivered.raw_data()) == (first.id(), b"one")
            await resumed.respond_success(redelivered)
            await resumed.close()

    run(scenario())


def test_subscribing_to_an_unknown_pubsub_is_refused(sidecar: DaprdAddresses) -> None:
    async def scenario() -> None:
        async with DaprClient() as client:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.subscribe("no-bus", "t")
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert refused.value.details() == "pubsub no-bus is not found"

    run(scenario())


# --- jobs ------------------------------------------------------------------------------


class _App(appcallback_pb2_grpc.AppCallbackAlphaServicer):
    """A tiny app: only the alpha job callback (so daprd has to fall back to it)."""

    def __init__(self, failures: int = 0) -> None:
        self.calls: list[appcallback_pb2.JobEventRequest] = []
        self.failures = failures
        self.called = asyncio.Event()

    async def OnJobEventAlpha1(
        self, request: appcallback_pb2.JobEventRequest, context: grpc.aio.ServicerContext
    ) -> appcallback_pb2.JobEventResponse:
        self.calls.append(request)
        self.called.set()
        if self.failures > 0:
            self.failures -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "not ready yet")
        return appcallback_pb2.JobEventResponse()


@asynccontextmanager
async def app_server(app: _App) -> AsyncIterator[int]:
    server = grpc.aio.server()
    appcallback_pb2_grpc.add_AppCallbackAlphaServicer_to_server(app, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(0)


async def wait_until(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def _payload(text: str) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(wrappers_pb2.StringValue(value=text))
    return packed


def test_jobs_trigger_the_app_and_finish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        app = _App()
        async with app_server(app) as app_port:
            with DaprdThread(
                app_id=APP, db=tmp_path / "dapr.db", components=COMPONENTS, app_port=app_port
            ) as addresses:
                monkeypatch.setenv("DAPR_HTTP_ENDPOINT", addresses.http_endpoint)
                async with DaprClient(address=addresses.grpc_endpoint) as client:
                    await client.schedule_job(Job(name="tick", schedule="@every 1h"))
                    stored = await client.get_job("tick")
                    assert (stored.schedule, stored.repeats) == ("@every 1h", None)
                    # The Scheduler stores the default failure policy: constant, 1s, 3 retries.
                    assert isinstance(stored.failure_policy, ConstantFailurePolicy)
                    assert (
                        stored.failure_policy.interval_seconds,
                        stored.failure_policy.max_retries,
                    ) == (1, 3)

                    job = Job(name="tick", schedule="@every 100ms", repeats=3, data=_payload("hi"))
                    taken = await fails_with(client.schedule_job(job))
                    assert isinstance(taken, DaprGrpcError)
                    assert taken.code() == grpc.StatusCode.ALREADY_EXISTS
                    await client.schedule_job(job, overwrite=True)
                    assert (await client.get_job("tick")).schedule == "@every 100ms"

                    await wait_until(lambda: len(app.calls) == 3)
                    for call in app.calls:
                        assert (call.name, call.method) == ("tick", "job/tick")
                        value = wrappers_pb2.StringValue()
                        assert call.data.Unpack(value) and value.value == "hi"
                        assert call.content_type == call.data.type_url
                    # Repeats done: the job is deleted, as the Scheduler does.
                    await asyncio.sleep(0.3)
                    assert len(app.calls) == 3
                    gone = await fails_with(client.get_job("tick"))
                    assert isinstance(gone, DaprGrpcError)
                    assert gone.code() == grpc.StatusCode.INTERNAL
                    assert "job not found: tick" in gone.details()
                    await client.delete_job("tick")  # deleting what is not there is fine

    run(scenario())


def test_failed_job_callbacks_follow_the_failure_policy(tmp_path: Path) -> None:
    async def scenario() -> None:
        app = _App(failures=2)
        async with app_server(app) as app_port:
            with DaprdThread(
                app_id=APP, db=tmp_path / "dapr.db", components=COMPONENTS, app_port=app_port
            ) as addresses:
                # A raw stub: the SDK's policy type takes whole seconds only.
                async with grpc.aio.insecure_channel(addresses.grpc_endpoint) as channel:
                    stub = dapr_pb2_grpc.DaprStub(channel)
                    job = jobs_pb2.Job(name="once", due_time="0s")
                    job.failure_policy.constant.interval.FromMilliseconds(100)
                    job.failure_policy.constant.max_retries = 5
                    await stub.ScheduleJobAlpha1(jobs_pb2.ScheduleJobRequest(job=job))
                    await wait_until(lambda: len(app.calls) == 3)
                    await asyncio.sleep(0.3)
                    assert len(app.calls) == 3  # two failures retried, one success, done
                    with pytest.raises(grpc.aio.AioRpcError) as gone:
                        await stub.GetJobAlpha1(jobs_pb2.GetJobRequest(name="once"))
                    assert "job not found" in (gone.value.details() or "")

    run(scenario())


def test_job_requests_are_validated_like_the_scheduler(sidecar: DaprdAddresses) -> None:
    async def scenario() -> None:
        async with DaprClient() as client:
            for job, message in [
                (Job(name="a", due_time="0s", repeats=2), "job must have a schedule to repeat"),
                (Job(name="a", schedule="@every nope"), "invalid duration"),
                (
                    Job(name="a", schedule="@every 1s", due_time="soon"),
                    "due time format not recognized",
                ),
                (Job(name="bad/name", schedule="@every 1s"), "job name is invalid"),
            ]:
                refused = await fails_with(client.schedule_job(job))
                assert isinstance(refused, DaprGrpcError)
                assert refused.code() == grpc.StatusCode.INTERNAL, message
                assert message in refused.details()

    run(scenario())


# --- the sidecar itself ----------------------------------------------------------------


def test_health_endpoints_and_unimplemented_methods(sidecar: DaprdAddresses) -> None:
    for path in ("/v1.0/healthz", "/v1.0/healthz/outbound"):
        with urllib.request.urlopen(sidecar.http_endpoint + path, timeout=5) as response:
            assert response.status == 204

    async def scenario() -> None:
        async with grpc.aio.insecure_channel(sidecar.grpc_endpoint) as channel:
            stub = dapr_pb2_grpc.DaprStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await stub.GetSecret(secret_pb2.GetSecretRequest(store_name="s", key="k"))
            assert missing.value.code() == grpc.StatusCode.UNIMPLEMENTED
        async with DaprClient() as client:
            metadata = await client.get_metadata()
            assert metadata.application_id == APP
            names = {(c.name, c.type.split(".")[0]) for c in metadata.registered_components}
            assert {("store", "state"), ("bus", "pubsub")} <= names

    run(scenario())


def test_running_daprd_serves_from_its_own_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DaprClient() blocks its event loop in a synchronous health wait; the sidecar is
    still reachable because it runs its own loop on another thread."""

    async def scenario() -> bytes:
        async with running_daprd(app_id=APP, db=tmp_path / "d.db", components=COMPONENTS) as a:
            monkeypatch.setenv("DAPR_HTTP_ENDPOINT", a.http_endpoint)
            async with DaprClient(address=a.grpc_endpoint) as client:
                await client.save_state("store", "k", b"v")
                return (await client.get_state("store", "k")).data

    assert run(scenario()) == b"v"


def test_everything_survives_a_sigkill_and_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    components = tmp_path / "components"
    components.mkdir()
    (components / "state.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: store\n"
        "spec:\n  type: state.redis\n  version: v1\n  metadata:\n  - name: keyPrefix\n    value: appid\n"
        "---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: bus\n"
        "spec:\n  type: pubsub.redis\n  version: v1\n  metadata: []\n"
    )
    daprd = DaprdProcess(
        app_id=APP,
        db=tmp_path / "dapr.db",
        components_dir=components,
        ready_file=tmp_path / "ready.json",
    )

    async def before(addresses: DaprdAddresses) -> str:
        async with DaprClient(address=addresses.grpc_endpoint) as client:
            await client.execute_state_transaction(
                "store",
                [
                    TransactionalStateOperation(key="prepared", data=b"yes"),
                    TransactionalStateOperation(key="marker", data=b"m"),
                ],
            )
            await client.publish_event("bus", "handoff", "commit-me")
            await client.schedule_job(Job(name="later", schedule="@every 1h"))
            return (await client.get_state("store", "prepared")).etag

    async def after(addresses: DaprdAddresses) -> tuple[bytes, str, bytes, str]:
        async with DaprClient(address=addresses.grpc_endpoint) as client:
            state = await client.get_state("store", "prepared")
            subscription = await client.subscribe("bus", "handoff")
            message = await asyncio.wait_for(subscription.next_message(), 5)
            await subscription.respond_success(message)
            await subscription.close()
            job = await client.get_job("later")
            return state.data, state.etag, message.raw_data(), job.schedule or ""

    try:
        first = daprd.start()
        monkeypatch.setenv("DAPR_HTTP_ENDPOINT", first.http_endpoint)
        etag = run(before(first))
        second = daprd.restart()  # SIGKILL, then the same file and the same ports
        assert second == first
        assert run(after(second)) == (b"yes", etag, b"commit-me", "@every 1h")
        assert daprd.terminate() == 0
    finally:
        daprd.kill()


# --- pure parts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected", "reason"),
    [
        (1.0, "1", "integral floats print without a fraction"),
        (0.5, "0.5", "shortest round-trip digits"),
        (1e21, "1e+21", "exponent form from 1e21 up"),
        (1e20, "100000000000000000000", "fixed form below 1e21"),
        (1.5e-7, "1.5e-7", "exponent form below 1e-6, without a leading zero"),
        (-0.0, "-0", "negative zero keeps its sign"),
        ({"b": [1, "x"], "a": None}, '{"a":null,"b":[1,"x"]}', "keys sorted, compact"),
        ("<a&b>\u2028", '"\\u003ca\\u0026b\\u003e\\u2028"', "HTML-safe escaping"),
    ],
)
def test_go_json_marshalling(value: Any, expected: str, reason: str) -> None:
    assert go_json(value) == expected, reason


@pytest.mark.parametrize(
    ("spec", "after", "expected", "reason"),
    [
        ("@every 1s", "2024-01-01T00:00:00.250Z", "2024-01-01T00:00:01.250Z", "constant delay"),
        ("@every 1m30s", "2024-01-01T00:00:00Z", "2024-01-01T00:01:30Z", "compound Go duration"),
        ("0 30 * * * *", "2024-01-01T00:31:00Z", "2024-01-01T01:30:00Z", "next half hour"),
        ("0 0 0 * * 0", "2024-01-01T12:00:00Z", "2024-01-07T00:00:00Z", "next Sunday"),
        ("@monthly", "2024-01-31T23:59:59Z", "2024-02-01T00:00:00Z", "descriptor"),
        ("*/15 * * * * *", "2024-01-01T00:00:14Z", "2024-01-01T00:00:15Z", "step"),
        ("0 0 0 29 feb *", "2024-03-01T00:00:00Z", "2028-02-29T00:00:00Z", "leap day"),
    ],
)
def test_schedules(spec: str, after: str, expected: str, reason: str) -> None:
    def at(text: str) -> float:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

    assert parse_schedule(spec).next(at(after)) == pytest.approx(at(expected)), reason


@pytest.mark.parametrize("text", ["", "1", "1x", "s", "1.s5", "@"])
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(ScheduleError):
        parse_go_duration(text)


def test_go_durations() -> None:
    assert parse_go_duration("1h2m3.5s") == pytest.approx(3723.5)
    assert parse_go_duration("500ms") == pytest.approx(0.5)
    assert parse_go_duration("-1.5us") == pytest.approx(-1.5e-6)


def _component(name: str, ctype: str, extra: str = "") -> str:
    return (
        f"apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\n"
        f"spec:\n  type: {ctype}\n  version: v1\n{extra}"
    )


def test_component_files_load_like_daprd(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        _component("store", "state.redis", "  metadata:\n  - name: KEYPREFIX\n    value: None\n")
        + "---\n"
        + _component("secrets", "secretstores.local.file")
        + "---\n"
        + _component("scoped", "state.redis")
        + "scopes: [someone-else]\n"
    )
    loaded = load_components([tmp_path], APP)
    assert [(c.name, c.category) for c in loaded] == [("store", "state")]
    assert loaded[0].state_key("k", APP) == "k"  # strategy names are case-insensitive

    (tmp_path / "b.yaml").write_text(
        _component("bad", "state.redis", "  metadata:\n  - name: keyPrefix\n    value: a||b\n")
    )
    with pytest.raises(ComponentError, match=r"b\.yaml.*keyPrefix"):
        load_components([tmp_path], APP)


class _Subscriber(appcallback_pb2_grpc.AppCallbackServicer):
    """An app subscribed to ``bus``/``orders`` that answers RETRY ``refusals`` times, then
    SUCCESS, and records the data of every delivery."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.delivered: list[bytes] = []

    async def ListTopicSubscriptions(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> appcallback_pb2.ListTopicSubscriptionsResponse:
        return appcallback_pb2.ListTopicSubscriptionsResponse(
            subscriptions=[appcallback_pb2.TopicSubscription(pubsub_name="bus", topic="orders")]
        )

    async def OnTopicEvent(
        self, request: appcallback_pb2.TopicEventRequest, context: grpc.aio.ServicerContext
    ) -> appcallback_pb2.TopicEventResponse:
        self.delivered.append(request.data)
        statuses = appcallback_pb2.TopicEventResponse.TopicEventResponseStatus
        if self.refusals > 0:
            self.refusals -= 1
            return appcallback_pb2.TopicEventResponse(status=statuses.RETRY)
        return appcallback_pb2.TopicEventResponse(status=statuses.SUCCESS)


@pytest.mark.parametrize(
    ("retries", "delivered"),
    [
        (0, [b"first", b"second"]),  # no inbound retry: acknowledged after one RETRY
        (3, [b"first", b"first", b"first", b"second"]),  # retried until it succeeded
    ],
)
def test_a_failed_delivery_to_the_app_is_acknowledged_unless_the_sidecar_retries_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, retries: int, delivered: list[bytes]
) -> None:
    """pubsub.redis acknowledges a message whose delivery to the app failed (RETRY, or
    the app gone) while its processingTimeout had not run out: without an inbound retry
    policy in a Resiliency resource it is lost for the app; with one, the sidecar tries
    again. Measured on a real daprd (docs/dapr.md, "Messages, calls and actions on real
    daprd"). The app refuses "first" twice; "second" is published after it, so "first"
    would come again before "second" if it were still pending."""
    components: list[Component] = [pubsub("bus", processingTimeout="10s", redeliverInterval="50ms")]
    if retries:
        policy = {"policy": "constant", "duration": "50ms", "maxRetries": str(retries)}
        components.append(Component(name="bus", type="resiliency.inbound", metadata=policy))
    app = _Subscriber(refusals=2)

    async def scenario() -> None:
        server = grpc.aio.server()
        appcallback_pb2_grpc.add_AppCallbackServicer_to_server(app, server)  # type: ignore[no-untyped-call]
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        sidecar = DaprdThread(
            app_id=APP, db=tmp_path / "dapr.db", components=components, app_port=port
        )
        addresses = await asyncio.to_thread(sidecar.start)
        for name, value in addresses.env().items():
            monkeypatch.setenv(name, value)
        try:
            async with DaprClient() as client:
                for data in ("first", "second"):
                    await client.publish_event(
                        "bus", "orders", data, data_content_type="text/plain"
                    )
                await wait_until(lambda: b"second" in app.delivered, within=10)
        finally:
            await asyncio.to_thread(sidecar.stop)
            await server.stop(0)

    run(scenario())
    assert app.delivered == delivered
