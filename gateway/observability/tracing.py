"""OpenTelemetry traces, configured from the standard ``OTEL_*`` environment.

Tracing is on only when ``OTEL_TRACES_EXPORTER`` names an exporter (``console``,
``otlp``, or any other registered under the ``opentelemetry_traces_exporter`` entry
point group) and ``OTEL_SDK_DISABLED`` is not ``true``. This departs from the
OpenTelemetry default (``otlp``) on purpose: a gateway started without any
configuration should not try to reach a collector on localhost:4317, and must cost
nothing. Everything else (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_EXPORTER_OTLP_*``, ``OTEL_PROPAGATORS``, ``OTEL_BSP_*``) is read by the SDK
and exporters as usual.

Propagation is W3C trace context over gRPC metadata: the opentelemetry-instrumentation-grpc
aio interceptors are installed on every ``grpc.aio`` channel and server created after
:func:`configure_tracing`, which covers our peers' channels, our server, and the Dapr
SDK's channel to its sidecar (so daprd continues the same trace).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from importlib.metadata import entry_points

from gateway.errors import ConfigError

log = logging.getLogger(__name__)

#: The OpenTelemetry instrumentation scope of the gateway's own spans.
TRACER_NAME = "gateway"
#: Span attribute names of a handoff's fields (namespaced, as OTel semantic conventions ask).
ATTRIBUTES = {
    "migration_id": "gateway.migration_id",
    "object_id": "gateway.object_id",
    "peer": "gateway.peer",
    "tenant": "gateway.tenant",
}


def requested(environ: Mapping[str, str] | None = None) -> list[str]:
    """The exporter names ``OTEL_TRACES_EXPORTER`` asks for (empty: tracing off)."""
    environ = os.environ if environ is None else environ
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",")]
    return [n for n in names if n and n != "none"]


def entry_point_name(name: str, environ: Mapping[str, str] | None = None) -> str:
    """The entry point an exporter name means: ``otlp`` is OTLP over gRPC (the package
    we depend on registers it as ``otlp_proto_grpc``), or over HTTP when
    ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`` says ``http/protobuf`` (needs
    opentelemetry-exporter-otlp-proto-http), as the OpenTelemetry specification reads it."""
    environ = os.environ if environ is None else environ
    if name != "otlp":
        return name
    protocol = environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    )
    return "otlp_proto_http" if protocol.strip().startswith("http") else "otlp_proto_grpc"


_configured = False


def configure_tracing(*, service_instance: str | None = None) -> bool:
    """Install a tracer provider and the gRPC interceptors if the environment asks for
    traces; returns whether tracing is on. Call before any gRPC channel or server is made.
    """
    global _configured
    names = requested()
    if not names:
        return False
    if _configured:
        return True
    from opentelemetry import trace
    from opentelemetry.instrumentation.grpc import (
        GrpcAioInstrumentorClient,
        GrpcAioInstrumentorServer,
    )
    from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes: dict[str, str] = {}
    if "OTEL_SERVICE_NAME" not in os.environ:
        attributes[SERVICE_NAME] = "gateway"
    if service_instance:
        attributes[SERVICE_INSTANCE_ID] = service_instance
    # Resource.create merges OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME over these.
    provider = TracerProvider(resource=Resource.create(attributes))
    available = {e.name: e for e in entry_points(group="opentelemetry_traces_exporter")}
    for name in names:
        entry = entry_point_name(name)
        if entry not in available:
            raise ConfigError(
                f"OTEL_TRACES_EXPORTER names {name!r}, which is not installed "
                f"(installed exporters: {', '.join(sorted(available)) or 'none'})",
                hint="use console or otlp (OTLP over gRPC), or unset OTEL_TRACES_EXPORTER "
                "to turn traces off",
            )
        exporter = available[entry].load()()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    GrpcAioInstrumentorClient().instrument()  # type: ignore[no-untyped-call]
    GrpcAioInstrumentorServer().instrument()  # type: ignore[no-untyped-call]
    _configured = True
    return True  # the caller (setup.setup_tracing) turns the hooks on


@contextlib.contextmanager
def span(name: str) -> Iterator[None]:
    from opentelemetry import trace

    with trace.get_tracer(TRACER_NAME).start_as_current_span(name):
        yield


def annotate(fields: Mapping[str, str]) -> None:
    """Put a handoff's ids on the current span (no-op outside a recording span)."""
    from opentelemetry import trace

    current = trace.get_current_span()
    if current.is_recording():
        current.set_attributes({ATTRIBUTES[k]: v for k, v in fields.items() if k in ATTRIBUTES})


def flush() -> None:
    """Export what is buffered (at the end of a short command)."""
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    force_flush = getattr(provider, "force_flush", None)
    if force_flush is not None:
        force_flush()
