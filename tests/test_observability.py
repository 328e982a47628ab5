"""Operations through real processes (issue 14 points 1-4): grpc.health.v1 readiness and
reflection on the mTLS port, Prometheus metrics after a real migration, one trace across
both gateways, JSON log lines carrying the handoff's ids, and no gRPC C-core lines on
standard error unless the user asks for them."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import load_config
from gateway.testing import HostSpec, ServerProcess, build_world, free_port, run_cli, start_all
from gateway.transport.tls import channel_credentials
from tests.conftest import HOST_A, HOST_B

OBJECT = "obj://org-a.example/billing/invoice-14"
#: A line gRPC's C-core writes (absl format): severity letter, MMDD, time, thread, file:line.
C_CORE_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ \S+:\d+\]", re.MULTILINE)
#: Upper bound for anything we poll for; polling ends as soon as the condition holds.
WAIT_S = 60.0

SPEC = """\
data: {invoice: 14, amount: 1250}
cycle: {interval_seconds: 1}
rules:
  - name: count
    when: "true"
    write: '{"invoice": 14, "amount": 1250, "checks": generation + 1}'
"""


def observe(config: Path, **settings: Any) -> None:
    """Add an ``observability:`` section to a host's configuration file."""
    lines = "".join(f"  {key}: {json.dumps(value)}\n" for key, value in settings.items())
    config.write_text(config.read_text() + "observability:\n" + lines)


def until(what: str, check: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    """Poll ``check`` until it returns something truthy (no timing is asserted)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.2)


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a /metrics page, keyed by (name, labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def json_objects(text: str) -> list[dict[str, Any]]:
    """The JSON objects in ``text`` (span dumps spread over lines, or one per line),
    skipping anything else (the CLI's own output)."""
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    index = 0
    while (start := text.find("{", index)) != -1:
        try:
            value, end = decoder.raw_decode(text, start)
        except ValueError:
            index = start + 1
            continue
        if isinstance(value, dict):
            found.append(value)
        index = end
    return found


def stop_and_read(server: ServerProcess) -> str:
    """Stop a server (SIGTERM, as an orchestrator does) and return what it wrote to stdout."""
    assert server.process is not None and server.process.stdout is not None
    server.process.send_signal(signal.SIGTERM)
    out = server.process.stdout.read().decode()
    server.process.wait(timeout=30)
    server.stop()
    return out


@pytest.mark.slow
def test_one_migration_in_metrics_traces_and_json_logs(tmp_path: Path) -> None:
    world = build_world(tmp_path, [HostSpec(host_id=HOST_A), HostSpec(host_id=HOST_B)])
    config_a, config_b = world.config(HOST_A), world.config(HOST_B)
    metrics_a, metrics_b = free_port(), free_port()
    observe(config_a, metrics_listen=f"127.0.0.1:{metrics_a}", log_format="json")
    observe(config_b, metrics_listen=f"127.0.0.1:{metrics_b}", log_format="json")
    traced = {"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "100"}
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)

    with contextlib.ExitStack() as stack:
        server_a = ServerProcess(config_a, env=traced)
        server_b = ServerProcess(config_b, env=traced)
        start_all(stack, server_a, server_b)
        created = run_cli("object", "create", OBJECT, "--spec", spec, config=config_a)
        assert created.returncode == 0, created.stderr
        # A's server runs the object's cycles: each proposes a write that no grant allows.
        until(
            "a denied action on A",
            lambda: sample(
                scrape(metrics_a), "gateway_rule_actions_total", tenant="default", decision="denied"
            ),
        )
        before = scrape(metrics_a)
        assert sample(before, "gateway_cycles_total", tenant="default") >= 1
        assert sample(before, "gateway_rule_evaluations_total", tenant="default") >= 1
        assert sample(before, "gateway_cycle_lag_seconds_count", tenant="default") >= 1

        moved = run_cli(
            "migrate", OBJECT, "--to", HOST_B, "--log-format", "json", config=config_a, env=traced
        )
        assert moved.returncode == 0, moved.stderr

        # Metrics: B counted the arrival, its blackout and its duration; both count objects.
        after_b = until(
            "B to count the object active",
            lambda: (
                (s := scrape(metrics_b))
                and sample(s, "gateway_objects", tenant="default", state="active") == 1
                and s
            ),
        )
        assert (
            sample(
                after_b,
                "gateway_migrations_total",
                role="destination",
                outcome="activated",
                tenant="default",
            )
            == 1
        )
        assert sample(after_b, "gateway_migration_blackout_seconds_count") == 1
        assert sample(after_b, "gateway_migration_duration_seconds_count", role="destination") == 1
        assert sample(after_b, "gateway_store_operation_seconds_count", operation="transact") >= 1
        until(
            "A to count the object moved",
            lambda: (
                sample(scrape(metrics_a), "gateway_objects", tenant="default", state="moved") == 1
            ),
        )
        trace_b = stop_and_read(server_b)
        stop_and_read(server_a)
    log_b = server_b.log_path.read_text()

    # Traces: the migration is one trace, rooted in `gateway migrate` on A, continued by
    # B's server spans for Prepare and Commit (their parent is A's client span).
    spans_a = [s for s in json_objects(moved.stdout) if "context" in s]
    (root,) = [s for s in spans_a if s["name"] == "gateway.migrate"]
    migration_id = root["attributes"]["gateway.migration_id"]
    assert root["attributes"]["gateway.object_id"] == OBJECT
    assert root["attributes"]["gateway.peer"] == HOST_B
    trace_id = root["context"]["trace_id"]
    client_spans = {
        s["context"]["span_id"]: s["name"]
        for s in spans_a
        if s["kind"] == "SpanKind.CLIENT" and s["context"]["trace_id"] == trace_id
    }
    assert set(client_spans.values()) >= {
        "/gateway.v1.Gateway/Prepare",
        "/gateway.v1.Gateway/Commit",
    }
    server_spans = [
        s for s in json_objects(trace_b) if "context" in s and s["kind"] == "SpanKind.SERVER"
    ]
    in_trace = [s for s in server_spans if s["context"]["trace_id"] == trace_id]
    assert {s["name"] for s in in_trace} >= {
        "/gateway.v1.Gateway/Prepare",
        "/gateway.v1.Gateway/Commit",
    }
    for span in in_trace:
        assert client_spans[span["parent_id"]] == span["name"]
        assert span["resource"]["attributes"]["service.instance.id"] == HOST_B
        if span["name"].endswith("/Prepare"):
            assert span["attributes"]["gateway.migration_id"] == migration_id

    # Logs: JSON lines only; every handoff line on both hosts carries the four ids.
    migrate_lines = [json.loads(line) for line in moved.stderr.splitlines()]
    assert migrate_lines, "gateway migrate --log-format json logged nothing"
    for line in migrate_lines:
        assert line["migration_id"] == migration_id, line
        assert line["object_id"] == OBJECT
        assert line["peer"] == HOST_B
        assert line["tenant"] == "default"
        assert line["trace_id"] == trace_id.removeprefix("0x")
    served = [json.loads(line) for line in log_b.splitlines()]
    handoff_lines = [
        line for line in served if line["logger"].startswith("gateway.handoff.destination")
    ]
    # At INFO a migration's destination line is its activation (staged is DEBUG).
    assert {line["message"].split()[0] for line in handoff_lines} >= {"activated"}
    for line in handoff_lines:
        assert line["migration_id"] == migration_id, line
        assert line["object_id"] == OBJECT
        assert line["peer"] == HOST_A
        assert line["tenant"] == "default"
    # No gRPC C-core lines anywhere (every line above parsed as JSON, and none here).
    assert not C_CORE_LINE.search(moved.stderr + log_b + server_a.log_path.read_text())


class Watcher:
    """A grpc.health.v1 Watch stream on a host's mTLS port, with the host's own certificate,
    recording every status it is sent."""

    def __init__(self, config: Path, address: str) -> None:
        loaded = load_config(config)
        credentials = channel_credentials(
            roots=loaded.tls.authority.read_bytes(),
            certificate=loaded.tls.certificate.read_bytes(),
            private_key=loaded.tls.private_key.read_bytes(),
        )
        self.channel = grpc.secure_channel(
            address, credentials, options=[("grpc.ssl_target_name_override", "localhost")]
        )
        self.statuses: list[str] = []
        self.ended = threading.Event()
        self.stream = health_pb2_grpc.HealthStub(self.channel).Watch(
            health_pb2.HealthCheckRequest(service="gateway.v1.Gateway")
        )
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for answer in self.stream:
                self.statuses.append(
                    health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
                )
        except grpc.RpcError:
            pass  # the server went away: the stream ends
        finally:
            self.ended.set()

    def close(self) -> None:
        self.stream.cancel()
        self.channel.close()


@contextlib.contextmanager
def blackhole(port: int) -> Iterator[None]:
    """A listener on ``port`` that completes TCP handshakes and then never answers: a peer
    that hangs (the kernel accepts into the backlog; nobody reads)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(16)
        yield


def health(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("health", *args, config=config)


@pytest.mark.slow
def test_health_follows_readiness_and_draining(tmp_path: Path) -> None:
    # A's Commit to B hangs for up to a minute per attempt while B is a black hole.
    world = build_world(
        tmp_path,
        [HostSpec(host_id=HOST_A, handoff={"rpc_timeout_seconds": 60}), HostSpec(host_id=HOST_B)],
    )
    config_a, config_b = world.config(HOST_A), world.config(HOST_B)
    port_b = int(load_config(config_b).listen.rsplit(":", 1)[1])
    with contextlib.ExitStack() as stack:
        # A migration committed at A whose Commit never reached B (A crashed after
        # journaling COMMITTED): A's first recovery pass must deliver it.
        server_b = ServerProcess(config_b)
        start_all(stack, server_b)
        assert run_cli("object", "create", OBJECT, config=config_a).returncode == 0
        crashed = run_cli(
            "migrate",
            OBJECT,
            "--to",
            HOST_B,
            config=config_a,
            env={"GATEWAY_TEST_CRASH_AT": "source.after-commit-journal"},
        )
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr
        server_b.stop()

        with blackhole(port_b):
            server_a = ServerProcess(config_a)
            start_all(stack, server_a)
            # Recovery is stuck on B: A serves its port but is not ready.
            checked = health(config_a)
            assert checked.returncode == 1, checked.stderr
            assert checked.stdout.strip().endswith("NOT_SERVING")
            watcher = Watcher(config_a, server_a.address)
            stack.callback(watcher.close)
            until("the first status", lambda: watcher.statuses)
            assert watcher.statuses == ["NOT_SERVING"]
        # B is back: A's recovery pass delivers the Commit and finishes; A is ready.
        server_b = ServerProcess(config_b)
        start_all(stack, server_b)
        until("SERVING", lambda: "SERVING" in watcher.statuses)
        checked = health(config_a, "-o", "json")
        assert checked.returncode == 0, checked.stderr
        assert json.loads(checked.stdout)["status"] == "SERVING"
        assert (
            json.loads(health(config_a, "--service", "gateway.v1.Gateway", "-o", "json").stdout)[
                "status"
            ]
            == "SERVING"
        )
        unknown = health(config_a, "--service", "no.such.Service")
        assert unknown.returncode == 1 and "SERVICE_UNKNOWN" in unknown.stdout

        # SIGTERM: A reports NOT_SERVING to its watchers before it stops.
        assert server_a.process is not None
        server_a.process.send_signal(signal.SIGTERM)
        assert server_a.process.wait(timeout=30) == 0
        until("the stream to end", watcher.ended.is_set)
        assert watcher.statuses == ["NOT_SERVING", "SERVING", "NOT_SERVING"]
        down = health(config_a)
        assert down.returncode == 1
        assert down.stderr.startswith("gateway: error:") and "did not answer" in down.stderr


def reflected_services(config: Path, address: str) -> list[str]:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    loaded = load_config(config)
    credentials = channel_credentials(
        roots=loaded.tls.authority.read_bytes(),
        certificate=loaded.tls.certificate.read_bytes(),
        private_key=loaded.tls.private_key.read_bytes(),
    )
    with grpc.secure_channel(
        address, credentials, options=[("grpc.ssl_target_name_override", "localhost")]
    ) as channel:
        return sorted(ProtoReflectionDescriptorDatabase(channel).get_services())


@pytest.mark.slow
def test_reflection_on_by_default_and_off_by_config(tmp_path: Path) -> None:
    world = build_world(tmp_path, [HostSpec(host_id=HOST_A), HostSpec(host_id=HOST_B)])
    observe(world.config(HOST_B), reflection=False)
    with contextlib.ExitStack() as stack:
        server_a = ServerProcess(world.config(HOST_A))
        server_b = ServerProcess(world.config(HOST_B))
        start_all(stack, server_a, server_b)
        assert reflected_services(world.config(HOST_A), server_a.address) == [
            "gateway.v1.Gateway",
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        ]
        with pytest.raises(grpc.RpcError) as refused:
            reflected_services(world.config(HOST_B), server_b.address)
        assert refused.value.code() is grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]


@pytest.mark.slow
def test_no_grpc_core_lines_on_stderr_unless_asked(tmp_path: Path) -> None:
    """A port held by another program makes gRPC's C-core log an error line when it binds.
    By default none reaches standard error; a user who sets GRPC_VERBOSITY still sees it
    (which also shows the pattern matches real C-core lines)."""
    world = build_world(tmp_path, [HostSpec(host_id=HOST_A)])
    config = world.config(HOST_A)
    port = int(load_config(config).listen.rsplit(":", 1)[1])

    def serve_stderr(env: dict[str, str | None]) -> str:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}
        environment.update({k: v for k, v in env.items() if v is not None})
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=environment,
            text=True,
        )
        assert process.stderr is not None
        lines: list[str] = []
        # Until the bind was attempted: the server logs its port (or, refusing the held
        # port, fails), either way after the C-core wrote its line if it writes one.
        for line in process.stderr:
            lines.append(line)
            if "listening on port" in line or line.startswith("gateway: "):
                break
        process.kill()
        process.wait()
        process.stderr.close()
        return "".join(lines)

    with socket.socket() as held:
        held.bind(("127.0.0.1", port))
        held.listen(1)
        assert not C_CORE_LINE.search(serve_stderr({}))
        assert C_CORE_LINE.search(serve_stderr({"GRPC_VERBOSITY": "ERROR"}))


def test_tracing_and_metrics_cost_no_import_when_off(tmp_path: Path) -> None:
    """Without OTEL_TRACES_EXPORTER and --metrics-listen, a command that moves objects
    never imports opentelemetry or prometheus_client."""
    world = build_world(tmp_path, [HostSpec(host_id=HOST_A)])
    probe = (
        "import sys\n"
        "from gateway.cli import main\n"
        f"code = main(['migration', 'list', '--config', {str(world.config(HOST_A))!r}])\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'opentelemetry', 'prometheus_client'}))\n"
        "sys.exit(code)\n"
    )
    environment = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=environment, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    traced = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env={**environment, "OTEL_TRACES_EXPORTER": "console"},
        check=False,
    )
    assert traced.returncode == 0, traced.stderr
    assert traced.stdout.strip().splitlines()[-1] == "['opentelemetry']"


def test_unknown_trace_exporter_is_one_clear_error(tmp_path: Path) -> None:
    world = build_world(tmp_path, [HostSpec(host_id=HOST_A)])
    done = run_cli(
        "migration", "list", config=world.config(HOST_A), env={"OTEL_TRACES_EXPORTER": "zipkinx"}
    )
    assert done.returncode == 2
    assert done.stderr.startswith("gateway: error: OTEL_TRACES_EXPORTER names 'zipkinx'")
    assert len(done.stderr.strip().splitlines()) == 1


# --- the parts, in process --------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ("{metrics_listen: 9464}", "observability.metrics_listen"),
        ("{metrics_listen: 'localhost'}", "expected HOST:PORT"),
        ("{reflection: 'no'}", "observability.reflection"),
        ("{log_format: xml}", "observability.log_format"),
        ("{metrics: 1}", "metrics"),
    ],
)
def test_a_bad_observability_section_names_the_key(
    tmp_path: Path, section: str, problem: str
) -> None:
    from gateway.errors import ConfigError

    world = build_world(tmp_path, [HostSpec(host_id=HOST_A)])
    config = world.config(HOST_A)
    config.write_text(config.read_text() + f"observability: {section}\n")
    with pytest.raises(ConfigError, match=re.escape(problem)):
        load_config(config)


def test_an_observability_section_loads(tmp_path: Path) -> None:
    world = build_world(tmp_path, [HostSpec(host_id=HOST_A)])
    config = world.config(HOST_A)
    assert load_config(config).observability.metrics_listen is None  # off by default
    assert load_config(config).observability.reflection is True
    observe(config, metrics_listen="127.0.0.1:0", reflection=False, log_format="json")
    loaded = load_config(config).observability
    assert (loaded.metrics_listen, loaded.reflection, loaded.log_format) == (
        "127.0.0.1:0",
        False,
        "json",
    )


def test_log_format_precedence_and_a_bad_value(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.errors import ConfigError
    from gateway.observability.logs import LOG_FORMAT_ENV, log_format

    monkeypatch.delenv(LOG_FORMAT_ENV, raising=False)
    assert log_format(None) == "text"
    assert log_format(None, "json") == "json"
    monkeypatch.setenv(LOG_FORMAT_ENV, "text")
    assert log_format(None, "json") == "text"  # the environment over the config
    assert log_format("json", None) == "json"  # the flag over both
    monkeypatch.setenv(LOG_FORMAT_ENV, "yaml")
    with pytest.raises(ConfigError, match=r"'yaml' is not one of text, json.*GATEWAY_LOG_FORMAT"):
        log_format(None)


def test_each_task_logs_its_own_handoff_ids() -> None:
    """Two handoffs in one process (two gRPC calls, two tasks) never swap ids in their lines."""
    import asyncio
    import io
    import logging

    from gateway import observability
    from gateway.observability.logs import HandoffFields, _json_formatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(HandoffFields())
    handler.setFormatter(_json_formatter())
    logger = logging.getLogger("tests.observability.tasks")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False

    async def handoff(number: int, gate: asyncio.Event) -> None:
        observability.bind(migration_id=f"mig-{number}", object_id=f"obj://x/{number}")
        logger.info("first %d", number)
        await gate.wait()  # the other task binds and logs meanwhile
        observability.bind(peer=f"spiffe://p/{number}", tenant="default")
        logger.info("second %d", number)

    async def main() -> None:
        gate = asyncio.Event()
        tasks = [asyncio.create_task(handoff(n, gate)) for n in (1, 2)]
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(*tasks)

    try:
        asyncio.run(main())
        logger.info("outside")
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    for line in lines[:-1]:
        number = line["message"].split()[-1]
        assert line["migration_id"] == f"mig-{number}"
        assert line["object_id"] == f"obj://x/{number}"
        if line["message"].startswith("second"):
            assert (line["peer"], line["tenant"]) == (f"spiffe://p/{number}", "default")
    assert len(lines) == 5
    assert "migration_id" not in lines[-1]  # the caller's context never saw the bindings


def test_metric_labels_are_bounded_by_the_configuration() -> None:
    from gateway.observability.metrics import Metrics

    metrics = Metrics(tenants=("default",), peers=(HOST_B,))
    metrics.peer_error(HOST_B, "Prepare", "AudienceError", direction="in")
    for n in range(50):  # a partner CA may issue many identities
        metrics.peer_error(
            f"spiffe://org-b.example/h{n}", "Prepare", "AudienceError", direction="in"
        )
    metrics.migration_settled("destination", "activated", tenant="t-from-a-peer", started=None)
    families = {f.name: f for f in metrics.registry.collect()}
    peers = {
        s.labels["peer"]: s.value
        for s in families["gateway_peer_errors"].samples
        if s.name.endswith("_total")
    }
    assert peers == {HOST_B: 1.0, "other": 50.0}
    tenants = {s.labels["tenant"] for s in families["gateway_migrations"].samples}
    assert tenants == {"other"}


def test_readiness_moves_from_not_serving_to_serving_to_draining_for_good() -> None:
    import asyncio

    from gateway.observability.health import Readiness

    async def main() -> list[str]:
        server = grpc.aio.server()
        readiness = Readiness()
        await readiness.attach(server, reflection=False)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        seen: list[str] = []
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            async def check() -> None:
                for service in ("", "gateway.v1.Gateway"):
                    answer = await stub.Check(health_pb2.HealthCheckRequest(service=service))
                    seen.append(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))

            await check()
            await readiness.recovered()
            await check()
            await readiness.drain()
            await check()
            await readiness.recovered()  # a later recovery pass does not undo draining
            await check()
        await server.stop(None)
        return seen

    assert asyncio.run(main()) == [
        "NOT_SERVING",
        "NOT_SERVING",
        "SERVING",
        "SERVING",
        *["NOT_SERVING"] * 4,
    ]


@pytest.mark.parametrize(
    ("environ", "debug", "verbosity"),
    [
        ({}, False, "NONE"),
        ({}, True, "ERROR"),
        ({"GRPC_VERBOSITY": "INFO"}, False, "INFO"),  # the user's choice stays
        ({"GRPC_TRACE": "http"}, False, "DEBUG"),  # traces asked for are shown
    ],
)
def test_grpc_core_verbosity_defaults(
    monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], debug: bool, verbosity: str
) -> None:
    from gateway.observability.setup import quiet_grpc_core

    for name in ("GRPC_VERBOSITY", "GRPC_TRACE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    quiet_grpc_core(debug=debug)
    assert os.environ["GRPC_VERBOSITY"] == verbosity


@pytest.mark.parametrize(
    ("listen", "address"),
    [
        ("0.0.0.0:7001", "127.0.0.1:7001"),
        ("[::]:7001", "[::1]:7001"),
        ("127.0.0.1:7001", "127.0.0.1:7001"),
        ("gateway.east.example:7001", "gateway.east.example:7001"),
    ],
)
def test_the_health_probe_calls_loopback_for_a_wildcard_bind(listen: str, address: str) -> None:
    from gateway.observability.probe import probe_address

    assert probe_address(listen) == address


def test_tracing_is_off_unless_an_exporter_is_named() -> None:
    from gateway.observability.tracing import requested

    assert requested({}) == []
    assert requested({"OTEL_TRACES_EXPORTER": "none"}) == []
    assert requested({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}) == []
    assert requested({"OTEL_TRACES_EXPORTER": "console, otlp"}) == ["console", "otlp"]


def test_otlp_means_the_installed_grpc_exporter_unless_http_is_asked() -> None:
    from importlib.metadata import entry_points

    from gateway.observability.tracing import entry_point_name

    installed = {e.name for e in entry_points(group="opentelemetry_traces_exporter")}
    assert entry_point_name("otlp", {}) in installed
    assert entry_point_name("console", {}) in installed
    assert entry_point_name("otlp", {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}) == (
        "otlp_proto_http"
    )
    assert entry_point_name("otlp", {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}) == (
        "otlp_proto_grpc"
    )
