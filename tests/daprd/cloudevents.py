"""CloudEvents the way daprd wraps published data and unwraps it for subscribers.

Publishing (dapr/dapr ``pkg/runtime/pubsub/cloudevents.go`` NewCloudEvent, and
components-contrib ``pubsub/envelope.go``):

* ``data_content_type`` ``application/cloudevents+json``: the body *is* the event; it
  is parsed, ``topic`` and ``pubsubname`` are overwritten, ``time``, ``traceid`` /
  ``traceparent``, ``tracestate`` are added when absent, ``source`` (``Dapr``),
  ``type`` (``com.dapr.event.sent``) and ``specversion`` (``1.0``) are defaulted. A body
  that is not JSON is refused ("cannot create cloudevent", InvalidArgument).
* anything else: a new envelope ``{id: uuid4, source: <app id>, type:
  com.dapr.event.sent, specversion: 1.0, datacontenttype: <given or text/plain>, topic,
  pubsubname, traceid, traceparent, tracestate, time}``; the payload goes to ``data``
  as JSON when the content type is ``application/json`` (as a string if it does not
  parse), to ``data_base64`` for ``application/octet-stream``, else to ``data`` as text.
  Publish metadata ``cloudevent.id|source|type|subject|traceid|traceparent|tracestate``
  overrides those fields; ``ttlInSeconds`` adds ``expiration``; ``rawPayload=true``
  sends the bytes without an envelope.

Delivering (dapr/dapr ``pkg/runtime/pubsub/subscriptions.go``
GRPCEnvelopeFromSubscriptionMessage, ``pkg/runtime/subscription/subscription.go``):

* the stored event is decoded with Go's ``json.Unmarshal`` into ``map[string]any``, so
  every JSON number becomes a float64;
* ``TopicEventRequest.data`` is ``data_base64`` decoded; else, for text content types
  (``text/*``, ``application/xml``) the ``data`` string; for JSON and CloudEvent content
  types ``json.Marshal(data)`` — compact, map keys sorted, ``<``, ``>``, ``&`` escaped,
  numbers re-printed from float64; for any other content type, **empty**;
* ``extensions`` holds every field but id, source, type, specversion,
  datacontenttype, data and data_base64;
* raw-payload messages are wrapped on delivery (``FromRawPayload``): a fresh random
  id, ``application/octet-stream``, ``data_base64``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import math
import secrets
import time
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from dapr.proto.runtime.v1 import appcallback_pb2
from google.protobuf import json_format, struct_pb2

__all__ = [
    "CloudEventError",
    "go_json",
    "has_expired",
    "new_event",
    "raw_event",
    "topic_event_request",
]

DEFAULT_TYPE = "com.dapr.event.sent"
DEFAULT_SOURCE = "Dapr"
SPEC_VERSION = "1.0"
DEFAULT_CONTENT_TYPE = "text/plain"

_HEADER_FIELDS = frozenset(
    ("id", "source", "datacontenttype", "type", "specversion", "data", "data_base64")
)
_OVERRIDES = ("id", "traceid", "tracestate", "source", "type", "traceparent", "subject")


class CloudEventError(ValueError):
    """A body declared as a CloudEvent that is not a JSON object."""


def _is_content_type(content_type: str, expected: str) -> bool:
    lowered = content_type.lower()
    return lowered == expected or lowered.split(";", 1)[0] == expected


def is_json(content_type: str) -> bool:
    return _is_content_type(content_type, "application/json")


def is_cloudevent(content_type: str) -> bool:
    return _is_content_type(content_type, "application/cloudevents+json")


def is_binary(content_type: str) -> bool:
    return _is_content_type(content_type, "application/octet-stream")


def is_text(content_type: str) -> bool:
    return content_type.lower().startswith("text/") or _is_content_type(
        content_type, "application/xml"
    )


def _now_rfc3339() -> str:
    # Go's time.RFC3339 in the local zone: "Z" for UTC, else "+hh:mm".
    text = dt.datetime.now().astimezone().replace(microsecond=0).isoformat()
    return text.removesuffix("+00:00") + "Z" if text.endswith("+00:00") else text


def new_traceparent() -> str:
    """A W3C traceparent for an unsampled trace: daprd always stamps one on an event."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-00"


def new_event(
    *,
    app_id: str,
    pubsub_name: str,
    topic: str,
    data: bytes,
    data_content_type: str,
    metadata: Mapping[str, str],
    traceparent: str,
    tracestate: str = "",
) -> dict[str, Any]:
    """The envelope daprd publishes for ``PublishEvent`` (not raw payload)."""
    if is_cloudevent(data_content_type):
        try:
            event = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CloudEventError("cannot create cloudevent") from exc
        if not isinstance(event, dict):
            raise CloudEventError("cannot create cloudevent")
        event.setdefault("time", _now_rfc3339())
        if "traceid" not in event:
            event["traceid"] = traceparent
            event["traceparent"] = traceparent
        event.setdefault("tracestate", tracestate)
        event["topic"] = topic
        event["pubsubname"] = pubsub_name
        if event.get("source") is None:
            event["source"] = DEFAULT_SOURCE
        if event.get("type") is None:
            event["type"] = DEFAULT_TYPE
        if event.get("specversion") is None:
            event["specversion"] = SPEC_VERSION
        _apply_ttl(event, metadata)
        return event

    fields = {"id": "", "source": app_id, "type": "", "subject": ""}
    fields.update({"traceid": traceparent, "tracestate": tracestate, "traceparent": ""})
    # mapstructure.WeakDecode of the metadata onto the request: case-insensitive names.
    for key, value in metadata.items():
        lowered = key.lower()
        if lowered.startswith("cloudevent.") and lowered[len("cloudevent.") :] in _OVERRIDES:
            fields[lowered[len("cloudevent.") :]] = value
    if fields["traceparent"]:
        fields["traceid"] = fields["traceparent"]
    content_type = data_content_type or DEFAULT_CONTENT_TYPE
    event: dict[str, Any] = {
        "id": fields["id"] or str(uuid.uuid4()),
        "specversion": SPEC_VERSION,
        "datacontenttype": content_type,
        "source": fields["source"] or DEFAULT_SOURCE,
        "type": fields["type"] or DEFAULT_TYPE,
        "topic": topic,
        "pubsubname": pubsub_name,
        "traceid": fields["traceid"],
        "traceparent": fields["traceid"],
        "tracestate": fields["tracestate"],
        "time": _now_rfc3339(),
    }
    if is_json(content_type):
        try:
            event["data"] = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            event["data"] = data.decode("utf-8", "replace")
    elif is_binary(content_type):
        event["data_base64"] = base64.b64encode(data).decode("ascii")
    else:
        event["data"] = data.decode("utf-8", "replace")
    if fields["subject"]:
        event["subject"] = fields["subject"]
    _apply_ttl(event, metadata)
    return event


def _apply_ttl(event: dict[str, Any], metadata: Mapping[str, str]) -> None:
    # pubsub.ApplyMetadata: daprd stamps the expiration when the component has no TTL.
    for key, value in metadata.items():
        if key.lower() == "ttlinseconds" and value:
            expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=int(value))
            event["expiration"] = expires.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def raw_event(data: bytes, topic: str, pubsub_name: str) -> dict[str, Any]:
    """``FromRawPayload``: what a subscriber gets for a raw-payload message."""
    return {
        "id": str(uuid.uuid4()),
        "specversion": SPEC_VERSION,
        "datacontenttype": "application/octet-stream",
        "source": DEFAULT_SOURCE,
        "type": DEFAULT_TYPE,
        "topic": topic,
        "pubsubname": pubsub_name,
        "data_base64": base64.b64encode(data).decode("ascii"),
    }


def has_expired(event: Mapping[str, Any], now: float | None = None) -> bool:
    expiration = event.get("expiration")
    if not isinstance(expiration, str) or not expiration:
        return False
    try:
        when = dt.datetime.fromisoformat(expiration.replace("Z", "+00:00"))
    except ValueError:
        return False
    return when.timestamp() < (time.time() if now is None else now)


# --- Go's encoding/json, for the bytes a subscriber receives ------------------------


def _go_float(value: float) -> str:
    # encoding/json floatEncoder: 'f' format unless the magnitude is < 1e-6 or >= 1e21,
    # shortest representation that round-trips, exponent without a leading zero.
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"json: unsupported value: {value}")
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    shortest = Decimal(repr(value))
    magnitude = abs(value)
    if magnitude < 1e-6 or magnitude >= 1e21:
        sign, digits, exponent = shortest.normalize().as_tuple()
        assert isinstance(exponent, int)
        mantissa = str(digits[0]) + ("." + "".join(map(str, digits[1:])) if len(digits) > 1 else "")
        power = exponent + len(digits) - 1
        text = f"{'-' if sign else ''}{mantissa}e{'-' if power < 0 else '+'}{abs(power):02d}"
        if text[-4:-1] == "e-0":
            text = text[:-2] + text[-1]
        return text
    return format(shortest.normalize(), "f")


def _go_string(value: str) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def go_json(value: Any) -> str:
    """``json.Marshal`` of a value decoded by Go's ``json.Unmarshal`` into ``any``."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int | float):
        return _go_float(float(value))
    if isinstance(value, str):
        return _go_string(value)
    if isinstance(value, list):
        return "[" + ",".join(go_json(item) for item in value) + "]"
    if isinstance(value, dict):
        items = sorted(value.items())
        return "{" + ",".join(f"{_go_string(k)}:{go_json(v)}" for k, v in items) + "}"
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def _go_unmarshal(body: bytes) -> Any:
    # Go decodes numbers into float64 when the target is `any`.
    return json.loads(body, parse_int=float)


def topic_event_request(
    body: bytes, *, raw: bool, topic: str, pubsub_name: str
) -> appcallback_pb2.TopicEventRequest:
    """The ``TopicEventRequest`` a streaming subscriber receives for a stored message.

    Raises ValueError for an event daprd could not deliver (it would retry it)."""
    event: dict[str, Any] = raw_event(body, topic, pubsub_name) if raw else _go_unmarshal(body)

    def text(field: str) -> str:
        value = event.get(field)
        return value if isinstance(value, str) else ""

    request = appcallback_pb2.TopicEventRequest(
        id=text("id"),
        source=text("source"),
        type=text("type"),
        spec_version=text("specversion"),
        data_content_type=text("datacontenttype"),
        topic=topic,
        pubsub_name=pubsub_name,
        path="",
    )
    content_type = request.data_content_type
    if event.get("data_base64") is not None:
        encoded = event["data_base64"]
        if not isinstance(encoded, str):
            raise ValueError("unexpected data in envelope")
        try:
            request.data = base64.b64decode(encoded, validate=True)
        except binascii.Error as exc:
            raise ValueError(
                f"unable to base64 decode cloudEvent field data_base64: {exc}"
            ) from exc
    elif event.get("data") is not None:
        data = event["data"]
        if is_text(content_type):
            if not isinstance(data, str):
                raise ValueError("unexpected data in envelope")
            request.data = data.encode()
        elif is_json(content_type) or is_cloudevent(content_type):
            request.data = go_json(data).encode()
    extensions = {k: v for k, v in event.items() if k not in _HEADER_FIELDS}
    struct = struct_pb2.Struct()
    json_format.ParseDict(extensions, struct)
    request.extensions.CopyFrom(struct)
    return request
