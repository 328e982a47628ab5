"""The stand-in daprd's service invocation and output bindings behave as daprd's do
(tests/daprd/invocation.py says where each behaviour is defined upstream): what reaches the
callee, what comes back, and the errors daprd answers itself."""

from __future__ import annotations

import asyncio
import json
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from dapr.proto.common.v1 import common_pb2
from dapr.proto.runtime.v1 import binding_pb2, dapr_pb2_grpc, invoke_pb2
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from gateway.scaffold import free_port
from tests.daprd import DaprdAddresses, DaprdThread
from tests.daprd.components import (
    ComponentError,
    http_binding,
    http_endpoint,
    load_components,
)

APP = "caller"


class Receiver:
    """An HTTP server that records what it gets and answers per path."""

    def __init__(self) -> None:
        self.port = free_port()
        self.seen: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(
            {
                "method": request.method,
                "path": request.path,
                "query": request.query_string,
                "headers": dict(request.headers),
                "body": await request.read(),
            }
        )
        if request.path.endswith("/refuse"):
            return web.Response(status=409, text="already charged: order 7 was paid before")
        if request.path.endswith("/missing"):
            return web.Response(status=404, text="no such thing")
        return web.json_response({"ok": True, "path": request.path}, headers={"X-Answer": "yes"})

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Receiver]:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        try:
            yield self
        finally:
            await runner.cleanup()


@pytest.fixture
def receiver_port() -> int:
    return free_port()


@pytest.fixture
def sidecar(tmp_path: Path, receiver_port: int) -> Iterator[DaprdAddresses]:
    base = f"http://127.0.0.1:{receiver_port}"
    components = (
        http_endpoint("payments", base + "/api", **{"X-Tenant": "acme"}),
        http_binding("notify", base + "/hooks"),
        http_binding("lenient", base + "/hooks", errorIfNot2XX="false"),
    )
    with DaprdThread(app_id=APP, db=tmp_path / "d.db", components=components) as addresses:
        yield addresses


def run_with_receiver(port: int, scenario: Any) -> Receiver:
    receiver = Receiver()
    receiver.port = port

    async def main() -> None:
        async with receiver.running():
            await scenario()

    asyncio.run(main())
    return receiver


def details(error: grpc.aio.AioRpcError) -> list[Any]:
    """The google.rpc.Status details daprd put in the trailers, unpacked."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            found: list[Any] = []
            for packed in status.details:
                info = error_details_pb2.ErrorInfo()
                if packed.Unpack(info):
                    found.append(info)
            return found
    return []


def test_http_invoke_reaches_the_endpoint_with_the_callers_headers(
    sidecar: DaprdAddresses, receiver_port: int
) -> None:
    answers: list[tuple[int, Any, str]] = []

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            for method in ("charge", "v1/../refuse", "missing"):
                async with session.post(
                    f"{sidecar.http_endpoint}/v1.0/invoke/payments/method/{method}?x=1",
                    data=b'{"amount": 5}',
                    headers={"Content-Type": "application/json", "Idempotency-Key": "k-1"},
                ) as response:
                    answers.append(
                        (response.status, await response.read(), response.headers["X-Answer"])
                        if response.status == 200
                        else (response.status, await response.text(), "")
                    )

    seen = run_with_receiver(receiver_port, scenario).seen
    # The method is cleaned (no ../ reaches the app) and appended to the endpoint's baseUrl.
    assert [s["path"] for s in seen] == ["/api/charge", "/api/refuse", "/api/missing"]
    first = seen[0]
    assert first["method"] == "POST" and first["query"] == "x=1"
    assert first["body"] == b'{"amount": 5}'
    assert first["headers"]["Idempotency-Key"] == "k-1"  # the caller's headers go on
    assert first["headers"]["X-Tenant"] == "acme"  # and the endpoint's own
    assert json.loads(answers[0][1]) == {"ok": True, "path": "/api/charge"}
    assert answers[0][2] == "yes"  # the callee's headers come back
    # The callee's status comes back as it is, body included.
    assert answers[1] == (409, "already charged: order 7 was paid before", "")
    assert answers[2] == (404, "no such thing", "")


def test_unknown_app_id_and_unreachable_endpoint_are_err_direct_invoke(
    tmp_path: Path, sidecar: DaprdAddresses
) -> None:
    answers: list[tuple[int, Any]] = []

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            for app in ("ghost", "http://127.0.0.1:1"):
                async with session.post(
                    f"{sidecar.http_endpoint}/v1.0/invoke/{app}/method/m", data=b"{}"
                ) as response:
                    answers.append((response.status, await response.json()))

    asyncio.run(scenario())
    assert answers[0] == (
        500,
        {
            "errorCode": "ERR_DIRECT_INVOKE",
            "message": "failed to invoke, id: ghost, err: couldn't find service: ghost",
        },
    )
    status, body = answers[1]
    assert status == 500 and body["errorCode"] == "ERR_DIRECT_INVOKE"
    assert body["message"].startswith("failed to invoke, id: http://127.0.0.1:1, err: ")


def test_grpc_invoke_service_maps_the_callees_status(
    sidecar: DaprdAddresses, receiver_port: int
) -> None:
    results: dict[str, Any] = {}

    async def scenario() -> None:
        async with grpc.aio.insecure_channel(sidecar.grpc_endpoint) as channel:
            stub = dapr_pb2_grpc.DaprStub(channel)

            def request(app: str, method: str) -> invoke_pb2.InvokeServiceRequest:
                return invoke_pb2.InvokeServiceRequest(
                    id=app,
                    message=common_pb2.InvokeRequest(
                        method=method,
                        data=any_pb2.Any(value=b'{"n": 1}'),
                        content_type="application/json",
                        http_extension=common_pb2.HTTPExtension(
                            verb=common_pb2.HTTPExtension.Verb.PUT
                        ),
                    ),
                )

            call = stub.InvokeService(
                request("payments", "charge"), metadata=(("idempotency-key", "k-2"),)
            )
            response = await call
            results["ok"] = (response, dict(await call.initial_metadata()))
            for name, app, method in (
                ("refused", "payments", "refuse"),
                ("unknown", "ghost", "m"),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await stub.InvokeService(request(app, method))
                results[name] = failed.value

    seen = run_with_receiver(receiver_port, scenario).seen
    response, headers = results["ok"]
    assert json.loads(response.data.value) == {"ok": True, "path": "/api/charge"}
    assert response.content_type.startswith("application/json")
    assert headers["dapr-http-status"] == "200"
    assert seen[0]["method"] == "PUT"
    assert seen[0]["headers"]["idempotency-key"] == "k-2"  # gRPC metadata goes on as headers
    refused = results["refused"]
    # 409 -> ALREADY_EXISTS, message = the status text, ErrorInfo with the HTTP code and
    # the body cut to 63 characters (pkg/messaging/v1/util.go ErrorFromHTTPResponseCode).
    assert refused.code() is grpc.StatusCode.ALREADY_EXISTS
    assert refused.details() == "Conflict"
    (info,) = details(refused)
    assert info.reason == "Conflict" and info.metadata["http.code"] == "409"
    assert info.metadata["http.error_message"] == "already charged: order 7 was paid before"[:63]
    unknown = results["unknown"]
    assert unknown.code() is grpc.StatusCode.INTERNAL
    assert unknown.details() == "failed to invoke, id: ghost, err: couldn't find service: ghost"
    assert details(unknown) == []  # an APIError: no status details


def test_invoke_binding_sends_capitalised_metadata_as_headers(
    sidecar: DaprdAddresses, receiver_port: int
) -> None:
    results: dict[str, Any] = {}

    async def scenario() -> None:
        async with grpc.aio.insecure_channel(sidecar.grpc_endpoint) as channel:
            stub = dapr_pb2_grpc.DaprStub(channel)

            async def invoke(name: str, operation: str, **metadata: str) -> Any:
                return await stub.InvokeBinding(
                    binding_pb2.InvokeBindingRequest(
                        name=name, operation=operation, data=b'{"a": 1}', metadata=metadata
                    )
                )

            results["created"] = await invoke(
                "notify", "create", path="/orders", **{"Idempotency-Key": "k-3", "lower": "x"}
            )
            results["lenient"] = await invoke("lenient", "post", path="refuse")
            for name, call in (
                ("refused", invoke("notify", "post", path="refuse")),
                ("unknown", invoke("ghost", "create")),
                ("operation", invoke("notify", "publish")),
                ("empty", invoke("notify", "")),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await call
                results[name] = failed.value

    seen = run_with_receiver(receiver_port, scenario).seen
    created = results["created"]
    assert json.loads(created.data) == {"ok": True, "path": "/hooks/orders"}
    assert created.metadata["statusCode"] == "200" and created.metadata["status"] == "200 OK"
    assert created.metadata["X-Answer"] == "yes"
    first = seen[0]
    assert first["method"] == "POST" and first["path"] == "/hooks/orders"  # create is POST
    assert first["body"] == b'{"a": 1}'
    assert first["headers"]["Idempotency-Key"] == "k-3"  # capitalised: a header
    assert "lower" not in first["headers"]  # lower-case metadata is not
    assert first["headers"]["Content-Type"] == "application/json; charset=utf-8"
    assert results["lenient"].metadata["statusCode"] == "409"  # errorIfNot2XX: false

    def check(name: str, message: str) -> None:
        error = results[name]
        assert error.code() is grpc.StatusCode.INTERNAL, name
        assert error.details() == message
        assert [i.reason for i in details(error)] == ["ERR_INVOKE_OUTPUT_BINDING"]

    check("refused", "error invoking output binding notify: received status code 409")
    check("unknown", "error invoking output binding ghost: couldn't find output binding ghost")
    check(
        "operation",
        "error invoking output binding notify: binding notify does not support operation "
        "publish. supported operations:create get head post put patch delete options trace",
    )
    check("empty", "error invoking output binding notify: operation field is missing from request")


def test_the_sdk_reaches_bindings_and_invocation_and_metadata_lists_them(
    sidecar: DaprdAddresses, receiver_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in sidecar.env().items():
        monkeypatch.setenv(key, value)
    results: dict[str, Any] = {}

    async def scenario() -> None:
        from dapr.aio.clients import DaprClient

        async with DaprClient() as client:
            response = await client.invoke_binding(
                "notify", "create", data=b"{}", binding_metadata={"Idempotency-Key": "k-4"}
            )
            results["binding"] = response.binding_metadata["statusCode"]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                answer = await client.invoke_method("payments", "charge", data=b"{}")
            results["invoke"] = answer.status_code
            metadata = await client.get_metadata()
            results["components"] = {(c.name, c.type) for c in metadata.registered_components}

    seen = run_with_receiver(receiver_port, scenario).seen
    assert results["binding"] == "200" and results["invoke"] == 200
    assert [s["path"] for s in seen] == ["/hooks", "/api/charge"]
    assert ("notify", "bindings.http") in results["components"]


def test_binding_and_endpoint_resources_load_from_files(tmp_path: Path) -> None:
    (tmp_path / "res.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: HTTPEndpoint\nmetadata: {name: pay}\n"
        "spec:\n  baseUrl: http://127.0.0.1:9/x\n  headers: [{name: A, value: b}]\n---\n"
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: hook}\n"
        "spec: {type: bindings.http, version: v1, metadata: [{name: url, value: 'http://h'}]}\n"
    )
    loaded = {c.name: c for c in load_components([tmp_path], APP)}
    assert loaded["pay"].meta("baseUrl") == "http://127.0.0.1:9/x"
    assert loaded["pay"].metadata["header.A"] == "b"
    assert loaded["hook"].category == "bindings"
    (tmp_path / "bad.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: q}\n"
        "spec: {type: bindings.kafka, version: v1}\n"
    )
    with pytest.raises(ComponentError, match=r"emulates only bindings\.http"):
        load_components([tmp_path], APP)
