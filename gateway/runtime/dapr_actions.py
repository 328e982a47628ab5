"""Admitted actions carried out through the Dapr sidecar: service invocation and output
bindings.

Invariants this module keeps:

* **One idempotency key per action occurrence.** Every delivery of an outbox event sends
  the event's key (``<tenant>/<object>/<generation>/<n>``, or the wake's key for a
  message-triggered action): as the ``Idempotency-Key`` header of a service invocation
  (daprd forwards the caller's headers to the callee) and as the ``Idempotency-Key``
  metadata of a binding invocation (``bindings.http`` sends metadata keys that start with
  a capital letter as request headers; other bindings see it as metadata). A redelivery
  — after a crash between delivery and the outbox's "delivered" mark, or daprd's own
  retry of a transient failure — carries the same key, so a receiver that de-duplicates
  on it performs the effect once.
* **Nothing here decides.** Admission happened when the event was written (the cycle's
  transaction); a refusal by the sidecar is a :class:`~gateway.runtime.outbox.DeliveryError`
  that the dispatcher retries with backoff and, after its last attempt, records as failed.

Service invocation uses daprd's HTTP API, ``POST /v1.0/invoke/<app id>/method/<method>``:
gRPC ``InvokeService`` is deprecated in daprd (``pkg/api/grpc/grpc.go``: "use proxy mode
instead") and in the Python SDK (a ``DeprecationWarning`` on each call), and the HTTP path
passes the callee's status code through, so a receiver's refusal is seen as such. The app
id is anything daprd resolves: another Dapr app, an ``HTTPEndpoint`` resource, or a URL.
"""

from __future__ import annotations

import json
import urllib.parse
from datetime import timedelta
from typing import Any

from gateway.runtime.outbox import DeliveryError, Event

#: The header (service invocation) and metadata key (bindings) carrying the event key.
IDEMPOTENCY_KEY = "Idempotency-Key"
#: Metadata naming the object that acted, for receivers that log or route by it.
OBJECT_KEY = "Gateway-Object"
#: Characters of a sidecar's error shown in a delivery error (the rest is cut).
_SHOWN = 300
#: Bytes of an error answer read at most: the callee chooses its size, we only show a line.
MAX_ERROR_BODY = 4096


def sidecar_api_url(http_endpoint: str | None) -> str:
    """The sidecar's HTTP API base (``http://127.0.0.1:3500/v1.0``), found as the SDK finds
    it: ``http_endpoint`` if given, else ``DAPR_HTTP_ENDPOINT`` / ``DAPR_HTTP_PORT``."""
    from gateway.stores.dapr import _health_url

    return _health_url(http_endpoint).removesuffix("/healthz/outbound")


def _body(event: Event) -> bytes:
    return json.dumps(event.payload, separators=(",", ":")).encode("utf-8")


def _dapr_reason(status: int, text: str) -> str:
    """daprd's error body (``{"errorCode": ..., "message": ...}``) in one line, else the
    callee's answer as it came."""
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):  # 4 KiB of "[" nest past the parser's recursion
        document = None
    if isinstance(document, dict) and "errorCode" in document:
        return f"HTTP {status} {document.get('errorCode')}: {str(document.get('message'))[:_SHOWN]}"
    shown = " ".join(text.split())[:_SHOWN]
    return f"HTTP {status}" + (f": {shown}" if shown else "")


class DaprInvoker:
    """:class:`~gateway.runtime.outbox.Invoker` through Dapr service invocation."""

    def __init__(self, api_url: str, *, timeout: timedelta = timedelta(seconds=10)) -> None:
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout

    def url_of(self, target: str) -> str:
        app, _, method = target.partition("/")
        quoted = "/".join(urllib.parse.quote(part, safe="") for part in method.split("/"))
        return f"{self.api_url}/invoke/{urllib.parse.quote(app, safe='')}/method/{quoted}"

    async def invoke(self, event: Event) -> None:
        import aiohttp
        from dapr.conf import settings

        url = self.url_of(event.target)
        headers = {
            "Content-Type": "application/json",
            IDEMPOTENCY_KEY: event.key,
            OBJECT_KEY: event.object_id,
        }
        token = settings.DAPR_API_TOKEN
        if token:
            headers["dapr-api-token"] = token
        try:
            async with (
                aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=self.timeout.total_seconds())
                ) as session,
                session.post(url, data=_body(event), headers=headers) as response,
            ):
                if response.status >= 300:
                    raw = await response.content.read(MAX_ERROR_BODY)
                    text = raw.decode("utf-8", "replace")
                    raise DeliveryError(
                        f"Dapr service invocation of {event.target} answered "
                        f"{_dapr_reason(response.status, text)}",
                        hint="daprd resolves the app id (another Dapr app, an HTTPEndpoint "
                        "resource or a URL); check that it exists and accepts the method",
                    )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DeliveryError(
                f"Dapr service invocation of {event.target}: {type(exc).__name__}: {exc}",
                hint="check that the sidecar runs and DAPR_HTTP_ENDPOINT points at it",
            ) from exc


class DaprBindings:
    """Carries out ``binding:<name>/<operation>`` actions with daprd's ``InvokeBinding``."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def invoke(self, event: Event) -> None:
        name, _, operation = event.target.partition("/")
        try:
            await self.client.invoke_binding(
                binding_name=name,
                operation=operation,
                data=_body(event),
                binding_metadata={IDEMPOTENCY_KEY: event.key, OBJECT_KEY: event.object_id},
            )
        except Exception as exc:  # the SDK raises grpc errors wrapped in its own types
            raise DeliveryError(
                f"Dapr output binding {name!r} refused {operation!r}: {str(exc)[:_SHOWN]}",
                hint="check the binding component's name, type and supported operations",
            ) from exc
