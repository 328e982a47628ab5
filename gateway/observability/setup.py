"""What a ``gateway`` process turns on at start, from flags, environment and config.

Precedence, for each setting: the command-line flag, then the environment, then the
host configuration's ``observability:`` section, then the default (docs/observability.md).
"""

from __future__ import annotations

import logging
import os

from gateway.config import Config

#: gRPC C-core's own logging (not Python's): silent unless the user asks for it.
GRPC_VERBOSITY = "GRPC_VERBOSITY"
GRPC_TRACE = "GRPC_TRACE"


def quiet_grpc_core(*, debug: bool = False) -> None:
    """Keep gRPC C-core's log lines off standard error unless the user set them.

    Must run before ``grpc`` is first imported (the core reads these variables once).
    A user who set ``GRPC_VERBOSITY`` keeps it; one who set only ``GRPC_TRACE`` asked
    for trace output and gets it (verbosity DEBUG); ``--debug`` shows C-core errors.
    """
    if GRPC_VERBOSITY in os.environ:
        return
    if os.environ.get(GRPC_TRACE):
        os.environ[GRPC_VERBOSITY] = "DEBUG"
    else:
        os.environ[GRPC_VERBOSITY] = "ERROR" if debug else "NONE"


def setup_logging(
    flag: str | None, config: Config | None = None, *, serve: bool = False, debug: bool = False
) -> None:
    """Logging for this process. ``serve`` logs INFO (a server's log is its record);
    other commands log only when asked (JSON chosen, or ``--debug``), so that their
    output stays what they print."""
    from gateway.observability.logs import configure_logging, log_format

    chosen = log_format(flag, config.observability.log_format if config else None)
    if debug:
        configure_logging(chosen, level=logging.DEBUG)
    elif serve or chosen == "json":
        configure_logging(chosen, level=logging.INFO)


def setup_tracing(config: Config) -> bool:
    """Traces per ``OTEL_*`` (off unless ``OTEL_TRACES_EXPORTER`` is set); before any
    gRPC channel or server is made."""
    from gateway.observability.tracing import configure_tracing, requested

    if not requested():
        return False
    if not configure_tracing(service_instance=str(config.host)):
        return False
    # Here, not in tracing: the package imports tracing, so tracing does not import it.
    from gateway.observability import _tracing_enabled

    _tracing_enabled(True)
    return True


def setup_metrics(config: Config, flag: str | None) -> str | None:
    """Serve ``/metrics`` if ``--metrics-listen`` or the configuration asks; returns the
    URL served, or None (metrics off: nothing imported, nothing counted)."""
    from gateway.observability import enable_metrics

    listen = flag or config.observability.metrics_listen
    if not listen:
        return None
    metrics = enable_metrics(
        tenants=config.tenants, peers=tuple(str(peer.id) for peer in config.peers)
    )
    try:
        port = metrics.serve(listen)
    except OSError as exc:
        from gateway.errors import ConfigError

        raise ConfigError(
            f"cannot serve metrics on {listen}: {exc.strerror}",
            hint="choose a free HOST:PORT with --metrics-listen (or observability.metrics_listen)",
        ) from exc
    host = listen.rpartition(":")[0]
    return f"http://{host}:{port}/metrics"
