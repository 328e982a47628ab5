"""An outbox event's bytes: :meth:`Event.encode` writes the canonical JSON of its
document field by field; these hold it to the canonical encoder, byte for byte, for any
field values (and the fallback for values of other types)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway._time import format_time
from gateway.runtime.outbox import Event

_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def _reference(event: Event) -> bytes:
    """What an event encoded to before the field-by-field path: its document through
    the canonical encoder."""
    return _CANONICAL.encode(
        {
            "tenant": event.tenant,
            "object_id": event.object_id,
            "generation": event.generation,
            "rule": event.rule,
            "verb": event.verb,
            "resource": event.resource,
            "payload": event.payload,
            "created_at": format_time(event.created_at),
            "status": event.status,
            "attempts": event.attempts,
            "last_error": event.last_error,
        }
    ).encode("utf-8")


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
_TIMES = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)


@settings(max_examples=300, deadline=None)
@given(
    texts=st.lists(st.text(), min_size=7, max_size=7),
    generation=st.integers(min_value=0, max_value=2**70),
    attempts=st.integers(min_value=0, max_value=2**20),
    payload=_JSON,
    created_at=_TIMES,
)
def test_encode_is_the_canonical_json_of_the_document(
    texts: list[str], generation: int, attempts: int, payload: object, created_at: datetime
) -> None:
    tenant, object_id, rule, verb, resource, status, last_error = texts
    event = Event(
        key="k",
        tenant=tenant,
        object_id=object_id,
        generation=generation,
        rule=rule,
        verb=verb,
        resource=resource,
        payload=payload,
        created_at=created_at,
        status=status,
        attempts=attempts,
        last_error=last_error,
    )
    assert event.encode() == _reference(event)
    assert Event.decode("k", event.encode()).encode() == event.encode()  # times: to the ms


def _event(**changes: object) -> Event:
    fields: dict[str, object] = {
        "key": "default/obj/000000000001/000",
        "tenant": "default",
        "object_id": "obj://org-a.example/billing/invoice-42",
        "generation": 1,
        "rule": "overdue",
        "verb": "publish",
        "resource": "pubsub:alerts/overdue",
        "payload": {"invoice": 42, "note": "é\u2028\x00"},
        "created_at": datetime(2026, 12, 6, 13, 0, 0, 123456, tzinfo=UTC),
    }
    fields.update(changes)
    return Event(**fields)  # type: ignore[arg-type]


def test_values_of_other_types_take_the_encoders_path() -> None:
    """A time in another zone, a bool generation, a str subclass: the same bytes as
    the encoder gives (the field-by-field path takes only the declared types)."""

    class Name(str):
        pass

    for event in (
        _event(created_at=datetime(2026, 12, 6, 14, 0, tzinfo=timezone(timedelta(hours=1)))),
        _event(generation=True),
        _event(tenant=Name("default")),
        _event(payload=[1.5, None, {"b": 1, "a": [True]}]),
    ):
        assert event.encode() == _reference(event)


def test_a_known_event_encodes_to_known_bytes() -> None:
    assert _event().encode() == (
        b'{"attempts":0,"created_at":"2026-12-06T13:00:00.123Z","generation":1,'
        b'"last_error":"","object_id":"obj://org-a.example/billing/invoice-42",'
        b'"payload":{"invoice":42,"note":"\\u00e9\\u2028\\u0000"},'
        b'"resource":"pubsub:alerts/overdue","rule":"overdue","status":"pending",'
        b'"tenant":"default","verb":"publish"}'
    )
