"""The Dapr app callback for messages and calls: what the sidecar asks the gateway app.

* ``ListTopicSubscriptions``: the topics of ``dapr.subscribe`` on ``dapr.pubsub`` (Dapr
  topic names use ``.`` for ``/``, as the gateway's own events do). daprd asks once, when
  the app is up.
* ``OnTopicEvent``: a message on one of them. It is put on the host's durable bus
  (:meth:`gateway.runtime.events.Events.ingest`), then answered ``SUCCESS``; a message
  that breaks a bound is answered ``DROP`` (redelivering it cannot help); a bus or store
  that cannot take it now is answered ``RETRY``, and daprd tries again (its inbound retry
  policy); once those tries are over the message is redelivered only if the component
  keeps it pending, which pubsub.redis does when its ``processingTimeout`` is shorter
  than the tries (deploy/ sets both; docs/dapr.md, "Real daprd re-run, 2026-12-06"). A
  redelivered message the bus holds already is answered ``SUCCESS`` without a second
  wake.
* ``OnInvoke``: Dapr service invocation of the gateway app. Method ``call`` with the JSON
  body ``{"object": ID, "method": M, "tenant": T, "data": ...}`` reaches the same path
  as the ``Call`` RPC; the caller is the invoking app id daprd passes in the
  ``dapr-caller-app-id`` metadata (``<this trust domain>/dapr/<app id>`` in a
  ``call:`` capability). The reply is the answer as JSON.

The app channel listens on 127.0.0.1 only (gateway/runtime/dapr.py): only the local
sidecar reaches it, which is what makes its caller metadata worth believing.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from dapr.proto.common.v1 import common_pb2
from dapr.proto.runtime.v1 import appcallback_pb2, appcallback_pb2_grpc
from google.protobuf import empty_pb2, struct_pb2
from google.protobuf.any_pb2 import Any as AnyMessage

from gateway._decode import load_json
from gateway._time import truncate
from gateway.config import DaprConfig
from gateway.errors import ConfigError, GatewayError, LimitExceededError, StoreError
from gateway.limits import EARLIEST_TIME, LATEST_TIME, MAX_CALL_REQUEST_BYTES
from gateway.runtime.app_server import AppServer
from gateway.runtime.calls import Calls, caller_of_dapr_app
from gateway.runtime.events import Events, crash_after_ingest, new_message, parse_event_data
from gateway.transport.status import ERROR_TYPE_KEY, status_of

log = logging.getLogger(__name__)

CALLER_APP_ID = "dapr-caller-app-id"
_STATUS = appcallback_pb2.TopicEventResponse.TopicEventResponseStatus


def dapr_topic(topic: str) -> str:
    return topic.replace("/", ".")


#: How often a topic's RETRY answers are logged, at most (one line, with the count).
RETRY_LOG_SECONDS = 60.0


class _RetryLines:
    """A warning for a topic's RETRY answers at most once every :data:`RETRY_LOG_SECONDS`,
    naming how many were not logged since. daprd tries a message again about once a
    second and then redelivers it for as long as the bus or store cannot take it: a line
    per answer made the log as large as the publishers' rate. Topics are the configured
    subscriptions, so the entries are few."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._topics: dict[str, tuple[float, int]] = {}  #: topic -> (logged at, since)

    def retry(self, topic: str, message_id: str, reason: object) -> None:
        now = self._clock()
        logged, since = self._topics.get(topic, (float("-inf"), 0))
        if now - logged < RETRY_LOG_SECONDS:
            self._topics[topic] = (logged, since + 1)
            return
        self._topics[topic] = (now, 0)
        more = f" ({since} more RETRY answers on this topic since the last line)" if since else ""
        log.warning("message %s on %s: retry, %s%s", message_id[:64], topic, reason, more)


def servicer_base(
    *, dapr: DaprConfig, events: Events, calls: Calls, trust_domain: str
) -> type[appcallback_pb2_grpc.AppCallbackServicer]:
    """An AppCallback servicer class answering subscriptions, topic events and
    invocations; gateway/runtime/dapr.py adds the job callback to it."""
    topics = {dapr_topic(t): t for t in dapr.subscribe}
    retries = _RetryLines()

    class AppCallback(appcallback_pb2_grpc.AppCallbackServicer):
        async def ListTopicSubscriptions(
            self, request: empty_pb2.Empty, context: grpc.aio.ServicerContext
        ) -> appcallback_pb2.ListTopicSubscriptionsResponse:
            return appcallback_pb2.ListTopicSubscriptionsResponse(
                subscriptions=[
                    appcallback_pb2.TopicSubscription(pubsub_name=dapr.pubsub or "", topic=name)
                    for name in topics
                ]
            )

        async def OnTopicEvent(
            self, request: appcallback_pb2.TopicEventRequest, context: grpc.aio.ServicerContext
        ) -> appcallback_pb2.TopicEventResponse:
            topic = topics.get(request.topic)
            if topic is None or request.pubsub_name != dapr.pubsub:
                # Both names come from outside: shown cut, so a peer cannot fill the log.
                log.warning(
                    "a message on %r/%r, not subscribed",
                    request.pubsub_name[:80],
                    request.topic[:80],
                )
                return appcallback_pb2.TopicEventResponse(status=_STATUS.DROP)
            try:
                sent = _extension_text(request.extensions, "time")
                message = new_message(
                    topic,
                    data=parse_event_data(request.data, request.data_content_type),
                    message_id=request.id,
                    source=request.source or "dapr",
                    kind=request.type or "com.dapr.event.sent",
                    received=events.clock.now(),
                    sent=sent_time(sent) if sent is not None else None,
                    subject=(_extension_text(request.extensions, "subject") or "")[:256],
                )
            except GatewayError as exc:
                log.warning("dropping message %s on %s: %s", request.id[:64], topic, exc)
                return appcallback_pb2.TopicEventResponse(status=_STATUS.DROP)
            try:
                await events.ingest(message)
            except StoreError as exc:
                retries.retry(topic, request.id, exc)
                return appcallback_pb2.TopicEventResponse(status=_STATUS.RETRY)
            crash_after_ingest()  # kept, not yet acknowledged: daprd redelivers it
            return appcallback_pb2.TopicEventResponse(status=_STATUS.SUCCESS)

        async def OnInvoke(
            self, request: common_pb2.InvokeRequest, context: grpc.aio.ServicerContext
        ) -> common_pb2.InvokeResponse:
            try:
                metadata = dict(context.invocation_metadata() or ())
                app_id = metadata.get(CALLER_APP_ID)
                if not isinstance(app_id, str) or not app_id:
                    raise ConfigError(
                        "the invocation names no calling app",
                        hint="invoke the gateway app through a Dapr sidecar",
                    )
                if request.method != "call":
                    raise ConfigError(
                        f"the gateway app has no method {request.method[:64]!r}",
                        hint='invoke method "call" with {"object", "method", "tenant", "data"}',
                    )
                body = _invoke_body(request.data.value)
                result = await calls.call(
                    tenant=body.get("tenant") or "default",
                    object_id=body["object"],
                    method=body["method"],
                    data=json.dumps(body.get("data"), separators=(",", ":")).encode(),
                    caller=caller_of_dapr_app(trust_domain, app_id),
                    wait=timedelta(seconds=10),
                )
            except GatewayError as exc:
                log.info("OnInvoke refused: %s", exc)
                context.set_trailing_metadata(((ERROR_TYPE_KEY, type(exc).__name__),))
                await context.abort(status_of(exc), str(exc))
                raise AssertionError("abort raises") from exc
            return common_pb2.InvokeResponse(
                data=AnyMessage(value=result.encoded), content_type="application/json"
            )

    return AppCallback


def _extension_text(extensions: struct_pb2.Struct, name: str) -> str | None:
    """One CloudEvent extension attribute, if it is a string. The Struct holds whatever
    the publisher wrote: converting all of it (json_format.MessageToDict) raises
    ValueError on a NaN or an infinite number anywhere in it, and costs work for
    attributes the gateway never reads."""
    value = extensions.fields.get(name)
    if value is None or value.WhichOneof("kind") != "string_value":
        return None
    return value.string_value


#: RFC 3339 as CloudEvents ``time`` carries it: daprd writes Go's ``time.RFC3339``
#: (seconds, ``Z`` or ``+hh:mm``), the CloudEvents SDKs microseconds, Go's RFC3339Nano nine
#: digits. Bounded by its form (at most 41 characters).
_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})",
    re.ASCII,
)


def sent_time(text: str) -> datetime:
    """A message's CloudEvents ``time`` (RFC 3339, any offset) in UTC, to the millisecond;
    :class:`ConfigError` if it is not one between EARLIEST_TIME and LATEST_TIME."""
    match = _RFC3339.fullmatch(text)
    try:
        if match is None:
            raise ValueError("not of the form 2026-12-06T02:52:11Z")
        date, clock, fraction, offset = match.groups()
        zone = "+00:00" if offset in ("Z", "z") else offset
        micros = (fraction or "").ljust(6, "0")[:6]
        moment = datetime.fromisoformat(f"{date}T{clock}.{micros}{zone}").astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise ConfigError(
            f"the message time {text[:64]!r} is not an RFC 3339 time: {exc}",
            hint="CloudEvents time is RFC 3339, e.g. 2026-12-06T02:52:11Z",
        ) from exc
    if not EARLIEST_TIME <= moment <= LATEST_TIME:
        raise ConfigError(
            f"the message time {text[:64]!r} is outside {EARLIEST_TIME.year}-{LATEST_TIME.year}",
            hint="send the time the message was sent",
        )
    return truncate(moment)


def _invoke_body(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_CALL_REQUEST_BYTES + 4096:
        raise LimitExceededError(
            f"the invocation is {len(raw)} bytes; at most {MAX_CALL_REQUEST_BYTES}"
        )
    # The one parser for outside bytes: json.loads alone lets a long integer's ValueError
    # and a lone surrogate (which then fails as a store key) escape as non-GatewayErrors.
    body = load_json(raw, error=ConfigError, what="the invocation body")
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("object"), str)
        or not isinstance(body.get("method"), str)
        or not isinstance(body.get("tenant", ""), str)
    ):
        raise ConfigError(
            'the invocation body must be {"object": ID, "method": M, "tenant": T, "data": ...}'
        )
    return body


class AppCallbackServer(AppServer):
    """The app-callback server when the gateway does not run Dapr jobs (which serve the
    same servicer class, gateway/runtime/dapr.py)."""

    def __init__(
        self, servicer: type[appcallback_pb2_grpc.AppCallbackServicer], *, app_port: int
    ) -> None:
        super().__init__(app_port=app_port)
        self.servicer = servicer

    async def start(self, servicer: Any = None) -> int:
        return await super().start(servicer if servicer is not None else self.servicer())
