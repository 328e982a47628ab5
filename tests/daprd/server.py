"""The stand-in sidecar: daprd's gRPC API subset and its HTTP health endpoints.

See the package docstring (``tests/daprd/__init__.py``) for the list of daprd behaviours
kept here and where each is documented. Structure:

* :class:`Daprd` owns one :class:`~tests.daprd.storage.Storage` (on a one-thread
  executor, so the event loop never waits on an fsync), a ``grpc.aio`` server with
  :class:`DaprApi`, an aiohttp server for ``/v1.0/healthz[/outbound]``, and the job
  trigger loop that calls the app back on ``127.0.0.1:<app port>``.
* Errors are raised as :class:`DaprError` and sent the way daprd sends them: the gRPC
  code and message of ``pkg/api/errors`` plus a ``google.rpc.Status`` in
  ``grpc-status-details-bin`` carrying an ``ErrorInfo`` (domain ``dapr.io``, the reason
  daprd uses) so that the SDK's ``DaprGrpcError.error_code()`` reads the same value.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from aiohttp import web
from dapr.proto.common.v1 import common_pb2
from dapr.proto.runtime.v1 import (
    appcallback_pb2,
    appcallback_pb2_grpc,
    binding_pb2,
    dapr_pb2_grpc,
    invoke_pb2,
    jobs_pb2,
    metadata_pb2,
    pubsub_pb2,
    state_pb2,
)
from google.protobuf import any_pb2, duration_pb2, empty_pb2
from google.rpc import error_details_pb2, status_pb2

from tests.daprd import cloudevents, invocation, schedule
from tests.daprd.components import Component, IllegalKeyError, original_key
from tests.daprd.storage import (
    AlreadyExistsError,
    ETagInvalidError,
    ETagMismatchError,
    FirstWriteLostError,
    StateOp,
    Storage,
    StoredJob,
)

__all__ = ["DaprApi", "DaprError", "Daprd"]

log = logging.getLogger("tests.daprd")

_T = TypeVar("_T")
_Listed = TypeVar("_Listed", jobs_pb2.ListJobsResponse, jobs_pb2.ListJobsResponseAlpha1)

RUNTIME_VERSION = "stand-in (dapr 1.17 semantics)"
NAMESPACE = "default"
_POLL = 0.1  # seconds between looks at the file for other processes' writes


class DaprError(Exception):
    """An error as daprd returns it: gRPC code, message, ``ErrorInfo`` reason."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        reason: str,
        *,
        metadata: Mapping[str, str] | None = None,
        resource: tuple[str, str] | None = None,
        field_violation: tuple[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata = dict(metadata or {})
        self.resource = resource
        self.field_violation = field_violation

    def trailers(self) -> tuple[tuple[str, bytes], ...]:
        if not self.reason and self.resource is None and self.field_violation is None:
            return ()  # an APIError (pkg/messages/api_error.go): code and message only
        details = [
            error_details_pb2.ErrorInfo(
                domain="dapr.io", reason=self.reason, metadata=self.metadata
            )
        ]
        if self.resource is not None:
            details.append(
                error_details_pb2.ResourceInfo(
                    resource_type=self.resource[0], resource_name=self.resource[1]
                )
            )
        if self.field_violation is not None:
            details.append(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=self.field_violation[0], description=self.field_violation[1]
                        )
                    ]
                )
            )
        packed = []
        for detail in details:
            wrapped = any_pb2.Any()
            wrapped.Pack(detail)
            packed.append(wrapped)
        status = status_pb2.Status(code=self.code.value[0], message=self.message, details=packed)
        return (("grpc-status-details-bin", status.SerializeToString()),)


def _api(
    method: Callable[..., Awaitable[_T]],
) -> Callable[..., Awaitable[_T]]:
    """Turn a :class:`DaprError` into the gRPC status daprd would send."""

    @functools.wraps(method)
    async def wrapper(self: DaprApi, request: Any, context: grpc.aio.ServicerContext) -> _T:
        try:
            return await method(self, request, context)
        except DaprError as exc:
            await context.abort(exc.code, exc.message, trailing_metadata=exc.trailers())
            raise AssertionError("unreachable") from exc  # abort always raises

    return wrapper


#: Components whose ETags are UUIDs and which take an ETag they could not have issued for
#: a mismatch (ABORTED), not for an invalid ETag: ``contrib:state/sqlite`` (a plain
#: comparison) and ``contrib:state/postgresql/v2`` (``uuid.Parse`` failing is
#: ``ETagMismatch``). Seen on daprd d0fd828 (docs/dapr.md).
_ANY_ETAG_MISMATCHES = {("state.sqlite", "v1"), ("state.postgresql", "v2")}


class _StoreFailure(Exception):
    """A component error that is no ETag error: daprd answers it INTERNAL."""


def _component_error(store: Component, error: Exception) -> Exception:
    """What the component behind ``store`` reports for a storage outcome.

    The file keeps one behaviour; real components differ in two places the adapter sees:
    an ETag they could not have issued (see :data:`_ANY_ETAG_MISMATCHES`), and a lost
    first write, which ``contrib:state/postgresql/v2`` reports as the plain error "no
    item was updated" (its upsert touched no row) and ``contrib:state/redis`` as "failed
    to set key <key>" (its Lua script's error): both INTERNAL in daprd.
    """
    kind = (store.type, store.version)
    if isinstance(error, ETagInvalidError) and kind in _ANY_ETAG_MISMATCHES:
        return ETagMismatchError()
    if isinstance(error, FirstWriteLostError):
        if kind == ("state.postgresql", "v2"):
            return _StoreFailure("no item was updated")
        if store.type == "state.redis":
            return _StoreFailure("failed to set key")
    return error


def _etag_code(error: Exception) -> grpc.StatusCode:
    """``getStateErrorCode`` of dapr/dapr ``pkg/api/grpc/grpc.go``."""
    if isinstance(error, ETagMismatchError):
        return grpc.StatusCode.ABORTED
    if isinstance(error, ETagInvalidError):
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.INTERNAL


def _parse_bool(text: str) -> bool:
    # Go's strconv.ParseBool
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError(f'strconv.ParseBool: parsing "{text}": invalid syntax')


def _ttl_seconds(metadata: Mapping[str, str]) -> int | None:
    value = metadata.get("ttlInSeconds")
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise ValueError(
            f'error parsing TTL: incorrect value for metadata "ttlInSeconds": {exc}'
        ) from exc


@dataclass(slots=True)
class _Stream:
    """One streaming subscription connection."""

    owner: str
    pubsub: str
    topic: str
    dead_letter_topic: str
    in_flight: dict[str, int] = field(default_factory=dict)


class DaprApi(dapr_pb2_grpc.DaprServicer):
    """The ``dapr.proto.runtime.v1.Dapr`` methods the gateway uses; every other method
    keeps the generated base's UNIMPLEMENTED."""

    def __init__(self, sidecar: Daprd) -> None:
        self._d = sidecar

    # --- state -------------------------------------------------------------------

    def _store(self, name: str) -> Component:
        stores = self._d.components_of("state")
        if not stores:
            raise DaprError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"state store {name} is not configured",
                "DAPR_STATE_NOT_CONFIGURED",
            )
        if name not in stores:
            raise DaprError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"state store {name} is not found",
                "DAPR_STATE_NOT_FOUND",
            )
        return stores[name]

    def _key(self, store: Component, key: str) -> str:
        try:
            return store.state_key(key, self._d.app_id)
        except IllegalKeyError as exc:
            raise DaprError(
                grpc.StatusCode.INVALID_ARGUMENT,
                str(exc),
                "DAPR_STATE_ILLEGAL_KEY",
                resource=("state", store.name),
                field_violation=(key, str(exc)),
            ) from exc

    @staticmethod
    def _state_metadata(expires_at: float | None) -> dict[str, str]:
        if expires_at is None:
            return {}
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires_at))
        return {"ttlExpireTime": when}

    @_api
    async def GetState(
        self, request: state_pb2.GetStateRequest, context: grpc.aio.ServicerContext
    ) -> state_pb2.GetStateResponse:
        store = self._store(request.store_name)
        key = self._key(store, request.key)
        if not request.key:
            raise DaprError(
                grpc.StatusCode.INTERNAL,
                f"fail to get  from state store {store.name}: missing key in get operation",
                "ERR_STATE_GET",
            )
        found = await self._d.db(Storage.get, store.name, key, time.time())
        if found is None:
            return state_pb2.GetStateResponse()
        value, etag, expires_at = found
        return state_pb2.GetStateResponse(
            data=value, etag=etag, metadata=self._state_metadata(expires_at)
        )

    @_api
    async def GetBulkState(
        self, request: state_pb2.GetBulkStateRequest, context: grpc.aio.ServicerContext
    ) -> state_pb2.GetBulkStateResponse:
        store = self._store(request.store_name)
        keys = [self._key(store, key) for key in request.keys]
        now = time.time()
        items = []
        for key in keys:
            found = await self._d.db(Storage.get, store.name, key, now)
            item = state_pb2.BulkStateItem(key=original_key(key))
            if found is not None:
                item.data, item.etag = found[0], found[1]
                item.metadata.update(self._state_metadata(found[2]))
            items.append(item)
        return state_pb2.GetBulkStateResponse(items=items)

    def _op(self, store: Component, item: common_pb2.StateItem, *, delete: bool) -> StateOp:
        first_write = (
            item.HasField("options")
            and item.options.concurrency == common_pb2.StateOptions.CONCURRENCY_FIRST_WRITE
        )
        return StateOp(
            key=self._key(store, item.key),
            delete=delete,
            value=item.value,
            etag=item.etag.value if item.HasField("etag") else None,
            first_write=first_write,
            ttl_seconds=None if delete else _ttl_seconds(item.metadata),
        )

    async def _apply_each(
        self, store: Component, ops: Sequence[StateOp], message: Callable[[str], str], reason: str
    ) -> None:
        results = await self._d.db(Storage.apply_each, store.name, ops, time.time())
        errors = [_component_error(store, error) for error in results if error is not None]
        if errors:
            # errors.As finds the first ETagError; errors.Join separates with newlines.
            raise DaprError(_etag_code(errors[0]), message("\n".join(map(str, errors))), reason)

    @_api
    async def SaveState(
        self, request: state_pb2.SaveStateRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        store = self._store(request.store_name)
        ops = []
        for item in request.states:
            if not item.key:
                raise DaprError(
                    grpc.StatusCode.INVALID_ARGUMENT, "state key cannot be empty", "ERR_STATE_SAVE"
                )
            try:
                ops.append(self._op(store, item, delete=False))
            except ValueError as exc:
                raise DaprError(
                    grpc.StatusCode.INTERNAL,
                    f"failed saving state in state store {store.name}: {exc}",
                    "ERR_STATE_SAVE",
                ) from exc
        if ops:
            await self._apply_each(
                store,
                ops,
                lambda error: f"failed saving state in state store {store.name}: {error}",
                "ERR_STATE_SAVE",
            )
        return empty_pb2.Empty()

    @_api
    async def DeleteState(
        self, request: state_pb2.DeleteStateRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        store = self._store(request.store_name)
        key = self._key(store, request.key)
        if not request.key:
            raise DaprError(
                grpc.StatusCode.INTERNAL,
                "failed deleting state with key : missing key in delete operation",
                "ERR_STATE_DELETE",
            )
        op = StateOp(
            key=key, delete=True, etag=request.etag.value if request.HasField("etag") else None
        )
        await self._apply_each(
            store,
            [op],
            lambda error: f"failed deleting state with key {request.key}: {error}",
            "ERR_STATE_DELETE",
        )
        return empty_pb2.Empty()

    @_api
    async def DeleteBulkState(
        self, request: state_pb2.DeleteBulkStateRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        store = self._store(request.store_name)
        ops = [self._op(store, item, delete=True) for item in request.states]
        if ops:
            await self._apply_each(
                store,
                ops,
                lambda error: f"failed deleting state in state store {store.name}: {error}",
                "ERR_STATE_BULK_DELETE",
            )
        return empty_pb2.Empty()

    @_api
    async def ExecuteStateTransaction(
        self,
        request: state_pb2.ExecuteStateTransactionRequest,
        context: grpc.aio.ServicerContext,
    ) -> empty_pb2.Empty:
        store = self._store(request.storeName)
        ops = []
        for operation in request.operations:
            kind = operation.operationType
            if kind not in ("upsert", "delete"):
                # The key is checked first in daprd, then the type.
                self._key(store, operation.request.key)
                raise DaprError(
                    grpc.StatusCode.UNIMPLEMENTED,
                    f"operation type {kind} not supported",
                    "ERR_NOT_SUPPORTED_STATE_OPERATION",
                )
            try:
                ops.append(self._op(store, operation.request, delete=kind == "delete"))
            except ValueError as exc:
                raise DaprError(
                    grpc.StatusCode.INTERNAL,
                    f"error while executing state transaction: {exc}",
                    "ERR_STATE_TRANSACTION",
                ) from exc
            if not operation.request.key:
                missing = (
                    "missing key in delete operation"
                    if kind == "delete"
                    else "missing key in set option"
                )
                raise DaprError(
                    grpc.StatusCode.INTERNAL,
                    f"error while executing state transaction: {missing}",
                    "ERR_STATE_TRANSACTION",
                )
        try:
            await self._d.db(Storage.transact, store.name, ops, time.time())
        except (ETagMismatchError, ETagInvalidError) as exc:
            # Every store error of a transaction is Internal in daprd, ETag ones included.
            raise DaprError(
                grpc.StatusCode.INTERNAL,
                f"error while executing state transaction: {_component_error(store, exc)}",
                "ERR_STATE_TRANSACTION",
            ) from exc
        return empty_pb2.Empty()

    # --- pub/sub -----------------------------------------------------------------

    def _pubsub(self, name: str, metadata: Mapping[str, str] | None = None) -> Component:
        if not name:
            raise DaprError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "pubsub name is empty",
                "DAPR_PUBSUB_NAME_EMPTY",
                metadata=metadata,
                resource=("pubsub", name),
            )
        pubsubs = self._d.components_of("pubsub")
        if name not in pubsubs:
            raise DaprError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"pubsub {name} is not found",
                "DAPR_PUBSUB_NOT_FOUND",
                resource=("pubsub", name),
            )
        return pubsubs[name]

    @_api
    async def PublishEvent(
        self, request: pubsub_pb2.PublishEventRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        metadata = dict(request.metadata)
        component = self._pubsub(request.pubsub_name, metadata)
        if not request.topic:
            raise DaprError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"topic is empty in pubsub {component.name}",
                "DAPR_PUBSUB_TOPIC_NAME_EMPTY",
                metadata=metadata,
                resource=("pubsub", component.name),
            )
        raw_flag = next((v for k, v in metadata.items() if k.lower() == "rawpayload"), "")
        try:
            raw = _parse_bool(raw_flag) if raw_flag else False
        except ValueError as exc:
            raise DaprError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"failed deserializing metadata. Error: {exc}",
                "DAPR_PUBSUB_METADATA_DESERIALIZATION",
                metadata=metadata,
                resource=("pubsub", component.name),
            ) from exc
        incoming = dict(context.invocation_metadata() or ())
        traceparent = str(incoming.get("traceparent") or cloudevents.new_traceparent())
        tracestate = str(incoming.get("tracestate") or "")
        if raw:
            body = request.data
        else:
            try:
                event = cloudevents.new_event(
                    app_id=self._d.app_id,
                    pubsub_name=component.name,
                    topic=request.topic,
                    data=request.data,
                    data_content_type=request.data_content_type,
                    metadata=metadata,
                    traceparent=traceparent,
                    tracestate=tracestate,
                )
            except cloudevents.CloudEventError as exc:
                raise DaprError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "cannot create cloudevent",
                    "DAPR_PUBSUB_CLOUD_EVENT_CREATION",
                    metadata=metadata,
                    resource=("pubsub", component.name),
                ) from exc
            body = json.dumps(event, separators=(",", ":")).encode()
        await self._d.publish(component.name, request.topic, body, raw=raw)
        return empty_pb2.Empty()

    async def SubscribeTopicEventsAlpha1(
        self,
        request_iterator: AsyncIterator[pubsub_pb2.SubscribeTopicEventsRequestAlpha1],
        context: grpc.aio.ServicerContext,
    ) -> None:
        try:
            first = await anext(aiter(request_iterator))
        except StopAsyncIteration:
            return
        initial = first.initial_request if first.HasField("initial_request") else None
        # daprd returns these as plain Go errors, which gRPC sends as UNKNOWN.
        if initial is None:
            await context.abort(grpc.StatusCode.UNKNOWN, "initial request is required")
            return
        if not initial.pubsub_name:
            await context.abort(grpc.StatusCode.UNKNOWN, "pubsubName is required")
        if not initial.topic:
            await context.abort(grpc.StatusCode.UNKNOWN, "topic is required")
        try:
            component = self._pubsub(initial.pubsub_name)
        except DaprError as exc:
            await context.abort(exc.code, exc.message, trailing_metadata=exc.trailers())
            return
        await self._d.subscribe(component, initial, request_iterator, context)

    # --- jobs ----------------------------------------------------------------------

    def _job_meta(self) -> dict[str, str]:
        return {"appID": self._d.app_id, "namespace": NAMESPACE}

    def _job_name(self, name: str) -> None:
        if not name:
            raise DaprError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "Name is empty",
                "DAPR_SCHEDULER_JOB_NAME_EMPTY",
                metadata=self._job_meta(),
            )

    @_api
    async def ScheduleJob(
        self, request: jobs_pb2.ScheduleJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ScheduleJobResponse:
        meta = self._job_meta()
        if not request.HasField("job"):
            raise DaprError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "Job is empty",
                "DAPR_SCHEDULER_EMPTY",
                metadata=meta,
            )
        job = jobs_pb2.Job()
        job.CopyFrom(request.job)
        self._job_name(job.name)
        if not job.HasField("schedule") and not job.HasField("due_time"):
            raise DaprError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "Schedule is empty",
                "DAPR_SCHEDULER_SCHEDULE_EMPTY",
                metadata=meta,
            )

        def failed(code: str, description: str) -> DaprError:
            mapped = (
                grpc.StatusCode.INTERNAL if code == "Unknown" else grpc.StatusCode.ALREADY_EXISTS
            )
            return DaprError(
                mapped,
                f"failed to schedule job due to: rpc error: code = {code} desc = {description}",
                "DAPR_SCHEDULER_SCHEDULE_JOB",
                metadata=meta,
            )

        composed = f"app||{NAMESPACE}||{self._d.app_id}||{job.name}"
        problem = _job_name_problem(composed)
        if problem is not None:
            raise failed("Unknown", problem)
        now = time.time()
        try:
            times = _job_times(job, now)
        except schedule.ScheduleError as exc:
            raise failed("Unknown", f"job failed validation: {exc}") from exc
        if not job.HasField("failure_policy"):
            # Builder.Parse stores the default policy, and GetJob returns it.
            default = schedule.DEFAULT_FAILURE_POLICY
            job.failure_policy.constant.interval.CopyFrom(
                duration_pb2.Duration(seconds=int(default.interval))
            )
            job.failure_policy.constant.max_retries = default.max_retries or 0

        def start() -> tuple[int, int, float | None, float] | None:
            counter = schedule.start_counter(times)
            return None if counter is None else (0, 0, None, counter.next_at)

        try:
            await self._d.db(
                Storage.put_job,
                self._d.app_id,
                job.name,
                job.SerializeToString(),
                overwrite=request.overwrite,
                now=now,
                start=start,
            )
        except AlreadyExistsError as exc:
            raise failed("AlreadyExists", f"job already exists: '{composed}'") from exc
        self._d.jobs_changed()
        return jobs_pb2.ScheduleJobResponse()

    @_api
    async def GetJob(
        self, request: jobs_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.GetJobResponse:
        self._job_name(request.name)
        stored = await self._d.db(Storage.get_job, self._d.app_id, request.name)
        if stored is None:
            raise DaprError(
                grpc.StatusCode.INTERNAL,
                f"failed to get job due to: rpc error: code = NotFound desc = job not found: {request.name}",
                "DAPR_SCHEDULER_GET_JOB",
                metadata=self._job_meta(),
            )
        return jobs_pb2.GetJobResponse(job=jobs_pb2.Job.FromString(stored))

    @_api
    async def DeleteJob(
        self, request: jobs_pb2.DeleteJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.DeleteJobResponse:
        self._job_name(request.name)
        # Deleting a job that does not exist succeeds, as in the Scheduler.
        await self._d.db(Storage.delete_job, self._d.app_id, request.name)
        self._d.jobs_changed()
        return jobs_pb2.DeleteJobResponse()

    # The Alpha1 methods take and return the same messages as the stable ones.
    ScheduleJobAlpha1 = ScheduleJob
    GetJobAlpha1 = GetJob
    DeleteJobAlpha1 = DeleteJob

    @_api
    async def ListJobsAlpha1(
        self, request: jobs_pb2.ListJobsRequestAlpha1, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ListJobsResponseAlpha1:
        return await self._list_jobs(jobs_pb2.ListJobsResponseAlpha1)

    @_api
    async def ListJobs(
        self, request: jobs_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ListJobsResponse:
        return await self._list_jobs(jobs_pb2.ListJobsResponse)

    async def _list_jobs(self, response: type[_Listed]) -> _Listed:
        jobs = await self._d.db(Storage.list_jobs, self._d.app_id)
        return response(jobs=[jobs_pb2.Job.FromString(j) for j in jobs])

    # --- metadata ----------------------------------------------------------------

    # --- service invocation and output bindings (tests/daprd/invocation.py) ---------

    @_api
    async def InvokeService(
        self, request: invoke_pb2.InvokeServiceRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.InvokeResponse:
        message = request.message
        extension = message.http_extension
        verb = common_pb2.HTTPExtension.Verb.Name(extension.verb)
        answer = await self._d.invoke(
            app_id=request.id,
            method=message.method,
            verb=verb,
            query=extension.querystring,
            body=message.data.value,
            content_type=message.content_type,
            headers=invocation.grpc_metadata_as_headers(context.invocation_metadata() or ()),
        )
        await context.send_initial_metadata((("dapr-http-status", str(answer.status)),))
        code = invocation.grpc_code_of(answer.status)
        if code is not grpc.StatusCode.OK:
            text = invocation.status_text(answer.status)
            raise DaprError(
                code,
                text,
                text,
                metadata={
                    "http.code": str(answer.status),
                    "http.error_message": invocation.error_detail(answer.body),
                },
            )
        return common_pb2.InvokeResponse(
            data=any_pb2.Any(value=answer.body), content_type=answer.content_type
        )

    @_api
    async def InvokeBinding(
        self, request: binding_pb2.InvokeBindingRequest, context: grpc.aio.ServicerContext
    ) -> binding_pb2.InvokeBindingResponse:
        metadata = dict(request.metadata)
        incoming = dict(context.invocation_metadata() or ())
        # daprd passes the caller's trace context on to the binding (pkg/api/grpc/grpc.go)
        if incoming.get("traceparent"):
            metadata.setdefault("traceparent", str(incoming["traceparent"]))
        try:
            data, answer = await invocation.invoke_binding(
                name=request.name,
                operation=request.operation,
                data=request.data,
                metadata=metadata,
                bindings=self._d.components_of("bindings"),
            )
        except invocation.InvocationError as exc:
            raise DaprError(grpc.StatusCode.INTERNAL, exc.message, exc.reason) from exc
        return binding_pb2.InvokeBindingResponse(data=data, metadata=answer)

    @_api
    async def GetMetadata(
        self, request: metadata_pb2.GetMetadataRequest, context: grpc.aio.ServicerContext
    ) -> metadata_pb2.GetMetadataResponse:
        capabilities = {
            "state": ["ETAG", "TRANSACTIONAL", "TTL"],
            "pubsub": [],
            "bindings": ["OUTPUT_BINDING"],
        }
        response = metadata_pb2.GetMetadataResponse(
            id=self._d.app_id,
            runtime_version=RUNTIME_VERSION,
            registered_components=[
                metadata_pb2.RegisteredComponents(
                    name=c.name,
                    type=c.type,
                    version=c.version,
                    capabilities=capabilities[c.category],
                )
                for c in self._d.components
                if c.category in capabilities
            ],
            http_endpoints=[
                metadata_pb2.MetadataHTTPEndpoint(name=name)
                for name in self._d.components_of("httpendpoint")
            ],
            subscriptions=[
                metadata_pb2.PubsubSubscription(
                    pubsub_name=s.pubsub,
                    topic=s.topic,
                    dead_letter_topic=s.dead_letter_topic,
                    type=metadata_pb2.PubsubSubscriptionType.STREAMING,
                    rules=metadata_pb2.PubsubSubscriptionRules(
                        rules=[metadata_pb2.PubsubSubscriptionRule(path="/")]
                    ),
                )
                for s in self._d.streams()
            ],
        )
        if self._d.app_port is not None:
            response.app_connection_properties.CopyFrom(
                metadata_pb2.AppConnectionProperties(
                    port=self._d.app_port, protocol="grpc", channel_address="127.0.0.1"
                )
            )
        return response


def _unimplemented(name: str) -> Callable[..., Awaitable[None]]:
    async def method(self: DaprApi, request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")

    method.__name__ = name
    return method


# Every Dapr method not written above answers UNIMPLEMENTED, as the generated base does,
# but as a coroutine: no thread pool needed and no "unexpected exception" log line.
for _name, _member in vars(dapr_pb2_grpc.DaprServicer).items():
    if callable(_member) and not _name.startswith("_") and _name not in vars(DaprApi):
        setattr(DaprApi, _name, _unimplemented(_name))


def _job_name_problem(composed: str) -> str | None:
    """go-etcd-cron's name validator: each ``||`` segment, lowercased and without
    ``_ : -`` and spaces, must be a DNS-1123 subdomain."""
    sanitized = composed
    for char in ("_", ":", "-", " "):
        sanitized = sanitized.replace(char, "")
    label = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
    pattern = re.compile(rf"^{label}(\.{label})*$")
    for segment in sanitized.lower().split("||"):
        if len(segment) > 253 or not pattern.match(segment):
            return (
                f'job name is invalid "{sanitized}": a lowercase RFC 1123 subdomain must consist of'
                " lower case alphanumeric characters, '-' or '.', and must start and end with an"
                " alphanumeric character"
            )
    return None


def _job_times(job: jobs_pb2.Job, created: float) -> schedule.JobTimes:
    return schedule.parse_job_times(
        schedule=job.schedule if job.HasField("schedule") else None,
        due_time=job.due_time if job.HasField("due_time") else None,
        ttl=job.ttl if job.HasField("ttl") else None,
        repeats=job.repeats if job.HasField("repeats") else None,
        now=created,
    )


def _failure_policy(job: jobs_pb2.Job) -> schedule.FailurePolicy:
    if not job.HasField("failure_policy"):
        return schedule.FailurePolicy(drop=True)
    policy = job.failure_policy
    if policy.HasField("drop"):
        return schedule.FailurePolicy(drop=True)
    if policy.HasField("constant"):
        constant = policy.constant
        return schedule.FailurePolicy(
            interval=constant.interval.ToTimedelta().total_seconds(),
            max_retries=constant.max_retries if constant.HasField("max_retries") else None,
        )
    return schedule.FailurePolicy(drop=True)


def _retry_delay(policy: Component | None, attempt: int) -> float | None:
    """The wait before retry ``attempt`` + 1 of a delivery under an inbound resiliency
    retry policy (dapr/kit retry: constant ``duration``, or exponential from 500 ms by
    1.5 up to ``maxInterval``, without its jitter); None when no retry is left."""
    if policy is None:
        return None
    limit = int(policy.meta("maxRetries", "-1"))
    if 0 <= limit <= attempt:
        return None
    if policy.meta("policy", "constant") == "constant":
        return schedule.parse_go_duration(policy.meta("duration", "5s"))
    cap = schedule.parse_go_duration(policy.meta("maxInterval", "60s"))
    return float(min(0.5 * 1.5**attempt, cap))


class Daprd:
    """One stand-in sidecar for ``app_id``: start with :meth:`start`, stop with :meth:`stop`."""

    def __init__(
        self,
        *,
        app_id: str,
        db: Path,
        components: Sequence[Component],
        grpc_port: int = 0,
        http_port: int = 0,
        app_port: int | None = None,
        host: str = "127.0.0.1",
        max_body_bytes: int = 4 << 20,
        job_callback_timeout: float = 30.0,
    ) -> None:
        self.app_id = app_id
        self.db_path = db
        self.components = tuple(components)
        self.app_port = app_port
        self.host = host
        self._requested_ports = (grpc_port, http_port)
        self._max_body = max_body_bytes
        self._job_timeout = job_callback_timeout
        self._instance = f"{app_id}/{uuid.uuid4().hex[:12]}"
        self._stream_numbers = itertools.count(1)
        self._streams: dict[str, _Stream] = {}
        self._topic_events: dict[tuple[str, str], asyncio.Event] = {}
        self._jobs_event = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._executor: ThreadPoolExecutor | None = None
        self._storage: Storage | None = None
        self._server: grpc.aio.Server | None = None
        self._runner: web.AppRunner | None = None
        self._app_channel: grpc.aio.Channel | None = None
        self.grpc_port = 0
        self.http_port = 0

    # --- plumbing ----------------------------------------------------------------

    async def invoke(self, **call: Any) -> invocation.Answer:
        """Service invocation of what the app id resolves to (tests/daprd/invocation.py);
        daprd's own failures as the gRPC error it sends (INTERNAL, no details)."""
        try:
            return await invocation.invoke_service(
                endpoints=self.components_of("httpendpoint"), **call
            )
        except invocation.InvocationError as exc:
            code = (
                grpc.StatusCode.INVALID_ARGUMENT
                if exc.http_status == 400
                else grpc.StatusCode.INTERNAL
            )
            raise DaprError(code, exc.message, exc.reason) from exc

    async def _http_invoke(self, request: web.Request) -> web.Response:
        """``/v1.0/invoke/<app id>/method/<method>`` (any verb): the callee's answer as it
        is, or daprd's ``{"errorCode": "ERR_DIRECT_INVOKE", "message": ...}``."""
        tail = request.path.removeprefix("/v1.0/invoke/")
        app_id, found, method = tail.partition("/method/")
        if not found:
            app_id, method = "", ""
        try:
            answer = await invocation.invoke_service(
                app_id=app_id,
                method=method,
                verb=request.method,
                query=request.query_string,
                body=await request.read(),
                content_type=request.headers.get("Content-Type", ""),
                headers=dict(request.headers),
                endpoints=self.components_of("httpendpoint"),
            )
        except invocation.InvocationError as exc:
            return web.json_response(
                {"errorCode": exc.reason or "ERR_DIRECT_INVOKE", "message": exc.message},
                status=exc.http_status,
            )
        headers = {k: v for k, v in answer.headers.items() if k.lower() != "content-type"}
        response = web.Response(status=answer.status, body=answer.body, headers=headers)
        if answer.content_type:
            response.headers["Content-Type"] = answer.content_type
        return response

    def components_of(self, category: str) -> dict[str, Component]:
        return {c.name: c for c in self.components if c.category == category}

    def streams(self) -> list[_Stream]:
        return list(self._streams.values())

    async def db(self, method: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run a :class:`Storage` method on the storage thread."""
        assert self._executor is not None and self._storage is not None
        call = functools.partial(method, self._storage, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def _spawn(self, coroutine: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="daprd-sqlite")
        self._storage = await loop.run_in_executor(self._executor, Storage, self.db_path)
        # Leases held by an earlier process of this app died with it.
        await self.db(Storage.release_app, self.app_id, time.time())

        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self._max_body),
                ("grpc.max_send_message_length", self._max_body),
            ],
        )
        dapr_pb2_grpc.add_DaprServicer_to_server(DaprApi(self), self._server)
        self.grpc_port = self._server.add_insecure_port(f"{self.host}:{self._requested_ports[0]}")
        await self._server.start()

        app = web.Application()

        async def healthy(request: web.Request) -> web.Response:
            return web.Response(status=204)

        app.router.add_get("/v1.0/healthz", healthy)
        app.router.add_get("/v1.0/healthz/outbound", healthy)
        app.router.add_route("*", "/v1.0/invoke/{tail:.+}", self._http_invoke)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._requested_ports[1])
        await site.start()
        self.http_port = int(self._runner.addresses[0][1])

        if self.app_port is not None:
            self._app_channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.app_port}")
            self._spawn(self._job_loop())
            self._spawn(self._app_subscriptions())

    async def stop(self, grace: float = 0.5) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            await self._server.stop(grace)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace + 1)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._app_channel is not None:
            await self._app_channel.close()
        if self._executor is not None and self._storage is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._storage.close)
            self._executor.shutdown(wait=True)

    # --- pub/sub -----------------------------------------------------------------

    def _topic_event(self, pubsub: str, topic: str) -> asyncio.Event:
        return self._topic_events.setdefault((pubsub, topic), asyncio.Event())

    async def publish(self, pubsub: str, topic: str, body: bytes, *, raw: bool) -> None:
        await self.db(Storage.publish, pubsub, topic, body, raw=raw, now=time.time())
        self._topic_event(pubsub, topic).set()

    async def subscribe(
        self,
        component: Component,
        initial: pubsub_pb2.SubscribeTopicEventsRequestInitialAlpha1,
        requests: AsyncIterator[pubsub_pb2.SubscribeTopicEventsRequestAlpha1],
        context: grpc.aio.ServicerContext,
    ) -> None:
        """Deliver a topic to one stream until it ends (pkg/runtime/pubsub/streamer)."""
        pubsub, topic = component.name, initial.topic
        stream = _Stream(
            owner=f"{self._instance}/{next(self._stream_numbers)}",
            pubsub=pubsub,
            topic=topic,
            dead_letter_topic=initial.dead_letter_topic,
        )
        concurrency = int(component.meta("concurrency", "10") or 10)
        processing = schedule.parse_go_duration(component.meta("processingTimeout", "15s"))
        redeliver = schedule.parse_go_duration(component.meta("redeliverInterval", "200ms"))
        await self.db(Storage.ensure_group, pubsub, topic, self.app_id, time.time())
        self._streams[stream.owner] = stream
        wake = self._topic_event(pubsub, topic)
        try:
            await context.write(
                pubsub_pb2.SubscribeTopicEventsResponseAlpha1(
                    initial_response=pubsub_pb2.SubscribeTopicEventsResponseInitialAlpha1()
                )
            )
            reader = asyncio.ensure_future(self._read_responses(stream, requests, redeliver, wake))
            try:
                while not reader.done():
                    wake.clear()
                    await self._deliver(stream, context, concurrency, processing, redeliver)
                    # Woken by a publish or an answer in this process; the timeout is
                    # the poll for other processes' publishes and for retry times.
                    waiter = asyncio.ensure_future(wake.wait())
                    await asyncio.wait(
                        [reader, waiter], timeout=_POLL, return_when=asyncio.FIRST_COMPLETED
                    )
                    waiter.cancel()
            finally:
                reader.cancel()
                with contextlib.suppress(BaseException):
                    await reader
            error = reader.exception() if reader.done() and not reader.cancelled() else None
            if error is not None:
                await context.abort(grpc.StatusCode.UNKNOWN, str(error))
        finally:
            self._streams.pop(stream.owner, None)
            # Unanswered messages go back to the group at once (a stream that ended
            # cannot answer; pubsub.redis would reclaim them after processingTimeout).
            # Tracked, so that stop() waits for it before closing the file.
            await asyncio.shield(self._spawn(self.db(Storage.release, stream.owner, time.time())))
            wake.set()

    async def _deliver(
        self,
        stream: _Stream,
        context: grpc.aio.ServicerContext,
        concurrency: int,
        processing: float,
        redeliver: float,
    ) -> None:
        claimed = await self.db(
            Storage.claim,
            stream.pubsub,
            stream.topic,
            self.app_id,
            owner=stream.owner,
            limit=concurrency - len(stream.in_flight),
            now=time.time(),
            lease=processing,
        )
        for message in claimed:
            try:
                event = cloudevents.topic_event_request(
                    message.body, raw=message.raw, topic=stream.topic, pubsub_name=stream.pubsub
                )
            except ValueError as exc:
                log.warning("cannot deliver message %s: %s; retrying", message.seq, exc)
                await self._settle(stream, message.seq, "pending", time.time() + redeliver)
                continue
            if not message.raw and cloudevents.has_expired(json.loads(message.body)):
                await self._settle(stream, message.seq, "dropped")
                await self._dead_letter(stream, message.seq)
                continue
            stream.in_flight[event.id] = message.seq
            await context.write(pubsub_pb2.SubscribeTopicEventsResponseAlpha1(event_message=event))

    async def _read_responses(
        self,
        stream: _Stream,
        requests: AsyncIterator[pubsub_pb2.SubscribeTopicEventsRequestAlpha1],
        redeliver: float,
        wake: asyncio.Event,
    ) -> None:
        statuses = appcallback_pb2.TopicEventResponse.TopicEventResponseStatus
        async for request in requests:
            if request.HasField("initial_request"):
                raise RuntimeError("duplicate initial request received")
            processed = request.event_processed
            seq = stream.in_flight.pop(processed.id, None)
            if seq is None:
                continue  # an answer for a message this stream no longer holds
            status = processed.status.status
            if status == statuses.SUCCESS:
                await self._settle(stream, seq, "done")
            elif status == statuses.DROP:
                await self._settle(stream, seq, "dropped")
                await self._dead_letter(stream, seq)
            else:  # RETRY, or a status daprd does not know: retry as well
                await self._settle(stream, seq, "pending", time.time() + redeliver)
                self._spawn(_set_later(wake, redeliver))
            wake.set()

    async def _settle(
        self, stream: _Stream, seq: int, status: str, available_at: float = 0.0
    ) -> None:
        await self.db(
            Storage.settle,
            stream.pubsub,
            stream.topic,
            self.app_id,
            seq,
            owner=stream.owner,
            status=status,
            available_at=available_at,
        )

    async def _dead_letter(self, stream: _Stream, seq: int) -> None:
        if not stream.dead_letter_topic:
            return
        body, raw = await self.db(Storage.message, seq)
        await self.publish(stream.pubsub, stream.dead_letter_topic, body, raw=raw)

    # --- programmatic subscriptions: delivery to the app -----------------------------

    async def _app_subscriptions(self) -> None:
        """pkg/runtime/subscription + pkg/runtime/pubsub: once the app answers, ask it
        for its subscriptions (``AppCallback.ListTopicSubscriptions``; UNIMPLEMENTED
        means none), then deliver each topic to ``AppCallback.OnTopicEvent`` under the
        app id's consumer group. daprd asks once per start, as here."""
        assert self._app_channel is not None
        stub = appcallback_pb2_grpc.AppCallbackStub(self._app_channel)
        while True:
            try:
                listed = await stub.ListTopicSubscriptions(empty_pb2.Empty(), timeout=5)
                break
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    return
                await asyncio.sleep(_POLL)  # the app is not up yet: daprd waits for it
        pubsubs = self.components_of("pubsub")
        for subscription in listed.subscriptions:
            component = pubsubs.get(subscription.pubsub_name)
            if component is None:
                log.warning(
                    "app subscribes to %s/%s: no such pubsub",
                    subscription.pubsub_name,
                    subscription.topic,
                )
                continue
            await self.db(
                Storage.ensure_group, component.name, subscription.topic, self.app_id, time.time()
            )
            self._spawn(self._app_topic(component, subscription))

    async def _app_topic(
        self, component: Component, subscription: appcallback_pb2.TopicSubscription
    ) -> None:
        """Deliver one topic to the app, one message at a time (a concurrency of 1 keeps
        the order the tests read): SUCCESS settles it, DROP drops it (to the dead-letter
        topic if any). RETRY or a failed call (the app down, an error status) is tried
        again under the pub/sub's inbound retry policy (a Resiliency resource), if any;
        when that fails too, ``pubsub.redis`` acknowledges the message (it is lost for
        the app) unless the delivery outlasted ``processingTimeout``, and other types
        make it pending again after ``redeliverInterval``. As daprd d0fd828 with
        components-contrib v1.17.3 does (``pkg/runtime/subscription/subscription.go``,
        ``contrib:pubsub/redis/redis.go`` processMessage; docs/dapr.md). Not emulated:
        daprd's app health probe, whose failure closes the subscription so that a
        failed message is left unacknowledged."""
        assert self._app_channel is not None
        stub = appcallback_pb2_grpc.AppCallbackStub(self._app_channel)
        pubsub, topic = component.name, subscription.topic
        stream = _Stream(
            owner=f"{self._instance}/app/{pubsub}/{topic}",
            pubsub=pubsub,
            topic=topic,
            dead_letter_topic=subscription.dead_letter_topic,
        )
        processing = schedule.parse_go_duration(component.meta("processingTimeout", "15s"))
        redeliver = schedule.parse_go_duration(component.meta("redeliverInterval", "200ms"))
        statuses = appcallback_pb2.TopicEventResponse.TopicEventResponseStatus
        wake = self._topic_event(pubsub, topic)
        while True:
            wake.clear()
            status = statuses.SUCCESS
            claimed = await self.db(
                Storage.claim,
                pubsub,
                topic,
                self.app_id,
                owner=stream.owner,
                limit=1,
                now=time.time(),
                lease=processing,
            )
            for message in claimed:
                try:
                    event = cloudevents.topic_event_request(
                        message.body, raw=message.raw, topic=topic, pubsub_name=pubsub
                    )
                except ValueError as exc:
                    log.warning("cannot deliver message %s: %s; retrying", message.seq, exc)
                    await self._settle(stream, message.seq, "pending", time.time() + redeliver)
                    continue
                if not message.raw and cloudevents.has_expired(json.loads(message.body)):
                    await self._settle(stream, message.seq, "dropped")
                    await self._dead_letter(stream, message.seq)
                    continue
                started = time.monotonic()
                retry = self.components_of("resiliency").get(pubsub)
                attempt = 0
                while True:
                    try:
                        answer = await stub.OnTopicEvent(event, timeout=processing)
                        status = answer.status
                    except grpc.aio.AioRpcError as exc:
                        log.info("topic %s: app call failed: %s", topic, exc.code())
                        status = statuses.RETRY
                    if status in (statuses.SUCCESS, statuses.DROP):
                        break
                    delay = _retry_delay(retry, attempt)
                    if delay is None:
                        break
                    attempt += 1
                    await asyncio.sleep(delay)
                if status == statuses.SUCCESS:
                    await self._settle(stream, message.seq, "done")
                elif status == statuses.DROP:
                    await self._settle(stream, message.seq, "dropped")
                    await self._dead_letter(stream, message.seq)
                elif component.type == "pubsub.redis" and time.monotonic() - started < processing:
                    # pubsub.redis acknowledges a message whose handler failed while
                    # the handler's processingTimeout had not run out (contrib
                    # pubsub/redis processMessage): gone for this app, no dead letter.
                    log.info("topic %s: message %s failed; acknowledged", topic, message.seq)
                    await self._settle(stream, message.seq, "dropped")
                else:
                    await self._settle(stream, message.seq, "pending", time.time() + redeliver)
            if not claimed:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(wake.wait(), _POLL * 2)
            elif status != statuses.SUCCESS:
                await asyncio.sleep(redeliver)

    # --- jobs ----------------------------------------------------------------------

    def jobs_changed(self) -> None:
        self._jobs_event.set()

    async def _job_loop(self) -> None:
        lease = self._job_timeout * 2
        while True:
            now = time.time()
            job = await self.db(
                Storage.claim_job, self.app_id, owner=self._instance, now=now, lease=lease
            )
            if job is not None:
                self._spawn(self._trigger(job))
                continue
            upcoming = await self.db(Storage.next_job_time, self.app_id, now)
            delay = _POLL * 2 if upcoming is None else min(max(upcoming - now, 0.0), _POLL * 2)
            self._jobs_event.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._jobs_event.wait(), delay)

    async def _trigger(self, stored: StoredJob) -> None:
        job = jobs_pb2.Job.FromString(stored.job)
        success = await self._call_app(job)
        counter = schedule.Counter(
            count=stored.count,
            attempts=stored.attempts,
            last=stored.last_trigger,
            next_at=stored.next_at,
        )
        times = _job_times(job, stored.created_at)
        advanced = schedule.advance(times, _failure_policy(job), counter, success=success)
        row = (
            None
            if advanced is None
            else (advanced.count, advanced.attempts, advanced.last, advanced.next_at)
        )
        await self.db(Storage.finish_job, self.app_id, stored.name, stored.revision, row)
        self.jobs_changed()

    async def _call_app(self, job: jobs_pb2.Job) -> bool:
        """pkg/channel/grpc/grpc_channel.go: AppCallback.OnJobEvent, falling back to
        AppCallbackAlpha.OnJobEventAlpha1 when the app does not implement it."""
        assert self._app_channel is not None
        request = appcallback_pb2.JobEventRequest(
            name=job.name,
            data=job.data,
            method=f"job/{job.name}",
            content_type=job.data.type_url,
            http_extension=common_pb2.HTTPExtension(verb=common_pb2.HTTPExtension.POST),
        )
        try:
            try:
                await appcallback_pb2_grpc.AppCallbackStub(self._app_channel).OnJobEvent(
                    request, timeout=self._job_timeout
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise
                await appcallback_pb2_grpc.AppCallbackAlphaStub(self._app_channel).OnJobEventAlpha1(
                    request, timeout=self._job_timeout
                )
        except grpc.aio.AioRpcError as exc:
            log.info("job %s: app callback failed: %s %s", job.name, exc.code(), exc.details())
            return False
        return True


async def _set_later(event: asyncio.Event, delay: float) -> None:
    await asyncio.sleep(delay)
    event.set()
