"""Service invocation and output bindings of the stand-in sidecar, as daprd does them.

Service invocation (``InvokeService`` over gRPC, ``/v1.0/invoke/<id>/method/<m>`` over
HTTP) reaches what daprd resolves without another sidecar: a named ``HTTPEndpoint``
resource, then an ``http(s)://`` URL given as the app id, in that order
(https://docs.dapr.io/developing-applications/building-blocks/service-invocation/howto-invoke-non-dapr-endpoints/,
``pkg/messaging/direct_messaging.go`` getRemoteApp). Any other id is what self-hosted
name resolution (mDNS) answers for an app that is not running: ``couldn't find service:
<id>`` (``contrib:nameresolution/mdns/mdns.go``), wrapped by daprd as ERR_DIRECT_INVOKE
``failed to invoke, id: <id>, err: ...`` — gRPC INTERNAL without status details (an
``APIError``: ``pkg/messages/api_error.go``), HTTP 500 with ``{"errorCode", "message"}``.

* The method is cleaned as ``path.Clean`` does and appended to the base URL; the verb is
  the HTTP request's (HTTP) or ``http_extension.verb`` (gRPC); the caller's headers
  (HTTP) or gRPC metadata (``grpc-*`` and pseudo-headers renamed ``dapr-*``) are sent on,
  then the endpoint's own ``spec.headers`` (``pkg/channel/http/http_channel.go``
  constructRequest, ``pkg/messaging/v1/util.go`` ReservedGRPCMetadataToDaprPrefixHeader).
* The callee's status comes back: over HTTP as it is, body and content type included;
  over gRPC a 2xx is an ``InvokeResponse`` (data in an ``Any``) with the
  ``dapr-http-status`` header, anything else the gRPC code of ``CodeFromHTTPStatus``,
  the HTTP status text as message, and an ``ErrorInfo`` (reason = status text, metadata
  ``http.code`` and ``http.error_message`` = the body cut to 63 characters)
  (``pkg/api/grpc/grpc.go`` InvokeService, ``pkg/messaging/v1/util.go``).
* A callee that cannot be reached is ERR_DIRECT_INVOKE with the transport error.

Output bindings (``InvokeBinding``): only ``bindings.http`` is emulated, as
``contrib:bindings/http/http.go`` does it: operations ``create`` (POST), ``get``,
``head``, ``post``, ``put``, ``patch``, ``delete``, ``options``, ``trace``; metadata
``path`` is appended to the component's ``url``; metadata keys that start with a capital
letter are sent as request headers; a non-2xx answer is an error unless
``errorIfNot2XX`` is false; the response metadata carries ``statusCode``, ``status`` and
the response headers. daprd's errors (``pkg/runtime/processor/binding/send.go``,
``pkg/api/grpc/grpc.go`` InvokeBinding): an unknown binding is INTERNAL
``error invoking output binding <n>: couldn't find output binding <n>``, an operation
the binding does not list is ``... binding <n> does not support operation <op>.
supported operations:<ops joined by spaces>``, an empty one ``... operation field is
missing from request``, each with an ``ErrorInfo`` of reason ERR_INVOKE_OUTPUT_BINDING.

Not emulated: invocation of other Dapr apps through their sidecars (the stand-ins have no
name resolution between them), daprd's built-in retries of transient failures, resiliency
policies, access control lists, streaming and SSE, other binding types, input bindings.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus

import aiohttp
import grpc

from tests.daprd.components import Component

#: The HTTP binding's operations, in the order it lists them (Operations()).
HTTP_BINDING_OPERATIONS = (
    "create",
    "get",
    "head",
    "post",
    "put",
    "patch",
    "delete",
    "options",
    "trace",
)
_WITH_BODY = ("PUT", "POST", "PATCH")
#: Headers that belong to one hop and are never sent on.
_HOP = frozenset(
    {"host", "content-length", "connection", "transfer-encoding", "keep-alive", "upgrade"}
)
_MAX_DETAIL = 63  # maxMetadataValueLen of pkg/messaging/v1/util.go
_TIMEOUT = aiohttp.ClientTimeout(total=30)


class InvocationError(Exception):
    """An error daprd answers itself (not the callee's): code, message, ErrorInfo reason
    ("" for an ``APIError``, which daprd sends without status details)."""

    def __init__(self, message: str, *, reason: str = "", http_status: int = 500) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.http_status = http_status


@dataclass(frozen=True, slots=True)
class Answer:
    """What the callee (or the binding's endpoint) answered."""

    status: int
    body: bytes
    content_type: str
    headers: Mapping[str, str] = field(default_factory=dict)


def grpc_code_of(status: int) -> grpc.StatusCode:
    """``CodeFromHTTPStatus`` of ``pkg/messaging/v1/util.go``."""
    if 200 <= status < 300:
        return grpc.StatusCode.OK
    return {
        408: grpc.StatusCode.CANCELLED,
        500: grpc.StatusCode.UNKNOWN,
        400: grpc.StatusCode.INTERNAL,
        504: grpc.StatusCode.DEADLINE_EXCEEDED,
        404: grpc.StatusCode.NOT_FOUND,
        409: grpc.StatusCode.ALREADY_EXISTS,
        403: grpc.StatusCode.PERMISSION_DENIED,
        401: grpc.StatusCode.UNAUTHENTICATED,
        429: grpc.StatusCode.RESOURCE_EXHAUSTED,
        501: grpc.StatusCode.UNIMPLEMENTED,
        503: grpc.StatusCode.UNAVAILABLE,
    }.get(status, grpc.StatusCode.UNKNOWN)


def status_text(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def error_detail(body: bytes) -> str:
    return body.decode("utf-8", "replace")[:_MAX_DETAIL]


def grpc_metadata_as_headers(metadata: Iterable[tuple[str, str | bytes]]) -> dict[str, str]:
    """``ReservedGRPCMetadataToDaprPrefixHeader``: pseudo-headers and ``grpc-*`` keys are
    renamed ``dapr-*``; binary (``-bin``) values are not headers and stay behind."""
    headers: dict[str, str] = {}
    for key, value in metadata:
        if isinstance(value, bytes) or key in ("user-agent",):
            continue
        if key in (":method", ":scheme", ":path", ":authority"):
            key = "dapr-" + key[1:]
        elif key.startswith("grpc-"):
            key = "dapr-" + key
        headers.setdefault(key, value)
    return headers


def _clean_method(method: str) -> str:
    cleaned = posixpath.normpath("/" + method).lstrip("/")
    return "" if cleaned == "." else cleaned


def _base_of(app_id: str, endpoints: Mapping[str, Component]) -> tuple[str, dict[str, str]]:
    if not app_id:
        raise InvocationError(
            "failed getting app id either from the URL path or the header dapr-app-id",
            http_status=400,
        )
    endpoint = endpoints.get(app_id)
    if endpoint is not None:
        headers = {
            key.removeprefix("header."): value
            for key, value in endpoint.metadata.items()
            if key.startswith("header.")
        }
        return endpoint.meta("baseUrl"), headers
    if app_id.startswith(("http://", "https://")):
        return app_id, {}
    raise InvocationError(f"failed to invoke, id: {app_id}, err: couldn't find service: {app_id}")


async def invoke_service(
    *,
    app_id: str,
    method: str,
    verb: str,
    query: str,
    body: bytes,
    content_type: str,
    headers: Mapping[str, str],
    endpoints: Mapping[str, Component],
) -> Answer:
    """Call what ``app_id`` resolves to; raise :class:`InvocationError` for daprd's own
    errors (unresolvable id, callee unreachable)."""
    base, endpoint_headers = _base_of(app_id, endpoints)
    url = base.rstrip("/") + "/" + _clean_method(method) + (f"?{query}" if query else "")
    sent = {k: v for k, v in headers.items() if k.lower() not in _HOP}
    sent.pop("dapr-api-token", None)
    if content_type:
        sent["Content-Type"] = content_type
    else:
        sent = {k: v for k, v in sent.items() if k.lower() != "content-type"}
    sent.update(endpoint_headers)
    try:
        async with (
            aiohttp.ClientSession(timeout=_TIMEOUT, skip_auto_headers=("Content-Type",)) as s,
            s.request(verb, url, data=body or None, headers=sent) as response,
        ):
            return Answer(
                status=response.status,
                body=await response.read(),
                content_type=response.headers.get("Content-Type", ""),
                headers={k: v for k, v in response.headers.items() if k.lower() not in _HOP},
            )
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise InvocationError(
            f"failed to invoke, id: {app_id}, err: {verb} {url!r}: {exc or type(exc).__name__}"
        ) from exc


def _binding_error(name: str, problem: str) -> InvocationError:
    return InvocationError(
        f"error invoking output binding {name}: {problem}", reason="ERR_INVOKE_OUTPUT_BINDING"
    )


async def invoke_binding(
    *,
    name: str,
    operation: str,
    data: bytes,
    metadata: Mapping[str, str],
    bindings: Mapping[str, Component],
) -> tuple[bytes, dict[str, str]]:
    """``SendToOutputBinding`` then ``bindings.http`` Invoke: (data, response metadata)."""
    if not operation:
        raise _binding_error(name, "operation field is missing from request")
    component = bindings.get(name)
    if component is None:
        raise _binding_error(name, f"couldn't find output binding {name}")
    if operation not in HTTP_BINDING_OPERATIONS:
        raise _binding_error(
            name,
            f"binding {name} does not support operation {operation}. supported operations:"
            + " ".join(HTTP_BINDING_OPERATIONS),
        )
    url = component.meta("url")
    if metadata.get("path"):
        url = url.rstrip("/") + "/" + metadata["path"].lstrip("/")
    verb = "POST" if operation == "create" else operation.upper()
    headers = {"Accept": "application/json; charset=utf-8"}
    if verb in _WITH_BODY:
        headers["Content-Type"] = "application/json; charset=utf-8"
    for key, value in metadata.items():
        if key[:1].isupper() and key[:1].isascii():  # 'A'..'Z', as the binding checks
            headers[key] = value
    error_if_not_2xx = component.meta("errorIfNot2XX", "true").lower() != "false"
    if metadata.get("errorIfNot2XX"):
        error_if_not_2xx = metadata["errorIfNot2XX"].lower() in ("1", "true", "t", "yes", "on")
    try:
        async with (
            aiohttp.ClientSession(timeout=_TIMEOUT, skip_auto_headers=("Content-Type",)) as s,
            s.request(
                verb, url, data=data if verb in _WITH_BODY else None, headers=headers
            ) as response,
        ):
            body = await response.read()
            answer = {"statusCode": str(response.status), "status": f"{response.status} "}
            answer["status"] += response.reason or status_text(response.status)
            for key in response.headers:
                answer[key] = ", ".join(response.headers.getall(key))
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _binding_error(name, f"{verb} {url!r}: {exc or type(exc).__name__}") from exc
    if error_if_not_2xx and response.status // 100 != 2:
        raise _binding_error(name, f"received status code {response.status}")
    return body, answer
