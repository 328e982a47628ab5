"""What reaches a host from outside (session 31 review, a dishonest peer's view).

Each test here failed on main for the reason its docstring gives."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from dapr.proto.runtime.v1 import appcallback_pb2
from google.protobuf import struct_pb2

from tests.test_events import TOPIC
from tests.test_events_bounds import _open
from tests.test_runtime_review_s28 import FakeContext, _bus, _servicer

_STATUS = appcallback_pb2.TopicEventResponse.TopicEventResponseStatus


def _event_with(message_id: str, extensions: dict[str, Any]) -> appcallback_pb2.TopicEventRequest:
    struct = struct_pb2.Struct()
    struct.update(extensions)
    return appcallback_pb2.TopicEventRequest(
        id=message_id,
        source="billing",
        type="com.dapr.event.sent",
        spec_version="1.0",
        data_content_type="application/json",
        data=b'{"order":7}',
        topic=TOPIC.replace("/", "."),
        pubsub_name="bus",
        extensions=struct,
    )


def test_cloudevent_extensions_that_are_not_json_do_not_crash_the_app_callback(
    tmp_path: Path,
) -> None:
    """A CloudEvent's extension attributes are whatever its publisher wrote; daprd passes
    them as a protobuf Struct, whose numbers may be NaN or Infinity. On main OnTopicEvent
    turned the whole Struct into a dict with json_format.MessageToDict, which raises
    ValueError for those: it escaped the servicer (gRPC UNKNOWN, a traceback per
    delivery, and daprd redelivering the poison message without end). Only ``time`` and
    ``subject`` are read now, each only as a string; other extensions are ignored and
    the message is taken."""

    async def main() -> None:
        host, _clock = await _open(tmp_path)
        try:
            servicer = _servicer(host)
            for message_id, extensions in (
                ("m-nan", {"traceparent": float("nan")}),
                ("m-inf", {"weight": float("inf"), "time": "2026-12-06T02:52:11Z"}),
                ("m-nested-nan", {"meta": {"deep": [1.0, float("-inf")]}}),
                ("m-subject-number", {"subject": float("nan")}),
                ("m-time-number", {"time": 1.5}),
            ):
                response = await servicer.OnTopicEvent(
                    _event_with(message_id, extensions), FakeContext()
                )
                assert response.status == _STATUS.SUCCESS, message_id
            kept = await _bus(host)
            assert {"m-nan", "m-inf", "m-nested-nan", "m-subject-number", "m-time-number"} <= set(
                kept
            )
            assert kept["m-subject-number"].subject == ""
        finally:
            await host.close()

    asyncio.run(main())


def test_a_message_on_an_unsubscribed_topic_is_logged_without_its_whole_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """On main a message on a topic the host does not subscribe to was logged with the
    topic and pub/sub names exactly as received: a publisher could write a megabyte of
    its own text into the host's log per message. They are shown cut now."""

    async def main() -> None:
        host, _clock = await _open(tmp_path)
        try:
            request = _event_with("m-1", {})
            request.topic = "t" * (1 << 20)
            request.pubsub_name = "p" * (1 << 20)
            with caplog.at_level(logging.WARNING):
                response = await _servicer(host).OnTopicEvent(request, FakeContext())
            assert response.status == _STATUS.DROP
            assert "not subscribed" in caplog.text
            assert len(caplog.text) < 2000
        finally:
            await host.close()

    asyncio.run(main())
