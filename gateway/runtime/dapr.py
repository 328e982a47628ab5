"""The gateway's live side on Dapr: events through pub/sub, cycles through the Jobs API.

Events. Outbox events (actions published, objects rehosted, migrations committed) are
delivered to a Dapr pub/sub component as CloudEvents 1.0 that the gateway builds itself
(``application/cloudevents+json``, which daprd passes through): the CloudEvent ``id`` is
the outbox key, so a subscriber can drop the duplicates at-least-once delivery brings.
Topic: the resource path with ``/`` as ``.`` (``pubsub:alerts/overdue`` → ``alerts.overdue``),
since not every broker accepts ``/`` in a topic name.

Jobs (why jobs and not actor reminders): a cycle is a stateless, idempotent trigger —
"evaluate this object if it is due" — which is what a job is; reminders would make every
object an actor with its own placement and turn-based locking, which the ETag-guarded
cycle does not need. Each ACTIVE cycling object has one job, ``cycle-<digest>``,
``@every <interval>``, carrying its tenant and id. Dapr's scheduler triggers it on one
replica of the app (``OnJobEventAlpha1`` on the app port), so cycles spread across
replicas and survive restarts of any of them; a trigger for an object that is no longer
ACTIVE here deletes its job.

The app-callback server listens on 127.0.0.1 only and without TLS, like every Dapr app
channel: only the local sidecar can reach it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import timedelta
from typing import Any

import grpc
from google.protobuf.any_pb2 import Any as AnyMessage

from gateway._time import format_time
from gateway.errors import StoreUnavailableError
from gateway.runtime.cycle import CycleResult, CycleRunner
from gateway.runtime.outbox import DeliveryError, Event

log = logging.getLogger(__name__)

CLOUDEVENT = "application/cloudevents+json"


def topic_of(event: Event) -> str:
    return event.target.replace("/", ".")


def cloudevent(event: Event, *, source: str) -> dict[str, Any]:
    kind = {"publish": "gateway.action.published", "invoke": "gateway.action.invoked"}.get(
        event.verb, f"gateway.{event.verb}"
    )
    return {
        "specversion": "1.0",
        "id": event.key,
        "source": source,
        "type": kind,
        "subject": event.object_id,
        "time": format_time(event.created_at),
        "datacontenttype": "application/json",
        "data": {
            "tenant": event.tenant,
            "object_id": event.object_id,
            "generation": event.generation,
            "rule": event.rule,
            "resource": event.resource,
            "payload": event.payload,
        },
    }


class DaprEventSink:
    """:class:`~gateway.runtime.outbox.EventSink` over a Dapr pub/sub component."""

    def __init__(self, client: Any, pubsub: str, *, source: str) -> None:
        self.client = client
        self.pubsub = pubsub
        self.source = source

    async def publish(self, event: Event) -> None:
        body = json.dumps(cloudevent(event, source=self.source), separators=(",", ":"))
        try:
            await self.client.publish_event(
                pubsub_name=self.pubsub,
                topic_name=topic_of(event),
                data=body,
                data_content_type=CLOUDEVENT,
            )
        except Exception as exc:
            raise DeliveryError(
                f"Dapr pub/sub {self.pubsub!r} refused the event: {str(exc)[:200]}"
            ) from exc


def job_name(tenant: str, object_id: str) -> str:
    return "cycle-" + hashlib.sha256(f"{tenant}/{object_id}".encode()).hexdigest()[:32]


def go_duration(interval: timedelta) -> str:
    """A Go duration string (what ``@every`` takes), in whole milliseconds."""
    return f"{max(1, round(interval.total_seconds() * 1000))}ms"


class DaprJobs:
    """Schedules and serves the cycle jobs of this app."""

    def __init__(self, client: Any, runner: CycleRunner, *, app_port: int) -> None:
        self.client = client
        self.runner = runner
        self.app_port = app_port
        self._server: grpc.aio.Server | None = None

    async def schedule(self, tenant: str, object_id: str, interval: timedelta) -> None:
        from dapr.clients.grpc._jobs import Job

        payload = AnyMessage(value=json.dumps({"tenant": tenant, "object_id": object_id}).encode())
        job = Job(
            name=job_name(tenant, object_id),
            schedule=f"@every {go_duration(interval)}",
            data=payload,
        )
        try:
            await self.client.schedule_job(job, overwrite=True)
        except Exception as exc:
            raise StoreUnavailableError(
                f"could not schedule the cycle of {object_id} with Dapr: {exc}"
            ) from exc

    async def unschedule(self, tenant: str, object_id: str) -> None:
        try:
            await self.client.delete_job(job_name(tenant, object_id))
        except Exception as exc:
            log.info("deleting the job of %s: %s", object_id, exc)

    async def trigger(self, data: bytes) -> None:
        """One job trigger: run the object's cycle if it is due; forget it if it left."""
        target = json.loads(data)
        tenant, object_id = target["tenant"], target["object_id"]
        report = await self.runner.run(tenant, object_id)
        if report.result is CycleResult.SKIPPED and report.cycle is None:
            await self.unschedule(tenant, object_id)

    async def start(self) -> int:
        from dapr.proto.runtime.v1 import appcallback_pb2, appcallback_pb2_grpc

        jobs = self

        class Callback(appcallback_pb2_grpc.AppCallbackAlphaServicer):
            async def OnJobEventAlpha1(
                self, request: appcallback_pb2.JobEventRequest, context: grpc.aio.ServicerContext
            ) -> appcallback_pb2.JobEventResponse:
                try:
                    await jobs.trigger(request.data.value)
                except Exception:
                    log.exception("job %s failed", request.name)
                    await context.abort(
                        grpc.StatusCode.INTERNAL, "cycle failed; see the gateway log"
                    )
                return appcallback_pb2.JobEventResponse()

        server = grpc.aio.server()
        appcallback_pb2_grpc.add_AppCallbackAlphaServicer_to_server(Callback(), server)  # type: ignore[no-untyped-call]
        port = server.add_insecure_port(f"127.0.0.1:{self.app_port}")
        await server.start()
        self._server = server
        return int(port)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=1.0)
            self._server = None
