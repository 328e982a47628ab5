"""The ``gateway`` command as users run it: a real subprocess (``python -m gateway``) against
real host directories built by ``gateway.testing.build_world``.

Every failure must be exactly one ``gateway: error:`` line on stderr with a reason a
person can act on, a non-zero exit code, no traceback, and nothing lost: an object whose
migration failed is still ACTIVE on its source with its data, and its lineage records
the attempt and still verifies.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.handoff.journal import SOURCE_PREFIX
from gateway.host import Host
from gateway.lineage import EntryKind, verify_lineage
from gateway.model import GovernedObject, LifecycleState
from gateway.testing import HostSpec, World, build_world, run_cli
from tests.conftest import HOST_A, HOST_B

#: Give up on an unreachable peer fast: two attempts of at most one second each.
FAST = {"retry_attempts": 2, "rpc_timeout_seconds": 1}
DATA = {"invoice": 42, "amount": 1250, "currency": "EUR"}


@dataclass(frozen=True, slots=True)
class Run:
    code: int
    stdout: str
    stderr: str


def gateway(*args: str | Path, cwd: Path, config: Path | None = None) -> Run:
    done = run_cli(
        *args,
        config=config,
        cwd=cwd,
        env={"GATEWAY_CONFIG": None},  # no config from the environment running the tests
        columns=250,  # wide tables, so output assertions see whole values
        timeout=60,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def assert_one_line_error(run: Run, *needles: str, code: int | None = None) -> str:
    """Exactly one ``gateway: error:`` line, non-zero exit, no traceback; returns the line."""
    assert run.code != 0, run
    if code is not None:
        assert run.code == code, run
    assert "Traceback" not in run.stderr, run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{run.stderr}"
    line = lines[0]
    assert line.startswith("gateway: error: "), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    assert run.stdout == "", f"nothing on stdout for a failure, got:\n{run.stdout}"
    return line


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """Host A (org-a) and host B (org-b), trusting each other; B is never started."""
    return build_world(
        tmp_path_factory.mktemp("world"),
        [HostSpec(host_id=HOST_A, handoff=FAST), HostSpec(host_id=HOST_B, handoff=FAST)],
    )


@pytest.fixture(scope="module")
def config_a(world: World) -> Path:
    return world.config(HOST_A)


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    """An empty working directory, so no stray ./gateway.yaml is picked up."""
    return tmp_path


def in_host(config: Path, object_id: str) -> GovernedObject:
    async def read() -> GovernedObject:
        host = await Host.open(load_config(config))
        try:
            obj = await host.get_object(object_id, tenant="default")
            verify_lineage(obj.lineage, object_id=object_id, trust=host.trust, sealed=False)
            return obj
        finally:
            await host.close()

    return asyncio.run(read())


def create(config: Path, object_id: str) -> GovernedObject:
    async def make() -> GovernedObject:
        host = await Host.open(load_config(config))
        try:
            return await host.create_object(
                object_id,
                tenant="default",
                data=json.dumps(DATA).encode(),
                content_type="application/json",
            )
        finally:
            await host.close()

    return asyncio.run(make())


def source_steps(config: Path) -> list[str]:
    async def read() -> list[str]:
        host = await Host.open(load_config(config))
        try:
            steps = []
            for key in await host.store.list(SOURCE_PREFIX):
                record = await host.journal.source(key.removeprefix(SOURCE_PREFIX))
                assert record is not None
                steps.append(f"{record.value.object_id}:{record.value.step.value}")
            return steps
        finally:
            await host.close()

    return asyncio.run(read())


# --- bad configuration ----------------------------------------------------------------


def test_a_missing_config_file_is_one_line(cwd: Path) -> None:
    missing = cwd / "nope.yaml"
    assert_one_line_error(
        gateway("object", "list", cwd=cwd, config=missing),
        str(missing),
        "no such file",
        "gateway init",
        code=2,
    )


def test_without_config_the_default_file_is_named(cwd: Path) -> None:
    assert_one_line_error(
        gateway("keys", "list", cwd=cwd), "gateway.yaml: no such file", "--config", code=2
    )


def test_bad_yaml_names_the_file_and_the_line(cwd: Path) -> None:
    bad = cwd / "broken.yaml"
    bad.write_text("host:\n  id: [spiffe://org-a.example/gw\nlisten: x\n", encoding="utf-8")
    assert_one_line_error(
        gateway("object", "list", cwd=cwd, config=bad),
        "broken.yaml",
        "line 3, column 7",
        "not valid YAML",
        code=2,
    )


def test_a_bad_key_names_the_file_the_key_and_the_fix(cwd: Path, config_a: Path) -> None:
    text = config_a.read_text(encoding="utf-8").replace("address: 127.0.0.1:", "address: ")
    bad = cwd / "gateway.yaml"
    bad.write_text(text, encoding="utf-8")
    assert_one_line_error(
        gateway("object", "list", cwd=cwd, config=bad),
        str(bad),
        "peers[0].address",
        "write it as 127.0.0.1:7002",
        code=2,
    )


def test_a_usage_error_is_one_line_too(cwd: Path) -> None:
    assert_one_line_error(
        gateway("migrate", "obj://org-a.example/x", cwd=cwd),
        "migrate",
        "--to",
        "gateway migrate --help",
        code=2,
    )


# --- bad input on objects -------------------------------------------------------------


def test_show_of_an_unknown_object(cwd: Path, config_a: Path) -> None:
    assert_one_line_error(
        gateway("object", "show", "obj://org-a.example/billing/nothing", cwd=cwd, config=config_a),
        "no object obj://org-a.example/billing/nothing",
        "gateway object list",
        code=1,
    )


def test_show_of_something_that_is_no_object_id(cwd: Path, config_a: Path) -> None:
    assert_one_line_error(
        gateway("object", "show", "invoice-42", cwd=cwd, config=config_a),
        "'invoice-42' is not a valid object id",
        "obj://",
        code=2,
    )


def test_create_with_invalid_json_creates_nothing(cwd: Path, config_a: Path) -> None:
    object_id = "obj://org-a.example/billing/bad-json"
    assert_one_line_error(
        gateway("object", "create", object_id, "--data", "{amount: 1", cwd=cwd, config=config_a),
        "--data is not valid JSON",
        "--content-type",
        code=2,
    )
    assert_one_line_error(
        gateway("object", "show", object_id, cwd=cwd, config=config_a), "no object", code=1
    )


def test_create_of_an_id_in_another_trust_domain(cwd: Path, config_a: Path) -> None:
    assert_one_line_error(
        gateway("object", "create", "obj://org-b.example/billing/x", cwd=cwd, config=config_a),
        "belongs to org-b.example",
        "this host is in org-a.example",
        "obj://org-a.example/",
        code=2,
    )


def test_create_of_an_existing_id_keeps_the_original(cwd: Path, config_a: Path) -> None:
    object_id = "obj://org-a.example/billing/twice"
    original = create(config_a, object_id)
    assert_one_line_error(
        gateway("object", "create", object_id, "--data", "{}", cwd=cwd, config=config_a),
        f"{object_id} already exists",
        code=1,
    )
    assert in_host(config_a, object_id) == original


# --- failed migrations lose nothing ---------------------------------------------------


def test_migrate_to_an_unknown_host_freezes_nothing(cwd: Path, config_a: Path) -> None:
    object_id = "obj://org-a.example/billing/stay-home"
    before = create(config_a, object_id)
    nowhere = "spiffe://org-c.example/dc/gateway"
    assert_one_line_error(
        gateway("migrate", object_id, "--to", nowhere, cwd=cwd, config=config_a),
        f"{nowhere} is not a configured peer",
        HOST_B,  # the peers there are
        "add it under 'peers:'",
        str(config_a),
        code=1,
    )
    after = in_host(config_a, object_id)
    assert after == before, "an unknown destination fails before anything is frozen"
    assert after.state is LifecycleState.ACTIVE
    assert not any(step.startswith(object_id) for step in source_steps(config_a))


def test_migrate_to_itself_is_refused(cwd: Path, config_a: Path) -> None:
    object_id = "obj://org-a.example/billing/self"
    before = create(config_a, object_id)
    assert_one_line_error(
        gateway("migrate", object_id, "--to", HOST_A, cwd=cwd, config=config_a),
        "this host itself",
        code=1,
    )
    assert in_host(config_a, object_id) == before


def test_migrate_to_an_unreachable_peer_aborts_and_keeps_the_object(
    cwd: Path, config_a: Path
) -> None:
    object_id = "obj://org-a.example/billing/unreachable"
    before = create(config_a, object_id)

    line = assert_one_line_error(
        gateway("migrate", object_id, "--to", HOST_B, cwd=cwd, config=config_a),
        HOST_B,
        "did not answer",
        f"{object_id} is ACTIVE here again (epoch 1); nothing was lost",
        "check that the peer runs",
        code=1,
    )
    assert len(line) < 600, "one readable line"

    # Nothing lost: ACTIVE on the source with its data; the epoch stays raised (fencing).
    after = in_host(config_a, object_id)
    assert after.state is LifecycleState.ACTIVE
    assert after.data == before.data and json.loads(after.data) == DATA
    assert after.epoch == before.epoch + 1
    assert [e.kind for e in after.lineage.entries] == [
        EntryKind.CREATED,
        EntryKind.FROZEN,
        EntryKind.ABORTED,
    ]
    assert all(e.data_digest == before.data_digest() for e in after.lineage.entries)
    assert [s for s in source_steps(config_a) if s.startswith(object_id)] == [
        f"{object_id}:aborted"
    ]

    shown = gateway("object", "show", object_id, cwd=cwd, config=config_a)
    assert shown.code == 0, shown
    assert "ACTIVE" in shown.stdout and '"amount": 1250' in shown.stdout

    lineage = gateway("lineage", object_id, cwd=cwd, config=config_a)
    assert lineage.code == 0, lineage
    assert lineage.stderr == ""
    for kind in ("created", "frozen", "aborted"):
        assert kind in lineage.stdout
    assert "lineage verified: 3 entries, hash chain intact" in lineage.stdout

    # And it can still go: the same object migrates again later (here: refused again the
    # same way, with one more frozen/aborted pair and the epoch one higher).
    again = gateway("migrate", object_id, "--to", HOST_B, cwd=cwd, config=config_a)
    assert_one_line_error(again, "did not answer", "ACTIVE here again (epoch 2)", code=1)
    assert in_host(config_a, object_id).epoch == before.epoch + 2


# --- the happy path -------------------------------------------------------------------


def test_init_keys_trust_and_objects_work_end_to_end(tmp_path: Path) -> None:
    host_dir = tmp_path / "east"
    host_id = "spiffe://org-z.example/cluster/east/gateway"
    init = gateway(
        "init", host_dir, "--host-id", host_id, "--listen", "127.0.0.1:0", "--tenant", "billing",
        cwd=tmp_path,
    )  # fmt: skip
    assert init.code == 0, init
    config = host_dir / "gateway.yaml"
    assert config.is_file() and str(config) in init.stdout
    assert load_config(config).tenants == ("billing",)

    keys = gateway("keys", "list", cwd=tmp_path, config=config)
    assert keys.code == 0, keys
    assert "org-z.example, bundle sequence 1" in keys.stdout
    assert "private key here" in keys.stdout and "ed25519" in keys.stdout

    exported = gateway("trust", "export", cwd=tmp_path, config=config)
    assert exported.code == 0, exported
    envelope = json.loads(exported.stdout)
    assert envelope["payloadType"] == "application/vnd.gateway.trust-bundle.v1+json"
    assert envelope["signatures"]

    object_id = "obj://org-z.example/billing/invoice-7"
    made = gateway(
        "object", "create", object_id, "--tenant", "billing", "--data", json.dumps(DATA),
        cwd=tmp_path, config=config,
    )  # fmt: skip
    assert made.code == 0, made
    assert object_id in made.stdout and "ACTIVE" in made.stdout

    listed = gateway("object", "list", "--tenant", "billing", cwd=tmp_path, config=config)
    assert listed.code == 0, listed
    assert object_id in listed.stdout and "ACTIVE" in listed.stdout

    shown = gateway("object", "show", object_id, "--tenant", "billing", cwd=tmp_path, config=config)
    assert shown.code == 0, shown
    assert '"currency": "EUR"' in shown.stdout and "1 entries" in shown.stdout

    lineage = gateway("lineage", object_id, "--tenant", "billing", cwd=tmp_path, config=config)
    assert lineage.code == 0, lineage
    assert "created" in lineage.stdout
    assert "lineage verified: 1 entries, hash chain intact" in lineage.stdout
    for run in (init, keys, exported, made, listed, shown, lineage):
        assert run.stderr == "", run.stderr

    # The tenant a host does not serve is named, with where to add it.
    assert_one_line_error(
        gateway("object", "list", cwd=tmp_path, config=config),
        "tenant 'default' is not hosted",
        "add it under 'tenants:'",
        code=2,
    )


def test_init_puts_the_dns_names_peers_use_in_the_certificate(tmp_path: Path) -> None:
    """`gateway init --dns NAME` (repeatable): the host certificate carries the names, and
    the new dev CA permits exactly those, so a peer can reach this host by name."""
    from cryptography import x509

    run = gateway(
        "init",
        tmp_path / "east",
        "--host-id",
        HOST_A,
        "--dns",
        "gateway.east.org-a.example",
        "--dns",
        "localhost",
        cwd=tmp_path,
    )
    assert run.code == 0, run.stderr
    certificate = x509.load_pem_x509_certificate(
        (tmp_path / "east" / "tls" / "host.crt").read_bytes()
    )
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["gateway.east.org-a.example", "localhost"]
