"""The events contract: what the gateway publishes through Dapr pub/sub, as a subscriber
of that pub/sub component sees it.

By default the sidecar is the stand-in (tests/daprd), a fresh one per test. With
``DAPR_GRPC_ENDPOINT`` (and ``DAPR_HTTP_ENDPOINT``) set, the same tests run unchanged
against that real sidecar's ``DAPR_PUBSUB`` component (default ``pubsub``); each test uses
topics of its own (a random suffix), so leftovers of other runs are never read.

The subscriber is the SDK's streaming subscription, the way a consumer of gateway events
would read them. Checked: the CloudEvent is the gateway's own (daprd passes
``application/cloudevents+json`` through), its ``id`` is the outbox key so duplicates of
at-least-once delivery can be dropped, topics are the resource path with ``.``, lifecycle
events have their own topics, and a refused publish is a DeliveryError naming the
component (the dispatcher retries it; nothing is lost).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from dapr.aio.clients import DaprClient

from gateway._time import truncate
from gateway.runtime.dapr import DaprEventSink, topic_of
from gateway.runtime.outbox import DeliveryError, Event, event_key, lifecycle_event
from tests.daprd.components import pubsub
from tests.daprd.runner import DaprdThread

REAL_SIDECAR = os.environ.get("DAPR_GRPC_ENDPOINT")
PUBSUB = os.environ.get("DAPR_PUBSUB", "pubsub")
SOURCE = "spiffe://org-a.example/cluster/east/gateway"
OBJECT = "obj://org-a.example/billing/invoice-7"


@pytest.fixture
def grpc_endpoint(tmp_path: Path) -> Iterator[str]:
    if REAL_SIDECAR:
        yield REAL_SIDECAR
        return
    with (
        DaprdThread(
            app_id="events-contract", db=tmp_path / "daprd.db", components=[pubsub(PUBSUB)]
        ) as addresses,
        pytest.MonkeyPatch.context() as patch,
    ):
        # The SDK waits on the HTTP health endpoint it finds through the environment.
        for name, value in addresses.env().items():
            patch.setenv(name, value)
        yield addresses.grpc_endpoint


def action(topic: str, generation: int, payload: Any, *, index: int = 0) -> Event:
    return Event(
        key=event_key("default", OBJECT, generation, index),
        tenant="default",
        object_id=OBJECT,
        generation=generation,
        rule="overdue",
        verb="publish",
        resource=f"pubsub:{topic}",
        payload=payload,
        created_at=truncate(datetime.now(UTC)),
    )


async def receive(subscription: Any, count: int) -> list[Any]:
    messages = []
    for _ in range(count):
        message = await asyncio.wait_for(subscription.next_message(), 10)
        assert message is not None, "the subscription ended before the event arrived"
        messages.append(message)
        await subscription.respond_success(message)
    return messages


def run(endpoint: str, scenario: Any) -> None:
    async def main() -> None:
        async with DaprClient(address=endpoint) as client:
            await scenario(client)

    asyncio.run(main())


def test_an_action_arrives_as_the_gateways_own_cloudevent(grpc_endpoint: str) -> None:
    topic = f"alerts/contract-{uuid.uuid4().hex[:12]}"
    event = action(topic, 41, {"invoice": "INV-7", "amount": 1250, "note": "<late> & due"})

    async def scenario(client: DaprClient) -> None:
        subscription = await client.subscribe(PUBSUB, topic_of(event))
        try:
            await DaprEventSink(client, PUBSUB, source=SOURCE).publish(event)
            (message,) = await receive(subscription, 1)
        finally:
            await subscription.close()
        assert message.topic() == topic.replace("/", ".")
        assert message.pubsub_name() == PUBSUB
        assert message.id() == event.key  # the outbox key: the idempotency key
        assert message.source() == SOURCE
        assert message.type() == "gateway.action.published"
        assert message.spec_version() == "1.0"
        assert message.extensions()["subject"] == OBJECT
        # RFC 3339 as the CloudEvents SDK writes it (microseconds): the same instant.
        sent = message.extensions()["time"]
        assert datetime.fromisoformat(sent.replace("Z", "+00:00")) == event.created_at, sent
        assert message.data_content_type() == "application/json"
        assert message.data() == {
            "tenant": "default",
            "object_id": OBJECT,
            "generation": 41,
            "rule": "overdue",
            "resource": f"pubsub:{topic}",
            "payload": {"invoice": "INV-7", "amount": 1250, "note": "<late> & due"},
        }

    run(grpc_endpoint, scenario)


def test_a_redelivered_event_keeps_its_id_so_subscribers_can_drop_it(grpc_endpoint: str) -> None:
    topic = f"alerts/dup-{uuid.uuid4().hex[:12]}"
    first, second = action(topic, 7, {"n": 1}), action(topic, 7, {"n": 2}, index=1)

    async def scenario(client: DaprClient) -> None:
        sink = DaprEventSink(client, PUBSUB, source=SOURCE)
        subscription = await client.subscribe(PUBSUB, topic_of(first))
        try:
            # The dispatcher publishes again when it cannot record the first delivery.
            for event in (first, first, second):
                await sink.publish(event)
            messages = await receive(subscription, 3)
        finally:
            await subscription.close()
        ids = [m.id() for m in messages]
        assert sorted(ids) == sorted([first.key, first.key, second.key])
        unique = {m.id(): m.data()["payload"] for m in messages}
        assert unique == {first.key: {"n": 1}, second.key: {"n": 2}}

    run(grpc_endpoint, scenario)


def test_lifecycle_events_go_to_their_own_topics(grpc_endpoint: str) -> None:
    suffix = uuid.uuid4().hex[:12]
    at = truncate(datetime.now(UTC))
    rehosted = lifecycle_event(
        "object.rehosted",
        tenant="default",
        object_id=f"{OBJECT}-{suffix}",
        epoch=3,
        generation=12,
        payload={"from": SOURCE},
        at=at,
    )

    async def scenario(client: DaprClient) -> None:
        assert topic_of(rehosted) == "objects"
        subscription = await client.subscribe(PUBSUB, "objects")
        try:
            await DaprEventSink(client, PUBSUB, source=SOURCE).publish(rehosted)
            # A real broker's "objects" topic holds every earlier run's lifecycle events
            # that nobody consumed (hundreds, after a day of gateway tests on the same
            # sidecar): drain them, acknowledged, until ours comes, within a time budget.
            deadline = asyncio.get_running_loop().time() + 60
            while True:
                (message,) = await receive(subscription, 1)
                if message.id() == rehosted.key:
                    break
                if asyncio.get_running_loop().time() > deadline:
                    raise AssertionError(f"{rehosted.key} never arrived on 'objects'")
        finally:
            await subscription.close()
        assert message.type() == "gateway.object.rehosted"
        assert message.extensions()["subject"] == rehosted.object_id
        assert message.data()["payload"] == {"from": SOURCE}
        assert message.data()["generation"] == 12

    run(grpc_endpoint, scenario)


def test_a_publish_the_sidecar_refuses_is_a_delivery_error_naming_the_component(
    grpc_endpoint: str,
) -> None:
    event = action(f"alerts/refused-{uuid.uuid4().hex[:12]}", 1, {"n": 1})
    missing = f"no-such-pubsub-{uuid.uuid4().hex[:8]}"

    async def scenario(client: DaprClient) -> None:
        with pytest.raises(DeliveryError) as refused:
            await DaprEventSink(client, missing, source=SOURCE).publish(event)
        assert f"Dapr pub/sub {missing!r} refused the event" in str(refused.value)
        assert missing in str(refused.value).split("refused the event:", 1)[1]  # daprd's words

    run(grpc_endpoint, scenario)
