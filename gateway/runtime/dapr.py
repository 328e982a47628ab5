"""The gateway's live side on Dapr: events through pub/sub, cycles through the Jobs API.

Events. Outbox events (actions published, objects rehosted, migrations committed) are
delivered to a Dapr pub/sub component as CloudEvents 1.0 built by the CloudEvents SDK
(structured ``application/cloudevents+json``, which daprd passes through): the CloudEvent ``id`` is
the outbox key, so a subscriber can drop the duplicates at-least-once delivery brings.
Topic: the resource path with ``/`` as ``.`` (``pubsub:alerts/overdue`` → ``alerts.overdue``),
since not every broker accepts ``/`` in a topic name.

Jobs (why jobs and not actor reminders): a cycle is a stateless, idempotent trigger —
"evaluate this object if it is due" — which is what a job is; reminders would make every
object an actor with its own placement and turn-based locking, which the ETag-guarded
cycle does not need. Each ACTIVE cycling object has one job, ``cycle-<digest>``,
``@every <interval>``, carrying its tenant and id. Dapr's scheduler triggers it on one
replica of the app (the stable ``AppCallback.OnJobEvent`` on the app port), so cycles
spread across replicas and survive restarts of any of them; a trigger for an object that
is no longer ACTIVE here deletes its job.

A job is created once and never overwritten while its schedule is right: overwriting
restarts an ``@every`` schedule from now, so re-creating jobs periodically (the gateway
reconciles them to bring back lost ones) would keep a cycle longer than the
reconciliation period from ever firing. Each Jobs API call is bounded by
:data:`JOB_CALL_TIMEOUT`: daprd itself waits up to 30 s for a scheduler it cannot reach.

The app-callback server listens on 127.0.0.1 only and without TLS, like every Dapr app
channel: only the local sidecar can reach it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf.any_pb2 import Any as AnyMessage

from gateway._decode import load_json
from gateway._time import format_time
from gateway.errors import ConfigError, EnvelopeTooLargeError, StoreUnavailableError
from gateway.limits import MAX_ID_BYTES, MAX_TENANT_CHARS, check_id, check_text
from gateway.runtime.app_server import AppServer
from gateway.runtime.cycle import CycleResult, CycleRunner
from gateway.runtime.outbox import DeliveryError, Event

if TYPE_CHECKING:
    from cloudevents.core.v1.event import CloudEvent

log = logging.getLogger(__name__)

_T = TypeVar("_T")

CLOUDEVENT = "application/cloudevents+json"


def topic_of(event: Event) -> str:
    return event.target.replace("/", ".")


def cloudevent(event: Event, *, source: str) -> CloudEvent:
    """The CloudEvent 1.0 of an outbox event, built and validated by the CloudEvents SDK
    (``cloudevents``): its ``id`` is the outbox key, the idempotency key."""
    from cloudevents.core.v1.event import CloudEvent

    kind = {"publish": "gateway.action.published", "invoke": "gateway.action.invoked"}.get(
        event.verb, f"gateway.{event.verb}"
    )
    return CloudEvent(
        attributes={
            "specversion": "1.0",
            "id": event.key,
            "source": source,
            "type": kind,
            "subject": event.object_id,
            "time": event.created_at,
            "datacontenttype": "application/json",
        },
        data={
            "tenant": event.tenant,
            "object_id": event.object_id,
            "generation": event.generation,
            "rule": event.rule,
            "resource": event.resource,
            "payload": event.payload,
        },
    )


def structured(event: CloudEvent) -> bytes:
    """The event in the structured JSON format (``application/cloudevents+json``)."""
    from cloudevents.core.formats.json import JSONFormat

    return JSONFormat().write(event)


class DaprEventSink:
    """:class:`~gateway.runtime.outbox.EventSink` over a Dapr pub/sub component."""

    def __init__(self, client: Any, pubsub: str, *, source: str) -> None:
        self.client = client
        self.pubsub = pubsub
        self.source = source

    async def publish(self, event: Event) -> None:
        body = structured(cloudevent(event, source=self.source))
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


#: Largest job payload read: the ``{"tenant", "object_id"}`` :meth:`DaprJobs.schedule`
#: writes, with room for the longest tenant and object id.
MAX_JOB_DATA_BYTES = 4096 + MAX_ID_BYTES


def job_target(data: bytes) -> tuple[str, str]:
    """The tenant and object id a job trigger carries, or :class:`ConfigError`. Whoever
    can reach this app's sidecar can schedule a job for it: its data is read as outside
    bytes (the one JSON parser, bounded, exactly the two strings schedule writes)."""
    if len(data) > MAX_JOB_DATA_BYTES:
        raise ConfigError(
            f"a job's data is {len(data)} bytes; at most {MAX_JOB_DATA_BYTES}",
            hint="cycle jobs are scheduled by the gateway itself; delete jobs it did not make",
        )
    target = load_json(data, error=ConfigError, what="a job's data")
    if (
        not isinstance(target, dict)
        or set(target) != {"tenant", "object_id"}
        or not isinstance(target["tenant"], str)
        or not isinstance(target["object_id"], str)
    ):
        raise ConfigError(
            'a job\'s data is not {"tenant": T, "object_id": ID}',
            hint="cycle jobs are scheduled by the gateway itself; delete jobs it did not make",
        )
    tenant, object_id = target["tenant"], target["object_id"]
    try:
        check_text(tenant, limit=MAX_TENANT_CHARS, what="a job's tenant")
        check_id(object_id, what="a job's object id")
    except EnvelopeTooLargeError as exc:
        raise ConfigError(exc.reason, hint=exc.hint) from exc
    return tenant, object_id


#: Seconds one Jobs API call may take before the scheduler counts as unreachable. daprd
#: waits up to 30 s for its scheduler connection (pkg/api/universal/jobs.go); a job is not
#: worth holding an activation or a reconciliation pass that long, and a missed one is
#: made again at the next reconciliation.
JOB_CALL_TIMEOUT = 5.0


#: A failed trigger (the app unreachable, or the cycle failed) is tried again this many
#: times, this many seconds apart. The scheduler's default is 3 times 1 s; a replica
#: whose gateway died is detached by daprd's app health probe only after 2 failed probes
#: a second apart (deploy/), so 5 retries outlast that and the last ones reach a live
#: replica. A cycle that already ran finds its object not due and does nothing.
TRIGGER_RETRIES = 5
TRIGGER_RETRY_SECONDS = 1


class SchedulerUnavailableError(StoreUnavailableError):
    """The sidecar did not get a Jobs API call through to Dapr's scheduler in time."""


class DaprJobs:
    """Schedules and serves the cycle jobs of this app."""

    def __init__(
        self,
        client: Any,
        runner: CycleRunner,
        *,
        app_port: int,
        call_timeout: float = JOB_CALL_TIMEOUT,
    ) -> None:
        self.client = client
        self.runner = runner
        self.app_port = app_port
        self.call_timeout = call_timeout
        self._app = AppServer(app_port=app_port)
        #: The servicer the job callback is added to: gateway/runtime/appcallback.py sets
        #: one that also answers subscriptions, topic events and invocations.
        self.servicer_base: type[Any] | None = None

    @property
    def accepting(self) -> bool:
        """What daprd's app health probe answers (gateway.runtime.app_server)."""
        return self._app.accepting

    def stop_accepting(self) -> None:
        """Fail daprd's app health probe: the sidecar stops taking job triggers for this
        replica (a draining replica hands its cycles to the others)."""
        self._app.stop_accepting()

    async def _call(self, what: str, call: Awaitable[_T]) -> _T:
        try:
            return await asyncio.wait_for(call, self.call_timeout)
        except TimeoutError as exc:
            raise SchedulerUnavailableError(
                f"Dapr's scheduler did not answer {what} within {self.call_timeout:g} s",
                hint="check that the scheduler runs and daprd's --scheduler-host-address "
                "points at it; cycles resume once it answers",
            ) from exc

    async def schedule(self, tenant: str, object_id: str, interval: timedelta) -> None:
        """Make sure the object's job exists with this interval, without resetting a job
        that already has it (which would push its next trigger a full interval away)."""
        from dapr.clients.grpc._jobs import ConstantFailurePolicy, Job

        # Imported here: gateway.stores.dapr imports the SDK lazily too.
        from gateway.stores.dapr import status_code

        name = job_name(tenant, object_id)
        payload = AnyMessage(value=json.dumps({"tenant": tenant, "object_id": object_id}).encode())
        job = Job(
            name=name,
            schedule=f"@every {go_duration(interval)}",
            data=payload,
            failure_policy=ConstantFailurePolicy(
                max_retries=TRIGGER_RETRIES, interval_seconds=TRIGGER_RETRY_SECONDS
            ),
        )
        try:
            try:
                await self._call(f"scheduling {name}", self.client.schedule_job(job))
                return
            except SchedulerUnavailableError:
                raise
            except Exception as exc:
                if status_code(exc) is not grpc.StatusCode.ALREADY_EXISTS:
                    raise
            existing = await self._call(f"reading {name}", self.client.get_job(name))
            if existing.schedule == job.schedule:
                return  # the job is right: leave its next due time alone
            await self._call(f"rescheduling {name}", self.client.schedule_job(job, overwrite=True))
        except StoreUnavailableError:
            raise
        except Exception as exc:
            raise StoreUnavailableError(
                f"could not schedule the cycle of {object_id} with Dapr: {exc}"
            ) from exc

    async def schedule_or_log(self, tenant: str, object_id: str, interval: timedelta) -> bool:
        """:meth:`schedule`, reporting a failure in the log instead of raising (for
        background scheduling; the next reconciliation makes the job)."""
        try:
            await self.schedule(tenant, object_id, interval)
        except StoreUnavailableError as exc:
            log.warning("the cycle of %s is not scheduled yet: %s", object_id, exc)
            return False
        return True

    async def unschedule(self, tenant: str, object_id: str) -> None:
        try:
            await self._call("deleting a job", self.client.delete_job(job_name(tenant, object_id)))
        except Exception as exc:
            log.info("deleting the job of %s: %s", object_id, exc)

    async def trigger(self, data: bytes) -> None:
        """One job trigger: run the object's cycle if it is due; forget it if it left."""
        tenant, object_id = job_target(data)
        report = await self.runner.run(tenant, object_id)
        if report.result is CycleResult.EVALUATED and report.cycle is not None:
            # One line per cycle this replica ran: with several replicas of one host, the
            # logs say which replica evaluated which generation.
            due = report.cycle.next_due
            log.info(
                "cycle evaluated: %s %s generation %d next due %s",
                tenant,
                object_id,
                report.cycle.generation,
                format_time(due) if due is not None else "-",
            )
        if report.result is CycleResult.SKIPPED and report.cycle is None:
            await self.unschedule(tenant, object_id)

    async def start(self) -> int:
        from dapr.proto.runtime.v1 import appcallback_pb2, appcallback_pb2_grpc

        jobs = self

        # The stable callback (Dapr >= 1.18 calls it first and falls back to
        # AppCallbackAlpha.OnJobEventAlpha1 only when it is unimplemented). The other
        # AppCallback methods answer UNIMPLEMENTED, which daprd reads as "no
        # subscriptions, no bindings".
        base = self.servicer_base or appcallback_pb2_grpc.AppCallbackServicer

        class Callback(base):  # type: ignore[valid-type,misc]
            async def OnJobEvent(
                self, request: appcallback_pb2.JobEventRequest, context: grpc.aio.ServicerContext
            ) -> appcallback_pb2.JobEventResponse:
                try:
                    await jobs.trigger(request.data.value)
                except ConfigError as exc:  # a job whose data no retry can mend
                    log.warning("job %r refused: %s", request.name[:80], exc)
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                except Exception:
                    log.exception("job %s failed", request.name)
                    await context.abort(
                        grpc.StatusCode.INTERNAL, "cycle failed; see the gateway log"
                    )
                return appcallback_pb2.JobEventResponse()

        return await self._app.start(Callback())

    async def stop(self) -> None:
        await self._app.stop()
